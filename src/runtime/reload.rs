//! Hot reload (SIGHUP, `systemctl reload`): re-read the config file, validate it whole, and hand
//! the new endpoints, fields and event types to every shard without dropping a connection.
//!
//! Stage: control plane. The signal thread runs [`Reloader::reload`]; reactors and drains only
//! pick up what it left them, at their own safe points. Nothing on the request path locks or
//! allocates for it: a connection reads `ShardCtx::cfg` (a `RefCell<Arc<Config>>` on the reactor
//! thread) per request, and the reactor swaps it between requests.
//!
//! Crossings (all through [`ShardReload`], one per shard):
//! 1. reload thread → reactor: `offer(gen, cfg)` puts the new `Arc<Config>` in the shard's slot
//!    and writes the shard's eventfd;
//! 2. the reactor's control task takes it, rebuilds its routing table (allocation here is
//!    control-plane, once per reload), queues `(gen, cfg)` for the drain *before* any event is
//!    made with it, swaps `ctx.cfg`, and publishes `applied = gen`;
//! 3. reactor → drain: each event carries the generation of its config in its header
//!    (`Event::config_gen`); when the drain meets a new generation it takes that config from the
//!    queue and, when its schema differs, starts a new journal segment with it
//!    (`ShardJournal::set_schema`). Events already in the ring from the old config are written
//!    under the old schema first: the ring is in order.
//!
//! What can change: endpoints, event types and their fields (the schema). What cannot without a
//! restart (buffers, rings, listeners and journal files are sized and opened at start): every
//! `[server]` and `[journal]` key, and `[dedup]` and `[budget]` (tables shared by all shards).
//! A change to one of them is reported as "needs restart" and the running value is kept. An invalid file changes nothing; the errors name file:line: key.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ShardShared;
use crate::config::{Config, ConfigErrors, Overrides};
use crate::event::EVENT_BYTES;
use crate::journal::{header_bytes_for, SCHEMA_BYTES_MAX};
use crate::metrics::CounterLabels;

/// How long a reload waits for every reactor to switch before it reports the stragglers. A
/// reactor switches within one turn of its event loop; this only bounds a wedged one.
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

/// One shard's reload slot: written by the reload thread, read by the shard's reactor and drain.
pub struct ShardReload {
    offered: Mutex<Option<(u32, Arc<Config>)>>,
    /// Set with `offered`: lets the reactor skip the mutex on every wake-up without a reload.
    offered_flag: AtomicBool,
    /// Generation the reactor makes events with.
    applied: AtomicU32,
    /// The configs the reactor switched to, oldest first, one per change of schema (the drain
    /// needs only the schema): generation g is journaled under the newest entry numbered ≤ g.
    /// Kept until the drain passes them, however many: dropping one would journal its events
    /// under another schema (a drain stalled on a full disk while reloads go on). Bounded by
    /// the reloads that change the schema while the drain is behind.
    for_drain: Mutex<VecDeque<(u32, Arc<Config>)>>,
}

impl Default for ShardReload {
    fn default() -> Self {
        ShardReload {
            offered: Mutex::new(None),
            offered_flag: AtomicBool::new(false),
            applied: AtomicU32::new(0),
            for_drain: Mutex::new(VecDeque::new()),
        }
    }
}

impl ShardReload {
    /// Reload thread: the reactor will switch to `cfg` as generation `gen` (a newer offer not
    /// yet taken replaces an older one).
    pub fn offer(&self, gen: u32, cfg: Arc<Config>) {
        *self.offered.lock().unwrap_or_else(|p| p.into_inner()) = Some((gen, cfg));
        self.offered_flag.store(true, SeqCst);
    }

