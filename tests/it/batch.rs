//! POST endpoints: JSON objects and batches at `POST /batch` (default config), sendBeacon's
//! text/plain, gzip bodies and bombs, chunked bodies, CORS preflights. Real binary, real TCP.

use crate::harness::*;

fn post(c: &mut Client, path: &str, headers: &str, body: &[u8]) -> Response {
    let mut req =
        format!("POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    c.send(&req);
    c.read_response(false)
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&r.body)))
}

/// gzip (RFC 1952) by hand: header, raw deflate, CRC32 and size.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    v.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
    v.extend(crc32fast::hash(data).to_le_bytes());
    v.extend((data.len() as u32).to_le_bytes());
    v
}

const JSON: &str = "Content-Type: application/json\r\n";

#[test]
fn a_batch_stores_exactly_the_good_items_and_reports_the_bad_by_index() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let body = br#"[
        {"type":"add_to_cart","name":"sku-1","value":19.99,"campaign_id":42,"eid":"item-0"},
        {"name":"no type"},
        17,
        {"type":"purchase","value":"abc"},
        {"type":"purchase","value":"1234567.891011","campaign_id":7,"eid":99},
        {"type":"view","value":0.000001,"imp":{"id":"x"}},
        {"type":"huge","campaign_id":-1}
    ]"#;
    let r = post(&mut c, "/batch", JSON, body);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let a = json(&r);
    assert_eq!(a["accepted"], 3, "{a}");
    let rejected = a["rejected"].as_array().unwrap();
    let idx: Vec<u64> = rejected.iter().map(|x| x["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [1, 2, 3, 6], "{a}");
    assert_eq!(rejected[0]["reason"], "field kind: missing required value");
    assert_eq!(rejected[1]["reason"], "item is not a JSON object");
    assert!(rejected[2]["reason"].as_str().unwrap().starts_with("field value: "), "{a}");
    assert!(rejected[3]["reason"].as_str().unwrap().starts_with("field campaign_id: "), "{a}");

    // A single object is one event; the same answer shape.
    let r = post(&mut c, "/batch", JSON, br#"{"type":"single","value":2}"#);
    assert_eq!(json(&r), serde_json::json!({"accepted":1,"rejected":[]}));
    // Not JSON at all, and an empty body: 400 with the reason, the connection stays usable.
    let r = post(&mut c, "/batch", JSON, b"{nope");
    assert_eq!((r.status, &r.body[..]), (400, &b"body is not valid JSON\n"[..]));
    // Brackets of another kind do not close an item: the body as a whole, not one bad item.
    let r = post(&mut c, "/batch", JSON, br#"[{"type":"a"]]"#);
    assert_eq!((r.status, &r.body[..]), (400, &b"body is not valid JSON\n"[..]));
    let r = post(&mut c, "/batch", JSON, b"");
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/i?c=5").status, 200);

    assert_eq!(s.stop(), 0);
    let events: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["type"] == "batch_event").collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["add_to_cart", "purchase", "view", "single"], "{events:?}");
    // Money from a JSON number and from a string, exactly, in micros.
    let micros = |e: &serde_json::Value| (e["value"].as_f64().unwrap() * 1e6).round() as i64;
    assert_eq!(micros(&events[0]), 19_990_000, "{:?}", events[0]);
    assert_eq!(events[0]["campaign_id"], 42);
    assert_eq!(events[0]["name"], "sku-1");
    assert_eq!(micros(&events[1]), 1_234_567_891_011);
    assert_eq!(micros(&events[2]), 1);
    // Client ids: a string and an integer eid make stable ids (the same on a retry).
    assert_ne!(events[0]["id"], events[1]["id"]);
}

#[test]
fn money_from_javascript_float_arithmetic_is_the_nearest_micro() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    // What JavaScript sends for 0.1 * 3, 0.7 * 0.1, -(19.99 + 1e-15) and 3 * 6.6666666666666667;
    // then a 17-digit number too large to round to a micro, and one for an integer field.
    let body = br#"[
        {"type":"a","value":0.30000000000000004},
        {"type":"b","value":0.06999999999999999},
        {"type":"c","value":-19.990000000000002},
        {"type":"d","value":20.000000000000004},
        {"type":"e","value":1234567890.1234567},
        {"type":"f","value":1,"campaign_id":1.0000000000000002}
    ]"#;
    let r = post(&mut c, "/batch", JSON, body);
    let a = json(&r);
    assert_eq!(a["accepted"], 4, "{a}");
    let rejected = a["rejected"].as_array().unwrap();
    let idx: Vec<u64> = rejected.iter().map(|x| x["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [4, 5], "{a}");
    for r in rejected {
        assert!(r["reason"].as_str().unwrap().contains("over 15 significant digits"), "{a}");
    }
    assert_eq!(s.stop(), 0);
    let events: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["type"] == "batch_event").collect();
    let micros: Vec<i64> = events.iter().map(|e| (e["value"].as_f64().unwrap() * 1e6).round() as i64).collect();
    assert_eq!(micros, [300_000, 70_000, -19_990_000, 20_000_000], "{events:?}");
    assert!(events.iter().all(|e| e["truncated"] == true), "{events:?}");
}

