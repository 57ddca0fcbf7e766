//! The XLA:CUDA handler: it never blocks the host or the stream on the log.
//! On the handler's stream it enqueues an async copy of the few packed values
//! from device memory into a pinned host staging slot, then a host function
//! that pushes the record into the ring once the copy has landed.
//!
//! NOT VERIFIED ON A DEVICE: this file is built and unit-tested without a
//! GPU (driver loading failure, error paths, the host-function body on plain
//! memory); the stream path itself has not run on CUDA hardware.
//!
//! Invariants:
//! - The CUDA driver API is loaded at run time with `dlopen("libcuda.so.1")`,
//!   so a CPU-only build, its tests and CI need no CUDA. Failure to load is a
//!   clean error (and Python skips registering this handler).
//! - A staging slot is owned by exactly one in-flight record: it is taken
//!   from the lock-free free list before the copy is enqueued and returned
//!   only by the host function, which CUDA runs after the copy completed
//!   (stream order). No slot is free → the record is dropped and counted,
//!   never waited for.
//! - If the host function cannot be enqueued after the copy was, the slot is
//!   deliberately leaked (the copy may still write into it) and counted.
//! - The handler declares no command-buffer trait, so XLA does not capture
//!   it into a CUDA graph, where a host function would be replayed wrongly.
//! - The host function runs on a CUDA driver thread: it calls no CUDA API,
//!   and no panic leaves it.
//! - `vmap` rows (`rows = 1`) are refused with a clear error: a slot holds
//!   one record. The Python side sends rows through the callback path when
//!   the CUDA target is registered.
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::OnceLock;

use crossbeam_queue::ArrayQueue;
use libloading::Library;
use ringlog::MAX_VALUES;

use crate::abi::{self, CallFrame, StreamGetArgs, XlaError};
use crate::cpu::{dispatch, Deliver, Ring};
use crate::error::{self, Failure};
use crate::frame::{Call, Dtype, Packed, Target};
use crate::handler::guarded;
use crate::stats;

type CuResult = c_int;
type CuStream = *mut c_void;
type CuDevicePtr = u64;
type HostFn = unsafe extern "C" fn(user: *mut c_void);

const CU_MEMHOSTALLOC_PORTABLE: c_uint = 0x01;
/// Records that can be in flight (copied but not yet pushed) at once.
/// (Few under Miri, where filling the free list is the slow part of a test.)
pub const SLOTS: usize = if cfg!(miri) { 16 } else { 4096 };
/// Bytes of one staging slot: the widest record.
const SLOT_BYTES: usize = MAX_VALUES * 8;

/// The driver entry points we use, resolved once.
pub struct Driver {
    // Keeps the library mapped for as long as the function pointers live.
    _lib: Library,
    memcpy_dtoh_async: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize, CuStream) -> CuResult,
    launch_host_func: unsafe extern "C" fn(CuStream, HostFn, *mut c_void) -> CuResult,
    mem_host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

impl Driver {
    /// Opens the driver library at `path` and resolves the entry points.
    pub fn load(path: &str) -> Result<Driver, String> {
        // SAFETY: loading the CUDA driver runs its initialisers, which have
        // no preconditions on us.
        let lib = unsafe { Library::new(path) }.map_err(|e| format!("cannot load {path}: {e}"))?;
        // SAFETY: each symbol is declared with its documented C signature
        // (cuda.h, driver API >= 10.0) and kept alive by `_lib`.
        unsafe {
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(|e| {
                        format!("{path} lacks {}: {e}", String::from_utf8_lossy($name))
                    })?
                };
            }
            Ok(Driver {
                memcpy_dtoh_async: sym!(b"cuMemcpyDtoHAsync_v2"),
                launch_host_func: sym!(b"cuLaunchHostFunc"),
                mem_host_alloc: sym!(b"cuMemHostAlloc"),
                get_error_string: sym!(b"cuGetErrorString"),
                _lib: lib,
            })
        }
    }

    fn describe(&self, call: &str, rc: CuResult) -> String {
        let mut text: *const c_char = ptr::null();
        // SAFETY: cuGetErrorString writes a pointer to a static string.
        let known = unsafe { (self.get_error_string)(rc, &mut text) } == 0 && !text.is_null();
        let name = if known {
            // SAFETY: non-null static C string from the driver.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        } else {
            "unknown CUDA error".into()
        };
        format!("{call} failed with CUDA error {rc} ({name})")
    }
}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

