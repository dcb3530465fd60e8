//! Every config key in one table: its section, type, unit, default, bounds and meaning. The
//! validator takes defaults and bounds from here (`Validator::int`, `Validator::choice`) and
//! `tracker config-reference` prints the table as markdown (docs/config-reference.md), so the
//! reference and the code cannot disagree. A key added to raw.rs gets a row here; the tests
//! check that config/tracker.toml lists exactly the `[server]` and `[journal]` keys with these
//! defaults.

use crate::constants::*;
use crate::event::SLOTS;

/// A key's default as the validator uses it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KeyDefault {
    Int(i64),
    Bool(bool),
    Str(&'static str),
    /// Required, or no default (described in the key's text).
    None,
}

/// What values a key accepts, beyond its type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bounds {
    /// Inclusive integer range.
    Range(i64, i64),
    OneOf(&'static [&'static str]),
    /// Free-form rule, for the reference only (checked by the validator's own code).
    Rule(&'static str),
}

#[derive(Clone, Copy, Debug)]
pub struct KeySpec {
    /// `server`, `journal`, `endpoint`, `event.<type>`, `event.<type>.fields`.
    pub section: &'static str,
    pub key: &'static str,
    pub kind: &'static str,
    /// Unit of an integer (`bytes`, `ms`, …), or "".
    pub unit: &'static str,
    pub default: KeyDefault,
    pub bounds: Bounds,
    /// Further constraints the validator checks (power of two, relations to other keys).
    pub also: &'static str,
    pub doc: &'static str,
}

impl KeySpec {
    /// `section.key`, as config errors name it.
    pub fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }
}

#[allow(clippy::too_many_arguments)] // one row of the table, positional like the table itself
const fn k(
    section: &'static str,
    key: &'static str,
    kind: &'static str,
    unit: &'static str,
    default: KeyDefault,
    bounds: Bounds,
    also: &'static str,
    doc: &'static str,
) -> KeySpec {
    KeySpec { section, key, kind, unit, default, bounds, also, doc }
}

use Bounds::*;
use KeyDefault::{Bool, Int, None as NoDefault, Str};

