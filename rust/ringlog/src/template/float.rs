//! Float bodies: the digits, point, exponent and `%` of a formatted float,
//! without sign or padding, exactly as CPython's `format_float_short` lays
//! them out.
//!
//! Digits: for `e`, `f`, `g`, `%` (and no type with a precision) the
//! correctly rounded digits of the exact binary value, ties to even, as
//! CPython's dtoa modes 2 and 3: from `exact`'s integer arithmetic where the
//! value fits, else from `core::fmt`'s `{:.*e}` / `{:.*}`, which are exact
//! too. With no type and no precision (repr, dtoa mode 0): Ryu's shortest
//! round-tripping digits, with a tie re-decided to even. What is written
//! here is the layout on top: when `g` and repr switch to exponent
//! notation, padding zeros, `#`, the two-digit signed exponent, upper case,
//! `nan`/`inf`.
//!
//! Invariant: for specs accepted by `spec::parse` (precision at most
//! `MAX_PRECISION`), a body fits `Scratch<SMALL>` unless it is fixed
//! notation (`f`, `F`, `%`), which needs up to 309 integer digits and so
//! the full `Scratch<CAPACITY>`.

use std::fmt::Write;

use super::decimal::Decimal;
use super::exact;
use super::scratch::Scratch;
use super::spec::{Kind, Spec};

/// Writes the body of `v` for `spec` into `out` (which must be empty) and
/// returns whether the number takes a minus sign.
pub(super) fn body<const N: usize>(v: f64, spec: &Spec, out: &mut Scratch<N>) -> bool {
    let (upper, percent) = match spec.kind {
        Kind::E { upper } | Kind::F { upper } | Kind::G { upper } => (upper, false),
        Kind::Percent => (false, true),
        Kind::None | Kind::D => (false, false),
    };
    // CPython multiplies first, so a huge value can overflow to inf%.
    let x = if percent { v * 100.0 } else { v };
    // CPython ignores the sign bit of a nan.
    let negative = x.is_sign_negative() && !x.is_nan();
    if !x.is_finite() {
        let word: &[u8] = match (x.is_nan(), upper) {
            (true, false) => b"nan",
            (true, true) => b"NAN",
            (false, false) => b"inf",
            (false, true) => b"INF",
        };
        out.extend(word);
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
            match exact::fixed(a, p) {
                Some(q) => {
                    let mut text = itoa::Buffer::new();
                    // The u64 conversion is the cheaper one; q rarely needs more.
                    let digits = match u64::try_from(q) {
                        Ok(small) => text.format(small),
                        Err(_) => text.format(q),
                    }
                    .as_bytes();
                    let decpt = digits.len() as isize - p as isize;
                    layout(digits, decpt, Layout::Fixed(p), alt, upper, out);
                }
                None => {
                    let _ = write!(out, "{a:.p$}");
                    if p == 0 && alt {
                        out.push(b'.');
                    }
                }
            }
        }
        (Kind::E { .. }, p) => {
            let p = p.unwrap_or(6);
            with_digits(a, p + 1, |digits, decpt| {
                layout(digits, decpt, Layout::Exp(p + 1), alt, upper, out)
            });
        }
        (Kind::G { .. } | Kind::None | Kind::D, Some(_)) | (Kind::G { .. }, None) => {
            // precision 0 makes no sense for 'g'; CPython reads it as 1.
            // No type with a precision is 'g' that keeps a digit after
            // the point.
            let p = spec.precision.unwrap_or(6).max(1);
            let dot0 = !matches!(spec.kind, Kind::G { .. });
            let how = Layout::General { precision: p, dot0 };
            let upper = upper && !dot0;
            // dtoa mode 2 returns no trailing zeros.
            with_digits(a, p, |digits, decpt| {
                let kept = digits.len() - digits.iter().rev().take_while(|&&b| b == b'0').count();
                layout(&digits[..kept.max(1)], decpt, how, alt, upper, out)
            });
        }
        (Kind::None | Kind::D, None) => {
            let mut d = Decimal::shortest(a);
            repr_tie_to_even(a, &mut d);
            layout(d.digits(), d.decpt, Layout::Repr, alt, false, out);
        }
    }
    if percent {
        out.push(b'%');
    }
    negative && !(spec.no_neg_zero && is_zero(out.as_bytes()))
}

/// Calls `then(digits, decpt)` with `n` correctly rounded significant
/// digits of a finite `a >= 0` (`a == 0.DIGITS * 10^decpt`, rounded).
fn with_digits<R>(a: f64, n: usize, then: impl FnOnce(&[u8], isize) -> R) -> R {
    if n <= exact::MAX_SIGNIFICANT {
        if let Some((q, k)) = exact::significant(a, n) {
            let mut text = itoa::Buffer::new();
            return then(text.format(q).as_bytes(), k as isize + 1);
        }
    }
    let d = Decimal::exact(a, n);
    then(d.digits(), d.decpt)
}

