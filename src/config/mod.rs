//! Configuration: TOML text → `RawConfig` (serde, unknown keys refused) → `validate` → `Config`,
//! a value the runtime cannot misuse (limits in range, every endpoint names a known event type,
//! every field has a slot and a byte range, defaults already parsed).
//!
//! Errors are cold-path and rich: each names the file, the line, the key, the bad value and
//! what was expected. Every error is reported rather than the first, all in one run: every error
//! in the file's shape (unknown keys, values of the wrong TOML type, missing keys; `deserialize`)
//! and every error validation finds in the keys whose own shape is right (a value out of its
//! range, not among the allowed names, not a power of two; a rule between keys). With shape
//! errors, what is validated is the document with the keys in error taken out, so validation may
//! say things that hold only because they were taken out (a default in place of a misspelt key,
//! a field or an event type gone): those are left out (`Pruned`). A value error about a key's
//! own value is always reported; one from a rule over other keys only when no table it reads
//! lost a key, and none when a whole top-level key was taken out (a misspelt `[servr]`). Then
//! the errors come in the order of their lines, at most `SHAPE_ERRORS_MAX`. A syntax error is
//! reported alone: nothing after it can be trusted.

mod collector;
mod key_path;
pub mod keys;
mod raw;
mod redirect;
mod request;

pub use crate::enrich::budget::BudgetConfig;
pub use request::{DedupConfig, OverBudget, PrivacyConfig};

pub use collector::{
    BatchLimits, CollectorConfig, CollectorOptions, EventSelection, FieldSelection, RetryPolicy, COLLECTORS_MAX,
};

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use crate::constants::*;
use crate::enrich::privacy::RefererPolicy;
use crate::event::{SLOTS, STR_BYTES};
use crate::schema::{FieldKind, FieldSchema, Schema, TypeSchema, SCHEMA_VERSION};
use keys::{spec, KeySpec, ADMIN_KEYS, ENDPOINT_KEYS, FIELD_KEYS, JOURNAL_KEYS, SERVER_KEYS};
use raw::{RawConfig, S};

/// The embedded default: the same text as config/tracker.toml.
pub const DEFAULT_TOML: &str = include_str!("../../config/tracker.toml");
pub const DEFAULT_NAME: &str = "<embedded config/tracker.toml>";
/// Longest `[cors] origins` entry: `scheme://host:port` (echoed in answers, so bounded).
pub const ORIGIN_BYTES_MAX: usize = 200;
/// Most keys in a `json.<path>` source: events are flat objects with a few nested ids.
pub const JSON_PATH_KEYS_MAX: usize = 8;

/// Whether the admin listener at `admin` would share connections with the public one at
/// `server`: the same port (not 0, which picks a free one) on the same address or on one the
/// other's wildcard covers (`[::]` covers IPv4 too). Both bind with SO_REUSEPORT (so that a
/// restarting tracker can bind them while the old one drains), so the kernel does not refuse
/// the second bind: it splits the connections between them.
pub fn listeners_clash(server: SocketAddr, admin: SocketAddr) -> bool {
    let covers = |w: SocketAddr, o: SocketAddr| w.ip().is_unspecified() && (w.is_ipv6() || o.is_ipv4());
    server.port() != 0
        && server.port() == admin.port()
        && (server.ip() == admin.ip() || covers(server, admin) || covers(admin, server))
}

/// Why [`listeners_clash`] is an error, and what is expected instead.
pub const LISTENERS_CLASH: &str = "both bind with SO_REUSEPORT, so the kernel would split connections between \
     them (pixels answered 404 by the admin listener, readiness probes by the shards); expected another port";

#[derive(Clone, Debug)]
pub struct Config {
    pub server: Server,
    pub journal: Journal,
    pub admin: Admin,
    pub dedup: DedupConfig,
    pub budget: BudgetConfig,
    pub privacy: PrivacyConfig,
    pub cors: Cors,
    pub endpoints: Vec<Endpoint>,
    pub types: Vec<EventType>,
    /// What the journal embeds in every segment header.
    pub schema: Schema,
    /// Preprocessing steps added in code (`add_step`): (event type name, its id, the step).
    pub steps: Vec<(String, u16, std::sync::Arc<dyn crate::enrich::step::Step>)>,
    /// `[[collector]]` tables (collector/): forwarders off the reactors, in config order.
    pub collectors: Vec<CollectorConfig>,
}

#[derive(Clone, Debug)]
pub struct Server {
    pub listen: SocketAddr,
    /// 0 = one per allowed CPU; resolved by the runtime.
    pub shards: usize,
    pub connections_per_shard_max: usize,
    pub request_line_bytes_max: usize,
    pub header_count_max: usize,
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// At shutdown, how long a request still arriving may take to arrive whole.
    pub stop_request_grace_ms: u64,
    pub ring_events: usize,
    pub io_uring_entries: u32,
    /// Add IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN to COOP_TASKRUN | TASKRUN_FLAG.
    pub io_uring_defer_taskrun: bool,
    /// Most events in one JSON batch body; more → 413.
    pub batch_events_max: usize,
    /// Most bytes a gzip body may inflate to; more → 413.
    pub body_decoded_bytes_max: usize,
    /// Most inflated bytes per compressed byte of a gzip body; more → 413.
    pub body_inflate_ratio_max: usize,
}

/// `[cors]`: which web origins may POST to the JSON endpoints from a browser.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    /// Exact `scheme://host[:port]` values, compared byte for byte with `Origin`.
    pub origins: Vec<Box<[u8]>>,
    /// `"*"` was listed: any origin is allowed (answered `Access-Control-Allow-Origin: *`).
    pub any: bool,
    pub max_age_s: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    None,
    Interval,
    Always,
}

#[derive(Clone, Debug)]
pub struct Journal {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub sync: SyncPolicy,
    pub sync_interval_ms: u64,
    /// Events waiting and none journaled for this long: the journal is stalled
    /// (`runtime::shard`'s heartbeat), ms.
    pub stall_timeout_ms: u64,
    /// Delete a segment once every collector's cursor passed it and it is older than this, s;
    /// 0 keeps every segment.
    pub retention_age_s: u64,
    /// Journal bytes on disk above which `logged` endpoints answer 503; 0 = no limit.
    pub size_bytes_max: u64,
}

/// `[admin]`: the control-plane listener, histogram publishing, readiness limits, `.hlog`.
#[derive(Clone, Debug)]
pub struct Admin {
    pub listen: SocketAddr,
    /// How often shards and drains publish their latency histograms, ms.
    pub publish_interval_ms: u64,
    /// Free bytes the journal's filesystem must keep for `/ready`; 0 = 2 × segment_bytes per shard.
    pub ready_free_bytes_min: u64,
    /// Most unread events in any ring for `/ready`; 0 = half of server.ring_events.
    pub ready_ring_backlog_events_max: u64,
    /// Where merged histograms are appended as an HdrHistogram interval log; None = off.
    pub hlog_path: Option<PathBuf>,
    pub hlog_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET, and HEAD answered like it.
    Get,
    Post,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseKind {
    Gif,
    NoContent,
    /// 302 to the landing URL, when it passes the endpoint's `redirect` rule.
    Redirect,
    /// POST only: 200 with `{"accepted":N,"rejected":[{"index":i,"reason":"…"}]}`; the body is
    /// one JSON object or an array of them (a batch).
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Answer after the ring push.
    Received,
    /// Answer after the event is in the mmapped segment.
    Logged,
}

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub path: String,
    pub method: Method,
    pub type_id: u16,
    pub response: ResponseKind,
    pub ack: Ack,
    /// What a request over its source's budget gets.
    pub over_budget: OverBudget,
    /// Set exactly when `response` is `Redirect`.
    pub redirect: Option<Box<crate::redirect::RedirectRule>>,
    /// Row of this endpoint's path in the shards' request counters: the position in the config
    /// until the runtime assigns the process's own (`metrics::CounterLabels`), which a reload
    /// keeps per path.
    pub counter: u16,
}

/// Where a field's value comes from in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Query parameter, compared byte for byte with the raw (undecoded) name.
    Query(String),
    /// Header, lower-cased name, compared case-insensitively.
    Header(String),
    Cookie(String),
    ClientIp,
    UserAgent,
    Referer,
    /// Receive time, unix milliseconds.
    TimeMs,
    /// bot / ctv / tablet / mobile / desktop / unknown, from the User-Agent (`enrich::device`).
    DeviceClass,
    /// 1 when the User-Agent is a crawler, monitor or HTTP library, else 0.
    IsBot,
    /// `json.a.b`: the value at that path of keys in the event's JSON object (POST bodies).
    Json(Box<[Box<str>]>),
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub source: Source,
    pub kind: FieldKind,
    pub slot: usize,
    /// Byte range in the event's byte area (strings, ip).
    pub offset: usize,
    pub max: usize,
    pub required: bool,
    pub default: Option<DefaultValue>,
    /// Strings only: the allowed values (empty = any).
    pub one_of: Vec<Box<[u8]>>,
    /// Money only: decrypt the value (Google Authorized Buyers price encryption).
    pub decrypt: Option<Box<crate::extract::price::GooglePrice>>,
    /// Numbers only: (min, max) as slot bits (signed for i64 and money); outside → 400.
    pub range: Option<(u64, u64)>,
    /// A string field that reads the Referer (`request.referer` or `header.referer`): trimmed
    /// by the privacy step as `privacy.referer` says.
    pub referer: bool,
    /// Named in `privacy.user_id_fields`: hashed by the privacy step. A value longer than the
    /// field is then kept whole, as a digest, not cut (`extract::store_text`).
    pub user_id: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    Num(u64),
    Bytes(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct EventType {
    pub id: u16,
    pub name: String,
    pub fields: Vec<Field>,
    /// Field indexes (into `fields`) that form the deterministic id.
    pub identity: Vec<usize>,
    /// Sources of a client-supplied id, first present wins.
    pub id_from: Vec<Source>,
    /// Every query parameter name a field or an id source reads, derived from `fields` and
    /// `id_from`: the one pass over the query string in `extract` compares each pair's name
    /// with this short list instead of walking every field. Sorted by name length (stably:
    /// keys of one length keep their order), so that a pair is compared only with the keys as
    /// long as its name ([`EventType::query_keys_of_len`]).
    pub query_keys: Vec<QueryKey>,
    /// `query_keys[starts[n]..starts[n + 1]]` are the keys of length n.
    query_key_starts: Vec<usize>,
    /// Column of this type's name in the shards' event counters: `id` until the runtime assigns
    /// the process's own (`metrics::CounterLabels`), which a reload keeps per name.
    pub counter: u16,
    /// A hash of `name`: what derived ids and the dedup window key on. `id` is a position, which
    /// a reload that adds or removes another type shifts; a retried notice must keep its id.
    pub key: u64,
}

/// A query parameter name and what reads it.
#[derive(Debug, Clone)]
pub struct QueryKey {
    pub name: Box<[u8]>,
    pub reader: QueryReader,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryReader {
    /// `fields[i]`.
    Field(usize),
    /// `id_from[rank]`.
    IdFrom(usize),
}

impl EventType {
    pub fn new(id: u16, name: String, fields: Vec<Field>, identity: Vec<usize>, id_from: Vec<Source>) -> EventType {
        let key = |s: &Source| match s {
            Source::Query(n) => Some(n.as_bytes().into()),
            _ => None,
        };
        let query_keys = (fields.iter().enumerate())
            .filter_map(|(i, f)| key(&f.source).map(|name| QueryKey { name, reader: QueryReader::Field(i) }))
            .chain(
                (id_from.iter().enumerate())
                    .filter_map(|(r, s)| key(s).map(|name| QueryKey { name, reader: QueryReader::IdFrom(r) })),
            )
            .collect::<Vec<QueryKey>>();
        let mut query_keys = query_keys;
        query_keys.sort_by_key(|k| k.name.len());
        let longest = query_keys.last().map_or(0, |k| k.name.len());
        let query_key_starts = (0..=longest + 1).map(|n| query_keys.partition_point(|k| k.name.len() < n)).collect();
        let key = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        EventType { id, name, fields, identity, id_from, query_keys, query_key_starts, counter: id, key }
    }

    /// The query keys `n` bytes long, in `query_keys`' order.
    #[inline]
    pub fn query_keys_of_len(&self, n: usize) -> &[QueryKey] {
        match self.query_key_starts.get(n..n + 2) {
            Some(&[a, b]) => &self.query_keys[a..b],
            _ => &[],
        }
    }
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file, self.line, self.key, self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Puts `errors` in the order of their lines, as they are listed (README), not of validation.
/// Stable: errors on one line keep the order they were found in. Line 0 (no line) last.
pub fn sort_by_line(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| (e.line == 0, e.line));
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Config::parse(DEFAULT_TOML, DEFAULT_NAME).expect("embedded config/tracker.toml is valid")
    }

    /// Reads and validates a config file to serve from: as `parse`, and it must declare an
    /// endpoint.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let (cfg, errors) = Config::load_with_errors(path)?;
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// `parse_with_errors` of a file, and the file must declare an endpoint.
    pub fn load_with_errors(path: &std::path::Path) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        Config::parse_inner(&read_file(path)?, &path.display().to_string(), true, &Overrides::default())
    }

    /// `load` for `tracker serve` and its reloads: the file validated as the flags will have it
    /// (a clash between `server.listen` and `admin.listen` that a flag replaces is not one),
    /// and by `extra` (the collector kinds' checks of their options, which this module does
    /// not know), whose errors are listed with the rest, in line order, as `check-config` lists
    /// them; then the flags applied. The caller checks the listeners as applied
    /// ([`listeners_clash`]): a flag can make a clash too.
    pub fn load_with(
        path: &std::path::Path,
        flags: &Overrides,
        extra: &dyn Fn(&Config) -> Result<(), ConfigErrors>,
    ) -> Result<Config, ConfigErrors> {
        let (mut cfg, mut errors) = Config::parse_inner(&read_file(path)?, &path.display().to_string(), true, flags)?;
        if let Err(e) = extra(&cfg) {
            errors.extend(e.0);
            sort_by_line(&mut errors);
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        cfg.apply(flags);
        Ok(cfg)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let (cfg, errors) = Config::parse_with_errors(text, file)?;
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Like `parse`, but a config that parses as TOML is returned with its errors rather than
    /// instead of them, values in error replaced by placeholders and keys of the wrong shape
    /// left out: `check-config` then also builds its collectors, so their option errors come in
    /// the same run as the rest. With shape errors, only the collectors made of keys that all
    /// had the right shape are kept (see `Pruned::builds`). Never serve such a config.
    pub fn parse_with_errors(text: &str, file: &str) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        Config::parse_inner(text, file, false, &Overrides::default())
    }

    fn parse_inner(
        text: &str,
        file: &str,
        require_endpoint: bool,
        flags: &Overrides,
    ) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
        let Shape { raw, errors: shape, pruned } = deserialize(text, file)?;
        // A file replaces the embedded default whole: one that only tunes `[server]` would
        // otherwise pass and then answer every request 404. (Config text parsed for a test or an
        // embedding program may leave endpoints out.)
        let no_endpoint = require_endpoint && raw.endpoint.is_empty();
        let mut v = Validator {
            text,
            file,
            flags,
            errors: Vec::new(),
            bases: Vec::new(),
            also: Vec::new(),
            refused: Vec::new(),
        };
        let mut cfg = v.config(raw);
        if no_endpoint {
            v.reading(&[]);
            v.err(
                0..0,
                "endpoint",
                "no [[endpoint]] table: every request would get 404. A config file replaces the embedded \
                 default whole; copy the [[endpoint]] and [event.*] tables you need from config/tracker.toml",
            );
        }
        if shape.is_empty() {
            let mut errors = v.errors;
            sort_by_line(&mut errors);
            return Ok((cfg, errors));
        }
        // Validated with the keys in error taken out: only what holds of the keys left.
        let mut errors = shape;
        errors.extend(v.errors.into_iter().zip(&v.bases).filter_map(|(e, basis)| pruned.keep(e, basis)));
        cfg.collectors.retain_mut(|c| pruned.builds(c));
        sort_by_line(&mut errors);
        if errors.len() > SHAPE_ERRORS_MAX {
            errors.truncate(SHAPE_ERRORS_MAX);
            errors.push(stopped(file));
            return Err(ConfigErrors(errors));
        }
        Ok((cfg, errors))
    }

    pub fn event_type(&self, name: &str) -> Option<&EventType> {
        self.types.iter().find(|t| t.name == name)
    }

    /// Adds a preprocessing step for events of type `type_name` (see `enrich::step`).
    pub fn add_step(
        &mut self,
        type_name: &str,
        step: std::sync::Arc<dyn crate::enrich::step::Step>,
    ) -> Result<(), String> {
        let id = self
            .event_type(type_name)
            .ok_or_else(|| format!("no event type \"{type_name}\" for step {}", step.name()))?
            .id;
        self.steps.push((type_name.to_string(), id, step));
        Ok(())
    }
}

