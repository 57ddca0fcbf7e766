//! `ringlog`: fixed-size numeric log records pushed into a bounded lock-free
//! ring by any number of producers, formatted and written by one drain thread.
//!
//! The push path copies numbers and returns: no formatting, no allocation, no
//! I/O. Strings never travel through the ring; a template is registered once
//! and travels as a `u32` id.
//!
//! Files, one concept each: `clock` (cheap push timestamps), `record` (the fixed-size record), `ring` (bounded
//! queue and full-ring policies), `wake` (parking the drain), `drain` (the
//! thread that formats and writes), `sink` (destinations), `stats`
//! (counters, latency histogram), `templates` (a logger's template table),
//! `logger` (the handle and the registry of live loggers), `template` and
//! `value` (formatting and numbers).

pub mod clock;
mod drain;
pub mod logger;
pub mod record;
pub mod ring;
pub mod sink;
pub mod stats;
pub mod template;
mod templates;
pub mod value;
pub mod wake;

pub use logger::{
    after_fork_child, after_fork_parent, before_fork, close_all, lookup, Config, Logger, PushError,
};
pub use ring::Policy;
pub use sink::{FdSink, MemorySink, PathSink, Sink};
pub use stats::Stats;
pub use template::{Template, TemplateError};
pub use value::{Value, MAX_VALUES};
