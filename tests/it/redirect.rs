//! Click redirects over real sockets: allowed and signed landing URLs get a 302 with the macros
//! filled in; every open-redirect and header-injection trick gets a 4xx with no `Location`, and
//! nothing is journaled for it.

use crate::harness::*;
use std::process::Command;

const KEY1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

/// The default config, requiring `require`, with `keys` (TOML) on the click endpoint.
fn config_with(require: &str, keys: &str) -> String {
    include_str!("../../config/tracker.toml")
        .replace("require = \"allowlist\"", &format!("require = \"{require}\""))
        .replace("\n[event.impression]", &format!("{keys}\n[event.impression]"))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Targets that must never redirect; the query is sent byte for byte.
const ATTACKS: &[&str] = &[
    "/c?c=1&url=%2F%2Fevil.com",
    "/c?c=1&url=//evil.com",
    "/c?c=1&url=/%5Cevil.com",
    "/c?c=1&url=%2F%5Cevil.com",
    "/c?c=1&url=https:evil.com",
    "/c?c=1&url=https%3Aevil.com",
    "/c?c=1&url=https:/evil.com",
    "/c?c=1&url=https:///evil.com",
    "/c?c=1&url=https:%5C%5Cevil.com",
    "/c?c=1&url=https://example.com@evil.com",
    "/c?c=1&url=https%3A%2F%2Fexample.com%40evil.com",
    "/c?c=1&url=https%3A%2F%2Fexample.com%2540evil.com",
    "/c?c=1&url=https%253A%252F%252Fevil.com",
    "/c?c=1&url=%252F%252Fevil.com",
    "/c?c=1&url=https://evil.com%23@example.com",
    "/c?c=1&url=https://evil.com%5C@example.com",
    "/c?c=1&url=https://evil.com",
    "/c?c=1&url=https://example.com.evil.com/",
    "/c?c=1&url=https://evilexample.com/",
    "/c?c=1&url=HTTPS://EXAMPLE.COM.EVIL.COM/",
    "/c?c=1&url=https://%2565xample.com/",
    "/c?c=1&url=https://%D0%B5xample.com/",
    "/c?c=1&url=https://xn--xample-2of.com/",
    "/c?c=1&url=javascript:alert(1)",
    "/c?c=1&url=javascript%3Aalert(1)%2F%2Fexample.com",
    "/c?c=1&url=JAVASCRIPT:alert(1)",
    "/c?c=1&url=data:text/html,%3Cscript%3Ealert(1)%3C/script%3E",
    "/c?c=1&url=ftp://example.com/",
    "/c?c=1&url=https://example.com/%0D%0ASet-Cookie:%20a=1",
    "/c?c=1&url=https://example.com/%0ALocation:%20https://evil.com",
    "/c?c=1&url=https://example.com/%250D%250ASet-Cookie:a=1",
    "/c?c=1&url=https://example.com/%00",
    "/c?c=1&url=https://exa%09mple.com/",
    "/c?c=1&url=%20https://example.com/",
    "/c?c=1&url=https://example.com/&url=https://evil.com/",
    "/c?c=1&url=https://127.0.0.1/",
    "/c?c=1&url=https://2130706433/",
    "/c?c=1&url=",
    "/c?c=1",
    "/c?c=1&url=%zz",
];

#[test]
fn every_redirect_attack_is_4xx_without_location_and_not_logged() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for target in ATTACKS {
        let r = c.get(target);
        assert!((400..500).contains(&r.status), "{target}: {} {:?}", r.status, String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("location"), None, "{target}");
        assert!(!r.body.is_empty(), "{target}: a refusal says why");
    }
    // The same connection still redirects a good click.
    let r = c.get("/c?c=5&url=https%3A%2F%2Fwww.example.com%2Fok");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("https://www.example.com/ok"));
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.len(), 1, "only the good click is an event: {events:?}");
    assert_eq!(events[0]["type"], "click");
}

#[test]
fn raw_control_bytes_in_the_target_never_reach_a_location() {
    let mut s = Server::start(None, &["--shards", "1"]);
    for raw in [
        &b"GET /c?c=1&url=https://example.com/\r\nSet-Cookie: a=1 HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /c?c=1&url=https://example.com/\x00 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /c?c=1&url=https://example.com/\x7f HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /c?c=1&url=https://example.com/\xd0\xb5 HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        let mut c = s.connect();
        c.send(raw);
        // Closed without an answer is fine too: never a redirect either way.
        if let Some(r) = c.try_read_response(false) {
            assert!((400..500).contains(&r.status), "{:?}: {}", String::from_utf8_lossy(raw), r.status);
            assert_eq!(r.header("location"), None);
        }
    }
    // Still serving (a shard that died on them would close every connection unanswered too),
    // and none of them became a click.
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "impression");
}

