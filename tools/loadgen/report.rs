//! What a run leaves behind: the HdrHistogram interval log (`.hlog`, 1 s intervals, written as
//! the run goes), the percentile distribution of the whole measured window (`.hgrm`, the text
//! HdrHistogram's plotters read), and the table and machine-readable line on stdout.
//!
//! Histograms hold nanoseconds; tables and the result line print microseconds. In the `.hlog`
//! the interval max column is in milliseconds (`MaxValueDivisor` 1e6), the encoded histograms in
//! ns, as HdrHistogram's Java tools assume by default.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::SystemTime;

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::conn::{new_histogram, Counts, INTERVAL_NS};

/// The interval max column in milliseconds (histograms in ns), as HdrHistogram's tools assume.
const MAX_VALUE_DIVISOR: f64 = 1e6;
/// The header comment and the column legend HdrHistogram's Java writer puts before the first
/// interval; its reader and the Rust crate's both skip them.
const HLOG_FORMAT_VERSION: &str = "[Histogram log format version 1.3]";
const HLOG_LEGEND: &str = r#""StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram""#;

/// Merges each interval's histograms from every thread and writes an interval to the log as
/// soon as all threads have reported it, in order.
pub struct Intervals {
    threads: usize,
    intervals: usize,
    duration_ns: u64,
    /// Per interval: the threads' histograms merged, how many came, and the latest close (ns
    /// after the start of the measured window).
    pending: BTreeMap<usize, (Histogram<u64>, usize, u64)>,
    next: usize,
    pub total: Histogram<u64>,
    log: Option<HlogFile>,
}

struct HlogFile {
    out: BufWriter<File>,
    ser: V2DeflateSerializer,
    /// Reused for each interval's serialized histogram and its base64 text.
    bytes: Vec<u8>,
    text: String,
}

