//! The config file exactly as written: serde types with spans, unknown keys refused. Nothing
//! here is trusted; `validate` turns it into a `Config`. These types are the one description of
//! the file's shape: `config::deserialize` reports every error in it by deserializing into them
//! again with each bad key taken out.

use serde::de::{self, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::ops::Range;
use toml::Spanned;

pub type S<T> = Spanned<T>;

/// A table's value with its place in the text, as `S` gives it, for a table TOML may make
/// implicitly: `[[event.x.fields]]` with no `[event.x]` header above it makes `event.x` a table
/// no text spans (so does `[[endpoint.redirect.key]]` for `redirect`). `S` refuses such a
/// table ("missing field `$__serde_spanned_private_start`"); this takes it, with no span, and
/// `span()` then falls back to the start of the text (`RawConfig::place_implicit_tables` gives a better one
/// where there is one).
pub struct Table<T> {
    value: T,
    span: Option<Range<usize>>,
}

impl<T> Table<T> {
    pub fn get_ref(&self) -> &T {
        &self.value
    }

    /// Where the table is written; 0..0 for a table TOML made implicitly.
    pub fn span(&self) -> Range<usize> {
        self.span.clone().unwrap_or(0..0)
    }

    /// Where it is written; None for a table TOML made implicitly (dotted keys).
    pub fn span_if_written(&self) -> Option<Range<usize>> {
        self.span.clone()
    }

    /// A table TOML made implicitly is placed where its first sub-table is written.
    fn place_implicit(&mut self, first_inner: impl FnOnce(&T) -> Option<Range<usize>>) {
        if self.span.is_none() {
            self.span = first_inner(&self.value);
        }
    }
}

impl RawConfig {
    /// Gives each table TOML made implicitly the place of its first sub-table (an event type
    /// with only `[[event.x.fields]]` written: its first field), so errors about the table
    /// name a line the file has.
    pub fn place_implicit_tables(&mut self) {
        for ev in self.event.values_mut() {
            ev.place_implicit(|e| e.fields.first().map(|f| f.span()));
        }
        for ep in &mut self.endpoint {
            if let Some(r) = ep.get_mut().redirect.as_mut() {
                r.place_implicit(|r| r.key.first().map(|k| k.span()));
            }
        }
    }
}

// What the toml crates ask a spanned value's type for and answer it with (serde_spanned's
// protocol, which `S` speaks too: a struct of this name with these three fields).
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: [&str; 3] = [SPANNED_START, SPANNED_END, SPANNED_VALUE];

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED_NAME, &SPANNED_FIELDS, TableVisitor(PhantomData))
    }
}

struct TableVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
    type Value = Table<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Table<T>, A::Error> {
        let first: Option<String> = map.next_key()?;
        if first.as_deref() == Some(SPANNED_START) {
            let start: usize = map.next_value()?;
            let _: Option<String> = map.next_key()?;
            let end: usize = map.next_value()?;
            let _: Option<String> = map.next_key()?;
            let value: T = map.next_value()?;
            return Ok(Table { value, span: Some(start..end) });
        }
        // The table's own keys, the first of them already taken.
        let value = T::deserialize(de::value::MapAccessDeserializer::new(Prepend { first, map }))?;
        Ok(Table { value, span: None })
    }
}

