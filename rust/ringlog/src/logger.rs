//! The `Logger` handle, its shared state, and the process-wide registry of
//! live loggers (`lookup`, atexit and fork support).
//!
//! Invariants:
//! - The push path (`push`, `push_f64`) reads the template table without a
//!   lock, bumps one counter, copies a `Record` into the ring and notifies the
//!   drain: no formatting, no allocation, no I/O, no syscall while the drain
//!   is awake.
//! - `flush()` returns `true` only when every record whose push returned
//!   before the call began has been written (or dropped and counted): it
//!   queues a marker behind them and waits until the drain has written
//!   everything ahead of the marker (the ring is FIFO).
//! - At most one drain thread runs per logger; it owns the sink while it
//!   runs and puts it back in `Shared::sink` when it stops (close, or the
//!   pause around `fork`).
//! - The last `Logger` handle to go closes the logger (drains and joins).

use crate::clock::stamp;
use crate::drain;
use crate::record::Record;
use crate::ring::{Policy, Pushed, Ring};
use crate::sink::Sink;
use crate::stats::{Counters, Stats};
use crate::template::TemplateError;
use crate::templates::Templates;
use crate::value::{Value, MAX_VALUES};
use crate::wake::Waker;
use crossbeam_utils::CachePadded;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
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

/// Drain run state (`Shared::state`).
pub(crate) const RUNNING: u8 = 0;
pub(crate) const PAUSING: u8 = 1;
pub(crate) const CLOSING: u8 = 2;

pub(crate) struct FlushState {
    pub next_ticket: u64,
    pub done: u64,
}

/// Everything the handles and the drain thread share.
pub(crate) struct Shared {
    pub id: u64,
    pub ring: Ring,
    pub templates: Templates,
    pub waker: Waker,
    pub closed: AtomicBool,
    pub state: AtomicU8,
    pub pushed: CachePadded<AtomicU64>,
    pub counters: Counters,
    /// Drops already reported with a "records dropped" line.
    pub reported_drops: AtomicU64,
    pub sink: Mutex<Option<Box<dyn Sink>>>,
    pub flush: Mutex<FlushState>,
    pub flushed: Condvar,
    drain: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub fn complete_ticket(&self, ticket: u64) {
        let mut f = lock(&self.flush);
        if ticket > f.done {
            f.done = ticket;
            self.flushed.notify_all();
        }
    }

