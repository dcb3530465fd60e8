//! Hot reload over TCP: SIGHUP with a valid change (a new endpoint and a new field) takes effect
//! on an existing keep-alive connection without a failed request, and the journal records the
//! new events under the new schema; SIGHUP with an invalid file changes nothing and the log names
//! file:line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use crate::harness::{journal_cat, Server, WAIT};

const CONFIG: &str = include_str!("../../config/tracker.toml");

/// The default config plus a field `extra` on impressions and an endpoint /new → event signup.
fn changed_config() -> String {
    // The impression's last field (the first event type in the file).
    let field =
        "  { name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = 160 },\n]";
    assert!(CONFIG.contains(field), "config/tracker.toml changed; update this test");
    let mut c = CONFIG.replacen(
        field,
        "  { name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = 160 },\n  { name = \"extra\", source = \"query.x\", type = \"string\", max_bytes = 16 },\n]",
        1,
    );
    c.push_str(
        "\n[[endpoint]]\npath = \"/new\"\nmethod = \"GET\"\nevent = \"signup\"\nresponse = \"no_content\"\nack = \"logged\"\n\n[event.signup]\nfields = [\n  { name = \"plan\", source = \"query.plan\", type = \"string\", max_bytes = 16, required = true },\n]\n",
    );
    c
}

/// Waits for a stderr line containing `needle`; returns it.
fn wait_line(srv: &Server, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match srv.stderr.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => eprintln!("[tracker] {line}"),
            Err(_) => panic!("no stderr line containing {needle:?} within {WAIT:?}"),
        }
    }
}

fn sighup(srv: &Server) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(srv.child.id() as i32, libc::SIGHUP) };
}

#[test]
fn sighup_applies_a_valid_config_without_a_failed_request_and_keeps_the_old_on_an_invalid_one() {
    let srv = Server::start(Some(CONFIG), &["--shards", "2"]);
    let path = srv.dir.path().join("tracker.toml");
    let mut ka = srv.connect();
    assert_eq!(ka.get("/i?c=1&eid=10000000-0000-4000-8000-000000000001").status, 200);
    assert_eq!(ka.get("/new?plan=a").status, 404);

    // Background load on its own keep-alive connection across both reloads: every request 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, bad, addr) = (stop.clone(), ok.clone(), bad.clone(), srv.addr);
        std::thread::spawn(move || {
            let mut c = crate::harness::Client::connect(addr);
            while !stop.load(SeqCst) {
                match c.get("/i?c=7").status {
                    200 => ok.fetch_add(1, SeqCst),
                    _ => bad.fetch_add(1, SeqCst),
                };
            }
        })
    };

    std::fs::write(&path, changed_config()).unwrap();
    sighup(&srv);
    let applied = wait_line(&srv, "reload: applied");
    assert!(applied.contains("generation 1") && applied.contains("schema changed"), "{applied}");

    // Same keep-alive connection, new endpoint (ack = logged: it also proves the drain wrote it
    // under the new config) and new field.
    assert_eq!(ka.get("/new?plan=gold&eid=10000000-0000-4000-8000-000000000002").status, 204);
    assert_eq!(ka.get("/i?c=2&x=hello&eid=10000000-0000-4000-8000-000000000003").status, 200);

    // An invalid file: unknown key on line 3. Nothing changes; the log names file:line.
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap();
    sighup(&srv);
    let err = wait_line(&srv, "tracker.toml:3");
    assert!(err.contains("lisen"), "{err}");
    assert_eq!(ka.get("/new?plan=silver&eid=10000000-0000-4000-8000-000000000004").status, 204);
    assert_eq!(ka.get("/i?c=3&x=still&eid=10000000-0000-4000-8000-000000000005").status, 200);

    // A restart-only key is reported and ignored; the rest applies.
    std::fs::write(&path, changed_config().replace("ring_events = 16384", "ring_events = 32")).unwrap();
    sighup(&srv);
    let line = wait_line(&srv, "needs a restart");
    assert!(line.contains("server.ring_events: 16384 → 32"), "{line}");
    wait_line(&srv, "generation 2");
    assert_eq!(ka.get("/new?plan=bronze&eid=10000000-0000-4000-8000-000000000006").status, 204);

    stop.store(true, SeqCst);
    load.join().unwrap();
    assert_eq!(bad.load(SeqCst), 0, "requests failed across the reloads");
    assert!(ok.load(SeqCst) > 0);

    let mut srv = srv;
    assert_eq!(srv.stop(), 0);
    let events = journal_cat(&srv.journal());
    let by_id = |id: &str| {
        events.iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("event {id} not in the journal")).clone()
    };
    let first = by_id("10000000-0000-4000-8000-000000000001");
    assert!(first.get("extra").is_none(), "old events keep the old schema: {first}");
    let signup = by_id("10000000-0000-4000-8000-000000000002");
    assert_eq!(signup["type"], "signup");
    assert_eq!(signup["plan"], "gold");
    assert_eq!(by_id("10000000-0000-4000-8000-000000000003")["extra"], "hello");
    assert_eq!(by_id("10000000-0000-4000-8000-000000000005")["extra"], "still");
    assert_eq!(by_id("10000000-0000-4000-8000-000000000006")["plan"], "bronze");
}

