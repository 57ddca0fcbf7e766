//! The host thread that empties the CUDA staging ring: it delivers every
//! landed record to the ring logger (dropping keep-flag-0 records, which are
//! filtered, not lost) and frees the slots. Also the two host-side waits of
//! the route: a producer waiting for free slots under `policy="block"`, and
//! `flush` waiting until every record staged before it was delivered.
//!
//! Invariants:
//! - The poller holds no lock while it delivers: a push that waits for room
//!   in the logger's ring (`block`) waits for the drain only, and the route
//!   table lock is not held across a push (see `route.rs`). So no lock order
//!   links the GPU side to the GIL.
//! - Every wait here is bounded ([`BLOCK_PATIENCE`], or the caller's
//!   timeout): a stream that never runs (a failed executable) costs a
//!   counted drop, never a hang of the fit.
//! - While nothing is in flight the poller parks on a [`Waker`] (the ring
//!   logger's loom-checked handshake); producers pay one fence and a load.
//!   While records are in flight it polls with a short sleep.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringlog::wake::Waker;

use crate::cpu::{dispatch, Deliver};
use crate::frame::{Call, Packed};
use crate::staging::{Meta, Ring};
use crate::stats;

/// How long a producer under `block` waits without the poller making any
/// progress before it drops the record (counted as `staging_block_timeout`).
pub const BLOCK_PATIENCE: Duration = Duration::from_secs(2);
/// The poll period while records are in flight but have not landed.
/// Longer under Miri, whose virtual clock runs 5 µs per interpreted basic
/// block: a 20 µs sleep there would be pure interpretation overhead.
const POLL_SLEEP: Duration = if cfg!(miri) {
    Duration::from_millis(1)
} else {
    Duration::from_micros(20)
};

/// One staging ring and the thread that empties it.
pub struct Poller {
    ring: &'static Ring,
    waker: Waker,
    stop: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Delivers one landed record to `sink`; a refused push is counted.
pub fn deliver<D: Deliver>(meta: &Meta, data: *const u8, sink: &mut D) {
    let call = Call {
        packed: Packed {
            dtype: meta.dtype,
            data: data.cast(),
            rows: 1,
            len: meta.len,
        },
        target: meta.target,
    };
    // SAFETY: `data` is the slot's landed data: `len` values of `dtype`,
    // 8-aligned host memory (the ring's contract).
    if unsafe { dispatch(&call, sink) }.is_err() {
        stats::push_failed();
    }
}

impl Poller {
    /// Starts the poller thread of `ring`, delivering to `sink()`.
    pub fn start<D: Deliver + 'static>(
        ring: &'static Ring,
        mut sink: impl FnMut() -> D + Send + 'static,
    ) -> Arc<Poller> {
        let poller = Arc::new(Poller {
            ring,
            waker: Waker::new(),
            stop: AtomicBool::new(false),
            thread: Mutex::new(None),
        });
        let me = poller.clone();
        let handle = std::thread::Builder::new()
            .name("nlsq-cuda-poller".into())
            .spawn(move || {
                me.waker.register_current();
                let mut sink = sink();
                loop {
                    let got = me.ring.poll(|meta, data| deliver(meta, data, &mut sink));
                    if got > 0 {
                        continue;
                    }
                    if me.stop.load(Ordering::Acquire) && me.ring.in_flight() == 0 {
                        return;
                    }
                    if me.ring.in_flight() == 0 {
                        let stop = &me.stop;
                        me.waker.sleep_unless(|| {
                            me.ring.in_flight() > 0 || stop.load(Ordering::Acquire)
                        });
                    } else {
                        std::thread::sleep(POLL_SLEEP);
                    }
                }
            })
            .ok();
        match handle {
            Some(h) => *poller.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(h),
            None => stats::poller_failed(),
        }
        poller
    }

    pub fn ring(&self) -> &'static Ring {
        self.ring
    }

    /// Producer side, after committing: wakes the poller if it sleeps.
    pub fn notify(&self) {
        self.waker.notify();
    }

    /// Claims `k` slots, waiting on the host while the ring is full when
    /// `block` is set. `None`: no room (not blocking), or no progress for
    /// [`BLOCK_PATIENCE`].
    pub fn claim(&self, k: u64, block: bool) -> Option<u64> {
        if let Some(t) = self.ring.claim(k) {
            return Some(t);
        }
        if !block {
            return None;
        }
        let mut consumed = self.ring.consumed();
        let mut since = Instant::now();
        loop {
            self.notify();
            std::thread::sleep(POLL_SLEEP);
            if let Some(t) = self.ring.claim(k) {
                return Some(t);
            }
            let now = self.ring.consumed();
            if now != consumed {
                consumed = now;
                since = Instant::now();
            } else if since.elapsed() >= BLOCK_PATIENCE {
                return None;
            }
        }
    }

    /// Waits until every record claimed before the call was delivered or
    /// skipped; `false` on timeout (records whose stream has not run yet).
    pub fn wait_delivered(&self, timeout: Duration) -> bool {
        let target = self.ring.claimed();
        let deadline = Instant::now() + timeout;
        while self.ring.consumed() < target {
            if Instant::now() >= deadline {
                return false;
            }
            self.notify();
            std::thread::sleep(POLL_SLEEP);
        }
        true
    }

    /// Stops the thread once nothing is in flight (or after `timeout`).
    pub fn stop(&self, timeout: Duration) -> bool {
        let delivered = self.wait_delivered(timeout);
        self.stop.store(true, Ordering::Release);
        self.notify();
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if delivered {
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        delivered
    }
}
