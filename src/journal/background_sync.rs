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
pub(super) struct Slot {
    /// Given, not yet taken by the thread.
    job: Option<SyncJob>,
    /// The last job's outcome and duration (ns), until the writer takes it.
    outcome: Option<(Outcome, u64)>,
    /// The writer is gone: end once no job is left.
    stop: bool,
}

pub(super) struct Shared {
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
    pub(super) fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot if no one holds it: what the drain takes, so that a sync thread preempted or
    /// stopped inside its few locked instructions (between a job and its wait for the next)
    /// never holds the drain up. None when it is held.
    fn try_lock(&self) -> Option<MutexGuard<'_, Slot>> {
        match self.slot.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
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
    /// outcome has been taken (`wait`, `try_wait`): at most one is ever in flight. Gives the
    /// job back when the thread holds its lock at that instant: the caller skips this sync, as
    /// while one runs, rather than wait for the thread.
    pub(super) fn submit(&mut self, number: u64, to: usize, job: SyncJob) -> Result<(), SyncJob> {
        debug_assert!(self.in_flight.is_none(), "one sync at a time");
        let Some(mut slot) = self.shared.try_lock() else { return Err(job) };
        slot.job = Some(job);
        drop(slot);
        self.in_flight = Some((number, to));
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The hand-over state, to hold its lock as the thread would (tests).
    #[cfg(test)]
    pub(super) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// A job was handed over and its outcome not taken yet.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The outcome of the job in flight if it is there and the thread does not hold its lock
    /// (no wait); None otherwise, the job still in flight.
    pub(super) fn try_wait(&mut self) -> Option<Done> {
        let (number, to) = self.in_flight?;
        if !self.shared.done.load(Acquire) {
            return None;
        }
        let (outcome, took_ns) = self.shared.try_lock()?.outcome.take()?;
        self.shared.done.store(false, Relaxed);
        self.in_flight = None;
        Some(Done { number, to, outcome, took_ns })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sync thread preempted, or stopped by a debugger, while it holds its lock (between
    /// posting an outcome and waiting for the next job) does not hold the drain up: a job is
    /// given back to be tried at the next interval, and an outcome is left for the next turn.
    /// The integration test that stops the thread at a random point (tests/it/pipeline.rs)
    /// failed once on this, the drain blocked in `submit`.
    #[test]
    fn the_drain_never_waits_for_the_sync_threads_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path: Arc<Path> = Arc::from(dir.path().join("active").as_path());
        let file = File::create(&path).unwrap();
        let job =
            || SyncJob { retired: None, active: (file.try_clone().unwrap(), path.clone()), dir: None, fail: false };
        let mut s = Syncer::start(95).unwrap();
        let shared = s.shared.clone();
        let held = shared.lock();
        assert!(s.submit(1, 4096, job()).is_err(), "handed over while the thread held its lock");
        assert!(!s.in_flight());
        drop(held);
        assert!(s.submit(1, 4096, job()).is_ok());
        // Posted: then the lock held again, as by the thread looking for its next job.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !shared.done.load(Acquire) {
            assert!(std::time::Instant::now() < deadline, "no outcome within 30 s");
            std::thread::yield_now();
        }
        let held = shared.lock();
        assert!(s.try_wait().is_none(), "waited for the lock");
        assert!(s.in_flight());
        drop(held);
        // The thread takes the lock once more on its way to wait for a job: try until it is
        // free.
        let done = loop {
            if let Some(d) = s.try_wait() {
                break d;
            }
            assert!(std::time::Instant::now() < deadline, "the outcome not taken within 30 s");
            std::thread::yield_now();
        };
        assert_eq!((done.number, done.to), (1, 4096));
        assert!(matches!(done.outcome, Ok(false)));
        assert!(!s.in_flight());
    }
}
