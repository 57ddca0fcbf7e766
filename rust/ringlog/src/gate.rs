//! The gate between flushers that write on their own thread
//! (`drain::drain_here`) and whoever stops the drain (close, `fork`).
//!
//! Why: stopping the drain around `fork` must leave no thread holding the
//! consumer lock -- a lock held by a thread the child does not have is never
//! released there. A flusher that writes on its own thread takes that lock,
//! so stopping must wait for it, and no new one may start.
//!
//! Protocol (a Dekker-style handshake on `open` and `inside`):
//! - flusher, [`FlushGate::enter`]: `inside += 1; fence(SeqCst); if open { proceed } else { inside -= 1; refuse }`;
//!   [`FlushGate::leave`] when done: `inside -= 1` (release).
//! - stopper, [`FlushGate::close`]: `swap(open, false); fence(SeqCst); while inside > 0 { yield }` (acquire).
//!
//! Invariant: once `close` returns, no flusher is inside until the next
//! [`FlushGate::open`]. Each side writes before it reads, separated by a
//! SeqCst fence, so at least one sees the other's write: either the flusher
//! sees the gate closed and leaves, or `close` sees it inside and waits for
//! its `leave` (whose release pairs with the acquire load, so what the
//! flusher did happens before `close` returns). Both writes are RMWs, as in
//! `wake.rs`: loom models the fence rule for them.
//!
//! Verified with loom: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom
//! cargo test -p nlsq-ringlog --release --lib gate`

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
#[cfg(loom)]
use loom::thread;
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::thread;

/// See the module documentation.
pub struct FlushGate {
    open: AtomicBool,
    inside: AtomicUsize,
}

impl Default for FlushGate {
    fn default() -> Self {
        Self::new()
    }
}

impl FlushGate {
    /// An open gate.
    pub fn new() -> FlushGate {
        FlushGate {
            open: AtomicBool::new(true),
            inside: AtomicUsize::new(0),
        }
    }

    /// Flusher side: `true` if the caller may proceed; it must then call
    /// [`FlushGate::leave`]. `false`: closed, nothing to undo.
    pub fn enter(&self) -> bool {
        self.inside.fetch_add(1, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        if self.open.load(Ordering::Acquire) {
            return true;
        }
        self.inside.fetch_sub(1, Ordering::Release);
        false
    }

    /// Flusher side: done (after a successful [`FlushGate::enter`]).
    pub fn leave(&self) {
        self.inside.fetch_sub(1, Ordering::Release);
    }

    /// Stopper side: refuse new flushers and wait for those inside.
    pub fn close(&self) {
        self.open.swap(false, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        while self.inside.load(Ordering::Acquire) > 0 {
            thread::yield_now();
        }
    }

    /// Lets flushers in again (a restarted drain).
    pub fn open(&self) {
        self.open.swap(true, Ordering::AcqRel);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::{AtomicBool as Flag, Ordering::SeqCst};
    use loom::sync::Arc;

    /// A flusher racing `close`: once `close` returns, the flusher is not
    /// inside (`busy` is what it does between enter and leave).
    #[test]
    fn close_waits_for_flushers_and_refuses_new_ones() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let gate = Arc::new(FlushGate::new());
            let busy = Arc::new(Flag::new(false));
            let flusher = {
                let (gate, busy) = (gate.clone(), busy.clone());
                thread::spawn(move || {
                    if gate.enter() {
                        busy.store(true, SeqCst);
                        busy.store(false, SeqCst);
                        gate.leave();
                    }
                })
            };
            gate.close();
            assert!(!busy.load(SeqCst), "a flusher is inside a closed gate");
            flusher.join().unwrap();
            assert!(!busy.load(SeqCst));
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_refuses_and_an_opened_one_admits() {
        let gate = FlushGate::new();
        assert!(gate.enter());
        gate.leave();
        gate.close();
        assert!(!gate.enter());
        gate.open();
        assert!(gate.enter());
        gate.leave();
    }
}
