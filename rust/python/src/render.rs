//! `render(template, values)`: parse a template and render one line, the
//! same code path the drain thread uses. Exposed so tests (and users) can
//! check a template against Python's own `format()`.
//!
//! Python `int` (anything with `__index__`, bools excluded) becomes
//! `Value::Int`, `float` (and subclasses such as `numpy.float64`)
//! `Value::Float`. A refused template is a `ValueError` whose message ends
//! "at position N" (a character index into the template).
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat};
use ringlog::{Template, Value};

/// Renders `values` (a sequence, in field order) with `template`.
#[pyfunction]
fn render(template: &str, values: &Bound<'_, PyAny>) -> PyResult<String> {
    let t = Template::parse(template).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut vals = Vec::with_capacity(t.arity());
    for (i, item) in values.try_iter()?.enumerate() {
        vals.push(to_value(i, &item?)?);
    }
    if vals.len() != t.arity() {
        return Err(PyValueError::new_err(format!(
            "template {:?} has {} field(s) but {} value(s) were given",
            template,
            t.arity(),
            vals.len()
        )));
    }
    let mut out = String::new();
    t.render(&vals, &mut out);
    Ok(out)
}

fn to_value(i: usize, item: &Bound<'_, PyAny>) -> PyResult<Value> {
    if item.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(item.extract::<f64>()?));
    }
    if !item.is_instance_of::<PyBool>() && item.hasattr("__index__")? {
        return Ok(Value::Int(item.extract::<i64>()?));
    }
    Err(PyTypeError::new_err(format!(
        "value {i}: expected an int or a float, got {}",
        item.get_type().name()?
    )))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(render, m)?)
}
