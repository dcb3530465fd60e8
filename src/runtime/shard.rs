//! One shard's reactor: a monoio io_uring runtime pinned to one CPU, with its listener, ring
//! producer, connection buffers and counters, all allocated at start and owned by this thread.
//!
//! The io_uring is built with COOP_TASKRUN | TASKRUN_FLAG: completions are processed when the
//! reactor next enters the kernel instead of interrupting it with an IPI, which measured
//! ~6.3 µs/request against ~9 µs without (perf/RESULTS.md).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::task::{Poll, Waker};

use monoio::io::Canceller;

use super::ShardShared;
use crate::config::Config;
use crate::endpoint::Routes;
use crate::enrich::budget::Admission;
use crate::extract::IdGen;
use crate::http::DateCache;
use crate::metrics::latency::LocalHistogram;
use crate::metrics::Reason;
use crate::net::connection::{self, ConnBufs};
use crate::net::deadline::{Deadlines, TICK};
use crate::ring::Producer;

/// How soon a duplicate waiting for its first copy in another shard's journal looks again
/// (`ShardCtx::journaled_elsewhere`): first after 1 ms, about the drain's own pace under load
/// (DRAIN_NAP is 5 ms), then twice as long each time up to FIRST_COPY_POLL_MAX, so that while
/// that journal stalls without failing, the retries piling up on this shard do not each wake
/// it every millisecond.
const FIRST_COPY_POLL: std::time::Duration = std::time::Duration::from_millis(1);
const FIRST_COPY_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(64);

pub struct ShardArgs {
    pub cfg: Arc<Config>,
    pub shared: Arc<ShardShared>,
    pub stop: Arc<AtomicBool>,
    pub producer: Producer,
    pub listener: StdListener,
    pub cpu: Option<core_affinity::CoreId>,
    pub tables: SharedTables,
    /// Every shard of the server (this one included, by index), set before any is spawned: a
    /// reactor that panics stops them, and a duplicate waits for its first copy on another.
    pub peers: Arc<OnceLock<Vec<Arc<ShardShared>>>>,
}

/// The tables every shard's request path shares with the others (one each, allocated at start):
/// the dedup window (None when `dedup.window_ms = 0`), per-source budgets (None when
/// `budget.rate_per_s = 0`) and open connections per source prefix (None when that limit is 0).
#[derive(Clone)]
pub struct SharedTables {
    pub dedup: Option<Arc<crate::dedup::Dedup>>,
    pub budgets: Option<Arc<crate::enrich::budget::Budgets>>,
    pub source_conns: Option<Arc<crate::enrich::budget::Connections>>,
}

impl SharedTables {
    pub fn new(cfg: &Config) -> SharedTables {
        SharedTables {
            dedup: (cfg.dedup.window_ms > 0)
                .then(|| Arc::new(crate::dedup::Dedup::new(cfg.dedup.entries, cfg.dedup.window_ms))),
            budgets: (cfg.budget.rate_per_s > 0).then(|| Arc::new(crate::enrich::budget::Budgets::new(cfg.budget))),
            source_conns: crate::enrich::budget::Connections::new(cfg.budget).map(Arc::new),
        }
    }
}

