//! The dedup window across shards: the same pixel on many connections (spread over two shards
//! by SO_REUSEPORT) is answered every time and journaled once.

use crate::harness::*;

#[test]
fn a_duplicate_pixel_on_different_connections_and_shards_is_one_event() {
    let mut s = Server::start(None, &["--shards", "2"]);
    // Find connections on both shards: a conversion without an order id is acknowledged only once
    // it is in the journal (ack = logged), so the journal tells which shard took the connection.
    let mut by_shard: [Vec<Client>; 2] = [Vec::new(), Vec::new()];
    for probe in 0..64u64 {
        if by_shard.iter().all(|v| v.len() >= 4) {
            break;
        }
        let mut c = s.connect();
        assert_eq!(c.get(&format!("/cv?c={}", 1000 + probe)).status, 200);
        let shard = journal_cat(&s.journal())
            .iter()
            .find(|e| e["campaign_id"] == 1000 + probe)
            .and_then(|e| e["shard"].as_u64())
            .expect("a logged event is in the journal when acknowledged") as usize;
        by_shard[shard].push(c);
    }
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
