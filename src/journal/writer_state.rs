//! `shard-NNN/writer.state`: whether the journal's last writer ran in this boot of the machine,
//! and whether it stopped cleanly. One line, `<boot id> running|clean`, padded to 64 bytes:
//! overwritten in place once it exists, made with write, fsync, rename, fsync the directory.
//!
//! Why: readers (collectors, `journal cat --follow`) read records from the page cache as soon
//! as they are appended, before any msync. A process that dies (even `kill -9`) leaves the page
//! cache as readers saw it, so recovery may go on appending after the last intact record. A
//! machine that restarts loses what was not yet on disk, while a collector's cursor may already
//! be past it: appending there would put new events where the cursor skips them. So the writer
//! appends to its last segment only when the page cache it wrote into is this boot's, or when it
//! stopped cleanly (everything synced); otherwise recovery leaves the segment as it is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::JournalError;

pub const STATE_FILE: &str = "writer.state";
pub const RUNNING: &str = "running";
pub const CLEAN: &str = "clean";

/// This boot's id (`/proc/sys/kernel/random/boot_id`); None where there is no such file.
fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Whether recovery may append to the last segment of `dir`: its writer ran in this boot, or
/// it stopped cleanly. No state file (a journal written before this file existed, or never
/// opened) counts as neither.
pub fn tail_trusted(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(STATE_FILE)) else {
        return false;
    };
    let mut words = text.split_whitespace();
    let (Some(boot), Some(state)) = (words.next(), words.next()) else {
        return false;
    };
    state == CLEAN || boot_id().is_some_and(|b| b == boot)
}

/// Whether the last writer of `dir` recorded a clean stop (everything it wrote is on disk). No
/// state file counts as not: a writer that could not record `running` removed it.
pub fn stopped_clean(dir: &Path) -> bool {
    fs::read_to_string(dir.join(STATE_FILE)).is_ok_and(|text| text.split_whitespace().nth(1) == Some(CLEAN))
}

/// The file's fixed size: a boot id (36 bytes), a state, padding, a newline. Fixed so that
/// an existing file is overwritten in place, which needs no free block (a full disk is when the
/// preallocated segments matter most).
const STATE_BYTES: usize = 64;

/// Records `state` for this boot, durably, before it matters: `RUNNING` before the first
/// append, `CLEAN` after the last sync. An existing file is overwritten in place (one sector:
/// the write lands whole or not at all); a missing one is made under a temporary name and
/// renamed.
pub fn write(dir: &Path, dir_file: &File, state: &str) -> Result<(), JournalError> {
    let path = dir.join(STATE_FILE);
    let mut line = format!("{} {state}", boot_id().unwrap_or_else(|| "unknown".into())).into_bytes();
    line.resize(STATE_BYTES - 1, b' ');
    line.push(b'\n');
    if let Ok(f) = OpenOptions::new().write(true).open(&path) {
        if f.metadata().is_ok_and(|m| m.len() == STATE_BYTES as u64) {
            return f
                .write_all_at(&line, 0)
                .and_then(|()| f.sync_data())
                .map_err(|e| JournalError::new("write", &path, e));
        }
    }
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&line)?;
        f.sync_all()
    };
    write().map_err(|e| JournalError::new("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| JournalError::new("rename", &tmp, e))?;
    dir_file.sync_all().map_err(|e| JournalError::new("fsync dir", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(state: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        if let Some(s) = state {
            fs::write(d.path().join(STATE_FILE), s).unwrap();
        }
        d
    }

    #[test]
    fn trusted_when_written_in_this_boot_or_stopped_cleanly() {
        let this = boot_id().expect("Linux has a boot id");
        assert!(tail_trusted(dir_with(Some(&format!("{this} running\n"))).path()));
        assert!(tail_trusted(dir_with(Some(&format!("{this} clean\n"))).path()));
        assert!(tail_trusted(dir_with(Some("another-boot clean\n")).path()));
        assert!(!tail_trusted(dir_with(Some("another-boot running\n")).path()));
        assert!(!tail_trusted(dir_with(None).path()));
        assert!(!tail_trusted(dir_with(Some("garbage")).path()));
    }

    #[test]
    fn stopped_clean_only_when_the_state_says_so() {
        assert!(stopped_clean(dir_with(Some("another-boot clean\n")).path()));
        assert!(!stopped_clean(dir_with(Some("another-boot running\n")).path()));
        assert!(!stopped_clean(dir_with(Some("clean")).path()), "a boot id, then the state");
        assert!(!stopped_clean(dir_with(None).path()));
    }

    #[test]
    fn write_replaces_the_state_for_this_boot() {
        let d = dir_with(Some("another-boot running\n"));
        let f = File::open(d.path()).unwrap();
        write(d.path(), &f, RUNNING).unwrap();
        assert!(tail_trusted(d.path()));
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = inode(&d.path().join(STATE_FILE));
        write(d.path(), &f, CLEAN).unwrap();
        assert_eq!(inode(&d.path().join(STATE_FILE)), before, "overwritten in place once it exists");
        let text = fs::read_to_string(d.path().join(STATE_FILE)).unwrap();
        assert_eq!(text.len(), STATE_BYTES);
        assert_eq!(text.split_whitespace().nth(1), Some("clean"), "{text}");
        assert!(!d.path().join("writer.state.tmp").exists());
    }
}
