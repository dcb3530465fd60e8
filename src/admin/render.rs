//! Rendering on the admin thread: the Prometheus text exposition (format 0.0.4) and the `/stats`
//! JSON. Sums the shards' counters (relaxed loads: each value is exact, the set is not one
//! instant) and merges their published histograms. Allocates freely; never runs on a shard.
//!
//! Naming: counters end in `_total`, latencies are `_seconds` summaries with quantiles 0.5, 0.9,
//! 0.99, 0.999 and 1 (= the max) since start; per-shard families carry `shard`, the merged ones
//! are separate families (`…_merged_seconds`) so that summing over `shard` never double-counts.
//! The same latencies are also `…_histogram_seconds` histograms in fixed buckets, per shard,
//! for windowed quantiles and aggregation in PromQL. Every label
//! value comes from a closed set fixed at start.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::State;
use crate::metrics::latency::{new_histogram, Kind, KINDS};
use crate::metrics::{REASONS, STATUSES};

/// Quantiles of every latency summary; 1.0 is the max.
pub const QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 1.0];

/// Per-shard cumulative histograms of `kind`, and their merge.
pub fn histograms(state: &State, kind: Kind) -> (Vec<Histogram<u64>>, Histogram<u64>) {
    let per: Vec<Histogram<u64>> = state.shards.iter().map(|s| s.counters.latency.get(kind).cumulative()).collect();
    let mut all = new_histogram();
    for h in &per {
        // Same bounds: cannot fail.
        let _ = all.add(h);
    }
    (per, all)
}

pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn summary(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    let sep = if labels.is_empty() { "" } else { "," };
    for q in QUANTILES {
        let v = if q >= 1.0 { h.max() } else { h.value_at_quantile(q) };
        // No observation has no quantile (Prometheus clients print NaN), not a latency of 0.
        let v = if h.is_empty() { f64::NAN } else { v as f64 / 1e9 };
        let _ = writeln!(out, "{name}{{{labels}{sep}quantile=\"{q}\"}} {v}");
    }
    let brace = |s: &str| if s.is_empty() { String::new() } else { format!("{{{s}}}") };
    let _ = writeln!(out, "{name}_sum{} {}", brace(labels), h.mean() * h.len() as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{} {}", brace(labels), h.len());
}

/// Upper bounds (seconds) of the `…_histogram_seconds` buckets: 1-2.5-5 steps from 1 µs to
/// 60 s, the histograms' range. Fixed, so series from every tracker and every shard aggregate.
pub const BUCKETS_S: [f64; 24] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A Prometheus histogram of `h` (cumulative since start, like a counter): `_bucket` for each
/// of BUCKETS_S and `+Inf`, `_sum`, `_count`. A bucket counts the values the HDR histogram holds
/// at or below its bound, to the HDR's precision (3 significant digits).
fn buckets(out: &mut String, name: &str, labels: &str, h: &Histogram<u64>) {
    for le in BUCKETS_S {
        let n = h.count_between(0, (le * 1e9) as u64);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.mean() * h.len() as f64 / 1e9);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.len());
}

