//! Counters and the push→write latency histogram.
//!
//! Invariants:
//! - Every counter only grows (until a forked child resets them), and each has
//!   one kind of writer: `pushed` the producers, `written`/`sink_errors`/the
//!   histogram the drain, `dropped` the ring. Readers take a snapshot with
//!   relaxed loads, so a snapshot is consistent per field, not across fields.
//! - Latency buckets are log-linear: 8 linear sub-buckets per power of two, so a
//!   reported percentile is within 12.5 % of the true value (it reports the
//!   bucket's upper bound).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = 64 * SUB;

/// A snapshot of a logger's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records offered by producers (queued or dropped).
    pub pushed: u64,
    /// Records formatted and handed to the sink successfully.
    pub written: u64,
    /// Records lost because the ring was full (`drop_new`) or overwritten
    /// (`overwrite_oldest`).
    pub dropped: u64,
    /// Failed sink writes or flushes.
    pub sink_errors: u64,
    /// Most entries seen waiting in the ring at once (flush markers included).
    pub high_water: u64,
    /// Ring capacity in records.
    pub capacity: u64,
    /// Median push→write latency, nanoseconds (0 before any write).
    pub latency_ns_p50: u64,
    /// 99th percentile push→write latency, nanoseconds (0 before any write).
    pub latency_ns_p99: u64,
}

impl Stats {
    /// `(name, value)` of every counter, in declaration order: what a
    /// binding turns into a dict, so the names are written in one place.
    pub fn fields(&self) -> [(&'static str, u64); 8] {
        [
            ("pushed", self.pushed),
            ("written", self.written),
            ("dropped", self.dropped),
            ("sink_errors", self.sink_errors),
            ("high_water", self.high_water),
            ("capacity", self.capacity),
            ("latency_ns_p50", self.latency_ns_p50),
            ("latency_ns_p99", self.latency_ns_p99),
        ]
    }
}

/// Log-linear histogram of nanosecond durations, written by one thread,
/// readable from any.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros(); // >= SUB_BITS
    let sub = ((ns >> (msb - SUB_BITS)) as usize) & (SUB - 1);
    ((msb - SUB_BITS + 1) as usize) * SUB + sub
}

/// Largest value that lands in bucket `b`.
fn upper_bound(b: usize) -> u64 {
    if b < SUB {
        return b as u64;
    }
    let exp = (b / SUB) as u32 + SUB_BITS - 1; // msb of values in the bucket
    let sub = (b % SUB) as u64;
    let lo = (1u64 << exp) | (sub << (exp - SUB_BITS));
    // Bracketed: for the top bucket `lo + width` is 2^64, which overflows
    // (a panic in debug builds, where Miri found it); `lo + (width - 1)` is
    // at most u64::MAX.
    lo + ((1u64 << (exp - SUB_BITS)) - 1)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Single writer: a load and a store, no RMW.
    #[inline]
    pub fn record(&self, ns: u64) {
        let b = &self.buckets[bucket_of(ns)];
        b.store(b.load(Relaxed) + 1, Relaxed);
    }

    /// The `q`-quantile (0 < q <= 1) as a bucket upper bound; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(b);
            }
        }
        upper_bound(BUCKETS - 1)
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Relaxed);
        }
    }
}

/// The live counters of one logger.
#[derive(Default)]
pub struct Counters {
    pub written: AtomicU64,
    pub sink_errors: AtomicU64,
    pub high_water: AtomicU64,
    pub latency: Histogram,
}

impl Counters {
    pub fn reset(&self) {
        self.written.store(0, Relaxed);
        self.sink_errors.store(0, Relaxed);
        self.high_water.store(0, Relaxed);
        self.latency.reset();
    }

    /// Raises the high-water mark to `n` if it is higher (single writer).
    pub fn observe_depth(&self, n: u64) {
        if n > self.high_water.load(Relaxed) {
            self.high_water.store(n, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_bounds_contain_values() {
        let mut last = 0;
        for ns in (0..5000u64).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(ns);
            assert!(b >= last || ns > 5000, "bucket order at {ns}");
            last = b;
            assert!(upper_bound(b) >= ns, "{ns} above its bucket bound");
            if b > 0 {
                assert!(upper_bound(b - 1) < ns, "{ns} fits a lower bucket");
            }
            assert!(b < BUCKETS);
        }
    }

    #[test]
    fn fields_name_every_counter_once() {
        let s = Stats {
            pushed: 1,
            written: 2,
            dropped: 3,
            sink_errors: 4,
            high_water: 5,
            capacity: 6,
            latency_ns_p50: 7,
            latency_ns_p99: 8,
        };
        let f = s.fields();
        assert_eq!(f.map(|(_, v)| v), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(f[3].0, "sink_errors");
        let mut names = f.map(|(n, _)| n).to_vec();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 8);
    }

    #[test]
    fn quantiles_are_within_an_eighth() {
        let h = Histogram::new();
        assert_eq!(h.quantile(0.5), 0);
        for ns in 1..=1000u64 {
            h.record(ns * 100);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((50_000.0..=50_000.0 * 1.125).contains(&p50), "p50 {p50}");
        assert!((99_000.0..=99_000.0 * 1.125).contains(&p99), "p99 {p99}");
        h.reset();
        assert_eq!(h.quantile(0.99), 0);
    }
}
