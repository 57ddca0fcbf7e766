//! Placeholder; replaced by `render()`, the template formatter exposed for tests.
use pyo3::prelude::*;

pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
