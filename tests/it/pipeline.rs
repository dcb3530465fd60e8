//! Pixels in, events out: keep-alive, pipelining, HEAD, HTTP/1.0, ring full, field errors.

use crate::harness::*;
use std::collections::HashSet;

#[test]
fn a_204_pixel_is_marked_uncacheable_like_the_gif() {
    // A cached 204 (RFC 9110 §15.3.5 allows it) would swallow the player's next quartile or a
    // retried notice before it reached us.
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for target in ["/v?c=1&cr=2&ev=start", "/win?auction=a1&bid=b1&imp=i1&price=1.25", "/e?n=signup"] {
        let r = c.get(target);
        assert_eq!(r.status, 204, "{target}");
        assert_eq!(r.header("cache-control"), Some("no-cache, no-store, must-revalidate"), "{target}");
    }
    assert_eq!(s.stop(), 0);
}

#[test]
fn pixels_over_keepalive_and_pipelined_connections_are_journaled_exactly_once() {
    let mut s = Server::start(None, &["--shards", "2"]);
    let mut sent = Vec::new();
    // Four keep-alive connections, one request at a time.
    let mut n = 0u64;
    for _ in 0..4 {
        let mut c = s.connect();
        for _ in 0..50 {
            n += 1;
            let r = c.get(&format!("/i?c={n}&cr={}&p=0.{:02}&site=s{n}.example&eid=e-{n}", n * 10, n % 100));
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-type"), Some("image/gif"));
            assert_eq!(r.header("cache-control"), Some("no-cache, no-store, must-revalidate"));
            assert_eq!(r.body.len(), 43);
            assert!(r.body.starts_with(b"GIF89a"));
            sent.push(n);
        }
    }
    // Two connections that pipeline 100 requests in one write each.
    for _ in 0..2 {
        let mut c = s.connect();
        let mut batch = Vec::new();
        let first = n + 1;
        for _ in 0..100 {
            n += 1;
            batch.extend_from_slice(
                format!("GET /i?c={n}&cr={}&p=0.{:02}&site=s{n}.example&eid=e-{n} HTTP/1.1\r\nHost: t\r\nUser-Agent: test\r\n\r\n", n * 10, n % 100).as_bytes(),
            );
            sent.push(n);
        }
        c.send(&batch);
        for _ in first..=n {
            assert_eq!(c.read_response(false).status, 200);
        }
    }
    assert_eq!(s.stop(), 0);

    let events = journal_cat(&s.journal());
    assert_eq!(events.len(), sent.len(), "exactly one event per acknowledged pixel");
    let mut ids = HashSet::new();
    let mut seen = HashSet::new();
    for e in &events {
        assert_eq!(e["type"], "impression");
        let c = e["campaign_id"].as_u64().unwrap();
        assert_eq!(e["creative_id"].as_u64(), Some(c * 10));
        assert_eq!(e["site"].as_str().unwrap(), format!("s{c}.example"));
        let micros = (e["price"].as_f64().unwrap() * 1e6).round() as u64;
        assert_eq!(micros, (c % 100) * 10_000);
        assert_eq!(e["ip"], "127.0.0.0", "privacy.ip = truncate: IPv4 /24");
        assert!(e["ts"].as_str().unwrap().ends_with('Z'));
        assert!(e["shard"].as_u64().unwrap() < 2);
        assert!(ids.insert(e["id"].as_str().unwrap().to_string()), "duplicate id");
        assert!(seen.insert(c));
    }
    assert_eq!(seen.len(), sent.len());
    // The same eid always maps to the same id, so a re-fired pixel can be recognised.
    let a = events.iter().find(|e| e["campaign_id"] == 1).unwrap()["id"].clone();
    let mut s2 = Server::start(None, &[]);
    assert_eq!(s2.connect().get("/i?c=1&eid=e-1").status, 200);
    assert_eq!(s2.stop(), 0);
    assert_eq!(journal_cat(&s2.journal())[0]["id"], a);
}

