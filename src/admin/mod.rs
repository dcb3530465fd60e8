//! The admin listener: the control plane's window on a running tracker, on its own address
//! (`admin.listen`, loopback by default), never on the public port and never on a shard reactor.
//!
//! What goes in: read-only views of every shard (`ShardShared`: counters, ring watch, published
//! latency histograms) and the stop flag. What comes out, over plain HTTP/1.1 (one request per
//! connection, `Connection: close`; `Server` and `Date` as on the public listener):
//! - `GET /metrics` Prometheus text exposition 0.0.4 ([`render::metrics`]);
//! - `GET /health`  200 `ok` while the process is alive;
//! - `GET /ready`   200 `ready` when accepting, every shard's journal directory is writable, the
//!   journal filesystem has `admin.ready_free_bytes_min` free and no ring holds more than
//!   `admin.ready_ring_backlog_events_max` unread events; otherwise 503 with every reason found;
//! - `GET /stats`   JSON percentiles per shard and merged, read by `tracker stats`.
//!
//! `HEAD` on each of these gets the GET answer's head. `OPTIONS` on each, or `OPTIONS *` (the
//! listener as a whole), gets 204 with `Allow: GET, HEAD, OPTIONS`, as on the public listener;
//! no CORS grant, since no page in a browser has business here. Another method on them is 405
//! with the same Allow; any other path is 404, whatever the method.
//!
//! The request head is read by the public listener's parser ([`crate::http::parse`]), so the
//! admin listener refuses what the public one refuses, with the same status and reason, and
//! closes: RFC 9112 syntax as httparse's strict default checks it (a space before a field's
//! colon, a field line without one, obs-fold, a malformed request line), bare CR or LF and
//! control bytes anywhere in the head, no Host in HTTP/1.1, more than one Host, a Host or an
//! absolute-form authority that is not `host[:port]`, ambiguous body framing. One set of rules,
//! one copy of it.
//!
//! It reads no request body: a request that announces one (Content-Length above 0, or chunked)
//! is answered 413 `the admin listener reads no request body` before it, whatever its method and
//! path. After every refusal of a request not read whole (that 413, a refused head, 408, the 503
//! over CONNECTIONS_MAX) the connection closes lingering (RFC 9112 §9.6, `linger_close`), so
//! the refusal is not lost to a reset.
//!
//! And, when `admin.hlog_path` is set, a second thread appends the merged histograms to an
//! HdrHistogram interval log ([`hlog`]).
//!
//! What must never happen: the admin thread blocking a reactor. It only loads atomics and takes
//! the histogram snapshot locks, which reactors only ever `try_lock` (metrics::latency). One std
//! thread accepts and hands each connection to a thread of its own (at most `CONNECTIONS_MAX`
//! at once, blocking sockets), so a slow client delays nobody else; it is bounded by
//! `CLIENT_TIMEOUT` for its whole request head (then 408) and `REQUEST_BYTES_MAX`. One over
//! that gets 503 and its lingering close on a thread too (at most `REFUSING_MAX`, each for at
//! most about a second).

pub mod client;
pub mod hlog;
pub mod render;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::http::{self, BodyFraming, Limits, Method, ParseError, HEADERS_MAX};
use crate::runtime::{Running, ShardShared};