/// Regression: integer fields refused exact floats. `1e15` and `2.5e17` print as their digits
/// padded with zeros, which counted as significant (16 and 18 of them), and `-0.0` printed as
/// `-0`, which an unsigned field refuses though the integer `-0` is 0.
#[test]
fn integer_fields_take_exact_floats_and_negative_zero() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let body = br#"[
        {"type":"a","campaign_id":1e15},
        {"type":"b","campaign_id":2.5E17},
        {"type":"c","campaign_id":-0.0},
        {"type":"d","campaign_id":12345678901234567e3}
    ]"#;
    let a = json(&post(&mut c, "/batch", JSON, body));
    assert_eq!(a["accepted"], 3, "{a}");
    assert_eq!(a["rejected"][0]["index"], 3, "17 significant digits: not what was sent, maybe: {a}");
    assert_eq!(s.stop(), 0);
    let events: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["type"] == "batch_event").collect();
    let ids: Vec<u64> = events.iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [1_000_000_000_000_000, 250_000_000_000_000_000, 0], "{events:?}");
}

/// Regression: a float whose plain text is longer than 48 bytes (1e-47 prints as 0.000…01)
/// was refused as "too long for a number"; as an amount it is 0, cut and flagged, and past
/// every range it is refused for its value.
#[test]
fn a_float_too_small_or_large_to_print_plainly_is_read_by_its_value() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let body = br#"[
        {"type":"tiny","value":1e-47},
        {"type":"neg","value":-3.5e-40},
        {"type":"huge","value":1e300},
        {"type":"id","value":1,"campaign_id":1e60},
        {"type":"str","name":1e-47}
    ]"#;
    let a = json(&post(&mut c, "/batch", JSON, body));
    assert_eq!(a["accepted"], 3, "{a}");
    let rejected = a["rejected"].as_array().unwrap();
    let got: Vec<(u64, &str)> =
        rejected.iter().map(|x| (x["index"].as_u64().unwrap(), x["reason"].as_str().unwrap())).collect();
    assert_eq!(got.len(), 2, "{a}");
    assert!(got[0].0 == 2 && got[0].1.contains("field value") && !got[0].1.contains("too long"), "{a}");
    assert!(got[1].0 == 3 && got[1].1.contains("field campaign_id") && !got[1].1.contains("too long"), "{a}");
    assert_eq!(s.stop(), 0);
    let events: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["type"] == "batch_event").collect();
    let got: Vec<(&str, serde_json::Value)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), if e["kind"] == "str" { e["name"].clone() } else { e["value"].clone() }))
        .collect();
    assert_eq!(
        got,
        [("tiny", serde_json::json!(0.0)), ("neg", serde_json::json!(0.0)), ("str", serde_json::json!("1e-47"))],
        "{events:?}"
    );
    assert!(events[..2].iter().all(|e| e["truncated"] == true), "{events:?}");
}

/// docs/post.md: a string field takes any JSON number as its shortest round-trip text; the
/// 15-digit refusal is for number fields only. A 17-digit float in a string field refused the item.
#[test]
fn a_long_float_in_a_string_field_is_its_text() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let r = post(&mut c, "/batch", JSON, br#"[{"type":"sf","name":0.30000000000000004},{"type":"sf","name":2.5}]"#);
    assert_eq!(json(&r), serde_json::json!({"accepted":2,"rejected":[]}));
    assert_eq!(s.stop(), 0);
    let names: Vec<String> = journal_cat(&s.journal())
        .into_iter()
        .filter(|e| e["kind"] == "sf")
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["0.30000000000000004", "2.5"]);
}

#[test]
fn a_retried_batch_item_with_an_eid_is_one_event() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for _ in 0..2 {
        let r = post(&mut c, "/batch", JSON, br#"[{"type":"a","eid":"same-1"},{"type":"b"}]"#);
        assert_eq!(json(&r)["accepted"], 2);
    }
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["kind"] == "a").count(), 1);
    assert_eq!(events.iter().filter(|e| e["kind"] == "b").count(), 2);
}

