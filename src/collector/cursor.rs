//! A collector's persisted state per shard: the cursor (how far the destination acknowledged)
//! and the batch log (which ranges were cut into batches), under
//! `<journal.dir>/collectors/<name>/shard-NNN/`.
//!
//! ```text
//! cursor                  "segment index\n": next record to deliver, replaced atomically
//!                         (write cursor.tmp, fsync, rename, fsync dir): survives kill -9
//! <segment:20>.batches    16-byte entries appended (and fdatasync'ed) before a batch is sent:
//!                         from u32 | to u32 | crc32c(from, to) u32 | zero u32 (little-endian)
//! lock                    flock held by the running collector (replay refuses while held)
//! ```
//! A torn last entry of a batch log (crash mid-append) fails its CRC and is ignored: that batch
//! was never sent (the append is synced before the first attempt).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::journal::SEGMENT_NAME_DIGITS;

/// A place in one shard's journal: record `index` of segment `segment` (both from the journal's
/// numbering: segments from 1, records from 0 after the header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub index: u32,
}

const ENTRY_BYTES: usize = 16;
const BATCHES_SUFFIX: &str = ".batches";

/// `<journal>/collectors/<name>`.
pub fn collector_dir(journal: &Path, name: &str) -> PathBuf {
    journal.join("collectors").join(name)
}

/// `<journal>/collectors/<name>/shard-NNN`.
pub fn collector_shard_dir(journal: &Path, name: &str, shard: u16) -> PathBuf {
    collector_dir(journal, name).join(format!("shard-{shard:03}"))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the cursor of a shard; `None` when none was written yet (start of the journal).
pub fn read_cursor(dir: &Path) -> io::Result<Option<Position>> {
    let path = dir.join("cursor");
    let mut s = String::new();
    match File::open(&path) {
        Ok(mut f) => f.read_to_string(&mut s)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut it = s.split_whitespace();
    let parsed = (|| Some(Position { segment: it.next()?.parse().ok()?, index: it.next()?.parse().ok()? }))();
    match parsed {
        Some(p) => Ok(Some(p)),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: {s:?} is not \"segment index\"; fix or remove it (tracker journal replay rewrites it)",
                path.display()
            ),
        )),
    }
}

/// Replaces the cursor of a shard atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_cursor(dir: &Path, p: Position) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join("cursor.tmp");
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    f.write_all(format!("{} {}\n", p.segment, p.index).as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join("cursor"))?;
    fsync_dir(dir)
}

fn batches_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:0width$}{BATCHES_SUFFIX}", width = SEGMENT_NAME_DIGITS))
}

fn entry_crc(from: u32, to: u32) -> u32 {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&from.to_le_bytes());
    b[4..].copy_from_slice(&to.to_le_bytes());
    crc32c::crc32c(&b)
}

/// The ranges `[from, to)` cut into batches in `segment`, in the order they were cut.
pub fn read_batches(dir: &Path, segment: u64) -> io::Result<Vec<(u32, u32)>> {
    let mut b = Vec::new();
    match File::open(batches_path(dir, segment)) {
        Ok(mut f) => f.read_to_end(&mut b)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in b.chunks_exact(ENTRY_BYTES) {
        let from = u32::from_le_bytes(e[0..4].try_into().expect("4"));
        let to = u32::from_le_bytes(e[4..8].try_into().expect("4"));
        let crc = u32::from_le_bytes(e[8..12].try_into().expect("4"));
        if crc != entry_crc(from, to) || from >= to {
            break;
        }
        out.push((from, to));
    }
    Ok(out)
}

/// Writes range `[from, to)` as entry number `entry` (0-based: the count of good entries
/// already in the log, which the caller knows from [`read_batches`]) of the batch log of
/// `segment`, drops anything after it (a torn entry left by a crash) and syncs: after this
/// returns, a restart cuts the same batch.
pub fn append_batch(dir: &Path, segment: u64, entry: usize, from: u32, to: u32) -> io::Result<()> {
    debug_assert!(from < to);
    let path = batches_path(dir, segment);
    let created = entry == 0;
    if created {
        fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    let mut e = [0u8; ENTRY_BYTES];
    e[0..4].copy_from_slice(&from.to_le_bytes());
    e[4..8].copy_from_slice(&to.to_le_bytes());
    e[8..12].copy_from_slice(&entry_crc(from, to).to_le_bytes());
    let at = (entry * ENTRY_BYTES) as u64;
    f.write_all_at(&e, at)?;
    f.set_len(at + ENTRY_BYTES as u64)?;
    f.sync_data()?;
    if created {
        fsync_dir(dir)?;
    }
    Ok(())
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
    fs::create_dir_all(&dir)?;
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

    #[test]
    fn cursor_round_trip_and_batches_survive_a_torn_entry() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c").join("shard-000");
        assert_eq!(read_cursor(&dir).unwrap(), None);
        write_cursor(&dir, Position { segment: 3, index: 17 }).unwrap();
        assert_eq!(read_cursor(&dir).unwrap(), Some(Position { segment: 3, index: 17 }));
        append_batch(&dir, 3, 0, 0, 10).unwrap();
        append_batch(&dir, 3, 1, 10, 25).unwrap();
        // A torn third entry.
        let p = batches_path(&dir, 3);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(read_batches(&dir, 3).unwrap(), vec![(0, 10), (10, 25)]);
        append_batch(&dir, 3, 2, 25, 30).unwrap();
        assert_eq!(read_batches(&dir, 3).unwrap(), vec![(0, 10), (10, 25), (25, 30)]);
        remove_batches_below(&dir, 4).unwrap();
        assert!(read_batches(&dir, 3).unwrap().is_empty());
    }

    #[test]
    fn a_second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _a = lock(d.path(), "x").unwrap();
        let e = lock(d.path(), "x").err().unwrap();
        assert!(e.to_string().contains("stop the tracker"), "{e}");
    }
}
