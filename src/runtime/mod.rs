//! Start-up and shutdown: one io_uring reactor thread per shard (pinned, owning its listener,
//! ring producer and connection buffers) and one journal drain thread per shard.
//!
//! Crossings between threads, all named here:
//! - reactor → drain: the shard's ring (events) and `drain_sleeping`/unpark (wake-up);
//! - drain → reactor: `journaled` (how far the journal got) and the shard's eventfd (wake-up);
//! - control (signals, tests) → reactors: `stop` and the eventfd;
//! - reload thread → reactor → drain: a new config per generation (`reload.rs`);
//! - reactor → watchdog thread: `heartbeat` (`notify.rs`);
//! - reactor ↔ reactor: the shared dedup and budget tables (`crate::dedup`,
//!   `crate::enrich::budget`; atomics only);
//! - drain → other reactors: `journaled`, `journal_failing` and the ring's pushed count, polled
//!   by a duplicate on a `logged` endpoint waiting for its first copy on this shard
//!   (`ShardCtx::journaled_elsewhere`).
//!
//! Shutdown order (SIGTERM/SIGINT or `Running::stop`): reactors stop accepting, finish the
//! requests they hold, close connections and exit; then each drain empties its ring into the
//! journal, syncs and exits. Nothing acknowledged is lost.

mod cgroup;
mod drain;
pub mod handoff;
pub mod notify;
pub mod reload;
pub mod shard;

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crate::config::Config;
use crate::constants::{ENDPOINTS_MAX, EVENT_TYPES_MAX};
use crate::dedup::Dedup;
use crate::metrics::{CounterLabels, ShardCounters};

/// State of one shard that other threads may touch. Everything else of a shard lives on its
/// reactor thread.
pub struct ShardShared {
    pub index: u16,
    pub counters: ShardCounters,
    /// Sequence number of the last event of this shard in the journal.
    journaled: AtomicU64,
    /// Where the drain left the journal when it stopped (`ShardJournal::end`): set once, before
    /// the journal's lock is let go. Collectors stopping with this process deliver up to here
    /// and no further: past it are a new process's records (a zero-downtime restart), which
    /// that process's collectors deliver.
    journal_end: std::sync::Mutex<Option<(u64, u32)>>,
    /// The reactor has `ack = "logged"` requests waiting: the drain must signal the eventfd.
    want_wake: AtomicBool,
    /// Wakes the reactor's control task (journal progress, stop).
    eventfd: OwnedFd,
    pub drain_sleeping: AtomicBool,
    drain_thread: OnceLock<Thread>,
    pub reactor_done: AtomicBool,
    /// The drain's last journal append failed (disk full at rotation, an I/O error) and it is
    /// retrying: `logged` endpoints answer 503, waiting `logged` responses are not sent, and
    /// readiness is false, until an append succeeds.
    journal_failing: AtomicBool,
    /// The drain has taken none of the events waiting in the ring for `journal.stall_timeout_ms`
    /// (a disk that hangs without failing: the drain waits in a syscall and reports nothing).
    /// Set and cleared by the reactor (`shard::StallWatch`); to `logged` endpoints and
    /// readiness it is the same as `journal_failing`.
    journal_stalled: AtomicBool,
    /// How many `journal_failing` and `journal_stalled` flags of this server's shards are set;
    /// one counter shared by all of them (see `any_journal_unavailable`).
    journal_flags_set: Arc<AtomicUsize>,
    /// Events still in the ring when the drain gave up at shutdown on a journal that kept
    /// failing: acknowledged as received, never written. Non-zero makes the process exit 1.
    pub events_lost: AtomicU64,
    /// The drain's last sync at shutdown failed: every event is in the segment (page cache), but
    /// the disk may not have all of them. Makes the process exit 1.
    final_sync_failed: AtomicBool,
    /// The reactor panicked (`shard::run`): the server stopped itself, and the process exits 1.
    reactor_panicked: AtomicBool,
    /// Bumped by the reactor every `notify::HEARTBEAT_PERIOD`; the watchdog pings systemd only
    /// while every shard's moves.
    heartbeat: AtomicU64,
    /// `clock::mono_coarse_ms` at the last heartbeat (0: none yet): the admin's `/health` fails
    /// when a reactor has not turned for `notify::HEALTH_STALL` (no systemd watchdog in a
    /// container).
    heartbeat_ms: AtomicU64,
    /// Configs handed over by a reload, to the reactor and then the drain.
    pub reload: reload::ShardReload,
}

