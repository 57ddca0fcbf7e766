//! A fixed-capacity byte buffer on the stack, the formatter's workspace.
//!
//! Invariant: it only ever holds ASCII (digits, `.`, `e`, `+`, `-`, `%`,
//! letters of `inf`/`nan`), so any prefix of it is valid UTF-8. Its capacity
//! covers the longest body any accepted spec can produce (see
//! [`super::spec::MAX_PRECISION`]); a write past the end is dropped rather
//! than panicking, because the formatter runs on the drain thread.

use std::fmt;

/// Longest body: `f` of 1.8e308 (309 integer digits) plus `.`, the maximal
/// precision and a `%`, with room to spare.
pub(super) const CAPACITY: usize = 512;
/// Every non-fixed body: `e` or `g` with the maximal precision is 107
/// bytes, repr at most 24. Smaller means less to zero per field.
pub(super) const SMALL: usize = 128;

pub(super) struct Scratch<const N: usize = CAPACITY> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Scratch<N> {
    pub(super) fn new() -> Self {
        Scratch {
            buf: [0; N],
            len: 0,
        }
    }

    pub(super) fn push(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        if self.len < N {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    pub(super) fn push_n(&mut self, b: u8, n: usize) {
        debug_assert!(b.is_ascii());
        let end = (self.len + n).min(N);
        self.buf[self.len..end].fill(b);
        self.len = end;
    }

    pub(super) fn extend(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.is_ascii());
        let n = bytes.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    pub(super) fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        Some(self.buf[self.len])
    }

    pub(super) fn last(&self) -> Option<u8> {
        self.as_bytes().last().copied()
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    #[cfg(test)]
    pub(super) fn as_str(&self) -> &str {
        // Only ASCII is ever pushed (module invariant), so this cannot fail;
        // the fallback keeps the drain thread panic-free regardless.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Appends the decimal digits of `n`.
    pub(super) fn push_u64(&mut self, mut n: u64) {
        if n < 10 {
            self.push(b'0' + n as u8);
            return;
        }
        let mut tmp = [0u8; 20];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.extend(&tmp[i..]);
    }
}

impl<const N: usize> fmt::Write for Scratch<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.len + s.len() > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
        self.len += s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;

    #[test]
    fn digits_of_u64() {
        let mut s: Scratch = Scratch::new();
        s.push_u64(0);
        s.push(b' ');
        s.push_u64(u64::MAX);
        assert_eq!(s.as_str(), "0 18446744073709551615");
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let mut s: Scratch<4> = Scratch::new();
        assert!(write!(s, "abc").is_ok());
        assert!(write!(s, "de").is_err());
        s.push(b'x');
        s.push(b'y');
        assert_eq!(s.as_str(), "abcx");
    }
}
