//! The `nlsq._ringlog` extension module. Each submodule owns one concept and
//! adds its names to the module in `register`.
use pyo3::prelude::*;

mod logger;
mod render;

#[pymodule]
fn _ringlog(m: &Bound<'_, PyModule>) -> PyResult<()> {
    logger::register(m)?;
    render::register(m)?;
    Ok(())
}