/// Longest admin request head read, bytes; longer requests are answered 431.
pub const REQUEST_BYTES_MAX: usize = 4096;
/// Time an admin client has to send its request head.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest time a client may take to read one whole answer (`/metrics` runs to hundreds of
/// KiB), however it paces its reads: the write timeout alone bounds each `write`, so a client
/// reading a few bytes a second kept its thread and CONNECTIONS_MAX slot for as long as it
/// liked, and sixteen such clients turned the health probes away with 503s.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once, each on a thread of its own; one more is answered 503 at
/// once. A few silent clients then cost a thread each for CLIENT_TIMEOUT instead of holding
/// every request behind them (the health probes included).
pub const CONNECTIONS_MAX: usize = 16;
/// Connections over CONNECTIONS_MAX that may be closing lingering after their 503 at the same
/// time, each on a thread of its own for at most BUSY_WRITE_TIMEOUT + LINGER_GRACE (1.1 s): a
/// flood of them costs at most this many threads, not one per connection. Past it a 503 is written and the
/// connection closed at once, as before lingering: under such a flood a reset may cost a
/// client its 503, and nothing else is held.
pub const REFUSING_MAX: usize = 16;
/// Write timeout of the 503 to a connection over CONNECTIONS_MAX. A fresh socket's send
/// buffer takes the few hundred bytes at once; this only bounds a peer that shrank it.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// What the admin thread reads: fixed at start.
pub struct State {
    pub shards: Vec<Arc<ShardShared>>,
    stop: Arc<AtomicBool>,
    /// The `endpoint` and `type` label of each counter slot; grows with reloads.
    pub labels: Arc<crate::metrics::CounterLabels>,
    /// The shared dedup window, for its eviction count; None when dedup is off.
    pub dedup: Option<Arc<crate::dedup::Dedup>>,
    journal_dir: PathBuf,
    free_bytes_min: u64,
    backlog_max: u64,
    retention_age_s: u64,
    /// When the process started, seconds since the Unix epoch.
    pub started_unix_s: f64,
}

impl State {
    pub fn new(cfg: &Config, running: &Running) -> State {
        let shards = running.shards().to_vec();
        let free_bytes_min = match cfg.admin.ready_free_bytes_min {
            0 => 2 * cfg.journal.segment_bytes * shards.len() as u64,
            n => n,
        };
        let backlog_max = match cfg.admin.ready_ring_backlog_events_max {
            0 => cfg.server.ring_events as u64 / 2,
            n => n,
        };
        State {
            shards,
            stop: running.stop_flag(),
            labels: running.counter_labels(),
            dedup: running.dedup(),
            journal_dir: cfg.journal.dir.clone(),
            free_bytes_min,
            backlog_max,
            retention_age_s: cfg.journal.retention_age_s,
            started_unix_s: process_start_unix_s().unwrap_or_else(|| crate::clock::unix_nanos() as f64 / 1e9),
        }
    }

    /// Ok while every running reactor turns (its heartbeat is younger than
    /// `notify::HEALTH_STALL`): the liveness a container runtime or orchestrator probes, the
    /// systemd watchdog's check where there is none. Otherwise why, one line per shard.
    pub fn live(&self) -> Result<(), String> {
        let now_ms = crate::clock::mono_coarse_ms();
        let limit = crate::runtime::notify::HEALTH_STALL.as_millis() as u64;
        let stuck: Vec<String> = self
            .shards
            .iter()
            .filter_map(|s| s.not_turned_for_ms(now_ms).filter(|&ms| ms > limit).map(|ms| (s.index, ms)))
            .map(|(i, ms)| format!("shard {i}: reactor has not turned for {ms} ms"))
            .collect();
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(stuck.join("\n"))
        }
    }

    /// Ok when the tracker should receive traffic; otherwise every reason, one per line.
    pub fn ready(&self) -> Result<(), String> {
        let mut why: Vec<String> = Vec::new();
        if self.stop.load(SeqCst) {
            why.push("stopping: no longer accepting connections".into());
        }
        for s in &self.shards {
            if s.reactor_done.load(SeqCst) {
                why.push(format!("shard {}: reactor has exited", s.index));
            }
            if s.journal_failing() {
                why.push(format!(
                    "shard {}: journal appends are failing, or a sync failed (see the log); logged endpoints answer 503 until one succeeds (after a failed sync under sync = \"always\": until a restart)",
                    s.index
                ));
            }
            if s.journal_stalled() {
                why.push(format!(
                    "shard {}: journal stalled: events wait and none was journaled for journal.stall_timeout_ms; logged endpoints answer 503 until it moves",
                    s.index
                ));
            }
            let dir = crate::journal::shard_dir(&self.journal_dir, s.index);
            if let Err(e) = writable(&dir) {
                why.push(format!("journal directory {} is not writable: {e}", dir.display()));
            }
            if let Some(r) = s.counters.ring.get() {
                let popped = r.popped();
                let backlog = r.pushed().saturating_sub(popped);
                if backlog > self.backlog_max {
                    why.push(format!(
                        "shard {}: ring backlog {backlog} events is over admin.ready_ring_backlog_events_max {} (the journal drain is behind)",
                        s.index, self.backlog_max
                    ));
                }
            }
        }
        // Collectors' journal size limit (collector/retention.rs).
        if crate::collector::retention::journal_over_limit() {
            why.push(format!(
                "journal is {} bytes, over journal.size_bytes_max: logged endpoints answer 503 {}",
                crate::collector::retention::JOURNAL_BYTES.load(std::sync::atomic::Ordering::Relaxed),
                crate::collector::retention::until_under_limit(self.retention_age_s)
            ));
        }
        match free_bytes(&self.journal_dir) {
            Ok((free, read_only)) => {
                if read_only {
                    why.push(format!("journal filesystem of {} is mounted read-only", self.journal_dir.display()));
                }
                if free < self.free_bytes_min {
                    why.push(format!(
                        "journal filesystem of {} has {free} bytes free, below admin.ready_free_bytes_min {} (2 × journal.segment_bytes per shard when 0)",
                        self.journal_dir.display(),
                        self.free_bytes_min
                    ));
                }
            }
            Err(e) => why.push(format!("cannot stat the journal filesystem of {}: {e}", self.journal_dir.display())),
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why.join("\n"))
        }
    }
}