    fn start_drain(self: &Arc<Self>) {
        let shared = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("nlsq-ringlog-drain-{}", self.id))
            .spawn(move || drain::run(shared))
            .expect("cannot spawn the log drain thread");
        *lock(&self.drain) = Some(handle);
    }

    /// Stops the drain after it has written what is queued; `state` says
    /// whether it comes back (`PAUSING`) or not (`CLOSING`).
    fn stop_drain(&self, state: u8) {
        let handle = lock(&self.drain).take();
        if let Some(handle) = handle {
            self.state.store(state, SeqCst);
            self.waker.notify();
            // The drain catches its own panics; a join error cannot happen.
            let _ = handle.join();
        }
    }

    fn close(&self) {
        if self.closed.swap(true, SeqCst) {
            return;
        }
        self.stop_drain(CLOSING);
        lock(registry()).remove(&self.id);
        // Nothing will write what a flusher waits for any more.
        self.complete_ticket(u64::MAX);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, so
    // poisoning is ignored rather than propagated to every later caller.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// A cheap, cloneable handle to one ring logger.
#[derive(Clone)]
pub struct Logger {
    handle: Arc<Handle>,
}

fn registry() -> &'static Mutex<HashMap<u64, Weak<Handle>>> {
    static LIVE: std::sync::OnceLock<Mutex<HashMap<u64, Weak<Handle>>>> =
        std::sync::OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// The live logger with this id, if it exists and is not closed.
pub fn lookup(id: u64) -> Option<Logger> {
    let handle = lock(registry()).get(&id)?.upgrade()?;
    Some(Logger { handle })
}

fn live() -> Vec<Logger> {
    lock(registry())
        .values()
        .filter_map(Weak::upgrade)
        .map(|handle| Logger { handle })
        .collect()
}

/// Flushes and closes every live logger (the atexit hook).
pub fn close_all() {
    for l in live() {
        l.close();
    }
}

/// Before `fork()`: writes what is queued and stops every drain thread, so
/// that no thread holds a lock or a half-written batch while the process is
/// copied.
pub fn before_fork() {
    for l in live() {
        if !l.shared().closed.load(SeqCst) {
            l.shared().stop_drain(PAUSING);
        }
    }
}

/// After `fork()`, in the parent: restarts the drains stopped by
/// [`before_fork`].
pub fn after_fork_parent() {
    restart_all(false);
}

/// After `fork()`, in the child: the child's loggers start empty (what a
/// producer queued during the fork belongs to the parent) with fresh
/// counters, and get a drain thread of their own.
pub fn after_fork_child() {
    restart_all(true);
}

fn restart_all(child: bool) {
    for l in live() {
        let s = l.shared();
        if s.closed.load(SeqCst) || lock(&s.drain).is_some() {
            continue;
        }
        if child {
            while s.ring.pop().is_some() {}
            s.ring.reset_dropped();
            s.pushed.store(0, SeqCst);
            s.reported_drops.store(0, SeqCst);
            s.counters.reset();
            let mut f = lock(&s.flush);
            f.done = f.next_ticket;
        }
        s.state.store(RUNNING, SeqCst);
        s.start_drain();
    }
}

impl Logger {
    /// Builds a logger writing to `sink` and starts its drain thread.
    pub fn new(sink: Box<dyn Sink>, config: Config) -> Logger {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        crate::clock::init();
        let id = NEXT_ID.fetch_add(1, Relaxed);
        let shared = Arc::new(Shared {
            id,
            ring: Ring::new(config.capacity.max(1), config.policy),
            templates: Templates::new(),
            waker: Waker::new(),
            closed: AtomicBool::new(false),
            state: AtomicU8::new(RUNNING),
            pushed: CachePadded::new(AtomicU64::new(0)),
            counters: Counters::default(),
            reported_drops: AtomicU64::new(0),
            sink: Mutex::new(Some(sink)),
            flush: Mutex::new(FlushState {
                next_ticket: 0,
                done: 0,
            }),
            flushed: Condvar::new(),
            drain: Mutex::new(None),
        });
        shared.start_drain();
        let handle = Arc::new(Handle { shared });
        lock(registry()).insert(id, Arc::downgrade(&handle));
        Logger { handle }
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

    #[inline]
    fn check(&self, tid: u32, got: usize) -> Result<(), PushError> {
        let s = self.shared();
        if s.closed.load(Relaxed) {
            return Err(PushError::Closed);
        }
        let entry = s
            .templates
            .get(tid)
            .ok_or(PushError::UnknownTemplate(tid))?;
        if entry.arity != got {
            return Err(PushError::WrongArity {
                expected: entry.arity,
                got,
            });
        }
        Ok(())
    }

    /// Queues one record with `values` in the template's field order.
    #[inline]
    pub fn push(&self, tid: u32, values: &[Value]) -> Result<(), PushError> {
        self.check(tid, values.len())?;
        let seq = self.shared().pushed.fetch_add(1, Relaxed);
        match self.enqueue(Record::from_values(tid, seq, stamp(), values), true) {
            Pushed::GaveUp => Err(PushError::Closed),
            _ => Ok(()),
        }
    }

    /// Queues one record of floats; a `d` field formats its float as an
    /// integer.
    #[inline]
    pub fn push_f64(&self, tid: u32, values: &[f64]) -> Result<(), PushError> {
        self.check(tid, values.len())?;
        let seq = self.shared().pushed.fetch_add(1, Relaxed);
        match self.enqueue(Record::from_f64(tid, seq, stamp(), values), true) {
            Pushed::GaveUp => Err(PushError::Closed),
            _ => Ok(()),
        }
    }

    /// Like [`Logger::push`], but under `block` with a full ring it returns
    /// `Ok(false)` instead of waiting, and the record is neither queued nor
    /// counted. Lets a caller release a lock (the GIL) before waiting.
    #[inline]
    pub fn try_push(&self, tid: u32, values: &[Value]) -> Result<bool, PushError> {
        self.check(tid, values.len())?;
        let seq = self.shared().pushed.fetch_add(1, Relaxed);
        match self.enqueue(Record::from_values(tid, seq, stamp(), values), false) {
            Pushed::GaveUp if self.is_closed() => Err(PushError::Closed),
            Pushed::GaveUp => Ok(false),
            _ => Ok(true),
        }
    }

    #[inline]
    fn enqueue(&self, record: Record, wait: bool) -> Pushed {
        let s = self.shared();
        let outcome = s.ring.push(record, || {
            s.waker.notify();
            wait && !s.closed.load(Relaxed)
        });
        match outcome {
            Pushed::Queued => s.waker.notify(),
            Pushed::Dropped => {}
            Pushed::GaveUp => {
                s.pushed.fetch_sub(1, Relaxed);
            }
        }
        outcome
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
        let ticket = {
            let mut f = lock(&s.flush);
            f.next_ticket += 1;
            f.next_ticket
        };
        let before_deadline = || deadline.is_none_or(|d| Instant::now() < d);
        let pushed = s.ring.push_marker(Record::marker(ticket), || {
            s.waker.notify();
            before_deadline() && !s.closed.load(Relaxed)
        });
        s.waker.notify();
        if pushed == Pushed::GaveUp {
            return s.closed.load(SeqCst);
        }
        let mut f = lock(&s.flush);
        while f.done < ticket {
            f = match deadline {
                None => s.flushed.wait(f).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s.flushed
                        .wait_timeout(f, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }

    /// Writes everything queued, stops the drain thread and closes the sink.
    /// Idempotent; pushes afterwards fail with [`PushError::Closed`].
    pub fn close(&self) {
        self.shared().close();
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
