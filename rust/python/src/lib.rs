//! The `nlsq._ringlog` extension module. Each submodule owns one concept and
//! adds its names to the module in `register`.
use pyo3::prelude::*;

mod ffi;
mod logger;
mod render;
mod sink;

#[pymodule]
fn _ringlog(m: &Bound<'_, PyModule>) -> PyResult<()> {
    ffi::register(m)?;
    logger::register(m)?;
    render::register(m)?;
    Ok(())
}