/// When this process started, from `/proc/self/stat` (field 22, clock ticks after boot) and
/// the boot time in `/proc/stat`: the moment before journal recovery and any wait for a lock.
fn process_start_unix_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces and ')': field 3 is index 0.
    let start_ticks: f64 = stat.rsplit_once(')')?.1.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + start_ticks / hz as f64)
}

/// `access(W_OK)`: what the kernel would decide for a create in `dir` by this process (root is
/// refused only on read-only mounts, as its writes would be).
fn writable(dir: &std::path::Path) -> io::Result<()> {
    let c = cstr(dir)?;
    // SAFETY: access reads the NUL-terminated path we own for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes available to unprivileged users on the filesystem of `dir`, and whether it is read-only.
fn free_bytes(dir: &std::path::Path) -> io::Result<(u64, bool)> {
    let c = cstr(dir)?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value that the call overwrites.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and outlives the call; st is a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64 * st.f_frsize as u64, st.f_flag & libc::ST_RDONLY != 0))
}

fn cstr(p: &std::path::Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

/// Pending admin connections the kernel queues before accept.
pub const ADMIN_BACKLOG: i32 = 64;

/// The admin address, bound but not yet listening ([`bind`]); [`start`] listens on it.
pub struct Bound(socket2::Socket);

/// Binds the admin address (before the shards start, so a port taken by another program fails
/// start-up at once). SO_REUSEPORT, like the public listener: during a zero-downtime restart the
/// new process binds the same admin port while the old one drains (the kernel only lets
/// processes of the same user share it), and the old one answers /ready with 503 "stopping".
/// It listens only in [`start`], once it is served: a listening socket joins the port's group
/// and gets its share of the connections, which would wait unanswered in its backlog while the
/// new process waits for the old one's journal locks (health probes timing out while the old
/// process serves). Bound but not listening, it gets none.
pub fn bind(addr: SocketAddr) -> io::Result<Bound> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(Bound(s))
}

/// The running admin threads.
pub struct Admin {
    addr: SocketAddr,
    hlog: Option<hlog::HlogWriter>,
    /// The listening socket, shared with the listener thread, to shut down at
    /// [`Admin::stop_listening`]: open until both let go, so its descriptor is never reused
    /// under the shutdown.
    listener: Option<Arc<TcpListener>>,
    stop_listening: Arc<AtomicBool>,
    listener_thread: Option<std::thread::JoinHandle<()>>,
}

