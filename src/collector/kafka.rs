//! `kind = "kafka"`: one Kafka message per event, through librdkafka's idempotent producer.
//!
//! - Topic per event type from a template (`topic`, default `"tracker.{type}"`).
//! - Key: the event id (default), a field's value (`key = "<field>"`, which must be
//!   allowlisted) as the value's JSON shows it (money `0.250000`; a string unquoted), or none. Headers `id` (UUID) and `type` on every message.
//! - Value: the event as JSON, the shape of `tracker journal cat` restricted to the allowlist.
//! - `enable.idempotence=true`, `acks=all`, always: the broker drops librdkafka's own resends.
//!   A batch is acknowledged once every message's delivery report is a success; any failure
//!   retries the whole batch (the collector's backoff), so a message can then reach the topic
//!   twice — with the same key and `id` header, for consumers to deduplicate.
//! - Batching and compression from config: `linger.ms` from `producer_linger_ms` (default 5),
//!   `batch.num.messages` from the collector's `events_max`, `compression.type` from
//!   `compression` (zstd included); extra librdkafka settings under `properties` (not those),
//!   TLS and SASL among them: librdkafka is built with OpenSSL (vendored, linked statically).
//!
//! The first time the broker assigns the idempotent producer its id, the collector logs
//! `kafka idempotent producer active (producer id N, epoch E)` (from librdkafka statistics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use super::{Batch, Collector, Delivery, Options, Value};

/// librdkafka properties the collector owns; `properties` may not set them, under any of the
/// names librdkafka gives one setting (CONFIGURATION.md: its aliases): librdkafka applies a
/// config's entries in no fixed order, so an alias beside ours would win in some processes and
/// not in others.
const OWNED: [&str; 12] = [
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "bootstrap.servers",
    "metadata.broker.list",
    "compression.type",
    "compression.codec",
    // Set from the collector's own keys (producer_linger_ms, batch.events_max, timeout_ms):
    // a value here would be silently overridden.
    "linger.ms",
    "queue.buffering.max.ms",
    "batch.num.messages",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

/// How long one wait for delivery reports lasts before the producer's queue is looked at again.
/// rdkafka's `BaseProducer::poll` always runs to its deadline, even once every report is in, and
/// its `flush` polls in 100 ms steps: a batch took at least 100 ms, which capped one collector
/// at `events_max` × 10 events a second.
const REPORT_POLL: Duration = Duration::from_millis(1);
/// Most events one idle pass takes from an idle producer's queue (statistics every 500 ms, logs).
const IDLE_EVENTS_MAX: usize = 64;

/// What to do about an error Kafka will answer the same way however often the batch is sent
/// again as configured (`Delivery::Fatal`); `None` for one a retry may get past.
fn permanent(code: RDKafkaErrorCode) -> Option<&'static str> {
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge => Some(
            "an event's message is larger than the producer's message.max.bytes or the topic's \
             max.message.bytes: raise them (properties, and the topic's config), or leave the large field out \
             of this collector's fields",
        ),
        RDKafkaErrorCode::TopicAuthorizationFailed => {
            Some("the cluster refuses this producer the topic: grant it Write and Describe on the topic (ACLs)")
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => Some(
            "the cluster refuses this producer: the collector's producer is idempotent, which needs \
             IdempotentWrite on the cluster (ACLs)",
        ),
        _ => None,
    }
}