/// The process's CUDA driver, loaded on first use.
pub fn driver() -> Result<&'static Driver, &'static str> {
    DRIVER
        .get_or_init(|| Driver::load("libcuda.so.1"))
        .as_ref()
        .map_err(String::as_str)
}

/// `None` when the CUDA handler can run here, else why not.
pub fn unavailable_reason() -> Option<String> {
    driver().err().map(str::to_owned)
}

/// Pinned staging memory and the free list of its slots.
pub struct Staging {
    base: *mut u8,
    free: ArrayQueue<u32>,
}

// SAFETY: `base` is process-lifetime host memory; a slot is only touched by
// the one record that took its index from `free` (see the file invariants).
unsafe impl Send for Staging {}
unsafe impl Sync for Staging {}

impl Staging {
    /// # Safety
    /// `base` points to `SLOTS * SLOT_BYTES` writable bytes, 8-aligned, that
    /// live for the rest of the process.
    pub unsafe fn new(base: *mut u8) -> Staging {
        let free = ArrayQueue::new(SLOTS);
        for i in 0..SLOTS as u32 {
            // Cannot fail: the queue has exactly SLOTS places.
            let _ = free.push(i);
        }
        Staging { base, free }
    }

    fn slot(&self, index: u32) -> *mut u8 {
        // In bounds: index < SLOTS by construction of the free list.
        self.base.wrapping_add(index as usize * SLOT_BYTES)
    }
}

static STAGING: OnceLock<Result<Staging, String>> = OnceLock::new();

fn staging(driver: &Driver) -> Result<&'static Staging, Failure> {
    STAGING
        .get_or_init(|| {
            let mut base: *mut c_void = ptr::null_mut();
            // SAFETY: XLA runs the handler with its CUDA context current;
            // PORTABLE makes the memory pinned for every context.
            let rc = unsafe {
                (driver.mem_host_alloc)(&mut base, SLOTS * SLOT_BYTES, CU_MEMHOSTALLOC_PORTABLE)
            };
            if rc != 0 || base.is_null() {
                return Err(driver.describe("cuMemHostAlloc", rc));
            }
            // SAFETY: fresh pinned allocation of the right size, page-aligned,
            // never freed.
            Ok(unsafe { Staging::new(base.cast()) })
        })
        .as_ref()
        .map_err(|e| Failure::unavailable(e.clone()))
}

/// A record between its enqueue and its host function.
pub struct Pending {
    pub slot: u32,
    pub dtype: Dtype,
    pub len: usize,
    pub target: Target,
}

/// The body of the host function: read the landed values, push, free the
/// slot. Returns whether the push succeeded.
pub fn complete<D: Deliver>(staging: &Staging, pending: &Pending, sink: &mut D) -> bool {
    let call = Call {
        packed: Packed {
            dtype: pending.dtype,
            data: staging.slot(pending.slot).cast_const().cast(),
            rows: 1,
            len: pending.len,
        },
        target: pending.target,
    };
    // SAFETY: the copy into this slot completed before CUDA ran us (stream
    // order), and the slot holds `len` values of `dtype`, 8-aligned.
    let ok = unsafe { dispatch(&call, sink) }.is_ok();
    // Cannot fail: the slot came out of this queue, so there is room.
    let _ = staging.free.push(pending.slot);
    ok
}

