//! The consumer side: pops records in batches, formats them with their
//! templates, and writes each batch to the sink with one call. The drain
//! thread does this in the background ([`start`], [`stop`]); a flusher may
//! do it on its own thread ([`drain_here`]). Both know a logger only through
//! `Shared` (see the run-state protocol there).
//!
//! Invariants:
//! - Only the holder of `Shared::consumer` (the drain thread, or a flusher
//!   in [`drain_here`]) pops the ring (except `overwrite_oldest` producers
//!   making room), formats, or touches the sink; producers never wait on it
//!   except under the `block` policy.
//! - [`drain_here`] touches the consumer only through `Shared::flush_gate`
//!   (`gate.rs`), which [`stop`] closes before it stops the drain and
//!   [`start`] opens: no flusher holds the consumer lock while no drain runs
//!   (around `fork`, a lock held by a thread the child does not have would
//!   never be released).
//! - A flush marker completes its ticket only after every record popped
//!   before it has been handed to the sink and the sink has been flushed.
//! - Drops are reported as one line, `[nlsq] N log records dropped (ring
//!   full)`, when the drain catches up (finds the ring empty), reaches a
//!   flush marker, or stops; N counts the drops since the previous such line.
//! - A failing sink or a panicking formatter is counted in `sink_errors` and
//!   reported once on stderr; the drain keeps running.

use crate::clock;
use crate::record::Record;
use crate::shared::{lock, Consumer, RunState, Shared, BATCH};
use crate::value::{Value, MAX_VALUES};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The drain's first doze when it runs out of work; each further empty doze
/// lasts twice as long, up to [`DOZE_MAX`]. A record pushed meanwhile
/// ([`crate::Logger::push`] wakes lazily) waits at most one doze, and costs
/// its producer no syscall. A flush wakes the drain at once (or writes on
/// its own thread).
const DOZE_MIN: Duration = Duration::from_millis(5);

/// The longest doze: the most a lazily pushed record waits for the drain.
const DOZE_MAX: Duration = Duration::from_millis(100);

/// How long the drain dozes while nothing is pushed before it sleeps until
/// woken (records written by flushers on their own threads count as
/// pushed: the logger is in use). Why so long: waking a sleeping drain is a syscall that, on a
/// loaded 2-core machine, also hands the core to the drain -- measured at
/// ~100 µs for the first push after an idle spell. Fits run back to back
/// (a benchmark, a loop over data sets) keep the drain dozing, so their
/// pushes never pay it; an idle logger costs about 100 wake-ups, then none.
const LINGER: Duration = Duration::from_secs(10);

/// Starts a drain thread for `shared` (which has none running), in state
/// `Running`; it takes the parked sink.
pub(crate) fn start(shared: &Arc<Shared>) {
    shared.state.store(RunState::Running);
    shared.flush_gate.open();
    let for_thread = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("nlsq-ringlog-drain-{}", shared.id))
        .spawn(move || run(for_thread))
        .expect("cannot spawn the log drain thread");
    *lock(&shared.drain) = Some(handle);
}

/// Stops the drain after it has written what is queued; `then` says whether
/// it comes back (`Pausing`) or not (`Closing`). No-op when none runs.
pub(crate) fn stop(shared: &Shared, then: RunState) {
    let handle = lock(&shared.drain).take();
    if let Some(handle) = handle {
        shared.state.store(then);
        // Flushers writing on their own thread finish first; no new one starts.
        shared.flush_gate.close();
        shared.waker.notify();
        // The drain catches its own panics; a join error cannot happen.
        let _ = handle.join();
    }
}

/// Whether a drain thread runs for `shared`.
pub(crate) fn is_running(shared: &Shared) -> bool {
    lock(&shared.drain).is_some()
}

fn run(shared: Arc<Shared>) {
    shared.waker.register_current();
    let result = catch_unwind(AssertUnwindSafe(|| run_loop(&shared)));
    if result.is_err() {
        eprintln!(
            "[nlsq] log drain stopped after an internal error; records are no longer written"
        );
    }
    if shared.state.load() == RunState::Closing {
        // Dropping the consumer closes the sink. (Paused around fork(): it
        // stays for the next drain.)
        drop(lock(&shared.consumer).take());
    }
}

