use pyo3::prelude::*;

#[pymodule]
fn _ringlog(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