/// The `/metrics` body.
pub fn metrics(state: &State) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let shards = &state.shards;
    let sum = |f: &dyn Fn(&crate::metrics::ShardCounters) -> u64| shards.iter().map(|s| f(&s.counters)).sum::<u64>();

    family(&mut out, "tracker_build_info", "gauge", "Always 1; the tracker's version as a label");
    let _ = writeln!(out, "tracker_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    family(&mut out, "process_start_time_seconds", "gauge", "Start time of the process, seconds since the Unix epoch");
    let _ = writeln!(out, "process_start_time_seconds {}", state.started_unix_s);
    family(&mut out, "tracker_ready", "gauge", "1 when /ready answers 200, else 0");
    let _ = writeln!(out, "tracker_ready {}", u8::from(state.ready().is_ok()));

    family(
        &mut out,
        "tracker_requests_total",
        "counter",
        "Requests answered, by endpoint path (\"none\" = no endpoint matched) and status",
    );
    // One row per path (endpoints that share one, GET and POST, are one series), kept for
    // every path this process served, through reloads; then the row of no endpoint.
    let labels = state.labels.snapshot();
    let rows = labels.endpoints.iter().enumerate().map(|(i, p)| (p.as_str(), Some(i as u16)));
    for (label, row) in rows.chain(std::iter::once(("none", None))) {
        for st in STATUSES {
            let n = sum(&|c| c.requests(row, st));
            let _ =
                writeln!(out, "tracker_requests_total{{endpoint=\"{}\",status=\"{}\"}} {n}", escape(label), st.code());
        }
    }

    family(&mut out, "tracker_events_total", "counter", "Events pushed into the rings, by event type");
    for (i, t) in labels.types.iter().enumerate() {
        let _ = writeln!(out, "tracker_events_total{{type=\"{}\"}} {}", escape(t), sum(&|c| c.events(i as u16)));
    }

    family(&mut out, "tracker_rejects_total", "counter", "Requests or connections refused, by reason");
    for r in REASONS {
        let _ = writeln!(out, "tracker_rejects_total{{reason=\"{}\"}} {}", r.name(), sum(&|c| c.rejects(r)));
    }

    // Without this an undersized dedup.entries is invisible: ids evicted early from a full
    // bucket let their duplicates through, and only this count says the table is too small.
    family(
        &mut out,
        "tracker_dedup_evictions_total",
        "counter",
        "Event ids forgotten before their dedup window ended because their bucket was full (raise dedup.entries)",
    );
    let _ = writeln!(out, "tracker_dedup_evictions_total {}", state.dedup.as_ref().map_or(0, |d| d.evictions()));

    family(&mut out, "tracker_connections_accepted_total", "counter", "Connections accepted by the shards");
    let accepted = sum(&|c| c.connections_accepted.load(std::sync::atomic::Ordering::Relaxed));
    let _ = writeln!(out, "tracker_connections_accepted_total {accepted}");
    family(&mut out, "tracker_connections_open", "gauge", "Connections open now");
    // Closed is read after accepted, so it can only be ahead by connections closed in between.
    let closed = sum(&|c| c.connections_closed.load(std::sync::atomic::Ordering::Relaxed));
    let _ = writeln!(out, "tracker_connections_open {}", accepted.saturating_sub(closed));

    let watches: Vec<_> = shards.iter().filter_map(|s| s.counters.ring.get().map(|r| (s.index, r))).collect();
    family(
        &mut out,
        "tracker_ring_pushed_total",
        "counter",
        "Events pushed into the shard's ring (depth = pushed - popped)",
    );
    let popped: Vec<u64> = watches.iter().map(|(_, r)| r.popped()).collect();
    for (i, r) in &watches {
        let _ = writeln!(out, "tracker_ring_pushed_total{{shard=\"{i}\"}} {}", r.pushed());
    }
    family(
        &mut out,
        "tracker_ring_popped_total",
        "counter",
        "Events the drain took from the shard's ring into the journal",
    );
    for ((i, _), p) in watches.iter().zip(&popped) {
        let _ = writeln!(out, "tracker_ring_popped_total{{shard=\"{i}\"}} {p}");
    }
    family(&mut out, "tracker_ring_capacity_events", "gauge", "Events the shard's ring holds");
    for (i, r) in &watches {
        let _ = writeln!(out, "tracker_ring_capacity_events{{shard=\"{i}\"}} {}", r.capacity());
    }
    family(
        &mut out,
        "tracker_ring_spilled_total",
        "counter",
        "Events pushed into the ring's spill tier because its cache-hot tier was full (the drain was behind)",
    );
    for (i, r) in &watches {
        let _ = writeln!(out, "tracker_ring_spilled_total{{shard=\"{i}\"}} {}", r.spilled());
    }

    use std::sync::atomic::Ordering::Relaxed;
    family(&mut out, "tracker_journal_records_total", "counter", "Records appended to journal segments");
    let _ = writeln!(out, "tracker_journal_records_total {}", sum(&|c| c.journal_records.load(Relaxed)));
    family(&mut out, "tracker_journal_bytes_total", "counter", "Bytes appended to journal segments");
    let _ = writeln!(out, "tracker_journal_bytes_total {}", sum(&|c| c.journal_bytes.load(Relaxed)));
    family(&mut out, "tracker_journal_segments", "gauge", "Journal segment files on disk");
    let _ = writeln!(out, "tracker_journal_segments {}", segments(state));
    family(
        &mut out,
        "tracker_journal_disk_bytes",
        "gauge",
        "Bytes of segment files on disk, the segment made ahead and set-aside ones included (what journal.size_bytes_max limits)",
    );
    let _ = writeln!(out, "tracker_journal_disk_bytes {}", crate::collector::retention::disk_bytes(&state.journal_dir));
    family(
        &mut out,
        "tracker_journal_torn_records_total",
        "counter",
        "Torn records dropped from segment tails at start",
    );
    let _ = writeln!(out, "tracker_journal_torn_records_total {}", sum(&|c| c.journal_torn_records.load(Relaxed)));
    family(
        &mut out,
        "tracker_journal_syncs_total",
        "counter",
        "Journal syncs that succeeded (journal.sync: every sync_interval_ms, or per drained batch)",
    );
    let _ = writeln!(out, "tracker_journal_syncs_total {}", sum(&|c| c.journal_syncs.load(Relaxed)));
    family(
        &mut out,
        "tracker_journal_unavailable",
        "gauge",
        "1 while the shard's journal fails (appends retried; under sync = \"always\", from a failed sync until a restart) or is stalled (events wait, none journaled for journal.stall_timeout_ms); logged endpoints answer 503 meanwhile",
    );
    for s in shards {
        for (reason, on) in [("failing", s.journal_failing()), ("stalled", s.journal_stalled())] {
            let _ = writeln!(
                out,
                "tracker_journal_unavailable{{shard=\"{}\",reason=\"{reason}\"}} {}",
                s.index,
                u8::from(on)
            );
        }
    }
    family(&mut out, "tracker_journal_errors_total", "counter", "Journal append and sync failures");
    let _ = writeln!(out, "tracker_journal_errors_total {}", sum(&|c| c.journal_errors.load(Relaxed)));
    // Collectors (collector/metrics.rs): per-collector totals, lag, journal size limit.
    crate::collector::metrics::write_prometheus(&mut out);

    for kind in KINDS {
        let (per, all) = histograms(state, kind);
        let name = kind.metric();
        family(&mut out, name, "summary", &format!("{}, per shard; quantile 1 is the max", kind.help()));
        for (s, h) in shards.iter().zip(&per) {
            summary(&mut out, name, &format!("shard=\"{}\"", s.index), h);
        }
        let merged = name.replace("_seconds", "_merged_seconds");
        family(&mut out, &merged, "summary", &format!("{}, all shards merged; quantile 1 is the max", kind.help()));
        summary(&mut out, &merged, "", &all);
        // The summaries' quantiles cover the whole run; buckets give rates over any window
        // (histogram_quantile over rate(...[5m])) and add up across shards and trackers.
        let hist = name.replace("_seconds", "_histogram_seconds");
        family(&mut out, &hist, "histogram", &format!("{}, per shard, in fixed buckets", kind.help()));
        for (s, h) in shards.iter().zip(&per) {
            buckets(&mut out, &hist, &format!("shard=\"{}\"", s.index), h);
        }
    }
    out
}

