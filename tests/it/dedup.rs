//! The dedup window across shards: the same pixel on many connections (spread over two shards
//! by SO_REUSEPORT) is answered every time and journaled once.

use crate::harness::*;
use crate::metrics::{get, metrics_when, ready_when};

#[test]
fn a_duplicate_pixel_on_different_connections_and_shards_is_one_event() {
    let mut s = Server::start(None, &["--shards", "2"]);
    let by_shard = connections_by_shard(&s, 4);
    assert!(by_shard.iter().all(|v| !v.is_empty()), "64 connections never reached both shards");
    let mut conns: Vec<Client> = by_shard.into_iter().flatten().collect();
    let n = conns.len();
    for c in conns.iter_mut() {
        // Same client eid.
        let r = c.get("/i?c=1&eid=refire-1&cb=1");
        assert_eq!((r.status, r.body.len()), (200, 43));
        // Same identity fields (impression_id), different cache busters.
        assert_eq!(c.get("/i?c=2&imp=imp-xyz&cb=2").status, 200);
        // A retried billing notice (identity: auction, bid, imp); ack = logged.
        assert_eq!(c.get("/bill?auction=a1&bid=b1&imp=i1&price=1.25").status, 204);
        // A double click: redirected every time, logged once.
        let r = c.get("/c?c=3&cr=4&imp=imp-xyz&url=https%3A%2F%2Fexample.com%2F%3Fk%3D%7Bclick_id%7D");
        assert_eq!(r.status, 302);
        // Generated ids are never deduplicated.
        assert_eq!(c.get("/i?c=4").status, 200);
    }
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(count(&|e| e["campaign_id"] == 1), 1, "{events:?}");
    assert_eq!(count(&|e| e["campaign_id"] == 2), 1);
    assert_eq!(count(&|e| e["type"] == "bill"), 1);
    assert_eq!(count(&|e| e["type"] == "click"), 1);
    assert_eq!(count(&|e| e["campaign_id"] == 4), n);
    assert_eq!(count(&|e| e["type"] == "conversion"), events.len() - 4 - n);
}

#[test]
fn a_head_from_a_link_scanner_does_not_make_the_users_click_a_duplicate() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let click = "/c?c=3&cr=4&imp=imp-scan&url=https%3A%2F%2Fexample.com%2F";
    // A mail scanner probes the link twice with HEAD, then the user clicks it.
    for _ in 0..2 {
        c.send(format!("HEAD {click} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(true).status, 302);
    }
    assert_eq!(c.get(click).status, 302);
    // The user's double click is still one click.
    assert_eq!(c.get(click).status, 302);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["head"] == true).count(), 2, "{events:?}");
    assert_eq!(events.len(), 3, "two flagged HEADs and one click: {events:?}");
}

#[test]
fn dedup_can_be_turned_off() {
    let cfg = "[dedup]\nwindow_ms = 0\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for _ in 0..3 {
        assert_eq!(c.get("/i?c=1&eid=same").status, 200);
    }
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 3);
}

#[test]
fn ids_forgotten_early_by_a_full_dedup_table_are_counted_in_metrics() {
    // The smallest table (1024 entries) and more distinct ids than it holds, all inside the
    // window: by pigeonhole at least 1100 - 1024 of them evict a live entry, and an operator
    // must see that to know dedup.entries is too small (duplicates of those ids get through).
    let cfg = "[dedup]\nentries = 1024\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for i in 0..1100 {
        assert_eq!(c.get(&format!("/i?c=1&eid=fill-{i}")).status, 200);
    }
    let body = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    let evictions: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("tracker_dedup_evictions_total "))
        .unwrap_or_else(|| panic!("no tracker_dedup_evictions_total in /metrics:\n{body}"))
        .parse()
        .unwrap();
    assert!(evictions >= 1100 - 1024, "{evictions}");
    assert!(body.contains("# TYPE tracker_dedup_evictions_total counter"));
}

#[test]
fn a_long_eid_is_one_id_however_it_is_percent_encoded() {
    // Longer than the 64 bytes an id is decoded into on the stack: still hashed as decoded, so
    // a re-fired pixel that encodes its eid otherwise is recognised as a repeat.
    let long = "order-".repeat(12);
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(c.get(&format!("/i?c=1&eid={long}")).status, 200);
    assert_eq!(c.get(&format!("/i?c=2&eid={}", long.replace('-', "%2D"))).status, 200);
    assert_eq!(c.get(&format!("/i?c=3&eid={long}x")).status, 200);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    let campaigns: Vec<_> = events.iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns, [1, 3], "{events:?}");
}

