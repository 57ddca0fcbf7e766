//! Correctly rounded fixed-precision digits by exact integer arithmetic: the
//! fast path for `e`, `f`, `g` and `%` (CPython's dtoa modes 2 and 3).
//!
//! A finite `a >= 0` is exactly `m * 2^e`. Scaling it by `10^t` gives the
//! fraction `m * 2^(e+t) * 5^t`; its powers of two and of five go to the
//! numerator or the denominator by sign, so both are integers. When both
//! fit in 127 bits, one integer division with its remainder rounds the
//! exact value half to even, which is what CPython does (it rounds the
//! exact binary value, never a shorter decimal). When they do not fit
//! (magnitudes beyond roughly 1e-25..1e38 at the usual precisions, very
//! large precisions, subnormals), the functions answer `None` and the
//! caller uses `core::fmt`'s exact digits instead.
//!
//! Invariant: every `Some` answer is the exact, correctly rounded result;
//! there is no approximation anywhere in this file, only overflow checks.

/// `5^k` for every `k` whose power stays below 2^127.
const POW5: [u128; 55] = {
    let mut t = [1u128; 55];
    let mut k = 1;
    while k < t.len() {
        t[k] = t[k - 1] * 5;
        k += 1;
    }
    t
};

/// Largest `n` for which [`significant`] answers: `10^n` fits a `u64`.
pub(super) const MAX_SIGNIFICANT: usize = 19;

