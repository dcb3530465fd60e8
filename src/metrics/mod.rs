//! Per-shard counters. Each shard writes only its own (relaxed atomics: a plain add on x86, no
//! lock, no allocation, no cross-core traffic on the hot path); readers on other threads sum the
//! shards. Labels come from closed sets: statuses and reasons below, and the endpoint paths and
//! event type names the process has served ([`CounterLabels`]: a reload only adds to them).
//!
//! - [`latency`]: per-shard HDR histograms (service time, ingest-to-journal, collector publish),
//!   recorded thread-locally and published on a timer;
//! - the admin listener that serves them (`/metrics`, `/ready`, `/stats`, `.hlog`) is
//!   [`crate::admin`].

pub mod latency;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use crate::config::Config;
use crate::constants::{ENDPOINTS_MAX, EVENT_TYPES_MAX};
use crate::ring::RingWatch;

/// The label of every request-counter row (an endpoint path) and event-counter column (an
/// event type name) this process has used. Counters are indexed by these slots, not by a
/// config's positions, so a reload that adds, removes or reorders endpoints or types keeps each
/// series under its own label. Grow-only: a series, once shown, stays (a counter never goes
/// back), and the rows never move under the reactors.
#[derive(Default)]
pub struct CounterLabels {
    slots: Mutex<LabelSlots>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSlots {
    /// Row i of the request counters is path `endpoints[i]` (the last row, "none", is apart).
    pub endpoints: Vec<String>,
    /// Column i of the event counters is type `types[i]`.
    pub types: Vec<String>,
}

impl CounterLabels {
    /// Sets `counter` of every endpoint and event type of `cfg` to its path's or name's slot,
    /// adding the names not seen before. All or nothing: Err (nothing added) when the new names
    /// would not fit the counters sized at start, which only many reloads with ever new names
    /// reach; a restart starts the table afresh.
    pub fn assign(&self, cfg: &mut Config) -> Result<(), String> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = slots.clone();
        fn slot(names: &mut Vec<String>, name: &str) -> usize {
            names.iter().position(|n| n == name).unwrap_or_else(|| {
                names.push(name.to_string());
                names.len() - 1
            })
        }
        for e in &mut cfg.endpoints {
            e.counter = slot(&mut next.endpoints, &e.path) as u16;
        }
        for t in &mut cfg.types {
            t.counter = slot(&mut next.types, &t.name) as u16;
        }
        if next.endpoints.len() > ENDPOINTS_MAX || next.types.len() > EVENT_TYPES_MAX {
            return Err(format!(
                "this process has counted {} endpoint paths and {} event types; the counters hold {ENDPOINTS_MAX} and {EVENT_TYPES_MAX}: restart to apply a config with new names",
                slots.endpoints.len(),
                slots.types.len()
            ));
        }
        *slots = next;
        Ok(())
    }

    pub fn snapshot(&self) -> LabelSlots {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Response statuses the tracker sends, a closed set (label `status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    S200,
    S204,
    S302,
    S400,
    S403,
    S404,
    S405,
    S408,
    S413,
    S414,
    S415,
    S429,
    S431,
    S501,
    S503,
    S505,
}

pub const STATUSES: [Status; 16] = [
    Status::S200,
    Status::S204,
    Status::S302,
    Status::S400,
    Status::S403,
    Status::S404,
    Status::S405,
    Status::S408,
    Status::S413,
    Status::S414,
    Status::S415,
    Status::S429,
    Status::S431,
    Status::S501,
    Status::S503,
    Status::S505,
];

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::S200 => 200,
            Status::S204 => 204,
            Status::S302 => 302,
            Status::S400 => 400,
            Status::S403 => 403,
            Status::S404 => 404,
            Status::S405 => 405,
            Status::S408 => 408,
            Status::S413 => 413,
            Status::S414 => 414,
            Status::S415 => 415,
            Status::S429 => 429,
            Status::S431 => 431,
            Status::S501 => 501,
            Status::S503 => 503,
            Status::S505 => 505,
        }
    }

    pub fn from_code(code: u16) -> Status {
        match code {
            200 => Status::S200,
            204 => Status::S204,
            302 => Status::S302,
            403 => Status::S403,
            404 => Status::S404,
            405 => Status::S405,
            408 => Status::S408,
            413 => Status::S413,
            414 => Status::S414,
            415 => Status::S415,
            429 => Status::S429,
            431 => Status::S431,
            501 => Status::S501,
            503 => Status::S503,
            505 => Status::S505,
            _ => Status::S400,
        }
    }
}

/// Why a request did not become an event, or a connection was dropped, or what of a request
/// was not believed or kept (label `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    /// Malformed or ambiguous HTTP, or a POST body refused as a whole (media type, gzip, not
    /// JSON, too many items).
    Malformed,
    /// A field missing or unparsable.
    Field,
    RingFull,
    ConnectionLimit,
    HeaderTimeout,
    /// A click's landing URL failed its endpoint's redirect rule (4xx, nothing logged).
    Redirect,
    /// A repeat of an event id inside the dedup window: answered, not published.
    Duplicate,
    /// The source's address prefix is over its budget: 429, or answered and not published.
    OverBudget,
    /// An encrypted price failed its integrity check (tampered or wrong keys): 400, not logged.
    PriceIntegrity,
    /// X-Device-IP from a sender that did not authenticate: the headers were ignored (the
    /// request itself was served as usual).
    SsaiUnauthenticated,
    /// X-Device-IP from an authenticated stitcher, but an address no remote viewer has
    /// (loopback, unspecified, link-local, multicast, broadcast) or not an IP address at all:
    /// 400, nothing logged.
    SsaiDeviceIpUnusable,
    /// The journal is failing (disk full, I/O error): a `logged` endpoint answered 503, or a
    /// connection waiting for the journal was closed without its responses.
    JournalUnavailable,
    /// A new connection from an address prefix already holding
    /// `budget.connections_per_prefix_max`: closed at accept.
    SourceConnectionLimit,
    /// `privacy.gdpr = "enforce"`: an event under GDPR without TCF consent to Purpose 1 (or,
    /// with `privacy.tcf_vendor_id` set, to that vendor) lost its user ids, ips and referers,
    /// as an opted-out one does (it was served and kept).
    GdprNoConsent,
}

pub const REASONS: [Reason; 14] = [
    Reason::Malformed,
    Reason::Field,
    Reason::RingFull,
    Reason::ConnectionLimit,
    Reason::HeaderTimeout,
    Reason::Redirect,
    Reason::Duplicate,
    Reason::OverBudget,
    Reason::PriceIntegrity,
    Reason::SsaiUnauthenticated,
    Reason::SsaiDeviceIpUnusable,
    Reason::JournalUnavailable,
    Reason::SourceConnectionLimit,
    Reason::GdprNoConsent,
];

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Field => "field",
            Reason::RingFull => "ring_full",
            Reason::ConnectionLimit => "connection_limit",
            Reason::HeaderTimeout => "header_timeout",
            Reason::Redirect => "redirect_refused",
            Reason::Duplicate => "duplicate",
            Reason::OverBudget => "over_budget",
            Reason::PriceIntegrity => "price_integrity",
            Reason::SsaiUnauthenticated => "ssai_unauthenticated",
            Reason::SsaiDeviceIpUnusable => "ssai_device_ip_unusable",
            Reason::JournalUnavailable => "journal_unavailable",
            Reason::SourceConnectionLimit => "source_connection_limit",
            Reason::GdprNoConsent => "gdpr_no_consent",
        }
    }
}

