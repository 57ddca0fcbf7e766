//! Fast correctly rounded digits: Ryu's shortest digits, rounded, where that
//! provably equals rounding the exact binary value.
//!
//! `S` (k digits) is the shortest decimal that round-trips to `x`, and among
//! those the nearest (ties to even, as CPython's dtoa mode 0). Rounding the
//! exact `x` to `m` significant digits gives the same as rounding `S`,
//! except in two cases, where this module answers `None` and the caller
//! falls back to `core::fmt`'s exact (slower) digit generation:
//!
//! * `k > m` and `S`'s dropped tail is exactly `5`: `x` may lie on either
//!   side of that midpoint. Otherwise no midpoint of `m`-digit decimals can
//!   lie between `x` and `S`: it would round-trip (it is between them) and
//!   have at most `k` digits, so be shorter than `S` or nearer `x` than `S`.
//! * `k <= m` and `m > 15`, or `x` subnormal: for a normal `x`,
//!   `|x - S| <= ulp/2 <= x * 2^-53 < x * 0.5 * 10^-m` when `m <= 15`, so no
//!   other `m`-digit decimal is as near `x` as `S`; beyond that it may be.
//!
//! Invariant: a `Decimal` holds at most 17 significant digits, no leading or
//! trailing zeros (zero itself is the single digit `0` with `decpt == 1`),
//! and means `0.DIGITS * 10^decpt`.

/// A short decimal: `0.d1d2...dk * 10^decpt`.
pub(super) struct Decimal {
    digits: [u8; 24],
    len: usize,
    pub decpt: isize,
}

/// Above this many significant digits padding `S` with zeros is not proved
/// to be the correctly rounded result.
const PAD_SAFE: isize = 15;

impl Decimal {
    pub fn digits(&self) -> &[u8] {
        &self.digits[..self.len]
    }

    fn zero() -> Decimal {
        let mut d = Decimal {
            digits: [0; 24],
            len: 1,
            decpt: 1,
        };
        d.digits[0] = b'0';
        d
    }

    fn is_zero(&self) -> bool {
        self.digits() == b"0"
    }

    /// The shortest round-tripping digits of a finite `a >= 0`.
    pub fn shortest(a: f64, buf: &mut ryu::Buffer) -> Decimal {
        // Ryu prints `123.45`, `0.00012`, `1.2e-7` or `1e16`: a mantissa
        // with at most 17 digits and an optional exponent.
        let s = buf.format_finite(a).as_bytes();
        let (mant, exp) = match s.iter().position(|&b| b == b'e' || b == b'E') {
            Some(i) => (&s[..i], parse_exp(&s[i + 1..])),
            None => (s, 0),
        };
        let point = mant.iter().position(|&b| b == b'.').unwrap_or(mant.len());
        let (int, frac) = (&mant[..point], mant.get(point + 1..).unwrap_or(&[]));
        let mut d = Decimal {
            digits: [0; 24],
            len: 0,
            decpt: 0,
        };
        let int = trim_leading_zeros(int);
        if int.is_empty() {
            let frac_digits = trim_leading_zeros(frac);
            d.decpt = exp - (frac.len() - frac_digits.len()) as isize;
            d.push(frac_digits);
        } else {
            d.decpt = exp + int.len() as isize;
            d.push(int);
            d.push(frac);
        }
        while d.len > 0 && d.digits[d.len - 1] == b'0' {
            d.len -= 1;
        }
        if d.len == 0 {
            return Decimal::zero();
        }
        d
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.digits.len() - self.len);
        self.digits[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// `self` (the shortest digits of the normal or zero `x`) correctly
    /// rounded to `m` significant digits, or `None` when that is not proved
    /// (see the module docs). `m <= 0` rounds at a position left of the
    /// first digit (fixed notation of a small value).
    pub fn round(&self, m: isize, x_is_subnormal: bool) -> Option<Decimal> {
        if self.is_zero() {
            return Some(Decimal::zero());
        }
        let k = self.len as isize;
        if k <= m {
            return (m <= PAD_SAFE && !x_is_subnormal).then(|| self.copy());
        }
        if m < 0 {
            return Some(Decimal::zero());
        }
        let m = m as usize;
        let tail = &self.digits()[m..];
        let up = match tail {
            [b'5'] => return None,
            [first, ..] => *first >= b'5',
            [] => false,
        };
        let mut r = Decimal {
            digits: [0; 24],
            len: m,
            decpt: self.decpt,
        };
        r.digits[..m].copy_from_slice(&self.digits[..m]);
        if up {
            // propagate the carry; all nines become 1 and a longer number
            let mut j = m;
            loop {
                if j == 0 {
                    r.digits[0] = b'1';
                    r.len = 1;
                    r.decpt += 1;
                    break;
                }
                j -= 1;
                if r.digits[j] == b'9' {
                    r.len = j;
                } else {
                    r.digits[j] += 1;
                    r.len = j + 1;
                    break;
                }
            }
        }
        while r.len > 0 && r.digits[r.len - 1] == b'0' {
            r.len -= 1;
        }
        if r.len == 0 {
            return Some(Decimal::zero());
        }
        Some(r)
    }

    fn copy(&self) -> Decimal {
        Decimal {
            digits: self.digits,
            len: self.len,
            decpt: self.decpt,
        }
    }
}

fn trim_leading_zeros(b: &[u8]) -> &[u8] {
    let z = b.iter().take_while(|&&c| c == b'0').count();
    &b[z..]
}

/// Reads an exponent, `[-]X`.
fn parse_exp(s: &[u8]) -> isize {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
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
        let d = Decimal::shortest(a, &mut ryu::Buffer::new());
        (String::from_utf8(d.digits().to_vec()).unwrap(), d.decpt)
    }

    fn rounded(a: f64, m: isize) -> Option<(String, isize)> {
        let d = Decimal::shortest(a, &mut ryu::Buffer::new());
        d.round(m, a != 0.0 && a < f64::MIN_POSITIVE)
            .map(|r| (String::from_utf8(r.digits().to_vec()).unwrap(), r.decpt))
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
    fn rounding_and_refusals() {
        assert_eq!(rounded(123.45, 3), Some(("123".into(), 3)));
        assert_eq!(rounded(123.46, 4), Some(("1235".into(), 3)));
        // tail exactly 5: the exact value decides, not S
        assert_eq!(rounded(123.45, 4), None);
        assert_eq!(rounded(0.125, 2), None);
        assert_eq!(rounded(9.96, 2), Some(("1".into(), 2)));
        assert_eq!(rounded(0.0004, 0), Some(("0".into(), 1)));
        assert_eq!(rounded(0.0006, 0), Some(("1".into(), -2)));
        assert_eq!(rounded(0.0004, -1), Some(("0".into(), 1)));
        assert_eq!(rounded(1.5, 15), Some(("15".into(), 1)));
        assert_eq!(rounded(1.5, 16), None);
        assert_eq!(rounded(5e-324, 3), None);
        assert_eq!(rounded(0.1, 20), None);
    }
}
