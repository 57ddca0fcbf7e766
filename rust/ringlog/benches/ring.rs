//! Ring logger micro-benchmarks: push latency (criterion median, plus our own
//! p50/p99 over batches) and drain throughput formatting to a file.
//!
//! Run: `cargo bench -p nlsq-ringlog --bench ring` (add `-- --quick` for a
//! short run). Targets: push <= 50 ns median, drain >= 2 M records/s.

use criterion::{criterion_group, Criterion, Throughput};
use ringlog::{Config, Logger, PathSink, Policy, Sink, Value};
use std::hint::black_box;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The scipy-style verbose=2 row: six 15-wide centred columns.
const ROW: &str =
    "{it:^15d}{nfev:^15d}{cost:^15.4e}{reduction:^15.2e}{step:^15.2e}{optimality:^15.2e}";

fn row(i: i64) -> [Value; 6] {
    let x = i as f64;
    [
        Value::Int(i),
        Value::Int(i + 1),
        Value::Float(1.0 / (x + 1.0)),
        Value::Float(x * 1e-3),
        Value::Float(0.5 + x),
        Value::Float(1e-8 * x),
    ]
}

/// A logger on `sink` with a ring of `capacity` records.
fn logger(sink: impl Sink, capacity: usize, policy: Policy) -> Logger {
    Logger::new(Box::new(sink), Config { capacity, policy })
}

/// A fresh, empty file for a bench to write, in a directory of its own.
fn bench_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringlog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path
}

struct Discard;

impl Sink for Discard {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        black_box(batch);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Pushes in chunks that fit the ring, flushing between chunks outside the
/// timed region, so every timed push finds room (no drop path).
fn timed_pushes(log: &Logger, tid: u32, iters: u64) -> Duration {
    const CHUNK: u64 = 4096;
    let values = row(7);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let t = Instant::now();
        for _ in 0..n {
            log.push(tid, black_box(&values)).unwrap();
        }
        total += t.elapsed();
        log.flush(None);
        left -= n;
    }
    total
}

fn push_latency(c: &mut Criterion) {
    let log = logger(Discard, 65536, Policy::DropNew);
    let tid = log.register(ROW).unwrap();
    let mut g = c.benchmark_group("push");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_6_values", |b| {
        b.iter_custom(|iters| timed_pushes(&log, tid, iters))
    });
    g.finish();
    log.close();
}

fn drain_to_file(c: &mut Criterion) {
    const N: u64 = 200_000;
    let path = bench_file("drain.log");
    let mut g = c.benchmark_group("drain");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("format_and_write_file_200k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_file(&path);
                let sink = PathSink::open(&path).unwrap();
                let log = logger(sink, 65536, Policy::Block);
                let tid = log.register(ROW).unwrap();
                let t = Instant::now();
                for i in 0..N as i64 {
                    log.push(tid, &row(i)).unwrap();
                }
                log.flush(None);
                total += t.elapsed();
                log.close();
            }
            total
        })
    });
    g.finish();
    let _ = std::fs::remove_file(&path);
}

/// Median and p99 of the per-push time, each sample a batch of 64 pushes
/// (one push is too short for the clock).
fn push_percentiles(quick: bool) {
    let log = logger(Discard, 65536, Policy::DropNew);
    let tid = log.register(ROW).unwrap();
    let values = row(3);
    let samples = if quick { 2_000 } else { 20_000 };
    let mut per_push = Vec::with_capacity(samples);
    for s in 0..samples {
        let t = Instant::now();
        for _ in 0..64 {
            log.push(tid, black_box(&values)).unwrap();
        }
        per_push.push(t.elapsed().as_nanos() as f64 / 64.0);
        if s % 512 == 511 {
            log.flush(None);
        }
    }
    per_push.sort_by(f64::total_cmp);
    let p = |q: f64| per_push[((q * samples as f64) as usize).min(samples - 1)];
    println!(
        "push latency over {samples} batches of 64: median {:.1} ns, p99 {:.1} ns (target <= 50 ns median)",
        p(0.5),
        p(0.99)
    );
    log.close();
}

/// The formatter alone (no ring, no thread, no I/O): the floor of the drain.
fn render_only(c: &mut Criterion) {
    let template = ringlog::Template::parse(ROW).unwrap();
    let mut out = String::with_capacity(1 << 20);
    let mut g = c.benchmark_group("render");
    g.throughput(Throughput::Elements(1));
    let mut i = 0i64;
    g.bench_function("row_6_values", |b| {
        b.iter(|| {
            if out.len() > (1 << 19) {
                out.clear();
            }
            i += 1;
            template.render(black_box(&row(i)), &mut out);
            out.push('\n');
        })
    });
    g.finish();
}

/// A row with `f` and `d` fields (fixed notation, the other common shape).
const FIXED_ROW: &str = "{it:>6d} {nfev:>8d} {cost:>16.6f} {step:>12.4f} {x:^14.3f} {t:>10.2f}";

