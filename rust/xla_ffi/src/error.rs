//! Turning a handler failure into an `XLA_FFI_Error` through the API table XLA
//! passed in.
//!
//! Invariants:
//! - Only XLA's own `XLA_FFI_Error_Create` makes errors: XLA owns and frees
//!   them, so we never allocate an `XLA_FFI_Error` ourselves.
//! - The message handed to XLA is a NUL-terminated copy that lives until
//!   `XLA_FFI_Error_Create` returns (XLA copies it into its status).
//! - When the API table cannot make an error (absent or too small), the
//!   failure cannot be reported; we return null (success) rather than abort,
//!   and count it in [`crate::stats`].
use std::ffi::CString;
use std::fmt;
use std::ptr;

use crate::abi::{self, Api, ErrorCreateArgs, XlaError};
use crate::stats;

/// Why a call was refused: an `XLA_FFI_Error_Code` and a message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure {
            code: abi::ERROR_INVALID_ARGUMENT,
            message: message.into(),
        }
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Failure {
            code: abi::ERROR_FAILED_PRECONDITION,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Failure {
            code: abi::ERROR_INTERNAL,
            message: message.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure {
            code: abi::ERROR_UNAVAILABLE,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every message starts with this, so a user who sees it in an
/// `XlaRuntimeError` knows which custom call failed.
const PREFIX: &str = "nlsq ring-logger FFI handler: ";

/// Returns an `XLA_FFI_Error` for `failure` made by `api`, or null when `api`
/// cannot make one.
///
/// # Safety
/// `api` is null or points to an `XLA_FFI_Api` that is valid for reads of
/// its first `struct_size` bytes (what XLA passes in the call frame).
pub unsafe fn to_xla(api: *const Api, failure: &Failure) -> *mut XlaError {
    // SAFETY: the caller's contract; we read `struct_size` before any field
    // that a smaller (older) table might not have.
    let create = unsafe {
        match api.as_ref() {
            Some(api) if api.struct_size >= abi::API_SIZE_THROUGH_ERROR_CREATE => api.error_create,
            _ => None,
        }
    };
    let Some(create) = create else {
        stats::unreportable();
        return ptr::null_mut();
    };
    let text = format!("{PREFIX}{}", failure.message).replace('\0', "\\0");
    // `replace` removed every NUL, so CString::new cannot fail; keep the
    // fallback anyway rather than unwrap inside an FFI path.
    let message = CString::new(text).unwrap_or_default();
    let mut args = ErrorCreateArgs {
        struct_size: abi::ERROR_CREATE_ARGS_SIZE,
        extension_start: ptr::null_mut(),
        message: message.as_ptr(),
        errc: failure.code,
    };
    // SAFETY: `create` comes from XLA's table; `args` and `message` outlive
    // the call.
    unsafe { create(&mut args) }
}

/// Reads the message of an error XLA returned to us, then destroys it (we
/// own errors returned by API calls).
///
/// # Safety
/// `api` is XLA's table (valid as for [`to_xla`]) and `err` a non-null error
/// it returned and nobody has destroyed.
pub unsafe fn take_message(api: *const Api, err: *mut XlaError) -> String {
    // SAFETY: the caller's contract.
    let Some(api) = (unsafe { api.as_ref() }) else {
        return "unknown XLA error".into();
    };
    if api.struct_size < abi::API_SIZE_THROUGH_ERROR_DESTROY {
        return "unknown XLA error (API table too small to read it)".into();
    }
    let mut text = String::from("unknown XLA error");
    if let Some(get) = api.error_get_message {
        let mut args = abi::ErrorGetMessageArgs {
            struct_size: abi::ERROR_GET_MESSAGE_ARGS_SIZE,
            extension_start: ptr::null_mut(),
            error: err,
            message: ptr::null(),
        };
        // SAFETY: `get` is XLA's; the message it returns lives until the
        // error is destroyed, and we copy it before that.
        unsafe {
            get(&mut args);
            if !args.message.is_null() {
                text = std::ffi::CStr::from_ptr(args.message)
                    .to_string_lossy()
                    .into_owned();
            }
        }
    }
    if let Some(destroy) = api.error_destroy {
        let mut args = abi::ErrorDestroyArgs {
            struct_size: abi::ERROR_DESTROY_ARGS_SIZE,
            extension_start: ptr::null_mut(),
            error: err,
        };
        // SAFETY: `destroy` is XLA's and `err` has not been destroyed.
        unsafe { destroy(&mut args) };
    }
    text
}