/// An id macro a postback template left unfilled (`"eid":"${EVENT_ID}"`) was taken as the id of
/// every such event: all but the first inside the dedup window were dropped as duplicates. As
/// in a query (`eid=${EVENT_ID}`), it is no id: each event gets its own, flagged.
#[test]
fn an_unfilled_id_macro_in_a_json_item_is_no_id() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let r = post(&mut c, "/batch", JSON, br#"[{"type":"m1","eid":"${EVENT_ID}"},{"type":"m2","eid":"{event_id}"}]"#);
    assert_eq!(json(&r)["accepted"], 2);
    let r = post(&mut c, "/batch", JSON, br#"{"type":"m3","eid":"${EVENT_ID}"}"#);
    assert_eq!(json(&r)["accepted"], 1);
    assert_eq!(s.stop(), 0);
    let events: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["kind"] != "pct").collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["m1", "m2", "m3"], "{events:?}");
    assert!(events.iter().all(|e| e["unsubstituted"] == true), "{events:?}");
}

/// A JSON string is already unescaped: decoding it again as percent-encoded text made `a+b` and
/// `a b` (or `x%41` and `xA`) one event id, and the second was dropped as a duplicate.
#[test]
fn json_eids_that_differ_only_by_percent_encoding_are_distinct_events() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for eid in ["a+b", "a b", "x%41", "xA", "50%off"] {
        let r = post(&mut c, "/batch", JSON, format!(r#"{{"type":"pct","eid":"{eid}"}}"#).as_bytes());
        assert_eq!(json(&r)["accepted"], 1, "{eid}");
    }
    // The same id again is still one event.
    let r = post(&mut c, "/batch", JSON, br#"{"type":"pct","eid":"a+b"}"#);
    assert_eq!(json(&r)["accepted"], 1);
    assert_eq!(s.stop(), 0);
    let events: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["kind"] == "pct").collect();
    assert_eq!(events.len(), 5, "{events:?}");
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "{events:?}");
}