fn read_file(path: &std::path::Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            key: "-".into(),
            message: format!("cannot read the file: {e}"),
        }])
    })
}

/// Most errors reported in a run that finds errors in the file's shape (shape and value errors
/// together; the first by line). Each shape error costs deserializing the whole document again,
/// so a file of nothing but typos costs this many passes, not one per line.
const SHAPE_ERRORS_MAX: usize = 100;

fn stopped(file: &str) -> ConfigError {
    ConfigError {
        file: file.into(),
        line: 0,
        key: "-".into(),
        message: format!("stopped after {SHAPE_ERRORS_MAX} errors; fix these and check again"),
    }
}

/// A document that deserializes, with what it took to get there.
struct Shape {
    /// The text, less the keys in `pruned`.
    raw: RawConfig,
    /// Every error in the text's shape; none when `raw` is the text as written.
    errors: Vec<ConfigError>,
    pruned: Pruned,
}

/// The text as `RawConfig` with every error in its shape: each unknown key, value of the wrong
/// TOML type and missing required key. serde stops at the first, so each is named, then removed
/// from the document, and the rest deserialized again until it passes: the serde types stay the
/// one description of the shape (no schema walk to keep in step with them). The removed keys
/// keep their spans, so every error is named on the text as written, and so is every error
/// validation then finds in what is left (`Pruned` says what was taken out, for telling the
/// errors of the keys left from what only follows from taking the others out). A syntax error
/// stops at once, and so do `SHAPE_ERRORS_MAX` shape errors: nothing is validated then.
fn deserialize(text: &str, file: &str) -> Result<Shape, ConfigErrors> {
    let error = |span: Option<Range<usize>>, message: &str| ConfigError {
        file: file.into(),
        line: span.as_ref().map_or(0, |s| line_of(text, s.start)),
        key: key_of_toml_error(text, span, message),
        // One line per error: toml's message may run on over several.
        message: toml_message(message),
    };
    let doc = toml_edit::ImDocument::parse(text).map_err(|e| ConfigErrors(vec![error(e.span(), e.message())]))?;
    let mut root = doc.as_table().clone();
    let mut errors: Vec<ConfigError> = Vec::new();
    let mut pruned = Pruned::default();
    loop {
        let e = match toml_edit::de::from_document::<RawConfig>(toml_edit::DocumentMut::from(root.clone())) {
            Ok(raw) => return Ok(Shape { raw, errors, pruned }),
            Err(e) => e,
        };
        let this = error(e.span(), e.message());
        // A required key of the wrong type, once removed, is missing too (named on its table's
        // line): said once is enough. No two other shape errors name one key.
        if !errors.iter().any(|x| x.key == this.key) {
            errors.push(this);
        }
        if errors.len() == SHAPE_ERRORS_MAX {
            errors.push(stopped(file));
            return Err(ConfigErrors(errors));
        }
        match e.span().and_then(|s| key_path::locate(&root, s.start)) {
            Some(steps) if key_path::remove(&mut root, &steps) => pruned.record(&steps),
            _ => return Err(ConfigErrors(errors)),
        }
    }
}

/// What `deserialize` took out of the document to get past its shape errors. Validation of
/// what is left may then report what holds only because of that: a key taken out takes its
/// default (`server.request_line_bytes_max = "4k"` leaves 4096, which a written
/// `header_bytes_max = 2048` is then "not above"), a field or an event type taken out is then
/// "not declared" where a rule names it. So a value error is kept when it is about its key's own
/// value (`Basis::OwnValue`), or when none of the tables its rule reads lost a key; when in
/// doubt it is left out: it comes in the next run, once the shape is right.
#[derive(Default)]
struct Pruned {
    /// Each key or array element taken out, named on the text as written (`server.shardz`,
    /// `endpoint[2]`, `event.x.fields[0]`).
    removed: Vec<String>,
    /// Each array element taken out, in order, as (array, index) on the document as it was
    /// then: the elements after it moved down one, and validation names an element by its
    /// place in the document it is given.
    shifts: Vec<(String, usize)>,
    /// A top-level key was taken out: a misspelt table (`[servr]`) or a table of the wrong type,
    /// whose keys any rule may have been meant to read.
    top_level: bool,
}

impl Pruned {
    fn record(&mut self, steps: &[key_path::Step]) {
        let written = self.as_written(&key_path::join(steps));
        self.removed.push(written);
        self.top_level |= steps.len() == 1;
        if let [array @ .., key_path::Step::Index(i)] = steps {
            self.shifts.push((key_path::join(array), *i));
        }
    }

    /// A key, or a message naming another element (`endpoint[0]`), of the document validated,
    /// with each array index as in the text as written.
    fn as_written(&self, s: &str) -> String {
        self.shifts.iter().rev().fold(s.to_string(), |s, (array, i)| shift(&s, array, *i))
    }

    /// Index `i` of top-level array `array` (`collector`) as in the text as written.
    fn index_as_written(&self, array: &str, i: usize) -> usize {
        self.shifts.iter().rev().fold(i, |i, (a, removed)| if a == array && i >= *removed { i + 1 } else { i })
    }

    /// Whether a rule reading these tables (named as written) may have read a default or a
    /// missing element in place of a key taken out.
    fn doubtful(&self, tables: impl IntoIterator<Item = String>) -> bool {
        self.top_level || tables.into_iter().any(|t| self.removed.iter().any(|r| overlaps(&t, r)))
    }

    /// Validation error `e` as written, unless it may be a consequence of a key taken out.
    fn keep(&self, mut e: ConfigError, basis: &Basis) -> Option<ConfigError> {
        e.key = self.as_written(&e.key);
        e.message = self.as_written(&e.message);
        match basis {
            Basis::OwnValue => Some(e),
            Basis::Tables(also) => {
                let tables =
                    std::iter::once(table_of(&e.key).to_string()).chain(also.iter().map(|t| self.as_written(t)));
                (!self.doubtful(tables)).then_some(e)
            }
        }
    }

    /// Whether `check-config` builds collector `c` (its kind checks its options), renamed as
    /// written: only when its table and the event types it gets lost no key (the banker, for
    /// one, checks the kinds of their fields).
    fn builds(&self, c: &mut CollectorConfig) -> bool {
        c.options.index = self.index_as_written("collector", c.options.index);
        let types: Vec<String> = match &c.events {
            EventSelection::All => vec!["event".into()],
            EventSelection::Types(t) => t.iter().map(|t| format!("event.{t}")).collect(),
        };
        !self.doubtful(std::iter::once(format!("collector[{}]", c.options.index)).chain(types))
    }
}

/// `s` with each `array[j]` in it (at its start or after a space) for j >= i renamed
/// `array[j + 1]`: element i of `array` was taken out.
fn shift(s: &str, array: &str, i: usize) -> String {
    let open = format!("{array}[");
    let (mut out, mut copied, mut from) = (String::new(), 0, 0);
    while let Some(p) = s[from..].find(&open).map(|p| from + p) {
        let digits = p + open.len();
        let end = s[digits..].find(|c: char| !c.is_ascii_digit()).map_or(s.len(), |n| digits + n);
        from = digits;
        let named = (p == 0 || s[..p].ends_with(' ')) && s[end..].starts_with(']');
        if let (true, Ok(j)) = (named, s[digits..end].parse::<usize>()) {
            if j >= i {
                out.push_str(&s[copied..digits]);
                out.push_str(&(j + 1).to_string());
                copied = end;
            }
        }
    }
    out.push_str(&s[copied..]);
    out
}

/// Whether one of two keys is the other or lies in it (`event.x` and `event.x.fields[0]`).
fn overlaps(a: &str, b: &str) -> bool {
    let within = |k: &str, t: &str| k.strip_prefix(t).is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']));
    within(a, b) || within(b, a)
}

