//! Reading one shard's journal from a [`Position`] for a collector.
//!
//! Unlike `JournalReader` (for people: it skips a bad record followed by data), this reader
//! **stops** at a bad record of the last segment and waits: the writer may still be copying it.
//! A bad record in a segment the writer has left (a newer one exists) is final: it is skipped
//! and counted, like `JournalReader` does, and a zeroed gap there (a page a power loss left
//! unwritten before pages that were) is passed over to the records after it. The writer's recovery never reuses a position a
//! reader may have passed (`journal/mod.rs`, "Recover"), so a cursor past a record stays valid
//! across restarts of the process and of the machine.
//!
//! A segment written by a newer tracker (a format or schema version above this build's: a
//! rollback) is never skipped: reading it is an error, retried, so the collector waits there
//! for a build that reads it instead of moving its cursor past events nothing would then deliver.
//!
//! A record that cannot be read at all (EIO: a bad sector) is an error, retried, while the writer
//! is on its segment. Once the writer has left it, it is retried for UNREADABLE_SKIP_AFTER and
//! then skipped and counted like a bad record: a sector that stays unreadable would otherwise
//! hold this collector, and the retention behind it, for good.
//!
//! Uses `pread` into a reused buffer, never a map: a segment unlinked by retention mid-read is a
//! short read (an error, retried), never a SIGBUS.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cursor::Position;
use crate::event::{Event, EVENT_BYTES};
use crate::journal::{
    list_segments, read_header, segment_created_ns, segment_path, shard_dir, JournalError, SegmentFile, FORMAT_VERSION,
};
use crate::schema::{Schema, SCHEMA_VERSION};

/// Records read with one `pread` at most.
const READ_RECORDS_MAX: usize = 128;
/// How long a record of a segment the writer has left is retried while it cannot be read before
/// it is skipped. Long enough for a storage path that fails over (multipath, a SAN) to come back,
/// short against the hours a bad sector would otherwise hold the collector.
pub const UNREADABLE_SKIP_AFTER: Duration = Duration::from_secs(60);

/// Why [`ShardSource::read`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tail {
    /// It read `max` records or reached `limit`: there may be more.
    More,
    /// At the end of what the writer has written so far (an all-zero slot, a record being
    /// written, or a bad record of the last segment): look again later.
    Waiting,
    /// Every record of the segment has been read and the writer has moved on to a newer one.
    Finished,
}

struct OpenSegment {
    number: u64,
    path: PathBuf,
    file: File,
    file_bytes: u64,
    header_bytes: u64,
    created_ns: u64,
    schema: Arc<Schema>,
}

/// One shard's segments, read from a position.
pub struct ShardSource {
    shard: u16,
    dir: PathBuf,
    open: Option<OpenSegment>,
    buf: Vec<u8>,
    /// Records skipped in segments the writer had left: bad ones, and ones unreadable for
    /// `unreadable_skip_after`.
    pub corrupt_skipped: u64,
    /// Segments skipped whole because their header failed its checks.
    pub corrupt_segments: u64,
    /// The highest segment reported as skipped, so each is said once.
    reported_segment: u64,
    /// Position of a bad record of the last segment this reader is stopped at, if any.
    pub stalled_at: Option<Position>,
    /// A record of a left segment that could not be read, and when that was first seen.
    unreadable: Option<(Position, Instant)>,
    /// UNREADABLE_SKIP_AFTER, but for tests.
    unreadable_skip_after: Duration,
    /// After a [`ShardSource::read`]: the index of the first slot it did not pass. Every slot
    /// before it was delivered, or passed over for good (a bad record, or a zeroed gap, of a
    /// segment the writer has left), so a caller that took all the records may move there
    /// even when the read delivered nothing.
    pub reached: u32,
}

impl ShardSource {
    pub fn new(journal: &Path, shard: u16) -> ShardSource {
        ShardSource {
            shard,
            dir: shard_dir(journal, shard),
            open: None,
            buf: vec![0; READ_RECORDS_MAX * EVENT_BYTES],
            corrupt_skipped: 0,
            corrupt_segments: 0,
            reported_segment: 0,
            stalled_at: None,
            unreadable: None,
            unreadable_skip_after: UNREADABLE_SKIP_AFTER,
            reached: 0,
        }
    }

    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Published segments with a good name, by number.
    pub fn segments(&self) -> Result<Vec<u64>, JournalError> {
        Ok(list_segments(&self.dir)?.into_iter().filter(|&(_, k)| k == SegmentFile::Live).map(|(n, _)| n).collect())
    }

