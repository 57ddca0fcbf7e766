//! Float bodies: the digits, point, exponent and `%` of a formatted float,
//! without sign or padding, exactly as CPython's `format_float_short` lays
//! them out.
//!
//! Digit generation is Rust's: `{:e}` gives the shortest round-tripping
//! digits (CPython's dtoa mode 0, used by `repr`), `{:.*e}` and `{:.*}` give
//! correctly rounded digits (ties to even on the exact binary value, as
//! dtoa modes 2 and 3 do). What is written here is the layout on top: when
//! `g` and repr switch to exponent notation, padding zeros, `#`, the
//! two-digit signed exponent, upper case, `nan`/`inf`.
//!
//! Invariant: every body fits [`Scratch`] for specs accepted by
//! `spec::parse` (precision at most `MAX_PRECISION`).

use std::fmt::Write;

use super::scratch::Scratch;
use super::spec::{Kind, Spec};

/// Enough for `MAX_PRECISION + 1` significant digits plus `.` and `e-324`.
type Digits = Scratch<128>;

/// Writes the body of `v` for `spec` into `out` (which must be empty) and
/// returns whether the number takes a minus sign.
pub(super) fn body(v: f64, spec: &Spec, out: &mut Scratch) -> bool {
    let (upper, percent) = match spec.kind {
        Kind::E { upper } | Kind::F { upper } | Kind::G { upper } => (upper, false),
        Kind::Percent => (false, true),
        Kind::None | Kind::D => (false, false),
    };
    // CPython multiplies first, so a huge value can overflow to inf%.
    let x = if percent { v * 100.0 } else { v };
    if x.is_nan() {
        // CPython ignores the sign bit of a nan.
        out.extend(if upper { b"NAN" } else { b"nan" });
        if percent {
            out.push(b'%');
        }
        return false;
    }
    let negative = x.is_sign_negative();
    if x.is_infinite() {
        out.extend(if upper { b"INF" } else { b"inf" });
        if percent {
            out.push(b'%');
        }
        return negative;
    }
    let a = x.abs();
    let alt = spec.alternate;
    match (spec.kind, spec.precision) {
        (Kind::F { .. } | Kind::Percent, p) => {
            let p = p.unwrap_or(6);
            let _ = write!(out, "{a:.p$}");
            if p == 0 && alt {
                out.push(b'.');
            }
        }
        (Kind::E { .. }, p) => {
            let p = p.unwrap_or(6);
            let mut d = Digits::new();
            let decpt = digits_exact(a, p + 1, &mut d);
            layout(d.as_bytes(), decpt, Layout::Exp(p + 1), alt, upper, out);
        }
        (Kind::G { .. }, p) => {
            // precision 0 makes no sense for 'g'; CPython reads it as 1
            let p = p.unwrap_or(6).max(1);
            let mut d = Digits::new();
            let decpt = digits_exact(a, p, &mut d);
            strip_trailing_zeros(&mut d);
            layout(
                d.as_bytes(),
                decpt,
                Layout::General {
                    precision: p,
                    dot0: false,
                },
                alt,
                upper,
                out,
            );
        }
        (Kind::None | Kind::D, Some(p)) => {
            // no type with a precision: like 'g', but at least one digit
            // after the point
            let p = p.max(1);
            let mut d = Digits::new();
            let decpt = digits_exact(a, p, &mut d);
            strip_trailing_zeros(&mut d);
            layout(
                d.as_bytes(),
                decpt,
                Layout::General {
                    precision: p,
                    dot0: true,
                },
                alt,
                false,
                out,
            );
        }
        (Kind::None | Kind::D, None) => {
            let mut d = Digits::new();
            let decpt = digits_shortest(a, &mut d);
            layout(d.as_bytes(), decpt, Layout::Repr, alt, false, out);
        }
    }
    if percent {
        out.push(b'%');
    }
    negative && !(spec.no_neg_zero && is_zero(out.as_bytes()))
}

/// True when the mantissa (everything before an exponent) has no nonzero
/// digit: what `z` tests after rounding.
fn is_zero(body: &[u8]) -> bool {
    body.iter()
        .take_while(|&&b| b != b'e' && b != b'E')
        .all(|&b| !b.is_ascii_digit() || b == b'0')
}

/// `n` correctly rounded significant digits of `a >= 0` (finite) into `d`;
/// returns the decimal point position (`0.d1d2... * 10^decpt`).
fn digits_exact(a: f64, n: usize, d: &mut Digits) -> isize {
    let mut tmp = Digits::new();
    let _ = write!(tmp, "{a:.prec$e}", prec = n - 1);
    split_exp(tmp.as_bytes(), d)
}