/// `tracker_requests_total` and `tracker_events_total` of one series, summed over shards.
fn counter(srv: &Server, series: &str) -> Option<u64> {
    let m = String::from_utf8(srv.admin_get("/metrics").body).unwrap();
    m.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

#[test]
fn counters_keep_their_labels_when_a_reload_removes_and_adds_endpoints() {
    let srv = Server::start(Some(CONFIG), &["--shards", "2", "--admin-listen", "127.0.0.1:0"]);
    let path = srv.dir.path().join("tracker.toml");
    let mut c = srv.connect();
    for i in 0..3 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    assert_eq!(c.get("/cv?c=1&order=o1").status, 200);

    // /i, the first endpoint, goes; /new and its type signup come: every position after it moves.
    let i_block = "[[endpoint]]\npath = \"/i\"\nmethod = \"GET\"\nevent = \"impression\"\nresponse = \"gif\"\nack = \"received\"\n\n";
    assert!(changed_config().contains(i_block), "config/tracker.toml changed; update this test");
    std::fs::write(&path, changed_config().replacen(i_block, "", 1)).unwrap();
    sighup(&srv);
    wait_line(&srv, "reload: applied");
    assert_eq!(c.get("/i?c=9").status, 404);
    for i in 0..4 {
        assert_eq!(c.get(&format!("/cv?c=1&order=p{i}")).status, 200);
    }
    for i in 0..5 {
        assert_eq!(c.get(&format!("/new?plan=p{i}")).status, 204);
    }

    assert_eq!(counter(&srv, r#"tracker_requests_total{endpoint="/i",status="200"}"#), Some(3));
    assert_eq!(counter(&srv, r#"tracker_requests_total{endpoint="/cv",status="200"}"#), Some(5));
    assert_eq!(counter(&srv, r#"tracker_requests_total{endpoint="/new",status="204"}"#), Some(5));
    assert_eq!(counter(&srv, r#"tracker_requests_total{endpoint="none",status="404"}"#), Some(1));
    assert_eq!(counter(&srv, r#"tracker_events_total{type="impression"}"#), Some(3));
    assert_eq!(counter(&srv, r#"tracker_events_total{type="conversion"}"#), Some(5));
    assert_eq!(counter(&srv, r#"tracker_events_total{type="signup"}"#), Some(5));
    let mut srv = srv;
    assert_eq!(srv.stop(), 0);
}

/// Regression: `server.batch_events_max`, `body_decoded_bytes_max` and `body_inflate_ratio_max`
/// were kept at their running values on reload (like every `[server]` key) without the "needs a
/// restart" line the docs promise, so an operator lowering the batch limit saw nothing happen.
#[test]
fn a_changed_post_body_limit_is_reported_as_needing_a_restart_and_the_running_value_kept() {
    let srv = Server::start(Some(CONFIG), &["--shards", "1"]);
    let path = srv.dir.path().join("tracker.toml");
    for (from, to) in [
        ("batch_events_max = 100", "batch_events_max = 1"),
        ("body_decoded_bytes_max = 262144", "body_decoded_bytes_max = 1024"),
        ("body_inflate_ratio_max = 100", "body_inflate_ratio_max = 5"),
    ] {
        assert!(CONFIG.contains(from), "config/tracker.toml changed; update this test");
        std::fs::write(&path, CONFIG.replace(from, to)).unwrap();
        sighup(&srv);
        let key = from.split(' ').next().unwrap();
        let line = wait_line(&srv, "needs a restart");
        assert!(line.contains(&format!("server.{key}: ")), "{line}");
        wait_line(&srv, "reload: applied");
    }
    // The running batch limit (100) still holds: two items are both taken.
    let mut c = srv.connect();
    let body = r#"[{"type":"a"},{"type":"b"}]"#;
    c.send(
        format!(
            "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains(r#""accepted":2"#), "{:?}", String::from_utf8_lossy(&r.body));
}

/// Regression: a reload validated the file but not its `[[collector]]` options, which only the
/// collector's build checks (here a property librdkafka refuses): a file `check-config` refuses
/// was logged as applied, the new endpoints served, and the next start of the service failed on
/// it. Such a file is now refused whole, with the same error line as `check-config`.
#[test]
fn a_reload_with_a_collector_option_error_is_refused_like_check_config_refuses_it() {
    let srv = Server::start(Some(CONFIG), &["--shards", "1"]);
    let path = srv.dir.path().join("tracker.toml");
    let bad = changed_config()
        + "\n[[collector]]\nname = \"k\"\nkind = \"kafka\"\nevents = \"all\"\nfields = []\n\
           [collector.options]\nbrokers = \"127.0.0.1:9092\"\nproperties = { \"no.such.prop\" = \"1\" }\n";
    std::fs::write(&path, &bad).unwrap();
    let check = std::process::Command::new(crate::harness::BIN).arg("check-config").arg(&path).output().unwrap();
    let said = String::from_utf8(check.stderr).unwrap();
    assert_eq!(check.status.code(), Some(2), "{said}");
    sighup(&srv);
    wait_line(&srv, "failed; the running config is kept");
    let err = wait_line(&srv, "collector[0].options.properties");
    assert!(said.lines().any(|l| err.ends_with(l)), "reload said {err:?}, check-config said {said:?}");
    assert_eq!(srv.connect().get("/new?plan=a").status, 404, "nothing of the file was applied");
    let mut srv = srv;
    assert_eq!(srv.stop(), 0);
}

/// Flags win over the file (operations.md): a file whose `server.listen` and `admin.listen`
/// share a port serves when `--listen` and `--admin-listen` replace them, and reloads too. It
/// used to be refused for a clash the flags remove, at start and at every SIGHUP.
#[test]
fn a_listener_clash_that_the_flags_replace_is_not_refused_at_start_or_reload() {
    let text = CONFIG.replace("listen = \"127.0.0.1:9090\"", "listen = \"127.0.0.1:8080\"");
    assert!(text.contains("listen = \"0.0.0.0:8080\""), "config/tracker.toml's listen lines changed; update this test");
    // The harness passes --listen 127.0.0.1:0 and --admin-listen 127.0.0.1:0.
    let srv = Server::start(Some(&text), &["--shards", "1"]);
    assert_eq!(srv.connect().get("/i?c=1").status, 200);
    sighup(&srv);
    wait_line(&srv, "reload: applied");
    assert_eq!(srv.connect().get("/i?c=2").status, 200);
}
