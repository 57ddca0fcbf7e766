//! Process-wide counters of records the handlers could not deliver, and the
//! last failure's reason (for Python's one warning).
//!
//! Invariant: these are statistics only. Nothing synchronises through them,
//! so `Relaxed` increments and loads are enough; a reader may see a count a
//! moment late, never a torn one.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};

static ORPHANED: AtomicU64 = AtomicU64::new(0);
static UNREPORTABLE: AtomicU64 = AtomicU64::new(0);
static UNROUTED: AtomicU64 = AtomicU64::new(0);
static PUSH_FAILED: AtomicU64 = AtomicU64::new(0);
static STAGING_FULL: AtomicU64 = AtomicU64::new(0);
static STAGING_BLOCK_TIMEOUT: AtomicU64 = AtomicU64::new(0);
static ENQUEUE_FAILED: AtomicU64 = AtomicU64::new(0);
static CUDA_UNAVAILABLE: AtomicU64 = AtomicU64::new(0);
static STAGING_SETUP_FAILED: AtomicU64 = AtomicU64::new(0);
static POLLER_FAILED: AtomicU64 = AtomicU64::new(0);
static LAST_FAILURE: Mutex<Option<String>> = Mutex::new(None);

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records whose logger was gone: a direct call naming a closed or
    /// unknown logger id, or a routed call with no route installed.
    pub orphaned: u64,
    /// Routed records whose template key had no ring id in the active route.
    pub unrouted: u64,
    /// Records the logger refused (wrong value count, unknown id), on the
    /// routed path and in the CUDA poller.
    pub push_failed: u64,
    /// Failures that could not be reported because XLA's API table was
    /// missing or too small to create an error.
    pub unreportable: u64,
    /// CUDA records dropped because the staging ring was full (any policy
    /// but `block`).
    pub staging_full: u64,
    /// CUDA records dropped under `block` after the staging ring made no
    /// progress for `poller::BLOCK_PATIENCE` (a stream that never runs).
    pub staging_block_timeout: u64,
    /// CUDA records whose stream query, copy or stream write could not be
    /// enqueued.
    pub enqueue_failed: u64,
    /// CUDA records seen while the driver or the staging ring was not
    /// available (missing driver, failed pinned allocation).
    pub cuda_unavailable: u64,
    /// Failed attempts to set up the staging ring (each retried later).
    pub staging_setup_failed: u64,
    /// The poller thread could not be started.
    pub poller_failed: u64,
}

impl Stats {
    /// Records lost on the CUDA route, all causes together.
    pub fn cuda_lost(&self) -> u64 {
        self.staging_full + self.staging_block_timeout + self.enqueue_failed + self.cuda_unavailable
    }
}

pub fn snapshot() -> Stats {
    Stats {
        orphaned: ORPHANED.load(Relaxed),
        unrouted: UNROUTED.load(Relaxed),
        push_failed: PUSH_FAILED.load(Relaxed),
        unreportable: UNREPORTABLE.load(Relaxed),
        staging_full: STAGING_FULL.load(Relaxed),
        staging_block_timeout: STAGING_BLOCK_TIMEOUT.load(Relaxed),
        enqueue_failed: ENQUEUE_FAILED.load(Relaxed),
        cuda_unavailable: CUDA_UNAVAILABLE.load(Relaxed),
        staging_setup_failed: STAGING_SETUP_FAILED.load(Relaxed),
        poller_failed: POLLER_FAILED.load(Relaxed),
    }
}

/// The reason of the latest CUDA-route failure, if any.
pub fn last_failure() -> Option<String> {
    LAST_FAILURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn note(why: &str) {
    let mut last = LAST_FAILURE.lock().unwrap_or_else(PoisonError::into_inner);
    if last.as_deref() != Some(why) {
        *last = Some(why.to_owned());
    }
}

pub(crate) fn orphaned() {
    ORPHANED.fetch_add(1, Relaxed);
}

pub(crate) fn unreportable() {
    UNREPORTABLE.fetch_add(1, Relaxed);
}

pub(crate) fn unrouted() {
    UNROUTED.fetch_add(1, Relaxed);
}

pub(crate) fn push_failed() {
    PUSH_FAILED.fetch_add(1, Relaxed);
}

pub(crate) fn staging_full(records: u64) {
    STAGING_FULL.fetch_add(records, Relaxed);
}

pub(crate) fn staging_block_timeout(records: u64) {
    STAGING_BLOCK_TIMEOUT.fetch_add(records, Relaxed);
}

pub(crate) fn enqueue_failed(records: u64, why: &str) {
    ENQUEUE_FAILED.fetch_add(records, Relaxed);
    note(why);
}

pub(crate) fn cuda_unavailable(records: u64, why: &str) {
    CUDA_UNAVAILABLE.fetch_add(records, Relaxed);
    note(why);
}

pub(crate) fn staging_setup_failed(why: &str) {
    STAGING_SETUP_FAILED.fetch_add(1, Relaxed);
    note(why);
}

pub(crate) fn poller_failed() {
    POLLER_FAILED.fetch_add(1, Relaxed);
    note("cannot start the CUDA staging poller thread");
}
