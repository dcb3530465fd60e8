//! Retention and the journal size limit, off the reactors (one thread, once a second).
//!
//! - A segment is deleted once every configured collector's cursor for its shard is past it
//!   (in a later segment), it is not the shard's newest segment, and it was created more than
//!   `journal.retention_age_s` ago. With no collector, age alone decides. The collectors'
//!   batch logs of deleted segments go with them.
//! - When the segment files on disk (the next one made ahead and any set aside as `.corrupt`
//!   or `.unpublished` included) exceed `journal.size_bytes_max`, [`journal_over_limit`] turns
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
    list_segments, parse_shard_dir_name, read_header, segment_created_ns, segment_path, shard_dir, SegmentFile,
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

/// Bytes of every segment file under `journal` (live, made ahead, set aside): what
/// `journal.size_bytes_max` limits, read at each scrape for the `tracker_journal_disk_bytes`
/// gauge, so it is current whether or not retention runs. A file that vanishes meanwhile
/// counts 0.
pub fn disk_bytes(journal: &Path) -> u64 {
    let mut bytes = 0;
    for shard in shards(journal) {
        let dir = shard_dir(journal, shard);
        for (n, kind) in list_segments(&dir).unwrap_or_default() {
            bytes += fs::metadata(kind.path(&dir, n)).map_or(0, |m| m.len());
        }
    }
    bytes
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
        // (`.seg.tmp`, preallocated whole) and segments set aside (`.seg.corrupt`,
        // `.seg.unpublished`) take disk too, up to a segment per shard beyond the limit if left
        // out. Retention deletes none of them.
        for &(n, kind) in files.iter().filter(|&&(_, k)| k != SegmentFile::Live) {
            bytes += fs::metadata(kind.path(&dir, n)).map_or(0, |m| m.len());
        }
        let live: Vec<u64> = files.into_iter().filter(|&(_, k)| k == SegmentFile::Live).map(|(n, _)| n).collect();
        let newest = live.last().copied().unwrap_or(0);
        // Every collector must be past the segment: its cursor is in a later one. No cursor yet
        // is the start of the journal; one that cannot be read holds everything.
        let mut passed_below = u64::MAX;
        for name in collectors {
            let at = match cursor::read_cursor_stamped(&cursor::collector_shard_dir(journal, name, shard)) {
                // Past every segment: the shard's journal was wiped under this state and is
                // numbered from 1 again; the collector moves the cursor back to its first
                // segment when it next steps this shard (runner.rs). Until then it has passed
                // none of the new segments.
                Ok(Some((p, _))) if !live.is_empty() && p.segment > newest => {
                    problems.push(format!(
                        "collector {name}: shard {shard}: cursor at segment {} is past every segment (newest \
                         {newest}): the journal was reset; keeping every segment of shard {shard} until the \
                         collector has moved it back",
                        p.segment
                    ));
                    0
                }
                // On a segment of its number created at another time than the cursor recorded:
                // reset too, and the new journal numbered up to the cursor's segment again
                // (runner.rs `reset_if_segment_recreated` moves it back to the first segment).
                Ok(Some((p, Some(was))))
                    if live.contains(&p.segment)
                        && segment_created_ns(&dir, shard, p.segment)
                            .is_some_and(|now| cursor::segment_made_since(was, now)) =>
                {
                    problems.push(format!(
                        "collector {name}: shard {shard}: cursor at segment {} recorded its creation at {was} (unix \
                         ns), which is not that segment's: the journal was reset; keeping every segment of shard \
                         {shard} until the collector has moved it back",
                        p.segment
                    ));
                    0
                }
                Ok(p) => p.map_or(0, |(p, _)| p.segment),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EVENT_BYTES};
    use crate::journal::{ShardJournal, PAGE_BYTES};
    use std::os::unix::fs::FileExt;

    /// Sets segment `path`'s `created_ns` to 0 (created long ago) and seals its header again.
    fn backdate(path: &Path) {
        let f = fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut fixed = [0u8; 64];
        f.read_exact_at(&mut fixed, 0).unwrap();
        fixed[32..40].copy_from_slice(&0u64.to_le_bytes());
        let mut schema = vec![0u8; u32::from_le_bytes(fixed[44..48].try_into().unwrap()) as usize];
        f.read_exact_at(&mut schema, 64).unwrap();
        let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        d.update(&fixed[..60]);
        d.update(&schema);
        let crc = d.finalize() as u32;
        fixed[60..64].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&fixed, 0).unwrap();
    }

    /// A journal of shard 0 with segments 1, 2 and 3 (a two-page header + 4 records each, 9
    /// events), the first `backdated` of them created at time 0. The writer is closed.
    fn three_segments(backdated: u64) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let schema = crate::collector::source::tests::schema();
        let (mut j, _) = ShardJournal::open(d.path(), 0, (2 * PAGE_BYTES + 4 * EVENT_BYTES) as u64, &schema).unwrap();
        for s in 1..=9 {
            let mut e = Event::ZERO;
            e.seq = s;
            j.append(&mut e).unwrap();
        }
        drop(j);
        for n in 1..=backdated {
            backdate(&segment_path(&shard_dir(d.path(), 0), n));
        }
        d
    }

    /// Regression: the shard directory was wiped under kept collector state, so a cursor
    /// pointed past every segment of the new journal, and retention took it for a collector
    /// that had passed them all: it deleted the new segments (once old enough) before the
    /// collector, held up on another shard by a destination that is down, had delivered them.
    #[test]
    fn a_cursor_past_every_segment_keeps_the_shards_segments() {
        let d = three_segments(3);
        // The old journal's cursor: segment 7.
        cursor::write_cursor(&cursor::collector_shard_dir(d.path(), "c", 0), cursor::Position { segment: 7, index: 2 })
            .unwrap();
        let (deleted, problems) = pass(d.path(), &["c".to_string()], 1, 0);
        assert_eq!(deleted, 0, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("collector c") && p.contains("past every segment")), "{problems:?}");
        // Once the collector moved its cursor back (runner.rs), retention goes on as usual.
        cursor::write_cursor(&cursor::collector_shard_dir(d.path(), "c", 0), cursor::Position { segment: 3, index: 0 })
            .unwrap();
        assert_eq!(pass(d.path(), &["c".to_string()], 1, 0).0, 2);
    }

    /// Regression: a cursor on a segment the reset journal numbered again (another creation
    /// time than the cursor recorded) let retention delete the new segments below it before the
    /// collector had moved back to deliver them.
    #[test]
    fn a_cursor_on_a_segment_created_since_keeps_the_shards_segments() {
        // Segments 1 and 2 old enough to go; 3 keeps the time it was made at.
        let d = three_segments(2);
        let third = segment_created_ns(&shard_dir(d.path(), 0), 0, 3).unwrap();
        let c = cursor::collector_shard_dir(d.path(), "c", 0);
        // The cursor recorded a segment 3 made earlier than this one: another journal's.
        let backdated = third - 1;
        cursor::write_cursor_stamped(&c, cursor::Position { segment: 3, index: 2 }, Some(backdated)).unwrap();
        let (deleted, problems) = pass(d.path(), &["c".to_string()], 1, 0);
        assert_eq!(deleted, 0, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("collector c") && p.contains("was reset")), "{problems:?}");
        // A later time than the header's is this segment still: the activation time of a segment
        // made ahead, whose header write a power loss undid (the disk kept the time it was made).
        cursor::write_cursor_stamped(&c, cursor::Position { segment: 3, index: 2 }, Some(third + 1)).unwrap();
        assert_eq!(pass(d.path(), &["c".to_string()], 1, 0).0, 2);
    }
}
