//! Latency histograms: where a shard (or its drain, or a collector) records how long a stage took,
//! and how those numbers reach the admin thread without a lock or an allocation on the hot path.
//!
//! Four measurements, all in nanoseconds, per shard:
//! - `service`: request service time, from the read completion that made a request complete to
//!   the end of its batch — every request the read completed answered into the connection's
//!   write buffer, which goes out as one write (recorded by the reactor, once per batch with
//!   the batch's request count, rejects included; an `ack = "logged"` request's wait for the
//!   journal is not part of it). Wall clock, so its start is the read the batch already makes
//!   for event timestamps: one vDSO read (~17–50 ns) plus ~5 ns of record per batch (benches
//!   `latency`), not per request;
//! - `journal`: ingest-to-journal latency, from the event's receive time (`Event::ts_ns`, taken
//!   when the read completed) to the end of the drain batch that appended it to the segment
//!   (recorded by the drain, once per event, one clock read per batch);
//! - `journal_sync`: how long each journal sync took (msync, or the background fdatasync whose
//!   outcome the drain applied), recorded by the drain once per sync;
//! - `collector_publish`: collector publish latency, from a batch's first delivery attempt to its
//!   acknowledgement (retries included): each collector thread owns a [`LocalHistogram`] per
//!   shard and publishes it into `ShardCounters::latency.collector_publish` of the shard whose
//!   segments the batch came from, every second (`collector/runner.rs`).
//!
//! ## Chosen design: thread-owned histograms, published on a timer with `try_lock`
//! Each recording thread owns a [`LocalHistogram`] (one allocation at start; `saturating_record`
//! on a fixed-size histogram never allocates, locks or fails). Every `admin.publish_interval_ms`
//! (a monoio timer task on the reactor, a clock check in the drain's loop — never inside a
//! request) the owner adds its local counts into the shard's [`Published`] pair — a cumulative
//! histogram (what `/metrics` and `/stats` read) and an interval histogram (what the `.hlog`
//! writer takes and resets) — and clears its local one. It takes that Mutex with `try_lock`: if
//! the admin thread happens to hold it, the owner keeps its counts and tries again next tick, so
//! a reactor never waits on the control plane. The admin thread clones under the lock (it may
//! allocate; it is not on the request path) and merges shards after releasing it.
//!
//! Why not the alternatives: atomics per bucket (27 648 of them per histogram) would make every
//! record a locked RMW and every read a racy scan; `hdrhistogram::sync::SyncHistogram` recorders
//! allocate on refresh and need the reader's cooperation; a channel of samples allocates or drops.
//! The cost of ours: a snapshot is up to one publish interval old, and data recorded since the
//! last tick of a stopping shard is published by its final flush at exit.
//!
//! Limits: values 1 ns ..= 60 s at 3 significant digits (larger values are clamped to 60 s);
//! each histogram holds 27 648 u64 counts (216 KiB, zero pages mapped lazily), 8 per shard.

use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Lowest value told apart from zero, ns.
pub const LATENCY_NS_MIN: u64 = 1;
/// Highest value recorded, ns (60 s); larger values are clamped to it.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Significant decimal digits kept at every magnitude (0.1% relative error).
pub const LATENCY_SIGFIG: u8 = 3;
/// Counts (u64) in one histogram with these bounds: its memory is 8 × this (tested).
pub const HISTOGRAM_COUNTS: usize = 27_648;

/// A histogram with the bounds above, empty.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LATENCY_NS_MIN, LATENCY_NS_MAX, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// A histogram owned by one thread, recorded into without allocating or locking.
pub struct LocalHistogram {
    h: Histogram<u64>,
}

impl Default for LocalHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalHistogram {
    pub fn new() -> LocalHistogram {
        LocalHistogram { h: new_histogram() }
    }

    /// Records one duration in ns (clamped to 1 ns ..= 60 s).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.h.saturating_record(ns.max(LATENCY_NS_MIN));
    }

    /// Records `count` durations of `ns` each, as one update (clamped like `record`).
    #[inline]
    pub fn record_n(&mut self, ns: u64, count: u64) {
        self.h.saturating_record_n(ns.max(LATENCY_NS_MIN), count);
    }

    /// Values recorded since the last successful publish.
    pub fn len(&self) -> u64 {
        self.h.len()
    }

    pub fn is_empty(&self) -> bool {
        self.h.is_empty()
    }

    /// Moves the local counts into `to` unless its lock is busy (then they stay here for the next
    /// try). Returns whether the local histogram is now empty. Never blocks, never allocates.
    pub fn publish(&mut self, to: &Published) -> bool {
        if self.h.is_empty() {
            return true;
        }
        let Ok(mut p) = to.inner.try_lock() else { return false };
        // Same bounds on both sides: `add` cannot fail and copies counts in place.
        let _ = p.cumulative.add(&self.h);
        let _ = p.interval.add(&self.h);
        drop(p);
        self.h.reset();
        true
    }

    /// Like `publish`, but waits for the lock: for exit paths only, never on a reactor's request
    /// path.
    pub fn publish_wait(&mut self, to: &Published) {
        let mut p = to.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = p.cumulative.add(&self.h);
        let _ = p.interval.add(&self.h);
        drop(p);
        self.h.reset();
    }
}