#[test]
fn allowed_click_is_logged_then_redirected_with_macros_filled() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let landing = "https://shop.example.com/p?cid={campaign_id}&imp={impression_id}&clk={click_id}&x={unknown}#top";
    let r = c.get(&format!("/c?c=42&cr=7&imp=a%2Fb%20c&url={}", enc(landing)));
    assert_eq!(r.status, 302, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("cache-control"), Some("no-cache, no-store, must-revalidate"));
    assert_eq!(r.header("content-length"), Some("0"));
    let loc = r.header("location").unwrap().to_string();
    // HEAD is answered alike.
    c.send(format!("HEAD /c?c=1&url={} HTTP/1.1\r\nHost: t\r\n\r\n", enc("https://example.com/")).as_bytes());
    let h = c.read_response(true);
    assert_eq!((h.status, h.header("location")), (302, Some("https://example.com/")));
    assert_eq!(s.stop(), 0);
    let events = journal_cat(&s.journal());
    assert_eq!(events.len(), 2);
    let e = &events[0];
    assert_eq!(
        (e["type"].as_str(), e["campaign_id"].as_u64(), e["impression_id"].as_str()),
        (Some("click"), Some(42), Some("a/b c"))
    );
    let id = e["id"].as_str().unwrap();
    assert_eq!(loc, format!("https://shop.example.com/p?cid=42&imp=a%2Fb%20c&clk={id}&x={{unknown}}#top"));
}

