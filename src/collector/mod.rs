//! Collectors: forwarders that deliver journaled events to the systems that act on them.
//!
//! ```text
//! journal/shard-N/*.seg ─▶ source (positioned reader, stops at a bad record in the last segment)
//!                           ─▶ attach (event types) ─▶ project (field allowlist) ─▶ batch
//!                           ─▶ batch log (range persisted) ─▶ Collector::deliver ─▶ cursor
//! ```
//!
//! Stage: after the journal, off the reactors. Each `[[collector]]` runs on its own thread with
//! its own persisted cursor per shard; it only reads segment files, so a slow, hanging or failed
//! collector never stalls a shard, the journal or another collector (the journal keeps growing;
//! the collector catches up when its destination is back).
//!
//! # What must hold
//! - **Projection by the framework.** A [`Collector`] never sees a raw record: it receives
//!   [`CollectedEvent`]s holding only the envelope (type, id, time, shard, seq) and the fields
//!   its `fields` allowlist permits, of the event types its `events` list attaches it to.
//!   `tracker privacy-manifest` prints that set per collector.
//! - **The cursor moves only after an acknowledgement.** A batch is delivered until
//!   [`Delivery::Acked`]; only then is the shard's cursor replaced (write temp, fsync, rename,
//!   fsync dir), so it survives `kill -9` and delivery is at-least-once from the journal.
//! - **A batch is an exact journal range, persisted before it is sent.** Batch `[from, to)` of
//!   segment N of shard S is appended to the batch log (`fsync`) before the first attempt; after
//!   a crash, a retry or a replay the same range is cut again, so the destination gets the
//!   identical batch with the identical [`Batch::key`] and can apply it once.
//! - **A batch never spans segments**, so a replay from a segment starts on a batch boundary.
//!
//! # Writing a collector
//! Implement [`Collector`] (and a factory reading its `[collector.options]`), register the kind
//! in a [`Registry`], and start the tracker with it; `docs/collectors.md` walks through it and
//! `examples/webhook_collector.rs` is a complete plugin.
//!
//! ```
//! use tracker::collector::{Batch, Collector, Delivery, Options, Registry};
//!
//! /// Counts the events it is given; a real collector would send them somewhere.
//! struct Count { seen: u64, every: u64 }
//!
//! impl Collector for Count {
//!     fn deliver(&mut self, batch: &Batch) -> Delivery {
//!         for e in &batch.events {
//!             // Only the allowlisted fields are here.
//!             let _price = e.field("price");
//!             self.seen += 1;
//!         }
//!         if self.seen % self.every == 0 {
//!             eprintln!("{} events so far, last batch {}", self.seen, batch.key);
//!         }
//!         Delivery::Acked
//!     }
//! }
//!
//! let mut registry = Registry::builtin();
//! registry.register("count", |opts: &mut Options| {
//!     let every = opts.u64("every", 1000, 1, u64::MAX);
//!     Ok(Box::new(Count { seen: 0, every }) as Box<dyn Collector>)
//! });
//! assert!(registry.kinds().contains(&"count"));
//! ```
//!
//! Files: [`cursor`] (positions, cursor files, batch log), [`source`] (reading a shard from a
//! position), [`project`] (attachment and allowlist), [`runner`] (the thread: batch, deliver,
//! retry, commit), [`retention`], then one file per kind: [`banker`], [`jsonl`], `kafka`; [`http`] is
//! the small blocking HTTP/1.1 client they share.

pub mod banker;
pub mod cli;
pub mod cursor;
pub mod http;
pub mod jsonl;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod metrics;
pub mod project;
pub mod retention;
pub mod runner;
pub mod source;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{CollectorConfig, CollectorOptions, ConfigError, ConfigErrors};
use crate::event::format_uuid;
use crate::schema::{json_str, rfc3339_nanos};

pub use cursor::Position;
pub use runner::{start, start_with_shards, CollectorStatus, Forwarders};

