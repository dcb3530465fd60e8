//! The config file exactly as written: serde types with spans, unknown keys refused. Nothing
//! here is trusted; `validate` turns it into a `Config`.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type S<T> = Spanned<T>;

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
    pub endpoint: Vec<S<RawEndpoint>>,
    #[serde(default)]
    pub event: BTreeMap<String, S<RawEvent>>,
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
    pub ring_events: Option<S<i64>>,
    pub io_uring_entries: Option<S<i64>>,
    pub io_uring_defer_taskrun: Option<S<bool>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawJournal {
    pub dir: Option<S<String>>,
    pub segment_bytes: Option<S<i64>>,
    pub sync: Option<S<String>>,
    pub sync_interval_ms: Option<S<i64>>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub path: S<String>,
    pub method: Option<S<String>>,
    pub event: S<String>,
    pub response: Option<S<String>>,
    pub ack: Option<S<String>>,
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
}