/// The table a key's rules read at least: its `[[endpoint]]` or `[[collector]]` element, its
/// `[event.<type>]`, else its section (`server.listen` → `server`).
fn table_of(key: &str) -> &str {
    let first = key.find(['.', '[']).unwrap_or(key.len());
    let rest = &key[first..];
    match &key[..first] {
        "endpoint" | "collector" if rest.starts_with('[') => {
            &key[..rest.find(']').map_or(key.len(), |j| first + j + 1)]
        }
        "event" if rest.starts_with('.') => &key[..rest[1..].find(['.', '[']).map_or(key.len(), |j| first + 1 + j)],
        _ => &key[..first],
    }
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// The dotted key a TOML-level error is about, read from the text around the error's span, as
/// the validator's own errors name keys: `table.key` for a `key = value` line (an array table
/// numbered, `endpoint[1].method`), the table for an error in a table header, `table.field`
/// for a missing field (from the message), `-` when none of that can be told.
fn key_of_toml_error(text: &str, span: Option<Range<usize>>, message: &str) -> String {
    let missing = message.strip_prefix("missing field `").and_then(|m| m.split('`').next());
    let Some(s) = span.filter(|s| s.start <= text.len() && text.is_char_boundary(s.start)) else {
        return missing.map_or_else(|| "-".into(), str::to_string);
    };
    // Text that parses as TOML: the key the span lies in, read off the document, with the field
    // a table lacks or has unknown (`event.x.fields[1].requried`): an inline table in an array
    // gives the line-based reading below nothing to go on.
    if let Some(path) = key_path::key_path_at(text, s.start) {
        let unknown = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next());
        return match unknown.or(missing) {
            Some(field) if !path.ends_with(&format!(".{field}")) && path != field => format!("{path}.{field}"),
            _ => path,
        };
    }
    let line_start = text[..s.start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let code = toml_code(line);
    let join = |table: Option<String>, key: &str| match table {
        Some(t) if !t.is_empty() => format!("{t}.{key}"),
        _ => key.to_string(),
    };
    if code.starts_with('[') {
        // Errors in a table header, and errors about a table as a whole (a missing field; a
        // wrong type for the table) point at its header line.
        let table = toml_table_at(text, line_start + line.len());
        return match missing {
            Some(field) => join(table, field),
            None => table.unwrap_or_else(|| "-".into()),
        };
    }
    let table = toml_table_at(text, line_start);
    if let Some(eq) = code.find('=') {
        let key = code[..eq].trim().trim_matches('"');
        if !key.is_empty() && !key.contains(['{', '[', ',']) {
            return join(table, key);
        }
    }
    match missing {
        Some(field) => join(table, field),
        None => "-".into(),
    }
}

/// toml's message on one line (it may run on over several), a table named as one: serde says
/// `expected struct RawServer`, naming a type of ours the reader has never seen.
fn toml_message(m: &str) -> String {
    let mut m = m.trim().replace('\n', "; ");
    if let Some(i) = m.find("expected struct Raw") {
        let end = m[i + "expected struct ".len()..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .map_or(m.len(), |j| i + "expected struct ".len() + j);
        m.replace_range(i..end, "expected a table");
    }
    if let Some(guess) = closest_known_key(&m) {
        m = format!("{m}; did you mean `{guess}`?");
    }
    m
}

/// For serde's "unknown field `requried`, expected one of `name`, `source`, …": the expected key
/// a typo most likely meant — the only one within two edits (insert, delete, substitute or swap
/// two neighbours), ties broken by the fewest edits. None when no key is that close, or two are
/// equally close: a guess that could be wrong is left out.
fn closest_known_key(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let expected = expected.strip_prefix(", expected one of ").or_else(|| expected.strip_prefix(", expected "))?;
    let mut best: Option<(usize, &str)> = None;
    let mut tied = false;
    // serde lists one key as "`a`", two as "`a` or `b`", more as "one of `a`, `b`, `c`".
    let keys = expected.split(", ").flat_map(|k| k.split(" or "));
    for key in keys.filter_map(|k| k.strip_prefix('`')?.strip_suffix('`')) {
        let d = edit_distance(unknown.as_bytes(), key.as_bytes());
        match best {
            _ if d > 2 => {}
            Some((b, _)) if d > b => {}
            Some((b, _)) if d == b => tied = true,
            _ => {
                best = Some((d, key));
                tied = false;
            }
        }
    }
    best.filter(|_| !tied).map(|(_, k)| k)
}

/// Optimal string alignment distance (Damerau–Levenshtein without repeated edits of one
/// substring): a transposition such as `requried` for `required` is one edit. Cold path: config
/// errors only.
fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let w = b.len() + 1;
    let mut d: Vec<usize> = (0..(a.len() + 1) * w)
        .map(|i| {
            if i < w {
                i
            } else if i % w == 0 {
                i / w
            } else {
                0
            }
        })
        .collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = v;
        }
    }
    d[a.len() * w + b.len()]
}

/// A TOML line without its comment, trimmed (a `#` inside a quoted string is not a comment).
fn toml_code(line: &str) -> &str {
    let mut quote = None;
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '#') => return line[..i].trim(),
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line.trim()
}

/// The table whose body holds byte offset `at`, from the last header line before it: `server`,
/// `event.impression`, or for an array table `endpoint[i]` (its i-th header from 0).
fn toml_table_at(text: &str, at: usize) -> Option<String> {
    let before = &text[..at.min(text.len())];
    let header = before.lines().rev().map(toml_code).find(|l| l.starts_with('['))?;
    let name = |h: &str| h.trim_matches(|c| c == '[' || c == ']').trim().to_string();
    if !header.starts_with("[[") {
        return Some(name(header));
    }
    let n = before.lines().map(toml_code).filter(|l| *l == header).count();
    Some(format!("{}[{}]", name(header), n.saturating_sub(1)))
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    /// The command-line flags the config will be served with (`load_with`); none otherwise.
    flags: &'a Overrides,
    errors: Vec<ConfigError>,
    /// What each of `errors` (same index) was decided from.
    bases: Vec<Basis>,
    /// The tables the checks under way read besides the one of the key an error names
    /// (`reading`).
    also: Vec<String>,
    /// Integer keys whose value was refused (out of range) and whose default now stands in.
    /// A rule between keys that reads one of them is not checked (`refused_any`): its error
    /// would quote the default, not what the file says, for a key already in error.
    refused: Vec<String>,
}

/// What a validation error was decided from: when keys of the wrong shape were taken out of the
/// document, whether the error may only follow from that (`Pruned::keep`).
#[derive(Debug)]
enum Basis {
    /// The value of the key it names alone: its range, its list of names, its syntax (`err_own`).
    OwnValue,
    /// A rule, which may read any key of the table of the key it names (`table_of`) and of
    /// these tables (`err`).
    Tables(Vec<String>),
}