/// What a destination said about a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The destination has the whole batch: the cursor moves past it.
    Acked,
    /// The destination already applied this key with a different body: an earlier cut of a
    /// range sent again ([`Batch::sent_before`]) whose records changed since (a power loss
    /// zeroed one) or that was projected under an older config. What it holds stands; the
    /// cursor moves past the batch, and the string is logged and counted
    /// (`tracker_collector_superseded_total`).
    Superseded(String),
    /// Not delivered, may succeed later (timeout, connection refused, 5xx, 429): the same batch
    /// is delivered again after a capped exponential backoff with jitter. The string says why.
    Retry(String),
    /// Will never succeed as configured (bad credentials, the destination rejects the data):
    /// the collector stops and keeps its cursor; the journal keeps the events for a fix and a
    /// restart. The string says why and what to do. On a batch's first attempt ever it must
    /// mean that nothing of the batch was applied: the runner then forgets the cut, and after
    /// the restart the range may be cut differently, under another key.
    Fatal(String),
}

/// A collector: receives batches of projected events and delivers them somewhere.
///
/// Runs on its own thread, never on a reactor, so `deliver` may block (network, disk) — but it
/// should bound each attempt with a timeout so shutdown and retries stay timely.
/// `deliver` is called again with the identical batch (same [`Batch::key`], same events) until
/// it returns [`Delivery::Acked`]; after a crash or a replay too. Make the destination apply a
/// key once, or carry the event ids so it can deduplicate.
pub trait Collector: Send {
    fn deliver(&mut self, batch: &Batch) -> Delivery;

    /// Called between deliveries when a pass of the collector's thread found nothing to send
    /// (at most every 10 ms): for housekeeping a client library leaves to its caller's thread,
    /// such as serving the events an idle Kafka producer queues. Must not block for long.
    fn idle(&mut self) {}

    /// Called once when the tracker stops, after the last delivery.
    fn close(&mut self) {}
}

/// One batch: the attached events of an exact range of one shard's journal segment.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Stable idempotency key of this range:
    /// `<key_prefix>:<collector>:<shard>:<segment>:<from>-<to>`, where `<key_prefix>:<collector>`
    /// is the one the range was first sent under (recorded with it), not necessarily today's;
    /// `<key_prefix>:<collector>/journal-N` once the shard's journal was found reset N times
    /// (its segment numbers, and so its ranges, repeat the old journal's).
    pub key: String,
    pub collector: Arc<str>,
    pub shard: u16,
    pub segment: u64,
    /// Record indexes `[from, to)` in the segment (every record of the range, attached or not).
    pub from: u32,
    pub to: u32,
    /// 1 for the first attempt in this process, then 2, 3, ...
    pub attempt: u32,
    /// The range was cut before this process's first attempt (a restart or a replay sends it
    /// again): the destination may hold it already.
    pub sent_before: bool,
    pub events: Vec<CollectedEvent>,
}

/// A field value, typed as declared in `[event.<type>]`.
///
/// Non-exhaustive: a field type added later (a new variant) must not break a collector plugin
/// built against this version, so a plugin's `match` needs a `_` arm (its JSON or
/// [`Display`](std::fmt::Display) text is a fine fallback).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    U64(u64),
    I64(i64),
    /// Signed micros of the currency unit: 0.25 is 250000.
    Money(i64),
    /// A string field's value, when its stored bytes are valid UTF-8 (nearly always).
    Str(String),
    /// A string field's value whose stored bytes are not valid UTF-8 (a query value `%FF` is
    /// the byte 0xFF), carried as they are: mapping them to text (U+FFFD) would make two
    /// different values, and so two budget keys or Kafka keys, the same. In JSON each byte of an
    /// invalid sequence is written as a lone surrogate escape (see [`crate::schema::json_str`]).
    Bytes(Vec<u8>),
    Ip(IpAddr),
}

impl Value {
    /// The bytes a key taken from this value is made of (a Kafka message key): the stored bytes
    /// of a string, as they are; the [`Display`](std::fmt::Display) text of anything else. Two
    /// different values never give the same bytes.
    pub fn key_bytes(&self) -> Vec<u8> {
        match self {
            Value::Str(s) => s.as_bytes().to_vec(),
            Value::Bytes(b) => b.clone(),
            v => v.to_string().into_bytes(),
        }
    }
}

