//! The Kafka collector against a real Kafka-protocol broker: tansu 0.6.0 (in-memory storage) on
//! a free loopback port, produced through the tracker and consumed back with librdkafka.
//!
//! tansu must be installed (`cargo install tansu --version 0.6.0 --locked --features
//! dynostore`; .ci/run does it when missing). Without it these tests fail: none is skipped.

use crate::harness::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TYPES: [&str; 6] = ["impression", "conversion", "video", "win", "bill", "custom"];

fn tansu_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join("tansu")).find(|p| p.is_file())
}

pub struct Broker {
    child: Child,
    pub port: u16,
    bin: PathBuf,
}

impl Broker {
    /// Starts tansu on a free loopback port.
    fn start() -> Broker {
        Broker::start_with(None)
    }

    /// Like `start`, advertising 127.0.0.1:`port` to clients as the broker's address instead of
    /// its own (a proxy in front of it).
    pub fn start_advertising(port: u16) -> Broker {
        Broker::start_with(Some(port))
    }

    fn start_with(advertised: Option<u16>) -> Broker {
        let Some(bin) = tansu_bin() else {
            panic!(
                "tansu not found: install it with `cargo install tansu --version 0.6.0 --locked --features dynostore`"
            );
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised_url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let b = Broker { child, port, bin };
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port} within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        for t in TYPES {
            let out = Command::new(&b.bin)
                .args(["topic", "create", &format!("tracker.{t}"), "--broker", &url, "--partitions", "1"])
                .output()
                .unwrap();
            assert!(out.status.success(), "tansu topic create: {}", String::from_utf8_lossy(&out.stderr));
        }
        b
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The embedded config with small segments plus a Kafka collector on every type.
pub fn kafka_collector(port: u16, timeout_ms: u64) -> String {
    let base = tracker::config::DEFAULT_TOML.replace("segment_bytes = 67108864", "segment_bytes = 131072");
    format!(
        "{base}\n[[collector]]\nname = \"kafka\"\nkind = \"kafka\"\nevents = \"all\"\nfields = [\"campaign_id\", \"price\", \"vast_event\"]\n\
         linger_ms = 20\nretry_initial_ms = 100\nretry_max_ms = 1000\n\
         [collector.options]\nbrokers = \"127.0.0.1:{port}\"\ntimeout_ms = {timeout_ms}\n"
    )
}

/// Every message of the six topics: id → (count, JSON value, `type` header). Reads until it has
/// `ids` distinct ids and `messages` messages and the topics are idle, or a deadline.
fn consume(port: u16, ids: usize, messages: usize) -> HashMap<String, (usize, Value, String)> {
    consume_with(port, ids, messages, &[])
}

/// `consume` with extra librdkafka settings (TLS).
pub fn consume_with(
    port: u16,
    ids: usize,
    messages: usize,
    props: &[(&str, &str)],
) -> HashMap<String, (usize, Value, String)> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", format!("127.0.0.1:{port}"))
        .set("group.id", "tracker-test")
        .set("enable.auto.commit", "false");
    for (k, v) in props {
        cfg.set(*k, *v);
    }
    let c: BaseConsumer = cfg.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in TYPES {
        tpl.add_partition_offset(&format!("tracker.{t}"), 0, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut got: HashMap<String, (usize, Value, String)> = HashMap::new();
    let mut total = 0;
    let deadline = Instant::now() + WAIT * 2;
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                let headers = m.headers().expect("headers");
                let h = |name: &str| {
                    headers
                        .iter()
                        .find(|h| h.key == name)
                        .and_then(|h| h.value)
                        .map(|b| String::from_utf8_lossy(b).to_string())
                        .unwrap_or_default()
                };
                let id = h("id");
                assert_eq!(v["id"].as_str(), Some(id.as_str()), "id header matches the value");
                assert_eq!(m.key(), Some(id.as_bytes()), "key is the event id");
                assert_eq!(m.topic(), format!("tracker.{}", v["type"].as_str().unwrap()));
                let e = got.entry(id).or_insert((0, v, h("type")));
                e.0 += 1;
                total += 1;
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None if got.len() >= ids && total >= messages => break,
            None => {}
        }
    }
    got
}

/// Request `i` of a deterministic mix of all six endpoints.
fn target(i: u64) -> String {
    match i % 6 {
        0 => format!("/i?c={}&p=0.{:06}&imp=imp-{i}", i % 7, i % 1_000_000),
        1 => format!("/cv?c=1&value=2&order=o-{i}"),
        2 => format!("/v?ev=start&c={}", i % 7),
        3 => format!("/win?auction=w-{i}&price=0.5"),
        4 => format!("/bill?auction=b-{i}&price=0.5&c=3"),
        _ => format!("/e?n=n{i}"),
    }
}

pub fn send(s: &Server, range: std::ops::Range<u64>) {
    let mut c = s.connect();
    let ids: Vec<u64> = range.collect();
    for chunk in ids.chunks(64) {
        let mut raw = Vec::new();
        for &i in chunk {
            raw.extend_from_slice(
                format!("GET {} HTTP/1.1\r\nHost: t\r\nCookie: uid=secret\r\n\r\n", target(i)).as_bytes(),
            );
        }
        c.send(&raw);
        for _ in chunk {
            let r = c.read_response(false);
            assert!(r.status == 200 || r.status == 204, "status {}", r.status);
        }
    }
}

#[test]
fn ten_thousand_events_reach_kafka_each_exactly_once_with_the_idempotent_producer() {
    let broker = Broker::start();
    let mut s = Server::start(Some(&kafka_collector(broker.port, 30_000)), &["--shards", "2"]);
    let t0 = Instant::now();
    send(&s, 0..10_000);
    let got = consume(broker.port, 10_000, 10_000);
    let took = t0.elapsed();
    eprintln!("10000 events sent, produced and consumed back in {took:?}");
    assert_eq!(got.len(), 10_000, "distinct ids");
    let dups: Vec<_> = got.iter().filter(|(_, (n, _, _))| *n > 1).collect();
    assert!(dups.is_empty(), "{} ids more than once", dups.len());
    for (v, ty) in got.values().map(|(_, v, t)| (v, t)) {
        assert_eq!(v["type"].as_str(), Some(ty.as_str()));
        assert!(v.get("ip").is_none() && v.get("user_id").is_none() && v.get("order_id").is_none(), "{v}");
    }
    let mut seen = Vec::new();
    assert!(
        s.wait_line(&mut seen, "kafka idempotent producer active (producer id"),
        "no sign the broker assigned an idempotent producer id: {seen:?}"
    );
    assert_eq!(s.stop(), 0);
}

#[test]
fn zstd_compressed_batches_reach_kafka_whole() {
    let broker = Broker::start();
    let cfg = kafka_collector(broker.port, 30_000) + "compression = \"zstd\"\n";
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    send(&s, 0..600);
    let got = consume(broker.port, 600, 600);
    assert_eq!(got.len(), 600, "distinct ids");
    assert!(got.values().all(|(n, _, _)| *n == 1));
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_broker_outage_fails_no_request_loses_nothing_and_the_backlog_drains() {
    let broker = Broker::start();
    let mut s = Server::start(Some(&kafka_collector(broker.port, 2_000)), &["--shards", "2"]);
    send(&s, 0..1000);
    // The broker freezes (SIGSTOP): produce requests time out, batches are retried.
    broker.signal(libc::SIGSTOP);
    let t = Instant::now();
    send(&s, 1000..4000);
    eprintln!("3000 requests during the outage answered in {:?}", t.elapsed());
    // Frozen until a batch has failed for it: the outage is seen, not assumed to have lasted.
    let mut seen = Vec::new();
    assert!(s.wait_line(&mut seen, "attempt 1 failed"), "no attempt failed during the outage: {seen:?}");
    broker.signal(libc::SIGCONT);
    send(&s, 4000..5000);
    let got = consume(broker.port, 5000, 5000);
    assert_eq!(got.len(), 5000, "every id reached the topic");
    let dups = got.values().filter(|(n, _, _)| *n > 1).count();
    eprintln!("after the outage: 5000 ids, {dups} delivered more than once (each carries its id)");
    assert_eq!(s.stop(), 0);
}

#[test]
fn kill_9_mid_forwarding_then_replay_every_id_reaches_kafka_with_its_id() {
    let broker = Broker::start();
    let cfg = kafka_collector(broker.port, 3_000);
    let mut s = Server::start(Some(&cfg), &["--shards", "2"]);
    send(&s, 0..1500);
    assert_eq!(consume(broker.port, 1500, 1500).len(), 1500, "the first half reached the topic");
    // Mid-forwarding by construction: the broker freezes, the second half is journaled and its
    // batches are handed to the producer, whose attempt times out; the tracker dies then, with
    // those messages in the producer's memory and the cursor behind them.
    let _ = s.stderr_lines();
    broker.signal(libc::SIGSTOP);
    send(&s, 1500..3000);
    let mut seen = Vec::new();
    assert!(s.wait_line(&mut seen, "attempt 1 failed"), "no attempt failed against the frozen broker: {seen:?}");
    s.kill9();
    broker.signal(libc::SIGCONT);
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "2"]);
    send(&s, 3000..5000);
    let got = consume(broker.port, 5000, 5000);
    assert_eq!(got.len(), 5000, "every id reached the topic");
    let dups = got.values().filter(|(n, _, _)| *n > 1).count();
    eprintln!("kill -9 mid-forwarding: 5000 ids in Kafka, {dups} more than once (each carries its id)");
    assert_eq!(s.stop(), 0);
    // Replay from the first segment: the same ids again, nothing new.
    let out = std::process::Command::new(BIN)
        .args(["journal", "replay", "--collector", "kafka", "--from-segment", "1", "--journal-dir"])
        .arg(s.journal())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "2"]);
    let got = consume(broker.port, 5000, 10_000);
    assert_eq!(got.len(), 5000, "a replay sends the same ids");
    // consume() also returns at its deadline: every id must have come again, not only once.
    let once = got.values().filter(|(n, _, _)| *n < 2).count();
    assert_eq!(once, 0, "{once} ids were not sent again by the replay");
    assert_eq!(s.stop(), 0);
}

