//! Reading segments back: every shard under a root (or one shard), segments in number order,
//! records in order, for `tracker journal cat [--follow]` (the collectors have their own reader,
//! `collector/source.rs`, which resumes from a cursor).
//!
//! The reader uses `pread` into a reused buffer, not a map: a segment that retention unlinks or
//! someone truncates while it is read gives a short read (an error), never a SIGBUS, and the
//! reader needs no `unsafe`.
//!
//! Where a shard's records end, at each poll:
//! - an all-zero slot: nothing more yet (the writer preallocates, so unwritten slots are zero);
//! - a slot that is not an intact record and is followed only by zeros: the writer may be in
//!   the middle of copying it, so it is retried at the next poll — unless the shard's
//!   `writer.state` says its writer stopped cleanly (nothing is being written, and the next
//!   writer will leave that segment as it is): then it is corrupt, counted and reported like
//!   the next case (see `skip_damage_after_clean_stop` for why the state can be trusted while
//!   a writer may be starting);
//! - a slot that is not an intact record but is followed by written data (the next slot, or a
//!   newer segment): corrupt. It is re-read once (the reader may have raced the writer's
//!   stores), then skipped, counted in [`JournalReader::corrupt_records`] and reported in
//!   [`JournalReader::take_warnings`]. The writer's recovery agrees: when written data follows
//!   the first bad slot of its last segment (or the machine restarted under a running writer),
//!   it leaves that segment as it is and starts the next one, so what a reader delivered past
//!   the bad slot is neither dropped nor overwritten (and a collector's cursor past it never
//!   skips new events). Only a bad slot with nothing but zeros after it, which every reader
//!   waits at, is zeroed and written over.
//! - in a segment the writer has left, an all-zero slot is a gap when data follows (a power
//!   loss can leave a page unwritten before pages that were): the reader goes on past it, over
//!   the file's holes (SEEK_DATA), and delivers the records after it.
//!
//! A slot the disk cannot read (EIO) is read again alone when the 64 KiB read around it fails,
//! so only the bad sector's slots are lost. In a segment the writer has left it is skipped,
//! counted in [`JournalReader::unreadable_records`] and named in a warning; where the writer
//! may still be appending it is an error for that shard only, which the next poll retries from
//! the same slot (the other shards are read meanwhile).
//!
//! A segment deleted (retention) after the reader has started on its shard but before it got to
//! it is named in a warning when the reader passes its number; segments deleted before the first
//! one the reader opens are simply the journal's start.
//!
//! A segment whose header's first copy fails its checks is read through the second, with a
//! warning naming the file. One whose copies both fail is skipped with a warning naming the
//! file (and counted in [`JournalReader::corrupt_segments`]), so one bad file does not hide the
//! segments after it. Files named `.seg.corrupt` and `.seg.unpublished` (set aside by the writer, with or
//! without a copy number such as `.1`) and `.seg.tmp` (being created) are never read.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::error::JournalError;
use super::pread;
use super::segment::{
    all_zero, list_segments, next_nonzero_slot, parse_shard_dir_name, read_header, segment_path, shard_dir, SegmentFile,
};
use super::writer_state;
use crate::event::{Event, EVENT_BYTES};
use crate::schema::Schema;

/// Bytes read from a segment per `pread`.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Warnings kept between two [`JournalReader::take_warnings`]; more are only counted.
pub const WARNINGS_KEPT_MAX: usize = 256;

const _: () = assert!(READ_CHUNK_BYTES.is_multiple_of(EVENT_BYTES) && READ_CHUNK_BYTES >= EVENT_BYTES);

/// Reads the journal under a root directory; see the module doc for where records end.
pub struct JournalReader {
    root: PathBuf,
    /// `Some` when opened for one shard.
    only_shard: Option<u16>,
    shards: BTreeMap<u16, ShardCursor>,
    stats: Stats,
    /// Each shard whose last poll failed, with what it said.
    failing: BTreeMap<u16, String>,
}

#[derive(Default)]
struct Stats {
    corrupt_records: u64,
    unreadable_records: u64,
    corrupt_segments: u64,
    warnings: Vec<JournalError>,
    warnings_dropped: u64,
}

impl Stats {
    fn warn(&mut self, e: JournalError) {
        if self.warnings.len() < WARNINGS_KEPT_MAX {
            self.warnings.push(e);
        } else {
            self.warnings_dropped += 1;
        }
    }
}