/// Up to `want` connections of `s` on each of its two shards, from at most 64 tries. A
/// conversion without an order id is acknowledged (ack = logged) only once it is in the journal,
/// which then says which shard took the connection.
fn connections_by_shard(s: &Server, want: usize) -> [Vec<Client>; 2] {
    let mut by_shard: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    for probe in 0..64u64 {
        if by_shard.iter().all(|v| v.len() >= want) {
            break;
        }
        let mut c = s.connect();
        assert_eq!(c.get(&format!("/cv?c={}", 1000 + probe)).status, 200);
        let shard = journal_cat(&s.journal())
            .iter()
            .find(|e| e["campaign_id"] == 1000 + probe)
            .and_then(|e| e["shard"].as_u64())
            .expect("a logged event is in the journal when acknowledged") as usize;
        if by_shard[shard].len() < want {
            by_shard[shard].push(c);
        }
    }
    by_shard
}

/// Two connections of `s` on each of its two shards.
fn two_connections_per_shard(s: &Server) -> [Vec<Client>; 2] {
    let by_shard = connections_by_shard(s, 2);
    assert!(by_shard.iter().all(|v| v.len() == 2), "64 connections never reached both shards twice");
    by_shard
}

/// The request that makes an event's first copy (`first_req`, sent on shard 0) and its repeat
/// (`repeat_req`, on another connection of shard `repeat_shard`), with shard 0's drain held
/// while both arrive, behind pixels that fill shard 0's segment. With `block` its next segment
/// cannot be made, so the drain, released, fails before it reaches the first copy; without, it
/// goes on. `events` is the type's event counter: it says when shard 0 has taken the first copy
/// (whose request waits for the journal), and only then is the repeat sent; the drain is
/// released once the repeat is counted as a duplicate. Returns the server (with `block`, shard
/// 0's journal failing) and what each connection got, None for closed unanswered.
fn repeat_of_a_first_copy_held_up(
    cfg_tail: &str,
    block: bool,
    repeat_shard: usize,
    first_req: &str,
    repeat_req: &str,
    events: &str,
) -> (Server, Option<Response>, Option<Response>) {
    // The drain is held below for as long as the steps take: never long enough, even on a busy
    // machine, to count as a stalled journal, which would refuse the repeat up front.
    let cfg = "[journal]\nsegment_bytes = 65536\nstall_timeout_ms = 600000\n".to_string()
        + &crate::pipeline::default_endpoints_and_events()
        + cfg_tail;
    let s = Server::start(Some(&cfg), &["--shards", "2"]);
    let mut conns = two_connections_per_shard(&s);
    let mut repeat = conns[repeat_shard].pop().unwrap();
    let mut first = conns[0].pop().unwrap();
    if block {
        std::fs::create_dir(s.journal().join("shard-000").join("00000000000000000002.seg")).unwrap();
    }
    let drain = HeldThread::hold(s.child.id(), "tracker-drain-0");
    // More than a 64 KiB segment holds (~127 records): answered from the ring (ack = received).
    for i in 0..200 {
        assert_eq!(first.get(&format!("/i?c={}", i + 1)).status, 200);
    }
    const DUPLICATES: &str = r#"tracker_rejects_total{reason="duplicate"}"#;
    let before = metrics_when(&s, "metrics", |_| true);
    first.send(first_req.as_bytes());
    metrics_when(&s, "the first copy pushed", |m| get(m, events) == get(&before, events) + 1.0);
    repeat.send(repeat_req.as_bytes());
    // Taken for a repeat while no journal fails yet (after, it would be refused up front).
    metrics_when(&s, "the repeat seen", |m| get(m, DUPLICATES) == get(&before, DUPLICATES) + 1.0);
    drop(drain);
    let answered = repeat.try_read_response(false);
    let first_answered = first.try_read_response(false);
    if block {
        assert!(ready_when(&s, 503).contains("shard 0: journal appends are failing"));
    }
    (s, first_answered, answered)
}

const CONVERSION: &str = "GET /cv?c=7&order=R-1&value=1.5 HTTP/1.1\r\nHost: t\r\n\r\n";

/// `repeat_of_a_first_copy_held_up` for a conversion (ack = logged) and its repeat.
fn conversion_repeat_held_up(block: bool, repeat_shard: usize) -> (Server, Option<Response>, Option<Response>) {
    let events = r#"tracker_events_total{type="conversion"}"#;
    repeat_of_a_first_copy_held_up("", block, repeat_shard, CONVERSION, CONVERSION, events)
}