fn fixed_row(i: i64) -> [Value; 6] {
    let x = i as f64;
    [
        Value::Int(i),
        Value::Int(3 * i + 1),
        Value::Float(1e4 / (x + 1.0)),
        Value::Float(x * 1e-3 - 7.0),
        Value::Float(0.5 + x * 1.25),
        Value::Float(1e-2 * x),
    ]
}

/// Open/closed gate shared by the bench and its `HeldSink`.
type Gate = Arc<(Mutex<GateState>, Condvar)>;

#[derive(Default)]
struct GateState {
    /// The drain is inside its first write, waiting.
    held: bool,
    open: bool,
}

/// Writes to `inner`, but holds its first write until the gate opens, so
/// that the producer can queue every record before the drain formats any.
struct HeldSink {
    inner: PathSink,
    gate: Gate,
}

impl Sink for HeldSink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let (state, changed) = &*self.gate;
        let mut g = state.lock().unwrap();
        if !g.open {
            g.held = true;
            changed.notify_all();
            while !g.open {
                g = changed.wait(g).unwrap();
            }
        }
        drop(g);
        self.inner.write(batch)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// CPU time this process has run, over all its threads, in seconds (Linux
/// `schedstat`, nanosecond resolution); `None` where that is unavailable.
fn process_cpu_seconds() -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 * 1e-9)
}

/// Builds the values of record `i` of a bench row.
type RowMaker = fn(i64) -> [Value; 6];

/// One released-drain run: records/s over wall time, and over the CPU time
/// the process used meanwhile (the producer only waits in `flush` then, so
/// that is the drain's; on a loaded machine it is the steadier figure).
struct Released {
    wall: f64,
    cpu: Option<f64>,
}

/// `n` records are queued while the drain is held in its first write, then
/// released; the clock runs from the release until `flush` returns (all
/// `n` formatted and written to a file).
fn released_drain_rate(template: &str, row: RowMaker, n: usize) -> Released {
    let path = bench_file("released.log");
    let gate: Gate = Arc::default();
    let sink = HeldSink {
        inner: PathSink::open(&path).unwrap(),
        gate: gate.clone(),
    };
    let log = logger(sink, n + 1, Policy::Block);
    let tid = log.register(template).unwrap();
    // One record to catch the drain in its first write.
    log.push(tid, &row(0)).unwrap();
    {
        let (state, changed) = &*gate;
        let mut g = state.lock().unwrap();
        while !g.held {
            g = changed.wait(g).unwrap();
        }
    }
    for i in 1..=n as i64 {
        log.push(tid, &row(i)).unwrap();
    }
    let cpu0 = process_cpu_seconds();
    let t = Instant::now();
    {
        let (state, changed) = &*gate;
        state.lock().unwrap().open = true;
        changed.notify_all();
    }
    assert!(log.flush(None));
    let wall = t.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds().zip(cpu0).map(|(c1, c0)| c1 - c0);
    let stats = log.stats();
    log.close();
    assert_eq!(stats.written, n as u64 + 1, "{stats:?}");
    let _ = std::fs::remove_file(&path);
    Released {
        wall: n as f64 / wall,
        cpu: cpu.map(|c| n as f64 / c),
    }
}

/// The released-drain figure (the target: >= 2 M records/s), for
/// the scipy row (`d d e e e e`) and a fixed-notation row (`d d f f f f`);
/// runs interleaved, medians reported.
fn released_drain(quick: bool) {
    let (n, runs) = if quick { (200_000, 5) } else { (1_000_000, 9) };
    let rows: [(&str, &str, RowMaker); 2] = [
        ("scipy row d,d,e,e,e,e", ROW, row),
        ("fixed row d,d,f,f,f,f", FIXED_ROW, fixed_row),
    ];
    let mut results: [Vec<Released>; 2] = [vec![], vec![]];
    for _ in 0..runs {
        for (r, (_, template, make)) in results.iter_mut().zip(rows) {
            r.push(released_drain_rate(template, make, n));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((name, _, _), r) in rows.iter().zip(results) {
        let wall = median(r.iter().map(|x| x.wall).collect());
        let cpu: Option<Vec<f64>> = r.iter().map(|x| x.cpu).collect();
        let cpu = cpu.map_or("n/a".to_string(), |c| format!("{:.2}", median(c) / 1e6));
        println!(
            "released drain to a file, {name}: median {:.2} M records/s wall, {cpu} M records per CPU-second ({runs} runs of {n})",
            wall / 1e6
        );
    }
}

criterion_group!(benches, push_latency, render_only, drain_to_file);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if std::env::args().any(|a| a == "--released-drain") {
        // Only the drain figure: `cargo bench --bench ring -- --released-drain [--quick]`.
        released_drain(quick);
        return;
    }
    benches();
    push_percentiles(quick);
    released_drain(quick);
    Criterion::default().configure_from_args().final_summary();
}