/// Everything a connection task needs, on the reactor thread only (Rc, RefCell: no locks).
/// RefCell borrows are never held across an await.
pub struct ShardCtx {
    /// The running config: read per request (a borrow, no lock, no refcount), replaced by the
    /// control task between requests on reload (see `reload.rs`).
    pub cfg: RefCell<Arc<Config>>,
    /// Built from `cfg`, replaced with it.
    pub routes: RefCell<Routes>,
    /// Generation of `cfg`, written into every event this shard makes.
    pub config_gen: Cell<u32>,
    pub shared: Arc<ShardShared>,
    /// Every shard of the server by index, this one included (`ShardArgs::peers`).
    peers: Arc<OnceLock<Vec<Arc<ShardShared>>>>,
    pub producer: RefCell<Producer>,
    /// The dedup window shared by all shards; None when `dedup.window_ms = 0`.
    pub dedup: Option<Arc<crate::dedup::Dedup>>,
    /// Per-source budgets shared by all shards; None when `budget.rate_per_s = 0`.
    pub budgets: Option<Arc<crate::enrich::budget::Budgets>>,
    /// Open connections per source prefix, shared by all shards; None when
    /// `budget.connections_per_prefix_max = 0`.
    pub source_conns: Option<Arc<crate::enrich::budget::Connections>>,
    /// IP truncation, user-id hashing, opt-out: this shard's copy and period key.
    pub privacy: RefCell<crate::enrich::privacy::Privacy>,
    pub ids: RefCell<IdGen>,
    pub date: RefCell<DateCache>,
    pub stopping: Cell<bool>,
    /// When shutdown began (`clock::mono_coarse_ms`): connections accepted from the queue at
    /// shutdown get a short grace for their first request (`connection.rs`).
    pub stop_at: Cell<Option<u64>>,
    /// Every connection's read/write deadline, swept by the `sweep_deadlines` task.
    pub deadlines: Deadlines,
    /// Request service time, recorded per request; published by `publish_latency`.
    pub service: RefCell<LocalHistogram>,
    /// JSON parser, gzip inflater and batch answer buffers for POST bodies (net::post).
    pub post: RefCell<crate::net::post::PostScratch>,
    stop: Arc<AtomicBool>,
    conns: Cell<usize>,
    pool: RefCell<Vec<ConnBufs>>,
    /// Connections waiting for the journal: (sequence number, task). Capacity: one per connection.
    waiters: RefCell<Vec<(u64, Waker)>>,
    /// The shard's main future, waiting for the last connection to close at shutdown.
    idle_waker: Cell<Option<Waker>>,
    accept_canceller: RefCell<Canceller>,
}

impl ShardCtx {
    /// A shard's request-path state, as a reactor starts with it: routes and privacy from `cfg`,
    /// the connection buffers of `pool` (allocated at start, recycled), no connection yet.
    #[allow(clippy::too_many_arguments)] // the parts a shard is given at start, as ShardArgs has them
    fn new(
        cfg: Arc<Config>,
        index: u16,
        producer: Producer,
        tables: SharedTables,
        stop: Arc<AtomicBool>,
        shared: Arc<ShardShared>,
        peers: Arc<OnceLock<Vec<Arc<ShardShared>>>>,
        pool: Vec<ConnBufs>,
    ) -> ShardCtx {
        let conns_max = pool.len();
        ShardCtx {
            routes: RefCell::new(Routes::new(&cfg)),
            config_gen: Cell::new(0),
            stop_at: Cell::new(None),
            deadlines: Deadlines::new(conns_max.max(1), cfg.server.stop_request_grace_ms),
            producer: RefCell::new(producer),
            ids: RefCell::new(IdGen::new(index)),
            dedup: tables.dedup,
            budgets: tables.budgets,
            source_conns: tables.source_conns,
            privacy: RefCell::new(crate::enrich::privacy::Privacy::new(cfg.privacy.clone())),
            date: RefCell::new(DateCache::new()),
            stopping: Cell::new(false),
            service: RefCell::new(LocalHistogram::new()),
            post: RefCell::new(crate::net::post::PostScratch::new(&cfg.server)),
            stop,
            conns: Cell::new(0),
            pool: RefCell::new(pool),
            waiters: RefCell::new(Vec::with_capacity(conns_max + 1)),
            idle_waker: Cell::new(None),
            accept_canceller: RefCell::new(Canceller::new()),
            shared,
            peers,
            cfg: RefCell::new(cfg),
        }
    }

