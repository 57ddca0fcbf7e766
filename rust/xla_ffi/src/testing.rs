//! Test support: a fake XLA API table whose errors we can read back, and call
//! frames built the way XLA builds them, so every handler path runs in plain
//! `cargo test` without jaxlib.
//!
//! Invariant: a [`Fixture`] owns every buffer its frame points into, each in
//! a heap allocation that never moves after construction; tests mutate
//! fields in place (never push to its vectors) before calling a handler.
use std::ffi::{c_void, CStr};
use std::ptr;

use crate::abi::{self, Api, ByteSpan, CallFrame, ErrorCreateArgs, Scalar, XlaError};

/// What our fake `XLA_FFI_Error_Create` recorded.
#[derive(Debug)]
pub struct FakeError {
    pub code: i32,
    pub message: String,
}

/// Fake `XLA_FFI_Error_Create`: boxes the code and message.
///
/// # Safety
/// `args` points to a valid `ErrorCreateArgs` with a NUL-terminated message.
unsafe extern "C" fn fake_error_create(args: *mut ErrorCreateArgs) -> *mut XlaError {
    // SAFETY: called by `error::to_xla` with a valid args struct.
    let args = unsafe { &*args };
    assert_eq!(args.struct_size, abi::ERROR_CREATE_ARGS_SIZE);
    // SAFETY: `to_xla` passes a NUL-terminated string.
    let message = unsafe { CStr::from_ptr(args.message) }
        .to_string_lossy()
        .into_owned();
    Box::into_raw(Box::new(FakeError {
        code: args.errc,
        message,
    }))
    .cast()
}

/// Takes back an error made by the fake API; `None` for success (null).
pub fn take_error(err: *mut XlaError) -> Option<FakeError> {
    if err.is_null() {
        None
    } else {
        // SAFETY: every non-null error in tests comes from fake_error_create.
        Some(*unsafe { Box::from_raw(err.cast::<FakeError>()) })
    }
}

pub fn fake_api() -> Box<Api> {
    Box::new(Api {
        struct_size: abi::API_SIZE,
        extension_start: ptr::null_mut(),
        api_version: abi::ApiVersion {
            struct_size: abi::API_VERSION_SIZE,
            extension_start: ptr::null_mut(),
            major_version: abi::API_MAJOR,
            minor_version: abi::API_MINOR,
        },
        internal_api: ptr::null(),
        error_create: Some(fake_error_create),
        error_get_message: None,
        error_destroy: None,
        handler_register: ptr::null(),
        stream_get: None,
        type_register: ptr::null(),
        execution_context_get: ptr::null(),
        state_set: ptr::null(),
        state_get: ptr::null(),
        device_memory_allocate: ptr::null(),
        device_memory_free: ptr::null(),
        thread_pool_schedule: ptr::null(),
        thread_pool_num_threads: ptr::null(),
        future_create: ptr::null(),
        future_set_available: ptr::null(),
        future_set_error: ptr::null(),
        run_id_get: ptr::null(),
        device_ordinal_get: ptr::null(),
    })
}

/// One attribute as XLA would pass it: name, scalar dtype, value.
pub type AttrSpec<'a> = (&'a str, i32, i64);

pub const STANDARD_ATTRS: [AttrSpec<'static>; 2] = [
    ("logger_id", abi::DTYPE_S64, 7),
    ("template_id", abi::DTYPE_S64, 3),
];

/// Owns a call frame and everything it points into.
///
/// Stacked-borrows discipline (checked by Miri): each heap object is created
/// once and then reached only through one raw pointer, from which both the
/// frame's pointers and the accessors below derive. Moving the fixture moves
/// no `Box` (a move would re-assert uniqueness and invalidate the frame's
/// pointers), and vectors are never indexed through `&mut [T]` after the
/// frame took pointers into them.
pub struct Fixture {
    api: *mut Api,
    dims: *mut [i64; 2],
    buffer: *mut abi::Buffer,
    frame: *mut CallFrame,
    // Storage the frame points into; only its heap buffers matter.
    _data: Vec<u64>,
    _arg_types: Vec<i32>,
    _arg_ptrs: Vec<*mut c_void>,
    _names: Vec<Vec<u8>>,
    _spans: Vec<ByteSpan>,
    _span_ptrs: Vec<*mut ByteSpan>,
    _values: Vec<i64>,
    _scalars: Vec<Scalar>,
    _attr_types: Vec<i32>,
    _attr_ptrs: Vec<*mut c_void>,
}

impl Fixture {
    pub fn f64(values: &[f64]) -> Fixture {
        let words = values.iter().map(|v| v.to_bits()).collect();
        Fixture::raw(words, abi::DTYPE_F64, values.len(), &STANDARD_ATTRS)
    }

