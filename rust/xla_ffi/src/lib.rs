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
//! - [`cuda_handler`]: platform "CUDA"; per record an async copy into a
//!   pinned, host-mapped staging slot and a stream write that publishes it,
//!   emptied by a host poller thread (NOT YET MEASURED ON A GPU).
//!
//! Every handler answers XLA's metadata query, checks struct sizes, dtype,
//! rank and attributes, and returns an `XLA_FFI_Error` on anything
//! unexpected; no panic crosses the FFI boundary.

// The unsafe-code lints (`unsafe_op_in_unsafe_fn`,
// `clippy::undocumented_unsafe_blocks`, `clippy::missing_safety_doc`) are
// denied in Cargo.toml, for every target.
#![cfg_attr(loom, allow(dead_code))]

// Under `cfg(loom)` only the staging ring's protocol is built (and model
// checked): `RUSTFLAGS="--cfg loom" cargo test -p nlsq-xla-ffi --lib staging`.
pub mod abi;
#[cfg(not(loom))]
mod cpu;
#[cfg(not(loom))]
pub mod cuda;
mod error;
mod frame;
#[cfg(not(loom))]
mod handler;
#[cfg(not(loom))]
pub mod poller;
#[cfg(not(loom))]
mod push;
#[cfg(not(loom))]
pub mod route;
pub mod staging;
pub mod stats;

#[cfg(all(test, not(loom)))]
mod testing;

#[cfg(not(loom))]
pub use cpu::{cpu_handler, execute_with as cpu_execute_with, Deliver};
#[cfg(not(loom))]
pub use cuda::cuda_handler;
pub use error::Failure;
pub use stats::Stats;
