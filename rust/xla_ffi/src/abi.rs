//! Our own `#[repr(C)]` mirror of the parts of XLA's FFI C API
//! (`xla/ffi/api/c_api.h`, shipped with jaxlib) that the handlers use.
//!
//! Invariants:
//! - Every struct here has the field order, types and therefore the layout of
//!   its C counterpart for the API version in [`API_MAJOR`].[`API_MINOR`]. The
//!   Python test `test_abi_layout_matches_installed_header` compiles the
//!   installed header and compares every size and offset in [`layout`].
//! - C enums are `int` on every platform XLA supports, so they are `i32`
//!   here; we never turn a raw value into a Rust `enum` (an unknown value
//!   would be undefined behaviour), we compare it with the constants below.
//! - `*_SIZE` constants follow `XLA_FFI_STRUCT_SIZE(type, last_field)`: the
//!   offset of the struct's declared last field plus its size. XLA puts that
//!   number in `struct_size`, and a newer XLA may append fields, so the
//!   handlers accept `struct_size >= *_SIZE`.
//! - Function-pointer slots of [`Api`] that we never call are kept as opaque
//!   pointers: only their size matters, for the offsets of the ones we call.
use std::ffi::{c_char, c_int, c_void};
use std::mem::{offset_of, size_of};

/// `XLA_FFI_API_MAJOR` of the header these definitions follow.
pub const API_MAJOR: i32 = 0;
/// `XLA_FFI_API_MINOR` of the header these definitions follow.
pub const API_MINOR: i32 = 3;

// XLA_FFI_Extension_Type
pub const EXTENSION_METADATA: i32 = 1;

// XLA_FFI_Error_Code (the subset we report)
pub const ERROR_INVALID_ARGUMENT: i32 = 3;
pub const ERROR_FAILED_PRECONDITION: i32 = 9;
pub const ERROR_UNIMPLEMENTED: i32 = 12;
pub const ERROR_INTERNAL: i32 = 13;
pub const ERROR_UNAVAILABLE: i32 = 14;

// XLA_FFI_DataType (the subset we accept or name in messages)
pub const DTYPE_S64: i32 = 5;
pub const DTYPE_F32: i32 = 11;
pub const DTYPE_F64: i32 = 12;

// XLA_FFI_ArgType / XLA_FFI_AttrType
pub const ARG_BUFFER: i32 = 1;
pub const ATTR_SCALAR: i32 = 3;

// XLA_FFI_ExecutionStage
pub const STAGE_EXECUTE: i32 = 3;

/// Opaque `XLA_FFI_Error`; XLA owns what it points to.
#[repr(C)]
pub struct XlaError {
    _private: [u8; 0],
}

/// Opaque `XLA_FFI_ExecutionContext`.
#[repr(C)]
pub struct ExecutionContext {
    _private: [u8; 0],
}

#[repr(C)]
pub struct ExtensionBase {
    pub struct_size: usize,
    /// `type` in the header.
    pub kind: i32,
    pub next: *mut ExtensionBase,
}
pub const EXTENSION_BASE_SIZE: usize = offset_of!(ExtensionBase, next) + size_of::<usize>();

#[repr(C)]
#[derive(Clone, Copy)]
pub struct ApiVersion {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub major_version: c_int,
    pub minor_version: c_int,
}
pub const API_VERSION_SIZE: usize = offset_of!(ApiVersion, minor_version) + size_of::<c_int>();

#[repr(C)]
pub struct ErrorCreateArgs {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub message: *const c_char,
    pub errc: i32,
}
pub const ERROR_CREATE_ARGS_SIZE: usize = offset_of!(ErrorCreateArgs, errc) + size_of::<i32>();

#[repr(C)]
pub struct ErrorGetMessageArgs {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub error: *mut XlaError,
    pub message: *const c_char,
}
pub const ERROR_GET_MESSAGE_ARGS_SIZE: usize =
    offset_of!(ErrorGetMessageArgs, message) + size_of::<usize>();

#[repr(C)]
pub struct ErrorDestroyArgs {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub error: *mut XlaError,
}
pub const ERROR_DESTROY_ARGS_SIZE: usize = offset_of!(ErrorDestroyArgs, error) + size_of::<usize>();

#[repr(C)]
pub struct Buffer {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub dtype: i32,
    pub data: *mut c_void,
    pub rank: i64,
    pub dims: *mut i64,
}
pub const BUFFER_SIZE: usize = offset_of!(Buffer, dims) + size_of::<usize>();

#[repr(C)]
pub struct ByteSpan {
    pub ptr: *const c_char,
    pub len: usize,
}

#[repr(C)]
pub struct Scalar {
    pub dtype: i32,
    pub value: *mut c_void,
}

#[repr(C)]
pub struct Args {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub size: i64,
    pub types: *mut i32,
    pub args: *mut *mut c_void,
}
pub const ARGS_SIZE: usize = offset_of!(Args, args) + size_of::<usize>();