/// Shortest round-tripping digits of `a >= 0` (finite), as repr uses.
fn digits_shortest(a: f64, d: &mut Digits) -> isize {
    let mut tmp = Digits::new();
    let _ = write!(tmp, "{a:e}");
    split_exp(tmp.as_bytes(), d)
}

/// Splits Rust's `D.DDDe[-]X` into digits (into `d`) and `X + 1`.
fn split_exp(s: &[u8], d: &mut Digits) -> isize {
    let mut exp: isize = 0;
    let mut neg = false;
    let mut in_exp = false;
    for &b in s {
        match b {
            b'e' => in_exp = true,
            b'-' if in_exp => neg = true,
            b'0'..=b'9' if in_exp => exp = exp * 10 + (b - b'0') as isize,
            b'0'..=b'9' => d.push(b),
            _ => {}
        }
    }
    if neg {
        exp = -exp;
    }
    exp + 1
}

/// dtoa modes 0 and 2 never return trailing zeros (but keep a lone `0`).
fn strip_trailing_zeros(d: &mut Digits) {
    while d.as_bytes().len() > 1 && d.last() == Some(b'0') {
        d.pop();
    }
}

#[derive(Clone, Copy)]
enum Layout {
    /// `e`: always an exponent, exactly this many digits.
    Exp(usize),
    /// `g` (and no type with a precision, which adds `.0` to integers).
    General { precision: usize, dot0: bool },
    /// No type, no precision: repr.
    Repr,
}

/// CPython's `format_float_short` from the digit string on: view `digits`
/// as a slice of an infinite zero-padded string, choose the slice and the
/// position of the point, append an exponent if one is used.
fn layout(digits: &[u8], decpt: isize, how: Layout, alt: bool, upper: bool, out: &mut Scratch) {
    let n = digits.len() as isize;
    let (use_exp, mut vend, dot0) = match how {
        Layout::Exp(total) => (true, total as isize, false),
        Layout::General { precision, dot0 } => {
            let p = precision as isize;
            let limit = if dot0 { p - 1 } else { p };
            let vend = if alt { p } else { n };
            (decpt <= -4 || decpt > limit, vend, dot0)
        }
        Layout::Repr => (decpt <= -4 || decpt > 16, n, true),
    };
    let (decpt, exp) = if use_exp { (1, decpt - 1) } else { (decpt, 0) };
    let vstart = if decpt <= 0 { decpt - 1 } else { 0 };
    let min_end = if !use_exp && dot0 { decpt + 1 } else { decpt };
    vend = vend.max(min_end);

    let zeros = |out: &mut Scratch, k: isize| out.push_n(b'0', k.max(0) as usize);
    if decpt <= 0 {
        zeros(out, decpt - vstart);
        out.push(b'.');
        zeros(out, -decpt);
    } else {
        zeros(out, -vstart);
    }
    if 0 < decpt && decpt <= n {
        out.extend(&digits[..decpt as usize]);
        out.push(b'.');
        out.extend(&digits[decpt as usize..]);
    } else {
        out.extend(digits);
    }
    if n < decpt {
        zeros(out, decpt - n);
        out.push(b'.');
        zeros(out, vend - decpt);
    } else {
        zeros(out, vend - n);
    }
    if out.last() == Some(b'.') && !alt {
        out.pop();
    }
    if use_exp {
        out.push(if upper { b'E' } else { b'e' });
        out.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs() as u64;
        if e < 10 {
            out.push(b'0');
        }
        out.push_u64(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(v: f64, spec: &str) -> (bool, String) {
        let s = super::super::spec::parse(spec, 0).unwrap();
        let mut out = Scratch::new();
        let neg = body(v, &s, &mut out);
        (neg, out.as_str().to_owned())
    }

    #[test]
    fn repr_layout() {
        assert_eq!(body_of(1.5, "").1, "1.5");
        assert_eq!(body_of(1e16, "").1, "1e+16");
        assert_eq!(body_of(1e15, "").1, "1000000000000000.0");
        assert_eq!(body_of(0.0001, "").1, "0.0001");
        assert_eq!(body_of(0.00001, "").1, "1e-05");
        assert_eq!(body_of(5e-324, "").1, "5e-324");
        assert_eq!(body_of(-0.0, ""), (true, "0.0".into()));
        assert_eq!(body_of(f64::NAN, "").1, "nan");
        assert_eq!(body_of(-f64::NAN, ""), (false, "nan".into()));
    }

    #[test]
    fn zero_flag_drops_sign_only_after_rounding_to_zero() {
        assert_eq!(body_of(-0.004, "z.2f"), (false, "0.00".into()));
        assert_eq!(body_of(-0.006, "z.2f"), (true, "0.01".into()));
        assert_eq!(body_of(-0.0, "ze"), (false, "0.000000e+00".into()));
        assert_eq!(body_of(f64::NEG_INFINITY, "z"), (true, "inf".into()));
    }
}