/// The outcome of an attempt whose producer hit a producer-wide fatal error (librdkafka raises
/// one when the idempotent producer cannot get or keep its producer id): a refusal that every
/// new producer meets again (`permanent`: the cluster denies IdempotentWrite) stops the
/// collector with its fix; any other (a fenced or out-of-sequence producer) is retried on a
/// new producer, which gets a new id. librdkafka reports such a refusal this way, not per
/// message: the queued messages come back purged.
fn after_fatal_producer_error(code: RDKafkaErrorCode, why: &str) -> Delivery {
    // Brokers without idempotence refuse the producer id for good; as a per-message report
    // (`permanent` alone) the same code may come from a broker mid-upgrade, and is retried.
    let unsupported = "the brokers do not support what the collector's idempotent producer needs (Kafka 0.11 or \
                       later, idempotence not turned off on the cluster)";
    let fix = permanent(code).or((code == RDKafkaErrorCode::UnsupportedFeature).then_some(unsupported));
    match fix {
        Some(fix) => Delivery::Fatal(format!("kafka producer fatal error {code:?}: {why}; {fix}")),
        None => Delivery::Retry(format!("kafka producer fatal error {code:?}: {why}; recreating it")),
    }
}

/// A `properties` key the collector owns (`OWNED`), or one that would break it: librdkafka reads
/// a `topic.` prefix off any name it does not know as global (`topic.message.timeout.ms` is
/// `message.timeout.ms`), and a transactional producer refuses the plain sends the collector
/// makes, so every attempt would fail.
fn owned_property(key: &str) -> bool {
    let bare = key.strip_prefix("topic.").unwrap_or(key);
    OWNED.contains(&bare) || bare == "transactional.id"
}

#[derive(Default)]
struct Reports {
    ok: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// The first delivery report of this attempt with a `permanent` error, said with its fix.
    fatal: Mutex<Option<String>>,
    /// Per topic, this attempt's messages without a delivery report yet: a timeout names the
    /// topics that did not answer (a topic that does not exist is one), since the topic comes
    /// from a per-type template.
    unreported: Mutex<Vec<(String, u64)>>,
    idempotent_logged: AtomicBool,
    name: String,
}

struct Ctx(Arc<Reports>);

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        if let Some(eos) = s.eos {
            if eos.producer_id >= 0 && eos.idemp_state == "Assigned" && !self.0.idempotent_logged.swap(true, Relaxed) {
                eprintln!(
                    "tracker: collector {}: kafka idempotent producer active (producer id {}, epoch {})",
                    self.0.name, eos.producer_id, eos.producer_epoch
                );
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, msg: &str) {
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
            eprintln!("tracker: collector {}: librdkafka {fac}: {msg}", self.0.name);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("tracker: collector {}: librdkafka: {error}: {reason}", self.0.name);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let topic = match r {
            Ok(m) | Err((_, m)) => m.topic(),
        };
        let mut unreported = self.0.unreported.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = unreported.iter_mut().find(|(t, _)| t == topic) {
            *n = n.saturating_sub(1);
        }
        drop(unreported);
        match r {
            Ok(_) => {
                self.0.ok.fetch_add(1, Relaxed);
            }
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Relaxed);
                let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_none() {
                    *first = Some(format!("{topic}: {e}"));
                }
                if let Some(fix) = e.rdkafka_error_code().and_then(permanent) {
                    let mut fatal = self.0.fatal.lock().unwrap_or_else(|p| p.into_inner());
                    fatal.get_or_insert_with(|| format!("{topic}: {e}; {fix}"));
                }
            }
        }
    }
}

enum KeyFrom {
    Id,
    Field(String),
    None,
}

pub struct Kafka {
    config: ClientConfig,
    topic: String,
    key: KeyFrom,
    timeout: Duration,
    producer: Option<BaseProducer<Ctx>>,
    reports: Arc<Reports>,
    value: String,
}