impl ShardShared {
    fn new(index: u16, counters: ShardCounters, journal_flags_set: Arc<AtomicUsize>) -> io::Result<ShardShared> {
        // SAFETY: eventfd returns a new descriptor we own, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ShardShared {
            index,
            counters,
            journaled: AtomicU64::new(0),
            journal_end: std::sync::Mutex::new(None),
            want_wake: AtomicBool::new(false),
            // SAFETY: fd is a fresh descriptor owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            drain_sleeping: AtomicBool::new(false),
            drain_thread: OnceLock::new(),
            reactor_done: AtomicBool::new(false),
            journal_failing: AtomicBool::new(false),
            journal_stalled: AtomicBool::new(false),
            journal_flags_set,
            events_lost: AtomicU64::new(0),
            final_sync_failed: AtomicBool::new(false),
            reactor_panicked: AtomicBool::new(false),
            heartbeat: AtomicU64::new(0),
            heartbeat_ms: AtomicU64::new(0),
            reload: reload::ShardReload::default(),
        })
    }

    /// Drain side: events up to `seq` are in the journal.
    pub fn publish_journaled(&self, seq: u64) {
        self.journaled.store(seq, SeqCst);
        // Pairs with the reactor's store of want_wake then load of journaled (Dekker): either it
        // sees our seq, or we see its request for a wake-up.
        if self.want_wake.load(SeqCst) {
            self.wake_reactor();
        }
    }

    pub fn journaled(&self) -> u64 {
        self.journaled.load(SeqCst)
    }

    /// Drain side, at its stop: the journal's end (segment, next slot index).
    pub fn set_journal_end(&self, end: (u64, u32)) {
        *self.journal_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(end);
    }

    /// The journal's end as the drain left it at its stop; `None` while it runs.
    pub fn journal_end(&self) -> Option<(u64, u32)> {
        *self.journal_end.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn journal_failing(&self) -> bool {
        self.journal_failing.load(Relaxed)
    }

    pub fn journal_stalled(&self) -> bool {
        self.journal_stalled.load(Relaxed)
    }

    /// Failing or stalled: events waiting for this journal may never be written, or not soon.
    pub fn journal_unavailable(&self) -> bool {
        self.journal_failing() || self.journal_stalled()
    }

    /// Drain side: the journal failed or recovered. A change wakes the reactor, whose waiting
    /// `logged` connections must learn that their events may never be written.
    pub fn set_journal_failing(&self, failing: bool) {
        if self.set_flag(&self.journal_failing, failing) {
            self.wake_reactor();
        }
    }

    /// Reactor side: the journal stalled or moved again (`shard::StallWatch`). The reactor
    /// wakes its own waiting connections.
    pub fn set_journal_stalled(&self, stalled: bool) -> bool {
        self.set_flag(&self.journal_stalled, stalled)
    }

    /// Sets `flag` and keeps the server's count of set flags; true when it changed.
    fn set_flag(&self, flag: &AtomicBool, on: bool) -> bool {
        let changed = flag.swap(on, SeqCst) != on;
        if changed {
            if on {
                self.journal_flags_set.fetch_add(1, SeqCst);
            } else {
                self.journal_flags_set.fetch_sub(1, SeqCst);
            }
        }
        changed
    }

    /// Some shard's journal of this server is failing or stalled, this one's or another's. `logged`
    /// endpoints refuse while it is: the dedup window is shared by all shards, so a retried
    /// event whose first copy is stuck in a failing journal would otherwise be answered as a
    /// duplicate (2xx) by a healthy shard, for an event that may never be written.
    pub fn any_journal_unavailable(&self) -> bool {
        self.journal_flags_set.load(Relaxed) > 0
    }

    pub fn reactor_panicked(&self) -> bool {
        self.reactor_panicked.load(SeqCst)
    }

    /// The drain's final sync at shutdown failed (`drain::run`).
    pub fn final_sync_failed(&self) -> bool {
        self.final_sync_failed.load(SeqCst)
    }

    pub fn heartbeat(&self) -> u64 {
        self.heartbeat.load(Relaxed)
    }

    /// Reactor side, at each heartbeat.
    pub fn beat(&self, now_ms: u64) {
        self.heartbeat.fetch_add(1, Relaxed);
        self.heartbeat_ms.store(now_ms, Relaxed);
    }

    /// How long this shard's reactor has not turned, at `now_ms` (`clock::mono_coarse_ms`):
    /// None before its first heartbeat and once it has stopped.
    pub fn not_turned_for_ms(&self, now_ms: u64) -> Option<u64> {
        let at = self.heartbeat_ms.load(Relaxed);
        (at != 0 && !self.reactor_done.load(SeqCst)).then(|| now_ms.saturating_sub(at))
    }

    pub fn wake_reactor(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd; a full counter (EAGAIN) cannot
        // happen with blocking writes of 1 before 2^64 - 2 unread wake-ups.
        unsafe { libc::write(self.eventfd.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Reactor side, once per batch of pushed events. `urgent` (a response waits for the
    /// journal, or the ring is filling up) always wakes the drain; otherwise only a drain in deep
    /// sleep is woken, and a napping drain picks the events up within DRAIN_NAP. This keeps the
    /// cost of a `received` pixel free of a futex wake and a context switch per request.
    #[inline]
    pub fn notify_drain(&self, urgent: bool) {
        if !urgent {
            // Pairs with the drain's store of drain_sleeping then re-check of the ring.
            fence(SeqCst);
            if !self.drain_sleeping.load(SeqCst) {
                return;
            }
        }
        if let Some(t) = self.drain_thread.get() {
            t.unpark();
        }
    }
}

/// A started server: its address, and the handles to stop it and wait for it.
pub struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    shards: Vec<Arc<ShardShared>>,
    threads: Vec<JoinHandle<()>>,
    /// The counter slot of every endpoint path and type name served, kept across reloads.
    labels: Arc<CounterLabels>,
    /// The dedup window shared by the shards; None when `dedup.window_ms = 0`.
    dedup: Option<Arc<Dedup>>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn shards(&self) -> &[Arc<ShardShared>] {
        &self.shards
    }

    /// The labels of the shards' counters (admin renders them; a reload assigns from them).
    pub fn counter_labels(&self) -> Arc<CounterLabels> {
        self.labels.clone()
    }

    /// The shared dedup window (admin reads its eviction count); None when dedup is off.
    pub fn dedup(&self) -> Option<Arc<Dedup>> {
        self.dedup.clone()
    }

    /// True once shutdown has begun (reactors stop accepting), for threads that outlive a borrow
    /// of `Running` (admin readiness).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Begins graceful shutdown (idempotent, callable from any thread via `stopper`).
    pub fn stop(&self) {
        stop_all(&self.stop, &self.shards);
    }

    /// A handle that can stop the server from another thread (signal handler thread).
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let (stop, shards) = (self.stop.clone(), self.shards.clone());
        move || stop_all(&stop, &shards)
    }

    /// Waits until every reactor and drain has exited. Events a shard pushed that its journal
    /// never took are counted in `events_lost` (the drain counts them itself when the journal
    /// fails at the stop; a drain that panicked, in a build that unwinds, cannot).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
        for s in &self.shards {
            // After a failed sync under `always`, `journaled` stops where durability was last
            // known while the drain goes on appending: the events after it are in the segment,
            // not lost, and the failed sync has its own message and exit code.
            if s.final_sync_failed() || s.journal_failing() {
                continue;
            }
            let pushed = s.counters.ring.get().map_or(0, |w| w.pushed());
            let left = pushed.saturating_sub(s.journaled());
            if left > s.events_lost.load(SeqCst) {
                eprintln!(
                    "tracker: shard {}: {left} event(s) acknowledged as received never reached the journal (its \
                     drain ended early; see above)",
                    s.index
                );
                s.events_lost.store(left, SeqCst);
            }
        }
    }
}

fn stop_all(stop: &AtomicBool, shards: &[Arc<ShardShared>]) {
    stop.store(true, SeqCst);
    for s in shards {
        s.wake_reactor();
    }
}

/// A start that failed after some shards were spawned: stops them (they drain what they took)
/// and waits for every thread, so nothing acknowledged is left behind in a ring.
fn abandon_start(
    stop: &AtomicBool,
    shards: &[Arc<ShardShared>],
    threads: Vec<JoinHandle<()>>,
    why: String,
) -> StartError {
    stop_all(stop, shards);
    for t in threads {
        let _ = t.join();
    }
    StartError::new(why)
}

/// Start-up failures, each with what to do about it.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    /// The start was called off by `start_with`'s `cancelled` (a stop asked for while waiting
    /// for another process's journal lock), not failed: the caller may exit as from a stop.
    pub cancelled: bool,
}

