//! A collector's persisted state per shard: the cursor (how far the destination acknowledged)
//! and the batch log (which ranges were cut into batches), under
//! `<journal.dir>/collectors/<name>/shard-NNN/`.
//!
//! ```text
//! cursor                  "segment index created_ns\n": next record to deliver, replaced
//!                         atomically (write cursor.tmp, fsync, rename, fsync dir): survives
//!                         kill -9. created_ns: the `created_ns` of that segment's header, when
//!                         the collector had it open (absent in cursors of older builds and
//!                         before the segment exists): a segment of that number created later
//!                         belongs to a journal made since (wiped and restarted); see
//!                         `segment_made_since` for why an earlier time does not count
//! <segment:20>.batches    16-byte entries appended (and fdatasync'ed) before a batch is sent:
//!                         from u32 | to u32 | crc32c(from, to) u32 | base u32 (little-endian);
//!                         base: the id of the key base the batch was sent under (0 in logs
//!                         written before bases: the legacy base). It is outside the CRC so a
//!                         build from before bases still reads these logs (an entry is one
//!                         16-byte write, inside one sector).
//! lock                    flock held by the running collector (replay refuses while held)
//! generation              "N\n": how many times this shard's journal was found reset (wiped
//!                         under this state; absent: never). Batches cut after a reset are
//!                         sent under the key base `<key_prefix>:<name>/journal-N`, as the new
//!                         journal numbers its segments from 1 again, like the old one did.
//! ```
//! and, for the whole collector, `<journal.dir>/collectors/<name>/key_bases`: one line
//! `"<id:08x> <key_prefix>:<name>\n"` per key base the collector ever sent under, appended and
//! synced before the first batch entry that names it. The first line, id `00000000`, is the
//! legacy base: the one in the config when this file was created, which entries from before
//! bases (base 0) were sent under.
//!
//! Why the base is recorded: a batch sent again (retry after a crash, replay) must carry the
//! key it carried the first time, or the destination applies it twice. The key's range part
//! comes from the entry; the base (`key_prefix` and collector name) comes from the file, not
//! from today's config, so changing `key_prefix` applies to new batches only.
//!
//! And for every collector of the journal, `<journal.dir>/collectors/default_key_prefix`: the
//! `key_prefix` of collectors that set none, `tracker-<16 hex digits>` drawn at random when the
//! first such collector starts, so two trackers on default configs never share batch keys.
//!
//! A torn last entry of a batch log (crash mid-append) fails its CRC and is ignored: that batch
//! was never sent (the append is synced before the first attempt). A torn last line of
//! `key_bases` has no newline, or an id that does not match its text, and is ignored likewise.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::journal::{create_dir_durable, fsync_dir, SEGMENT_NAME_DIGITS};

/// A place in one shard's journal: record `index` of segment `segment` (both from the journal's
/// numbering: segments from 1, records from 0 after the header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub index: u32,
}

const ENTRY_BYTES: usize = 16;
const BATCHES_SUFFIX: &str = ".batches";
const KEY_BASES: &str = "key_bases";
const DEFAULT_KEY_PREFIX: &str = "default_key_prefix";
const GENERATION: &str = "generation";

/// The `key_prefix` every collector had by default before the journal drew its own
/// ([`default_key_prefix`]): what logs from before key bases were sent under when none was set.
pub const OLD_DEFAULT_KEY_PREFIX: &str = "tracker";

/// Id of the legacy key base in `key_bases` (what entries written before bases name).
pub const LEGACY_BASE_ID: u32 = 0;

/// One batch of a batch log: records `[from, to)` sent under key base `base`
/// ([`LEGACY_BASE_ID`] in a log written before bases were recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub from: u32,
    pub to: u32,
    pub base: u32,
}

/// One segment's batch log in memory, for finding the range a position falls in with a binary
/// search: a collector opens a batch per range, so a linear scan per open made a segment of
/// many small batches quadratic. Ranges never overlap (each is cut at the cursor, never past the
/// next recorded `from`), so ordering them by `from` orders them.
#[derive(Debug, Default)]
pub struct SegmentBatches {
    /// The log's entries, by `from`.
    by_from: Vec<Recorded>,
}