#[repr(C)]
pub struct Rets {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub size: i64,
    pub types: *mut i32,
    pub rets: *mut *mut c_void,
}
pub const RETS_SIZE: usize = offset_of!(Rets, rets) + size_of::<usize>();

#[repr(C)]
pub struct Attrs {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub size: i64,
    pub types: *mut i32,
    pub names: *mut *mut ByteSpan,
    pub attrs: *mut *mut c_void,
}
pub const ATTRS_SIZE: usize = offset_of!(Attrs, attrs) + size_of::<usize>();

#[repr(C)]
pub struct CallFrame {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub api: *const Api,
    pub ctx: *mut ExecutionContext,
    pub stage: i32,
    pub args: Args,
    pub rets: Rets,
    pub attrs: Attrs,
    pub future: *mut c_void,
}
/// Per the header, the declared last field of the call frame is `attrs`.
pub const CALL_FRAME_SIZE: usize = offset_of!(CallFrame, attrs) + size_of::<Attrs>();

/// `XLA_FFI_TypeId`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TypeId {
    pub type_id: i64,
}

#[repr(C)]
pub struct Metadata {
    pub struct_size: usize,
    pub api_version: ApiVersion,
    pub traits: u32,
    pub state_type_id: TypeId,
}
/// Per the header, the declared last field of the metadata is `traits`.
pub const METADATA_SIZE: usize = offset_of!(Metadata, traits) + size_of::<u32>();

#[repr(C)]
pub struct MetadataExtension {
    pub extension_base: ExtensionBase,
    pub metadata: *mut Metadata,
}
pub const METADATA_EXTENSION_SIZE: usize =
    offset_of!(MetadataExtension, metadata) + size_of::<usize>();

#[repr(C)]
pub struct StreamGetArgs {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub ctx: *mut ExecutionContext,
    pub stream: *mut c_void,
}
pub const STREAM_GET_ARGS_SIZE: usize = offset_of!(StreamGetArgs, stream) + size_of::<usize>();

pub type ErrorCreateFn = unsafe extern "C" fn(args: *mut ErrorCreateArgs) -> *mut XlaError;
pub type ErrorGetMessageFn = unsafe extern "C" fn(args: *mut ErrorGetMessageArgs);
pub type ErrorDestroyFn = unsafe extern "C" fn(args: *mut ErrorDestroyArgs);
pub type StreamGetFn = unsafe extern "C" fn(args: *mut StreamGetArgs) -> *mut XlaError;
/// `XLA_FFI_Handler`: the signature of every handler XLA calls.
pub type Handler = unsafe extern "C" fn(frame: *mut CallFrame) -> *mut XlaError;

/// `XLA_FFI_Api`: a table of function pointers, in header order.
#[repr(C)]
pub struct Api {
    pub struct_size: usize,
    pub extension_start: *mut ExtensionBase,
    pub api_version: ApiVersion,
    pub internal_api: *const c_void,
    pub error_create: Option<ErrorCreateFn>,
    pub error_get_message: Option<ErrorGetMessageFn>,
    pub error_destroy: Option<ErrorDestroyFn>,
    pub handler_register: *const c_void,
    pub stream_get: Option<StreamGetFn>,
    pub type_register: *const c_void,
    pub execution_context_get: *const c_void,
    pub state_set: *const c_void,
    pub state_get: *const c_void,
    pub device_memory_allocate: *const c_void,
    pub device_memory_free: *const c_void,
    pub thread_pool_schedule: *const c_void,
    pub thread_pool_num_threads: *const c_void,
    pub future_create: *const c_void,
    pub future_set_available: *const c_void,
    pub future_set_error: *const c_void,
    pub run_id_get: *const c_void,
    pub device_ordinal_get: *const c_void,
}
pub const API_SIZE: usize = offset_of!(Api, device_ordinal_get) + size_of::<usize>();

/// The smallest `Api::struct_size` through which `error_create` is present.
pub const API_SIZE_THROUGH_ERROR_CREATE: usize = offset_of!(Api, error_create) + size_of::<usize>();
/// The smallest `Api::struct_size` through which `error_destroy` is present.
pub const API_SIZE_THROUGH_ERROR_DESTROY: usize =
    offset_of!(Api, error_destroy) + size_of::<usize>();
/// The smallest `Api::struct_size` through which `stream_get` is present.
pub const API_SIZE_THROUGH_STREAM_GET: usize = offset_of!(Api, stream_get) + size_of::<usize>();

