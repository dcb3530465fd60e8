//! Zero-downtime restart: a client load (keep-alive connections and a new connection per request)
//! runs while a second process binds the same port and the first drains and exits. No request
//! fails and every acknowledged event is in the journal afterwards.
//!
//! Client rule (what HTTP clients do): a request that got no response byte because the server
//! closed the connection (an idle keep-alive connection closed by the draining process, or a
//! connection reset before it was accepted) was never processed, and is sent again on a new
//! connection. Such retries are counted and printed; a non-2xx status or a request that cannot
//! be completed within the bound is a failure.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{journal_cat, spawn_beside, wait_child, wait_line, Client, Server, WAIT};

/// Attempts per request before it counts as failed.
const ATTEMPTS_MAX: u32 = 20;

fn uuid(n: u64) -> String {
    format!("20000000-0000-4000-8000-{n:012x}")
}

struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    /// Retries whose connection was opened for that attempt: connections reset in a listen queue
    /// (the race docs/operations.md describes), as opposed to keep-alive connections closed idle.
    fresh_resets: AtomicU64,
    acked: Mutex<Vec<String>>,
}

/// Sends one pixel with id `n`, on `conn` (reconnecting as needed); true when answered 200.
fn fire(addr: SocketAddr, conn: &mut Option<Client>, n: u64, keep_alive: bool, t: &Tally) -> bool {
    let id = uuid(n);
    let req = format!(
        "GET /i?c=1&eid={id} HTTP/1.1\r\nHost: t\r\n{}\r\n",
        if keep_alive { "" } else { "Connection: close\r\n" }
    );
    for attempt in 0..ATTEMPTS_MAX {
        if attempt > 0 {
            t.retries.fetch_add(1, SeqCst);
            std::thread::sleep(Duration::from_millis(5));
        }
        let fresh = conn.is_none();
        let c = conn.get_or_insert_with(|| Client::connect(addr));
        let answered = if c.stream.write_all(req.as_bytes()).is_err() { None } else { c.try_read_response(false) };
        match answered {
            None => {
                *conn = None;
                if fresh {
                    t.fresh_resets.fetch_add(1, SeqCst);
                }
                continue;
            }
            Some(r) => {
                if !keep_alive || r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                    *conn = None;
                }
                if r.status == 200 {
                    t.ok.fetch_add(1, SeqCst);
                    t.acked.lock().unwrap().push(id);
                    return true;
                }
                eprintln!("request {id}: status {}", r.status);
                t.failed.fetch_add(1, SeqCst);
                return false;
            }
        }
    }
    t.failed.fetch_add(1, SeqCst);
    false
}

/// Starts the second process on the same port and journal; returns once it reported that it
/// bound the port and waits for the first process's journal lock.
fn start_second(addr: SocketAddr, journal: &std::path::Path) -> (Child, mpsc::Receiver<String>) {
    let (child, rx) = spawn_beside(addr, journal, &["--shards", "2", "--admin-listen", "127.0.0.1:0"]);
    wait_line(&rx, "is locked by another tracker process");
    (child, rx)
}