/// Lets shard 0 make its next segment again (see `repeat_of_a_first_copy_held_up`), and waits
/// until its journal is written again.
fn unblock_shard_0(s: &Server) {
    std::fs::remove_dir(s.journal().join("shard-000").join("00000000000000000002.seg")).unwrap();
    assert_eq!(ready_when(s, 200), "ready\n");
}

/// Both the first copy's request and its repeat closed unanswered.
fn neither_acknowledged(first: &Option<Response>, repeat: &Option<Response>) {
    assert!(repeat.is_none(), "the repeat was acknowledged, its first copy never journaled: {repeat:?}");
    assert!(first.is_none(), "the first copy's own request is not acknowledged: {first:?}");
}

/// Stops `s` and checks that the conversion R-1 is in its journal exactly once.
fn stop_with_r1_journaled_once(mut s: Server) {
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["order_id"] == "R-1").count(), 1, "{events:?}");
}

/// Regression: the dedup window answered a repeat at once, also on an `ack = "logged"` endpoint,
/// while the first copy's own request was still waiting for the journal. Had the process died
/// then, or the journal failed as here, a 2xx was out for an event that never reached the disk.
/// The drain fails with the first copy (shard 0) still in its ring: neither its request nor the
/// repeat (shard 1) may be acknowledged; both connections are closed unanswered.
#[test]
fn a_duplicate_on_a_logged_endpoint_is_not_acknowledged_before_its_first_copy_is_journaled() {
    let (s, first, repeat) = conversion_repeat_held_up(true, 1);
    neither_acknowledged(&first, &repeat);

    // Once the journal can be written again the first copy is journaled, exactly once.
    unblock_shard_0(&s);
    assert_eq!(s.connect().get("/cv?c=7&order=R-1&value=1.5").status, 200, "a retry now is a duplicate, acknowledged");
    stop_with_r1_journaled_once(s);
}

/// A repeat whose first copy is held up on another shard is acknowledged once that copy is
/// journaled: the wait ends in a 2xx, not only in a refusal.
#[test]
fn a_duplicate_on_a_logged_endpoint_is_acknowledged_once_its_first_copy_is_journaled() {
    let (s, first, repeat) = conversion_repeat_held_up(false, 1);
    assert_eq!(repeat.map(|r| r.status), Some(200));
    assert_eq!(first.map(|r| r.status), Some(200));
    stop_with_r1_journaled_once(s);
}

/// The same with the repeat on another connection of the first copy's shard.
#[test]
fn a_duplicate_on_a_logged_endpoint_waits_for_its_first_copy_on_the_same_shard_too() {
    let (s, first, repeat) = conversion_repeat_held_up(true, 0);
    neither_acknowledged(&first, &repeat);
    unblock_shard_0(&s);
    stop_with_r1_journaled_once(s);
}

/// The same for a POST batch on a `logged` endpoint: its answer waits for the first copy of each
/// duplicate item too, wherever it went, and is not sent when that copy's journal fails.
#[test]
fn a_logged_batch_with_a_duplicate_item_is_not_acknowledged_before_its_first_copy_is_journaled() {
    let tail = "\n[[endpoint]]\npath = \"/lbatch\"\nmethod = \"POST\"\nevent = \"batch_event\"\nresponse = \"json\"\nack = \"logged\"\n";
    let post = |body: &str| {
        format!(
            "POST /lbatch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let (mut s, first, repeat) = repeat_of_a_first_copy_held_up(
        tail,
        true,
        1,
        &post(r#"[{"type":"k","eid":"B-1"}]"#),
        // A new item (journaled on shard 1, whose journal is fine) and the repeat.
        &post(r#"[{"type":"k","eid":"B-2"},{"type":"k","eid":"B-1"}]"#),
        r#"tracker_events_total{type="batch_event"}"#,
    );
    assert!(repeat.is_none(), "the batch was acknowledged, its item's first copy never journaled: {repeat:?}");
    assert!(first.is_none(), "the first copy's own batch is not acknowledged: {first:?}");

    unblock_shard_0(&s);
    let mut c = s.connect();
    c.send(post(r#"[{"type":"k","eid":"B-2"},{"type":"k","eid":"B-1"}]"#).as_bytes());
    let r = c.read_response(false);
    assert_eq!((r.status, r.body), (200, br#"{"accepted":2,"rejected":[]}"#.to_vec()), "retried: two duplicates");
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["type"] == "batch_event").count(), 2, "B-1 and B-2 once each: {events:?}");
}