    /// Reactor, at a safe point (its control task, between requests): the offered config.
    pub fn take_offer(&self) -> Option<(u32, Arc<Config>)> {
        if !self.offered_flag.swap(false, SeqCst) {
            return None;
        }
        self.offered.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Reactor: events made from now on carry `gen`; the drain will find `cfg` for them.
    pub fn applied(&self, gen: u32, cfg: Arc<Config>) {
        let mut q = self.for_drain.lock().unwrap_or_else(|p| p.into_inner());
        if q.back().is_none_or(|(_, last)| last.schema != cfg.schema) {
            q.push_back((gen, cfg));
        }
        drop(q);
        self.applied.store(gen, SeqCst);
    }

    pub fn applied_gen(&self) -> u32 {
        self.applied.load(SeqCst)
    }

    /// Drain: a config with the schema of generation `gen` (generations only grow), dropping
    /// the ones before it.
    pub fn config_for_drain(&self, gen: u32) -> Option<Arc<Config>> {
        let mut q = self.for_drain.lock().unwrap_or_else(|p| p.into_inner());
        while q.len() > 1 && q[1].0 <= gen {
            q.pop_front();
        }
        q.front().filter(|(g, _)| *g <= gen).map(|(_, c)| c.clone())
    }
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadError {
    /// The file does not parse or validate: every error, with file:line: key.
    Invalid(ConfigErrors),
    /// It validates, but cannot run with this process (e.g. its schema does not fit a segment).
    Unusable(String),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Invalid(e) => write!(f, "{e}"),
            ReloadError::Unusable(s) => f.write_str(s),
        }
    }
}

/// What a reload did.
#[derive(Debug)]
pub struct ReloadReport {
    pub generation: u32,
    pub endpoints: usize,
    pub types: usize,
    pub schema_changed: bool,
    /// `key: running → in file` for each restart-only key that differs (kept as running).
    pub needs_restart: Vec<String>,
    /// Shards that had not switched within [`APPLY_WAIT`] (they switch on their next turn).
    pub late_shards: Vec<u16>,
}

/// A check a file must pass besides its own validation: the `[[collector]]` options, which only
/// the builds of the collector kinds the program knows check (`collector::Registry`).
pub type ExtraCheck = Box<dyn Fn(&Config) -> Result<(), ConfigErrors> + Send>;

/// Owned by the signal thread: the file, the command-line overrides, the running config.
pub struct Reloader {
    path: PathBuf,
    overrides: Overrides,
    current: Arc<Config>,
    generation: u32,
    shards: Vec<Arc<ShardShared>>,
    labels: Arc<CounterLabels>,
    check: Option<ExtraCheck>,
}

impl Reloader {
    /// `current` is the config `running` started with (overrides applied).
    pub fn new(path: PathBuf, overrides: Overrides, current: Config, running: &super::Running) -> Reloader {
        Reloader {
            path,
            overrides,
            current: Arc::new(current),
            generation: 0,
            shards: running.shards().to_vec(),
            labels: running.counter_labels(),
            check: None,
        }
    }

