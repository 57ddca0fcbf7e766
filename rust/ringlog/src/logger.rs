//! The `Logger` handle: registering templates, pushing records, flushing,
//! closing, counters. Opening, closing and the registry of live loggers are
//! `live`'s; the state behind a handle is `shared`'s.
//!
//! Invariants:
//! - The push path ([`Logger::push`], [`Logger::push_f64`],
//!   [`Logger::try_push`], all through one `offer`) reads the template
//!   table without a lock, bumps one counter, copies a `Record` into the
//!   ring and notifies the drain: no formatting, no allocation, no I/O, no
//!   syscall while the drain is awake or lingering (dozing, see `wake`); a
//!   record may then wait one doze (a few ms) before it is written.
//! - `pushed` counts every record queued or dropped; a record a `block`
//!   push gave up on is taken back out of the count.
//! - `flush()` returns `true` only when every record whose push returned
//!   before the call began has been written (or dropped and counted): it
//!   queues a marker behind them and waits for its ticket (the flush-ticket
//!   protocol in `shared.rs`).
//! - The last `Logger` handle to go closes the logger (drains and joins).

use crate::clock::stamp;
use crate::drain;
use crate::live::{self, Handle};
use crate::record::{Field, Record};
use crate::ring::{Policy, Pushed, Ring};
use crate::shared::Shared;
use crate::sink::Sink;
use crate::stats::Stats;
use crate::template::TemplateError;
use crate::value::{Value, MAX_VALUES};
use std::fmt;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a logger is built.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Ring capacity in records (at least 1).
    pub capacity: usize,
    /// What producers do when the ring is full.
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            capacity: 65536,
            policy: Policy::DropNew,
        }
    }
}

/// Why a push was refused. A drop under `drop_new` is not an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushError {
    UnknownTemplate(u32),
    WrongArity { expected: usize, got: usize },
    Closed,
}

impl fmt::Display for PushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::UnknownTemplate(t) => write!(f, "unknown template id {t}"),
            PushError::WrongArity { expected, got } => {
                write!(f, "template takes {expected} values, got {got}")
            }
            PushError::Closed => f.write_str("logger is closed"),
        }
    }
}

impl std::error::Error for PushError {}

/// A cheap, cloneable handle to one ring logger.
#[derive(Clone)]
pub struct Logger {
    handle: Arc<Handle>,
}

/// The live logger with this id, if it exists and is not closed.
pub fn lookup(id: u64) -> Option<Logger> {
    live::lookup(id).map(|handle| Logger { handle })
}

/// Flushes and closes every live logger (the atexit hook).
pub fn close_all() {
    live::close_all();
}

/// Before `fork()`: writes what is queued and stops every drain thread, so
/// that no thread holds a lock or a half-written batch while the process is
/// copied.
pub fn before_fork() {
    live::before_fork();
}

/// After `fork()`, in the parent: restarts the drains stopped by
/// [`before_fork`].
pub fn after_fork_parent() {
    live::after_fork(false);
}

/// After `fork()`, in the child: the child's loggers start empty (what a
/// producer queued during the fork belongs to the parent) with fresh
/// counters, and get a drain thread of their own.
pub fn after_fork_child() {
    live::after_fork(true);
}

