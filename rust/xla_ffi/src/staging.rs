//! The CUDA route's staging ring: slots in pinned, host-mapped memory that
//! the GPU fills (an async copy, then a stream write of the slot's sequence
//! number) and one host thread, the poller, empties in ticket order.
//!
//! Slot layout in the pinned region (`SLOT_BYTES` = 128 per slot):
//!
//! | offset | bytes | written by | what |
//! |---|---|---|---|
//! | 0 | 8 | the GPU (`cuStreamWriteValue64`) | `published`: ticket + 1 once the data landed |
//! | 8 | 104 | the GPU (`cuMemcpyDtoHAsync`) | up to [`SLOT_VALUES`] (13) values: a keep flag and a full record |
//!
//! Beside the pinned region, host memory holds per slot the record's
//! [`Meta`] (where it goes, dtype, length) and a `ready` word.
//!
//! Protocol (tickets only grow; a slot is `ticket % SLOTS`; `x + 1` is
//! stored so that 0 means "never", and a value from an earlier lap never
//! equals the current ticket + 1, so no slot is ever reset):
//! - producer (the FFI handler): [`Ring::claim`] takes `k` consecutive
//!   tickets with a CAS on `head`, only while `head + k - tail <= SLOTS`;
//!   it loads `tail` with Acquire, which pairs with the poller's Release
//!   store, so the poller's reads of a slot's previous contents happen
//!   before anything this producer enqueues into it. It then enqueues the
//!   copy and the stream write, and [`Ring::commit`]s the meta (Release on
//!   `ready`), marking the slot abandoned when an enqueue failed.
//! - GPU: in stream order, the copy lands in the slot's data, then the
//!   stream write stores `ticket + 1` into `published`. The write uses
//!   `CU_STREAM_WRITE_VALUE_DEFAULT`, which makes the stream's earlier
//!   writes (the copy) visible before the value.
//! - poller ([`Ring::poll`]): at `tail`, Acquire-load `ready`; wait until it
//!   is `tail + 1` (then the meta is the producer's). An abandoned slot is
//!   skipped. Otherwise read `published` with an Acquire atomic load
//!   through `AtomicU64::from_ptr`. Why atomic, not `read_volatile` plus a
//!   fence: the word is written by another agent (the GPU, or the test's
//!   fake driver thread), and a Rust atomic load is the access that is
//!   defined for that: it is performed on every poll (the compiler may not
//!   assume the value is unchanged, as it might for a plain read), cannot be
//!   torn (the GPU writes it with one aligned 64-bit store), and its Acquire
//!   orders the reads of the slot's data after it (on x86 a plain `mov`; on
//!   Arm an `ldar`). A volatile read gives the first two but no ordering, and
//!   under Miri a volatile read racing the fake driver's store is a data
//!   race. The same pattern is used for rings shared with the kernel
//!   (io_uring's mmapped head/tail). When
//!   it equals `tail + 1`, the record is delivered and `tail` advanced with
//!   Release.
//!
//! Under `cfg(loom)` the pinned region is modelled by loom atomics and cells
//! and the GPU by a thread (see the loom test below), so the host-side
//! orderings are model-checked; the GPU-to-host visibility itself is CUDA's
//! contract, verified only on a device.
use std::cell::UnsafeCell;

use crossbeam_utils::CachePadded;

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

use crate::frame::{Dtype, Target, MAX_ROW};

/// Slots in the ring: records that can be in flight (enqueued on a stream,
/// not yet pushed) at once. Few under Miri and loom (Miri: enough for the
/// fake-CUDA tests, which stage up to four records, or a 3-row batch, before
/// the stream runs; a batch may take at most half the ring).
pub const SLOTS: usize = if cfg!(loom) {
    1
} else if cfg!(miri) {
    8
} else {
    4096
};
/// Values a slot's data holds: a keep flag and a full record.
pub const SLOT_VALUES: usize = MAX_ROW;
/// Bytes of one slot in the pinned region (a power of two, 8-aligned).
pub const SLOT_BYTES: usize = 128;
/// Offset of the values in a slot, after the `published` word.
pub const DATA_OFFSET: usize = 8;
/// Bytes of the pinned region.
pub const REGION_BYTES: usize = SLOTS * SLOT_BYTES;