impl Intervals {
    pub fn new(
        threads: usize,
        intervals: usize,
        duration_ns: u64,
        hlog: Option<&Path>,
        comment: &str,
        start: SystemTime,
    ) -> io::Result<Intervals> {
        let log = match hlog {
            None => None,
            Some(p) => {
                let mut log = HlogFile {
                    out: BufWriter::new(
                        File::create(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
                    ),
                    ser: V2DeflateSerializer::new(),
                    bytes: Vec::new(),
                    text: String::new(),
                };
                // The header, once, as HdrHistogram's Java HistogramLogWriter lays it out:
                // comments (ours, the format version), StartTime, BaseTime, MaxValueDivisor (the
                // interval lines below divide their max column by it themselves), the legend.
                let mut b = IntervalLogWriterBuilder::new();
                b.with_max_value_divisor(MAX_VALUE_DIVISOR)
                    .add_comment(comment)
                    .add_comment(HLOG_FORMAT_VERSION)
                    .with_start_time(start)
                    .with_base_time(start);
                b.begin_log_with(&mut log.out, &mut log.ser)?;
                writeln!(log.out, "{HLOG_LEGEND}")?;
                log.out.flush()?;
                Some(log)
            }
        };
        Ok(Intervals {
            threads,
            intervals,
            duration_ns,
            pending: BTreeMap::new(),
            next: 0,
            total: new_histogram(),
            log,
        })
    }

    /// One thread's histogram for interval `i`, closed `closed_ns` after the start of the
    /// measured window. Returns the merged interval when it completes.
    pub fn add(&mut self, i: usize, h: Histogram<u64>, closed_ns: u64) -> io::Result<Vec<(usize, Histogram<u64>)>> {
        let e = self.pending.entry(i).or_insert_with(|| (new_histogram(), 0, 0));
        e.0.add(&h).expect("same bounds");
        e.1 += 1;
        e.2 = e.2.max(closed_ns);
        let mut done = Vec::new();
        while let Some((_, n, _)) = self.pending.get(&self.next) {
            if *n < self.threads {
                break;
            }
            let (h, _, closed_ns) = self.pending.remove(&self.next).unwrap();
            self.total.add(&h).expect("same bounds");
            self.write(self.next, &h, closed_ns)?;
            done.push((self.next, h));
            self.next += 1;
        }
        Ok(done)
    }

    pub fn complete(&self) -> bool {
        self.next == self.intervals
    }

    /// One interval line, `start,length,max,histogram` (seconds, seconds, max / divisor, V2
    /// deflate in base64), as HdrHistogram's log writers write it; flushed, so a run cut short
    /// keeps every interval written so far. The length runs to when the interval was closed:
    /// the last one holds what came in after the end of the run (late answers, the drain, the
    /// cutoff), and labelled one second long its rate read too high and its stall at the wrong time.
    fn write(&mut self, i: usize, h: &Histogram<u64>, closed_ns: u64) -> io::Result<()> {
        use base64::Engine as _;
        let Some(log) = &mut self.log else { return Ok(()) };
        let start_ns = i as u64 * INTERVAL_NS;
        let len_ns = closed_ns.max(start_ns + INTERVAL_NS.min(self.duration_ns - start_ns)) - start_ns;
        log.bytes.clear();
        log.ser.serialize(h, &mut log.bytes).map_err(|e| io::Error::other(format!("hlog: {e:?}")))?;
        log.text.clear();
        base64::engine::general_purpose::STANDARD.encode_string(&log.bytes, &mut log.text);
        writeln!(
            log.out,
            "{:.3},{:.3},{:.3},{}",
            start_ns as f64 / 1e9,
            len_ns as f64 / 1e9,
            h.max() as f64 / MAX_VALUE_DIVISOR,
            log.text
        )?;
        log.out.flush()
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub const PERCENTILES: [(&str, &str, f64); 6] = [
    ("p50", "p50_us", 50.0),
    ("p90", "p90_us", 90.0),
    ("p99", "p99_us", 99.0),
    ("p99.9", "p999_us", 99.9),
    ("p99.99", "p9999_us", 99.99),
    ("max", "max_us", 100.0),
];

fn at(h: &Histogram<u64>, q: f64) -> u64 {
    if q >= 100.0 {
        h.max()
    } else {
        h.value_at_quantile(q / 100.0)
    }
}

/// The human table and the `LOADGEN_RESULT k=v ...` line scripts parse.
pub fn summary(asked_rate: f64, duration_s: f64, c: &Counts, h: &Histogram<u64>, wake: &Histogram<u64>) -> String {
    let mut s = String::new();
    let achieved = c.sent as f64 / duration_s;
    let _ = writeln!(
        s,
        "requests: {} sent in {:.3} s = {:.1} req/s ({:.2}% of {} asked), {} of them after the end (behind schedule); 2xx {}, non-2xx {}, connection errors {}, timeouts {}, bad responses {}, missed (still behind after --drain) {}",
        c.sent,
        duration_s,
        achieved,
        100.0 * achieved / asked_rate,
        asked_rate,
        c.sent_after_end,
        c.ok,
        c.non_2xx,
        c.conn_errors,
        c.timeouts,
        c.protocol_errors,
        c.missed
    );
    let _ = writeln!(
        s,
        "latency from the intended send time (coordinated-omission corrected), µs, {} requests ({} of them failed: timed up to the failure; {} never sent: timed up to end + drain):",
        h.len(),
        c.failed_timed,
        c.missed_timed
    );
    let mut head = String::new();
    let mut vals = String::new();
    for (name, _, q) in PERCENTILES {
        let _ = write!(head, "{name:>10}");
        // No measured request (a run shorter than one request's interval): no latency, which
        // a column of zeros would read as a perfect one.
        if h.is_empty() {
            let _ = write!(vals, "{:>10}", "n/a");
        } else {
            let _ = write!(vals, "{:>10.1}", us(at(h, q)));
        }
    }
    let _ = writeln!(s, "{head}\n{vals}");
    if wake.is_empty() {
        // Never ahead of schedule: every send was already late, so there is no timer to judge.
        let _ = writeln!(
            s,
            "loadgen's own timer lateness: n/a (0 sleeps: every send was at or behind its intended time; see 'behind' above)"
        );
    } else {
        let _ = writeln!(
            s,
            "loadgen's own timer lateness (woken after the intended send time; large values mean loadgen or its CPU was the bottleneck): p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs over {} sleeps",
            us(at(wake, 50.0)),
            us(at(wake, 99.0)),
            us(wake.max()),
            wake.len()
        );
    }
    if c.behind_ns_max > 100_000_000 {
        let _ = writeln!(
            s,
            "note: a connection fell {:.0} ms behind its schedule: the server (or loadgen) could not keep up at this rate with {} in flight per connection; latencies above include that wait",
            us(c.behind_ns_max) / 1000.0,
            1
        );
    }
    let _ = write!(
        s,
        "LOADGEN_RESULT asked_rate={asked_rate} duration_s={duration_s} sent={} achieved_rate={achieved:.1} ok={} non2xx={} conn_errors={} timeouts={} protocol_errors={} failed_timed={} missed={} missed_timed={} sent_after_end={} all_sent={} all_ok={} behind_ms_max={:.3} mean_us={}",
        c.sent,
        c.ok,
        c.non_2xx,
        c.conn_errors,
        c.timeouts,
        c.protocol_errors,
        c.failed_timed,
        c.missed,
        c.missed_timed,
        c.sent_after_end,
        c.all_sent,
        c.all_ok,
        us(c.behind_ns_max) / 1000.0,
        if h.is_empty() { "nan".to_string() } else { format!("{:.1}", h.mean() / 1000.0) }
    );
    // As for the wake figures below: `nan` when nothing was measured, never a perfect 0.
    for (_, key, q) in PERCENTILES {
        if h.is_empty() {
            let _ = write!(s, " {key}=nan");
        } else {
            let _ = write!(s, " {key}={:.1}", us(at(h, q)));
        }
    }
    // No sleeps, no lateness to report: `nan` (which parses as a number), never a perfect 0.
    if wake.is_empty() {
        let _ = write!(s, " wake_p50_us=nan wake_p99_us=nan wake_max_us=nan");
    } else {
        let _ = write!(
            s,
            " wake_p50_us={:.1} wake_p99_us={:.1} wake_max_us={:.1}",
            us(at(wake, 50.0)),
            us(at(wake, 99.0)),
            us(wake.max())
        );
    }
    s.push('\n');
    s
}

/// Percentile distribution in HdrHistogram's text format (`outputPercentileDistribution`, values
/// in µs), 5 ticks per half distance: what HdrHistogram's plotters and perf/plot.py read.
pub fn write_hgrm(path: &Path, h: &Histogram<u64>) -> io::Result<()> {
    let mut out =
        BufWriter::new(File::create(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?);
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - q)) } else { format!("{:>14}", "") };
        writeln!(out, "{:>12.3} {:>14.12} {:>10} {}", us(v.value_iterated_to()), q, total, inv)?;
    }
    writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        us(h.max()),
        h.len()
    )?;
    out.flush()
}
