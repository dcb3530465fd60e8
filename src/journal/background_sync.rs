//! The `interval` sync of a shard, run on a helper thread so the drain goes on meanwhile.
//!
//! An msync waits for the disk: the writeback of the pages still in flight, the device's cache
//! flush, the inode. Usually a few ms; on a shared cloud disk now and then several hundred. Run
//! by the drain, nothing empties the shard's ring while it waits, and a ring that holds ~150 ms
//! at saturation overflows into 503s (perf/RESULTS.md, twentieth session). Here the drain hands
//! the sync to the shard's sync thread (`ShardJournal::sync_in_background`) and goes on
//! appending; it collects the outcome at its next turn, or waits for it in `sync()`.
//!
//! The thread (`tracker-sync-N`) is started at the writer's first background sync and lives as
//! long as the writer: a thread started per sync cost a spawn, a 2 MiB stack mapped and unmapped
//! (a TLB shootdown on the reactor's CPU) and ~10 heap allocations every `sync_interval_ms`.
//! Handing a job over takes a mutex and a condition variable, neither of which allocates.
//!
//! # What must hold
//! - **It covers what the synchronous sync covers**: the segment left at the last rotation (its
//!   map is moved here, msynced, then unmapped) and the active segment up to the offset taken
//!   when the job started (`fdatasync` of a duplicate of its descriptor: Linux's msync with
//!   MS_SYNC is an fdatasync of the range, and the duplicate shares the open file's writeback
//!   error state with the map and the writer), then the directory when a rename in it is not
//!   known durable yet.
//! - **Its errors are not lost**: the kernel reports a writeback error once per open file, and
//!   whoever sees it here hands it to the drain as a failed sync (`sync_failed`). In a build
//!   that unwinds (tests; the release profile aborts on panic), a panic in the job is an error
//!   too, and the thread stays up for the next one.
//! - **One at a time**, and never outliving its writer: `sync()`, `close_clean` and drop wait for
//!   it; drop also ends the thread, after the job it was given. While one runs the next
//!   interval's sync is skipped, not queued.
//! - **Nothing is dropped from the page cache behind it**: pages it has not confirmed are kept
//!   (`release_step` and the rotation hand back only what a finished sync covered).

use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::error::JournalError;
use super::segment::Retired;

/// What one background sync writes back; moved to the thread.
pub(super) struct SyncJob {
    pub retired: Option<Retired>,
    /// The active segment's descriptor (a duplicate) and path, for the error.
    pub active: (File, Arc<Path>),
    /// The shard directory (a duplicate of its descriptor) when a rename in it may not be on
    /// disk yet.
    pub dir: Option<(File, PathBuf)>,
    /// Tests: fail as an I/O error would (the drain thread's FAIL_MSYNC when the job started;
    /// `run`).
    #[cfg(test)]
    pub fail: bool,
}

/// Ok(true): the directory was fsynced too.
type Outcome = Result<bool, JournalError>;

/// What became of a job, and how long it took (ns).
pub(super) struct Done {
    pub number: u64,
    pub to: usize,
    pub outcome: Outcome,
    pub took_ns: u64,
}

/// The hand-over between the writer and its sync thread.
#[derive(Default)]
struct Slot {
    /// Given, not yet taken by the thread.
    job: Option<SyncJob>,
    /// The last job's outcome and duration (ns), until the writer takes it.
    outcome: Option<(Outcome, u64)>,
    /// The writer is gone: end once no job is left.
    stop: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    /// Signalled on a new job, on stop, and on an outcome.
    changed: Condvar,
    /// An outcome is in the slot: what the drain polls every turn, without taking the lock (a
    /// sync thread preempted, or stopped by a debugger, inside its few locked instructions
    /// must not hold the drain up).
    done: AtomicBool,
}

impl Shared {
    /// The slot, poisoned or not: nothing panics while holding it (a job's panic is caught
    /// outside the lock), and its fields are consistent at every unlock.
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A shard's sync thread; owned by its writer (`ShardJournal`), ended when dropped.
pub(super) struct Syncer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The job handed over last, until its outcome is taken: the active segment's number and
    /// write offset when it was handed over, i.e. what it makes durable.
    in_flight: Option<(u64, usize)>,
}

impl Syncer {
    /// Starts the thread, named `tracker-sync-N`.
    pub(super) fn start(shard: u16) -> std::io::Result<Syncer> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::default()),
            changed: Condvar::new(),
            done: AtomicBool::new(false),
        });
        let theirs = shared.clone();
        let thread = std::thread::Builder::new().name(format!("tracker-sync-{shard}")).spawn(move || serve(&theirs))?;
        Ok(Syncer { shared, thread: Some(thread), in_flight: None })
    }

    /// Hands over `job`, which makes segment `number` durable up to `to`. The previous job's
    /// outcome has been taken (`wait`): at most one is ever in flight.
    pub(super) fn submit(&mut self, number: u64, to: usize, job: SyncJob) {
        debug_assert!(self.in_flight.is_none(), "one sync at a time");
        self.in_flight = Some((number, to));
        self.shared.lock().job = Some(job);
        self.shared.changed.notify_all();
    }

    /// A job was handed over and its outcome not taken yet.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A job is in flight and its outcome is waiting (no wait).
    pub(super) fn is_finished(&self) -> bool {
        self.in_flight.is_some() && self.shared.done.load(Acquire)
    }

    /// Waits for the outcome of the job in flight: its segment number and offset (`submit`)
    /// and what became of it. None when none is in flight. The thread outlives every job (it
    /// ends only at drop, and nothing in `serve` outside the job can panic), so an outcome
    /// comes.
    pub(super) fn wait(&mut self) -> Option<Done> {
        let (number, to) = self.in_flight.take()?;
        let mut slot = self.shared.lock();
        loop {
            if let Some((outcome, took_ns)) = slot.outcome.take() {
                self.shared.done.store(false, Relaxed);
                return Some(Done { number, to, outcome, took_ns });
            }
            slot = self.shared.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: runs each job handed over, posts its outcome, and ends at stop once no job is
/// left (a job given before the stop is still written back). The lock is held only to take a
/// job or post an outcome, never while writing back. Where panics unwind, a job's panic is
/// caught and posted as its error; nothing else here can panic (a poisoned lock is taken as it
/// is).
fn serve(shared: &Shared) {
    loop {
        let job = {
            let mut slot = shared.lock();
            loop {
                if let Some(job) = slot.job.take() {
                    break job;
                }
                if slot.stop {
                    return;
                }
                slot = shared.changed.wait(slot).unwrap_or_else(|p| p.into_inner());
            }
        };
        let path = job.active.1.clone();
        let (outcome, took_ns) = timed(|| {
            catch_unwind(AssertUnwindSafe(|| run(job))).unwrap_or_else(|_| {
                Err(JournalError::invalid("sync", &path, std::io::ErrorKind::Other, "the sync job panicked".into()))
            })
        });
        // `done` changes only under the lock, so it always says whether `outcome` is there.
        let mut slot = shared.lock();
        slot.outcome = Some((outcome, took_ns));
        shared.done.store(true, Release);
        drop(slot);
        shared.changed.notify_all();
    }
}

/// `f`'s result and how long it took, ns.
pub(super) fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = std::time::Instant::now();
    let r = f();
    (r, start.elapsed().as_nanos() as u64)
}

/// Writes the job back; Ok(true) when it fsynced the directory too.
pub(super) fn run(job: SyncJob) -> Outcome {
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