    /// The first readable position at or after `pos`: `pos` itself when its segment exists,
    /// else record 0 of the next segment; `None` when there is none yet.
    pub fn resolve(&mut self, pos: Position) -> Result<Option<Position>, JournalError> {
        for n in self.segments()? {
            if n < pos.segment {
                continue;
            }
            if self.open_segment(n)? {
                return Ok(Some(if n == pos.segment { pos } else { Position { segment: n, index: 0 } }));
            }
        }
        Ok(None)
    }

    /// The schema of segment `segment` (opened by `resolve` or `read`).
    pub fn schema(&self) -> Option<Arc<Schema>> {
        self.open.as_ref().map(|s| s.schema.clone())
    }

    /// The file of the open segment (to name it in a message).
    pub fn open_path(&self) -> Option<&Path> {
        self.open.as_ref().map(|s| s.path.as_path())
    }

    /// Creation time of the open segment, unix ns.
    pub fn created_ns(&self) -> Option<u64> {
        self.open.as_ref().map(|s| s.created_ns)
    }

    /// Creation time of segment `segment` when it is the open one, unix ns.
    pub fn created_ns_of(&self, segment: u64) -> Option<u64> {
        self.open.as_ref().filter(|s| s.number == segment).map(|s| s.created_ns)
    }

    /// Creation time of segment `segment`, unix ns: the open segment's, else read from its
    /// header on disk (`None` when it is missing or its header is bad). For the stamp of a cursor
    /// this source is not reading from yet: record 0 of the segment after a finished one.
    pub fn created_ns_on_disk(&self, segment: u64) -> Option<u64> {
        self.created_ns_of(segment).or_else(|| segment_created_ns(&self.dir, self.shard, segment))
    }

