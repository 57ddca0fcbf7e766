//! The native logging path's Python face: the XLA FFI handlers of the
//! `nlsq-xla-ffi` crate as PyCapsules for `jax.ffi.register_ffi_target`, the
//! FFI API version they were built for, and their diagnostics.
//!
//! Invariant: a capsule holds the handler's function pointer itself (what
//! `jax.ffi.pycapsule` produces from a ctypes function), never a pointer to
//! Rust data, so it needs no destructor and stays valid for the process.
use std::ffi::{c_void, CStr};
use std::ptr::NonNull;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};
use xla_ffi::abi;

use crate::logger::counters_dict;

/// jaxlib reads the pointer under whatever name the capsule carries; this
/// is the name XLA's own custom-call capsules use.
const CAPSULE_NAME: &CStr = c"xla._CUSTOM_CALL_TARGET";

fn capsule<'py>(py: Python<'py>, handler: abi::Handler) -> PyResult<Bound<'py, PyCapsule>> {
    let ptr = NonNull::new(handler as *mut c_void)
        .ok_or_else(|| PyRuntimeError::new_err("null FFI handler pointer"))?;
    // SAFETY: `ptr` is a function with the XLA_FFI_Handler signature that
    // lives as long as this extension module (for the process).
    unsafe { PyCapsule::new_with_pointer(py, ptr, CAPSULE_NAME) }
}

/// `{platform: capsule}` for `jax.ffi.register_ffi_target(name, capsule,
/// platform=platform, api_version=1)`: "cpu" and "CUDA" (the CUDA staging
/// handler, measured on an H200 by `benches/gpu_check.py`).
#[pyfunction]
fn ffi_targets(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let targets = PyDict::new(py);
    targets.set_item("cpu", capsule(py, xla_ffi::cpu_handler)?)?;
    targets.set_item("CUDA", capsule(py, xla_ffi::cuda_handler)?)?;
    Ok(targets)
}

/// `(major, minor)` of the XLA FFI C API the handlers were built for.
#[pyfunction]
fn ffi_api_version() -> (i32, i32) {
    (abi::API_MAJOR, abi::API_MINOR)
}

/// The most values one logging call may carry (`ringlog::MAX_VALUES`).
#[pyfunction]
fn ffi_max_values() -> usize {
    ringlog::MAX_VALUES
}

/// `None` when the CUDA handler can load the CUDA driver here, else why not.
#[pyfunction]
fn ffi_cuda_unavailable_reason(py: Python<'_>) -> Option<String> {
    py.detach(xla_ffi::cuda::unavailable_reason)
}

/// Waits (without the GIL) until every record the CUDA route staged before
/// the call reached the ring logger; `False` on timeout. Call it after the
/// computations that staged them have finished.
#[pyfunction]
#[pyo3(signature = (timeout=None))]
fn ffi_cuda_wait_delivered(py: Python<'_>, timeout: Option<f64>) -> bool {
    let timeout = std::time::Duration::from_secs_f64(timeout.unwrap_or(3600.0).max(0.0));
    py.detach(|| xla_ffi::cuda::wait_delivered(timeout))
}

/// The reason of the latest CUDA-route failure (`None` if none).
#[pyfunction]
fn ffi_cuda_last_failure() -> Option<String> {
    xla_ffi::stats::last_failure()
}

/// Routes template key `k` of the routed call form to ring id `tids[k]` of
/// the live logger with id `logger_id` (negative: not registered there).
/// Raises ValueError when no live logger has that id.
#[pyfunction]
fn ffi_set_route(py: Python<'_>, logger_id: u64, tids: Vec<i64>) -> PyResult<()> {
    // Without the GIL: the write lock waits for readers, and none may wait
    // for the GIL while holding it.
    py.detach(|| xla_ffi::route::set(logger_id, &tids))
        .map_err(pyo3::exceptions::PyValueError::new_err)
}

/// Removes the route; routed records are then counted as orphaned.
#[pyfunction]
fn ffi_clear_route() {
    xla_ffi::route::clear()
}

/// Counters of records the handlers could not deliver.
#[pyfunction]
fn ffi_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let s = xla_ffi::stats::snapshot();
    counters_dict(
        py,
        &[
            ("orphaned", s.orphaned),
            ("unrouted", s.unrouted),
            ("push_failed", s.push_failed),
            ("unreportable", s.unreportable),
            ("staging_full", s.staging_full),
            ("staging_block_timeout", s.staging_block_timeout),
            ("enqueue_failed", s.enqueue_failed),
            ("cuda_unavailable", s.cuda_unavailable),
            ("staging_setup_failed", s.staging_setup_failed),
            ("poller_failed", s.poller_failed),
        ],
    )
}

/// Sizes and offsets of our mirror of the C API structs, keyed as in the
/// header (`"XLA_FFI_Buffer"`, `"XLA_FFI_Buffer.dims"`), for the ABI test.
#[pyfunction]
fn ffi_layout(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    for (name, value) in abi::layout() {
        d.set_item(name, value)?;
    }
    Ok(d)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(ffi_targets, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_api_version, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_max_values, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_cuda_unavailable_reason, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_cuda_wait_delivered, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_cuda_last_failure, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_set_route, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_clear_route, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_stats, m)?)?;
    m.add_function(wrap_pyfunction!(ffi_layout, m)?)?;
    Ok(())
}
