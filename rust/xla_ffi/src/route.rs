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
//!   consistent (logger, ids) pair under the read lock and pushes while
//!   holding it, so a replaced logger is never pushed to after `set`
//!   returns.
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

/// Pushes `values` for template key `key` through the active route.
pub fn deliver(key: u32, values: &[f64]) {
    // A poisoned lock only means a writer panicked between two whole
    // assignments; the table itself is always consistent.
    let guard = ACTIVE.read().unwrap_or_else(PoisonError::into_inner);
    let Some(route) = guard.as_ref() else {
        stats::orphaned();
        return;
    };
    let tid = route
        .tids
        .get(key as usize)
        .copied()
        .unwrap_or(UNREGISTERED);
    if tid == UNREGISTERED {
        stats::unrouted();
        return;
    }
    match route.logger.push_f64(tid, values) {
        Ok(()) => {}
        Err(PushError::Closed) => stats::orphaned(),
        Err(_) => stats::push_failed(),
    }
}

#[cfg(test)]
mod tests {
    use ringlog::{Config, Logger, MemorySink};

    use super::*;

    // The only test touching the process-wide table, so parallel tests
    // cannot interfere with it.
    #[test]
    #[cfg_attr(miri, ignore = "spawns the drain thread; covered natively")]
    fn route_follows_the_installed_logger() {
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
}