#[test]
fn a_short_broker_stall_that_times_out_a_batch_does_not_stop_delivery() {
    // A review reproduced it with tansu: after one MessageTimedOut every retry was answered
    // PRODUCER_FENCED per message, and nothing more was delivered until a restart.
    let broker = Broker::start();
    let mut s = Server::start(Some(&kafka_collector(broker.port, 1_000)), &["--shards", "1"]);
    send(&s, 0..5);
    assert_eq!(consume(broker.port, 5, 5).len(), 5);
    broker.signal(libc::SIGSTOP);
    send(&s, 5..10);
    // Frozen until the batch in flight has timed out (the 1 s message timeout).
    let mut seen = Vec::new();
    assert!(s.wait_line(&mut seen, "attempt 1 failed"), "no attempt timed out during the stall: {seen:?}");
    broker.signal(libc::SIGCONT);
    send(&s, 10..15);
    let got = consume(broker.port, 15, 15);
    assert_eq!(got.len(), 15, "delivery goes on after the stall");
    assert_eq!(s.stop(), 0);
}

/// Regression: a batch to a topic that does not exist failed its attempts with "0 of 1 delivery
/// reports within the timeout: Flush error: OperationTimedOut", naming no topic, while the
/// topic comes from a per-type template: the operator could not tell which one to create.
#[test]
fn a_batch_kafka_does_not_acknowledge_names_the_topic() {
    let broker = Broker::start();
    let cfg = kafka_collector(broker.port, 1_000) + "topic = \"absent.{type}\"\n";
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    send(&s, 0..1);
    let mut seen = Vec::new();
    assert!(s.wait_line(&mut seen, "attempt 1 failed"), "no failed attempt: {seen:?}");
    let failed = seen.iter().find(|l| l.contains("attempt 1 failed")).unwrap();
    assert!(failed.contains("absent.impression"), "{failed}");
    assert_eq!(s.stop(), 0);
}

