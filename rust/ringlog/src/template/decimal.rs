//! `Decimal`: a digit string and the position of its point, the form in
//! which digits reach `float::layout` when they do not come from
//! `exact`'s integer fast path, read from the text of two exact sources:
//! Ryu's shortest round-tripping digits (repr) and `core::fmt`'s `{:.*e}`
//! (correctly rounded, ties to even: the fallback for the fixed-precision
//! types).
//!
//! Invariant: `0.DIGITS * 10^decpt` is the value; the digits have no
//! leading or trailing zeros, except zero itself, which is the single
//! digit `0` with `decpt == 1`.

use std::fmt::Write;

use super::scratch::Scratch;

/// Enough for `MAX_PRECISION + 1` significant digits.
type Digits = Scratch<128>;

pub(super) struct Decimal {
    digits: Digits,
    pub decpt: isize,
}

impl Decimal {
    pub fn digits(&self) -> &[u8] {
        self.digits.as_bytes()
    }

    /// The shortest round-tripping digits of a finite `a >= 0` (CPython's
    /// dtoa mode 0 up to the tie rule; see `float::repr_tie_to_even`).
    pub fn shortest(a: f64) -> Decimal {
        // Ryu prints `123.45`, `0.00012`, `1.2e-7` or `1e16`.
        Decimal::parse(ryu::Buffer::new().format_finite(a).as_bytes())
    }

    /// `n >= 1` correctly rounded significant digits of a finite `a >= 0`.
    pub fn exact(a: f64, n: usize) -> Decimal {
        let mut text = Digits::new();
        // `D.DDDe[-]X`; the buffer holds MAX_PRECISION + 1 digits and more.
        let _ = write!(text, "{a:.prec$e}", prec = n - 1);
        Decimal::parse(text.as_bytes())
    }

    /// Reads `[int][.frac][e[-]X]` (ASCII digits).
    fn parse(s: &[u8]) -> Decimal {
        let (mant, exp) = match s.iter().position(|&b| b == b'e' || b == b'E') {
            Some(i) => (&s[..i], parse_exp(&s[i + 1..])),
            None => (s, 0),
        };
        let point = mant.iter().position(|&b| b == b'.').unwrap_or(mant.len());
        let mut d = Decimal {
            digits: Digits::new(),
            decpt: exp + point as isize,
        };
        for &b in mant.iter().filter(|b| b.is_ascii_digit()) {
            if b == b'0' && d.digits.as_bytes().is_empty() {
                // A leading zero moves the point, not the digits.
                d.decpt -= 1;
            } else {
                d.digits.push(b);
            }
        }
        while d.digits.last() == Some(b'0') {
            d.digits.pop();
        }
        if d.digits.as_bytes().is_empty() {
            d.digits.push(b'0');
            d.decpt = 1;
        }
        d
    }
}

/// Reads an exponent, `[+|-]X`.
fn parse_exp(s: &[u8]) -> isize {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, s),
    };
    let e = digits
        .iter()
        .fold(0isize, |e, &b| e * 10 + (b.wrapping_sub(b'0') as isize));
    if neg {
        -e
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(a: f64) -> (String, isize) {
        let d = Decimal::shortest(a);
        (String::from_utf8(d.digits().to_vec()).unwrap(), d.decpt)
    }

    fn exact(a: f64, n: usize) -> (String, isize) {
        let d = Decimal::exact(a, n);
        (String::from_utf8(d.digits().to_vec()).unwrap(), d.decpt)
    }

    #[test]
    fn parses_every_ryu_shape() {
        assert_eq!(short(0.0), ("0".into(), 1));
        assert_eq!(short(1.0), ("1".into(), 1));
        assert_eq!(short(123.45), ("12345".into(), 3));
        assert_eq!(short(0.00012), ("12".into(), -3));
        assert_eq!(short(1.2e-7), ("12".into(), -6));
        assert_eq!(short(1e16), ("1".into(), 17));
        assert_eq!(short(1e300), ("1".into(), 301));
        assert_eq!(short(5e-324), ("5".into(), -323));
        assert_eq!(
            short(1.7976931348623157e308),
            ("17976931348623157".into(), 309)
        );
        assert_eq!(short(100.0), ("1".into(), 3));
    }

    #[test]
    fn exact_digits_round_half_even_and_drop_trailing_zeros() {
        assert_eq!(exact(0.125, 2), ("12".into(), 0));
        assert_eq!(exact(0.375, 2), ("38".into(), 0));
        assert_eq!(exact(9.96, 2), ("1".into(), 2));
        assert_eq!(exact(1.5, 20), ("15".into(), 1));
        assert_eq!(exact(0.0, 3), ("0".into(), 1));
        assert_eq!(exact(5e-324, 3), ("494".into(), -323));
        assert_eq!(exact(0.1, 20), ("10000000000000000555".into(), 0));
    }
}