/// Adds one to a counter that has a single writer, the shard's reactor thread: a plain load
/// and store, not a locked read-modify-write (two or three of those per request showed in the
/// profile). Readers on other threads still see every value in order, never a torn one.
#[inline]
fn bump(c: &AtomicU64) {
    c.store(c.load(Relaxed).wrapping_add(1), Relaxed);
}

pub struct ShardCounters {
    /// [endpoint index (last row = no endpoint matched)][status]
    requests: Box<[[AtomicU64; STATUSES.len()]]>,
    /// [event type]
    events: Box<[AtomicU64]>,
    rejects: [AtomicU64; REASONS.len()],
    pub connections_accepted: AtomicU64,
    /// Connections closed after being accepted (open = accepted - closed).
    pub connections_closed: AtomicU64,
    pub journal_records: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub journal_torn_records: AtomicU64,
    pub journal_errors: AtomicU64,
    /// Syncs (msync / fdatasync, by the sync policy) that succeeded.
    pub journal_syncs: AtomicU64,
    /// Latency histograms published by the reactor, the drain and collectors.
    pub latency: latency::ShardLatency,
    /// Read-only view of the shard's ring (pushed / popped), set once at start.
    pub ring: OnceLock<RingWatch>,
}

impl ShardCounters {
    pub fn new(endpoints: usize, types: usize) -> ShardCounters {
        ShardCounters {
            requests: (0..=endpoints).map(|_| Default::default()).collect(),
            events: (0..types).map(|_| AtomicU64::new(0)).collect(),
            rejects: Default::default(),
            connections_accepted: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            journal_records: AtomicU64::new(0),
            journal_bytes: AtomicU64::new(0),
            journal_torn_records: AtomicU64::new(0),
            journal_errors: AtomicU64::new(0),
            journal_syncs: AtomicU64::new(0),
            latency: Default::default(),
            ring: OnceLock::new(),
        }
    }

    /// `endpoint`: the endpoint's counter row (`Endpoint::counter`); None = no endpoint matched
    /// (404, or rejected before routing). Only the shard's reactor thread may call this,
    /// `event` (with `EventType::counter`) and `reject` (see `bump`).
    #[inline]
    pub fn request(&self, endpoint: Option<u16>, status: Status) {
        let row = endpoint.map_or(self.requests.len() - 1, |e| e as usize);
        bump(&self.requests[row][status as usize]);
    }

    #[inline]
    pub fn event(&self, type_id: u16) {
        bump(&self.events[type_id as usize]);
    }

    #[inline]
    pub fn reject(&self, r: Reason) {
        bump(&self.rejects[r as usize]);
    }

    pub fn requests(&self, endpoint: Option<u16>, status: Status) -> u64 {
        let row = endpoint.map_or(self.requests.len() - 1, |e| e as usize);
        self.requests[row][status as usize].load(Relaxed)
    }

    pub fn events(&self, type_id: u16) -> u64 {
        self.events[type_id as usize].load(Relaxed)
    }

    pub fn rejects(&self, r: Reason) -> u64 {
        self.rejects[r as usize].load(Relaxed)
    }
}