impl Validator<'_> {
    /// An error from a rule: it reads the table of `key` and those named by `reading`.
    fn err(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let basis = Basis::Tables(self.also.clone());
        self.push(span, key.into(), message.into(), basis);
    }

    /// An error about the value of `key` alone, whatever the rest of the file says.
    fn err_own(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        self.push(span, key.into(), message.into(), Basis::OwnValue);
    }

    fn push(&mut self, span: Range<usize>, key: String, message: String, basis: Basis) {
        self.errors.push(ConfigError { file: self.file.into(), line: line_of(self.text, span.start), key, message });
        self.bases.push(basis);
    }

    /// The tables the checks that follow read besides the one of the key they name an error on:
    /// sections (`privacy`), elements (`event.x`, `endpoint[2]`), whole arrays (`endpoint`).
    fn reading(&mut self, tables: &[&str]) {
        self.also = tables.iter().map(|t| t.to_string()).collect();
    }

    /// An integer within the key's bounds, or its default when absent (both from keys.rs).
    fn int(&mut self, v: &Option<S<i64>>, k: &KeySpec) -> i64 {
        self.int_at(v, &k.name(), k)
    }

    /// `int` for a key whose name in errors is not `section.key` (e.g. `event.x.fields[2].max_bytes`).
    fn int_at(&mut self, v: &Option<S<i64>>, key: &str, k: &KeySpec) -> i64 {
        let (keys::KeyDefault::Int(default), keys::Bounds::Range(lo, hi)) = (k.default, k.bounds) else {
            panic!("{} is not an integer key with a range in keys.rs", k.name())
        };
        match v {
            None => default,
            Some(s) => {
                let x = *s.get_ref();
                if x < lo || x > hi {
                    self.err_own(s.span(), key, format!("{x} is out of range: expected {lo}..={hi}"));
                    self.refused.push(key.to_string());
                    default
                } else {
                    x
                }
            }
        }
    }

    /// Whether any of `keys` had its value refused and its default standing in (`refused`).
    fn refused_any(&self, keys: &[&str]) -> bool {
        keys.iter().any(|k| self.refused.iter().any(|r| r == k))
    }

    /// One of the key's names (keys.rs), mapped through `options`; its default when absent.
    fn choice<T: Copy>(&mut self, v: &Option<S<String>>, key: &str, k: &KeySpec, options: &[(&str, T)]) -> T {
        let keys::Bounds::OneOf(names) = k.bounds else { panic!("{} has no list of names in keys.rs", k.name()) };
        debug_assert!(
            names.iter().eq(options.iter().map(|(n, _)| n)),
            "{}: keys.rs and the validator disagree",
            k.name()
        );
        let default = options
            .iter()
            .find(|(n, _)| matches!(k.default, keys::KeyDefault::Str(d) if d == *n))
            .expect("default is an option")
            .1;
        let Some(s) = v else { return default };
        match options.iter().find(|(n, _)| *n == s.get_ref().as_str()) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.err_own(s.span(), key, format!("\"{}\" is not one of {}", s.get_ref(), names.join(", ")));
                default
            }
        }
    }

    fn config(&mut self, mut raw: RawConfig) -> Config {
        raw.place_implicit_tables();
        // Each check reads the table of the key it names an error on; `reading` names the other
        // tables it reads, for a run whose shape errors took keys out (`Pruned`).
        self.reading(&[]);
        let server = self.server(&raw.server);
        let journal = self.journal(&raw.journal);
        let admin = self.admin(&raw.admin);
        self.reading(&["server", "admin"]);
        // A flag that sets either address decides what is bound: the caller checks the pair
        // after applying it (`load_with`), so the file's pair is not refused for a clash the
        // flag removes.
        let flag_sets_listen = self.flags.listen.is_some() || self.flags.admin_listen.is_some();
        if !flag_sets_listen && listeners_clash(server.listen, admin.listen) {
            // On the line that was written: admin.listen's, unless only server.listen was.
            let (span, key, value, other, other_value) = match (&raw.admin.listen, &raw.server.listen) {
                (None, Some(s)) => (s.span(), "server.listen", server.listen, "admin.listen", admin.listen),
                (a, _) => (
                    a.as_ref().map_or(0..0, |a| a.span()),
                    "admin.listen",
                    admin.listen,
                    "server.listen",
                    server.listen,
                ),
            };
            self.err(span, key, format!("\"{value}\" shares a port with {other} \"{other_value}\": {LISTENERS_CLASH}"));
        }
        self.reading(&[]);
        let dedup = self.dedup(&raw.dedup);
        let budget = self.budget(&raw.budget);
        let (mut types, schema) = self.types(&raw.event);
        self.reading(&["event", "journal"]);
        self.schema_fits(&schema, journal.segment_bytes, &raw);
        self.reading(&["event"]);
        let privacy = self.privacy(&raw.privacy, &types, &raw.event);
        for t in &mut types {
            let mask = privacy.user_id_fields.get(t.id as usize).copied().unwrap_or(0);
            for (i, f) in t.fields.iter_mut().enumerate() {
                f.user_id = mask & (1 << i) != 0;
            }
        }
        self.reading(&["privacy"]);
        if !matches!(privacy.ip, crate::enrich::privacy::IpPolicy::Keep) {
            self.no_ip_identity(&raw.event, &types);
        }
        self.no_unkeyed_id_from(&raw.event, &types);
        self.referer_defaults_kept(&raw.event, &types, privacy.referer);
        self.reading(&[]);
        let cors = self.cors(&raw.cors);
        let endpoints = self.endpoints(&raw.endpoint, &types);
        // Which event types a collector gets, and their fields.
        self.reading(&["event"]);
        let collectors = self.collectors(&raw.collector, &types);
        self.reading(&[]);
        Config {
            server,
            journal,
            admin,
            dedup,
            budget,
            privacy,
            cors,
            endpoints,
            types,
            schema,
            collectors,
            steps: Vec::new(),
        }
    }

    /// Every segment header embeds the schema: it must fit one with room for a record, or no
    /// shard could open its journal (`ShardJournal::open` checks the same, without a line).
    fn schema_fits(&mut self, schema: &Schema, segment_bytes: u64, raw: &RawConfig) {
        use crate::journal::{header_bytes_for, SCHEMA_BYTES_MAX};
        let json = schema.to_json().len();
        let header = header_bytes_for(json);
        let need = (header + crate::event::EVENT_BYTES) as u64;
        let types_span = raw.event.values().next().map_or(0..0, |e| e.span());
        if json > SCHEMA_BYTES_MAX {
            self.err(
                types_span,
                "event",
                format!("the event types make {json} bytes of schema JSON: a segment header holds at most {SCHEMA_BYTES_MAX}; declare fewer event types or fields"),
            );
        } else if need > segment_bytes {
            let span = raw.journal.segment_bytes.as_ref().map_or(types_span, |s| s.span());
            self.err(
                span,
                "journal.segment_bytes",
                format!("{segment_bytes} cannot hold the {header}-byte segment header the event types need and one {}-byte record: expected at least {need}", crate::event::EVENT_BYTES),
            );
        }
    }

    fn admin(&mut self, r: &raw::RawAdmin) -> Admin {
        let default_listen: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let listen = match &r.listen {
            None => default_listen,
            Some(s) => s.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                self.err_own(
                    s.span(),
                    "admin.listen",
                    format!("\"{}\" is not an address: expected IP:PORT such as \"127.0.0.1:9090\"", s.get_ref()),
                );
                default_listen
            }),
        };
        let hlog_path = match &r.hlog_path {
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => Some(PathBuf::from(s.get_ref())),
            None => None,
        };
        Admin {
            listen,
            publish_interval_ms: self.int(&r.publish_interval_ms, spec(ADMIN_KEYS, "publish_interval_ms")) as u64,
            ready_free_bytes_min: self.int(&r.ready_free_bytes_min, spec(ADMIN_KEYS, "ready_free_bytes_min")) as u64,
            ready_ring_backlog_events_max: self
                .int(&r.ready_ring_backlog_events_max, spec(ADMIN_KEYS, "ready_ring_backlog_events_max"))
                as u64,
            hlog_path,
            hlog_interval_ms: self.int(&r.hlog_interval_ms, spec(ADMIN_KEYS, "hlog_interval_ms")) as u64,
        }
    }

    fn server(&mut self, r: &raw::RawServer) -> Server {
        let listen = match &r.listen {
            None => "0.0.0.0:8080".parse().unwrap(),
            Some(s) => match s.get_ref().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.err_own(
                        s.span(),
                        "server.listen",
                        format!(
                            "\"{}\" is not an address: expected IP:PORT such as \"0.0.0.0:8080\" or \"[::]:8080\"",
                            s.get_ref()
                        ),
                    );
                    "0.0.0.0:8080".parse().unwrap()
                }
            },
        };
        let ring_events = self.int(&r.ring_events, spec(SERVER_KEYS, "ring_events"));
        if !(ring_events as u64).is_power_of_two() {
            let s = r.ring_events.as_ref().unwrap();
            self.err_own(s.span(), "server.ring_events", format!("{ring_events} is not a power of two"));
        }
        let entries = self.int(&r.io_uring_entries, spec(SERVER_KEYS, "io_uring_entries"));
        if !(entries as u64).is_power_of_two() {
            let s = r.io_uring_entries.as_ref().unwrap();
            self.err_own(s.span(), "server.io_uring_entries", format!("{entries} is not a power of two"));
        }
        let request_line = self.int(&r.request_line_bytes_max, spec(SERVER_KEYS, "request_line_bytes_max"));
        let header_bytes = self.int(&r.header_bytes_max, spec(SERVER_KEYS, "header_bytes_max"));
        if request_line >= header_bytes
            && !self.refused_any(&["server.request_line_bytes_max", "server.header_bytes_max"])
        {
            // Point at the line the file has: request_line_bytes_max, or header_bytes_max when
            // only that one was written (the other is its default).
            let (span, key) = match (&r.request_line_bytes_max, &r.header_bytes_max) {
                (None, Some(h)) => (h.span(), "server.header_bytes_max"),
                (Some(l), _) => (l.span(), "server.request_line_bytes_max"),
                (None, None) => (0..0, "server.request_line_bytes_max"),
            };
            self.err(
                span,
                key,
                format!("server.request_line_bytes_max {request_line} is not below server.header_bytes_max ({header_bytes}); the request line is part of the head"),
            );
        }
        Server {
            listen,
            shards: self.int(&r.shards, spec(SERVER_KEYS, "shards")) as usize,
            connections_per_shard_max: self
                .int(&r.connections_per_shard_max, spec(SERVER_KEYS, "connections_per_shard_max"))
                as usize,
            request_line_bytes_max: request_line as usize,
            header_count_max: self.int(&r.header_count_max, spec(SERVER_KEYS, "header_count_max")) as usize,
            header_bytes_max: header_bytes as usize,
            body_bytes_max: self.int(&r.body_bytes_max, spec(SERVER_KEYS, "body_bytes_max")) as usize,
            header_read_timeout_ms: self.int(&r.header_read_timeout_ms, spec(SERVER_KEYS, "header_read_timeout_ms"))
                as u64,
            idle_timeout_ms: self.int(&r.idle_timeout_ms, spec(SERVER_KEYS, "idle_timeout_ms")) as u64,
            stop_request_grace_ms: self.int(&r.stop_request_grace_ms, spec(SERVER_KEYS, "stop_request_grace_ms"))
                as u64,
            ring_events: ring_events as usize,
            io_uring_entries: entries as u32,
            io_uring_defer_taskrun: r.io_uring_defer_taskrun.as_ref().is_some_and(|b| *b.get_ref()),
            batch_events_max: self.int(&r.batch_events_max, spec(SERVER_KEYS, "batch_events_max")) as usize,
            body_decoded_bytes_max: self.int(&r.body_decoded_bytes_max, spec(SERVER_KEYS, "body_decoded_bytes_max"))
                as usize,
            body_inflate_ratio_max: self.int(&r.body_inflate_ratio_max, spec(SERVER_KEYS, "body_inflate_ratio_max"))
                as usize,
        }
    }

    fn journal(&mut self, r: &raw::RawJournal) -> Journal {
        let segment_bytes = self.int(&r.segment_bytes, spec(JOURNAL_KEYS, "segment_bytes")) as u64;
        if !segment_bytes.is_multiple_of(4096) {
            let s = r.segment_bytes.as_ref().unwrap();
            self.err_own(
                s.span(),
                "journal.segment_bytes",
                format!("{segment_bytes} is not a multiple of 4096 (the page size)"),
            );
        }
        let dir = match &r.dir {
            Some(s) if s.get_ref().is_empty() => {
                self.err_own(s.span(), "journal.dir", "empty: expected a directory path");
                PathBuf::from("journal")
            }
            Some(s) => PathBuf::from(s.get_ref()),
            None => PathBuf::from("journal"),
        };
        Journal {
            dir,
            segment_bytes,
            sync: self.choice(
                &r.sync,
                "journal.sync",
                spec(JOURNAL_KEYS, "sync"),
                &[("none", SyncPolicy::None), ("interval", SyncPolicy::Interval), ("always", SyncPolicy::Always)],
            ),
            sync_interval_ms: self.int(&r.sync_interval_ms, spec(JOURNAL_KEYS, "sync_interval_ms")) as u64,
            stall_timeout_ms: self.int(&r.stall_timeout_ms, spec(JOURNAL_KEYS, "stall_timeout_ms")) as u64,
            retention_age_s: self.int(&r.retention_age_s, spec(JOURNAL_KEYS, "retention_age_s")) as u64,
            size_bytes_max: self.int(&r.size_bytes_max, spec(JOURNAL_KEYS, "size_bytes_max")) as u64,
        }
    }

    fn endpoints(&mut self, raw: &[S<raw::RawEndpoint>], types: &[EventType]) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        if raw.len() > ENDPOINTS_MAX {
            self.err(raw[ENDPOINTS_MAX].span(), "endpoint", format!("more than {ENDPOINTS_MAX} endpoints"));
        }
        for (i, e) in raw.iter().enumerate() {
            let key = |k: &str| format!("endpoint[{i}].{k}");
            let r = e.get_ref();
            // Its event type: whether it is declared, its fields (`redirect.signed_fields`).
            let event = format!("event.{}", r.event.get_ref());
            self.reading(&[&event]);
            let path = r.path.get_ref();
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#' || b >= 0x7f) {
                self.err_own(
                    r.path.span(),
                    key("path"),
                    format!("\"{path}\" is not a path: expected /something without spaces, '?' or '#'"),
                );
            }
            let method = self.choice(
                &r.method,
                &key("method"),
                spec(ENDPOINT_KEYS, "method"),
                &[("GET", Method::Get), ("POST", Method::Post)],
            );
            let response = self.choice(
                &r.response,
                &key("response"),
                spec(ENDPOINT_KEYS, "response"),
                &[
                    ("gif", ResponseKind::Gif),
                    ("no_content", ResponseKind::NoContent),
                    ("redirect", ResponseKind::Redirect),
                    ("json", ResponseKind::Json),
                ],
            );
            if response == ResponseKind::Json && method != Method::Post {
                let span = r.response.as_ref().map(|s| s.span()).unwrap_or(r.path.span());
                self.err(span, key("response"), "response = \"json\" answers a JSON body: the endpoint must be POST");
            }
            let ack = match &r.ack {
                // The first design notes called the mode "durable"; say which name it has.
                Some(a) if a.get_ref() == "durable" => {
                    self.err_own(
                        a.span(),
                        key("ack"),
                        "\"durable\" is not one of \"received\", \"logged\": the durable mode is \"logged\" \
                         (the answer waits until the event is in the journal)",
                    );
                    Ack::Logged
                }
                _ => self.choice(
                    &r.ack,
                    &key("ack"),
                    spec(ENDPOINT_KEYS, "ack"),
                    &[("received", Ack::Received), ("logged", Ack::Logged)],
                ),
            };
            let type_id = match types.iter().find(|t| &t.name == r.event.get_ref()) {
                Some(t) => t.id,
                None => {
                    let names: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
                    self.err(
                        r.event.span(),
                        key("event"),
                        format!(
                            "\"{}\" is not a declared event type: expected one of [{}] (declare it as [event.{}])",
                            r.event.get_ref(),
                            names.join(", "),
                            r.event.get_ref()
                        ),
                    );
                    0
                }
            };
            if let Some(prev) = out.iter().position(|o| o.path == *path && o.method == method) {
                // The other's method may be the default in place of one taken out.
                self.reading(&["endpoint"]);
                self.err(
                    r.path.span(),
                    key("path"),
                    format!("\"{path}\" with this method is already served by endpoint[{prev}]"),
                );
                self.reading(&[&event]);
            }
            // An undeclared type stands in as type 0 above; its redirect rule is checked against
            // no type rather than that one ("not a field of event.<first type>" would follow).
            let declared = types.iter().any(|t| &t.name == r.event.get_ref());
            let redirect =
                self.endpoint_redirect(i, r, response, method, types.get(type_id as usize).filter(|_| declared));
            // A `logged` endpoint's 2xx says the event is in the journal: over budget it cannot
            // answer as usual and not journal, so it refuses (the default there), and "drop" is
            // an error rather than a 2xx for an event that was never written.
            let over_budget = match (&r.over_budget, ack) {
                (None, Ack::Logged) => OverBudget::Reject,
                _ => self.choice(
                    &r.over_budget,
                    &key("over_budget"),
                    spec(ENDPOINT_KEYS, "over_budget"),
                    &[("drop", OverBudget::Drop), ("reject", OverBudget::Reject)],
                ),
            };
            if let (Some(v), Ack::Logged, OverBudget::Drop) = (&r.over_budget, ack, over_budget) {
                self.err(
                    v.span(),
                    key("over_budget"),
                    "\"drop\" on an ack = \"logged\" endpoint would answer 2xx for an event never journaled, which \
                     its 2xx promises: use \"reject\" (429 with Retry-After), the default there",
                );
            }
            let counter = out.len() as u16;
            out.push(Endpoint { path: path.clone(), method, type_id, response, ack, over_budget, redirect, counter });
        }
        self.reading(&[]);
        out
    }

    /// An id read from the header an ip field reads (`id_from = ["header.x-forwarded-for"]`) or
    /// from the Referer (`id_from = ["header.referer"]`) is made before the privacy step, as an
    /// unkeyed hash of the whole client address or page URL (query and fragment included), and
    /// is not re-keyed on an opt-out as a derived id is: refused whatever `privacy.ip` and
    /// `privacy.referer` say.
    fn no_unkeyed_id_from(
        &mut self,
        raw: &std::collections::BTreeMap<String, raw::Table<raw::RawEvent>>,
        types: &[EventType],
    ) {
        for (t, r) in types.iter().zip(raw.values()) {
            let Some(list) = &r.get_ref().id_from else { continue };
            // `t.id_from` was built from this list in order, one source per entry. client.ip
            // (also the stand-in for a bad source, already reported) is never read as an id.
            for (src, entry) in t.id_from.iter().zip(list.get_ref()).filter(|(s, _)| **s != Source::ClientIp) {
                let why = if let Some(f) = t.fields.iter().find(|f| f.kind == FieldKind::Ip && f.source == *src) {
                    format!(
                        "\"{}\" is the source of ip field \"{}\": the event id would be an unkeyed hash of the whole \
                         client address, kept even on an opt-out; leave it out",
                        entry.get_ref(),
                        f.name
                    )
                } else if let (Source::Header(h), true) = (src, src.reads_address_header()) {
                    format!(
                        "\"{}\" reads header.{h}, which holds a client address: the event id would be an unkeyed \
                         hash of the whole address, kept even on an opt-out; leave it out",
                        entry.get_ref()
                    )
                } else if matches!(src, Source::Header(h) if h == "referer") {
                    format!(
                        "\"{}\" reads the Referer: the event id would be an unkeyed hash of the whole page URL, \
                         query included, kept even on an opt-out; leave it out",
                        entry.get_ref()
                    )
                } else {
                    continue;
                };
                self.err(entry.span(), format!("event.{}.id_from", t.name), why);
            }
        }
    }

    /// A referer field's `default` is stored for every request without a Referer, after which
    /// the privacy step trims it like a received value: one it would rewrite would be stored
    /// as no request could make it (under `origin`, "none" would vanish).
    fn referer_defaults_kept(
        &mut self,
        raw: &std::collections::BTreeMap<String, raw::Table<raw::RawEvent>>,
        types: &[EventType],
        policy: RefererPolicy,
    ) {
        for (t, r) in types.iter().zip(raw.values()) {
            for (i, (f, rf)) in t.fields.iter().zip(&r.get_ref().fields).enumerate() {
                let (true, Some(DefaultValue::Bytes(d)), Some(span)) =
                    (f.referer, &f.default, rf.get_ref().default.as_ref().map(|d| d.span()))
                else {
                    continue;
                };
                let mut kept = d.clone();
                let n = crate::enrich::privacy::trim_referer(&mut kept, policy, false);
                if n != d.len() {
                    let d = String::from_utf8_lossy(d);
                    let stored = match n {
                        0 => "nothing".to_string(),
                        n => format!("\"{}\"", String::from_utf8_lossy(&kept[..n])),
                    };
                    self.err(
                        span,
                        format!("event.{}.fields[{i}].default", t.name),
                        format!(
                            "\"{d}\" would be stored as {stored} under privacy.referer = \"{}\"",
                            policy.config_name()
                        ),
                    );
                }
            }
        }
    }

    /// An id derived from the client's address would be an unkeyed hash of the whole address
    /// (ids are made before the privacy step truncates it), which anyone can recompute for
    /// every IPv4 address: with `privacy.ip` other than `keep`, no ip field is identity.
    fn no_ip_identity(
        &mut self,
        raw: &std::collections::BTreeMap<String, raw::Table<raw::RawEvent>>,
        types: &[EventType],
    ) {
        for (t, r) in types.iter().zip(raw.values()) {
            let Some(ids) = &r.get_ref().identity else { continue };
            for n in ids.get_ref() {
                let Some(f) = t.fields.iter().find(|f| &f.name == n.get_ref()) else { continue };
                if f.kind == FieldKind::Ip {
                    self.err(
                        n.span(),
                        format!("event.{}.identity", t.name),
                        format!(
                            "\"{}\" is the client address: the event id would be an unkeyed hash of the whole address \
                             (privacy.ip truncates only the stored field); leave it out, or set privacy.ip = \"keep\"",
                            f.name
                        ),
                    );
                }
            }
        }
    }

    fn types(
        &mut self,
        raw: &std::collections::BTreeMap<String, raw::Table<raw::RawEvent>>,
    ) -> (Vec<EventType>, Schema) {
        let mut types = Vec::new();
        for (i, (name, ev)) in raw.iter().enumerate() {
            if i >= EVENT_TYPES_MAX {
                self.err(ev.span(), format!("event.{name}"), format!("more than {EVENT_TYPES_MAX} event types"));
                break;
            }
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                self.err_own(
                    ev.span(),
                    format!("event.{name}"),
                    "event type names use only letters, digits, '_' and '-'",
                );
            }
            types.push(self.event_type(i as u16, name, ev.get_ref()));
        }
        let schema = Schema {
            version: SCHEMA_VERSION,
            event_bytes: crate::event::EVENT_BYTES as u32,
            types: types
                .iter()
                .map(|t| TypeSchema {
                    id: t.id,
                    name: t.name.clone(),
                    fields: t
                        .fields
                        .iter()
                        .map(|f| FieldSchema {
                            name: f.name.clone(),
                            kind: f.kind,
                            slot: f.slot as u8,
                            offset: f.offset as u16,
                            max: f.max as u16,
                        })
                        .collect(),
                })
                .collect(),
        };
        (types, schema)
    }

    fn event_type(&mut self, id: u16, name: &str, r: &raw::RawEvent) -> EventType {
        let mut fields: Vec<Field> = Vec::new();
        let mut area = 0usize;
        if r.fields.len() > SLOTS {
            self.err(
                r.fields[SLOTS].span(),
                format!("event.{name}.fields"),
                format!("{} fields: at most {SLOTS} per event type", r.fields.len()),
            );
        }
        for (i, f) in r.fields.iter().enumerate().take(SLOTS) {
            let key = |k: &str| format!("event.{name}.fields[{i}].{k}");
            let f = f.get_ref();
            let fname = f.name.get_ref();
            if fname.is_empty() || !fname.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                self.err_own(
                    f.name.span(),
                    key("name"),
                    format!("\"{fname}\": field names use only letters, digits and '_'"),
                );
            }
            if fields.iter().any(|o| o.name == *fname) {
                self.err(f.name.span(), key("name"), format!("\"{fname}\" is declared twice"));
            }
            let found = FieldKind::ALL.into_iter().find(|k| k.config_name() == f.kind.get_ref());
            if found.is_none() {
                let other = f.kind.get_ref();
                let known: Vec<String> = FieldKind::ALL.iter().map(|k| format!("\"{}\"", k.config_name())).collect();
                self.err_own(
                    f.kind.span(),
                    key("type"),
                    format!("\"{other}\" is not a type: expected one of {}", known.join(", ")),
                );
            }
            let errors_before = self.errors.len();
            let source = self.source(f.source.get_ref(), f.source.span(), &key("source"));
            // A misspelt type is reported once, above: its stand-in is the type the field's other
            // keys imply, so the checks that depend on the type do not each add an error of their
            // own ("max_bytes applies to type string only" for `type = "strng"`).
            let kind = found.unwrap_or_else(|| stand_in_kind(&source, f));
            // A bad source is reported once, by `source`: its stand-in (client.ip) must not set
            // off the checks that only a real source can fail.
            let source_ok = self.errors.len() == errors_before;
            if source_ok && source == Source::ClientIp && kind != FieldKind::Ip {
                self.err(f.kind.span(), key("type"), "client.ip must be stored as type \"ip\"");
            }
            // Privacy truncates ip fields only: a client address read from a proxy's header into
            // a string (or number) field would be stored whole.
            if let Source::Header(h) = &source {
                // The SSAI device address is trusted only once its signature checks
                // (enrich::ssai), and then reaches client.ip; read as a field, any client sets it.
                if h == "x-device-ip" {
                    self.err(
                        f.source.span(),
                        key("source"),
                        "header.x-device-ip is the SSAI device address, which any client can send: read client.ip, \
                         which takes it once its signature checks ([privacy.ssai])",
                    );
                }
                if ADDRESS_HEADERS.contains(&h.as_str()) && kind != FieldKind::Ip {
                    self.err(
                        f.kind.span(),
                        key("type"),
                        format!("header.{h} holds a client address: store it as type \"ip\", which privacy truncates"),
                    );
                }
            }
            if source == Source::DeviceClass
                && (kind != FieldKind::Str || f.max_bytes.as_ref().is_some_and(|m| *m.get_ref() < 7))
            {
                self.err(
                    f.kind.span(),
                    key("type"),
                    "request.device_class must be stored as type \"string\" with max_bytes >= 7",
                );
            }
            if source == Source::IsBot && !matches!(kind, FieldKind::U64 | FieldKind::U32) {
                self.err(f.kind.span(), key("type"), "request.is_bot must be stored as type \"u32\" or \"u64\"");
            }
            if source == Source::TimeMs && !matches!(kind, FieldKind::U64 | FieldKind::I64) {
                self.err(f.kind.span(), key("type"), "request.time_ms must be stored as type \"u64\" or \"i64\"");
            }
            let max = match (kind, &f.max_bytes) {
                (FieldKind::Str, m) => self.int_at(m, &key("max_bytes"), spec(FIELD_KEYS, "max_bytes")) as usize,
                (_, Some(m)) => {
                    self.err(m.span(), key("max_bytes"), "max_bytes applies to type \"string\" only");
                    0
                }
                (k, None) => k.area_bytes(0) as usize,
            };
            let offset = area;
            area += max;
            // Not when a max_bytes of this type was refused: its default is in the sum.
            let sum_as_written = !self
                .refused
                .iter()
                .any(|r| r.strip_prefix(&format!("event.{name}.fields[")).is_some_and(|r| r.ends_with("].max_bytes")));
            if area > STR_BYTES && sum_as_written {
                self.err(
                    f.name.span(),
                    key("max_bytes"),
                    format!("the strings and ips of event.{name} need {area} bytes so far: at most {STR_BYTES} (shorten max_bytes)"),
                );
            }
            let default = f.default.as_ref().and_then(|d| self.default_value(d, kind, max, &key("default")));
            let required = f.required.as_ref().map(|r| *r.get_ref()).unwrap_or(false);
            if required && default.is_some() {
                self.err(f.default.as_ref().unwrap().span(), key("default"), "a required field cannot have a default");
            }
            let mut one_of: Vec<Box<[u8]>> = Vec::new();
            if let Some(list) = &f.one_of {
                if kind != FieldKind::Str {
                    self.err(list.span(), key("one_of"), "one_of applies to type \"string\" only");
                }
                for v in list.get_ref() {
                    if v.get_ref().is_empty() || v.get_ref().len() > max {
                        self.err(
                            v.span(),
                            key("one_of"),
                            format!("\"{}\" must be 1..={max} bytes (max_bytes)", v.get_ref()),
                        );
                    }
                    one_of.push(v.get_ref().as_bytes().into());
                }
            }
            let decrypt = match (&f.decrypt, &f.encryption_key, &f.integrity_key) {
                (None, None, None) => None,
                (Some(d), Some(e), Some(ik)) if d.get_ref() == "google" => {
                    if kind != FieldKind::Money {
                        self.err(d.span(), key("decrypt"), "decrypt applies to type \"money\" only");
                    }
                    // Each key is checked on its own, and a bad one named at its own line.
                    use crate::extract::price::GooglePrice;
                    let decode = |v: &mut Self, k: &S<String>, which: &str| {
                        GooglePrice::key_from_config(k.get_ref())
                            .map_err(|why| v.err_own(k.span(), key(which), format!("{which} {why}")))
                            .ok()
                    };
                    let (e, i) = (decode(self, e, "encryption_key"), decode(self, ik, "integrity_key"));
                    e.zip(i).map(|(e, i)| Box::new(GooglePrice::new(&e, &i)))
                }
                (Some(d), _, _) if d.get_ref() != "google" => {
                    self.err_own(
                        d.span(),
                        key("decrypt"),
                        format!("\"{}\" is not a price decoder: expected \"google\"", d.get_ref()),
                    );
                    None
                }
                _ => {
                    self.err(
                        f.name.span(),
                        key("decrypt"),
                        "decrypt = \"google\" needs both encryption_key and integrity_key (web-safe base64)",
                    );
                    None
                }
            };
            let signed = matches!(kind, FieldKind::I64 | FieldKind::Money);
            let bound = |v: &mut Self, b: &Option<S<toml::Value>>, which: &str, dflt: u64| -> u64 {
                let Some(b) = b else { return dflt };
                if !matches!(kind, FieldKind::U64 | FieldKind::U32 | FieldKind::I64 | FieldKind::Money) {
                    v.err(b.span(), key(which), format!("{which} applies to numeric fields only"));
                    return dflt;
                }
                match v.default_value(b, kind, max, &key(which)) {
                    Some(DefaultValue::Num(n)) => n,
                    _ => dflt,
                }
            };
            let range = if f.min.is_some() || f.max.is_some() {
                let lo = bound(self, &f.min, "min", if signed { i64::MIN as u64 } else { 0 });
                let hi = bound(self, &f.max, "max", if signed { i64::MAX as u64 } else { u64::MAX });
                let inverted = if signed { (lo as i64) > (hi as i64) } else { lo > hi };
                if inverted {
                    self.err(f.name.span(), key("min"), "min is greater than max");
                }
                Some((lo, hi))
            } else {
                None
            };
            // The default is stored for every request that lacks the field: it must pass the
            // checks a client's value would, or the journal gets values the field refuses.
            if let (Some(d), Some(raw)) = (&default, &f.default) {
                let text = match raw.get_ref() {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let refused = match (d, range) {
                    (DefaultValue::Bytes(b), _) => !one_of.is_empty() && !one_of.iter().any(|o| **o == b[..]),
                    (DefaultValue::Num(n), Some((lo, hi))) if signed => !(lo as i64..=hi as i64).contains(&(*n as i64)),
                    (DefaultValue::Num(n), Some((lo, hi))) => !(lo..=hi).contains(n),
                    (DefaultValue::Num(_), None) => false,
                };
                if refused {
                    let rule =
                        if matches!(d, DefaultValue::Bytes(_)) { "not one of one_of" } else { "outside min..max" };
                    self.err(
                        raw.span(),
                        key("default"),
                        format!("\"{text}\" is {rule}: requests without the field would store a value it refuses"),
                    );
                }
            }
            let referer = kind == FieldKind::Str
                && match &source {
                    Source::Referer => true,
                    Source::Header(h) => h == "referer",
                    _ => false,
                };
            fields.push(Field {
                referer,
                range,
                name: fname.clone(),
                source,
                kind,
                slot: i,
                offset,
                max,
                required,
                default,
                one_of,
                decrypt,
                user_id: false,
            });
        }
        let mut identity = Vec::new();
        if let Some(ids) = &r.identity {
            for n in ids.get_ref() {
                match fields.iter().position(|f| &f.name == n.get_ref()) {
                    Some(p) => identity.push(p),
                    None => self.err(
                        n.span(),
                        format!("event.{name}.identity"),
                        format!("\"{}\" is not a field of event.{name}", n.get_ref()),
                    ),
                }
            }
        }
        let id_from = match &r.id_from {
            None => vec![Source::Query("eid".into())],
            Some(list) => list
                .get_ref()
                .iter()
                .map(|s| {
                    let key = format!("event.{name}.id_from");
                    let reported = self.errors.len();
                    let src = self.source(s.get_ref(), s.span(), &key);
                    // `extract` reads an id only from what the client sent as one; a built-in
                    // (client.ip, request.*) here would be accepted and never read. A bad source
                    // comes back as client.ip, already reported: not reported twice.
                    let client_sent =
                        matches!(src, Source::Query(_) | Source::Header(_) | Source::Cookie(_) | Source::Json(_));
                    if !client_sent && self.errors.len() == reported {
                        self.err_own(
                            s.span(),
                            key,
                            format!(
                                "\"{}\" is not an id source: id_from reads a client-supplied event id from \
                                 query.<param>, header.<name>, cookie.<name> or json.<path>; to derive the id from \
                                 fields, list them in `identity`",
                                s.get_ref()
                            ),
                        );
                    }
                    src
                })
                .collect(),
        };
        EventType::new(id, name.to_string(), fields, identity, id_from)
    }

    fn source(&mut self, s: &str, span: Range<usize>, key: &str) -> Source {
        let named = |p: &str| {
            s.strip_prefix(p)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b'&' && b != b'='))
        };
        if let Some(n) = named("query.") {
            Source::Query(n.to_string())
        } else if let Some(n) = named("header.") {
            Source::Header(n.to_ascii_lowercase())
        } else if let Some(n) = named("cookie.") {
            Source::Cookie(n.to_string())
        } else if let Some(p) = s.strip_prefix("json.") {
            let path: Box<[Box<str>]> = p.split('.').map(Box::from).collect();
            let bad = path.len() > JSON_PATH_KEYS_MAX
                || path
                    .iter()
                    .any(|k| k.is_empty() || k.bytes().any(|b| !b.is_ascii_graphic() || b == b'"' || b == b'\\'));
            if bad {
                self.err_own(
                    span,
                    key,
                    format!("\"{s}\" is not a JSON path: expected json.<key>[.<key>…], at most {JSON_PATH_KEYS_MAX} keys of visible ASCII other than '.', '\"' and '\\'"),
                );
            }
            Source::Json(path)
        } else {
            match s {
                "client.ip" => Source::ClientIp,
                "request.user_agent" => Source::UserAgent,
                "request.referer" => Source::Referer,
                "request.time_ms" => Source::TimeMs,
                "request.device_class" => Source::DeviceClass,
                "request.is_bot" => Source::IsBot,
                _ => {
                    self.err_own(
                        span,
                        key,
                        format!("\"{s}\" is not a source: expected query.<param>, header.<name>, cookie.<name>, json.<path>, client.ip, request.user_agent, request.referer, request.time_ms, request.device_class or request.is_bot"),
                    );
                    Source::ClientIp
                }
            }
        }
    }

    fn default_value(&mut self, d: &S<toml::Value>, kind: FieldKind, max: usize, key: &str) -> Option<DefaultValue> {
        let text = match d.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            other => {
                self.err(d.span(), key, format!("{other} is not a value for a {kind:?} field"));
                return None;
            }
        };
        let parsed = match kind {
            FieldKind::Str => {
                if text.len() > max {
                    self.err(d.span(), key, format!("\"{text}\" is {} bytes: longer than max_bytes {max}", text.len()));
                    return None;
                }
                return Some(DefaultValue::Bytes(text.into_bytes()));
            }
            FieldKind::Ip => {
                self.err(d.span(), key, "ip fields take no default");
                return None;
            }
            k => crate::extract::parse_number(k, text.as_bytes()),
        };
        match parsed {
            Ok((v, _)) => Some(DefaultValue::Num(v)),
            Err(why) => {
                self.err(d.span(), key, format!("\"{text}\" {why}"));
                None
            }
        }
    }
}