/// The value's text, as in the event's JSON (a string without its quotes and escapes): money
/// as a decimal with 6 places (`0.250000`, never the micros). A Kafka key taken from a field is
/// this text ([`Value::key_bytes`]), so key and value say the same. For people only: a
/// [`Value::Bytes`] shows each invalid byte as U+FFFD here, so that text is not a key.
impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::U64(x) => write!(f, "{x}"),
            Value::I64(x) => write!(f, "{x}"),
            Value::Money(m) => {
                let sign = if *m < 0 { "-" } else { "" };
                let a = m.unsigned_abs();
                write!(f, "{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
            }
            Value::Str(s) => f.write_str(s),
            Value::Bytes(b) => f.write_str(&String::from_utf8_lossy(b)),
            Value::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// An event as a collector sees it: the envelope and the allowlisted fields, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectedEvent {
    pub id: [u8; 16],
    pub event_type: Arc<str>,
    /// Receive time, unix nanoseconds.
    pub ts_ns: u64,
    pub shard: u16,
    /// Per-shard sequence number of the process run that received it.
    pub seq: u64,
    /// The event's FLAG_* bits (`event.rs`): truncated, opted out, unsubstituted, HEAD.
    pub flags: u32,
    pub fields: Vec<(Arc<str>, Value)>,
}

impl CollectedEvent {
    /// The id as a lowercase UUID string.
    pub fn id_string(&self) -> String {
        let mut b = [0u8; 36];
        format_uuid(&self.id, &mut b);
        String::from_utf8_lossy(&b).into_owned()
    }

    pub fn field(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }

    /// Appends the event as one JSON object, the shape of `tracker journal cat` restricted to
    /// the allowlisted fields: `type`, `id`, `ts`, `ts_ns`, `shard`, `seq`, the flags that are
    /// set (`truncated`, `opted_out`, `unsubstituted`, `head`), then each field (money as a decimal number with 6 places).
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"type\":");
        json_str(out, self.event_type.as_bytes());
        let _ = write!(
            out,
            ",\"id\":\"{}\",\"ts\":\"{}\",\"ts_ns\":{},\"shard\":{},\"seq\":{}",
            self.id_string(),
            rfc3339_nanos(self.ts_ns),
            self.ts_ns,
            self.shard,
            self.seq
        );
        crate::event::write_flags_json(self.flags, out);
        for (name, v) in &self.fields {
            out.push(',');
            json_str(out, name.as_bytes());
            out.push(':');
            match v {
                Value::U64(_) | Value::I64(_) | Value::Money(_) => {
                    let _ = write!(out, "{v}");
                }
                Value::Str(s) => json_str(out, s.as_bytes()),
                Value::Bytes(b) => json_str(out, b),
                Value::Ip(_) => {
                    let _ = write!(out, "\"{v}\"");
                }
            }
        }
        out.push('}');
    }

    /// Bytes this event counts for against `bytes_max`: the length of its JSON.
    pub fn json_bytes(&self) -> usize {
        let mut s = String::with_capacity(256);
        self.write_json(&mut s);
        s.len()
    }
}

/// Typed access to a collector's `[collector.options]`; every problem is recorded with the
/// file, line and key, and [`Options::finish`] refuses keys nobody read.
pub struct Options<'a> {
    raw: &'a CollectorOptions,
    /// The whole `[[collector]]` table (name, attachment, allowlist, ...).
    pub collector: &'a CollectorConfig,
    read: Vec<String>,
    errors: Vec<ConfigError>,
}

impl<'a> Options<'a> {
    pub fn new(collector: &'a CollectorConfig) -> Options<'a> {
        Options { raw: &collector.options, collector, read: Vec::new(), errors: Vec::new() }
    }

    fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        self.read.push(key.to_string());
        self.raw.entries.get(key).map(|(_, v)| v)
    }

