//! Observability over the admin listener: exact counts in /metrics, histograms merged across
//! shards, /stats and `tracker stats`, /ready turning false and back, the .hlog read back with
//! hdrhistogram's interval-log iterator. Every wait polls a condition until WAIT.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use crate::harness::*;

/// The embedded config with `[admin]` keys replaced (each must be present in the default text).
fn config_with(admin: &[(&str, &str)]) -> String {
    let mut text = tracker::config::DEFAULT_TOML.to_string();
    for (from, to) in admin {
        assert!(text.contains(from), "config/tracker.toml no longer has {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// Samples of a Prometheus text body: `name{labels}` → value. Checks the exposition shape: every
/// sample's family was announced by `# HELP` and `# TYPE` first.
pub(crate) fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    let mut typed: Vec<String> = Vec::new();
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let name = p.next().unwrap().to_string();
            let kind = p.next().unwrap();
            assert!(["counter", "gauge", "summary", "histogram"].contains(&kind), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} must end in _total");
            }
            typed.push(name);
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
        let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
        let name = key.split('{').next().unwrap();
        let family = name.trim_end_matches("_sum").trim_end_matches("_count").trim_end_matches("_bucket");
        assert!(typed.iter().any(|t| t == name || t == family), "sample before its # TYPE: {line}");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(out.insert(key.to_string(), v).is_none(), "duplicate series {key}");
    }
    out
}

pub(crate) fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no series {key}"))
}

/// Sum of the series of `name` whose labels contain `with`.
pub(crate) fn sum(m: &BTreeMap<String, f64>, name: &str, with: &str) -> f64 {
    m.iter().filter(|(k, _)| k.starts_with(&format!("{name}{{")) && k.contains(with)).map(|(_, v)| v).sum()
}

