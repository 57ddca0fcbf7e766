//! `xla_ffi`: XLA FFI custom-call handlers that push one log record per call
//! into the `ringlog` ring, so no Python runs per logged iteration.
//!
//! The handlers follow XLA's typed FFI C API (`xla/ffi/api/c_api.h`, API
//! [`abi::API_MAJOR`].[`abi::API_MINOR`]) through our own `#[repr(C)]`
//! definitions in [`abi`]. A call carries one `f64`/`f32` buffer (the packed
//! values) and `i64` attributes: `logger_id` and `template_id` (direct), or
//! `template_key` and optionally `rows` (routed through [`route`]).
//!
//! - [`cpu_handler`]: platform "cpu"; reads the host buffer and pushes.
//! - [`cuda_handler`]: platform "CUDA"; async copy to pinned memory plus a
//!   host function on the handler's stream (NOT VERIFIED ON A DEVICE).
//!
//! Every handler answers XLA's metadata query, checks struct sizes, dtype,
//! rank and attributes, and returns an `XLA_FFI_Error` on anything
//! unexpected; no panic crosses the FFI boundary.

pub mod abi;
mod cpu;
pub mod cuda;
mod error;
mod frame;
mod handler;
mod push;
pub mod route;
pub mod stats;

#[cfg(test)]
mod testing;

pub use cpu::{cpu_handler, execute_with as cpu_execute_with, Deliver};
pub use cuda::cuda_handler;
pub use error::Failure;
pub use stats::Stats;