/// Regression: an `admin.hlog_path` that cannot be opened (a directory that does not exist, or
/// one the unit's `ProtectSystem=strict` makes read-only) was found when the admin listener
/// started, after the shards had taken the journal: in a handoff, after the new process had
/// reported "is locked" and the old one had been stopped. It now fails the start at once, like
/// a taken admin port.
#[test]
fn an_hlog_path_that_cannot_be_opened_fails_the_start_before_it_waits_for_the_journal_lock() {
    let mut old = Server::start(None, &["--shards", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("no-such-dir/tracker.hlog");
    let cfg = dir.path().join("hlog.toml");
    let text = tracker::config::DEFAULT_TOML
        .replace("# hlog_path = \"tracker.hlog\"", &format!("hlog_path = \"{}\"", hlog.display()));
    assert!(text.contains("\nhlog_path = "), "config/tracker.toml's hlog_path line changed; update this test");
    std::fs::write(&cfg, text).unwrap();
    let args = ["--shards", "1", "--config", cfg.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"];
    let (mut second, rx) = spawn_beside(old.addr, &old.journal(), &args);
    let status = wait_child(&mut second, "of an hlog path that cannot be opened");
    // The child has exited: its stderr ends, and so does this.
    let err: Vec<String> = rx.iter().collect();
    assert_eq!(status.code(), Some(1), "{err:#?}");
    let said = format!("cannot open admin.hlog_path {}", hlog.display());
    assert!(err.iter().any(|l| l.contains(&said)), "{err:#?}");
    assert!(!err.iter().any(|l| l.contains("is locked") || l.contains("listening on")), "{err:#?}");
    assert_eq!(Client::connect(old.addr).get("/i?c=1").status, 200);
    assert_eq!(old.stop(), 0);
}

/// Regression: a new process bound the admin port (SO_REUSEPORT, like the old one) and listened
/// on it before it waited for the old process's journal locks, but served it only once started.
/// The kernel gave it its share of the admin connections meanwhile, and those waited unanswered
/// in its backlog: during a handoff about half of the health probes timed out while the old
/// process was serving, enough for a load balancer to take the host out. The new process now
/// listens on the admin port only once it serves it; meanwhile the old one answers every probe.
#[test]
fn admin_probes_are_all_answered_while_a_new_process_waits_for_the_journal_lock() {
    use std::io::Read;
    let mut old = Server::start(None, &["--shards", "1"]);
    let admin = old.admin.unwrap();
    let admin_arg = admin.to_string();
    let (mut second, rx) = spawn_beside(old.addr, &old.journal(), &["--shards", "1", "--admin-listen", &admin_arg]);
    wait_line(&rx, "is locked by another tracker process");
    // Every probe gets its answer from the old process, not a wait in the new one's backlog
    // (which would last until the old one stops, after this loop: it would time out).
    for i in 0..32 {
        let mut c = std::net::TcpStream::connect(admin).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let mut head = [0u8; 12];
        let got = c.read_exact(&mut head);
        assert!(got.is_ok() && &head == b"HTTP/1.1 200", "probe {i} unanswered: {got:?}");
    }
    assert_eq!(old.stop(), 0);
    wait_line(&rx, "tracker: listening on");
    // The new process serves the admin port once started.
    let r = Client::connect(admin).get("/health");
    assert_eq!(r.status, 200);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_child(&mut second, "of SIGTERM").code(), Some(0));
}

#[test]
fn a_stop_while_waiting_for_the_journal_lock_exits_as_a_stop() {
    let mut old = Server::start(None, &["--shards", "2"]);
    let (mut second, err) = start_second(old.addr, &old.journal());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    wait_line(&err, "stopped during start-up, before serving anything");
    let status = wait_child(&mut second, "of SIGTERM");
    assert_eq!(status.code(), Some(0), "a start called off by a stop exits as a stop");
    // The first process never noticed: it still serves, and stops cleanly.
    let r = Client::connect(old.addr).get("/i?c=1");
    assert_eq!(r.status, 200);
    assert_eq!(old.stop(), 0);
}

/// Regression: a `[[collector]]` option that only the collector's build checks (here a property
/// librdkafka refuses) was found after `serve` had bound the port and opened the journal. In a
/// handoff the new process first waited for the old one's journal locks, reporting "is locked"
/// (the cue on which `tracker-handoff.sh` stops the old process), and failed only once it had
/// taken over: an outage. It is now refused before anything is bound or opened.
#[test]
fn a_collector_option_error_fails_the_start_before_it_waits_for_the_journal_lock() {
    let mut old = Server::start(None, &["--shards", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        tracker::config::DEFAULT_TOML.to_string()
            + "\n[[collector]]\nname = \"k\"\nkind = \"kafka\"\nevents = \"all\"\nfields = []\n\
               [collector.options]\nbrokers = \"127.0.0.1:9092\"\nproperties = { \"no.such.prop\" = \"1\" }\n",
    )
    .unwrap();
    let args = ["--shards", "1", "--config", cfg.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"];
    let (mut second, rx) = spawn_beside(old.addr, &old.journal(), &args);
    let status = wait_child(&mut second, "of a collector option error");
    // The child has exited: its stderr ends, and so does this.
    let err: Vec<String> = rx.iter().collect();
    assert_eq!(status.code(), Some(2), "{err:#?}");
    assert!(err.iter().any(|l| l.contains("collector[0].options.properties: librdkafka refuses")), "{err:#?}");
    assert!(!err.iter().any(|l| l.contains("is locked") || l.contains("listening on")), "{err:#?}");
    // The running process never noticed.
    assert_eq!(Client::connect(old.addr).get("/i?c=1").status, 200);
    assert_eq!(old.stop(), 0);
}

#[test]
fn restart_under_load_loses_no_request_and_no_event() {
    let fresh = restart_under_load(2, 2);
    assert!(fresh <= 2 * ATTEMPTS_MAX as u64);
}

/// The accept-queue race, measured: many clients opening a connection per request during the
/// handoff. Prints how many fresh connections were reset (retried). Run by hand, in a network
/// namespace to compare `net.ipv4.tcp_migrate_req` 0 and 1 (docs/operations.md):
/// `cargo test --test it -- --ignored restart_accept_queue_measure --nocapture`.
#[test]
#[ignore = "a measurement to run by hand (see above), not a check"]
fn restart_accept_queue_measure() {
    for _ in 0..5 {
        restart_under_load(2, 24);
    }
}

/// Runs the load across one restart, asserts no failure and no lost event; returns the number of
/// fresh connections that were reset.
fn restart_under_load(keep_alive_clients: u64, fresh_clients: u64) -> u64 {
    let mut old = Server::start(None, &["--shards", "2"]);
    let addr = old.addr;
    let journal = old.journal();

    let t = Arc::new(Tally {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        fresh_resets: AtomicU64::new(0),
        acked: Mutex::new(Vec::new()),
    });
    let restarted = Arc::new(AtomicBool::new(false));
    // 2 keep-alive clients and 2 that open a connection per request; ids are disjoint per client.
    // Each runs until the restart is done and then 200 more requests (bounded overall).
    let clients: Vec<_> = (0..keep_alive_clients + fresh_clients)
        .map(|k| {
            let (t, restarted) = (t.clone(), restarted.clone());
            std::thread::spawn(move || {
                let keep_alive = k < keep_alive_clients;
                let mut conn = None;
                let mut n = k << 32;
                let mut after = 0;
                let bound = Instant::now() + 3 * WAIT;
                while after < 200 && Instant::now() < bound {
                    n += 1;
                    fire(addr, &mut conn, n, keep_alive, &t);
                    if restarted.load(SeqCst) {
                        after += 1;
                    }
                }
                after
            })
        })
        .collect();

    // Let traffic flow on the old process first.
    let deadline = Instant::now() + WAIT;
    while t.ok.load(SeqCst) < 400 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut new, new_err) = start_second(addr, &journal);
    assert_eq!(old.stop(), 0, "the old process must drain and exit 0");
    wait_line(&new_err, "listening on");
    restarted.store(true, SeqCst);
    for (k, c) in clients.into_iter().enumerate() {
        // Each client went on through the restart to its 200 requests, not to the time bound.
        assert_eq!(c.join().unwrap(), 200, "client {k} ran out of time");
    }

    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
    assert!(wait_child(&mut new, "of SIGTERM").success());

    let (ok, failed, retries) = (t.ok.load(SeqCst), t.failed.load(SeqCst), t.retries.load(SeqCst));
    let fresh = t.fresh_resets.load(SeqCst);
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    eprintln!(
        "restart: {ok} requests answered 200, {failed} failed, {retries} retried after a closed connection \
         ({fresh} of them on a fresh connection; tcp_migrate_req={})",
        migrate.trim()
    );
    assert_eq!(failed, 0, "failed requests across the restart");
    let in_journal: HashSet<String> =
        journal_cat(&journal).iter().filter_map(|e| e["id"].as_str().map(str::to_string)).collect();
    let acked = t.acked.lock().unwrap();
    let lost: Vec<&String> = acked.iter().filter(|id| !in_journal.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events missing from the journal, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(acked.len() as u64, ok);
    fresh
}

/// Each eventfd of process `pid` with its counter (`/proc/PID/fdinfo`), by descriptor.
fn eventfd_counts(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap().filter_map(|e| e.ok()) {
        let Ok(info) = std::fs::read_to_string(e.path()) else { continue };
        if let Some(v) = info.lines().find_map(|l| l.strip_prefix("eventfd-count:")) {
            out.push((e.file_name().to_string_lossy().into_owned(), u64::from_str_radix(v.trim(), 16).unwrap()));
        }
    }
    out
}

/// Bytes the kernel holds unread on the server side of the loopback connection from
/// `client_port` to `server_port` (`/proc/net/tcp`'s rx_queue).
fn unread_on_server_side(server_port: u16, client_port: u16) -> u64 {
    let (local, remote) = (format!(":{server_port:04X}"), format!(":{client_port:04X}"));
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].ends_with(&local) && f[2].ends_with(&remote))
                .then(|| u64::from_str_radix(f[4].split(':').nth(1).unwrap(), 16).unwrap())
        })
        .unwrap_or(0)
}