/// The drain thread's loop; returns when the run state leaves `Running`,
/// after writing what is queued.
fn run_loop(s: &Shared) {
    // The current doze; since when nothing was pushed, and the push count then.
    let mut doze = DOZE_MIN;
    let mut idle_since: Option<Instant> = None;
    let mut pushed = s.pushed.load(Relaxed);
    loop {
        let running = s.state.load() == RunState::Running;
        {
            let mut guard = lock(&s.consumer);
            let Some(consumer) = guard.as_mut() else {
                return;
            };
            if !running {
                // Write what is queued now (bounded, in case producers keep
                // pushing), then stop.
                consumer.drain_queued(s);
                return;
            }
            if consumer.pass(s) > 0 {
                doze = DOZE_MIN;
                idle_since = None;
                continue;
            }
            consumer.report_drops(s);
            consumer.flush_sink(s);
        }
        let has_work = || !s.ring.is_empty() || s.state.load() != RunState::Running;
        let now_pushed = s.pushed.load(Relaxed);
        if now_pushed != pushed {
            pushed = now_pushed;
            idle_since = None;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < LINGER {
            s.waker.doze_unless(doze, has_work);
            doze = (doze * 2).min(DOZE_MAX);
        } else {
            s.waker.sleep_unless(has_work);
        }
    }
}

/// Flush on the calling thread: when no drain pass is under way, pops and
/// writes everything queued and flushes the sink here, and returns `true`
/// (every record pushed before the call is written). `false`: the drain
/// thread holds the consumer, or the drain is stopping or stopped; the
/// caller then flushes through a marker.
///
/// Why: handing a flush to the drain thread and waiting for it costs a
/// wake-up, a condition-variable wait and a notify -- three syscalls and
/// two thread switches, measured at 40-50 µs per flush on this project's
/// 2-core sandboxed CPU machine, where a solver's table is written after
/// every verbose fit. Writing here costs the write itself.
pub(crate) fn drain_here(s: &Shared) -> bool {
    if !s.flush_gate.enter() {
        return false;
    }
    let done = s.state.load() == RunState::Running && !s.closed.load(SeqCst) && {
        match s.consumer.try_lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(consumer) => {
                    catch_unwind(AssertUnwindSafe(|| consumer.drain_queued(s))).is_ok()
                }
                None => false,
            },
            Err(_) => false,
        }
    };
    s.flush_gate.leave();
    done
}

/// The consumer's work (the struct is `shared`'s: `Shared` holds it).
impl Consumer {
    /// Writes what is queued now (bounded, in case producers keep pushing:
    /// everything queued at the start is written), reports drops, flushes.
    fn drain_queued(&mut self, s: &Shared) {
        let mut budget = s.ring.len() + BATCH;
        while budget > 0 {
            let n = self.pass(s);
            if n == 0 {
                break;
            }
            budget = budget.saturating_sub(n);
        }
        self.report_drops(s);
        self.flush_sink(s);
    }

    /// Pops, formats and writes one batch; returns how many records it took.
    fn pass(&mut self, s: &Shared) -> usize {
        s.counters.observe_depth(s.ring.len() as u64);
        self.batch.clear();
        while self.batch.len() < BATCH {
            match s.ring.pop() {
                Some(r) => self.batch.push(r),
                None => break,
            }
        }
        let n = self.batch.len();
        for i in 0..n {
            let record = self.batch[i];
            if record.is_marker() {
                self.write_out(s);
                self.report_drops(s);
                self.flush_sink(s);
                s.tickets.complete(record.seq);
            } else {
                self.format(s, &record);
            }
        }
        self.write_out(s);
        n
    }

    fn format(&mut self, s: &Shared, record: &Record) {
        let Some(entry) = s.templates.get(record.tid) else {
            return;
        };
        let mut values = [Value::Int(0); MAX_VALUES];
        let n = record.decode(&mut values);
        let start = self.text.len();
        let text = &mut self.text;
        let rendered = catch_unwind(AssertUnwindSafe(|| {
            entry.template.render_bytes(&values[..n], text)
        }));
        if rendered.is_err() {
            self.text.truncate(start);
            self.error(
                s,
                io::Error::other(format!(
                    "formatting a record with template {} panicked",
                    record.tid
                )),
            );
            return;
        }
        self.text.push(b'\n');
        self.stamps.push(record.ts_ns);
    }

    fn write_out(&mut self, s: &Shared) {
        if self.text.is_empty() {
            return;
        }
        let result = self.sink.write(&self.text);
        self.text.clear();
        match result {
            Ok(()) => {
                self.dirty = true;
                let c = &s.counters;
                let now = clock::stamp();
                if let Some(&first) = self.stamps.first() {
                    // One conversion ratio per batch, not per record.
                    let span = now.saturating_sub(first).max(1);
                    let scale = clock::elapsed_ns(first, now) as f64 / span as f64;
                    for &ts in &self.stamps {
                        c.latency
                            .record((now.saturating_sub(ts) as f64 * scale) as u64);
                    }
                }
                c.written.fetch_add(self.stamps.len() as u64, Relaxed);
            }
            Err(e) => self.error(s, e),
        }
        self.stamps.clear();
    }

    fn report_drops(&mut self, s: &Shared) {
        let total = s.ring.dropped();
        let reported = s.reported_drops.load(Relaxed);
        if total <= reported {
            return;
        }
        s.reported_drops.store(total, Relaxed);
        // A drop means the ring was full.
        s.counters.observe_depth(s.ring.capacity() as u64);
        let line = format!(
            "[nlsq] {} log records dropped (ring full)\n",
            total - reported
        );
        match self.sink.write(line.as_bytes()) {
            Ok(()) => self.dirty = true,
            Err(e) => self.error(s, e),
        }
    }

    fn flush_sink(&mut self, s: &Shared) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Err(e) = self.sink.flush() {
            self.error(s, e);
        }
    }

    fn error(&mut self, s: &Shared, e: io::Error) {
        s.counters.sink_errors.fetch_add(1, Relaxed);
        if !self.error_reported {
            self.error_reported = true;
            eprintln!(
                "[nlsq] log sink error: {e} (reported once; later errors are only counted in stats)"
            );
        }
    }
}
