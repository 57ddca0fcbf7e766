//! Sign, digit grouping and padding around a number's body, as CPython's
//! `calc_number_widths` + `fill_number` place them:
//!
//! `<lpad><sign><spad><grouped integer digits><rest><rpad>`
//!
//! where `rest` is everything from the first non-digit of the body (point,
//! fraction, exponent, `%`, or all of `inf`/`nan`). Only one of the three
//! paddings is non-empty. A fill of `0` with `=` alignment does not pad:
//! it widens the integer part with leading zeros, grouped like real digits
//! (`format(1234, "012,")` is `0,000,001,234`, wider than asked).
//!
//! Invariant: the body is ASCII, so widths count bytes of the body plus
//! one character per fill.

use super::spec::{Align, Sign, Spec};

/// Appends the finished field to `out`. `body` has no sign; `negative` says
/// whether it takes a minus.
pub(super) fn finish(spec: &Spec, negative: bool, body: &[u8], out: &mut Vec<u8>) {
    let sign = match (negative, spec.sign) {
        (true, _) => Some(b'-'),
        (false, Sign::Plus) => Some(b'+'),
        (false, Sign::Space) => Some(b' '),
        (false, Sign::Negative) => None,
    };
    let zero_widened = spec.fill == '0' && spec.align == Align::AfterSign;
    if spec.grouping.is_none() && !zero_widened {
        // The common case: the body goes in as it is, between the paddings.
        let used = usize::from(sign.is_some()) + body.len();
        let (lpad, spad, rpad) = split_padding(spec.align, spec.width.saturating_sub(used));
        push_fill(out, spec.fill, lpad);
        if let Some(s) = sign {
            out.push(s);
        }
        push_fill(out, spec.fill, spad);
        out.extend_from_slice(body);
        push_fill(out, spec.fill, rpad);
        return;
    }
    let n_digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    let (digits, rest) = body.split_at(n_digits);
    let fixed = usize::from(sign.is_some()) + rest.len();
    let width = spec.width as isize;

    let min_width = if zero_widened {
        width - fixed as isize
    } else {
        0
    };
    let (virtual_digits, grouped_len) = if n_digits == 0 {
        (0, 0)
    } else {
        grouped_size(n_digits, min_width, spec.grouping.is_some())
    };

    let padding = (width - (fixed + grouped_len) as isize).max(0) as usize;
    let (lpad, spad, rpad) = split_padding(spec.align, padding);

    out.reserve(lpad + spad + rpad + grouped_len + rest.len() + 1);
    push_fill(out, spec.fill, lpad);
    if let Some(s) = sign {
        out.push(s);
    }
    push_fill(out, spec.fill, spad);
    if virtual_digits == n_digits && spec.grouping.is_none() {
        out.extend_from_slice(body);
    } else {
        // `virtual_digits` digits (leading zeros, then the real ones) with
        // a separator before every group of three from the right.
        let zeros = virtual_digits - n_digits;
        for k in 0..virtual_digits {
            if k > 0 && (virtual_digits - k) % 3 == 0 {
                if let Some(sep) = spec.grouping {
                    out.push(sep);
                }
            }
            out.push(if k < zeros { b'0' } else { digits[k - zeros] });
        }
        out.extend_from_slice(rest);
    }
    push_fill(out, spec.fill, rpad);
}

/// `(before the sign, between sign and digits, after)` for `align`.
fn split_padding(align: Align, padding: usize) -> (usize, usize, usize) {
    match align {
        Align::Left => (0, 0, padding),
        Align::Right => (padding, 0, 0),
        Align::Center => (padding / 2, 0, padding - padding / 2),
        Align::AfterSign => (0, padding, 0),
    }
}

/// Appends `n` copies of `fill` (UTF-8 encoded).
fn push_fill(out: &mut Vec<u8>, fill: char, n: usize) {
    if n == 0 {
        return;
    }
    if fill.is_ascii() {
        out.resize(out.len() + n, fill as u8);
        return;
    }
    let mut utf8 = [0u8; 4];
    let encoded = fill.encode_utf8(&mut utf8).as_bytes();
    for _ in 0..n {
        out.extend_from_slice(encoded);
    }
}

/// CPython's `_PyUnicode_InsertThousandsGrouping` in counting mode, for the
/// grouping "3, repeated" (or none). Returns (digits including zero fill,
/// characters including separators). `min_width` counts separators.
fn grouped_size(n_digits: usize, min_width: isize, grouping: bool) -> (usize, usize) {
    let mut remaining = n_digits as isize;
    if !grouping {
        let len = remaining.max(min_width).max(1) as usize;
        return (len, len);
    }
    let mut min_width = min_width;
    let mut digits = 0isize;
    let mut count = 0isize;
    let mut first = true;
    loop {
        let l = 3.min(remaining.max(min_width).max(1));
        let n_zeros = (l - remaining).max(0);
        let n_chars = remaining.min(l).max(0);
        count += isize::from(!first) + n_zeros + n_chars;
        digits += n_zeros + n_chars;
        first = false;
        remaining -= n_chars;
        min_width -= l;
        if remaining <= 0 && min_width <= 0 {
            break;
        }
        min_width -= 1;
    }
    (digits as usize, count as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::spec::parse;

    fn fin(spec: &str, negative: bool, body: &str) -> String {
        let mut out = b">".to_vec();
        finish(
            &parse(spec, 0).unwrap(),
            negative,
            body.as_bytes(),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn grouping_counts() {
        assert_eq!(grouped_size(4, 0, true), (4, 5));
        assert_eq!(grouped_size(3, 0, true), (3, 3));
        assert_eq!(grouped_size(4, 12, true), (10, 13));
        assert_eq!(grouped_size(1, 0, false), (1, 1));
        assert_eq!(grouped_size(2, 7, false), (7, 7));
    }

    #[test]
    fn padding_and_sign_placement() {
        // expected values from CPython's format()
        assert_eq!(fin("012,", false, "1234"), ">0,000,001,234");
        assert_eq!(fin("*^9", true, "1.5"), ">**-1.5***");
        assert_eq!(fin("*=+8", false, "1.5"), ">+****1.5");
        assert_eq!(fin("010", true, "inf"), ">-000000inf");
        assert_eq!(fin("€<5", false, "1"), ">1€€€€");
        assert_eq!(fin("_", false, "1234567.125e+05"), ">1_234_567.125e+05");
    }
}
