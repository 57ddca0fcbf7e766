//! Ring logger micro-benchmarks: push latency (criterion median, plus our own
//! p50/p99 over batches) and drain throughput formatting to a file.
//!
//! Run: `cargo bench -p nlsq-ringlog --bench ring` (add `-- --quick` for a
//! short run). Targets: push <= 50 ns median, drain >= 2 M records/s.

use criterion::{criterion_group, Criterion, Throughput};
use ringlog::{Config, Logger, PathSink, Policy, Sink, Value};
use std::hint::black_box;
use std::io;
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
    let log = Logger::new(
        Box::new(Discard),
        Config {
            capacity: 65536,
            policy: Policy::DropNew,
        },
    );
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
    let dir = std::env::temp_dir().join(format!("ringlog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("drain.log");
    let mut g = c.benchmark_group("drain");
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    g.bench_function("format_and_write_file_200k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_file(&path);
                let sink = PathSink::open(&path).unwrap();
                let log = Logger::new(
                    Box::new(sink),
                    Config {
                        capacity: 65536,
                        policy: Policy::Block,
                    },
                );
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
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Median and p99 of the per-push time, each sample a batch of 64 pushes
/// (one push is too short for the clock).
fn push_percentiles(quick: bool) {
    let log = Logger::new(
        Box::new(Discard),
        Config {
            capacity: 65536,
            policy: Policy::DropNew,
        },
    );
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

criterion_group!(benches, push_latency, render_only, drain_to_file);

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    benches();
    push_percentiles(quick);
    Criterion::default().configure_from_args().final_summary();
}