/// `map` with `first` put back in front of its keys.
struct Prepend<A> {
    first: Option<String>,
    map: A,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Prepend<A> {
    type Error = A::Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        match self.first.take() {
            Some(k) => seed.deserialize(k.into_deserializer()).map(Some),
            None => self.map.next_key_seed(seed),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub journal: RawJournal,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub dedup: RawDedup,
    #[serde(default)]
    pub budget: RawBudget,
    #[serde(default)]
    pub privacy: RawPrivacy,
    #[serde(default)]
    pub cors: RawCors,
    #[serde(default)]
    pub endpoint: Vec<S<RawEndpoint>>,
    #[serde(default)]
    pub event: BTreeMap<String, Table<RawEvent>>,
    #[serde(default)]
    pub collector: Vec<S<super::collector::RawCollector>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<S<String>>,
    pub shards: Option<S<i64>>,
    pub connections_per_shard_max: Option<S<i64>>,
    pub request_line_bytes_max: Option<S<i64>>,
    pub header_count_max: Option<S<i64>>,
    pub header_bytes_max: Option<S<i64>>,
    pub body_bytes_max: Option<S<i64>>,
    pub header_read_timeout_ms: Option<S<i64>>,
    pub idle_timeout_ms: Option<S<i64>>,
    pub stop_request_grace_ms: Option<S<i64>>,
    pub ring_events: Option<S<i64>>,
    pub io_uring_entries: Option<S<i64>>,
    pub io_uring_defer_taskrun: Option<S<bool>>,
    pub batch_events_max: Option<S<i64>>,
    pub body_decoded_bytes_max: Option<S<i64>>,
    pub body_inflate_ratio_max: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub origins: Option<S<Vec<S<String>>>>,
    pub max_age_s: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub dir: Option<S<String>>,
    pub segment_bytes: Option<S<i64>>,
    pub sync: Option<S<String>>,
    pub sync_interval_ms: Option<S<i64>>,
    pub stall_timeout_ms: Option<S<i64>>,
    pub retention_age_s: Option<S<i64>>,
    pub size_bytes_max: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<S<String>>,
    pub publish_interval_ms: Option<S<i64>>,
    pub ready_free_bytes_min: Option<S<i64>>,
    pub ready_ring_backlog_events_max: Option<S<i64>>,
    pub hlog_path: Option<S<String>>,
    pub hlog_interval_ms: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawDedup {
    pub window_ms: Option<S<i64>>,
    pub entries: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    pub ip: Option<S<String>>,
    pub ipv4_prefix_bits: Option<S<i64>>,
    pub ipv6_prefix_bits: Option<S<i64>>,
    pub referer: Option<S<String>>,
    pub user_id_fields: Option<S<Vec<S<String>>>>,
    pub hash_key_file: Option<S<String>>,
    pub hash_rotate_s: Option<S<i64>>,
    pub honor_gpc: Option<S<bool>>,
    pub honor_dnt: Option<S<bool>>,
    pub optout_cookie: Option<S<String>>,
    pub gdpr: Option<S<String>>,
    pub gdpr_unknown: Option<S<String>>,
    pub gdpr_field: Option<S<String>>,
    pub gdpr_consent_field: Option<S<String>>,
    pub tcf_vendor_id: Option<S<i64>>,
    /// Keys of ad stitchers allowed to send X-Device-IP / X-Device-User-Agent.
    #[serde(default)]
    pub ssai_key: Vec<S<RawKey>>,
    pub ssai_skew_s: Option<S<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub rate_per_s: Option<S<i64>>,
    pub burst: Option<S<i64>>,
    pub ipv4_prefix_bits: Option<S<i64>>,
    pub ipv6_prefix_bits: Option<S<i64>>,
    pub entries: Option<S<i64>>,
    pub exempt_loopback: Option<S<bool>>,
    pub connections_per_prefix_max: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub path: S<String>,
    pub method: Option<S<String>>,
    pub event: S<String>,
    pub response: Option<S<String>>,
    pub ack: Option<S<String>>,
    /// "drop" or "reject" (429) when the source is over its budget.
    pub over_budget: Option<S<String>>,
    /// `[endpoint.redirect]`, for `response = "redirect"` (see config/redirect.rs).
    pub redirect: Option<Table<RawRedirect>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    pub param: Option<S<String>>,
    pub require: Option<S<String>>,
    pub allow_domains: Option<S<Vec<S<String>>>>,
    pub signed_fields: Option<S<Vec<S<String>>>>,
    pub signature_ttl_max_s: Option<S<i64>>,
    #[serde(default)]
    pub key: Vec<S<RawKey>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: S<String>,
    pub secret_hex: Option<S<String>>,
    pub file: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvent {
    #[serde(default)]
    pub fields: Vec<S<RawField>>,
    pub identity: Option<S<Vec<S<String>>>>,
    pub id_from: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawField {
    pub name: S<String>,
    pub source: S<String>,
    #[serde(rename = "type")]
    pub kind: S<String>,
    pub required: Option<S<bool>>,
    pub default: Option<S<toml::Value>>,
    pub max_bytes: Option<S<i64>>,
    /// Strings only: the value must be one of these (e.g. VAST event names).
    pub one_of: Option<S<Vec<S<String>>>>,
    /// Numbers only: the smallest and largest value accepted (same syntax as the value).
    pub min: Option<S<toml::Value>>,
    pub max: Option<S<toml::Value>>,
    /// Money only: "google" = Authorized Buyers encrypted price, with the two keys below.
    pub decrypt: Option<S<String>>,
    pub encryption_key: Option<S<String>>,
    pub integrity_key: Option<S<String>>,
}
