//! Collectors end to end: the real `tracker` and the reference `banker` as processes over real
//! sockets. Spend totals exact to the micro across kill -9 and replay; attachment and allowlist
//! hold; a hanging destination slows nothing else.

use crate::harness::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BANKER: &str = env!("CARGO_BIN_EXE_banker");

struct Banker {
    child: Child,
    addr: SocketAddr,
}

impl Banker {
    fn start(data: &Path) -> Banker {
        Banker::start_with(data, &[])
    }

    fn start_with(data: &Path, extra: &[&str]) -> Banker {
        let mut child = Command::new(BANKER)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn banker");
        // Its stderr is read on a thread (and drained for good), so that a banker that never
        // says it listens fails the test after WAIT instead of hanging it.
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("banker: listening on ") {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("the banker did not say it listens within WAIT (or exited)");
        Banker { child, addr }
    }

    fn balance(&self) -> Value {
        let mut c = Client::connect(self.addr);
        let r = c.get("/balance");
        assert_eq!(r.status, 200);
        serde_json::from_slice(&r.body).unwrap()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; it is not reaped before `kill9`.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Banker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The embedded config with small segments (many rotations), 2 shards, and `collectors`.
fn config(collectors: &str) -> String {
    let base = tracker::config::DEFAULT_TOML.replace("segment_bytes = 67108864", "segment_bytes = 131072");
    assert_ne!(base, tracker::config::DEFAULT_TOML);
    format!("{base}\n{collectors}")
}

fn banker_collector(addr: SocketAddr) -> String {
    format!(
        "[[collector]]\nname = \"banker\"\nkind = \"banker\"\nevents = [\"bill\", \"impression\"]\n\
         fields = [\"campaign_id\", \"price\"]\nlinger_ms = 50\nretry_initial_ms = 20\nretry_max_ms = 200\n\
         [collector.options]\nurl = \"http://{addr}\"\ntimeout_ms = 2000\n"
    )
}

fn jsonl_collector(name: &str, path: &Path, events: &str, fields: &str) -> String {
    format!(
        "[[collector]]\nname = \"{name}\"\nkind = \"jsonl\"\nevents = {events}\nfields = {fields}\nlinger_ms = 20\n\
         [collector.options]\npath = \"{}\"\nfsync = false\n",
        path.display()
    )
}

/// Request `i` of a deterministic mix; returns the target and the billed micros it carries.
fn mixed(i: u64) -> (String, i64) {
    let micros = ((i * 7919) % 3_000_000) as i64 + 1;
    let price = format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000);
    let c = i % 7;
    match i % 5 {
        0 => (format!("/i?c={c}&cr=1&p={price}&imp=imp-{i}&site=s.example"), micros),
        1 => (format!("/bill?auction=a-{i}&bid=b&imp=1&c={c}&price={price}"), micros),
        2 => (format!("/v?ev=start&c={c}"), 0),
        3 => (format!("/e?n=custom&val={i}"), 0),
        _ => (format!("/cv?c={c}&value={price}&order=o-{i}"), 0),
    }
}

/// Sends requests `range` of the mix over a few pipelined connections; returns the billed sum.
fn send_mixed(addr: SocketAddr, range: std::ops::Range<u64>) -> i64 {
    let mut total = 0i64;
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    let ids: Vec<u64> = range.collect();
    for (n, chunk) in ids.chunks(64).enumerate() {
        let c = &mut clients[n % 4];
        let mut raw = Vec::new();
        for &i in chunk {
            let (target, micros) = mixed(i);
            total += micros;
            raw.extend_from_slice(
                format!("GET {target} HTTP/1.1\r\nHost: t\r\nCookie: uid=secret-{i}\r\n\r\n").as_bytes(),
            );
        }
        c.send(&raw);
        for _ in chunk {
            let r = c.read_response(false);
            assert!(r.status == 200 || r.status == 204, "status {}: {}", r.status, String::from_utf8_lossy(&r.body));
        }
    }
    total
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// `tracker journal replay` of the banker collector from segment 1 (the tracker stopped);
/// returns what it printed.
fn replay_banker_from_the_start(journal: &Path) -> String {
    let out = Command::new(BIN)
        .args(["journal", "replay", "--collector", "banker", "--from-segment", "1", "--journal-dir"])
        .arg(journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn take_dir(s: &mut Server) -> tempfile::TempDir {
    std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap())
}

#[test]
fn ten_thousand_mixed_events_bank_exactly_and_each_collector_sees_only_what_it_may() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let out = tempfile::tempdir().unwrap();
    let conv = out.path().join("conversions.jsonl");
    let collectors = format!(
        "{}{}",
        banker_collector(banker.addr),
        jsonl_collector("conv", &conv, "[\"conversion\"]", "[\"campaign_id\", \"value\"]")
    );
    let mut s = Server::start(Some(&config(&collectors)), &["--shards", "2"]);
    let t0 = Instant::now();
    let expected = send_mixed(s.addr, 0..10_000);
    let sent = t0.elapsed();
    wait_for("banker total", WAIT * 2, || banker.balance()["total_micros"].as_i64() == Some(expected));
    let forwarded = t0.elapsed();
    eprintln!(
        "10000 mixed events: sent in {sent:?}, banked (4000 priced) within {forwarded:?} of the first request; \
         total {expected} micros"
    );
    let b = banker.balance();
    let per_key: i64 = b["keys"].as_object().unwrap().values().map(|v| v["spend_micros"].as_i64().unwrap()).sum();
    assert_eq!(per_key, expected);
    assert!(b["keys"]["campaign_id=3"]["spend_micros"].as_i64().unwrap() > 0, "{b}");

    let metrics = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    let banked: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tracker_collector_events_total{collector=\"banker\",kind=\"banker\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no banker events counter in /metrics:\n{metrics}"));
    assert_eq!(banked, 4000, "impressions and bills acknowledged by the banker");
    wait_for("2000 conversions in the jsonl file", WAIT, || read_jsonl(&conv).len() >= 2000);
    let lines = read_jsonl(&conv);
    assert_eq!(lines.len(), 2000);
    for l in &lines {
        assert_eq!(l["type"], "conversion", "{l}");
        let keys: Vec<&str> = l.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in &keys {
            assert!(
                ["type", "id", "ts", "ts_ns", "shard", "seq", "campaign_id", "value"].contains(k),
                "field {k} is not allowlisted: {l}"
            );
        }
        assert!(!l.to_string().contains("secret"), "{l}");
    }
    let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2000);
    // Every acknowledged batch's publish latency reaches the shards' histograms (published
    // every second by the collector threads): the merged summary counts them.
    wait_for("collector publish latencies in /metrics", WAIT, || {
        let m = String::from_utf8(s.admin_get("/metrics").body).unwrap();
        m.lines()
            .find_map(|l| l.strip_prefix("tracker_collector_publish_merged_seconds_count "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    });
    assert_eq!(s.stop(), 0);
}

#[test]
fn kill_9_mid_forwarding_then_replay_keeps_banker_totals_exact() {
    let data = tempfile::tempdir().unwrap();
    let mut banker = Banker::start(data.path());
    let mut s = Server::start(Some(&config(&banker_collector(banker.addr))), &["--shards", "2"]);
    let banked = send_mixed(s.addr, 0..1500);
    wait_for("the first half banked", WAIT, || banker.balance()["total_micros"].as_i64() == Some(banked));
    // Mid-forwarding by construction: the banker freezes, the second half is journaled, and a
    // batch of it is cut, recorded and sent into the frozen banker's socket, where its attempt
    // times out; the tracker dies then, with that half not banked.
    let mut seen = s.stderr_lines();
    assert!(!seen.iter().any(|l| l.contains("attempt 1 failed")), "an attempt failed before the freeze: {seen:?}");
    seen.clear();
    banker.signal(libc::SIGSTOP);
    let mut expected = banked + send_mixed(s.addr, 1500..3000);
    assert!(s.wait_line(&mut seen, "attempt 1 failed"), "no attempt failed against the frozen banker: {seen:?}");
    s.kill9();
    // The banker dies too and comes back on another port; its ledger is on disk.
    banker.kill9();
    let banker = Banker::start(data.path());
    assert_eq!(banker.balance()["total_micros"].as_i64(), Some(banked), "the second half was banked before the kill");
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&config(&banker_collector(banker.addr))), &["--shards", "2"]);
    expected += send_mixed(s.addr, 3000..5000);
    wait_for("banker total after kill -9", WAIT * 2, || banker.balance()["total_micros"].as_i64() == Some(expected));
    assert_eq!(s.stop(), 0);
    let before = banker.balance();

    // Replay from the first segment: same ranges, same keys, applied once.
    let journal = s.journal();
    let said = replay_banker_from_the_start(&journal);
    assert!(said.contains("→ 1 0"), "{said}");
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&config(&banker_collector(banker.addr))), &["--shards", "2"]);
    let again = before["batches"].as_u64().unwrap() + before["duplicates"].as_u64().unwrap();
    wait_for("every batch sent again", WAIT * 2, || banker.balance()["duplicates"].as_u64() >= Some(again));
    let after = banker.balance();
    assert_eq!(after["total_micros"], before["total_micros"], "{after}");
    assert_eq!(after["keys"], before["keys"]);
    assert_eq!(after["batches"], before["batches"]);
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_replay_after_key_prefix_and_budget_key_changed_banks_nothing_twice() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let mut s = Server::start(Some(&config(&banker_collector(banker.addr))), &["--shards", "2"]);
    let mut expected = send_mixed(s.addr, 0..2000);
    wait_for("banker total", WAIT, || banker.balance()["total_micros"].as_i64() == Some(expected));
    assert_eq!(s.stop(), 0);
    let before = banker.balance();

    replay_banker_from_the_start(&s.journal());
    // A new key_prefix, and spend now keyed by campaign and creative: every batch sent again
    // keeps the key it was first sent under (so the banker does not apply it twice) and now
    // has a different body (so the banker answers 409 and keeps what it applied).
    let changed = banker_collector(banker.addr)
        .replace("fields = [\"campaign_id\", \"price\"]", "fields = [\"campaign_id\", \"creative_id\", \"price\"]")
        .replace("linger_ms = 50", "linger_ms = 50\nkey_prefix = \"host-2\"")
        .replace("timeout_ms = 2000", "timeout_ms = 2000\nbudget_key = [\"campaign_id\", \"creative_id\"]");
    assert!(changed.contains("host-2") && changed.contains("creative_id\"]"), "{changed}");
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&config(&changed)), &["--shards", "2", "--admin-listen", "127.0.0.1:0"]);
    let resent = before["batches"].as_u64().unwrap();
    let superseded = || {
        let m = String::from_utf8(s.admin_get("/metrics").body).unwrap();
        m.lines()
            .find(|l| l.starts_with("tracker_collector_superseded_total{collector=\"banker\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    // Every resent batch was answered (409, superseded) and the collector moved on past them.
    wait_for("every batch resent", WAIT * 2, || superseded() == Some(resent));
    let after = banker.balance();
    assert_eq!(after["total_micros"], before["total_micros"], "{after}");
    assert_eq!(after["batches"], before["batches"], "{after}");
    // New events go out under the new prefix and are banked.
    expected += send_mixed(s.addr, 2000..2500);
    wait_for("new spend banked", WAIT, || banker.balance()["total_micros"].as_i64() == Some(expected));
    let keys = banker.balance()["keys"].clone();
    assert!(keys.to_string().contains("creative_id="), "{keys}");
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_hanging_collector_slows_neither_the_pixels_nor_the_other_collectors() {
    // Accepts connections and never answers.
    let hang = TcpListener::bind("127.0.0.1:0").unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        hang.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            match hang.accept() {
                Ok((c, _)) => {
                    conns.push(c);
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if conns.len() > 100 {
                break;
            }
        }
    });
    let out = tempfile::tempdir().unwrap();
    let all = out.path().join("all.jsonl");
    let collectors = format!(
        "[[collector]]\nname = \"stuck\"\nkind = \"banker\"\nevents = \"all\"\nfields = [\"campaign_id\", \"price\"]\n\
         [collector.options]\nurl = \"http://{hang_addr}\"\ntimeout_ms = 600000\n{}",
        jsonl_collector("all", &all, "\"all\"", "[\"campaign_id\"]")
    );
    let mut s = Server::start(Some(&config(&collectors)), &["--shards", "2"]);
    let mut c = s.connect();
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    for i in 0..2000 {
        let t = Instant::now();
        assert_eq!(c.get(&format!("/i?c={i}&p=0.5")).status, 200);
        worst = worst.max(t.elapsed());
    }
    let took = t0.elapsed();
    // Not a speed check: a pixel held behind the hanging collector would have failed its read
    // (WAIT) above. What makes the test mean something is that the collector did hang.
    eprintln!("2000 pixels with a hanging collector: {took:?}, slowest {worst:?}");
    wait_for("the stuck collector to connect to the hanging banker", WAIT, || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    wait_for("the other collector to get every event", WAIT, || read_jsonl(&all).len() >= 2000);
    assert!(read_jsonl(&all).iter().all(|l| l.get("price").is_none()));
    // SIGTERM still exits: the hanging collector is left behind after a bounded wait.
    assert_eq!(s.stop(), 0);
    drop(held);
}

#[test]
fn privacy_manifest_lists_each_collectors_fields() {
    let dir = tempfile::tempdir().unwrap();
    let p: PathBuf = dir.path().join("t.toml");
    let collectors = format!(
        "{}{}",
        banker_collector("127.0.0.1:9".parse().unwrap()),
        jsonl_collector("conv", &dir.path().join("x"), "[\"conversion\"]", "[\"value\"]")
    );
    std::fs::write(&p, config(&collectors)).unwrap();
    let out = Command::new(BIN).arg("privacy-manifest").arg("--config").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("collector \"banker\" (kind banker)"), "{text}");
    assert!(text.contains("  bill: campaign_id, price"), "{text}");
    assert!(text.contains("  impression: campaign_id, price"), "{text}");
    assert!(text.contains("  conversion: value\n"), "{text}");
    // Before the collectors: what the privacy step did to the values they are given (and the
    // journal holds), from the embedded defaults here.
    assert!(text.contains("ip fields: truncated to /24 (IPv4), /48 (IPv6)\n"), "{text}");
    assert!(text.contains("referer fields: scheme://host[:port]/path (no query, fragment or user info)\n"), "{text}");
    assert!(text.contains("opt-out (Sec-GPC, DNT, cookie \"optout\"): user ids, ips and referers removed\n"), "{text}");
    assert!(
        text.contains("gdpr consent (enforced; click, conversion, impression): with GDPR applying and no IAB TCF v2 consent to Purpose 1, user ids, ips and referers removed\n"),
        "{text}"
    );
    let before = text.split("collector \"banker\"").next().unwrap();
    assert!(before.contains("user id fields, keyed hash rotated every 86400 s: conversion.user_id"), "{text}");
    assert_eq!(text.matches("user_id").count(), 1, "only in the privacy lines, in no collector's list: {text}");
}

#[test]
fn collector_config_errors_name_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    let text = config(
        "[[collector]]\nname = \"b\"\nkind = \"banker\"\nevents = [\"bill\", \"nope\"]\nfields = [\"price\"]\n\
         linger_ms = -1\n[collector.options]\nurl = \"ftp://x\"\ncolour = 1\n",
    );
    let base_lines = config("").lines().count();
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let at = |n: usize| format!("{}:{}: ", p.display(), base_lines + n);
    assert!(err.contains(&format!("{}collector[0].events", at(4))), "{err}");
    assert!(err.contains(&format!("{}collector[0].linger_ms", at(6))), "{err}");
    // Kind-specific options are checked when the collector is built, with the same locations,
    // in the same run as the errors above.
    assert!(err.contains(&format!("{}collector[0].options.url", at(8))), "{err}");
    assert!(err.contains(&format!("{}collector[0].options.colour", at(9))), "{err}");
    let text = config(
        "[[collector]]\nname = \"b\"\nkind = \"banker\"\nevents = [\"bill\"]\nfields = [\"price\"]\n\
         [collector.options]\nurl = \"ftp://x\"\ncolour = 1\n",
    );
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains(&format!("{}collector[0].options.url", at(7))), "{err}");
    assert!(err.contains(&format!("{}collector[0].options.colour", at(8))), "{err}");
    assert!(err.contains("budget_key") && err.contains("campaign_id"), "{err}");
    let _ = std::io::stderr().flush();
}

