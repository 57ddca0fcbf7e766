//! Process-wide counters of records the handlers could not deliver.
//!
//! Invariant: these are statistics only. Nothing synchronises through them,
//! so `Relaxed` increments and loads are enough; a reader may see a count a
//! moment late, never a torn one.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static ORPHANED: AtomicU64 = AtomicU64::new(0);
static UNREPORTABLE: AtomicU64 = AtomicU64::new(0);
static NO_SLOT: AtomicU64 = AtomicU64::new(0);
static HOST_FAILED: AtomicU64 = AtomicU64::new(0);
static UNROUTED: AtomicU64 = AtomicU64::new(0);
static PUSH_FAILED: AtomicU64 = AtomicU64::new(0);

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records whose logger was gone: a direct call naming a closed or
    /// unknown logger id, or a routed call with no route installed.
    pub orphaned: u64,
    /// Routed records whose template key had no ring id in the active route.
    pub unrouted: u64,
    /// Routed records the logger refused (wrong value count, unknown id).
    pub push_failed: u64,
    /// Failures that could not be reported because XLA's API table was
    /// missing or too small to create an error.
    pub unreportable: u64,
    /// CUDA records dropped because every pinned staging slot was in flight.
    pub no_slot: u64,
    /// CUDA records whose host function could not be enqueued or whose push
    /// failed (a host function has no way to report an error).
    pub host_failed: u64,
}

pub fn snapshot() -> Stats {
    Stats {
        orphaned: ORPHANED.load(Relaxed),
        unrouted: UNROUTED.load(Relaxed),
        push_failed: PUSH_FAILED.load(Relaxed),
        unreportable: UNREPORTABLE.load(Relaxed),
        no_slot: NO_SLOT.load(Relaxed),
        host_failed: HOST_FAILED.load(Relaxed),
    }
}

pub(crate) fn orphaned() {
    ORPHANED.fetch_add(1, Relaxed);
}

pub(crate) fn unreportable() {
    UNREPORTABLE.fetch_add(1, Relaxed);
}

pub(crate) fn no_slot() {
    NO_SLOT.fetch_add(1, Relaxed);
}

pub(crate) fn host_failed() {
    HOST_FAILED.fetch_add(1, Relaxed);
}

pub(crate) fn unrouted() {
    UNROUTED.fetch_add(1, Relaxed);
}

pub(crate) fn push_failed() {
    PUSH_FAILED.fetch_add(1, Relaxed);
}
