//! One numeric field of a log record.
//!
//! Invariant: a record never carries more than [`MAX_VALUES`] values, and a
//! template never has more than [`MAX_VALUES`] fields, so a record is a fixed
//! size `Copy` value with no heap on the push path.

/// The most values one record (and so one template) can carry.
pub const MAX_VALUES: usize = 12;

/// A number as it travels through the ring: integers stay `i64`, floats `f64`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}
