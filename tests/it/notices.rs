//! OpenRTB win / billing / loss notices and VAST tracking events with the default config.

use crate::harness::*;

#[test]
fn openrtb_notices_with_macros_audit_and_retries() {
    let mut s = Server::start(None, &["--shards", "2"]);
    let mut c = s.connect();
    let ok = |c: &mut Client, t: &str| {
        let r = c.get(t);
        assert_eq!(r.status, 204, "{t}: {:?}", String::from_utf8_lossy(&r.body));
    };
    ok(&mut c, "/win?exch=x1&auction=A1&bid=B1&imp=I1&seat=S1&price=1.25&cur=EUR");
    // Unsubstituted macros and AUDIT: accepted, flagged, never a price.
    ok(&mut c, "/win?exch=x1&auction=A2&bid=B2&imp=I2&price=${AUCTION_PRICE}&cur=${AUCTION_CURRENCY}");
    ok(&mut c, "/win?exch=x1&auction=A3&bid=B3&imp=I3&price=%24%7BAUCTION_PRICE%7D");
    ok(&mut c, "/bill?exch=x1&auction=AUDIT&bid=AUDIT&imp=AUDIT&price=AUDIT");
    // A billing notice retried (new connections, maybe another shard): one event.
    for _ in 0..3 {
        ok(&mut s.connect(), "/bill?exch=x1&auction=A1&bid=B1&imp=I1&price=1.25");
    }
    // The same ids from another exchange are another notice.
    ok(&mut c, "/bill?exch=x2&auction=A1&bid=B1&imp=I1&price=1.25");
    ok(&mut c, "/loss?exch=x1&auction=A9&bid=B9&imp=I9&loss=102&mtw=2.5");
    assert_eq!(c.get("/win?auction=A4&price=free").status, 400);
    assert_eq!(s.stop(), 0);

    let ev = journal_cat(&s.journal());
    let of = |ty: &str| ev.iter().filter(|e| e["type"] == ty).collect::<Vec<_>>();
    let wins = of("win");
    assert_eq!(wins.len(), 3);
    let a1 = wins.iter().find(|e| e["auction_id"] == "A1").unwrap();
    assert_eq!(
        (a1["price"].as_f64(), a1["currency"].as_str(), a1["seat_id"].as_str()),
        (Some(1.25), Some("EUR"), Some("S1"))
    );
    assert!(a1.get("unsubstituted").is_none());
    for a in ["A2", "A3"] {
        let e = wins.iter().find(|e| e["auction_id"] == a).unwrap();
        assert_eq!(e["unsubstituted"], true, "{e}");
        assert!(e.get("price").is_none(), "{e}");
    }
    let bills = of("bill");
    assert_eq!(bills.len(), 3, "{bills:?}");
    assert_eq!(bills.iter().filter(|e| e["auction_id"] == "A1").count(), 2, "x1 once (retries deduplicated), x2 once");
    let audit = bills.iter().find(|e| e.get("auction_id").is_none()).unwrap();
    assert_eq!(audit["unsubstituted"], true);
    let loss = &of("loss")[0];
    assert_eq!((loss["loss_reason"].as_u64(), loss["min_to_win"].as_f64()), (Some(102), Some(2.5)));
}

#[test]
fn vast_events_with_macros() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let events = [
        "impression",
        "error",
        "start",
        "firstQuartile",
        "midpoint",
        "thirdQuartile",
        "complete",
        "progress",
        "pause",
        "resume",
        "mute",
        "unmute",
        "skip",
        "click",
        "viewable",
        "notViewable",
        "viewUndetermined",
    ];
    for e in events {
        let t = format!("/v?ev={e}&c=1&cr=2&asid=as-1&aph=00%3A00%3A05.000&cph=[CONTENTPLAYHEAD]&off=25%25&err=405&cb=[CACHEBUSTING]");
        assert_eq!(c.get(&t).status, 204, "{e}");
    }
    // Unknown event names are refused with the reason.
    let r = c.get("/v?ev=halfway");
    assert_eq!(
        (r.status, String::from_utf8_lossy(&r.body).trim()),
        (400, "field vast_event: is not one of the allowed values")
    );
    // An error with the macro left in place: logged, flagged, no code.
    assert_eq!(c.get("/v?ev=error&err=[ERRORCODE]").status, 204);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    assert_eq!(ev.len(), events.len() + 1);
    let names: Vec<&str> = ev.iter().map(|e| e["vast_event"].as_str().unwrap()).collect();
    assert_eq!(&names[..events.len()], &events);
    let q = &ev[3];
    assert_eq!(
        (q["ad_playhead"].as_str(), q["progress_offset"].as_str(), q["ad_serving_id"].as_str()),
        (Some("00:00:05.000"), Some("25%"), Some("as-1"))
    );
    assert_eq!(q["unsubstituted"], true, "[CONTENTPLAYHEAD] was left unsubstituted");
    assert!(q.get("content_playhead").is_none());
    let last = ev.last().unwrap();
    assert!(last.get("error_code").is_none() && last["unsubstituted"] == true);
}

