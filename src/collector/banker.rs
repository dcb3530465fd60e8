//! `kind = "banker"`: spend to the budget service, per budget key, once per journal range.
//!
//! Each batch (one exact journal range of one shard, `linger_ms` ≤ 100 by default so the
//! banker learns of spend fast) becomes one `POST <url>/v1/spend` with `Idempotency-Key` =
//! the batch key and the spend of the range summed per budget key. The range is persisted
//! before the first attempt (see `runner.rs`), so a retry, a crash or a replay sends the
//! identical body under the identical key, and the banker applies it once. Protocol:
//! docs/banker.md.
//!
//! Options: `url` (required, `http://host:port[/base]`), `budget_key` (fields forming the key,
//! default `["campaign_id"]`), `price_field` (money field, default `"price"`), `timeout_ms`
//! (per attempt, default 5000). Every field named must be in the collector's `fields`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use super::http::{request, Url};
use super::{Batch, CollectedEvent, Collector, Delivery, Options, Value};
use crate::event::FLAG_HEAD;
use crate::schema::FieldKind;

pub struct Banker {
    url: Url,
    budget_key: Vec<String>,
    price_field: String,
    timeout: Duration,
    over_budget: Vec<String>,
}

pub fn factory(o: &mut Options) -> Result<Box<dyn Collector>, String> {
    let raw_url = o.string("url");
    let url = match Url::parse(&raw_url) {
        Ok(u) => Some(u),
        Err(e) => {
            o.error("url", e);
            None
        }
    };
    let budget_key = o.strings_or("budget_key", &["campaign_id"]);
    if budget_key.is_empty() {
        o.error("budget_key", "empty: name the fields that form a budget key, e.g. [\"campaign_id\"]");
    }
    let price_field = o.string_or("price_field", "price");
    let timeout = Duration::from_millis(o.u64("timeout_ms", 5000, 10, 600_000));
    let collector = o.collector;
    for (key, f) in budget_key.iter().map(|f| ("budget_key", f)).chain([("price_field", &price_field)]) {
        if !collector.fields.admits(f) {
            o.error(key, format!("\"{f}\" is not in this collector's fields allowlist; add it to `fields`"));
        } else if !collector.field_kinds.contains_key(f) {
            // Reachable with `fields = ["*"]`: a misspelt name would make every budget key read
            // `-` for it, or every event carry no spend, and the banker learn nothing.
            o.error(key, format!("\"{f}\" is not a field of any event type this collector gets"));
        }
    }
    // Only money values are spend (`body`): a price declared as another kind would be skipped
    // on every event, silently, and the budget never move.
    for (ty, kind) in collector.field_kinds.get(&price_field).into_iter().flatten() {
        if *kind != FieldKind::Money {
            let kind = kind.config_name();
            o.error(
                "price_field",
                format!("\"{price_field}\" is a {kind} field in event type \"{ty}\"; the banker sums money fields only (type = \"money\")"),
            );
        }
    }
    let Some(url) = url else { return Err("no usable url".into()) };
    Ok(Box::new(Banker { url, budget_key, price_field, timeout, over_budget: Vec::new() }))
}

/// `campaign_id=7` or `campaign_id=7,line_item=3`; a missing field reads `-`; in a string value
/// `,` `=` `%` are percent-encoded, and so is a value that is just `-`, and each byte that is
/// not part of valid UTF-8 (`%FF`: since `%` itself is always encoded, that can only be the byte).
pub fn budget_key_of(e: &CollectedEvent, fields: &[String]) -> String {
    let mut k = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            k.push(',');
        }
        k.push_str(f);
        k.push('=');
        match e.field(f) {
            Some(Value::U64(v)) => k.push_str(&v.to_string()),
            Some(Value::I64(v)) | Some(Value::Money(v)) => k.push_str(&v.to_string()),
            // Escaped so that no two different values read the same: `,` and `=` would end
            // the value early, and `-` alone is a missing field.
            Some(Value::Str(s)) if s == "-" => k.push_str("%2D"),
            Some(Value::Str(s)) => push_escaped(&mut k, s),
            // Made lossy (U+FFFD), `a%FF` and `a%FE` were one key, and one site was charged
            // the other's spend.
            Some(Value::Bytes(b)) => {
                for chunk in b.utf8_chunks() {
                    push_escaped(&mut k, chunk.valid());
                    for x in chunk.invalid() {
                        let _ = write!(k, "%{x:02X}");
                    }
                }
            }
            Some(Value::Ip(ip)) => k.push_str(&ip.to_string()),
            None => k.push('-'),
        }
    }
    k
}

fn push_escaped(k: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            ',' => k.push_str("%2C"),
            '=' => k.push_str("%3D"),
            '%' => k.push_str("%25"),
            c => k.push(c),
        }
    }
}

