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
//! #[BaseTime: 0.000 (seconds since epoch)]
//! "StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"
//! Tag=service,1764143800.123,10.000,52345.000,HISTFAAAA…
//! ```
//! Interval timestamps are absolute (seconds since the epoch; BaseTime 0): during a
//! zero-downtime restart the old process appends its last intervals after the new process's
//! header, and a timestamp relative to a BaseTime would be read against the wrong one. Each
//! interval's start and length come from the monotonic clock, anchored to the wall clock once,
//! so a step of the wall clock does not bend them. Values and Interval_Max are in ns (readers
//! decode the histogram; give HistogramLogProcessor `-outputValueUnitRatio 1000` for µs). An
//! interval's counts are those the
//! shards published during it, so its edges are blurred by up to `admin.publish_interval_ms`.
//! Runs on its own thread. The header, and an interval's lines, are made in memory and appended
//! with one write. A write that fails part way is cut back off the file when nothing else was
//! appended meanwhile (else the next append starts on a fresh line), and its lines are kept and
//! appended before the next interval's, so a full disk loses no interval (up to
//! PENDING_BYTES_MAX of them; the error is reported once).
//!
//! [`HlogWriter::reopener`] (SIGHUP) makes the thread open the path again at its next interval
//! and write a header there: `logrotate` can rename the file, then reload the tracker.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;

use crate::metrics::latency::{new_histogram, KINDS};
use crate::runtime::ShardShared;