#[test]
fn banker_names_must_be_fields_it_gets_and_its_price_money() {
    // With `fields = ["*"]` the allowlist admits any name: a misspelt budget key or a price
    // that is not money would be accepted and the banker would silently learn no spend.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    let text = config(
        "[[collector]]\nname = \"b\"\nkind = \"banker\"\nevents = [\"bill\", \"impression\"]\nfields = [\"*\"]\n\
         [collector.options]\nurl = \"http://127.0.0.1:9\"\nbudget_key = [\"campaing_id\"]\nprice_field = \"campaign_id\"\n",
    );
    std::fs::write(&p, &text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let line = |key: &str| text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
    let at = |key: &str| format!("{}:{}: collector[0].options.{key}: ", p.display(), line(key));
    assert!(
        err.contains(&format!(
            "{}\"campaing_id\" is not a field of any event type this collector gets",
            at("budget_key")
        )),
        "{err}"
    );
    for ty in ["bill", "impression"] {
        let want = format!("\"campaign_id\" is a u64 field in event type \"{ty}\"; the banker sums money fields only");
        assert!(err.contains(&format!("{}{want}", at("price_field"))), "{err}");
    }
    // The same collector with the right names is valid.
    std::fs::write(
        &p,
        text.replace("campaing_id", "campaign_id").replace("price_field = \"campaign_id\"", "price_field = \"price\""),
    )
    .unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_kafka_banker_example_config_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/kafka-banker.toml");
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).arg("privacy-manifest").arg("--config").arg(&p).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("collector \"kafka\" (kind kafka)") && text.contains("collector \"banker\""), "{text}");
    // No user id or address leaves the process: no collector's list names one (the privacy
    // lines above the collectors say what the step does to such fields, not that they leave).
    let lists = &text[text.find("collector \"").unwrap()..];
    assert!(!lists.contains("user_id") && !lists.contains(" ip"), "{text}");
}

