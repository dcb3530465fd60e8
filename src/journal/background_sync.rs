//! The `interval` sync of a shard, run on a helper thread so the drain goes on meanwhile.
//!
//! An msync waits for the disk: the writeback of the pages still in flight, the device's cache
//! flush, the inode. Usually a few ms; on a shared cloud disk now and then several hundred. Run
//! by the drain, nothing empties the shard's ring while it waits, and a ring that holds ~150 ms
//! at saturation overflows into 503s (perf/RESULTS.md, twentieth session). Here the drain hands
//! the sync to a short-lived thread (`ShardJournal::sync_in_background`) and goes on appending;
//! it collects the outcome at its next interval, or waits for it in `sync()`.
//!
//! # What must hold
//! - **It covers what the synchronous sync covers**: the segment left at the last rotation (its
//!   map is moved here, msynced, then unmapped) and the active segment up to the offset taken
//!   when the job started (`fdatasync` of a duplicate of its descriptor: Linux's msync with
//!   MS_SYNC is an fdatasync of the range, and the duplicate shares the open file's writeback
//!   error state with the map and the writer), then the directory when a rename in it is not
//!   known durable yet.
//! - **Its errors are not lost**: the kernel reports a writeback error once per open file, and
//!   whoever sees it here hands it to the drain as a failed sync (`sync_failed`).
//! - **One at a time**, and never outliving its writer: `sync()`, `close_clean` and drop wait for
//!   it. While one runs the next interval's sync is skipped, not queued.
//! - **Nothing is dropped from the page cache behind it**: pages it has not confirmed are kept
//!   (`release_step` and the rotation hand back only what a finished sync covered).

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::error::JournalError;
use super::segment::Retired;

/// What one background sync writes back; moved to the thread.
pub(super) struct SyncJob {
    pub retired: Option<Retired>,
    /// The active segment's descriptor (a duplicate) and path, for the error.
    pub active: (File, PathBuf),
    /// The shard directory (a duplicate of its descriptor) when a rename in it may not be on
    /// disk yet.
    pub dir: Option<(File, PathBuf)>,
    /// Tests: fail as an I/O error would (the drain thread's FAIL_MSYNC when the job started;
    /// `run`).
    #[cfg(test)]
    pub fail: bool,
}

/// A background sync started by `ShardJournal::sync_in_background`.
pub(super) struct BackgroundSync {
    /// The active segment's number and write offset when it started: what it makes durable.
    pub number: u64,
    pub to: usize,
    /// Ok(true): the directory was fsynced too.
    job: JoinHandle<Result<bool, JournalError>>,
}

impl BackgroundSync {
    /// Starts the thread (named `tracker-sync-N`), or gives the job back when no thread could
    /// be started: the caller then syncs it itself.
    pub(super) fn start(shard: u16, number: u64, to: usize, job: SyncJob) -> Result<BackgroundSync, Box<SyncJob>> {
        // Handed over through a slot so that a failed spawn, which drops the closure, does not
        // drop the job with it (a retired map dropped unsynced).
        let slot = Arc::new(Mutex::new(Some(job)));
        let theirs = slot.clone();
        let spawned = std::thread::Builder::new().name(format!("tracker-sync-{shard}")).spawn(move || {
            let job = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            job.map_or(Ok(false), run)
        });
        match spawned {
            Ok(job) => Ok(BackgroundSync { number, to, job }),
            Err(_) => Err(Box::new(
                slot.lock().unwrap_or_else(|p| p.into_inner()).take().expect("the job of a thread never started"),
            )),
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.job.is_finished()
    }

    /// Waits for the outcome. `dir` names the shard directory in the error of a panicked thread.
    pub(super) fn wait(self, dir: &std::path::Path) -> Result<bool, JournalError> {
        self.job.join().unwrap_or_else(|_| {
            Err(JournalError::invalid("sync", dir, std::io::ErrorKind::Other, "the sync thread panicked".into()))
        })
    }
}

/// Writes the job back; Ok(true) when it fsynced the directory too.
pub(super) fn run(job: SyncJob) -> Result<bool, JournalError> {
    // Tests: the first write-back fails, as on a disk error: the retired segment's when there
    // is one (so a test sees the job reach it), else the active one's.
    #[cfg(test)]
    if job.fail {
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        return Err(match &job.retired {
            Some(r) => JournalError::new("msync", r.path(), eio),
            None => JournalError::new("fdatasync", &job.active.1, eio),
        });
    }
    if let Some(r) = job.retired {
        r.flush()?;
    }
    let (file, path) = job.active;
    file.sync_data().map_err(|e| JournalError::new("fdatasync", &path, e))?;
    match job.dir {
        Some((dir, path)) => {
            dir.sync_all().map_err(|e| JournalError::new("fsync dir", &path, e))?;
            Ok(true)
        }
        None => Ok(false),
    }
}