impl SegmentBatches {
    /// The entries of a log as [`read_batches`] returns them (file order).
    pub fn new(mut entries: Vec<Recorded>) -> SegmentBatches {
        entries.sort_unstable_by_key(|r| r.from);
        debug_assert!(entries.windows(2).all(|w| w[0].to <= w[1].from), "overlapping ranges: {entries:?}");
        SegmentBatches { by_from: entries }
    }

    /// How many entries the log holds: the number of the next one ([`append_batch`]).
    pub fn len(&self) -> usize {
        self.by_from.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_from.is_empty()
    }

    /// The recorded range holding record `index`, or else the `from` of the first one after it
    /// (where a new range starting at `index` must end), if any.
    pub fn around(&self, index: u32) -> Result<Recorded, Option<u32>> {
        let after = self.by_from.partition_point(|r| r.from <= index);
        match after.checked_sub(1).map(|i| self.by_from[i]) {
            Some(r) if index < r.to => Ok(r),
            _ => Err(self.by_from.get(after).map(|r| r.from)),
        }
    }

    /// `r`, just appended to the log.
    pub fn push(&mut self, r: Recorded) {
        let at = self.by_from.partition_point(|x| x.from < r.from);
        self.by_from.insert(at, r);
    }

    /// The range starting at `from`, the log's last entry, just dropped from it
    /// ([`drop_last_batch`]).
    pub fn remove(&mut self, from: u32) {
        if let Ok(at) = self.by_from.binary_search_by_key(&from, |r| r.from) {
            self.by_from.remove(at);
        }
    }
}

/// `<journal>/collectors/<name>`.
pub fn collector_dir(journal: &Path, name: &str) -> PathBuf {
    journal.join("collectors").join(name)
}

/// `<journal>/collectors/<name>/shard-NNN`.
pub fn collector_shard_dir(journal: &Path, name: &str, shard: u16) -> PathBuf {
    collector_dir(journal, name).join(format!("shard-{shard:03}"))
}

/// Whether a segment whose header now says `on_disk_ns` was made after the cursor recorded
/// `recorded_ns` for a segment of the same number: the journal was reset (wiped and numbered up
/// to it again). Only a *later* time counts: the writer stamps a segment made ahead with its
/// activation time in a header write it does not sync at once, so after a power loss the disk
/// may hold the earlier time the segment was made at, while a cursor recorded the later one
/// from the page cache. That is the same segment, and a reset there would resend the journal
/// under new keys. (A new journal made under a clock set back is not told apart.)
pub fn segment_made_since(recorded_ns: u64, on_disk_ns: u64) -> bool {
    on_disk_ns > recorded_ns
}

/// Reads the cursor of a shard; `None` when none was written yet (start of the journal).
pub fn read_cursor(dir: &Path) -> io::Result<Option<Position>> {
    Ok(read_cursor_stamped(dir)?.map(|(p, _)| p))
}

/// Reads the cursor of a shard with the creation time of its segment, when it was written
/// with one; `None` when no cursor was written yet.
pub fn read_cursor_stamped(dir: &Path) -> io::Result<Option<(Position, Option<u64>)>> {
    let path = dir.join("cursor");
    // Every error names the file: it reaches an operator through the collector's last error,
    // retention's warning and `journal replay`, none of which knows where the cursor lives.
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(named(e)),
    };
    let s = String::from_utf8_lossy(&bytes);
    let mut it = s.split_whitespace();
    let parsed = (|| {
        let p = Position { segment: it.next()?.parse().ok()?, index: it.next()?.parse().ok()? };
        let created = match it.next() {
            Some(c) => Some(c.parse().ok()?),
            None => None,
        };
        it.next().is_none().then_some((p, created))
    })();
    match parsed {
        Some(p) => Ok(Some(p)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {s:?} is not \"segment index [created_ns]\"; fix or remove it (tracker journal replay rewrites it)",
                path.display()
            ),
        )),
    }
}

