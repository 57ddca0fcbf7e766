//! The guard every handler runs inside: frame checks, the metadata query,
//! panic containment, and turning a [`Failure`] into an `XLA_FFI_Error`.
//!
//! Invariants:
//! - No panic leaves [`guarded`]: the body runs under `catch_unwind`, and a
//!   caught panic becomes an `XLA_FFI_Error` (code INTERNAL).
//! - The API table is read from the frame only after checking that the frame
//!   is non-null and large enough to hold the `api` field.
use std::any::Any;
use std::mem::{offset_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::abi::{Api, CallFrame, XlaError};
use crate::error::{self, Failure};
use crate::frame::{self, Call, Request};
use crate::stats;

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "unknown panic payload"
    }
}

/// Runs `execute` for a decoded logging call and reports its outcome to XLA.
///
/// # Safety
/// `frame` is what XLA passed to a handler: null, or a call frame valid as
/// the C API documents for the duration of the call.
pub unsafe fn guarded<F>(frame: *mut CallFrame, execute: F) -> *mut XlaError
where
    F: FnOnce(&CallFrame, Call) -> Result<(), Failure>,
{
    // SAFETY: the caller's contract.
    let Some(frame) = (unsafe { frame.as_ref() }) else {
        stats::unreportable();
        return ptr::null_mut();
    };
    let api: *const Api = if frame.struct_size >= offset_of!(CallFrame, api) + size_of::<usize>() {
        frame.api
    } else {
        ptr::null()
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller's contract.
        match unsafe { frame::decode(frame) }? {
            Request::Metadata => Ok(()),
            Request::Execute(call) => execute(frame, call),
        }
    }));
    let failure = match outcome {
        Ok(Ok(())) => return ptr::null_mut(),
        Ok(Err(failure)) => failure,
        Err(payload) => Failure::internal(format!("panicked: {}", panic_message(&*payload))),
    };
    // SAFETY: `api` is null or XLA's table from a frame that held the field.
    unsafe { error::to_xla(api, &failure) }
}
