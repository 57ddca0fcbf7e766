//! The active route: which logger, and which of its ring template ids, the
//! routed form of the call (`template_key`) pushes to.
//!
//! Why: compiled XLA programs carry process-stable template keys, never ring
//! ids, because `async_logger.configure` may replace the logger after a
//! program was compiled; the Python side re-registers every key with the new
//! logger and installs the new table here (`set`), so old programs keep
//! logging, to the new sink.
//!
//! Invariants:
//! - The table is replaced whole under the write lock; a handler reads a
//!   consistent (logger, ring id) pair under the read lock, takes its own
//!   handle to that logger, and pushes after releasing the lock. No lock is
//!   held across a push: under `policy="block"` a push may wait for the
//!   drain, the drain of a Python sink waits for the GIL, and a `set` from
//!   Python holds the GIL while it takes the write lock; holding the read
//!   lock across the push closed that cycle (a deadlock). The cost: a push
//!   racing `set` may still go to the replaced logger, which Python closes
//!   after `set` (closing writes what was queued; a later push is counted
//!   as orphaned).
//! - Nothing here fails the computation: no route, an unknown key, a closed
//!   logger or a refused push are counted in [`crate::stats`] (as the
//!   callback path counts its failures), never reported to XLA.
use std::sync::{PoisonError, RwLock};

use ringlog::{Logger, PushError};

use crate::stats;

/// Marks a key that has no ring id in the active logger.
const UNREGISTERED: u32 = u32::MAX;

struct Route {
    logger: Logger,
    tids: Vec<u32>,
}

static ACTIVE: RwLock<Option<Route>> = RwLock::new(None);

/// Routes key `k` to ring id `tids[k]` of the live logger `logger_id`
/// (a negative id: key not registered there).
pub fn set(logger_id: u64, tids: &[i64]) -> Result<(), String> {
    let logger =
        ringlog::lookup(logger_id).ok_or_else(|| format!("no live logger with id {logger_id}"))?;
    let tids = tids
        .iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| t != UNREGISTERED)
                .unwrap_or(UNREGISTERED)
        })
        .collect();
    *ACTIVE.write().unwrap_or_else(PoisonError::into_inner) = Some(Route { logger, tids });
    Ok(())
}

/// Removes the route; routed records are then counted as orphaned.
pub fn clear() {
    *ACTIVE.write().unwrap_or_else(PoisonError::into_inner) = None;
}

/// The policy of the active route's logger (`None`: no route).
pub fn policy() -> Option<ringlog::Policy> {
    ACTIVE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|r| r.logger.policy())
}

/// The logger and ring id for `key`, or the counter to bump.
fn resolve(key: u32) -> Result<(Logger, u32), fn()> {
    // A poisoned lock only means a writer panicked between two whole
    // assignments; the table itself is always consistent.
    let guard = ACTIVE.read().unwrap_or_else(PoisonError::into_inner);
    let route = guard.as_ref().ok_or(stats::orphaned as fn())?;
    let tid = route
        .tids
        .get(key as usize)
        .copied()
        .unwrap_or(UNREGISTERED);
    if tid == UNREGISTERED {
        return Err(stats::unrouted);
    }
    Ok((route.logger.clone(), tid))
}

/// Pushes `values` for template key `key` through the active route.
pub fn deliver(key: u32, values: &[f64]) {
    let (logger, tid) = match resolve(key) {
        Ok(found) => found,
        Err(count) => return count(),
    };
    // The lock is released: see the module invariants.
    match logger.push_f64(tid, values) {
        Ok(()) => {}
        Err(PushError::Closed) => stats::orphaned(),
        Err(_) => stats::push_failed(),
    }
}

#[cfg(test)]
mod tests {
    use ringlog::{Config, Logger, MemorySink};

    use super::*;

    // Tests touching the process-wide table hold `ROUTE_TABLE`.
    #[test]
    fn route_follows_the_installed_logger() {
        let _serial = crate::testing::ROUTE_TABLE
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first_sink = MemorySink::new();
        let first = Logger::new(Box::new(first_sink.clone()), Config::default());
        let a = first.register("a {x:.1f}").unwrap();
        assert!(set(first.id(), &[-1, i64::from(a)]).is_ok());

        deliver(1, &[1.0]);
        let before = stats::snapshot();
        deliver(0, &[2.0]); // key 0 has no ring id
        deliver(7, &[2.0]); // key beyond the table
        deliver(1, &[1.0, 2.0]); // wrong value count
        let after = stats::snapshot();
        assert!(after.unrouted >= before.unrouted + 2);
        assert!(after.push_failed > before.push_failed);
        assert!(first.flush(None));
        assert_eq!(first_sink.contents(), "a 1.0\n");

        // Replace the logger, as `configure` does: same key, new ring id.
        let second_sink = MemorySink::new();
        let second = Logger::new(Box::new(second_sink.clone()), Config::default());
        second.register("unused {y:.1f}").unwrap();
        let b = second.register("b {x:.1f}").unwrap();
        assert!(set(second.id(), &[-1, i64::from(b)]).is_ok());
        first.close();
        deliver(1, &[3.0]);
        assert!(second.flush(None));
        assert_eq!(second_sink.contents(), "b 3.0\n");
        assert_eq!(first_sink.contents(), "a 1.0\n");

        assert!(set(first.id(), &[]).unwrap_err().contains("no live logger"));
        let orphaned = stats::snapshot().orphaned;
        clear();
        deliver(1, &[4.0]);
        assert!(stats::snapshot().orphaned > orphaned);
        second.close();
    }

    /// The cycle that used to deadlock: a push under `block` waits for the
    /// drain; the drain's sink needs a lock (the GIL) held by a thread that
    /// replaces the route. With the route lock held across the push, `set`
    /// never returned. Fails (rather than hangs) after a timeout.
    #[test]
    fn a_blocked_push_does_not_hold_the_route_lock() {
        use ringlog::{Policy, Sink};
        use std::io;
        use std::sync::mpsc;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        let _serial = crate::testing::ROUTE_TABLE
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The "GIL": the sink takes it for every write.
        let gil = Arc::new(Mutex::new(()));
        struct GilSink(Arc<Mutex<()>>);
        impl Sink for GilSink {
            fn write(&mut self, _: &[u8]) -> io::Result<()> {
                drop(self.0.lock().unwrap());
                Ok(())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let logger = Logger::new(
            Box::new(GilSink(gil.clone())),
            Config {
                capacity: 1,
                policy: Policy::Block,
            },
        );
        let tid = logger.register("{x:.1f}").unwrap();
        assert!(set(logger.id(), &[i64::from(tid)]).is_ok());
        let (done_tx, done_rx) = mpsc::channel();
        let main_gil = gil.lock().unwrap();
        // A producer fills the ring; its later pushes wait for the drain,
        // which waits for the "GIL".
        let producer = std::thread::spawn(move || {
            for i in 0..4 {
                deliver(0, &[f64::from(i)]);
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        // While holding the "GIL", replace the route, as configure() does.
        let second = Logger::new(Box::new(MemorySink::new()), Config::default());
        let b = second.register("{x:.1f}").unwrap();
        let (id, tids) = (second.id(), vec![i64::from(b)]);
        let setter = std::thread::spawn(move || {
            let _ = set(id, &tids);
            let _ = done_tx.send(());
        });
        let finished = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
        drop(main_gil);
        assert!(finished, "route::set deadlocked behind a blocked push");
        setter.join().unwrap();
        producer.join().unwrap();
        assert!(logger.flush(Some(Duration::from_secs(5))));
        clear();
        logger.close();
        second.close();
    }
}