/// `e` with the operation and the file it was about, as `JournalError` names them
/// (`write /var/lib/tracker/journal/collectors/banker/shard-000/cursor: No space left on device`):
/// these errors reach an operator through a collector's last error and stderr, which do not
/// know which of the collector's files failed. Keeps the kind.
fn named(op: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

/// Replaces the cursor of a shard atomically: temp file, fsync, rename, fsync of the directory.
/// An error names the cursor file.
pub fn write_cursor(dir: &Path, p: Position) -> io::Result<()> {
    write_cursor_stamped(dir, p, None)
}

/// [`write_cursor`] with the creation time of the cursor's segment (its header's `created_ns`).
pub fn write_cursor_stamped(dir: &Path, p: Position, created_ns: Option<u64>) -> io::Result<()> {
    let path = dir.join("cursor");
    let line = match created_ns {
        Some(c) => format!("{} {} {c}\n", p.segment, p.index),
        None => format!("{} {}\n", p.segment, p.index),
    };
    let write = || {
        create_dir_durable(dir)?;
        let tmp = dir.join("cursor.tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        fsync_dir(dir)
    };
    write().map_err(|e| named("write", &path, e))
}

/// How many times the journal of the shard at `dir` was found reset (0 when never).
pub fn read_generation(dir: &Path) -> io::Result<u64> {
    let path = dir.join(GENERATION);
    match fs::read_to_string(&path) {
        Ok(t) => t.trim_end_matches('\n').parse().map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {t:?} is not a number", path.display()))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(named("read", &path, e)),
    }
}

/// Replaces the shard's generation atomically, as [`write_cursor`] does the cursor.
pub fn write_generation(dir: &Path, generation: u64) -> io::Result<()> {
    let path = dir.join(GENERATION);
    let write = || {
        create_dir_durable(dir)?;
        let tmp = dir.join("generation.tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(format!("{generation}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        fsync_dir(dir)
    };
    write().map_err(|e| named("write", &path, e))
}

fn batches_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:0width$}{BATCHES_SUFFIX}", width = SEGMENT_NAME_DIGITS))
}

fn entry_crc(from: u32, to: u32) -> u32 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&from.to_le_bytes());
    b[4..].copy_from_slice(&to.to_le_bytes());
    crc_fast::crc32_iscsi(&b)
}

/// The id of a key base (`<key_prefix>:<name>`) in batch log entries: never 0.
pub fn key_base_id(base: &str) -> u32 {
    crc_fast::crc32_iscsi(base.as_bytes()).max(1)
}

/// Every key base of the collector at `collector_dir` by id (empty when none was written).
/// A line whose id does not match its text (torn, or edited) is skipped, but for the legacy
/// base's.
pub fn read_key_bases(collector_dir: &Path) -> io::Result<BTreeMap<u32, String>> {
    let path = collector_dir.join(KEY_BASES);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(named("read", &path, e)),
    };
    let mut out = BTreeMap::new();
    // Only whole lines: a crash mid-append leaves a last line without its newline.
    for line in text.split_inclusive(|&b| b == b'\n').filter_map(|l| l.strip_suffix(b"\n")) {
        let Ok(line) = std::str::from_utf8(line) else { continue };
        let Some((id, base)) = line.split_once(' ') else { continue };
        match u32::from_str_radix(id, 16) {
            Ok(id) if id == key_base_id(base) || id == LEGACY_BASE_ID => {
                out.insert(id, base.to_string());
            }
            _ => continue,
        }
    }
    Ok(out)
}