/// Regression: with `key = "<money field>"` the message key was the raw micros (`250000`)
/// while the value said `"price":0.250000`: consumers partitioning or joining on the key saw
/// a number 10^6 times the one in the event.
#[test]
fn a_key_from_a_money_field_is_the_text_of_the_value() {
    let broker = Broker::start();
    let cfg = kafka_collector(broker.port, 30_000) + "key = \"price\"\n";
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let r = s.connect().get("/win?auction=w-key&price=0.25");
    assert!(r.status == 200 || r.status == 204, "status {}", r.status);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", format!("127.0.0.1:{}", broker.port))
        .set("group.id", "tracker-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("tracker.win", 0, Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + WAIT;
    let (key, value) = loop {
        assert!(Instant::now() < deadline, "no message on tracker.win within {WAIT:?}");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            break (
                m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                String::from_utf8_lossy(m.payload().unwrap()).to_string(),
            );
        }
    };
    // The value's text for the field, as written: `"price":<text>` up to the next `,` or `}`.
    let at = value.find("\"price\":").expect("price in the value") + "\"price\":".len();
    let text = &value[at..at + value[at..].find([',', '}']).unwrap()];
    assert_eq!(text, "0.250000", "{value}");
    assert_eq!(key.as_deref(), Some(text), "{value}");
    assert_eq!(s.stop(), 0);
}

/// An error Kafka gives the same way at every attempt stops the collector with the fix, as the
/// banker's 4xx do, instead of retrying forever: here an event larger than the producer's
/// `message.max.bytes` (librdkafka refuses it at produce). The journal keeps the event.
#[test]
fn a_message_kafka_will_never_take_stops_the_collector_with_the_fix() {
    let broker = Broker::start();
    let cfg = format!(
        "{}\n[[collector]]\nname = \"kafka\"\nkind = \"kafka\"\nevents = [\"impression\"]\nfields = [\"*\"]\n\
         linger_ms = 20\nretry_initial_ms = 100\nretry_max_ms = 1000\n\
         [collector.options]\nbrokers = \"127.0.0.1:{}\"\ntimeout_ms = 5000\n\
         properties = {{ \"message.max.bytes\" = \"1000\" }}\n",
        tracker::config::DEFAULT_TOML,
        broker.port
    );
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    // 160 control bytes, each six characters of JSON (\u0001): a message of over 1000 bytes.
    let consent = "%01".repeat(160);
    assert_eq!(s.connect().get(&format!("/i?c=1&gdpr=0&gdpr_consent={consent}")).status, 200);
    let mut seen = Vec::new();
    assert!(s.wait_line(&mut seen, "collector kafka: fatal"), "no fatal stop: {seen:?}");
    let fatal = seen.iter().find(|l| l.contains("collector kafka: fatal")).unwrap();
    assert!(fatal.contains("message.max.bytes") && fatal.contains("impression"), "{fatal}");
    assert!(!seen.iter().any(|l| l.contains("attempt 2 failed")), "retried: {seen:?}");
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 1);
}
