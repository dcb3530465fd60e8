//! `kind = "jsonl"`: appends each event as one JSON line (the shape of `tracker journal cat`,
//! allowlisted fields only) to a file. For local pipelines, audits and tests.
//!
//! Options: `path` (required), `fsync` (default true: a batch is acknowledged once the lines
//! are on disk). At-least-once: after a crash a batch may be appended twice; every line carries
//! the event `id` to deduplicate on. Lines stay whole: a failed write is cut back off the file
//! before the retry, and a line a crash left without its newline is ended before the next one.
//! The file may be rotated from outside (renamed or removed, as logrotate does): each batch is
//! written to the file `path` names at that moment, never to one renamed away or unlinked,
//! where an acknowledged line would be lost with it. With `fsync`, a file the collector creates
//! has its directory fsynced before the first line goes in.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{Batch, Collector, Delivery, Options};

pub struct Jsonl {
    path: PathBuf,
    fsync: bool,
    file: Option<File>,
    buf: String,
}

pub fn factory(o: &mut Options) -> Result<Box<dyn Collector>, String> {
    let path = o.string("path");
    if path.is_empty() {
        o.error("path", "empty: expected the file to append JSON lines to");
    }
    let fsync = o.bool("fsync", true);
    Ok(Box::new(Jsonl { path: PathBuf::from(path), fsync, file: None, buf: String::new() }))
}

impl Collector for Jsonl {
    fn deliver(&mut self, batch: &Batch) -> Delivery {
        if let Some(f) = &self.file {
            // Rotated away since the last batch (renamed, removed, replaced): the open file is
            // no longer the one `path` names, and what is appended to it reaches no reader.
            let same = match (f.metadata(), std::fs::metadata(&self.path)) {
                (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
                _ => false,
            };
            if !same {
                self.file = None;
            }
        }
        if self.file.is_none() {
            match open_append(&self.path, self.fsync) {
                Ok(f) => self.file = Some(f),
                Err(e) => return Delivery::Retry(format!("open {}: {e}", self.path.display())),
            }
        }
        let f = self.file.as_mut().expect("opened above");
        let len = match f.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                self.file = None;
                return Delivery::Retry(format!("stat {}: {e}", self.path.display()));
            }
        };
        self.buf.clear();
        let mut last = [0u8; 1];
        if len > 0 && f.read_exact_at(&mut last, len - 1).is_ok() && last[0] != b'\n' {
            // A crash (or another writer) left a line unfinished: ours start on their own line.
            self.buf.push('\n');
        }
        for e in &batch.events {
            e.write_json(&mut self.buf);
            self.buf.push('\n');
        }
        let written = f.write_all(self.buf.as_bytes()).and_then(|_| if self.fsync { f.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => Delivery::Acked,
            Err(e) => {
                // Cut the partial batch off (disk full mid-write): the retry appends it whole.
                // If even that fails, the retry starts on a new line after the partial one, so
                // lines stay whole but the batch's first lines may appear twice: say so.
                let cut = match f.set_len(len) {
                    Ok(()) => String::new(),
                    Err(c) => format!("; cutting the partial batch off failed too ({c}), so its lines may repeat"),
                };
                self.file = None;
                Delivery::Retry(format!("write {}: {e}{cut}", self.path.display()))
            }
        }
    }
}

/// Opens `path` to append, creating it when missing. A file it creates gets its directory
/// entry made durable (with `fsync`) before any line is written: by POSIX a new file's name
/// is on disk only once its directory is fsynced, and without it a power cut could take the
/// file, with lines already acknowledged, along (the first batch, or the first after a
/// rotation). Done before the write, so a failure retries with nothing appended yet.
fn open_append(path: &Path, fsync: bool) -> std::io::Result<File> {
    match OpenOptions::new().read(true).append(true).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    // Created here, or by another writer between the two opens: either way not yet known durable.
    let f = OpenOptions::new().create(true).read(true).append(true).open(path)?;
    if fsync {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::journal::fsync_dir(dir)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{CollectedEvent, Value};
    use std::sync::Arc;

    fn batch(ids: std::ops::Range<u8>) -> Batch {
        let events = ids
            .map(|i| CollectedEvent {
                id: [i; 16],
                event_type: Arc::from("impression"),
                ts_ns: 1,
                shard: 0,
                seq: i as u64,
                flags: 0,
                fields: vec![(Arc::from("campaign_id"), Value::U64(7))],
            })
            .collect();
        let (from, to) = (0, 2);
        Batch {
            key: "k".into(),
            collector: Arc::from("j"),
            shard: 0,
            segment: 1,
            from,
            to,
            attempt: 1,
            sent_before: false,
            events,
        }
    }

    #[test]
    fn a_line_a_crash_left_unfinished_does_not_swallow_the_next_batch() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.jsonl");
        std::fs::write(&path, "{\"id\":\"whole\"}\n{\"id\":\"torn").unwrap();
        let mut j = Jsonl { path: path.clone(), fsync: true, file: None, buf: String::new() };
        assert_eq!(j.deliver(&batch(1..3)), Delivery::Acked);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1], "{\"id\":\"torn");
        for l in [lines[0], lines[2], lines[3]] {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
        }
        // A file that ends whole gets no blank line.
        assert_eq!(j.deliver(&batch(3..4)), Delivery::Acked);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 5);
    }

    #[test]
    fn a_file_rotated_away_gets_no_more_lines_the_path_gets_them() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.jsonl");
        let mut j = Jsonl { path: path.clone(), fsync: true, file: None, buf: String::new() };
        assert_eq!(j.deliver(&batch(1..3)), Delivery::Acked);
        // logrotate's default: rename, and the writer is expected to start a new file.
        let rotated = d.path().join("out.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        assert_eq!(j.deliver(&batch(3..4)), Delivery::Acked);
        assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 2);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1, "the acknowledged line is at `path`");
        // Removed outright (rotated and compressed): the next batch is not written to the unlinked file.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(j.deliver(&batch(4..6)), Delivery::Acked);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }
}