pub const SERVER_KEYS: &[KeySpec] = &[
    k("server", "listen", "address", "", Str("0.0.0.0:8080"), Rule("IP:PORT, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""), "",
      "Address of the public listener; every shard binds it with SO_REUSEPORT. `--listen` overrides it."),
    k("server", "shards", "integer", "shards", Int(0), Range(0, SHARDS_MAX as i64), "",
      "Reactor threads, one io_uring runtime each, pinned to the allowed CPUs in order. 0 = one per allowed CPU. `--shards` overrides it."),
    k("server", "connections_per_shard_max", "integer", "connections", Int(1024), Range(1, 1 << 20), "",
      "Open connections per shard; beyond it new connections are closed at once and counted. Each costs header_bytes_max + 2 × body_bytes_max + 16 KiB of buffers (read, body scratch, write), allocated at start; a start whose shards × connections × buffers exceeds physical memory is refused."),
    k("server", "request_line_bytes_max", "integer", "bytes", Int(4096), Range(64, 65536), "below server.header_bytes_max",
      "Longest request line (method, target, version); longer → 414."),
    k("server", "header_count_max", "integer", "headers", Int(HEADERS_MAX as i64), Range(1, HEADERS_MAX as i64), "",
      "Most header fields in one request; more → 431."),
    k("server", "header_bytes_max", "integer", "bytes", Int(8192), Range(256, 1 << 20), "",
      "Longest request head (request line + headers); longer → 431."),
    k("server", "body_bytes_max", "integer", "bytes", Int(65536), Range(0, 16 << 20), "",
      "Longest request body; longer → 413."),
    k("server", "header_read_timeout_ms", "integer", "ms", Int(10_000), Range(100, 600_000), "",
      "A request (head and any body) must arrive whole within this time of its first byte (slowloris guard), else it is answered 408 and the connection closed. A new connection that sends nothing within this time of its accept is closed unanswered."),
    k("server", "idle_timeout_ms", "integer", "ms", Int(60_000), Range(100, 3_600_000), "",
      "A keep-alive connection with no request for this long is closed; so is one whose client takes no response for this long, and one whose `ack = \"logged\"` response waits this long for a journal that hangs (closed unanswered)."),
    k("server", "stop_request_grace_ms", "integer", "ms", Int(1_000), Range(0, 600_000), "",
      "At shutdown (SIGTERM, or the old process of a zero-downtime restart), how long a request still arriving (a new connection's first, or the rest of one partly received) may take to arrive whole; it is then answered with `Connection: close`. Idle connections close at once. Delays the exit of a process by up to this much while a client is slow; 0 = closed at once."),
    k("server", "ring_events", "integer", "events", Int(16384), Range(RING_EVENTS_MIN as i64, RING_EVENTS_MAX as i64), "power of two",
      "Events each shard's ring holds between the reactor and the journal drain; costs ring_events × 512 bytes per shard. The first 2048 are a hot tier that stays in cache while the drain keeps up; the rest fill only while it is held up. Full → 503 + Retry-After."),
    k("server", "io_uring_entries", "integer", "entries", Int(1024), Range(32, 32768), "power of two",
      "Submission queue entries of each shard's io_uring."),
    k("server", "io_uring_defer_taskrun", "bool", "", Bool(false), Rule("true or false"), "",
      "Also set IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN (Linux ≥ 6.1). COOP_TASKRUN | TASKRUN_FLAG are always set."),
    k("server", "batch_events_max", "integer", "events", Int(100), Range(1, BATCH_EVENTS_MAX as i64), "",
      "Most events (array items) in one JSON body of a response = \"json\" endpoint; more → 413 and none is taken. Each rejected item's index and reason is in the answer, which must fit the connection's write buffer: hence the bound."),
    k("server", "body_decoded_bytes_max", "integer", "bytes", Int(262144), Range(1024, BODY_DECODED_BYTES_MAX as i64), "",
      "Most bytes a Content-Encoding: gzip body may inflate to; more → 413 (a gzip bomb stops here). Costs about 21 resident bytes per byte per shard (inflate output plus the JSON parser's scratch, sized for the larger of this and body_bytes_max; ~30 reserved), allocated at start: 262144 ≈ 5 MiB per shard."),
    k("server", "body_inflate_ratio_max", "integer", "ratio", Int(100), Range(1, 100_000), "",
      "Most inflated bytes per compressed byte of a gzip body; more → 413. JSON compresses 5–20×; a bomb compresses ~1000×."),
];

pub const CORS_KEYS: &[KeySpec] = &[
    k("cors", "origins", "array of strings", "", Str("[]"), Rule("\"scheme://host[:port]\" exactly as browsers send Origin, or \"*\""), "",
      "Web origins allowed to POST to POST endpoints from a browser: the preflight (OPTIONS) is answered 204 for them and 403 for any other origin; their responses carry Access-Control-Allow-Origin with the origin echoed and Vary: Origin. \"*\" allows any origin, only when listed. Empty = no cross-origin POST (sendBeacon with a text/plain body needs no preflight and still works)."),
    k("cors", "max_age_s", "integer", "s", Int(600), Range(0, 86400), "",
      "How long a browser may cache a preflight answer (Access-Control-Max-Age)."),
];

pub const JOURNAL_KEYS: &[KeySpec] = &[
    k("journal", "dir", "path", "", Str("journal"), Rule("non-empty"), "",
      "Root directory of the journal: one subdirectory per shard of segment files. `--journal-dir` overrides it."),
    k("journal", "segment_bytes", "integer", "bytes", Int(64 << 20), Range(SEGMENT_BYTES_MIN as i64, SEGMENT_BYTES_MAX as i64), "multiple of 4096",
      "Size of each segment file; preallocated, so also the disk space the segment being written holds (plus one made ahead)."),
    k("journal", "sync", "string", "", Str("interval"), OneOf(&["none", "interval", "always"]), "",
      "When the journal is msync'ed: never explicitly (survives a process crash, not a power loss), every sync_interval_ms, or after every batch the drain writes."),
    k("journal", "sync_interval_ms", "integer", "ms", Int(1000), Range(1, 3_600_000), "",
      "Period of the \"interval\" sync policy."),
    k("journal", "stall_timeout_ms", "integer", "ms", Int(5000), Range(100, 3_600_000), "",
      "A shard's journal that has taken none of the events waiting in its ring for this long is stalled (a disk that hangs without failing; checked every 100 ms, so said up to 100 ms later, never sooner): `ack = \"logged\"` endpoints answer 503 and waiting logged responses are not sent, on every shard, and /ready says why, until it takes one again."),
    k("journal", "retention_age_s", "integer", "s", Int(0), Range(0, 10 * 365 * 86_400), "",
      "Delete a segment once every collector's cursor is past it, it is not its shard's newest, and it is older than this. 0 = keep every segment."),
    k("journal", "size_bytes_max", "integer", "bytes", Int(0), Range(0, i64::MAX), "",
      "Above this many bytes of segments, `logged` endpoints answer 503 (and /ready 503) instead of filling the disk. 0 = no limit."),
];

pub const COLLECTOR_KEYS: &[KeySpec] = &[
    k(
        "collector",
        "name",
        "string",
        "",
        NoDefault,
        Rule("1..=64 of [A-Za-z0-9_-]"),
        "unique",
        "Required. Names the collector's cursor directory (journal/collectors/<name>/) and its batch keys.",
    ),
    k(
        "collector",
        "kind",
        "string",
        "",
        NoDefault,
        Rule("banker | kafka | jsonl | a kind a custom build registers"),
        "",
        "Required. Which implementation delivers the batches (docs/collectors.md).",
    ),
    k(
        "collector",
        "events",
        "list or \"all\"",
        "",
        NoDefault,
        Rule("declared event types"),
        "",
        "Required. Event types this collector gets.",
    ),
    k(
        "collector",
        "fields",
        "list",
        "",
        NoDefault,
        Rule("fields of those types; [] = envelope only; [\"*\"] = all"),
        "",
        "Required. The allowlist: only these fields (plus type, id, ts, ts_ns, shard, seq) leave the process.",
    ),
    k(
        "collector",
        "events_max",
        "integer",
        "events",
        Int(1000),
        Range(1, 100_000),
        "",
        "A batch closes at this many events.",
    ),
    k(
        "collector",
        "bytes_max",
        "integer",
        "bytes",
        Int(1 << 20),
        Range(1024, 64 << 20),
        "",
        "A batch closes at this many bytes of event JSON.",
    ),
    k(
        "collector",
        "linger_ms",
        "integer",
        "ms",
        Int(100),
        Range(0, 60_000),
        "",
        "A batch closes this long after its first event.",
    ),
    k(
        "collector",
        "retry_initial_ms",
        "integer",
        "ms",
        Int(100),
        Range(1, 60_000),
        "",
        "First wait before a batch that failed retriably is sent again; doubles each time.",
    ),
    k(
        "collector",
        "retry_max_ms",
        "integer",
        "ms",
        Int(10_000),
        Range(1, 3_600_000),
        "at least retry_initial_ms",
        "Cap of the doubling retry wait.",
    ),
    k(
        "collector",
        "retry_jitter_percent",
        "integer",
        "%",
        Int(20),
        Range(0, 100),
        "",
        "Each retry wait is shortened by up to this share, at random.",
    ),
    k(
        "collector",
        "key_prefix",
        "string",
        "",
        NoDefault,
        Rule("1..=64 of [A-Za-z0-9_.-]"),
        "",
        "First part of every batch key. Unset: the journal's own, `tracker-` and 16 random hex digits drawn at the first start and kept in `<journal.dir>/collectors/default_key_prefix`, so hosts on one config never share keys.",
    ),
    k(
        "collector",
        "options",
        "table",
        "",
        NoDefault,
        Rule("per kind"),
        "",
        "Kind-specific settings ([collector.options]); unknown keys are errors.",
    ),
];

pub const ADMIN_KEYS: &[KeySpec] = &[
    k("admin", "listen", "address", "", Str("127.0.0.1:9090"), Rule("IP:PORT; port 0 picks a free port"), "",
      "Control-plane listener: /metrics, /health, /ready, /stats. Keep it on loopback or a private interface. `--admin-listen` overrides it."),
    k("admin", "publish_interval_ms", "integer", "ms", Int(1000), Range(10, 60_000), "",
      "How often each shard and drain publishes its latency histograms to the admin side; /metrics and /stats lag by at most this."),
    k("admin", "ready_free_bytes_min", "integer", "bytes", Int(0), Range(0, i64::MAX), "",
      "/ready answers 503 below this much free space on the journal's filesystem. 0 = 2 × journal.segment_bytes per shard."),
    k("admin", "ready_ring_backlog_events_max", "integer", "events", Int(0), Range(0, RING_EVENTS_MAX as i64), "",
      "/ready answers 503 when a ring holds more unread events than this. 0 = half of server.ring_events."),
    k("admin", "hlog_path", "path", "", NoDefault, Rule("a file path; unset or \"\" = off"), "",
      "Append the merged latency histograms to this HdrHistogram interval log (tags service, journal, journal_sync, collector_publish; ns)."),
    k("admin", "hlog_interval_ms", "integer", "ms", Int(10_000), Range(100, 3_600_000), "",
      "Interval of the .hlog."),
];

pub const ENDPOINT_KEYS: &[KeySpec] = &[
    k("endpoint", "path", "string", "", NoDefault, Rule("/path without spaces, '?' or '#'"), "unique per method",
      "Required. Request path served by this endpoint (the query string is not part of it)."),
    k("endpoint", "method", "string", "", Str("GET"), OneOf(&["GET", "POST"]), "",
      "GET also answers HEAD (counted as an event, flagged)."),
    k("endpoint", "event", "string", "", NoDefault, Rule("a declared [event.<type>]"), "",
      "Required. Event type each request becomes."),
    k("endpoint", "response", "string", "", Str("no_content"), OneOf(&["gif", "no_content", "redirect", "json"]), "redirect needs [endpoint.redirect] and GET; json needs POST",
      "1×1 transparent GIF, 204 (both no-cache), 302 to a landing URL that passes the endpoint's redirect rule (docs/redirects.md), or (POST) 200 with the per-event status of a JSON object or batch: {\"accepted\":N,\"rejected\":[{\"index\":i,\"reason\":\"…\"}]} (docs/post.md)."),
    k("endpoint", "ack", "string", "", Str("received"), OneOf(&["received", "logged"]), "",
      "Answer once the event is in the shard's ring, or once the drain has written it into the mmapped segment (survives kill -9)."),
    k("endpoint", "over_budget", "string", "", Str("drop"), OneOf(&["drop", "reject"]), "",
      "When the source is over its [budget]: answer as usual and do not journal (pixels), or 429 with Retry-After (senders that retry). An ack = \"logged\" endpoint defaults to, and takes only, \"reject\": its 2xx says the event is journaled."),
];

/// `[endpoint.redirect]`: the click endpoint's landing-URL rule (docs/redirects.md).
pub const REDIRECT_KEYS: &[KeySpec] = &[
    k(
        "endpoint.redirect",
        "param",
        "string",
        "",
        Str("url"),
        Rule("letters, digits, '_', '-'"),
        "",
        "Query parameter holding the landing URL, percent-encoded once.",
    ),
    k(
        "endpoint.redirect",
        "require",
        "string",
        "",
        Str("allowlist"),
        OneOf(&["allowlist", "signature", "either", "both"]),
        "signature, either, both need a key",
        "What a landing URL must pass: its host on allow_domains, a valid signature (sig, exp, kid), either, or both.",
    ),
    k(
        "endpoint.redirect",
        "allow_domains",
        "array of strings",
        "",
        Str("[]"),
        Rule("\"example.com\" (that host) or \"*.example.com\" (its subdomains); lower case; no bare \"*\""),
        "",
        "Hosts a landing URL may point to; compared case-insensitively. Empty allows nothing.",
    ),
    k(
        "endpoint.redirect",
        "signed_fields",
        "array of strings",
        "",
        NoDefault,
        Rule("fields of the event type read from the query"),
        "",
        "Fields covered by the signature, in order. Unset: the event type's identity fields; a rule requiring a signature over no field is an error unless this is set to [].",
    ),
    k(
        "endpoint.redirect",
        "signature_ttl_max_s",
        "integer",
        "s",
        Int(30 * 86_400),
        Range(1, 10 * 365 * 86_400),
        "",
        "A signed URL whose exp lies further ahead than this is refused.",
    ),
];

/// `[[endpoint.redirect.key]]` and `[[privacy.ssai_key]]`: one signing key each.
pub const SIGNING_KEY_KEYS: &[KeySpec] = &[
    k(
        "<…>.key",
        "id",
        "string",
        "",
        NoDefault,
        Rule("1..=64 letters, digits, '-', '_', '.'"),
        "unique",
        "Required. The key id a request names (kid).",
    ),
    k(
        "<…>.key",
        "secret_hex",
        "string",
        "",
        NoDefault,
        Rule("32..=128 bytes as hex"),
        "exactly one of secret_hex, file",
        "The secret, inline. Generate one with `openssl rand -hex 32`.",
    ),
    k(
        "<…>.key",
        "file",
        "path",
        "",
        NoDefault,
        Rule("a file holding the secret as hex"),
        "exactly one of secret_hex, file",
        "The secret, read from a file at load (whitespace trimmed).",
    ),
];

/// `[dedup]`: the event-id window shared by all shards (src/dedup.rs). Restart-only.
pub const DEDUP_KEYS: &[KeySpec] = &[
    k(
        "dedup",
        "window_ms",
        "integer",
        "ms",
        Int(300_000),
        Range(0, crate::dedup::WINDOW_MS_MAX as i64),
        "0 = off",
        "A repeat of a client or derived event id within this window is answered like the first but not journaled.",
    ),
    k(
        "dedup",
        "entries",
        "integer",
        "entries",
        Int(1 << 20),
        Range(crate::dedup::ENTRIES_MIN as i64, crate::dedup::ENTRIES_MAX as i64),
        "power of two",
        "Table entries shared by all shards; costs entries × 16 bytes.",
    ),
];

/// `[budget]`: per-source token buckets (src/enrich/budget.rs). Restart-only.
pub const BUDGET_KEYS: &[KeySpec] = &[
    k(
        "budget",
        "rate_per_s",
        "integer",
        "requests/s",
        Int(1000),
        Range(0, 10_000_000),
        "0 = off",
        "Sustained requests per second per address prefix.",
    ),
    k(
        "budget",
        "burst",
        "integer",
        "requests",
        Int(2000),
        Range(1, 100_000_000),
        "at most rate_per_s × 86400",
        "Requests a prefix may send at once above the rate.",
    ),
    k("budget", "ipv4_prefix_bits", "integer", "bits", Int(24), Range(8, 32), "", "IPv4 prefix that makes one source."),
    k(
        "budget",
        "ipv6_prefix_bits",
        "integer",
        "bits",
        Int(48),
        Range(16, 128),
        "",
        "IPv6 prefix that makes one source.",
    ),
    k(
        "budget",
        "entries",
        "integer",
        "entries",
        Int(1 << 16),
        Range(crate::enrich::budget::ENTRIES_MIN as i64, crate::enrich::budget::ENTRIES_MAX as i64),
        "power of two",
        "Table entries shared by all shards; costs entries × 8 bytes. Prefixes that share an entry (a hash seeded at random per process) share its budget while both are active.",
    ),
    k(
        "budget",
        "exempt_loopback",
        "bool",
        "",
        Bool(true),
        Rule("true or false"),
        "",
        "Never limit 127.0.0.0/8 and ::1.",
    ),
    k(
        "budget",
        "connections_per_prefix_max",
        "integer",
        "connections",
        Int(0),
        Range(0, 1_000_000),
        "0 = off",
        "Open connections one address prefix may hold, across all shards; one more is closed at accept.",
    ),
];

/// `[privacy]` (src/enrich/privacy.rs, src/enrich/ssai.rs; docs/privacy.md).
pub const PRIVACY_KEYS: &[KeySpec] = &[
    k(
        "privacy",
        "ip",
        "string",
        "",
        Str("truncate"),
        OneOf(&["truncate", "drop", "keep"]),
        "",
        "What happens to ip fields before the event leaves the request path.",
    ),
    k("privacy", "ipv4_prefix_bits", "integer", "bits", Int(24), Range(0, 32), "", "IPv4 prefix kept by truncate."),
    k("privacy", "ipv6_prefix_bits", "integer", "bits", Int(48), Range(0, 128), "", "IPv6 prefix kept by truncate."),
    k(
        "privacy",
        "referer",
        "string",
        "",
        Str("path"),
        OneOf(&["path", "origin", "full", "drop"]),
        "",
        "What of the Referer fields (request.referer, header.referer) keep: scheme://host[:port]/path (no query, fragment or userinfo), scheme://host[:port], all of it, or nothing. Removed on an opt-out, as ips are. See docs/privacy.md.",
    ),
    k(
        "privacy",
        "user_id_fields",
        "array of strings",
        "",
        Str("[]"),
        Rule("string fields, max_bytes >= 32, not identity fields"),
        "",
        "Fields replaced by a keyed hash (32 hex digits); the raw value is never journaled. Unset: none — a config of your own that leaves [privacy] out journals user ids as sent; the shipped config sets [\"user_id\"].",
    ),
    k(
        "privacy",
        "hash_key_file",
        "path",
        "",
        NoDefault,
        Rule("a file holding >= 32 bytes as hex"),
        "",
        "Master key of the user-id hash; without it a random key per start (kept across reloads).",
    ),
    k(
        "privacy",
        "hash_rotate_s",
        "integer",
        "s",
        Int(86_400),
        Range(0, 366 * 86_400),
        "0 = never",
        "The hash key is derived anew every period, so hashes cannot be joined across periods.",
    ),
    k(
        "privacy",
        "honor_gpc",
        "bool",
        "",
        Bool(true),
        Rule("true or false"),
        "",
        "Sec-GPC: 1 removes user ids, ips, referers and the GDPR consent string.",
    ),
    k("privacy", "honor_dnt", "bool", "", Bool(true), Rule("true or false"), "", "DNT: 1 removes user ids, ips, referers and the GDPR consent string."),
    k(
        "privacy",
        "optout_cookie",
        "string",
        "",
        Str("optout"),
        Rule("a cookie name; \"\" = none"),
        "",
        "This cookie present (not \"0\"/\"false\") removes user ids, ips, referers and the GDPR consent string.",
    ),
    k(
        "privacy",
        "gdpr",
        "string",
        "",
        Str("enforce"),
        OneOf(&["record", "enforce"]),
        "",
        "enforce: an event whose gdpr field is set (not 0) and whose gdpr_consent field holds no IAB TCF v2 consent to Purpose 1 (or, with tcf_vendor_id set, none to that vendor) loses its user ids, ips, referers and consent string and is flagged opted_out, as on an opt-out (counted as reason gdpr_no_consent); record: both fields are only stored. See docs/privacy.md.",
    ),
    k(
        "privacy",
        "gdpr_unknown",
        "string",
        "",
        Str("not_applicable"),
        OneOf(&["not_applicable", "applies"]),
        "",
        "What an event with no GDPR signal is judged as, under gdpr = \"enforce\": no gdpr field value (not sent, empty, or an unsubstituted macro) in a type that has the field, or a type with a gdpr_consent field but no gdpr field (VAST trackers have only [GDPRCONSENT]). not_applicable: kept as is; applies: judged by its consent string, as gdpr=1 (the IAB leaves an absent signal to the vendor's own geo judgement; this is that judgement for a tracker serving the EEA). A type with neither field is never affected. See docs/privacy.md.",
    ),
    k(
        "privacy",
        "gdpr_field",
        "string",
        "",
        Str("gdpr"),
        Rule("a u32 field where present"),
        "",
        "The field (by name, in any event type) saying whether GDPR applies to the request (OpenRTB regs.gdpr, the ${GDPR} macro).",
    ),
    k(
        "privacy",
        "gdpr_consent_field",
        "string",
        "",
        Str("gdpr_consent"),
        Rule("a string field where present"),
        "",
        "The field (by name, in any event type) holding the TCF consent string (the ${GDPR_CONSENT_xxx} macro).",
    ),
    k(
        "privacy",
        "tcf_vendor_id",
        "integer",
        "",
        Int(0),
        Range(0, 65_535),
        "0 = not checked",
        "The tracker operator's own vendor id in the IAB Global Vendor List. Set, with gdpr = \"enforce\": an event under GDPR whose TCF string consents to Purpose 1 but not to this vendor (its Vendor Consent Section: not listed, above MaxVendorId, disallowed by a publisher restriction on Purpose 1, or the string cut short of its restrictions by the sender; a string the consent field's max_bytes cut is judged as the request carried it) is handled as one without consent (reason gdpr_no_consent). 0: vendor consent is not read. See docs/privacy.md.",
    ),
    k(
        "privacy",
        "ssai_skew_s",
        "integer",
        "s",
        Int(300),
        Range(1, 3600),
        "",
        "An SSAI signature's timestamp must be within this of our clock.",
    ),
    k(
        "privacy",
        "ssai_key",
        "array of tables",
        "",
        NoDefault,
        Rule("id + secret_hex or file"),
        "",
        "Ad stitchers whose X-Device-IP / X-Device-User-Agent are believed (X-Tracker-Auth).",
    ),
];

pub const EVENT_KEYS: &[KeySpec] = &[
    k(
        "event.<type>",
        "fields",
        "array of tables",
        "fields",
        NoDefault,
        Range(0, SLOTS as i64),
        "strings and ips share the event's byte area",
        "The event type's fields, in slot order; see the field keys below. Inline (`fields = [{ … }, …]`) or one `[[event.<type>.fields]]` table each, with or without an `[event.<type>]` header.",
    ),
    k(
        "event.<type>",
        "identity",
        "array of field names",
        "",
        NoDefault,
        Rule("names of fields of this type"),
        "",
        "Fields whose values, when all are present, make a deterministic event id (a re-fired pixel gets the same id).",
    ),
    k(
        "event.<type>",
        "id_from",
        "array of sources",
        "",
        Str("[\"query.eid\"]"),
        Rule("query.<param>, header.<name>, cookie.<name>, json.<path>"),
        "no built-in (client.ip, request.*): derive an id from fields with `identity`",
        "Where a client-supplied event id is read from; the first present wins.",
    ),
];

pub const FIELD_KEYS: &[KeySpec] = &[
    k("event.<type>.fields", "name", "string", "", NoDefault, Rule("letters, digits, '_'"), "unique in the type",
      "Required. Field name in the journal and in `tracker journal cat`."),
    k("event.<type>.fields", "source", "string", "", NoDefault,
      Rule("query.<param>, header.<name>, cookie.<name>, json.<path>, client.ip, request.user_agent, request.referer, request.time_ms, request.device_class, request.is_bot"), "",
      "Required. Where the value comes from in the request. header.host is the request's host: the authority of an absolute-form target (`GET http://host/…`) when there is one, which replaces the Host header (RFC 9112 §3.2.2)."),
    k("event.<type>.fields", "type", "string", "", NoDefault, OneOf(&["u64", "u32", "i64", "money", "string", "ip"]),
      "client.ip needs \"ip\"; request.time_ms needs \"u64\" or \"i64\"", "Required. money is stored as i64 micros."),
    k("event.<type>.fields", "required", "bool", "", Bool(false), Rule("true or false"), "not with a default",
      "A request without this field is answered 400 with the reason."),
    k("event.<type>.fields", "default", "string or number", "", NoDefault, Rule("a value of the field's type"), "not for ip fields",
      "Value used when the request has none."),
    k("event.<type>.fields", "max_bytes", "integer", "bytes", Int(64), Range(1, FIELD_STR_BYTES_MAX as i64), "strings only",
      "Longest stored value of a string field; longer values are truncated (never through a UTF-8 character) and the event flagged."),
    k("event.<type>.fields", "one_of", "array of strings", "", NoDefault, Rule("values of at most max_bytes"), "strings only",
      "The allowed values; anything else is a 400."),
    k("event.<type>.fields", "min", "string or number", "", NoDefault, Rule("a value of the field's type"), "numbers only",
      "Smallest value accepted; below is a 400."),
    k("event.<type>.fields", "max", "string or number", "", NoDefault, Rule("a value of the field's type"), "numbers only",
      "Largest value accepted; above is a 400."),
    k("event.<type>.fields", "decrypt", "string", "", NoDefault, OneOf(&["google"]), "money only; needs both keys",
      "Decrypt the value (Google Authorized Buyers encrypted price); a failed integrity check is a 400."),
    k("event.<type>.fields", "encryption_key", "string", "", NoDefault, Rule("web-safe base64 of 16..=64 bytes"), "with decrypt",
      "The exchange's encryption key."),
    k("event.<type>.fields", "integrity_key", "string", "", NoDefault, Rule("web-safe base64 of 16..=64 bytes"), "with decrypt",
      "The exchange's integrity key."),
];

/// Every table, in the order the reference prints them.
pub const ALL: &[(&str, &[KeySpec])] = &[
    ("[server]", SERVER_KEYS),
    ("[journal]", JOURNAL_KEYS),
    ("[admin]", ADMIN_KEYS),
    ("[dedup]", DEDUP_KEYS),
    ("[budget]", BUDGET_KEYS),
    ("[privacy]", PRIVACY_KEYS),
    ("[cors]", CORS_KEYS),
    ("[[endpoint]]", ENDPOINT_KEYS),
    ("[endpoint.redirect]", REDIRECT_KEYS),
    ("[[endpoint.redirect.key]], [[privacy.ssai_key]]", SIGNING_KEY_KEYS),
    ("[[collector]]", COLLECTOR_KEYS),
    ("[event.<type>]", EVENT_KEYS),
    ("fields = [{ ... }] of an event type", FIELD_KEYS),
];

/// The spec of `key` in `table`. Panics on a name that is not there: a programming error that
/// the embedded-config test reaches for every key.
pub fn spec(table: &'static [KeySpec], key: &str) -> &'static KeySpec {
    table
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("config key {key} has no KeySpec in src/config/keys.rs"))
}

fn default_text(d: KeyDefault) -> String {
    match d {
        KeyDefault::Int(i) => i.to_string(),
        KeyDefault::Bool(b) => b.to_string(),
        KeyDefault::Str(s) if s.starts_with('[') => format!("`{s}`"),
        KeyDefault::Str(s) => format!("`\"{s}\"`"),
        KeyDefault::None => "—".into(),
    }
}

fn bounds_text(b: Bounds) -> String {
    match b {
        Bounds::Range(lo, hi) => format!("{lo}..={hi}"),
        Bounds::OneOf(names) => names.iter().map(|n| format!("`\"{n}\"`")).collect::<Vec<_>>().join(", "),
        Bounds::Rule(r) => r.to_string(),
    }
}

/// docs/config-reference.md, generated.
pub fn reference_markdown() -> String {
    let mut s = String::new();
    s.push_str("# Configuration reference\n\n");
    s.push_str("<!-- Generated by `tracker config-reference` from src/config/keys.rs: do not edit by hand.\n");
    s.push_str("     Regenerate: cargo run -- config-reference > docs/config-reference.md -->\n\n");
    s.push_str("Every key of the TOML config, with its type, unit, default and bounds: the same table the\n");
    s.push_str("validator uses. config/tracker.toml is the embedded default and shows every key in use;\n");
    s.push_str("`tracker check-config FILE` reports every error as `file:line: key: problem`, in one run:\n");
    s.push_str("every unknown key, value of the wrong type and missing key, and every value out of its bounds\n");
    s.push_str("or rule in the keys whose own shape is right (a rule that reads a table with a key in error\n");
    s.push_str("is checked once that key is fixed). A TOML syntax error is reported alone: nothing after it\n");
    s.push_str("can be read.\n");
    for (title, table) in ALL {
        s.push_str(&format!("\n## {title}\n\n"));
        s.push_str("| key | type | unit | default | bounds | also | description |\n");
        s.push_str("|---|---|---|---|---|---|---|\n");
        for k in table.iter() {
            s.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} | {} |\n",
                k.key,
                k.kind,
                if k.unit.is_empty() { "—" } else { k.unit },
                default_text(k.default),
                bounds_text(k.bounds).replace('|', "\\|"),
                if k.also.is_empty() { "—" } else { k.also },
                k.doc.replace('|', "\\|")
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// config/tracker.toml documents every key: its [server] and [journal] keys are exactly the
    /// table's, with the table's defaults.
    #[test]
    fn embedded_config_lists_every_key_with_its_default() {
        let v: toml::Value = toml::from_str(crate::config::DEFAULT_TOML).unwrap();
        for (section, table) in [("server", SERVER_KEYS), ("journal", JOURNAL_KEYS)] {
            let t = v[section].as_table().unwrap();
            let mut in_file: Vec<&str> = t.keys().map(String::as_str).collect();
            let mut in_table: Vec<&str> = table.iter().map(|k| k.key).collect();
            in_file.sort();
            in_table.sort();
            assert_eq!(in_file, in_table, "[{section}] keys in config/tracker.toml vs src/config/keys.rs");
            for k in table.iter() {
                let want = match k.default {
                    KeyDefault::Int(i) => toml::Value::Integer(i),
                    KeyDefault::Bool(b) => toml::Value::Boolean(b),
                    KeyDefault::Str(s) => toml::Value::String(s.into()),
                    KeyDefault::None => continue,
                };
                assert_eq!(t[k.key], want, "default of {} in config/tracker.toml", k.name());
            }
        }
    }

    #[test]
    fn int_defaults_are_within_bounds_and_choice_defaults_are_options() {
        for (_, table) in ALL {
            for k in table.iter() {
                match (k.default, k.bounds) {
                    (KeyDefault::Int(d), Bounds::Range(lo, hi)) => assert!(lo <= d && d <= hi, "{}", k.name()),
                    (KeyDefault::Str(d), Bounds::OneOf(o)) => assert!(o.contains(&d), "{}", k.name()),
                    _ => {}
                }
            }
        }
    }
}
