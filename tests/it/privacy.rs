//! Privacy over real sockets: user ids are hashed before the journal (the raw bytes appear in
//! no file), ips are truncated, opt-out signals remove identifiers, and so does the lack of GDPR
//! consent (`privacy.gdpr = "enforce"`, with `privacy.tcf_vendor_id` also the lack of that
//! vendor's consent) unless consent is only recorded.

use std::collections::HashMap;

use crate::harness::*;

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle) {
                hits.push(p);
            }
        }
    }
    hits
}

const RAW_UID: &str = "raw-user-7d3f9c1e-secret";
/// IAB TCF v2 consent strings: purposes 1, 3, 9 and 10 (hand-decoded in enrich::tcf), and none.
const TC_P1: &str =
    "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA.argAC0gAAAAAAAAAAAA";
const TC_NONE: &str = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA";

/// The default config with small segments: the whole journal is scanned byte by byte.
fn small_segments() -> String {
    include_str!("../../config/tracker.toml").replace("segment_bytes = 67108864", "segment_bytes = 262144")
}

#[test]
fn the_raw_user_id_never_reaches_a_segment_and_opt_outs_drop_identifiers() {
    let mut s = Server::start(Some(&small_segments()), &["--shards", "2"]);
    let mut c = s.connect();
    let send = |c: &mut Client, order: &str, extra: &str| {
        c.send(
            format!("GET /cv?c=1&order={order}&gdpr=1&gdpr_consent={TC_P1} HTTP/1.1\r\nHost: t\r\nCookie: a=b; uid={RAW_UID}\r\n{extra}\r\n").as_bytes(),
        );
        assert_eq!(c.read_response(false).status, 200);
    };
    send(&mut c, "o-plain", "");
    send(&mut c, "o-again", "");
    send(&mut c, "o-gpc", "Sec-GPC: 1\r\n");
    send(&mut c, "o-dnt", "DNT: 1\r\n");
    send(&mut c, "o-cookie", "Cookie: optout=1\r\n");
    // A browser sends one pair per path the cookie was set for: any of them opts out.
    send(&mut c, "o-cookie-2", "Cookie: optout=; optout=1\r\n");
    // A rejected request with a user id must not leave it behind in the reused ring slot.
    c.send(format!("GET /cv?c=x HTTP/1.1\r\nHost: t\r\nCookie: uid={RAW_UID}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).status, 400);
    send(&mut c, "o-after", "");
    assert_eq!(s.stop(), 0);

    assert_eq!(
        files_contain(&s.journal(), RAW_UID.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "raw user id on disk"
    );
    let events = journal_cat(&s.journal());
    let by = |o: &str| events.iter().find(|e| e["order_id"] == o).unwrap_or_else(|| panic!("{o} missing: {events:?}"));
    let plain = by("o-plain");
    let hashed = plain["user_id"].as_str().unwrap();
    assert_eq!(hashed.len(), 32);
    assert!(hashed.bytes().all(|b| b.is_ascii_hexdigit()) && !hashed.contains("raw"));
    assert_eq!(by("o-again")["user_id"], hashed, "stable within a period and across shards");
    assert_eq!(by("o-after")["user_id"], hashed);
    assert_eq!(plain["ip"], "127.0.0.0");
    assert_eq!((plain["gdpr"].as_u64(), plain["gdpr_consent"].as_str()), (Some(1), Some(TC_P1)));
    assert!(plain.get("opted_out").is_none());
    for o in ["o-gpc", "o-dnt", "o-cookie", "o-cookie-2"] {
        let e = by(o);
        assert!(e.get("user_id").is_none() && e.get("ip").is_none(), "{o}: {e}");
        assert!(e.get("gdpr_consent").is_none(), "the consent string goes with the ids: {o}: {e}");
        assert_eq!(e["opted_out"], true, "{o}");
    }
}

#[test]
fn a_key_file_keeps_hashes_stable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("uid.key");
    std::fs::write(&key, "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").unwrap();
    let cfg = small_segments()
        .replace("# hash_key_file = \"/etc/tracker/uid-hash.key\"", &format!("hash_key_file = \"{}\"", key.display()))
        .replace("hash_rotate_s = 86400", "hash_rotate_s = 0");
    let mut hashes = Vec::new();
    for _ in 0..2 {
        let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
        let mut c = s.connect();
        c.send(format!("GET /cv?c=1 HTTP/1.1\r\nHost: t\r\nCookie: uid={RAW_UID}\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(false).status, 200);
        assert_eq!(s.stop(), 0);
        assert!(files_contain(&s.journal(), RAW_UID.as_bytes()).is_empty());
        hashes.push(journal_cat(&s.journal())[0]["user_id"].clone());
    }
    assert_eq!(hashes[0], hashes[1]);
}

#[test]
fn ssai_device_headers_are_believed_only_when_signed() {
    let secret = "5a".repeat(32);
    let cfg = small_segments()
        .replace("# ssai_skew_s = 300", &format!("[[privacy.ssai_key]]\nid = \"st1\"\nsecret_hex = \"{secret}\"\n"))
        .replace(
            "  { name = \"site\",          source = \"query.site\", type = \"string\", max_bytes = 64 },\n  { name = \"ip\",            source = \"client.ip\", type = \"ip\" },\n  { name = \"gdpr\"",
            "  { name = \"site\",          source = \"query.site\", type = \"string\", max_bytes = 32 },\n  { name = \"ip\",            source = \"client.ip\", type = \"ip\" },\n  { name = \"ua\", source = \"request.user_agent\", type = \"string\", max_bytes = 32 },\n  { name = \"gdpr\"",
        );
    let auth = tracker::enrich::ssai::SsaiAuth::new(vec![("st1".into(), vec![0x5a; 32])], 300);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    let send = |c: &mut Client, query: &str, auth_header: Option<String>| {
        let mut req = format!("GET /i?{query} HTTP/1.1\r\nHost: t\r\nUser-Agent: stitcher/1.0\r\nX-Device-IP: 198.51.100.77\r\nX-Device-User-Agent: Roku/DVP-9.10\r\n");
        if let Some(a) = auth_header {
            req.push_str(&format!("X-Tracker-Auth: {a}\r\n"));
        }
        req.push_str("\r\n");
        c.send(req.as_bytes());
        assert_eq!(c.read_response(false).status, 200);
    };
    let sign = |q: &str, ts: u64| auth.sign("st1", ts, b"/i", q.as_bytes(), b"198.51.100.77", b"Roku/DVP-9.10");
    send(&mut c, "c=1", sign("c=1", now));
    send(&mut c, "c=2", None);
    send(&mut c, "c=3", sign("c=999", now)); // signed for another request
    send(&mut c, "c=4", sign("c=4", now - 3600)); // stale
                                                  // Signed without a device user agent: the stitcher's own User-Agent is not the device's
                                                  // (it would classify a viewer as the stitcher's HTTP library, often a bot).
    let a = auth.sign("st1", now, b"/i", b"c=5", b"198.51.100.77", b"").unwrap();
    c.send(format!("GET /i?c=5 HTTP/1.1\r\nHost: t\r\nUser-Agent: stitcher/1.0\r\nX-Device-IP: 198.51.100.77\r\nX-Tracker-Auth: {a}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let by = |c: u64| ev.iter().find(|e| e["campaign_id"] == c).unwrap();
    assert_eq!((by(1)["ip"].as_str(), by(1)["ua"].as_str()), (Some("198.51.100.0"), Some("Roku/DVP-9.10")));
    for c in [2, 3, 4] {
        assert_eq!((by(c)["ip"].as_str(), by(c)["ua"].as_str()), (Some("127.0.0.0"), Some("stitcher/1.0")), "{c}");
    }
    assert_eq!((by(5)["ip"].as_str(), by(5).get("ua")), (Some("198.51.100.0"), None), "{}", by(5));
}

/// Without a key file the user-id key is random per start; a SIGHUP reload keeps it, so hashes
/// do not change under a running server.
#[test]
fn a_reload_keeps_user_id_hashes_without_a_key_file() {
    let cfg = small_segments();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let send = |s: &Server, order: &str| {
        let mut c = s.connect();
        c.send(format!("GET /cv?c=1&order={order} HTTP/1.1\r\nHost: t\r\nCookie: uid={RAW_UID}\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(false).status, 200);
    };
    send(&s, "before");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match s.stderr.recv_timeout(left) {
            Ok(line) if line.contains("reload: applied") => break,
            Ok(_) => {}
            Err(_) => panic!("no reload within {WAIT:?}"),
        }
    }
    send(&s, "after");
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let hash = |o: &str| ev.iter().find(|e| e["order_id"] == o).unwrap()["user_id"].clone();
    assert_eq!(hash("before"), hash("after"));
    assert!(files_contain(&s.journal(), RAW_UID.as_bytes()).is_empty());
}

/// With `privacy.ip = "keep"` an ip field may be an identity field, so the event id is derived
/// from the whole client address. An opted-out event has its ip removed; its id must not be
/// that unkeyed hash of the address (anyone can recompute it for every IPv4 address), so it
/// is re-keyed — and opted-out repeats are still one event.
#[test]
fn an_opted_out_event_id_is_not_the_unkeyed_hash_of_its_removed_ip() {
    let cfg = small_segments().replace("ip = \"truncate\"", "ip = \"keep\"").replace(
        "[event.impression]\nidentity = [\"impression_id\"]",
        "[event.impression]\nidentity = [\"campaign_id\", \"ip\"]",
    );
    assert!(cfg.contains("identity = [\"campaign_id\", \"ip\"]"));
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for extra in ["Sec-GPC: 1\r\n", "Sec-GPC: 1\r\n", ""] {
        c.send(format!("GET /i?c=7 HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    assert_eq!(ev.len(), 2, "one opted-out event (its repeat deduplicated) and one plain: {ev:?}");
    let opted = ev.iter().find(|e| e["opted_out"] == true).expect("opted-out event");
    let plain = ev.iter().find(|e| e.get("opted_out").is_none()).expect("plain event");
    assert!(opted.get("ip").is_none(), "{opted}");
    assert_eq!(plain["ip"], "127.0.0.1");
    // The plain event's id is the unkeyed hash of (campaign, address); the opted-out one's not.
    assert_ne!(opted["id"], plain["id"]);
}

/// User ids longer than their field (48 bytes for the shipped `user_id`) are hashed whole: two
/// that share their first 48 bytes stay two users (they were cut first, then hashed, and became
/// one), one sent twice stays one, and neither is journaled raw nor flagged truncated.
#[test]
fn long_user_ids_sharing_a_prefix_stay_distinct_users() {
    let mut s = Server::start(Some(&small_segments()), &["--shards", "1"]);
    let prefix = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6";
    assert!(prefix.len() > 48);
    let mut c = s.connect();
    for (order, uid) in
        [("o1", format!("{prefix}AAAA")), ("o2", format!("{prefix}BBBB")), ("o3", format!("{prefix}AAAA"))]
    {
        c.send(format!("GET /cv?c=1&order={order} HTTP/1.1\r\nHost: t\r\nCookie: uid={uid}\r\n\r\n").as_bytes());
        assert_eq!(c.read_response(false).status, 200);
    }
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    let uid = |order: &str| {
        let e = events.iter().find(|e| e["order_id"] == order).unwrap_or_else(|| panic!("{order}: {events:?}"));
        assert!(e.get("truncated").is_none(), "a hashed whole id is not truncated: {e}");
        e["user_id"].as_str().unwrap().to_string()
    };
    assert_ne!(uid("o1"), uid("o2"), "distinct long ids");
    assert_eq!(uid("o1"), uid("o3"), "the same long id");
    assert_eq!(uid("o1").len(), 32, "a keyed hash: {}", uid("o1"));
    for seg in std::fs::read_dir(s.journal().join("shard-000")).unwrap() {
        let bytes = std::fs::read(seg.unwrap().path()).unwrap();
        assert!(!bytes.windows(prefix.len()).any(|w| w == prefix.as_bytes()), "a raw id in the journal");
        assert!(!bytes.windows(48).any(|w| w == &prefix.as_bytes()[..48]), "a cut raw id in the journal");
    }
}

/// The default config (small segments) with its ip fields read from `X-Forwarded-For`.
fn ip_from_x_forwarded_for() -> String {
    let cfg = small_segments().replace(
        "{ name = \"ip\",          source = \"client.ip\",   type = \"ip\" },",
        "{ name = \"ip\",          source = \"header.x-forwarded-for\",   type = \"ip\" },",
    );
    assert!(cfg.contains("header.x-forwarded-for"), "the default config's ip field line changed");
    cfg
}

/// Behind a layer-7 load balancer the ip field reads `X-Forwarded-For` (docs/deployment.md).
/// The balancer appends the address it saw to whatever the client sent, so a browser behind
/// a proxy (or one that sends its own header) arrives with a list: the last entry is the one
/// the balancer vouches for. It is stored and truncated like a socket address — never a 400
/// that loses the event, never the spoofable first entry. Some balancers add the port.
#[test]
fn an_ip_field_read_from_x_forwarded_for_takes_the_last_address_and_truncates_it() {
    let mut s = Server::start(Some(&ip_from_x_forwarded_for()), &["--shards", "1"]);
    let mut c = s.connect();
    for (order, xff) in [
        ("one", "198.51.100.77"),
        ("list", "203.0.113.9, 10.1.2.3,198.51.100.78"),
        ("mapped", "203.0.113.9, ::ffff:198.51.100.79"),
        ("port", "198.51.100.80:4711"),
        ("v6", "203.0.113.9, [2001:db8:1:2::7]:4711"),
    ] {
        c.send(format!("GET /cv?c=1&order={order} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {xff}\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{xff}: {:?}", String::from_utf8_lossy(&r.body));
    }
    c.send(b"GET /cv?c=1&order=junk HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9, 203.0.113\r\n\r\n");
    assert_eq!(c.read_response(false).status, 400, "a last entry that is no address is refused");
    // `unknown` (what Squid writes when it hides the client) names no address: no ip, not a 400.
    c.send(b"GET /cv?c=1&order=hidden HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9, unknown\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200, "an unknown client is no refused request");
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let ip = |o: &str| ev.iter().find(|e| e["order_id"] == o).unwrap_or_else(|| panic!("{o}: {ev:?}"))["ip"].clone();
    assert_eq!(ip("one"), "198.51.100.0");
    assert_eq!(ip("list"), "198.51.100.0");
    assert_eq!(ip("mapped"), "198.51.100.0");
    assert_eq!(ip("hidden"), serde_json::Value::Null, "absent");
    assert_eq!(ip("port"), "198.51.100.0");
    assert_eq!(ip("v6"), "2001:db8:1::");
}

/// Regression: with two `X-Forwarded-For` field lines — the client's own, then the one a
/// balancer adds after it (HAProxy's `option forwardfor` adds a line rather than extending the
/// client's) — the ip field took the first line, so a client chose the address stored for it.
/// Several lines are one list in order (RFC 9110 §5.3): its last entry is on the last line.
#[test]
fn an_x_forwarded_for_line_added_after_the_clients_own_is_the_address_taken() {
    let mut s = Server::start(Some(&ip_from_x_forwarded_for()), &["--shards", "1"]);
    let mut c = s.connect();
    for (order, lines) in [
        ("two", "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.81\r\n"),
        ("between", "X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nX-A: 1\r\nx-forwarded-for: 198.51.100.82\r\n"),
    ] {
        c.send(format!("GET /cv?c=1&order={order} HTTP/1.1\r\nHost: t\r\n{lines}\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{order}: {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let ip = |o: &str| ev.iter().find(|e| e["order_id"] == o).unwrap_or_else(|| panic!("{o}: {ev:?}"))["ip"].clone();
    assert_eq!(ip("two"), "198.51.100.0");
    assert_eq!(ip("between"), "198.51.100.0");
}

/// A Referer whose query and fragment hold personal data, as a shop's order page sends it.
const LEAKY_REFERER: &str =
    "https://alice:pw@shop.example:8443/account/orders?email=alice%40example.com&token=r3set#sid=s3cret";

/// The referer fields of a GET pixel and a POST item, under one `privacy.referer` (None = the
/// shipped default), as `tracker journal cat` reads them back. The custom type also stores the
/// header through `header.Referer`, which is the same value under another source.
fn referers_stored(mode: Option<&str>) -> Vec<serde_json::Value> {
    // The label's bytes make room for the second referer in the type's 320-byte string area.
    let mut cfg = small_segments().replace(
        "  { name = \"label\",       source = \"query.l\",   type = \"string\", max_bytes = 128 },\n  { name = \"referer\",     source = \"request.referer\", type = \"string\", max_bytes = 96 },\n",
        "  { name = \"label\",       source = \"query.l\",   type = \"string\", max_bytes = 32 },\n  { name = \"referer\",     source = \"request.referer\", type = \"string\", max_bytes = 96 },\n  { name = \"referer_header\", source = \"header.Referer\", type = \"string\", max_bytes = 96 },\n",
    );
    assert!(cfg.contains("referer_header"), "the custom type's referer line moved");
    if let Some(mode) = mode {
        let before = cfg.clone();
        cfg = cfg.replace("\nreferer = \"path\"\n", &format!("\nreferer = \"{mode}\"\n"));
        assert_ne!(cfg, before, "[privacy] referer line missing from config/tracker.toml");
    }
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    c.send(format!("GET /e?n=get HTTP/1.1\r\nHost: t\r\nReferer: {LEAKY_REFERER}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).status, 204);
    c.send(format!("GET /e?n=gpc HTTP/1.1\r\nHost: t\r\nSec-GPC: 1\r\nReferer: {LEAKY_REFERER}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).status, 204);
    let body = r#"[{"type":"post","name":"sku-1"}]"#;
    c.send(
        format!(
            "POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nReferer: {LEAKY_REFERER}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(s.stop(), 0);
    if mode != Some("full") {
        for secret in ["alice%40example.com", "r3set", "s3cret", "alice:pw"] {
            assert!(files_contain(&s.journal(), secret.as_bytes()).is_empty(), "{secret} on disk under {mode:?}");
        }
    }
    let events = journal_cat(&s.journal());
    let by = |key: &str, v: &str| {
        events.iter().find(|e| e[key] == v).unwrap_or_else(|| panic!("{v} missing: {events:?}")).clone()
    };
    let (get, gpc, post) = (by("name", "get"), by("name", "gpc"), by("kind", "post"));
    assert_eq!(get["referer_header"], get["referer"], "header.referer is trimmed as request.referer is");
    // Opted out: the referer goes with the ip, whatever the mode.
    assert_eq!(gpc["opted_out"], true);
    assert!(gpc.get("referer").is_none() && gpc.get("referer_header").is_none() && gpc.get("ip").is_none(), "{gpc}");
    assert_eq!(post["referer"], get["referer"], "POST items as GET pixels");
    vec![get["referer"].clone(), post["referer"].clone()]
}

#[test]
fn the_referer_keeps_only_what_privacy_referer_allows() {
    let cut = |s: &str| serde_json::Value::from(s);
    let path = cut("https://shop.example:8443/account/orders");
    assert_eq!(referers_stored(None), [path.clone(), path], "default: path");
    let origin = cut("https://shop.example:8443");
    assert_eq!(referers_stored(Some("origin")), [origin.clone(), origin]);
    // As received, cut at max_bytes = 96 as any string.
    let full = cut(&LEAKY_REFERER[..96]);
    assert_eq!(referers_stored(Some("full")), [full.clone(), full]);
    assert_eq!(referers_stored(Some("drop")), [serde_json::Value::Null, serde_json::Value::Null]);
}

/// Conversion pixels under GDPR (gdpr=1) with and without TCF consent to Purpose 1, over TCP,
/// under `privacy.gdpr` = None (the default), "enforce" and "record": (journaled events by
/// order id, the `gdpr_no_consent` counter).
fn gdpr_pixels(mode: Option<&str>) -> (HashMap<String, serde_json::Value>, f64) {
    let mut text = small_segments();
    // The shipped config writes the default out; None takes the key out to get it.
    let line = "\ngdpr = \"enforce\"\n";
    assert!(text.contains(line));
    text = text.replace(line, &mode.map_or("\n".to_string(), |m| format!("\ngdpr = \"{m}\"\n")));
    conversions(
        &text,
        &[
            ("no-string", "gdpr=1".to_string()),
            ("no-purpose-1", format!("gdpr=1&gdpr_consent={TC_NONE}")),
            ("not-tcf", "gdpr=1&gdpr_consent=%24%7BGDPR_CONSENT_755%7D".to_string()),
            ("purpose-1", format!("gdpr=1&gdpr_consent={TC_P1}")),
            ("not-applicable", format!("gdpr=0&gdpr_consent={TC_NONE}")),
            ("no-gdpr", String::new()),
        ],
    )
}

/// Serves `config` on one shard, sends one conversion per (order id, rest of the query) with
/// the raw uid cookie and a referer, each answered 200, and stops. Returns the journaled
/// events by order id and the `gdpr_no_consent` count, after checking that the raw user id
/// reached no file and every pixel was journaled.
fn conversions(config: &str, sends: &[(&str, String)]) -> (HashMap<String, serde_json::Value>, f64) {
    let mut s = Server::start(Some(config), &["--shards", "1"]);
    let mut c = s.connect();
    for (order, q) in sends {
        c.send(
            format!("GET /cv?c=1&order={order}&{q} HTTP/1.1\r\nHost: t\r\nCookie: uid={RAW_UID}\r\nReferer: https://shop.example/cart?email=x\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(c.read_response(false).status, 200, "{order}");
    }
    let m = crate::metrics::parse_metrics(std::str::from_utf8(&s.admin_get("/metrics").body).unwrap());
    let no_consent = m[r#"tracker_rejects_total{reason="gdpr_no_consent"}"#];
    assert_eq!(s.stop(), 0);
    assert!(files_contain(&s.journal(), RAW_UID.as_bytes()).is_empty(), "raw user id on disk");
    let events = journal_cat(&s.journal());
    assert_eq!(events.len(), sends.len(), "every pixel is journaled, consent or not: {events:?}");
    (events.into_iter().map(|e| (e["order_id"].as_str().unwrap().to_string(), e)).collect(), no_consent)
}

#[test]
fn gdpr_without_purpose_one_consent_is_journaled_as_an_opt_out_when_enforced() {
    for mode in [None, Some("enforce")] {
        let (by, no_consent) = gdpr_pixels(mode);
        for o in ["no-string", "no-purpose-1", "not-tcf"] {
            let e = &by[o];
            assert!(e.get("user_id").is_none() && e.get("ip").is_none(), "{mode:?} {o}: {e}");
            assert_eq!(e["opted_out"], true, "{mode:?} {o}");
            assert_eq!(e["gdpr"], 1, "{mode:?} {o}");
            // The consent string goes with the ids (it singles out a browser).
            assert!(e.get("gdpr_consent").is_none(), "{mode:?} {o}: {e}");
        }
        for o in ["purpose-1", "not-applicable", "no-gdpr"] {
            let e = &by[o];
            assert_eq!(e["user_id"].as_str().map(str::len), Some(32), "{mode:?} {o}: {e}");
            assert_eq!((e["ip"].as_str(), e.get("opted_out")), (Some("127.0.0.0"), None), "{mode:?} {o}");
        }
        assert_eq!(by["purpose-1"]["gdpr_consent"], TC_P1, "{mode:?}");
        assert_eq!(by["not-applicable"]["gdpr_consent"], TC_NONE, "{mode:?}");
        assert_eq!(no_consent, 3.0, "{mode:?}");
    }
}

/// `privacy.gdpr_unknown = "applies"` over TCP: a conversion that does not say whether GDPR
/// applies (no gdpr, or the macro left unsubstituted) is judged by its consent string, as
/// gdpr=1 would be; one that says gdpr=0 is believed.
#[test]
fn with_gdpr_unknown_applies_a_pixel_that_does_not_say_is_judged_by_its_consent() {
    let text = small_segments();
    let line = "\ngdpr_unknown = \"not_applicable\"\n";
    assert!(text.contains(line));
    let text = text.replace(line, "\ngdpr_unknown = \"applies\"\n");
    let (by, no_consent) = conversions(
        &text,
        &[
            ("unsaid", String::new()),
            ("unsaid-no-purpose-1", format!("gdpr_consent={TC_NONE}")),
            ("macro", "gdpr=%24%7BGDPR%7D".to_string()),
            ("unsaid-purpose-1", format!("gdpr_consent={TC_P1}")),
            ("not-applicable", format!("gdpr=0&gdpr_consent={TC_NONE}")),
        ],
    );
    for o in ["unsaid", "unsaid-no-purpose-1", "macro"] {
        let e = &by[o];
        assert!(e.get("user_id").is_none() && e.get("ip").is_none(), "{o}: {e}");
        assert_eq!((e["opted_out"].as_bool(), e.get("gdpr"), e.get("gdpr_consent")), (Some(true), None, None), "{o}");
    }
    assert_eq!(by["macro"]["unsubstituted"], true);
    for o in ["unsaid-purpose-1", "not-applicable"] {
        let e = &by[o];
        assert_eq!(e["user_id"].as_str().map(str::len), Some(32), "{o}: {e}");
        assert_eq!((e["ip"].as_str(), e.get("opted_out")), (Some("127.0.0.0"), None), "{o}");
    }
    assert_eq!(no_consent, 3.0);
}

#[test]
fn gdpr_consent_is_only_stored_when_recorded() {
    let (by, no_consent) = gdpr_pixels(Some("record"));
    for (o, e) in &by {
        assert_eq!(e["user_id"].as_str().map(str::len), Some(32), "{o}: {e}");
        assert_eq!((e["ip"].as_str(), e.get("opted_out")), (Some("127.0.0.0"), None), "{o}");
    }
    assert_eq!(by["no-purpose-1"]["gdpr_consent"], TC_NONE);
    assert_eq!(no_consent, 0.0);
}

/// TC_P1 with vendor 115's bit cleared (character 57, 'Y' → 'Q'): still Purpose 1 and
/// vendors 2, 3 and 114 (the lib's privacy tests build the same string from TC_P1).
const TC_P1_WITHOUT_115: &str =
    "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMQA4oCAAGQYIAAAAAAEAIAEgAA.argAC0gAAAAAAAAAAAA";

/// `privacy.tcf_vendor_id = 115` over TCP: TC_P1 consents to Purpose 1 and to vendor 115 (its
/// bitfield's last bit, MaxVendorId 115; see enrich::tcf), so its event is kept; the same
/// string with vendor 115's bit cleared still consents to Purpose 1 but not to the vendor, so
/// its event takes the opt-out path and is counted.
#[test]
fn with_tcf_vendor_id_set_purpose_one_without_the_vendor_is_an_opt_out() {
    let no_vendor = TC_P1_WITHOUT_115;
    let line = "\ntcf_vendor_id = 0\n";
    let text = small_segments();
    assert!(text.contains(line));
    let sends = [("both", TC_P1), ("purpose-1-only", no_vendor), ("neither", TC_NONE)]
        .map(|(o, tc)| (o, format!("gdpr=1&gdpr_consent={tc}")));
    let (by, no_consent) = conversions(&text.replace(line, "\ntcf_vendor_id = 115\n"), &sends);
    assert_eq!(no_consent, 2.0);
    let kept = &by["both"];
    assert_eq!(kept["user_id"].as_str().map(str::len), Some(32), "{kept}");
    assert_eq!((kept["ip"].as_str(), kept.get("opted_out")), (Some("127.0.0.0"), None), "{kept}");
    for o in ["purpose-1-only", "neither"] {
        let e = &by[o];
        assert!(e.get("user_id").is_none() && e.get("ip").is_none(), "{o}: {e}");
        assert_eq!(e["opted_out"], true, "{o}");
        assert_eq!(e["gdpr"], 1, "{o}");
    }
    assert!(by["purpose-1-only"].get("gdpr_consent").is_none(), "{}", by["purpose-1-only"]);
    assert_eq!(kept["gdpr_consent"], TC_P1);
}

/// A consent field shorter than the TCF string (`max_bytes = 57` on conversions, which cuts
/// TC_P1 inside its vendor bitfield): the journal keeps the cut string, flagged truncated, but
/// the vendor is judged on the string the request carried. Regression: the cut section read as
/// no vendor consent, so with real strings longer than the shipped fields every user who
/// consented was opted out.
#[test]
fn vendor_consent_is_judged_on_the_string_as_sent_not_the_cut_field() {
    let no_vendor = TC_P1_WITHOUT_115;
    let field = "{ name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = 160 },\n]\n\n# VAST";
    let text = small_segments();
    assert!(text.contains(field) && text.contains("\ntcf_vendor_id = 0\n"));
    let text = text
        .replace(field, &field.replace("max_bytes = 160", "max_bytes = 57"))
        .replace("\ntcf_vendor_id = 0\n", "\ntcf_vendor_id = 115\n");
    let sends =
        [("consented", TC_P1), ("not-to-115", no_vendor)].map(|(o, tc)| (o, format!("gdpr=1&gdpr_consent={tc}")));
    let (by, no_consent) = conversions(&text, &sends);
    assert_eq!(no_consent, 1.0);
    let kept = &by["consented"];
    assert_eq!(
        (kept["gdpr_consent"].as_str(), kept["truncated"].as_bool()),
        (Some(&TC_P1[..57]), Some(true)),
        "{kept}"
    );
    assert_eq!(kept["user_id"].as_str().map(str::len), Some(32), "{kept}");
    assert_eq!(kept.get("opted_out"), None, "{kept}");
    let out = &by["not-to-115"];
    assert!(out.get("user_id").is_none() && out.get("ip").is_none(), "{out}");
    assert_eq!(out["opted_out"], true);
}

/// `gdpr_no_consent` counts journaled events, as the docs say. Regression: it moved when the
/// privacy step ran, before the dedup window, so a retried pixel (same eid) without consent
/// counted twice for one event.
#[test]
fn gdpr_no_consent_counts_each_event_once_not_each_retry() {
    let mut s = Server::start(Some(&small_segments()), &["--shards", "1"]);
    let mut c = s.connect();
    for _ in 0..3 {
        c.send(b"GET /cv?c=1&eid=retried-1&gdpr=1 HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.read_response(false).status, 200);
    }
    let m = crate::metrics::parse_metrics(std::str::from_utf8(&s.admin_get("/metrics").body).unwrap());
    assert_eq!(m[r#"tracker_rejects_total{reason="duplicate"}"#], 2.0, "{m:#?}");
    assert_eq!(m[r#"tracker_rejects_total{reason="gdpr_no_consent"}"#], 1.0, "{m:#?}");
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 1);
}
