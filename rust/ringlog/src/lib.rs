//! `ringlog`: fixed-size numeric log records pushed into a bounded lock-free
//! ring by any number of producers, formatted and written by one drain thread.
//!
//! The push path copies numbers and returns: no formatting, no allocation, no
//! I/O. Strings never travel through the ring; a template is registered once
//! and travels as a `u32` id.
//!
//! Files, one concept each: `clock` (cheap push timestamps), `record` (the
//! fixed-size record), `ring` (bounded queue and full-ring policies), `wake`
//! (parking the drain), `shared` (the state handles and drain share: run
//! state, flush tickets, the consumer's sink and buffers), `gate` (admitting
//! flushers that write on their own thread), `drain` (what the consumer
//! does: the drain thread, and a flusher writing on its own thread),
//! `live` (opening, closing, the registry of live loggers, fork), `logger`
//! (the handle: push, flush, stats), `sink` (destinations), `stats`
//! (counters, latency histogram), `registry` (a logger's table of
//! registered templates), `template` (one template: parsing and
//! formatting) and `value` (numbers).
//!
//! Dependencies run one way: `logger` → `live` → `drain` → `shared` →
//! `gate`; `logger` and `live` also use `shared`, `logger` also `drain`;
//! nothing uses `logger`.

pub mod clock;
mod drain;
mod gate;
mod live;
pub mod logger;
pub mod record;
mod registry;
pub mod ring;
mod shared;
pub mod sink;
pub mod stats;
pub mod template;
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
