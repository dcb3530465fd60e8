//! Per-source budgets over real sockets: pixels over budget are answered and not journaled;
//! notices over budget get 429 with Retry-After. Assertions allow for refills during a slow
//! run instead of relying on timing.

use crate::harness::*;
use std::time::Instant;

fn config(rate: u32, burst: u32) -> String {
    format!("[budget]\nrate_per_s = {rate}\nburst = {burst}\nexempt_loopback = false\n")
        + &crate::pipeline::default_endpoints_and_events()
}

#[test]
fn pixels_over_budget_are_answered_but_not_journaled() {
    let mut s = Server::start(Some(&config(1, 3)), &["--shards", "2"]);
    let started = Instant::now();
    for i in 0..20 {
        // New connections too: the budget is per source prefix, across connections and shards.
        let r = s.connect().get(&format!("/i?c={}", i + 1));
        assert_eq!((r.status, r.body.len()), (200, 43), "a dropped pixel still gets its GIF");
    }
    let refills = started.elapsed().as_secs() + 1;
    assert_eq!(s.stop(), 0);
    let n = journal_cat(&s.journal()).len() as u64;
    assert!(n >= 3 && n <= 3 + refills, "{n} journaled: expected the burst of 3 plus at most {refills} refills");
}

#[test]
fn notices_over_budget_get_429_with_retry_after() {
    let mut s = Server::start(Some(&config(1, 2)), &["--shards", "1"]);
    let mut c = s.connect();
    let mut ok = 0;
    let mut refused = None;
    for i in 0..50 {
        let r = c.get(&format!("/bill?auction=a{i}&price=1"));
        match r.status {
            204 => ok += 1,
            429 => {
                refused = Some(r);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let r = refused.expect("a 1/s budget must refuse within 50 notices");
    let secs: u32 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(secs >= 1);
    assert_eq!(r.header("location"), None);
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "over budget, retry later");
    // The connection stays usable.
    assert!(matches!(c.get("/bill?auction=z&price=1").status, 204 | 429));
    assert_eq!(s.stop(), 0);
    let bills = journal_cat(&s.journal()).iter().filter(|e| e["auction_id"] != "z").count();
    assert_eq!(bills, ok, "every 204 was journaled, no 429 was");
}
