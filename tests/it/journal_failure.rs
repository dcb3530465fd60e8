//! A journal that cannot be written. The next segment's path is taken by a directory, so the
//! drain's rotation fails as it would on a full disk (root writes through permission bits, so
//! those cannot stand in for it). Meanwhile `logged` endpoints answer 503 and readiness says why,
//! `received` ones keep answering from the ring; once the path is free every acknowledged event
//! reaches the journal. At shutdown a journal that keeps failing is given up on after the
//! drain's retry budget, with exit code 1 and the count of the events lost.

use crate::harness::{journal_cat, Server};
use crate::metrics::ready_when;

const CONFIG_HEAD: &str = "[journal]\nsegment_bytes = 65536\n";

/// Starts a one-shard server with 64 KiB segments and blocks its second segment's path.
fn start_blocked() -> (Server, std::path::PathBuf) {
    let cfg = CONFIG_HEAD.to_string() + &crate::pipeline::default_endpoints_and_events();
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let block = s.journal().join("shard-000").join("00000000000000000002.seg");
    std::fs::create_dir(&block).unwrap();
    (s, block)
}

/// Pixels enough to fill the first segment (~127 records) and more.
const PIXELS: usize = 300;

fn fire_pixels(s: &Server) {
    let mut c = s.connect();
    for i in 0..PIXELS {
        assert_eq!(c.get(&format!("/i?c={}", i + 1)).status, 200, "received pixels answer from the ring");
    }
}

#[test]
fn a_failing_journal_refuses_logged_requests_and_keeps_every_acknowledged_event_once_it_recovers() {
    let (mut s, block) = start_blocked();
    fire_pixels(&s);
    let why = ready_when(&s, 503);
    assert!(why.contains("journal appends are failing"), "{why}");
    let r = s.connect().get("/cv?c=7&order=A1&value=1.5");
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("journal unavailable"), "{:?}", r.body);
    let metrics = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tracker_rejects_total{reason=\"journal_unavailable\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(metrics.lines().any(|l| l == "tracker_journal_unavailable{shard=\"0\",reason=\"failing\"} 1"), "{metrics}");

    // Space again: the drain's retry succeeds, readiness returns, logged requests are taken.
    std::fs::remove_dir(&block).unwrap();
    assert_eq!(ready_when(&s, 200), "ready\n");
    assert_eq!(s.connect().get("/cv?c=7&order=A2&value=1.5").status, 200);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.len(), PIXELS + 1, "every 2xx is in the journal, the 503 is not");
}

#[test]
fn a_journal_that_keeps_failing_at_shutdown_is_given_up_on_with_exit_code_1_and_the_loss_counted() {
    let (mut s, block) = start_blocked();
    fire_pixels(&s);
    ready_when(&s, 503);
    // The drain retries for STOP_RETRY (10 s) after the reactor exits, then gives up: the
    // process must still end, and say what it lost (harness WAIT, 30 s, bounds this).
    assert_eq!(s.stop(), 1);
    let err = s.stderr_lines().join("\n");
    let lost: usize = err
        .lines()
        .find_map(|l| l.split("giving up on ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'giving up on N event(s)' line in:\n{err}"));
    assert!(err.contains("event(s) acknowledged as received were lost"), "{err}");
    std::fs::remove_dir(&block).unwrap();
    let written = journal_cat(&s.journal()).len();
    assert!(lost > 0, "{err}");
    assert_eq!(written + lost, PIXELS, "each acknowledged event is either in the journal or counted lost");
}

/// The dedup window is shared by all shards. A `logged` event stuck in shard 0's failing journal
/// must not be answered as a duplicate (2xx) when its retry lands on shard 1, whose journal is
/// fine: while any shard's journal fails, every shard's `logged` endpoints answer 503.
#[test]
fn while_one_shards_journal_fails_logged_requests_are_refused_on_every_shard() {
    let cfg = CONFIG_HEAD.to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "2"]);
    let block = s.journal().join("shard-000").join("00000000000000000002.seg");
    std::fs::create_dir(&block).unwrap();
    // Connections go to shards by a hash of their addresses: fill segments from new connections
    // until shard 0's rotation has failed (each shard's first segment holds ~127 records).
    let mut fired = 0;
    for conn in 0.. {
        assert!(conn < 64, "no connection reached shard 0");
        let mut c = s.connect();
        for _ in 0..150 {
            fired += 1;
            assert_eq!(c.get(&format!("/i?c={fired}")).status, 200);
        }
        if s.admin_get("/ready").status == 503 {
            break;
        }
    }
    let why = ready_when(&s, 503);
    assert!(why.contains("shard 0: journal appends are failing"), "{why}");
    assert!(!why.contains("shard 1:"), "only shard 0's rotation is blocked: {why}");
    // Each on a new connection, so both shards are asked (2⁻¹⁶ that all land on shard 0).
    for i in 0..16 {
        let r = s.connect().get(&format!("/cv?c=7&order=R{i}&value=1.5"));
        assert_eq!(r.status, 503, "logged request {i} while shard 0's journal fails: {:?}", r.body);
    }

    std::fs::remove_dir(&block).unwrap();
    assert_eq!(ready_when(&s, 200), "ready\n");
    assert_eq!(s.connect().get("/cv?c=7&order=A2&value=1.5").status, 200);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), fired + 1, "every 2xx is in the journal, no 503 is");
}

