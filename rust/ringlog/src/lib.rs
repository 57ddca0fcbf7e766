//! `ringlog`: fixed-size numeric log records pushed into a bounded lock-free
//! ring by any number of producers, formatted and written by one drain thread.
//!
//! The push path copies numbers and returns: no formatting, no allocation, no
//! I/O. Strings never travel through the ring; a template is registered once
//! and travels as a `u32` id.

pub mod template;
pub mod value;

pub use template::{Template, TemplateError};
pub use value::{Value, MAX_VALUES};