    /// Refuse a file that fails `check` too, as `check-config` refuses it: collectors are
    /// restart-only, but a file whose collectors cannot be built would be applied now and fail
    /// the next start.
    pub fn with_check(mut self, check: ExtraCheck) -> Reloader {
        self.check = Some(check);
        self
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Reads, validates and applies the file; on any error the running config stays.
    pub fn reload(&mut self) -> Result<ReloadReport, ReloadError> {
        // Validated as the flags have it, and by `check` (its errors listed with the rest),
        // flags applied: as at start.
        let check = |c: &Config| self.check.as_ref().map_or(Ok(()), |check| check(c));
        let mut next = Config::load_with(&self.path, &self.overrides, &check).map_err(ReloadError::Invalid)?;
        let needs_restart = restart_only_changes(&self.current, &next);
        // Keep what was sized and opened at start.
        next.server = self.current.server.clone();
        next.journal = self.current.journal.clone();
        // request side: the dedup and budget tables are shared by all shards and sized at start.
        next.dedup = self.current.dedup;
        next.budget = self.current.budget;
        // The admin listener, histogram publishing and the .hlog writer are started with these.
        next.admin = self.current.admin.clone();
        // Steps added in code stay, re-attached by type name (ids may change with the types).
        for (name, _, step) in &self.current.steps {
            match next.event_type(name).map(|t| t.id) {
                Some(id) => next.steps.push((name.clone(), id, step.clone())),
                None => eprintln!("tracker: reload: event type {name} is gone; its step {} is dropped", step.name()),
            }
        }
        // Without a key file the user-id hash key is random per start; keep it, or a reload
        // would change every user's hash.
        if !next.privacy.hash_key_from_file && !self.current.privacy.hash_key_from_file {
            next.privacy.hash_key = self.current.privacy.hash_key.clone();
        }
        next.collectors = self.current.collectors.clone();
        check_schema_fits(&next)?;
        // Counters by path and type name, not position: the series keep their labels.
        self.labels.assign(&mut next).map_err(ReloadError::Unusable)?;
        let schema_changed = next.schema != self.current.schema;

        self.generation += 1;
        let generation = self.generation;
        let next = Arc::new(next);
        for s in &self.shards {
            s.reload.offer(generation, next.clone());
            s.wake_reactor();
        }
        let deadline = Instant::now() + APPLY_WAIT;
        let late_shards = loop {
            let late: Vec<u16> = self
                .shards
                .iter()
                .filter(|s| s.reload.applied_gen() < generation && !s.reactor_done.load(SeqCst))
                .map(|s| s.index)
                .collect();
            if late.is_empty() || Instant::now() >= deadline {
                break late;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let report = ReloadReport {
            generation,
            endpoints: next.endpoints.len(),
            types: next.types.len(),
            schema_changed,
            needs_restart,
            late_shards,
        };
        self.current = next;
        Ok(report)
    }
}

/// The schema must fit a segment header of this process's segment size, or the drain could
/// never write the new config's events.
fn check_schema_fits(cfg: &Config) -> Result<(), ReloadError> {
    let json = cfg.schema.to_json();
    let header = header_bytes_for(json.len());
    if json.len() > SCHEMA_BYTES_MAX || (header + EVENT_BYTES) as u64 > cfg.journal.segment_bytes {
        return Err(ReloadError::Unusable(format!(
            "the new schema is {} bytes of JSON: a segment header holds at most {SCHEMA_BYTES_MAX}, and \
             journal.segment_bytes {} must hold the header and one record; declare fewer event types or fields",
            json.len(),
            cfg.journal.segment_bytes
        )));
    }
    Ok(())
}

/// Restart-only keys whose value differs, as `key: running → in file`.
pub fn restart_only_changes(running: &Config, file: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |key: &str, a: String, b: String| {
        if a != b {
            let mut s = String::new();
            let _ = write!(s, "{key}: {a} → {b}");
            out.push(s);
        }
    };
    let (a, b) = (&running.server, &file.server);
    cmp("server.listen", a.listen.to_string(), b.listen.to_string());
    cmp("server.shards", a.shards.to_string(), b.shards.to_string());
    cmp(
        "server.connections_per_shard_max",
        a.connections_per_shard_max.to_string(),
        b.connections_per_shard_max.to_string(),
    );
    cmp("server.request_line_bytes_max", a.request_line_bytes_max.to_string(), b.request_line_bytes_max.to_string());
    cmp("server.header_count_max", a.header_count_max.to_string(), b.header_count_max.to_string());
    cmp("server.header_bytes_max", a.header_bytes_max.to_string(), b.header_bytes_max.to_string());
    cmp("server.body_bytes_max", a.body_bytes_max.to_string(), b.body_bytes_max.to_string());
    cmp("server.header_read_timeout_ms", a.header_read_timeout_ms.to_string(), b.header_read_timeout_ms.to_string());
    cmp("server.idle_timeout_ms", a.idle_timeout_ms.to_string(), b.idle_timeout_ms.to_string());
    cmp("server.stop_request_grace_ms", a.stop_request_grace_ms.to_string(), b.stop_request_grace_ms.to_string());
    cmp("server.ring_events", a.ring_events.to_string(), b.ring_events.to_string());
    cmp("server.io_uring_entries", a.io_uring_entries.to_string(), b.io_uring_entries.to_string());
    cmp("server.io_uring_defer_taskrun", a.io_uring_defer_taskrun.to_string(), b.io_uring_defer_taskrun.to_string());
    cmp("server.batch_events_max", a.batch_events_max.to_string(), b.batch_events_max.to_string());
    cmp("server.body_decoded_bytes_max", a.body_decoded_bytes_max.to_string(), b.body_decoded_bytes_max.to_string());
    cmp("server.body_inflate_ratio_max", a.body_inflate_ratio_max.to_string(), b.body_inflate_ratio_max.to_string());
    let (a, b) = (&running.journal, &file.journal);
    cmp("journal.dir", a.dir.display().to_string(), b.dir.display().to_string());
    cmp("journal.segment_bytes", a.segment_bytes.to_string(), b.segment_bytes.to_string());
    cmp("journal.sync", format!("{:?}", a.sync), format!("{:?}", b.sync));
    cmp("journal.sync_interval_ms", a.sync_interval_ms.to_string(), b.sync_interval_ms.to_string());
    cmp("journal.stall_timeout_ms", a.stall_timeout_ms.to_string(), b.stall_timeout_ms.to_string());
    // The whole [journal] table is kept from start (`Reloader`): a key added to it and not
    // compared here would be ignored on reload without a word. This fails to compile then.
    let crate::config::Journal {
        dir: _,
        segment_bytes: _,
        sync: _,
        sync_interval_ms: _,
        stall_timeout_ms: _,
        retention_age_s: _,
        size_bytes_max: _,
    } = a;
    // request side: tables made at start (src/dedup.rs, src/enrich/budget.rs).
    cmp("dedup", format!("{:?}", running.dedup), format!("{:?}", file.dedup));
    cmp("budget", format!("{:?}", running.budget), format!("{:?}", file.budget));
    cmp("journal.retention_age_s", a.retention_age_s.to_string(), b.retention_age_s.to_string());
    cmp("journal.size_bytes_max", a.size_bytes_max.to_string(), b.size_bytes_max.to_string());
    // The admin thread, the .hlog writer and every publishing timer read [admin] once, at start.
    let (ra, fa) = (&running.admin, &file.admin);
    cmp("admin.listen", ra.listen.to_string(), fa.listen.to_string());
    cmp("admin.publish_interval_ms", ra.publish_interval_ms.to_string(), fa.publish_interval_ms.to_string());
    cmp("admin.ready_free_bytes_min", ra.ready_free_bytes_min.to_string(), fa.ready_free_bytes_min.to_string());
    cmp(
        "admin.ready_ring_backlog_events_max",
        ra.ready_ring_backlog_events_max.to_string(),
        fa.ready_ring_backlog_events_max.to_string(),
    );
    cmp("admin.hlog_path", format!("{:?}", ra.hlog_path), format!("{:?}", fa.hlog_path));
    cmp("admin.hlog_interval_ms", ra.hlog_interval_ms.to_string(), fa.hlog_interval_ms.to_string());
    // Collectors run on their own threads from start (collector/): any change to a
    // [[collector]] table takes a restart; their lines in the file do not count. Named one by
    // one (added, removed, changed) rather than as a dump of every collector's settings.
    let setting = |x: &crate::config::CollectorConfig| {
        let opts: Vec<String> = x.options.entries.iter().map(|(k, (_, v))| format!("{k}={v}")).collect();
        format!(
            "{} {:?} {:?} {:?} {:?} {:?} [{}]",
            x.kind,
            x.events,
            x.fields,
            x.batch,
            x.retry,
            x.key_prefix,
            opts.join(" ")
        )
    };
    for r in &running.collectors {
        match file.collectors.iter().find(|f| f.name == r.name) {
            None => out.push(format!("collector {}: removed", r.name)),
            Some(f) if setting(f) != setting(r) => out.push(format!("collector {}: settings changed", r.name)),
            Some(_) => {}
        }
    }
    for f in file.collectors.iter().filter(|f| !running.collectors.iter().any(|r| r.name == f.name)) {
        out.push(format!("collector {}: added", f.name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_are_named_with_both_values() {
        let a = Config::embedded();
        let mut b = Config::embedded();
        b.server.ring_events = 32;
        b.journal.sync_interval_ms = 5;
        b.journal.stall_timeout_ms = 7;
        let d = restart_only_changes(&a, &b);
        let stall = format!("journal.stall_timeout_ms: {} → 7", a.journal.stall_timeout_ms);
        assert_eq!(
            d,
            vec!["server.ring_events: 16384 → 32".to_string(), "journal.sync_interval_ms: 1000 → 5".into(), stall]
        );
        assert!(restart_only_changes(&a, &Config::embedded()).is_empty());
    }

    #[test]
    fn admin_keys_are_restart_only() {
        let a = Config::embedded();
        let mut b = Config::embedded();
        b.admin.listen = "127.0.0.1:9999".parse().unwrap();
        b.admin.ready_free_bytes_min = 1 << 40;
        let d = restart_only_changes(&a, &b);
        assert_eq!(
            d,
            vec![
                "admin.listen: 127.0.0.1:9090 → 127.0.0.1:9999".to_string(),
                "admin.ready_free_bytes_min: 0 → 1099511627776".into()
            ]
        );
    }

    #[test]
    fn a_changed_collector_needs_a_restart() {
        let a = Config::embedded();
        let text = format!(
            "{}\n[[collector]]\nname = \"c\"\nkind = \"jsonl\"\nevents = \"all\"\nfields = []\n[collector.options]\npath = \"x\"\n",
            crate::config::DEFAULT_TOML
        );
        let b = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(restart_only_changes(&a, &b), ["collector c: added"]);
        assert_eq!(restart_only_changes(&b, &a), ["collector c: removed"]);
        let c = Config::parse(&text.replace("path = \"x\"", "path = \"y\""), "t.toml").unwrap();
        assert_eq!(restart_only_changes(&b, &c), ["collector c: settings changed"]);
        assert!(restart_only_changes(&b, &b.clone()).is_empty());
    }

    #[test]
    fn drain_finds_each_generation_in_order() {
        let r = ShardReload::default();
        let c = Arc::new(Config::embedded());
        assert!(r.take_offer().is_none());
        r.offer(1, c.clone());
        r.offer(2, c.clone());
        let (g, cfg) = r.take_offer().unwrap();
        assert_eq!(g, 2);
        assert!(r.take_offer().is_none());
        r.applied(1, c.clone());
        r.applied(g, cfg);
        assert_eq!(r.applied_gen(), 2);
        assert!(r.config_for_drain(2).is_some());
    }

    #[test]
    fn a_drain_far_behind_still_finds_the_schema_of_every_generation() {
        let r = ShardReload::default();
        let a = Arc::new(Config::embedded());
        let mut b = Config::embedded();
        b.schema.types.pop();
        let b = Arc::new(b);
        // 200 reloads while the drain is stalled, alternating two schemas, some repeated.
        for gen in 1..=200u32 {
            r.applied(gen, if (gen / 3) % 2 == 0 { a.clone() } else { b.clone() });
        }
        for gen in 1..=200u32 {
            let want = if (gen / 3) % 2 == 0 { &a.schema } else { &b.schema };
            let got = r.config_for_drain(gen).unwrap_or_else(|| panic!("generation {gen}"));
            assert_eq!(&got.schema, want, "generation {gen}");
        }
    }
}
