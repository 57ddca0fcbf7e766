//! `Template::render` must not allocate beyond growing the caller's `String`:
//! the drain thread renders millions of lines into one reused buffer.
//!
//! A counting global allocator (this test binary only) checks it. It counts
//! only on the thread under test: libtest's own threads allocate at will.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringlog::{Template, Value};

struct Counting;

thread_local! {
    // `const` initialisation: reading it never allocates (no lazy init).
    static COUNT: Cell<Option<usize>> = const { Cell::new(None) };
}

fn note() {
    let _ = COUNT.try_with(|c| c.set(c.get().map(|n| n + 1)));
}

// SAFETY: forwards every call to `System` unchanged; only counts them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract for `alloc`, passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` (every allocation here does).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: as for `dealloc`; the rest is the caller's contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(Some(0)));
    f();
    COUNT.with(|c| c.replace(None)).unwrap_or(0)
}

#[test]
fn the_counter_counts() {
    assert_eq!(allocations(|| drop(String::from("x"))), 1);
}

#[test]
fn render_allocates_nothing_when_out_has_room() {
    let specs = [
        "{:*^30,.3f}",
        "{:#.4g}",
        "{:+010}",
        "{:_d}",
        "{:.17}",
        "{:E}",
        "{:>5d}",
        "{:^15.4e}",
        "{:.2e}",
        "{}",
        "{:€^40,}",
        "{:.1%}",
        "{:0=30_.100f}",
    ];
    let values = [
        Value::Int(3),
        Value::Int(i64::MIN),
        Value::Float(1.5),
        Value::Float(-0.0),
        Value::Float(2.0e-3),
        Value::Float(1e16),
        Value::Float(f64::NAN),
        Value::Float(f64::NEG_INFINITY),
        Value::Float(-1234567.891),
        Value::Float(5e-324),
        Value::Float(f64::MAX),
        Value::Float(0.1),
    ];
    let mut out = String::with_capacity(4096);
    for spec in specs {
        let t = Template::parse(spec).unwrap();
        for v in values {
            out.clear();
            let n = allocations(|| t.render(&[v], &mut out));
            assert_eq!(n, 0, "{spec} with {v:?} allocated");
        }
    }
    let line = Template::parse("{i:>5d} {cost:^15.4e} {g:.2e} {x} {y:,} {p:.1%}").unwrap();
    let vals = values[..6].to_vec();
    let n = allocations(|| {
        for _ in 0..100 {
            out.clear();
            line.render(&vals, &mut out);
        }
    });
    assert_eq!(n, 0);
    // the drain's form: bytes appended to a reused buffer
    let mut bytes = Vec::with_capacity(4096);
    let n = allocations(|| {
        for _ in 0..100 {
            bytes.clear();
            line.render_bytes(&vals, &mut bytes);
        }
    });
    assert_eq!(n, 0);
    assert_eq!(bytes, out.as_bytes());
}