/// Polls `/metrics` until `done` holds; returns the last parse.
pub(crate) fn metrics_when(
    s: &Server,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = s.admin_get("/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        let m = parse_metrics(std::str::from_utf8(&r.body).unwrap());
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "/metrics never showed {what} within {WAIT:?}:\n{m:#?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Journal syncs are counted and each one's duration is a histogram (per shard and merged),
/// whichever thread ran it; `/stats` has it under `journal_sync`.
#[test]
fn journal_syncs_are_counted_and_timed() {
    let cfg = config_with(&[
        ("publish_interval_ms = 1000", "publish_interval_ms = 20"),
        ("sync_interval_ms = 1000", "sync_interval_ms = 10"),
    ]);
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let c = std::cell::RefCell::new(s.connect());
    let m = metrics_when(&s, "three syncs counted and timed", |m| {
        // A sync needs something appended since the last one.
        assert_eq!(c.borrow_mut().get("/i?c=5").status, 200);
        get(m, "tracker_journal_syncs_total") >= 3.0 && get(m, "tracker_journal_sync_merged_seconds_count") >= 3.0
    });
    assert_eq!(
        get(&m, r#"tracker_journal_sync_seconds_count{shard="0"}"#),
        get(&m, "tracker_journal_sync_merged_seconds_count")
    );
    let slowest = get(&m, r#"tracker_journal_sync_merged_seconds{quantile="1"}"#);
    assert!(slowest > 0.0 && slowest < 30.0, "{slowest}");
    let stats: serde_json::Value = serde_json::from_slice(&s.admin_get("/stats").body).unwrap();
    assert!(stats["histograms"]["journal_sync"]["total"]["count"].as_u64().unwrap() >= 3, "{stats}");
}

#[test]
fn metrics_count_exactly_the_requests_sent_and_histograms_merge_across_shards() {
    let cfg = config_with(&[("publish_interval_ms = 1000", "publish_interval_ms = 20")]);
    let s = Server::start(Some(&cfg), &["--shards", "2"]);
    // 37 good pixels over 8 keep-alive connections (SO_REUSEPORT spreads them over the shards),
    // 5 without the required campaign id, 3 to a path no endpoint serves.
    let mut conns: Vec<Client> = (0..8).map(|_| s.connect()).collect();
    for i in 0..37 {
        let r = conns[i % 8].get(&format!("/i?c={i}&cr=7&p=0.5&site=m.example"));
        assert_eq!(r.status, 200);
    }
    for c in conns.iter_mut().take(5) {
        assert_eq!(c.get("/i?cr=7").status, 400);
    }
    for c in conns.iter_mut().take(3) {
        assert_eq!(c.get("/nowhere?c=1").status, 404);
    }
    drop(conns);

    let m = metrics_when(&s, "45 requests, 37 events journaled, no open connection", |m| {
        get(m, "tracker_request_service_merged_seconds_count") == 45.0
            && get(m, "tracker_journal_latency_merged_seconds_count") == 37.0
            && get(m, "tracker_connections_open") == 0.0
    });
    // Requests by endpoint and status: exactly what was sent, nothing else.
    assert_eq!(get(&m, r#"tracker_requests_total{endpoint="/i",status="200"}"#), 37.0);
    assert_eq!(get(&m, r#"tracker_requests_total{endpoint="/i",status="400"}"#), 5.0);
    assert_eq!(get(&m, r#"tracker_requests_total{endpoint="none",status="404"}"#), 3.0);
    assert_eq!(sum(&m, "tracker_requests_total", ""), 45.0);
    // Every endpoint of the config is a series (closed label set), even at zero.
    for ep in ["/i", "/cv", "/v", "/win", "/bill", "/e", "none"] {
        assert!(m.contains_key(&format!(r#"tracker_requests_total{{endpoint="{ep}",status="204"}}"#)), "{ep}");
    }
    assert_eq!(get(&m, r#"tracker_events_total{type="impression"}"#), 37.0);
    assert_eq!(sum(&m, "tracker_events_total", ""), 37.0);
    assert_eq!(get(&m, r#"tracker_rejects_total{reason="field"}"#), 5.0);
    assert_eq!(sum(&m, "tracker_rejects_total", ""), 5.0);
    assert_eq!(get(&m, "tracker_connections_accepted_total"), 8.0);
    // Rings: per shard, everything pushed was popped into the journal.
    assert_eq!(sum(&m, "tracker_ring_pushed_total", "shard="), 37.0);
    for sh in ["0", "1"] {
        let pushed = get(&m, &format!(r#"tracker_ring_pushed_total{{shard="{sh}"}}"#));
        assert_eq!(get(&m, &format!(r#"tracker_ring_popped_total{{shard="{sh}"}}"#)), pushed);
    }
    assert_eq!(get(&m, "tracker_journal_records_total"), 37.0);
    assert!(get(&m, "tracker_journal_bytes_total") >= 37.0 * 512.0);
    assert_eq!(get(&m, "tracker_journal_segments"), 2.0);
    // Two preallocated 64 MiB segments, and up to one made ahead per shard.
    let disk = get(&m, "tracker_journal_disk_bytes");
    assert!((2.0 * 67108864.0..=4.0 * 67108864.0).contains(&disk), "{disk}");
    assert_eq!(get(&m, "tracker_journal_torn_records_total"), 0.0);
    assert_eq!(get(&m, "tracker_journal_errors_total"), 0.0);
    assert_eq!(get(&m, "tracker_ready"), 1.0);
    assert_eq!(get(&m, r#"tracker_build_info{version="0.1.0"}"#), 1.0);
    assert!(get(&m, "process_start_time_seconds") > 1.7e9);

    // Histograms: per-shard counts add up to the merged one; quantiles are ordered and non-zero.
    for (name, n, events_per_shard) in
        [("tracker_request_service", 45.0, None), ("tracker_journal_latency", 37.0, Some("tracker_ring_popped_total"))]
    {
        let per: Vec<f64> =
            ["0", "1"].iter().map(|sh| get(&m, &format!(r#"{name}_seconds_count{{shard="{sh}"}}"#))).collect();
        assert_eq!(per.iter().sum::<f64>(), n, "{name}: shards {per:?}");
        if let Some(popped) = events_per_shard {
            for (i, c) in per.iter().enumerate() {
                assert_eq!(*c, get(&m, &format!(r#"{popped}{{shard="{i}"}}"#)), "{name} shard {i}");
            }
        }
        let merged = format!("{name}_merged_seconds");
        let q: Vec<f64> = ["0.5", "0.9", "0.99", "0.999", "1"]
            .iter()
            .map(|q| get(&m, &format!(r#"{merged}{{quantile="{q}"}}"#)))
            .collect();
        assert!(q[0] > 0.0 && q.windows(2).all(|w| w[0] <= w[1]), "{merged} quantiles {q:?}");
        assert!(get(&m, &format!("{merged}_sum")) > 0.0);
        // The bucketed histogram of each shard: cumulative, ending at +Inf = its count.
        for (sh, count) in ["0", "1"].iter().zip(&per) {
            let hist = format!("{name}_histogram_seconds");
            let prefix = format!("{hist}_bucket{{shard=\"{sh}\",le=\"");
            let mut by_le: Vec<(f64, f64)> = m
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.trim_end_matches("\"}").parse::<f64>().ok()?, *v)))
                .collect();
            by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
            let bucket_lines: Vec<f64> = by_le.iter().map(|&(_, n)| n).collect();
            assert_eq!(bucket_lines.len(), 25, "{hist} shard {sh}");
            assert!(bucket_lines.windows(2).all(|w| w[0] <= w[1]), "{hist} shard {sh}: {bucket_lines:?}");
            assert_eq!(bucket_lines.last(), Some(count));
            assert_eq!(get(&m, &format!(r#"{hist}_bucket{{shard="{sh}",le="+Inf"}}"#)), *count);
            assert_eq!(get(&m, &format!(r#"{hist}_count{{shard="{sh}"}}"#)), *count);
            // Nothing here takes a minute.
            assert_eq!(get(&m, &format!(r#"{hist}_bucket{{shard="{sh}",le="60"}}"#)), *count);
        }
    }
    assert_eq!(get(&m, "tracker_collector_publish_merged_seconds_count"), 0.0);
    // No observation: no quantile.
    assert!(get(&m, r#"tracker_collector_publish_merged_seconds{quantile="0.5"}"#).is_nan());

    // /stats agrees, and `tracker stats` prints it as a table.
    let admin = s.admin.unwrap().to_string();
    let r = s.admin_get("/stats");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let svc = &v["histograms"]["service"];
    assert_eq!(svc["total"]["count"], 45);
    let shard_sum: u64 = svc["shards"].as_array().unwrap().iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(shard_sum, 45);
    let out = std::process::Command::new(BIN).args(["stats", "--admin", &admin]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    let total = table
        .lines()
        .find(|l| l.starts_with("service") && l.contains("total"))
        .unwrap_or_else(|| panic!("no service total row:\n{table}"));
    assert_eq!(total.split_whitespace().nth(2), Some("45"), "{table}");
    assert!(table.lines().next().unwrap().contains("p99.9_us"), "{table}");

    // The admin listener answers only what it serves.
    assert_eq!(s.admin_get("/nope").status, 404);
    assert_eq!(s.admin_get("/health").body, b"ok\n");
}

/// As on the public listener (http_rejects::a_refused_head_request_gets_its_status_and_no_body):
/// a refused HEAD gets its status and no body, whether its head did not parse or it announced one.
#[test]
fn a_refused_head_request_to_the_admin_listener_gets_its_status_and_no_body() {
    let s = Server::start(None, &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    let cases: &[(&[u8], u16)] = &[
        (b"HEAD /metrics HTTP/1.1\r\n\r\n", 400),
        (b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello", 413),
    ];
    for &(raw, status) in cases {
        let what = String::from_utf8_lossy(raw);
        let mut c = Client::connect(s.admin.unwrap());
        c.send(raw);
        let r = c.read_response(true);
        assert_eq!(r.status, status, "for {what:?}");
        assert!(c.is_closed(), "after the head of the answer to {what:?}, the close and no body");
    }
    // A GET's refusal still carries its reason.
    let mut c = Client::connect(s.admin.unwrap());
    c.send(b"GET /metrics HTTP/1.1\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 400);
    assert!(!r.body.is_empty());
    assert_eq!(s.admin_get("/health").status, 200);
}

#[test]
fn a_client_trickling_its_request_to_the_admin_listener_is_cut_off_with_408() {
    use std::io::{Read, Write};
    let s = Server::start(None, &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    let mut c = std::net::TcpStream::connect(s.admin.unwrap()).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_millis(300))).unwrap();
    // A byte every 300 ms, each read quick: the head never completes. The listener answers 408
    // once its whole-head deadline passes (per read, the trickle would hold it for hours).
    let mut answer = Vec::new();
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle().take(200) {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    // And the listener serves the next client.
    assert_eq!(s.admin_get("/health").status, 200);
}

#[test]
fn silent_admin_clients_do_not_hold_back_the_health_probe() {
    use std::io::Read;
    use tracker::admin::{CLIENT_TIMEOUT, CONNECTIONS_MAX};
    let s = Server::start(None, &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    // Connections that never send a byte: each is answered 408 only when its CLIENT_TIMEOUT is
    // up. Served one at a time, /health would come after all of their 408s, SILENT ×
    // CLIENT_TIMEOUT (16 s) after they connected; served beside them, at once. The bound is
    // that of the one-at-a-time server, not a speed: it holds on a machine stalled for seconds
    // (an earlier version asked for /health within one CLIENT_TIMEOUT, 2 s).
    const SILENT: usize = 8;
    const _: () = assert!(SILENT < CONNECTIONS_MAX);
    let t0 = Instant::now();
    let silent: Vec<_> = (0..SILENT).map(|_| std::net::TcpStream::connect(s.admin.unwrap()).unwrap()).collect();
    assert_eq!(s.admin_get("/health").status, 200);
    let took = t0.elapsed();
    assert!(took < CLIENT_TIMEOUT * SILENT as u32, "/health took {took:?}: served behind the silent clients");
    // Each still gets its 408.
    for mut c in silent {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }
}

/// Polls `/ready` until its status is `want`; returns the body.
pub fn ready_when(s: &Server, want: u16) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = s.admin_get("/ready");
        if r.status == want {
            return String::from_utf8(r.body).unwrap();
        }
        assert!(Instant::now() < deadline, "/ready stayed {} ({:?}), wanted {want}", r.status, r.body);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn ready_turns_false_while_the_journal_directory_is_unwritable_and_true_after() {
    let mut s = Server::start(None, &["--shards", "1"]);
    assert_eq!(ready_when(&s, 200), "ready\n");
    let journal = s.journal();
    let shard_dir = journal.join("shard-000");
    let away = s.dir.path().join("journal.away");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // root writes through permission bits (and /ready says so, truthfully): take the directory
    // away instead of chmod-ing it.
    use std::os::unix::fs::PermissionsExt;
    if root {
        std::fs::rename(&journal, &away).unwrap();
    } else {
        std::fs::set_permissions(&shard_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let why = ready_when(&s, 503);
    assert!(why.contains("shard-000") && why.contains("not writable"), "{why}");
    assert_eq!(s.admin_get("/health").status, 200, "alive while not ready");
    if root {
        std::fs::rename(&away, &journal).unwrap();
    } else {
        std::fs::set_permissions(&shard_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert_eq!(ready_when(&s, 200), "ready\n");
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
}

#[test]
fn ready_is_false_below_the_free_space_headroom() {
    let cfg = config_with(&[("ready_free_bytes_min = 0", "ready_free_bytes_min = 9223372036854775807")]);
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let why = ready_when(&s, 503);
    assert!(why.contains("bytes free, below admin.ready_free_bytes_min 9223372036854775807"), "{why}");
    let m = parse_metrics(std::str::from_utf8(&s.admin_get("/metrics").body).unwrap());
    assert_eq!(get(&m, "tracker_ready"), 0.0);
    assert_eq!(s.admin_get("/health").status, 200);
    // Still serving: readiness steers the load balancer, it does not refuse traffic.
    assert_eq!(s.connect().get("/i?c=1").status, 200);
}

#[test]
fn hlog_reads_back_with_hdrhistogram_interval_log_iterator() {
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("tracker.hlog");
    let cfg = config_with(&[
        ("publish_interval_ms = 1000", "publish_interval_ms = 20"),
        ("# hlog_path = \"tracker.hlog\"", &format!("hlog_path = \"{}\"", hlog.display())),
        ("hlog_interval_ms = 10000", "hlog_interval_ms = 100"),
    ]);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "2"]);
    let mut c = s.connect();
    for i in 0..10 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    // Wait until some interval already holds requests, then stop: the last interval is flushed
    // at exit, so the file must account for every request and event exactly.
    let deadline = Instant::now() + WAIT;
    while tagged_counts(&std::fs::read(&hlog).unwrap()).get("service").copied().unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "no service interval in {} within {WAIT:?}", hlog.display());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(c);
    assert_eq!(s.stop(), 0);
    let bytes = std::fs::read(&hlog).unwrap();
    let counts = tagged_counts(&bytes);
    assert_eq!(counts.get("service"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("journal"), Some(&10), "{counts:?}");
    assert_eq!(counts.get("collector_publish"), Some(&0), "{counts:?}");
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("#[Histogram log format version 1.3]"));
    assert!(text.contains("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""));
}

/// Log rotation: the .hlog is renamed and the tracker gets SIGHUP; it opens the path again with
/// a fresh header and goes on there, and the two files together hold every request once.
#[test]
fn hlog_is_reopened_on_sighup_after_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("tracker.hlog");
    let rotated = dir.path().join("tracker.hlog.1");
    let cfg = config_with(&[
        ("publish_interval_ms = 1000", "publish_interval_ms = 20"),
        ("# hlog_path = \"tracker.hlog\"", &format!("hlog_path = \"{}\"", hlog.display())),
        ("hlog_interval_ms = 10000", "hlog_interval_ms = 100"),
    ]);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let service =
        |p: &std::path::Path| std::fs::read(p).map_or(0, |b| tagged_counts(&b).get("service").copied().unwrap_or(0));
    for i in 0..5 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    wait_for("the first five in the file", WAIT, || service(&hlog) == 5);
    // A reload with no rotation keeps appending to the same file, without a second header.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGHUP) };
    // The reopen is asked for before the reload, which says when it is done.
    let mut said = Vec::new();
    assert!(s.wait_line(&mut said, "reload: applied"), "{said:?}");
    assert_eq!(c.get("/i?c=5").status, 200);
    wait_for("the sixth in the same file", WAIT, || service(&hlog) == 6);
    let headers = std::fs::read_to_string(&hlog).unwrap().matches("#[Histogram log format version").count();
    assert_eq!(headers, 1, "a reload without rotation wrote another header");
    std::fs::rename(&hlog, &rotated).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGHUP) };
    said.clear();
    assert!(s.wait_line(&mut said, "reload: applied"), "{said:?}");
    wait_for("a new file with its header", WAIT, || {
        std::fs::read_to_string(&hlog).is_ok_and(|t| t.contains("\"StartTimestamp\",\"Interval_Length\""))
    });
    for i in 6..11 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    drop(c);
    assert_eq!(s.stop(), 0);
    assert_eq!((service(&rotated), service(&hlog)), (6, 5));
}

/// `/health` is the liveness a container runtime probes (there is no systemd watchdog there):
/// a reactor held still (ptrace, the thread alone) fails it once its heartbeat is older than
/// `notify::HEALTH_STALL`, naming the shard; it passes again once the reactor turns.
#[test]
fn health_fails_while_a_reactor_does_not_turn() {
    let s = Server::start(None, &["--shards", "1"]);
    assert_eq!(s.admin_get("/health").status, 200);
    let held = HeldThread::hold(s.child.id(), "tracker-shard-0");
    let mut said = String::new();
    wait_for("/health 503", WAIT, || {
        let r = s.admin_get("/health");
        said = String::from_utf8_lossy(&r.body).into_owned();
        r.status == 503
    });
    assert!(said.starts_with("shard 0: reactor has not turned for "), "{said}");
    drop(held);
    wait_for("/health 200 again", WAIT, || s.admin_get("/health").status == 200);
}

/// Parses a whole .hlog with hdrhistogram's iterator (failing on any unparsable line), decodes
/// every interval and sums counts per tag; checks StartTime/BaseTime and ordered intervals.
fn tagged_counts(bytes: &[u8]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    let mut last_start: BTreeMap<String, std::time::Duration> = BTreeMap::new();
    let (mut start_time, mut base_time) = (false, false);
    let mut de = Deserializer::new();
    // A line still being written has no newline yet: read whole lines only.
    let whole = &bytes[..bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1)];
    for e in IntervalLogIterator::new(whole) {
        match e.unwrap_or_else(|e| panic!("unparsable .hlog: {e:?}")) {
            LogEntry::StartTime(_) => start_time = true,
            LogEntry::BaseTime(_) => base_time = true,
            LogEntry::Interval(iv) => {
                let tag = iv.tag().expect("every interval is tagged").as_str().to_string();
                let raw = base64_decode(iv.encoded_histogram());
                let h: Histogram<u64> = de.deserialize(&mut &raw[..]).expect("histogram decodes");
                // Absolute (BaseTime 0): a process's intervals read right after another's header.
                assert!(iv.start_timestamp().as_secs() > 1_700_000_000, "{:?} is not absolute", iv.start_timestamp());
                let prev = last_start.insert(tag.clone(), iv.start_timestamp());
                assert!(prev.is_none_or(|p| p <= iv.start_timestamp()), "{tag} intervals out of order");
                *counts.entry(tag).or_insert(0) += h.len();
            }
        }
    }
    if !counts.is_empty() {
        assert!(start_time && base_time, "StartTime and BaseTime headers");
    }
    counts
}

#[test]
fn admin_refuses_what_it_does_not_serve_and_keeps_serving() {
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    let mut c = Client::connect(admin);
    c.send(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 405);
    // A head that never ends within the admin's 4 KiB bound (exactly that much, so the server has
    // read everything when it answers and closes: no reset races the response).
    let mut c = Client::connect(admin);
    c.send(&[b'A'; tracker::admin::REQUEST_BYTES_MAX]);
    assert_eq!(c.read_response(false).status, 431);
    // A client that connects and says nothing is dropped after the admin's client timeout.
    let idle = Client::connect(admin);
    assert_eq!(s.admin_get("/health").body, b"ok\n");
    drop(idle);
    let r = s.admin_get("/metrics?x=1");
    assert_eq!(r.status, 200);
    assert!(std::str::from_utf8(&r.body).unwrap().contains("# TYPE tracker_requests_total counter"));
}

#[test]
fn admin_405_names_the_methods_it_serves_in_allow() {
    // RFC 9110 15.5.6: a 405 must carry Allow, or the client cannot tell what would work.
    let s = Server::start(None, &["--shards", "1"]);
    let mut c = Client::connect(s.admin.unwrap());
    c.send(b"DELETE /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"), "{:?}", r.headers);
}

/// RFC 9112 §3.2: a request with no Host in HTTP/1.1, more than one Host, or an invalid Host
/// value gets 400. The public listener refused these; the admin listener answered them.
#[test]
fn admin_refuses_a_missing_repeated_or_invalid_host_with_400() {
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    let refused: [(&[u8], &str); 7] = [
        (b"GET /health HTTP/1.1\r\n\r\n", "missing Host header"),
        (b"GET /metrics HTTP/1.1\r\nX-A: b\r\n\r\n", "missing Host header"),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", "more than one Host header"),
        (b"GET /health HTTP/1.0\r\nHost: a\r\nHOST: b\r\n\r\n", "more than one Host header"),
        (b"GET /health HTTP/1.1\r\nHost: a/b\r\n\r\n", "invalid Host header"),
        (b"GET /ready HTTP/1.1\r\nHost: user@a:1\r\n\r\n", "invalid Host header"),
        (b"GET /health HTTP/1.0\r\nHost: [::1\r\n\r\n", "invalid Host header"),
    ];
    for (raw, why) in refused {
        let mut c = Client::connect(admin);
        c.send(raw);
        let r = c.read_response(false);
        let text = String::from_utf8_lossy(raw);
        assert_eq!((r.status, std::str::from_utf8(&r.body).unwrap()), (400, format!("{why}\n").as_str()), "{text:?}");
        assert_eq!(r.header("connection"), Some("close"), "{text:?}");
        assert!(c.is_closed(), "{text:?}");
    }
    // What RFC 9112 allows still works: no Host in HTTP/1.0, an empty Host, an IP literal with
    // a port, the admin address as `tracker stats` sends it, spaces around the value.
    for raw in [
        "GET /health HTTP/1.0\r\n\r\n".to_string(),
        "GET /health HTTP/1.1\r\nHost:\r\n\r\n".to_string(),
        "GET /health HTTP/1.1\r\nHost: [::1]:9090\r\n\r\n".to_string(),
        format!("GET /health HTTP/1.1\r\nhost:  {admin} \r\n\r\n"),
    ] {
        let mut c = Client::connect(admin);
        c.send(raw.as_bytes());
        let r = c.read_response(false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "{raw:?}");
    }
}

#[test]
fn admin_accepts_an_absolute_form_target() {
    // RFC 9112 3.2.2: a server must accept `GET http://host/path` as well as `GET /path`.
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    for target in [format!("http://{admin}/health"), format!("HTTP://{admin}/health?probe=1")] {
        let mut c = Client::connect(admin);
        let r = c.get(&target);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "{target}");
    }
    // Only the path after the authority routes: a host that looks like a path does not.
    let mut c = Client::connect(admin);
    assert_eq!(c.get("http://health/").status, 404);
    // The authority is checked as on the public listener: it is the request's host.
    for (target, why) in [
        (format!("http://user@{admin}/health"), "user info in the request target"),
        ("http:///health".to_string(), "invalid host in the request target"),
        ("http://:80/health".to_string(), "invalid host in the request target"),
        ("http://[::1/health".to_string(), "invalid host in the request target"),
        ("health".to_string(), "invalid request target"),
    ] {
        let mut c = Client::connect(admin);
        c.send(format!("GET {target} HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!((r.status, std::str::from_utf8(&r.body).unwrap()), (400, format!("{why}\n").as_str()), "{target}");
    }
}

/// The admin listener reads its head with the public listener's parser, so what one refuses the
/// other refuses, with the same status and reason, and closes. It used to split the head by hand
/// and served `Host : a` (as a request without Host), a field line without a colon, obs-fold,
/// NUL or a bare CR in a value, and a request line with two spaces.
#[test]
fn admin_refuses_a_malformed_head_as_the_public_listener_does() {
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    let refused: [&[u8]; 11] = [
        b"GET /health HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  folded\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
        b"GET  /health HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /health HTTP/1.1 x\r\nHost: a\r\n\r\n",
        b"GET /health\r\nHost: a\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for raw in refused {
        let text = String::from_utf8_lossy(raw);
        let mut public = s.connect();
        public.send(raw);
        let want = public.read_response(false);
        assert_eq!(want.status, 400, "public listener, {text:?}");
        let mut c = Client::connect(admin);
        c.send(raw);
        let r = c.read_response(false);
        let (got, want) = (String::from_utf8_lossy(&r.body), String::from_utf8_lossy(&want.body));
        assert_eq!((r.status, got), (400, want), "{text:?}");
        assert_eq!(r.header("connection"), Some("close"), "{text:?}");
        assert!(c.is_closed(), "{text:?}");
    }
    // What the parser reads leniently by RFC 9112 still works: an empty line before the request
    // line (§2.2), HTTP/1.2 read as 1.1 (RFC 9110 §2.5), a Content-Length of 0.
    for raw in [
        &b"\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        b"GET /health HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ] {
        let mut c = Client::connect(admin);
        c.send(raw);
        let r = c.read_response(false);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "{:?}", String::from_utf8_lossy(raw));
    }
}

/// RFC 9110 §9.3.7: OPTIONS on a path the admin listener serves (or `*`, the server itself) is a
/// 204 with the methods in Allow, as on the public listener; every 405 names OPTIONS too. No
/// CORS: the admin listener is not for pages in a browser.
#[test]
fn admin_answers_options_with_204_and_allow_and_every_405_names_options() {
    const ALLOW: &str = "GET, HEAD, OPTIONS";
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    let absolute = format!("http://{admin}/stats");
    for target in ["/metrics", "/health", "/ready", "/stats", "/health?x=1", "*", absolute.as_str()] {
        let mut c = Client::connect(admin);
        c.send(format!("OPTIONS {target} HTTP/1.1\r\nHost: a\r\nOrigin: https://a.example\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 204, "{target}: {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("allow"), Some(ALLOW), "{target}");
        // RFC 9110 §8.6: a 204 has no Content-Length.
        assert_eq!((r.header("content-length"), r.header("connection")), (None, Some("close")), "{target}");
        assert!(r.headers.iter().all(|(n, _)| !n.to_ascii_lowercase().starts_with("access-control-")), "{target}");
        assert!(c.is_closed(), "{target}");
    }
    // An unknown path is still not a resource.
    let mut c = Client::connect(admin);
    c.send(b"OPTIONS /nope HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.read_response(false).status, 404);
    for (raw, head) in [
        (&b"DELETE /metrics HTTP/1.1\r\nHost: a\r\n\r\n"[..], false),
        (b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", false),
        (b"PUT /ready HTTP/1.0\r\n\r\n", false),
        (b"get /stats HTTP/1.1\r\nHost: a\r\n\r\n", false),
    ] {
        let mut c = Client::connect(admin);
        c.send(raw);
        let r = c.read_response(head);
        assert_eq!((r.status, r.header("allow")), (405, Some(ALLOW)), "{:?}", String::from_utf8_lossy(raw));
    }
}

/// The admin listener reads no request body: a request that announces one (Content-Length > 0 or
/// chunked) is answered 413 with the reason before the body is read, and closed cleanly: the
/// body the client is still sending is read and dropped (RFC 9112 §9.6), so the close is a FIN
/// and not a reset that could cost the client the 413.
#[test]
fn admin_refuses_a_request_with_a_body_with_413_and_a_clean_close() {
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    for head in [
        &b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n"[..],
        b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let text = String::from_utf8_lossy(head);
        let mut c = Client::connect(admin);
        // Far more than the admin's head buffer: most of it is still in the socket at the answer.
        let mut raw = head.to_vec();
        raw.resize(raw.len() + 8 * tracker::admin::REQUEST_BYTES_MAX, b'x');
        c.send(&raw);
        let r = c.read_response(false);
        assert_eq!(
            (r.status, std::str::from_utf8(&r.body).unwrap()),
            (413, "the admin listener reads no request body\n"),
            "{text:?}"
        );
        assert_eq!(r.header("connection"), Some("close"), "{text:?}");
        // The client, not knowing better yet, sends more: its close is read as end of stream.
        c.send(&[b'x'; 4096]);
        let mut rest = [0u8; 64];
        match std::io::Read::read(&mut c.stream, &mut rest) {
            Ok(0) => {}
            other => panic!("{text:?}: expected a clean end of stream after the 413, got {other:?}"),
        }
    }
    // Framing the public listener refuses is refused here by the same rule, before the body.
    let mut c = Client::connect(admin);
    c.send(b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.body.as_slice()), (400, &b"both Content-Length and Transfer-Encoding\n"[..]));
    assert_eq!(s.admin_get("/health").status, 200);
}

/// The `Date` value (IMF-fixdate) of each second from `from` to `to`, by the public listener's
/// own formatter.
fn dates_between(from: u64, to: u64) -> Vec<String> {
    (from..=to)
        .map(|secs| {
            let mut d = tracker::http::DateCache::new();
            d.update(secs);
            String::from_utf8(d.get().to_vec()).unwrap()
        })
        .collect()
}

fn unix_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// RFC 9110 §6.6.1: an origin server with a clock sends `Date` in every response. The admin
/// listener sent none, and no `Server` either, which every public answer carries: every admin
/// answer (served, refused before its body, refused head) now carries both, as the public one.
#[test]
fn admin_answers_carry_date_and_server_as_the_public_listener_does() {
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    let public = s.connect().get("/");
    let server = public.header("server").expect("the public listener sends Server").to_string();
    for (raw, status) in [
        (&b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n"[..], 200),
        (b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n", 200),
        (b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 204),
        (b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", 404),
        (b"DELETE /metrics HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (b"GET /health HTTP/1.1\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx", 413),
    ] {
        let text = String::from_utf8_lossy(raw);
        let before = unix_s();
        let mut c = Client::connect(admin);
        c.send(raw);
        let r = c.read_response(false);
        let after = unix_s();
        assert_eq!(r.status, status, "{text:?}");
        assert_eq!(r.header("server"), Some(server.as_str()), "{text:?}: {:?}", r.headers);
        let date = r.header("date").unwrap_or_else(|| panic!("{text:?}: no Date in {:?}", r.headers));
        assert!(
            dates_between(before, after).iter().any(|d| d == date),
            "{text:?}: Date {date:?} not in {before}..={after}"
        );
    }
    // HEAD gets the GET answer's head, Date and Server included.
    let mut c = Client::connect(admin);
    c.send(b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!((r.status, r.header("server")), (200, Some(server.as_str())));
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")), "{:?}", r.headers);
}

/// Over CONNECTIONS_MAX the admin listener answers 503 at once. It used to close straight after,
/// with the request unread, so the close was a reset (RFC 9112 §9.6) that could cost the client
/// the 503 it had just been sent; now it closes lingering, as after its other refusals. A
/// liveness probe is answered all the same: slots held by slow clients used to get it a 503,
/// and a supervisor would restart a process that was serving.
#[test]
fn admin_over_its_connection_limit_answers_503_and_closes_cleanly() {
    use std::io::{Read, Write};
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    // Silent clients take every slot. The accept thread takes them in connect order and counts
    // each before it accepts the next, so the extra connection, queued behind them, finds the
    // listener full: only the slots' own CLIENT_TIMEOUT (2 s, counted once each is served) could
    // free one first.
    let held: Vec<Client> = (0..tracker::admin::CONNECTIONS_MAX).map(|_| Client::connect(admin)).collect();
    let mut probe = Client::connect(admin);
    probe.send(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = probe.read_response(false);
    assert_eq!((r.status, std::str::from_utf8(&r.body).unwrap()), (200, "ok\n"));
    let mut c = Client::connect(admin);
    let before = unix_s();
    c.send(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response(false);
    let after = unix_s();
    assert_eq!((r.status, std::str::from_utf8(&r.body).unwrap()), (503, "too many admin connections\n"));
    assert_eq!((r.header("connection"), r.header("server")), (Some("close"), Some("tracker")), "{:?}", r.headers);
    let date = r.header("date").unwrap_or_else(|| panic!("no Date in {:?}", r.headers));
    assert!(dates_between(before, after).iter().any(|d| d == date), "Date {date:?} not in {before}..={after}");
    // The client, not knowing better yet, sends more. Lingering, the listener reads and drops it
    // and the client reads a clean end of stream; closed at once, the listener resets (the
    // write or the read fails) whether the request came before its close or after.
    let wrote = c.stream.write_all(&[b'x'; 4096]);
    let mut rest = [0u8; 64];
    let read = c.stream.read(&mut rest);
    assert!(
        wrote.is_ok() && matches!(read, Ok(0)),
        "expected a clean close after the 503: write {wrote:?}, read {read:?}"
    );
    drop(held);
}

/// The lingering close of those 503s is on threads of their own, and a flood of over-limit
/// clients that never close must not cost a thread each: at most REFUSING_MAX linger at once.
#[test]
fn a_flood_over_the_admin_connection_limit_lingers_on_at_most_refusing_max_threads() {
    use tracker::admin::{CONNECTIONS_MAX, REFUSING_MAX};
    let s = Server::start(None, &["--shards", "1"]);
    let admin = s.admin.unwrap();
    let held: Vec<Client> = (0..CONNECTIONS_MAX).map(|_| Client::connect(admin)).collect();
    // Each reads its 503, so the listener has accepted it; none closes, so each lingering one
    // holds its thread for LINGER_GRACE.
    let flood: Vec<Client> = (0..REFUSING_MAX + 24)
        .map(|_| {
            let mut c = Client::connect(admin);
            c.send(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(c.read_response(false).status, 503);
            c
        })
        .collect();
    // Thread names are cut to 15 bytes: `tracker-admin-busy` reads `tracker-admin-b`.
    let lingering = std::fs::read_dir(format!("/proc/{}/task", s.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("tracker-admin-b"))
        .count();
    assert!(lingering <= REFUSING_MAX, "{lingering} threads linger, over REFUSING_MAX {REFUSING_MAX}");
    drop((held, flood));
}