impl Banker {
    /// The request body of a batch: a pure function of the batch, so a resend is identical.
    pub fn body(&self, batch: &Batch) -> Vec<u8> {
        let mut spend: BTreeMap<String, (i64, u64)> = BTreeMap::new();
        let mut priced = 0u64;
        for e in &batch.events {
            // A HEAD is a link scanner or a prefetcher fetching the notice's URL, not the notice:
            // it is journaled (flagged) but never enters the dedup window, so summing it would
            // count the price again for every HEAD beside the GET that billed it.
            if e.flags & FLAG_HEAD != 0 {
                continue;
            }
            let Some(Value::Money(m)) = e.field(&self.price_field) else { continue };
            let s = spend.entry(budget_key_of(e, &self.budget_key)).or_insert((0, 0));
            s.0 = s.0.saturating_add(*m);
            s.1 += 1;
            priced += 1;
        }
        let spend: Vec<_> = spend
            .into_iter()
            .map(|(k, (micros, events))| json!({"budget_key": k, "micros": micros, "events": events}))
            .collect();
        let body = json!({
            "key": batch.key,
            "range": {
                "collector": &*batch.collector,
                "shard": batch.shard,
                "segment": batch.segment,
                "from": batch.from,
                "to": batch.to,
            },
            "events": priced,
            "spend": spend,
        });
        crate::schema::json_vec(&body)
    }
}