/// Command-line overrides of file values (`tracker serve --listen ... --journal-dir ... --shards N`).
#[derive(Default, Clone, Debug)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub journal_dir: Option<PathBuf>,
    pub shards: Option<usize>,
    pub admin_listen: Option<SocketAddr>,
}

impl Config {
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(l) = o.listen {
            self.server.listen = l;
        }
        if let Some(d) = &o.journal_dir {
            self.journal.dir = d.clone();
        }
        if let Some(s) = o.shards {
            self.server.shards = s;
        }
        if let Some(a) = o.admin_listen {
            self.admin.listen = a;
        }
    }
}

/// The type a field whose `type` is not one stands in with: the one its source and other keys
/// imply, so no check that depends on the type refuses the field a second time.
fn stand_in_kind(source: &Source, f: &raw::RawField) -> FieldKind {
    match source {
        Source::ClientIp => FieldKind::Ip,
        s if s.reads_address_header() => FieldKind::Ip,
        Source::IsBot => FieldKind::U32,
        Source::TimeMs => FieldKind::U64,
        Source::DeviceClass => FieldKind::Str,
        _ if f.decrypt.is_some() => FieldKind::Money,
        _ if f.max_bytes.is_some() || f.one_of.is_some() => FieldKind::Str,
        _ if f.default.as_ref().is_some_and(|d| d.get_ref().is_str()) => FieldKind::Str,
        _ => FieldKind::U64,
    }
}