    /// Opens segment `n` (kept open across calls); false when it is gone or its header is bad.
    fn open_segment(&mut self, n: u64) -> Result<bool, JournalError> {
        if self.open.as_ref().is_some_and(|s| s.number == n) {
            return Ok(true);
        }
        self.open = None;
        let path = segment_path(&self.dir, n);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(JournalError::new("open", &path, e)),
        };
        let file_bytes = file.metadata().map_err(|e| JournalError::new("stat", &path, e))?.len();
        let header =
            read_header(&file, file_bytes, self.shard, n).map_err(|e| JournalError::new("read header", &path, e))?;
        let newer = match &header {
            Err(bad) => bad.newer_format().map(|v| format!("format version {v}")),
            Ok(h) => Schema::newer_version(&h.schema_json).map(|v| format!("schema version {v}")),
        };
        if let Some(what) = newer {
            // A later tracker wrote it and a rollback runs this build. Skipped, its events would
            // be passed for good: the cursor moves on, and the build that reads them never
            // comes back to them. So this is an error, retried, until that build runs.
            return Err(JournalError::invalid(
                "open",
                &path,
                io::ErrorKind::InvalidData,
                format!(
                    "written by a newer tracker ({what}; this build reads format versions up to {FORMAT_VERSION} \
                     and schema version {SCHEMA_VERSION}): nothing from here on is delivered until a build that \
                     reads it runs"
                ),
            ));
        }
        let parsed = match header {
            Ok(h) => Schema::from_json(&h.schema_json).map(|s| (h, s)).map_err(|m| format!("embedded {m}")),
            Err(bad) => Err(bad.to_string()),
        };
        let (header, schema) = match parsed {
            Ok((h, s)) => {
                if let Some(bad) = &h.first_copy_bad {
                    eprintln!(
                        "tracker: collector source: {}: the header's first copy is damaged ({bad}); read from the \
                         second, at offset {}",
                        path.display(),
                        h.read_at()
                    );
                }
                (h, s)
            }
            Err(why) => {
                // Unreadable for good (a header is on disk before the file gets its name): the
                // reader goes on with the next segment, as `journal cat` does, and says which
                // events it did not deliver and why, once.
                if n > self.reported_segment {
                    self.reported_segment = n;
                    self.corrupt_segments += 1;
                    eprintln!(
                        "tracker: collector source: {}: {why}; segment skipped, its events are not delivered",
                        path.display()
                    );
                }
                return Ok(false);
            }
        };
        self.open = Some(OpenSegment {
            number: n,
            path,
            file,
            file_bytes,
            header_bytes: header.header_bytes as u64,
            created_ns: header.created_ns,
            schema: Arc::new(schema),
        });
        Ok(true)
    }

    fn newer_segment_exists(&self, n: u64) -> Result<bool, JournalError> {
        Ok(self.segments()?.iter().any(|&m| m > n))
    }

    /// Appends to `out` the intact records of segment `segment` from record `from`, at most
    /// `max` and never at or past record `limit`, each with its index. The segment must have
    /// been resolved.
    pub fn read(
        &mut self,
        segment: u64,
        from: u32,
        limit: Option<u32>,
        max: usize,
        out: &mut Vec<(u32, Event)>,
    ) -> Result<Tail, JournalError> {
        let mut index = from;
        let tail = self.read_slots(segment, limit, max, out, &mut index);
        self.reached = index;
        tail
    }

    /// `read` from `*index`, which it leaves at the first slot not passed.
    fn read_slots(
        &mut self,
        segment: u64,
        limit: Option<u32>,
        max: usize,
        out: &mut Vec<(u32, Event)>,
        index: &mut u32,
    ) -> Result<Tail, JournalError> {
        if !self.open_segment(segment)? {
            // Removed (retention) or set aside: the caller resolves again.
            return Ok(Tail::Finished);
        }
        // Checked before reading: if a newer segment exists now, everything this one will ever
        // hold was written before it was created (rename + fsync), so this pass sees it all.
        let writer_left = self.newer_segment_exists(segment)?;
        let seg = self.open.as_ref().expect("opened above");
        let slots = (seg.file_bytes.saturating_sub(seg.header_bytes) / EVENT_BYTES as u64).min(u32::MAX as u64) as u32;
        let end = limit.map_or(slots, |l| l.min(slots));
        let mut taken = 0usize;
        // After a read of several records failed: one record per read up to here, which tells
        // the unreadable ones from the readable ones around them.
        let mut one_by_one_until = 0u32;
        let start = *index;
        while *index < end && taken < max {
            let mut n = ((end - *index) as usize).min(READ_RECORDS_MAX).min(max - taken);
            if *index < one_by_one_until {
                n = 1;
            }
            let off = seg.header_bytes + *index as u64 * EVENT_BYTES as u64;
            let bytes = n * EVENT_BYTES;
            let read = crate::journal::read_exact_at(&seg.file, &mut self.buf[..bytes], off);
            if let Err(e) = read {
                if n > 1 {
                    one_by_one_until = *index + n as u32;
                    continue;
                }
                let here = Position { segment, index: *index };
                let since = match self.unreadable {
                    Some((at, since)) if at == here => since,
                    _ => self.unreadable.insert((here, Instant::now())).1,
                };
                if !writer_left || since.elapsed() < self.unreadable_skip_after {
                    if *index > start {
                        // What was passed so far goes out first; the next read starts here.
                        self.stalled_at = None;
                        return Ok(Tail::More);
                    }
                    let detail = if writer_left {
                        format!(
                            "record {} ({bytes} bytes at offset {off}); skipped if still unreadable {} s after the first failure",
                            *index,
                            self.unreadable_skip_after.as_secs()
                        )
                    } else {
                        format!("{bytes} bytes at offset {off}")
                    };
                    return Err(JournalError::with_detail("read", &seg.path, detail, e));
                }
                self.unreadable = None;
                self.corrupt_skipped += 1;
                eprintln!(
                    "tracker: collector source: {}: record {} could not be read for {} s ({e}); skipped (the writer \
                     left this segment)",
                    seg.path.display(),
                    *index,
                    since.elapsed().as_secs()
                );
                *index += 1;
                continue;
            }
            for i in 0..n {
                let slot: &[u8; EVENT_BYTES] =
                    self.buf[i * EVENT_BYTES..(i + 1) * EVENT_BYTES].try_into().expect("one slot");
                let e = Event::from_bytes(slot);
                if e.is_sealed_intact() {
                    out.push((*index, e));
                    *index += 1;
                    taken += 1;
                    continue;
                }
                let zero = crate::journal::all_zero(slot);
                if zero {
                    self.stalled_at = None;
                    if !writer_left {
                        return Ok(Tail::Waiting);
                    }
                    // The writer has left the segment: a zero slot is its end or a gap (a page
                    // a power loss left unwritten before pages that were written). Go on at the
                    // next slot that is not zero, never past `end` (a caller's limit holds
                    // even across a gap); none at all: the segment is finished.
                    let from = seg.header_bytes + (*index as u64 + 1) * EVENT_BYTES as u64;
                    let until = seg.header_bytes + slots as u64 * EVENT_BYTES as u64;
                    let next =
                        crate::journal::next_nonzero_slot(&seg.file, seg.header_bytes, from, until, &mut self.buf);
                    match next {
                        Some(at) => *index = ((at - seg.header_bytes) / EVENT_BYTES as u64).min(end as u64) as u32,
                        None => {
                            *index = end;
                            return Ok(Tail::Finished);
                        }
                    }
                    break;
                }
                if !writer_left {
                    // Being written, or bad in the last segment: wait. Either the writer
                    // completes it, or it leaves the segment (a restart with written data after
                    // a bad record starts a new segment and keeps this one as is), and then the
                    // record is final and skipped below.
                    self.stalled_at = Some(Position { segment, index: *index });
                    return Ok(Tail::Waiting);
                }
                // Final and bad: skip it (re-read once first, in case we raced the writer).
                let mut again = [0u8; EVENT_BYTES];
                let at = seg.header_bytes + *index as u64 * EVENT_BYTES as u64;
                seg.file.read_exact_at(&mut again, at).map_err(|e| JournalError::new("read", &seg.path, e))?;
                let e = Event::from_bytes(&again);
                if e.is_sealed_intact() {
                    out.push((*index, e));
                    taken += 1;
                } else {
                    self.corrupt_skipped += 1;
                    eprintln!(
                        "tracker: collector source: {}: record {} is not intact; skipped (the writer left this segment)",
                        seg.path.display(),
                        *index
                    );
                }
                *index += 1;
                // The rest of the chunk may be stale after a skip; read again from here.
                break;
            }
        }
        self.stalled_at = None;
        if *index >= slots && writer_left {
            return Ok(Tail::Finished);
        }
        if *index >= slots {
            // Full segment: the writer will rotate; wait for the newer one to appear.
            return Ok(Tail::Waiting);
        }
        Ok(Tail::More)
    }

    /// Forgets the open segment (it may have been removed).
    pub fn close(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::journal::{ShardJournal, PAGE_BYTES};
    use crate::schema::{FieldKind, FieldSchema, TypeSchema, SCHEMA_VERSION};

    /// The test schema's header: two copies of one page.
    const HDR: usize = 2 * PAGE_BYTES;

    /// One type, `impression`, with one u64 field `c`: the collectors' tests' journal schema.
    pub(in crate::collector) fn schema() -> Schema {
        Schema {
            version: SCHEMA_VERSION,
            event_bytes: EVENT_BYTES as u32,
            types: vec![TypeSchema {
                id: 0,
                name: "impression".into(),
                fields: vec![FieldSchema { name: "c".into(), kind: FieldKind::U64, slot: 0, offset: 0, max: 0 }],
            }],
        }
    }

    fn ev(seq: u64) -> Event {
        let mut e = Event::ZERO;
        e.seq = seq;
        e.set_slot(0, seq);
        e
    }

    fn seqs(out: &[(u32, Event)]) -> Vec<u64> {
        out.iter().map(|(_, e)| e.seq).collect()
    }

    #[test]
    fn stops_at_a_bad_record_of_the_last_segment_and_skips_one_the_writer_left() {
        let d = tempfile::tempdir().unwrap();
        // Header + 4 records per segment.
        let seg_bytes = (HDR + 4 * EVENT_BYTES) as u64;
        let (mut j, _) = ShardJournal::open(d.path(), 0, seg_bytes, &schema()).unwrap();
        for s in 1..=3 {
            j.append(&mut ev(s)).unwrap();
        }
        // Corrupt record 1 (seq 2) of segment 1, which is still the writer's.
        let path = segment_path(&shard_dir(d.path(), 0), 1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], (HDR + EVENT_BYTES + 100) as u64).unwrap();

        let mut src = ShardSource::new(d.path(), 0);
        let p = src.resolve(Position::default()).unwrap().unwrap();
        assert_eq!(p, Position { segment: 1, index: 0 });
        let mut out = Vec::new();
        assert_eq!(src.read(1, 0, None, 100, &mut out).unwrap(), Tail::Waiting);
        assert_eq!(seqs(&out), [1], "never past the bad record of the last segment");
        assert_eq!(src.stalled_at, Some(Position { segment: 1, index: 1 }));

        // The writer moves on to segment 2: the bad record is final, skipped and counted.
        for s in 4..=6 {
            j.append(&mut ev(s)).unwrap();
        }
        out.clear();
        assert_eq!(src.read(1, 1, None, 100, &mut out).unwrap(), Tail::Finished);
        assert_eq!(seqs(&out), [3, 4]);
        assert_eq!(src.corrupt_skipped, 1);
        out.clear();
        let p = src.resolve(Position { segment: 2, index: 0 }).unwrap().unwrap();
        assert_eq!(src.read(p.segment, p.index, Some(1), 100, &mut out).unwrap(), Tail::More);
        assert_eq!(seqs(&out), [5], "limit is exclusive");
    }

    #[test]
    fn a_zeroed_gap_in_a_segment_the_writer_left_is_passed_over() {
        let d = tempfile::tempdir().unwrap();
        // Header + 4096 records (2 MiB): room for a hole past the zero-filled window.
        let seg_bytes = (HDR + 4096 * EVENT_BYTES) as u64;
        let (mut j, _) = ShardJournal::open(d.path(), 0, seg_bytes, &schema()).unwrap();
        for s in 1..=6 {
            j.append(&mut ev(s)).unwrap();
        }
        drop(j);
        // A power loss kept record 2 (seq 3) off the disk, and a record far out in the tail
        // (index 3000, in a hole) was written back where the writer never got.
        let path = segment_path(&shard_dir(d.path(), 0), 1);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0; EVENT_BYTES], (HDR + 2 * EVENT_BYTES) as u64).unwrap();
        let mut far = ev(99);
        far.seal();
        f.write_all_at(far.as_bytes(), (HDR + 3000 * EVENT_BYTES) as u64).unwrap();

        let mut src = ShardSource::new(d.path(), 0);
        let mut out = Vec::new();
        // The writer's last segment: the gap is where it stops, for now.
        assert_eq!(src.read(1, 0, None, 100, &mut out).unwrap(), Tail::Waiting);
        assert_eq!(seqs(&out), [1, 2]);
        // A restart leaves the segment as is (written data after a missing record) and starts
        // segment 2: the records after the gap are final and delivered, with their indexes.
        let (mut j, report) = ShardJournal::open(d.path(), 0, seg_bytes, &schema()).unwrap();
        assert_eq!((report.segment, report.records), (2, 6));
        j.append(&mut ev(7)).unwrap();
        out.clear();
        assert_eq!(src.read(1, 2, None, 100, &mut out).unwrap(), Tail::Finished);
        assert_eq!(out.iter().map(|(i, e)| (*i, e.seq)).collect::<Vec<_>>(), [(3, 4), (4, 5), (5, 6), (3000, 99)]);
        assert_eq!(src.corrupt_skipped, 0);
        out.clear();
        assert_eq!(src.read(2, 0, None, 100, &mut out).unwrap(), Tail::Waiting);
        assert_eq!(seqs(&out), [7]);
    }

    /// A rollback: segment 2 was written by a later tracker, segment 3 by this build after it.
    /// Reading stops at segment 2 with an error that says why, every time it is asked, and
    /// never resolves past it to segment 3: skipped, its events would be passed for good.
    #[test]
    fn a_segment_of_a_newer_version_is_an_error_never_skipped() {
        for newer_format in [false, true] {
            let d = tempfile::tempdir().unwrap();
            let seg_bytes = (HDR + 4 * EVENT_BYTES) as u64;
            let (mut j, _) = ShardJournal::open(d.path(), 0, seg_bytes, &schema()).unwrap();
            j.append(&mut ev(1)).unwrap();
            drop(j);
            // The later build: a new schema version starts segment 2.
            let later = Schema { version: SCHEMA_VERSION + 1, ..schema() };
            let (mut j, r) = ShardJournal::open(d.path(), 0, seg_bytes, &later).unwrap();
            assert_eq!(r.segment, 2);
            j.append(&mut ev(2)).unwrap();
            drop(j);
            let seg2 = segment_path(&shard_dir(d.path(), 0), 2);
            if newer_format {
                // Its format version is newer instead (the schema's is then never reached).
                let f = std::fs::OpenOptions::new().write(true).open(&seg2).unwrap();
                for copy in [0, PAGE_BYTES as u64] {
                    f.write_all_at(&(FORMAT_VERSION + 1).to_le_bytes(), copy + 8).unwrap();
                }
            }
            // The rolled-back build: segment 3.
            let (mut j, r) = ShardJournal::open(d.path(), 0, seg_bytes, &schema()).unwrap();
            assert_eq!(r.segment, 3);
            j.append(&mut ev(3)).unwrap();

            let mut src = ShardSource::new(d.path(), 0);
            let mut out = Vec::new();
            assert_eq!(src.resolve(Position::default()).unwrap(), Some(Position { segment: 1, index: 0 }));
            assert_eq!(src.read(1, 0, None, 100, &mut out).unwrap(), Tail::Finished);
            assert_eq!(seqs(&out), [1]);
            let what = if newer_format {
                format!("format version {}", FORMAT_VERSION + 1)
            } else {
                format!("schema version {}", SCHEMA_VERSION + 1)
            };
            for _ in 0..2 {
                let e = src.resolve(Position { segment: 2, index: 0 }).unwrap_err().to_string();
                assert!(e.contains(&seg2.display().to_string()), "{e}");
                assert!(e.contains(&format!("written by a newer tracker ({what};")), "{e}");
                assert!(e.contains("nothing from here on is delivered until a build that reads it runs"), "{e}");
            }
            out.clear();
            assert!(src.read(2, 0, None, 100, &mut out).is_err() && out.is_empty());
            assert_eq!(src.corrupt_segments, 0, "not counted as skipped: it is not");
        }
    }

    /// A page of records that cannot be read (EIO, a bad sector): retried while the writer is on
    /// the segment, and after it left until `unreadable_skip_after`; then skipped and counted,
    /// and only that page's records: the ones around it in the same read are delivered.
    #[test]
    fn an_unreadable_page_of_a_segment_the_writer_left_is_skipped_after_its_retry_time() {
        let d = tempfile::tempdir().unwrap();
        let per_page = (PAGE_BYTES / EVENT_BYTES) as u64;
        // Header + 4 pages of records.
        let seg_bytes = (HDR + 4 * PAGE_BYTES) as u64;
        let (mut j, _) = ShardJournal::open(d.path(), 0, seg_bytes, &schema()).unwrap();
        let in_segment = 4 * per_page;
        for s in 1..=in_segment {
            j.append(&mut ev(s)).unwrap();
        }
        let mut src = ShardSource::new(d.path(), 0);
        let mut out = Vec::new();
        // The records' second page is unreadable.
        let bad = (HDR + PAGE_BYTES) as u64..(HDR + 2 * PAGE_BYTES) as u64;
        let _unreadable = crate::journal::fail_reads(&segment_path(&shard_dir(d.path(), 0), 1), bad);
        assert!(src.resolve(Position::default()).unwrap().is_some());
        let e = src.read(1, per_page as u32, None, 1000, &mut out).unwrap_err().to_string();
        assert!(e.contains("00000000000000000001.seg") && e.contains("Input/output error"), "{e}");
        assert!(out.is_empty() && src.corrupt_skipped == 0, "the writer is on the segment: nothing passed");

        // The records before the page are delivered, up to it.
        assert_eq!(src.read(1, 0, None, 1000, &mut out).unwrap(), Tail::More);
        assert_eq!(seqs(&out), (1..=per_page).collect::<Vec<_>>());
        // The writer leaves the segment: the page is an error (retried) until its time is up.
        j.append(&mut ev(in_segment + 1)).unwrap();
        out.clear();
        let e = src.read(1, per_page as u32, None, 1000, &mut out).unwrap_err().to_string();
        assert!(e.contains(&format!("record {per_page} ")) && e.contains("skipped if still unreadable 60 s"), "{e}");
        assert!(out.is_empty() && src.corrupt_skipped == 0);

        out.clear();
        src.unreadable_skip_after = Duration::ZERO;
        assert_eq!(src.read(1, per_page as u32, None, 1000, &mut out).unwrap(), Tail::Finished);
        assert_eq!(seqs(&out), (2 * per_page + 1..=in_segment).collect::<Vec<_>>());
        assert_eq!(src.corrupt_skipped, per_page, "the page's records, counted");
    }
}