/// Where the reader is in one shard.
struct ShardCursor {
    shard: u16,
    dir: PathBuf,
    /// The next segment to open has at least this number.
    next_number: u64,
    /// A segment of this shard was opened (or passed as corrupt): from then on a number
    /// missing before the next one found is a segment deleted before it was read, not the
    /// start of the journal.
    seen_any: bool,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    number: u64,
    path: PathBuf,
    file: File,
    file_bytes: u64,
    schema: Schema,
    /// `header_bytes`: where the records start.
    first_record_off: u64,
    /// Offset of the next record to deliver.
    off: u64,
    /// `chunk[..chunk_len]` holds the file's bytes from `chunk_start`.
    chunk: Vec<u8>,
    chunk_start: u64,
    chunk_len: usize,
    /// Slots before this offset are read one per `pread` (a chunk over them failed).
    one_by_one_until: u64,
}

/// Why a scan of a segment stopped.
enum Stop {
    /// Every slot of the segment has been read.
    End,
    /// At a zero slot: nothing more yet.
    Waiting,
    /// At a bad slot with nothing but zeros after it: a record that may still be being written.
    WaitingOnBad,
    /// At a slot that cannot be read (EIO) while the writer may still be on the segment: an
    /// error, retried, unless the writer has left it (then the last pass skips the slot).
    Unreadable(JournalError),
}

impl JournalReader {
    /// Reads every `shard-NNN` directory under `root`, including ones created later.
    pub fn open(root: &Path) -> Result<JournalReader, JournalError> {
        JournalReader::open_inner(root, None)
    }

    /// Reads only `root/shard-NNN` (which may not exist yet).
    pub fn open_shard(root: &Path, shard: u16) -> Result<JournalReader, JournalError> {
        JournalReader::open_inner(root, Some(shard))
    }

    fn open_inner(root: &Path, only_shard: Option<u16>) -> Result<JournalReader, JournalError> {
        let meta = fs::metadata(root).map_err(|e| JournalError::new("open", root, e))?;
        if !meta.is_dir() {
            return Err(JournalError::invalid(
                "open",
                root,
                io::ErrorKind::InvalidInput,
                "not a directory; give the journal root (journal.dir), which holds shard-NNN/".into(),
            ));
        }
        // The segments are in root/shard-NNN/: given one of those, the reader would look for
        // shard directories inside it, find none, and report an empty journal.
        let shard_dir_given = root.file_name().and_then(|n| n.to_str()).and_then(parse_shard_dir_name).is_some();
        if only_shard.is_none() && shard_dir_given {
            let parent = root.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            return Err(JournalError::invalid(
                "open",
                root,
                io::ErrorKind::InvalidInput,
                format!(
                    "is a shard directory; give the journal root {} (journal.dir), which holds shard-NNN/",
                    parent.display()
                ),
            ));
        }
        Ok(JournalReader {
            root: root.to_path_buf(),
            only_shard,
            shards: BTreeMap::new(),
            stats: Stats::default(),
            failing: BTreeMap::new(),
        })
    }