/// Appends key base `base` as `id` (`key_base_id(base)`, or [`LEGACY_BASE_ID`]) to the
/// collector's `key_bases` and syncs it (and the directory when the file is new): after this
/// returns, batch entries may name `id`.
pub fn add_key_base(collector_dir: &Path, id: u32, base: &str) -> io::Result<()> {
    debug_assert!(!base.contains('\n'));
    let path = collector_dir.join(KEY_BASES);
    let add = || {
        create_dir_durable(collector_dir)?;
        let created = !path.exists();
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        // A torn line left by a crash would glue itself to this one: start on a fresh line.
        let len = f.metadata()?.len();
        let mut last = [0u8; 1];
        let torn = len > 0 && {
            File::open(&path)?.read_exact_at(&mut last, len - 1)?;
            last[0] != b'\n'
        };
        let line = format!("{}{id:08x} {base}\n", if torn { "\n" } else { "" });
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        if created {
            fsync_dir(collector_dir)?;
        }
        Ok(())
    };
    add().map_err(|e| named("write", &path, e))
}

/// The journal's own key prefix (`collectors/default_key_prefix`), drawn and stored on first
/// use. Made with a link so that two processes starting on one journal at once (a zero-downtime
/// restart) agree on it: the loser of the race reads the winner's.
pub fn default_key_prefix(journal: &Path) -> io::Result<String> {
    let dir = journal.join("collectors");
    let path = dir.join(DEFAULT_KEY_PREFIX);
    if let Some(p) = read_default_key_prefix(&path)? {
        return Ok(p);
    }
    create_dir_durable(&dir)?;
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(|e| io::Error::other(format!("no random bytes: {e}")))?;
    let drawn = format!("tracker-{:016x}", u64::from_le_bytes(random));
    let tmp = dir.join(format!("{DEFAULT_KEY_PREFIX}.{}.tmp", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(format!("{drawn}\n").as_bytes())?;
    f.sync_all()?;
    drop(f);
    let linked = fs::hard_link(&tmp, &path);
    fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => fsync_dir(&dir)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    read_default_key_prefix(&path)?.ok_or_else(|| not_a_key_prefix(&path))
}

fn not_a_key_prefix(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: not one line of 1..=64 letters, digits, '_', '-' or '.'", path.display()),
    )
}

fn read_default_key_prefix(path: &Path) -> io::Result<Option<String>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let p = text.trim_end_matches('\n');
    if valid_key_prefix(p) {
        Ok(Some(p.to_string()))
    } else {
        Err(not_a_key_prefix(path))
    }
}

