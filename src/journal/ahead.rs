//! The next segment of a shard, made ahead of time on a helper thread.
//!
//! Creating a segment file (create, preallocate, write the header, fsync) takes ~1–2 ms, most
//! of it waiting for the disk. Done at rotation it stalls the drain: `logged` requests wait
//! through it, and the ring fills behind it. So right after each rotation a short-lived thread
//! makes segment N+1 as `N+1.seg.tmp`, and the next rotation only renames it into place,
//! rewrites its creation time and maps it (`ShardJournal::rotate`).
//!
//! # What must hold
//! - **Readers never see it early.** Until the rename it is a `.tmp`: readers ignore it, and a
//!   newer `.seg` would tell them the segment being written is finished. An open after a crash
//!   removes it like any other `.tmp` with no record in it. (One with records was renamed into
//!   place and appended to before a power loss undid the rename: the open puts it back, or sets
//!   it aside, `resolve_tmps` in `segment.rs`.)
//! - **The rename becomes durable before any record in it is reported synced.** The thread
//!   started at a rotation first fsyncs the directory (the rename just made), then sets
//!   `rename_durable`; a `sync()` that finds it unset fsyncs the directory itself.
//! - **A `.seg` file always has its header on disk**: the thread fsyncs the header before the
//!   rename can happen. The rotation rewrites only the 64-byte fixed part of each of the
//!   header's two copies (one sector each, with its CRC) to record when the segment became
//!   active; either version of either copy is a valid header.
//! - **It never outlives its writer.** `ShardJournal` waits for the thread and removes the file
//!   when it stops or drops, so a writer that reopens the directory never races it.

use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::error::JournalError;
use super::segment::{make_tmp_segment, segment_path, with_suffix, SegmentHeader, TMP_SUFFIX};

/// Segment `number`'s file being made (or made) under its `.tmp` name.
pub(super) struct Ahead {
    number: u64,
    /// The schema its header holds: a rotation for a new schema cannot use it.
    schema_json: Vec<u8>,
    tmp: PathBuf,
    job: JoinHandle<Result<File, JournalError>>,
}

/// What the helper thread needs to make a segment; owned, since it outlives the call.
pub(super) struct AheadSpec {
    pub dir: PathBuf,
    pub shard: u16,
    pub number: u64,
    pub segment_bytes: u64,
    pub schema_json: Vec<u8>,
    /// Set after the thread has fsynced `dir` (a rename made just before it started), when
    /// given.
    pub fsync_dir_then: Option<Arc<AtomicBool>>,
}

impl Ahead {
    /// Starts the thread. None when no thread could be started: the rotation then creates the
    /// segment itself, and `sync()` fsyncs the directory itself.
    pub(super) fn start(spec: AheadSpec) -> Option<Ahead> {
        let tmp = with_suffix(&segment_path(&spec.dir, spec.number), TMP_SUFFIX);
        let (number, schema_json) = (spec.number, spec.schema_json.clone());
        let job =
            std::thread::Builder::new().name(format!("tracker-seg-{}", spec.shard)).spawn(move || make(spec)).ok()?;
        Some(Ahead { number, schema_json, tmp, job })
    }

    /// Waits for the file. It is returned when it was made for segment `number` with
    /// `schema_json`; otherwise (or when making it failed) it is removed and None returned: the
    /// caller creates the segment itself, and reports the error if there is one again.
    pub(super) fn take(self, number: u64, schema_json: &[u8]) -> Option<(File, PathBuf)> {
        let fits = self.number == number && self.schema_json == schema_json;
        match self.job.join() {
            Ok(Ok(file)) if fits => Some((file, self.tmp)),
            // Another segment or schema, a failure (make() removed its file) or a panic.
            _ => {
                let _ = fs::remove_file(&self.tmp);
                None
            }
        }
    }

    /// Whether the thread has finished (tests).
    #[cfg(test)]
    pub(super) fn is_finished(&self) -> bool {
        self.job.is_finished()
    }

    /// Waits for the thread and removes the file it made.
    pub(super) fn discard(self) {
        let _ = self.job.join();
        let _ = fs::remove_file(&self.tmp);
    }
}

fn make(spec: AheadSpec) -> Result<File, JournalError> {
    if let Some(done) = &spec.fsync_dir_then {
        if File::open(&spec.dir).and_then(|d| d.sync_all()).is_ok() {
            done.store(true, SeqCst);
        }
    }
    let header = SegmentHeader::new_now(spec.shard, spec.number, spec.schema_json);
    make_tmp_segment(&segment_path(&spec.dir, spec.number), spec.segment_bytes, &header)
}
