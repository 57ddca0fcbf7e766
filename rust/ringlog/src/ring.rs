//! The bounded many-producer, one-consumer ring and its full-ring policies.
//!
//! The queue itself is crossbeam-queue's `ArrayQueue` (lock-free, FIFO,
//! linearizable); this file adds what to do when it is full and counts drops.
//!
//! Invariants:
//! - Every record offered to [`Ring::push`] is, exactly once, either queued or
//!   counted in `dropped` (`drop_new`: the new record; `overwrite_oldest`: the
//!   evicted one). `block` never drops.
//! - Flush markers are never dropped or counted: a marker evicted under
//!   `overwrite_oldest` is pushed again behind the records that evicted it,
//!   which only makes its flush wait for more, never less.

use crate::record::Record;
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::{Backoff, CachePadded};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// What a producer does when the ring is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Discard the new record and count it (never stalls a producer).
    #[default]
    DropNew,
    /// Wait for room (never loses a record).
    Block,
    /// Discard the oldest queued record and count it.
    OverwriteOldest,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "drop_new" => Ok(Policy::DropNew),
            "block" => Ok(Policy::Block),
            "overwrite_oldest" => Ok(Policy::OverwriteOldest),
            other => Err(format!(
                "unknown policy {other:?}: expected \"drop_new\", \"block\" or \"overwrite_oldest\""
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::DropNew => "drop_new",
            Policy::Block => "block",
            Policy::OverwriteOldest => "overwrite_oldest",
        })
    }
}

/// Outcome of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The record is in the ring (under `overwrite_oldest` possibly at the
    /// cost of an older one, already counted).
    Queued,
    /// The record was discarded and counted (`drop_new`).
    Dropped,
    /// `block` gave up because `keep_waiting` said so (the logger closed).
    GaveUp,
}

pub struct Ring {
    queue: ArrayQueue<Record>,
    policy: Policy,
    dropped: CachePadded<AtomicU64>,
}