/// Sends a conversion (`ack = "logged"`) with order id `order` on a new connection, and checks
/// that the connection is closed with nothing written (EOF, or a reset): no 2xx while its
/// event is not in the journal.
fn conversion_closed_unanswered(s: &Server, order: &str) {
    use std::io::Read;
    let mut c = s.connect();
    c.send(format!("GET /cv?c=7&order={order}&value=1.5 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let mut got = Vec::new();
    let read = c.stream.read_to_end(&mut got);
    assert!(got.is_empty(), "answered while the journal was held: {:?}", String::from_utf8_lossy(&got));
    assert!(read.as_ref().map_or_else(|e| e.kind() == std::io::ErrorKind::ConnectionReset, |_| true), "{read:?}");
}

/// A journal that hangs without failing (a disk that stops answering: here the drain's thread
/// is stopped with ptrace) holds a `logged` request no longer than `idle_timeout_ms`: the
/// connection then closes unanswered (no 2xx without the journal), counted as
/// `journal_unavailable`. Once the drain goes on, the event it held is journaled and the stop is
/// clean.
#[test]
fn a_logged_request_waits_for_a_hung_journal_no_longer_than_the_idle_timeout() {
    let cfg = "[server]\nidle_timeout_ms = 300\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let held = crate::harness::HeldThread::hold(s.child.id(), "tracker-drain-0");
    // Closed well before the harness's 30 s read timeout.
    conversion_closed_unanswered(&s, "H1");
    let metrics = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    assert!(metrics.lines().any(|l| l == "tracker_rejects_total{reason=\"journal_unavailable\"} 1"), "{metrics}");
    // Received endpoints still answer from the ring meanwhile.
    assert_eq!(s.connect().get("/i?c=8").status, 200);
    drop(held);
    assert_eq!(s.stop(), 0);
    let orders: Vec<String> =
        journal_cat(&s.journal()).iter().filter_map(|e| e["order_id"].as_str().map(str::to_owned)).collect();
    assert_eq!(orders, ["H1"], "the event held by the stopped drain is journaled once it goes on");
}

/// A journal that has taken none of the events waiting for it for `journal.stall_timeout_ms` is
/// stalled (a disk that hangs; here the drain's thread is stopped with ptrace): the `logged`
/// response already waiting is not sent, `/ready` says why, new `logged` requests are refused
/// 503 at once, `received` ones still answer from the ring; once the drain moves, all of that
/// ends and every acknowledged event (and the one whose response was withheld) is journaled.
#[test]
fn a_stalled_journal_refuses_logged_requests_until_it_moves_again() {
    let cfg = "[journal]\nstall_timeout_ms = 300\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    assert_eq!(ready_when(&s, 200), "ready\n");
    let held = crate::harness::HeldThread::hold(s.child.id(), "tracker-drain-0");
    // Ended by the stall (300 ms), not by the idle timeout (60 s) nor the harness's 30 s read.
    conversion_closed_unanswered(&s, "S1");
    let why = ready_when(&s, 503);
    assert!(why.contains("shard 0: journal stalled"), "{why}");
    let metrics = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    for line in [
        "tracker_journal_unavailable{shard=\"0\",reason=\"stalled\"} 1",
        "tracker_journal_unavailable{shard=\"0\",reason=\"failing\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in {metrics}");
    }
    let refused = s.connect().get("/cv?c=7&order=S2&value=1.5");
    assert_eq!(refused.status, 503);
    assert!(String::from_utf8_lossy(&refused.body).contains("journal unavailable"), "{:?}", refused.body);
    assert_eq!(s.connect().get("/i?c=8").status, 200, "received endpoints answer from the ring");
    drop(held);
    assert_eq!(ready_when(&s, 200), "ready\n");
    let metrics = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    assert!(metrics.lines().any(|l| l == "tracker_journal_unavailable{shard=\"0\",reason=\"stalled\"} 0"));
    assert_eq!(s.connect().get("/cv?c=7&order=S3&value=1.5").status, 200);
    assert_eq!(s.stop(), 0);
    let err = s.stderr_lines().join("\n");
    assert!(err.contains("shard 0: journal stalled: 1 event(s) waiting"), "{err}");
    assert!(err.contains("shard 0: the journal takes events again"), "{err}");
    let events = journal_cat(&s.journal());
    let orders: Vec<&str> = events.iter().filter_map(|e| e["order_id"].as_str()).collect();
    assert_eq!(orders, ["S1", "S3"], "the refused conversion is not journaled, the withheld one is");
    assert_eq!(events.iter().filter(|e| e["campaign_id"] == 8).count(), 1);
}
