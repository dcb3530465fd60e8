//! The forwarder thread of one collector: for each shard, read from the cursor, cut a batch
//! (size, bytes or linger, never across a segment or a recorded batch boundary), persist its
//! range, deliver it until acknowledged (capped exponential backoff with jitter), then move and
//! persist the cursor. One thread per collector: its failure domain.
//!
//! Shutdown: [`Forwarders::stop`] asks every thread to deliver what is already journaled, up
//! to where this process's shards stopped (one attempt per batch once stopping), and exit; [`Forwarders::join`] waits a bounded time, so a
//! hanging destination cannot hold the process.

use crate::metrics::latency::LocalHistogram;
use crate::runtime::ShardShared;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cursor::{self, Position, Recorded, SegmentBatches};
use super::project::Projection;
use super::source::{ShardSource, Tail};
use super::{Batch, CollectedEvent, Collector, Delivery, Registry};
use crate::config::{CollectorConfig, Config};
use crate::event::Event;
use crate::journal::parse_shard_dir_name;
use crate::xorshift::Xorshift64;

/// Pause of a collector thread that found nothing to do.
const IDLE_POLL: Duration = Duration::from_millis(10);
/// Records read from the journal per step.
const READ_STEP_RECORDS: usize = 1024;
/// A cursor moved only over records of other types is persisted at most this often.
const CURSOR_PERSIST_EVERY: Duration = Duration::from_secs(1);
/// A record of a shard's newest segment that stays not intact this long is reported: the
/// writer copies a record in microseconds, so it is damaged (or its writer is stuck), and the
/// reader waits at it, holding back every event after it, until the writer leaves the segment.
const STALL_REPORT_AFTER: Duration = Duration::from_secs(2);

/// What a running collector has done; read by metrics, readiness and tests from any thread.
#[derive(Debug, Default)]
pub struct CollectorStatus {
    pub name: String,
    pub kind: String,
    pub events_total: AtomicU64,
    pub batches_total: AtomicU64,
    pub retries_total: AtomicU64,
    /// Batches the destination already held under a different body ([`Delivery::Superseded`]).
    pub superseded_total: AtomicU64,
    /// Shard cursors found past every segment of their shard and moved back to its first one
    /// (the journal's shard directories were wiped and `collectors/` kept).
    pub cursor_resets_total: AtomicU64,
    /// Records of segments the writer had left that were passed over: they failed their CRC,
    /// or could not be read for `source::UNREADABLE_SKIP_AFTER` (this process's count).
    pub records_skipped_total: AtomicU64,
    /// Segments passed over whole because no copy of their header passed its checks.
    pub segments_skipped_total: AtomicU64,
    /// The destination answered Fatal: the thread stopped, the cursor stays.
    pub failed: AtomicBool,
    /// A batch is waiting for a retry now, or the collector's own reads and writes (journal,
    /// cursors, batch log) are failing and being retried.
    pub retrying: AtomicBool,
    /// Unix ns of the newest event acknowledged.
    pub acked_event_ns: AtomicU64,
    /// Age of the oldest event of the last acknowledged batch when it was acknowledged, ns:
    /// journal-to-destination latency.
    pub ack_lag_ns: AtomicU64,
    /// Every shard's cursor is at the end of its journal with nothing pending (lag 0).
    pub caught_up: AtomicBool,
    /// Unix ns of the oldest event of the batch being delivered, 0 when none is.
    pub pending_oldest_ns: AtomicU64,
    /// Last failure message (retriable or fatal).
    pub last_error: Mutex<String>,
}

impl CollectorStatus {
    /// How old the oldest event of the batch being delivered is at `now_ns` (0 when none is):
    /// unlike `ack_lag_ns`, it keeps growing while a destination is down.
    pub fn pending_age_ns(&self, now_ns: u64) -> u64 {
        match self.pending_oldest_ns.load(Relaxed) {
            0 => 0,
            t => now_ns.saturating_sub(t),
        }
    }
}

/// The running collectors and the retention task.
pub struct Forwarders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    statuses: Vec<Arc<CollectorStatus>>,
}

impl Forwarders {
    pub fn statuses(&self) -> &[Arc<CollectorStatus>] {
        &self.statuses
    }

    /// Asks every collector to deliver what is journaled and stop.
    pub fn stop(&self) {
        self.stop.store(true, SeqCst);
    }

    /// Waits for the collector threads at most `within`; returns how many did not finish
    /// (their destination hangs; they die with the process).
    pub fn join(self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        let mut left = 0;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                left += 1;
            }
        }
        left
    }
}

/// Builds every `[[collector]]` of `cfg` with `registry` and starts one thread each, plus the
/// retention task when `journal.retention_age_s` or `journal.size_bytes_max` is set. Errors
/// (a bad option) name the file, line and key. A collector another process still runs (a
/// restart in progress) starts once that process lets go of its lock.
pub fn start(cfg: &Config, registry: &Registry) -> Result<Forwarders, String> {
    start_with_shards(cfg, registry, &[])
}

