//! Start and stop of the server in this process (`tracker::runtime`), where the order of events
//! around a stop can be set up exactly: a request taken from the accept queue at stop, one
//! partly received when the stop comes, a start that fails on a later shard.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Instant;

use tracker::config::Config;

use crate::harness::WAIT;

fn config(dir: &std::path::Path, shards: usize, listen: SocketAddr) -> Config {
    let mut cfg = Config::embedded();
    cfg.server.listen = listen;
    cfg.server.shards = shards;
    cfg.server.connections_per_shard_max = 8;
    cfg.journal.dir = dir.join("journal");
    cfg.journal.segment_bytes = 1 << 20;
    cfg
}

/// Sends `raw`, reads one response head; its status, or None when the server closed first.
fn exchange(s: &mut TcpStream, raw: &[u8]) -> Option<String> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(raw).ok()?;
    let mut head = Vec::new();
    let mut b = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Waits until the shards have stopped accepting (their listeners are closed).
fn wait_until_refused(addr: SocketAddr) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting {WAIT:?} after stop");
        std::thread::yield_now();
    }
}

/// `running.wait()` within WAIT; false when it hung.
fn waits(running: tracker::runtime::Running) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        running.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(WAIT).is_ok()
}

#[test]
fn a_logged_request_taken_from_the_accept_queue_at_stop_is_answered_and_the_shard_exits() {
    // The window (a connection accepted after the shard began stopping with none open) is
    // narrow; every round has a chance to hit it.
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let running = tracker::runtime::start(config(dir.path(), 1, "127.0.0.1:0".parse().unwrap())).unwrap();
        let addr = running.addr();
        running.stop();
        let answer = TcpStream::connect(addr).ok().and_then(|mut s| {
            exchange(&mut s, b"GET /cv?c=1&eid=10000000-0000-4000-8000-000000000001 HTTP/1.1\r\nHost: t\r\n\r\n")
        });
        assert!(waits(running), "round {round}: the shard did not exit after stop (answer: {answer:?})");
        // Its listening socket is closed, not left queueing connections nobody will accept.
        assert!(TcpStream::connect(addr).is_err(), "round {round}: a listener outlived the stop");
        // Answered, then in the journal; or never accepted (refused or reset), never acknowledged.
        let events = crate::harness::journal_cat(&dir.path().join("journal"));
        match answer {
            Some(head) => {
                assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
                assert_eq!(events.len(), 1, "round {round}");
            }
            None => assert!(events.len() <= 1, "round {round}"),
        }
    }
}

/// A one-shard server in `dir` that has answered `GET /i?c=1` on the returned connection and
/// holds the head of `GET /i?c=2` but its last CRLF, stopped (no longer accepting).
fn stopped_with_a_request_partly_received() -> (tempfile::TempDir, tracker::runtime::Running, TcpStream) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, "127.0.0.1:0".parse().unwrap());
    // The rest of the request must arrive within the stop's grace for it: WAIT, so that a busy
    // machine cannot make it late (the grace itself, and its end, are the deadline tests').
    cfg.server.stop_request_grace_ms = WAIT.as_millis() as u64;
    let running = tracker::runtime::start(cfg).unwrap();
    let addr = running.addr();
    let mut s = TcpStream::connect(addr).unwrap();
    // One write: a whole request and the head of the next but its last CRLF. The answer to the
    // first means the server read both; the second waits in its buffer.
    let first = exchange(&mut s, b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\n\r\nGET /i?c=2 HTTP/1.1\r\nHost: t\r\n").unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    running.stop();
    wait_until_refused(addr);
    (dir, running, s)
}

#[test]
fn a_request_partly_received_when_the_stop_comes_is_still_answered() {
    answered_with_close_when_the_stop_comes_before(b"\r\n");
}

/// The request partly received at the stop, ended by `rest`: answered 200 with `Connection:
/// close`, the server then stops, and both events are journaled.
fn answered_with_close_when_the_stop_comes_before(rest: &[u8]) {
    let (dir, running, mut s) = stopped_with_a_request_partly_received();
    let second = exchange(&mut s, rest).expect("the request in flight at stop was dropped");
    assert!(second.starts_with("HTTP/1.1 200") && second.contains("Connection: close"), "{second}");
    assert!(waits(running));
    assert_eq!(crate::harness::journal_cat(&dir.path().join("journal")).len(), 2);
}

#[test]
fn a_start_that_fails_on_a_later_shard_serves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let listen: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // Shard 1's journal cannot be opened: its directory is a file.
    std::fs::create_dir_all(dir.path().join("journal")).unwrap();
    std::fs::write(dir.path().join("journal/shard-001"), b"x").unwrap();
    let err = tracker::runtime::start(config(dir.path(), 2, listen)).err().expect("start must fail");
    assert!(err.to_string().contains("shard 1"), "{err}");
    // Nothing listens: shard 0 never answered (and so never acknowledged) anything.
    assert!(TcpStream::connect(listen).is_err(), "a listener survived the failed start");
}