const _: () = assert!(DATA_OFFSET + SLOT_VALUES * 8 <= SLOT_BYTES);

/// What a committed slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Where the record goes (`Routed { rows: true }`: the first value is
    /// the keep flag and the poller drops a zero-flagged record).
    pub target: Target,
    pub dtype: Dtype,
    /// Values in the slot (the keep flag included).
    pub len: usize,
    /// False when the copy or the stream write could not be enqueued: the
    /// GPU will never publish the slot, and the poller skips it.
    pub staged: bool,
}

const EMPTY_META: Meta = Meta {
    target: Target::Routed {
        key: 0,
        rows: false,
    },
    dtype: Dtype::F64,
    len: 0,
    staged: false,
};

/// The pinned region: real host-mapped memory, or loom's model of it.
#[cfg(not(loom))]
struct Pinned {
    base: *mut u8,
}

#[cfg(loom)]
struct Pinned {
    published: Box<[AtomicU64]>,
    data: Box<[loom::cell::UnsafeCell<[u64; SLOT_VALUES]>]>,
}

/// The staging ring. Shared by every producer and the one poller.
pub struct Ring {
    pinned: Pinned,
    head: CachePadded<AtomicU64>,
    tail: CachePadded<AtomicU64>,
    ready: Box<[AtomicU64]>,
    meta: Box<[UnsafeCell<Meta>]>,
}

// SAFETY: the pinned region and `meta` are only accessed under the protocol
// above: a slot's meta is written by the one producer that claimed its
// ticket, before its Release store to `ready`, and read by the poller after
// an Acquire load that saw that store; the data is written by the GPU and
// read by the poller after the published word (an Acquire atomic load).
unsafe impl Send for Ring {}
// SAFETY: as for Send.
unsafe impl Sync for Ring {}

fn slot_of(ticket: u64) -> usize {
    (ticket % SLOTS as u64) as usize
}

impl Ring {
    /// A ring over the pinned region at `base`.
    ///
    /// # Safety
    /// `base` points to [`REGION_BYTES`] bytes, 8-aligned, zeroed or holding
    /// no `published` value above 0 for a future ticket (fresh memory is
    /// fine: tickets start at 0, so `published` must not be 1 in slot 0;
    /// zero it), writable by the GPU and readable by this process for as
    /// long as the ring lives, and used by nothing else.
    #[cfg(not(loom))]
    pub unsafe fn new(base: *mut u8) -> Ring {
        // SAFETY: the caller's contract: REGION_BYTES writable bytes.
        unsafe { std::ptr::write_bytes(base, 0, REGION_BYTES) };
        Ring::with(Pinned { base })
    }

    #[cfg(loom)]
    pub fn new_model() -> Ring {
        Ring::with(Pinned {
            published: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            data: (0..SLOTS)
                .map(|_| loom::cell::UnsafeCell::new([0; SLOT_VALUES]))
                .collect(),
        })
    }

    fn with(pinned: Pinned) -> Ring {
        Ring {
            pinned,
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            ready: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            meta: (0..SLOTS).map(|_| UnsafeCell::new(EMPTY_META)).collect(),
        }
    }

