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
    #[cfg_attr(
        miri,
        ignore = "opens files, which Miri's isolation refuses; PathSink has no unsafe code"
    )]
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
    #[cfg_attr(
        miri,
        ignore = "opens files, which Miri's isolation refuses; PathSink has no unsafe code"
    )]
    fn path_sink_names_the_path_on_failure() {
        let err = PathSink::open("/nonexistent-dir-ringlog/x.log")
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir-ringlog/x.log"),
            "{err}"
        );
    }

    /// On a socket pair (not a file, so it also runs under Miri's
    /// isolation): the sink writes through a descriptor it does not own and
    /// leaves it open when dropped.
    #[cfg(unix)]
    #[test]
    fn fd_sink_writes_and_does_not_close() {
        use std::io::Read;
        use std::os::fd::{AsRawFd, OwnedFd};
        use std::os::unix::net::UnixStream;
        // As files: plain read(2)/write(2), as the sink uses (and as Miri
        // models for sockets; it has no send/recv).
        let file = |end: UnixStream| File::from(OwnedFd::from(end));
        let (ours, peer) = UnixStream::pair().unwrap();
        let (mut ours, mut peer) = (file(ours), file(peer));
        {
            let mut s = FdSink::new(ours.as_raw_fd());
            s.write(b"x\n").unwrap();
            s.flush().unwrap();
        }
        // Still open: writing through the original handle works.
        ours.write_all(b"y\n").unwrap();
        drop(ours);
        // Read by hand: `read_to_string` would stat the file first.
        let (mut text, mut chunk) = (Vec::new(), [0u8; 8]);
        loop {
            match peer.read(&mut chunk).unwrap() {
                0 => break,
                n => text.extend_from_slice(&chunk[..n]),
            }
        }
        assert_eq!(text, b"x\ny\n");
    }

    #[cfg(unix)]
    #[test]
    fn fd_sink_reports_a_bad_descriptor() {
        let mut s = FdSink::new(1_000_000);
        assert!(s.write(b"z\n").is_err());
    }
}
