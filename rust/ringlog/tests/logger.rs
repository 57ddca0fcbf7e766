//! End-to-end tests of `Logger`: drain, flush watermark, close, drops, stats.

use ringlog::{lookup, Config, Logger, MemorySink, Policy, PushError, Sink, Value};
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `native` records, or fewer under Miri, which interprets every step of
/// every thread (the protocols are the same at any count).
fn records(native: i64) -> i64 {
    if cfg!(miri) {
        (native / 200).max(20)
    } else {
        native
    }
}

fn memory_logger(capacity: usize, policy: Policy) -> (Logger, MemorySink) {
    let sink = MemorySink::new();
    let log = Logger::new(Box::new(sink.clone()), Config { capacity, policy });
    (log, sink)
}

/// Runs `produce(log, p)` on four threads at once, producer `p` = 0..4 with its
/// own handle, and waits for all four.
fn on_four_producers(log: &Logger, produce: impl Fn(Logger, i64) + Clone + Send + 'static) {
    let threads: Vec<_> = (0..4)
        .map(|p| {
            let log = log.clone();
            let produce = produce.clone();
            std::thread::spawn(move || produce(log, p))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// Asserts that the `"{p} {i}"` lines of four producers came out each in its own
/// order, `per_producer` lines of each.
fn assert_each_producer_in_order(contents: &str, per_producer: i64) {
    let mut next = [0i64; 4];
    for line in contents.lines() {
        let (p, i) = line.split_once(' ').unwrap();
        let (p, i): (usize, i64) = (p.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[p], "producer {p} out of order");
        next[p] += 1;
    }
    assert_eq!(next, [per_producer; 4]);
}

/// A sink whose writes wait while the gate is shut.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<bool>, Condvar)>,
    inner: MemorySink,
}

impl Gate {
    fn shut() -> Gate {
        let g = Gate::default();
        *g.state.0.lock().unwrap() = true;
        g
    }
    fn open(&self) {
        *self.state.0.lock().unwrap() = false;
        self.state.1.notify_all();
    }
}

impl Sink for Gate {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let (m, cv) = &*self.state;
        let mut shut = m.lock().unwrap();
        while *shut {
            shut = cv.wait(shut).unwrap();
        }
        drop(shut);
        self.inner.write(batch)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Failing;

impl Sink for Failing {
    fn write(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "test pipe closed",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn records_round_trip_in_order() {
    let (log, sink) = memory_logger(64, Policy::Block);
    let tid = log.register("{i:d} {x:.2f}").unwrap();
    let n = records(1000);
    for i in 0..n {
        log.push(tid, &[Value::Int(i), Value::Float(i as f64 / 4.0)])
            .unwrap();
    }
    assert!(log.flush(None));
    let expected: String = (0..n)
        .map(|i| format!("{i} {:.2}\n", i as f64 / 4.0))
        .collect();
    assert_eq!(sink.contents(), expected);
    let st = log.stats();
    assert_eq!(
        (st.pushed, st.written, st.dropped, st.sink_errors),
        (n as u64, n as u64, 0, 0)
    );
    assert_eq!(st.capacity, 64);
    assert!(
        st.latency_ns_p50 > 0 && st.latency_ns_p99 >= st.latency_ns_p50,
        "{st:?}"
    );
    assert!(st.high_water >= 1 && st.high_water <= 64, "{st:?}");
}

#[test]
fn push_f64_formats_d_fields_as_integers() {
    let (log, sink) = memory_logger(16, Policy::DropNew);
    let tid = log.register("{n:d}|{x:.1f}").unwrap();
    log.push_f64(tid, &[7.0, 2.25]).unwrap();
    log.close();
    assert_eq!(sink.contents(), "7|2.2\n");
}

#[test]
fn registering_the_same_text_twice_gives_the_same_id() {
    let (log, _) = memory_logger(4, Policy::DropNew);
    let a = log.register("{a:d}").unwrap();
    let b = log.register("{b:d} {c:d}").unwrap();
    assert_ne!(a, b);
    assert_eq!(log.register("{a:d}").unwrap(), a);
    assert_eq!(log.arity(b), Some(2));
    assert_eq!(log.field_names(b).unwrap(), vec!["b", "c"]);
}

#[test]
fn bad_pushes_are_refused_before_the_ring() {
    let (log, sink) = memory_logger(4, Policy::DropNew);
    let tid = log.register("{a:d} {b:d}").unwrap();
    assert_eq!(
        log.push(tid + 1, &[Value::Int(1)]),
        Err(PushError::UnknownTemplate(tid + 1))
    );
    assert_eq!(
        log.push(tid, &[Value::Int(1)]),
        Err(PushError::WrongArity {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        log.push_f64(u32::MAX, &[]),
        Err(PushError::UnknownTemplate(u32::MAX))
    );
    assert!(log.flush(None));
    assert_eq!(log.stats().pushed, 0);
    assert_eq!(sink.contents(), "");
}

#[test]
fn flush_waits_for_the_sink_and_times_out_when_it_stalls() {
    let gate = Gate::shut();
    let log = Logger::new(
        Box::new(gate.clone()),
        Config {
            capacity: 16,
            policy: Policy::DropNew,
        },
    );
    let tid = log.register("{i:d}").unwrap();
    log.push(tid, &[Value::Int(1)]).unwrap();
    let t = Instant::now();
    assert!(
        !log.flush(Some(Duration::from_millis(50))),
        "nothing can be written yet"
    );
    assert!(t.elapsed() >= Duration::from_millis(50));
    // The push path never waits on the stalled sink under drop_new.
    let t = Instant::now();
    for i in 0..records(1000) {
        log.push(tid, &[Value::Int(i)]).unwrap();
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    let g = gate.clone();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        g.open();
    });
    assert!(log.flush(None));
    opener.join().unwrap();
    let st = log.stats();
    assert_eq!(st.written + st.dropped, st.pushed, "{st:?}");
    assert!(st.dropped > 0, "{st:?}");
}

#[test]
fn dropped_records_are_reported_in_one_line_per_catch_up() {
    let gate = Gate::shut();
    let log = Logger::new(
        Box::new(gate.clone()),
        Config {
            capacity: 8,
            policy: Policy::DropNew,
        },
    );
    let tid = log.register("{i:d}").unwrap();
    // Let the drain take the first record and stall in write, so one record
    // is in its hands (pushed all at once, it may pop several first: Miri's
    // scheduler showed 4).
    log.push(tid, &[Value::Int(0)]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for i in 1..100 {
        log.push(tid, &[Value::Int(i)]).unwrap();
    }
    gate.open();
    assert!(log.flush(None));
    let st = log.stats();
    assert_eq!(st.pushed, 100);
    assert_eq!(st.written + st.dropped, 100, "{st:?}");
    assert!(st.dropped >= 100 - 8 - 1, "{st:?}");
    assert_eq!(st.high_water, 8);
    let text = gate.inner.contents();
    let drop_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("[nlsq]")).collect();
    assert_eq!(
        drop_lines,
        vec![format!(
            "[nlsq] {} log records dropped (ring full)",
            st.dropped
        )]
    );
    // The records that made it are the first ones, in order.
    let kept: Vec<i64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(kept, (0..st.written as i64).collect::<Vec<_>>());
}

#[test]
fn overwrite_oldest_keeps_the_newest_records() {
    let gate = Gate::shut();
    let log = Logger::new(
        Box::new(gate.clone()),
        Config {
            capacity: 4,
            policy: Policy::OverwriteOldest,
        },
    );
    let tid = log.register("{i:d}").unwrap();
    // Let the drain take the first record and stall in write.
    log.push(tid, &[Value::Int(-1)]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    for i in 0..50 {
        log.push(tid, &[Value::Int(i)]).unwrap();
    }
    gate.open();
    assert!(log.flush(None));
    let text = gate.inner.contents();
    let kept: Vec<i64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(kept, vec![-1, 46, 47, 48, 49], "{text}");
    assert_eq!(log.stats().dropped, 46);
}

#[test]
fn close_drains_joins_and_is_idempotent() {
    let (log, sink) = memory_logger(1 << 12, Policy::DropNew);
    let tid = log.register("{i:d}").unwrap();
    let n = records(3000);
    for i in 0..n {
        log.push(tid, &[Value::Int(i)]).unwrap();
    }
    let id = log.id();
    assert!(lookup(id).is_some());
    log.close();
    assert_eq!(sink.contents().lines().count() as i64, n);
    log.close();
    assert!(log.is_closed());
    assert!(lookup(id).is_none());
    assert_eq!(log.push(tid, &[Value::Int(1)]), Err(PushError::Closed));
    assert!(log.flush(None), "a closed logger has nothing left to write");
}

#[test]
fn dropping_the_last_handle_closes() {
    let sink = MemorySink::new();
    let log = Logger::new(Box::new(sink.clone()), Config::default());
    let id = log.id();
    let tid = log.register("{i:d}").unwrap();
    let clone = lookup(id).unwrap();
    clone.push(tid, &[Value::Int(5)]).unwrap();
    drop(log);
    assert!(lookup(id).is_some(), "a clone is still alive");
    drop(clone);
    assert!(lookup(id).is_none());
    assert_eq!(sink.contents(), "5\n");
}

#[test]
fn a_failing_sink_is_counted_and_never_blocks() {
    let log = Logger::new(
        Box::new(Failing),
        Config {
            capacity: 4,
            policy: Policy::Block,
        },
    );
    let tid = log.register("{i:d}").unwrap();
    for i in 0..100 {
        log.push(tid, &[Value::Int(i)]).unwrap();
    }
    assert!(log.flush(Some(Duration::from_secs(10))));
    let st = log.stats();
    assert_eq!(st.written, 0);
    assert!(st.sink_errors >= 1, "{st:?}");
    assert_eq!(st.pushed, 100);
}

#[test]
fn block_loses_nothing_with_many_producers_and_keeps_each_in_order() {
    let (log, sink) = memory_logger(16, Policy::Block);
    let tid = log.register("{p:d} {i:d}").unwrap();
    let n = records(20_000);
    on_four_producers(&log, move |log, p| {
        for i in 0..n {
            log.push(tid, &[Value::Int(p), Value::Int(i)]).unwrap();
        }
    });
    assert!(log.flush(None));
    assert_each_producer_in_order(&sink.contents(), n);
    let st = log.stats();
    let total = 4 * n as u64;
    assert_eq!((st.pushed, st.written, st.dropped), (total, total, 0));
}

#[test]
fn concurrent_flushes_all_return() {
    let (log, sink) = memory_logger(8, Policy::DropNew);
    let tid = log.register("{i:d}").unwrap();
    let n = records(500);
    on_four_producers(&log, move |log, _| {
        for i in 0..n {
            log.push(tid, &[Value::Int(i)]).unwrap();
            if i % 50 == 0 {
                assert!(log.flush(Some(Duration::from_secs(10))));
            }
        }
    });
    assert!(log.flush(None));
    let st = log.stats();
    let lines = sink
        .contents()
        .lines()
        .filter(|l| !l.starts_with("[nlsq]"))
        .count() as u64;
    assert_eq!(lines, st.written);
    assert_eq!(st.written + st.dropped, 4 * n as u64);
}

#[test]
fn pausing_for_fork_keeps_the_logger_working() {
    let (log, sink) = memory_logger(64, Policy::DropNew);
    let tid = log.register("{i:d}").unwrap();
    log.push(tid, &[Value::Int(1)]).unwrap();
    ringlog::before_fork();
    assert_eq!(sink.contents(), "1\n", "pausing writes what was queued");
    log.push(tid, &[Value::Int(2)]).unwrap();
    ringlog::after_fork_parent();
    assert!(log.flush(None));
    assert_eq!(sink.contents(), "1\n2\n");
}

/// A sink that notes which thread wrote each batch.
#[derive(Clone, Default)]
struct Writers {
    inner: MemorySink,
    threads: Arc<Mutex<Vec<std::thread::ThreadId>>>,
}

impl Sink for Writers {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        self.threads
            .lock()
            .unwrap()
            .push(std::thread::current().id());
        self.inner.write(batch)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn flush_without_deadline_writes_on_the_calling_thread_when_the_drain_is_idle() {
    let sink = Writers::default();
    let log = Logger::new(Box::new(sink.clone()), Config::default());
    let tid = log.register("{i:d}").unwrap();
    let me = std::thread::current().id();
    let mut here = 0;
    for i in 0..20 {
        // Pushed while the drain lingers, the record waits for its doze to
        // end, so the flush usually finds the drain idle and writes here.
        log.push(tid, &[Value::Int(i)]).unwrap();
        sink.threads.lock().unwrap().clear();
        assert!(log.flush(None));
        here += usize::from(sink.threads.lock().unwrap().contains(&me));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(here > 0, "no flush wrote on the calling thread");
    let expected: String = (0..20).map(|i| format!("{i}\n")).collect();
    assert_eq!(sink.inner.contents(), expected);
}

#[test]
fn producers_and_flushers_on_many_threads_lose_nothing_and_keep_order() {
    let (log, sink) = memory_logger(64, Policy::Block);
    let tid = log.register("{p:d} {i:d}").unwrap();
    let n = records(3000);
    on_four_producers(&log, move |log, p| {
        for i in 0..n {
            log.push(tid, &[Value::Int(p), Value::Int(i)]).unwrap();
            if i % 7 == 0 {
                assert!(log.flush(None));
            }
        }
    });
    assert!(log.flush(None));
    assert_each_producer_in_order(&sink.contents(), n);
}

#[test]
fn pausing_for_fork_while_another_thread_flushes() {
    let (log, sink) = memory_logger(1024, Policy::Block);
    let tid = log.register("{i:d}").unwrap();
    let n = records(2000);
    let flusher = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                log.push(tid, &[Value::Int(i)]).unwrap();
                assert!(log.flush(None));
            }
        })
    };
    for _ in 0..records(50) {
        ringlog::before_fork();
        std::thread::sleep(Duration::from_micros(200));
        ringlog::after_fork_parent();
    }
    flusher.join().unwrap();
    assert!(log.flush(None));
    let expected: String = (0..n).map(|i| format!("{i}\n")).collect();
    assert_eq!(sink.contents(), expected);
}

/// A sink that notes, per write, which thread wrote and what.
#[derive(Clone, Default)]
struct ByThread {
    writes: Arc<Mutex<Vec<(std::thread::ThreadId, String)>>>,
}

impl Sink for ByThread {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(batch).into_owned();
        self.writes
            .lock()
            .unwrap()
            .push((std::thread::current().id(), text));
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_flush_on_push_record_is_written_by_its_pusher_with_what_precedes_it() {
    let sink = ByThread::default();
    let log = Logger::new(Box::new(sink.clone()), Config::default());
    let row = log.register("row {i:d}").unwrap();
    let end = log.register("end {i:d}").unwrap();
    assert_eq!(log.flush_on_push(99), Err(PushError::UnknownTemplate(99)));
    log.flush_on_push(end).unwrap();
    let me = std::thread::current().id();
    // The drain thread may hold the consumer at the moment of a push (a timed
    // doze ending): then it writes the record instead. Some of a few tries
    // must find it idle.
    let mut by_pusher = 0;
    for attempt in 0..20 {
        sink.writes.lock().unwrap().clear();
        log.push(row, &[Value::Int(attempt)]).unwrap();
        log.push(row, &[Value::Int(attempt + 1)]).unwrap();
        log.push(end, &[Value::Int(attempt)]).unwrap();
        let pushed_then = sink.writes.lock().unwrap().clone();
        assert!(log.flush(None));
        let all: String = sink
            .writes
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.1.clone())
            .collect();
        assert_eq!(
            all,
            format!("row {attempt}\nrow {}\nend {attempt}\n", attempt + 1)
        );
        if pushed_then
            .iter()
            .any(|(thread, text)| *thread == me && text.ends_with(&format!("end {attempt}\n")))
        {
            by_pusher += 1;
        }
    }
    assert!(
        by_pusher > 0,
        "a flush_on_push record was never written by its pusher"
    );
    // An unmarked record is left to the drain: its pusher never writes.
    sink.writes.lock().unwrap().clear();
    log.push(row, &[Value::Int(0)]).unwrap();
    assert!(sink.writes.lock().unwrap().iter().all(|w| w.0 != me));
    assert!(log.flush(None));
    log.close();
}
