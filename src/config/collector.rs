//! `[[collector]]` tables: the keys every collector has (name, kind, attachment, field
//! allowlist, batching, retry) validated here like the rest of the config; the kind-specific
//! keys under `[collector.options]` are kept with their lines and validated by the collector's
//! kind when it is built (`collector::Registry`), with the same `file:line: key: problem` errors.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::keys::{spec, COLLECTOR_KEYS};
use super::raw::{Table, S};
use super::{line_of, ConfigError, EventType, Validator};
use crate::schema::FieldKind;

/// Most `[[collector]]` tables: each costs a thread and a cursor file per shard.
pub const COLLECTORS_MAX: usize = 32;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCollector {
    pub name: S<String>,
    pub kind: S<String>,
    pub events: Option<S<toml::Value>>,
    pub fields: Option<S<toml::Value>>,
    pub events_max: Option<S<i64>>,
    pub bytes_max: Option<S<i64>>,
    pub linger_ms: Option<S<i64>>,
    pub retry_initial_ms: Option<S<i64>>,
    pub retry_max_ms: Option<S<i64>>,
    pub retry_jitter_percent: Option<S<i64>>,
    pub key_prefix: Option<S<String>>,
    /// `raw::Table`, not `S`: dotted keys (`options.url = …` in `[[collector]]`,
    /// `properties."client.id" = …` in `[collector.options]`) make tables TOML records no place
    /// for, which `S` refuses.
    pub options: Option<Table<BTreeMap<String, Table<toml::Value>>>>,
}

/// Which event types a collector is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventSelection {
    All,
    /// Type names, each a declared `[event.<type>]`.
    Types(Vec<String>),
}

impl EventSelection {
    pub fn admits(&self, type_name: &str) -> bool {
        match self {
            EventSelection::All => true,
            EventSelection::Types(t) => t.iter().any(|n| n == type_name),
        }
    }
}

/// Which fields of an attached event may leave the process through a collector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldSelection {
    /// `fields = ["*"]`: every declared field.
    All,
    /// Field names; `[]` sends only the envelope (type, id, ts, shard, seq).
    Names(Vec<String>),
}

impl FieldSelection {
    pub fn admits(&self, field: &str) -> bool {
        match self {
            FieldSelection::All => true,
            FieldSelection::Names(n) => n.iter().any(|x| x == field),
        }
    }
}

/// When a batch is closed and sent: whichever limit is reached first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most events in one batch. 1..=100000, default 1000.
    pub events_max: usize,
    /// Most bytes of projected events (their JSON size) in one batch. 1 KiB..=64 MiB, default 1 MiB.
    pub bytes_max: usize,
    /// Longest a batch waits for more events after its first one, ms. 0..=60000, default 100.
    pub linger_ms: u64,
}

/// Retry of a batch the destination refused with a retriable failure: capped exponential
/// backoff with jitter, forever (the journal keeps the events; the cursor does not move).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait, ms. 1..=60000, default 100.
    pub initial_ms: u64,
    /// Cap of the doubling wait, ms. initial_ms..=3600000, default 10000.
    pub max_ms: u64,
    /// Each wait is drawn uniformly from [wait × (1 − jitter), wait]. 0..=100, default 20.
    pub jitter_percent: u8,
}

/// The kind-specific keys of one collector (`[collector.options]`), each with its line.
#[derive(Clone, Debug, Default)]
pub struct CollectorOptions {
    pub file: String,
    /// Line of the `[[collector]]` table (for errors about a missing key).
    pub table_line: usize,
    /// Index of the table among the `[[collector]]` tables (`collector[i]` in keys).
    pub index: usize,
    pub entries: BTreeMap<String, (usize, toml::Value)>,
}

