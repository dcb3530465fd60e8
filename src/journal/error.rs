//! The journal's one error type: cold path only (open, rotation, sync, reading), so it is rich —
//! the operation, the file, the numbers that matter and the `io::Error` underneath.
//! `append` returns it only when a rotation fails.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A failed journal operation, e.g.
/// `journal: fallocate /var/lib/tracker/journal/shard-000/00000000000000000003.seg (67108864 bytes): No space left on device`.
#[derive(Debug)]
pub struct JournalError {
    op: &'static str,
    path: PathBuf,
    /// The numbers of the operation (`67108864 bytes`, `offset 8192`), empty when none.
    detail: String,
    source: io::Error,
}

impl JournalError {
    pub(crate) fn new(op: &'static str, path: &Path, source: io::Error) -> JournalError {
        JournalError { op, path: path.to_path_buf(), detail: String::new(), source }
    }

    pub(crate) fn with_detail(op: &'static str, path: &Path, detail: String, source: io::Error) -> JournalError {
        JournalError { op, path: path.to_path_buf(), detail, source }
    }

    /// An error that is not an OS error: bad data on disk (`InvalidData`) or a bad argument
    /// (`InvalidInput`); `msg` says what was found and what to do.
    pub(crate) fn invalid(op: &'static str, path: &Path, kind: io::ErrorKind, msg: String) -> JournalError {
        JournalError::new(op, path, io::Error::new(kind, msg))
    }

    /// The same error with `note` (what was done about it) added to its detail.
    pub(crate) fn noted(mut self, note: &str) -> JournalError {
        if !self.detail.is_empty() {
            self.detail.push_str("; ");
        }
        self.detail.push_str(note);
        self
    }

    /// What was being done: `open`, `fallocate`, `mmap`, `msync`, `read header`, ...
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The file or directory it was done to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

impl fmt::Display for JournalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "journal: {} {}", self.op, self.path.display())?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        write!(f, ": {}", self.source)
    }
}

impl std::error::Error for JournalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
