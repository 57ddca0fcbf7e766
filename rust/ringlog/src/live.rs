//! The lifecycle of loggers and the process-wide registry of live ones:
//! opening (which starts the drain), closing, lookup by id, and the atexit
//! and `fork` hooks.
//!
//! Protocol:
//! - [`open`] builds the `Shared` state, starts its drain and enters it in
//!   the registry under a process-unique id; the registry holds a `Weak`, so
//!   it never keeps a logger alive.
//! - The last [`Handle`] to go closes the logger: [`close`] sets `closed`
//!   (once), stops the drain with `Closing` (it writes what is queued and
//!   drops the sink), leaves the registry and completes every flush ticket.
//! - Around `fork`: [`before_fork`] stops every drain with `Pausing` (no
//!   thread holds a lock or a half-written batch while the process is
//!   copied); [`after_fork`] starts them again, in the child on an emptied
//!   ring with fresh counters.
//!
//! Invariant: at most one drain thread runs per logger; `drain::start` is
//! only called where `drain::is_running` is false (at open, or after a
//! `Pausing` stop) on a logger that is not closed.

use crate::drain;
use crate::ring::Ring;
use crate::shared::{lock, RunState, Shared};
use crate::sink::Sink;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// Owns one logger's `Shared`; dropping the last one closes the logger.
pub(crate) struct Handle {
    pub shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        close(&self.shared);
    }
}

fn registry() -> &'static Mutex<HashMap<u64, Weak<Handle>>> {
    static LIVE: OnceLock<Mutex<HashMap<u64, Weak<Handle>>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
}

/// Opens a logger on `ring` writing to `sink`, with its drain running.
pub(crate) fn open(ring: Ring, sink: Box<dyn Sink>) -> Arc<Handle> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    crate::clock::init();
    let id = NEXT_ID.fetch_add(1, Relaxed);
    let shared = Arc::new(Shared::new(id, ring, sink));
    drain::start(&shared);
    let handle = Arc::new(Handle { shared });
    lock(registry()).insert(id, Arc::downgrade(&handle));
    handle
}

/// Writes what is queued, stops the drain, drops the sink. Idempotent.
pub(crate) fn close(shared: &Shared) {
    if shared.closed.swap(true, SeqCst) {
        return;
    }
    drain::stop(shared, RunState::Closing);
    lock(registry()).remove(&shared.id);
    shared.tickets.complete(u64::MAX);
}

/// The live logger with this id, if it exists and is not closed.
pub(crate) fn lookup(id: u64) -> Option<Arc<Handle>> {
    lock(registry()).get(&id)?.upgrade()
}

fn live() -> Vec<Arc<Handle>> {
    lock(registry())
        .values()
        .filter_map(Weak::upgrade)
        .collect()
}

/// Closes every live logger (the atexit hook).
pub(crate) fn close_all() {
    for h in live() {
        close(&h.shared);
    }
}

/// Stops every drain thread after it has written what is queued.
pub(crate) fn before_fork() {
    for h in live() {
        if !h.shared.closed.load(SeqCst) {
            drain::stop(&h.shared, RunState::Pausing);
        }
    }
}

/// Restarts the drains [`before_fork`] stopped. In the child, the loggers
/// start empty (what a producer queued during the fork belongs to the
/// parent) with fresh counters.
pub(crate) fn after_fork(child: bool) {
    for h in live() {
        let s = &h.shared;
        if s.closed.load(SeqCst) || drain::is_running(s) {
            continue;
        }
        if child {
            while s.ring.pop().is_some() {}
            s.ring.reset_dropped();
            s.pushed.store(0, SeqCst);
            s.reported_drops.store(0, SeqCst);
            s.counters.reset();
            s.tickets.complete_issued();
        }
        drain::start(s);
    }
}
