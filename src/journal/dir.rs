//! Directories that survive a power cut: creating a directory adds an entry to its parent, and
//! by POSIX that entry is on disk only once the parent is fsynced. ext4 and xfs happen to order
//! it before the files later synced inside; other filesystems need not, and a lost shard or
//! collector directory would take every synced segment or cursor in it along. So every
//! directory the tracker creates under `journal.dir` (and `journal.dir` itself) is made here.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Fsyncs directory `dir`, making the entries created or renamed in it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and whatever parents it lacks (like `fs::create_dir_all`), then fsyncs the
/// parent of each directory it created, outermost first. An existing `dir` costs one `stat`.
pub fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    // The missing tail of the path, innermost first.
    let mut missing = Vec::new();
    let mut p = dir;
    loop {
        match fs::metadata(p) {
            Ok(_) if p == dir => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a directory"))
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(p);
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for d in missing.into_iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => {}
            // Made meanwhile by another process (two starting on one journal): its maker may
            // not have synced the parent yet, so this one does.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fsync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_every_missing_level_and_accepts_an_existing_one() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
        create_dir_durable(t.path()).unwrap();
    }

    #[test]
    fn a_file_in_the_way_is_an_error_not_a_directory() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("f"), b"x").unwrap();
        let e = create_dir_durable(&t.path().join("f/sub")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
        assert!(create_dir_durable(&t.path().join("f")).is_err());
    }
}