/// An exchange whose prices arrive encrypted (Google Authorized Buyers scheme), with the keys and
/// values published in Google's "decrypt price confirmations" guide.
#[test]
fn encrypted_prices_decrypt_and_tampered_ones_are_refused() {
    let cfg = include_str!("../../config/tracker.toml").to_string()
        + r#"
[[endpoint]]
path = "/bill/adx"
method = "GET"
event = "bill_adx"
response = "no_content"
ack = "logged"

[event.bill_adx]
identity = ["auction_id", "imp_id", "bid_id"]
fields = [
  { name = "auction_id", source = "query.auction", type = "string", max_bytes = 64, required = true },
  { name = "bid_id",     source = "query.bid",     type = "string", max_bytes = 64 },
  { name = "imp_id",     source = "query.imp",     type = "string", max_bytes = 32 },
  { name = "price",      source = "query.price",   type = "money", required = true, decrypt = "google", encryption_key = "skU7Ax_NL5pPAFyKdkfZjZz2-VhIN8bjj1rVFOaJ_5o=", integrity_key = "arO23ykdNqUQ5LEoQ0FVmPkBd7xB5CO89PDZlSjpFxo=" },
]
"#;
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for (auction, enc) in [
        ("a100", "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msaw"),
        ("a1900", "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCAWJRxOgA"),
        ("a2700", "YWJjMTIzZGVmNDU2Z2hpN7fhCuPemC32prpWWw"),
    ] {
        assert_eq!(c.get(&format!("/bill/adx?auction={auction}&price={enc}")).status, 204);
    }
    let r = c.get("/bill/adx?auction=forged&price=YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msbw");
    assert_eq!(r.status, 400);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "field price: failed its integrity check (encrypted price)");
    assert_eq!(c.get("/bill/adx?auction=plain&price=1.25").status, 400, "a plaintext price is not accepted here");
    // AUDIT is still flagged, not decrypted.
    assert_eq!(c.get("/bill/adx?auction=audit&price=AUDIT").status, 204);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let price = |a: &str| {
        ev.iter().find(|e| e["auction_id"] == a).map(|e| e["price"].as_f64().map(|p| (p * 1e6).round() as i64))
    };
    assert_eq!(price("a100"), Some(Some(100)));
    assert_eq!(price("a1900"), Some(Some(1900)));
    assert_eq!(price("a2700"), Some(Some(2700)));
    assert_eq!(price("forged"), None, "a tampered price never reaches the journal");
    assert_eq!(price("plain"), None);
    assert_eq!(price("audit"), Some(None));
}

/// A retried billing notice is one event even when its retry percent-encodes a long id
/// differently (`-` or `%2D`, `+` or `%20`): the id hashes each identity value whole and
/// decoded, also past the field's `max_bytes` (imp_id holds 32 bytes).
#[test]
fn a_retried_notice_whose_long_id_is_encoded_differently_is_one_event() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let imp = ["0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b-0001+x", "0190a1b2%2Dc3d4-7e5f-8a6b-7c8d9e0f1a2b-0001%20x"];
    for imp in imp {
        let t = format!("/bill?exch=x1&auction=A1&bid=B1&imp={imp}&price=1.25");
        assert_eq!(c.get(&t).status, 204, "{t}");
    }
    // Differing past the cut once decoded: two notices.
    assert_eq!(
        c.get("/bill?exch=x1&auction=A1&bid=B1&imp=0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b-0001+y&price=1.25").status,
        204
    );
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    assert_eq!(ev.len(), 2, "{ev:?}");
    assert_eq!(ev[0]["truncated"], true);
    assert_ne!(ev[0]["id"], ev[1]["id"]);
}