/// Sizes and field offsets of every mirrored struct, named as in the C header
/// (`"XLA_FFI_Buffer"` is the `XLA_FFI_STRUCT_SIZE`, `"XLA_FFI_Buffer.dims"`
/// an `offsetof`). A test compares this table with the installed header.
pub fn layout() -> Vec<(&'static str, usize)> {
    macro_rules! off {
        ($c:literal, $t:ty, $f:ident) => {
            (concat!($c, ".", stringify!($f)), offset_of!($t, $f))
        };
    }
    vec![
        ("XLA_FFI_Extension_Base", EXTENSION_BASE_SIZE),
        ("XLA_FFI_Api_Version", API_VERSION_SIZE),
        ("XLA_FFI_Error_Create_Args", ERROR_CREATE_ARGS_SIZE),
        ("XLA_FFI_Error_GetMessage_Args", ERROR_GET_MESSAGE_ARGS_SIZE),
        ("XLA_FFI_Error_Destroy_Args", ERROR_DESTROY_ARGS_SIZE),
        ("XLA_FFI_Buffer", BUFFER_SIZE),
        ("XLA_FFI_Args", ARGS_SIZE),
        ("XLA_FFI_Rets", RETS_SIZE),
        ("XLA_FFI_Attrs", ATTRS_SIZE),
        ("XLA_FFI_CallFrame", CALL_FRAME_SIZE),
        ("XLA_FFI_Metadata", METADATA_SIZE),
        ("XLA_FFI_Metadata_Extension", METADATA_EXTENSION_SIZE),
        ("XLA_FFI_Stream_Get_Args", STREAM_GET_ARGS_SIZE),
        ("XLA_FFI_Api", API_SIZE),
        // `type` in C, a keyword in Rust.
        (
            "XLA_FFI_Extension_Base.type",
            offset_of!(ExtensionBase, kind),
        ),
        off!("XLA_FFI_Api_Version", ApiVersion, major_version),
        off!("XLA_FFI_Error_Create_Args", ErrorCreateArgs, message),
        off!("XLA_FFI_Error_Create_Args", ErrorCreateArgs, errc),
        off!("XLA_FFI_Buffer", Buffer, dtype),
        off!("XLA_FFI_Buffer", Buffer, data),
        off!("XLA_FFI_Buffer", Buffer, rank),
        off!("XLA_FFI_Buffer", Buffer, dims),
        off!("XLA_FFI_Scalar", Scalar, value),
        off!("XLA_FFI_ByteSpan", ByteSpan, len),
        off!("XLA_FFI_Args", Args, size),
        off!("XLA_FFI_Args", Args, types),
        off!("XLA_FFI_Args", Args, args),
        off!("XLA_FFI_Attrs", Attrs, size),
        off!("XLA_FFI_Attrs", Attrs, names),
        off!("XLA_FFI_Attrs", Attrs, attrs),
        off!("XLA_FFI_CallFrame", CallFrame, api),
        off!("XLA_FFI_CallFrame", CallFrame, ctx),
        off!("XLA_FFI_CallFrame", CallFrame, stage),
        off!("XLA_FFI_CallFrame", CallFrame, args),
        off!("XLA_FFI_CallFrame", CallFrame, rets),
        off!("XLA_FFI_CallFrame", CallFrame, attrs),
        off!("XLA_FFI_CallFrame", CallFrame, future),
        off!("XLA_FFI_Metadata", Metadata, api_version),
        off!("XLA_FFI_Metadata", Metadata, traits),
        off!("XLA_FFI_Metadata", Metadata, state_type_id),
        off!("XLA_FFI_Metadata_Extension", MetadataExtension, metadata),
        off!("XLA_FFI_Stream_Get_Args", StreamGetArgs, ctx),
        off!("XLA_FFI_Stream_Get_Args", StreamGetArgs, stream),
        (
            "XLA_FFI_Api.XLA_FFI_Error_Create",
            offset_of!(Api, error_create),
        ),
        (
            "XLA_FFI_Api.XLA_FFI_Error_GetMessage",
            offset_of!(Api, error_get_message),
        ),
        (
            "XLA_FFI_Api.XLA_FFI_Error_Destroy",
            offset_of!(Api, error_destroy),
        ),
        (
            "XLA_FFI_Api.XLA_FFI_Stream_Get",
            offset_of!(Api, stream_get),
        ),
        (
            "XLA_FFI_Api.XLA_FFI_DeviceOrdinal_Get",
            offset_of!(Api, device_ordinal_get),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-computed for LP64 (the platforms jaxlib ships for), independent of
    // offset_of!, so a reordered field fails here before it reaches Python.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn sizes_match_lp64_hand_computation() {
        assert_eq!(EXTENSION_BASE_SIZE, 24);
        assert_eq!(API_VERSION_SIZE, 24);
        assert_eq!(ERROR_CREATE_ARGS_SIZE, 28);
        assert_eq!(BUFFER_SIZE, 48);
        assert_eq!(ARGS_SIZE, 40);
        assert_eq!(ATTRS_SIZE, 48);
        // 8 + 8 + 8 + 8 + (4 + 4 pad) + 40 + 40 + 48
        assert_eq!(CALL_FRAME_SIZE, 168);
        assert_eq!(METADATA_SIZE, 36);
        assert_eq!(METADATA_EXTENSION_SIZE, 32);
        assert_eq!(STREAM_GET_ARGS_SIZE, 32);
        // 8 + 8 + 24 + 8 + 18 function pointers
        assert_eq!(API_SIZE, 48 + 18 * 8);
    }

    #[test]
    fn layout_names_are_unique() {
        let table = layout();
        let mut names: Vec<_> = table.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), table.len());
    }
}