    /// Delivers the records that became available since the last call — shard by shard in
    /// shard order, each shard's in order — calling `f` with the schema of the record's segment.
    /// Returns how many. Picks up new segments and new shard directories, so following the
    /// journal is calling this in a loop with a short sleep.
    ///
    /// A shard whose read fails (EIO where its writer still is, a file it cannot open) does not
    /// hold up the others: every shard is polled, and the first failure is returned after (any
    /// further one becomes a warning). The failed shard tries the same place again at the next
    /// call, so nothing of it is skipped.
    pub fn poll(&mut self, f: &mut dyn FnMut(&Schema, &Event)) -> Result<u64, JournalError> {
        self.discover_shards()?;
        let mut delivered = 0;
        let mut failed = None;
        for (&shard, cursor) in self.shards.iter_mut() {
            match cursor.poll(&mut self.stats, f) {
                Ok(n) => {
                    delivered += n;
                    self.failing.remove(&shard);
                }
                Err(e) => {
                    // A follower polls every second: a shard failing the same way is said once.
                    let said = e.to_string();
                    let again = self.failing.insert(shard, said.clone()).is_some_and(|before| before == said);
                    match failed {
                        None => failed = Some(e),
                        Some(_) if !again => self.stats.warn(e),
                        Some(_) => {}
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(delivered),
        }
    }

    /// Shard directories found so far.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Records skipped because they were corrupt and followed by more data.
    pub fn corrupt_records(&self) -> u64 {
        self.stats.corrupt_records
    }

    /// Slots skipped because they could not be read (EIO) in a segment the writer had left.
    pub fn unreadable_records(&self) -> u64 {
        self.stats.unreadable_records
    }

    /// Segments skipped because their header failed its checks.
    pub fn corrupt_segments(&self) -> u64 {
        self.stats.corrupt_segments
    }

    /// The warnings (each naming the file and what was wrong) since the last call, at most
    /// [`WARNINGS_KEPT_MAX`]; the second value counts the ones that did not fit.
    pub fn take_warnings(&mut self) -> (Vec<JournalError>, u64) {
        let dropped = std::mem::take(&mut self.stats.warnings_dropped);
        (std::mem::take(&mut self.stats.warnings), dropped)
    }

    fn discover_shards(&mut self) -> Result<(), JournalError> {
        if let Some(shard) = self.only_shard {
            if !self.shards.contains_key(&shard) {
                self.shards.insert(shard, ShardCursor::new(&self.root, shard));
            }
            return Ok(());
        }
        let entries = fs::read_dir(&self.root).map_err(|e| JournalError::new("read dir", &self.root, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| JournalError::new("read dir", &self.root, e))?;
            let Some(shard) = entry.file_name().to_str().and_then(parse_shard_dir_name) else {
                continue;
            };
            if !self.shards.contains_key(&shard) {
                self.shards.insert(shard, ShardCursor::new(&self.root, shard));
            }
        }
        Ok(())
    }
}

impl ShardCursor {
    fn new(root: &Path, shard: u16) -> ShardCursor {
        ShardCursor { shard, dir: shard_dir(root, shard), next_number: 1, seen_any: false, open: None }
    }

    fn poll(&mut self, stats: &mut Stats, f: &mut dyn FnMut(&Schema, &Event)) -> Result<u64, JournalError> {
        let mut delivered = 0;
        loop {
            if self.open.is_none() && !self.open_next(stats)? {
                return Ok(delivered);
            }
            let seg = self.open.as_mut().expect("opened above");
            let stop = seg.scan(false, stats, f, &mut delivered)?;
            if !matches!(stop, Stop::End) {
                if !self.newer_segment_exists()? {
                    let seg = self.open.as_mut().expect("still open");
                    match stop {
                        Stop::WaitingOnBad if seg.skip_damage_after_clean_stop(&self.dir, stats)? => continue,
                        Stop::Unreadable(e) => return Err(e),
                        _ => return Ok(delivered),
                    }
                }
                // The writer left this segment for good: everything it wrote here was written
                // before the newer segment was created (rename + fsync), so one more pass sees
                // it all, and a bad record there is no longer "being written".
                let seg = self.open.as_mut().expect("still open");
                seg.scan(true, stats, f, &mut delivered)?;
            }
            let seg = self.open.take().expect("still open");
            self.next_number = seg.number + 1;
        }
    }

    /// Opens the lowest segment numbered `next_number` or more whose header is good; false when
    /// there is none (yet). `next_number` passes a segment only once it is opened, gone or
    /// skipped as corrupt: after an I/O error the next poll tries the same segment again.
    fn open_next(&mut self, stats: &mut Stats) -> Result<bool, JournalError> {
        // The first number not yet delivered or passed: a segment found above it means the
        // ones between were deleted (retention) before this reader got to them.
        let mut expected = self.next_number;
        for (number, kind) in list_segments(&self.dir)? {
            if kind != SegmentFile::Live || number < self.next_number {
                continue;
            }
            let path = segment_path(&self.dir, number);
            let file = match File::open(&path) {
                Ok(file) => file,
                // Removed by retention between the listing and now.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.next_number = number + 1;
                    continue;
                }
                Err(e) => return Err(JournalError::new("open", &path, e)),
            };
            let file_bytes = file.metadata().map_err(|e| JournalError::new("stat", &path, e))?.len();
            let header = read_header(&file, file_bytes, self.shard, number)
                .map_err(|e| JournalError::new("read header", &path, e))?;
            if self.seen_any && number > expected {
                let (which, whose) = match number - expected {
                    1 => (format!("segment {expected} was"), "its"),
                    _ => (format!("segments {expected}..={} were", number - 1), "their"),
                };
                stats.warn(JournalError::invalid(
                    "read",
                    &self.dir,
                    io::ErrorKind::NotFound,
                    format!(
                        "{which} deleted before it was read (by retention, or set aside as .seg.corrupt or \
                         .seg.unpublished), or lost with the machine before it reached the disk: \
                         {whose} events are not in this output"
                    ),
                ));
            }
            self.seen_any = true;
            expected = number + 1;
            // Read, good or bad: a corrupt header stays corrupt, so it is named once and passed.
            self.next_number = number + 1;
            let header = match header {
                Ok(h) => {
                    if let Some(bad) = &h.first_copy_bad {
                        stats.warn(JournalError::invalid(
                            "read header",
                            &path,
                            io::ErrorKind::InvalidData,
                            format!("first copy damaged ({bad}); read from the second, at offset {}", h.read_at()),
                        ));
                    }
                    h
                }
                Err(bad) => {
                    stats.corrupt_segments += 1;
                    stats.warn(JournalError::invalid(
                        "read header",
                        &path,
                        io::ErrorKind::InvalidData,
                        format!("{bad}; segment skipped"),
                    ));
                    continue;
                }
            };
            let schema = match Schema::from_json(&header.schema_json) {
                Ok(s) => s,
                Err(msg) => {
                    stats.corrupt_segments += 1;
                    stats.warn(JournalError::invalid(
                        "read header",
                        &path,
                        io::ErrorKind::InvalidData,
                        format!("embedded {msg}; segment skipped"),
                    ));
                    continue;
                }
            };
            self.open = Some(OpenSegment {
                number,
                path,
                file,
                file_bytes,
                schema,
                first_record_off: header.header_bytes as u64,
                off: header.header_bytes as u64,
                chunk: vec![0; READ_CHUNK_BYTES],
                chunk_start: 0,
                chunk_len: 0,
                one_by_one_until: 0,
            });
            return Ok(true);
        }
        Ok(false)
    }

    fn newer_segment_exists(&self) -> Result<bool, JournalError> {
        let current = self.open.as_ref().map_or(0, |s| s.number);
        Ok(list_segments(&self.dir)?.iter().any(|&(n, kind)| kind == SegmentFile::Live && n > current))
    }
}

impl OpenSegment {
    /// Delivers the records from `off` on. `last_pass`: the writer has moved to a newer
    /// segment, so a zero slot is the end and a bad record is corrupt even at the tail.
    fn scan(
        &mut self,
        last_pass: bool,
        stats: &mut Stats,
        f: &mut dyn FnMut(&Schema, &Event),
        delivered: &mut u64,
    ) -> Result<Stop, JournalError> {
        // Bytes read at an earlier poll may have been written since.
        self.chunk_len = 0;
        loop {
            if self.off + EVENT_BYTES as u64 > self.file_bytes {
                return Ok(Stop::End);
            }
            let slot = match self.slot(self.off) {
                Ok(slot) => slot,
                Err(e) if last_pass => {
                    self.count_unreadable(stats, e);
                    self.off += EVENT_BYTES as u64;
                    continue;
                }
                Err(e) => return Ok(Stop::Unreadable(e)),
            };
            if all_zero(&slot) {
                if !last_pass {
                    return Ok(Stop::Waiting);
                }
                // The writer has left the segment: a zero slot is its end or a gap (a page a
                // power loss left unwritten before pages that were written); go on to the next
                // slot that may hold data.
                let from = self.off + EVENT_BYTES as u64;
                // The chunk is the scratch buffer: what it held is no longer valid.
                self.chunk_len = 0;
                match next_nonzero_slot(&self.file, self.first_record_off, from, self.file_bytes, &mut self.chunk) {
                    Some(off) => {
                        self.off = off;
                        continue;
                    }
                    None => return Ok(Stop::End),
                }
            }
            let e = Event::from_bytes(&slot);
            if e.is_sealed_intact() {
                f(&self.schema, &e);
                *delivered += 1;
                self.off += EVENT_BYTES as u64;
                continue;
            }
            let next = self.off + EVENT_BYTES as u64;
            // A next slot that cannot be read says nothing: wait, as for zeros.
            let followed = last_pass
                || (next + EVENT_BYTES as u64 <= self.file_bytes && self.slot(next).is_ok_and(|s| !all_zero(&s)));
            if !followed {
                return Ok(Stop::WaitingOnBad);
            }
            // Re-read: on a weakly ordered CPU the next slot's bytes can become visible before
            // this one's are complete.
            self.chunk_len = 0;
            let again = match self.slot(self.off) {
                Ok(slot) => Event::from_bytes(&slot),
                Err(e) if last_pass => {
                    self.count_unreadable(stats, e);
                    self.off += EVENT_BYTES as u64;
                    continue;
                }
                Err(e) => return Ok(Stop::Unreadable(e)),
            };
            if again.is_sealed_intact() {
                f(&self.schema, &again);
                *delivered += 1;
            } else {
                self.count_damaged(stats, &again, "more data follows");
            }
            self.off += EVENT_BYTES as u64;
        }
    }

    /// Called where `scan` waits on a bad slot in the newest segment: when the slot is still bad
    /// and the shard's writer has stopped cleanly, it is damage, not a record
    /// being copied: counted, named in a warning and passed (true). Otherwise nothing changes.
    ///
    /// `writer.state` says `clean` only after a writer's last sync, and a writer records
    /// `running` (durably) before its first append, so the order of the reads matters: the slot
    /// was bad, then the state said `clean`, then the slot is read again and has the same bytes.
    /// A writer copying that slot at the first read had not stopped, so a `clean` after it means
    /// it stopped since, having finished the copy: the second read differs. A writer that starts
    /// after the state read finds the slot bad after a clean stop and leaves the segment as it is
    /// (`recover_records`), so it never writes there. What this cannot tell from damage is a
    /// killed writer's cut record that a second writer zeroed, and a third, started after the
    /// state read, is copying again with the very same bytes so far: two restarts within one
    /// read, and a record with another id and time.
    fn skip_damage_after_clean_stop(&mut self, dir: &Path, stats: &mut Stats) -> Result<bool, JournalError> {
        if self.off + EVENT_BYTES as u64 > self.file_bytes {
            return Ok(false);
        }
        self.chunk_len = 0;
        let seen = self.slot(self.off)?;
        if all_zero(&seen) || Event::from_bytes(&seen).is_sealed_intact() || !writer_state::stopped_clean(dir) {
            return Ok(false);
        }
        self.chunk_len = 0;
        let again = self.slot(self.off)?;
        if again != seen {
            return Ok(false);
        }
        let why = format!(
            "its writer stopped cleanly ({}), so it is damage, not a record being written",
            dir.join(writer_state::STATE_FILE).display()
        );
        self.count_damaged(stats, &Event::from_bytes(&again), &why);
        self.off += EVENT_BYTES as u64;
        Ok(true)
    }

    /// Counts the slot at `off`, which holds `e`, as a damaged record and warns naming the
    /// segment, the slot and `why` it is taken for damage; the caller passes it.
    fn count_damaged(&self, stats: &mut Stats, e: &Event, why: &str) {
        stats.corrupt_records += 1;
        let slot_index = (self.off - self.first_record_off) / EVENT_BYTES as u64;
        stats.warn(JournalError::invalid(
            "read record",
            &self.path,
            io::ErrorKind::InvalidData,
            format!(
                "record {slot_index} at offset {} is not an intact record (magic {:#06x}, crc {:#010x} stored, \
                 {:#010x} computed) and {why}; skipped",
                self.off,
                e.magic,
                e.crc,
                e.compute_crc()
            ),
        ));
    }

    /// Counts a slot that `e` says cannot be read, in a segment the writer has left, and warns;
    /// the caller passes it. Retrying would hold this shard's output for good
    /// behind a sector that stays bad.
    fn count_unreadable(&self, stats: &mut Stats, e: JournalError) {
        stats.unreadable_records += 1;
        stats.warn(e.noted("skipped: its writer has left the segment"));
    }

    /// The 512 bytes at `off`, from the chunk or a fresh `pread`. After a chunk that could not
    /// be read, the slots it spans are read one at a time, so a bad sector costs only its own
    /// slots (an error each) and the ones around it are delivered.
    fn slot(&mut self, off: u64) -> Result<[u8; EVENT_BYTES], JournalError> {
        let in_chunk = off >= self.chunk_start && off + EVENT_BYTES as u64 <= self.chunk_start + self.chunk_len as u64;
        if !in_chunk {
            let n = (self.file_bytes - off).min(READ_CHUNK_BYTES as u64) as usize;
            let mut n = n - n % EVENT_BYTES;
            if off < self.one_by_one_until {
                n = EVENT_BYTES;
            }
            if let Err(e) = pread::read_exact_at(&self.file, &mut self.chunk[..n], off) {
                self.chunk_len = 0;
                if n > EVENT_BYTES {
                    self.one_by_one_until = off + n as u64;
                    return self.slot(off);
                }
                let detail = format!("record {} at offset {off}", (off - self.first_record_off) / EVENT_BYTES as u64);
                return Err(JournalError::with_detail("read", &self.path, detail, e));
            }
            self.chunk_start = off;
            self.chunk_len = n;
        }
        let at = (off - self.chunk_start) as usize;
        Ok(self.chunk[at..at + EVENT_BYTES].try_into().expect("one slot"))
    }
}