fn segments(journal: &Path, shard: u16) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(journal.join(format!("shard-{shard:03}")))
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.ends_with(".seg")).collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn retention_deletes_segments_every_collector_passed_and_the_size_limit_refuses_logged_events() {
    let out = tempfile::tempdir().unwrap();
    let all = out.path().join("all.jsonl");
    // A dead banker (nothing listens on the port) holds its cursor at the start.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // `extra` replaces the embedded config's retention_age_s / size_bytes_max lines.
    let with_journal = |extra: &str, collectors: &str| {
        config(collectors).replace("retention_age_s = 0\n", "").replace("size_bytes_max = 0\n", &format!("{extra}\n"))
    };
    // 1. Only a collector that keeps up: old segments go.
    let text = with_journal("retention_age_s = 1", &jsonl_collector("all", &all, "\"all\"", "[]"));
    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    send_mixed(s.addr, 0..1500);
    wait_for("every event in the jsonl file", WAIT, || read_jsonl(&all).len() >= 1500);
    let journal = s.journal();
    wait_for("segment 1 deleted", WAIT, || !segments(&journal, 0).contains(&format!("{:020}.seg", 1)));
    assert!(!segments(&journal, 0).is_empty(), "the newest segment stays");
    assert_eq!(s.stop(), 0);

    // 2. A collector that cannot deliver: nothing is deleted, and over the size limit logged
    //    endpoints answer 503 while received ones still answer.
    let collectors =
        format!("{}{}", jsonl_collector("all", &out.path().join("b.jsonl"), "\"all\"", "[]"), banker_collector(dead));
    let text = with_journal("retention_age_s = 1\nsize_bytes_max = 300000", &collectors);
    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    let mut c = s.connect();
    let mut refused = false;
    for i in 0..3000 {
        let r = c.get(&format!("/bill?auction=x{i}&price=0.1"));
        if r.status == 503 {
            refused = true;
            break;
        }
        assert_eq!(r.status, 204);
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(1500));
        }
    }
    if !refused {
        wait_for("logged endpoint refused over the size limit", WAIT, || {
            s.connect().get("/bill?auction=y&price=0.1").status == 503
        });
    }
    assert_eq!(s.connect().get("/i?c=1").status, 200, "received endpoints still answer");
    let ready = s.admin_get("/ready");
    assert_eq!(ready.status, 503, "readiness is false over the size limit");
    assert!(String::from_utf8_lossy(&ready.body).contains("journal.size_bytes_max"), "{ready:?}");
    assert!(segments(&s.journal(), 0).contains(&format!("{:020}.seg", 1)), "the banker has not passed segment 1");
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_collector_delivers_the_records_after_a_page_a_power_loss_kept_off_the_disk() {
    // Six pixels on one shard with no collector yet; then record 3's slot is zeroed, as when its
    // page never reached the disk while later pages did.
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for i in 1..=6 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    assert_eq!(s.stop(), 0);
    let seg = s.journal().join("shard-000").join(format!("{:020}.seg", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    let header = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    bytes[header + 2 * 512..header + 3 * 512].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    // Restarted with a jsonl collector, which reads segment 1 from its start: the writer leaves
    // the segment as is, and the collector goes on past the gap.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("impressions.jsonl");
    let cfg = format!(
        "{}\n{}",
        tracker::config::DEFAULT_TOML,
        jsonl_collector("imp", &path, "[\"impression\"]", "[\"campaign_id\"]")
    );
    let mut s = Server::start_in(take_dir(&mut s), Some(&cfg), &["--shards", "1"]);
    assert!(
        s.startup
            .iter()
            .any(|l| l.contains("5 record(s) readers deliver") && l.contains("(3 of the records after a zeroed gap)")),
        "startup: {:?}",
        s.startup
    );
    assert_eq!(s.connect().get("/i?c=7").status, 200);
    wait_for("six impressions in the jsonl file", WAIT, || read_jsonl(&path).len() >= 6);
    assert_eq!(s.stop(), 0);
    let campaigns: Vec<u64> = read_jsonl(&path).iter().map(|v| v["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns, [1, 2, 4, 5, 6, 7]);
}

fn banker_metric(s: &Server, name: &str) -> Option<u64> {
    collector_metric(s, "banker", name).map(|v| v as u64)
}

#[test]
fn two_trackers_on_default_configs_bank_each_their_own_spend() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let cfg = config(&banker_collector(banker.addr));
    // Two hosts, one config with no key_prefix, one journal each: the same shard, segment and
    // range on both, so a shared default prefix would give both first batches one key.
    let mut a = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut b = Server::start(Some(&cfg), &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    assert_eq!(a.connect().get("/i?c=1&cr=1&p=1.000000&imp=a&site=s.example").status, 200);
    assert_eq!(b.connect().get("/i?c=1&cr=1&p=2.000000&imp=b&site=s.example").status, 200);
    wait_for("both banked", WAIT, || banker.balance()["total_micros"].as_i64() == Some(3_000_000));
    assert_eq!(banker_metric(&b, "tracker_collector_failed"), Some(0));
    let prefix = |s: &Server| std::fs::read_to_string(s.journal().join("collectors/default_key_prefix")).unwrap();
    assert_ne!(prefix(&a), prefix(&b));
    // A restart keeps the journal's prefix: a range sent again carries its first key.
    let before = prefix(&a);
    let dir = take_dir(&mut a);
    assert_eq!(a.stop(), 0);
    drop(a);
    let mut a = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    assert_eq!(prefix(&a), before);
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
}

#[test]
fn a_batch_refused_for_another_trackers_key_is_banked_once_the_prefix_is_fixed() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let shared = banker_collector(banker.addr).replace("linger_ms = 50", "linger_ms = 50\nkey_prefix = \"shared\"");
    let cfg = config(&shared);
    // Tracker A: one billed impression of 1.00.
    let mut a = Server::start(Some(&cfg), &["--shards", "1"]);
    assert_eq!(a.connect().get("/i?c=1&cr=1&p=1.000000&imp=a&site=s.example").status, 200);
    wait_for("A banked", WAIT, || banker.balance()["total_micros"].as_i64() == Some(1_000_000));
    assert_eq!(a.stop(), 0);
    // Tracker B, misconfigured with A's key_prefix: same first key, another body → 409 → B stops.
    let mut b = Server::start(Some(&cfg), &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    assert_eq!(b.connect().get("/i?c=1&cr=1&p=2.000000&imp=b&site=s.example").status, 200);
    wait_for("B fatal", WAIT, || banker_metric(&b, "tracker_collector_failed") == Some(1));
    // The operator does what the error says: a key_prefix of its own, and a restart.
    let own = banker_collector(banker.addr).replace("linger_ms = 50", "linger_ms = 50\nkey_prefix = \"host-b\"");
    let dir = take_dir(&mut b);
    assert_eq!(b.stop(), 0);
    drop(b);
    let mut b = Server::start_in(dir, Some(&config(&own)), &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    wait_for("B's spend banked", WAIT, || banker.balance()["total_micros"].as_i64() == Some(3_000_000));
    assert_eq!(banker_metric(&b, "tracker_collector_superseded_total"), Some(0));
    assert_eq!(b.stop(), 0);
}

#[test]
fn batch_logs_from_before_key_bases_keep_their_keys_after_key_prefix_changes() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    // A build from before key bases, with no key_prefix set, sent under the default of then.
    let old_default =
        banker_collector(banker.addr).replace("linger_ms = 50", "linger_ms = 50\nkey_prefix = \"tracker\"");
    let mut s = Server::start(Some(&config(&old_default)), &["--shards", "1"]);
    let mut expected = send_mixed(s.addr, 0..300);
    wait_for("banked", WAIT, || banker.balance()["total_micros"].as_i64() == Some(expected));
    assert_eq!(s.stop(), 0);
    // Make the state what a build from before key bases left: entries with base 0, no key_bases.
    let cdir = s.journal().join("collectors").join("banker");
    std::fs::remove_file(cdir.join("key_bases")).unwrap();
    for shard in std::fs::read_dir(&cdir).unwrap().flatten().filter(|e| e.path().is_dir()) {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().ends_with(".batches") {
                let mut b = std::fs::read(f.path()).unwrap();
                b.chunks_exact_mut(16).for_each(|e| e[12..16].fill(0));
                std::fs::write(f.path(), b).unwrap();
            }
        }
    }
    // The upgrade: the same config, with no key_prefix (the old default becomes the legacy base) ...
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&config(&banker_collector(banker.addr))), &["--shards", "1"]);
    expected += send_mixed(s.addr, 300..400);
    wait_for("banked after the upgrade", WAIT, || banker.balance()["total_micros"].as_i64() == Some(expected));
    assert_eq!(s.stop(), 0);
    let before = banker.balance();
    // ... then a new key_prefix and a replay of everything: every range keeps its first key.
    replay_banker_from_the_start(&s.journal());
    let changed = banker_collector(banker.addr).replace("linger_ms = 50", "linger_ms = 50\nkey_prefix = \"host-2\"");
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&config(&changed)), &["--shards", "1"]);
    let again = before["batches"].as_u64().unwrap() + before["duplicates"].as_u64().unwrap();
    wait_for("every batch sent again", WAIT * 2, || banker.balance()["duplicates"].as_u64() >= Some(again));
    let after = banker.balance();
    assert_eq!(after["total_micros"], before["total_micros"], "{after}");
    assert_eq!(after["batches"], before["batches"], "{after}");
    assert_eq!(s.stop(), 0);
}

/// The value of `name` for collector `collector` in /metrics.
fn collector_metric(s: &Server, collector: &str, name: &str) -> Option<f64> {
    let m = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    m.lines()
        .find(|l| l.starts_with(&format!("{name}{{collector=\"{collector}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
}

#[test]
fn a_collector_stalled_at_a_damaged_record_of_the_newest_segment_says_so() {
    // A jsonl collector whose directory does not exist yet: its first batch waits in retries,
    // so the records after it are still unread when one of them is damaged.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("later");
    let path = dir.join("events.jsonl");
    let collector = jsonl_collector("j", &path, "\"all\"", "[\"campaign_id\"]")
        .replace("linger_ms = 20", "linger_ms = 20\nretry_initial_ms = 20\nretry_max_ms = 50");
    let cfg = format!("{}\n{collector}", tracker::config::DEFAULT_TOML);
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    // Conversions are `logged`: once answered, each is in the segment.
    assert_eq!(c.get("/cv?c=1&value=1&order=o-1").status, 200);
    wait_for("the first batch retrying", WAIT, || collector_metric(&s, "j", "tracker_collector_retrying") == Some(1.0));
    for i in 2..=6 {
        assert_eq!(c.get(&format!("/cv?c={i}&value=1&order=o-{i}")).status, 200);
    }
    // Record 3 (the fourth conversion) is damaged while the writer is still in its segment.
    let seg = s.journal().join("shard-000").join(format!("{:020}.seg", 1));
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&seg).unwrap();
    let mut head = [0u8; 16];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    let header = u32::from_le_bytes(head[12..16].try_into().unwrap()) as u64;
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xff; 8], header + 3 * 512 + 100).unwrap();
    std::fs::create_dir_all(&dir).unwrap();

    // Delivered up to the damaged record; the ones after it wait (docs/collectors.md) ...
    wait_for("the three records before the damaged one", WAIT, || read_jsonl(&path).len() >= 3);
    // ... and the collector says where it waits, instead of reporting itself caught up.
    let mut said = Vec::new();
    wait_for("the stall reported", WAIT, || {
        said.extend(s.stderr_lines());
        said.iter()
            .any(|l| l.contains("collector j") && l.contains(&format!("{:020}.seg", 1)) && l.contains("record 3"))
    });
    wait_for("caught_up 0 while events wait", WAIT, || {
        collector_metric(&s, "j", "tracker_collector_caught_up") == Some(0.0)
    });
    assert_eq!(read_jsonl(&path).len(), 3);
    assert_eq!(collector_metric(&s, "j", "tracker_collector_records_skipped_total"), Some(0.0));

    // A restart leaves the segment (recovery starts a new one after a damaged record): the
    // record is final, skipped and counted, and the two after it are delivered.
    assert_eq!(s.stop(), 0);
    let s = Server::start_in(take_dir(&mut s), Some(&cfg), &["--shards", "1"]);
    wait_for("the records after the damaged one", WAIT, || read_jsonl(&path).len() >= 5);
    let campaigns: Vec<u64> = read_jsonl(&path).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns, [1, 2, 3, 5, 6]);
    wait_for("the skip counted", WAIT, || {
        collector_metric(&s, "j", "tracker_collector_records_skipped_total") == Some(1.0)
    });
}

