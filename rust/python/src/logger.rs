//! `RingLogger`: the Python face of `ringlog::Logger`, and the process hooks
//! (atexit, fork). Its sinks are resolved in `sink.rs`.
//!
//! Invariants:
//! - `push`/`push_array` hold the GIL only to copy numbers into a record; they
//!   never format or do I/O. Under the `block` policy a full ring is waited
//!   on with the GIL released.
//! - Every call that waits on the drain (`flush`, `close`, the hooks, drop)
//!   releases the GIL first: the drain of a Python sink needs the GIL to
//!   finish a batch, so waiting while holding it could deadlock.
//! - Python sinks take the GIL once per batch; fd and path sinks never take it.
//! - Panics do not cross into Python: PyO3 turns one into `PanicException`,
//!   and the drain thread catches its own.
//!
//! Hooks, registered when the module is imported: `atexit` flushes and closes
//! every live logger (so a process that exits without `close()` loses
//! nothing); `os.register_at_fork` pauses every drain before `fork()` (after
//! writing what is queued) and restarts it in the parent and in the child.

use crate::sink::{self, StdoutFollower};
use numpy::{PyArray1, PyReadonlyArray1};
use numpy::{PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};
use ringlog::{Config, Logger, Policy, PushError, Value, MAX_VALUES};
use std::time::Duration;

/// Largest ring we accept (records); about 4 GiB of ring memory.
const MAX_CAPACITY: i64 = 1 << 25;

/// A dict of named counters: the one place a Rust counter snapshot
/// (`RingLogger.stats()`, `ffi_stats()`) becomes Python.
pub(crate) fn counters_dict<'py>(
    py: Python<'py>,
    fields: &[(&str, u64)],
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, value) in fields {
        d.set_item(name, value)?;
    }
    Ok(d)
}