pub fn factory(o: &mut Options) -> Result<Box<dyn Collector>, String> {
    let brokers = o.string("brokers");
    if brokers.is_empty() {
        o.error("brokers", "empty: expected \"host:port[,host:port...]\"");
    }
    let topic = o.string_or("topic", "tracker.{type}");
    if topic.is_empty()
        || topic.replace("{type}", "x").bytes().any(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        o.error(
            "topic",
            format!("\"{topic}\": a topic name of letters, digits, '.', '_', '-', with {{type}} for the event type"),
        );
    }
    let key = match o.string_or("key", "id").as_str() {
        "id" => KeyFrom::Id,
        "none" => KeyFrom::None,
        f => {
            if !o.collector.fields.admits(f) {
                o.error("key", format!("\"{f}\" is not \"id\", \"none\" or a field in this collector's `fields`"));
            }
            KeyFrom::Field(f.to_string())
        }
    };
    let compression = o.string_or("compression", "none");
    if !["none", "gzip", "snappy", "lz4", "zstd"].contains(&compression.as_str()) {
        o.error(
            "compression",
            format!("\"{compression}\" is not one of \"none\", \"gzip\", \"snappy\", \"lz4\", \"zstd\""),
        );
    }
    let timeout_ms = o.u64("timeout_ms", 30_000, 100, 3_600_000);
    let linger_ms = o.u64("producer_linger_ms", 5, 0, 60_000);
    // librdkafka refuses the pair when it makes the producer (`message.timeout.ms` must be
    // greater than `linger.ms`): said here, against our own keys, not as a retry forever.
    let timing_ok = linger_ms < timeout_ms;
    if !timing_ok {
        o.error(
            "producer_linger_ms",
            format!("{linger_ms} is not below timeout_ms {timeout_ms}: a message must be able to wait its linger"),
        );
    }
    let props = o.string_table("properties");
    for k in props.keys() {
        if owned_property(k) {
            o.error(
                "properties",
                format!(
                    "\"{k}\" is set by the collector (idempotent producer, brokers, compression; linger, \
                     batch size and message timeout from producer_linger_ms, batch.events_max and timeout_ms; \
                     no transactions), under any of its names"
                ),
            );
        }
    }
    let mut config = ClientConfig::new();
    for (k, v) in &props {
        config.set(k, v);
    }
    config
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", &compression)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", o.collector.batch.events_max.to_string())
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("statistics.interval.ms", "500");
    // librdkafka checks property names and values only when a client is made from them. Making
    // its native configuration does that with no I/O, so check-config and a reload name a bad
    // property instead of the collector retrying "create producer" forever.
    if let Err(e) = config.create_native_config() {
        o.error("properties", format!("librdkafka refuses the configuration: {e}"));
    } else if timing_ok {
        if let Err(e) = probe_producer(&config) {
            o.error("properties", format!("librdkafka refuses the configuration: {e}"));
        }
    }
    let reports = Arc::new(Reports { name: o.collector.name.clone(), ..Default::default() });
    Ok(Box::new(Kafka {
        config,
        topic,
        key,
        timeout: Duration::from_millis(timeout_ms + 1000),
        producer: None,
        reports,
        value: String::new(),
    }))
}

/// Some settings librdkafka checks only when it makes a client (e.g. `max.in.flight` above 5
/// with `enable.idempotence`): makes one, with no broker to connect to and without TLS or SASL
/// (their files and secrets belong to the host the tracker runs on, which check-config may not
/// be), and drops it. No network I/O; librdkafka starts and joins its threads.
fn probe_producer(config: &ClientConfig) -> Result<(), KafkaError> {
    struct Quiet;
    impl ClientContext for Quiet {
        fn log(&self, _: rdkafka::config::RDKafkaLogLevel, _: &str, _: &str) {}
        fn error(&self, _: KafkaError, _: &str) {}
    }
    impl ProducerContext for Quiet {
        type DeliveryOpaque = ();
        fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
    }
    let mut probe = config.clone();
    probe.remove("bootstrap.servers").remove("statistics.interval.ms").set("security.protocol", "plaintext");
    let _: BaseProducer<Quiet> = probe.create_with_context(Quiet)?;
    Ok(())
}