unsafe extern "C" fn host_push(user: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `user` is the Box we leaked when enqueueing this function,
        // and CUDA calls each host function exactly once.
        let pending = unsafe { Box::from_raw(user.cast::<Pending>()) };
        if let Some(Ok(staging)) = STAGING.get() {
            if !complete(staging, &pending, &mut Ring) {
                stats::host_failed();
            }
        }
    }));
}

/// Asks XLA for the handler's CUDA stream.
unsafe fn stream_of(frame: &CallFrame) -> Result<CuStream, Failure> {
    // SAFETY: XLA's table from the frame.
    let api = unsafe { frame.api.as_ref() }
        .ok_or_else(|| Failure::invalid("call frame has no API table"))?;
    let get = match api.stream_get {
        Some(get) if api.struct_size >= abi::API_SIZE_THROUGH_STREAM_GET => get,
        _ => {
            return Err(Failure::precondition(
                "XLA's API table has no XLA_FFI_Stream_Get",
            ))
        }
    };
    let mut args = StreamGetArgs {
        struct_size: abi::STREAM_GET_ARGS_SIZE,
        extension_start: ptr::null_mut(),
        ctx: frame.ctx,
        stream: ptr::null_mut(),
    };
    // SAFETY: XLA's function with a correctly sized argument struct.
    let err = unsafe { get(&mut args) };
    if !err.is_null() {
        // SAFETY: XLA returned this error to us; we own it.
        let message = unsafe { error::take_message(frame.api, err) };
        return Err(Failure::precondition(format!(
            "XLA_FFI_Stream_Get failed: {message}"
        )));
    }
    if args.stream.is_null() {
        return Err(Failure::precondition(
            "XLA_FFI_Stream_Get gave a null stream",
        ));
    }
    Ok(args.stream)
}

fn enqueue(frame: &CallFrame, call: Call) -> Result<(), Failure> {
    if let Target::Routed { rows: true, .. } = call.target {
        return Err(Failure {
            code: abi::ERROR_UNIMPLEMENTED,
            message: "vmap rows (rows = 1) are not supported by the CUDA handler; \
                      send them through the callback path"
                .into(),
        });
    }
    let driver =
        driver().map_err(|e| Failure::unavailable(format!("CUDA driver unavailable: {e}")))?;
    // SAFETY: `frame` is XLA's, checked by `guarded`.
    let stream = unsafe { stream_of(frame)? };
    let staging = staging(driver)?;
    let Some(slot) = staging.free.pop() else {
        stats::no_slot();
        return Ok(());
    };
    if call.packed.len > 0 {
        // SAFETY: the slot is ours and large enough; `data` is the device
        // buffer XLA gave us, valid in stream order.
        let rc = unsafe {
            (driver.memcpy_dtoh_async)(
                staging.slot(slot).cast(),
                call.packed.data as CuDevicePtr,
                call.packed.bytes(),
                stream,
            )
        };
        if rc != 0 {
            let _ = staging.free.push(slot);
            return Err(Failure::internal(driver.describe("cuMemcpyDtoHAsync", rc)));
        }
    }
    let pending = Box::into_raw(Box::new(Pending {
        slot,
        dtype: call.packed.dtype,
        len: call.packed.len,
        target: call.target,
    }));
    // SAFETY: `host_push` matches CUhostFn and takes ownership of `pending`.
    let rc = unsafe { (driver.launch_host_func)(stream, host_push, pending.cast()) };
    if rc != 0 {
        // SAFETY: not enqueued, so still ours. The slot stays taken: the
        // copy enqueued above may still write into it.
        drop(unsafe { Box::from_raw(pending) });
        stats::host_failed();
        return Err(Failure::internal(driver.describe("cuLaunchHostFunc", rc)));
    }
    Ok(())
}