/// `id_from` is read in its order, the first present source wins: a JSON source listed before a
/// query source wins over it (the query's value was taken whatever the order).
#[test]
fn id_from_takes_the_first_present_source_in_its_order() {
    const A: &str = "40000000-0000-4000-8000-00000000000a";
    const B: &str = "40000000-0000-4000-8000-00000000000b";
    let default = include_str!("../../config/tracker.toml");
    let cfg = default.replace(r#"id_from = ["json.eid"]"#, r#"id_from = ["json.eid", "query.eid"]"#);
    assert_ne!(cfg, default, "the shipped config's batch id_from changed; update this test");
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let r = post(&mut c, &format!("/batch?eid={A}"), JSON, format!(r#"{{"type":"both","eid":"{B}"}}"#).as_bytes());
    assert_eq!(json(&r)["accepted"], 1);
    // No JSON eid: the query's is next in the list.
    let r = post(&mut c, &format!("/batch?eid={A}"), JSON, br#"{"type":"query_only"}"#);
    assert_eq!(json(&r)["accepted"], 1);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    let id_of = |kind: &str| events.iter().find(|e| e["kind"] == kind).map(|e| e["id"].as_str().unwrap().to_string());
    assert_eq!(id_of("both").as_deref(), Some(B), "{events:?}");
    assert_eq!(id_of("query_only").as_deref(), Some(A), "{events:?}");
}

#[test]
fn send_beacon_text_plain_and_other_media_types() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    // What navigator.sendBeacon(url, JSON.stringify(events)) sends.
    let r = post(
        &mut c,
        "/batch",
        "Content-Type: text/plain;charset=UTF-8\r\nOrigin: https://anywhere.example\r\n",
        br#"[{"type":"beacon","value":1}]"#,
    );
    assert_eq!(json(&r)["accepted"], 1);
    // No CORS allowlist configured: the answer does not grant reading it.
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = post(&mut c, "/batch", "Content-Type: application/x-www-form-urlencoded\r\n", b"type=x");
    assert_eq!(r.status, 415);
    assert!(String::from_utf8_lossy(&r.body).contains("application/json or text/plain"));
    let r = post(&mut c, "/batch", "Content-Encoding: br\r\n", br#"{"type":"x"}"#);
    assert_eq!(r.status, 415);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["type"] == "batch_event").count(), 1);
}

#[test]
fn gzip_bodies_and_a_gzip_bomb() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let items: Vec<String> = (0..50).map(|i| format!(r#"{{"type":"gz","campaign_id":{i}}}"#)).collect();
    let body = format!("[{}]", items.join(","));
    let r =
        post(&mut c, "/batch", "Content-Type: application/json\r\nContent-Encoding: gzip\r\n", &gzip(body.as_bytes()));
    assert_eq!(json(&r)["accepted"], 50);

    // 10 MB of zeros, ~10 KB compressed: refused at the cap, never inflated whole.
    let bomb = gzip(&vec![0u8; 10 << 20]);
    assert!(bomb.len() < 65536);
    let r = post(&mut c, "/batch", "Content-Encoding: gzip\r\n", &bomb);
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    // A bomb of JSON whitespace under the ratio cap but over the size cap.
    let mut big = vec![b' '; 1 << 20];
    big[0] = b'[';
    big[(1 << 20) - 1] = b']';
    let r = post(&mut c, "/batch", "Content-Encoding: gzip\r\n", &gzip(&big));
    assert_eq!(r.status, 413);
    // Corrupt gzip is a 400.
    let mut bad = gzip(br#"{"type":"x"}"#);
    let n = bad.len();
    bad[n - 6] ^= 0xff;
    assert_eq!(post(&mut c, "/batch", "Content-Encoding: gzip\r\n", &bad).status, 400);
    // The server keeps serving, on this connection and new ones.
    assert_eq!(c.get("/i?c=9").status, 200);
    assert_eq!(s.connect().get("/i?c=10").status, 200);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["kind"] == "gz").count(), 50);
}

#[test]
fn an_item_simd_json_cannot_parse_is_refused_alone() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    // The body is not JSON simd-json accepts as a whole: a number out of range, a lone
    // surrogate escape and a trailing comma; each item around them is fine.
    let body = br#"[ {"type":"a","name":"n,]{\"0"}, {"type":"b","value":1e400},
        {"type":"c","name":"\ud800"}, {"type":"d","nested":{"x":[1,{"y":"]"}]}} ,]"#;
    let r = post(&mut c, "/batch", JSON, body);
    let a = json(&r);
    assert_eq!(a["accepted"], 2, "{a}");
    let rejected = a["rejected"].as_array().unwrap();
    let idx: Vec<u64> = rejected.iter().map(|x| x["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, [1, 2, 4], "{a}");
    assert!(rejected[0]["reason"].as_str().unwrap().starts_with("item is not valid JSON"), "{a}");
    // Still refused as a whole: not an array, brackets that never close, garbage after it.
    for bad in [&b"{\"type\":1e400}"[..], b"[{\"type\":\"a\"}", b"[{\"type\":\"a\"}] x"] {
        let r = post(&mut c, "/batch", JSON, bad);
        assert_eq!(
            (r.status, &r.body[..]),
            (400, &b"body is not valid JSON\n"[..]),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(s.stop(), 0);
    let kinds: Vec<String> = journal_cat(&s.journal())
        .into_iter()
        .filter(|e| e["type"] == "batch_event")
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["a", "d"]);
}

/// docs/post.md: a body nested deeper than 32 levels is a 400. A batch simd-json refused for
/// its depth was split into items and each parsed on its own, where every item is a level
/// shallower: a 33-level body was answered 200 and its items journaled.
#[test]
fn a_body_nested_deeper_than_32_levels_is_400_batch_or_not() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    // `{"type":…,"x":` then n nested arrays: the object is 1 level, the arrays n more.
    let nested = |n: usize| format!(r#"{{"type":"deep","x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
    let too_deep = "body nested deeper than 32 levels (extract::json::DEPTH_MAX)\n";
    let bodies = [
        format!("[{}]", nested(31)),
        format!(r#"[{{"type":"ok"}},{},{{"type":"ok"}}]"#, nested(31)),
        // Refused for a number out of range before the depth is reached: split, still too deep.
        format!(r#"[{{"type":"n","value":1e400}},{}]"#, nested(31)),
        format!("{}{}", "[".repeat(33), "]".repeat(33)),
        nested(32),
    ];
    for body in &bodies {
        let r = post(&mut c, "/batch", JSON, body.as_bytes());
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).as_ref()), (400, too_deep), "{body}");
    }
    // 32 levels exactly are fine, alone or as a batch.
    let r = post(&mut c, "/batch", JSON, nested(31).as_bytes());
    assert_eq!(json(&r)["accepted"], 1);
    let r = post(&mut c, "/batch", JSON, format!("[{}]", nested(30)).as_bytes());
    assert_eq!(json(&r)["accepted"], 1);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["type"] == "batch_event").count(), 2, "{events:?}");
}