#[test]
fn head_http10_and_no_content_endpoints() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    c.send(b"HEAD /i?c=5 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("43"));
    // Nothing but the next response follows a HEAD response.
    c.send(b"GET /v?ev=start&c=5 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());

    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut c = s.connect();
    c.send(b"GET /e?n=signup&val=-3 HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 204);
    assert!(c.is_closed());
    // HTTP/1.0 with keep-alive stays open.
    let mut c = s.connect();
    c.send(b"GET /e?n=a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("connection").map(str::to_ascii_lowercase).as_deref(), Some("keep-alive"));
    c.send(b"GET /e?n=b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response(false).status, 204);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let names: Vec<&str> = ev.iter().filter_map(|e| e["name"].as_str()).collect();
    assert_eq!(names, ["signup", "a", "b"]);
    assert_eq!(ev.iter().find(|e| e["name"] == "signup").unwrap()["value"], -3);
    assert_eq!(ev.iter().filter(|e| e["type"] == "video").count(), 1);
    // The HEAD impression is an event, flagged; the GETs are not.
    let imps: Vec<&serde_json::Value> = ev.iter().filter(|e| e["type"] == "impression").collect();
    assert_eq!(imps.len(), 1);
    assert_eq!(imps[0]["head"], true, "{}", imps[0]);
    assert!(ev.iter().filter(|e| e["type"] != "impression").all(|e| e.get("head").is_none()));
}

#[test]
fn missing_or_bad_fields_are_400_with_the_reason_and_not_journaled() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let r = c.get("/i?cr=1");
    assert_eq!(r.status, 400);
    assert_eq!(String::from_utf8_lossy(&r.body).trim_end(), "field campaign_id: missing required value");
    let r = c.get("/i?c=abc");
    assert_eq!(r.status, 400);
    assert_eq!(String::from_utf8_lossy(&r.body).trim_end(), "field campaign_id: is not an unsigned 64-bit integer");
    // (An unsubstituted ${AUCTION_PRICE} is accepted and flagged: see tests/it/notices.rs.)
    let r = c.get("/win?auction=a&price=1.2.3");
    assert_eq!(r.status, 400);
    assert_eq!(String::from_utf8_lossy(&r.body).trim_end(), "field price: is not a decimal amount");
    // A browser-fired impression's price is bounded by default (max = 1000): one forged pixel
    // cannot spend a campaign's budget at the banker.
    let r = c.get("/i?c=1&p=1000.000001");
    assert_eq!(r.status, 400);
    assert_eq!(String::from_utf8_lossy(&r.body).trim_end(), "field price: is out of the allowed range (min/max)");
    assert_eq!(c.get("/i?c=2&p=1000").status, 200, "the bound itself is accepted");
    // The connection survives a field error.
    assert_eq!(c.get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 2);
}

#[test]
fn a_full_ring_answers_503_with_retry_after_and_loses_nothing_it_acknowledged() {
    let cfg = "[server]\nring_events = 16\n".to_string() + &default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let mut batch = Vec::new();
    const N: usize = 400;
    for i in 0..N {
        batch.extend_from_slice(format!("GET /i?c={} HTTP/1.1\r\nHost: t\r\n\r\n", i + 1).as_bytes());
    }
    c.send(&batch);
    let (mut ok, mut busy) = (0, 0);
    for _ in 0..N {
        let r = c.read_response(false);
        match r.status {
            200 => ok += 1,
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                busy += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(busy > 0, "a 16-event ring must overflow under a 400-request pipelined burst");
    // A 503 means both tiers were full, so events went through the spill tier (8 of the 16).
    let m = crate::metrics::parse_metrics(std::str::from_utf8(&s.admin_get("/metrics").body).unwrap());
    assert!(m[r#"tracker_ring_spilled_total{shard="0"}"#] > 0.0, "{m:#?}");
    assert_eq!(s.stop(), 0);
    // Exactly the acknowledged events, in the order they were sent, whichever tier held them.
    let campaigns: Vec<u64> = journal_cat(&s.journal()).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns.len(), ok);
    assert!(campaigns.windows(2).all(|w| w[0] < w[1]), "journal out of order: {campaigns:?}");
}

/// The `interval` sync runs on a thread of its own (journal/background_sync.rs), so a disk that
/// holds a sync does not hold the drain: with that thread stopped (ptrace; at whatever point
/// it was, mid-sync or waiting for one, where the next sync handed over waits), four rings'
/// worth of pixels are still taken into the journal, none refused 503.
#[test]
fn a_journal_sync_held_up_does_not_hold_up_the_drain() {
    let cfg =
        "[server]\nring_events = 256\n[journal]\nsync_interval_ms = 1\n".to_string() + &default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let pid = s.child.id();
    let mut c = s.connect();
    let mut n = 0u64;
    let deadline = std::time::Instant::now() + WAIT;
    // Each pixel leaves the journal to sync, and a sync starts every ms: catch one.
    let held = loop {
        n += 1;
        assert_eq!(c.get(&format!("/i?c={n}")).status, 200);
        if let Ok(h) = HeldThread::try_hold(pid, "tracker-sync-0") {
            break h;
        }
        assert!(std::time::Instant::now() < deadline, "no journal sync ran on a thread of its own");
    };
    for _ in 0..4 * 256 {
        n += 1;
        assert_eq!(c.get(&format!("/i?c={n}")).status, 200, "pixel {n} while the sync is held");
    }
    drop(held);
    assert_eq!(s.stop(), 0);
    let campaigns: Vec<u64> = journal_cat(&s.journal()).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns, (1..=n).collect::<Vec<_>>());
}

/// `tracker log tail` (alias of `journal cat --follow`) prints what is already there, then each
/// event as the drain appends it, while the server runs.
#[test]
fn log_tail_follows_events_as_they_are_journaled() {
    use std::io::BufRead;
    let mut s = Server::start(None, &["--shards", "1"]);
    assert_eq!(s.connect().get("/i?c=101").status, 200);
    let mut tail = std::process::Command::new(BIN)
        .args(["log", "tail", "--journal-dir"])
        .arg(s.journal())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_campaign = || {
        let line = rx.recv_timeout(WAIT).expect("log tail printed nothing within the wait");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["campaign_id"].as_u64().unwrap()
    };
    assert_eq!(next_campaign(), 101, "what was journaled before the tail started");
    assert_eq!(s.connect().get("/i?c=102").status, 200);
    assert_eq!(next_campaign(), 102, "an event appended while tailing");
    let _ = tail.kill();
    let _ = tail.wait();
    assert_eq!(s.stop(), 0);
}

/// A read error while following is said and waited out, and the events behind it are printed
/// once it passes: a follower is not ended by a passing error, and nothing is skipped.
#[test]
fn journal_cat_follow_waits_out_a_read_error_and_skips_nothing() {
    use std::io::BufRead;
    let mut s = Server::start(None, &["--shards", "1"]);
    for c in 201..=203 {
        assert_eq!(s.connect().get(&format!("/i?c={c}")).status, 200);
    }
    assert_eq!(s.stop(), 0);
    // A stand-in for a passing I/O error: the segment's name opens, but as a directory.
    let seg = s.journal().join("shard-000/00000000000000000001.seg");
    let aside = s.journal().join("aside");
    std::fs::rename(&seg, &aside).unwrap();
    std::fs::create_dir(&seg).unwrap();
    let mut cat = std::process::Command::new(BIN)
        .args(["journal", "cat", "--follow", "--journal-dir"])
        .arg(s.journal())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let errors = crate::harness::stderr_lines(&mut cat);
    let said = errors.recv_timeout(WAIT).expect("the error is said");
    assert!(said.contains("read header") && said.ends_with("retrying every second"), "{said}");
    std::fs::remove_dir(&seg).unwrap();
    std::fs::rename(&aside, &seg).unwrap();
    let out = cat.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for c in 201..=203 {
        let line = rx.recv_timeout(WAIT).expect("the events behind the error are printed");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["campaign_id"].as_u64(), Some(c));
    }
    assert!(cat.try_wait().unwrap().is_none(), "still following");
    let _ = cat.kill();
    let _ = cat.wait();
}

/// The default config's endpoint and event tables, for tests that change only [server] or [journal].
pub fn default_endpoints_and_events() -> String {
    let text = include_str!("../../config/tracker.toml");
    let start = text.find("[[endpoint]]").unwrap();
    text[start..].to_string()
}

/// Regression: `journal cat` given a shard directory (`…/journal/shard-000`, where the segment
/// files are) or a directory that holds no journal printed nothing and exited 0, the same as an
/// empty journal: an operator who picked the wrong directory was told there were no events. Both
/// are now errors that say which directory to give.
#[test]
fn journal_cat_of_a_shard_directory_or_of_no_journal_is_an_error_not_an_empty_journal() {
    let mut s = Server::start(None, &["--shards", "1"]);
    assert_eq!(s.connect().get("/i?c=301").status, 200);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 1, "the journal root reads the event");
    // Bounded: a `--follow` that took the directory would wait for shard directories forever.
    let run = |args: &[&str], dir: &std::path::Path| {
        let mut c = std::process::Command::new(BIN)
            .args(args)
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let code = wait_child(&mut c, "of a --journal-dir that is not the journal root").code();
        let out = c.wait_with_output().unwrap();
        (code, out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let root = format!("give the journal root {}", s.journal().display());
    for args in [["journal", "cat", "--journal-dir"].as_slice(), &["journal", "cat", "--follow", "--journal-dir"]] {
        let (code, out, err) = run(args, &s.journal().join("shard-000"));
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(out.is_empty() && err.contains("is a shard directory") && err.contains(&root), "{args:?}: {err}");
    }
    let (code, out, err) = run(&["journal", "cat", "--journal-dir"], s.dir.path());
    assert_eq!(code, Some(1), "{err}");
    let said = format!("no shard-NNN directory under {}", s.dir.path().display());
    assert!(out.is_empty() && err.contains(&said), "{err}");
}

/// Regression: a `header.host` field read the Host header even when the target was in absolute
/// form, whose authority RFC 9112 §3.2.2 says the server MUST use instead of Host. An event
/// could then carry a host the request did not address.
#[test]
fn a_header_host_field_reads_the_authority_of_an_absolute_form_target() {
    let site = "  { name = \"site\",          source = \"query.site\", type = \"string\", max_bytes = 64 },\n";
    let cfg = tracker::config::DEFAULT_TOML.replacen(
        site,
        // The site's 64 bytes shared with the host: the type's byte area is full.
        &format!(
            "{}  {{ name = \"host\", source = \"header.host\", type = \"string\", max_bytes = 32 }},\n",
            site.replace("64", "32")
        ),
        1,
    );
    assert!(cfg.contains("source = \"header.host\""));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for (target, _host) in [
        ("/i?c=1", "header.example"),
        ("http://target.example/i?c=2", "target.example"),
        ("HTTPS://Target.Example:8443/i?c=3", "Target.Example:8443"),
        ("http://[2001:db8::1]/i?c=4", "[2001:db8::1]"),
    ] {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: header.example\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{target}: {:?}", String::from_utf8_lossy(&r.body));
    }
    // HTTP/1.0 without Host: an absolute-form target still names the host.
    let mut c = s.connect();
    c.send(b"GET http://ten.example/i?c=6 HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let host_of = |c: u64| ev.iter().find(|e| e["campaign_id"] == c).map(|e| e["host"].clone());
    assert_eq!(host_of(1), Some("header.example".into()));
    assert_eq!(host_of(2), Some("target.example".into()));
    assert_eq!(host_of(3), Some("Target.Example:8443".into()));
    assert_eq!(host_of(4), Some("[2001:db8::1]".into()));
    assert_eq!(host_of(6), Some("ten.example".into()));
    assert_eq!(ev.len(), 5);
}