pub struct HlogWriter {
    stop: Arc<(Mutex<bool>, Condvar)>,
    reopen: Arc<AtomicBool>,
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

/// The header one start (or reopen) writes, in one piece; `now_s`: seconds since the epoch.
fn header(now_s: f64) -> Vec<u8> {
    format!(
        "#[Logged with tracker {}: values in ns]\n#[Histogram log format version 1.3]\n#[StartTime: {now_s:.3} (seconds since epoch)]\n#[BaseTime: 0.000 (seconds since epoch)]\n\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// The wall clock read once, and the monotonic clock at that moment: an interval's absolute
/// start is `epoch_s` plus the monotonic time since `at`.
#[derive(Clone, Copy)]
struct Anchor {
    at: Instant,
    epoch_s: f64,
}

impl Anchor {
    fn now() -> Anchor {
        let epoch_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        Anchor { at: Instant::now(), epoch_s }
    }

    /// `t` as a duration since the epoch.
    fn absolute(&self, t: Instant) -> Duration {
        Duration::from_secs_f64(self.epoch_s) + t.saturating_duration_since(self.at)
    }
}

impl HlogWriter {
    /// Writes the header to the opened file and starts the interval thread.
    pub fn start(hlog: HlogFile, interval: Duration, shards: Vec<Arc<ShardShared>>) -> io::Result<HlogWriter> {
        let HlogFile { path, file: mut out } = hlog;
        let anchor = Anchor::now();
        out.write_all(&header(anchor.epoch_s))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let reopen = Arc::new(AtomicBool::new(false));
        let (st, ro) = (stop.clone(), reopen.clone());
        let thread = std::thread::Builder::new()
            .name("tracker-hlog".into())
            .spawn(move || run(out, path, anchor, interval, shards, st, ro))?;
        Ok(HlogWriter { stop, reopen, thread })
    }

    /// A handle that asks the thread to open the path again at its next interval (after the file
    /// was renamed by log rotation), writing a fresh header there.
    pub fn reopener(&self) -> Arc<AtomicBool> {
        self.reopen.clone()
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
    anchor: Anchor,
    interval: Duration,
    shards: Vec<Arc<ShardShared>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    reopen: Arc<AtomicBool>,
) {
    let mut serializer = V2DeflateSerializer::new();
    let mut merged = new_histogram();
    let mut start = anchor.at;
    let mut next = start + interval;
    let mut failing = false;
    // The last append failed part way and could not be cut back: the file may end inside a line.
    let mut torn = false;
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
        let end = Instant::now();
        // After a stall (an append that blocked on a slow disk), the next interval is a whole
        // one from now: catching up would write a burst of intervals a few µs long.
        next = if next + interval <= end { end + interval } else { next + interval };
        // SIGHUP: a new file only when the path no longer names the one open (rotation renamed
        // it); a reload with no rotation keeps appending, without a second header.
        if reopen.swap(false, SeqCst) && !names_open_file(&path, &out) {
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    out = f;
                    torn = false;
                    // The header goes first; this interval's lines follow it.
                    let mut h = header(anchor.absolute(end).as_secs_f64());
                    h.append(&mut pending);
                    pending = h;
                }
                Err(e) => {
                    eprintln!("tracker: cannot reopen {}: {e}; still appending to the file open before", path.display())
                }
            }
        }
        let length = end.saturating_duration_since(start);
        let r = interval_lines(&mut pending, &mut serializer, &mut merged, &shards, anchor.absolute(start), length)
            .and_then(|()| append_whole(&mut out, &pending, &mut torn));
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

/// Whether `path` is the file `open` (same device and inode).
fn names_open_file(path: &Path, open: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), open.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Adds one line per kind to `lines`: the tagged histogram the shards merged for the interval.
fn interval_lines(
    lines: &mut Vec<u8>,
    serializer: &mut V2DeflateSerializer,
    merged: &mut hdrhistogram::Histogram<u64>,
    shards: &[Arc<ShardShared>],
    start: Duration,
    length: Duration,
) -> io::Result<()> {
    // A builder with no headers writes nothing: the header was written once at start.
    let mark = lines.len();
    let mut w = IntervalLogWriterBuilder::new().begin_log_with(&mut *lines, serializer)?;
    for kind in KINDS {
        merged.reset();
        for s in shards {
            s.counters.latency.get(kind).take_interval(merged);
        }
        let tag = Tag::new(kind.tag());
        if let Err(e) = w.write_histogram(merged, start, length, tag) {
            // The line's prefix is written before its histogram is serialised: drop the whole
            // interval rather than leave a line the next would be glued onto.
            lines.truncate(mark);
            return Err(io::Error::other(e.to_string()));
        }
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

/// Appends `bytes` to `file` whole or not at all. A write that fails part way is cut back off,
/// but only while the file ends where this write left it: another process appending to the
/// same path (the new one, in a zero-downtime restart) may have added lines since, and those
/// are not ours to cut. Otherwise `torn` is set and the next append starts with a line break,
/// so the fragment is a line of its own, not the start of the next.
fn append_whole(file: &mut File, bytes: &[u8], torn: &mut bool) -> io::Result<()> {
    if *torn {
        file.write_all(b"\n")?;
        *torn = false;
    }
    let before = file.metadata()?.len();
    let mut written = 0;
    while written < bytes.len() {
        match file.write(&bytes[written..]) {
            Ok(0) => return Err(cut_back(file, before, written, torn, io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cut_back(file, before, written, torn, e)),
        }
    }
    Ok(())
}

/// After `written` bytes of an append that began at `before` failed with `e`: cuts them off when
/// the file ends right after them, else marks the file `torn`. Returns `e`.
fn cut_back(file: &File, before: u64, written: usize, torn: &mut bool, e: io::Error) -> io::Error {
    if written > 0 {
        let ours = file.metadata().is_ok_and(|m| m.len() == before + written as u64);
        if !(ours && file.set_len(before).is_ok()) {
            *torn = true;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed append leaves the file as it was and the lines to append again; what is kept
    /// while appends fail is whole lines, the newest.
    #[test]
    fn a_failed_append_keeps_its_lines_whole_for_the_next() {
        let mut full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let mut torn = false;
        assert!(append_whole(&mut full, b"Tag=service,0.000,10.000,5.000,HISTF\n", &mut torn).is_err());
        assert!(!torn, "nothing was written");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.hlog");
        let mut f = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        append_whole(&mut f, b"a\n", &mut torn).unwrap();
        append_whole(&mut f, b"b\n", &mut torn).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\n");
        // A fragment another process appended after (it cannot be cut back): the next append
        // starts on a line of its own.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"Tag=serv").unwrap();
        let (before, written) = (4, 8);
        let mut torn = false;
        let _ = cut_back(&f, before, written, &mut torn, io::ErrorKind::Other.into());
        assert!(!torn && std::fs::read(&path).unwrap() == b"a\nb\n", "ours alone: cut back");
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"Tag=serv").unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"other\n").unwrap();
        let _ = cut_back(&f, before, written, &mut torn, io::ErrorKind::Other.into());
        assert!(torn, "another writer's lines follow: not cut");
        append_whole(&mut f, b"c\n", &mut torn).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"a\nb\nTag=servother\n\nc\n");

        let mut lines = b"one\ntwo\nthree\n".to_vec();
        keep_newest_lines(&mut lines, 100);
        assert_eq!(lines, b"one\ntwo\nthree\n");
        keep_newest_lines(&mut lines, 9);
        assert_eq!(lines, b"three\n", "never a part of a line");
        keep_newest_lines(&mut lines, 2);
        assert!(lines.is_empty());
    }
}
