//! Where formatted batches go.
//!
//! Invariant: a sink is owned by one drain thread at a time and sees whole
//! batches of complete lines (each ending in `\n`), never a partial line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::path::Path;

/// A destination for formatted log lines.
pub trait Sink: Send + 'static {
    /// Writes one batch of complete lines.
    fn write(&mut self, batch: &[u8]) -> io::Result<()>;
    /// Pushes buffered bytes to their destination.
    fn flush(&mut self) -> io::Result<()>;
}

/// Writes to a file descriptor it does not own (stdout, a pipe, a socket).
pub struct FdSink {
    // ManuallyDrop: the descriptor belongs to the caller; dropping the sink
    // must not close it.
    file: ManuallyDrop<File>,
}

impl FdSink {
    /// Wraps `fd`, which must stay open for the sink's lifetime; a descriptor
    /// that is (or becomes) invalid makes every write fail with `EBADF`,
    /// counted as a sink error.
    #[cfg(unix)]
    pub fn new(fd: std::os::fd::RawFd) -> FdSink {
        use std::os::fd::FromRawFd;
        // SAFETY: `File` only issues read/write/close syscalls on the number;
        // close never runs (ManuallyDrop), and a stale or foreign descriptor
        // yields an io::Error from write, never memory unsafety.
        let file = unsafe { File::from_raw_fd(fd) };
        FdSink {
            file: ManuallyDrop::new(file),
        }
    }
}

impl Sink for FdSink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        self.file.write_all(batch)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Unbuffered: every batch already went out with write(2).
        Ok(())
    }
}

/// Appends to a file it opened (and closes when dropped).
pub struct PathSink {
    file: File,
}

impl PathSink {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: impl AsRef<Path>) -> io::Result<PathSink> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open log file {}: {e}", path.display()),
                )
            })?;
        Ok(PathSink { file })
    }
}

impl Sink for PathSink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        self.file.write_all(batch)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Collects everything in memory; for tests and benchmarks.
#[derive(Clone, Default)]
pub struct MemorySink {
    buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl MemorySink {
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// Everything written so far, as text.
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

impl Sink for MemorySink {
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        self.buf.lock().unwrap().extend_from_slice(batch);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_sink_appends() {
        let dir = std::env::temp_dir().join(format!("ringlog-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("append.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut s = PathSink::open(&path).unwrap();
        s.write(b"a\nb\n").unwrap();
        s.flush().unwrap();
        drop(s);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\na\nb\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn path_sink_names_the_path_on_failure() {
        let err = PathSink::open("/nonexistent-dir-ringlog/x.log")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir-ringlog/x.log"),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn fd_sink_writes_and_does_not_close() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join(format!("ringlog-fd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fd.log");
        let file = File::create(&path).unwrap();
        {
            let mut s = FdSink::new(file.as_raw_fd());
            s.write(b"x\n").unwrap();
        }
        // Still open: writing through the original handle works.
        (&file).write_all(b"y\n").unwrap();
        let mut text = String::new();
        File::open(&path)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "x\ny\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn fd_sink_reports_a_bad_descriptor() {
        let mut s = FdSink::new(1_000_000);
        assert!(s.write(b"z\n").is_err());
    }
}
