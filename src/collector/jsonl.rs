//! `kind = "jsonl"`: appends each event as one JSON line (the shape of `tracker journal cat`,
//! allowlisted fields only) to a file. For local pipelines, audits and tests.
//!
//! Options: `path` (required), `fsync` (default true: a batch is acknowledged once the lines
//! are on disk). At-least-once: after a crash a batch may be appended twice; every line carries
//! the event `id` to deduplicate on.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

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
        if self.file.is_none() {
            match OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) => return Delivery::Retry(format!("open {}: {e}", self.path.display())),
            }
        }
        self.buf.clear();
        for e in &batch.events {
            e.write_json(&mut self.buf);
            self.buf.push('\n');
        }
        let f = self.file.as_mut().expect("opened above");
        let written = f.write_all(self.buf.as_bytes()).and_then(|_| if self.fsync { f.sync_data() } else { Ok(()) });
        match written {
            Ok(()) => Delivery::Acked,
            Err(e) => {
                self.file = None;
                Delivery::Retry(format!("write {}: {e}", self.path.display()))
            }
        }
    }
}
