//! Python-facing sinks and the resolution of `RingLogger`'s `sink` argument.
//!
//! `sink=None` means "where `print` writes": [`StdoutFollower`] keeps the
//! target that the current `sys.stdout` calls for and re-resolves it when
//! `sys.stdout` is a different object (`follow`, called by every `flush` and
//! by the eager pushes of `nlsq.utils.async_logger`, so once per fit).
//!
//! Invariants:
//! - The descriptor fast path (Rust writes, no GIL) is taken only when
//!   `sys.stdout is sys.__stdout__` and it has a working `fileno()`. Any other
//!   stream -- Jupyter's `OutStream` (whose `fileno()` is the kernel's
//!   original terminal), a `contextlib.redirect_stdout` target, pytest's
//!   capture -- is written through its `write`, as `print` would.
//! - Records pushed before a re-resolution go to the previous target: `follow`
//!   flushes the ring before it swaps the target.
//! - Lock order: the drain thread locks the target and then may take the GIL
//!   (stream route). Python threads lock the target only through
//!   `lock_py_attached`, which releases the GIL while it waits, so the two
//!   orders cannot deadlock.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::{MutexExt, PyOnceLock};
use pyo3::types::{PyInt, PyModule, PyString};
use ringlog::{FdSink, Logger, PathSink, Sink};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

fn io_error(e: PyErr) -> io::Error {
    io::Error::other(e.to_string())
}

/// A Python text stream: one `write` per batch under one GIL acquisition.
struct StreamSink {
    stream: Py<PyAny>,
}

impl StreamSink {
    fn write_with(stream: &Py<PyAny>, batch: &[u8]) -> io::Result<()> {
        let text = std::str::from_utf8(batch).map_err(io::Error::other)?;
        Python::attach(|py| {
            stream
                .bind(py)
                .call_method1(intern!(py, "write"), (text,))
                .map(drop)
                .map_err(io_error)
        })
    }

    fn flush_with(stream: &Py<PyAny>) -> io::Result<()> {
        Python::attach(|py| {
            let stream = stream.bind(py);
            match stream.getattr(intern!(py, "flush")) {
                Ok(f) => f.call0().map(drop).map_err(io_error),
                Err(_) => Ok(()),
            }
        })
    }
}

impl Sink for StreamSink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        StreamSink::write_with(&self.stream, batch)
    }

    fn flush(&mut self) -> io::Result<()> {
        StreamSink::flush_with(&self.stream)
    }
}

/// A `logging.Logger`: one INFO record per line, one GIL acquisition per batch.
struct LoggingSink {
    logger: Py<PyAny>,
}

impl Sink for LoggingSink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let text = std::str::from_utf8(batch).map_err(io::Error::other)?;
        Python::attach(|py| {
            let info = self.logger.bind(py).getattr("info").map_err(io_error)?;
            for line in text.split_terminator('\n') {
                // The line is the message itself, never a %-format string
                // with arguments: logging formats only when args are given.
                info.call1((line,)).map_err(io_error)?;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How lines reach the `sys.stdout` a [`StdoutTarget`] was resolved from.
enum Route {
    /// The process's own stdout with a descriptor: written from Rust.
    Fd(FdSink),
    /// Any other stream: its `write`, under the GIL.
    Stream,
    /// `sys.stdout` is None (pythonw, a closed console): `print` writes
    /// nothing there, and neither do we.
    Discard,
}

/// The `sys.stdout` object seen at the last resolution and its route.
struct StdoutTarget {
    stream: Py<PyAny>,
    route: Route,
}

impl StdoutTarget {
    /// Picks the route for `stdout` (the current `sys.stdout`).
    fn resolve(py: Python<'_>, stdout: &Bound<'_, PyAny>) -> PyResult<StdoutTarget> {
        let route = if stdout.is_none() {
            Route::Discard
        } else if stdout.is(&current(intern!(py, "__stdout__"))?) {
            match stdout
                .call_method0(intern!(py, "fileno"))
                .and_then(|fd| fd.extract::<i32>())
            {
                Ok(fd) if fd >= 0 => {
                    // Earlier prints still in Python's buffer go out first. A
                    // stream that cannot flush (a closed pipe) is no reason to
                    // fail a fit: its writes will fail and be counted.
                    let _ = stdout.call_method0(intern!(py, "flush"));
                    Route::Fd(FdSink::new(fd))
                }
                _ => Route::Stream,
            }
        } else {
            Route::Stream
        };
        Ok(StdoutTarget {
            stream: stdout.clone().unbind(),
            route,
        })
    }
}

/// `sys.<name>` now. The module is looked up once: `follow` runs on every
/// eager push and must stay at one attribute load when nothing changed.
fn current<'py>(name: &Bound<'py, PyString>) -> PyResult<Bound<'py, PyAny>> {
    static SYS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    let py = name.py();
    SYS.get_or_try_init(py, || py.import("sys").map(Bound::unbind))?
        .bind(py)
        .getattr(name)
}

fn lock(target: &Mutex<StdoutTarget>) -> MutexGuard<'_, StdoutTarget> {
    // A panic while writing leaves the target itself intact.
    target.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The drain's side of `sink=None`: writes to whatever the target is now.
struct FollowStdoutSink {
    target: Arc<Mutex<StdoutTarget>>,
}

impl Sink for FollowStdoutSink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let mut target = lock(&self.target);
        let target = &mut *target;
        match &mut target.route {
            Route::Fd(fd) => fd.write(batch),
            Route::Stream => StreamSink::write_with(&target.stream, batch),
            Route::Discard => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let target = lock(&self.target);
        match &target.route {
            Route::Stream => StreamSink::flush_with(&target.stream),
            Route::Fd(_) | Route::Discard => Ok(()),
        }
    }
}

