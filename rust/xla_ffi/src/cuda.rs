//! The XLA:CUDA handler: it enqueues only asynchronous device work and
//! never waits on the host or on the stream for the log.
//!
//! Per record (per row of a `vmap` batch) it claims a slot of the pinned,
//! host-mapped staging ring ([`crate::staging`]) and enqueues on the
//! handler's stream, in order:
//! 1. `cuMemcpyDtoHAsync` of the packed values into the slot;
//! 2. `cuStreamWriteValue64` of the slot's sequence number into the slot's
//!    `published` word (device address of the mapped memory).
//!
//! The poller thread ([`crate::poller`]) sees the published word, pushes the
//! record into the ring logger and frees the slot. No host function
//! (`cuLaunchHostFunc`), no host wait on the stream.
//!
//! NOT YET MEASURED ON A GPU: built and tested here against a fake driver
//! (copies and stream writes queued on a fake stream that a test thread
//! runs); real async-copy/mapped-memory semantics, context handling and the
//! XLA:GPU integration are unverified.
//!
//! Invariants:
//! - The CUDA driver API is loaded at run time with `dlopen("libcuda.so.1")`,
//!   so a CPU-only build, its tests and CI need no CUDA. The stream write is
//!   `cuStreamWriteValue64_v2` (always supported where it exists), else the
//!   v1 entry point when the device reports
//!   `CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1`; without either,
//!   [`unavailable_reason`] says why and Python keeps the callback route.
//! - Nothing here fails a fit: a missing driver, a failed pinned allocation
//!   (retried at most once per [`RETRY_AFTER`], never cached), a failed copy
//!   or stream write, a full staging ring: each record is counted in
//!   [`crate::stats`] and the call returns success. Only a malformed call
//!   (wrong dtype, attributes: a programming error) is an error.
//! - A full staging ring follows the logger's policy: `block` waits on the
//!   host, here in the handler, before anything is enqueued (bounded by
//!   [`crate::poller::BLOCK_PATIENCE`]); any other policy drops and counts.
//!   The stream itself never waits.
//! - A slot whose copy was enqueued but whose stream write failed is skipped
//!   by the poller (committed as not staged). Known hazard, not handled: if
//!   that copy lands only after the ring wrapped around (4096 records later)
//!   and the slot's new copy, the new record shows the old values.
//! - Records are delivered in ticket order. A record whose stream never runs
//!   (the program failed after this handler enqueued) holds back every later
//!   record: they are not lost while the ring has room, then counted as
//!   `staging_full` / `staging_block_timeout`; `flush` gives up after its
//!   timeout. Not handled: skipping such a slot would let its late copy land
//!   in a reused slot.
//! - The handler declares no command-buffer trait, so XLA does not capture
//!   it into a CUDA graph (a captured copy would replay into a stale slot).
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use libloading::Library;
use ringlog::Policy;

use crate::abi::{self, CallFrame, StreamGetArgs, XlaError};
use crate::cpu::Ring as LoggerSink;
use crate::error::{self, Failure};
use crate::frame::{Call, Target};
use crate::handler::guarded;
use crate::poller::Poller;
use crate::staging::{Meta, Ring, REGION_BYTES, SLOTS};
use crate::{route, stats};

type CuResult = c_int;
type CuStream = *mut c_void;
type CuDevicePtr = u64;
type CuDevice = c_int;
type WriteValue64 = unsafe extern "C" fn(CuStream, CuDevicePtr, u64, c_uint) -> CuResult;

const CU_MEMHOSTALLOC_PORTABLE: c_uint = 0x01;
const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 0x02;
const CU_STREAM_WRITE_VALUE_DEFAULT: c_uint = 0;
const CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1: c_int = 93;
/// How long after a failed staging setup (allocation) the next record tries
/// again; the records in between are counted as `cuda_unavailable`.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The driver entry points we use, resolved once.
pub struct Driver {
    // Keeps the library mapped for as long as the function pointers live
    // (`None` only for the fake driver of the unit tests).
    _lib: Option<Library>,
    memcpy_dtoh_async: unsafe extern "C" fn(*mut c_void, CuDevicePtr, usize, CuStream) -> CuResult,
    mem_host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult,
    mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    host_get_device_pointer:
        unsafe extern "C" fn(*mut CuDevicePtr, *mut c_void, c_uint) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    /// `cuStreamWriteValue64_v2`, else the v1 entry point, else `None`.
    write_value64: Option<WriteValue64>,
    /// True when `write_value64` is the v1 entry point, which needs the
    /// device attribute checked.
    write_value_v1: bool,
    ctx_get_device: Option<unsafe extern "C" fn(*mut CuDevice) -> CuResult>,
    device_get_attribute: Option<unsafe extern "C" fn(*mut c_int, c_int, CuDevice) -> CuResult>,
}