/// README: a body refused as a whole counts as `malformed`; `field` is for an item's field. An
/// empty body (no bytes, or a chunked body of none) was counted as `field`, while a body of
/// one space, refused for the same reason, was `malformed`.
#[test]
fn an_empty_body_counts_as_malformed_like_any_body_refused_whole() {
    let s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(post(&mut c, "/batch", JSON, b"").status, 400);
    assert_eq!(post(&mut c, "/batch", JSON, b" ").status, 400);
    c.send(format!("POST /batch HTTP/1.1\r\nHost: t\r\n{JSON}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).status, 400);
    let m = crate::metrics::parse_metrics(std::str::from_utf8(&s.admin_get("/metrics").body).unwrap());
    assert_eq!(m[r#"tracker_rejects_total{reason="malformed"}"#], 3.0, "{m:#?}");
    assert_eq!(m[r#"tracker_rejects_total{reason="field"}"#], 0.0, "{m:#?}");
}

#[test]
fn chunked_post_body() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let body = br#"[{"type":"chunked","name":"a"},{"type":"chunked","name":"b"}]"#;
    let (a, b) = body.split_at(20);
    let mut req =
        b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    req.extend(format!("{:x}\r\n", a.len()).as_bytes());
    req.extend(a);
    req.extend(format!("\r\n{:x}\r\n", b.len()).as_bytes());
    req.extend(b);
    req.extend(b"\r\n0\r\n\r\n");
    c.send(&req);
    let r = c.read_response(false);
    assert_eq!(json(&r)["accepted"], 2, "{:?}", String::from_utf8_lossy(&r.body));
    // Pipelined after it: answered in order.
    assert_eq!(c.get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["kind"] == "chunked").count(), 2);
}

#[test]
fn bodies_trickled_in_small_pieces_decode_whole() {
    // A chunked body of 1–3 byte chunks and a Content-Length body, each written a few bytes
    // at a time, so the server sees them over many reads and resumes each where it stopped.
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let items: Vec<String> = (0..8).map(|i| format!(r#"{{"type":"trickle","name":"n{i}"}}"#)).collect();
    let body = format!("[{}]", items.join(","));
    let mut chunked =
        b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    let mut rest = body.as_bytes();
    for size in (1..=3).cycle() {
        if rest.is_empty() {
            break;
        }
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        chunked.extend(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend(piece);
        chunked.extend(b"\r\n");
        rest = tail;
    }
    chunked.extend(b"0\r\n\r\n");
    let plain = format!(
        "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    for piece in chunked.chunks(5).chain(plain.as_bytes().chunks(7)) {
        c.send(piece);
    }
    for _ in 0..2 {
        let r = c.read_response(false);
        assert_eq!(json(&r)["accepted"], 8, "{:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(c.get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.iter().filter(|e| e["kind"] == "trickle").count(), 16);
}

#[test]
fn batch_events_max_bounds_a_body() {
    let cfg = "[server]\nbatch_events_max = 3\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let r = post(&mut c, "/batch", JSON, br#"[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]"#);
    assert_eq!(r.status, 413);
    let r = post(&mut c, "/batch", JSON, br#"[{"type":"a"},{"type":"a"},{"type":"a"}]"#);
    assert_eq!(json(&r)["accepted"], 3);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 3);
}

#[test]
fn cors_preflight_allowed_and_denied() {
    let cfg = "[cors]\norigins = [\"https://shop.example\"]\nmax_age_s = 120\n".to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let preflight = |c: &mut Client, origin: &str| {
        c.send(
            format!(
                "OPTIONS /batch HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: content-type\r\n\r\n"
            )
            .as_bytes(),
        );
        c.read_response(false)
    };
    let r = preflight(&mut c, "https://shop.example");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://shop.example"));
    assert_eq!(r.header("vary"), Some("Origin"));
    assert_eq!(r.header("access-control-allow-methods"), Some("POST, OPTIONS"));
    assert_eq!(r.header("access-control-allow-headers"), Some("Content-Type, Content-Encoding"));
    assert_eq!(r.header("access-control-max-age"), Some("120"));
    let r = preflight(&mut c, "https://evil.example");
    assert_eq!(r.status, 403);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = preflight(&mut c, "https://shop.example.evil.example");
    assert_eq!(r.status, 403);
    // The POST itself: the allowed origin is echoed, others get no grant.
    let r = post(
        &mut c,
        "/batch",
        "Content-Type: application/json\r\nOrigin: https://shop.example\r\n",
        br#"{"type":"x"}"#,
    );
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, Some("https://shop.example")));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = post(
        &mut c,
        "/batch",
        "Content-Type: application/json\r\nOrigin: https://evil.example\r\n",
        br#"{"type":"x"}"#,
    );
    assert_eq!((r.status, r.header("access-control-allow-origin")), (200, None));
    // A refused body answers the allowed origin with the grant too, so the page's script can
    // read the status and the reason; other origins still get none.
    let r = post(&mut c, "/batch", "Content-Type: application/json\r\nOrigin: https://shop.example\r\n", b"{not json");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (400, Some("https://shop.example")));
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = post(&mut c, "/batch", "Content-Type: application/json\r\nOrigin: https://evil.example\r\n", b"{not json");
    assert_eq!((r.status, r.header("access-control-allow-origin")), (400, None));
    // OPTIONS on a GET-only path is not a preflight: it names the path's methods, grants nothing.
    c.send(b"OPTIONS /i HTTP/1.1\r\nHost: t\r\nOrigin: https://shop.example\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.header("allow")), (204, Some("GET, HEAD, OPTIONS")));
    assert_eq!(r.header("access-control-allow-origin"), None);
}

/// docs/post.md: every answer to a POST from a listed origin carries the grant, refusals
/// included. Those written before the body is looked at (an empty body, over budget) and the
/// pixel answer of a POST endpoint without a body had none, so the page could not read them.
#[test]
fn cors_grant_on_every_post_answer_to_an_allowed_origin() {
    let cfg = "[cors]\norigins = [\"https://shop.example\"]\n\
               [budget]\nrate_per_s = 1\nburst = 5\nexempt_loopback = false\n\n\
               [[endpoint]]\npath = \"/p\"\nmethod = \"POST\"\nevent = \"batch_event\"\nresponse = \"no_content\"\n\n"
        .to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let origin = "Origin: https://shop.example\r\n";
    let grant = |r: &Response| (r.status, r.header("access-control-allow-origin").map(str::to_string));
    let allowed = Some("https://shop.example".to_string());
    // An empty body on the json endpoint: 400.
    let r = post(&mut c, "/batch", origin, b"");
    assert_eq!(grant(&r), (400, allowed.clone()), "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("vary"), Some("Origin"));
    // A no_content POST endpoint without a body is read as a pixel: no `kind`, so 400.
    let r = post(&mut c, "/p", origin, b"");
    assert_eq!(grant(&r), (400, allowed.clone()), "{:?}", String::from_utf8_lossy(&r.body));
    // Another origin still gets no grant, nor a GET endpoint.
    let r = post(&mut c, "/batch", "Origin: https://evil.example\r\n", b"");
    assert_eq!(grant(&r), (400, None));
    c.send(b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nOrigin: https://shop.example\r\n\r\n");
    assert_eq!(grant(&c.read_response(false)).1, None);
    // Over budget on the json endpoint (over_budget = "reject"): 429 with the grant. The burst
    // is 5 and the rate 1/s, so one of these is refused however slow the run.
    let mut refused = None;
    for _ in 0..50 {
        let r = post(&mut c, "/batch", origin, br#"{"type":"b"}"#);
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(grant(&r), (200, allowed.clone()));
    }
    let r = refused.expect("never over budget");
    assert_eq!(grant(&r), (429, allowed.clone()));
    assert!(r.header("retry-after").is_some());
}

#[test]
fn cors_star_only_when_configured() {
    let cfg = "[cors]\norigins = [\"*\"]\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    c.send(b"OPTIONS /batch HTTP/1.1\r\nHost: t\r\nOrigin: https://any.example\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.header("access-control-allow-origin")), (204, Some("*")));
    // The default config allows no origin.
    let d = Server::start(None, &["--shards", "1"]);
    let mut c = d.connect();
    c.send(b"OPTIONS /batch HTTP/1.1\r\nHost: t\r\nOrigin: https://any.example\r\n\r\n");
    assert_eq!(c.read_response(false).status, 403);
}

#[test]
fn bad_json_paths_and_origins_are_config_errors() {
    let cfg = "[cors]\norigins = [\"https://ok.example\", \"https://bad.example/\"]\n\n\
               [[endpoint]]\npath = \"/j\"\nmethod = \"GET\"\nevent = \"x\"\nresponse = \"json\"\n\n\
               [event.x]\nfields = [\n  { name = \"a\", source = \"json.a..b\", type = \"u64\" },\n]\n";
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    std::fs::write(&p, cfg).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":2: cors.origins: \"https://bad.example/\" is not an origin"), "{err}");
    assert!(err.contains(":8: endpoint[0].response:"), "{err}");
    assert!(err.contains(":12: event.x.fields[0].source: \"json.a..b\" is not a JSON path"), "{err}");
}

/// Posts one JSON object to /batch until it is taken, as a client retries an `overloaded`
/// refusal; any other answer (a 429, another reason) fails. Bounded: the drain makes room.
/// Retries are 100 ms apart, as a client backs off: every request pays for its first item
/// (docs/post.md), so a retry loop spinning while a loaded machine delayed the drain spent a
/// small budget on refused retries and met a 429 (seen once in CI).
fn post_until_taken(c: &mut Client, body: &[u8]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = post(c, "/batch", JSON, body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let a = json(&r);
        if a["accepted"] == 1 {
            return;
        }
        assert_eq!(a["rejected"][0]["reason"], "overloaded", "{a}");
        assert!(std::time::Instant::now() < deadline, "the ring never drained");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_ring_that_fills_mid_batch_refuses_the_rest_as_overloaded() {
    // A 16-event ring; the drain is woken once per read batch, after the answer, so a batch of
    // 120 fills the ring part way through.
    let cfg = "[server]\nring_events = 16\nbatch_events_max = 128\n".to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let items: Vec<String> = (0..120).map(|i| format!(r#"{{"type":"o","campaign_id":{i}}}"#)).collect();
    let r = post(&mut c, "/batch", JSON, format!("[{}]", items.join(",")).as_bytes());
    let a = json(&r);
    let accepted = a["accepted"].as_u64().unwrap() as usize;
    let rejected = a["rejected"].as_array().unwrap();
    assert!((1..120).contains(&accepted), "{a}");
    assert_eq!(accepted + rejected.len(), 120);
    // The refused are exactly the tail, each "overloaded".
    for (k, x) in rejected.iter().enumerate() {
        assert_eq!(x["index"], accepted + k);
        assert_eq!(x["reason"], "overloaded");
    }
    // The server serves on once the drain has made room (it may not have run yet: the item is
    // then refused as overloaded, which is the answer a client retries), and the accepted
    // items are the journaled ones.
    post_until_taken(&mut c, br#"{"type":"after"}"#);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    let ids: Vec<u64> =
        events.iter().filter(|e| e["kind"] == "o").map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (0..accepted as u64).collect::<Vec<_>>());
}

#[test]
fn expect_100_continue_gets_an_interim_answer_before_the_body() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let body = br#"[{"type":"cont","name":"a"},{"type":"cont","name":"b"}]"#;
    c.send(
        format!(
            "POST /batch HTTP/1.1\r\nHost: t\r\n{JSON}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    // The client waits for it before sending the body (RFC 9110 §10.1.1).
    assert_eq!(c.read_response(false).status, 100);
    c.send(&body[..10]);
    c.send(&body[10..]);
    let r = c.read_response(false);
    assert_eq!(json(&r)["accepted"], 2, "{:?}", String::from_utf8_lossy(&r.body));
    // Chunked, the same; and a body sent with the head gets only the final answer.
    c.send(
        format!("POST /batch HTTP/1.1\r\nHost: t\r\n{JSON}Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(c.read_response(false).status, 100);
    let one = br#"[{"type":"cont","name":"c"}]"#;
    c.send(format!("{:x}\r\n", one.len()).as_bytes());
    c.send(one);
    c.send(b"\r\n0\r\n\r\n");
    assert_eq!(json(&c.read_response(false))["accepted"], 1);
    let mut req = format!(
        "POST /batch HTTP/1.1\r\nHost: t\r\n{JSON}Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        one.len()
    )
    .into_bytes();
    req.extend_from_slice(one);
    c.send(&req);
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(c.get("/i?c=1").status, 200, "the connection goes on");
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).iter().filter(|e| e["kind"] == "cont").count(), 4);
}

/// A request that asked for `100 Continue` but will be refused whatever its body holds gets the
/// refusal instead, and the connection closes: the client is not invited to upload a body that
/// would be thrown away.
#[test]
fn expect_100_continue_on_a_request_refused_whatever_its_body_gets_the_refusal_instead() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let cases: [(&str, u16, &str); 4] = [
        ("POST /nope HTTP/1.1\r\nContent-Length: 10\r\n", 404, "no such endpoint"),
        ("POST /i HTTP/1.1\r\nContent-Length: 10\r\n", 405, "method not allowed"),
        ("POST /batch HTTP/1.1\r\nContent-Type: application/xml\r\nContent-Length: 10\r\n", 415, ""),
        ("POST /batch HTTP/1.1\r\nContent-Encoding: br\r\nTransfer-Encoding: chunked\r\n", 415, ""),
    ];
    for (head, status, reason) in cases {
        let mut c = s.connect();
        c.send(format!("{head}Host: t\r\nExpect: 100-continue\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, status, "{head}: {:?}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains(reason), "{head}: {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("connection"), Some("close"), "{head}");
        assert!(c.is_closed(), "{head}: nothing more, no 100 after the refusal");
    }
    // `OPTIONS *` is about the server, not a path: invited, then answered as ever.
    let mut c = s.connect();
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(c.read_response(false).status, 100);
    c.send(b"ok");
    assert_eq!(c.read_response(false).status, 204);
    // A POST endpoint whose media type is fine still gets its 100 (the test above), and the
    // refusals journaled nothing.
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 1);
}

#[test]
fn chunked_framing_larger_than_the_request_buffer_is_413_and_counted() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let head = format!("POST /batch HTTP/1.1\r\nHost: t\r\n{JSON}Transfer-Encoding: chunked\r\n\r\n").into_bytes();
    // 1-byte chunks: 6 bytes of framing per body byte. The read buffer holds
    // header_bytes_max + body_bytes_max (8192 + 65536 by default); fill it exactly, so the
    // server has read everything sent when it answers and closes.
    let cap = 8192 + 65536;
    let mut req = head;
    while req.len() < cap {
        req.extend_from_slice(b"1\r\n[\r\n");
    }
    req.truncate(cap);
    c.send(&req);
    let r = c.read_response(false);
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(c.is_closed());
    let m = String::from_utf8(s.admin_get("/metrics").body).unwrap();
    assert!(
        m.lines().any(|l| l.starts_with("tracker_requests_total{") && l.contains("413") && !l.ends_with(" 0")),
        "{m}"
    );
    assert_eq!(s.stop(), 0);
}

/// Regression: an id from the request (here a header) was the same for every item of a batch,
/// so the batch was answered `accepted: 3` and two of its events were dropped as duplicates.
/// Each item now gets its own id from the request's and its index; the same request retried is
/// still one event per item.
#[test]
fn items_of_a_batch_with_a_request_level_id_are_each_an_event() {
    let default = include_str!("../../config/tracker.toml");
    let cfg = default.replace(r#"id_from = ["json.eid"]"#, r#"id_from = ["json.eid", "header.x-request-id"]"#);
    assert_ne!(cfg, default, "the shipped config's batch id_from changed; update this test");
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let body = br#"[{"type":"a"},{"type":"b"},{"type":"c","eid":"own-id"}]"#;
    let headers = format!("{JSON}X-Request-Id: req-1\r\n");
    for _ in 0..2 {
        let r = post(&mut c, "/batch", &headers, body);
        assert_eq!(json(&r)["accepted"], 3, "{}", String::from_utf8_lossy(&r.body));
    }
    // One object (not a batch) keeps the request's id as it is.
    let r = post(&mut c, "/batch", "Content-Type: application/json\r\nX-Request-Id: req-2\r\n", br#"{"type":"d"}"#);
    assert_eq!(json(&r)["accepted"], 1);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["a", "b", "c", "d"], "each item once, the retry deduplicated: {events:?}");
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4);
}

/// Regression: a batch's items refused as overloaded (ring full) were charged to the source's
/// budget like the items taken, so one burst the ring could not hold spent the client's whole
/// budget, and its retry of those items was refused as over budget.
#[test]
fn items_refused_as_overloaded_are_not_charged_to_the_budget() {
    let cfg = "[server]\nring_events = 16\nbatch_events_max = 128\n\
               [budget]\nrate_per_s = 1\nburst = 60\nexempt_loopback = false\n"
        .to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let items: Vec<String> = (0..120).map(|i| format!(r#"{{"type":"o","campaign_id":{i}}}"#)).collect();
    let a = json(&post(&mut c, "/batch", JSON, format!("[{}]", items.join(",")).as_bytes()));
    let accepted = a["accepted"].as_u64().unwrap();
    assert!((1..=17).contains(&accepted), "a 16-event ring takes at most 16 (+1 popped meanwhile): {a}");
    assert!(a["rejected"].as_array().unwrap().iter().all(|x| x["reason"] == "overloaded"), "{a}");
    // The budget paid for what was taken only: the client's retry is taken once there is room.
    post_until_taken(&mut c, br#"{"type":"retry"}"#);
    assert_eq!(s.stop(), 0);
}