struct Pair {
    /// Everything since start.
    cumulative: Histogram<u64>,
    /// Since the `.hlog` writer last took it.
    interval: Histogram<u64>,
}

/// What a recording thread has published for others to read.
pub struct Published {
    inner: Mutex<Pair>,
}

impl Default for Published {
    fn default() -> Self {
        Self::new()
    }
}

impl Published {
    pub fn new() -> Published {
        Published { inner: Mutex::new(Pair { cumulative: new_histogram(), interval: new_histogram() }) }
    }

    /// A copy of everything published since start (admin thread: allocates).
    pub fn cumulative(&self) -> Histogram<u64> {
        let p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        p.cumulative.clone()
    }

    /// Adds what was published since the last call into `into` and clears it (the `.hlog` writer).
    pub fn take_interval(&self, into: &mut Histogram<u64>) {
        let mut p = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = into.add(&p.interval);
        p.interval.reset();
    }
}

/// The kinds of latency measured, a closed set (the `.hlog` tags and `/stats` keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Service,
    Journal,
    JournalSync,
    CollectorPublish,
}

pub const KINDS: [Kind; 4] = [Kind::Service, Kind::Journal, Kind::JournalSync, Kind::CollectorPublish];

impl Kind {
    /// Tag in the `.hlog` and key in `/stats` (no spaces or commas: interval-log tags forbid them).
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Journal => "journal",
            Kind::JournalSync => "journal_sync",
            Kind::CollectorPublish => "collector_publish",
        }
    }

    /// Prometheus metric family (seconds).
    pub fn metric(self) -> &'static str {
        match self {
            Kind::Service => "tracker_request_service_seconds",
            Kind::Journal => "tracker_journal_latency_seconds",
            Kind::JournalSync => "tracker_journal_sync_seconds",
            Kind::CollectorPublish => "tracker_collector_publish_seconds",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Kind::Service => "Request service time: read completion to response queued in the write buffer",
            Kind::Journal => "Ingest-to-journal latency: event receive time to record appended in the segment",
            Kind::JournalSync => "Journal sync duration: one sync (msync / fdatasync of what was appended since the last) from start to end, on the sync thread under interval, on the drain under always",
            Kind::CollectorPublish => "Collector publish latency (recorded by collectors)",
        }
    }
}

/// One shard's published histograms.
#[derive(Default)]
pub struct ShardLatency {
    pub service: Published,
    pub journal: Published,
    pub journal_sync: Published,
    /// Hook for collectors: see the module doc.
    pub collector_publish: Published,
}

impl ShardLatency {
    pub fn get(&self, k: Kind) -> &Published {
        match k {
            Kind::Service => &self.service,
            Kind::Journal => &self.journal,
            Kind::JournalSync => &self.journal_sync,
            Kind::CollectorPublish => &self.collector_publish,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_moves_counts_and_merging_adds_them() {
        let a = Published::new();
        let mut l = LocalHistogram::new();
        for v in [1_000, 2_000, 3_000, u64::MAX, 0] {
            l.record(v);
        }
        assert!(l.publish(&a));
        assert!(l.is_empty());
        let c = a.cumulative();
        assert_eq!(c.len(), 5);
        assert!(c.max() >= LATENCY_NS_MAX && c.max() <= LATENCY_NS_MAX + LATENCY_NS_MAX / 1000);
        let mut iv = new_histogram();
        a.take_interval(&mut iv);
        assert_eq!(iv.len(), 5);
        let mut iv2 = new_histogram();
        a.take_interval(&mut iv2);
        assert_eq!(iv2.len(), 0, "interval is reset by take");
        assert_eq!(a.cumulative().len(), 5, "cumulative is not");
    }

    #[test]
    fn histogram_size_is_what_the_module_doc_says() {
        assert_eq!(new_histogram().distinct_values(), HISTOGRAM_COUNTS);
    }

    #[test]
    fn a_busy_lock_keeps_the_counts_local() {
        let a = Published::new();
        let mut l = LocalHistogram::new();
        l.record(5);
        let guard = a.inner.lock().unwrap();
        assert!(!l.publish(&a));
        drop(guard);
        assert_eq!(l.len(), 1);
        assert!(l.publish(&a));
        assert_eq!(a.cumulative().len(), 1);
    }
}