impl Source {
    /// It reads a header that holds a client address.
    fn reads_address_header(&self) -> bool {
        matches!(self, Source::Header(h) if ADDRESS_HEADERS.contains(&h.as_str()))
    }
}

/// Request headers that carry a client's address (proxies, CDNs, SSAI stitchers), lowercase.
const ADDRESS_HEADERS: [&str; 7] =
    ["x-forwarded-for", "x-real-ip", "forwarded", "true-client-ip", "cf-connecting-ip", "x-client-ip", "x-device-ip"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_are_found_by_the_length_of_their_name() {
        let cfg = Config::embedded();
        let ty = cfg.types.iter().find(|t| t.name == "impression").unwrap();
        for n in 0..40 {
            let want: Vec<&[u8]> = ty.query_keys.iter().filter(|k| k.name.len() == n).map(|k| &k.name[..]).collect();
            let got: Vec<&[u8]> = ty.query_keys_of_len(n).iter().map(|k| &k.name[..]).collect();
            assert_eq!(got, want, "length {n}");
        }
        // Every key is in the span of its length, and an id source after the field of the
        // same name, as declared.
        assert!(ty.query_keys.iter().all(|k| ty.query_keys_of_len(k.name.len()).iter().any(|q| q.name == k.name)));
        let c: Vec<QueryReader> =
            ty.query_keys_of_len(1).iter().filter(|k| &k.name[..] == b"c").map(|k| k.reader).collect();
        assert!(matches!(c[..], [QueryReader::Field(_), ..]), "{c:?}");
    }

    #[test]
    fn a_client_address_header_must_be_stored_as_an_ip() {
        // Regression: as a string it reached the journal whole, past the privacy truncation.
        let text = format!(
            "{}\n[event.fwd]\nfields = [\n  {{ name = \"who\", source = \"header.X-Forwarded-For\", type = \"string\", max_bytes = 64 }},\n]\n",
            DEFAULT_TOML
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "event.fwd.fields[0].type");
        assert!(e[0].message.contains("header.x-forwarded-for holds a client address"), "{}", e[0]);
        let as_ip =
            text.replace("X-Forwarded-For\", type = \"string\", max_bytes = 64", "X-Forwarded-For\", type = \"ip\"");
        Config::parse(&as_ip, "t.toml").unwrap();
    }

    #[test]
    fn embedded_default_is_valid_and_serves_the_required_endpoints() {
        let c = Config::embedded();
        for p in ["/i", "/cv", "/v", "/win", "/bill", "/e"] {
            assert!(c.endpoints.iter().any(|e| e.path == p), "{p} missing");
        }
        let imp = c.event_type("impression").unwrap();
        let f = |n: &str| imp.fields.iter().find(|f| f.name == n).unwrap();
        assert_eq!(f("campaign_id").source, Source::Query("c".into()));
        assert_eq!(f("campaign_id").kind, FieldKind::U64);
        assert_eq!(f("creative_id").source, Source::Query("cr".into()));
        assert_eq!(f("price").kind, FieldKind::Money);
        assert_eq!(imp.id_from, vec![Source::Query("eid".into())]);
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        Config::parse(text, "t.toml").expect_err("expected errors").0
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = errors("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].file.as_str(), e[0].line, e[0].key.as_str()), ("t.toml", 3, "server.lisen"));
        assert!(e[0].message.contains("unknown field"), "{}", e[0]);
    }

    #[test]
    fn toml_level_errors_name_the_dotted_key_on_one_line() {
        for (text, line, key, message) in [
            ("[server]\nshards = 1\nshards = 2\n", 3, "server.shards", "duplicate key `shards`"),
            ("[server]\nshards = 1\n[server]\nshards = 2\n", 3, "server", "invalid table header; duplicate key"),
            ("[server] # main\nshards = \"x\"\n", 2, "server.shards", "invalid type: string"),
            (
                "[[endpoint]]\npath = \"/i\"\nevent = \"e\"\n[[endpoint]] # two\npath = \"/x\"\nmethod = 5\nevent = \"e\"\n[event.e]\n",
                6,
                "endpoint[1].method",
                "expected a string",
            ),
            ("[[endpoint]]\nmethod = \"GET\"\nevent = \"e\"\n", 1, "endpoint[0].path", "missing field `path`"),
            ("server = 5\n", 1, "server", "invalid type: integer `5`, expected a table"),
        ] {
            let e = errors(text);
            assert_eq!((e[0].line, e[0].key.as_str()), (line, key), "{text:?}: {}", e[0]);
            assert!(e[0].message.contains(message) && !e[0].message.contains('\n'), "{text:?}: {}", e[0]);
        }
        assert_eq!(toml_code("a = \"x # y\" # z"), "a = \"x # y\"");
    }

    #[test]
    fn an_unknown_key_one_or_two_edits_from_a_known_one_is_named_as_the_likely_meant_one() {
        let m = |u: &str| {
            toml_message(&format!(
                "unknown field `{u}`, expected one of `name`, `source`, `type`, `required`, `default`"
            ))
        };
        assert!(m("requried").ends_with("; did you mean `required`?"), "{}", m("requried"));
        assert!(m("sorce").ends_with("; did you mean `source`?"));
        assert!(m("nmae").ends_with("; did you mean `name`?"));
        assert!(m("defaults").ends_with("; did you mean `default`?"));
        // Nothing close: no guess.
        assert!(!m("colour").contains("did you mean"));
        // Two equally close: no guess either.
        let tie = toml_message("unknown field `ab`, expected one of `aa`, `bb`");
        assert!(!tie.contains("did you mean"), "{tie}");
        assert_eq!(edit_distance(b"requried", b"required"), 1);
        assert_eq!(edit_distance(b"", b"abc"), 3);
        assert_eq!(edit_distance(b"kitten", b"sitting"), 3);
    }

    /// Regression: deserialization stopped at the first shape error, so a file with several
    /// typos took one run each.
    #[test]
    fn every_shape_error_is_reported_in_one_run() {
        let text = "server = 5\n\
                    [cors]\norigins = [\"https://a.example\", 5]\nmax_age = 1\n\
                    [[endpoint]]\npath = 5\nevent = \"x\"\n\
                    [[endpoint]]\nevent = \"x\"\nmethd = \"GET\"\n\
                    [[endpoint]]\npath = \"/r\"\nevent = \"x\"\n\
                    [endpoint.redirect]\nparm = \"u\"\n\
                    [[endpoint.redirect.key]]\nid = 1\n\
                    [event.x]\nfields = [\n  { name = \"a\", source = 1, type = \"u64\", requried = true },\n  { type = \"u64\" },\n]\n\
                    identty = []\n";
        let e = errors(text);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "server"),
                (3, "cors.origins[1]"),
                (4, "cors.max_age"),
                (6, "endpoint[0].path"),
                (8, "endpoint[1].path"),
                (10, "endpoint[1].methd"),
                (15, "endpoint[2].redirect.parm"),
                (17, "endpoint[2].redirect.key[0].id"),
                (20, "event.x.fields[0].source"),
                (20, "event.x.fields[0].requried"),
                (21, "event.x.fields[1].name"),
                (23, "event.x.identty"),
            ],
            "{e:#?}"
        );
        let m = |key: &str| e.iter().find(|e| e.key == key).unwrap().message.as_str();
        assert_eq!(m("server"), "invalid type: integer `5`, expected a table");
        assert_eq!(m("cors.origins[1]"), "invalid type: integer `5`, expected a string");
        assert_eq!(
            m("cors.max_age"),
            "unknown field `max_age`, expected `origins` or `max_age_s`; did you mean `max_age_s`?"
        );
        assert_eq!(m("endpoint[0].path"), "invalid type: integer `5`, expected a string", "not also missing");
        assert_eq!(m("endpoint[1].path"), "missing field `path`");
        assert_eq!(m("event.x.fields[1].name"), "missing field `name`");
        // Nothing that follows from the keys taken out is reported: not `event = "x"` of an
        // endpoint whose type had errors, nor any rule once a top-level key (`server`) went.
        assert!(e.iter().all(|e| !e.message.contains("declared")), "{e:#?}");
        // The limit: a file of nothing but typos stops at SHAPE_ERRORS_MAX.
        let typos: String = (0..SHAPE_ERRORS_MAX + 5).map(|i| format!("typo{i} = 1\n")).collect();
        let e = errors(&format!("[server]\n{typos}"));
        assert_eq!(e.len(), SHAPE_ERRORS_MAX + 1, "{e:#?}");
        assert_eq!(e[SHAPE_ERRORS_MAX - 1].key, format!("server.typo{}", SHAPE_ERRORS_MAX - 1));
        assert!(e[SHAPE_ERRORS_MAX].message.starts_with("stopped after 100 errors"), "{}", e[SHAPE_ERRORS_MAX]);
        // A syntax error is one error: nothing after it can be trusted.
        assert_eq!(errors("[server]\nshardz = 1\nlisten = [\nring_events = \"x\"\n").len(), 1);
    }

    /// The line of the first line of `text` that contains `needle`.
    fn line_with(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
    }

    /// Regression: value errors (out of range, not one of, not a power of two…) were checked
    /// only once the shape was right, so a file with one typo and one bad value took two runs.
    /// Every key whose own shape is fine is now validated in the same run, and named by its
    /// index in the file as written even when an element before it was taken out.
    #[test]
    fn value_errors_come_in_the_same_run_as_shape_errors() {
        let text = "[server]\nshardz = 2\nring_events = \"lots\"\nshards = 9999\n\
                    [journal]\nsegment_bytes = 1048577\nsync = \"sometimes\"\n\
                    [[endpoint]]\nevent = \"x\"\n\
                    [[endpoint]]\npath = \"/i\"\nevent = \"x\"\nmethod = \"PUT\"\n\
                    [event.x]\nfields = [\n  { source = \"query.a\", type = \"u64\" },\n  \
                    { name = \"b\", source = \"query.b\", type = \"float\" },\n]\n";
        let e = errors(text);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (2, "server.shardz"),
                (3, "server.ring_events"),
                (4, "server.shards"),
                (6, "journal.segment_bytes"),
                (7, "journal.sync"),
                (8, "endpoint[0].path"),
                (13, "endpoint[1].method"),
                (16, "event.x.fields[0].name"),
                (17, "event.x.fields[1].type"),
            ],
            "{e:#?}"
        );
        let m = |key: &str| e.iter().find(|e| e.key == key).unwrap().message.as_str();
        assert_eq!(m("server.shards"), "9999 is out of range: expected 0..=256");
        assert_eq!(m("journal.segment_bytes"), "1048577 is not a multiple of 4096 (the page size)");
        assert_eq!(m("journal.sync"), "\"sometimes\" is not one of \"none\", \"interval\", \"always\"");
        assert_eq!(m("endpoint[1].method"), "\"PUT\" is not one of \"GET\", \"POST\"");
        assert!(m("event.x.fields[1].type").starts_with("\"float\" is not a type"), "{e:#?}");
        // The same through parse_with_errors (check-config): the shape errors are in the list.
        let (_, listed) = Config::parse_with_errors(text, "t.toml").unwrap();
        assert_eq!(listed, e);

        // Another element named in a message is named as written too.
        let collectors = "[[collector]]\nname = \"a\"\nevents = \"all\"\nfields = []\n\
                          [[collector]]\nname = \"b\"\nkind = \"jsonl\"\nevents = \"all\"\nfields = []\n\
                          [[collector]]\nname = \"b\"\nkind = \"jsonl\"\nevents = \"all\"\nfields = []\n";
        let (cfg, e) = Config::parse_with_errors(collectors, "t.toml").unwrap();
        let got: Vec<(usize, &str, &str)> = e.iter().map(|e| (e.line, e.key.as_str(), e.message.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "collector[0].kind", "missing field `kind`"),
                (11, "collector[2].name", "\"b\" is already the name of collector[1]"),
            ]
        );
        // check-config builds the two left, under their indexes as written.
        assert_eq!(cfg.collectors.iter().map(|c| c.options.index).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(shift("endpoint[3].method", "endpoint", 1), "endpoint[4].method");
        assert_eq!(shift("endpoint[0].method", "endpoint", 1), "endpoint[0].method");
        assert_eq!(
            shift("endpoint[2].redirect.key[1].id", "endpoint[2].redirect.key", 0),
            "endpoint[2].redirect.key[2].id"
        );
        assert_eq!(
            shift("\"/a\" is already served by endpoint[1]", "endpoint", 0),
            "\"/a\" is already served by endpoint[2]"
        );
        assert_eq!(shift("myendpoint[1]", "endpoint", 0), "myendpoint[1]");

        // The cap holds for both kinds together: the first SHAPE_ERRORS_MAX by line.
        let endpoints: String =
            (0..60).map(|i| format!("[[endpoint]]\npath = \"/e{i}\"\nevent = \"x\"\nmethod = \"PUT\"\n")).collect();
        let typos: String = (0..60).map(|i| format!("typo{i} = 1\n")).collect();
        let e = errors(&format!("{endpoints}[event.x]\n[server]\n{typos}"));
        assert_eq!(e.len(), SHAPE_ERRORS_MAX + 1, "{e:#?}");
        assert_eq!((e[0].line, e[0].key.as_str()), (4, "endpoint[0].method"));
        assert_eq!(e[59].key, "endpoint[59].method");
        assert_eq!(e[SHAPE_ERRORS_MAX - 1].key, format!("server.typo{}", SHAPE_ERRORS_MAX - 61));
        assert!(e[SHAPE_ERRORS_MAX].message.starts_with("stopped after 100 errors"), "{}", e[SHAPE_ERRORS_MAX]);
    }

    /// What the validator says of the document with the bad keys taken out, but only because
    /// they were taken out, is not reported: a field removed from an event type is not "not a
    /// field" of the rules that name it, a removed event type not "not declared" for an endpoint
    /// that names it. A rule over keys whose shape was fine still is.
    #[test]
    fn a_consequence_of_a_key_taken_out_is_not_reported() {
        let text = "[privacy]\nuser_id_fields = [\"uid\"]\n\
                    [[endpoint]]\npath = \"/c\"\nevent = \"x\"\nresponse = \"redirect\"\n\
                    [endpoint.redirect]\nallow_domains = [\"example.com\"]\nsigned_fields = [\"campaign\"]\n\
                    [[endpoint]]\npath = \"/y\"\nevent = \"y\"\n\
                    [[endpoint]]\npath = \"/z\"\nevent = \"z\"\nresponse = \"json\"\n\
                    [event]\ny = 5\n\
                    [event.x]\nidentity = [\"campaign\"]\nfields = [\n\
                    \x20 { name = \"campaign\", source = 5, type = \"u64\" },\n\
                    \x20 { name = \"uid\", source = \"query.u\", type = 5 },\n]\n\
                    [event.z]\nfields = [ { name = \"n\", source = \"query.n\", type = \"u64\" } ]\n";
        let e = errors(text);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(
            got,
            [
                (line_with(text, "response = \"json\""), "endpoint[2].response"),
                (line_with(text, "y = 5"), "event.y"),
                (line_with(text, "\"campaign\", source"), "event.x.fields[0].source"),
                (line_with(text, "\"uid\", source"), "event.x.fields[1].type"),
            ],
            "{e:#?}"
        );
        assert!(e[0].message.contains("must be POST"), "{}", e[0]);
        // A misspelt table: every section may have lost its keys to it, so only what a key says
        // of itself is reported (not that admin.listen clashes with a default server.listen).
        let e =
            errors("[servr]\nlisten = \"127.0.0.1:9090\"\n[admin]\nlisten = \"0.0.0.0:8080\"\nhlog_interval_ms = 0\n");
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, [(1, "servr"), (5, "admin.hlog_interval_ms")], "{e:#?}");
    }

    #[test]
    fn every_semantic_error_is_reported_with_its_line() {
        let text = "[server]\nshards = 9999\nring_events = 1000\n\n[journal]\nsync = \"sometimes\"\n\n[[endpoint]]\npath = \"/i\"\nevent = \"nope\"\n\n[event.x]\nfields = [\n  { name = \"a\", source = \"query.a\", type = \"float\" },\n  { name = \"b\", source = \"body.b\", type = \"u64\" },\n  { name = \"c\", source = \"query.c\", type = \"u32\", default = \"12x\" },\n]\n";
        let e = errors(text);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        for want in [
            (2, "server.shards"),
            (3, "server.ring_events"),
            (6, "journal.sync"),
            (10, "endpoint[0].event"),
            (14, "event.x.fields[0].type"),
            (15, "event.x.fields[1].source"),
            (16, "event.x.fields[2].default"),
        ] {
            assert!(got.contains(&want), "missing {want:?} in {got:?}");
        }
        let shards = e.iter().find(|e| e.key == "server.shards").unwrap();
        assert!(shards.message.contains("9999") && shards.message.contains("0..=256"), "{shards}");
        let ty = e.iter().find(|e| e.key == "event.x.fields[0].type").unwrap();
        assert_eq!(
            ty.message,
            "\"float\" is not a type: expected one of \"u64\", \"u32\", \"i64\", \"money\", \"string\", \"ip\""
        );
    }

    #[test]
    fn listeners_clash_on_one_port_of_a_covered_address_only() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_clash(a("127.0.0.1:8080"), a("127.0.0.1:8080")));
        assert!(listeners_clash(a("0.0.0.0:8080"), a("127.0.0.1:8080")));
        assert!(listeners_clash(a("127.0.0.1:8080"), a("0.0.0.0:8080")));
        assert!(listeners_clash(a("[::]:8080"), a("127.0.0.1:8080")));
        assert!(!listeners_clash(a("0.0.0.0:8080"), a("[::1]:8080")), "an IPv4 wildcard covers no IPv6 address");
        assert!(!listeners_clash(a("127.0.0.1:8080"), a("127.0.0.2:8080")));
        assert!(!listeners_clash(a("0.0.0.0:8080"), a("127.0.0.1:9090")));
        assert!(!listeners_clash(a("127.0.0.1:0"), a("127.0.0.1:0")), "port 0 picks a free port for each");
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:9090\"\n", "t.toml").unwrap_err().0;
        assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 2, "server.listen"), "{e:?}");
    }

    #[test]
    fn a_burst_of_more_than_a_day_of_budget_is_refused() {
        let e = errors("[budget]\nrate_per_s = 1\nburst = 300000\n");
        assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 3, "budget.burst"), "{e:?}");
        assert!(e[0].message.contains("at most rate_per_s × 86400 = 86400"), "{}", e[0]);
        assert!(Config::parse("[budget]\nrate_per_s = 1\nburst = 86400\n", "t.toml").is_ok());
        assert!(Config::parse("[budget]\nrate_per_s = 0\nburst = 300000\n", "t.toml").is_ok());
    }

    #[test]
    fn admin_section_defaults_and_errors() {
        let a = Config::embedded().admin;
        assert_eq!(a.listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!((a.publish_interval_ms, a.ready_free_bytes_min, a.hlog_path), (1000, 0, None));
        let e = errors("[admin]\nlisten = \"nope\"\npublish_interval_ms = 5\nhlog_interval_ms = 0\n");
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, [(2, "admin.listen"), (3, "admin.publish_interval_ms"), (4, "admin.hlog_interval_ms")]);
        let c = Config::parse("[admin]\nhlog_path = \"/tmp/t.hlog\"\n", "t.toml").unwrap();
        assert_eq!(c.admin.hlog_path, Some(PathBuf::from("/tmp/t.hlog")));
    }

    #[test]
    fn byte_area_overflow_is_refused() {
        let text = "[event.x]\nfields = [\n  { name = \"a\", source = \"query.a\", type = \"string\", max_bytes = 300 },\n  { name = \"b\", source = \"query.b\", type = \"string\", max_bytes = 30 },\n]\n";
        let e = errors(text);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].line, 4);
        assert!(e[0].message.contains("330"), "{}", e[0]);
    }

    #[test]
    fn a_value_of_the_wrong_type_or_size_names_its_key_not_the_value() {
        let e = Config::parse("[server]\nshards = \"two\"\n", "t.toml").map(|_| ()).unwrap_err().0;
        assert_eq!((e[0].line, e[0].key.as_str()), (2, "server.shards"), "{e:?}");
        assert!(e[0].message.contains("\"two\""), "{e:?}");
        let e = Config::parse("[journal]\nsegment_bytes = 99999999999999999999\n", "t.toml").map(|_| ()).unwrap_err().0;
        assert_eq!((e[0].line, e[0].key.as_str()), (2, "journal.segment_bytes"), "{e:?}");
        // An unknown key is still named by itself.
        let e = Config::parse("[server]\nshardz = 2\n", "t.toml").map(|_| ()).unwrap_err().0;
        assert_eq!(e[0].line, 2, "{e:?}");
        assert!(e[0].key.contains("shardz"), "{e:?}");
    }

    #[test]
    fn a_head_limit_below_the_request_line_default_points_at_the_line_written() {
        let e = Config::parse("[server]\nheader_bytes_max = 2048\n", "t.toml").map(|_| ()).unwrap_err().0;
        assert_eq!((e[0].line, e[0].key.as_str()), (2, "server.header_bytes_max"), "{e:?}");
    }

    /// An id read from the header an ip field reads (`id_from`) is made before the privacy step,
    /// as an unkeyed hash of the whole address, and an opt-out does not re-key it.
    #[test]
    fn an_ip_fields_source_in_id_from_is_refused() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nid_from = [\"query.eid\", \"header.X-Forwarded-For\"]\nfields = [ { name = \"addr\", source = \"header.x-forwarded-for\", type = \"ip\" } ]\n";
        let e = errors(text);
        assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 5, "event.x.id_from"), "{e:?}");
        assert!(e[0].message.contains("\"addr\"") && e[0].message.contains("unkeyed hash"), "{}", e[0]);
        let keep = errors(&format!("[privacy]\nip = \"keep\"\n{text}"));
        assert_eq!((keep.len(), keep[0].key.as_str()), (1, "event.x.id_from"), "{keep:?}");
        assert!(Config::parse(&text.replace("\"header.X-Forwarded-For\"", "\"header.x-request-id\""), "t.toml").is_ok());
    }

    /// Regression: a misspelt `type` stood in as u64, so every check that depends on the type
    /// added errors of its own on a field that was fine but for the spelling.
    #[test]
    fn a_misspelt_type_is_one_error() {
        for (field, _) in [
            (r#"{ name = "ip", source = "client.ip", type = "IP" }"#, "ip"),
            (r#"{ name = "s", source = "query.s", type = "strng", max_bytes = 32, default = "n/a" }"#, "string"),
        ] {
            let e = errors(&format!("[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [ {field} ]\n"));
            assert_eq!(e.len(), 1, "{field}: {e:?}");
            assert!(e[0].message.contains("is not a type"), "{}", e[0]);
        }
    }

    /// A `logged` endpoint's 2xx says the event is journaled: it refuses over budget by default,
    /// and `over_budget = "drop"` there is an error.
    #[test]
    fn a_logged_endpoint_refuses_over_budget() {
        let cfg = Config::embedded();
        let cv = cfg.endpoints.iter().find(|e| e.path == "/cv").unwrap();
        assert_eq!((cv.ack, cv.over_budget), (Ack::Logged, OverBudget::Reject));
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\nack = \"logged\"\nover_budget = \"drop\"\n[event.x]\nfields = []\n";
        let e = errors(text);
        assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 5, "endpoint[0].over_budget"), "{e:?}");
        let text = text.replace("over_budget = \"drop\"\n", "");
        let cfg = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(cfg.endpoints[0].over_budget, OverBudget::Reject);
    }

    /// Regression: an endpoint naming an undeclared type stood in with type 0, and its redirect
    /// rule was checked against that type: a signed field got "not a field of event.<other>".
    #[test]
    fn a_redirect_of_an_undeclared_type_is_not_checked_against_another() {
        let text = DEFAULT_TOML.replacen("event = \"click\"", "event = \"clik\"", 1).replacen(
            "param = \"url\"",
            "param = \"url\"\nsigned_fields = [\"campaign_id\"]",
            1,
        );
        let e = Config::parse(&text, "t.toml").unwrap_err().0;
        assert!(e.iter().any(|e| e.message.contains("\"clik\" is not a declared event type")), "{e:?}");
        assert!(!e.iter().any(|e| e.key.ends_with("redirect.signed_fields")), "{e:?}");
    }

    /// Regression: dotted keys in a collector's options (`options.path = …` in `[[collector]]`,
    /// `properties."client.id" = …` in `[collector.options]`) are valid TOML, and were refused
    /// with serde's internals in the message ("expected a borrowed string").
    #[test]
    fn collector_options_may_be_written_with_dotted_keys() {
        let text = format!(
            "{DEFAULT_TOML}\n[[collector]]\nname = \"j\"\nkind = \"jsonl\"\nevents = \"all\"\nfields = []\n\
             options.path = \"/tmp/x.jsonl\"\noptions.fsync = false\n\
             [[collector]]\nname = \"k\"\nkind = \"kafka\"\nevents = \"all\"\nfields = []\n\
             [collector.options]\nbrokers = \"127.0.0.1:9092\"\nproperties.\"client.id\" = \"x\"\n"
        );
        let cfg = Config::parse(&text, "t.toml").unwrap_or_else(|e| panic!("{:?}", e.0));
        let j = &cfg.collectors[0].options.entries;
        assert_eq!(j.get("path").map(|(_, v)| v.as_str()), Some(Some("/tmp/x.jsonl")));
        assert_eq!(j.get("fsync").map(|(_, v)| v.as_bool()), Some(Some(false)));
        let k = &cfg.collectors[1].options.entries;
        let props = k.get("properties").and_then(|(_, v)| v.as_table()).expect("properties");
        assert_eq!(props.get("client.id").and_then(|v| v.as_str()), Some("x"));
    }

    /// Regression: a client-address header in `id_from` was refused only when an ip field of the
    /// type read it; on its own it made the event id an unkeyed hash of the whole address. And
    /// the SSAI device header, which any client can send, was taken as an ip field's source.
    #[test]
    fn an_address_header_in_id_from_or_the_ssai_header_as_a_source_is_refused() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nid_from = [\"header.x-forwarded-for\"]\nfields = []\n";
        let e = errors(text);
        assert_eq!((e.len(), e[0].key.as_str()), (1, "event.x.id_from"), "{e:?}");
        assert!(e[0].message.contains("holds a client address"), "{}", e[0]);
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [ { name = \"d\", source = \"header.x-device-ip\", type = \"ip\" } ]\n";
        let e = errors(text);
        assert!(e.iter().any(|e| e.key == "event.x.fields[0].source" && e.message.contains("SSAI")), "{e:?}");
    }

    /// Regression: a user id field's source was refused in `id_from` of its own type only; the
    /// raw cookie read as another type's id made that id an unkeyed hash of the user id.
    #[test]
    fn a_user_ids_source_in_another_types_id_from_is_refused() {
        let text = DEFAULT_TOML.replace("id_from = [\"json.eid\"]", "id_from = [\"json.eid\", \"cookie.uid\"]");
        assert!(text.contains("\"cookie.uid\"]"), "the batch type reads id_from json.eid");
        let e = Config::parse(&text, "t.toml").unwrap_err().0;
        assert!(
            e.iter().any(|e| e.key == "privacy.user_id_fields"
                && e.message.contains("(of event.conversion) is in id_from of event.batch_event")),
            "{e:?}"
        );
    }

    /// Regression: a built-in in `id_from` was accepted and never read, so the config looked as
    /// if it set the event id while every event got a derived or generated one.
    #[test]
    fn a_built_in_in_id_from_is_refused() {
        for builtin in ["client.ip", "request.referer", "request.user_agent", "request.time_ms", "request.is_bot"] {
            let text = format!("[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nid_from = [\"query.eid\", \"{builtin}\"]\nfields = []\n");
            let e = errors(&text);
            assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 5, "event.x.id_from"), "{builtin}: {e:?}");
            assert!(e[0].message.contains(builtin) && e[0].message.contains("identity"), "{}", e[0]);
        }
        // A misspelt built-in is one error, the unknown-source one.
        let e = errors(
            "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nid_from = [\"request.refferer\"]\nfields = []\n",
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("is not a source"), "{}", e[0]);
    }

    /// Regression: a typo in a field declared as an inline table named no key (`-`).
    #[test]
    fn an_unknown_field_in_an_inline_table_is_named_by_its_path() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [\n  { name = \"a\", source = \"query.a\", type = \"u64\" },\n  { name = \"b\", source = \"query.b\", type = \"u64\", requried = true },\n]\n";
        let e = errors(text);
        assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 7, "event.x.fields[1].requried"), "{e:?}");
        assert!(e[0].message.contains("unknown field `requried`"), "{}", e[0]);
    }

    #[test]
    fn a_bad_source_is_one_error() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [ { name = \"a\", source = \"header.X Y\", type = \"string\" } ]\n";
        let e = Config::parse(text, "t.toml").map(|_| ()).unwrap_err().0;
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].key.ends_with("fields[0].source"), "{e:?}");
    }

    /// A value refused as out of range is said once: a rule between keys that would read the
    /// default standing in for it ("4096 is not below 2048") is not checked.
    #[test]
    fn a_rule_does_not_quote_a_default_standing_in_for_a_refused_value() {
        let e = errors("[server]\nrequest_line_bytes_max = 100000\nheader_bytes_max = 2048\n");
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, [(2, "server.request_line_bytes_max")], "{e:#?}");
        assert!(e[0].message.contains("100000 is out of range"), "{e:#?}");
        // The rule itself still holds between values in range.
        let e = errors("[server]\nrequest_line_bytes_max = 4096\nheader_bytes_max = 2048\n");
        assert!(e[0].message.contains("4096 is not below server.header_bytes_max (2048)"), "{e:#?}");
        let e = errors("[budget]\nrate_per_s = 1\nburst = 99999999999\n");
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].key, "budget.burst");
    }

    /// Each price-decryption key is checked on its own and named at its own line; the bound
    /// the message gives is the one enforced.
    #[test]
    fn each_bad_price_key_is_named_by_itself() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\n[[event.x.fields]]\nname = \"p\"\nsource = \"query.p\"\n\
                    type = \"money\"\ndecrypt = \"google\"\nencryption_key = \"short\"\nintegrity_key = \"also-short\"\n";
        let e = errors(text);
        let got: Vec<(usize, &str)> = e.iter().map(|e| (e.line, e.key.as_str())).collect();
        assert_eq!(got, [(10, "event.x.fields[0].encryption_key"), (11, "event.x.fields[0].integrity_key")], "{e:#?}");
        assert!(e[1].message.starts_with("integrity_key is not web-safe base64 of a 16..=64-byte key"), "{e:#?}");
        // A 64-byte key (HMAC-SHA1's block) is taken; 65 bytes is not.
        let b64 = |n: usize| "A".repeat(n.div_ceil(3) * 4);
        let with = |ek: &str| {
            text.replace("\"short\"", &format!("\"{ek}\"")).replace("\"also-short\"", &format!("\"{}\"", b64(32)))
        };
        assert!(Config::parse(&with(&b64(63)), "t.toml").is_ok());
        let e = errors(&with(&b64(66)));
        assert_eq!((e.len(), e[0].key.as_str()), (1, "event.x.fields[0].encryption_key"), "{e:#?}");
    }

    /// Which signing key an error is about: its index, as shape errors name it.
    #[test]
    fn a_signing_key_error_names_the_key_by_its_index() {
        let text = "[[endpoint]]\npath = \"/r\"\nevent = \"x\"\nresponse = \"redirect\"\n[endpoint.redirect]\nparam = \"url\"\n\
                    [[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n\
                    [[endpoint.redirect.key]]\nid = \"k2\"\nsecret_hex = \"abc\"\n\
                    [event.x]\nfields = [ { name = \"a\", source = \"query.a\", type = \"u64\" } ]\n";
        let e = errors(text);
        assert!(e.iter().any(|e| e.key == "endpoint[0].redirect.key[1].secret_hex" && e.line == 12), "{e:#?}");
    }

    /// `[[event.x.fields]]` with no `[event.x]` header (TOML makes `event.x` implicitly), and
    /// `[[endpoint.redirect.key]]` with no `[endpoint.redirect]`, are the same config as with
    /// the header: they used to fail with "missing field `$__serde_spanned_private_start`".
    #[test]
    fn tables_toml_makes_implicitly_are_read_and_their_errors_name_lines() {
        let with_headers = "[[endpoint]]\npath = \"/r\"\nevent = \"x\"\nresponse = \"redirect\"\n[endpoint.redirect]\n\
                            [[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n\
                            [event.x]\n[[event.x.fields]]\nname = \"a\"\nsource = \"query.a\"\ntype = \"u64\"\n";
        let implicit = with_headers.replace("[endpoint.redirect]\n", "").replace("[event.x]\n", "");
        for text in [with_headers, &implicit] {
            let c = Config::parse(text, "t.toml").unwrap_or_else(|e| panic!("{text}\n{e:?}"));
            assert_eq!(c.event_type("x").unwrap().fields[0].name, "a");
        }
        // An error in such a table names its line and key.
        let e = errors(&implicit.replace("type = \"u64\"", "type = \"u65\""));
        assert_eq!((e.len(), e[0].line, e[0].key.as_str()), (1, 11, "event.x.fields[0].type"), "{e:#?}");
        // A rule about the implicit table itself names the line of its first field.
        let types: String = (0..=EVENT_TYPES_MAX)
            .map(|i| format!("[[event.t{i:03}.fields]]\nname = \"a\"\nsource = \"query.a\"\ntype = \"u64\"\n"))
            .collect();
        let e = errors(&format!("{implicit}{types}"));
        let more = e.iter().find(|e| e.message.contains("event types")).unwrap_or_else(|| panic!("{e:#?}"));
        assert!(more.line > 11, "{more:?}");
    }
}