    /// A shard's request-path state with no reactor, listener or drain behind it, for
    /// `crate::fuzzing`: built by the reactor's own constructor with the tables `runtime::start`
    /// makes, so a request answered through it takes the same path as one on a socket. No
    /// connection pool: the caller owns the buffers.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn detached(cfg: Arc<Config>, producer: Producer) -> io::Result<ShardCtx> {
        let counters =
            crate::metrics::ShardCounters::new(crate::constants::ENDPOINTS_MAX, crate::constants::EVENT_TYPES_MAX);
        let shared = super::ShardShared::new(0, counters, Arc::new(std::sync::atomic::AtomicUsize::new(0)))?;
        let _ = shared.counters.ring.set(producer.watch());
        let (tables, shared) = (SharedTables::new(&cfg), Arc::new(shared));
        let peers = Arc::new(OnceLock::from(vec![shared.clone()]));
        Ok(ShardCtx::new(cfg, 0, producer, tables, Arc::new(AtomicBool::new(false)), shared, peers, Vec::new()))
    }

    /// Waits until the drain has put event `seq` into the journal (true), or finds the journal
    /// failing or stalled (false: the event may never be written, or not soon).
    pub async fn journaled(&self, seq: u64) -> bool {
        std::future::poll_fn(|cx| {
            if self.shared.journaled() >= seq {
                return Poll::Ready(true);
            }
            if self.shared.journal_unavailable() {
                return Poll::Ready(false);
            }
            self.waiters.borrow_mut().push((seq, cx.waker().clone()));
            // Dekker with ShardShared::publish_journaled: publish the request, then re-check.
            self.shared.want_wake.store(true, SeqCst);
            if self.shared.journaled() >= seq {
                return Poll::Ready(true);
            }
            if self.shared.journal_unavailable() {
                return Poll::Ready(false);
            }
            Poll::Pending
        })
        .await
    }

    /// `journaled`, bounded: false also when `seq` is not in the journal within `ms`. A drain
    /// held up by a disk that hangs without failing must not hold `logged` connections (and so
    /// the stop) for as long as it hangs.
    pub async fn journaled_within(&self, seq: u64, ms: u64) -> bool {
        // Journaled already (the drain is usually ahead): no clock read, no timer.
        if self.shared.journaled() >= seq {
            return true;
        }
        monoio::time::timeout(std::time::Duration::from_millis(ms), self.journaled(seq)).await.unwrap_or(false)
    }

    /// Where a duplicate's response on an `ack = "logged"` endpoint must wait: the shard its
    /// first copy went to and that event's full sequence number, or None when it is in the
    /// journal already. The shard's pushed count is read after the dedup entry (which the other
    /// reactor enters just before it commits the event, hence the + 1 for another shard's).
    pub fn first_copy_pending(&self, first: crate::dedup::FirstCopy) -> Option<(u16, u64)> {
        let peer = self.peers.get().and_then(|p| p.get(first.shard as usize));
        // Every shard of this run is in the list before any serves; an entry names no other.
        debug_assert!(peer.is_some(), "first copy on unknown shard {}", first.shard);
        let peer = peer?;
        let pushed = peer.counters.ring.get().map_or(0, |w| w.pushed());
        let newest = if first.shard == self.shared.index { pushed } else { pushed + 1 };
        let seq = crate::dedup::full_seq(first.seq_low, newest);
        (seq > peer.journaled()).then_some((first.shard, seq))
    }

    /// Waits until shard `shard`'s drain has put its event `seq` into the journal (true), or
    /// finds that journal failing or the coarse monotonic clock past `until_ms` (false: the event
    /// may never be written, or not soon). For a duplicate whose first copy went to another
    /// shard: that shard's drain wakes only its own reactor, so this one looks again on a timer
    /// (FIRST_COPY_POLL, backing off). Only a duplicate that arrives before its first copy is in
    /// the journal waits here, on a `logged` endpoint: rare, and never on the pixel path.
    pub async fn journaled_elsewhere(&self, shard: u16, seq: u64, until_ms: u64) -> bool {
        let Some(peer) = self.peers.get().and_then(|p| p.get(shard as usize)) else { return false };
        // Its drain may be napping: the first copy may have come on a `received` endpoint.
        peer.notify_drain(true);
        let mut pause = FIRST_COPY_POLL;
        loop {
            if peer.journaled() >= seq {
                return true;
            }
            if peer.journal_unavailable() || crate::clock::mono_coarse_ms() >= until_ms {
                return false;
            }
            monoio::time::sleep(pause).await;
            pause = (pause * 2).min(FIRST_COPY_POLL_MAX);
        }
    }

    /// Wakes the connections whose events are in the journal, and all of them while it fails
    /// or stalls.
    fn wake_journaled(&self) {
        let done = self.shared.journaled();
        let failing = self.shared.journal_unavailable();
        let mut w = self.waiters.borrow_mut();
        w.retain(|(seq, waker)| {
            if *seq <= done || failing {
                waker.wake_by_ref();
                false
            } else {
                true
            }
        });
        if w.is_empty() {
            self.shared.want_wake.store(false, SeqCst);
        }
    }

    fn begin_stop(&self) {
        if self.stopping.replace(true) {
            return;
        }
        let now_ms = crate::clock::mono_coarse_ms();
        self.stop_at.set(Some(now_ms));
        // Idle connections close now, not at the next tick.
        self.deadlines.sweep(now_ms, Some(now_ms));
        let c = std::mem::take(&mut *self.accept_canceller.borrow_mut());
        drop(c.cancel());
        if let Some(w) = self.idle_waker.take() {
            w.wake();
        }
    }

    /// Switches to a reloaded config: called by the control task, never inside a request.
    fn apply_config(&self, gen: u32, cfg: Arc<Config>) {
        let routes = Routes::new(&cfg);
        // The drain must know the config before the first event made with it reaches the ring.
        self.shared.reload.applied(gen, cfg.clone());
        *self.routes.borrow_mut() = routes;
        // The privacy step follows the new [privacy] (key, rotation, fields of the new types).
        *self.privacy.borrow_mut() = crate::enrich::privacy::Privacy::new(cfg.privacy.clone());
        *self.cfg.borrow_mut() = cfg;
        self.config_gen.set(gen);
    }

    pub fn conn_closed(&self, mut bufs: ConnBufs) {
        if let (Some(t), Some(a)) = (&self.source_conns, bufs.source.take()) {
            t.release(a);
        }
        self.pool.borrow_mut().push(bufs);
        self.conns.set(self.conns.get() - 1);
        self.shared.counters.connections_closed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.stopping.get() && self.conns.get() == 0 {
            if let Some(w) = self.idle_waker.take() {
                w.wake();
            }
        }
    }
}