impl Collector for Banker {
    fn deliver(&mut self, batch: &Batch) -> Delivery {
        let body = self.body(batch);
        let headers = [("Content-Type", "application/json"), ("Idempotency-Key", batch.key.as_str())];
        let r = match request(&self.url, "POST", "/v1/spend", &headers, &body, self.timeout) {
            Ok(r) => r,
            Err(e) => return Delivery::Retry(e),
        };
        let text = String::from_utf8_lossy(&r.body);
        match r.status {
            200 => {
                // Only the banker's own answer says the spend is held: a 200 from anything else
                // at `url` (a maintenance page, a catch-all route) applied nothing, and moving on
                // would lose the batch's spend for good.
                let v = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default();
                if v["applied"] != true && v["duplicate"] != true {
                    return Delivery::Retry(format!(
                        "banker answered 200 for POST {}/v1/spend without saying it applied the batch: is `url` \
                         the banker's? ({text})",
                        self.url.base
                    ));
                }
                let over: Vec<String> = v["over_budget"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                    .unwrap_or_default();
                for k in &over {
                    if !self.over_budget.contains(k) {
                        eprintln!("tracker: collector {}: banker says {k} is over budget", batch.collector);
                    }
                }
                self.over_budget = over;
                Delivery::Acked
            }
            // A range sent before: the banker applied its earlier cut (records a power loss since
            // zeroed, or an older budget_key / price_field / fields); that spend stands.
            409 if batch.sent_before => Delivery::Superseded(format!(
                "the banker applied this range before with a different body (409: {text}); its earlier \
                 spend stands"
            )),
            // A range never sent before cannot have been applied by this tracker: another one
            // sends under the same key.
            409 => Delivery::Fatal(format!(
                "banker refused key {} as already applied with a different body (409: {text}), and this \
                 range was never sent before: does another tracker send under the same key_prefix?",
                batch.key
            )),
            400 | 413 | 422 => Delivery::Fatal(format!("banker rejected the batch ({}: {text})", r.status)),
            // No /v1/spend there (yet): a banker mid-deploy or a proxy in front; retrying shows in
            // the retry metrics, and the batch goes through once the route is back.
            404 | 405 => Delivery::Retry(format!(
                "banker answered {} for POST {}/v1/spend: is `url` the banker's? ({text})",
                r.status, self.url.base
            )),
            s => Delivery::Retry(format!("banker answered {s}: {text}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A win event with these fields.
    fn win(fields: &[(&str, Value)]) -> CollectedEvent {
        CollectedEvent {
            id: [0; 16],
            event_type: "win".into(),
            ts_ns: 0,
            shard: 0,
            seq: 1,
            flags: 0,
            fields: fields.iter().map(|(n, v)| (Arc::from(*n), v.clone())).collect(),
        }
    }

    fn key(fields: &[(&str, Value)]) -> String {
        budget_key_of(&win(fields), &["site".into(), "campaign_id".into()])
    }

    /// Regression: the body was serde_json's, which writes U+2028 and U+2029 raw (the shared
    /// writer, `schema::json_str`, escapes them for consumers that embed JSON in JavaScript).
    #[test]
    fn the_body_escapes_the_javascript_line_separators() {
        let b = Banker {
            url: Url::parse("http://127.0.0.1:1").unwrap(),
            budget_key: vec!["site".into()],
            price_field: "price".into(),
            timeout: Duration::from_secs(1),
            over_budget: Vec::new(),
        };
        let e = win(&[("site", Value::Str("a\u{2028}b\u{2029}".into())), ("price", Value::Money(250_000))]);
        let batch = Batch {
            key: "k".into(),
            collector: Arc::from("banker"),
            shard: 0,
            segment: 1,
            from: 0,
            to: 1,
            attempt: 1,
            sent_before: false,
            events: vec![e],
        };
        let body = String::from_utf8(b.body(&batch)).unwrap();
        assert!(body.contains(r#""budget_key":"site=a\u2028b\u2029""#), "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["spend"][0]["budget_key"], "site=a\u{2028}b\u{2029}");
    }

    /// docs/banker.md promises that a body is at most three times the event JSON its batch was
    /// cut by (`bytes_max`), plus the envelope: a key's `,` `=` `%` and invalid bytes take three
    /// bytes each where the JSON takes one, and every event's JSON carries an envelope (id,
    /// times, shard) larger than a spend item's. Worst cases: every event its own key, each value
    /// all escapes, the largest sums.
    #[test]
    fn a_body_is_at_most_three_times_its_events_json() {
        let b = Banker {
            url: Url::parse("http://127.0.0.1:1").unwrap(),
            budget_key: vec!["site".into(), "campaign_id".into(), "ip".into()],
            price_field: "price".into(),
            timeout: Duration::from_secs(1),
            over_budget: Vec::new(),
        };
        let mut rng = crate::xorshift::Xorshift64::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || rng.next();
        // Half the rounds only the bytes a key triples and the JSON does not, at full length.
        const ALPHABETS: [&[u8]; 2] = [b",=%-\"\x01\xff\xc3a", b",=%"];
        for round in 0..200 {
            let events: Vec<CollectedEvent> = (0..1 + next() % 64)
                .map(|i| {
                    let len = if round % 2 == 1 { 447 } else { (next() % 448) as usize };
                    let alphabet = ALPHABETS[round % 2];
                    let site: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
                    let site = match String::from_utf8(site) {
                        Ok(s) => Value::Str(s),
                        Err(e) => Value::Bytes(e.into_bytes()),
                    };
                    let price = if round % 4 < 2 { i64::MIN + i as i64 } else { i64::MAX - i as i64 };
                    win(&[
                        ("site", site),
                        ("campaign_id", Value::U64(u64::MAX - i)),
                        ("ip", Value::Ip("2001:db8::1".parse().unwrap())),
                        ("price", Value::Money(price)),
                    ])
                })
                .collect();
            let json: usize = events.iter().map(CollectedEvent::json_bytes).sum();
            let batch = Batch {
                key: "tracker:banker:65535:18446744073709551615:4294967294-4294967295".into(),
                collector: Arc::from("banker"),
                shard: u16::MAX,
                segment: u64::MAX,
                from: u32::MAX - 1,
                to: u32::MAX,
                attempt: 1,
                sent_before: false,
                events,
            };
            let body = b.body(&batch).len();
            let envelope = 256 + batch.key.len() + batch.collector.len();
            assert!(body <= 3 * json + envelope, "round {round}: body {body} bytes, events' JSON {json}");
        }
    }

    #[test]
    fn different_values_never_make_the_same_budget_key() {
        let s = |v: &str| Value::Str(v.into());
        assert_eq!(key(&[("site", s("a.example")), ("campaign_id", Value::U64(7))]), "site=a.example,campaign_id=7");
        // A site whose text holds the separator and the next field, against the real pair.
        let forged = key(&[("site", s("a,campaign_id=7"))]);
        let real = key(&[("site", s("a")), ("campaign_id", Value::U64(7))]);
        assert_ne!(forged, real);
        assert_eq!(forged, "site=a%2Ccampaign_id%3D7,campaign_id=-");
        // A value that is just `-` is not a missing field, and `%` stays unambiguous.
        assert_ne!(key(&[("site", s("-"))]), key(&[]));
        assert_ne!(key(&[("site", s("%2C"))]), key(&[("site", s(","))]));
    }

    /// Regression: the projection made invalid bytes U+FFFD, so `a%FF` and `a%FE` were one key.
    #[test]
    fn bytes_that_are_not_utf8_are_percent_encoded_and_never_meet_a_valid_value() {
        let s = |v: &str| Value::Str(v.into());
        let b = |v: &[u8]| Value::Bytes(v.to_vec());
        assert_eq!(key(&[("site", b(b"a\xff"))]), "site=a%FF,campaign_id=-");
        assert_eq!(key(&[("site", b(b"a\xfe"))]), "site=a%FE,campaign_id=-");
        // The valid text `a%FF`: its `%` is encoded, so it cannot read as the byte.
        assert_eq!(key(&[("site", s("a%FF"))]), "site=a%25FF,campaign_id=-");
        // Valid parts of an invalid value are escaped as in a valid one.
        assert_eq!(key(&[("site", b(b",=%-\xc3"))]), "site=%2C%3D%25-%C3,campaign_id=-");
        assert_eq!(key(&[("site", b(b"\xe2\x82"))]), "site=%E2%82,campaign_id=-");
    }
}