/// True when the mantissa (everything before an exponent) has no nonzero
/// digit: what `z` tests after rounding.
fn is_zero(body: &[u8]) -> bool {
    body.iter()
        .take_while(|&&b| b != b'e' && b != b'E')
        .all(|&b| !b.is_ascii_digit() || b == b'0')
}

/// repr's digits are the shortest that round-trip, the nearest among them,
/// and on an exact tie at the last digit the even one (dtoa mode 0).
/// Ryu breaks ties the same way; this re-decides a possible tie with the
/// correctly rounded (ties-to-even) digits of the same length all the same,
/// because a tie is where shortest-digit algorithms differ (Rust's own
/// `{:e}` gives `2134917602002159.3` for 2134917602002159.25, Python
/// `...159.2`) and checking costs nothing unless a tie is possible.
fn repr_tie_to_even(a: f64, d: &mut Decimal) {
    let odd_last = d.digits().last().is_some_and(|b| b % 2 == 1);
    if !(odd_last && may_tie(a)) {
        return;
    }
    let even = Decimal::exact(a, d.digits().len());
    if even.digits() != d.digits() && round_trips(even.digits(), even.decpt, a) {
        *d = even;
    }
}

/// False when `a`'s exact decimal expansion is too long for a tie at the
/// last digit of a shortest (at most 17-digit) string; see `repr_tie_to_even`.
fn may_tie(a: f64) -> bool {
    let (m, q) = exact::decompose(a);
    if m == 0 {
        return false;
    }
    // k = -q fractional bits give at least min(k + 1, 0.69 k) significant
    // decimal digits: over 18 once k > 25. Integers below 2^53 are printed
    // exactly, never rounded.
    q >= -25 && !(q >= 0 && a < 9007199254740992.0)
}

/// Whether `0.DIGITS * 10^decpt` parses back to `a`.
fn round_trips(digits: &[u8], decpt: isize, a: f64) -> bool {
    let mut s = Scratch::<64>::new();
    s.extend(b"0.");
    s.extend(digits);
    let _ = write!(s, "e{decpt}");
    std::str::from_utf8(s.as_bytes())
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        == Some(a)
}

/// CPython's exponent: `e`, a sign, at least two digits.
fn push_exp<const N: usize>(out: &mut Scratch<N>, exp: isize, upper: bool) {
    out.push(if upper { b'E' } else { b'e' });
    out.push(if exp < 0 { b'-' } else { b'+' });
    let e = exp.unsigned_abs();
    if e < 100 {
        out.push(b'0' + (e / 10) as u8);
        out.push(b'0' + (e % 10) as u8);
    } else {
        out.push_u64(e as u64);
    }
}

#[derive(Clone, Copy)]
enum Layout {
    /// `f`: this many digits after the point.
    Fixed(usize),
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
fn layout<const N: usize>(
    digits: &[u8],
    decpt: isize,
    how: Layout,
    alt: bool,
    upper: bool,
    out: &mut Scratch<N>,
) {
    let n = digits.len() as isize;
    let (use_exp, mut vend, dot0) = match how {
        Layout::Fixed(p) => (false, decpt + p as isize, false),
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

    let zeros = |out: &mut Scratch<N>, k: isize| out.push_n(b'0', k.max(0) as usize);
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
        push_exp(out, exp, upper);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(v: f64, spec: &str) -> (bool, String) {
        let s = super::super::spec::parse(spec, 0).unwrap();
        let mut out: Scratch = Scratch::new();
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
    // the literals are the exact binary values: each ends in 25 or 75, the
    // halfway point the test is about
    #[allow(clippy::excessive_precision)]
    fn repr_ties_go_to_the_even_digit() {
        // repr() of values exactly halfway at the 17th digit (CPython 3.11)
        assert_eq!(body_of(2134917602002159.25, "").1, "2134917602002159.2");
        assert_eq!(body_of(1975086330747965.25, "").1, "1975086330747965.2");
        assert_eq!(body_of(2134917602002159.75, "").1, "2134917602002159.8");
        assert_eq!(body_of(1.5, "").1, "1.5");
        assert!(!may_tie(0.1) && !may_tie(12345.0) && !may_tie(0.0));
        assert!(may_tie(2134917602002159.25) && may_tie(1e22));
    }

    #[test]
    fn zero_flag_drops_sign_only_after_rounding_to_zero() {
        assert_eq!(body_of(-0.004, "z.2f"), (false, "0.00".into()));
        assert_eq!(body_of(-0.006, "z.2f"), (true, "0.01".into()));
        assert_eq!(body_of(-0.0, "ze"), (false, "0.000000e+00".into()));
        assert_eq!(body_of(f64::NEG_INFINITY, "z"), (true, "inf".into()));
    }
}
