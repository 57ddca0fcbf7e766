//! One field's format spec: Python's format mini-language, restricted to the
//! numeric presentation types this logger renders.
//!
//! `[[fill]align][sign][z][#][0][width][grouping][.precision][type]`, parsed in
//! exactly the order CPython's `parse_internal_render_format_spec` does, so a
//! spec means here what it means to `format()`.
//!
//! Invariant: a [`Spec`] that exists can be rendered for both an `Int` and a
//! `Float` value; every combination Python would reject for the field's type
//! (precision or `z` with `d`, `,` together with `_`, types `n b o x X c s`)
//! is refused here, at registration, with the position of the offending
//! character. Width and precision are bounded so the formatter's fixed
//! scratch buffer always suffices.

use super::TemplateError;

/// Largest accepted width (characters of padding a field may ask for).
pub const MAX_WIDTH: usize = 256;
/// Largest accepted precision. Bounds the formatter's scratch buffer.
pub const MAX_PRECISION: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
    Center,
    /// `=`: padding goes between the sign and the digits.
    AfterSign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sign {
    /// `-` or nothing: only negative numbers get a sign.
    Negative,
    Plus,
    Space,
}

/// The presentation type. `None` is the empty type (repr-like for floats).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    None,
    D,
    E { upper: bool },
    F { upper: bool },
    G { upper: bool },
    Percent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub fill: char,
    pub align: Align,
    pub sign: Sign,
    /// `z`: a result that rounds to zero loses its minus sign.
    pub no_neg_zero: bool,
    /// `#`: keep the decimal point (and, for `g`, trailing zeros).
    pub alternate: bool,
    /// 0 means "not given": Python's -1 and 0 behave identically.
    pub width: usize,
    /// `b','` or `b'_'`, every three integer digits.
    pub grouping: Option<u8>,
    pub precision: Option<usize>,
    pub kind: Kind,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            fill: ' ',
            align: Align::Right,
            sign: Sign::Negative,
            no_neg_zero: false,
            alternate: false,
            width: 0,
            grouping: None,
            precision: None,
            kind: Kind::None,
        }
    }
}

fn align_of(c: char) -> Option<Align> {
    match c {
        '<' => Some(Align::Left),
        '>' => Some(Align::Right),
        '^' => Some(Align::Center),
        '=' => Some(Align::AfterSign),
        _ => None,
    }
}

fn kind_of(c: char) -> Option<Kind> {
    Some(match c {
        'd' => Kind::D,
        'e' => Kind::E { upper: false },
        'E' => Kind::E { upper: true },
        'f' => Kind::F { upper: false },
        'F' => Kind::F { upper: true },
        'g' => Kind::G { upper: false },
        'G' => Kind::G { upper: true },
        '%' => Kind::Percent,
        _ => return None,
    })
}

/// Parses `spec`, the text after `:` in a field. `base` is the character
/// position of the spec's first character in the whole template; error
/// positions are reported relative to the template.
pub(crate) fn parse(spec: &str, base: usize) -> Result<Spec, TemplateError> {
    let c: Vec<char> = spec.chars().collect();
    let err = |i: usize, message: String| TemplateError {
        position: base + i,
        message,
    };
    let mut s = Spec::default();
    let mut i = 0;
    let mut fill_given = false;
    let mut align_given = false;

    if c.len() >= 2 && align_of(c[1]).is_some() {
        s.fill = c[0];
        s.align = align_of(c[1]).unwrap_or(Align::Right);
        fill_given = true;
        align_given = true;
        i = 2;
    } else if let Some(a) = c.first().copied().and_then(align_of) {
        s.align = a;
        align_given = true;
        i = 1;
    }

    match c.get(i) {
        Some('+') => s.sign = Sign::Plus,
        Some(' ') => s.sign = Sign::Space,
        Some('-') => s.sign = Sign::Negative,
        _ => i -= 1,
    }
    i += 1;

    let z_at = i;
    if c.get(i) == Some(&'z') {
        s.no_neg_zero = true;
        i += 1;
    }
    if c.get(i) == Some(&'#') {
        s.alternate = true;
        i += 1;
    }
    // CPython's backwards-compatible `0` flag: zero fill, sign-aware unless
    // an alignment was given. Ignored when a fill character was given (the
    // `0` is then simply the first digit of the width).
    if !fill_given && c.get(i) == Some(&'0') {
        s.fill = '0';
        if !align_given {
            s.align = Align::AfterSign;
        }
        i += 1;
    }

    let width_at = i;
    let (width, n) = integer(&c[i..]);
    i += n;
    if n > 0 {
        match width {
            Some(w) if w <= MAX_WIDTH => s.width = w,
            _ => {
                return Err(err(
                    width_at,
                    format!("width exceeds the supported maximum of {MAX_WIDTH}"),
                ))
            }
        }
    }

    if c.get(i) == Some(&',') {
        s.grouping = Some(b',');
        i += 1;
    }
    if c.get(i) == Some(&'_') {
        if s.grouping.is_some() {
            return Err(err(i, "cannot specify both ',' and '_'".into()));
        }
        s.grouping = Some(b'_');
        i += 1;
    }
    if c.get(i) == Some(&',') && s.grouping == Some(b'_') {
        return Err(err(i, "cannot specify both ',' and '_'".into()));
    }

    let dot_at = i;
    if c.get(i) == Some(&'.') {
        i += 1;
        let (p, n) = integer(&c[i..]);
        if n == 0 {
            return Err(err(i, "format spec missing precision after '.'".into()));
        }
        match p {
            Some(p) if p <= MAX_PRECISION => s.precision = Some(p),
            _ => {
                return Err(err(
                    i,
                    format!("precision exceeds the supported maximum of {MAX_PRECISION}"),
                ))
            }
        }
        i += n;
    }

    if let Some(&t) = c.get(i) {
        s.kind = match kind_of(t) {
            Some(k) => k,
            None if "nbcoxXs".contains(t) => {
                return Err(err(
                    i,
                    format!("unsupported format type '{t}' (supported: d e E f F g G % or none)"),
                ))
            }
            None => {
                return Err(err(
                    i,
                    format!("invalid format spec: unexpected {t:?} (expected [[fill]align][sign][z][#][0][width][,|_][.precision][type])"),
                ))
            }
        };
        i += 1;
        if let Some(&extra) = c.get(i) {
            return Err(err(
                i,
                format!("invalid format spec: unexpected {extra:?} after the type '{t}'"),
            ));
        }
    }

    if s.kind == Kind::D {
        if s.precision.is_some() {
            return Err(err(
                dot_at,
                "precision not allowed with integer type 'd'".into(),
            ));
        }
        if s.no_neg_zero {
            return Err(err(z_at, "'z' not allowed with integer type 'd'".into()));
        }
    }
    Ok(s)
}

