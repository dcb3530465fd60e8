//! Reading segment bytes back with `pread`, never through a map.
//!
//! Everything that reads records written by another run (the writer's recovery scan,
//! `JournalReader`, the collectors' `ShardSource`) reads through [`read_exact_at`]. A sector the
//! disk cannot read is then an `EIO` the caller can count, skip or retry; through a map it is a
//! SIGBUS, which kills the process, and at start-up a crash loop.
//!
//! [`for_each_slot`] reads whole chunks and, when a chunk fails, reads it again one slot at a
//! time, so one bad sector costs only the slots on it.
//!
//! In tests, a thread can make byte ranges of a file unreadable ([`fail_reads`]): every read of
//! that file (by inode) overlapping them fails with EIO, as a bad sector's does. No such hook
//! exists outside tests.

use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;

use crate::event::EVENT_BYTES;

/// `pread` of exactly `buf.len()` bytes at `off`: a short file is an error
/// (`UnexpectedEof`), as an unreadable sector is (`EIO`).
#[inline]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some(e) = injected::error(file, off, buf.len()) {
        return Err(e);
    }
    file.read_exact_at(buf, off)
}

/// Calls `f` with each whole slot of `file` in `[from, to)` (offsets; `from` on a slot
/// boundary), in order: `Some(bytes)`, or `None` for a slot that cannot be read. Reads
/// `buf.len()` bytes (a whole number of slots) per `pread`; a chunk that fails is read again
/// slot by slot. Stops when `f` breaks.
pub(crate) fn for_each_slot(
    file: &File,
    from: usize,
    to: usize,
    buf: &mut [u8],
    mut f: impl FnMut(usize, Option<&[u8; EVENT_BYTES]>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let chunk_slots = buf.len() / EVENT_BYTES;
    debug_assert!(chunk_slots > 0);
    let mut at = from;
    while at + EVENT_BYTES <= to {
        let n = ((to - at) / EVENT_BYTES).min(chunk_slots);
        let chunk = &mut buf[..n * EVENT_BYTES];
        if read_exact_at(file, chunk, at as u64).is_ok() {
            for (i, slot) in chunk.as_chunks::<EVENT_BYTES>().0.iter().enumerate() {
                f(at + i * EVENT_BYTES, Some(slot))?;
            }
        } else {
            for (i, slot) in chunk.as_chunks_mut::<EVENT_BYTES>().0.iter_mut().enumerate() {
                let off = at + i * EVENT_BYTES;
                match read_exact_at(file, slot, off as u64) {
                    Ok(()) => f(off, Some(slot))?,
                    Err(_) => f(off, None)?,
                }
            }
        }
        at += n * EVENT_BYTES;
    }
    ControlFlow::Continue(())
}

/// Whether any byte of `file` in `[from, to)` is not zero, read `buf.len()` bytes at a time.
pub(crate) fn any_nonzero(file: &File, from: usize, to: usize, buf: &mut [u8]) -> io::Result<bool> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len());
        read_exact_at(file, &mut buf[..n], at as u64)?;
        if !super::all_zero(&buf[..n]) {
            return Ok(true);
        }
        at += n;
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) use injected::fail_reads;

#[cfg(test)]
mod injected {
    use std::cell::RefCell;
    use std::fs::File;
    use std::io;
    use std::ops::Range;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    thread_local! {
        /// (device, inode, unreadable byte range) of this thread's reads.
        static UNREADABLE: RefCell<Vec<(u64, u64, Range<u64>)>> = const { RefCell::new(Vec::new()) };
    }

    /// Until the guard is dropped, this thread's reads of the file at `path` (the file, not
    /// the name: a rename keeps it) that overlap `bytes` fail with EIO.
    pub(crate) fn fail_reads(path: &Path, bytes: Range<u64>) -> Unreadable {
        let meta = std::fs::metadata(path).expect("a file to make unreadable");
        let key = (meta.dev(), meta.ino());
        UNREADABLE.with_borrow_mut(|v| v.push((key.0, key.1, bytes)));
        Unreadable { key }
    }

    #[must_use = "reads fail only while the guard lives"]
    pub(crate) struct Unreadable {
        key: (u64, u64),
    }

    impl Drop for Unreadable {
        fn drop(&mut self) {
            UNREADABLE.with_borrow_mut(|v| v.retain(|(d, i, _)| (*d, *i) != self.key));
        }
    }

    pub(super) fn error(file: &File, off: u64, len: usize) -> Option<io::Error> {
        if UNREADABLE.with_borrow(|v| v.is_empty()) {
            return None;
        }
        let meta = file.metadata().ok()?;
        let end = off + len as u64;
        let hit = UNREADABLE.with_borrow(|v| {
            v.iter().any(|(d, i, r)| (*d, *i) == (meta.dev(), meta.ino()) && off < r.end && r.start < end)
        });
        hit.then(|| io::Error::from_raw_os_error(libc::EIO))
    }
}
