//! What a logger's handles, its lifecycle (`live`) and its drain thread
//! (`drain`) share: the ring, the template registry, the counters, the
//! drain's run state, the consumer (sink and buffers) and the flush tickets.
//!
//! Protocol:
//! - Run state: a drain runs while `state` is [`RunState::Running`]. To stop
//!   it, the lifecycle stores `Pausing` (around `fork`: the drain will come
//!   back) or `Closing` (it will not), wakes it and joins it. Seeing either,
//!   the drain writes what is queued and returns; a pausing drain leaves the
//!   consumer in place for the next one, a closing drain drops it (and the
//!   sink). Whoever stops the drain waits, after setting the state, for any
//!   flusher writing on its own thread (`drain::drain_here`) to finish.
//! - Consumer: the sink and the drain buffers, in `consumer`; whoever holds
//!   the lock (the drain thread for one pass, or a flusher) is the one
//!   consumer. The struct lives here, its work in `drain`.
//! - Flush tickets: a flusher takes ticket `t` ([`FlushTickets::issue`],
//!   increasing), queues a marker carrying `t` behind its records and waits
//!   until `done >= t`. The drain completes `t` ([`FlushTickets::complete`])
//!   after everything popped before the marker is written and the sink
//!   flushed; the ring is FIFO, so completing `t` also completes every
//!   smaller ticket. Closing completes them all (`u64::MAX`): nothing will
//!   write what a flusher still waits for.
//!
//! Invariant: `closed` goes from false to true once and never back; after
//! it, no drain runs and every flush returns at once.

use crate::gate::FlushGate;
use crate::record::Record;
use crate::registry::Registry;
use crate::ring::Ring;
use crate::sink::Sink;
use crate::stats::Counters;
use crate::wake::Waker;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

/// Whether the drain thread keeps running, and if not, what follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RunState {
    Running = 0,
    /// Stopping around `fork`; a new drain takes over the consumer.
    Pausing = 1,
    /// Stopping for good; the sink is dropped (closed).
    Closing = 2,
}

/// A [`RunState`] that the lifecycle sets and the drain polls.
pub(crate) struct AtomicRunState(AtomicU8);

impl AtomicRunState {
    fn new(state: RunState) -> Self {
        AtomicRunState(AtomicU8::new(state as u8))
    }

    pub fn load(&self) -> RunState {
        match self.0.load(SeqCst) {
            0 => RunState::Running,
            1 => RunState::Pausing,
            _ => RunState::Closing,
        }
    }

    pub fn store(&self, state: RunState) {
        self.0.store(state as u8, SeqCst);
    }
}

struct Tickets {
    issued: u64,
    done: u64,
}

/// Flush tickets: see the protocol at the top of this file.
pub(crate) struct FlushTickets {
    tickets: Mutex<Tickets>,
    completed: Condvar,
}

impl FlushTickets {
    fn new() -> Self {
        FlushTickets {
            tickets: Mutex::new(Tickets { issued: 0, done: 0 }),
            completed: Condvar::new(),
        }
    }

    /// The next ticket, and the marker that carries it through the ring.
    pub fn issue(&self) -> (u64, Record) {
        let mut t = lock(&self.tickets);
        t.issued += 1;
        (t.issued, Record::marker(t.issued))
    }

    /// Every ticket up to `ticket` is done; wakes their waiters.
    pub fn complete(&self, ticket: u64) {
        let mut t = lock(&self.tickets);
        if ticket > t.done {
            t.done = ticket;
            self.completed.notify_all();
        }
    }

    /// Every ticket issued so far is done (a forked child's ring starts
    /// empty: the markers stayed with the parent).
    pub fn complete_issued(&self) {
        let issued = lock(&self.tickets).issued;
        self.complete(issued);
    }

    /// Waits until `ticket` is done; `false` if `deadline` passes first.
    pub fn wait(&self, ticket: u64, deadline: Option<Instant>) -> bool {
        let mut t = lock(&self.tickets);
        while t.done < ticket {
            t = match deadline {
                None => self.completed.wait(t).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    self.completed
                        .wait_timeout(t, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        true
    }
}

/// Sink and buffers of the consumer side, held in [`Shared::consumer`];
/// `drain` implements what the consumer does with them.
pub(crate) struct Consumer {
    pub sink: Box<dyn Sink>,
    pub batch: Vec<Record>,
    /// Formatted lines not yet written.
    pub text: Vec<u8>,
    /// Push timestamps of the records in `text`.
    pub stamps: Vec<u64>,
    /// Something was written since the last sink flush.
    pub dirty: bool,
    pub error_reported: bool,
}

/// Records popped (and written) per batch at most.
pub(crate) const BATCH: usize = 1024;

impl Consumer {
    pub fn new(sink: Box<dyn Sink>) -> Consumer {
        Consumer {
            sink,
            batch: Vec::with_capacity(BATCH),
            text: Vec::with_capacity(BATCH * 96),
            stamps: Vec::with_capacity(BATCH),
            dirty: false,
            error_reported: false,
        }
    }
}

/// Everything the handles, the lifecycle and the drain thread share.
pub(crate) struct Shared {
    pub id: u64,
    pub ring: Ring,
    pub templates: Registry,
    pub waker: Waker,
    pub closed: AtomicBool,
    pub state: AtomicRunState,
    pub pushed: CachePadded<AtomicU64>,
    pub counters: Counters,
    /// Drops already reported with a "records dropped" line.
    pub reported_drops: AtomicU64,
    /// The sink and drain buffers; `None` once closed.
    pub consumer: Mutex<Option<Consumer>>,
    /// Admits flushers that write on their own thread (`drain::drain_here`).
    pub flush_gate: FlushGate,
    pub tickets: FlushTickets,
    /// The running drain thread, if any.
    pub drain: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    pub fn new(id: u64, ring: Ring, sink: Box<dyn Sink>) -> Shared {
        Shared {
            id,
            ring,
            templates: Registry::new(),
            waker: Waker::new(),
            closed: AtomicBool::new(false),
            state: AtomicRunState::new(RunState::Running),
            pushed: CachePadded::new(AtomicU64::new(0)),
            counters: Counters::default(),
            reported_drops: AtomicU64::new(0),
            consumer: Mutex::new(Some(Consumer::new(sink))),
            flush_gate: FlushGate::new(),
            tickets: FlushTickets::new(),
            drain: Mutex::new(None),
        }
    }
}

/// Locks `m`, ignoring poisoning: a panic while holding one of these locks
/// leaves plain data behind, so it is not propagated to every later caller.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn run_state_round_trips() {
        let s = AtomicRunState::new(RunState::Running);
        for state in [RunState::Pausing, RunState::Closing, RunState::Running] {
            s.store(state);
            assert_eq!(s.load(), state);
        }
    }

    #[test]
    fn completing_a_ticket_completes_the_smaller_ones() {
        let t = Arc::new(FlushTickets::new());
        let (first, marker) = t.issue();
        assert!(marker.is_marker());
        let (second, _) = t.issue();
        assert!(second > first);
        let soon = Some(Instant::now() + Duration::from_millis(20));
        assert!(!t.wait(first, soon), "nothing completed it yet");
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || t.wait(first, None))
        };
        t.complete(second);
        assert!(waiter.join().unwrap());
        assert!(t.wait(second, Some(Instant::now())));
        let (third, _) = t.issue();
        t.complete_issued();
        assert!(t.wait(third, Some(Instant::now())));
    }
}