impl StartError {
    pub fn new(message: impl Into<String>) -> StartError {
        StartError { message: message.into(), cancelled: false }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

/// Refuses a start whose connection buffers could not fit in memory when every allowed
/// connection fills them: each shard allocates buffers for `connections_per_shard_max`
/// connections up front, and their pages are touched as connections use them, so such a
/// config (a raised body_bytes_max, a typo in the connection count) ends in the OOM killer,
/// which may pick another process of the machine, not in an error. 1 << 20 connections of
/// 16 MiB bodies, both in bounds, took 24 GiB of memory before the buffers were all made.
fn check_connection_memory(s: &crate::config::Server, shards: usize, memory: Option<u64>) -> Result<(), StartError> {
    let Some(memory) = memory else { return Ok(()) };
    let per_connection = crate::net::connection::buffer_bytes(s) as u64;
    let total = per_connection.saturating_mul(s.connections_per_shard_max as u64).saturating_mul(shards as u64);
    if total <= memory {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(StartError::new(format!(
        "connection buffers need up to {:.1} GiB ({shards} shard(s) × server.connections_per_shard_max {} × {per_connection} bytes: header_bytes_max + 2 × body_bytes_max + the write buffer), more than this machine's {:.1} GiB of memory (or its cgroup's memory.max); lower server.connections_per_shard_max or server.body_bytes_max",
        gib(total),
        s.connections_per_shard_max,
        gib(memory)
    )))
}

/// The warning for a dedup window on a CPU without a lock-free 128-bit compare-exchange
/// (x86-64: CMPXCHG16B): its 16-byte entries then go through portable-atomic's striped
/// seqlocks (src/dedup.rs). Correct, and a lock on the request path: said at start, not refused,
/// since the embedded default has the window on and such CPUs are mostly VMs given a bare CPU
/// model (`qemu64`), where the operator can fix it.
fn dedup_lock_warning(d: &crate::config::DedupConfig, lock_free: bool) -> Option<&'static str> {
    if d.window_ms == 0 || lock_free {
        return None;
    }
    Some(
        "tracker: warning: this CPU reports no 128-bit compare-exchange (x86-64: CMPXCHG16B), so every dedup lookup takes a striped lock shared by all shards; give the VM a CPU model with it (x86-64-v2 or later, e.g. `-cpu host`), or set dedup.window_ms = 0 to turn the window off",
    )
}

/// Physical memory (sysconf), None where it cannot be told.
fn physical_memory_bytes() -> Option<u64> {
    // SAFETY: sysconf reads system parameters; no memory is involved.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// The CPUs shards pin to: the process's affinity mask, in order.
pub fn allowed_cpus() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Starts every shard and drain; returns once all reactors listen (or the first start error).
pub fn start(cfg: Config) -> Result<Running, StartError> {
    start_with(cfg, &|_| {}, &|| false)
}

/// [`start`], telling `status` what it waits for (the systemd STATUS= line) and giving up the
/// wait for another process's journal locks once `cancelled` says so (a stop during start-up).
pub fn start_with(cfg: Config, status: &dyn Fn(&str), cancelled: &dyn Fn() -> bool) -> Result<Running, StartError> {
    let cpus = allowed_cpus();
    let shards = match cfg.server.shards {
        0 => {
            let quota = cgroup::cpu_limit();
            let n = cpus.len().max(1).min(quota.unwrap_or(usize::MAX));
            if n < cpus.len() {
                eprintln!(
                    "tracker: shards = 0: {n} shard(s), the cgroup's CPU quota (cpu.max), though {} CPUs are allowed",
                    cpus.len()
                );
            }
            n
        }
        n => n,
    };
    if !cpus.is_empty() && shards > cpus.len() {
        eprintln!("tracker: {shards} shards on {} allowed CPUs: shards share CPUs round-robin", cpus.len());
    }
    let memory = match (physical_memory_bytes(), cgroup::memory_limit()) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    };
    check_connection_memory(&cfg.server, shards, memory)?;
    if let Some(w) = dedup_lock_warning(&cfg.dedup, crate::dedup::lock_free()) {
        eprintln!("{w}");
    }
    let listeners = crate::net::listener::bind_shards(cfg.server.listen, shards)
        .map_err(|e| StartError::new(format!("cannot listen on {}: {e}", cfg.server.listen)))?;
    let addr = listeners[0].local_addr().map_err(|e| StartError::new(format!("listener address: {e}")))?;
    crate::journal::create_dir_durable(&cfg.journal.dir)
        .map_err(|e| StartError::new(format!("cannot create journal directory {}: {e}", cfg.journal.dir.display())))?;

    if cfg.privacy.user_id_fields.iter().any(|&m| m != 0) && !cfg.privacy.hash_key_from_file {
        eprintln!("tracker: privacy.hash_key_file is not set: user ids are hashed with a random key made now, so their hashes change at every restart");
    }
    let mut cfg = cfg;
    let labels = Arc::new(CounterLabels::default());
    // The first config always fits: the validator caps endpoints and types at the counters' size.
    labels.assign(&mut cfg).map_err(StartError::new)?;
    let cfg = Arc::new(cfg);
    let stop = Arc::new(AtomicBool::new(false));
    // The dedup window, budgets and per-prefix connection counts: one table each, shared by all
    // shards, allocated now.
    let tables = shard::SharedTables::new(&cfg);
    // Every shard's journal first, before any shard serves: a shard that cannot open (its lock
    // still held after the wait, a full disk) fails the start with nothing acknowledged yet.
    // One deadline for all shards, so the whole wait is JOURNAL_LOCK_WAIT however many there are.
    let deadline = std::time::Instant::now() + handoff::JOURNAL_LOCK_WAIT;
    let mut opened = Vec::with_capacity(shards);
    let journal_flags_set = Arc::new(AtomicUsize::new(0));
    // Filled before any shard is spawned; a reactor that panics stops them all through it.
    let peers = Arc::new(OnceLock::new());
    for (i, listener) in listeners.into_iter().enumerate() {
        let index = i as u16;
        // Sized for the most endpoints and types any config may have, so a reload that adds
        // some never resizes (or locks) a counter array under the reactors.
        let sh = Arc::new(
            ShardShared::new(index, ShardCounters::new(ENDPOINTS_MAX, EVENT_TYPES_MAX), journal_flags_set.clone())
                .map_err(|e| StartError::new(format!("shard {i}: eventfd: {e}")))?,
        );
        let (journal, report) = handoff::open_journal(&cfg, index, addr, status, deadline, cancelled)
            .map_err(|e| StartError { message: format!("shard {i}: {e}"), cancelled: handoff::is_cancelled(&e) })?;
        // Before the last segment's lines: a .seg.tmp put back into place is that segment.
        for note in &report.notes {
            eprintln!("tracker: shard {i}: journal: {note}");
        }
        if report.torn_records > 0 {
            eprintln!(
                "tracker: shard {i}: journal segment {} had a torn tail: {} records ({} bytes) dropped, {} intact kept",
                report.last_segment, report.torn_records, report.torn_bytes, report.records
            );
            sh.counters.journal_torn_records.fetch_add(report.torn_records, SeqCst);
        }
        if let Some(why) = report.new_segment_reason {
            eprintln!("tracker: shard {i}: journal starts segment {}: {why}", journal.segment_number());
        }
        if let Some(detail) = &report.detail {
            eprintln!("tracker: shard {i}: journal: {detail}");
        }
        opened.push((sh, journal, listener));
    }

    // Every shard's ring, and the list of shards, before any reactor serves: a duplicate on a
    // `logged` endpoint waits for its first copy on another shard, read through the list and
    // that shard's ring count (`ShardCtx::first_copy_pending`).
    let rings: Vec<_> = opened
        .iter()
        .map(|(sh, ..)| {
            let (producer, consumer) = crate::ring::ring(cfg.server.ring_events);
            let _ = sh.counters.ring.set(producer.watch());
            (producer, consumer)
        })
        .collect();
    let _ = peers.set(opened.iter().map(|(sh, ..)| sh.clone()).collect::<Vec<_>>());
    let mut shared = Vec::new();
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    for (i, ((sh, journal, listener), (producer, consumer))) in opened.into_iter().zip(rings).enumerate() {
        let (d_sh, sync, interval) =
            (sh.clone(), cfg.journal.sync, Duration::from_millis(cfg.journal.sync_interval_ms));
        let publish = Duration::from_millis(cfg.admin.publish_interval_ms);
        let drain = std::thread::Builder::new()
            .name(format!("tracker-drain-{i}"))
            .spawn(move || drain::run(d_sh, consumer, journal, sync, interval, publish));
        let drain = match drain {
            Ok(t) => t,
            Err(e) => return Err(abandon_start(&stop, &shared, threads, format!("spawn drain thread: {e}"))),
        };
        let _ = sh.drain_thread.set(drain.thread().clone());
        threads.push(drain);
        shared.push(sh.clone());

        let cpu = if cpus.is_empty() { None } else { Some(cpus[i % cpus.len()]) };
        let args = shard::ShardArgs {
            cfg: cfg.clone(),
            shared: sh.clone(),
            stop: stop.clone(),
            producer,
            listener,
            cpu,
            tables: tables.clone(),
            peers: peers.clone(),
        };
        let tx = ready_tx.clone();
        match std::thread::Builder::new().name(format!("tracker-shard-{i}")).spawn(move || shard::run(args, tx)) {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Its drain runs until told that no reactor will feed it.
                sh.reactor_done.store(true, SeqCst);
                return Err(abandon_start(&stop, &shared, threads, format!("spawn shard thread: {e}")));
            }
        }
    }
    drop(ready_tx);
    let running = Running { addr, stop, shards: shared, threads, labels, dedup: tables.dedup };
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                running.stop();
                running.wait();
                return Err(StartError::new(e));
            }
            Err(_) => {
                running.stop();
                running.wait();
                return Err(StartError::new("a shard thread exited during start-up"));
            }
        }
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_memory_is_checked_against_the_worst_case_of_every_shard() {
        let mut s = Config::embedded().server;
        s.connections_per_shard_max = 1000;
        let per = crate::net::connection::buffer_bytes(&s) as u64;
        assert!(check_connection_memory(&s, 2, Some(2000 * per)).is_ok());
        let e = check_connection_memory(&s, 2, Some(2000 * per - 1)).unwrap_err().to_string();
        assert!(e.contains("2 shard(s) × server.connections_per_shard_max 1000"), "{e}");
        assert!(check_connection_memory(&s, 64, None).is_ok());
    }

    #[test]
    fn a_dedup_window_without_lock_free_128_bit_atomics_is_warned_of_with_the_fix() {
        let mut d = Config::embedded().dedup;
        assert!(d.window_ms > 0);
        assert!(dedup_lock_warning(&d, true).is_none());
        let w = dedup_lock_warning(&d, false).expect("a warning");
        assert!(w.contains("CMPXCHG16B") && w.contains("dedup.window_ms = 0"), "{w}");
        d.window_ms = 0;
        assert!(dedup_lock_warning(&d, false).is_none(), "no window, no table, nothing to say");
    }

    /// A shard with a ring of 16 events, `pushed` of them pushed.
    fn shard_with_events(pushed: u64) -> (ShardShared, crate::ring::Producer) {
        let shared = ShardShared::new(0, ShardCounters::new(1, 1), Arc::default()).unwrap();
        let (mut producer, _consumer) = crate::ring::ring(16);
        let _ = shared.counters.ring.set(producer.watch());
        for _ in 0..pushed {
            producer.reserve().unwrap();
            producer.commit();
        }
        (shared, producer)
    }

    #[test]
    fn a_journal_is_stalled_only_while_events_wait_and_none_is_journaled_for_the_timeout() {
        let (shared, _p) = shard_with_events(0);
        let mut w = shard::StallWatch::new(0, 0);
        assert!(!w.check(&shared, 100, 1000), "nothing waits: no stall however long");
        let (shared, _p) = shard_with_events(2);
        let mut w = shard::StallWatch::new(0, 1000);
        assert!(!w.check(&shared, 100, 1099));
        assert!(!shared.journal_stalled() && !shared.any_journal_unavailable());
        assert!(w.check(&shared, 100, 1100), "two events waited 100 ms");
        assert!(shared.journal_stalled() && shared.any_journal_unavailable());
        assert!(!w.check(&shared, 100, 1200), "said once");
        assert!(shared.journal_stalled());
        // The drain moves: not stalled, and the clock starts again for the event still waiting.
        shared.publish_journaled(1);
        assert!(!w.check(&shared, 100, 1300));
        assert!(!shared.journal_stalled() && !shared.any_journal_unavailable());
        assert!(!w.check(&shared, 100, 1399));
        assert!(w.check(&shared, 100, 1400));
        shared.publish_journaled(2);
        assert!(!w.check(&shared, 100, 5000), "nothing waits");
        assert!(!shared.journal_stalled());
    }

    /// Regression: the clock of an event started at the last look, when nothing waited, so with
    /// the smallest stall_timeout_ms (100, the heartbeat) an event that arrived just before the
    /// next look made the journal stalled at once.
    #[test]
    fn an_event_that_arrives_between_two_looks_is_timed_from_the_look_that_sees_it() {
        let (shared, mut p) = shard_with_events(0);
        let mut w = shard::StallWatch::new(0, 0);
        assert!(!w.check(&shared, 100, 1000), "nothing waits");
        p.reserve().unwrap();
        p.commit();
        assert!(!w.check(&shared, 100, 1100), "waited at most since just before this look");
        assert!(!w.check(&shared, 100, 1199));
        assert!(w.check(&shared, 100, 1200), "waited 100 ms since it was seen");
    }

    #[test]
    fn a_failing_journal_is_not_also_called_stalled_and_the_count_of_flags_comes_back_to_zero() {
        let (shared, _p) = shard_with_events(1);
        let mut w = shard::StallWatch::new(0, 0);
        // Failing (e.g. `always` after a failed msync: journaled never moves again).
        shared.set_journal_failing(true);
        assert!(!w.check(&shared, 100, 10_000));
        assert!(!shared.journal_stalled() && shared.any_journal_unavailable());
        shared.set_journal_failing(false);
        assert!(!shared.any_journal_unavailable());
        assert!(w.check(&shared, 100, 10_100), "stalled once no longer failing");
        // Both set, then the drain says it fails: the stall is cleared, the failure counts.
        shared.set_journal_failing(true);
        assert!(!w.check(&shared, 100, 10_200));
        assert!(!shared.journal_stalled() && shared.journal_failing() && shared.any_journal_unavailable());
        shared.set_journal_failing(false);
        assert!(!shared.any_journal_unavailable(), "every flag cleared: the count is back to zero");
    }

    /// The machines this runs on: if this fails, the dedup window takes a lock per lookup here.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn this_machine_has_lock_free_128_bit_atomics() {
        assert!(crate::dedup::lock_free());
    }
}