/// `XLA_FFI_Handler` for platform "CUDA". NOT VERIFIED ON A DEVICE.
///
/// # Safety
/// Called by XLA with a valid call frame.
pub unsafe extern "C" fn cuda_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: XLA's contract for handlers.
    unsafe { guarded(frame, enqueue) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{take_error, Fixture};

    struct Recorder(Option<(u64, u32, Vec<f64>)>, Result<(), Failure>);

    impl Deliver for Recorder {
        fn direct(&mut self, l: u64, t: u32, v: &[f64]) -> Result<(), Failure> {
            self.0 = Some((l, t, v.to_vec()));
            self.1.clone()
        }
        fn routed(&mut self, _: u32, _: &[f64]) {}
    }

    #[test]
    fn rows_are_refused_before_touching_cuda() {
        let attrs = [
            ("rows", abi::DTYPE_S64, 1),
            ("template_key", abi::DTYPE_S64, 0),
        ];
        let mut fx = Fixture::raw(vec![0, 0], abi::DTYPE_F64, 1, &attrs);
        fx.buffer().rank = 2;
        fx.dims()[1] = 2;
        // SAFETY: well-formed fixture frame.
        let err = take_error(unsafe { cuda_handler(fx.frame_ptr()) }).unwrap();
        assert_eq!(err.code, abi::ERROR_UNIMPLEMENTED);
        assert!(err.message.contains("not supported by the CUDA handler"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot dlopen")]
    fn missing_library_is_a_clean_error() {
        let err = Driver::load("libnlsq-no-such-cuda.so.1")
            .err()
            .expect("a missing library must not load");
        assert!(
            err.starts_with("cannot load libnlsq-no-such-cuda.so.1"),
            "{err}"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot dlopen")]
    fn library_without_driver_symbols_is_a_clean_error() {
        // libm is on every Linux system and exports none of the CUDA symbols.
        let err = Driver::load("libm.so.6")
            .err()
            .expect("libm is no CUDA driver");
        assert!(err.contains("lacks cuMemcpyDtoHAsync_v2"), "{err}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri cannot dlopen")]
    fn execute_without_usable_cuda_returns_an_error_not_a_crash() {
        let mut fx = Fixture::f64(&[1.0, 2.0]);
        // SAFETY: well-formed fixture frame; its fake API has no stream_get.
        let err = take_error(unsafe { cuda_handler(fx.frame_ptr()) })
            .expect("no CUDA stream is available in a unit test");
        match unavailable_reason() {
            Some(reason) => {
                assert_eq!(err.code, abi::ERROR_UNAVAILABLE);
                assert!(
                    err.message.contains("CUDA driver unavailable"),
                    "{}",
                    err.message
                );
                assert!(err.message.contains(&reason));
            }
            None => assert!(err.message.contains("no XLA_FFI_Stream_Get")),
        }
    }

    #[test]
    fn host_function_body_pushes_and_frees_the_slot() {
        let mut memory = vec![0u64; SLOTS * SLOT_BYTES / 8];
        // SAFETY: `memory` has the required size and alignment and outlives
        // `staging` within this test.
        let staging = unsafe { Staging::new(memory.as_mut_ptr().cast()) };
        let slot = staging.free.pop().unwrap();
        let values = [2.5f32, -1.0, 1.0e-3];
        // SAFETY: the slot is in bounds and ours.
        unsafe {
            ptr::copy_nonoverlapping(values.as_ptr(), staging.slot(slot).cast(), values.len())
        };
        let pending = Pending {
            slot,
            dtype: Dtype::F32,
            len: 3,
            target: Target::Direct {
                logger_id: 11,
                template_id: 9,
            },
        };
        let mut sink = Recorder(None, Ok(()));
        assert!(complete(&staging, &pending, &mut sink));
        assert_eq!(sink.0, Some((11, 9, vec![2.5, -1.0, f64::from(1.0e-3f32)])));
        assert_eq!(
            staging.free.len(),
            SLOTS,
            "slot must return to the free list"
        );

        let slot = staging.free.pop().unwrap();
        let failing = Pending { slot, ..pending };
        let mut sink = Recorder(None, Err(Failure::invalid("x")));
        assert!(!complete(&staging, &failing, &mut sink));
        assert_eq!(
            staging.free.len(),
            SLOTS,
            "a failed push frees its slot too"
        );
    }
}