    /// Tickets taken so far (the next ticket to claim).
    pub fn claimed(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Tickets consumed so far (delivered or skipped).
    pub fn consumed(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Claimed but not yet consumed.
    pub fn in_flight(&self) -> u64 {
        self.claimed().saturating_sub(self.consumed())
    }

    /// Takes `k` consecutive tickets (their slots are free: the poller is
    /// done with their previous contents); `None` when fewer than `k` slots
    /// are free.
    pub fn claim(&self, k: u64) -> Option<u64> {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            if head + k - tail > SLOTS as u64 {
                return None;
            }
            match self.head.compare_exchange_weak(
                head,
                head + k,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(head),
                Err(now) => head = now,
            }
        }
    }

    /// Host address of ticket's slot data (the copy's destination).
    #[cfg(not(loom))]
    pub fn data_ptr(&self, ticket: u64) -> *mut u8 {
        self.pinned
            .base
            .wrapping_add(slot_of(ticket) * SLOT_BYTES + DATA_OFFSET)
    }

    /// Host address of ticket's `published` word; its device address is
    /// this plus the region's device offset (see `cuda.rs`).
    #[cfg(not(loom))]
    pub fn published_ptr(&self, ticket: u64) -> *mut u64 {
        self.pinned
            .base
            .wrapping_add(slot_of(ticket) * SLOT_BYTES)
            .cast()
    }

    /// Offset of ticket's `published` word from the region's base.
    pub fn published_offset(ticket: u64) -> usize {
        slot_of(ticket) * SLOT_BYTES
    }

    /// Records the meta of a claimed ticket and hands the slot to the poller.
    ///
    /// # Safety
    /// `ticket` came from this ring's [`Ring::claim`] and is committed once.
    pub unsafe fn commit(&self, ticket: u64, meta: Meta) {
        let slot = slot_of(ticket);
        // SAFETY: the ticket is ours (claimed, not yet committed), so no one
        // else reads or writes this meta until the Release store below.
        unsafe { *self.meta[slot].get() = meta };
        self.ready[slot].store(ticket + 1, Ordering::Release);
    }

    /// The `published` word of `slot`, as the GPU last wrote it, ordered
    /// before every later read of the slot's data (see the file docs).
    #[cfg(not(loom))]
    fn published(&self, slot: usize) -> u64 {
        let word = self
            .pinned
            .base
            .wrapping_add(slot * SLOT_BYTES)
            .cast::<u64>();
        // SAFETY: in bounds and 8-aligned (see `Ring::new`), live as long as
        // the ring; every other access to it is atomic too (the GPU's 64-bit
        // store, the fake driver's atomic store) or happened before it
        // (the zeroing in `new`).
        unsafe { AtomicU64::from_ptr(word) }.load(Ordering::Acquire)
    }

    #[cfg(loom)]
    fn published(&self, slot: usize) -> u64 {
        self.pinned.published[slot].load(Ordering::Acquire)
    }

    /// Calls `f` with the landed data of `slot`.
    #[cfg(not(loom))]
    fn with_data<R>(&self, slot: usize, f: impl FnOnce(*const u8) -> R) -> R {
        f(self
            .pinned
            .base
            .wrapping_add(slot * SLOT_BYTES + DATA_OFFSET)
            .cast_const())
    }

    #[cfg(loom)]
    fn with_data<R>(&self, slot: usize, f: impl FnOnce(*const u8) -> R) -> R {
        self.pinned.data[slot].with(|p| f(p.cast()))
    }

    /// The loom model's GPU: lands `values` in ticket's slot, then publishes.
    #[cfg(loom)]
    pub fn device_write(&self, ticket: u64, values: &[u64]) {
        let slot = slot_of(ticket);
        self.pinned.data[slot].with_mut(|p| {
            // SAFETY: loom checks this access against the poller's reads.
            unsafe { (&mut *p)[..values.len()].copy_from_slice(values) }
        });
        self.pinned.published[slot].store(ticket + 1, Ordering::Release);
    }

    /// Consumes every record at the tail that has landed, in ticket order,
    /// passing each to `deliver(meta, data)` (data: the slot's values, host
    /// memory holding `meta.len` values of `meta.dtype`). Abandoned slots
    /// are skipped. Returns how many tickets were consumed. One caller at a
    /// time (the poller).
    pub fn poll(&self, mut deliver: impl FnMut(&Meta, *const u8)) -> u64 {
        let start = self.tail.load(Ordering::Relaxed);
        let mut tail = start;
        loop {
            let slot = slot_of(tail);
            if self.ready[slot].load(Ordering::Acquire) != tail + 1 {
                break;
            }
            // SAFETY: the Acquire load saw the producer's Release store after
            // its write of this meta; the producer writes it no more.
            let meta = unsafe { *self.meta[slot].get() };
            if meta.staged {
                if self.published(slot) != tail + 1 {
                    break;
                }
                self.with_data(slot, |data| deliver(&meta, data));
            }
            tail += 1;
            // Release: our reads of this slot happen before a producer that
            // sees the new tail reuses it.
            self.tail.store(tail, Ordering::Release);
        }
        tail - start
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn meta() -> Meta {
        Meta {
            target: Target::Routed { key: 1, rows: true },
            dtype: Dtype::F64,
            len: 2,
            staged: true,
        }
    }

    /// A one-slot ring, so the second record reuses the first one's slot.
    /// Every thread makes a fixed number of attempts (no spinning, so loom
    /// explores every interleaving): the producer tries to claim and commit
    /// two tickets; the GPU lands each ticket it sees claimed (its only link
    /// to the poller is the published word, as for the real GPU); the
    /// poller polls twice while they run and once after. Loom fails the test
    /// if the GPU's write of ticket 1 can race the poller's read of ticket 0
    /// (weaken the `tail` or `published` orderings to see it), and the
    /// records delivered must be exactly the landed ones, in order.
    #[test]
    fn slot_reuse_is_ordered_after_the_poller_read_it() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let ring = Arc::new(Ring::new_model());
            let producer = {
                let ring = ring.clone();
                thread::spawn(move || {
                    for _ in 0..2 {
                        if let Some(ticket) = ring.claim(1) {
                            // SAFETY: claimed just now, committed once.
                            unsafe { ring.commit(ticket, meta()) };
                        }
                    }
                })
            };
            let gpu = {
                let ring = ring.clone();
                thread::spawn(move || {
                    let mut landed = 0;
                    for ticket in 0..2u64 {
                        // The work is enqueued at the claim; it runs later.
                        if ring.claimed() > ticket {
                            ring.device_write(
                                ticket,
                                &[1.0f64.to_bits(), (ticket as f64).to_bits()],
                            );
                            landed += 1;
                        }
                    }
                    landed
                })
            };
            let mut seen = Vec::new();
            let mut take = |ring: &Ring| {
                ring.poll(|m, data| {
                    assert_eq!(*m, meta());
                    // SAFETY: the slot's data holds m.len f64 values.
                    seen.push(unsafe { *data.cast::<f64>().add(1) });
                })
            };
            take(&ring);
            take(&ring);
            producer.join().unwrap();
            let landed = gpu.join().unwrap();
            take(&ring);
            let expected: Vec<f64> = (0..landed).map(|t| t as f64).collect();
            assert_eq!(seen, expected);
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// A region on the heap, leaked like the pinned one.
    pub fn heap_ring() -> &'static Ring {
        let memory: &'static mut [u64] = Box::leak(vec![0u64; REGION_BYTES / 8].into_boxed_slice());
        // SAFETY: REGION_BYTES bytes, 8-aligned, never freed, used by nothing else.
        crate::testing::keep(unsafe { Ring::new(memory.as_mut_ptr().cast()) })
    }

    /// The GPU's part, done by hand: copy, then publish.
    fn land(ring: &Ring, ticket: u64, values: &[f64]) {
        // SAFETY: the slot's data holds SLOT_VALUES values; the ticket is
        // claimed and the poller does not read it before it is published.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                ring.data_ptr(ticket).cast(),
                values.len(),
            );
            AtomicU64::from_ptr(ring.published_ptr(ticket)).store(ticket + 1, Ordering::Release);
        }
    }

    fn meta(len: usize, staged: bool) -> Meta {
        Meta {
            target: Target::Routed {
                key: 3,
                rows: false,
            },
            dtype: Dtype::F64,
            len,
            staged,
        }
    }

    fn drain(ring: &Ring) -> Vec<f64> {
        let mut out = Vec::new();
        ring.poll(|m, data| {
            // SAFETY: m.len f64 values landed in the slot.
            let v = unsafe { std::slice::from_raw_parts(data.cast::<f64>(), m.len) };
            out.extend_from_slice(v);
        });
        out
    }

    #[test]
    fn nothing_is_delivered_before_both_commit_and_publish() {
        let ring = heap_ring();
        let t = ring.claim(1).unwrap();
        assert_eq!(drain(ring), Vec::<f64>::new(), "claimed only");
        land(ring, t, &[4.0]);
        assert_eq!(drain(ring), Vec::<f64>::new(), "published, not committed");
        // SAFETY: claimed above, committed once.
        unsafe { ring.commit(t, meta(1, true)) };
        assert_eq!(drain(ring), vec![4.0]);
        assert_eq!(ring.in_flight(), 0);

        // Committed before the GPU published: waits for the publish.
        let t = ring.claim(1).unwrap();
        // SAFETY: as above.
        unsafe { ring.commit(t, meta(1, true)) };
        assert_eq!(drain(ring), Vec::<f64>::new());
        land(ring, t, &[5.0]);
        assert_eq!(drain(ring), vec![5.0]);
    }

    #[test]
    fn full_ring_refuses_claims_until_the_poller_frees_slots() {
        let ring = heap_ring();
        let first = ring.claim(SLOTS as u64).unwrap();
        assert_eq!(ring.claim(1), None, "every slot is in flight");
        for t in first..first + SLOTS as u64 {
            land(ring, t, &[t as f64]);
            // SAFETY: claimed above, committed once.
            unsafe { ring.commit(t, meta(1, true)) };
        }
        let expected: Vec<f64> = (0..SLOTS).map(|t| t as f64).collect();
        assert_eq!(drain(ring), expected);
        // Wrap-around: the same slots, new tickets; old published values
        // (from the previous lap) do not count as landed.
        let t = ring.claim(2).unwrap();
        assert_eq!(t, SLOTS as u64);
        // SAFETY: as above.
        unsafe {
            ring.commit(t, meta(1, true));
            ring.commit(t + 1, meta(1, true));
        }
        assert_eq!(drain(ring), Vec::<f64>::new());
        land(ring, t + 1, &[8.0]);
        assert_eq!(drain(ring), Vec::<f64>::new(), "ticket order is kept");
        land(ring, t, &[7.0]);
        assert_eq!(drain(ring), vec![7.0, 8.0]);
    }

    #[test]
    fn abandoned_slots_are_skipped() {
        let ring = heap_ring();
        let t = ring.claim(2).unwrap();
        // SAFETY: claimed above, committed once each.
        unsafe {
            ring.commit(t, meta(1, false));
            ring.commit(t + 1, meta(1, true));
        }
        land(ring, t + 1, &[9.0]);
        assert_eq!(drain(ring), vec![9.0]);
        assert_eq!(ring.consumed(), t + 2);
    }

    #[test]
    fn concurrent_producers_and_a_poller_lose_nothing() {
        use std::sync::atomic::AtomicBool;
        let ring = heap_ring();
        let per = if cfg!(miri) { 5 } else { 20_000 };
        let done = AtomicBool::new(false);
        let total = std::thread::scope(|s| {
            let poller = s.spawn(|| {
                let mut sum = 0.0;
                let mut n = 0;
                while n < 2 * per {
                    n += ring.poll(|m, data| {
                        // SAFETY: m.len f64 values landed.
                        sum += unsafe { *data.cast::<f64>() };
                        assert_eq!(m.len, 1);
                    });
                    std::thread::yield_now();
                }
                done.store(true, Ordering::Relaxed);
                sum
            });
            for _ in 0..2 {
                s.spawn(|| {
                    for i in 0..per {
                        let t = loop {
                            if let Some(t) = ring.claim(1) {
                                break t;
                            }
                            std::thread::yield_now();
                        };
                        land(ring, t, &[i as f64]);
                        // SAFETY: claimed above, committed once.
                        unsafe { ring.commit(t, meta(1, true)) };
                    }
                });
            }
            poller.join().unwrap()
        });
        assert!(done.load(Ordering::Relaxed));
        let per_sum = (per * (per - 1) / 2) as f64;
        assert_eq!(total, 2.0 * per_sum);
    }
}