#[test]
fn a_shard_whose_cursor_cannot_be_read_shows_as_retrying_and_holds_back_no_other_shard() {
    // Shard 1's cursor of collector "j" is not a cursor (edited by hand, a damaged disk).
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("journal/collectors/j/shard-001/cursor");
    std::fs::create_dir_all(cursor.parent().unwrap()).unwrap();
    std::fs::write(&cursor, "not a cursor\n").unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("events.jsonl");
    let cfg = format!("{}\n{}", tracker::config::DEFAULT_TOML, jsonl_collector("j", &path, "\"all\"", "[]"));
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "3"]);
    // Pixels on fresh connections until both shard 1 and another shard journaled some.
    let journal = s.journal();
    let (mut sent, mut on_1, mut elsewhere) = (0, 0, 0);
    while on_1 == 0 || elsewhere == 0 {
        assert!(sent < 200, "{sent} connections all went to one shard");
        assert_eq!(s.connect().get("/i?c=1").status, 200);
        sent += 1;
        wait_for("the pixel journaled", WAIT, || journal_cat(&journal).len() == sent);
        let events = journal_cat(&journal);
        on_1 = events.iter().filter(|e| e["shard"] == 1).count();
        elsewhere = events.len() - on_1;
    }
    // Every event of the other shards is delivered, whatever order the shards are listed in ...
    wait_for("the other shards' events", WAIT, || read_jsonl(&path).len() == elsewhere);
    // ... and the collector says it is not done, and what to fix.
    wait_for("retrying 1, caught_up 0", WAIT, || {
        collector_metric(&s, "j", "tracker_collector_retrying") == Some(1.0)
            && collector_metric(&s, "j", "tracker_collector_caught_up") == Some(0.0)
    });
    let said = s.stderr_lines();
    assert!(said.iter().any(|l| l.contains("collector j") && l.contains("shard-001/cursor")), "{said:?}");
    assert_eq!(s.stop(), 0);
}

/// A stopped one-shard server with no collector whose journal holds three segments of pixels,
/// campaigns 1..=n in order over one connection; returns it and n.
fn three_segments_of_pixels() -> (Server, u64) {
    let mut s = Server::start(Some(&config("")), &["--shards", "1"]);
    let mut c = s.connect();
    let mut i = 0;
    while segments(&s.journal(), 0).len() < 3 {
        i += 1;
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
        assert!(i < 5000, "no third segment after {i} pixels");
    }
    assert_eq!(s.stop(), 0);
    (s, i)
}

#[test]
fn a_collector_names_a_segment_it_skips_for_a_bad_header() {
    let (mut s, i) = three_segments_of_pixels();
    // After the writer left them: segment 1's header is damaged in both copies (their magic),
    // segment 2's in its first copy only.
    let seg = |n: u64| s.journal().join("shard-000").join(format!("{n:020}.seg"));
    let bytes = std::fs::read(seg(1)).unwrap();
    let header = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as u64;
    let in_first = bytes[header as usize..].chunks_exact(512).filter(|r| r[4..6] == [0xE7, 0xE7]).count() as u64;
    for (n, copies) in [(1, &[0, header / 2][..]), (2, &[0][..])] {
        let f = std::fs::OpenOptions::new().write(true).open(seg(n)).unwrap();
        for &at in copies {
            std::os::unix::fs::FileExt::write_all_at(&f, b"XX", at).unwrap();
        }
    }

    // A jsonl collector reads the journal from the start: it delivers the other segments (the
    // second through its header's second copy) and says which one it skipped, and why.
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("impressions.jsonl");
    let cfg = config(&jsonl_collector("imp", &path, "[\"impression\"]", "[\"campaign_id\"]"));
    let mut s = Server::start_in(take_dir(&mut s), Some(&cfg), &["--shards", "1"]);
    let mut said = Vec::new();
    wait_for("the skipped segment named", WAIT, || {
        said.extend(s.stderr_lines());
        said.iter().any(|l| l.contains(&format!("{:020}.seg", 1)) && l.contains("magic") && l.contains("skipped"))
    });
    let last = i;
    wait_for("the last pixel delivered", WAIT, || {
        read_jsonl(&path).last().is_some_and(|e| e["campaign_id"].as_u64() == Some(last))
    });
    let delivered: Vec<u64> = read_jsonl(&path).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(delivered, (in_first + 1..=last).collect::<Vec<_>>(), "all but segment 1's {in_first}");
    assert_eq!(collector_metric(&s, "imp", "tracker_collector_segments_skipped_total"), Some(1.0));
    assert_eq!(collector_metric(&s, "imp", "tracker_collector_records_skipped_total"), Some(0.0));
    said.extend(s.stderr_lines());
    assert!(
        said.iter().any(|l| l.contains(&format!("{:020}.seg: the header's first copy is damaged", 2))
            && l.contains(&format!("read from the second, at offset {}", header / 2))),
        "{said:?}"
    );
    assert_eq!(s.stop(), 0);
}

/// A rollback: segment 2 was written by a later tracker (a format version this build does not
/// read). The collector delivers segment 1, then stops there and says why, and delivers nothing
/// past it; once the segment reads again (the later build is back), every event arrives, in
/// order, none lost and none twice.
#[test]
fn a_collector_waits_at_a_segment_of_a_newer_tracker_and_skips_nothing() {
    let (mut s, mut i) = three_segments_of_pixels();
    let seg2 = s.journal().join("shard-000").join(format!("{:020}.seg", 2));
    let bytes = std::fs::read(&seg2).unwrap();
    let header = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as u64;
    let version = bytes[8..12].to_vec();
    let set_version = |v: &[u8]| {
        let f = std::fs::OpenOptions::new().write(true).open(&seg2).unwrap();
        for at in [8, header / 2 + 8] {
            std::os::unix::fs::FileExt::write_all_at(&f, v, at).unwrap();
        }
    };
    let newer = u32::from_le_bytes(version[..].try_into().unwrap()) + 1;
    set_version(&newer.to_le_bytes());
    // The pixels went one by one over one connection: segment 1 holds campaigns 1..=its records.
    let seg1 = std::fs::read(s.journal().join("shard-000").join(format!("{:020}.seg", 1))).unwrap();
    let records = seg1[header as usize..].chunks_exact(512).filter(|r| r[4..6] == [0xE7, 0xE7]).count() as u64;
    let in_first: Vec<u64> = (1..=records).collect();

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("impressions.jsonl");
    let cfg = config(&jsonl_collector("imp", &path, "[\"impression\"]", "[\"campaign_id\"]"));
    let mut s = Server::start_in(take_dir(&mut s), Some(&cfg), &["--shards", "1"]);
    let mut said = Vec::new();
    wait_for("segment 2 named as a newer tracker's", WAIT, || {
        said.extend(s.stderr_lines());
        said.iter().any(|l| {
            l.contains("collector imp") && l.contains(&format!("{:020}.seg", 2)) && l.contains("newer tracker")
        })
    });
    wait_for("retrying 1, caught_up 0", WAIT, || {
        collector_metric(&s, "imp", "tracker_collector_retrying") == Some(1.0)
            && collector_metric(&s, "imp", "tracker_collector_caught_up") == Some(0.0)
    });
    // Pixels keep coming meanwhile (segment 3 is this build's own): journaled, not delivered.
    let mut c = s.connect();
    for _ in 0..3 {
        i += 1;
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    wait_for("the new pixels journaled", WAIT, || {
        journal_cat(&s.journal()).last().is_some_and(|e| e["campaign_id"].as_u64() == Some(i))
    });
    let delivered = |p: &std::path::Path| -> Vec<u64> {
        read_jsonl(p).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect()
    };
    assert_eq!(delivered(&path), in_first, "segment 1 only, and nothing past segment 2");
    assert_eq!(collector_metric(&s, "imp", "tracker_collector_segments_skipped_total"), Some(0.0));
    assert_eq!(s.stop(), 0);

    // The later build is back (here: the segment reads again). Nothing was passed over.
    set_version(&version);
    let mut s = Server::start_in(take_dir(&mut s), Some(&cfg), &["--shards", "1"]);
    let last = i;
    wait_for("the last pixel delivered", WAIT, || delivered(&path).last() == Some(&last));
    assert_eq!(delivered(&path), (1..=last).collect::<Vec<_>>());
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_collector_that_cannot_take_its_lock_says_so_once_and_shows_as_retrying() {
    // The collector's directory cannot be made: a file is in its place.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("journal/collectors/j");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}\n{}",
        tracker::config::DEFAULT_TOML,
        jsonl_collector("j", &out.path().join("e.jsonl"), "\"all\"", "[]")
    );
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    wait_for("retrying 1", WAIT, || collector_metric(&s, "j", "tracker_collector_retrying") == Some(1.0));
    // Several more attempts (one every 100 ms of the collector's own timer) pass while it stays
    // retrying and the server serves: at least half a second of them, so that a message said at
    // every attempt would be said several times. Time passing for the code's timer, not a bound
    // anything must meet.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(collector_metric(&s, "j", "tracker_collector_retrying"), Some(1.0));
        assert_eq!(s.connect().get("/i?c=1").status, 200);
    }
    // Put right, the collector starts.
    std::fs::remove_file(&blocker).unwrap();
    wait_for("the collector running", WAIT, || out.path().join("e.jsonl").exists());
    assert_eq!(s.stop(), 0);
    let said: Vec<String> = s.stderr_lines().into_iter().filter(|l| l.contains("cannot lock")).collect();
    assert_eq!(said.len(), 1, "said once, not at every attempt: {said:?}");
    assert!(said[0].contains("collectors/j"), "{said:?}");
}