/// The Python side of `sink=None`: re-resolves the target when `sys.stdout`
/// has changed.
pub struct StdoutFollower {
    target: Arc<Mutex<StdoutTarget>>,
    /// Address of the `sys.stdout` object the target was resolved from. The
    /// target holds a strong reference to that object (None is immortal), so
    /// no other object can take this address while it is stored here.
    seen: AtomicUsize,
}

impl StdoutFollower {
    fn new(py: Python<'_>) -> PyResult<(StdoutFollower, FollowStdoutSink)> {
        let stdout = current(intern!(py, "stdout"))?;
        let target = Arc::new(Mutex::new(StdoutTarget::resolve(py, &stdout)?));
        let follower = StdoutFollower {
            target: Arc::clone(&target),
            seen: AtomicUsize::new(stdout.as_ptr() as usize),
        };
        Ok((follower, FollowStdoutSink { target }))
    }

    /// Points the sink at the current `sys.stdout` if that is another object
    /// than last time; returns whether it did. Records pushed before the call
    /// are written to the previous target first.
    pub fn follow(&self, py: Python<'_>, logger: &Logger) -> PyResult<bool> {
        let stdout = current(intern!(py, "stdout"))?;
        let address = stdout.as_ptr() as usize;
        if address == self.seen.load(Ordering::Acquire) {
            return Ok(false);
        }
        let next = StdoutTarget::resolve(py, &stdout)?;
        py.detach(|| logger.flush(None));
        let previous = {
            let mut target = self
                .target
                .lock_py_attached(py)
                .unwrap_or_else(PoisonError::into_inner);
            // Stored under the lock, so that of two threads that follow at
            // once, `seen` ends up naming the object the target holds.
            self.seen.store(address, Ordering::Release);
            std::mem::replace(&mut *target, next)
        };
        // Dropped after the lock, attached: the previous stream is released here.
        drop(previous);
        Ok(true)
    }

    /// Before waiting on a flush: prints still in the buffer of a stdout that
    /// the drain writes by descriptor go out first, so they precede the
    /// records.
    pub fn flush_python_buffer(&self, py: Python<'_>) {
        let stream = {
            let target = self
                .target
                .lock_py_attached(py)
                .unwrap_or_else(PoisonError::into_inner);
            match target.route {
                Route::Fd(_) => Some(target.stream.clone_ref(py)),
                Route::Stream | Route::Discard => None,
            }
        };
        if let Some(stream) = stream {
            let _ = stream.bind(py).call_method0(intern!(py, "flush"));
        }
    }
}

/// Resolves the `sink` argument of `RingLogger`. Returns the sink and, for
/// `sink=None`, the follower that keeps it on `sys.stdout`.
pub fn resolve(
    py: Python<'_>,
    sink: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Box<dyn Sink>, Option<StdoutFollower>)> {
    let Some(sink) = sink.filter(|s| !s.is_none()) else {
        let (follower, sink) = StdoutFollower::new(py)?;
        return Ok((Box::new(sink), Some(follower)));
    };
    if sink.is_instance_of::<PyInt>() {
        let fd: i32 = sink.extract().map_err(|_| {
            PyValueError::new_err(format!("sink file descriptor {sink} is out of range"))
        })?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "sink file descriptor must be >= 0, got {fd}"
            )));
        }
        // Raises OSError (EBADF) now rather than failing on every batch.
        py.import("os")?.call_method1("fstat", (fd,))?;
        return Ok((Box::new(FdSink::new(fd)), None));
    }
    if sink.is_instance_of::<PyString>() || sink.hasattr("__fspath__")? {
        let path = py.import("os")?.call_method1("fspath", (sink,))?;
        let path: std::path::PathBuf = path.extract()?;
        return Ok((Box::new(PathSink::open(path)?), None));
    }
    let logging = py.import("logging")?;
    if sink.is_instance(&logging.getattr("Logger")?)?
        || sink.is_instance(&logging.getattr("LoggerAdapter")?)?
    {
        let logger = sink.clone().unbind();
        return Ok((Box::new(LoggingSink { logger }), None));
    }
    if sink.hasattr("write")? {
        let stream = sink.clone().unbind();
        return Ok((Box::new(StreamSink { stream }), None));
    }
    Err(PyTypeError::new_err(format!(
        "sink must be None (sys.stdout), a file descriptor, a path, a text stream or a \
         logging.Logger, not {}",
        sink.get_type().name()?
    )))
}
