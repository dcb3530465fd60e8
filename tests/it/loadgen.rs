//! tools/loadgen against the real tracker over loopback: the rate it reports is the rate it was
//! asked for, and every 2xx it counted is an event in the journal.

use std::process::Command;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;

use crate::harness::{base64_decode, journal_cat, Server};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// `LOADGEN_RESULT k=v ...` from loadgen's stdout, as (key, number) pairs.
fn result_line(stdout: &str) -> Vec<(String, f64)> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("LOADGEN_RESULT "))
        .unwrap_or_else(|| panic!("no LOADGEN_RESULT line in:\n{stdout}"));
    line.split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap_or_else(|_| panic!("{kv}")))
        })
        .collect()
}

fn get(r: &[(String, f64)], k: &str) -> f64 {
    r.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("no {k} in {r:?}")).1
}

#[test]
fn loadgen_sends_the_asked_rate_and_every_2xx_is_journaled() {
    let mut server = Server::start(None, &["--shards", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("run.hlog");
    let (rate, secs) = (2000.0, 2.0);
    let out = Command::new(LOADGEN)
        .args(["--target", &server.addr.to_string(), "--rate", "2000", "--duration", "2s", "--connections", "16"])
        .args(["--warmup", "0s", "--timeout", "10s", "--hlog"])
        .arg(&hlog)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadgen failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let r = result_line(&stdout);

    // The rate it was asked for, within 1%: requests sent in the measured window / its duration.
    let sent = get(&r, "sent");
    let achieved = sent / secs;
    assert!((achieved - rate).abs() <= rate * 0.01, "achieved {achieved} req/s for {rate} asked\n{stdout}");
    assert_eq!(get(&r, "achieved_rate"), (achieved * 10.0).round() / 10.0);
    for k in ["non2xx", "conn_errors", "timeouts", "protocol_errors"] {
        assert_eq!(get(&r, k), 0.0, "{k}\n{stdout}");
    }

    // Every 2xx (warm-up included, none here) is an event in the journal after a clean stop.
    assert_eq!(server.stop(), 0);
    let events = journal_cat(&server.journal());
    assert_eq!(events.len() as f64, get(&r, "all_ok"), "journal events vs loadgen's 2xx responses");
    assert_eq!(get(&r, "all_ok"), get(&r, "ok"));

    // The interval log: 1 s intervals whose counts add up to the responses measured.
    let text = std::fs::read(&hlog).unwrap();
    let mut de = Deserializer::new();
    let mut counts = Vec::new();
    for e in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(h) = e.expect("valid interval log") {
            let b = base64_decode(h.encoded_histogram());
            let hist: hdrhistogram::Histogram<u64> = de.deserialize(&mut &b[..]).unwrap();
            assert_eq!(h.duration().as_secs_f64(), 1.0);
            counts.push(hist.len());
        }
    }
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(counts.iter().sum::<u64>() as f64, get(&r, "ok"));
}

#[test]
fn loadgen_refuses_bad_arguments_with_the_bound() {
    let out = Command::new(LOADGEN).args(["--target", "127.0.0.1:9", "--rate", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--rate 0") && err.contains("1..="), "{err}");
}