/// A collector's cursor file that cannot be read (damaged, hand-edited) holds back only its own
/// shard: the other shard's passed segments are still deleted, and the journal's size still
/// counts, so `journal.size_bytes_max` still refuses `logged` events before the disk fills. The
/// problem is said once, not every second. (Retention used to give up the whole pass.)
#[test]
fn an_unreadable_cursor_holds_back_only_its_shard_and_the_size_limit_still_holds() {
    let out = tempfile::tempdir().unwrap();
    let text = config(&jsonl_collector("all", &out.path().join("all.jsonl"), "\"all\"", "[]"))
        .replace("retention_age_s = 0\n", "retention_age_s = 1\n")
        .replace("size_bytes_max = 0\n", "size_bytes_max = 600000\n");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("journal/collectors/all/shard-001");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("cursor"), "not a cursor\n").unwrap();
    let mut s = Server::start_in(dir, Some(&text), &["--shards", "2"]);
    let journal = s.journal();

    // Pixels from new connections (shards are chosen per connection) until both shards have
    // rotated and shard 1 alone holds more than the limit.
    let mut fired = 0u64;
    for conn in 0.. {
        assert!(conn < 400, "shard 1 never grew past the limit");
        if segments(&journal, 0).len() >= 3 && segments(&journal, 1).len() >= 6 {
            break;
        }
        let mut c = s.connect();
        let mut raw = Vec::new();
        for _ in 0..100 {
            fired += 1;
            raw.extend_from_slice(format!("GET /i?c={fired} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        c.send(&raw);
        for _ in 0..100 {
            assert_eq!(c.read_response(false).status, 200);
        }
    }
    wait_for("shard 0's first segment deleted", WAIT, || !segments(&journal, 0).contains(&format!("{:020}.seg", 1)));
    wait_for("logged endpoint refused over the size limit", WAIT, || {
        s.connect().get("/bill?auction=y&price=0.1").status == 503
    });
    assert!(segments(&journal, 1).contains(&format!("{:020}.seg", 1)), "shard 1's cursor is unknown: kept");
    assert_eq!(s.stop(), 0);
    let said = s.stderr_lines().iter().filter(|l| l.contains("keeping every segment of shard 1")).count();
    assert_eq!(said, 1, "{:?}", s.stderr_lines());
}

#[test]
fn the_banker_starts_after_a_crash_tore_its_ledger_inside_a_multibyte_character() {
    let data = tempfile::tempdir().unwrap();
    // One acknowledged batch, then the start of another cut off mid-'é' (a crash mid-append:
    // never acknowledged). Budget keys are any UTF-8, which the ledger keeps unescaped.
    let whole = "{\"digest\":1,\"key\":\"k1\",\"spend\":[{\"budget_key\":\"c=é\",\"micros\":5}]}\n";
    let mut ledger = whole.as_bytes().to_vec();
    let torn = "{\"digest\":2,\"key\":\"k2\",\"spend\":[{\"budget_key\":\"c=é".as_bytes();
    ledger.extend_from_slice(&torn[..torn.len() - 1]);
    assert!(std::str::from_utf8(&ledger).is_err(), "the tail ends inside a character");
    std::fs::write(data.path().join("ledger.jsonl"), &ledger).unwrap();
    let banker = Banker::start(data.path());
    let b = banker.balance();
    assert_eq!((b["total_micros"].as_i64(), b["batches"].as_u64()), (Some(5), Some(1)), "{b}");
    assert_eq!(std::fs::read(data.path().join("ledger.jsonl")).unwrap(), whole.as_bytes(), "the torn tail is cut");
}

/// Regression: the banker cut its ledger at the first line it could not read, wherever it was:
/// one damaged line in the middle erased every acknowledged batch after it (and their keys, so
/// resends were applied again). Only a torn last line is cut; a damaged line with more after it
/// stops the start, naming the file and the line, and leaves the ledger as it is.
#[test]
fn the_banker_refuses_a_ledger_damaged_before_its_last_line_instead_of_cutting_it() {
    let data = tempfile::tempdir().unwrap();
    let line =
        |k: u32| format!("{{\"digest\":{k},\"key\":\"k{k}\",\"spend\":[{{\"budget_key\":\"c=1\",\"micros\":5}}]}}\n");
    let damaged = format!("{}{}{}", line(1), line(2).replace("\"key\"", "\"kez\""), line(3));
    let path = data.path().join("ledger.jsonl");
    std::fs::write(&path, &damaged).unwrap();
    let mut child = Command::new(BANKER)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "the banker started: {err}");
    assert!(err.contains(&format!("{}: line 2", path.display())), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), damaged, "the ledger is left as it is");
}

/// Reads one HTTP request with a Content-Length body from `c`; returns (head, body).
fn read_http_request(c: &mut std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read;
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .map_or(0, |v| v.parse().unwrap());
            if buf.len() >= end + 4 + len {
                return (head, buf[end + 4..end + 4 + len].to_vec());
            }
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "the client closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn a_200_that_is_not_the_bankers_answer_is_retried_not_taken_as_applied() {
    // Something at `url` that answers 200 to anything (a maintenance page, a catch-all proxy
    // route): the batch was not applied, and moving on would lose its spend for good.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (i, c) in l.incoming().enumerate() {
            let Ok(mut c) = c else { return };
            c.set_read_timeout(Some(WAIT)).unwrap();
            let (_, body) = read_http_request(&mut c);
            let answer: &[u8] = if i == 0 {
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 21\r\n\r\n<h1>maintenance</h1>\n"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 51\r\n\r\n{\"applied\":true,\"duplicate\":false,\"over_budget\":[]}"
            };
            let _ = c.write_all(answer);
            if tx.send(body).is_err() {
                return;
            }
        }
    });
    let mut s = Server::start(Some(&config(&banker_collector(addr))), &["--shards", "1"]);
    assert_eq!(s.connect().get("/i?c=1&cr=1&p=1.000000&imp=a&site=s.example").status, 200);
    let first = rx.recv_timeout(WAIT).expect("the batch is sent");
    let again = rx.recv_timeout(WAIT).expect("the batch answered by a maintenance page is sent again");
    assert_eq!(first, again, "the identical batch");
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_banker_that_times_out_reading_a_request_does_not_call_it_malformed() {
    // A body that stops arriving (a network stall longer than the banker's request timeout,
    // 30 s by default, with a collector timeout_ms above that): docs/banker.md makes a 400
    // fatal to the collector, so the banker must not answer its own timeout with one.
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start_with(data.path(), &["--request-timeout-ms", "300"]);
    let mut c = Client::connect(banker.addr);
    c.send(b"POST /v1/spend HTTP/1.1\r\nHost: b\r\nIdempotency-Key: k\r\nContent-Length: 100\r\n\r\n{\"key\":");
    let r = c.read_response(false);
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn a_client_trickling_its_request_is_cut_off_at_the_banker_request_timeout() {
    // A byte every 50 ms: each read is quick, the whole request never comes. With a timer that
    // each read restarts, such a client would hold one of the banker's 64 connections for as
    // long as it trickles; the answer must come while it still does.
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start_with(data.path(), &["--request-timeout-ms", "300"]);
    let mut c = Client::connect(banker.addr);
    c.send(b"POST /v1/spend HTTP/1.1\r\nHost: b\r\nIdempotency-Key: k\r\nContent-Length: 1000\r\n\r\n");
    let mut w = c.stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickling = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Up to 20 s of trickle; true when the answer came before the trickle ran out.
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return true;
                }
                if std::io::Write::write_all(&mut w, b" ").is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        })
    };
    let r = c.read_response(false);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert!(trickling.join().unwrap(), "the banker answered only after the client stopped sending");
}

/// The reference banker frames a body by one Content-Length of digits only: two lengths, or one
/// with a sign, are refused rather than read the way a proxy in front may not.
#[test]
fn the_banker_refuses_an_ambiguous_content_length() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    for (lengths, why) in [
        ("Content-Length: 2\r\nContent-Length: 3\r\n", "more than one Content-Length"),
        ("Content-Length: +2\r\n", "bad Content-Length"),
        ("Content-Length: 0x2\r\n", "bad Content-Length"),
    ] {
        let mut c = Client::connect(banker.addr);
        c.send(format!("POST /v1/spend HTTP/1.1\r\nHost: b\r\nIdempotency-Key: k\r\n{lengths}\r\n{{}}").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 400, "{lengths:?}");
        assert!(String::from_utf8_lossy(&r.body).contains(why), "{lengths:?}: {}", String::from_utf8_lossy(&r.body));
    }
    // A chunked body (a proxy in front that re-chunks): 501, which the collector retries with
    // the reason, not a 400 that would stop it.
    let mut c = Client::connect(banker.addr);
    c.send(b"POST /v1/spend HTTP/1.1\r\nHost: b\r\nIdempotency-Key: k\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 501, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(banker.balance()["batches"], 0);
}

/// One banker per data directory: a second one would keep its own set of applied keys and
/// apply every batch a second time.
#[test]
fn a_second_banker_on_the_same_data_directory_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let _first = Banker::start(data.path());
    let out = Command::new(BANKER)
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another banker holds this data directory"), "{err}");
}

