//! Parking the drain thread when the ring is empty, and waking it without a
//! syscall when it is already awake -- or about to look again anyway.
//!
//! The consumer has three states: awake, *dozing* (a timed park: it looks
//! at the work again within a bounded time without being woken) and
//! *asleep* (parked until woken).
//!
//! Protocol (a Dekker-style handshake on two locations, the work and the
//! `state` word):
//! - consumer: `swap(state, DOZING or ASLEEP); fence(SeqCst); if has_work() { undo } else { park }`
//!   (a dozing consumer parks with a timeout);
//! - producer, [`Waker::notify`]: `publish work; fence(SeqCst); if state != AWAKE { swap(AWAKE) → unpark }`;
//! - producer, [`Waker::notify_lazy`]: the same, but only an *asleep*
//!   consumer is woken (`compare_exchange(ASLEEP, AWAKE) → unpark`).
//!
//! Invariant: the two SeqCst fences order each side's store before its load,
//! so at least one side sees the other's store. Either the producer sees the
//! consumer parked and (if it must) unparks (park/unpark keep a token, so an
//! unpark that comes before the park is not lost), or the consumer sees the
//! work and does not park. A lazy producer that sees a dozing consumer leaves
//! it alone: the doze ends by itself, so the work waits at most one doze. An
//! asleep consumer is always woken, lazy or not, so no work waits forever.
//!
//! Why dozing: an unpark is a syscall (measured 6-7 µs per push on this
//! project's 2-core sandboxed CPU machine, against 0.4 µs for a push to an
//! awake drain). A solver pushes one row per iteration, ~100 µs apart, so the
//! drain parks between rows and every row paid for a wake-up. The drain now
//! dozes (timed parks of 5 ms, doubling to 100 ms) while the logger is in
//! use, lazy pushes meanwhile cost no syscall, and a flush wakes it at once
//! ([`Waker::notify`]). The policy is the drain's (`drain.rs`).
//!
//! Verified with loom (a separate target dir keeps the normal build cached):
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p nlsq-ringlog --release wake`

#[cfg(loom)]
use loom::{
    sync::atomic::{fence, AtomicU8, Ordering},
    sync::Mutex,
    thread::{self, Thread},
};
use std::time::Duration;
#[cfg(not(loom))]
use std::{
    sync::atomic::{fence, AtomicU8, Ordering},
    sync::Mutex,
    thread::{self, Thread},
};

const AWAKE: u8 = 0;
/// In a timed park: looks at the work again by itself.
const DOZING: u8 = 1;
/// In an untimed park: only an unpark brings it back.
const ASLEEP: u8 = 2;

/// Wakes one consumer thread (the drain) that parks when it runs out of work.
pub struct Waker {
    state: crossbeam_utils::CachePadded<AtomicU8>,
    consumer: Mutex<Option<Thread>>,
}

impl Default for Waker {
    fn default() -> Self {
        Self::new()
    }
}

impl Waker {
    pub fn new() -> Waker {
        Waker {
            state: crossbeam_utils::CachePadded::new(AtomicU8::new(AWAKE)),
            consumer: Mutex::new(None),
        }
    }

    /// Makes the calling thread the one that [`Waker::sleep_unless`] parks
    /// and [`Waker::notify`] unparks. Called by each (re)started drain.
    pub fn register_current(&self) {
        *self.consumer.lock().unwrap() = Some(thread::current());
    }

    /// Producer side: call after the work is published (pushed to the ring,
    /// flag set); wakes the consumer if it is parked at all (dozing or
    /// asleep). Costs a fence and a load when the consumer is awake.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) != AWAKE
            && self.state.swap(AWAKE, Ordering::AcqRel) != AWAKE
        {
            self.unpark();
        }
    }

    /// Producer side, for work that may wait one doze: wakes the consumer
    /// only if it is asleep. A dozing consumer finds the work when its doze
    /// ends; an awake one on its next look. Costs a fence and a load unless
    /// the consumer is asleep.
    #[inline]
    pub fn notify_lazy(&self) {
        fence(Ordering::SeqCst);
        if self.state.load(Ordering::Relaxed) == ASLEEP
            && self
                .state
                .compare_exchange(ASLEEP, AWAKE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.unpark();
        }
    }

    #[cold]
    fn unpark(&self) {
        if let Some(t) = self.consumer.lock().unwrap().as_ref() {
            t.unpark();
        }
    }

    /// Consumer side: parks the calling (registered) thread until woken,
    /// unless `has_work()` says there is something to do. May return
    /// spuriously; the caller loops and re-checks.
    pub fn sleep_unless(&self, has_work: impl Fn() -> bool) {
        self.park_unless(ASLEEP, None, has_work);
    }

    /// Consumer side: like [`Waker::sleep_unless`], but parks for at most
    /// `timeout`, and lazy producers ([`Waker::notify_lazy`]) do not wake it.
    pub fn doze_unless(&self, timeout: Duration, has_work: impl Fn() -> bool) {
        self.park_unless(DOZING, Some(timeout), has_work);
    }

    fn park_unless(&self, how: u8, timeout: Option<Duration>, has_work: impl Fn() -> bool) {
        // An RMW, not a plain store: it makes the announcement the latest
        // value of `state` at once, which is what the producer's swap must
        // see. (The fence argument already holds for a plain store in C11;
        // loom does not model that fence rule for a later RMW and finds a
        // lost wake-up with it. The drain parks rarely, so the RMW is free.)
        self.state.swap(how, Ordering::AcqRel);
        fence(Ordering::SeqCst);
        if has_work() {
            self.state.store(AWAKE, Ordering::Relaxed);
            return;
        }
        match timeout {
            None => thread::park(),
            Some(t) => park_timeout(t),
        }
        self.state.store(AWAKE, Ordering::Relaxed);
    }
}

#[cfg(not(loom))]
fn park_timeout(timeout: Duration) {
    thread::park_timeout(timeout);
}

/// loom has no timed park; a doze that ends at once is one of the
/// behaviours of a timed park (its timeout may be reached at any point),
/// and the model checks that no work is lost when the doze turns to sleep.
#[cfg(loom)]
fn park_timeout(_timeout: Duration) {
    thread::yield_now();
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::Arc;

    /// Two producers each publish one unit of work and call `notify`; the
    /// consumer must see both without ever parking forever (loom reports a
    /// deadlock if a wake-up is lost). Between looks at the work the consumer
    /// calls `wait(waker, has_work, round)`, `round` counting from 0. The
    /// consumer is a spawned thread, not the model's main thread: a producer
    /// may leave a stale unpark token behind (by design, harmless: the next
    /// park returns at once), and loom's `join` is built on park, so the
    /// thread that joins must not be the one producers unpark.
    fn no_wake_lost(notify: fn(&Waker), wait: fn(&Waker, &dyn Fn() -> bool, usize)) {
        // Three preemptions cover the handshake's interleavings (each side has
        // one store, one fence, one load) and keep the run to seconds.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(move || {
            let waker = Arc::new(Waker::new());
            let work = Arc::new(AtomicUsize::new(0));
            let consumer = {
                let (waker, work) = (waker.clone(), work.clone());
                thread::spawn(move || {
                    // Producers that notify before this find `state`
                    // awake and skip the unpark, which is correct: the
                    // consumer re-checks the work before it parks.
                    waker.register_current();
                    let mut total = 0;
                    for round in 0.. {
                        total += work.swap(0, Ordering::Relaxed);
                        if total == 2 {
                            return;
                        }
                        wait(&waker, &|| work.load(Ordering::Relaxed) > 0, round);
                    }
                })
            };
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let (waker, work) = (waker.clone(), work.clone());
                    thread::spawn(move || {
                        work.fetch_add(1, Ordering::Relaxed);
                        notify(&waker);
                    })
                })
                .collect();
            for p in producers {
                p.join().unwrap();
            }
            consumer.join().unwrap();
        });
    }

    #[test]
    fn wake_never_lost() {
        no_wake_lost(Waker::notify, |waker, has_work, _| {
            waker.sleep_unless(has_work)
        });
    }

    /// Lazy producers and a consumer that dozes once, then sleeps: a lazy
    /// notify that finds the consumer dozing skips the unpark, so the
    /// consumer must see the work when it turns from doze to sleep.
    #[test]
    fn lazy_wake_never_lost() {
        no_wake_lost(Waker::notify_lazy, |waker, has_work, round| {
            if round == 0 {
                waker.doze_unless(Duration::from_millis(1), has_work);
            } else {
                waker.sleep_unless(has_work);
            }
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    #[test]
    fn wake_consumer_sees_every_unit_of_work() {
        // Fewer under Miri, which interprets every step of both threads.
        let n = if cfg!(miri) { 200 } else { 10_000 };
        let waker = Arc::new(Waker::new());
        let work = Arc::new(AtomicUsize::new(0));
        let (w2, k2) = (waker.clone(), work.clone());
        let consumer = thread::spawn(move || {
            w2.register_current();
            let mut seen = 0;
            while seen < n {
                seen += k2.swap(0, Ordering::Relaxed);
                if seen < n {
                    w2.sleep_unless(|| k2.load(Ordering::Relaxed) > 0);
                }
            }
            seen
        });
        // The consumer may not have registered yet; the work counter is
        // re-checked before it parks, so early notifies are not needed.
        for _ in 0..n {
            work.fetch_add(1, Ordering::Relaxed);
            waker.notify();
        }
        assert_eq!(consumer.join().unwrap(), n);
    }

    #[test]
    fn lazy_notify_leaves_a_dozing_consumer_and_wakes_a_sleeping_one() {
        use std::time::Instant;
        let waker = Arc::new(Waker::new());
        let work = Arc::new(AtomicUsize::new(0));
        let (w2, k2) = (waker.clone(), work.clone());
        let doze = Duration::from_millis(500);
        let consumer = thread::spawn(move || {
            w2.register_current();
            // Dozing: a lazy notify does not end the doze early.
            let t0 = Instant::now();
            while k2.load(Ordering::Relaxed) == 0 {
                w2.doze_unless(doze, || k2.load(Ordering::Relaxed) > 0);
            }
            let dozed = t0.elapsed();
            // Asleep: a lazy notify wakes it.
            k2.store(0, Ordering::Relaxed);
            let t1 = Instant::now();
            while k2.load(Ordering::Relaxed) == 0 {
                w2.sleep_unless(|| k2.load(Ordering::Relaxed) > 0);
            }
            (dozed, t1.elapsed())
        });
        // Wait until the consumer dozes (and has had time to park), then
        // publish lazily.
        while waker.state.load(Ordering::Relaxed) != DOZING {
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(50));
        work.store(1, Ordering::Relaxed);
        waker.notify_lazy();
        // Wait until it sleeps, then publish lazily again.
        while waker.state.load(Ordering::Relaxed) != ASLEEP {
            thread::yield_now();
        }
        work.store(1, Ordering::Relaxed);
        waker.notify_lazy();
        let (dozed, slept) = consumer.join().unwrap();
        assert!(dozed >= doze / 2, "the doze ended early: {dozed:?}");
        assert!(slept < doze, "a sleeping consumer was not woken: {slept:?}");
    }

    #[test]
    fn notify_ends_a_doze_at_once() {
        use std::time::Instant;
        let waker = Arc::new(Waker::new());
        let work = Arc::new(AtomicUsize::new(0));
        let (w2, k2) = (waker.clone(), work.clone());
        let consumer = thread::spawn(move || {
            w2.register_current();
            let t0 = Instant::now();
            while k2.load(Ordering::Relaxed) == 0 {
                w2.doze_unless(Duration::from_secs(5), || k2.load(Ordering::Relaxed) > 0);
            }
            t0.elapsed()
        });
        while waker.state.load(Ordering::Relaxed) != DOZING {
            thread::yield_now();
        }
        work.store(1, Ordering::Relaxed);
        waker.notify();
        assert!(consumer.join().unwrap() < Duration::from_secs(2));
    }
}
