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
    // Keeps the library mapped for as long as the function pointers live
    // (`None` only for the fake driver of the unit tests).
    _lib: Option<Library>,
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
                _lib: Some(lib),
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
    pub staging: &'static Staging,
    pub slot: u32,
    pub dtype: Dtype,
    pub len: usize,
    pub target: Target,
}

/// The body of the host function: read the landed values, push, free the
/// slot. Returns whether the push succeeded.
pub fn complete<D: Deliver>(pending: &Pending, sink: &mut D) -> bool {
    let staging = pending.staging;
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
        if !complete(&pending, &mut Ring) {
            stats::host_failed();
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
    enqueue_on(driver, staging, stream, call)
}

/// Stages `call` on `stream`: copy into a free slot, then the host function.
fn enqueue_on(
    driver: &Driver,
    staging: &'static Staging,
    stream: CuStream,
    call: Call,
) -> Result<(), Failure> {
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
        staging,
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
        let staging = plain_staging();
        let slot = staging.free.pop().unwrap();
        let values = [2.5f32, -1.0, 1.0e-3];
        // SAFETY: the slot is in bounds and ours.
        unsafe {
            ptr::copy_nonoverlapping(values.as_ptr(), staging.slot(slot).cast(), values.len())
        };
        let staging: &'static Staging = Box::leak(Box::new(staging));
        let pending = Pending {
            staging,
            slot,
            dtype: Dtype::F32,
            len: 3,
            target: Target::Direct {
                logger_id: 11,
                template_id: 9,
            },
        };
        let mut sink = Recorder(None, Ok(()));
        assert!(complete(&pending, &mut sink));
        assert_eq!(sink.0, Some((11, 9, vec![2.5, -1.0, f64::from(1.0e-3f32)])));
        assert_eq!(
            staging.free.len(),
            SLOTS,
            "slot must return to the free list"
        );

        let slot = staging.free.pop().unwrap();
        let failing = Pending { slot, ..pending };
        let mut sink = Recorder(None, Err(Failure::invalid("x")));
        assert!(!complete(&failing, &mut sink));
        assert_eq!(
            staging.free.len(),
            SLOTS,
            "a failed push frees its slot too"
        );
    }

    /// Staging on ordinary (not pinned) memory, leaked like the real one.
    fn plain_staging() -> &'static Staging {
        let memory: &'static mut [u64] =
            Box::leak(vec![0u64; SLOTS * SLOT_BYTES / 8].into_boxed_slice());
        // SAFETY: right size, 8-aligned, never freed.
        Box::leak(Box::new(unsafe {
            Staging::new(memory.as_mut_ptr().cast())
        }))
    }

    /// A stand-in for the CUDA driver: "device" pointers are host pointers,
    /// copies happen at enqueue time, host functions wait in a queue until
    /// the test "runs the stream". Failure codes can be injected.
    mod fake_driver {
        use super::*;
        use std::sync::atomic::{AtomicI32, Ordering::SeqCst};
        use std::sync::Mutex;

        pub static MEMCPY_RC: AtomicI32 = AtomicI32::new(0);
        pub static LAUNCH_RC: AtomicI32 = AtomicI32::new(0);
        static STREAM: Mutex<Vec<(HostFn, usize)>> = Mutex::new(Vec::new());

        unsafe extern "C" fn memcpy(dst: *mut c_void, src: u64, n: usize, _: CuStream) -> c_int {
            let rc = MEMCPY_RC.load(SeqCst);
            if rc == 0 {
                // SAFETY: the test passes host memory of `n` bytes as `src`.
                unsafe { ptr::copy_nonoverlapping(src as *const u8, dst.cast::<u8>(), n) };
            }
            rc
        }

        unsafe extern "C" fn launch(_: CuStream, f: HostFn, user: *mut c_void) -> c_int {
            let rc = LAUNCH_RC.load(SeqCst);
            if rc == 0 {
                STREAM.lock().unwrap().push((f, user as usize));
            }
            rc
        }

        unsafe extern "C" fn alloc(_: *mut *mut c_void, _: usize, _: c_uint) -> c_int {
            2 // CUDA_ERROR_OUT_OF_MEMORY: the tests bring their own staging
        }

        unsafe extern "C" fn error_string(_: c_int, out: *mut *const c_char) -> c_int {
            // SAFETY: `out` is the driver wrapper's local.
            unsafe { *out = c"fake error".as_ptr() };
            0
        }

        pub fn driver() -> Driver {
            Driver {
                _lib: None,
                memcpy_dtoh_async: memcpy,
                launch_host_func: launch,
                mem_host_alloc: alloc,
                get_error_string: error_string,
            }
        }

        /// Runs every host function enqueued so far, in stream order.
        pub fn run_stream() -> usize {
            let work = std::mem::take(&mut *STREAM.lock().unwrap());
            for &(f, user) in &work {
                // SAFETY: enqueued by `enqueue_on` with its own Box.
                unsafe { f(user as *mut c_void) };
            }
            work.len()
        }
    }

    // One test for every fake-driver scenario: the injected failure codes
    // are process-wide.
    #[test]
    #[cfg_attr(miri, ignore = "spawns the drain thread; covered natively")]
    fn stream_path_with_a_fake_driver() {
        use ringlog::{Config, Logger, MemorySink};
        use std::sync::atomic::Ordering::SeqCst;

        let sink = MemorySink::new();
        let logger = Logger::new(Box::new(sink.clone()), Config::default());
        let tid = logger.register("{a:.1f} {b:.1f}").unwrap();
        let driver = fake_driver::driver();
        let staging = plain_staging();
        let stream = 0x5eed as CuStream;
        let mut device = [1.0f64, 2.0];
        let call = |device: &[f64; 2]| Call {
            packed: Packed {
                dtype: Dtype::F64,
                data: device.as_ptr().cast(),
                rows: 1,
                len: 2,
            },
            target: Target::Direct {
                logger_id: logger.id(),
                template_id: tid,
            },
        };

        // Enqueued, not yet pushed: the host function waits for the stream;
        // the record holds the values as they were when the copy ran.
        assert!(enqueue_on(&driver, staging, stream, call(&device)).is_ok());
        device[0] = 9.0;
        assert!(logger.flush(None));
        assert_eq!(sink.contents(), "");
        assert_eq!(staging.free.len(), SLOTS - 1, "the slot is in flight");
        assert_eq!(fake_driver::run_stream(), 1);
        assert!(logger.flush(None));
        assert_eq!(sink.contents(), "1.0 2.0\n");
        assert_eq!(
            staging.free.len(),
            SLOTS,
            "the host function frees the slot"
        );

        // A failed copy is reported and its slot returned.
        fake_driver::MEMCPY_RC.store(700, SeqCst);
        let err = enqueue_on(&driver, staging, stream, call(&device)).unwrap_err();
        fake_driver::MEMCPY_RC.store(0, SeqCst);
        assert_eq!(
            err.message,
            "cuMemcpyDtoHAsync failed with CUDA error 700 (fake error)"
        );
        assert_eq!(staging.free.len(), SLOTS);

        // A failed host-function launch is reported; the slot stays taken
        // because the enqueued copy may still write into it.
        let failed = stats::snapshot().host_failed;
        fake_driver::LAUNCH_RC.store(1, SeqCst);
        let err = enqueue_on(&driver, staging, stream, call(&device)).unwrap_err();
        fake_driver::LAUNCH_RC.store(0, SeqCst);
        assert!(err
            .message
            .starts_with("cuLaunchHostFunc failed with CUDA error 1"));
        assert_eq!(staging.free.len(), SLOTS - 1);
        assert!(stats::snapshot().host_failed > failed);
        assert_eq!(fake_driver::run_stream(), 0);

        // Every slot in flight: the record is dropped and counted, never
        // waited for.
        let taken: Vec<u32> = std::iter::from_fn(|| staging.free.pop()).collect();
        let no_slot = stats::snapshot().no_slot;
        assert!(enqueue_on(&driver, staging, stream, call(&device)).is_ok());
        assert!(stats::snapshot().no_slot > no_slot);
        assert_eq!(fake_driver::run_stream(), 0);
        for slot in taken {
            let _ = staging.free.push(slot);
        }

        // Ten records in flight at once land in order.
        for i in 0..10 {
            device = [f64::from(i), 0.5];
            assert!(enqueue_on(&driver, staging, stream, call(&device)).is_ok());
        }
        assert_eq!(fake_driver::run_stream(), 10);
        assert!(logger.flush(None));
        let lines: Vec<String> = sink.contents().lines().skip(1).map(str::to_owned).collect();
        let expected: Vec<String> = (0..10).map(|i| format!("{i}.0 0.5")).collect();
        assert_eq!(lines, expected);
        logger.close();
    }

    unsafe extern "C" fn fake_stream_get(args: *mut StreamGetArgs) -> *mut XlaError {
        // SAFETY: called by `stream_of` with its local args.
        unsafe { (*args).stream = 0xabc as *mut c_void };
        ptr::null_mut()
    }

    #[test]
    fn stream_is_asked_from_xla() {
        let mut fx = Fixture::f64(&[1.0]);
        fx.api().stream_get = Some(fake_stream_get);
        // SAFETY: fixture frame with the fake stream query.
        let stream = unsafe { stream_of(fx.frame()) }.unwrap();
        assert_eq!(stream as usize, 0xabc);

        fx.api().struct_size = abi::API_SIZE_THROUGH_STREAM_GET - 8;
        // SAFETY: as above.
        let err = unsafe { stream_of(fx.frame()) }.unwrap_err();
        assert!(err.message.contains("no XLA_FFI_Stream_Get"));
    }
}