/// A collector's payload carries the flags `journal cat` shows (the documented shape), so a
/// consumer can tell a HEAD request, an opted-out visitor or an unfilled price macro apart.
#[test]
fn collector_payloads_carry_the_events_flags_like_journal_cat() {
    let out = tempfile::tempdir().unwrap();
    let imps = out.path().join("impressions.jsonl");
    let mut s =
        Server::start(Some(&config(&jsonl_collector("imps", &imps, "[\"impression\"]", "[\"campaign_id\"]"))), &[]);
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=1").status, 200);
    c.send(b"HEAD /i?c=2 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(true).status, 200);
    c.send(b"GET /i?c=3 HTTP/1.1\r\nHost: t\r\nSec-GPC: 1\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(c.get("/i?c=4&p=${AUCTION_PRICE}").status, 200);
    wait_for("4 impressions in the jsonl file", WAIT, || read_jsonl(&imps).len() >= 4);
    let flags = |v: &Value| {
        ["truncated", "opted_out", "unsubstituted", "head"]
            .into_iter()
            .filter(|f| v.get(*f) == Some(&Value::Bool(true)))
            .collect::<Vec<_>>()
    };
    let mut got: Vec<(u64, Vec<&str>)> =
        read_jsonl(&imps).iter().map(|v| (v["campaign_id"].as_u64().unwrap(), flags(v))).collect();
    got.sort();
    assert_eq!(got, [(1, vec![]), (2, vec!["head"]), (3, vec!["opted_out"]), (4, vec!["unsubstituted"])]);
    assert_eq!(s.stop(), 0);
    let mut journal: Vec<(u64, Vec<&str>)> =
        journal_cat(&s.journal()).iter().map(|v| (v["campaign_id"].as_u64().unwrap(), flags(v))).collect();
    journal.sort();
    assert_eq!(journal, got);
}

/// Regression: `journal replay` locked the collector before it looked at anything, and the lock
/// creates `<journal>/collectors/<name>/`. Run with a wrong `--journal-dir` (the default is
/// `journal` in the current directory) it made that tree and exited 0 having moved nothing; with
/// a misspelt collector name it printed "unchanged" for every shard and exited 0. Either way
/// the operator believed a replay was done that was not. Both are now errors that create
/// nothing.
#[test]
fn replay_of_a_missing_journal_or_an_unknown_collector_is_an_error_and_creates_nothing() {
    let work = tempfile::tempdir().unwrap();
    let out_path = work.path().join("out.jsonl");
    let cfg = config(&jsonl_collector("lines", &out_path, "\"all\"", "[\"campaign_id\"]"));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
    let replay = |journal: &Path, name: &str| {
        let out = Command::new(BIN)
            .args(["journal", "replay", "--collector", name, "--from-segment", "1", "--journal-dir"])
            .arg(journal)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = work.path().join("journal");
    let (code, out, err) = replay(&missing, "lines");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&missing.display().to_string()) && err.contains("journal root"), "{err}");
    assert!(!missing.exists(), "replay created {}", missing.display());

    let (code, out, err) = replay(&s.journal(), "lnies");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("\"lnies\"") && err.contains("known: lines"), "{err}");
    assert!(!s.journal().join("collectors/lnies").exists(), "replay made a directory for an unknown collector");

    let (code, out, err) = replay(&s.journal(), "lines");
    assert_eq!(code, Some(0), "{out}{err}");
}

/// Regression: a collector start failure that is not a config error (here the journal's
/// default key prefix file is damaged) exited 2, the code for a bad config or usage, which sends
/// the operator to a config file that `check-config` passes. It is a runtime failure: exit 1.
#[test]
fn a_collector_start_failure_that_is_not_a_config_error_exits_1_not_2() {
    let dir = tempfile::tempdir().unwrap();
    let collectors = dir.path().join("journal/collectors");
    std::fs::create_dir_all(&collectors).unwrap();
    std::fs::write(collectors.join("default_key_prefix"), "not a prefix\n").unwrap();
    let out_path = dir.path().join("out.jsonl");
    let cfg = config(&jsonl_collector("lines", &out_path, "\"all\"", "[\"campaign_id\"]"));
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    let code = s.wait_exit();
    // The process has exited: its stderr ends, and so does this.
    let err: Vec<String> = s.stderr.iter().collect();
    assert_eq!(code, 1, "{err:#?}");
    assert!(err.iter().any(|l| l.contains("default_key_prefix")), "{err:#?}");
}

/// Regression: `journal replay --from-segment N` to a segment retention had already deleted
/// said `cursor … → N 0` and exited 0, as if delivery would start there; the collector then
/// started at the first segment left, and the operator was never told that the events before it
/// were gone. The line now names the first segment that exists and says the earlier ones are
/// deleted.
#[test]
fn replay_to_a_deleted_segment_says_where_delivery_really_starts() {
    let work = tempfile::tempdir().unwrap();
    let out_path = work.path().join("out.jsonl");
    let cfg = config(&jsonl_collector("lines", &out_path, "\"all\"", "[\"campaign_id\"]"))
        .replace("segment_bytes = 131072", "segment_bytes = 65536");
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    // About 110 records fill a 64 KiB segment: three segments.
    for i in 0..300 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    drop(c);
    assert_eq!(s.stop(), 0);
    let shard = s.journal().join("shard-000");
    assert!(shard.join("00000000000000000003.seg").exists(), "expected three segments");
    // What retention does once every collector is past segment 1.
    std::fs::remove_file(shard.join("00000000000000000001.seg")).unwrap();
    let out = Command::new(BIN)
        .args(["journal", "replay", "--collector", "lines", "--from-segment", "1", "--journal-dir"])
        .arg(s.journal())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("→ 2 0") && stdout.contains("segment 1 is deleted"), "{stdout}");
    // Stamped with segment 2's creation time, so a later wipe of this journal is noticed.
    let cursor = std::fs::read_to_string(s.journal().join("collectors/lines/shard-000/cursor")).unwrap();
    let created = header_created_ns(&shard.join("00000000000000000002.seg"));
    assert_eq!(cursor, format!("2 0 {created}\n"));
}

/// The `created_ns` field of a segment's header (bytes 32..40, little-endian: the format table
/// in src/journal/segment.rs).
fn header_created_ns(segment: &Path) -> u64 {
    let bytes = std::fs::read(segment).unwrap();
    u64::from_le_bytes(bytes[32..40].try_into().unwrap())
}

/// A stopped one-shard server whose jsonl collector `j` delivered three conversions; with the
/// directory of its output (kept while it is used), the output file and the config.
fn three_conversions_delivered_by_j() -> (Server, tempfile::TempDir, PathBuf, String) {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("events.jsonl");
    let cfg = config(&jsonl_collector("j", &path, "\"all\"", "[]"));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for i in 0..3 {
        assert_eq!(c.get(&format!("/cv?c=1&value=1&order=o-{i}")).status, 200);
    }
    wait_for("three conversions delivered", WAIT, || read_jsonl(&path).len() == 3);
    drop(c);
    assert_eq!(s.stop(), 0);
    (s, out, path, cfg)
}

/// Regression: a collector that delivered the last record of a segment the writer had left
/// moved its cursor to record 0 of the next segment and wrote it without that segment's
/// creation time (it knew only the open segment's). Stopped there (the next segment still
/// empty), the cursor could not tell a journal wiped and regrown past that number before the
/// next start, and would skip the new journal's records before it.
#[test]
fn a_cursor_moved_to_the_next_segment_carries_that_segments_creation_time() {
    let (mut s, _out, path, cfg) = three_conversions_delivered_by_j();
    let cursor = s.journal().join("collectors/j/shard-000/cursor");
    let shard = s.journal().join("shard-000");
    let first = header_created_ns(&shard.join("00000000000000000001.seg"));
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), format!("1 3 {first}\n"));

    // Another schema (one string field's size changed): the writer leaves segment 1 at start
    // for a new, empty segment 2, and the collector finishes segment 1 with nothing to send.
    let old_label = "{ name = \"label\",       source = \"query.l\",   type = \"string\", max_bytes = 128 }";
    assert!(cfg.contains(old_label));
    let cfg = cfg.replace(old_label, &old_label.replace("128", "120"));
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    wait_for("the cursor moved to segment 2", WAIT, || {
        std::fs::read_to_string(&cursor).is_ok_and(|c| c.starts_with("2 0"))
    });
    assert_eq!(s.stop(), 0);
    let second = header_created_ns(&shard.join("00000000000000000002.seg"));
    assert!(second > first, "segment 2 created at {second}, segment 1 at {first}");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), format!("2 0 {second}\n"));
    assert_eq!(read_jsonl(&path).len(), 3, "nothing delivered twice");
}

/// Regression: over `journal.size_bytes_max` with `journal.retention_age_s = 0` (retention off,
/// the default), /ready and the log said logged endpoints answer 503 "until collectors catch up
/// and retention frees space": retention deletes nothing when its age is 0, so the operator
/// waited for something that never comes. Both now say that retention is off and what to do.
#[test]
fn over_the_size_limit_with_retention_off_says_that_nothing_will_be_deleted() {
    let text = config("").replace("size_bytes_max = 0\n", "size_bytes_max = 200000\n");
    assert!(text.contains("retention_age_s = 0\n"));
    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    let mut c = s.connect();
    // About 240 records fill a 128 KiB segment: the second one takes the journal over the limit.
    for i in 0..300 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    let why = crate::metrics::ready_when(&s, 503);
    assert!(why.contains("journal.size_bytes_max"), "{why}");
    assert!(why.contains("journal.retention_age_s is 0") && !why.contains("retention frees space"), "{why}");
    let deadline = Instant::now() + WAIT;
    let said = loop {
        let line =
            s.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("the limit is logged");
        if line.contains("over journal.size_bytes_max") {
            break line;
        }
    };
    assert!(said.contains("journal.retention_age_s is 0") && !said.contains("until retention frees"), "{said}");
    assert_eq!(s.stop(), 0);
}