/// A config whose connection buffers cannot fit in memory is refused at start with the keys to
/// change, not run into the OOM killer (1 << 20 connections of 16 MiB bodies, both within
/// their bounds, reached 24 GiB before the buffers were all made). The child runs under an
/// address-space limit, so that if the check ever goes, this test fails on an allocation
/// instead of taking the machine's memory.
#[test]
fn connection_buffers_larger_than_memory_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("big.toml");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/tracker.toml"))
        .unwrap()
        .replace("connections_per_shard_max = 1024", "connections_per_shard_max = 1048576")
        .replace("body_bytes_max = 65536", "body_bytes_max = 16777216");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new("sh")
        .args(["-c", "ulimit -v 8000000 && exec \"$0\" \"$@\"", crate::harness::BIN, "serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--shards", "1", "--journal-dir"])
        .arg(dir.path().join("journal"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("connection buffers need up to"), "{err}");
    assert!(err.contains("lower server.connections_per_shard_max or server.body_bytes_max"), "{err}");
}

/// A step that panics on campaign 666: stands for any bug that panics on a reactor thread.
#[derive(Debug)]
struct PanicOn666;

impl tracker::enrich::step::Step for PanicOn666 {
    fn name(&self) -> &str {
        "panic_on_666"
    }
    fn apply(
        &self,
        ty: &tracker::config::EventType,
        _req: &tracker::extract::RequestView<'_>,
        ev: &mut tracker::event::Event,
    ) -> Result<(), &'static str> {
        let c = ty.fields.iter().find(|f| f.name == "campaign_id").ok_or("no campaign_id")?;
        assert!(!(ev.has(c.slot) && ev.slots[c.slot] == 666), "a bug on the request path");
        Ok(())
    }
}

/// Regression: a panic on a reactor thread unwound past the point that tells the shard's drain
/// the reactor is done, so the drain waited for it forever and a stop never finished (systemd
/// SIGKILLs after TimeoutStopSec, skipping the final sync and the clean-stop record). The whole
/// server must stop instead: every shard drains what it acknowledged, and the failure is known.
#[test]
fn a_panic_on_a_reactor_stops_the_server_with_every_acknowledged_event_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2, "127.0.0.1:0".parse().unwrap());
    cfg.add_step("impression", std::sync::Arc::new(PanicOn666)).unwrap();
    let running = tracker::runtime::start(cfg).unwrap();
    let addr = running.addr();
    let mut acked = 0;
    for c in 1..=20 {
        let mut s = TcpStream::connect(addr).unwrap();
        let head = exchange(&mut s, format!("GET /i?c={c} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        acked += 1;
    }
    let shards = running.shards().to_vec();
    // Not read back: the dead runtime never closes its sockets (the process exits soon after).
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /i?c=666 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let deadline = Instant::now() + WAIT;
    while !shards.iter().any(|s| s.reactor_panicked()) {
        assert!(Instant::now() < deadline, "no reactor panicked within {WAIT:?}");
        std::thread::yield_now();
    }
    // No stop asked for: the panic itself stops every shard.
    assert!(waits(running), "the server did not stop after a reactor panicked");
    let events = crate::harness::journal_cat(&dir.path().join("journal"));
    assert_eq!(events.len(), acked, "{events:?}");
}

/// Regression: at stop every request got `Connection: close`, so of requests pipelined in one
/// read only the first was answered and the others, received whole, were dropped unanswered
/// (docs/operations.md: "answer every request received"). Each one is answered now; only the
/// last in the buffer says close.
#[test]
fn requests_pipelined_when_the_stop_comes_are_all_answered() {
    // A request partly received when the stop comes keeps the connection open through it.
    let (dir, running, mut s) = stopped_with_a_request_partly_received();
    // Its end and a whole second request, in one write.
    s.write_all(b"\r\nGET /i?c=3 HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    let heads: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(heads.len(), 2, "{text}");
    assert!(heads.iter().all(|h| h.starts_with("200")), "{text}");
    assert!(!heads[0].contains("Connection: close") && heads[1].contains("Connection: close"), "{text}");
    assert!(waits(running));
    assert_eq!(crate::harness::journal_cat(&dir.path().join("journal")).len(), 3);
}

/// Regression: empty lines after the request in flight at the stop (an old client's CRLF after
/// a body) counted as a request behind it, so its response said keep-alive, and the server then
/// closed the connection anyway: the client could send its next request into the close.
#[test]
fn empty_lines_after_the_request_in_flight_at_stop_do_not_keep_it_alive() {
    answered_with_close_when_the_stop_comes_before(b"\r\n\r\n");
}
