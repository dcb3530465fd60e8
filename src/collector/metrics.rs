//! Collector metrics for the admin listener's `/metrics` (Prometheus text), from the statuses of
//! the collectors this process runs and the retention task. Labels: `collector` (config names, a
//! closed set fixed at start).

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use super::retention;
use super::runner::CollectorStatus;

static RUNNING: Mutex<Vec<Arc<CollectorStatus>>> = Mutex::new(Vec::new());

/// Called by `collector::start` for each collector it starts.
pub(crate) fn register(s: Arc<CollectorStatus>) {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner()).push(s);
}

/// The collectors this process runs.
pub fn statuses() -> Vec<Arc<CollectorStatus>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Appends the collector families to a Prometheus text exposition.
pub fn write_prometheus(out: &mut String) {
    let all = statuses();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&CollectorStatus) -> String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in &all {
            // The config keeps names to plain characters; escaped all the same, as every label.
            let (c, k) = (crate::admin::render::escape(&s.name), crate::admin::render::escape(&s.kind));
            let _ = writeln!(out, "{name}{{collector=\"{c}\",kind=\"{k}\"}} {}", value(s));
        }
    };
    family("tracker_collector_events_total", "counter", "Events acknowledged by the destination", &|s| {
        s.events_total.load(Relaxed).to_string()
    });
    family("tracker_collector_batches_total", "counter", "Batches acknowledged by the destination", &|s| {
        s.batches_total.load(Relaxed).to_string()
    });
    family("tracker_collector_retries_total", "counter", "Batch attempts that failed retriably", &|s| {
        s.retries_total.load(Relaxed).to_string()
    });
    family(
        "tracker_collector_superseded_total",
        "counter",
        "Batches sent again that the destination already held with a different body (it keeps what it has)",
        &|s| s.superseded_total.load(Relaxed).to_string(),
    );
    family(
        "tracker_collector_cursor_resets_total",
        "counter",
        "Shard cursors found past every segment of their shard (the journal was reset) and moved to its first segment",
        &|s| s.cursor_resets_total.load(Relaxed).to_string(),
    );
    family(
        "tracker_collector_records_skipped_total",
        "counter",
        &format!(
            "Records of segments the writer had left that were not delivered: they failed their CRC, or could not be read for {} s",
            super::source::UNREADABLE_SKIP_AFTER.as_secs()
        ),
        &|s| s.records_skipped_total.load(Relaxed).to_string(),
    );
    family(
        "tracker_collector_segments_skipped_total",
        "counter",
        "Segments not delivered because no copy of their header passed its checks",
        &|s| s.segments_skipped_total.load(Relaxed).to_string(),
    );
    family(
        "tracker_collector_retrying",
        "gauge",
        "1 while a batch waits to be delivered again after a retriable failure, or the collector's own journal reads, cursor reads or batch-log writes fail",
        &|s| (s.retrying.load(Relaxed) as u8).to_string(),
    );
    family(
        "tracker_collector_pending_age_seconds",
        "gauge",
        "Age now of the oldest event of the batch being delivered (0 when none is): grows while a destination is down",
        &|s| format!("{:.6}", s.pending_age_ns(crate::clock::unix_nanos()) as f64 / 1e9),
    );
    family(
        "tracker_collector_failed",
        "gauge",
        "1 when the destination answered fatal and the collector stopped",
        &|s| (s.failed.load(Relaxed) as u8).to_string(),
    );
    family("tracker_collector_caught_up", "gauge", "1 when every shard's cursor is at the end of the journal", &|s| {
        (s.caught_up.load(Relaxed) as u8).to_string()
    });
    family(
        "tracker_collector_ack_lag_seconds",
        "gauge",
        "Age of the oldest event of the last acknowledged batch when it was acknowledged",
        &|s| format!("{:.6}", s.ack_lag_ns.load(Relaxed) as f64 / 1e9),
    );
    let _ = writeln!(
        out,
        "# HELP tracker_journal_over_size_limit 1 while the journal is over journal.size_bytes_max (logged endpoints answer 503)\n\
         # TYPE tracker_journal_over_size_limit gauge\ntracker_journal_over_size_limit {}",
        retention::journal_over_limit() as u8
    );
    let _ = writeln!(
        out,
        "# HELP tracker_journal_segments_deleted_total Segments deleted by retention\n\
         # TYPE tracker_journal_segments_deleted_total counter\ntracker_journal_segments_deleted_total {}",
        retention::SEGMENTS_DELETED_TOTAL.load(Relaxed)
    );
}