    pub fn f32(values: &[f32]) -> Fixture {
        // Two f32 per u64 word, in memory order.
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_ne_bytes()).collect();
        bytes.resize(bytes.len().div_ceil(8) * 8, 0);
        let words = bytes
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        Fixture::raw(words, abi::DTYPE_F32, values.len(), &STANDARD_ATTRS)
    }

    pub fn raw(mut data: Vec<u64>, dtype: i32, len: usize, attrs: &[AttrSpec<'_>]) -> Fixture {
        data.reserve_exact(1);
        let dims = Box::into_raw(Box::new([len as i64, 1]));
        let buffer = Box::into_raw(Box::new(abi::Buffer {
            struct_size: abi::BUFFER_SIZE,
            extension_start: ptr::null_mut(),
            dtype,
            data: data.as_mut_ptr().cast(),
            rank: 1,
            dims: dims.cast(),
        }));
        let mut arg_types = vec![abi::ARG_BUFFER];
        let mut arg_ptrs = vec![buffer.cast::<c_void>()];

        let names: Vec<Vec<u8>> = attrs.iter().map(|a| a.0.as_bytes().to_vec()).collect();
        let mut spans: Vec<ByteSpan> = names
            .iter()
            .map(|n| ByteSpan {
                ptr: n.as_ptr().cast(),
                len: n.len(),
            })
            .collect();
        let spans_base = spans.as_mut_ptr();
        let mut span_ptrs: Vec<*mut ByteSpan> = (0..spans.len())
            .map(|i| spans_base.wrapping_add(i))
            .collect();
        let mut values: Vec<i64> = attrs.iter().map(|a| a.2).collect();
        let values_base = values.as_mut_ptr();
        let mut scalars: Vec<Scalar> = attrs
            .iter()
            .enumerate()
            .map(|(i, a)| Scalar {
                dtype: a.1,
                value: values_base.wrapping_add(i).cast(),
            })
            .collect();
        let scalars_base = scalars.as_mut_ptr();
        let mut attr_types = vec![abi::ATTR_SCALAR; attrs.len()];
        let mut attr_ptrs: Vec<*mut c_void> = (0..scalars.len())
            .map(|i| scalars_base.wrapping_add(i).cast())
            .collect();

        let api = Box::into_raw(fake_api());
        let frame = Box::into_raw(Box::new(CallFrame {
            struct_size: abi::CALL_FRAME_SIZE,
            extension_start: ptr::null_mut(),
            api,
            ctx: ptr::null_mut(),
            stage: abi::STAGE_EXECUTE,
            args: abi::Args {
                struct_size: abi::ARGS_SIZE,
                extension_start: ptr::null_mut(),
                size: 1,
                types: arg_types.as_mut_ptr(),
                args: arg_ptrs.as_mut_ptr(),
            },
            rets: abi::Rets {
                struct_size: abi::RETS_SIZE,
                extension_start: ptr::null_mut(),
                size: 0,
                types: ptr::null_mut(),
                rets: ptr::null_mut(),
            },
            attrs: abi::Attrs {
                struct_size: abi::ATTRS_SIZE,
                extension_start: ptr::null_mut(),
                size: attrs.len() as i64,
                types: attr_types.as_mut_ptr(),
                names: span_ptrs.as_mut_ptr(),
                attrs: attr_ptrs.as_mut_ptr(),
            },
            future: ptr::null_mut(),
        }));
        Fixture {
            api,
            dims,
            buffer,
            frame,
            _data: data,
            _arg_types: arg_types,
            _arg_ptrs: arg_ptrs,
            _names: names,
            _spans: spans,
            _span_ptrs: span_ptrs,
            _values: values,
            _scalars: scalars,
            _attr_types: attr_types,
            _attr_ptrs: attr_ptrs,
        }
    }

    pub fn frame_ptr(&mut self) -> *mut CallFrame {
        self.frame
    }

    pub fn frame(&mut self) -> &mut CallFrame {
        // SAFETY: owned, live until drop; the borrow ends before the next
        // handler call reads through the raw pointer.
        unsafe { &mut *self.frame }
    }

    pub fn api(&mut self) -> &mut Api {
        // SAFETY: as for `frame`.
        unsafe { &mut *self.api }
    }

    pub fn buffer(&mut self) -> &mut abi::Buffer {
        // SAFETY: as for `frame`.
        unsafe { &mut *self.buffer }
    }

    pub fn dims(&mut self) -> &mut [i64; 2] {
        // SAFETY: as for `frame`.
        unsafe { &mut *self.dims }
    }

    /// Sets the type tag of argument `i` (through the frame's pointer).
    pub fn set_arg_type(&mut self, i: usize, kind: i32) {
        // SAFETY: i is within the argument count the fixture was built with.
        unsafe { *self.frame().args.types.add(i) = kind }
    }

    /// Sets the type tag of attribute `i` (through the frame's pointer).
    pub fn set_attr_type(&mut self, i: usize, kind: i32) {
        // SAFETY: as above, for attributes.
        unsafe { *self.frame().attrs.types.add(i) = kind }
    }

    /// The scalar of attribute `i` (through the frame's pointer).
    pub fn scalar(&mut self, i: usize) -> &mut Scalar {
        // SAFETY: as above; every fixture attribute is a scalar.
        unsafe { &mut *(*self.frame().attrs.attrs.add(i)).cast::<Scalar>() }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: each came from Box::into_raw in `raw` and is freed once.
        unsafe {
            drop(Box::from_raw(self.frame));
            drop(Box::from_raw(self.buffer));
            drop(Box::from_raw(self.dims));
            drop(Box::from_raw(self.api));
        }
    }
}

/// Test objects that live as long as the process (as the production stager
/// and its pinned region do), reachable from a static so that Miri's leak
/// check, which reported them when they were only `Box::leak`ed, knows they
/// are kept on purpose.
static KEPT: std::sync::Mutex<Vec<&'static (dyn Send + Sync)>> = std::sync::Mutex::new(Vec::new());

/// `value`, kept for the rest of the process.
pub fn keep<T: Send + Sync + 'static>(value: T) -> &'static T {
    let kept: &'static T = Box::leak(Box::new(value));
    KEPT.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(kept);
    kept
}

/// Held by every test that installs or reads the process-wide route table,
/// so parallel tests do not see each other's routes.
pub static ROUTE_TABLE: std::sync::Mutex<()> = std::sync::Mutex::new(());