/// Segment files under every shard directory (a readdir per shard: cheap at scrape rates).
fn segments(state: &State) -> u64 {
    let mut n = 0;
    for s in &state.shards {
        let dir = crate::journal::shard_dir(&state.journal_dir, s.index);
        if let Ok(rd) = std::fs::read_dir(dir) {
            n += rd
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(crate::journal::SEGMENT_SUFFIX)))
                .count() as u64;
        }
    }
    n
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50_ns": h.value_at_quantile(0.5),
        "p90_ns": h.value_at_quantile(0.9),
        "p99_ns": h.value_at_quantile(0.99),
        "p999_ns": h.value_at_quantile(0.999),
        "max_ns": h.max(),
    })
}

/// The `/stats` body: `{"histograms": {"service": {"shards": [{"shard": 0, "count": …,
/// "p50_ns": …}, …], "total": {…}}, "journal": …, "journal_sync": …, "collector_publish": …}}`.
pub fn stats_json(state: &State) -> String {
    let mut hs = serde_json::Map::new();
    for kind in KINDS {
        let (per, all) = histograms(state, kind);
        let shards: Vec<serde_json::Value> = state
            .shards
            .iter()
            .zip(&per)
            .map(|(s, h)| {
                let mut v = percentiles(h);
                v["shard"] = s.index.into();
                v
            })
            .collect();
        hs.insert(kind.tag().into(), serde_json::json!({ "shards": shards, "total": percentiles(&all) }));
    }
    serde_json::json!({ "histograms": hs }).to_string()
}

/// The `tracker stats` table from a `/stats` body: one row per histogram and shard, then its
/// total; count and p50, p90, p99, p99.9, max in µs.
pub fn stats_table(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "histogram", "shard", "count", "p50_us", "p90_us", "p99_us", "p99.9_us", "max_us"
    );
    let us = |r: &serde_json::Value, k: &str| r[k].as_u64().unwrap_or(0) as f64 / 1e3;
    let row = |out: &mut String, name: &str, shard: &str, r: &serde_json::Value| {
        let _ = writeln!(
            out,
            "{:<18} {:>6} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            name,
            shard,
            r["count"].as_u64().unwrap_or(0),
            us(r, "p50_ns"),
            us(r, "p90_ns"),
            us(r, "p99_ns"),
            us(r, "p999_ns"),
            us(r, "max_ns")
        );
    };
    for kind in KINDS {
        let h = &v["histograms"][kind.tag()];
        if h.is_null() {
            continue;
        }
        for s in h["shards"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
            row(&mut out, kind.tag(), &s["shard"].to_string(), s);
        }
        row(&mut out, kind.tag(), "total", &h["total"]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_table_has_a_row_per_shard_and_a_total_in_microseconds() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"histograms":{"service":{"shards":[{"shard":0,"count":2,"p50_ns":1500,"p90_ns":2000,"p99_ns":2000,"p999_ns":2000,"max_ns":2000}],"total":{"count":2,"p50_ns":1500,"p90_ns":2000,"p99_ns":2000,"p999_ns":2000,"max_ns":2000}}}}"#,
        )
        .unwrap();
        let t = stats_table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("service") && lines[1].contains(" 0 ") && lines[1].contains("1.5"), "{t}");
        assert!(lines[2].contains("total") && lines[2].contains("2.0"), "{t}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