fn sign_url(cfg: &std::path::Path, kid: Option<&str>, exp: Option<u64>, base: &str, url: &str, query: &str) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["sign-url", "--config"]).arg(cfg).args(["--base", base, "--url", url, query]);
    if let Some(k) = kid {
        cmd.args(["--kid", k]);
    }
    if let Some(e) = exp {
        cmd.args(["--exp", &e.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "sign-url: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn signed_urls_verify_expire_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let keyfile = dir.path().join("k2.hex");
    std::fs::write(&keyfile, format!("{KEY2}\n")).unwrap();
    let both = format!(
        "[[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"{KEY1}\"\n[[endpoint.redirect.key]]\nid = \"k2\"\nfile = \"{}\"\n",
        keyfile.display()
    );
    let cfg_both = dir.path().join("both.toml");
    std::fs::write(&cfg_both, config_with("either", &both)).unwrap();

    let mut s = Server::start(Some(&config_with("either", &both)), &["--shards", "1"]);
    let base = format!("http://{}", s.addr);
    let target = |u: &str| u.strip_prefix(&base).unwrap().to_string();
    let landing = "https://advertiser.test/landing?clk={click_id}";
    let q = "c=9&cr=3&imp=i-1";
    let u1 = sign_url(&cfg_both, Some("k1"), None, &base, landing, q);
    let u2 = sign_url(&cfg_both, None, None, &base, landing, q);
    assert!(u2.contains("&kid=k2&"), "the newest key signs by default: {u2}");
    // sign-url refuses an expiry the server would refuse (and says so) ...
    let out = Command::new(BIN)
        .args(["sign-url", "--config"])
        .arg(&cfg_both)
        .args(["--base", &base, "--url", landing, "--exp", "1600000000", q])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the future"), "{out:?}");
    // ... and a --ttl-s past any expiry, instead of wrapping into one in the past.
    let out = Command::new(BIN)
        .args(["sign-url", "--config"])
        .arg(&cfg_both)
        .args(["--base", &base, "--url", landing, "--ttl-s", &u64::MAX.to_string(), q])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is past any expiry"), "{out:?}");
    // ... so the expired URL is signed as of its own time, through the library.
    let past = {
        let cfg = tracker::config::Config::load(&cfg_both).unwrap();
        let rule = cfg.endpoints.iter().find(|e| e.path == "/c").unwrap().redirect.as_deref().unwrap();
        let exp = 1_600_000_000;
        tracker::redirect::signed_click_url(rule, &base, q, landing, Some("k1"), exp, exp - 60).unwrap()
    };

    let mut c = s.connect();
    for u in [&u1, &u2] {
        let r = c.get(&target(u));
        assert_eq!(r.status, 302, "{u}: {:?}", String::from_utf8_lossy(&r.body));
        assert!(r.header("location").unwrap().starts_with("https://advertiser.test/landing?clk="));
    }
    let r = c.get(&target(&past));
    assert_eq!((r.status, r.header("location")), (403, None));
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "signature expired");
    // Tampering with a signed field or the URL is refused.
    let r = c.get(&target(&u1).replace("c=9", "c=10"));
    assert_eq!((r.status, r.header("location")), (403, None));
    let r = c.get(&target(&u1).replace("advertiser.test", "attacker.test"));
    assert_eq!((r.status, r.header("location")), (403, None));
    // An eid the signature does not cover makes no new click: the id still comes from the
    // signed identity fields (the Location's click id is u1's), and the dedup window folds
    // them. Before, each eid was a click of its own, with the id its sender chose.
    let clk = c.get(&target(&u1)).header("location").unwrap().to_string();
    for eid in ["attacker-1", "attacker-2", "0190b2a4-0000-7000-8000-000000000001"] {
        let r = c.get(&format!("{}&eid={eid}", target(&u1)));
        assert_eq!((r.status, r.header("location")), (302, Some(clk.as_str())), "eid {eid}");
    }
    // Unsigned, unlisted: refused; allowlisted: fine without a signature ("either").
    let r = c.get(&format!("/c?c=1&url={}", enc(landing)));
    assert_eq!((r.status, r.header("location")), (403, None));
    assert_eq!(c.get(&format!("/c?c=1&url={}", enc("https://example.com/"))).status, 302);
    assert_eq!(s.stop(), 0);
    // u1 and u2 are the same click (same identity fields): the dedup window keeps one.
    assert_eq!(journal_cat(&s.journal()).len(), 2);

    // Rotation: k1 retired from the config; its URLs stop working, k2's keep working.
    let only_k2 = format!("[[endpoint.redirect.key]]\nid = \"k2\"\nfile = \"{}\"\n", keyfile.display());
    let s = Server::start(Some(&config_with("signature", &only_k2)), &["--shards", "1"]);
    let mut c = s.connect();
    let r = c.get(target(&u1).as_str());
    assert_eq!((r.status, r.header("location")), (403, None));
    assert_eq!(String::from_utf8_lossy(&r.body).trim(), "unknown key id (kid)");
    assert_eq!(c.get(&target(&u2)).status, 302);
}

/// Regression: a signed click without one of its identity fields (here `imp`) got a fresh random
/// id, so every replay of that one signed URL was journaled as a new click, until `exp`. It is
/// now refused with the reason, and nothing is journaled; `sign-url` refuses to print such a URL,
/// so this one is signed through the library's key, as a third-party signer would.
#[test]
fn a_signed_click_without_an_identity_field_is_refused_not_replayable() {
    let keys = format!("[[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"{KEY1}\"\n");
    let text = config_with("signature", &keys);
    let cfg = tracker::config::Config::parse(&text, "t.toml").unwrap();
    let rule = cfg.endpoints.iter().find(|e| e.path == "/c").unwrap().redirect.as_deref().unwrap();
    let landing = "https://advertiser.test/p";
    let exp =
        (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600).to_string();
    let mut signer = rule.keys[0].start(rule.path.as_bytes(), exp.as_bytes(), landing.as_bytes());
    for (name, _) in &rule.signed {
        let v: &[u8] = match name.as_str() {
            "campaign_id" => b"9",
            "creative_id" => b"3",
            _ => b"",
        };
        signer.field(name.as_bytes(), v);
    }
    let sig = String::from_utf8(signer.finish().to_vec()).unwrap();
    let target = format!("/c?c=9&cr=3&url={}&exp={exp}&kid=k1&sig={sig}", enc(landing));

    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    let mut c = s.connect();
    for _ in 0..3 {
        let r = c.get(&target);
        assert_eq!((r.status, r.header("location")), (400, None));
        let why = String::from_utf8_lossy(&r.body);
        assert_eq!(why.trim(), "field impression_id: missing: a signed click needs every identity field");
    }
    // The signature itself was good: with imp signed too, the same click goes through.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(&file, &text).unwrap();
    let base = format!("http://{}", s.addr);
    let u = sign_url(&file, None, None, &base, landing, "c=9&cr=3&imp=i-1");
    assert_eq!(c.get(u.strip_prefix(&base).unwrap()).status, 302);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 1, "the refused ones journaled nothing");
}

#[test]
fn check_config_refuses_an_open_redirect_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.toml");
    let text = include_str!("../../config/tracker.toml").replace("[\"example.com\", \"*.example.com\"]", "[\"*\"]");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(BIN).arg("check-config").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redirect.allow_domains") && err.contains("open redirect"), "{err}");
}

