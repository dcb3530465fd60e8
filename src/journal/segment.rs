//! Segment files: the header layout with its constants, the writer ([`ShardJournal`]) and
//! recovery of the last segment on open.
//!
//! Header, at offset 0 of every segment and again, byte for byte, at `header_bytes / 2` (the
//! copy; little-endian, offsets in bytes from the start of either):
//!
//! | offset | size | field          | value / check                                                |
//! |-------:|-----:|----------------|--------------------------------------------------------------|
//! |      0 |    8 | `magic`        | [`SEGMENT_MAGIC`] `b"TRKJRNL1"`                              |
//! |      8 |    4 | `version`      | [`FORMAT_VERSION`] (2), or 1 ([`FORMAT_VERSION_ONE_HEADER`]) |
//! |     12 |    4 | `header_bytes` | first record's offset: two copies of [`PAGE_BYTES`] × k each |
//! |     16 |    2 | `shard`        | equals the `shard-NNN` directory                             |
//! |     18 |    6 | reserved       | zero                                                         |
//! |     24 |    8 | `segment`      | segment number, equals the file name                         |
//! |     32 |    8 | `created_ns`   | unix nanoseconds when the segment was created                |
//! |     40 |    4 | `event_bytes`  | [`EVENT_BYTES`] (512); any other value is rejected           |
//! |     44 |    4 | `schema_bytes` | length of the schema JSON, ≤ [`SCHEMA_BYTES_MAX`]            |
//! |     48 |   12 | reserved       | zero                                                         |
//! |     60 |    4 | `crc`          | CRC32C of bytes 0..60, then of the schema JSON               |
//! |     64 |    n | schema JSON    | [`Schema::to_json`] of the schema the records were made with |
//! | 64 + n |      | zero           | up to the end of the copy's pages                            |
//!
//! Why two copies: every record carries its own CRC, but the schema that decodes them is in the
//! header, so one bad byte there would make the whole segment (~130 k events at 64 MiB)
//! unreadable. The copy starts on its own page, so damage to one page (a bad sector, a page a
//! power loss left unwritten) leaves the other. A reader whose header at 0 fails its checks, or
//! cannot be read at all, looks for the copy at each page up to the largest header, takes the
//! first one that passes every check and whose own `header_bytes` puts it at exactly half, and
//! says so. At start the writer rewrites either copy of the last segment's header that is not as
//! it should be (a damaged first copy from the second; a second that differs from a good first,
//! from the first). A page at or after `header_bytes` starts with a record (CRC, then
//! `RECORD_MAGIC`), which never reads as a header. Version 1 segments (one copy,
//! `header_bytes` = its pages) are read and appended to as they are.
//!
//! Every later format keeps `magic`, `version` and `header_bytes` where they are and the copy at
//! `header_bytes / 2`: that is how this build tells a segment a newer tracker wrote (both copies
//! carry the magic and the same version above [`FORMAT_VERSION`]: a rollback, left in place and
//! never skipped) from a damaged one (set aside or skipped).
//!
//! Records follow from `header_bytes`: raw [`Event`] bytes back to back, each sealed (magic +
//! CRC32C). The file is preallocated to `segment_bytes`; while the writer is on the segment its
//! first all-zero slot is the end of the written records (a segment it has left may have a
//! zeroed gap before more records: see `journal/mod.rs`).

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::ControlFlow;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{MmapMut, MmapOptions};

use super::ahead::{Ahead, AheadSpec};
use super::background_sync::{timed, Done, SyncJob, Syncer};
use super::error::JournalError;
use super::pread;
use super::writer_state;
use crate::event::{Event, EVENT_BYTES};
use crate::schema::Schema;

/// First 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TRKJRNL1";
/// On-disk format version; bump on any change to the header or record layout.
pub const FORMAT_VERSION: u32 = 2;
/// The format before the header copy: the same header and records, the header once. Still read,
/// and a last segment in it is still appended to.
pub const FORMAT_VERSION_ONE_HEADER: u32 = 1;
/// Alignment unit of the header: records start at a multiple of it, so no record straddles a
/// page and each record sits at a 64-byte aligned address in the map.
pub const PAGE_BYTES: usize = 4096;
/// Fixed part of the header, before the schema JSON.
pub const HEADER_FIXED_BYTES: usize = 64;
/// Largest embedded schema. Costs header space in every segment (rounded up to pages).
pub const SCHEMA_BYTES_MAX: usize = 1 << 20;
/// Segment file name: 20 digits (any u64 below u64::MAX) + this suffix.
pub const SEGMENT_SUFFIX: &str = ".seg";
/// Appended to a segment whose header failed its checks when the writer set it aside; when
/// that name is taken, `.corrupt.K` with the first free K ≥ 1 (`set_aside`).
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// A segment being created: it gets its final name only once its header is on disk.
pub const TMP_SUFFIX: &str = ".tmp";
/// Appended (instead of [`TMP_SUFFIX`]) to a `.seg.tmp` that holds records but that the writer
/// could not put into place at open: its number is taken or is not the next one, or its header
/// names another shard or number. Never read, never deleted by the tracker; counted by the size
/// limit like a `.corrupt` file. When that name is taken, `.unpublished.K` with the first free
/// K ≥ 1 (`set_aside`), treated the same everywhere.
pub const UNPUBLISHED_SUFFIX: &str = ".unpublished";
/// Digits in a segment file name: enough for u64::MAX.
pub const SEGMENT_NAME_DIGITS: usize = 20;

/// Offsets of the header fields (see the table above).
mod at {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const HEADER_BYTES: usize = 12;
    pub const SHARD: usize = 16;
    pub const SEGMENT: usize = 24;
    pub const CREATED_NS: usize = 32;
    pub const EVENT_BYTES: usize = 40;
    pub const SCHEMA_BYTES: usize = 44;
    pub const CRC: usize = 60;
}

const _: () = assert!(PAGE_BYTES.is_multiple_of(EVENT_BYTES), "a record never straddles a page");
const _: () = assert!(PAGE_BYTES.is_multiple_of(std::mem::align_of::<Event>()));
const _: () = assert!(at::CRC + 4 == HEADER_FIXED_BYTES, "the crc is the last fixed field");
const _: () = assert!(at::MAGIC + SEGMENT_MAGIC.len() == at::VERSION);
const _: () = assert!(at::SCHEMA_BYTES + 4 <= at::CRC);
const _: () = assert!(HEADER_FIXED_BYTES <= PAGE_BYTES);
const _: () = assert!(
    2 * (HEADER_FIXED_BYTES + SCHEMA_BYTES_MAX + PAGE_BYTES) <= u32::MAX as usize,
    "header_bytes fits its u32 field"
);
const _: () = assert!(EVENT_BYTES <= u32::MAX as usize);
// u64::MAX = 18446744073709551615 has 20 digits.
const _: () = assert!(u64::MAX / 10u64.pow(SEGMENT_NAME_DIGITS as u32 - 1) >= 1);
const _: () = assert!(usize::BITS >= 64, "segment offsets are u64 on disk and usize in the map");

/// What [`ShardJournal::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Number of the segment the writer appends to now.
    pub segment: u64,
    /// Number of the last segment, which `records`, `torn_*` and `sealed_bad_records` describe
    /// (0 when there was none or it was not scanned). Not always `segment`: a torn tail is
    /// dropped from the last segment before a new schema (say) starts the next one.
    pub last_segment: u64,
    /// Intact records found in the last segment (0 when there was none).
    pub records: u64,
    /// `.seg.tmp` files holding records that were renamed into place as `.seg`: made-ahead
    /// segments whose rename a power loss undid after the writer had appended to them.
    pub recovered_tmp: Vec<u64>,
    /// `.seg.tmp` files holding records that could not be put into place, renamed
    /// `.seg.unpublished` (`.seg.unpublished.K` when that name was taken) and kept
    /// ([`UNPUBLISHED_SUFFIX`]).
    pub set_aside_tmp: Vec<u64>,
    /// Lines for the operator's log besides `detail`: one per `.seg.tmp` recovered or set
    /// aside, naming the files and the number of records.
    pub notes: Vec<String>,
    /// Slots dropped from a torn tail of the last segment: a slot that was neither all-zero nor
    /// an intact record, with nothing but zeros after it (no reader can have read past it).
    pub torn_records: u64,
    /// From the start of the first dropped slot to the last non-zero byte of the dropped slots
    /// (100 for a record of which only 100 bytes were copied).
    pub torn_bytes: u64,
    /// Bad slots left in place in a last segment that was sealed as is because written data
    /// follows its first bad (or missing) record: readers skip them, and whatever they already
    /// read after them stays where it was (see `recover_records`).
    pub sealed_bad_records: u64,
    /// Why the writer did not continue the last segment, when it did not.
    pub new_segment_reason: Option<&'static str>,
    /// The same, with the file and the numbers, for the operator's log.
    pub detail: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Names

/// `root/shard-NNN`.
pub fn shard_dir(root: &Path, shard: u16) -> PathBuf {
    root.join(format!("shard-{shard:03}"))
}

/// `dir/<20 digits>.seg`.
pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_NAME_DIGITS))
}

pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The shard of a `shard-NNN` directory name.
pub(crate) fn parse_shard_dir_name(name: &str) -> Option<u16> {
    let digits = name.strip_prefix("shard-")?;
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SegmentFile {
    /// `N.seg`: a published segment.
    Live,
    /// `N.seg.corrupt`, or `N.seg.corrupt.K` for copy K ≥ 1: set aside by the writer.
    Corrupt(u32),
    /// `N.seg.tmp`: a creation that did not finish, or a made-ahead segment whose rename a
    /// power loss undid.
    Tmp,
    /// `N.seg.unpublished`, or `N.seg.unpublished.K` for copy K ≥ 1: a `.seg.tmp` holding
    /// records, set aside by the writer.
    Unpublished(u32),
}

impl SegmentFile {
    /// The file of segment `n` of this kind in shard directory `dir`: the one name
    /// [`parse_segment_name`] reads back as `(n, self)`.
    pub(crate) fn path(self, dir: &Path, n: u64) -> PathBuf {
        let live = segment_path(dir, n);
        let aside = |suffix: &str, copy: u32| match copy {
            0 => with_suffix(&live, suffix),
            k => with_suffix(&live, &format!("{suffix}.{k}")),
        };
        match self {
            SegmentFile::Live => live.clone(),
            SegmentFile::Tmp => with_suffix(&live, TMP_SUFFIX),
            SegmentFile::Corrupt(copy) => aside(CORRUPT_SUFFIX, copy),
            SegmentFile::Unpublished(copy) => aside(UNPUBLISHED_SUFFIX, copy),
        }
    }
}

pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, SegmentFile)> {
    let (digits, rest) = name.split_at_checked(SEGMENT_NAME_DIGITS)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = match rest.strip_prefix(SEGMENT_SUFFIX)? {
        "" => SegmentFile::Live,
        TMP_SUFFIX => SegmentFile::Tmp,
        aside => match aside.strip_prefix(CORRUPT_SUFFIX) {
            Some(copy) => SegmentFile::Corrupt(parse_copy(copy)?),
            None => SegmentFile::Unpublished(parse_copy(aside.strip_prefix(UNPUBLISHED_SUFFIX)?)?),
        },
    };
    // u64::MAX is not a segment number: nothing can follow it (the writer's and the readers'
    // next number, n + 1, would overflow), and no writer gets there.
    let number: u64 = digits.parse().ok()?;
    (number < u64::MAX).then_some((number, kind))
}

/// The copy number after a set-aside suffix: none is 0, `.K` is K ≥ 1 in plain decimal. One
/// spelling per number (no `.0`, no leading zero), so that two names never mean the same copy
/// and [`SegmentFile::path`] gives back the name that was parsed.
fn parse_copy(s: &str) -> Option<u32> {
    if s.is_empty() {
        return Some(0);
    }
    let digits = s.strip_prefix('.')?;
    if digits.is_empty() || digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `dir`, by number. A missing directory has none.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, SegmentFile)>, JournalError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JournalError::new("read dir", dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::new("read dir", dir, e))?;
        if let Some(found) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push(found);
        }
    }
    out.sort_unstable();
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Header

/// A decoded, checked segment header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub header_bytes: u32,
    pub shard: u16,
    pub segment: u64,
    pub created_ns: u64,
    pub schema_json: Vec<u8>,
    /// Read from the copy at `header_bytes / 2`: what was wrong with the first copy.
    pub first_copy_bad: Option<HeaderError>,
}

/// Why a header was rejected. Each names the numbers found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// The file is shorter than the fixed header.
    Short {
        file_bytes: u64,
    },
    /// The fixed header is all zero: the segment was never initialised (or the page was lost).
    Blank,
    /// The first copy's pages could not be read (an I/O error such as EIO); only ever the
    /// `first_copy_bad` of a header read from its second copy.
    Unreadable {
        error: String,
    },
    Magic {
        found: [u8; 8],
    },
    /// A version this build does not read, on one copy only or below ours: damage.
    Version {
        found: u32,
    },
    /// A version above [`FORMAT_VERSION`] that both copies carry: a newer tracker's segment.
    Newer {
        found: u32,
    },
    Layout {
        header_bytes: u32,
        schema_bytes: u32,
        file_bytes: u64,
    },
    Crc {
        stored: u32,
        computed: u32,
    },
    EventBytes {
        found: u32,
    },
    Shard {
        found: u16,
        expected: u16,
    },
    Number {
        found: u64,
        expected: u64,
    },
}