/// The producer, created on first use (no I/O in the factory: check-config builds collectors).
fn producer<'a>(
    slot: &'a mut Option<BaseProducer<Ctx>>,
    config: &ClientConfig,
    reports: &Arc<Reports>,
) -> Result<&'a BaseProducer<Ctx>, String> {
    if slot.is_none() {
        let p: BaseProducer<Ctx> =
            config.create_with_context(Ctx(reports.clone())).map_err(|e| format!("create producer: {e}"))?;
        *slot = Some(p);
    }
    Ok(slot.as_ref().expect("created above"))
}

impl Collector for Kafka {
    fn deliver(&mut self, batch: &Batch) -> Delivery {
        let (topic_tpl, timeout) = (self.topic.clone(), self.timeout);
        let reports = self.reports.clone();
        reports.ok.store(0, Relaxed);
        reports.failed.store(0, Relaxed);
        *reports.first_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        *reports.fatal.lock().unwrap_or_else(|p| p.into_inner()) = None;
        reports.unreported.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut value = std::mem::take(&mut self.value);
        let producer = match producer(&mut self.producer, &self.config, &self.reports) {
            Ok(p) => p,
            Err(e) => return Delivery::Retry(e),
        };
        let deadline = Instant::now() + timeout;
        for e in &batch.events {
            value.clear();
            e.write_json(&mut value);
            let id = e.id_string();
            let topic = topic_tpl.replace("{type}", &e.event_type);
            let key: Option<Vec<u8>> = match &self.key {
                KeyFrom::Id => Some(id.clone().into_bytes()),
                KeyFrom::None => None,
                // The value's text (money `0.250000`, not micros): key and value agree. A string
                // not valid UTF-8 keys by its stored bytes, never a lossy text two values share.
                KeyFrom::Field(f) => e.field(f).map(Value::key_bytes),
            };
            let headers = OwnedHeaders::new()
                .insert(Header { key: "id", value: Some(id.as_bytes()) })
                .insert(Header { key: "type", value: Some(e.event_type.as_bytes()) });
            let mut record = BaseRecord::to(&topic).payload(value.as_bytes()).headers(headers);
            if let Some(k) = key.as_deref() {
                record = record.key(k);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        // Reports come only from poll and flush, on this thread, after this.
                        let mut unreported = reports.unreported.lock().unwrap_or_else(|p| p.into_inner());
                        match unreported.iter_mut().find(|(t, _)| *t == topic) {
                            Some((_, n)) => *n += 1,
                            None => unreported.push((topic.clone(), 1)),
                        }
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        if Instant::now() > deadline {
                            self.value = value;
                            // Like every failed attempt (below): what this one queued must not
                            // be reported into the next attempt's counts.
                            self.producer = None;
                            return Delivery::Retry("kafka producer queue stayed full".into());
                        }
                        producer.poll(Duration::from_millis(50));
                        record = r;
                    }
                    Err((e, _)) => {
                        self.value = value;
                        self.producer = None;
                        if let Some(fix) = e.rdkafka_error_code().and_then(permanent) {
                            return Delivery::Fatal(format!("produce to {topic}: {e}; {fix}"));
                        }
                        return Delivery::Retry(format!("produce to {topic}: {e}"));
                    }
                }
            }
        }
        self.value = value;
        let n = batch.events.len() as u64;
        let flushed = wait_for_reports(producer, deadline);
        let fatal = producer.client().fatal_error();
        let (ok, failed) = (reports.ok.load(Relaxed), reports.failed.load(Relaxed));
        if let Some((code, why)) = fatal {
            self.producer = None;
            return after_fatal_producer_error(code, &why);
        }
        // Acked only when this attempt's every message is reported delivered and nothing is
        // left in flight: the reports are counted per producer, and every failed attempt drops
        // its producer (below, and where a send gave up above), so no late report of an earlier
        // attempt can be counted here.
        if ok == n && failed == 0 && flushed.is_ok() {
            return Delivery::Acked;
        }
        if let Some(why) = reports.fatal.lock().unwrap_or_else(|p| p.into_inner()).take() {
            self.producer = None;
            return Delivery::Fatal(why);
        }
        // Any failed attempt retries on a new producer. After a timed-out produce librdkafka
        // keeps the idempotent producer's sequence state, and a broker may then answer every
        // later produce with PRODUCER_FENCED as a per-message error, not a fatal one: with
        // tansu a 2 s broker stall stopped delivery until a restart. Dropping the producer
        // purges what it still holds (reported failed, counted in this attempt, which already
        // failed) and the retry starts clean; its messages carry their ids, as every resend.
        // The reason is read before the drop: dropping the producer purges its queue, which
        // reports the purged messages and would empty `unreported`, so the error named no topic.
        let first = reports.first_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let why = match (flushed, first) {
            (_, Some(e)) => format!("{failed} of {n} messages failed: {e}"),
            (Err(e), None) => {
                let unreported = reports.unreported.lock().unwrap_or_else(|p| p.into_inner());
                let topics: Vec<&str> = unreported.iter().filter(|(_, n)| *n > 0).map(|(t, _)| t.as_str()).collect();
                let waiting = if topics.is_empty() {
                    String::new()
                } else {
                    format!("; no report from {} (does it exist?)", topics.join(", "))
                };
                format!("{} of {n} delivery reports within the timeout{waiting}: {e}", ok + failed)
            }
            (Ok(()), None) => format!("{ok} of {n} messages acknowledged"),
        };
        self.producer = None;
        Delivery::Retry(why)
    }

    /// Serves what an idle producer queues for this thread (statistics every 500 ms, log and
    /// error events): nothing else polls it between batches, and librdkafka's queue of them has
    /// no bound, so a collector idle for hours grew by the statistics' JSON each half second.
    fn idle(&mut self) {
        if let Some(p) = &self.producer {
            // One event per zero-timeout poll (rdkafka polls once, then sees its deadline gone).
            for _ in 0..IDLE_EVENTS_MAX.min(p.in_flight_count().max(0) as usize) {
                p.poll(Duration::ZERO);
            }
        }
    }

    fn close(&mut self) {
        if let Some(p) = &self.producer {
            let _ = wait_for_reports(p, Instant::now() + Duration::from_secs(5));
        }
    }
}