/// Like `start`, and records every acknowledged batch's publish latency into the
/// `collector_publish` histogram of the shard it came from (served by /metrics and the .hlog).
pub fn start_with_shards(cfg: &Config, registry: &Registry, shards: &[Arc<ShardShared>]) -> Result<Forwarders, String> {
    let built = registry.build_all(&cfg.collectors).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let mut statuses = Vec::new();
    let journal = cfg.journal.dir.clone();
    crate::journal::create_dir_durable(&journal).map_err(|e| format!("cannot create {}: {e}", journal.display()))?;
    let journal_prefix = match cfg.collectors.iter().any(|c| c.key_prefix.is_none()) {
        true => Some(
            cursor::default_key_prefix(&journal)
                .map_err(|e| format!("collectors: the journal's default key_prefix: {e}"))?,
        ),
        false => None,
    };
    for (c, collector) in cfg.collectors.iter().zip(built) {
        let status = Arc::new(CollectorStatus { name: c.name.clone(), kind: c.kind.clone(), ..Default::default() });
        let mut runner = Runner {
            cfg: c.clone(),
            name: Arc::from(c.name.as_str()),
            journal: journal.clone(),
            collector,
            key_bases: KeyBases::new(&journal, c, journal_prefix.as_deref()),
            shards: BTreeMap::new(),
            status: status.clone(),
            stop: stop.clone(),
            rng: seed(),
            read_buf: Vec::with_capacity(READ_STEP_RECORDS),
            latency: BTreeMap::new(),
            own_shards: shards.to_vec(),
            stop_at: None,
            latency_published_at: Instant::now(),
        };
        let t = std::thread::Builder::new()
            .name(format!("collector-{}", c.name))
            .spawn(move || {
                // During a zero-downtime restart the old process still forwards: wait for it to
                // let go of the collector instead of failing the new one's start.
                let Some(_lock) = runner.wait_for_lock() else { return };
                runner.run();
            })
            .map_err(|e| format!("spawn collector thread: {e}"))?;
        threads.push(t);
        super::metrics::register(status.clone());
        statuses.push(status);
    }
    if cfg.journal.retention_age_s > 0 || cfg.journal.size_bytes_max > 0 {
        threads.push(super::retention::spawn(cfg, stop.clone())?);
    }
    Ok(Forwarders { stop, threads, statuses })
}

/// Each collector's jitter from its own seed, so collectors that fail together do not retry
/// in step.
fn seed() -> Xorshift64 {
    Xorshift64::new(crate::xorshift::random_seed())
}

struct OpenBatch {
    segment: u64,
    from: u32,
    /// Records `[from, to)` are in the batch (attached or not).
    to: u32,
    /// Never extend past this record: the start of a recorded batch, or the end of one being
    /// sent again (`fixed`).
    limit: Option<u32>,
    /// A recorded batch sent again, exactly `[from, limit)`: the id of the key base it was
    /// first sent under. `None` for a batch being cut now.
    recorded: Option<u32>,
    events: Vec<CollectedEvent>,
    bytes: usize,
    first_at: Option<Instant>,
    /// The segment has no more records and the writer has left it.
    exhausted: bool,
}

struct ShardState {
    source: ShardSource,
    dir: PathBuf,
    committed: Position,
    persisted: Position,
    /// The `created_ns` of `persisted.segment`'s header as the cursor file records it (None:
    /// not recorded). Another creation time on a segment of that number = a new journal.
    stamp: Option<u64>,
    /// Times this shard's journal was found reset (`cursor::read_generation`): new batches are
    /// sent under a key base of their own ([`KeyBases::current_for`]).
    generation: u64,
    persisted_at: Instant,
    projection: Option<(u64, Projection)>,
    recorded: Option<(u64, SegmentBatches)>,
    open: Option<OpenBatch>,
    /// At the last look the reader was at the end of the journal with no event pending.
    caught_up: bool,
    /// The reader waits at a record of the newest segment that is not intact: where, since
    /// when, and whether that was reported.
    stalled: Option<(Position, Instant, bool)>,
}

struct Runner {
    cfg: CollectorConfig,
    name: Arc<str>,
    journal: PathBuf,
    collector: Box<dyn Collector>,
    key_bases: KeyBases,
    shards: BTreeMap<u16, ShardState>,
    status: Arc<CollectorStatus>,
    stop: Arc<AtomicBool>,
    /// The retry jitter's draws.
    rng: Xorshift64,
    read_buf: Vec<(u32, Event)>,
    /// Publish latency per shard (ns from the first attempt to the acknowledgement), handed every
    /// PUBLISH_LATENCY_EVERY to that shard's `latency.collector_publish` when the runtime gave us
    /// the shards (`start_with_shards`).
    latency: BTreeMap<u16, LocalHistogram>,
    /// This process's shards, when the runtime gave them (`start_with_shards`): for the
    /// latencies, and for where each one's journal ended at the stop.
    own_shards: Vec<Arc<ShardShared>>,
    /// Once stopping: where this process's drains left each shard's journal. A collector stops
    /// there: in a zero-downtime restart the new process appends past it as soon as the locks
    /// are let go, and following it would keep this process (and the new one's collectors,
    /// waiting for the collector lock) going until the join deadline.
    stop_at: Option<BTreeMap<u16, Position>>,
    latency_published_at: Instant,
}

/// How often a collector hands its publish latencies to the shards' histograms.
const PUBLISH_LATENCY_EVERY: Duration = Duration::from_secs(1);

