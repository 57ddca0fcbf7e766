//! The fixed-size record that travels through the ring.
//!
//! Invariants:
//! - A `Record` is `Copy` and holds no pointers: pushing one is a memcpy of
//!   about 120 bytes, with no heap and no reference to the producer's memory.
//! - `len <= MAX_VALUES`; bit `i` of `float_mask` is set when `bits[i]` holds
//!   the IEEE-754 bits of an `f64`, clear when it holds an `i64`.
//! - `tid == FLUSH_MARKER` marks a flush request (see `drain.rs`); `seq` then
//!   carries the flush ticket instead of a producer sequence number, and the
//!   record is never counted as pushed or written.

use crate::value::{Value, MAX_VALUES};

/// Template id reserved for flush markers; `Logger::register` never hands it out.
pub const FLUSH_MARKER: u32 = u32::MAX;

/// One log record: a template id and up to [`MAX_VALUES`] numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Record {
    /// Template id, or [`FLUSH_MARKER`].
    pub tid: u32,
    /// Number of values in use.
    pub len: u8,
    /// Bit `i` set: value `i` is an `f64`; clear: an `i64`.
    pub float_mask: u16,
    /// Producer sequence number (logger-wide push order), or a flush ticket.
    pub seq: u64,
    /// Monotonic push time as a `clock::stamp()` (TSC ticks or ns; the
    /// drain converts with `clock::elapsed_ns`).
    pub ts_ns: u64,
    /// Raw value bits, interpreted through `float_mask`.
    pub bits: [u64; MAX_VALUES],
}

const _: () = assert!(MAX_VALUES <= 16, "float_mask has 16 bits");

/// One value as a record stores it: [`Value`] (an int or a float), or a
/// plain `f64` (a `d` field formats it as an integer).
pub trait Field: Copy {
    /// The raw bits, and whether they are an `f64`'s.
    fn bits(self) -> (u64, bool);
}

impl Field for Value {
    #[inline]
    fn bits(self) -> (u64, bool) {
        match self {
            Value::Int(x) => (x as u64, false),
            Value::Float(x) => (x.to_bits(), true),
        }
    }
}

impl Field for f64 {
    #[inline]
    fn bits(self) -> (u64, bool) {
        (self.to_bits(), true)
    }
}

impl Record {
    /// Builds a record. The caller has checked `values.len() <= MAX_VALUES`.
    #[inline]
    pub fn new<F: Field>(tid: u32, seq: u64, ts_ns: u64, values: &[F]) -> Record {
        debug_assert!(values.len() <= MAX_VALUES);
        let mut bits = [0u64; MAX_VALUES];
        let mut float_mask = 0u16;
        for (i, (slot, v)) in bits.iter_mut().zip(values).enumerate() {
            let (b, is_float) = v.bits();
            *slot = b;
            float_mask |= u16::from(is_float) << i;
        }
        Record {
            tid,
            len: values.len() as u8,
            float_mask,
            seq,
            ts_ns,
            bits,
        }
    }

    /// A flush marker carrying `ticket`.
    pub fn marker(ticket: u64) -> Record {
        Record {
            tid: FLUSH_MARKER,
            len: 0,
            float_mask: 0,
            seq: ticket,
            ts_ns: 0,
            bits: [0; MAX_VALUES],
        }
    }

    #[inline]
    pub fn is_marker(&self) -> bool {
        self.tid == FLUSH_MARKER
    }

    /// Writes the typed values into `out` and returns how many there are.
    #[inline]
    pub fn decode(&self, out: &mut [Value; MAX_VALUES]) -> usize {
        let n = self.len as usize;
        for (i, (slot, b)) in out.iter_mut().zip(&self.bits[..n]).enumerate() {
            *slot = if self.float_mask & (1 << i) != 0 {
                Value::Float(f64::from_bits(*b))
            } else {
                Value::Int(*b as i64)
            };
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_mixed_values() {
        let vals = [
            Value::Int(-3),
            Value::Float(-0.0),
            Value::Float(f64::NAN),
            Value::Int(i64::MAX),
        ];
        let r = Record::new(7, 1, 2, &vals[..]);
        let mut out = [Value::Int(0); MAX_VALUES];
        let n = r.decode(&mut out);
        assert_eq!(n, 4);
        assert_eq!(out[0], Value::Int(-3));
        assert!(matches!(out[1], Value::Float(x) if x == 0.0 && x.is_sign_negative()));
        assert!(matches!(out[2], Value::Float(x) if x.is_nan()));
        assert_eq!(out[3], Value::Int(i64::MAX));
    }

    #[test]
    fn f64_records_are_all_float_even_when_full() {
        let vals = [1.5f64; MAX_VALUES];
        let r = Record::new(0, 0, 0, &vals[..]);
        let mut out = [Value::Int(0); MAX_VALUES];
        assert_eq!(r.decode(&mut out), MAX_VALUES);
        assert!(out.iter().all(|v| *v == Value::Float(1.5)));
        assert_eq!(Record::new(0, 0, 0, &[] as &[f64]).float_mask, 0);
    }

    #[test]
    fn record_stays_small_and_markers_are_distinct() {
        assert!(std::mem::size_of::<Record>() <= 128);
        assert!(Record::marker(3).is_marker());
        assert!(!Record::new(0, 0, 0, &[1.0][..]).is_marker());
    }
}
