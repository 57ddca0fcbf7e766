//! The drain thread: pops records in batches, formats them with their
//! templates, and writes each batch to the sink with one call. [`start`]
//! and [`stop`] are its whole interface; it knows a logger only through
//! `Shared` (see the run-state protocol there).
//!
//! Invariants:
//! - Only this thread pops the ring, formats, or touches the sink while it
//!   runs; producers never wait on it except under the `block` policy.
//! - A flush marker completes its ticket only after every record popped
//!   before it has been handed to the sink and the sink has been flushed.
//! - Drops are reported as one line, `[nlsq] N log records dropped (ring
//!   full)`, when the drain catches up (finds the ring empty), reaches a
//!   flush marker, or stops; N counts the drops since the previous such line.
//! - A failing sink or a panicking formatter is counted in `sink_errors` and
//!   reported once on stderr; the drain keeps running.

use crate::clock;
use crate::record::Record;
use crate::shared::{lock, RunState, Shared};
use crate::sink::Sink;
use crate::value::{Value, MAX_VALUES};
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

/// Records popped (and written) per batch at most.
const BATCH: usize = 1024;

/// Starts a drain thread for `shared` (which has none running), in state
/// `Running`; it takes the parked sink.
pub(crate) fn start(shared: &Arc<Shared>) {
    shared.state.store(RunState::Running);
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
    let Some(sink) = lock(&shared.sink).take() else {
        return;
    };
    let mut drain = Drain {
        shared: &shared,
        sink,
        batch: Vec::with_capacity(BATCH),
        text: Vec::with_capacity(BATCH * 96),
        stamps: Vec::with_capacity(BATCH),
        dirty: false,
        error_reported: false,
    };
    let result = catch_unwind(AssertUnwindSafe(|| drain.run()));
    if result.is_err() {
        eprintln!(
            "[nlsq] log drain stopped after an internal error; records are no longer written"
        );
    }
    if shared.state.load() != RunState::Closing {
        // Paused around fork(): hand the sink back for the next drain.
        *lock(&shared.sink) = Some(drain.sink);
    }
}

struct Drain<'a> {
    shared: &'a Shared,
    sink: Box<dyn Sink>,
    batch: Vec<Record>,
    /// Formatted lines not yet written.
    text: Vec<u8>,
    /// Push timestamps of the records in `text`.
    stamps: Vec<u64>,
    /// Something was written since the last sink flush.
    dirty: bool,
    error_reported: bool,
}

impl Drain<'_> {
    fn run(&mut self) {
        let s = self.shared;
        loop {
            if s.state.load() != RunState::Running {
                // Write what is queued now (bounded, in case producers keep
                // pushing), then stop.
                let mut budget = s.ring.len() + BATCH;
                while budget > 0 {
                    let n = self.pass();
                    if n == 0 {
                        break;
                    }
                    budget = budget.saturating_sub(n);
                }
                self.report_drops();
                self.flush_sink();
                return;
            }
            if self.pass() == 0 {
                self.report_drops();
                self.flush_sink();
                s.waker
                    .sleep_unless(|| !s.ring.is_empty() || s.state.load() != RunState::Running);
            }
        }
    }

    /// Pops, formats and writes one batch; returns how many records it took.
    fn pass(&mut self) -> usize {
        let s = self.shared;
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
                self.write_out();
                self.report_drops();
                self.flush_sink();
                s.tickets.complete(record.seq);
            } else {
                self.format(&record);
            }
        }
        self.write_out();
        n
    }

    fn format(&mut self, record: &Record) {
        let Some(entry) = self.shared.templates.get(record.tid) else {
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
            self.error(io::Error::other(format!(
                "formatting a record with template {} panicked",
                record.tid
            )));
            return;
        }
        self.text.push(b'\n');
        self.stamps.push(record.ts_ns);
    }

    fn write_out(&mut self) {
        if self.text.is_empty() {
            return;
        }
        let result = self.sink.write(&self.text);
        self.text.clear();
        match result {
            Ok(()) => {
                self.dirty = true;
                let c = &self.shared.counters;
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
            Err(e) => self.error(e),
        }
        self.stamps.clear();
    }

    fn report_drops(&mut self) {
        let s = self.shared;
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
            Err(e) => self.error(e),
        }
    }

    fn flush_sink(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Err(e) = self.sink.flush() {
            self.error(e);
        }
    }

    fn error(&mut self, e: io::Error) {
        self.shared.counters.sink_errors.fetch_add(1, Relaxed);
        if !self.error_reported {
            self.error_reported = true;
            eprintln!(
                "[nlsq] log sink error: {e} (reported once; later errors are only counted in stats)"
            );
        }
    }
}
