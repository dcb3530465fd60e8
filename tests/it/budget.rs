//! Per-source budgets over real sockets: pixels over budget are answered and not journaled;
//! notices over budget get 429 with Retry-After. Assertions allow for refills during a slow
//! run instead of relying on timing.

use crate::harness::*;
use std::time::Instant;

fn config(rate: u32, burst: u32) -> String {
    format!("[budget]\nrate_per_s = {rate}\nburst = {burst}\nexempt_loopback = false\n")
        + &crate::pipeline::default_endpoints_and_events()
}

#[test]
fn pixels_over_budget_are_answered_but_not_journaled() {
    let mut s = Server::start(Some(&config(1, 3)), &["--shards", "2"]);
    let started = Instant::now();
    for i in 0..20 {
        // New connections too: the budget is per source prefix, across connections and shards.
        let r = s.connect().get(&format!("/i?c={}", i + 1));
        assert_eq!((r.status, r.body.len()), (200, 43), "a dropped pixel still gets its GIF");
    }
    let refills = started.elapsed().as_secs() + 1;
    assert_eq!(s.stop(), 0);
    let n = journal_cat(&s.journal()).len() as u64;
    assert!(n >= 3 && n <= 3 + refills, "{n} journaled: expected the burst of 3 plus at most {refills} refills");
}