fn push_error(e: PushError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn tid_of(tid: &Bound<'_, PyAny>) -> PyResult<u32> {
    let tid: i64 = tid.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "template id must be an int, not {}",
            tid.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    // Ids never reach u32::MAX (reserved); anything else unknown is caught
    // by the logger's own check.
    u32::try_from(tid)
        .ok()
        .filter(|t| *t != u32::MAX)
        .ok_or_else(|| PyValueError::new_err(format!("unknown template id {tid}")))
}

#[inline]
fn value_of(obj: &Bound<'_, PyAny>, index: usize) -> PyResult<Value> {
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(Value::Float(f.value()));
    }
    if obj.is_instance_of::<PyInt>() {
        return obj.extract::<i64>().map(Value::Int).map_err(|_| {
            PyValueError::new_err(format!(
                "value {index} ({obj}) does not fit in a 64-bit integer"
            ))
        });
    }
    // NumPy and JAX scalars: integers expose __index__, floats __float__.
    if obj.hasattr("__index__")? {
        return match obj.extract::<i64>() {
            Ok(i) => Ok(Value::Int(i)),
            Err(e) if e.is_instance_of::<PyOverflowError>(obj.py()) => Err(PyValueError::new_err(
                format!("value {index} ({obj}) does not fit in a 64-bit integer"),
            )),
            Err(e) => Err(e),
        };
    }
    obj.extract::<f64>().map(Value::Float).map_err(|_| {
        PyTypeError::new_err(format!(
            "value {index} must be a number, not {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })
}

/// A ring logger: `push` copies numbers into a lock-free ring and returns;
/// a Rust thread formats them with the registered template and writes them.
#[pyclass(frozen, module = "nlsq._ringlog", name = "RingLogger")]
pub struct RingLogger {
    logger: Logger,
    /// `sink=None`: keeps the sink on the current `sys.stdout`.
    stdout: Option<StdoutFollower>,
}

impl RingLogger {
    /// Queues `values` (already checked to fit), waiting without the GIL
    /// when a `block` ring is full.
    #[inline]
    fn push_values(&self, py: Python<'_>, tid: u32, values: &[Value]) -> PyResult<()> {
        match self.logger.try_push(tid, values) {
            Ok(true) => Ok(()),
            Ok(false) => py
                .detach(|| self.logger.push(tid, values))
                .map_err(push_error),
            Err(e) => Err(push_error(e)),
        }
    }

    fn too_many(&self, tid: u32, got: usize) -> PyErr {
        match self.logger.arity(tid) {
            Some(expected) => push_error(PushError::WrongArity { expected, got }),
            None => push_error(PushError::UnknownTemplate(tid)),
        }
    }
}

#[pymethods]
impl RingLogger {
    #[new]
    #[pyo3(signature = (sink=None, capacity=65536, policy="drop_new"))]
    fn new(
        py: Python<'_>,
        sink: Option<&Bound<'_, PyAny>>,
        capacity: i64,
        policy: &str,
    ) -> PyResult<RingLogger> {
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(PyValueError::new_err(format!(
                "capacity must be between 1 and {MAX_CAPACITY} records, got {capacity}"
            )));
        }
        let policy: Policy = policy.parse().map_err(PyValueError::new_err)?;
        let (sink, stdout) = sink::resolve(py, sink)?;
        let logger = Logger::new(
            sink,
            Config {
                capacity: capacity as usize,
                policy,
            },
        );
        Ok(RingLogger { logger, stdout })
    }

    /// Registers a format template and returns its id.
    fn register(&self, template: &str) -> PyResult<u32> {
        self.logger
            .register(template)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Marks template `tid` as the end of a unit of output: a push of it also
    /// writes what is queued, on the pushing thread, when the drain is idle.
    fn flush_on_push(&self, tid: &Bound<'_, PyAny>) -> PyResult<()> {
        let tid = tid_of(tid)?;
        self.logger
            .flush_on_push(tid)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Queues one record: `values` in the template's field order.
    #[pyo3(signature = (tid, *values))]
    fn push(
        &self,
        py: Python<'_>,
        tid: &Bound<'_, PyAny>,
        values: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let tid = tid_of(tid)?;
        let n = values.len();
        if n > MAX_VALUES {
            return Err(self.too_many(tid, n));
        }
        let mut buf = [Value::Int(0); MAX_VALUES];
        for (i, (slot, obj)) in buf.iter_mut().zip(values.iter()).enumerate() {
            *slot = value_of(&obj, i)?;
        }
        self.push_values(py, tid, &buf[..n])
    }

    /// Queues one record from a 1-D float64 or int64 array (or anything
    /// `numpy.asarray` turns into one).
    fn push_array(
        &self,
        py: Python<'_>,
        tid: &Bound<'_, PyAny>,
        values: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let tid = tid_of(tid)?;
        let converted;
        let array = match values.cast::<PyUntypedArray>() {
            Ok(a) => a,
            Err(_) => {
                converted = py.import("numpy")?.call_method1("asarray", (values,))?;
                converted.cast::<PyUntypedArray>()?
            }
        };
        if array.ndim() != 1 {
            return Err(PyValueError::new_err(format!(
                "push_array needs a 1-D array, got {} dimensions",
                array.ndim()
            )));
        }
        let n = array.len();
        if n > MAX_VALUES {
            return Err(self.too_many(tid, n));
        }
        let dtype = array.dtype();
        let mut buf = [Value::Int(0); MAX_VALUES];
        if dtype.is_equiv_to(&numpy::dtype::<f64>(py)) {
            let a: PyReadonlyArray1<'_, f64> = array.cast::<PyArray1<f64>>()?.readonly();
            for (slot, v) in buf.iter_mut().zip(a.as_array().iter()) {
                *slot = Value::Float(*v);
            }
        } else if dtype.is_equiv_to(&numpy::dtype::<i64>(py)) {
            let a: PyReadonlyArray1<'_, i64> = array.cast::<PyArray1<i64>>()?.readonly();
            for (slot, v) in buf.iter_mut().zip(a.as_array().iter()) {
                *slot = Value::Int(*v);
            }
        } else {
            return Err(PyTypeError::new_err(format!(
                "push_array needs a float64 or int64 array, got dtype {dtype}"
            )));
        }
        self.push_values(py, tid, &buf[..n])
    }

    /// Waits (GIL released) until every record pushed before the call is
    /// written. Returns False if `timeout` seconds pass first.
    #[pyo3(signature = (timeout=None))]
    fn flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = match timeout {
            None => None,
            Some(t) if t.is_finite() && t >= 0.0 => Some(Duration::from_secs_f64(t.min(1e9))),
            Some(t) if t == f64::INFINITY => None,
            Some(t) => {
                return Err(PyValueError::new_err(format!(
                    "timeout must be None or a number of seconds >= 0, got {t}"
                )))
            }
        };
        if let Some(stdout) = &self.stdout {
            // A flush is a point where output must be where `print` puts it.
            // If `sys.stdout` cannot be read (deleted), the records go to the
            // previous target: a flush never fails because of it.
            let _ = stdout.follow(py, &self.logger);
            // Prints made before this call precede the records written next.
            stdout.flush_python_buffer(py);
        }
        Ok(py.detach(|| self.logger.flush(timeout)))
    }

    /// With `sink=None`: if `sys.stdout` is another object than when the sink
    /// was last resolved, write what is queued to the old one and send later
    /// records to the new one. Returns whether the sink changed; always False
    /// for an explicit sink. Cheap when nothing changed (one attribute load).
    fn follow_stdout(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.stdout {
            Some(stdout) => stdout.follow(py, &self.logger),
            None => Ok(false),
        }
    }

    /// Writes everything queued, stops the drain thread, closes the sink.
    /// Idempotent; pushing afterwards raises ValueError.
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.logger.close());
    }

    /// Counters: pushed, written, dropped, sink_errors, high_water,
    /// capacity, latency_ns_p50, latency_ns_p99.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        counters_dict(py, &self.logger.stats().fields())
    }

    /// Process-unique id (for the native FFI path's `ringlog::lookup`).
    #[getter]
    fn id(&self) -> u64 {
        self.logger.id()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.logger.is_closed()
    }

    #[getter]
    fn policy(&self) -> String {
        self.logger.policy().to_string()
    }

    #[getter]
    fn capacity(&self) -> u64 {
        self.logger.stats().capacity
    }

    /// The number of values template `tid` takes.
    fn arity(&self, tid: &Bound<'_, PyAny>) -> PyResult<usize> {
        let tid = tid_of(tid)?;
        self.logger
            .arity(tid)
            .ok_or_else(|| push_error(PushError::UnknownTemplate(tid)))
    }

    /// The field names of template `tid`, in order.
    fn field_names(&self, tid: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let tid = tid_of(tid)?;
        self.logger
            .field_names(tid)
            .ok_or_else(|| push_error(PushError::UnknownTemplate(tid)))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        let s = self.logger.stats();
        format!(
            "RingLogger(id={}, capacity={}, policy={:?}, closed={})",
            self.logger.id(),
            s.capacity,
            self.logger.policy().to_string(),
            if self.logger.is_closed() {
                "True"
            } else {
                "False"
            }
        )
    }
}

impl Drop for RingLogger {
    fn drop(&mut self) {
        if !self.logger.is_closed() {
            // Dropped with the GIL held; a Python-sink drain needs it to finish.
            Python::attach(|py| py.detach(|| self.logger.close()));
        }
    }
}

/// atexit: flush and close every live logger.
#[pyfunction]
fn _close_all(py: Python<'_>) {
    py.detach(ringlog::close_all);
}

#[pyfunction]
fn _before_fork(py: Python<'_>) {
    py.detach(ringlog::before_fork);
}

#[pyfunction]
fn _after_fork_parent(py: Python<'_>) {
    py.detach(ringlog::after_fork_parent);
}

#[pyfunction]
fn _after_fork_child(py: Python<'_>) {
    py.detach(ringlog::after_fork_child);
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<RingLogger>()?;
    m.add("MAX_VALUES", MAX_VALUES)?;
    m.add_function(wrap_pyfunction!(_close_all, m)?)?;
    m.add_function(wrap_pyfunction!(_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_parent, m)?)?;
    m.add_function(wrap_pyfunction!(_after_fork_child, m)?)?;
    py.import("atexit")?
        .call_method1("register", (m.getattr("_close_all")?,))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("before", m.getattr("_before_fork")?)?;
    kwargs.set_item("after_in_parent", m.getattr("_after_fork_parent")?)?;
    kwargs.set_item("after_in_child", m.getattr("_after_fork_child")?)?;
    let os = py.import("os")?;
    if os.hasattr("register_at_fork")? {
        os.getattr("register_at_fork")?.call((), Some(&kwargs))?;
    }
    Ok(())
}
