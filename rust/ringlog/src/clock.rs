//! Timestamps for the push path, converted to nanoseconds only by the drain.
//!
//! Reading the clock is most of a push's cost when it is `clock_gettime`
//! (about 20–30 ns under a hypervisor); an invariant TSC read is a few ns.
//!
//! Invariants:
//! - The unit of a stamp is fixed once per process by [`init`] (called by
//!   `Logger::new` before any record exists): TSC ticks on x86-64 when the CPU
//!   reports an invariant TSC (`constant_tsc` and `nonstop_tsc`), else
//!   nanoseconds from `Instant`. Stamps are only ever compared with stamps.
//! - [`elapsed_ns`] converts with a ticks-per-ns ratio measured from `init`
//!   to now, so it is exact for the nanosecond clock and within a fraction of
//!   a percent for the TSC once the process has run a few milliseconds;
//!   latency percentiles are 12.5 %-bucketed anyway.

use std::sync::OnceLock;
use std::time::Instant;

struct Origin {
    instant: Instant,
    tsc: Option<u64>,
}

static ORIGIN: OnceLock<Origin> = OnceLock::new();

fn origin() -> &'static Origin {
    ORIGIN.get_or_init(|| Origin {
        instant: Instant::now(),
        tsc: invariant_tsc().then(rdtsc),
    })
}

/// Fixes the stamp unit and origin; idempotent.
pub fn init() {
    origin();
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86-64 (user mode may read it
    // unless the OS sets CR4.TSD, which Linux does not by default; we only
    // use it after /proc/cpuinfo says the TSC is invariant).
    #[allow(unused_unsafe)]
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn rdtsc() -> u64 {
    0
}

fn invariant_tsc() -> bool {
    // Miri: the TSC is outside its abstract machine (and /proc outside its
    // isolation), so it checks the code with the `Instant` clock.
    if cfg!(miri) || !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
        return false;
    }
    if std::env::var_os("NLSQ_RINGLOG_NO_TSC").is_some() {
        return false;
    }
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return false;
    };
    let flags = info.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    has("constant_tsc") && has("nonstop_tsc")
}

/// A timestamp in this process's stamp unit.
#[inline]
pub fn stamp() -> u64 {
    let o = origin();
    if o.tsc.is_some() {
        rdtsc()
    } else {
        o.instant.elapsed().as_nanos() as u64
    }
}

/// Nanoseconds from stamp `earlier` to stamp `later` (0 if not later).
pub fn elapsed_ns(earlier: u64, later: u64) -> u64 {
    let o = origin();
    let ticks = later.saturating_sub(earlier);
    match o.tsc {
        None => ticks,
        Some(tsc0) => {
            let ns = o.instant.elapsed().as_nanos() as f64;
            let span = rdtsc().saturating_sub(tsc0) as f64;
            if ns <= 0.0 || span <= 0.0 {
                return 0;
            }
            (ticks as f64 * ns / span) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_convert_to_wall_time() {
        init();
        let t0 = stamp();
        let w0 = Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let t1 = stamp();
        let wall = w0.elapsed().as_nanos() as f64;
        let ns = elapsed_ns(t0, t1) as f64;
        assert!(
            (ns / wall - 1.0).abs() < 0.2,
            "{ns} ns from stamps vs {wall} ns wall"
        );
        assert_eq!(elapsed_ns(t1, t0), 0);
    }
}