#[test]
fn notices_over_budget_get_429_with_retry_after() {
    let mut s = Server::start(Some(&config(1, 2)), &["--shards", "1"]);
    let mut c = s.connect();
    let mut ok = 0;
    let mut refused = None;
    for i in 0..50 {
        let r = c.get(&format!("/bill?auction=a{i}&price=1"));
        match r.status {
            204 => ok += 1,
            429 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let r = refused.expect("a 1/s budget must refuse within 50 notices");
    let secs: u32 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(secs >= 1);
    assert_eq!(r.header("location"), None);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "over budget, retry later");
    // The connection stays usable.
    assert!(matches!(c.get("/bill?auction=z&price=1").status, 204 | 429));
    assert_eq!(s.stop(), 0);
    let bills = journal_cat(&s.journal()).iter().filter(|e| e["auction_id"] != "z").count();
    assert_eq!(bills, ok, "every 204 was journaled, no 429 was");
}

/// Regression: a `logged` endpoint without `over_budget` took the default "drop", so a
/// conversion over budget was answered 200 — which on a logged endpoint says it is in the
/// journal — and never journaled. Logged endpoints now refuse (429) over budget: every 2xx
/// conversion is in the journal.
#[test]
fn a_logged_endpoint_over_budget_refuses_rather_than_answer_2xx_unjournaled() {
    let base = config(1, 2);
    let text = base.replacen(
        "response = \"gif\"\nack = \"logged\"\nover_budget = \"reject\"\n",
        "response = \"gif\"\nack = \"logged\"\n",
        1,
    );
    assert_ne!(text, base, "the /cv endpoint's over_budget line is taken out");
    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    let mut c = s.connect();
    let (mut ok, mut refused) = (0, 0);
    for i in 0..30 {
        match c.get(&format!("/cv?c=1&order=o-{i}&value=1")).status {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    assert!(refused > 0, "nothing was over budget: {ok} answered");
    assert_eq!(s.stop(), 0);
    let journaled = journal_cat(&s.journal()).iter().filter(|e| e["type"] == "conversion").count();
    assert_eq!(journaled, ok, "every 2xx conversion is journaled");
}

#[test]
fn a_prefix_over_its_connection_limit_is_closed_at_accept_across_shards_and_freed_at_close() {
    let cfg = "[budget]\nrate_per_s = 0\nconnections_per_prefix_max = 3\nexempt_loopback = false\n".to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "2"]);
    // Three connections, each answered (so each is accepted and counted, whichever shard).
    let mut held: Vec<Client> = (0..3).map(|_| s.connect()).collect();
    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(c.get(&format!("/i?c={}", i + 1)).status, 200);
    }
    // The fourth from the same prefix is closed without an answer.
    let mut over = s.connect();
    over.send(b"GET /i?c=9 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(over.is_closed(), "a fourth connection from the prefix must be closed at accept");
    let m = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    assert!(
        m.lines().any(|l| l == "tracker_rejects_total{reason=\"source_connection_limit\"} 1"),
        "{}",
        m.lines().filter(|l| l.contains("rejects_total")).collect::<Vec<_>>().join("\n")
    );
    // Closing one frees its place (the server counts the close when it sees the EOF).
    drop(held.pop());
    let deadline = Instant::now() + WAIT;
    let answered = loop {
        let mut c = s.connect();
        c.send(b"GET /i?c=10 HTTP/1.1\r\nHost: t\r\n\r\n");
        if !c.is_closed() {
            assert_eq!(c.read_response(false).status, 200);
            break c;
        }
        assert!(Instant::now() < deadline, "the freed place was never given to a new connection");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    drop(answered);
    drop(held);
    assert_eq!(s.stop(), 0);
    // The three answered, and the one on the freed place.
    assert_eq!(journal_cat(&s.journal()).len(), 4);
}

#[test]
fn each_item_of_a_batch_is_charged_to_the_sources_budget() {
    let mut s = Server::start(Some(&config(1, 3)), &["--shards", "1"]);
    let mut c = s.connect();
    let items: Vec<String> = (0..10).map(|i| format!(r#"{{"type":"budgeted","name":"n{i}"}}"#)).collect();
    let body = format!("[{}]", items.join(","));
    let started = Instant::now();
    let mut req = format!(
        "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    c.send(&req);
    let r = c.read_response(false);
    let refills = started.elapsed().as_secs() as usize + 1;
    assert_eq!(r.status, 200);
    let a: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let accepted = a["accepted"].as_u64().unwrap() as usize;
    // The burst of 3 (the request's own charge is the first item's), plus refills.
    assert!((3..=3 + refills).contains(&accepted), "{a}");
    let rejected = a["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 10 - accepted, "{a}");
    assert!(rejected.iter().all(|x| x["reason"] == "over budget, retry later"), "{a}");
    assert_eq!(s.stop(), 0);
    let n = journal_cat(&s.journal()).iter().filter(|e| e["kind"] == "budgeted").count();
    assert_eq!(n, accepted);
}

/// The embedded config with a 1/s budget of burst `burst` that exempts loopback (the default),
/// and the SSAI key `st1` (0x5a × 32).
fn ssai_config(burst: u32) -> String {
    let cfg = tracker::config::DEFAULT_TOML
        .replace("rate_per_s = 1000\n", "rate_per_s = 1\n")
        .replace("burst = 2000\n", &format!("burst = {burst}\n"))
        .replace(
            "# ssai_skew_s = 300",
            &format!("[[privacy.ssai_key]]\nid = \"st1\"\nsecret_hex = \"{}\"\n", "5a".repeat(32)),
        );
    assert!(cfg.contains("rate_per_s = 1\n") && cfg.contains("exempt_loopback = true") && cfg.contains("\"st1\""));
    cfg
}

/// A billing notice from a stitcher that signs `X-Device-IP: device`.
fn signed_bill(c: &mut Client, i: usize, device: &str) -> Response {
    let auth = tracker::enrich::ssai::SsaiAuth::new(vec![("st1".into(), vec![0x5a; 32])], 300);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let query = format!("auction=a{i}&price=1");
    let sig = auth.sign("st1", now, b"/bill", query.as_bytes(), device.as_bytes(), b"").unwrap();
    c.send(
        format!("GET /bill?{query} HTTP/1.1\r\nHost: t\r\nX-Device-IP: {device}\r\nX-Tracker-Auth: {sig}\r\n\r\n")
            .as_bytes(),
    );
    c.read_response(false)
}

/// Regression: a signed `X-Device-IP` of 127.0.0.1 (or `::1`, `::ffff:127.0.0.1`) was charged
/// as that address, which `exempt_loopback` never limits: a stitcher forwarding a loopback
/// address (its own hop's, or one a viewer put in a header it trusts) had no budget at all.
/// Addresses that cannot be a remote viewer's are now refused with a 400 that says why.
#[test]
fn a_signed_device_address_that_is_no_clients_is_refused_not_exempt_from_the_budget() {
    let mut s = Server::start(Some(&ssai_config(3)), &["--shards", "1"]);
    let mut c = s.connect();
    let unusable = [
        "127.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "0.1.2.3",
        "224.0.0.1",
        "ff02::1",
        "255.255.255.255",
        "169.254.1.1",
        "fe80::1",
    ];
    let mut i = 0;
    for device in unusable {
        for _ in 0..10 {
            i += 1;
            let r = signed_bill(&mut c, i, device);
            assert_eq!(
                (r.status, String::from_utf8_lossy(&r.body).trim()),
                (400, "X-Device-IP is not a client address"),
                "{device}"
            );
        }
    }
    // A usable device address (a private one included) is charged as before: its burst of 3,
    // then 429 (a refill during a slow run may let one more pass).
    for device in ["198.51.100.7", "10.1.2.3"] {
        let passed = (0..10).take_while(|_| {
            i += 1;
            signed_bill(&mut c, i, device).status == 204
        });
        let passed = passed.count();
        assert!((3..=5).contains(&passed), "{device}: {passed} passed");
    }
    let m = s.admin_get("/metrics");
    let m = String::from_utf8_lossy(&m.body);
    assert!(m.contains("tracker_rejects_total{reason=\"ssai_device_ip_unusable\"} 110"), "{m}");
    assert_eq!(s.stop(), 0);
    let bills = journal_cat(&s.journal()).iter().filter(|e| e["type"] == "bill").count();
    assert!((6..=10).contains(&bills), "{bills}: only the usable devices' bills are journaled");
}

/// Regression: a correctly signed `X-Device-IP` that is not an IP address at all was taken as
/// no device header: the stitcher's own address was journaled and budgeted as the viewer, and
/// the request counted as `ssai_unauthenticated`, which it was not. It is refused like an
/// address no viewer can have: 400 with the reason, counted as `ssai_device_ip_unusable`,
/// nothing journaled.
#[test]
fn a_signed_device_address_that_is_not_an_ip_address_is_refused() {
    let mut s = Server::start(Some(&ssai_config(1000)), &["--shards", "1"]);
    let mut c = s.connect();
    let unparsable = [
        "",
        "not-an-ip",
        "198.51.100.300",
        "198.51.100.7, 10.0.0.1",
        "198.51.100.7:443",
        "[2001:db8::1]",
        "2001:db8::1%eth0",
    ];
    for (i, device) in unparsable.iter().enumerate() {
        let r = signed_bill(&mut c, i, device);
        assert_eq!(
            (r.status, String::from_utf8_lossy(&r.body).trim()),
            (400, "X-Device-IP is not an IP address"),
            "{device:?}"
        );
    }
    // A usable address from the same stitcher is served as before.
    let r = signed_bill(&mut c, 100, "198.51.100.7");
    assert_eq!(r.status, 204);
    let m = s.admin_get("/metrics");
    let m = String::from_utf8_lossy(&m.body);
    assert!(m.contains("tracker_rejects_total{reason=\"ssai_device_ip_unusable\"} 7"), "{m}");
    assert!(m.contains("tracker_rejects_total{reason=\"ssai_unauthenticated\"} 0"), "{m}");
    assert_eq!(s.stop(), 0);
    let bills: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["type"] == "bill").collect();
    assert_eq!(bills.len(), 1, "only the signed usable device's bill is journaled: {bills:?}");
}
