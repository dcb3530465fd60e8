//! Retention and the journal size limit, off the reactors (one thread, once a second).
//!
//! - A segment is deleted once every configured collector's cursor for its shard is past it
//!   (in a later segment), it is not the shard's newest segment, and it was created more than
//!   `journal.retention_age_s` ago. With no collector, age alone decides. The collectors'
//!   batch logs of deleted segments go with them.
//! - When the segment files on disk (the next one made ahead and any set aside as `.corrupt`
//!   included) exceed `journal.size_bytes_max`, [`journal_over_limit`] turns
//!   true: `logged` endpoints answer 503 and `/ready` reports it (503), instead of the
//!   disk filling up; it turns false once retention (or an operator) freed space.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::cursor;
use crate::config::Config;
use crate::journal::{
    list_segments, parse_shard_dir_name, read_header, segment_path, shard_dir, SegmentFile, CORRUPT_SUFFIX, TMP_SUFFIX,
};

static OVER_LIMIT: AtomicBool = AtomicBool::new(false);
/// Bytes of the journal's segment files at the last check (for metrics and readiness).
pub static JOURNAL_BYTES: AtomicU64 = AtomicU64::new(0);
/// Segments deleted by retention since start.
pub static SEGMENTS_DELETED_TOTAL: AtomicU64 = AtomicU64::new(0);

/// True while the journal is over `journal.size_bytes_max`: `logged` endpoints answer 503 and
/// readiness is false. One relaxed load; safe on the request path.
#[inline]
pub fn journal_over_limit() -> bool {
    OVER_LIMIT.load(Relaxed)
}

const PERIOD: Duration = Duration::from_secs(1);

/// What brings the journal back under `journal.size_bytes_max`, for the log and `/ready`: with
/// `journal.retention_age_s = 0` retention deletes nothing, so waiting would never end.
pub fn until_under_limit(retention_age_s: u64) -> &'static str {
    if retention_age_s == 0 {
        "until segments are deleted by hand or the limit is raised: journal.retention_age_s is 0, so retention \
         deletes nothing"
    } else {
        "until retention frees space (collectors must catch up), or the limit is raised"
    }
}

pub fn spawn(cfg: &Config, stop: Arc<AtomicBool>) -> Result<JoinHandle<()>, String> {
    let journal = cfg.journal.dir.clone();
    let names: Vec<String> = cfg.collectors.iter().map(|c| c.name.clone()).collect();
    let (age_s, size_max) = (cfg.journal.retention_age_s, cfg.journal.size_bytes_max);
    std::thread::Builder::new()
        .name("journal-retention".into())
        .spawn(move || {
            // A problem that lasts (an unreadable cursor) is said once, not every second.
            let mut said: Vec<String> = Vec::new();
            while !stop.load(SeqCst) {
                let (_, problems) = pass(&journal, &names, age_s, size_max);
                for p in problems.iter().filter(|p| !said.contains(p)) {
                    eprintln!("tracker: retention: {p}");
                }
                said = problems;
                let mut slept = Duration::ZERO;
                while slept < PERIOD && !stop.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                    slept += Duration::from_millis(50);
                }
            }
        })
        .map_err(|e| format!("spawn retention thread: {e}"))
}

fn shards(journal: &Path) -> Vec<u16> {
    let mut out: Vec<u16> = fs::read_dir(journal)
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(parse_shard_dir_name)).collect())
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// One retention pass; returns the segments deleted and what stood in its way. A problem holds
/// back only what it concerns: a collector's cursor for a shard that cannot be read keeps every
/// segment of that shard (how far that collector got is unknown), a shard directory that cannot
/// be listed is passed over; the other shards' retention and the size limit go on regardless,
/// so a damaged cursor file can neither fill the disk nor lose segments.
pub fn pass(journal: &Path, collectors: &[String], age_s: u64, size_max: u64) -> (u64, Vec<String>) {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut problems = Vec::new();
    let mut deleted = 0;
    let mut bytes = 0u64;
    for shard in shards(journal) {
        let dir = shard_dir(journal, shard);
        let files = match list_segments(&dir) {
            Ok(l) => l,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        // The size limit is there to keep the disk from filling: the next segment made ahead
        // (`.seg.tmp`, preallocated whole) and segments set aside (`.seg.corrupt`) take disk
        // too, up to a segment per shard beyond the limit if left out. Retention deletes neither.
        for &(n, kind) in &files {
            let suffix = match kind {
                SegmentFile::Live => continue,
                SegmentFile::Tmp => TMP_SUFFIX,
                SegmentFile::Corrupt => CORRUPT_SUFFIX,
            };
            let mut path = segment_path(&dir, n).into_os_string();
            path.push(suffix);
            bytes += fs::metadata(&path).map_or(0, |m| m.len());
        }
        let live: Vec<u64> = files.into_iter().filter(|&(_, k)| k == SegmentFile::Live).map(|(n, _)| n).collect();
        let newest = live.last().copied().unwrap_or(0);
        // Every collector must be past the segment: its cursor is in a later one. No cursor yet
        // is the start of the journal; one that cannot be read holds everything.
        let mut passed_below = u64::MAX;
        for name in collectors {
            let at = match cursor::read_cursor(&cursor::collector_shard_dir(journal, name, shard)) {
                Ok(p) => p.map_or(0, |p| p.segment),
                Err(e) => {
                    problems.push(format!(
                        "collector {name}: shard {shard}: {e}; keeping every segment of shard {shard} until it can be read"
                    ));
                    0
                }
            };
            passed_below = passed_below.min(at);
        }
        for &n in &live {
            let path = segment_path(&dir, n);
            let Ok(file) = fs::File::open(&path) else { continue };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let old_enough = age_s > 0
                && match read_header(&file, len, shard, n) {
                    Ok(Ok(h)) => now_ns.saturating_sub(h.created_ns) >= age_s.saturating_mul(1_000_000_000),
                    _ => false,
                };
            if n < newest && n < passed_below && old_enough {
                match fs::remove_file(&path) {
                    Ok(()) => {
                        deleted += 1;
                        SEGMENTS_DELETED_TOTAL.fetch_add(1, Relaxed);
                        eprintln!("tracker: retention: deleted {} (every collector is past it)", path.display());
                        continue;
                    }
                    Err(e) => problems.push(format!("remove {}: {e}", path.display())),
                }
            }
            bytes += len;
        }
        for name in collectors {
            let cdir: PathBuf = cursor::collector_shard_dir(journal, name, shard);
            let first = live.iter().copied().find(|&n| fs::metadata(segment_path(&dir, n)).is_ok()).unwrap_or(0);
            let _ = cursor::remove_batches_below(&cdir, first);
        }
    }
    JOURNAL_BYTES.store(bytes, Relaxed);
    let over = size_max > 0 && bytes > size_max;
    if over != OVER_LIMIT.swap(over, SeqCst) {
        if over {
            eprintln!(
                "tracker: journal is {bytes} bytes, over journal.size_bytes_max {size_max}: logged endpoints answer 503 {}",
                until_under_limit(age_s)
            );
        } else {
            eprintln!("tracker: journal is {bytes} bytes, under journal.size_bytes_max {size_max} again");
        }
    }
    (deleted, problems)
}