/// An `eid` left as an unsubstituted macro is no id: taken literally it would give every such
/// event one id, and the dedup window would journal the first and drop the rest.
#[test]
fn an_unsubstituted_eid_macro_is_no_client_id() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for (n, eid) in ["${EVENT_ID}", "%24%7BEVENT_ID%7D", "[EVENTID]", "%%EVENT_ID%%", "AUDIT"].iter().enumerate() {
        assert_eq!(c.get(&format!("/i?c={n}&eid={eid}")).status, 200, "{eid}");
    }
    assert_eq!(c.get("/v?ev=start&c=9&eid=[EVENTID]").status, 204);
    assert_eq!(c.get("/v?ev=start&c=10&eid=[EVENTID]").status, 204);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    assert_eq!(ev.len(), 7, "{ev:?}");
    assert!(ev.iter().all(|e| e["unsubstituted"] == true), "{ev:?}");
    let ids: std::collections::HashSet<_> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 7);
}

/// A braced GUID (`{3F2504E0-…}`, as .NET's `Guid.ToString("B")` writes one) looked like an
/// unsubstituted `{macro}`: the auction id was dropped, the notice got a generated id, and every
/// retry of a billing notice was journaled (and billed) again.
#[test]
fn a_braced_guid_auction_id_is_a_value_not_a_macro() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let target = "/bill?exch=x1&auction=%7B3F2504E0-4F89-11D3-9A0C-0305E82C3301%7D&bid=b1&imp=i1&price=1.25";
    for _ in 0..3 {
        assert_eq!(s.connect().get(target).status, 204);
    }
    // A macro the exchange left unsubstituted is still one.
    assert_eq!(s.connect().get("/bill?exch=x1&auction={AUCTION_ID}&bid=b1&imp=i1&price=1.25").status, 204);
    assert_eq!(s.stop(), 0);
    let bills: Vec<_> = journal_cat(&s.journal()).into_iter().filter(|e| e["type"] == "bill").collect();
    let guid: Vec<_> = bills.iter().filter(|e| e.get("unsubstituted").is_none()).collect();
    assert_eq!(guid.len(), 1, "retries are one event: {bills:?}");
    assert_eq!(guid[0]["auction_id"], "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}");
    assert_eq!(bills.len(), 2, "{bills:?}");
}

/// A price in exponent notation, as Java (`Double.toString`: `5.0E-4`), Python (`str`: `5e-05`)
/// and JavaScript (`String`: `1e-7`) print small amounts, was a 400: the exchange retried the
/// notice until it gave up, and the win or the billed impression was never logged.
#[test]
fn a_price_in_exponent_notation_is_a_price() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for (auction, price) in [("e1", "5.0E-4"), ("e2", "5e-05"), ("e3", "1.25e2"), ("e4", "1e-7")] {
        let r = c.get(&format!("/win?exch=x1&auction={auction}&bid=b&imp=i&price={price}"));
        assert_eq!(r.status, 204, "{price}: {}", String::from_utf8_lossy(&r.body));
    }
    // Still no price: a bare exponent, one without digits, or a mantissa without any.
    for price in ["e5", "1e", "1e-", ".e1", "1e1.5", "1e%2B"] {
        assert_eq!(c.get(&format!("/win?exch=x1&auction=bad&price={price}")).status, 400, "{price}");
    }
    assert_eq!(s.stop(), 0);
    let wins = journal_cat(&s.journal());
    let price = |a: &str| wins.iter().find(|e| e["auction_id"] == a).map(|e| e["price"].as_f64());
    assert_eq!(price("e1"), Some(Some(0.0005)));
    assert_eq!(price("e2"), Some(Some(0.00005)));
    assert_eq!(price("e3"), Some(Some(125.0)));
    // Below a micro: 0, flagged as cut, as any seventh decimal is.
    let e4 = wins.iter().find(|e| e["auction_id"] == "e4").unwrap();
    assert_eq!((e4["price"].as_f64(), &e4["truncated"]), (Some(0.0), &serde_json::json!(true)), "{e4}");
}