impl Driver {
    /// Opens the driver library at `path` and resolves the entry points.
    pub fn load(path: &str) -> Result<Driver, String> {
        // Miri cannot load shared libraries: under it the driver is missing,
        // so the handler's "no driver" path runs instead (the fake driver of
        // the tests covers the staging path).
        if cfg!(miri) {
            return Err(format!("cannot load {path}: not under Miri"));
        }
        // SAFETY: loading the CUDA driver runs its initialisers, which have
        // no preconditions on us.
        let lib = unsafe { Library::new(path) }.map_err(|e| format!("cannot load {path}: {e}"))?;
        // SAFETY: each symbol is declared with its documented C signature
        // (cuda.h, driver API >= 11.7 for the _v2 stream write, >= 10.0 for
        // the rest) and kept alive by `_lib`.
        unsafe {
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get($name).map_err(|e| {
                        format!("{path} lacks {}: {e}", String::from_utf8_lossy($name))
                    })?
                };
            }
            macro_rules! optional {
                ($name:literal) => {
                    lib.get($name).ok().map(|s| *s)
                };
            }
            let v2: Option<WriteValue64> = optional!(b"cuStreamWriteValue64_v2");
            let v1: Option<WriteValue64> = optional!(b"cuStreamWriteValue64");
            Ok(Driver {
                memcpy_dtoh_async: sym!(b"cuMemcpyDtoHAsync_v2"),
                mem_host_alloc: sym!(b"cuMemHostAlloc"),
                mem_free_host: sym!(b"cuMemFreeHost"),
                host_get_device_pointer: sym!(b"cuMemHostGetDevicePointer_v2"),
                get_error_string: sym!(b"cuGetErrorString"),
                write_value_v1: v2.is_none() && v1.is_some(),
                write_value64: v2.or(v1),
                ctx_get_device: optional!(b"cuCtxGetDevice"),
                device_get_attribute: optional!(b"cuDeviceGetAttribute"),
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

    /// Why stream memory operations cannot be used, as far as can be told
    /// without a CUDA context (`None`: the _v2 entry point exists, or v1
    /// whose device attribute is checked when the staging ring is set up).
    fn stream_write_missing(&self) -> Option<String> {
        self.write_value64.is_none().then(|| {
            "the CUDA driver has no cuStreamWriteValue64 (stream memory operations); \
             it is older than CUDA 8"
                .into()
        })
    }

    /// The stream write, checked for the current device (v1 only).
    fn stream_write(&self) -> Result<WriteValue64, String> {
        let write = self
            .write_value64
            .ok_or_else(|| self.stream_write_missing().unwrap_or_default())?;
        if !self.write_value_v1 {
            return Ok(write);
        }
        let (Some(get_device), Some(get_attribute)) =
            (self.ctx_get_device, self.device_get_attribute)
        else {
            return Err(
                "the CUDA driver has only v1 stream memory operations and no \
                        cuDeviceGetAttribute to check them"
                    .into(),
            );
        };
        let mut device: CuDevice = 0;
        let mut supported: c_int = 0;
        // SAFETY: plain out-parameter queries; XLA made the context current.
        let rc = unsafe { get_device(&mut device) };
        if rc != 0 {
            return Err(self.describe("cuCtxGetDevice", rc));
        }
        // SAFETY: as above.
        let rc = unsafe {
            get_attribute(
                &mut supported,
                CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1,
                device,
            )
        };
        if rc != 0 {
            return Err(self.describe("cuDeviceGetAttribute", rc));
        }
        if supported == 0 {
            return Err(
                "the device does not support 64-bit stream memory operations \
                        (CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1 is 0)"
                    .into(),
            );
        }
        Ok(write)
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

/// `None` when the CUDA route can run here, else why not (no driver, or a
/// driver without stream memory operations).
pub fn unavailable_reason() -> Option<String> {
    match driver() {
        Err(e) => Some(e.to_owned()),
        Ok(d) => d.stream_write_missing(),
    }
}

/// The staging ring in pinned, host-mapped memory, its device address, and
/// its poller.
pub struct Stager {
    driver: &'static Driver,
    write_value64: WriteValue64,
    device_base: CuDevicePtr,
    poller: Arc<Poller>,
}

impl Stager {
    /// Allocates the pinned region and starts the poller.
    fn create(driver: &'static Driver) -> Result<Stager, String> {
        let write_value64 = driver.stream_write()?;
        let mut base: *mut c_void = ptr::null_mut();
        // SAFETY: XLA runs the handler with its CUDA context current.
        // PORTABLE: pinned for every context; DEVICEMAP: mapped into the
        // device address space, so a stream write can target it.
        let rc = unsafe {
            (driver.mem_host_alloc)(
                &mut base,
                REGION_BYTES,
                CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP,
            )
        };
        if rc != 0 || base.is_null() {
            return Err(driver.describe("cuMemHostAlloc", rc));
        }
        let mut device_base: CuDevicePtr = 0;
        // SAFETY: `base` is a DEVICEMAP allocation of ours; flags must be 0.
        let rc = unsafe { (driver.host_get_device_pointer)(&mut device_base, base, 0) };
        if rc != 0 {
            // SAFETY: ours, not yet shared with anything.
            unsafe { (driver.mem_free_host)(base) };
            return Err(driver.describe("cuMemHostGetDevicePointer", rc));
        }
        // SAFETY: a fresh pinned allocation of REGION_BYTES, page-aligned,
        // never freed, used only by this ring and the GPU work it stages.
        let ring: &'static Ring = Box::leak(Box::new(unsafe { Ring::new(base.cast()) }));
        Ok(Stager {
            driver,
            write_value64,
            device_base,
            poller: Poller::start(ring, || LoggerSink),
        })
    }

    pub fn poller(&self) -> &Poller {
        &self.poller
    }

    /// Stages every row of `call` on `stream`; counts what it cannot stage.
    pub fn stage(&self, stream: CuStream, call: &Call) {
        let rows = call.packed.rows as u64;
        if rows == 0 {
            return;
        }
        if rows > (SLOTS / 2) as u64 {
            // A batch this wide would hold the whole ring; it cannot wait.
            stats::staging_full(rows);
            return;
        }
        let block = policy_of(&call.target) == Some(Policy::Block);
        let Some(first) = self.poller.claim(rows, block) else {
            if block {
                stats::staging_block_timeout(rows);
            } else {
                stats::staging_full(rows);
            }
            return;
        };
        let ring = self.poller.ring();
        let row_bytes = call.packed.len * call.packed.dtype.size();
        for row in 0..rows {
            let ticket = first + row;
            let staged =
                self.enqueue_row(stream, call, row as usize * row_bytes, row_bytes, ticket);
            let meta = Meta {
                target: call.target,
                dtype: call.packed.dtype,
                len: call.packed.len,
                staged,
            };
            // SAFETY: `ticket` was claimed above and is committed once.
            unsafe { ring.commit(ticket, meta) };
        }
        self.poller.notify();
    }

    /// Enqueues the copy of one row and the publication of its slot.
    fn enqueue_row(
        &self,
        stream: CuStream,
        call: &Call,
        offset: usize,
        bytes: usize,
        ticket: u64,
    ) -> bool {
        let ring = self.poller.ring();
        if bytes > 0 {
            // SAFETY: the slot is ours (claimed) and holds SLOT_VALUES * 8 >=
            // `bytes` bytes; `data + offset` lies in the device buffer XLA
            // gave us, valid in stream order.
            let rc = unsafe {
                (self.driver.memcpy_dtoh_async)(
                    ring.data_ptr(ticket).cast(),
                    call.packed.data as CuDevicePtr + offset as CuDevicePtr,
                    bytes,
                    stream,
                )
            };
            if rc != 0 {
                stats::enqueue_failed(1, &self.driver.describe("cuMemcpyDtoHAsync", rc));
                return false;
            }
        }
        let published = self.device_base + Ring::published_offset(ticket) as CuDevicePtr;
        // SAFETY: `published` is the device address of this slot's aligned
        // 64-bit word in our mapped allocation; the write runs after the copy
        // (stream order) and DEFAULT makes the copy visible before it.
        let rc = unsafe {
            (self.write_value64)(stream, published, ticket + 1, CU_STREAM_WRITE_VALUE_DEFAULT)
        };
        if rc != 0 {
            stats::enqueue_failed(1, &self.driver.describe("cuStreamWriteValue64", rc));
            return false;
        }
        true
    }
}

/// The logger policy that applies to a record for `target`.
fn policy_of(target: &Target) -> Option<Policy> {
    match *target {
        Target::Direct { logger_id, .. } => ringlog::lookup(logger_id).map(|l| l.policy()),
        Target::Routed { .. } => route::policy(),
    }
}

/// The staging setup, made on first use and retried after a failure.
pub struct StagerCell {
    state: Mutex<Option<Result<&'static Stager, (Instant, String)>>>,
    ready: OnceLock<&'static Stager>,
    retry_after: Duration,
}

impl StagerCell {
    pub const fn new(retry_after: Duration) -> StagerCell {
        StagerCell {
            state: Mutex::new(None),
            ready: OnceLock::new(),
            retry_after,
        }
    }

    /// The stager, setting it up now when no attempt failed within
    /// `retry_after`; a failure is counted and its reason kept.
    pub fn get(&self, driver: &'static Driver) -> Result<&'static Stager, String> {
        if let Some(s) = self.ready.get() {
            return Ok(s);
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &*state {
            Some(Ok(s)) => return Ok(s),
            Some(Err((when, why))) if when.elapsed() < self.retry_after => return Err(why.clone()),
            _ => {}
        }
        match Stager::create(driver) {
            Ok(s) => {
                let s: &'static Stager = Box::leak(Box::new(s));
                *state = Some(Ok(s));
                let _ = self.ready.set(s);
                Ok(s)
            }
            Err(why) => {
                stats::staging_setup_failed(&why);
                *state = Some(Err((Instant::now(), why.clone())));
                Err(why)
            }
        }
    }

    /// The stager if it is set up.
    pub fn current(&self) -> Option<&'static Stager> {
        self.ready.get().copied()
    }
}

static STAGER: StagerCell = StagerCell::new(RETRY_AFTER);

/// Waits until every record staged before the call reached the ring logger
/// (the caller has waited for the computations that stage them). `true`
/// at once when nothing was ever staged; `false` on timeout.
pub fn wait_delivered(timeout: Duration) -> bool {
    STAGER
        .current()
        .is_none_or(|s| s.poller.wait_delivered(timeout))
}

/// Asks XLA for the handler's CUDA stream.
///
/// # Safety
/// `frame` is the call frame XLA passed to the handler (checked by
/// [`guarded`]), so its `api` and `ctx` are valid for the call.
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

/// The handler body: stage the call, or count why it could not be.
fn enqueue(frame: &CallFrame, call: Call) -> Result<(), Failure> {
    let records = call.packed.rows as u64;
    let driver = match driver() {
        Ok(d) => d,
        Err(why) => {
            stats::cuda_unavailable(records, why);
            return Ok(());
        }
    };
    // SAFETY: `frame` is XLA's, checked by `guarded`.
    let stream = match unsafe { stream_of(frame) } {
        Ok(s) => s,
        Err(f) => {
            stats::enqueue_failed(records, &f.message);
            return Ok(());
        }
    };
    match STAGER.get(driver) {
        Ok(stager) => stager.stage(stream, &call),
        Err(why) => stats::cuda_unavailable(records, &why),
    }
    Ok(())
}

/// `XLA_FFI_Handler` for platform "CUDA". NOT YET MEASURED ON A GPU.
///
/// # Safety
/// Called by XLA with a valid call frame (or null, which is counted).
pub unsafe extern "C" fn cuda_handler(frame: *mut CallFrame) -> *mut XlaError {
    // SAFETY: XLA's contract for handlers.
    unsafe { guarded(frame, enqueue) }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::frame::{Dtype, Packed};
    use crate::testing::{keep, take_error, Fixture, ROUTE_TABLE};
    use ringlog::{Config, Logger, MemorySink};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::MutexGuard;

    /// A stand-in for the CUDA driver: "device" pointers are host pointers;
    /// copies and stream writes are queued on one fake stream and run, in
    /// order, when a test runs the stream (on its own thread, as a GPU
    /// would). Failure codes can be injected.
    mod fake_driver {
        use super::*;
        use std::collections::VecDeque;
        use std::sync::atomic::AtomicI32;

        pub static MEMCPY_RC: AtomicI32 = AtomicI32::new(0);
        pub static WRITE_RC: AtomicI32 = AtomicI32::new(0);
        pub static ALLOC_RC: AtomicI32 = AtomicI32::new(0);
        pub static ALLOCS: AtomicU64 = AtomicU64::new(0);
        pub static V1_SUPPORTED: AtomicI32 = AtomicI32::new(1);
        /// Serialises the tests that use the fake stream and failure codes.
        pub static SERIAL: Mutex<()> = Mutex::new(());

        /// Addresses are integers, as CUDA's device pointers are: the host
        /// pointers behind them were exposed (`as` casts, here and in
        /// `Stager`), and `run_stream` turns them back with
        /// `with_exposed_provenance` (so Miri runs with
        /// `-Zmiri-permissive-provenance`, see the Makefile).
        enum Op {
            Copy { dst: usize, src: u64, n: usize },
            Write { addr: u64, value: u64 },
        }
        static STREAM: Mutex<VecDeque<Op>> = Mutex::new(VecDeque::new());

        /// Fake `cuMemcpyDtoHAsync`: queues the copy.
        ///
        /// # Safety
        /// At stream run time, `src` is host memory of `n` bytes and `dst` holds `n` bytes.
        unsafe extern "C" fn memcpy(dst: *mut c_void, src: u64, n: usize, _: CuStream) -> c_int {
            let rc = MEMCPY_RC.load(SeqCst);
            if rc == 0 {
                let op = Op::Copy {
                    dst: dst as usize,
                    src,
                    n,
                };
                STREAM.lock().unwrap().push_back(op);
            }
            rc
        }

        /// Fake `cuStreamWriteValue64`: queues the write.
        ///
        /// # Safety
        /// `addr` is an 8-aligned word that is only accessed atomically.
        unsafe extern "C" fn write(_: CuStream, addr: u64, value: u64, flags: c_uint) -> c_int {
            assert_eq!(flags, CU_STREAM_WRITE_VALUE_DEFAULT);
            let rc = WRITE_RC.load(SeqCst);
            if rc == 0 {
                STREAM.lock().unwrap().push_back(Op::Write { addr, value });
            }
            rc
        }

        /// Fake `cuMemHostAlloc`: leaked zeroed heap memory.
        ///
        /// # Safety
        /// `out` is writable.
        unsafe extern "C" fn alloc(out: *mut *mut c_void, n: usize, flags: c_uint) -> c_int {
            assert_eq!(flags, CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP);
            ALLOCS.fetch_add(1, SeqCst);
            let rc = ALLOC_RC.load(SeqCst);
            if rc == 0 {
                let memory: &'static mut [u64] = Box::leak(vec![0u64; n / 8].into_boxed_slice());
                // SAFETY: `out` is the caller's local.
                unsafe { *out = memory.as_mut_ptr().cast() };
            }
            rc
        }

        /// Fake `cuMemFreeHost`: keeps the memory (it is leaked anyway).
        ///
        /// # Safety
        /// None; it touches nothing.
        unsafe extern "C" fn free_host(_: *mut c_void) -> c_int {
            0
        }

        /// Fake `cuMemHostGetDevicePointer`: the host address.
        ///
        /// # Safety
        /// `out` is writable.
        unsafe extern "C" fn device_pointer(out: *mut u64, host: *mut c_void, _: c_uint) -> c_int {
            // SAFETY: `out` is the caller's local. Unified addressing: the
            // device address of mapped host memory is its host address.
            unsafe { *out = host as u64 };
            0
        }

        /// Fake `cuGetErrorString`.
        ///
        /// # Safety
        /// `out` is writable.
        unsafe extern "C" fn error_string(_: c_int, out: *mut *const c_char) -> c_int {
            // SAFETY: `out` is the driver wrapper's local.
            unsafe { *out = c"fake error".as_ptr() };
            0
        }

        /// Fake `cuCtxGetDevice`: device 0.
        ///
        /// # Safety
        /// `out` is writable.
        unsafe extern "C" fn ctx_device(out: *mut CuDevice) -> c_int {
            // SAFETY: the caller's local.
            unsafe { *out = 0 };
            0
        }

        /// Fake `cuDeviceGetAttribute` for the v1 stream-memory-operations attribute.
        ///
        /// # Safety
        /// `out` is writable.
        unsafe extern "C" fn attribute(out: *mut c_int, attr: c_int, _: CuDevice) -> c_int {
            assert_eq!(attr, CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1);
            // SAFETY: the caller's local.
            unsafe { *out = V1_SUPPORTED.load(SeqCst) };
            0
        }

        /// A fake driver with the _v2 stream write (`v1`: only v1).
        pub fn driver(v1: bool) -> &'static Driver {
            keep(Driver {
                _lib: None,
                memcpy_dtoh_async: memcpy,
                mem_host_alloc: alloc,
                mem_free_host: free_host,
                host_get_device_pointer: device_pointer,
                get_error_string: error_string,
                write_value64: Some(write),
                write_value_v1: v1,
                ctx_get_device: Some(ctx_device),
                device_get_attribute: Some(attribute),
            })
        }

        /// Runs every operation enqueued so far, in stream order.
        pub fn run_stream() -> usize {
            let work = std::mem::take(&mut *STREAM.lock().unwrap());
            for op in &work {
                match *op {
                    // SAFETY: `src` is host memory of `n` bytes owned by the
                    // test; `dst` a claimed slot.
                    Op::Copy { dst, src, n } => unsafe {
                        ptr::copy_nonoverlapping(
                            ptr::with_exposed_provenance::<u8>(src as usize),
                            ptr::with_exposed_provenance_mut::<u8>(dst),
                            n,
                        )
                    },
                    // SAFETY: a slot's aligned published word; the poller
                    // reads it atomically.
                    Op::Write { addr, value } => unsafe {
                        std::sync::atomic::AtomicU64::from_ptr(ptr::with_exposed_provenance_mut(
                            addr as usize,
                        ))
                        .store(value, std::sync::atomic::Ordering::Release)
                    },
                }
            }
            work.len()
        }

        /// Forgets every queued operation without running it.
        pub fn discard_stream() {
            STREAM
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }

        pub fn pending() -> usize {
            STREAM.lock().unwrap().len()
        }
    }

    /// Runs the fake stream continuously on another thread (the GPU).
    struct Gpu {
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Gpu {
        fn start() -> Gpu {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                while !flag.load(SeqCst) {
                    if fake_driver::run_stream() == 0 {
                        // Longer under Miri, where each interpreted step
                        // already costs microseconds of its virtual clock.
                        let idle = if cfg!(miri) { 1000 } else { 50 };
                        std::thread::sleep(Duration::from_micros(idle));
                    }
                }
                fake_driver::run_stream();
            });
            Gpu {
                stop,
                thread: Some(thread),
            }
        }
    }

    impl Drop for Gpu {
        fn drop(&mut self) {
            self.stop.store(true, SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    struct Env {
        _serial: MutexGuard<'static, ()>,
        _route: MutexGuard<'static, ()>,
        stager: &'static Stager,
    }

    /// Stops the test's poller thread (in production it lives as long as
    /// the process; Miri requires every thread to end before the test).
    impl Drop for Env {
        fn drop(&mut self) {
            let stopped = self.stager.poller().stop(Duration::from_secs(10));
            if !std::thread::panicking() {
                assert!(stopped, "the poller still had records in flight");
            }
        }
    }

    fn env(driver: &'static Driver) -> Env {
        let serial = fake_driver::SERIAL
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let route = ROUTE_TABLE.lock().unwrap_or_else(PoisonError::into_inner);
        // Work a failed test left queued is dropped, not run: its source
        // buffers are gone (running it was a use-after-free, found by Miri).
        fake_driver::discard_stream();
        let stager = keep(Stager::create(driver).unwrap());
        Env {
            _serial: serial,
            _route: route,
            stager,
        }
    }

    const STREAM: CuStream = ptr::without_provenance_mut(0x5eed);

    fn direct(device: &[f64], logger: &Logger, tid: u32) -> Call {
        Call {
            packed: Packed {
                dtype: Dtype::F64,
                data: device.as_ptr().cast(),
                rows: 1,
                len: device.len(),
            },
            target: Target::Direct {
                logger_id: logger.id(),
                template_id: tid,
            },
        }
    }

    /// Keep-flagged rows `[keep, values...]` (f32) for template key `key`.
    fn rows(device: &[f32], width: usize, key: u32) -> Call {
        Call {
            packed: Packed {
                dtype: Dtype::F32,
                data: device.as_ptr().cast(),
                rows: device.len() / width,
                len: width,
            },
            target: Target::Routed { key, rows: true },
        }
    }

    fn logger(policy: Policy) -> (Logger, MemorySink) {
        let sink = MemorySink::new();
        let config = Config {
            policy,
            ..Config::default()
        };
        (Logger::new(Box::new(sink.clone()), config), sink)
    }

    fn settle(stager: &Stager, logger: &Logger) {
        assert!(stager.poller().wait_delivered(Duration::from_secs(10)));
        assert!(logger.flush(Some(Duration::from_secs(10))));
    }

    #[test]
    fn records_go_enqueue_publish_poll_push_format() {
        let env = env(fake_driver::driver(false));
        let (logger, sink) = logger(Policy::DropNew);
        let tid = logger.register("{a:.1f} {b:.1f}").unwrap();
        let key_tid = logger.register("it {i:d} cost {c:.2f}").unwrap();
        assert!(route::set(logger.id(), &[i64::from(key_tid)]).is_ok());

        // Enqueued, not yet run: nothing reaches the logger.
        let device = [1.0f64, 2.0];
        env.stager.stage(STREAM, &direct(&device, &logger, tid));
        assert_eq!(fake_driver::pending(), 2, "one copy and one stream write");
        assert!(logger.flush(None));
        assert_eq!(sink.contents(), "");
        assert_eq!(fake_driver::run_stream(), 2);
        // Keep-flagged rows: the keep flag travels with each record; the
        // poller drops flag-0 rows without counting a loss.
        let batch = [1.0f32, 0.0, 0.5, 0.0, 1.0, 0.25, 1.0, 2.0, 0.125];
        let before = stats::snapshot();
        env.stager.stage(STREAM, &rows(&batch, 3, 0));
        let gpu = Gpu::start();
        settle(env.stager, &logger);
        drop(gpu);
        assert_eq!(sink.contents(), "1.0 2.0\nit 0 cost 0.50\nit 2 cost 0.12\n");
        let after = stats::snapshot();
        assert_eq!(after.cuda_lost(), before.cuda_lost());
        assert_eq!(logger.stats().dropped, 0);
        route::clear();
        logger.close();
    }

    #[test]
    fn many_laps_of_the_ring_arrive_in_order_with_no_drop() {
        let env = env(fake_driver::driver(false));
        let (logger, sink) = logger(Policy::Block);
        let tid = logger.register("{i:d}").unwrap();
        let gpu = Gpu::start();
        let n = 3 * SLOTS + 7;
        // The device buffers must outlive their (asynchronous) copies.
        let values: Vec<[f64; 1]> = (0..n).map(|i| [i as f64]).collect();
        let before = stats::snapshot();
        for v in &values {
            env.stager.stage(STREAM, &direct(v, &logger, tid));
        }
        settle(env.stager, &logger);
        drop(gpu);
        let expected: String = (0..n).map(|i| format!("{i}\n")).collect();
        assert_eq!(sink.contents(), expected);
        assert_eq!(stats::snapshot().cuda_lost(), before.cuda_lost());
        logger.close();
    }

    #[test]
    fn full_ring_drops_and_counts_under_drop_new() {
        let env = env(fake_driver::driver(false));
        let (logger, sink) = logger(Policy::DropNew);
        let tid = logger.register("{i:d}").unwrap();
        let values: Vec<[f64; 1]> = (0..=SLOTS).map(|i| [i as f64]).collect();
        let before = stats::snapshot().staging_full;
        for v in &values {
            env.stager.stage(STREAM, &direct(v, &logger, tid));
        }
        assert_eq!(stats::snapshot().staging_full, before + 1, "the last one");
        fake_driver::run_stream();
        settle(env.stager, &logger);
        assert_eq!(sink.contents().lines().count(), SLOTS);
        logger.close();
    }

    #[test]
    fn full_ring_waits_on_the_host_under_block_never_on_the_stream() {
        let env = env(fake_driver::driver(false));
        let (logger, sink) = logger(Policy::Block);
        let tid = logger.register("{i:d}").unwrap();
        let values: Vec<[f64; 1]> = (0..=SLOTS).map(|i| [i as f64]).collect();
        for v in &values[..SLOTS] {
            env.stager.stage(STREAM, &direct(v, &logger, tid));
        }
        let done = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                env.stager
                    .stage(STREAM, &direct(&values[SLOTS], &logger, tid));
                done.store(true, SeqCst);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!done.load(SeqCst), "the producer waits for a free slot");
            // Nothing of the waiting record was enqueued on the stream.
            assert_eq!(fake_driver::pending(), 2 * SLOTS);
            fake_driver::run_stream(); // the GPU catches up, the poller frees slots
        });
        assert!(done.load(SeqCst));
        fake_driver::run_stream();
        settle(env.stager, &logger);
        assert_eq!(sink.contents().lines().count(), SLOTS + 1);

        // A stream that never runs: the wait gives up, counted, no hang.
        let before = stats::snapshot().staging_block_timeout;
        for v in &values {
            env.stager.stage(STREAM, &direct(v, &logger, tid));
        }
        assert_eq!(stats::snapshot().staging_block_timeout, before + 1);
        fake_driver::run_stream();
        settle(env.stager, &logger);
        logger.close();
    }

    #[test]
    fn failed_copy_or_stream_write_is_counted_and_skipped() {
        let env = env(fake_driver::driver(false));
        let (logger, sink) = logger(Policy::DropNew);
        let tid = logger.register("{i:d}").unwrap();
        let values: Vec<[f64; 1]> = (0..3).map(|i| [i as f64]).collect();
        let before = stats::snapshot().enqueue_failed;
        env.stager.stage(STREAM, &direct(&values[0], &logger, tid));
        fake_driver::MEMCPY_RC.store(700, SeqCst);
        env.stager.stage(STREAM, &direct(&values[1], &logger, tid));
        fake_driver::MEMCPY_RC.store(0, SeqCst);
        fake_driver::WRITE_RC.store(1, SeqCst);
        env.stager.stage(STREAM, &direct(&values[1], &logger, tid));
        fake_driver::WRITE_RC.store(0, SeqCst);
        env.stager.stage(STREAM, &direct(&values[2], &logger, tid));
        assert_eq!(stats::snapshot().enqueue_failed, before + 2);
        assert!(stats::last_failure().unwrap().contains("fake error"));
        fake_driver::run_stream();
        settle(env.stager, &logger);
        assert_eq!(sink.contents(), "0\n2\n");
        logger.close();
    }

    #[test]
    fn failed_pinned_allocation_is_retried_not_cached() {
        let _serial = fake_driver::SERIAL
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let driver = fake_driver::driver(false);
        let cell = StagerCell::new(Duration::from_secs(3600));
        fake_driver::ALLOC_RC.store(2, SeqCst);
        let allocs = fake_driver::ALLOCS.load(SeqCst);
        let failed = stats::snapshot().staging_setup_failed;
        let err = cell.get(driver).err().unwrap();
        assert!(
            err.starts_with("cuMemHostAlloc failed with CUDA error 2"),
            "{err}"
        );
        assert!(cell.get(driver).is_err(), "within the retry interval");
        assert_eq!(
            fake_driver::ALLOCS.load(SeqCst),
            allocs + 1,
            "not retried yet"
        );
        assert_eq!(stats::snapshot().staging_setup_failed, failed + 1);

        let cell = keep(StagerCell::new(Duration::ZERO));
        assert!(cell.get(driver).is_err());
        fake_driver::ALLOC_RC.store(0, SeqCst);
        assert!(cell.get(driver).is_ok(), "a later call tries again");
        let stager = cell.current().expect("set up");
        assert!(stager.poller().stop(Duration::from_secs(10)));
    }

    #[test]
    fn stream_memory_operations_are_checked() {
        let _serial = fake_driver::SERIAL
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let v1 = fake_driver::driver(true);
        assert!(v1.stream_write_missing().is_none());
        assert!(v1.stream_write().is_ok());
        fake_driver::V1_SUPPORTED.store(0, SeqCst);
        let err = v1.stream_write().err().unwrap();
        fake_driver::V1_SUPPORTED.store(1, SeqCst);
        assert!(
            err.contains("CAN_USE_64_BIT_STREAM_MEM_OPS_V1 is 0"),
            "{err}"
        );

        let none: &'static Driver = keep(Driver {
            write_value64: None,
            _lib: None,
            ..*fake_driver::driver(false)
        });
        assert!(none
            .stream_write_missing()
            .unwrap()
            .contains("no cuStreamWriteValue64"));
        assert!(Stager::create(none).is_err());
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
    fn execute_without_usable_cuda_counts_and_never_fails_the_call() {
        let mut fx = Fixture::f64(&[1.0, 2.0]);
        let before = stats::snapshot();
        // SAFETY: well-formed fixture frame; its fake API has no stream_get.
        let err = take_error(unsafe { cuda_handler(fx.frame_ptr()) });
        assert!(err.is_none(), "{err:?}");
        let after = stats::snapshot();
        match unavailable_reason() {
            Some(_) if driver().is_err() => {
                assert!(after.cuda_unavailable > before.cuda_unavailable)
            }
            _ => assert!(after.enqueue_failed > before.enqueue_failed),
        }
        assert!(stats::last_failure().is_some());

        // A malformed call is still a clear error (a programming error).
        fx.buffer().dtype = abi::DTYPE_S64;
        // SAFETY: as above.
        let err = take_error(unsafe { cuda_handler(fx.frame_ptr()) }).unwrap();
        assert!(err.message.contains("dtype int64"), "{}", err.message);
    }

    /// Fake `XLA_FFI_Stream_Get`: a made-up stream.
    ///
    /// # Safety
    /// `args` points to a writable `StreamGetArgs`.
    unsafe extern "C" fn fake_stream_get(args: *mut StreamGetArgs) -> *mut XlaError {
        // SAFETY: called by `stream_of` with its local args.
        unsafe { (*args).stream = ptr::without_provenance_mut(0xabc) };
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