/// What a `key_prefix` may be: it is part of keys other systems store and compare.
pub fn valid_key_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 64
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The batches cut in `segment`, in the order they were cut.
pub fn read_batches(dir: &Path, segment: u64) -> io::Result<Vec<Recorded>> {
    let path = batches_path(dir, segment);
    let mut b = Vec::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_end(&mut b).map_err(|e| named("read", &path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(named("read", &path, e)),
    };
    let mut out = Vec::new();
    for e in b.chunks_exact(ENTRY_BYTES) {
        let from = u32::from_le_bytes(e[0..4].try_into().expect("4"));
        let to = u32::from_le_bytes(e[4..8].try_into().expect("4"));
        let crc = u32::from_le_bytes(e[8..12].try_into().expect("4"));
        let base = u32::from_le_bytes(e[12..16].try_into().expect("4"));
        if crc != entry_crc(from, to) || from >= to {
            break;
        }
        out.push(Recorded { from, to, base });
    }
    Ok(out)
}

/// Writes `r` as entry number `entry` (0-based: the count of good entries already in the log,
/// which the caller knows from [`read_batches`]) of the batch log of `segment`, drops anything
/// after it (a torn entry left by a crash) and syncs: after this returns, a restart cuts the
/// same batch under the same key. `r.base` must already be in `key_bases` ([`add_key_base`]).
pub fn append_batch(dir: &Path, segment: u64, entry: usize, r: Recorded) -> io::Result<()> {
    let Recorded { from, to, base } = r;
    debug_assert!(from < to);
    let path = batches_path(dir, segment);
    let append = || {
        let created = entry == 0;
        if created {
            create_dir_durable(dir)?;
        }
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
        let mut e = [0u8; ENTRY_BYTES];
        e[0..4].copy_from_slice(&from.to_le_bytes());
        e[4..8].copy_from_slice(&to.to_le_bytes());
        e[8..12].copy_from_slice(&entry_crc(from, to).to_le_bytes());
        e[12..16].copy_from_slice(&base.to_le_bytes());
        let at = (entry * ENTRY_BYTES) as u64;
        f.write_all_at(&e, at)?;
        f.set_len(at + ENTRY_BYTES as u64)?;
        f.sync_data()?;
        if created {
            fsync_dir(dir)?;
        }
        Ok(())
    };
    append().map_err(|e| named("write", &path, e))
}

/// Drops entry number `entry` (the last one) of the batch log of `segment` and syncs: the
/// destination refused that batch as it was, so nothing of it was applied, and a restart cuts
/// the range afresh (under the key base then current).
pub fn drop_last_batch(dir: &Path, segment: u64, entry: usize) -> io::Result<()> {
    let path = batches_path(dir, segment);
    let drop_last = || {
        let f = OpenOptions::new().write(true).open(&path)?;
        f.set_len((entry * ENTRY_BYTES) as u64)?;
        f.sync_data()
    };
    drop_last().map_err(|e| named("truncate", &path, e))
}

/// Removes the batch logs of segments below `segment` (retention removed those segments).
pub fn remove_batches_below(dir: &Path, segment: u64) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_suffix(BATCHES_SUFFIX)).and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        if n < segment {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// The exclusive lock of a running collector on its directory, released on drop.
pub struct CollectorLock {
    _file: File,
}

/// Takes the lock of `<journal>/collectors/<name>`; an error names who to stop.
pub fn lock(journal: &Path, name: &str) -> io::Result<CollectorLock> {
    let dir = collector_dir(journal, name);
    create_dir_durable(&dir)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("lock"))?;
    // SAFETY: flock on a descriptor we own and keep open for the lock's lifetime.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("collector \"{name}\" is running ({} is locked); stop the tracker first", dir.display()),
        ));
    }
    Ok(CollectorLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cursor carries its segment's creation time when the collector had it; one written
    /// by an older build (two fields) still reads, without it; more than three fields is no
    /// cursor.
    #[test]
    fn a_cursor_reads_back_with_or_without_its_segments_creation_time() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("shard-000");
        let at = Position { segment: 1, index: 100 };
        write_cursor_stamped(&dir, at, Some(1_795_849_382_038_484_114)).unwrap();
        assert_eq!(fs::read_to_string(dir.join("cursor")).unwrap(), "1 100 1795849382038484114\n");
        assert_eq!(read_cursor_stamped(&dir).unwrap(), Some((at, Some(1_795_849_382_038_484_114))));
        assert_eq!(read_cursor(&dir).unwrap(), Some(at));
        fs::write(dir.join("cursor"), "1 100\n").unwrap();
        assert_eq!(read_cursor_stamped(&dir).unwrap(), Some((at, None)));
        for bad in ["1 100 x\n", "1 100 5 6\n", "1\n"] {
            fs::write(dir.join("cursor"), bad).unwrap();
            let e = read_cursor_stamped(&dir).unwrap_err();
            assert!(e.to_string().contains("is not \"segment index [created_ns]\""), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cursor_round_trip_and_batches_survive_a_torn_entry() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c").join("shard-000");
        assert_eq!(read_cursor(&dir).unwrap(), None);
        write_cursor(&dir, Position { segment: 3, index: 17 }).unwrap();
        assert_eq!(read_cursor(&dir).unwrap(), Some(Position { segment: 3, index: 17 }));
        let r = |from, to| Recorded { from, to, base: 7 };
        append_batch(&dir, 3, 0, r(0, 10)).unwrap();
        append_batch(&dir, 3, 1, r(10, 25)).unwrap();
        // A torn third entry.
        let p = batches_path(&dir, 3);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(read_batches(&dir, 3).unwrap(), vec![r(0, 10), r(10, 25)]);
        append_batch(&dir, 3, 2, r(25, 30)).unwrap();
        assert_eq!(read_batches(&dir, 3).unwrap(), vec![r(0, 10), r(10, 25), r(25, 30)]);
        remove_batches_below(&dir, 4).unwrap();
        assert!(read_batches(&dir, 3).unwrap().is_empty());
    }

    #[test]
    fn a_log_written_before_key_bases_still_reads_with_base_0() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("shard-000");
        fs::create_dir_all(&dir).unwrap();
        // The old entry layout: from | to | crc32c(from, to) | 0.
        let mut e = [0u8; ENTRY_BYTES];
        e[0..4].copy_from_slice(&5u32.to_le_bytes());
        e[4..8].copy_from_slice(&9u32.to_le_bytes());
        let mut ft = [0u8; 8];
        ft[..4].copy_from_slice(&5u32.to_le_bytes());
        ft[4..].copy_from_slice(&9u32.to_le_bytes());
        e[8..12].copy_from_slice(&crc_fast::crc32_iscsi(&ft).to_le_bytes());
        fs::write(batches_path(&dir, 2), e).unwrap();
        assert_eq!(read_batches(&dir, 2).unwrap(), vec![Recorded { from: 5, to: 9, base: LEGACY_BASE_ID }]);
        // And an entry with a base is the old layout plus the base: an old build reads it.
        append_batch(&dir, 2, 1, Recorded { from: 9, to: 12, base: 77 }).unwrap();
        let b = fs::read(batches_path(&dir, 2)).unwrap();
        assert_eq!(&b[16 + 8..16 + 12], &entry_crc(9, 12).to_le_bytes());
        drop_last_batch(&dir, 2, 1).unwrap();
        assert_eq!(read_batches(&dir, 2).unwrap().len(), 1);
    }

    #[test]
    fn segment_batches_find_the_range_around_a_position_in_any_log_order() {
        let r = |from, to| Recorded { from, to, base: 1 };
        // File order need not be `from` order: a range cut in a gap before later ones.
        let mut b = SegmentBatches::new(vec![r(10, 20), r(30, 35), r(0, 5)]);
        assert_eq!(b.len(), 3);
        assert_eq!(b.around(0), Ok(r(0, 5)));
        assert_eq!(b.around(4), Ok(r(0, 5)));
        assert_eq!(b.around(5), Err(Some(10)), "a gap: a new range there ends at the next one");
        assert_eq!(b.around(19), Ok(r(10, 20)));
        assert_eq!(b.around(25), Err(Some(30)));
        assert_eq!(b.around(35), Err(None));
        assert_eq!(b.around(u32::MAX), Err(None));
        b.push(r(5, 10));
        assert_eq!((b.len(), b.around(7), b.around(5)), (4, Ok(r(5, 10)), Ok(r(5, 10))));
        b.remove(5);
        assert_eq!((b.len(), b.around(7)), (3, Err(Some(10))));
        assert!(SegmentBatches::new(Vec::new()).around(3) == Err(None));
    }

    #[test]
    fn key_bases_round_trip_and_skip_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("banker");
        assert!(read_key_bases(&dir).unwrap().is_empty());
        add_key_base(&dir, LEGACY_BASE_ID, "old:banker").unwrap();
        add_key_base(&dir, key_base_id("tracker:banker"), "tracker:banker").unwrap();
        // A crash mid-append: half a line, no newline.
        let mut f = OpenOptions::new().append(true).open(dir.join(KEY_BASES)).unwrap();
        f.write_all(b"0badc0de host-").unwrap();
        assert_eq!(read_key_bases(&dir).unwrap().len(), 2);
        add_key_base(&dir, key_base_id("host-2:banker"), "host-2:banker").unwrap();
        let bases = read_key_bases(&dir).unwrap();
        assert_eq!(bases.get(&key_base_id("tracker:banker")).map(String::as_str), Some("tracker:banker"));
        assert_eq!(bases.get(&key_base_id("host-2:banker")).map(String::as_str), Some("host-2:banker"));
        assert_eq!(bases.get(&LEGACY_BASE_ID).map(String::as_str), Some("old:banker"));
        assert_eq!(bases.len(), 3);
    }

    /// Regression: a cursor damaged into bytes that are not UTF-8 (or one that cannot be read
    /// at all) failed with the bare "stream did not contain valid UTF-8", naming no file, in
    /// the collector's last error, retention's warning and `journal replay`.
    #[test]
    fn a_cursor_that_cannot_be_read_is_named() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("shard-000");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cursor"), b"3 \xff\xfe\n").unwrap();
        let e = read_cursor(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains(&dir.join("cursor").display().to_string()), "{e}");
        fs::remove_file(dir.join("cursor")).unwrap();
        fs::create_dir(dir.join("cursor")).unwrap();
        let e = read_cursor(&dir).unwrap_err();
        assert!(e.to_string().contains(&dir.join("cursor").display().to_string()), "{e}");
    }

    /// Regression: writing a cursor, a batch log or `key_bases` failed with the bare OS error
    /// ("write cursor: Is a directory (os error 21)"), naming no file, in the collector's last
    /// error and on stderr: the operator could not tell which of a collector's files it was.
    #[test]
    fn a_cursor_or_batch_log_that_cannot_be_written_is_named() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c").join("shard-000");
        // A directory where the file goes fails for every user, root included.
        fs::create_dir_all(dir.join("cursor.tmp")).unwrap();
        let e = write_cursor(&dir, Position { segment: 1, index: 2 }).unwrap_err().to_string();
        assert!(e.contains(&dir.join("cursor").display().to_string()), "{e}");
        fs::create_dir_all(batches_path(&dir, 3)).unwrap();
        let e = append_batch(&dir, 3, 0, Recorded { from: 0, to: 1, base: 1 }).unwrap_err().to_string();
        assert!(e.contains(&batches_path(&dir, 3).display().to_string()), "{e}");
        let e = read_batches(&dir, 3).unwrap_err().to_string();
        assert!(e.contains(&batches_path(&dir, 3).display().to_string()), "{e}");
        let e = drop_last_batch(&dir, 3, 0).unwrap_err().to_string();
        assert!(e.contains(&batches_path(&dir, 3).display().to_string()), "{e}");
        let cdir = d.path().join("c");
        fs::create_dir_all(cdir.join(KEY_BASES)).unwrap();
        let e = add_key_base(&cdir, 1, "x:c").unwrap_err().to_string();
        assert!(e.contains(&cdir.join(KEY_BASES).display().to_string()), "{e}");
        let e = read_key_bases(&cdir).unwrap_err().to_string();
        assert!(e.contains(&cdir.join(KEY_BASES).display().to_string()), "{e}");
    }

    #[test]
    fn a_second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = lock(d.path(), "x").unwrap();
        let e = lock(d.path(), "x").err().unwrap();
        assert!(e.to_string().contains("stop the tracker"), "{e}");
    }

    #[test]
    fn the_default_key_prefix_is_drawn_once_per_journal() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = default_key_prefix(a.path()).unwrap();
        assert!(first.starts_with("tracker-") && first.len() == 24 && valid_key_prefix(&first), "{first}");
        assert_eq!(default_key_prefix(a.path()).unwrap(), first);
        assert_ne!(default_key_prefix(b.path()).unwrap(), first);
        // No temporary file is left next to it.
        assert_eq!(fs::read_dir(a.path().join("collectors")).unwrap().count(), 1);
        // A file that is not a prefix is an error naming it, never a silently new prefix.
        fs::write(a.path().join("collectors").join(DEFAULT_KEY_PREFIX), "two words\n").unwrap();
        let e = default_key_prefix(a.path()).unwrap_err().to_string();
        assert!(e.contains("default_key_prefix") && e.contains("letters"), "{e}");
    }
}