/// Reads a run of ASCII digits: `(value, digits consumed)`; the value is
/// `None` when it overflows.
fn integer(c: &[char]) -> (Option<usize>, usize) {
    let mut v: Option<usize> = Some(0);
    let mut n = 0;
    while let Some(d) = c.get(n).and_then(|ch| ch.to_digit(10)) {
        if !c[n].is_ascii_digit() {
            break;
        }
        v = v
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(d as usize));
        n += 1;
    }
    (v, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> Spec {
        parse(spec, 0).unwrap_or_else(|e| panic!("{spec:?}: {e}"))
    }

    fn bad(spec: &str) -> (usize, String) {
        let e = parse(spec, 10).expect_err(spec);
        (e.position - 10, e.message)
    }

    #[test]
    fn full_spec() {
        let s = ok("*^+z#012_.3e");
        assert_eq!(s.fill, '*');
        assert_eq!(s.align, Align::Center);
        assert_eq!(s.sign, Sign::Plus);
        assert!(s.no_neg_zero && s.alternate);
        // a fill was given, so `0` is part of the width, not the flag
        assert_eq!(s.width, 12);
        assert_eq!(s.grouping, Some(b'_'));
        assert_eq!(s.precision, Some(3));
        assert_eq!(s.kind, Kind::E { upper: false });
    }

    #[test]
    fn zero_flag() {
        let s = ok("010");
        assert_eq!((s.fill, s.align, s.width), ('0', Align::AfterSign, 10));
        let s = ok("<010");
        assert_eq!((s.fill, s.align, s.width), ('0', Align::Left, 10));
        let s = ok("0");
        assert_eq!((s.fill, s.align, s.width), ('0', Align::AfterSign, 0));
    }

    #[test]
    fn fill_may_be_any_char() {
        let s = ok("€>5");
        assert_eq!((s.fill, s.align, s.width), ('€', Align::Right, 5));
        let s = ok("<<");
        assert_eq!((s.fill, s.align), ('<', Align::Left));
        let s = ok("0=8,d");
        assert_eq!(
            (s.fill, s.align, s.grouping),
            ('0', Align::AfterSign, Some(b','))
        );
    }

    #[test]
    fn empty_spec_is_default() {
        assert_eq!(ok(""), Spec::default());
    }

    #[test]
    fn refusals_name_the_offending_character() {
        assert_eq!(bad(".2d").0, 0);
        assert!(bad(".2d").1.contains("precision not allowed"));
        assert_eq!(bad("+zd").0, 1);
        assert_eq!(bad(",_d").0, 1);
        assert_eq!(bad("_,").0, 1);
        assert_eq!(bad("5.").0, 2);
        assert!(bad("5.").1.contains("missing precision"));
        assert_eq!(bad("x").0, 0);
        assert!(bad("x").1.contains("unsupported format type 'x'"));
        for t in ["n", "b", "o", "X", "c", "s"] {
            assert!(bad(t).1.contains("unsupported"), "{t}");
        }
        assert_eq!(bad("5.2fx").0, 4);
        assert_eq!(bad("5q").0, 1);
        assert_eq!(bad("!r").0, 0);
        assert_eq!(bad("300").0, 0);
        assert!(bad("300").1.contains("width"));
        assert_eq!(bad(".101").0, 1);
        assert_eq!(bad("99999999999999999999999").0, 0);
    }
}