impl HeaderError {
    /// The format version found, when it is newer than this build's: a segment written by a
    /// later tracker (a rollback ran this build after it), not damage. It is left in place for
    /// the build that reads it, never set aside or skipped.
    pub(crate) fn newer_format(&self) -> Option<u32> {
        match *self {
            HeaderError::Newer { found } => Some(found),
            _ => None,
        }
    }

    /// For [`RecoveryReport::new_segment_reason`].
    pub(crate) fn writer_reason(&self) -> &'static str {
        match self {
            HeaderError::Short { .. } => "last segment is shorter than a header; renamed to .corrupt",
            HeaderError::Blank => "last segment's header is blank; renamed to .corrupt",
            HeaderError::Unreadable { .. } => "last segment's header cannot be read; renamed to .corrupt",
            HeaderError::Magic { .. } => "last segment's header has a bad magic; renamed to .corrupt",
            HeaderError::Version { .. } => "last segment's format version is not this build's; renamed to .corrupt",
            // Never set aside (recover_last leaves it in place): for completeness.
            HeaderError::Newer { .. } => "last segment was written by a newer tracker; left as is",
            HeaderError::Layout { .. } => "last segment's header has impossible lengths; renamed to .corrupt",
            HeaderError::Crc { .. } => "last segment's header fails its CRC; renamed to .corrupt",
            HeaderError::EventBytes { .. } => {
                "last segment's records are not this build's event size; renamed to .corrupt"
            }
            HeaderError::Shard { .. } | HeaderError::Number { .. } => {
                "last segment's header names another shard or number; renamed to .corrupt"
            }
        }
    }
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short { file_bytes } => {
                write!(f, "file is {file_bytes} bytes, shorter than the {HEADER_FIXED_BYTES}-byte header")
            }
            HeaderError::Blank => {
                write!(f, "header is all zero (the segment was never initialised, or the page was lost)")
            }
            HeaderError::Unreadable { error } => write!(f, "header cannot be read: {error}"),
            HeaderError::Magic { found } => {
                write!(f, "bad magic {:?}, expected {:?}", found.escape_ascii().to_string(), "TRKJRNL1")
            }
            HeaderError::Version { found } => {
                write!(
                    f,
                    "format version {found}, this build reads {FORMAT_VERSION_ONE_HEADER} and {FORMAT_VERSION}; \
                     read it with a matching build"
                )
            }
            HeaderError::Newer { found } => {
                write!(
                    f,
                    "format version {found} in both header copies, newer than this build's {FORMAT_VERSION}: \
                     written by a newer tracker; read it with a matching build"
                )
            }
            HeaderError::Layout { header_bytes, schema_bytes, file_bytes } => write!(
                f,
                "header_bytes {header_bytes} with schema_bytes {schema_bytes} in a {file_bytes}-byte \
                 file (header_bytes must be 2 × ({HEADER_FIXED_BYTES} + schema_bytes rounded up to \
                 {PAGE_BYTES}), 1 × for format version {FORMAT_VERSION_ONE_HEADER}, within the file, with \
                 schema_bytes ≤ {SCHEMA_BYTES_MAX})"
            ),
            HeaderError::Crc { stored, computed } => {
                write!(f, "header CRC32C {stored:#010x} stored, {computed:#010x} computed")
            }
            HeaderError::EventBytes { found } => {
                write!(f, "event_bytes {found}, this build's records are {EVENT_BYTES} bytes")
            }
            HeaderError::Shard { found, expected } => {
                write!(f, "header says shard {found}, the directory is shard {expected}")
            }
            HeaderError::Number { found, expected } => {
                write!(f, "header says segment {found}, the file name says {expected}")
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn header_crc(fixed: &[u8], schema_json: &[u8]) -> u32 {
    let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    d.update(&fixed[..at::CRC]);
    d.update(schema_json);
    d.finalize() as u32
}

/// Bytes of one copy of the header for a schema of `schema_bytes`: the fixed part and the schema
/// rounded up to whole pages. (All of a version 1 header.)
pub(crate) fn copy_bytes_for(schema_bytes: usize) -> usize {
    (HEADER_FIXED_BYTES + schema_bytes).div_ceil(PAGE_BYTES) * PAGE_BYTES
}

/// Bytes of the header, both copies, for a schema of `schema_bytes`: the first record's offset.
pub(crate) fn header_bytes_for(schema_bytes: usize) -> usize {
    2 * copy_bytes_for(schema_bytes)
}

impl SegmentHeader {
    /// The header of segment `segment` of `shard` made now, for records of `schema_json`.
    pub(crate) fn new_now(shard: u16, segment: u64, schema_json: Vec<u8>) -> SegmentHeader {
        SegmentHeader {
            header_bytes: header_bytes_for(schema_json.len()) as u32,
            shard,
            segment,
            created_ns: now_ns(),
            schema_json,
            first_copy_bad: None,
        }
    }

    /// The header's bytes in this build's format, `header_bytes` long: the first copy, zero
    /// after the schema up to its last page, then the second.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let header_bytes = self.header_bytes as usize;
        assert_eq!(header_bytes, header_bytes_for(self.schema_json.len()));
        let mut b = vec![0u8; header_bytes];
        let copy = header_bytes / 2;
        self.encode_copy(&mut b[..copy]);
        b.copy_within(..copy, copy);
        b
    }

    /// One copy of the header into `b` (zeroed, one copy long).
    fn encode_copy(&self, b: &mut [u8]) {
        b[at::MAGIC..at::MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC);
        b[at::VERSION..at::VERSION + 4].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[at::HEADER_BYTES..at::HEADER_BYTES + 4].copy_from_slice(&self.header_bytes.to_le_bytes());
        b[at::SHARD..at::SHARD + 2].copy_from_slice(&self.shard.to_le_bytes());
        b[at::SEGMENT..at::SEGMENT + 8].copy_from_slice(&self.segment.to_le_bytes());
        b[at::CREATED_NS..at::CREATED_NS + 8].copy_from_slice(&self.created_ns.to_le_bytes());
        b[at::EVENT_BYTES..at::EVENT_BYTES + 4].copy_from_slice(&(EVENT_BYTES as u32).to_le_bytes());
        let schema_bytes = self.schema_json.len() as u32;
        b[at::SCHEMA_BYTES..at::SCHEMA_BYTES + 4].copy_from_slice(&schema_bytes.to_le_bytes());
        b[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + self.schema_json.len()].copy_from_slice(&self.schema_json);
        let crc = header_crc(&b[..HEADER_FIXED_BYTES], &self.schema_json);
        b[at::CRC..at::CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// For `crate::fuzzing`: rewrites the checksums in a segment file's bytes — the CRC of each
/// header copy (at 0, and at half the first copy's `header_bytes`) whose lengths fit the bytes,
/// and the seal of every non-zero record slot after the header — so that a fuzzer's changes to
/// a schema or a record get past the CRCs to the code behind them.
#[cfg(feature = "fuzzing")]
pub(crate) fn reseal(b: &mut [u8]) {
    if b.len() < HEADER_FIXED_BYTES {
        return;
    }
    let header_bytes = u32_at(b, at::HEADER_BYTES) as usize;
    // The second copy only where the first says there is one: this format, and a half that
    // does not cut into the first copy's schema (a version 1 header has one copy).
    let first_ends = HEADER_FIXED_BYTES + u32_at(b, at::SCHEMA_BYTES) as usize;
    let two = u32_at(b, at::VERSION) == FORMAT_VERSION && header_bytes / 2 >= first_ends;
    for copy in if two { vec![0, header_bytes / 2] } else { vec![0] } {
        let Some(h) = b.get_mut(copy..).filter(|h| h.len() >= HEADER_FIXED_BYTES) else { continue };
        let schema_bytes = u32_at(h, at::SCHEMA_BYTES) as usize;
        if HEADER_FIXED_BYTES + schema_bytes <= h.len().min(HEADER_FIXED_BYTES + SCHEMA_BYTES_MAX) {
            let crc = header_crc(&h[..HEADER_FIXED_BYTES], &h[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + schema_bytes]);
            h[at::CRC..at::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let first = header_bytes.max(HEADER_FIXED_BYTES).next_multiple_of(EVENT_BYTES);
    for slot in b.get_mut(first..).unwrap_or_default().chunks_exact_mut(EVENT_BYTES) {
        if !all_zero(slot) {
            let mut e = Event::from_bytes((&*slot).try_into().expect("a slot"));
            e.seal();
            slot.copy_from_slice(e.as_bytes());
        }
    }
}

/// Reads and checks the header of segment `number` of `shard`. The outer error is I/O, the
/// inner one is what was wrong with the bytes: the first copy's error when no copy passes.
pub(crate) fn read_header(
    file: &File,
    file_bytes: u64,
    shard: u16,
    number: u64,
) -> io::Result<Result<SegmentHeader, HeaderError>> {
    // A first copy that cannot be read (EIO from a bad sector) is damaged too: its copy is on
    // other pages. When no copy is found the read error is returned as it was, an I/O error
    // the caller may retry, not a verdict on the bytes.
    let (first_bad, unreadable) = match read_copy(file, file_bytes, 0) {
        Ok(Ok(h)) => return Ok(h.of(shard, number)),
        // Too short for a header at all: there is no copy either.
        Ok(Err(short @ HeaderError::Short { .. })) => return Ok(Err(short)),
        Ok(Err(bad)) => (bad, None),
        Err(e) => (HeaderError::Unreadable { error: e.to_string() }, Some(e)),
    };
    // The first copy is damaged. The second starts at the page where the first one's pages end,
    // which its own `header_bytes` says (a damaged first copy cannot be asked): try each page a
    // header can end at, first to last.
    let last_page = (copy_bytes_for(SCHEMA_BYTES_MAX) / PAGE_BYTES) as u64;
    for page in 1..=last_page {
        let off = page * PAGE_BYTES as u64;
        if 2 * off > file_bytes {
            break;
        }
        // A page that cannot be read holds no copy that can be used.
        if let Ok(Ok(mut h)) = read_copy(file, file_bytes, off) {
            h.first_copy_bad = Some(first_bad);
            return Ok(h.of(shard, number));
        }
    }
    match unreadable {
        Some(e) => Err(e),
        None => Ok(Err(newer_if_both_copies_say_so(file, file_bytes, first_bad)?)),
    }
}

/// `first_bad`, or [`HeaderError::Newer`] when it is a version above ours that the copy where
/// the first one's `header_bytes` puts it repeats, magic and all. Damage to the version bytes
/// of one copy (or of the only copy of a version 1 segment, whose half-way page is records)
/// stays [`HeaderError::Version`]: that segment is not waited for.
fn newer_if_both_copies_say_so(file: &File, file_bytes: u64, first_bad: HeaderError) -> io::Result<HeaderError> {
    let HeaderError::Version { found } = first_bad else { return Ok(first_bad) };
    if found <= FORMAT_VERSION {
        return Ok(first_bad);
    }
    let mut first = [0u8; HEADER_FIXED_BYTES];
    pread::read_exact_at(file, &mut first, 0)?;
    let header_bytes = u32_at(&first, at::HEADER_BYTES) as u64;
    let off = header_bytes / 2;
    if off < HEADER_FIXED_BYTES as u64 || !off.is_multiple_of(PAGE_BYTES as u64) || header_bytes > file_bytes {
        return Ok(first_bad);
    }
    let mut second = [0u8; HEADER_FIXED_BYTES];
    pread::read_exact_at(file, &mut second, off)?;
    let same = second[at::MAGIC..at::MAGIC + 8] == SEGMENT_MAGIC
        && u32_at(&second, at::VERSION) == found
        && u32_at(&second, at::HEADER_BYTES) as u64 == header_bytes;
    Ok(if same { HeaderError::Newer { found } } else { first_bad })
}

/// The `created_ns` of the header of segment `number` in the shard directory `dir`, when the
/// file exists and its header (either copy) reads and passes its checks.
pub(crate) fn segment_created_ns(dir: &Path, shard: u16, number: u64) -> Option<u64> {
    let file = File::open(segment_path(dir, number)).ok()?;
    let len = file.metadata().ok()?.len();
    read_header(&file, len, shard, number).ok()?.ok().map(|h| h.created_ns)
}

/// Checks the copy of a header at `off` (0: the first copy) on its own, short of the shard and
/// number. A copy at `off` > 0 is this build's format and sits at half its `header_bytes`.
fn read_copy(file: &File, file_bytes: u64, off: u64) -> io::Result<Result<SegmentHeader, HeaderError>> {
    if file_bytes < off + HEADER_FIXED_BYTES as u64 {
        return Ok(Err(HeaderError::Short { file_bytes }));
    }
    let mut fixed = [0u8; HEADER_FIXED_BYTES];
    pread::read_exact_at(file, &mut fixed, off)?;
    if fixed[at::MAGIC..at::MAGIC + 8] != SEGMENT_MAGIC {
        if fixed.iter().all(|&b| b == 0) {
            return Ok(Err(HeaderError::Blank));
        }
        let found = fixed[at::MAGIC..at::MAGIC + 8].try_into().expect("8 bytes");
        return Ok(Err(HeaderError::Magic { found }));
    }
    let version = u32_at(&fixed, at::VERSION);
    let copies = match version {
        FORMAT_VERSION => 2,
        FORMAT_VERSION_ONE_HEADER if off == 0 => 1,
        _ => return Ok(Err(HeaderError::Version { found: version })),
    };
    let header_bytes = u32_at(&fixed, at::HEADER_BYTES);
    let schema_bytes = u32_at(&fixed, at::SCHEMA_BYTES);
    let copy_bytes = copy_bytes_for(schema_bytes as usize) as u64;
    let layout_ok = schema_bytes as usize <= SCHEMA_BYTES_MAX
        && header_bytes as u64 == copies * copy_bytes
        && (off == 0 || off == copy_bytes)
        && header_bytes as u64 <= file_bytes;
    if !layout_ok {
        return Ok(Err(HeaderError::Layout { header_bytes, schema_bytes, file_bytes }));
    }
    let mut schema_json = vec![0u8; schema_bytes as usize];
    pread::read_exact_at(file, &mut schema_json, off + HEADER_FIXED_BYTES as u64)?;
    let stored = u32_at(&fixed, at::CRC);
    let computed = header_crc(&fixed, &schema_json);
    if stored != computed {
        return Ok(Err(HeaderError::Crc { stored, computed }));
    }
    let event_bytes = u32_at(&fixed, at::EVENT_BYTES);
    if event_bytes as usize != EVENT_BYTES {
        return Ok(Err(HeaderError::EventBytes { found: event_bytes }));
    }
    Ok(Ok(SegmentHeader {
        header_bytes,
        shard: u16_at(&fixed, at::SHARD),
        segment: u64_at(&fixed, at::SEGMENT),
        created_ns: u64_at(&fixed, at::CREATED_NS),
        schema_json,
        first_copy_bad: None,
    }))
}

impl SegmentHeader {
    /// This header, when it names segment `number` of `shard`.
    fn of(self, shard: u16, number: u64) -> Result<SegmentHeader, HeaderError> {
        if self.shard != shard {
            return Err(HeaderError::Shard { found: self.shard, expected: shard });
        }
        if self.segment != number {
            return Err(HeaderError::Number { found: self.segment, expected: number });
        }
        Ok(self)
    }

    /// Where the copy the header was read from starts: 0, or `header_bytes / 2` when the first
    /// one was damaged.
    pub(crate) fn read_at(&self) -> u64 {
        if self.first_copy_bad.is_some() {
            self.header_bytes as u64 / 2
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

/// The segment being appended to.
struct Active {
    number: u64,
    /// Shared with the sync thread's jobs, which name it in their errors.
    path: Arc<Path>,
    map: MmapMut,
    /// Offset of the next record; every slot from here to the end is zero.
    write_off: usize,
    /// Offset of the first record (this segment's header, both copies).
    header_bytes: usize,
    /// Everything before this offset has been msynced (or fsynced at creation).
    synced_off: usize,
    /// The writer no longer maps any page below this offset (`start_writeback`,
    /// `unmap_written`), and under `start_writeback` their writeback has been started;
    /// page-aligned, at most `write_off`.
    released_off: usize,
    /// Page-cache pages below this offset have been handed back to the kernel
    /// (`release_step`); page-aligned, at most `released_off`.
    dropped_off: usize,
    records: u64,
    /// Pages from `released_off` up to this offset are mapped and resident (prefaulted);
    /// `write_off <= faulted_off` after every append.
    faulted_off: usize,
    /// The segment file, for prefaulting through the page cache (see `prefault_ahead`).
    file: File,
}

/// How far ahead of the write position the drain prefaults the segment, and in what steps
/// (also the size of a static zero buffer). Faulting a whole 64 MiB segment at once
/// (MAP_POPULATE) is a ~15 ms CPU burst at every rotation on the core a drain may share with its
/// reactor; a rolling window spreads the same work evenly, one step per 512 records. The step
/// is also how long the drain holds a shared core in one go (this kernel preempts it only when
/// it sleeps or at a tick): 1 MiB steps (~1.5 ms runs) raised wrk's saturated p99 from
/// 0.63–0.92 ms to 0.56–2.0 ms against 256 KiB, with no CPU difference beyond noise
/// (perf/RESULTS.md).
pub const PREFAULT_BYTES: usize = 256 * 1024;
/// How much appended data `start_writeback` lets accumulate before it starts writing it back.
/// Against one msync of the whole second (`perf/RESULTS.md`, alternating runs): 256 KiB and
/// 1 MiB steps both cut wrk's saturated p99 from 1.0–1.3 ms to 0.6–0.8 ms, 4 MiB steps less
/// (0.7–1.0 ms); the drain's kernel time rose ~0.05 µs per event with 1 MiB steps.
pub(crate) const WRITEBACK_STEP: usize = 1024 * 1024;
/// How much of the newest written data, below the writer's released pages, stays in the page
/// cache for collectors and `journal cat --follow` to read from memory; older pages, written
/// back by then, are dropped from it (`release_step`). 8 MiB is ~80 ms of one shard saturated
/// (~100 MB/s) and seconds at ordinary rates, against a collector that, caught up, polls every 10 ms;
/// a collector further behind reads from the disk, sequentially.
pub(crate) const CACHE_KEPT_BYTES: usize = 8 * WRITEBACK_STEP;
/// The most page cache one `release_step` hands back: under `interval` a finished sync makes a
/// second's worth droppable at once (~100 MB saturated), dropped over the following steps.
const DROP_STEP_MAX: usize = 4 * WRITEBACK_STEP;
const _: () = assert!(PREFAULT_BYTES.is_multiple_of(PAGE_BYTES) && PREFAULT_BYTES.is_multiple_of(EVENT_BYTES));

impl Active {
    /// Maps a segment file that holds a header and no record, and prefaults its first window.
    /// `synced_off`: what the next sync() may skip (the header, when it is known to be on disk).
    fn start_empty(
        number: u64,
        path: PathBuf,
        file: File,
        segment_bytes: u64,
        header_bytes: usize,
        synced_off: usize,
    ) -> Result<Active, JournalError> {
        let map = map_segment(&file, &path, segment_bytes as usize)?;
        let mut a = Active {
            number,
            path: path.into(),
            map,
            write_off: header_bytes,
            header_bytes,
            synced_off,
            released_off: header_bytes,
            dropped_off: 0,
            records: 0,
            faulted_off: header_bytes,
            file,
        };
        a.prefault_ahead();
        Ok(a)
    }

    /// Makes the pages of `[faulted_off, faulted_off + PREFAULT_BYTES)` resident so the next
    /// appends store into memory without a fault.
    #[cold]
    fn prefault_ahead(&mut self) {
        let from = self.faulted_off.min(self.map.len());
        let to = (from + PREFAULT_BYTES).min(self.map.len());
        // Writing the (already zero) window through the page cache first makes its pages
        // resident, written-extent pages in one batched syscall; the populate below then only
        // maps them. Faulting fresh pages of a preallocated ext4 file one by one instead cost
        // ~1.3 µs per record in `cargo bench --bench pipeline -- journal` against ~0.25 µs this
        // way. The blocks are preallocated, so this write cannot hit ENOSPC; if it fails anyway
        // the populate still faults the pages in, only slower.
        // Only from write_off: every byte from there on is zero (the Active invariant), while
        // the page below it may hold recovered records.
        static ZEROS: [u8; PREFAULT_BYTES] = [0; PREFAULT_BYTES];
        let zero_from = from.max(self.write_off).min(to);
        let _ = self.file.write_all_at(&ZEROS[..to - zero_from], zero_from as u64);
        prefault(&mut self.map[from..to]);
        self.faulted_off = to;
    }
}

/// Hands the clean page cache of `len` bytes of `file` from `from` (0: to the end) back to the
/// kernel. POSIX_FADV_DONTNEED never drops a dirty, under-writeback or mapped page (it starts
/// writeback of dirty ones instead), nor a folio crossing either end of the range, so no data
/// is at risk, only the cost of reading it again.
fn drop_cache(file: &File, from: usize, len: usize) {
    // SAFETY: posix_fadvise on a descriptor we own; no memory is passed. A failure only leaves
    // the pages cached.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), from as libc::off64_t, len as libc::off64_t, libc::POSIX_FADV_DONTNEED)
    };
}

/// Write-faults every page of `b` (which must be page-aligned at its start): MADV_POPULATE_WRITE
/// (Linux ≥ 5.14) in one call, else a store of the byte already there into each page.
fn prefault(b: &mut [u8]) {
    if b.is_empty() {
        return;
    }
    // SAFETY: the range is inside a live, writable shared mapping that we hold mutably;
    // MADV_POPULATE_WRITE only faults pages in and does not change their contents.
    let rc = unsafe { libc::madvise(b.as_mut_ptr() as *mut libc::c_void, b.len(), libc::MADV_POPULATE_WRITE) };
    if rc != 0 {
        for off in (0..b.len()).step_by(PAGE_BYTES) {
            // SAFETY: off < b.len(); rewriting the byte's own value with a volatile store
            // forces a write fault without changing the data.
            unsafe { std::ptr::write_volatile(b.as_mut_ptr().add(off), std::ptr::read_volatile(b.as_ptr().add(off))) };
        }
    }
}

/// A segment left at rotation with records not yet synced: the next `sync()` flushes it, so a
/// rotation costs no msync on the drain and `sync()` still covers every record appended.
pub(super) struct Retired {
    path: Arc<Path>,
    map: MmapMut,
    from: usize,
    to: usize,
}

impl Retired {
    #[cfg(test)]
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn flush(self) -> Result<(), JournalError> {
        msync(&self.map, &self.path, self.from, self.to)
    }
}

// Tests: makes every msync and syncfs of this thread fail (EIO), as a disk error would, and
// every background sync it starts (`background_sync.rs`).
#[cfg(test)]
thread_local! {
    pub(crate) static FAIL_MSYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn msync(map: &MmapMut, path: &Path, from: usize, to: usize) -> Result<(), JournalError> {
    debug_assert!(from <= to && to <= map.len());
    if from == to {
        return Ok(());
    }
    #[cfg(test)]
    if FAIL_MSYNC.get() {
        let eio = io::Error::from_raw_os_error(libc::EIO);
        return Err(JournalError::with_detail("msync", path, format!("bytes {from}..{to}"), eio));
    }
    // memmap2 aligns the start down to the page size of this machine.
    map.flush_range(from, to - from)
        .map_err(|e| JournalError::with_detail("msync", path, format!("bytes {from}..{to}"), e))
}

/// syncfs(2) of the file system holding `dir` (open as `dir_file`): writes back every dirty page
/// of every file on it, the segments no writer of this run keeps a map of included.
fn sync_fs(dir_file: &File, dir: &Path) -> Result<(), JournalError> {
    #[cfg(test)]
    if FAIL_MSYNC.get() {
        return Err(JournalError::new("syncfs", dir, io::Error::from_raw_os_error(libc::EIO)));
    }
    // SAFETY: syncfs on a descriptor we own; no memory is involved.
    if unsafe { libc::syncfs(dir_file.as_raw_fd()) } != 0 {
        return Err(JournalError::new("syncfs", dir, io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for ShardJournal {
    /// A segment being made ahead must not outlive its writer: a writer that reopens the
    /// directory would race the helper thread for the same `.tmp` name.
    fn drop(&mut self) {
        if let Some(a) = self.ahead.take() {
            a.discard();
        }
        // The sync thread ends once its job is done (Syncer's drop): waited for here.
        self.syncer.take();
    }
}

// The drain thread that owns a ShardJournal may not be the thread that opened it.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<ShardJournal>();
};

/// One shard's writer: appends sealed events to the mapped active segment.
///
/// Owned by the shard's drain thread; never shared. `append` makes no syscall and takes no lock
/// except when it rotates.
pub struct ShardJournal {
    dir: PathBuf,
    /// The open shard directory: its `flock` keeps a second writer out (released on drop), and it
    /// is fsynced after a segment file is created or renamed.
    dir_file: File,
    shard: u16,
    /// Size of every new segment file, header included.
    segment_bytes: u64,
    schema_json: Vec<u8>,
    /// Header size of new segments: the schema rounded up to pages.
    header_bytes: usize,
    active: Active,
    retired: Option<Retired>,
    /// The segment left at the last rotation, whose page cache (the kept window and the step
    /// not yet released when it was left) is handed back once it is written back and the
    /// active segment holds a kept window of its own (`release_step`).
    left_cached: Option<File>,
    /// Segment N+1 being made on a helper thread (`ahead.rs`); None while none is.
    ahead: Option<Ahead>,
    /// The directory entry of the active segment is on disk. Cleared when a rotation renames a
    /// segment made ahead into place, and at open when the last segment is resumed (its rename
    /// may not have been fsynced); set by the helper thread after it fsyncs the directory, or
    /// by `sync()`, which fsyncs it when the helper has not yet.
    rename_durable: Arc<AtomicBool>,
    /// Rotations that found their segment made ahead.
    segments_made_ahead: u64,
    /// The `none` sync policy: only a clean stop syncs, so a segment left at rotation is not
    /// kept for a sync (that would be an msync of the whole segment at the next rotation).
    kernel_writeback_only: bool,
    bytes_written_total: u64,
    /// Syncs that succeeded, in the background or not (`syncs`).
    syncs: u64,
    /// How long the last sync whose outcome was applied took, ns, until taken
    /// (`take_sync_duration_ns`).
    sync_ns: Option<u64>,
    /// An msync failed at some point: records may be missing from the disk even after a later
    /// sync succeeds, so this run never records a clean stop.
    sync_failed: bool,
    /// A rotation's msync of the segment left at the rotation before it failed. The records
    /// there were appended since the last sync, so the next sync (which acknowledges them
    /// under `always`), or the next background sync's outcome, returns this error.
    deferred_sync_error: Option<JournalError>,
    /// The shard's sync thread (`sync_in_background`), started at the first background sync;
    /// at most one job in flight.
    syncer: Option<Syncer>,
}

impl ShardJournal {
    /// Opens the journal of `shard` under `root`: `root/shard-NNN/` is created if missing, the
    /// last segment is recovered (torn tail zeroed) and the writer is positioned after its last
    /// intact record — or on a new segment when there is none, it is full, its header is
    /// corrupt, or its schema is not `schema` (the report says which).
    ///
    /// `segment_bytes` is the size of each new segment file: it must hold the header (the schema
    /// rounded up to 4 KiB pages) and at least one 512-byte record. An existing segment keeps the
    /// size it was created with.
    pub fn open(
        root: &Path,
        shard: u16,
        segment_bytes: u64,
        schema: &Schema,
    ) -> Result<(ShardJournal, RecoveryReport), JournalError> {
        let dir = shard_dir(root, shard);
        let schema_json = schema.to_json();
        if schema.event_bytes as usize != EVENT_BYTES {
            return Err(JournalError::invalid(
                "open",
                &dir,
                io::ErrorKind::InvalidInput,
                format!("schema says event_bytes {}, this build's records are {EVENT_BYTES} bytes", schema.event_bytes),
            ));
        }
        if schema_json.len() > SCHEMA_BYTES_MAX {
            return Err(JournalError::invalid(
                "open",
                &dir,
                io::ErrorKind::InvalidInput,
                format!(
                    "schema JSON is {} bytes, more than the {SCHEMA_BYTES_MAX} a segment header \
                     holds; declare fewer event types or fields",
                    schema_json.len()
                ),
            ));
        }
        let header_bytes = header_bytes_for(schema_json.len());
        let segment_bytes_min = (header_bytes + EVENT_BYTES) as u64;
        if segment_bytes < segment_bytes_min || segment_bytes > isize::MAX as u64 {
            return Err(JournalError::invalid(
                "open",
                &dir,
                io::ErrorKind::InvalidInput,
                format!(
                    "segment_bytes {segment_bytes} cannot hold the {header_bytes}-byte header and \
                     one {EVENT_BYTES}-byte record; set journal.segment_bytes to at least \
                     {segment_bytes_min} (64 MiB is typical)"
                ),
            ));
        }

        super::create_dir_durable(&dir).map_err(|e| JournalError::new("create dir", &dir, e))?;
        let dir_file = File::open(&dir).map_err(|e| JournalError::new("open dir", &dir, e))?;
        // SAFETY: flock on a file descriptor we own and keep open; no memory is involved.
        if unsafe { libc::flock(dir_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(JournalError::with_detail(
                "lock",
                &dir,
                "another writer holds this shard; stop it first".into(),
                io::Error::last_os_error(),
            ));
        }

        // A `.tmp` is a creation cut short (removed), or a made-ahead segment whose rename into
        // place a power loss undid after records were appended to it (put back into place, or
        // set aside when that is ambiguous): see `resolve_tmps`.
        let tmps = resolve_tmps(&dir, &dir_file, shard, &list_segments(&dir)?)?;
        let listing = list_segments(&dir)?;
        // Never reuse a number, not even one set aside as .corrupt or .unpublished. A removed
        // .tmp's only when the last writer ran in this boot or stopped cleanly: a made-ahead
        // segment is renamed into place and written at once, its directory fsynced after, so a
        // machine restart in between can bring back the .tmp while readers (a collector's
        // cursor) had seen records under its number that did not reach the disk either. In this
        // boot a .tmp was never renamed, never read.
        let tail_trusted = writer_state::tail_trusted(&dir);
        let stopped_clean = writer_state::stopped_clean(&dir);
        // A last writer that did not stop cleanly (killed) may have left records only in the
        // page cache, and not just in the last segment: the one it rotated away from within
        // its last sync interval, or every segment under the `none` policy. This writer syncs
        // only the segment it writes, so its clean stop would record `clean` over them (and a
        // power loss after it would lose them). One syncfs now writes them all back; when it
        // fails this run never records a clean stop.
        let leftovers_synced = if stopped_clean { Ok(()) } else { sync_fs(&dir_file, &dir) };
        let removed_tmp_max = if tail_trusted { None } else { tmps.removed.iter().copied().max() };
        let next_free = listing.iter().map(|&(n, _)| n).chain(removed_tmp_max).max().map_or(1, |n| n + 1);
        let last = listing.iter().rev().find(|&&(_, k)| k == SegmentFile::Live).map(|&(n, _)| n);

        let mut report = RecoveryReport {
            segment: 0,
            last_segment: 0,
            records: 0,
            torn_records: 0,
            torn_bytes: 0,
            sealed_bad_records: 0,
            new_segment_reason: None,
            detail: None,
            recovered_tmp: tmps.recovered,
            set_aside_tmp: tmps.set_aside,
            notes: tmps.notes,
        };
        let resumed = match last {
            None => {
                report.new_segment_reason = Some("no segment in the shard directory yet");
                None
            }
            // A newer segment set aside as .corrupt or .unpublished: the writer left this one,
            // and readers may have moved past it; appending here would put records where they
            // never look again.
            Some(n) if listing.iter().any(|&(m, _)| m > n) => {
                report.new_segment_reason =
                    Some("a newer segment than the last live one was set aside or never finished");
                None
            }
            // Otherwise the number after it may still be taken by a .tmp of another boot removed
            // above (the writer made the next segment ahead, then the machine went down: readers
            // may have read it under its final name). That is only so when the tail is not
            // trusted, and then recovery leaves the segment as it is, as after any power loss,
            // after scanning it and repairing its header copies like any last segment.
            Some(n) => {
                debug_assert!(n + 1 == next_free || !tail_trusted);
                let trust = Trust { tail: tail_trusted && n + 1 == next_free, stopped_clean };
                recover_last(&dir, &dir_file, shard, n, schema, &schema_json, trust, &mut report)?
            }
        };
        // A segment created by open counts its header as written.
        let bytes_written_total = if resumed.is_none() { header_bytes as u64 } else { 0 };
        // A segment created here had its directory fsynced. A resumed one may have been renamed
        // into place (made ahead) by a writer killed before it or its helper fsynced the
        // directory: the rename may still be in the page cache only, and a power loss would
        // bring back the `.tmp` that an open removes. So the first sync() fsyncs the directory
        // before any record of this run is reported synced.
        let rename_durable = resumed.is_none();
        let active = match resumed {
            Some(active) => active,
            None => {
                let spec = NewSegment {
                    dir: &dir,
                    dir_file: &dir_file,
                    shard,
                    segment_bytes,
                    schema_json: &schema_json,
                    header_bytes,
                };
                spec.create(next_free)?
            }
        };
        // From here on records may be written, and read from the page cache, by this boot.
        // Recorded only now: an open that failed above (no room for a new segment) must leave
        // an untrusted segment untrusted for the next try.
        if let Err(e) = writer_state::write(&dir, &dir_file, writer_state::RUNNING) {
            // No room to record it (a full disk)? Then no record at all: an older one may say
            // `clean`, which after a machine restart would trust this run's unsynced tail.
            match fs::remove_file(dir.join(writer_state::STATE_FILE)) {
                // Durably gone, or a power loss could bring back an old `clean`.
                Ok(()) => dir_file.sync_all().map_err(|e| JournalError::new("fsync dir", &dir, e))?,
                Err(r) if r.kind() == io::ErrorKind::NotFound => {}
                Err(_) => return Err(e),
            }
            let note = format!("{e}; removed the state file instead, so a machine restart will not trust this segment");
            report.detail = Some(match report.detail.take() {
                Some(d) => format!("{d}; {note}"),
                None => note,
            });
        }
        if let Err(e) = &leftovers_synced {
            let note = format!(
                "{e}; the last writer's unsynced records may not be on disk, so this run will not record a clean stop"
            );
            report.detail = Some(match report.detail.take() {
                Some(d) => format!("{d}; {note}"),
                None => note,
            });
        }
        let mut journal = ShardJournal {
            dir,
            dir_file,
            shard,
            segment_bytes,
            schema_json,
            header_bytes,
            active,
            retired: None,
            left_cached: None,
            ahead: None,
            rename_durable: Arc::new(AtomicBool::new(rename_durable)),
            segments_made_ahead: 0,
            kernel_writeback_only: false,
            bytes_written_total,
            syncs: 0,
            sync_ns: None,
            sync_failed: leftovers_synced.is_err(),
            deferred_sync_error: None,
            syncer: None,
        };
        journal.start_ahead(false);
        report.segment = journal.active.number;
        Ok((journal, report))
    }

    /// Seals `e` (magic + CRC32C) and copies it into the mapped segment, rotating to a new
    /// segment first when it does not fit. No syscall except at rotation. An error comes only
    /// from rotation (e.g. the disk is full): `e` was not written, the journal stays usable and
    /// the next append tries the rotation again.
    #[inline]
    pub fn append(&mut self, e: &mut Event) -> Result<(), JournalError> {
        e.seal();
        if self.active.write_off + EVENT_BYTES > self.active.map.len() {
            self.rotate()?;
        }
        let at = self.active.write_off;
        if at + EVENT_BYTES > self.active.faulted_off {
            self.active.prefault_ahead();
        }
        debug_assert!(at.is_multiple_of(EVENT_BYTES) && at + EVENT_BYTES <= self.active.map.len());
        // Checked again, in pair, by recovery and by the reader.
        debug_assert!(e.is_sealed_intact());
        self.active.map[at..at + EVENT_BYTES].copy_from_slice(e.as_bytes());
        self.active.write_off = at + EVENT_BYTES;
        self.active.records += 1;
        self.bytes_written_total += EVENT_BYTES as u64;
        Ok(())
    }

    /// msync(MS_SYNC) of what was appended since the last sync, in the segment left at the last
    /// rotation and in the active one; no syscall when nothing was. Also an error when a
    /// rotation since the last sync failed to msync the segment it left for it. An error means
    /// those records may not be on disk, and a later sync that succeeds does not prove they are
    /// (the kernel clears the error once reported): treat it as fatal for durability, not as
    /// retryable.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        // A background sync's error is this sync's too; the sync itself still runs.
        let before = self.finish_background_sync();
        let (r, took_ns) = timed(|| self.sync_inner());
        self.sync_failed |= r.is_err();
        self.syncs += r.is_ok() as u64;
        self.sync_ns = Some(took_ns);
        before.and(r)
    }

    /// The `interval` sync without the wait (`background_sync.rs`): starts what `sync()` does on
    /// a helper thread, after collecting the previous one's outcome. None while the previous
    /// one still runs, or the thread holds its lock this instant (this one is skipped: the
    /// caller tries again soon), else that outcome (Ok when there was none). Falls back to
    /// `sync()` when no thread can be started.
    pub fn sync_in_background(&mut self) -> Option<Result<(), JournalError>> {
        let before = if self.sync_in_flight() {
            // Still running, or its thread holds its lock this instant: this interval's sync
            // is skipped, not queued.
            let done = self.syncer.as_mut().and_then(Syncer::try_wait)?;
            self.apply_sync_outcome(done)
        } else {
            Ok(())
        };
        let a = &self.active;
        let dir_pending = !self.rename_durable.load(SeqCst);
        if self.retired.is_none() && a.synced_off == a.write_off && !dir_pending {
            return Some(before);
        }
        let active = match a.file.try_clone() {
            // An Arc's clone: handing over a job allocates nothing (tests/alloc.rs).
            Ok(f) => (f, a.path.clone()),
            Err(_) => return Some(before.and(self.sync())),
        };
        let dir = if dir_pending {
            match self.dir_file.try_clone() {
                Ok(f) => Some((f, self.dir.clone())),
                Err(_) => return Some(before.and(self.sync())),
            }
        } else {
            None
        };
        let job = SyncJob {
            retired: self.retired.take(),
            active,
            dir,
            #[cfg(test)]
            fail: FAIL_MSYNC.get(),
        };
        let (number, to) = (a.number, a.write_off);
        if self.syncer.is_none() {
            // Started once; when it cannot be, every sync runs here (below) and it is tried again
            // at the next.
            self.syncer = Syncer::start(self.shard).ok();
        }
        match &mut self.syncer {
            Some(s) => {
                if let Err(job) = s.submit(number, to, job) {
                    // The thread held its lock at that instant: skipped like a sync still
                    // running (None: the drain tries again shortly, its records still to be
                    // synced), the left segment's map kept for it. An error in the outcome
                    // taken above is returned by that one's.
                    self.retired = job.retired;
                    if let Err(e) = before {
                        self.deferred_sync_error.get_or_insert(e);
                    }
                    return None;
                }
            }
            None => {
                let (outcome, took_ns) = timed(|| super::background_sync::run(job));
                let r = self.apply_sync_outcome(Done { number, to, outcome, took_ns });
                return Some(before.and(r));
            }
        }
        Some(before)
    }

    /// The outcome of a finished background sync, once (None while one runs or none was
    /// started). The drain asks at every turn, so a failed one is said without waiting for
    /// the next interval.
    pub fn background_sync_done(&mut self) -> Option<Result<(), JournalError>> {
        let done = self.syncer.as_mut()?.try_wait()?;
        Some(self.apply_sync_outcome(done))
    }

    /// The sync thread's hand-over state, once the thread was started (tests).
    #[cfg(test)]
    pub(super) fn sync_thread_shared(&self) -> Option<std::sync::Arc<super::background_sync::Shared>> {
        self.syncer.as_ref().map(Syncer::shared)
    }

    /// A background sync was handed over and its outcome not applied yet.
    fn sync_in_flight(&self) -> bool {
        self.syncer.as_ref().is_some_and(Syncer::in_flight)
    }

    /// Waits for the background sync, if one was started, and applies its outcome: how far the
    /// active segment is synced, and an error as a failed sync, with any error deferred to the
    /// next sync (which it was).
    fn finish_background_sync(&mut self) -> Result<(), JournalError> {
        let Some(done) = self.syncer.as_mut().and_then(Syncer::wait) else {
            return Ok(());
        };
        self.apply_sync_outcome(done)
    }

    /// Applies the outcome of a sync job started when segment `number` was written up to `to`
    /// (Ok(true): the directory was fsynced too). Only the active segment's progress is kept:
    /// one left since is retired, and the directory fsync predates that rotation's rename. An
    /// error, or one deferred to this sync, is a failed sync. `took_ns`: how long the job took
    /// (`take_sync_duration_ns`).
    fn apply_sync_outcome(&mut self, done: Done) -> Result<(), JournalError> {
        let Done { number, to, outcome, took_ns } = done;
        let r = outcome.and_then(|dir_synced| {
            if self.active.number == number {
                self.active.synced_off = self.active.synced_off.max(to);
                if dir_synced {
                    self.rename_durable.store(true, SeqCst);
                }
            }
            self.deferred_sync_error.take().map_or(Ok(()), Err)
        });
        self.sync_failed |= r.is_err();
        self.syncs += r.is_ok() as u64;
        self.sync_ns = Some(took_ns);
        r
    }

    fn sync_inner(&mut self) -> Result<(), JournalError> {
        if let Some(r) = self.retired.take() {
            r.flush()?;
        }
        let a = &mut self.active;
        msync(&a.map, &a.path, a.synced_off, a.write_off)?;
        a.synced_off = a.write_off;
        if !self.rename_durable.load(SeqCst) {
            self.dir_file.sync_all().map_err(|e| JournalError::new("fsync dir", &self.dir, e))?;
            self.rename_durable.store(true, SeqCst);
        }
        // released_off stays: the pages from there are still mapped, and the next
        // start_writeback unmaps them (their writeback, already done, costs nothing then).
        // Last: what could be synced now is, and the records a rotation failed to msync are
        // still reported as not on disk.
        match self.deferred_sync_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts (does not wait for) writeback of the active segment's whole pages appended since
    /// the last call, once they add up to WRITEBACK_STEP. The `interval` sync then finds its
    /// pages already on their way to disk: a second's worth of writeback (one msync of ~17 ms
    /// at 125k events/s, during which a reactor sharing the core waits: this kernel preempts
    /// in-kernel work only where it yields) becomes one short syscall per step. Only whole
    /// pages below the write position: a page still being appended to would be write-protected
    /// for the I/O and fault on the next store. No effect on durability: `sync()` still msyncs
    /// everything.
    pub fn start_writeback(&mut self) {
        self.release_step(true);
    }

    /// Unmaps the active segment's whole pages appended since the last call, once they add up to
    /// WRITEBACK_STEP, without starting their writeback: for the `none` and `always` policies,
    /// where the kernel's flusher or `sync()`'s msync writes them. Either would otherwise
    /// write-protect each page the writer still maps (below).
    pub fn unmap_written(&mut self) {
        self.release_step(false);
    }

    fn release_step(&mut self, start_writeback: bool) {
        // Not after a failed sync: a page whose writeback failed is left clean in the cache, the
        // only good copy of its records, and DONTNEED would drop it.
        let drop_written = !self.kernel_writeback_only && !self.sync_failed;
        let a = &mut self.active;
        let to = a.write_off / PAGE_BYTES * PAGE_BYTES;
        if to < a.released_off + WRITEBACK_STEP {
            return;
        }
        let from = a.released_off;
        debug_assert!(from.is_multiple_of(PAGE_BYTES) && to <= a.write_off);
        // Unmap the pages first: writeback write-protects every page still mapped writable,
        // with a TLB flush per page that reaches every core running a thread of this process
        // (with several shards, every reactor). One MADV_DONTNEED flushes once for the whole
        // step: TLB shootdowns per request 0.0127 → 0.0016–0.0020 with 2 shards
        // (/proc/interrupts), no CPU difference with one. It also bounds what the writer keeps
        // mapped to the prefault window and the step being written.
        // SAFETY: the range lies inside the live map and below the write position, where the
        // writer never stores again; MADV_DONTNEED on a shared file mapping drops only the page
        // mappings (their dirty bits go to the page cache, which keeps the data). A failure
        // only leaves the pages mapped.
        unsafe { libc::madvise(a.map.as_ptr().add(from) as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
        if start_writeback {
            // SAFETY: sync_file_range on the segment's own descriptor; no memory is passed. A
            // failure only leaves the pages to the next sync(), which reports errors.
            unsafe {
                libc::sync_file_range(
                    a.file.as_raw_fd(),
                    from as libc::off64_t,
                    (to - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        // Hand the page cache of what was written long enough ago back to the kernel, so the
        // next prefault reuses those just-freed pages instead of growing the cache by ~100 MB/s
        // into memory not touched since it was freed. The profile points at touching such memory
        // as the drain's largest cost: on this VM (free page reporting hands free memory back to
        // the host) copy_folio_from_iter_atomic fell from 4.4% to 1.4–1.8% of the process's
        // samples (perf/RESULTS.md); on bare metal a full page cache would otherwise make every new page
        // cost a reclaim, and push out everyone else's cache for data read once. Safe for the
        // data: POSIX_FADV_DONTNEED never drops a dirty, under-writeback or mapped page, and only
        // pages a finished sync covered are dropped (below `synced_off`): a page whose writeback
        // failed is left clean in the cache, the only good copy of its records, until a sync
        // reports the error (after which `drop_written` is false). Under `always` every batch is
        // synced; under `interval` the background sync moves `synced_off` once per interval, and
        // the drops follow it at most DROP_STEP_MAX per step, so a second's worth never goes in
        // one call on a core a reactor may share. Never waits for the disk: the drain goes on
        // through a stall (`background_sync.rs`). Under `none` pages may still be dirty, and
        // DONTNEED would start their writeback, which that policy leaves to the kernel.
        let drop_to = from.saturating_sub(CACHE_KEPT_BYTES).min(a.synced_off / PAGE_BYTES * PAGE_BYTES);
        let drop_to = drop_to.min(a.dropped_off + DROP_STEP_MAX);
        if drop_written && drop_to > a.dropped_off {
            // From one prefault window lower: DONTNEED skips a folio that crosses either end of
            // its range, and ext4's large folios (one per prefault write at most) may cross the
            // last call's end. Going over dropped pages again costs a walk of an empty range.
            let start = a.dropped_off.saturating_sub(PREFAULT_BYTES);
            drop_cache(&a.file, start, drop_to - start);
            a.dropped_off = drop_to;
        }
        a.released_off = to;
        // The segment left at the last rotation, once its records are msynced (no `Retired`
        // waits) and this one keeps a window of its own: what it still has cached goes too.
        if drop_written && drop_to > 0 && self.retired.is_none() && !self.sync_in_flight() {
            if let Some(f) = self.left_cached.take() {
                drop_cache(&f, 0, 0);
            }
        }
    }

    /// For the `none` sync policy: from now on nothing but `sync()` (which a clean stop calls)
    /// writes records back explicitly; the kernel's flusher writes back the rest. A segment left
    /// at rotation is then unmapped at once instead of waiting to be msynced.
    pub fn leave_writeback_to_kernel(&mut self) {
        self.kernel_writeback_only = true;
    }

    /// The last call on a journal that stops cleanly: syncs everything, then records the
    /// clean stop (`writer_state`), so the next writer may append to this segment even after
    /// the machine restarts. Not after any failed sync of this run: that one's records may be
    /// missing from the disk whatever later syncs say.
    pub fn close_clean(mut self) -> Result<(), JournalError> {
        if let Some(a) = self.ahead.take() {
            a.discard();
        }
        self.sync()?;
        if self.kernel_writeback_only {
            // Under `none` the segments left at rotation were never synced (left to the
            // kernel's flusher, `leave_writeback_to_kernel`); `clean` promises they are on disk
            // too. One syncfs covers them all without keeping their files open.
            if let Err(e) = sync_fs(&self.dir_file, &self.dir) {
                self.sync_failed = true;
                return Err(e);
            }
        }
        if self.sync_failed {
            return Err(JournalError::invalid(
                "close",
                &self.dir,
                io::ErrorKind::Other,
                "a sync failed earlier in this run; the stop is not recorded as clean".into(),
            ));
        }
        writer_state::write(&self.dir, &self.dir_file, writer_state::CLEAN)
    }

    /// How far the active segment is known synced, and where its writer is (tests).
    #[cfg(test)]
    pub(crate) fn synced_and_written(&self) -> (usize, usize) {
        (self.active.synced_off, self.active.write_off)
    }

    /// Where `start_writeback` / `unmap_written` have got to in the active segment (tests of
    /// their bookkeeping).
    #[cfg(test)]
    pub(crate) fn released_off(&self) -> usize {
        self.active.released_off
    }

    /// Whether a segment left at rotation waits for the next `sync()` (tests).
    #[cfg(test)]
    pub(crate) fn has_retired(&self) -> bool {
        self.retired.is_some()
    }

    /// Rotations since open that found their segment made ahead (`ahead.rs`); the others
    /// created it on the drain.
    pub fn segments_made_ahead(&self) -> u64 {
        self.segments_made_ahead
    }

    /// Waits until the segment being made ahead is made (tests: a rotation then takes it).
    #[cfg(test)]
    pub(crate) fn wait_ahead(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.ahead.as_ref().is_some_and(|a| !a.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "segment made ahead not ready in 20 s");
            std::thread::yield_now();
        }
    }

    /// Whether the directory entry of the active segment is known to be on disk (tests).
    #[cfg(test)]
    pub(crate) fn rename_durable(&self) -> bool {
        self.rename_durable.load(SeqCst)
    }

    /// Number of the active segment.
    pub fn segment_number(&self) -> u64 {
        self.active.number
    }

    /// Bytes written since open: records and the headers of segments created since.
    pub fn bytes_written_total(&self) -> u64 {
        self.bytes_written_total
    }

    /// Syncs that succeeded so far (`sync`, and background syncs once their outcome is applied).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// How long the last sync took (ns), once: the one whose outcome was applied last, failed
    /// or not. The drain takes it after each call that may sync, for
    /// `tracker_journal_sync_seconds`.
    pub fn take_sync_duration_ns(&mut self) -> Option<u64> {
        self.sync_ns.take()
    }

    /// Where the next record goes: the active segment's number and the index of its next slot.
    /// Every record this writer appended is before it.
    pub fn end(&self) -> (u64, u32) {
        let index = (self.active.write_off - self.active.header_bytes) / EVENT_BYTES;
        (self.active.number, u32::try_from(index).unwrap_or(u32::MAX))
    }

    /// Records in the active segment, recovered ones included.
    pub fn records_in_segment(&self) -> u64 {
        self.active.records
    }

    /// Path of the active segment file.
    pub fn segment_path(&self) -> &Path {
        &self.active.path
    }

    /// Makes `schema` the schema of the records appended from now on. When it differs from the
    /// active segment's, a new segment is started with it (the old one keeps its records under
    /// its own schema, so every segment stays self-describing). Returns whether a segment was
    /// started. Cold: the drain calls it when a reloaded config changed the event types. On an
    /// error the journal keeps its old schema and stays usable; the caller retries.
    #[cold]
    pub fn set_schema(&mut self, schema: &Schema) -> Result<bool, JournalError> {
        let json = schema.to_json();
        if json == self.schema_json {
            return Ok(false);
        }
        let header_bytes = header_bytes_for(json.len());
        if json.len() > SCHEMA_BYTES_MAX || (header_bytes + EVENT_BYTES) as u64 > self.segment_bytes {
            return Err(JournalError::invalid(
                "set schema",
                &self.dir,
                io::ErrorKind::InvalidInput,
                format!(
                    "schema JSON of {} bytes does not fit a segment header (at most {SCHEMA_BYTES_MAX} bytes, \
                     and segment_bytes {} must hold the header and one record)",
                    json.len(),
                    self.segment_bytes
                ),
            ));
        }
        let old_json = std::mem::replace(&mut self.schema_json, json);
        let old_header = std::mem::replace(&mut self.header_bytes, header_bytes);
        match self.rotate() {
            Ok(()) => Ok(true),
            Err(e) => {
                self.schema_json = old_json;
                self.header_bytes = old_header;
                Err(e)
            }
        }
    }

    /// Leaves the full active segment for a new one. Cold: renames the segment made ahead
    /// (`ahead.rs`) into place, maps it and prefaults its first PREFAULT_BYTES, then starts
    /// making the one after it; creates the segment here only when none was made ahead
    /// (preallocate and fsync, ~1–2 ms). Unmaps the old one (little is left mapped: the drain
    /// unmaps each step behind the writer, `start_writeback` / `unmap_written`).
    #[cold]
    fn rotate(&mut self) -> Result<(), JournalError> {
        // At most one segment waits for sync(): two rotations between syncs (tiny segments)
        // flush the older one here. Its records were appended since the last sync, so a failure
        // is the next sync()'s to report (the drain acknowledges on that sync under `always`);
        // the append itself can go on.
        if let Some(r) = self.retired.take() {
            if let Err(e) = r.flush() {
                self.sync_failed = true;
                self.deferred_sync_error.get_or_insert(e);
            }
        }
        // The segment left at the rotation before, when the one being left now did not reach a
        // kept window of its own first (`release_step`): msynced now or long ago (unless that
        // failed, see `release_step`), and written at least CACHE_KEPT_BYTES ago when the
        // segment being left holds that much. A smaller segment keeps it cached (closed here),
        // so collectors still read the last few segments from memory.
        if let Some(f) = self.left_cached.take() {
            if !self.sync_failed && !self.sync_in_flight() && self.active.write_off >= CACHE_KEPT_BYTES {
                drop_cache(&f, 0, 0);
            }
        }
        // A `.seg` already under the next number was published by an earlier rotation that
        // failed after its rename (the directory fsync or the mmap failed). A reader may hold
        // that file open, waiting at its first slot, and would never see records written to
        // another file put under its name: it stays as it is (empty), and the writer takes the
        // number after it. One stat per rotation. (Only a file: anything else under that name
        // was never a segment, and the rename over it fails and is reported.)
        let mut number = self.active.number + 1;
        while fs::symlink_metadata(segment_path(&self.dir, number)).is_ok_and(|m| m.is_file()) {
            number += 1;
        }
        let made_ahead = self.ahead.take().and_then(|a| a.take(number, &self.schema_json));
        let renamed = made_ahead.is_some();
        let next = match made_ahead {
            Some((file, tmp)) => self.activate_made_ahead(number, file, &tmp).inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })?,
            None => self.create_active(number)?,
        };
        let old = std::mem::replace(&mut self.active, next);
        if !self.kernel_writeback_only {
            self.left_cached = Some(old.file);
        }
        if old.write_off > old.synced_off && !self.kernel_writeback_only {
            self.retired = Some(Retired { path: old.path, map: old.map, from: old.synced_off, to: old.write_off });
        }
        self.bytes_written_total += self.header_bytes as u64;
        self.segments_made_ahead += renamed as u64;
        self.start_ahead(renamed);
        Ok(())
    }

    /// Starts making segment active + 1 on a helper thread. `fsync_dir_first`: a rename into
    /// the directory is not yet durable, and the helper fsyncs the directory before it starts.
    fn start_ahead(&mut self, fsync_dir_first: bool) {
        if fsync_dir_first {
            self.rename_durable.store(false, SeqCst);
        }
        self.ahead = Ahead::start(AheadSpec {
            dir: self.dir.clone(),
            shard: self.shard,
            number: self.active.number + 1,
            segment_bytes: self.segment_bytes,
            schema_json: self.schema_json.clone(),
            fsync_dir_then: fsync_dir_first.then(|| self.rename_durable.clone()),
        });
    }

    /// Puts segment `number`, made ahead as `tmp`, into place as the active segment: its header
    /// records now as its creation time (the fixed part of each copy, one sector each, CRC
    /// included), then the rename. The directory fsync is left to the helper thread or to the
    /// next `sync()`.
    fn activate_made_ahead(&self, number: u64, file: File, tmp: &Path) -> Result<Active, JournalError> {
        let path = segment_path(&self.dir, number);
        let encoded = SegmentHeader::new_now(self.shard, number, self.schema_json.clone()).encode();
        for copy in [0, encoded.len() / 2] {
            let fixed = &encoded[copy..copy + HEADER_FIXED_BYTES];
            file.write_all_at(fixed, copy as u64).map_err(|e| JournalError::new("write header", tmp, e))?;
        }
        fs::rename(tmp, &path).map_err(|e| JournalError::new("rename", tmp, e))?;
        // The first sync() also covers the rewritten header.
        Active::start_empty(number, path, file, self.segment_bytes, self.header_bytes, 0)
    }

    fn create_active(&self, number: u64) -> Result<Active, JournalError> {
        let spec = NewSegment {
            dir: &self.dir,
            dir_file: &self.dir_file,
            shard: self.shard,
            segment_bytes: self.segment_bytes,
            schema_json: &self.schema_json,
            header_bytes: self.header_bytes,
        };
        spec.create(number)
    }
}

/// What a new segment of a shard is made of.
struct NewSegment<'a> {
    dir: &'a Path,
    dir_file: &'a File,
    shard: u16,
    segment_bytes: u64,
    schema_json: &'a [u8],
    header_bytes: usize,
}

impl NewSegment<'_> {
    /// Creates segment `number` with its header on disk and maps it.
    fn create(&self, number: u64) -> Result<Active, JournalError> {
        let header = SegmentHeader::new_now(self.shard, number, self.schema_json.to_vec());
        let path = segment_path(self.dir, number);
        let file = create_segment_file(self.dir_file, &path, self.segment_bytes, &header)?;
        Active::start_empty(number, path, file, self.segment_bytes, self.header_bytes, self.header_bytes)
    }
}

/// Writes a new segment under a `.tmp` name — preallocated, header written, fsynced — then
/// renames it to `path` and fsyncs the directory, so a `.seg` file always has its header on
/// disk and a reader never sees a half-made one.
fn create_segment_file(
    dir_file: &File,
    path: &Path,
    segment_bytes: u64,
    header: &SegmentHeader,
) -> Result<File, JournalError> {
    let file = make_tmp_segment(path, segment_bytes, header)?;
    let tmp = with_suffix(path, TMP_SUFFIX);
    fs::rename(&tmp, path).map_err(|e| JournalError::new("rename", &tmp, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    dir_file.sync_all().map_err(|e| JournalError::new("fsync dir", dir, e))?;
    Ok(file)
}

/// Makes `path` + `.tmp`: preallocated to `segment_bytes`, `header` written, fsynced. On an
/// error the file is removed, so it does not hold the space that ran out.
pub(super) fn make_tmp_segment(path: &Path, segment_bytes: u64, header: &SegmentHeader) -> Result<File, JournalError> {
    let tmp = with_suffix(path, TMP_SUFFIX);
    let made = (|| {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| JournalError::new("create", &tmp, e))?;
        let bytes = || format!("{segment_bytes} bytes");
        file.set_len(segment_bytes).map_err(|e| JournalError::with_detail("set_len", path, bytes(), e))?;
        // Allocate every block now: a full disk fails here, at rotation, never as a SIGBUS on
        // a store into the map.
        fallocate(&file, segment_bytes).map_err(|e| JournalError::with_detail("fallocate", path, bytes(), e))?;
        file.write_all_at(&header.encode(), 0).map_err(|e| JournalError::new("write header", path, e))?;
        file.sync_all().map_err(|e| JournalError::new("fsync", path, e))?;
        Ok(file)
    })();
    if made.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    made
}

/// Unix time in nanoseconds; 0 before 1970.
pub(super) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn fallocate(file: &File, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: posix_fallocate on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            // It returns the error number instead of setting errno.
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Maps `len` bytes of a segment file read-write; pages are prefaulted ahead of the writer in
/// PREFAULT_BYTES steps (see `Active::prefault_ahead`).
fn map_segment(file: &File, path: &Path, len: usize) -> Result<MmapMut, JournalError> {
    // SAFETY: the mmap contract of the journal. The file is a segment of a shard directory that
    // this process holds the flock of, and while mapped it is written only through this map, by
    // this one writer (the drain thread that owns the ShardJournal); readers only read it. Its
    // length is fixed: it was preallocated to `len` bytes before mapping, and the journal never
    // truncates a mapped segment. Truncation or writes by another process are out of contract
    // (a store past a truncated end would SIGBUS). The writer prefaults a window ahead of its
    // position, so an append touches no page that is not resident.
    let map = unsafe { MmapOptions::new().len(len).map_mut(file) }
        .map_err(|e| JournalError::with_detail("mmap", path, format!("{len} bytes"), e))?;
    // The writer only ever appends: faulting a page must not read ahead (and zero) large folios
    // of the preallocated file beyond it, which showed as 8% of the process's CPU in memset
    // under page_cache_ra_order. A failed hint only costs that CPU.
    let _ = map.advise(memmap2::Advice::Random);
    Ok(map)
}

/// Whether every byte of `b` is zero: 64 bytes at a time with an OR the compiler vectorises
/// (recovery may look at a whole segment's worth).
pub(crate) fn all_zero(b: &[u8]) -> bool {
    let (blocks, rest) = b.as_chunks::<64>();
    blocks.iter().all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0) && rest.iter().all(|&x| x == 0)
}

/// What [`ShardJournal::open`] did with the `.seg.tmp` files it found (`resolve_tmps`).
struct Tmps {
    /// Held no intact record: removed.
    removed: Vec<u64>,
    /// Renamed into place as `.seg`.
    recovered: Vec<u64>,
    /// Renamed `.seg.unpublished`.
    set_aside: Vec<u64>,
    notes: Vec<String>,
}

/// Resolves every `.seg.tmp` in `dir` (`listing`, ascending), before the last segment is
/// recovered. A `.tmp` is either a creation cut short or a segment made ahead and not yet used
/// (no record was ever written to either), or a made-ahead segment that a rotation renamed into
/// place and the writer appended to, whose rename a power loss undid before the directory
/// fsync made it durable (its header and records reached the disk, its name did not). Those
/// records were acknowledged (`received`) and may have been read by collectors, so:
/// - no intact record in it: removed, as it always was;
/// - intact records, a header that is good for this shard and number, no `N.seg`, and N the
///   number after every other segment file: renamed to `N.seg` (the rename undone, nothing in
///   the file changed), then recovered as the last segment like any other;
/// - intact records otherwise (ambiguous: `N.seg` exists too, N is not the next number, or the
///   header is bad or names another shard or number): renamed `N.seg.unpublished` (or the
///   first free `N.seg.unpublished.K`, K = 1, 2, …, when an earlier one or an operator's copy
///   holds that name: `set_aside`) and kept, never read and never deleted, with a note naming
///   it for the operator.
///
/// The directory is fsynced once after any change.
fn resolve_tmps(dir: &Path, dir_file: &File, shard: u16, listing: &[(u64, SegmentFile)]) -> Result<Tmps, JournalError> {
    let mut out = Tmps { removed: Vec::new(), recovered: Vec::new(), set_aside: Vec::new(), notes: Vec::new() };
    // The highest number of a file that stays (live, .corrupt, .unpublished), as it grows.
    let mut kept_max = listing.iter().filter(|&&(_, k)| k != SegmentFile::Tmp).map(|&(n, _)| n).max().unwrap_or(0);
    for &(n, _) in listing.iter().filter(|&&(_, k)| k == SegmentFile::Tmp) {
        let path = segment_path(dir, n);
        let tmp = with_suffix(&path, TMP_SUFFIX);
        let (header, records) = inspect_tmp(&tmp, shard, n)?;
        if records.intact == 0 && records.unreadable == 0 {
            fs::remove_file(&tmp).map_err(|e| JournalError::new("remove", &tmp, e))?;
            out.removed.push(n);
            continue;
        }
        let live_too = listing.contains(&(n, SegmentFile::Live));
        let why_not = match header {
            Err(bad) => Some(format!("its header does not fit: {bad}")),
            Ok(_) if live_too => Some(format!("{} exists too", path.display())),
            Ok(_) if n != kept_max + 1 => {
                Some(format!("segment {n} is not the next number after segment {kept_max}, the newest kept"))
            }
            Ok(_) => None,
        };
        match why_not {
            None => {
                fs::rename(&tmp, &path).map_err(|e| JournalError::new("rename", &tmp, e))?;
                out.recovered.push(n);
                out.notes.push(format!(
                    "{}: a made-ahead segment holding {records} whose rename into place a power loss \
                     undid; renamed back to {} (nothing in it changed), so its records are kept and read",
                    tmp.display(),
                    path.display()
                ));
            }
            Some(why) => {
                let aside = set_aside(dir, &tmp, n, SegmentFile::Unpublished)?;
                out.set_aside.push(n);
                out.notes.push(format!(
                    "{}: holds {records} but cannot be put into place: {why}; SET ASIDE as {}{} and \
                     kept: collectors and `tracker journal cat` do not read it, and it counts against \
                     journal.size_bytes_max until an operator moves or deletes it",
                    tmp.display(),
                    aside.display(),
                    taken_before(dir, n, SegmentFile::Unpublished, &aside),
                ));
            }
        }
        kept_max = kept_max.max(n);
    }
    if !(out.removed.is_empty() && out.recovered.is_empty() && out.set_aside.is_empty()) {
        dir_file.sync_all().map_err(|e| JournalError::new("fsync dir", dir, e))?;
    }
    Ok(out)
}

/// Renames `from` (segment `n`'s file) to the first free name among `aside(0)`, `aside(1)`, …
/// (`N.seg.unpublished`, `N.seg.unpublished.1`, …) and returns it. A file set aside is never
/// deleted, so neither may setting another aside replace it (an earlier open's, or a copy an
/// operator put back), nor may a name already taken fail the open: the writer would not start
/// until someone moved files by hand. The rename itself refuses a taken name
/// (`RENAME_NOREPLACE`), so a file that appears between two tries is kept too. Every name tried
/// and refused is a file in `dir`, so the search ends within the directory's size; it errs only
/// when all 2^32 copy numbers of `n` are taken.
fn set_aside(dir: &Path, from: &Path, n: u64, aside: fn(u32) -> SegmentFile) -> Result<PathBuf, JournalError> {
    for copy in 0..=u32::MAX {
        let to = aside(copy).path(dir, n);
        match rename_noreplace(from, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(JournalError::with_detail("rename", from, format!("to {}", to.display()), e)),
        }
    }
    Err(JournalError::invalid(
        "rename",
        from,
        io::ErrorKind::AlreadyExists,
        format!("every name it could be set aside under in {} is taken; move some out", dir.display()),
    ))
}

/// For the operator's log, when `set_aside` chose a name with a copy number (`taken`): that
/// more files are set aside under segment `n`, so the one the line names is not the only one.
fn taken_before(dir: &Path, n: u64, aside: fn(u32) -> SegmentFile, taken: &Path) -> String {
    if aside(0).path(dir, n) == taken {
        return String::new();
    }
    format!(
        " ({} and any lower copy number were taken already; those files are kept as they are)",
        aside(0).path(dir, n).display()
    )
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing `to`.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (c_from, c_to) = (c_path(from)?, c_path(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call; the kernel only reads them.
    let r = unsafe {
        libc::renameat2(libc::AT_FDCWD, c_from.as_ptr(), libc::AT_FDCWD, c_to.as_ptr(), libc::RENAME_NOREPLACE)
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // A file system (or a kernel before 3.15) without RENAME_NOREPLACE.
        Some(libc::EINVAL | libc::ENOSYS) => rename_if_absent(from, to),
        _ => Err(e),
    }
}

/// `rename_noreplace` where the kernel cannot refuse a taken name itself: look, then rename.
/// Only another hand in this directory at that instant could slip a file in between; the
/// writer holds the shard's lock.
fn rename_if_absent(from: &Path, to: &Path) -> io::Result<()> {
    if fs::symlink_metadata(to).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    fs::rename(from, to)
}

/// The header check of `.seg.tmp` `tmp` as segment `number` of `shard`, and how many slots may
/// hold records: the intact ones and the unreadable ones (EIO), from its header's end when the
/// header is good, else at every slot a header could have put one (512-byte steps from the
/// first page). A header that cannot be read is a bad header, not an error: the file is judged
/// by its records like one whose header a crash cut.
fn inspect_tmp(
    tmp: &Path,
    shard: u16,
    number: u64,
) -> Result<(Result<SegmentHeader, HeaderError>, Slots), JournalError> {
    let file = File::open(tmp).map_err(|e| JournalError::new("open", tmp, e))?;
    let file_bytes = file.metadata().map_err(|e| JournalError::new("stat", tmp, e))?.len();
    let header = read_header(&file, file_bytes, shard, number)
        .unwrap_or_else(|e| Err(HeaderError::Unreadable { error: e.to_string() }));
    let from = header.as_ref().map_or(PAGE_BYTES, |h| h.header_bytes as usize);
    let (intact, unreadable) = count_intact(&file, from, file_bytes as usize);
    Ok((header, Slots { intact, unreadable }))
}

/// What a `.seg.tmp` holds (`inspect_tmp`).
struct Slots {
    intact: u64,
    unreadable: u64,
}

impl std::fmt::Display for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} record(s)", self.intact)?;
        if self.unreadable > 0 {
            write!(f, " and {} slot(s) that cannot be read (I/O error)", self.unreadable)?;
        }
        Ok(())
    }
}

/// Intact records among the slots of `file` from `from` (a slot offset) up to `len`, read with
/// `pread` over the file's data ranges (a preallocated, unwritten tail is not read), and the
/// slots that could not be read (EIO), which may hold records too.
fn count_intact(file: &File, from: usize, len: usize) -> (u64, u64) {
    let mut buf = vec![0u8; SCAN_CHUNK_SLOTS * EVENT_BYTES];
    let (mut intact, mut unreadable) = (0, 0);
    let mut next = from;
    for (a, b) in data_ranges(file, from, len) {
        let at = (from + (a - from) / EVENT_BYTES * EVENT_BYTES).max(next);
        // Every slot that starts in the range (it may end past it).
        let to = if b > at { (at + (b - at).div_ceil(EVENT_BYTES) * EVENT_BYTES).min(len) } else { at };
        let _ = pread::for_each_slot(file, at, to, &mut buf, |_, slot| {
            match slot {
                Some(s) => intact += u64::from(Event::from_bytes(s).is_sealed_intact()),
                None => unreadable += 1,
            }
            ControlFlow::Continue(())
        });
        next = next.max(to);
    }
    (intact, unreadable)
}

/// What the last writer's `writer.state` says about the last segment (see `writer_state`).
#[derive(Clone, Copy)]
struct Trust {
    /// The page cache it wrote into is the one readers read from (same boot), or it stopped
    /// cleanly (everything synced): recovery may append to the segment.
    tail: bool,
    /// It stopped cleanly: no record was being copied, so a bad slot is damage, not a torn write.
    stopped_clean: bool,
}

/// Rewrites each copy of `header` that is not on disk as this build encodes it (a damaged
/// first copy the header was read around, a damaged second one nobody reads while the first is
/// good, one left behind by a rotation cut between its two writes), and makes them durable
/// before any append: the segment then has two good copies again. Returns whether the second
/// copy was rewritten (the first is, exactly when the header was read from the second). A
/// version 1 header, which has one copy, is left as it is.
fn repair_header(file: &File, path: &Path, header: &SegmentHeader) -> Result<bool, JournalError> {
    if header.header_bytes as usize != header_bytes_for(header.schema_json.len()) {
        return Ok(false);
    }
    let encoded = header.encode();
    let copy = encoded.len() / 2;
    let mut on_disk = vec![0u8; copy];
    let mut rewritten = [false; 2];
    for (i, at) in [0, copy].into_iter().enumerate() {
        // The first copy is rewritten only when the header was read around it: bytes past its
        // schema, which no CRC covers, are not damage. A copy that cannot be read (a bad
        // sector) is rewritten: the write usually makes the drive remap the sector.
        let stale = match i {
            0 => header.first_copy_bad.is_some(),
            _ => pread::read_exact_at(file, &mut on_disk, at as u64).is_err() || on_disk[..] != encoded[at..],
        };
        if stale {
            let wrote = file.write_all_at(&encoded[at..at + copy], at as u64);
            wrote.map_err(|e| JournalError::new("write header", path, e))?;
            rewritten[i] = true;
        }
    }
    if rewritten.contains(&true) {
        file.sync_data().map_err(|e| JournalError::new("fsync", path, e))?;
    }
    Ok(rewritten[1])
}

/// Recovers the highest-numbered segment `n`: returns it as the active segment when the writer
/// can go on appending to it, `None` (with the reason in `report`) when a new one is needed.
/// `trust`: what the last writer's state says (see [`Trust`]).
#[allow(clippy::too_many_arguments)] // the open's state, passed down once
fn recover_last(
    dir: &Path,
    dir_file: &File,
    shard: u16,
    n: u64,
    schema: &Schema,
    schema_json: &[u8],
    trust: Trust,
    report: &mut RecoveryReport,
) -> Result<Option<Active>, JournalError> {
    report.last_segment = n;
    let path = segment_path(dir, n);
    let file =
        OpenOptions::new().read(true).write(true).open(&path).map_err(|e| JournalError::new("open", &path, e))?;
    let file_bytes = file.metadata().map_err(|e| JournalError::new("stat", &path, e))?.len();
    let header = match read_header(&file, file_bytes, shard, n) {
        Ok(h) => h,
        // Neither copy can be read (EIO, or both copies' pages on bad sectors). Not damage a
        // rename to .corrupt should settle: the disk may answer again, and then readers find
        // every record. Failing the open instead would stop the tracker at every start until
        // someone moved the file; a new segment lets it serve meanwhile.
        Err(e) => {
            report.new_segment_reason = Some("the last segment's header cannot be read (I/O error); left as is");
            report.detail = Some(format!(
                "{}: header cannot be read: {e}; left as is, readers retry it; new events go to a new segment",
                path.display()
            ));
            return Ok(None);
        }
    };
    let header = match header {
        Ok(h) => h,
        // Written by a later tracker, which a rollback replaced with this build: not damage.
        // Renamed aside, its events would reach no reader once that build runs again; left in
        // place, collectors stop there and wait for it (collector/source.rs).
        Err(bad) if bad.newer_format().is_some() => {
            report.new_segment_reason = Some("last segment was written by a newer tracker; left as is");
            report.detail = Some(format!(
                "{}: {bad}; written by a newer tracker, left as is for a build that reads it; new events go to a \
                 new segment",
                path.display()
            ));
            return Ok(None);
        }
        Err(bad) => {
            let corrupt = set_aside(dir, &path, n, SegmentFile::Corrupt)?;
            dir_file.sync_all().map_err(|e| JournalError::new("fsync dir", dir, e))?;
            report.new_segment_reason = Some(bad.writer_reason());
            report.detail = Some(format!(
                "{}: {bad}; renamed to {}{}",
                path.display(),
                corrupt.display(),
                taken_before(dir, n, SegmentFile::Corrupt, &corrupt)
            ));
            return Ok(None);
        }
    };
    let second_rewritten = repair_header(&file, &path, &header)?;
    if let Some(bad) = &header.first_copy_bad {
        report.notes.push(format!(
            "{}: the header's first copy was damaged ({bad}); rewritten from the second, at offset {}",
            path.display(),
            header.read_at()
        ));
    } else if second_rewritten {
        report.notes.push(format!(
            "{}: the header's second copy, at offset {}, did not match the first (damaged, or a rotation \
             stopped between its two writes); rewritten from the first",
            path.display(),
            header.header_bytes / 2
        ));
    }
    if file_bytes > isize::MAX as u64 {
        return Err(JournalError::invalid(
            "open",
            &path,
            io::ErrorKind::InvalidData,
            format!("segment is {file_bytes} bytes, more than this machine can map"),
        ));
    }
    let len = file_bytes as usize;
    let header_bytes = header.header_bytes as usize;
    // The machine restarted while this segment was being written (`!trust.tail`): readers
    // (collectors, `journal cat --follow`) may have taken records from the page cache that never
    // reached the disk, and moved their cursors past them. Appending here would put new events
    // at those positions, where the cursors would skip them. Same when written data follows a
    // bad or missing record, when a record went bad after a clean stop, or when a slot cannot
    // be read (`recover_records`). Either way the segment is left as it is.
    let torn_possible = !trust.stopped_clean;
    let tail = if trust.tail { Some(recover_records(&file, &path, header_bytes, len, torn_possible)?) } else { None };
    let left_because = match &tail {
        None => Some((
            "the machine restarted since the last segment was written, without a clean stop; left as is",
            "the machine restarted without a clean stop",
        )),
        Some(t) if t.unreadable => Some((
            "last segment has a slot that cannot be read (I/O error); left as is for readers",
            "a slot cannot be read (I/O error)",
        )),
        Some(t) if t.sealed && t.damaged => Some((
            "last segment has a bad record though its writer stopped cleanly (damage, not a torn write); left as is \
             for readers",
            "a record went bad after its writer stopped cleanly",
        )),
        Some(t) if t.sealed => Some((
            "last segment has written data after a bad or missing record; left as is for readers",
            "written data follows a bad or missing record",
        )),
        Some(_) => None,
    };
    if let Some((reason, why)) = left_because {
        let left = scan_left_segment(&file, header_bytes, len);
        report.records = left.reachable;
        report.sealed_bad_records = left.bad;
        report.new_segment_reason = Some(reason);
        report.detail = Some(left.describe(&path, why));
        return Ok(None);
    }
    let tail = tail.expect("trusted and not left as is");
    report.records = tail.records;
    report.torn_records = tail.torn_records;
    report.torn_bytes = tail.torn_bytes;

    let same_schema =
        header.schema_json == schema_json || Schema::from_json(&header.schema_json).is_ok_and(|s| s == *schema);
    if !same_schema {
        report.new_segment_reason = Some("schema changed since the last segment was written");
        report.detail =
            Some(format!("{} was written with another schema; new events go to segment {}", path.display(), n + 1));
        return Ok(None);
    }
    if tail.end_off + EVENT_BYTES > len {
        report.new_segment_reason = Some("last segment is full");
        return Ok(None);
    }
    // Appends go on in this file, so every block of it must be allocated: a store into a hole
    // on a full disk is a SIGBUS, not an error. This journal preallocated the segment when it
    // made it, but a sparse copy or restore (cp --sparse, rsync -S, a backup tool) drops that.
    // Over blocks already allocated this changes nothing and costs an extent lookup.
    fallocate(&file, file_bytes)
        .map_err(|e| JournalError::with_detail("fallocate", &path, format!("{file_bytes} bytes, to resume it"), e))?;
    // Mapped only now, to append: the scan above read every written slot with `pread`, so a
    // slot of it that the disk cannot read was an error, not a SIGBUS. The writer's stores start
    // at the page of `end_off`, which the scan has just read.
    let map = map_segment(&file, &path, len)?;
    let last_page = tail.end_off - tail.end_off % PAGE_BYTES;
    let mut active = Active {
        number: n,
        path: path.into(),
        map,
        write_off: tail.end_off,
        header_bytes,
        // The recovered records may be only in the page cache (the last run may have died
        // before syncing them): the first sync() covers them all.
        synced_off: header_bytes,
        // The first sync() writes the recovered records: writeback in steps starts from their
        // last page (the prefault starts there too), not with one burst over the whole
        // recovered tail.
        released_off: last_page,
        dropped_off: 0,
        records: tail.records,
        faulted_off: last_page,
        file,
    };
    active.prefault_ahead();
    Ok(Some(active))
}

/// Slots read per `pread` by the recovery scans.
const SCAN_CHUNK_SLOTS: usize = 128;

struct Tail {
    /// Offset of the first slot after the intact prefix.
    end_off: usize,
    records: u64,
    torn_records: u64,
    torn_bytes: u64,
    /// The segment must be left as is (see `recover_records`).
    sealed: bool,
    /// Sealed for a bad slot with nothing after it, which a clean stop cannot have left.
    damaged: bool,
    /// Sealed because a slot after the prefix, or a byte after it, cannot be read.
    unreadable: bool,
}

/// Scans the records from `header_bytes` (with `pread`, of a segment `len` bytes long) for the
/// end of the intact prefix (the first slot that is all-zero or not an intact sealed record),
/// then decides by what a reader may have seen:
/// - nothing but zeros after the prefix, or one bad slot and nothing but zeros after it (a
///   record cut by a crash): a reader stops at such a slot and waits, so none has read past it.
///   The slot is zeroed and synced, and the writer appends from there (`end_off`).
/// - written data after the first bad or zero slot (a bad record followed by records, or a gap
///   that a power loss left before data written back out of order): a reader skips a bad slot
///   that more data follows, so it may have delivered records after it, and a collector's
///   cursor may point past it. Overwriting those positions would make that cursor skip the new
///   events written there, so nothing is changed: the segment is left as is (`sealed`) and the
///   writer starts the next one.
/// - one bad slot and nothing but zeros after it when no record can have been cut
///   (`!torn_possible`: the last writer stopped cleanly, after its last copy): the record was
///   damaged after it was written, and readers may have delivered it and gone on. Left as is
///   (`sealed`, `damaged`) for the same reason.
/// - a slot in or after the prefix that cannot be read (EIO): what it holds is unknown, and
///   readers skip it in the end (the collectors after retrying it), so it is left as is
///   (`sealed`, `unreadable`).
fn recover_records(
    file: &File,
    path: &Path,
    header_bytes: usize,
    len: usize,
    torn_possible: bool,
) -> Result<Tail, JournalError> {
    let mut buf = vec![0u8; SCAN_CHUNK_SLOTS * EVENT_BYTES];
    let mut records = 0u64;
    // Past the last whole slot unless the scan stops before.
    let mut end_off = len.max(header_bytes) - (len.max(header_bytes) - header_bytes) % EVENT_BYTES;
    // The slot at end_off when it is neither zero nor intact: how much of it was written.
    let mut torn_used = None;
    let mut unreadable = false;
    let _ = pread::for_each_slot(file, header_bytes, len, &mut buf, |off, slot| {
        let Some(slot) = slot else {
            (end_off, unreadable) = (off, true);
            return ControlFlow::Break(());
        };
        if all_zero(slot) || !Event::from_bytes(slot).is_sealed_intact() {
            end_off = off;
            torn_used = slot.iter().rposition(|&b| b != 0);
            return ControlFlow::Break(());
        }
        records += 1;
        ControlFlow::Continue(())
    });
    // The clean end; each outcome below is it with what was found.
    let clean =
        Tail { end_off, records, torn_records: 0, torn_bytes: 0, sealed: false, damaged: false, unreadable: false };
    if unreadable {
        return Ok(Tail { sealed: true, unreadable: true, ..clean });
    }
    let after = end_off + if torn_used.is_some() { EVENT_BYTES } else { 0 };
    if after < len {
        for (a, b) in data_ranges(file, after, len) {
            match pread::any_nonzero(file, a, b, &mut buf) {
                Ok(false) => {}
                Ok(true) => return Ok(Tail { sealed: true, ..clean }),
                Err(_) => return Ok(Tail { sealed: true, unreadable: true, ..clean }),
            }
        }
    }
    let Some(used) = torn_used else { return Ok(clean) };
    if !torn_possible {
        return Ok(Tail { sealed: true, damaged: true, ..clean });
    }
    file.write_all_at(&[0u8; EVENT_BYTES], end_off as u64)
        .map_err(|e| JournalError::with_detail("write", path, format!("zeros over the torn record at {end_off}"), e))?;
    // Durable before any append: the last run's other pages were synced by `open` already.
    file.sync_data().map_err(|e| JournalError::new("fdatasync", path, e))?;
    Ok(Tail { torn_records: 1, torn_bytes: used as u64 + 1, ..clean })
}

/// What readers will find in a segment the writer leaves as is: they deliver its intact records
/// (going on past a zeroed gap) and skip its bad slots.
struct LeftSegment {
    /// Intact records: what readers deliver.
    reachable: u64,
    /// Bad (neither intact nor zero) slots: what readers skip.
    bad: u64,
    /// Slots that cannot be read (EIO): what readers skip in the end too.
    unreadable: u64,
    /// Of `reachable`, those after an all-zero slot (a page a power loss left unwritten).
    after_gap: u64,
}

impl LeftSegment {
    fn describe(&self, path: &Path, why: &str) -> String {
        let mut d = format!(
            "{}: {why}: left as is with {} record(s) readers deliver and {} bad slot(s) they skip",
            path.display(),
            self.reachable,
            self.bad
        );
        if self.unreadable > 0 {
            let _ = write!(d, ", and {} slot(s) that cannot be read (I/O error)", self.unreadable);
        }
        if self.after_gap > 0 {
            let _ = write!(d, " ({} of the records after a zeroed gap)", self.after_gap);
        }
        d.push_str("; new events go to a new segment");
        d
    }
}

/// Counts a left segment's slots, reading only the file's data ranges (see `data_ranges`).
fn scan_left_segment(file: &File, header_bytes: usize, len: usize) -> LeftSegment {
    let mut left = LeftSegment { reachable: 0, bad: 0, unreadable: 0, after_gap: 0 };
    let mut buf = vec![0u8; SCAN_CHUNK_SLOTS * EVENT_BYTES];
    let mut gap = false;
    let mut next = header_bytes;
    for (a, b) in data_ranges(file, header_bytes, len) {
        // From the slot the range starts in (as readers do, `next_data_slot`); a hole before it
        // is all-zero slots.
        let first = (header_bytes + (a - header_bytes) / EVENT_BYTES * EVENT_BYTES).max(next);
        gap |= first > next;
        let to = first.max(first + b.saturating_sub(first) / EVENT_BYTES * EVENT_BYTES);
        let _ = pread::for_each_slot(file, first, to, &mut buf, |_, slot| {
            match slot {
                None => left.unreadable += 1,
                Some(s) if Event::from_bytes(s).is_sealed_intact() => {
                    left.reachable += 1;
                    left.after_gap += u64::from(gap);
                }
                Some(s) if all_zero(s) => gap = true,
                Some(_) => left.bad += 1,
            }
            ControlFlow::Continue(())
        });
        next = next.max(to);
    }
    left
}

/// In a segment the writer has left, the offset of the first slot at or after `from` (a slot
/// offset) that may hold written bytes, skipping what the file system reports as holes; `None`
/// when nothing but holes follows. The slot it names may still be zero (written zeros, such as
/// the prefault window): `next_nonzero_slot` reads on from there.
fn next_data_slot(file: &File, header_bytes: u64, from: u64, file_bytes: u64) -> Option<u64> {
    let (start, _) = data_ranges(file, from as usize, file_bytes as usize).next()?;
    let slot = header_bytes + (start as u64 - header_bytes) / EVENT_BYTES as u64 * EVENT_BYTES as u64;
    Some(slot.max(from))
}

/// In a segment the writer has left, the first slot at or after `from` (a slot offset) that is
/// not all zero, or that cannot be read, before `end`: read with `pread` into `buf` (a whole
/// number of slots, reused as scratch) and skipping the file's holes. `None` when only zeros
/// lie between. Both readers (`JournalReader`, the collectors' `ShardSource`) go on past a
/// zeroed gap with it; an unreadable slot is theirs to retry or skip.
pub(crate) fn next_nonzero_slot(
    file: &File,
    header_bytes: u64,
    mut from: u64,
    end: u64,
    buf: &mut [u8],
) -> Option<u64> {
    let chunk_slots = (buf.len() / EVENT_BYTES) as u64;
    debug_assert!(chunk_slots > 0);
    loop {
        let at = next_data_slot(file, header_bytes, from, end)?;
        let n = (end.saturating_sub(at) / EVENT_BYTES as u64).min(chunk_slots) as usize;
        if n == 0 {
            return None;
        }
        let chunk = &mut buf[..n * EVENT_BYTES];
        if pread::read_exact_at(file, chunk, at).is_err() {
            // A bad sector in the chunk: slot by slot, and the first that is not zero or cannot
            // be read is where the caller looks next (and meets the read error itself).
            for (k, slot) in chunk.as_chunks_mut::<EVENT_BYTES>().0.iter_mut().enumerate() {
                let off = at + (k * EVENT_BYTES) as u64;
                if pread::read_exact_at(file, slot, off).is_err() || !all_zero(slot) {
                    return Some(off);
                }
            }
        } else if let Some(k) = chunk.chunks_exact(EVENT_BYTES).position(|s| !all_zero(s)) {
            return Some(at + (k * EVENT_BYTES) as u64);
        }
        from = at + (n * EVENT_BYTES) as u64;
    }
}

/// The file's data ranges within `[from, len)`, as `(start, end)` offsets (SEEK_DATA /
/// SEEK_HOLE): ext4, xfs and tmpfs report a preallocated, never-written range as a hole, so the
/// empty tail of a 64 MiB segment is not read page by page. Where the file system cannot say,
/// the whole rest is one range.
fn data_ranges(file: &File, from: usize, len: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut off = from;
    std::iter::from_fn(move || {
        if off >= len {
            return None;
        }
        // SAFETY: lseek on a file descriptor we own; no memory is involved.
        let data = unsafe { libc::lseek(file.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            // ENXIO: no data at or after `off`. Anything else: no answer, so take it all.
            let all = io::Error::last_os_error().raw_os_error() != Some(libc::ENXIO);
            let range = (off, len);
            off = len;
            return all.then_some(range);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        let start = (data as usize).clamp(off, len);
        let end = if hole < 0 { len } else { (hole as usize).clamp(start, len) };
        // No progress (a file system answering oddly): take the rest.
        let end = if end <= start { len } else { end };
        off = end;
        Some((start, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of refusing a taken name keep both files: the kernel's (`RENAME_NOREPLACE`)
    /// and the look-then-rename used where a file system does not support it, which no file
    /// system here lacks, so it is called directly.
    #[test]
    fn a_rename_onto_a_taken_name_keeps_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("1.seg.tmp"), dir.path().join("1.seg.unpublished"));
        for rename in [rename_noreplace, rename_if_absent] {
            fs::write(&from, b"new").unwrap();
            fs::write(&to, b"set aside before").unwrap();
            assert_eq!(rename(&from, &to).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
            assert_eq!(
                (fs::read(&from).unwrap(), fs::read(&to).unwrap()),
                (b"new".to_vec(), b"set aside before".to_vec())
            );
            fs::remove_file(&to).unwrap();
            rename(&from, &to).unwrap();
            assert!(!from.exists());
            assert_eq!(fs::read(&to).unwrap(), b"new");
            fs::remove_file(&to).unwrap();
        }
    }
}
