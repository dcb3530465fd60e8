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