pub fn run(args: ShardArgs, ready: Sender<Result<(), String>>) {
    let shared = args.shared.clone();
    let (stop, peers) = (args.stop.clone(), args.peers.clone());
    // A panic (a bug, a step breaking its contract) must not unwind past `reactor_done`: the
    // drain would wait for this reactor forever and a stop would never finish. Its connections
    // are gone with it, so the whole server stops: every shard drains what it acknowledged into
    // the journal, and the process exits 1 (main.rs) for its supervisor to restart it.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(args, &ready))) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = ready.send(Err(e));
        }
        Err(payload) => {
            let why = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("no message");
            let i = shared.index;
            eprintln!("tracker: shard {i}: reactor panicked ({why}); stopping every shard, draining the rings");
            shared.reactor_panicked.store(true, SeqCst);
            // During start-up: the start fails (and stops the shards it started).
            let _ = ready.send(Err(format!("shard {i}: reactor panicked: {why}")));
            super::stop_all(&stop, peers.get().map_or(&[][..], Vec::as_slice));
        }
    }
    shared.reactor_done.store(true, SeqCst);
    if let Some(t) = shared.drain_thread.get() {
        t.unpark();
    }
}

fn run_inner(args: ShardArgs, ready: &Sender<Result<(), String>>) -> Result<(), String> {
    let i = args.shared.index;
    if let Some(cpu) = args.cpu {
        if !core_affinity::set_for_current(cpu) {
            eprintln!("tracker: shard {i}: could not pin to CPU {}; running unpinned", cpu.id);
        }
    }
    let entries = args.cfg.server.io_uring_entries;
    let defer = args.cfg.server.io_uring_defer_taskrun;
    let mut rt = match build_runtime(entries, true, defer) {
        Ok(rt) => rt,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("tracker: shard {i}: this kernel refuses IORING_SETUP_COOP_TASKRUN (needs Linux ≥ 5.19); running without it, which costs CPU per request");
            build_runtime(entries, false, false).map_err(|e| runtime_error(i, entries, e))?
        }
        Err(e) => return Err(runtime_error(i, entries, e)),
    };
    rt.block_on(async move {
        let listener =
            monoio::net::TcpListener::from_std(args.listener).map_err(|e| format!("shard {i}: listener: {e}"))?;
        let cfg = args.cfg;
        let conns_max = cfg.server.connections_per_shard_max;
        // Connection buffers for every allowed connection, allocated now (virtual memory: pages
        // are touched on first use) and recycled; none is allocated per connection or request.
        let pool: Vec<ConnBufs> = (0..conns_max).map(|slot| ConnBufs::new(&cfg.server, slot)).collect();
        let ctx = Rc::new(ShardCtx::new(cfg, i, args.producer, args.tables, args.stop, args.shared, args.peers, pool));
        let efd = ctx.shared.eventfd.try_clone().map_err(|e| format!("shard {i}: eventfd: {e}"))?;
        let efd =
            monoio::fs::File::from_std(std::fs::File::from(efd)).map_err(|e| format!("shard {i}: eventfd: {e}"))?;
        monoio::spawn(control(ctx.clone(), efd));
        monoio::spawn(heartbeat(ctx.clone()));
        monoio::spawn(publish_latency(ctx.clone()));
        monoio::spawn(sweep_deadlines(ctx.clone()));
        let _ = ready.send(Ok(()));

        accept_loop(&ctx, &listener).await;
        accept_queued(&ctx, &listener);
        drop(listener);
        // Wait for in-flight connections to finish their requests and close.
        std::future::poll_fn(|cx| {
            if ctx.conns.get() == 0 {
                Poll::Ready(())
            } else {
                ctx.idle_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        // monoio closes a dropped socket with an io_uring op, queued until the next submission:
        // returning now would end the runtime with the listener's and the last connections'
        // closes never submitted, so the listening socket would keep queueing (never resetting
        // or migrating) connections and clients would wait for their FIN until the process
        // exits. One timer wait makes the runtime submit them.
        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        // The reactor is done serving: waiting for the lock here delays nobody.
        ctx.service.borrow_mut().publish_wait(&ctx.shared.counters.latency.service);
        Ok::<(), String>(())
    })
}

type Rt = monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>;

fn build_runtime(entries: u32, coop: bool, defer: bool) -> io::Result<Rt> {
    let mut urb = io_uring::IoUring::builder();
    if coop {
        urb.setup_coop_taskrun().setup_taskrun_flag();
    }
    if defer {
        urb.setup_single_issuer().setup_defer_taskrun();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .uring_builder(urb)
        .enable_timer()
        .build()
}

fn runtime_error(shard: u16, entries: u32, e: io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!("shard {shard}: io_uring is not available in this kernel (io_uring_setup: ENOSYS); tracker needs Linux ≥ 5.19 with io_uring enabled"),
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "shard {shard}: io_uring_setup was denied ({e}): a seccomp profile forbids it (Docker's default blocks io_uring: run with the profile the project ships, --security-opt seccomp=docker/seccomp-io_uring.json, see docs/deployment.md), or sysctl kernel.io_uring_disabled does (2: for every process; 1: for processes outside the group kernel.io_uring_group names)"
        ),
        Some(libc::ENOMEM) => {
            let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes into the struct we pass.
            unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
            format!(
                "shard {shard}: io_uring_setup with {entries} entries failed for lack of locked memory: RLIMIT_MEMLOCK is {} KiB (hard {} KiB); raise it with `ulimit -l` or LimitMEMLOCK= in systemd/tracker.service, or lower server.io_uring_entries",
                rl.rlim_cur / 1024,
                rl.rlim_max / 1024
            )
        }
        _ => format!("shard {shard}: cannot start the io_uring runtime: {e}"),
    }
}

/// Wakes on the shard's eventfd: journal progress for waiting connections, and stop.
async fn control(ctx: Rc<ShardCtx>, efd: monoio::fs::File) {
    let mut buf: Vec<u8> = Vec::with_capacity(8);
    loop {
        if ctx.stop.load(SeqCst) {
            ctx.begin_stop();
        }
        if let Some((gen, cfg)) = ctx.shared.reload.take_offer() {
            ctx.apply_config(gen, cfg);
        }
        ctx.wake_journaled();
        // Never returns at stop, even with no connection left: one may still be taken from
        // the accept queue and wait for the journal, which only this task wakes. The runtime
        // drops the task when the reactor's last connection has closed.
        let (res, b) = efd.read_at(buf, 0).await;
        buf = b;
        buf.clear();
        if let Err(e) = res {
            eprintln!("tracker: shard {}: eventfd read failed: {e}", ctx.shared.index);
            return;
        }
    }
}

/// Gives up on connection reads and writes past their deadline (`net::deadline`): one timer for
/// the shard instead of one per pending read or write.
/// Runs until the runtime drops it (as `control`, it must outlive a moment with no connection:
/// connections taken from the accept queue at stop still get their stop grace).
async fn sweep_deadlines(ctx: Rc<ShardCtx>) {
    loop {
        monoio::time::sleep(TICK).await;
        ctx.deadlines.sweep(crate::clock::mono_coarse_ms(), ctx.stop_at.get());
    }
}

/// Publishes the service-time histogram for the admin thread every admin.publish_interval_ms
/// (metrics::latency: try_lock, never waits). A timer task, never inside a request.
async fn publish_latency(ctx: Rc<ShardCtx>) {
    let every = std::time::Duration::from_millis(ctx.cfg.borrow().admin.publish_interval_ms);
    while !ctx.stopping.get() {
        monoio::time::sleep(every).await;
        ctx.service.borrow_mut().publish(&ctx.shared.counters.latency.service);
    }
}

async fn accept_loop(ctx: &Rc<ShardCtx>, listener: &monoio::net::TcpListener) {
    // Accepts failed in a row, and the errno of the last one said. While a connection waits in
    // the queue a failure repeats every 10 ms: said at each, it spends journald's rate limit for
    // the service (and so drops every other line) within seconds. Said when it starts or
    // changes, then once when accepting works again.
    let mut failing: (u64, Option<i32>) = (0, None);
    loop {
        if ctx.stopping.get() {
            return;
        }
        let handle = ctx.accept_canceller.borrow().handle();
        let (stream, peer) = match listener.cancelable_accept(handle).await {
            Ok(x) => x,
            Err(e) => {
                if ctx.stopping.get() {
                    return;
                }
                // EMFILE/ENFILE/ENOBUFS: keep serving the connections we have.
                if failing.0 == 0 || failing.1 != e.raw_os_error() {
                    eprintln!("tracker: shard {}: accept failed: {e}{}", ctx.shared.index, accept_error_hint(&e));
                }
                failing = (failing.0 + 1, e.raw_os_error());
                monoio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if failing.0 > 0 {
            eprintln!("tracker: shard {}: accept works again after {} failed attempts", ctx.shared.index, failing.0);
            failing = (0, None);
        }
        let bufs = ctx.pool.borrow_mut().pop();
        let Some(mut bufs) = bufs else {
            // Over connections_per_shard_max: close at once (counted); the client retries.
            ctx.shared.counters.reject(Reason::ConnectionLimit);
            drop(stream);
            continue;
        };
        // Over its prefix's connections_per_prefix_max: likewise (budget.rs).
        if let Some(t) = &ctx.source_conns {
            match t.admit(peer.ip()) {
                Admission::Counted(a) => bufs.source = Some(a),
                Admission::Exempt => bufs.source = None,
                Admission::Refused => {
                    ctx.shared.counters.reject(Reason::SourceConnectionLimit);
                    ctx.pool.borrow_mut().push(bufs);
                    drop(stream);
                    continue;
                }
            }
        }
        let _ = stream.set_nodelay(true);
        ctx.conns.set(ctx.conns.get() + 1);
        ctx.shared.counters.connections_accepted.fetch_add(1, SeqCst);
        monoio::spawn(connection::serve(ctx.clone(), stream, peer, bufs));
    }
}

/// What to do about a failed accept, with the numbers: the open-file limit, for EMFILE.
fn accept_error_hint(e: &std::io::Error) -> String {
    let mut hint = String::from("; retrying every 10 ms, said again only when the error changes");
    if e.raw_os_error() == Some(libc::EMFILE) {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the limit into the struct we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
        hint.push_str(&format!(
            "; the process has all the descriptors RLIMIT_NOFILE {} allows (hard {}): raise LimitNOFILE= in \
             systemd/tracker.service or `ulimit -n` to at least shards × server.connections_per_shard_max + 64 per shard",
            rl.rlim_cur, rl.rlim_max
        ));
    }
    hint
}

/// Bumps the shard's heartbeat while the reactor turns: the systemd watchdog pings only while
/// every shard's moves (`notify.rs`). Runs until the reactor's runtime ends, shutdown included
/// (a drain that takes a while is not a stall).
async fn heartbeat(ctx: Rc<ShardCtx>) {
    let mut stall = StallWatch::new(ctx.shared.journaled(), crate::clock::mono_coarse_ms());
    loop {
        let now_ms = crate::clock::mono_coarse_ms();
        ctx.shared.beat(now_ms);
        let limit = ctx.cfg.borrow().journal.stall_timeout_ms;
        if stall.check(&ctx.shared, limit, now_ms) {
            // Connections waiting for it: their responses are not sent.
            ctx.wake_journaled();
        }
        monoio::time::sleep(super::notify::HEARTBEAT_PERIOD).await;
    }
}

/// Finds the shard's journal stalled: events waiting in the ring, and none journaled for
/// `journal.stall_timeout_ms`. A drain held up by a disk that hangs without failing reports
/// nothing (it waits inside a syscall), so only the reactor can tell; checked at each heartbeat.
/// A failing journal is not also called stalled: the drain says it fails, and under
/// `sync = "always"` a failed msync stops `journaled` for the rest of the run by design.
pub(crate) struct StallWatch {
    /// `journaled` at the last look, and since when (coarse monotonic ms) it has not moved or
    /// nothing waited.
    journaled: u64,
    since_ms: u64,
    /// Events waited at the last look. An event first seen waiting now may have arrived just
    /// before (the looks are a heartbeat apart): its clock starts now, not at the last look,
    /// which with `stall_timeout_ms` near the heartbeat called a journal stalled over an event
    /// that had waited a millisecond. So a stall is declared up to a heartbeat late, never early.
    waited: bool,
}

impl StallWatch {
    /// The clock of events already waiting starts at `now_ms`.
    pub(crate) fn new(journaled: u64, now_ms: u64) -> StallWatch {
        StallWatch { journaled, since_ms: now_ms, waited: true }
    }

    /// Looks at `shared`'s journal at `now_ms`, `limit_ms` being the stall timeout, and sets or
    /// clears its stalled flag; true when it has just been set.
    pub(crate) fn check(&mut self, shared: &super::ShardShared, limit_ms: u64, now_ms: u64) -> bool {
        let journaled = shared.journaled();
        let pushed = shared.counters.ring.get().map_or(0, |w| w.pushed());
        // Event sequence numbers count this shard's pushes from 1, so nothing waits when the
        // journal holds the last one pushed.
        let waiting = journaled < pushed;
        let first_seen = waiting && !self.waited;
        self.waited = waiting;
        if journaled != self.journaled || !waiting || first_seen || shared.journal_failing() {
            self.journaled = journaled;
            self.since_ms = now_ms;
            if shared.set_journal_stalled(false) {
                eprintln!(
                    "tracker: shard {}: the journal takes events again; logged endpoints answer again",
                    shared.index
                );
            }
            return false;
        }
        let still = now_ms.saturating_sub(self.since_ms);
        let stalled = still >= limit_ms && shared.set_journal_stalled(true);
        if stalled {
            eprintln!(
                "tracker: shard {}: journal stalled: {} event(s) waiting, none journaled for {still} ms (a disk that \
                 hangs?); logged endpoints answer 503 until it moves",
                shared.index,
                pushed - journaled
            );
        }
        stalled
    }
}

/// At shutdown, after the io_uring accept is cancelled: takes every connection already queued on
/// the listener (closing it would reset them) and serves it like any other, then returns so the
/// listener can be closed (`handoff.rs`).
fn accept_queued(ctx: &Rc<ShardCtx>, listener: &monoio::net::TcpListener) {
    use std::os::fd::AsRawFd;
    loop {
        let (std_stream, peer) = match super::handoff::accept_queued(listener.as_raw_fd()) {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                eprintln!("tracker: shard {}: accepting queued connections at shutdown: {e}", ctx.shared.index);
                return;
            }
        };
        let Some(bufs) = ctx.pool.borrow_mut().pop() else {
            ctx.shared.counters.reject(Reason::ConnectionLimit);
            continue;
        };
        let stream = match monoio::net::TcpStream::from_std(std_stream) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tracker: shard {}: queued connection: {e}", ctx.shared.index);
                ctx.pool.borrow_mut().push(bufs);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        ctx.conns.set(ctx.conns.get() + 1);
        ctx.shared.counters.connections_accepted.fetch_add(1, SeqCst);
        monoio::spawn(connection::serve(ctx.clone(), stream, peer, bufs));
    }
}