/// Regression: the size that `journal.size_bytes_max` is held to counted only the `.seg` files.
/// Each shard also keeps its next segment made ahead (`N.seg.tmp`, preallocated to the full
/// segment size) and any segment set aside as `.seg.corrupt`: on disk, uncounted, up to one
/// segment per shard beyond the limit that is there to keep the disk from filling. Every segment
/// file of the journal now counts.
#[test]
fn the_size_limit_counts_the_segment_made_ahead() {
    let text = config("").replace("size_bytes_max = 0\n", "size_bytes_max = 300000\n");
    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    let journal = s.journal();
    let shard = journal.join("shard-000");
    let mut c = s.connect();
    // Until the first rotation: two 128 KiB segments (262144 bytes, under the limit) ...
    for i in 0.. {
        assert!(i < 2000, "no rotation");
        if segments(&journal, 0).len() == 2 {
            break;
        }
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    // ... and the third made ahead: 393216 bytes of segment files on disk.
    wait_for("segment 3 made ahead", WAIT, || shard.join(format!("{:020}.seg.tmp", 3)).exists());
    let why = crate::metrics::ready_when(&s, 503);
    assert!(why.contains("over journal.size_bytes_max"), "{why}");
    assert_eq!(s.stop(), 0);
}

/// A one-shard server whose jsonl collector `j` delivered `before` conversions (`logged`, 512
/// bytes each), then stopped; its shard directory wiped with `collectors/` kept; restarted on
/// the same journal and 5 more conversions delivered, each event once in the collector's file.
/// Returns the running server, the collector's output directory (kept while the server runs),
/// the cursor file and what it held before the wipe.
fn jsonl_collector_across_a_wiped_journal(before: usize) -> (Server, tempfile::TempDir, std::path::PathBuf, String) {
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("events.jsonl");
    let cfg = config(&jsonl_collector("j", &path, "\"all\"", "[]"));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for i in 0..before {
        assert_eq!(c.get(&format!("/cv?c=1&value=1&order=o-{i}")).status, 200);
    }
    wait_for("the old journal delivered", WAIT, || read_jsonl(&path).len() == before);
    assert_eq!(s.stop(), 0);
    let cursor = s.journal().join("collectors/j/shard-000/cursor");
    let old = std::fs::read_to_string(&cursor).unwrap();
    std::fs::remove_dir_all(s.journal().join("shard-000")).unwrap();

    let dir = take_dir(&mut s);
    drop(s);
    let s = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for i in before..before + 5 {
        assert_eq!(c.get(&format!("/cv?c=1&value=1&order=o-{i}")).status, 200);
    }
    wait_for("the new journal's events delivered", WAIT, || read_jsonl(&path).len() >= before + 5);
    let lines = read_jsonl(&path);
    let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!((lines.len(), ids.len()), (before + 5, before + 5), "each event once");
    (s, out, cursor, old)
}

/// Regression: the operator wiped the journal's shard directories but kept `collectors/`. The
/// writer starts again at segment 1; the collector's cursor pointed at a later segment of the
/// old journal, so it waited for that segment to appear and delivered nothing, silently.
#[test]
fn a_cursor_past_every_segment_after_the_journal_was_wiped_delivers_the_new_segments() {
    // 600 conversions of 512 bytes fill more than two 128 KiB segments.
    let (mut s, _out, cursor, old) = jsonl_collector_across_a_wiped_journal(600);
    assert!(old.split(' ').next().unwrap().parse::<u64>().unwrap() >= 3, "cursor {old:?}");
    // Said loudly, naming the cursor file and where it pointed, and counted.
    let said = s.stderr_lines();
    let line = said.iter().find(|l| l.contains("collector j") && l.contains("past every segment"));
    let line = line.unwrap_or_else(|| panic!("no line about the reset: {said:?}"));
    let old: Vec<&str> = old.split_whitespace().collect();
    let pointed = format!("segment {} record {}", old[0], old[1]);
    assert!(line.contains(&cursor.display().to_string()) && line.contains(&pointed), "{line}");
    assert_eq!(collector_metric(&s, "j", "tracker_collector_cursor_resets_total"), Some(1.0));
    assert_eq!(s.stop(), 0);
}

/// Regression: as above, but with the old cursor inside segment 1 (record 100). The new
/// journal has a segment 1 too, so the cursor did not look past every segment: the collector
/// waited for record 100 of the new segment and never delivered its first 100 events. The
/// cursor now carries its segment's creation time, which the new segment 1 does not share.
#[test]
fn a_cursor_in_segment_one_of_a_wiped_journal_delivers_the_new_segment_one_from_its_start() {
    let (mut s, _out, cursor, old) = jsonl_collector_across_a_wiped_journal(100);
    assert!(old.starts_with("1 100 "), "cursor {old:?}");
    let said = s.stderr_lines();
    let line = said.iter().find(|l| l.contains("collector j") && l.contains("segment 1 record 100"));
    let line = line.unwrap_or_else(|| panic!("no line about the reset: {said:?}"));
    assert!(line.contains(&cursor.display().to_string()) && line.contains("was created at"), "{line}");
    assert_eq!(collector_metric(&s, "j", "tracker_collector_cursor_resets_total"), Some(1.0));
    assert_eq!(s.stop(), 0);
}

/// Regression: a reset from a cursor at record 0 of segment 1 (a collector that had delivered
/// nothing of the old journal) to record 0 of the new segment 1 did not write the cursor, which
/// skips a position that did not move: the file kept the old journal's stamp, and every later
/// start "reset" again, dropped the batch logs and cut the same ranges under one more key base
/// (a banker applies each base's ranges anew). The first start after the wipe resets; the next
/// one must not.
#[test]
fn a_reset_from_record_zero_of_segment_one_is_written_and_not_repeated() {
    let (mut s, _out, cursor, old) = jsonl_collector_across_a_wiped_journal(100);
    assert_eq!(s.stop(), 0);
    // Back to the old journal's cursor at record 0, then a second wipe: the state of a
    // collector that never got past the first record when its journal was wiped.
    let stamp = old.split_whitespace().nth(2).unwrap().to_string();
    std::fs::write(&cursor, format!("1 0 {stamp}\n")).unwrap();
    std::fs::remove_dir_all(s.journal().join("shard-000")).unwrap();
    let dir = take_dir(&mut s);
    drop(s);
    // The same config again (the harness wrote it into the directory).
    let cfg = std::fs::read_to_string(dir.path().join("tracker.toml")).unwrap();
    let start = |dir| Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    let mut s = start(dir);
    wait_for("the reset", WAIT, || collector_metric(&s, "j", "tracker_collector_cursor_resets_total") == Some(1.0));
    assert_eq!(s.stop(), 0);
    let now = std::fs::read_to_string(&cursor).unwrap();
    assert!(now.starts_with("1 0 ") && !now.contains(&stamp), "the reset left the old stamp: {now:?}");
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = start(dir);
    let mut c = s.connect();
    assert_eq!(c.get("/cv?c=1&value=1&order=after").status, 200);
    wait_for("the new event delivered", WAIT, || {
        collector_metric(&s, "j", "tracker_collector_batches_total").is_some_and(|n| n >= 1.0)
    });
    assert_eq!(collector_metric(&s, "j", "tracker_collector_cursor_resets_total"), Some(0.0));
    assert_eq!(s.stop(), 0);
}

/// Zero-downtime restart: the old process's collectors deliver what its own shards journaled
/// and stop there. The new process appends to the same journal as soon as the old one lets go
/// of the shard locks, before the old collectors finish; they used to follow it, and under a
/// steady load ran until the 10 s join deadline while the new process's collectors waited for
/// their lock. By construction here: the old collector's batch is held in a frozen banker while
/// the new process (with one shard more) journals events on both its shards, then the banker
/// answers. The old process must exit
/// having banked its own event only (the new one's collector points at a closed port, so
/// whatever the banker holds after that exit was sent by the old process).
#[test]
fn stopping_collectors_deliver_up_to_where_their_own_shards_stopped() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let held = |addr| banker_collector(addr).replace("timeout_ms = 2000", "timeout_ms = 60000");
    let mut old = Server::start(Some(&config(&held(banker.addr))), &["--shards", "1"]);
    banker.signal(libc::SIGSTOP);
    assert_eq!(old.connect().get("/i?c=1&p=0.5").status, 200);
    wait_for("the old process's batch in flight", WAIT, || {
        collector_metric(&old, "banker", "tracker_collector_pending_age_seconds").is_some_and(|a| a > 0.0)
    });

    // Port 1: nothing listens there, so the new process's collector is refused at once (a port
    // freed by a dropped listener could be taken by a test running beside this one).
    let closed: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let new_cfg = old.dir.path().join("new.toml");
    std::fs::write(&new_cfg, config(&held(closed))).unwrap();
    let extra = ["--admin-listen", "127.0.0.1:0", "--shards", "2", "--config", new_cfg.to_str().unwrap()];
    let (mut new, new_said) = spawn_beside(old.addr, &old.journal(), &extra);
    wait_line(&new_said, "is locked by another tracker process");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(old.child.id() as i32, libc::SIGTERM) };
    wait_line(&new_said, "tracker: listening on");
    // Fresh connections until both of the new process's shards journaled some: shard 1 is one
    // the old process never wrote.
    let mut sent = 1;
    loop {
        sent += 1;
        assert!(sent < 200, "{sent} connections all went to one shard");
        assert_eq!(Client::connect(old.addr).get(&format!("/i?c={sent}&p=0.5")).status, 200);
        wait_for("the pixel journaled", WAIT, || journal_cat(&old.journal()).len() == sent);
        let on_1 = journal_cat(&old.journal()).iter().filter(|e| e["shard"] == 1).count();
        if on_1 > 0 && on_1 < sent - 1 {
            break;
        }
    }

    banker.signal(libc::SIGCONT);
    assert_eq!(old.wait_exit(), 0);
    let said = old.stderr_lines();
    assert!(!said.iter().any(|l| l.contains("did not finish within")), "{said:?}");
    assert_eq!(banker.balance()["total_micros"].as_i64(), Some(500_000), "the old process banked only its own event");
    // SAFETY: as above.
    unsafe { libc::kill(new.id() as i32, libc::SIGTERM) };
    assert_eq!(wait_child(&mut new, "of SIGTERM").code(), Some(0));
}