#[test]
fn clicks_record_device_class_and_bot_flag() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for (n, ua) in [
        (1, "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"),
        (2, "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        (3, "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"),
    ] {
        c.send(
            format!("GET /c?c={n}&url=https%3A%2F%2Fexample.com%2F HTTP/1.1\r\nHost: t\r\nUser-Agent: {ua}\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(c.read_response(false).status, 302);
    }
    assert_eq!(c.get("/c?c=4&url=https%3A%2F%2Fexample.com%2F").status, 302);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    let got: Vec<(u64, &str, u64)> = ev
        .iter()
        .map(|e| (e["campaign_id"].as_u64().unwrap(), e["device"].as_str().unwrap(), e["is_bot"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [(1, "mobile", 0), (2, "bot", 1), (3, "desktop", 0), (4, "unknown", 0)]);
}

/// The default config, `require = "either"` with key k1 on `/c`, plus a second redirect
/// endpoint `/c2` that shares k1 but has a stricter rule (signature only, nothing allowlisted):
/// the set-up of an operator who reuses one key across endpoints.
fn two_endpoints_sharing_a_key() -> String {
    let k1 = format!("[[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"{KEY1}\"\n");
    format!(
        "{}\n[[endpoint]]\npath = \"/c2\"\nmethod = \"GET\"\nevent = \"click\"\nresponse = \"redirect\"\nack = \"received\"\n\n[endpoint.redirect]\nrequire = \"signature\"\nallow_domains = []\n{k1}",
        config_with("either", &k1)
    )
}

/// Regression: the signed message did not name the endpoint, so with one key on two redirect
/// endpoints a URL signed for `/c` was followed by `/c2` (and the other way round), slipping
/// past whichever endpoint had the stricter rule.
#[test]
fn a_url_signed_for_one_endpoint_is_refused_on_another_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = two_endpoints_sharing_a_key();
    let cfg = dir.path().join("two.toml");
    std::fs::write(&cfg, &text).unwrap();
    let mut s = Server::start(Some(&text), &["--shards", "1"]);
    let base = format!("http://{}", s.addr);
    let landing = "https://advertiser.test/landing?clk={click_id}";
    let sign = |endpoint: &str, q: &str| {
        let out = Command::new(BIN)
            .args(["sign-url", "--config"])
            .arg(&cfg)
            .args(["--endpoint", endpoint, "--base", &base, "--url", landing, q])
            .output()
            .unwrap();
        assert!(out.status.success(), "sign-url: {}", String::from_utf8_lossy(&out.stderr));
        let u = String::from_utf8(out.stdout).unwrap();
        u.trim().strip_prefix(&base).unwrap().to_string()
    };
    let for_c = sign("/c", "c=1&cr=1&imp=i-1");
    let for_c2 = sign("/c2", "c=2&cr=2&imp=i-2");
    assert!(for_c.starts_with("/c?") && for_c2.starts_with("/c2?"), "{for_c} {for_c2}");

    let mut c = s.connect();
    // Each URL on the endpoint it was signed for: followed.
    for u in [&for_c, &for_c2] {
        let r = c.get(u);
        assert_eq!(r.status, 302, "{u}: {:?}", String::from_utf8_lossy(&r.body));
        assert!(r.header("location").unwrap().starts_with("https://advertiser.test/landing?clk="), "{u}");
    }
    // The same query on the other endpoint: refused, no Location, nothing logged.
    for u in [for_c.replacen("/c?", "/c2?", 1), for_c2.replacen("/c2?", "/c?", 1)] {
        let r = c.get(&u);
        assert_eq!((r.status, r.header("location")), (403, None), "{u}");
        assert_eq!(String::from_utf8_lossy(&r.body).trim(), "bad signature", "{u}");
    }
    assert_eq!(s.stop(), 0);
    let got: Vec<u64> = journal_cat(&s.journal()).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(got, [1, 2], "only the two clicks on their own endpoints are logged");
}

/// A signature holds on one endpoint only, so with two redirect endpoints `sign-url` must be
/// told which: guessing `/c` would print a URL that is refused where it was meant to be used.
/// With one redirect endpoint (the other tests) it needs no `--endpoint`.
#[test]
fn sign_url_asks_which_endpoint_when_the_config_has_several() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("two.toml");
    std::fs::write(&cfg, two_endpoints_sharing_a_key()).unwrap();
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["sign-url", "--config"])
            .arg(&cfg)
            .args(["--url", "https://advertiser.test/", "c=1&cr=2&imp=i-1"])
            .args(extra);
        cmd.output().unwrap()
    };
    for extra in [&[][..], &["--endpoint", "/i"], &["--endpoint", "/nope"]] {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        assert!(out.stdout.is_empty(), "{extra:?}");
        assert!(err.contains("--endpoint") && err.contains("/c, /c2"), "{extra:?}: {err}");
    }
    let out = run(&["--endpoint", "/c2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("http://127.0.0.1:8080/c2?c=1&cr=2&imp=i-1&url="));
}