impl Logger {
    /// Builds a logger writing to `sink` and starts its drain thread.
    pub fn new(sink: Box<dyn Sink>, config: Config) -> Logger {
        let ring = Ring::new(config.capacity.max(1), config.policy);
        Logger {
            handle: live::open(ring, sink),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Process-unique id, for [`lookup`].
    pub fn id(&self) -> u64 {
        self.shared().id
    }

    pub fn policy(&self) -> Policy {
        self.shared().ring.policy()
    }

    pub fn is_closed(&self) -> bool {
        self.shared().closed.load(Relaxed)
    }

    /// Registers a template (identical texts get the same id).
    pub fn register(&self, source: &str) -> Result<u32, TemplateError> {
        self.shared().templates.register(source)
    }

    /// The number of values template `tid` takes.
    pub fn arity(&self, tid: u32) -> Option<usize> {
        self.shared().templates.get(tid).map(|e| e.arity)
    }

    /// Field names of template `tid`, in order.
    pub fn field_names(&self, tid: u32) -> Option<Vec<String>> {
        let entry = self.shared().templates.get(tid)?;
        Some(
            entry
                .template
                .field_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )
    }

    /// Marks template `tid` as the end of a unit of output (a solver's
    /// table): a push of it also writes everything queued and flushes the
    /// sink on the pushing thread, as [`Logger::flush`] does when the drain
    /// is idle; when a drain pass is under way the drain writes it, as any
    /// record. The pusher then waits for the sink (under every policy), so
    /// mark only a template pushed where that wait is already expected: a
    /// fit's closing line, which a flush follows anyway. Why: a flush from
    /// the caller after the computation formats the whole table with caches
    /// gone cold, several times the cost of writing it right after the push
    /// (`benches/probe_verbose_overhead.py`).
    pub fn flush_on_push(&self, tid: u32) -> Result<(), PushError> {
        let entry = self
            .shared()
            .templates
            .get(tid)
            .ok_or(PushError::UnknownTemplate(tid))?;
        entry.flush_on_push.store(true, Relaxed);
        Ok(())
    }

    /// Queues one record with `values` in the template's field order.
    #[inline]
    pub fn push(&self, tid: u32, values: &[Value]) -> Result<(), PushError> {
        self.offer(tid, values, true).map(|_| ())
    }

    /// Queues one record of floats; a `d` field formats its float as an
    /// integer.
    #[inline]
    pub fn push_f64(&self, tid: u32, values: &[f64]) -> Result<(), PushError> {
        self.offer(tid, values, true).map(|_| ())
    }

    /// Like [`Logger::push`], but under `block` with a full ring it returns
    /// `Ok(false)` instead of waiting, and the record is neither queued nor
    /// counted. Lets a caller release a lock (the GIL) before waiting.
    #[inline]
    pub fn try_push(&self, tid: u32, values: &[Value]) -> Result<bool, PushError> {
        self.offer(tid, values, false)
    }

    /// The one push path: checks the template and arity, counts the record,
    /// queues it (waiting for room under `block` only if `wait`) and wakes
    /// the drain. `Ok(false)`: a `block` ring stayed full and the record was
    /// taken back.
    #[inline]
    fn offer<F: Field>(&self, tid: u32, values: &[F], wait: bool) -> Result<bool, PushError> {
        let s = self.shared();
        if s.closed.load(Relaxed) {
            return Err(PushError::Closed);
        }
        let entry = s
            .templates
            .get(tid)
            .ok_or(PushError::UnknownTemplate(tid))?;
        if entry.arity != values.len() {
            return Err(PushError::WrongArity {
                expected: entry.arity,
                got: values.len(),
            });
        }
        let seq = s.pushed.fetch_add(1, Relaxed);
        let record = Record::new(tid, seq, stamp(), values);
        let outcome = s.ring.push(record, || {
            s.waker.notify();
            wait && !s.closed.load(Relaxed)
        });
        match outcome {
            Pushed::Queued => {
                if entry.flush_on_push.load(Relaxed) {
                    // The last record of a unit (a fit's table): write it
                    // and what precedes it here, while this thread's caches
                    // are warm, when no drain pass is under way (else the
                    // drain writes it, as any record).
                    drain::drain_here(s);
                    return Ok(true);
                }
                // A record may wait one doze of the drain (a few ms): no
                // syscall per push while the drain lingers (see `wake`).
                s.waker.notify_lazy();
                Ok(true)
            }
            Pushed::Dropped => Ok(true),
            Pushed::GaveUp => {
                s.pushed.fetch_sub(1, Relaxed);
                if wait || self.is_closed() {
                    Err(PushError::Closed)
                } else {
                    Ok(false)
                }
            }
        }
    }

    /// Waits until every record pushed before this call is written.
    /// `timeout: None` waits as long as it takes. Returns `false` on timeout;
    /// `true` at once on a closed logger (closing wrote everything).
    pub fn flush(&self, timeout: Option<Duration>) -> bool {
        let s = self.shared();
        let deadline = timeout.map(|t| Instant::now() + t);
        if s.closed.load(SeqCst) {
            return true;
        }
        // Without a deadline, write here when the drain thread is idle: a
        // stalled sink then blocks this call as it would block the wait.
        if timeout.is_none() && drain::drain_here(s) {
            return true;
        }
        let (ticket, marker) = s.tickets.issue();
        let before_deadline = || deadline.is_none_or(|d| Instant::now() < d);
        let pushed = s.ring.push_marker(marker, || {
            s.waker.notify();
            before_deadline() && !s.closed.load(Relaxed)
        });
        s.waker.notify();
        if pushed == Pushed::GaveUp {
            return s.closed.load(SeqCst);
        }
        s.tickets.wait(ticket, deadline)
    }

    /// Writes everything queued, stops the drain thread and closes the sink.
    /// Idempotent; pushes afterwards fail with [`PushError::Closed`].
    pub fn close(&self) {
        live::close(self.shared());
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let s = self.shared();
        let c = &s.counters;
        Stats {
            pushed: s.pushed.load(Relaxed),
            written: c.written.load(Relaxed),
            dropped: s.ring.dropped(),
            sink_errors: c.sink_errors.load(Relaxed),
            high_water: c.high_water.load(Relaxed),
            capacity: s.ring.capacity() as u64,
            latency_ns_p50: c.latency.quantile(0.50),
            latency_ns_p99: c.latency.quantile(0.99),
        }
    }
}

const _: () = assert!(MAX_VALUES <= 16);