/// `10^k` for `k <= MAX_SIGNIFICANT`.
const POW10: [u64; MAX_SIGNIFICANT + 1] = {
    let mut t = [1u64; MAX_SIGNIFICANT + 1];
    let mut k = 1;
    while k < t.len() {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// `a` as `(m, e)` with `a == m * 2^e` and `m` odd (or `(0, 0)` for zero).
pub(super) fn decompose(a: f64) -> (u64, i32) {
    let bits = a.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    let (m, e) = if biased == 0 {
        (frac, -1074)
    } else {
        (frac | (1u64 << 52), biased - 1075)
    };
    if m == 0 {
        return (0, 0);
    }
    let tz = m.trailing_zeros();
    (m >> tz, e + tz as i32)
}

/// `m * 2^e * 10^t` as `(numerator, denominator)`, each below 2^127, or
/// `None` if either would not fit.
fn scaled(m: u64, e: i32, t: i32) -> Option<(u128, u128)> {
    let (mut num, mut den) = (m as u128, 1u128);
    let twos = e + t;
    let shift = twos.unsigned_abs();
    if twos >= 0 {
        if shift >= num.leading_zeros() {
            return None;
        }
        num <<= shift;
    } else {
        if shift >= 127 {
            return None;
        }
        den <<= shift;
    }
    let five = *POW5.get(t.unsigned_abs() as usize)?;
    let side = if t >= 0 { &mut num } else { &mut den };
    *side = side.checked_mul(five).filter(|v| v.leading_zeros() >= 1)?;
    Some((num, den))
}

/// `(num / den, num % den)`, by the cheapest means that is exact.
fn div_rem(num: u128, den: u128) -> (u128, u128) {
    if den.is_power_of_two() {
        // The common case (`f`, and `e` of values below 10^n): a shift.
        let s = den.trailing_zeros();
        (num >> s, num & (den - 1))
    } else if let (Ok(n), Ok(d)) = (u64::try_from(num), u64::try_from(den)) {
        ((n / d) as u128, (n % d) as u128)
    } else {
        (num / den, num % den)
    }
}

/// `num / den` rounded half to even, given `(q, r) = div_rem(num, den)`.
fn round_half_even((q, r): (u128, u128), den: u128) -> u128 {
    // r < den < 2^127, so 2r cannot overflow.
    let twice = r << 1;
    if twice > den || (twice == den && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

/// `round(a * 10^p)` (half to even) for a finite `a >= 0`: the digits of
/// `format(a, f".{p}f")` without the point.
pub(super) fn fixed(a: f64, p: usize) -> Option<u128> {
    let (m, e) = decompose(a);
    if m == 0 {
        return Some(0);
    }
    let (num, den) = scaled(m, e, i32::try_from(p).ok()?)?;
    Some(round_half_even(div_rem(num, den), den))
}

/// `a > 0` (finite) rounded half to even to `n` significant digits
/// (`1 <= n <= MAX_SIGNIFICANT`): `(q, k)` with `10^(n-1) <= q < 10^n` and
/// the rounded value `q * 10^(k+1-n)`, i.e. `k` is the decimal exponent of
/// `format(a, f".{n-1}e")`. Zero gives `(0, 0)`.
pub(super) fn significant(a: f64, n: usize) -> Option<(u64, i32)> {
    debug_assert!((1..=MAX_SIGNIFICANT).contains(&n));
    let (m, e) = decompose(a);
    if m == 0 {
        return Some((0, 0));
    }
    let top = POW10[n] as u128;
    let n = n as i32;
    // k = floor(log10(a)) is floor(log10(2^msb)) or one more, where 2^msb
    // is a's leading power of two (78913 / 2^18 approximates log10(2)); the
    // loop settles it exactly: a * 10^(n-1-k) must lie in [10^(n-1), 10^n).
    let msb = e + 63 - m.leading_zeros() as i32;
    let mut k = (msb * 78913) >> 18;
    let mut q = loop {
        let (num, den) = scaled(m, e, n - 1 - k)?;
        let (whole, rest) = div_rem(num, den);
        if whole >= top {
            k += 1;
        } else if whole < POW10[n as usize - 1] as u128 {
            k -= 1;
        } else {
            break round_half_even((whole, rest), den);
        }
    };
    if q == top {
        // 9.99.. rounded up to 10.0..: one more decimal exponent.
        q /= 10;
        k += 1;
    }
    Some((q as u64, k))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rust's `{:.*e}` is exact and rounds half to even: the reference.
    fn reference_significant(a: f64, n: usize) -> (u64, i32) {
        let s = format!("{a:.prec$e}", prec = n - 1);
        let (mant, exp) = s.split_once('e').unwrap();
        (mant.replace('.', "").parse().unwrap(), exp.parse().unwrap())
    }

    fn reference_fixed(a: f64, p: usize) -> u128 {
        format!("{a:.p$}").replace('.', "").parse().unwrap()
    }

    #[test]
    fn halfway_cases_round_to_even() {
        assert_eq!(fixed(0.125, 2), Some(12));
        assert_eq!(fixed(0.375, 2), Some(38));
        assert_eq!(fixed(2.5, 0), Some(2));
        assert_eq!(fixed(3.5, 0), Some(4));
        // 0.1 is a little above 0.1: no tie, rounds as its exact value says
        assert_eq!(fixed(0.15, 1), Some(1));
        assert_eq!(significant(125.0, 2), Some((12, 2)));
        assert_eq!(significant(135.0, 2), Some((14, 2)));
        assert_eq!(significant(9.96, 2), Some((10, 1)));
        assert_eq!(significant(0.0, 5), Some((0, 0)));
        assert_eq!(significant(1.0, 1), Some((1, 0)));
    }

    #[test]
    fn out_of_range_is_refused_not_wrong() {
        assert_eq!(significant(5e-324, 3), None);
        assert_eq!(significant(1e300, 5), None);
        assert_eq!(fixed(1e300, 2), None);
        assert_eq!(fixed(0.1, 100), None);
    }

    #[test]
    fn agrees_with_core_fmt_wherever_it_answers() {
        // A deterministic spread over magnitudes, mantissas and precisions,
        // plus exact ties (small integers and dyadic fractions).
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut answered = 0;
        // Fewer under Miri, which interprets every step (this code has no
        // unsafe; the spread still reaches every branch of `i % 4`).
        let cases = if cfg!(miri) { 200 } else { 200_000u64 };
        for i in 0..cases {
            let a = match i % 4 {
                0 => f64::from_bits(next() >> 1),
                1 => (next() % 100_000) as f64 / 2f64.powi((next() % 20) as i32),
                2 => (next() >> 11) as f64 * 2f64.powi((next() % 160) as i32 - 120),
                _ => (next() % 1000) as f64 + 0.5,
            };
            if !a.is_finite() {
                continue;
            }
            let n = 1 + (next() % MAX_SIGNIFICANT as u64) as usize;
            if let Some(got) = significant(a, n) {
                answered += 1;
                if a != 0.0 {
                    assert_eq!(got, reference_significant(a, n), "{a:e} to {n} digits");
                }
            }
            let p = (next() % 25) as usize;
            if let Some(got) = fixed(a, p) {
                assert_eq!(got, reference_fixed(a, p), "{a:e} with {p} decimals");
            }
        }
        assert!(
            answered > cases / 2,
            "the fast path answered only {answered} times"
        );
    }
}