impl CollectorOptions {
    /// A located error about option `key` (at its own line, or the table's when absent).
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let line = self.entries.get(key).map_or(self.table_line, |(l, _)| *l);
        ConfigError {
            file: self.file.clone(),
            line,
            key: format!("collector[{}].options.{key}", self.index),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    /// Unique; names the cursor directory, the idempotency keys and the diagnostics.
    pub name: String,
    /// Which implementation: "banker", "jsonl", or a kind registered by a custom build.
    pub kind: String,
    pub events: EventSelection,
    pub fields: FieldSelection,
    /// Every field this collector may see (of an attached type, admitted by `fields`), by name:
    /// the attached types that declare it and its kind in each. For kind-specific checks (the
    /// banker sums only money fields).
    pub field_kinds: BTreeMap<String, Vec<(String, FieldKind)>>,
    pub batch: BatchLimits,
    pub retry: RetryPolicy,
    /// First part of every batch key (`<key_prefix>:<name>:<shard>:<segment>:<from>-<to>`):
    /// `None`: the journal's own, drawn at random (`collector::cursor::default_key_prefix`).
    pub key_prefix: Option<String>,
    pub options: CollectorOptions,
}

impl Validator<'_> {
    pub(super) fn collectors(&mut self, raw: &[S<RawCollector>], types: &[EventType]) -> Vec<CollectorConfig> {
        let mut out: Vec<CollectorConfig> = Vec::new();
        if raw.len() > COLLECTORS_MAX {
            self.err(raw[COLLECTORS_MAX].span(), "collector", format!("more than {COLLECTORS_MAX} collectors"));
        }
        for (i, c) in raw.iter().enumerate().take(COLLECTORS_MAX) {
            let key = |k: &str| format!("collector[{i}].{k}");
            let r = c.get_ref();
            let name = r.name.get_ref().clone();
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                self.err_own(
                    r.name.span(),
                    key("name"),
                    format!("\"{name}\": 1..=64 letters, digits, '_' or '-' (it names a directory)"),
                );
            }
            if let Some(prev) = out.iter().position(|o| o.name == name) {
                self.err(r.name.span(), key("name"), format!("\"{name}\" is already the name of collector[{prev}]"));
            }
            let kind = r.kind.get_ref().clone();
            if kind.is_empty() {
                self.err_own(
                    r.kind.span(),
                    key("kind"),
                    "empty: expected a collector kind such as \"banker\" or \"jsonl\"",
                );
            }
            let events = self.event_selection(r, &key("events"), types, c.span());
            let fields = self.field_selection(r, &key("fields"), &events, types, c.span());
            let mut field_kinds: BTreeMap<String, Vec<(String, FieldKind)>> = BTreeMap::new();
            for t in types.iter().filter(|t| events.admits(&t.name)) {
                for f in t.fields.iter().filter(|f| fields.admits(&f.name)) {
                    field_kinds.entry(f.name.clone()).or_default().push((t.name.clone(), f.kind));
                }
            }
            let batch = BatchLimits {
                events_max: self.int_at(&r.events_max, &key("events_max"), spec(COLLECTOR_KEYS, "events_max")) as usize,
                bytes_max: self.int_at(&r.bytes_max, &key("bytes_max"), spec(COLLECTOR_KEYS, "bytes_max")) as usize,
                linger_ms: self.int_at(&r.linger_ms, &key("linger_ms"), spec(COLLECTOR_KEYS, "linger_ms")) as u64,
            };
            let initial_ms =
                self.int_at(&r.retry_initial_ms, &key("retry_initial_ms"), spec(COLLECTOR_KEYS, "retry_initial_ms"))
                    as u64;
            let max_ms = match &r.retry_max_ms {
                // The default cap never sits below the first wait.
                None => 10_000.max(initial_ms),
                Some(_) => {
                    self.int_at(&r.retry_max_ms, &key("retry_max_ms"), spec(COLLECTOR_KEYS, "retry_max_ms")) as u64
                }
            };
            if max_ms < initial_ms && !self.refused_any(&[&key("retry_initial_ms"), &key("retry_max_ms")]) {
                let span = r.retry_max_ms.as_ref().map_or(c.span(), |s| s.span());
                self.err(span, key("retry_max_ms"), format!("{max_ms} is below retry_initial_ms ({initial_ms})"));
            }
            let retry = RetryPolicy {
                initial_ms,
                max_ms: max_ms.max(initial_ms),
                jitter_percent: self.int_at(
                    &r.retry_jitter_percent,
                    &key("retry_jitter_percent"),
                    spec(COLLECTOR_KEYS, "retry_jitter_percent"),
                ) as u8,
            };
            let key_prefix = match &r.key_prefix {
                None => None,
                Some(p) => {
                    let v = p.get_ref();
                    if !crate::collector::cursor::valid_key_prefix(v) {
                        self.err_own(
                            p.span(),
                            key("key_prefix"),
                            format!("\"{v}\": 1..=64 letters, digits, '_', '-' or '.'"),
                        );
                    }
                    Some(v.clone())
                }
            };
            let mut options = CollectorOptions {
                file: self.file.to_string(),
                table_line: line_of(self.text, c.span().start),
                index: i,
                entries: BTreeMap::new(),
            };
            if let Some(o) = &r.options {
                // A value made of dotted keys has no place of its own: the options table's, or
                // (dotted too) the collector's.
                let table = o.span_if_written().unwrap_or(c.span());
                for (k, v) in o.get_ref() {
                    let at = v.span_if_written().unwrap_or(table.clone()).start;
                    options.entries.insert(k.clone(), (line_of(self.text, at), v.get_ref().clone()));
                }
            }
            out.push(CollectorConfig { name, kind, events, fields, field_kinds, batch, retry, key_prefix, options });
        }
        out
    }

    fn string_list(&mut self, v: &S<toml::Value>, key: &str) -> Option<Vec<String>> {
        let toml::Value::Array(items) = v.get_ref() else {
            self.err_own(v.span(), key, "expected a list of strings");
            return None;
        };
        let mut out = Vec::new();
        for it in items {
            match it.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    self.err_own(v.span(), key, format!("{it} is not a string"));
                    return None;
                }
            }
        }
        Some(out)
    }

    fn event_selection(
        &mut self,
        r: &RawCollector,
        key: &str,
        types: &[EventType],
        table: std::ops::Range<usize>,
    ) -> EventSelection {
        let Some(v) = &r.events else {
            self.err(table, key, "missing: list the event types this collector gets, e.g. [\"bill\"], or \"all\"");
            return EventSelection::Types(Vec::new());
        };
        if v.get_ref().as_str() == Some("all") {
            return EventSelection::All;
        }
        let Some(names) = self.string_list(v, key) else { return EventSelection::Types(Vec::new()) };
        if names.is_empty() {
            self.err_own(v.span(), key, "empty list: name at least one event type, or \"all\"");
        }
        for n in &names {
            if !types.iter().any(|t| &t.name == n) {
                let known: Vec<&str> = types.iter().map(|t| t.name.as_str()).collect();
                self.err(v.span(), key, format!("\"{n}\" is not an event type; declared: {}", known.join(", ")));
            }
        }
        EventSelection::Types(names)
    }

    fn field_selection(
        &mut self,
        r: &RawCollector,
        key: &str,
        events: &EventSelection,
        types: &[EventType],
        table: std::ops::Range<usize>,
    ) -> FieldSelection {
        let Some(v) = &r.fields else {
            self.err(
                table,
                key,
                "missing: list the fields that may leave the process through this collector (the \
                 allowlist), [] for none, [\"*\"] for all",
            );
            return FieldSelection::Names(Vec::new());
        };
        let Some(names) = self.string_list(v, key) else { return FieldSelection::Names(Vec::new()) };
        if names.iter().any(|n| n == "*") {
            return FieldSelection::All;
        }
        for n in &names {
            let found = types.iter().filter(|t| events.admits(&t.name)).any(|t| t.fields.iter().any(|f| &f.name == n));
            if !found {
                self.err(v.span(), key, format!("\"{n}\" is not a field of any event type this collector gets"));
            }
        }
        FieldSelection::Names(names)
    }
}