/// A `generation` file damaged into the largest number: the reset it would take cannot count
/// one more, and wrapping to 0 would key the new journal's batches under the first journal's
/// base (a banker would take them for batches it applied). The collector says so and retries;
/// nothing is delivered from the new journal.
#[test]
fn a_reset_with_a_generation_that_cannot_grow_is_refused_and_said() {
    let (mut s, _out, path, cfg) = three_conversions_delivered_by_j();
    let state = s.journal().join("collectors/j/shard-000");
    std::fs::write(state.join("generation"), format!("{}\n", u64::MAX)).unwrap();
    std::fs::remove_dir_all(s.journal().join("shard-000")).unwrap();
    let mut s = Server::start_in(take_dir(&mut s), Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(c.get("/cv?c=1&value=1&order=new").status, 200);
    let mut said = Vec::new();
    wait_for("the damaged generation named", WAIT, || {
        said.extend(s.stderr_lines());
        said.iter().any(|l| l.contains("collector j") && l.contains(&format!("generation {} cannot grow", u64::MAX)))
    });
    wait_for("retrying 1", WAIT, || collector_metric(&s, "j", "tracker_collector_retrying") == Some(1.0));
    assert_eq!(collector_metric(&s, "j", "tracker_collector_cursor_resets_total"), Some(0.0));
    assert_eq!(read_jsonl(&path).len(), 3, "nothing of the new journal delivered");
    assert_eq!(std::fs::read_to_string(state.join("generation")).unwrap(), format!("{}\n", u64::MAX));
    assert_eq!(s.stop(), 0);
}

/// Two key prefixes whose bases (`<key_prefix>:j`) have one CRC32C id: batch logs name a base by
/// its id, so they could not tell the two apart. A collector restarted on the second after
/// sending under the first stops (`failed`), says why and what to do, and sends nothing; it
/// used to retry for good.
#[test]
fn a_key_prefix_whose_base_id_is_taken_stops_the_collector() {
    let (first, second) = ("k1371838", "k2000402");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("events.jsonl");
    let with_prefix = |p: &str| {
        let collector = jsonl_collector("j", &path, "\"all\"", "[]");
        config(&collector.replace("[collector.options]", &format!("key_prefix = \"{p}\"\n[collector.options]")))
    };
    let mut s = Server::start(Some(&with_prefix(first)), &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(c.get("/cv?c=1&value=1&order=a").status, 200);
    wait_for("the first event delivered", WAIT, || read_jsonl(&path).len() == 1);
    assert_eq!(s.stop(), 0);
    let bases = std::fs::read_to_string(s.journal().join("collectors/j/key_bases")).unwrap();
    assert!(bases.contains(&format!("\na5a6923b {first}:j\n")), "{bases}");

    let mut s = Server::start_in(take_dir(&mut s), Some(&with_prefix(second)), &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(c.get("/cv?c=1&value=1&order=b").status, 200);
    wait_for("failed 1", WAIT, || collector_metric(&s, "j", "tracker_collector_failed") == Some(1.0));
    let want =
        format!("key base \"{second}:j\" has the id a5a6923b of the recorded \"{first}:j\"; choose another key_prefix");
    let mut said = Vec::new();
    assert!(s.wait_line(&mut said, &want), "{said:?}");
    assert!(said.iter().any(|l| l.contains("collector j: fatal") && l.contains(&want)), "{said:?}");
    assert_eq!(collector_metric(&s, "j", "tracker_collector_retrying"), Some(0.0));
    let age = collector_metric(&s, "j", "tracker_collector_pending_age_seconds");
    assert!(age.is_some_and(|a| a > 0.0), "the waiting batch's age: {age:?}");
    assert_eq!(read_jsonl(&path).len(), 1);
    assert_eq!(s.stop(), 0);
}

/// Regression: after the journal was wiped under kept collector state, the new segments are
/// numbered from 1 again, so their batches got the keys of the old journal's batches: the
/// banker took each as a resend of the old one (same key and, at one price, the same body)
/// and applied none of the new spend.
#[test]
fn after_the_journal_was_wiped_new_spend_is_banked_under_keys_of_its_own() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    // One event per batch: every batch is exactly one record, so old and new ranges coincide.
    let cfg = config(&banker_collector(banker.addr).replace("linger_ms = 50", "linger_ms = 50\nevents_max = 1"));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let impression =
        |i: u64| format!("GET /i?c=1&cr=1&p=0.500000&imp=i-{i}&site=s.example HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut c = s.connect();
    // 600 impressions of 512 bytes fill more than two 128 KiB segments.
    for chunk in (0..600u64).collect::<Vec<_>>().chunks(50) {
        c.send(chunk.iter().map(|&i| impression(i)).collect::<String>().as_bytes());
        for _ in chunk {
            assert_eq!(c.read_response(false).status, 200);
        }
    }
    wait_for("the old journal banked", WAIT * 2, || banker.balance()["total_micros"].as_i64() == Some(300_000_000));
    assert_eq!(s.stop(), 0);
    std::fs::remove_dir_all(s.journal().join("shard-000")).unwrap();
    let dir = take_dir(&mut s);
    drop(s);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    let mut c = s.connect();
    for i in 600..603 {
        c.send(impression(i).as_bytes());
        assert_eq!(c.read_response(false).status, 200);
    }
    wait_for("the new batches acknowledged", WAIT, || banker_metric(&s, "tracker_collector_batches_total") == Some(3));
    assert_eq!(banker.balance()["total_micros"].as_i64(), Some(301_500_000), "{}", banker.balance());
    assert_eq!(s.stop(), 0);
}

/// Regression: a `HEAD` of a billing notice (a link scanner, a prefetcher: journaled, flagged
/// `head`, never in the dedup window) was summed as spend, so the banker counted the notice's
/// price once more for every HEAD of its URL, beside the GET that billed it.
#[test]
fn a_head_of_a_billing_notice_is_not_spend() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let mut s = Server::start(Some(&config(&banker_collector(banker.addr))), &["--shards", "1"]);
    let mut c = s.connect();
    let bill = "/bill?auction=a-1&bid=b&imp=1&c=7&price=1.500000";
    for _ in 0..2 {
        c.send(format!("HEAD {bill} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(true).status, 204);
    }
    assert_eq!(c.get(bill).status, 204);
    assert_eq!(c.get("/bill?auction=a-2&bid=b&imp=1&c=7&price=0.250000").status, 204);
    // All four records delivered (the HEADs are journaled and reach the collector) ...
    wait_for("four events at the banker", WAIT, || banker_metric(&s, "tracker_collector_events_total") == Some(4));
    // ... and only the two GETs are spend.
    let b = banker.balance();
    assert_eq!(b["total_micros"], 1_750_000, "{b}");
    assert_eq!(b["keys"]["campaign_id=7"]["spend_micros"], 1_750_000, "{b}");
    assert_eq!(s.stop(), 0);
}

/// Regression: string values are stored as bytes (`%FF` decodes to the byte 0xFF), but the
/// projection read them with `from_utf8_lossy`, so `a%FF` and `a%FE` both reached the collectors
/// as `a\u{FFFD}`: the banker summed two sites' spend under one budget key, and JSONL lines and
/// `journal cat` could not tell them apart. Valid UTF-8 (here a literal `a%FF`) is unchanged.
#[test]
fn string_values_that_are_not_utf8_stay_apart_at_the_banker_and_in_json() {
    let data = tempfile::tempdir().unwrap();
    let banker = Banker::start(data.path());
    let out = tempfile::tempdir().unwrap();
    let jsonl = out.path().join("sites.jsonl");
    let collectors = format!(
        "[[collector]]\nname = \"banker\"\nkind = \"banker\"\nevents = [\"impression\"]\n\
         fields = [\"site\", \"price\"]\nlinger_ms = 20\nretry_initial_ms = 20\nretry_max_ms = 200\n\
         [collector.options]\nurl = \"http://{}\"\nbudget_key = [\"site\"]\ntimeout_ms = 2000\n{}",
        banker.addr,
        jsonl_collector("sites", &jsonl, "[\"impression\"]", "[\"site\"]")
    );
    let mut s = Server::start(Some(&config(&collectors)), &["--shards", "1"]);
    let mut c = s.connect();
    for (i, (site, price)) in [("a%FF", "1.000000"), ("a%FE", "0.250000"), ("a%25FF", "0.030000")].iter().enumerate() {
        let r = c.get(&format!("/i?c=7&p={price}&imp=imp-{i}&site={site}"));
        assert_eq!(r.status, 200, "{site}: {:?}", String::from_utf8_lossy(&r.body));
    }
    wait_for("three events at the banker", WAIT, || banker_metric(&s, "tracker_collector_events_total") == Some(3));
    let b = banker.balance();
    assert_eq!(b["keys"]["site=a%FF"]["spend_micros"], 1_000_000, "{b}");
    assert_eq!(b["keys"]["site=a%FE"]["spend_micros"], 250_000, "{b}");
    // The valid text `a%FF` keeps its `%` escaped as the protocol always did.
    assert_eq!(b["keys"]["site=a%25FF"]["spend_micros"], 30_000, "{b}");
    assert_eq!(b["keys"].as_object().unwrap().len(), 3, "{b}");
    // JSON: an invalid byte is a lone surrogate escape U+DC80 + byte - 0x80 (PEP 383), which no
    // valid UTF-8 string can produce; valid text is written as before.
    wait_for("three JSONL lines", WAIT, || std::fs::read_to_string(&jsonl).unwrap_or_default().lines().count() == 3);
    let lines = std::fs::read_to_string(&jsonl).unwrap();
    let sites: Vec<&str> = lines.lines().map(|l| &l[l.find(",\"site\":").expect(l)..]).collect();
    assert_eq!(sites, [r#","site":"a\udcff"}"#, r#","site":"a\udcfe"}"#, r#","site":"a%FF"}"#]);
    assert_eq!(s.stop(), 0);
    let cat = Command::new(BIN).args(["journal", "cat", "--journal-dir"]).arg(s.journal()).output().unwrap();
    assert!(cat.status.success(), "{}", String::from_utf8_lossy(&cat.stderr));
    let cat = String::from_utf8(cat.stdout).unwrap();
    for site in [r#""site":"a\udcff""#, r#""site":"a\udcfe""#, r#""site":"a%FF""#] {
        assert_eq!(cat.matches(site).count(), 1, "{site} in {cat}");
    }
}

/// Regression: after its shards stopped, a process kept answering on the admin port while its
/// collectors drained (up to 10 s). In a zero-downtime restart the new process listens on the
/// same port (SO_REUSEPORT), so probes and scrapes alternated between the two: `/ready` flapped
/// and `/metrics` jumped between two processes' counters. The old one now stops listening as
/// soon as its shards have stopped.
#[test]
fn a_stopping_process_leaves_the_admin_port_while_its_collectors_drain() {
    // A banker that takes connections and never answers: the collector's delivery at the stop
    // hangs until the process gives up on it (10 s).
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>> = Default::default();
    let keep = held.clone();
    let hole_addr = hole.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in hole.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    let cfg = config(&banker_collector(hole_addr).replace("timeout_ms = 2000", "timeout_ms = 60000"));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    assert_eq!(s.connect().get("/i?c=1&p=0.5").status, 200);
    let admin = s.admin.unwrap();
    wait_for("the banker's connection", WAIT, || !held.lock().unwrap().is_empty());
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    wait_for("the admin port to be closed", WAIT, || std::net::TcpStream::connect(admin).is_err());
    assert!(s.child.try_wait().unwrap().is_none(), "the process exited: the port closed with it, not before");
    assert_eq!(s.wait_exit(), 0);
}