enum Halt {
    /// Stopping while a batch waits for a retry: it is recorded and is sent again at start.
    Stopped,
    Fatal,
}

impl Runner {
    fn wait_for_lock(&mut self) -> Option<cursor::CollectorLock> {
        let mut logged = false;
        // The last error said: one that persists (a directory that cannot be made) is said
        // once and kept as the last error, not printed ten times a second.
        let mut said = String::new();
        loop {
            match cursor::lock(&self.journal, &self.name) {
                Ok(l) => {
                    self.status.retrying.store(false, Relaxed);
                    return Some(l);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !logged {
                        eprintln!(
                            "tracker: collector {}: another process runs it (a restart in progress?); waiting for it to stop",
                            self.name
                        );
                        logged = true;
                    }
                }
                Err(e) => {
                    let msg =
                        format!("cannot lock {}: {e}", cursor::collector_dir(&self.journal, &self.name).display());
                    if msg != said {
                        eprintln!("tracker: collector {}: {msg}; retrying", self.name);
                        said.clone_from(&msg);
                    }
                    self.status.retrying.store(true, Relaxed);
                    *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = msg;
                }
            }
            if self.stop.load(SeqCst) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn run(&mut self) {
        let mut last_error_logged = Instant::now() - Duration::from_secs(60);
        loop {
            let stopping = self.stop.load(SeqCst);
            if stopping && self.stop_at.is_none() {
                // The drains have stopped before collectors are told to (main.rs): final. A drain
                // that never reached its end (it panicked) leaves its shard out.
                self.stop_at = Some(
                    self.own_shards
                        .iter()
                        .filter_map(|s| s.journal_end().map(|(segment, index)| (s.index, Position { segment, index })))
                        .collect(),
                );
            }
            // Something of this collector's own failed this pass (a shard it cannot start on, a
            // journal read, a batch-log write): it is retrying, and not caught up, whatever the
            // other shards did.
            let mut failing = false;
            if let Err(e) = self.discover() {
                failing = true;
                self.note_error(&mut last_error_logged, &e);
            }
            let mut progressed = false;
            let shards: Vec<u16> = self.shards.keys().copied().collect();
            for shard in shards {
                match self.step(shard, stopping) {
                    Ok(p) => progressed |= p,
                    Err(StepError::Halt(Halt::Fatal)) => {
                        self.collector.close();
                        return;
                    }
                    Err(StepError::Halt(Halt::Stopped)) => {
                        self.finish();
                        return;
                    }
                    Err(StepError::Io(e)) => {
                        // Reading the journal or writing the batch log failed: retried on the
                        // next pass, and shown as retrying like a destination that fails.
                        failing = true;
                        self.note_error(&mut last_error_logged, &e);
                    }
                }
            }
            let (records, segments) = self
                .shards
                .values()
                .fold((0, 0), |(r, s), st| (r + st.source.corrupt_skipped, s + st.source.corrupt_segments));
            self.status.records_skipped_total.store(records, Relaxed);
            self.status.segments_skipped_total.store(segments, Relaxed);
            // A destination's retries happen inside `step` and end acknowledged (or halt the
            // thread), so after a pass only this pass's own failures say "retrying".
            self.status.retrying.store(failing, Relaxed);
            let caught_up = !failing && self.shards.values().all(|s| s.caught_up);
            self.status.caught_up.store(caught_up, Relaxed);
            if self.latency_published_at.elapsed() >= PUBLISH_LATENCY_EVERY {
                self.publish_latency(false);
            }
            if stopping && !progressed {
                self.finish();
                return;
            }
            if !progressed {
                self.collector.idle();
                std::thread::sleep(IDLE_POLL);
            }
        }
    }

    fn note_error(&self, last: &mut Instant, e: &str) {
        *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
        if last.elapsed() >= Duration::from_secs(10) {
            eprintln!("tracker: collector {}: {e}", self.name);
            *last = Instant::now();
        }
    }

    /// Persists the cursors and closes the collector.
    /// Hands the local publish latencies to the shards' histograms (`wait` on exit paths).
    fn publish_latency(&mut self, wait: bool) {
        for (shard, h) in self.latency.iter_mut() {
            if let Some(to) = self.own_shards.iter().find(|s| s.index == *shard) {
                let to = &to.counters.latency.collector_publish;
                if wait {
                    h.publish_wait(to);
                } else {
                    h.publish(to);
                }
            }
        }
        self.latency_published_at = Instant::now();
    }

    fn finish(&mut self) {
        self.publish_latency(true);
        for (shard, st) in self.shards.iter_mut() {
            if st.committed == st.persisted {
                continue;
            }
            let created = st.source.created_ns_on_disk(st.committed.segment);
            match cursor::write_cursor_stamped(&st.dir, st.committed, created) {
                Ok(()) => (st.persisted, st.stamp) = (st.committed, created),
                // Nothing is lost (the cursor stays behind, so those batches are sent again after
                // the restart), but an operator who sees them resent must be able to learn why.
                Err(e) => eprintln!(
                    "tracker: collector {}: shard {shard}: final cursor not saved, its last batches will be sent again after a restart: {e}",
                    self.cfg.name
                ),
            }
        }
        self.collector.close();
    }

    /// Starts on the shards not yet known. One whose cursor cannot be read is skipped (and
    /// tried again next pass) without keeping the others from starting; the first such error
    /// is returned.
    fn discover(&mut self) -> Result<(), String> {
        let entries = match fs::read_dir(&self.journal) {
            Ok(e) => e,
            Err(e) => return Err(format!("read {}: {e}", self.journal.display())),
        };
        let mut first_error = None;
        for entry in entries.flatten() {
            let Some(shard) = entry.file_name().to_str().and_then(parse_shard_dir_name) else { continue };
            if self.shards.contains_key(&shard) {
                continue;
            }
            let dir = cursor::collector_shard_dir(&self.journal, &self.name, shard);
            let (committed, stamp) = match cursor::read_cursor_stamped(&dir) {
                Ok(c) => c.unwrap_or((Position { segment: 0, index: 0 }, None)),
                Err(e) => {
                    first_error.get_or_insert(format!("shard {shard}: cursor: {e}"));
                    continue;
                }
            };
            let generation = match cursor::read_generation(&dir) {
                Ok(g) => g,
                Err(e) => {
                    first_error.get_or_insert(format!("shard {shard}: {e}"));
                    continue;
                }
            };
            self.shards.insert(
                shard,
                ShardState {
                    source: ShardSource::new(&self.journal, shard),
                    dir,
                    committed,
                    persisted: committed,
                    stamp,
                    generation,
                    persisted_at: Instant::now(),
                    projection: None,
                    recorded: None,
                    open: None,
                    caught_up: false,
                    stalled: None,
                },
            );
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The shard has no segment at or after the cursor. Normally the writer has not made it
    /// yet. But a cursor never gets ahead of the newest segment (it moves to segment N + 1 only
    /// once N + 1 exists, and retention keeps the newest), so when segments exist and all are
    /// below it, the journal was reset under a kept `collectors/` (shard directories wiped, the
    /// writer numbering from 1 again): waiting would deliver nothing, ever. Then it says so,
    /// moves the shard to a new generation (a key base of its own for new batches), drops the
    /// shard's batch logs (their ranges are the old journal's: cut again they would resend new
    /// records under old batches' keys), and moves the cursor to record 0 of the first segment. None of those records was delivered (the cursor was ahead of them all),
    /// so none is delivered twice. True when it moved.
    fn reset_if_past_every_segment(&mut self, shard: u16) -> Result<bool, StepError> {
        let st = self.shards.get_mut(&shard).expect("discovered");
        let segments = st.source.segments().map_err(|e| StepError::Io(e.to_string()))?;
        let (Some(&first), Some(&newest)) = (segments.first(), segments.last()) else { return Ok(false) };
        let at = st.committed;
        if newest >= at.segment {
            // Written since resolve looked: the next pass reads it.
            return Ok(false);
        }
        let why = format!(
            "past every segment of {} (newest {newest})",
            crate::journal::shard_dir(&self.journal, shard).display()
        );
        self.reset_journal(shard, first, &why)
    }

    /// The cursor's segment exists, but was created later than the cursor recorded
    /// ([`cursor::segment_made_since`]): the journal was reset under a kept `collectors/` and has numbered its segments
    /// up to the cursor's again (a cursor in segment 1 always is), so the cursor is no place in
    /// it. Handled as [`Self::reset_if_past_every_segment`]. True when it moved.
    fn reset_if_segment_recreated(&mut self, shard: u16) -> Result<bool, StepError> {
        let st = self.shards.get_mut(&shard).expect("discovered");
        let at = st.committed;
        let (Some(was), Some(now)) = (st.stamp, st.source.created_ns_of(at.segment)) else { return Ok(false) };
        if st.persisted.segment != at.segment || !cursor::segment_made_since(was, now) {
            return Ok(false);
        }
        let segments = st.source.segments().map_err(|e| StepError::Io(e.to_string()))?;
        let Some(&first) = segments.first() else { return Ok(false) };
        let path = crate::journal::segment_path(&crate::journal::shard_dir(&self.journal, shard), at.segment);
        let why = format!("of a segment created at {was} (unix ns), but {} was created at {now}", path.display());
        self.reset_journal(shard, first, &why)
    }

    /// Starts delivering a reset journal (see [`Self::reset_if_past_every_segment`]) from record
    /// 0 of its segment `first`, saying `why` the cursor is no place in it.
    fn reset_journal(&mut self, shard: u16, first: u64, why: &str) -> Result<bool, StepError> {
        let st = self.shards.get_mut(&shard).expect("discovered");
        let at = st.committed;
        // A generation file damaged into a huge number: wrapping to 0 would reuse the first
        // journal's key base, whose ranges a banker has applied.
        let generation = st.generation.checked_add(1).ok_or_else(|| {
            StepError::Io(format!(
                "{}: generation {} cannot grow; the file is damaged (set it to the number of resets, or remove \
                 the collector's state)",
                st.dir.join("generation").display(),
                st.generation
            ))
        })?;
        let msg = format!(
            "shard {shard}: cursor {} points at segment {} record {}, {why}: \
             the journal was reset (its shard directory wiped?) while this collector's state was kept; dropping \
             its batch logs and delivering again from segment {first} record 0, under the key base \"{}\"",
            st.dir.join("cursor").display(),
            at.segment,
            at.index,
            self.key_bases.current_for(generation),
        );
        eprintln!("tracker: collector {}: {msg}", self.name);
        *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = msg;
        // The new journal's segments are numbered from 1 again, so its ranges repeat the old
        // one's: its batches get a key base of their own, or a destination that dedupes on keys
        // (the banker) would take them for the old batches and drop them. Generation first,
        // then batch logs, then the cursor: a crash in between finds the same cursor and does
        // this again (one more generation, still a new base), never a moved cursor with the
        // old logs or the old base.
        cursor::write_generation(&st.dir, generation).map_err(|e| StepError::Io(e.to_string()))?;
        st.generation = generation;
        cursor::remove_batches_below(&st.dir, u64::MAX)
            .map_err(|e| StepError::Io(format!("remove batch logs in {}: {e}", st.dir.display())))?;
        st.recorded = None;
        st.projection = None;
        st.committed = Position { segment: first, index: 0 };
        st.stamp = None;
        // Not `persist`, which skips a cursor that did not move: from record 0 of segment 1 to
        // record 0 of the new segment 1 it did not, and the file kept the old journal's stamp.
        // Every start then found the journal "reset" again, dropped the batch logs and cut
        // the same ranges under one more key base: a banker applied them once per base.
        write_cursor(st)?;
        self.status.cursor_resets_total.fetch_add(1, Relaxed);
        Ok(true)
    }

    /// One look at one shard: extend or start its batch, send it when ready. True when
    /// anything moved.
    fn step(&mut self, shard: u16, stopping: bool) -> Result<bool, StepError> {
        let limits = self.cfg.batch;
        let st = self.shards.get_mut(&shard).expect("discovered");
        // Stopping: nothing at or past where this process's writer stopped is read. A shard it
        // did not write (a new process with more shards writes it now, or its drain never
        // finished) ends before everything (segments count from 1): nothing more is read there,
        // and the next start delivers it. Without this process's shards there is no bound.
        let end = match &self.stop_at {
            Some(ends) if stopping && !self.own_shards.is_empty() => {
                Some(ends.get(&shard).copied().unwrap_or_default())
            }
            _ => None,
        };
        if st.open.is_none() && end.is_some_and(|e| st.committed >= e) {
            return Ok(false);
        }
        let mut resolved = None;
        if st.open.is_none() {
            let Some(pos) = st.source.resolve(st.committed).map_err(|e| StepError::Io(e.to_string()))? else {
                return self.reset_if_past_every_segment(shard);
            };
            if pos == st.committed && self.reset_if_segment_recreated(shard)? {
                return Ok(true);
            }
            resolved = Some(pos);
        }
        let st = self.shards.get_mut(&shard).expect("discovered");
        if let Some(pos) = resolved {
            let moved = pos != st.committed;
            st.committed = pos;
            if st.recorded.as_ref().is_none_or(|(s, _)| *s != pos.segment) {
                let r = cursor::read_batches(&st.dir, pos.segment).map_err(|e| StepError::Io(e.to_string()))?;
                st.recorded = Some((pos.segment, SegmentBatches::new(r)));
            }
            let recorded = &st.recorded.as_ref().expect("loaded").1;
            st.open = Some(match recorded.around(pos.index) {
                // Cut before (a crash, a retry or a replay): the identical range again.
                Ok(r) => OpenBatch::new(pos.segment, r.from, Some(r.to), Some(r.base)),
                Err(next) => OpenBatch::new(pos.segment, pos.index, next, None),
            });
            if moved {
                persist(st, true)?;
            }
        }
        let b = st.open.as_mut().expect("opened above");
        if st.projection.as_ref().is_none_or(|(s, _)| *s != b.segment) {
            // resolve() opened this segment, so its schema is at hand.
            let Some(schema) = st.source.schema() else {
                st.open = None;
                return Ok(false);
            };
            st.projection = Some((b.segment, Projection::new(&schema, &self.cfg.events, &self.cfg.fields)));
        }
        let projection = &st.projection.as_ref().expect("built").1;
        let full = |b: &OpenBatch| !b.fixed() && (b.events.len() >= limits.events_max || b.bytes >= limits.bytes_max);
        let mut progressed = false;
        let limit = match end {
            Some(e) if e.segment == b.segment => Some(b.limit.map_or(e.index, |l| l.min(e.index)).max(b.to)),
            Some(e) if e.segment < b.segment => Some(b.to),
            _ => b.limit,
        };
        if !b.exhausted && !full(b) && limit != Some(b.to) {
            self.read_buf.clear();
            let tail = st
                .source
                .read(b.segment, b.to, limit, READ_STEP_RECORDS, &mut self.read_buf)
                .map_err(|e| StepError::Io(e.to_string()))?;
            // Records read but left for the next batch (this one filled up).
            let mut consumed_all = true;
            for (index, e) in self.read_buf.iter() {
                if full(b) {
                    consumed_all = false;
                    break;
                }
                if let Some(ce) = projection.project(e) {
                    b.bytes += ce.json_bytes();
                    b.events.push(ce);
                    b.first_at.get_or_insert_with(Instant::now);
                }
                b.to = index + 1;
                progressed = true;
            }
            if consumed_all && st.source.reached > b.to {
                // Slots passed without a record (a zeroed gap or a bad record of a segment the
                // writer has left): the batch covers them too, or a fixed batch whose last
                // slots they are would never reach its limit.
                b.to = st.source.reached;
                progressed = true;
            }
            if tail == Tail::Finished && consumed_all {
                b.exhausted = true;
            }
            // Waiting at a record that is not intact is not the end of the journal: the writer
            // may have written more after it, which this collector has not delivered.
            let stalled_at = st.source.stalled_at;
            st.caught_up = tail == Tail::Waiting && b.events.is_empty() && stalled_at.is_none();
            st.stalled = match (stalled_at, st.stalled.take()) {
                (None, _) => None,
                (Some(p), Some((q, since, reported))) if p == q => {
                    let due = !reported && since.elapsed() >= STALL_REPORT_AFTER;
                    if due {
                        let path = st.source.open_path().map_or_else(String::new, |p| p.display().to_string());
                        let msg = format!(
                            "shard {shard}: {path}: record {} has not been intact for {} s (damaged, or its writer is \
                             stuck): the events after it wait until the writer moves to a new segment, which skips it",
                            p.index,
                            STALL_REPORT_AFTER.as_secs()
                        );
                        eprintln!("tracker: collector {}: {msg}", self.name);
                        *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = msg;
                    }
                    Some((q, since, reported || due))
                }
                (Some(p), _) => Some((p, Instant::now(), false)),
            };
        }
        let linger = Duration::from_millis(limits.linger_ms);
        let ready = if b.fixed() {
            b.limit == Some(b.to) || b.exhausted
        } else {
            full(b)
                || b.limit == Some(b.to)
                || b.exhausted
                || b.first_at.is_some_and(|t| t.elapsed() >= linger)
                || (stopping && !b.events.is_empty())
        };
        if !ready {
            // Only records of other types so far: move the cursor over them now.
            if b.events.is_empty() && b.to > b.from && !b.fixed() {
                st.committed = Position { segment: b.segment, index: b.to };
                let (segment, to, limit) = (b.segment, b.to, b.limit);
                st.open = Some(OpenBatch::new(segment, to, limit, None));
                persist(st, false)?;
            }
            return Ok(progressed);
        }
        let b = st.open.take().expect("open");
        if b.events.is_empty() {
            st.committed = Position { segment: b.segment, index: b.to };
        } else {
            let base = if let Some(id) = b.recorded {
                self.key_bases.name(id).map_err(StepError::Io)?
            } else {
                // The range and its key base are on disk before the first attempt: a restart
                // cuts the same batch under the same key.
                let base = self.key_bases.current_for(st.generation);
                let id = match self.key_bases.current_id(&base) {
                    Ok(id) => id,
                    Err(KeyBaseError::Io(e)) => return Err(StepError::Io(e)),
                    // The config names a base no batch may be keyed under: retrying cannot
                    // change that, so the collector stops like on a destination's Fatal.
                    Err(KeyBaseError::Clash(why)) => {
                        eprintln!(
                            "tracker: collector {}: fatal: {why}; stopped (the journal keeps the events; fix and \
                             restart)",
                            self.name
                        );
                        // As a destination's Fatal leaves it: stopped, not retrying, and the
                        // batch's events waiting (their pending age grows).
                        let oldest = b.events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
                        self.status.pending_oldest_ns.store(oldest.max(1), Relaxed);
                        *self.status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
                        self.status.retrying.store(false, Relaxed);
                        self.status.failed.store(true, SeqCst);
                        return Err(StepError::Halt(Halt::Fatal));
                    }
                };
                let (s, r) = st.recorded.as_mut().expect("loaded when the batch was opened");
                debug_assert_eq!(*s, b.segment);
                let entry = Recorded { from: b.from, to: b.to, base: id };
                cursor::append_batch(&st.dir, b.segment, r.len(), entry).map_err(|e| StepError::Io(e.to_string()))?;
                r.push(entry);
                base
            };
            // A recorded range sent again keeps the key it was first sent under, `[from, limit)`,
            // even when its segment now ends before `limit` (a power loss undid records the
            // first send had read): a shorter key would be a new batch to the destination, and
            // the part of the range it applied the first time would be applied again. Under its
            // own key the destination answers it as the changed body it is (superseded).
            let key_to = if b.fixed() { b.limit.unwrap_or(b.to) } else { b.to };
            let mut batch = Batch {
                key: format!("{base}:{shard}:{}:{}-{key_to}", b.segment, b.from),
                collector: self.name.clone(),
                shard,
                segment: b.segment,
                from: b.from,
                to: b.to,
                attempt: 0,
                sent_before: b.fixed(),
                events: b.events,
            };
            let newest = batch.events.iter().map(|e| e.ts_ns).max().unwrap_or(0);
            let oldest = batch.events.iter().map(|e| e.ts_ns).min().unwrap_or(0);
            let n = batch.events.len() as u64;
            let started = Instant::now();
            self.status.pending_oldest_ns.store(oldest.max(1), Relaxed);
            let delivered =
                deliver(&mut *self.collector, &mut batch, &self.cfg, &self.status, &self.stop, &mut self.rng);
            // A stopped (fatal) collector keeps its pending age growing: its events wait.
            if !matches!(delivered, Err(Halt::Fatal)) {
                self.status.pending_oldest_ns.store(0, Relaxed);
            } else if b.recorded.is_none() && batch.attempt == 1 {
                // Refused the first time it was ever sent: nothing of it was applied (a 409 here
                // is another tracker's body under this key). Forget the cut, so the fix the
                // error asks for (a key_prefix of its own) applies to this range too; keeping it
                // would send it under the old key again and take the next 409 as superseded.
                // Not after a failed earlier attempt: a timed-out one may have been applied, and
                // then this range must keep its key.
                let st = self.shards.get_mut(&shard).expect("discovered");
                let (_, r) = st.recorded.as_mut().expect("loaded when the batch was opened");
                match cursor::drop_last_batch(&st.dir, b.segment, r.len() - 1) {
                    Ok(()) => r.remove(b.from),
                    Err(e) => eprintln!(
                        "tracker: collector {}: could not drop the refused batch from the batch log ({e}); \
                         remove the last entry of {} by hand before restarting",
                        self.name,
                        st.dir.display()
                    ),
                }
            }
            delivered.map_err(StepError::Halt)?;
            if !self.own_shards.is_empty() {
                self.latency.entry(shard).or_default().record(started.elapsed().as_nanos() as u64);
            }
            self.status.events_total.fetch_add(n, Relaxed);
            self.status.batches_total.fetch_add(1, Relaxed);
            self.status.acked_event_ns.fetch_max(newest, Relaxed);
            let now_ns =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            self.status.ack_lag_ns.store(now_ns.saturating_sub(oldest), Relaxed);
            let st = self.shards.get_mut(&shard).expect("discovered");
            st.committed = Position { segment: b.segment, index: b.to };
        }
        let st = self.shards.get_mut(&shard).expect("discovered");
        if b.exhausted {
            // The writer left this segment and every record of it is delivered.
            st.committed = Position { segment: b.segment + 1, index: 0 };
        }
        persist(st, true)?;
        Ok(true)
    }
}

/// The key bases (`<key_prefix>:<name>`) of one collector: the current one from the config and
/// those recorded batches were sent under (`cursor.rs`, `key_bases`), loaded at first use.
struct KeyBases {
    dir: PathBuf,
    current: String,
    /// What logs from before key bases were sent under: this config's base, or the old
    /// default's when the config sets no `key_prefix` (the default then was not the journal's).
    legacy: String,
    known: Option<BTreeMap<u32, String>>,
    /// A recorded batch named an id missing from the file; said once.
    missing_logged: bool,
}

impl KeyBases {
    /// `journal_prefix`: the journal's own (`cursor::default_key_prefix`), for a config with
    /// no `key_prefix`.
    fn new(journal: &Path, cfg: &CollectorConfig, journal_prefix: Option<&str>) -> KeyBases {
        let prefix = cfg.key_prefix.as_deref().or(journal_prefix).unwrap_or(cursor::OLD_DEFAULT_KEY_PREFIX);
        let legacy = cfg.key_prefix.as_deref().unwrap_or(cursor::OLD_DEFAULT_KEY_PREFIX);
        KeyBases {
            dir: cursor::collector_dir(journal, &cfg.name),
            current: format!("{prefix}:{}", cfg.name),
            legacy: format!("{legacy}:{}", cfg.name),
            known: None,
            missing_logged: false,
        }
    }

    /// The bases on disk, loaded at first use. A collector directory without a legacy base
    /// gets `legacy` as that, first: logs written before bases were recorded were written
    /// under the config of then, which is the config now unless it changed together with the
    /// upgrade (docs/collectors.md says to upgrade first).
    fn known(&mut self) -> Result<&mut BTreeMap<u32, String>, String> {
        if self.known.is_none() {
            let mut read = cursor::read_key_bases(&self.dir).map_err(|e| e.to_string())?;
            if let std::collections::btree_map::Entry::Vacant(legacy) = read.entry(cursor::LEGACY_BASE_ID) {
                cursor::add_key_base(&self.dir, cursor::LEGACY_BASE_ID, &self.legacy).map_err(|e| e.to_string())?;
                legacy.insert(self.legacy.clone());
            }
            self.known = Some(read);
        }
        Ok(self.known.as_mut().expect("loaded above"))
    }

    /// The base new batches of a shard are sent under: the current one, or, once the shard's
    /// journal was found reset `generation` times, `<current>/journal-<generation>` (the new
    /// journal's segment numbers, and so its ranges, repeat the old one's).
    fn current_for(&self, generation: u64) -> String {
        match generation {
            0 => self.current.clone(),
            g => format!("{}/journal-{g}", self.current),
        }
    }

    /// The id of `current` (from [`KeyBases::current_for`]), written to `key_bases` first if
    /// it is new.
    fn current_id(&mut self, current: &str) -> Result<u32, KeyBaseError> {
        let id = cursor::key_base_id(current);
        let current = current.to_string();
        match self.known().map_err(KeyBaseError::Io)?.get(&id) {
            Some(b) if *b == current => {}
            Some(other) => {
                // Two bases with one CRC32C: entries could not tell them apart.
                return Err(KeyBaseError::Clash(format!(
                    "key base \"{current}\" has the id {id:08x} of the recorded \"{other}\"; choose another key_prefix"
                )));
            }
            None => {
                cursor::add_key_base(&self.dir, id, &current).map_err(|e| KeyBaseError::Io(e.to_string()))?;
                self.known().map_err(KeyBaseError::Io)?.insert(id, current);
            }
        }
        Ok(id)
    }

    /// The base a recorded batch was sent under, by its id (the legacy base for entries from
    /// before bases), or the current one when `key_bases` lost the id (said once).
    fn name(&mut self, id: u32) -> Result<String, String> {
        if let Some(b) = self.known()?.get(&id) {
            return Ok(b.clone());
        }
        if !self.missing_logged {
            eprintln!(
                "tracker: collector: key base {id:08x} of a recorded batch is missing from {}; \
                 sending it under the current \"{}\" (a destination may apply it twice)",
                self.dir.join("key_bases").display(),
                self.current
            );
            self.missing_logged = true;
        }
        Ok(self.current.clone())
    }
}

enum KeyBaseError {
    /// Reading or writing `key_bases` failed: retried.
    Io(String),
    /// The base's id is a recorded other base's: for good, until the config changes.
    Clash(String),
}

enum StepError {
    Halt(Halt),
    Io(String),
}

impl OpenBatch {
    fn fixed(&self) -> bool {
        self.recorded.is_some()
    }

    /// `recorded`: the key base id of a recorded batch sent again (then `limit` is its end).
    fn new(segment: u64, from: u32, limit: Option<u32>, recorded: Option<u32>) -> OpenBatch {
        OpenBatch {
            segment,
            from,
            to: from,
            limit,
            recorded,
            events: Vec::new(),
            bytes: 0,
            first_at: None,
            exhausted: false,
        }
    }
}

/// Writes the shard's cursor when it moved: always when `now`, else at most every second.
fn persist(st: &mut ShardState, now: bool) -> Result<(), StepError> {
    if st.committed == st.persisted || (!now && st.persisted_at.elapsed() < CURSOR_PERSIST_EVERY) {
        return Ok(());
    }
    write_cursor(st)
}

/// Writes the cursor at `committed`, whether or not it moved: a reset must replace the old
/// journal's stamp even when the position reads the same (record 0 of segment 1).
fn write_cursor(st: &mut ShardState) -> Result<(), StepError> {
    // The error names the cursor file (`write …/shard-NNN/cursor: …`). The stamp is read from
    // the disk only when the cursor moved to record 0 of the segment after a finished one (the
    // source is still on that one): the cursor needs its segment's time from the first write,
    // or a journal wiped and regrown past that number before the next start would go unnoticed.
    let created = st.source.created_ns_on_disk(st.committed.segment);
    cursor::write_cursor_stamped(&st.dir, st.committed, created).map_err(|e| StepError::Io(e.to_string()))?;
    (st.persisted, st.stamp) = (st.committed, created);
    st.persisted_at = Instant::now();
    Ok(())
}

/// Delivers `batch` until it is acknowledged: retriable failures wait a capped exponential
/// backoff with jitter (interrupted by stop); a fatal one stops the collector.
fn deliver(
    collector: &mut dyn Collector,
    batch: &mut Batch,
    cfg: &CollectorConfig,
    status: &CollectorStatus,
    stop: &AtomicBool,
    rng: &mut Xorshift64,
) -> Result<(), Halt> {
    let mut wait_ms = cfg.retry.initial_ms;
    loop {
        batch.attempt += 1;
        match collector.deliver(batch) {
            Delivery::Acked => {
                status.retrying.store(false, Relaxed);
                return Ok(());
            }
            Delivery::Superseded(why) => {
                eprintln!("tracker: collector {}: batch {} superseded, moving on: {why}", cfg.name, batch.key);
                status.superseded_total.fetch_add(1, Relaxed);
                status.retrying.store(false, Relaxed);
                return Ok(());
            }
            Delivery::Fatal(why) => {
                eprintln!(
                    "tracker: collector {}: fatal: {why}; stopped at batch {} (the journal keeps the events; fix and restart)",
                    cfg.name, batch.key
                );
                *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
                status.retrying.store(false, Relaxed);
                status.failed.store(true, SeqCst);
                return Err(Halt::Fatal);
            }
            Delivery::Retry(why) => {
                status.retries_total.fetch_add(1, Relaxed);
                status.retrying.store(true, Relaxed);
                if batch.attempt == 1 || batch.attempt.is_power_of_two() {
                    eprintln!(
                        "tracker: collector {}: batch {} attempt {} failed, retrying: {why}",
                        cfg.name, batch.key, batch.attempt
                    );
                }
                *status.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why;
                if stop.load(SeqCst) {
                    return Err(Halt::Stopped);
                }
                let jitter = wait_ms * cfg.retry.jitter_percent as u64 / 100;
                let sleep = wait_ms - if jitter > 0 { rng.below(jitter + 1) } else { 0 };
                let until = Instant::now() + Duration::from_millis(sleep);
                while Instant::now() < until {
                    if stop.load(SeqCst) {
                        return Err(Halt::Stopped);
                    }
                    std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
                }
                wait_ms = (wait_ms * 2).min(cfg.retry.max_ms);
            }
        }
    }
}