/// Polls delivery reports until nothing is in flight (no message unreported, no event unserved:
/// librdkafka's `outq_len`), or until `deadline` (then `Flush(OperationTimedOut)`, as `flush`).
fn wait_for_reports(producer: &BaseProducer<Ctx>, deadline: Instant) -> KafkaResult<()> {
    loop {
        if producer.in_flight_count() <= 0 {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        producer.poll(left.min(REPORT_POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_properties_are_refused_under_every_name() {
        for k in ["acks", "linger.ms", "topic.message.timeout.ms", "topic.compression.codec", "transactional.id"] {
            assert!(owned_property(k), "{k}");
        }
        for k in ["client.id", "sasl.username", "topic.metadata.refresh.interval.ms", "message.max.bytes"] {
            assert!(!owned_property(k), "{k}");
        }
    }

    /// The refusal of an idempotent producer's id comes back as a producer-wide fatal error;
    /// every new producer would meet it again, so it stops the collector with the fix.
    #[test]
    fn a_fatal_producer_error_stops_only_when_no_new_producer_gets_past_it() {
        let d = after_fatal_producer_error(RDKafkaErrorCode::ClusterAuthorizationFailed, "denied");
        assert!(matches!(&d, Delivery::Fatal(why) if why.contains("IdempotentWrite")), "{d:?}");
        let d = after_fatal_producer_error(RDKafkaErrorCode::UnsupportedFeature, "no idempotence");
        assert!(matches!(&d, Delivery::Fatal(why) if why.contains("Kafka 0.11")), "{d:?}");
        let d = after_fatal_producer_error(RDKafkaErrorCode::OutOfOrderSequenceNumber, "sequence");
        assert!(matches!(&d, Delivery::Retry(why) if why.contains("recreating it")), "{d:?}");
    }
}