/// The order the reactor sees them in is set exactly: with the shard's thread held (ptrace), the
/// stop's wake-up is queued first, then a request on an idle keep-alive connection. Released,
/// the reactor takes both in one turn: the stop shuts that connection's reads down (an idle
/// connection closes at once at stop) after its read already took the request. That request
/// was received, so it is answered, not dropped unanswered.
#[test]
fn a_request_read_in_the_same_turn_as_the_stop_is_answered() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let pid = s.child.id();
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=1").status, 200);
    let held = crate::harness::HeldThread::hold(pid, "tracker-shard-0");
    let before = eventfd_counts(pid);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    while eventfd_counts(pid) == before {
        assert!(Instant::now() < deadline, "SIGTERM never woke the held shard");
        std::thread::sleep(Duration::from_millis(1));
    }
    c.send(b"GET /i?c=2 HTTP/1.1\r\nHost: t\r\n\r\n");
    let client_port = c.stream.local_addr().unwrap().port();
    while unread_on_server_side(s.addr.port(), client_port) == 0 {
        assert!(Instant::now() < deadline, "the request never reached the server's socket");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(held);
    let r = c.try_read_response(false).expect("the request read as the stop came was dropped unanswered");
    assert_eq!((r.status, r.header("Connection")), (200, Some("close")));
    assert_eq!(s.wait_exit(), 0);
    let ids: Vec<u64> = journal_cat(&s.journal()).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1, 2]);
}