    /// Records a located error about `key`.
    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(self.raw.error(key, message));
    }

    /// A required string.
    pub fn string(&mut self, key: &str) -> String {
        match self.get(key) {
            Some(toml::Value::String(s)) => s.clone(),
            Some(other) => {
                self.error(key, format!("{other} is not a string"));
                String::new()
            }
            None => {
                self.error(key, "missing");
                String::new()
            }
        }
    }

    /// An optional string.
    pub fn string_or(&mut self, key: &str, default: &str) -> String {
        match self.get(key) {
            Some(toml::Value::String(s)) => s.clone(),
            Some(other) => {
                self.error(key, format!("{other} is not a string"));
                default.to_string()
            }
            None => default.to_string(),
        }
    }

    /// An optional list of strings.
    pub fn strings_or(&mut self, key: &str, default: &[&str]) -> Vec<String> {
        match self.get(key) {
            Some(toml::Value::Array(a)) => {
                let mut out = Vec::new();
                for v in a {
                    match v.as_str() {
                        Some(s) => out.push(s.to_string()),
                        None => self.error(key, format!("{v} is not a string")),
                    }
                }
                out
            }
            Some(other) => {
                self.error(key, format!("{other} is not a list of strings"));
                Vec::new()
            }
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// An optional integer in `lo..=hi`.
    pub fn u64(&mut self, key: &str, default: u64, lo: u64, hi: u64) -> u64 {
        match self.get(key) {
            Some(toml::Value::Integer(i)) if *i >= 0 && (*i as u64) >= lo && (*i as u64) <= hi => *i as u64,
            Some(other) => {
                self.error(key, format!("{other} is out of range: expected an integer in {lo}..={hi}"));
                default
            }
            None => default,
        }
    }

    /// An optional boolean.
    pub fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(toml::Value::Boolean(b)) => *b,
            Some(other) => {
                self.error(key, format!("{other} is not true or false"));
                default
            }
            None => default,
        }
    }

    /// A table of string → string (e.g. client properties); values of other types are refused.
    pub fn string_table(&mut self, key: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        match self.get(key) {
            Some(toml::Value::Table(t)) => {
                for (k, v) in t {
                    match v {
                        toml::Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        toml::Value::Integer(i) => {
                            out.insert(k.clone(), i.to_string());
                        }
                        toml::Value::Boolean(b) => {
                            out.insert(k.clone(), b.to_string());
                        }
                        other => self.error(key, format!("{k} = {other}: expected a string")),
                    }
                }
            }
            Some(other) => self.error(key, format!("{other} is not a table")),
            None => {}
        }
        out
    }

    /// Every error so far, plus one for each option that no getter asked for.
    pub fn finish(mut self) -> Vec<ConfigError> {
        let unknown: Vec<String> =
            self.raw.entries.keys().filter(|k| !self.read.iter().any(|r| r == *k)).cloned().collect();
        for k in unknown {
            self.error(&k, "unknown option for this collector kind");
        }
        self.errors
    }
}

/// Builds a collector of one kind from its options; no I/O (connect lazily in `deliver`), so
/// `tracker check-config` can build and drop it.
pub type Factory = Box<dyn Fn(&mut Options) -> Result<Box<dyn Collector>, String> + Send + Sync>;

/// The collector kinds a build knows: the built-in ones and those a custom build registers.
pub struct Registry {
    kinds: BTreeMap<&'static str, Factory>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Registry {
        Registry { kinds: BTreeMap::new() }
    }

    /// The kinds built into `tracker`: `banker`, `jsonl`, and `kafka` (feature `kafka`, default).
    pub fn builtin() -> Registry {
        let mut r = Registry::empty();
        r.register("banker", banker::factory);
        r.register("jsonl", jsonl::factory);
        #[cfg(feature = "kafka")]
        r.register("kafka", kafka::factory);
        r
    }

    /// Adds (or replaces) kind `name`.
    pub fn register<F>(&mut self, name: &'static str, factory: F)
    where
        F: Fn(&mut Options) -> Result<Box<dyn Collector>, String> + Send + Sync + 'static,
    {
        self.kinds.insert(name, Box::new(factory));
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// Builds the collector of one `[[collector]]` table, or every located error.
    pub fn build(&self, c: &CollectorConfig) -> Result<Box<dyn Collector>, Vec<ConfigError>> {
        let Some(f) = self.kinds.get(c.kind.as_str()) else {
            return Err(vec![ConfigError {
                file: c.options.file.clone(),
                line: c.options.table_line,
                key: format!("collector[{}].kind", c.options.index),
                message: format!(
                    "\"{}\" is not a collector kind of this build; known: {}",
                    c.kind,
                    self.kinds().join(", ")
                ),
            }]);
        };
        let mut opts = Options::new(c);
        let built = f(&mut opts);
        let mut errors = opts.finish();
        match built {
            Ok(b) if errors.is_empty() => Ok(b),
            Ok(_) => Err(errors),
            Err(msg) => {
                errors.push(ConfigError {
                    file: c.options.file.clone(),
                    line: c.options.table_line,
                    key: format!("collector[{}]", c.options.index),
                    message: msg,
                });
                Err(errors)
            }
        }
    }

    /// Builds every collector of `cfg` (to check a config, or to start them).
    pub fn build_all(&self, cfg: &[CollectorConfig]) -> Result<Vec<Box<dyn Collector>>, ConfigErrors> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for c in cfg {
            match self.build(c) {
                Ok(b) => out.push(b),
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ConfigErrors(errors))
        }
    }
}