impl Ring {
    /// `capacity` must be at least 1.
    pub fn new(capacity: usize, policy: Policy) -> Ring {
        Ring {
            queue: ArrayQueue::new(capacity),
            policy,
            dropped: CachePadded::new(AtomicU64::new(0)),
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    pub fn reset_dropped(&self) {
        self.dropped.store(0, Relaxed);
    }

    pub fn pop(&self) -> Option<Record> {
        self.queue.pop()
    }

    /// Offers `record` under the ring's policy. Under `block`, while the ring
    /// is full it calls `keep_waiting` between retries (after a short spin);
    /// `keep_waiting` wakes the consumer and returns `false` to give up.
    #[inline]
    pub fn push(&self, record: Record, keep_waiting: impl FnMut() -> bool) -> Pushed {
        match self.policy {
            Policy::DropNew => match self.queue.push(record) {
                Ok(()) => Pushed::Queued,
                Err(_) => {
                    self.dropped.fetch_add(1, Relaxed);
                    Pushed::Dropped
                }
            },
            Policy::OverwriteOldest => {
                self.force_push(record);
                Pushed::Queued
            }
            Policy::Block => self.push_waiting(record, keep_waiting),
        }
    }

    /// Queues a flush marker, waiting for room under every policy: a marker
    /// is never dropped, and it never evicts a record (under
    /// `overwrite_oldest` producers keep forcing records in, but the drain
    /// frees a batch of slots at a time, so the marker gets in).
    pub fn push_marker(&self, marker: Record, keep_waiting: impl FnMut() -> bool) -> Pushed {
        debug_assert!(marker.is_marker());
        self.push_waiting(marker, keep_waiting)
    }

    fn force_push(&self, mut record: Record) {
        while let Some(evicted) = self.queue.force_push(record) {
            if !evicted.is_marker() {
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            record = evicted;
        }
    }

    fn push_waiting(&self, mut record: Record, mut keep_waiting: impl FnMut() -> bool) -> Pushed {
        let backoff = Backoff::new();
        loop {
            match self.queue.push(record) {
                Ok(()) => return Pushed::Queued,
                Err(r) => record = r,
            }
            if backoff.is_completed() {
                if !keep_waiting() {
                    return Pushed::GaveUp;
                }
                std::thread::sleep(std::time::Duration::from_micros(20));
            } else {
                backoff.snooze();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(seq: u64) -> Record {
        Record::new(0, seq, 0, &[seq as f64][..])
    }

    fn drain(ring: &Ring) -> Vec<u64> {
        std::iter::from_fn(|| ring.pop()).map(|r| r.seq).collect()
    }

    #[test]
    fn policy_parses_and_rejects_unknown_names() {
        for p in [Policy::DropNew, Policy::Block, Policy::OverwriteOldest] {
            assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }
        let err = "drop_old".parse::<Policy>().unwrap_err();
        assert!(
            err.contains("drop_old") && err.contains("overwrite_oldest"),
            "{err}"
        );
    }

    #[test]
    fn drop_new_keeps_the_first_and_counts_the_rest() {
        let ring = Ring::new(4, Policy::DropNew);
        let outcomes: Vec<_> = (0..6).map(|i| ring.push(rec(i), || true)).collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == Pushed::Dropped).count(),
            2
        );
        assert_eq!(ring.dropped(), 2);
        assert_eq!(drain(&ring), vec![0, 1, 2, 3]);
    }

    #[test]
    fn overwrite_oldest_keeps_the_newest() {
        let ring = Ring::new(4, Policy::OverwriteOldest);
        for i in 0..10 {
            assert_eq!(ring.push(rec(i), || true), Pushed::Queued);
        }
        assert_eq!(ring.dropped(), 6);
        assert_eq!(drain(&ring), vec![6, 7, 8, 9]);
    }

    #[test]
    fn overwrite_never_evicts_a_marker() {
        let ring = Ring::new(3, Policy::OverwriteOldest);
        assert_eq!(
            ring.push_marker(Record::marker(99), || true),
            Pushed::Queued
        );
        for i in 0..5 {
            ring.push(rec(i), || true);
        }
        let left: Vec<_> = std::iter::from_fn(|| ring.pop()).collect();
        assert!(
            left.iter().any(|r| r.is_marker() && r.seq == 99),
            "{left:?}"
        );
        assert_eq!(ring.dropped(), 3, "5 records + 1 marker into 3 slots");
    }

    #[test]
    fn wrap_around_many_times_preserves_order() {
        let ring = Ring::new(3, Policy::DropNew);
        let mut out = Vec::new();
        for i in 0..1000 {
            assert_eq!(ring.push(rec(i), || true), Pushed::Queued);
            if i % 2 == 1 {
                out.extend(drain(&ring));
            }
        }
        assert_eq!(out, (0..1000).collect::<Vec<_>>());
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn block_waits_for_the_consumer_and_loses_nothing() {
        // Fewer under Miri, which interprets every spin of both threads.
        let n = if cfg!(miri) { 100 } else { 10_000 };
        let ring = Arc::new(Ring::new(2, Policy::Block));
        let producer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                for i in 0..n {
                    assert_eq!(ring.push(rec(i), || true), Pushed::Queued);
                }
            })
        };
        let mut got = Vec::new();
        while got.len() < n as usize {
            got.extend(drain(&ring));
            std::thread::yield_now();
        }
        producer.join().unwrap();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn block_gives_up_when_told() {
        let ring = Ring::new(1, Policy::Block);
        assert_eq!(ring.push(rec(0), || true), Pushed::Queued);
        let mut asked = 0;
        let outcome = ring.push(rec(1), || {
            asked += 1;
            asked < 3
        });
        assert_eq!(outcome, Pushed::GaveUp);
        assert_eq!(asked, 3);
    }
}