impl Admin {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting admin connections and closes the listening socket (answers in progress
    /// finish). Called once the shards have stopped: in a zero-downtime restart the new process
    /// listens on the same admin port (SO_REUSEPORT) while this one still drains its collectors
    /// (up to 10 s), and the kernel would split probes and scrapes between the two, so `/ready`
    /// flapped and `/metrics` alternated between two processes' counters (a counter reset to
    /// Prometheus at every switch).
    pub fn stop_listening(&mut self) {
        self.stop_listening.store(true, SeqCst);
        if let Some(l) = self.listener.take() {
            use std::os::fd::AsRawFd;
            // SAFETY: shutdown on a listening socket we hold open (the Arc); it ends the
            // thread's blocked accept (EINVAL) and changes nothing else.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        if let Some(t) = self.listener_thread.take() {
            let _ = t.join();
        }
    }

    /// Set on SIGHUP: the `.hlog` writer opens its path again at its next interval (log rotation
    /// renamed the file). None without `admin.hlog_path`.
    pub fn hlog_reopener(&self) -> Option<std::sync::Arc<std::sync::atomic::AtomicBool>> {
        self.hlog.as_ref().map(|h| h.reopener())
    }

    /// Writes the last `.hlog` interval (call after the shards have stopped and published) and
    /// stops the hlog thread. The listener thread ends at [`Admin::stop_listening`], or with the
    /// process.
    pub fn finish(self) {
        if let Some(h) = self.hlog {
            h.finish();
        }
    }
}

/// Opens `admin.hlog_path` when it is set ([`hlog::HlogFile`]); call it before the shards start,
/// like [`bind`].
pub fn open_hlog(cfg: &Config) -> io::Result<Option<hlog::HlogFile>> {
    cfg.admin.hlog_path.as_deref().map(hlog::HlogFile::open).transpose()
}

/// Starts the admin listener thread (and the `.hlog` writer when `hlog` was opened).
pub fn start(bound: Bound, hlog: Option<hlog::HlogFile>, cfg: &Config, running: &Running) -> io::Result<Admin> {
    bound.0.listen(ADMIN_BACKLOG)?;
    let listener: TcpListener = bound.0.into();
    let addr = listener.local_addr()?;
    let state = Arc::new(State::new(cfg, running));
    let hlog = match hlog {
        Some(f) => {
            Some(hlog::HlogWriter::start(f, Duration::from_millis(cfg.admin.hlog_interval_ms), state.shards.clone())?)
        }
        None => None,
    };
    let listener = Arc::new(listener);
    let shared = listener.clone();
    let stop_listening = Arc::new(AtomicBool::new(false));
    let stopped = stop_listening.clone();
    let listener_thread = std::thread::Builder::new().name("tracker-admin".into()).spawn(move || {
        let active = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(AtomicUsize::new(0));
        for conn in shared.incoming() {
            if stopped.load(SeqCst) {
                // The last holder's drop closes the socket: it leaves the SO_REUSEPORT group.
                return;
            }
            match conn {
                Ok(s) => {
                    if active.load(SeqCst) >= CONNECTIONS_MAX {
                        // Never queue behind slow clients: the health probes must get through.
                        refuse_busy(s, &refusing, &state);
                        continue;
                    }
                    let slot = Active::take(&active);
                    let state = state.clone();
                    // A failed spawn drops the closure, connection and slot with it.
                    let _ = std::thread::Builder::new().name("tracker-admin-conn".into()).spawn(move || {
                        let _slot = slot;
                        let _ = serve(&state, s, false);
                    });
                }
                // EMFILE and friends: back off briefly instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })?;
    Ok(Admin { addr, hlog, listener: Some(listener), stop_listening, listener_thread: Some(listener_thread) })
}

/// 503 to a connection over CONNECTIONS_MAX, then a lingering close ([`refuse`]) on a thread of
/// its own, so the accept thread never waits on it: its request is most likely in the socket
/// already, and a close with it unread is a reset that can cost the client the 503. Past
/// REFUSING_MAX such threads, the 503 and an immediate close on the accept thread.
/// On those threads the head is read as [`serve`] reads it, and a liveness probe (`GET /health`)
/// is answered 200 all the same: slow clients holding every slot must not make a supervisor
/// take a serving process for dead.
fn refuse_busy(mut s: TcpStream, refusing: &Arc<AtomicUsize>, state: &Arc<State>) {
    let _ = s.set_write_timeout(Some(BUSY_WRITE_TIMEOUT));
    if refusing.load(SeqCst) >= REFUSING_MAX {
        let _ = respond(&mut s, 503, "text/plain", format!("{BUSY}\n").as_bytes(), false);
        return;
    }
    let slot = Active::take(refusing);
    let state = state.clone();
    // A failed spawn drops the closure, connection and slot with it.
    let _ = std::thread::Builder::new().name("tracker-admin-busy".into()).spawn(move || {
        let _slot = slot;
        let _ = serve(&state, s, true);
    });
}

/// The 503's reason past CONNECTIONS_MAX.
const BUSY: &str = "too many admin connections";

/// One of a bounded count of admin connections on threads at once (CONNECTIONS_MAX served,
/// REFUSING_MAX refused), given back when dropped.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn take(count: &Arc<AtomicUsize>) -> Active {
        count.fetch_add(1, SeqCst);
        Active(count.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// The public listener's parser ([`http::parse`]) with the admin's bounds: one for the whole
/// head, REQUEST_BYTES_MAX (over it 431). The request line may take all of it but its line end,
/// so the parser never has a 414 to give before the 431. The header array is the public one. A
/// body is refused whatever its length ([`serve`]): the parser checks only its framing.
const LIMITS: Limits = Limits {
    request_line_bytes_max: REQUEST_BYTES_MAX - 1,
    header_count_max: HEADERS_MAX,
    header_bytes_max: REQUEST_BYTES_MAX,
    body_bytes_max: usize::MAX,
};

/// What an admin request asks about: its path, read while the head is still borrowed from the
/// read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Metrics,
    Health,
    Ready,
    Stats,
    /// `*`, the server as a whole: a target only OPTIONS may have (RFC 9112 §3.2.4).
    Server,
    Unknown,
}

impl Resource {
    fn of(path: &[u8]) -> Resource {
        match path {
            b"/metrics" => Resource::Metrics,
            b"/health" => Resource::Health,
            b"/ready" => Resource::Ready,
            b"/stats" => Resource::Stats,
            b"*" => Resource::Server,
            _ => Resource::Unknown,
        }
    }
}

/// Answers one request on `s` and closes it.
/// Reads one request and answers it. `busy`: over CONNECTIONS_MAX, so everything but a
/// liveness probe gets 503 ([`refuse_busy`]).
fn serve(state: &State, mut s: TcpStream, busy: bool) -> io::Result<()> {
    s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    // CLIENT_TIMEOUT bounds the whole head, not each read: a client trickling a byte a second
    // would otherwise hold this connection's thread and CONNECTIONS_MAX slot for an hour; a
    // few such clients would starve the health probes.
    let deadline = std::time::Instant::now() + CLIENT_TIMEOUT;
    let mut buf = [0u8; REQUEST_BYTES_MAX];
    let mut n = 0;
    // The head is parsed as the public listener parses it (RFC 9112 syntax by httparse, bare CR
    // or LF and control bytes, Host, absolute-form target, body framing), each refusal with its
    // status and reason. The parsed view borrows `buf`, which the next read writes into: only
    // what the answer needs leaves the loop.
    let (method, resource, framing) = loop {
        let mut headers = http::header_buf();
        match http::parse(&buf[..n], &mut headers, &LIMITS) {
            Ok(req) => break (req.method, Resource::of(req.path), req.framing),
            Err(ParseError::Incomplete) => {}
            // HTTP/1.x, x > 1, is read as HTTP/1.1 (RFC 9110 §2.5), as on the public listener.
            Err(ParseError::NewerMinorVersion { minor_at }) => {
                buf[minor_at] = b'1';
                continue;
            }
            Err(ParseError::Invalid { status, reason }) => {
                return refuse(s, status, reason, http::request::is_head(&buf[..n]))
            }
        }
        // The parser answers 431 once the head fills LIMITS.header_bytes_max, the buffer's size.
        debug_assert!(n < buf.len());
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return refuse(s, 408, "request head not received in time", http::request::is_head(&buf[..n]));
        }
        s.set_read_timeout(Some(left))?;
        let r = match s.read(&mut buf[n..]) {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return refuse(s, 408, "request head not received in time", http::request::is_head(&buf[..n]));
            }
            Err(e) => return Err(e),
        };
        if r == 0 {
            return Ok(());
        }
        n += r;
    };
    // Nothing here takes content, so a body is never read: a request that announces one is
    // refused before it, whatever its method and path. 413 (RFC 9110 §15.5.14), not 400: the
    // framing is sound (the parser has checked it), the content is more than the none taken.
    if !matches!(framing, BodyFraming::None | BodyFraming::Length(0)) {
        return refuse(s, 413, "the admin listener reads no request body", method == Method::Head);
    }
    let head = method == Method::Head;
    // As on the public listener: an unknown path is 404 whatever the method; on a known one
    // OPTIONS tells the methods (RFC 9110 §9.3.7), and any method but GET, HEAD and OPTIONS is 405.
    match (resource, method) {
        (Resource::Health, Method::Get | Method::Head) => answer(state, &mut s, resource, head)?,
        _ if busy => respond(&mut s, 503, "text/plain", format!("{BUSY}\n").as_bytes(), head)?,
        (Resource::Unknown, _) => {
            respond(&mut s, 404, "text/plain", b"not found: try /metrics, /health, /ready, /stats\n", head)?
        }
        (_, Method::Options) => respond(&mut s, 204, "", b"", false)?,
        // The parser lets `*` through for OPTIONS only (RFC 9112 §3.2.4); answered as it would
        // be, never a panic, should that ever change.
        (Resource::Server, _) => respond(&mut s, 400, "text/plain", b"invalid request target\n", head)?,
        (_, Method::Get | Method::Head) => answer(state, &mut s, resource, head)?,
        (_, Method::Post | Method::Other) => respond(&mut s, 405, "text/plain", b"method not allowed\n", head)?,
    }
    // A client that sent more after its request (pipelined, though every answer closes) must
    // not get a reset that costs it this answer.
    linger_close(s);
    Ok(())
}

/// Answers `status` with `reason` to a request not read whole (a refused head, one that did not
/// arrive in time, a body left unread), then closes with [`linger_close`]. `head`: the request
/// is a HEAD (for a head that did not parse, by its first word: `http::request::is_head`), whose
/// answer has no body (RFC 9110 §9.3.2), as on the public listener.
fn refuse(mut s: TcpStream, status: u16, reason: &str, head: bool) -> io::Result<()> {
    respond(&mut s, status, "text/plain", format!("{reason}\n").as_bytes(), head)?;
    linger_close(s);
    Ok(())
}

/// Lingering close (RFC 9112 §9.6), as the public listener closes (net::connection): half-close,
/// then read and drop what the client still sends until it closes too, for at most
/// LINGER_GRACE. Closed with unread bytes in it, a socket sends RST instead of FIN, and the
/// reset can cost the client the answer just written (a proxy in front then answers 502). The
/// connection keeps its CONNECTIONS_MAX (or REFUSING_MAX) slot that long at most.
fn linger_close(mut s: TcpStream) {
    if s.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + crate::net::deadline::LINGER_GRACE;
    let mut scratch = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        if !matches!(s.read(&mut scratch), Ok(n) if n > 0) {
            return;
        }
    }
}

/// The answer to GET (or HEAD, `head`) on one of the admin resources.
fn answer(state: &State, s: &mut TcpStream, resource: Resource, head: bool) -> io::Result<()> {
    match resource {
        Resource::Metrics => {
            let body = render::metrics(state);
            respond(s, 200, "text/plain; version=0.0.4; charset=utf-8", body.as_bytes(), head)
        }
        Resource::Health => match state.live() {
            Ok(()) => respond(s, 200, "text/plain", b"ok\n", head),
            Err(why) => respond(s, 503, "text/plain", format!("{why}\n").as_bytes(), head),
        },
        Resource::Ready => match state.ready() {
            Ok(()) => respond(s, 200, "text/plain", b"ready\n", head),
            Err(why) => respond(s, 503, "text/plain", format!("{why}\n").as_bytes(), head),
        },
        Resource::Stats => {
            let body = render::stats_json(state);
            respond(s, 200, "application/json", body.as_bytes(), head)
        }
        // `serve` routes neither here; a 404 rather than a panic (panic = abort) if it ever did.
        Resource::Server | Resource::Unknown => respond(s, 404, "text/plain", b"not found\n", head),
    }
}

/// The methods every admin resource (and the admin server as a whole, `OPTIONS *`) takes.
const ALLOW: &str = "GET, HEAD, OPTIONS";

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8], head: bool) -> io::Result<()> {
    // The public writer's error status lines; of the rest the admin answers only 200 and 204.
    let line = match status {
        200 => "200 OK",
        204 => "204 No Content",
        _ => http::response::status_text(status).unwrap_or("500 Internal Server Error"),
    };
    // RFC 9110 §15.5.6: a 405 must list the methods the resource does serve; §9.3.7: the answer
    // to OPTIONS lists them too.
    let allow = if matches!(status, 204 | 405) { format!("Allow: {ALLOW}\r\n") } else { String::new() };
    // RFC 9110 §8.6: a 204 has no content, so no Content-Length (and no type).
    debug_assert!(status != 204 || body.is_empty());
    let content = if status == 204 {
        String::new()
    } else {
        format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n", body.len())
    };
    // RFC 9110 §6.6.1: a server with a clock sends Date. Formatted by the public listener's
    // DateCache, so both write the same value the same way; a fresh one per answer, as admin
    // answers are few and each is on a thread of its own. Server as the public listener sends it.
    let mut date = http::DateCache::new();
    date.update(crate::clock::unix_nanos() / 1_000_000_000);
    let date = String::from_utf8_lossy(date.get());
    let mut out = format!(
        "HTTP/1.1 {line}\r\nServer: tracker\r\nDate: {date}\r\n{content}{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    // The whole answer gets the socket's write timeout (ANSWER_TIMEOUT on a served connection,
    // BUSY_WRITE_TIMEOUT on a refused one), not each write.
    let budget = s.write_timeout().ok().flatten().unwrap_or(ANSWER_TIMEOUT);
    write_all_by(s, &out, std::time::Instant::now() + budget)
}

/// `write_all` that gives up at `deadline` (TimedOut), however the peer paces its reads: each
/// `write` may block only for what is left of the time.
fn write_all_by(s: &mut TcpStream, mut out: &[u8], deadline: std::time::Instant) -> io::Result<()> {
    while !out.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the client did not take the answer in time"));
        }
        s.set_write_timeout(Some(left))?;
        match s.write(out) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => out = &out[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer its client does not read ends at its deadline: the write neither blocks for
    /// as long as the client keeps the connection open nor waits a write timeout per `write`.
    #[test]
    fn an_answer_the_client_does_not_read_gives_up_at_its_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        // More than the socket buffers of both ends hold.
        let out = vec![b'x'; 64 << 20];
        let e = write_all_by(&mut s, &out, std::time::Instant::now() + Duration::from_millis(200)).unwrap_err();
        // Linux ends a write blocked past SO_SNDTIMEO with EAGAIN; a later try finds no time left.
        assert!(matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock), "{e}");
        drop(client);

        // An answer's budget is the socket's write timeout: a refused connection's 100 ms
        // (BUSY_WRITE_TIMEOUT) bounds a busy refusal's whole write, not ANSWER_TIMEOUT's 10 s.
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        s.set_write_timeout(Some(BUSY_WRITE_TIMEOUT)).unwrap();
        let started = std::time::Instant::now();
        assert!(respond(&mut s, 503, "text/plain", &out, false).is_err());
        assert!(started.elapsed() < ANSWER_TIMEOUT, "{:?}", started.elapsed());
        drop(client);
    }
}
