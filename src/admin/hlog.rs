//! The `.hlog` writer: every `admin.hlog_interval_ms` it takes what each shard published since
//! the last interval (metrics::latency `Published::take_interval`), merges the shards, and appends
//! one tagged histogram per kind (`service`, `journal`, `journal_sync`, `collector_publish`) to
//! `admin.hlog_path`
//! in the HdrHistogram interval-log format (log format 1.3, V2 deflate-compressed histograms), so
//! Java's HistogramLogProcessor, HdrHistogram's plotters and the hdrhistogram crate's
//! `IntervalLogIterator` read it.
//!
//! Layout of what one start appends (the file is opened for append: a restart adds a new header,
//! which the readers accept):
//! ```text
//! #[Logged with tracker 0.1.0: values in ns]
//! #[Histogram log format version 1.3]
//! #[StartTime: 1764143800.123 (seconds since epoch)]
//! #[BaseTime: 1764143800.123 (seconds since epoch)]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=service,0.000,10.000,52345.000,HISTFAAAA…
//! ```
//! Interval timestamps are seconds since BaseTime. Values and Interval_Max are in ns (readers
//! decode the histogram; give HistogramLogProcessor `-outputValueUnitRatio 1000` for µs). An
//! interval's counts are those the
//! shards published during it, so its edges are blurred by up to `admin.publish_interval_ms`.
//! Runs on its own thread. An interval's lines are made in memory and appended with one write;
//! a write that fails is cut back off the file (so no torn line is left for the next to run
//! into) and its lines are kept and appended before the next interval's, so a full disk loses
//! no interval (up to PENDING_BYTES_MAX of them; the error is reported once).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::metrics::latency::{new_histogram, KINDS};
use crate::runtime::ShardShared;

pub struct HlogWriter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

/// `admin.hlog_path`, opened (created, appended to) before the shards start: a path that
/// cannot be written fails start-up at once, as a taken admin port does, instead of after the
/// journal was taken (in a zero-downtime restart, after the old process was told to stop).
pub struct HlogFile {
    path: PathBuf,
    file: File,
}

impl HlogFile {
    pub fn open(path: &Path) -> io::Result<HlogFile> {
        let file =
            OpenOptions::new().create(true).append(true).open(path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open admin.hlog_path {}: {e}", path.display()))
            })?;
        Ok(HlogFile { path: path.to_path_buf(), file })
    }
}

impl HlogWriter {
    /// Writes the header to the opened file and starts the interval thread.
    pub fn start(hlog: HlogFile, interval: Duration, shards: Vec<Arc<ShardShared>>) -> io::Result<HlogWriter> {
        let HlogFile { path, file: mut out } = hlog;
        let base = SystemTime::now();
        let base_s = base.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        write!(
            out,
            "#[Logged with tracker {}: values in ns]\n#[Histogram log format version 1.3]\n#[StartTime: {base_s:.3} (seconds since epoch)]\n#[BaseTime: {base_s:.3} (seconds since epoch)]\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
            env!("CARGO_PKG_VERSION")
        )?;
        out.flush()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tracker-hlog".into())
            .spawn(move || run(out, path, base, interval, shards, st))?;
        Ok(HlogWriter { stop, thread })
    }

    /// Writes the last (partial) interval and joins the thread.
    pub fn finish(self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        let _ = self.thread.join();
    }
}

/// Lines kept while appending fails (a full disk) before the oldest are dropped: hours of
/// intervals at the default 10 s, a few KiB each.
const PENDING_BYTES_MAX: usize = 4 << 20;

fn run(
    mut out: File,
    path: PathBuf,
    base: SystemTime,
    interval: Duration,
    shards: Vec<Arc<ShardShared>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
) {
    let mut serializer = V2DeflateSerializer::new();
    let mut merged = new_histogram();
    let mut start = base;
    let mut next = Instant::now() + interval;
    let mut failing = false;
    // Lines made and not appended yet (the appends failed), oldest first.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let stopping = {
            let mut stopped = stop.0.lock().unwrap_or_else(|e| e.into_inner());
            while !*stopped {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                stopped = stop.1.wait_timeout(stopped, left).unwrap_or_else(|e| e.into_inner()).0;
            }
            *stopped
        };
        next += interval;
        let end = SystemTime::now();
        let since_base = start.duration_since(base).unwrap_or_default();
        let length = end.duration_since(start).unwrap_or_default();
        let r = interval_lines(&mut pending, &mut serializer, &mut merged, &shards, since_base, length)
            .and_then(|()| append_whole(&mut out, &pending));
        match r {
            Ok(()) => {
                pending.clear();
                failing = false;
            }
            Err(e) => {
                if !failing {
                    eprintln!(
                        "tracker: cannot append to {}: {e}; keeping the intervals, retrying every interval",
                        path.display()
                    );
                    failing = true;
                }
                keep_newest_lines(&mut pending, PENDING_BYTES_MAX);
            }
        }
        start = end;
        if stopping {
            return;
        }
    }
}

/// Adds one line per kind to `lines`: the tagged histogram the shards merged for the interval.
fn interval_lines(
    lines: &mut Vec<u8>,
    serializer: &mut V2DeflateSerializer,
    merged: &mut hdrhistogram::Histogram<u64>,
    shards: &[Arc<ShardShared>],
    since_base: Duration,
    length: Duration,
) -> io::Result<()> {
    // A builder with no headers writes nothing: the header was written once at start.
    let mut w = IntervalLogWriterBuilder::new().begin_log_with(lines, serializer)?;
    for kind in KINDS {
        merged.reset();
        for s in shards {
            s.counters.latency.get(kind).take_interval(merged);
        }
        let tag = Tag::new(kind.tag());
        w.write_histogram(merged, since_base, length, tag).map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// Drops the oldest whole lines of `lines` until at most `max` bytes are left.
fn keep_newest_lines(lines: &mut Vec<u8>, max: usize) {
    if lines.len() > max {
        let cut = lines.len() - max;
        let cut = lines[cut..].iter().position(|&b| b == b'\n').map_or(lines.len(), |i| cut + i + 1);
        lines.drain(..cut);
    }
}

/// Appends `bytes` to `file` whole or not at all: a write that fails part way is cut back off
/// (the file is opened for append, so its end is where the write began).
fn append_whole(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let before = file.metadata()?.len();
    file.write_all(bytes).inspect_err(|_| {
        let _ = file.set_len(before);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed append leaves the file as it was and the lines to append again; what is kept
    /// while appends fail is whole lines, the newest.
    #[test]
    fn a_failed_append_keeps_its_lines_whole_for_the_next() {
        let mut full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        assert!(append_whole(&mut full, b"Tag=service,0.000,10.000,5.000,HISTF\n").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.hlog");
        let mut f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        append_whole(&mut f, b"a\n").unwrap();
        append_whole(&mut f, b"b\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");

        let mut lines = b"one\ntwo\nthree\n".to_vec();
        keep_newest_lines(&mut lines, 100);
        assert_eq!(lines, b"one\ntwo\nthree\n");
        keep_newest_lines(&mut lines, 9);
        assert_eq!(lines, b"three\n", "never a part of a line");
        keep_newest_lines(&mut lines, 2);
        assert!(lines.is_empty());
    }
}
