//! The rule end to end on request query strings, with the default config and a signed one.

use super::*;
use crate::config::Config;

const KEY1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
const NOW: u64 = 1_790_000_000;

/// The default config with `require` changed and `keys` (TOML) added to the click endpoint.
pub fn with_keys(require: &str, keys: &str) -> String {
    crate::config::DEFAULT_TOML
        .replace("require = \"allowlist\"", &format!("require = \"{require}\""))
        .replace("\n[event.impression]", &format!("{keys}\n[event.impression]"))
}

fn signed_config(require: &str) -> Config {
    let keys = format!(
        "[[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"{KEY1}\"\n[[endpoint.redirect.key]]\nid = \"k2\"\nsecret_hex = \"{KEY2}\"\n"
    );
    Config::parse(&with_keys(require, &keys), "t.toml").unwrap()
}

fn rule(cfg: &Config) -> &RedirectRule {
    cfg.endpoints.iter().find(|e| e.path == "/c").unwrap().redirect.as_deref().unwrap()
}

fn run(r: &RedirectRule, q: &str) -> Result<String, Refused> {
    let mut buf = [0u8; LANDING_URL_BYTES_MAX];
    check(r, q.as_bytes(), NOW, &mut buf).map(|u| String::from_utf8(u.url.to_vec()).unwrap())
}

/// Percent-encodes like encodeURIComponent.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn sign(r: &RedirectRule, kid: &str, exp: u64, url: &str, fields: &[(&str, &str)]) -> String {
    let key = r.keys.iter().find(|k| k.id == kid).unwrap();
    let exp_s = exp.to_string();
    let mut s = key.start(r.path.as_bytes(), exp_s.as_bytes(), url.as_bytes());
    for (name, _) in &r.signed {
        let v = fields.iter().find(|(n, _)| n == name).map_or("", |(_, v)| v);
        s.field(name.as_bytes(), v.as_bytes());
    }
    String::from_utf8(s.finish().to_vec()).unwrap()
}

#[test]
fn default_config_allows_example_com_and_its_subdomains_only() {
    let cfg = Config::embedded();
    let r = rule(&cfg);
    assert_eq!(r.require, Require::Allowlist);
    let ok = |u: &str| run(r, &format!("c=1&url={}", enc(u)));
    assert_eq!(ok("https://example.com/x?a=1").unwrap(), "https://example.com/x?a=1");
    assert!(ok("https://www.example.com/").is_ok());
    assert!(ok("http://a.b.example.com:8080/").is_ok());
    assert_eq!(ok("https://evil.com/").unwrap_err().status, 403);
    assert_eq!(ok("https://example.com.evil.com/").unwrap_err().status, 403);
    assert_eq!(ok("https://notexample.com/").unwrap_err().status, 403);
}

#[test]
fn attacks_are_4xx() {
    let cfg = Config::embedded();
    let r = rule(&cfg);
    for raw in [
        "url=%2F%2Fevil.com",
        "url=//evil.com",
        "url=/%5Cevil.com",
        "url=https:evil.com",
        "url=https://example.com@evil.com",
        "url=https%3A%2F%2Fexample.com%40evil.com",
        "url=https%3A%2F%2Fexample.com%2540evil.com",
        "url=https%253A%252F%252Fevil.com",
        "url=%252F%252Fevil.com",
        "url=javascript:alert(1)//example.com",
        "url=data:text/html;base64,PHNjcmlwdD4=",
        "url=https://example.com/%0D%0ASet-Cookie:%20a=1",
        "url=https://example.com/%250D%250ASet-Cookie:a=1",
        "url=https://example.com/%09",
        "url=https://example.com%5C@evil.com",
        "url=https://%65vil.com/",
        "url=https://EXAMPLE.COM%2Eevil.com/",
        "url=https://%D0%B5xample.com/",
        "url=https://xn--xample-2of.com/",
        "url=https://example.com/&url=https://evil.com/",
        "url=",
        "c=1",
        "url=%zz",
    ] {
        let e = run(r, raw).expect_err(raw);
        assert!(matches!(e.status, 400 | 403 | 414), "{raw}: {e:?}");
    }
}

#[test]
fn signatures_verify_expire_rotate_and_cover_the_fields() {
    let cfg = signed_config("signature");
    let r = rule(&cfg);
    assert_eq!(r.signed.len(), 3, "defaults to the identity fields");
    let url = "https://landing.test/p?x={click_id}";
    let fields = [("campaign_id", "7"), ("creative_id", "8"), ("impression_id", "i 9")];
    let exp = NOW + 3600;
    let q = |kid: &str, exp: u64, sig: &str, c: &str| {
        format!("c={c}&cr=8&imp=i%209&url={}&exp={exp}&kid={kid}&sig={sig}", enc(url))
    };
    let sig1 = sign(r, "k1", exp, url, &fields);
    assert_eq!(run(r, &q("k1", exp, &sig1, "7")).unwrap(), url, "an unlisted host is fine when signed");
    // Rotation: both keys are active; each verifies only its own signatures.
    let sig2 = sign(r, "k2", exp, url, &fields);
    assert!(run(r, &q("k2", exp, &sig2, "7")).is_ok());
    assert_eq!(run(r, &q("k2", exp, &sig1, "7")).unwrap_err().status, 403);
    assert_eq!(run(r, &q("k3", exp, &sig1, "7")).unwrap_err().reason, "unknown key id (kid)");
    // A changed field, expiry or URL breaks the signature.
    assert_eq!(run(r, &q("k1", exp, &sig1, "70")).unwrap_err().reason, "bad signature");
    assert_eq!(run(r, &q("k1", exp + 1, &sig1, "7")).unwrap_err().reason, "bad signature");
    let other = format!("c=7&cr=8&imp=i%209&url={}&exp={exp}&kid=k1&sig={sig1}", enc("https://landing.test/p?x=1"));
    assert_eq!(run(r, &other).unwrap_err().reason, "bad signature");
    // Expired.
    let old = NOW - 1;
    let sig_old = sign(r, "k1", old, url, &fields);
    assert_eq!(run(r, &q("k1", old, &sig_old, "7")).unwrap_err().reason, "signature expired");
    // Too far ahead, and non-canonical exp.
    let far = NOW + 31 * 86_400;
    let sig_far = sign(r, "k1", far, url, &fields);
    assert_eq!(run(r, &q("k1", far, &sig_far, "7")).unwrap_err().status, 403);
    assert_eq!(
        run(r, &format!("c=7&cr=8&imp=i%209&url={}&exp=0{exp}&kid=k1&sig={sig1}", enc(url))).unwrap_err().status,
        400
    );
    // Missing or mangled signature; duplicated parameters.
    assert_eq!(run(r, &format!("c=7&url={}", enc(url))).unwrap_err().status, 403);
    assert_eq!(run(r, &q("k1", exp, &sig1[..42], "7")).unwrap_err().status, 403);
    assert_eq!(run(r, &format!("{}&sig={sig1}", q("k1", exp, &sig1, "7"))).unwrap_err().status, 400);
    // A signed URL is still parsed strictly.
    let bad = "https://good.test@evil.test/";
    let sig_bad = sign(r, "k1", exp, bad, &fields);
    assert_eq!(
        run(r, &format!("c=7&cr=8&imp=i%209&url={}&exp={exp}&kid=k1&sig={sig_bad}", enc(bad))).unwrap_err().status,
        400
    );
}

#[test]
fn either_and_both() {
    let cfg = signed_config("either");
    let r = rule(&cfg);
    assert!(run(r, &format!("url={}", enc("https://example.com/"))).is_ok());
    assert_eq!(run(r, &format!("url={}", enc("https://other.test/"))).unwrap_err().status, 403);
    let cfg = signed_config("both");
    let r = rule(&cfg);
    let url = "https://other.test/";
    let sig = sign(r, "k1", NOW + 60, url, &[]);
    let q = format!("url={}&exp={}&kid=k1&sig={sig}", enc(url), NOW + 60);
    assert_eq!(run(r, &q).unwrap_err().reason, "landing domain is not allowed");
    assert_eq!(run(r, &format!("url={}", enc("https://example.com/"))).unwrap_err().status, 403);
}

#[test]
fn config_errors_name_the_key() {
    let bad = crate::config::DEFAULT_TOML
        .replace("require = \"allowlist\"", "require = \"signature\"")
        .replace("[\"example.com\", \"*.example.com\"]", "[\"*\", \"Example.com\"]");
    let e = Config::parse(&bad, "t.toml").unwrap_err().0;
    let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert!(keys.iter().filter(|k| k.ends_with("redirect.allow_domains")).count() == 2, "{e:?}");
    assert!(keys.iter().any(|k| k.ends_with("redirect.require")), "{e:?}");
    let short = with_keys("signature", "[[endpoint.redirect.key]]\nid = \"k\"\nsecret_hex = \"abcd\"\n");
    let e = Config::parse(&short, "t.toml").unwrap_err().0;
    assert!(e[0].message.contains("2 bytes"), "{e:?}");
}

#[test]
fn macros_are_filled_and_encoded() {
    let cfg = Config::embedded();
    let ty = cfg.event_type("click").unwrap();
    let req = crate::extract::RequestView {
        query: b"c=42&cr=7&imp=a%2Fb%26c%20d&site=s",
        headers: &[],
        host: None,
        client_ip: "10.1.2.3".parse().unwrap(),
        now_ns: NOW * 1_000_000_000,
        user_agent: None,
        json: None,
        client_id_ignored: false,
        item: None,
    };
    let mut ev = Event::ZERO;
    crate::extract::extract(ty, &req, &mut crate::extract::IdGen::new(0), 0, 0, &mut ev).unwrap();
    let mut out = [0u8; LOCATION_BYTES_MAX];
    let t =
        b"https://example.com/l?cid={campaign_id}&imp={impression_id}&ip={ip}&e={event_id}&k={click_id}&x={nope}&y={";
    let n = expand(t, &ev, ty, true, &mut out).unwrap();
    let mut id = [0u8; 36];
    format_uuid(&ev.id, &mut id);
    let id = std::str::from_utf8(&id).unwrap();
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        format!("https://example.com/l?cid=42&imp=a%2Fb%26c%20d&ip=10.1.2.3&e={id}&k={id}&x={{nope}}&y={{")
    );
    let mut small = [0u8; 30];
    assert_eq!(expand(t, &ev, ty, true, &mut small).unwrap_err().status, 414);
    // Not signed: the URL is the requester's, so the browser's own values (here its address)
    // stay out of it; what the query carried, and the id, are filled.
    let n = expand(t, &ev, ty, false, &mut out).unwrap();
    assert_eq!(
        std::str::from_utf8(&out[..n]).unwrap(),
        format!("https://example.com/l?cid=42&imp=a%2Fb%26c%20d&ip=&e={id}&k={id}&x={{nope}}&y={{")
    );

    // Regression: a name of 64 bytes or more was never filled (the scan for `}` stopped there).
    let long = "site_of_the_publisher_as_the_exchange_sent_it_in_the_bid_request_x";
    assert!(long.len() > 64);
    let text = crate::config::DEFAULT_TOML.replace("{ name = \"site\",", &format!("{{ name = \"{long}\","));
    let cfg = Config::parse(&text, "t.toml").unwrap();
    let ty = cfg.event_type("click").unwrap();
    let mut ev = Event::ZERO;
    crate::extract::extract(ty, &req, &mut crate::extract::IdGen::new(0), 0, 0, &mut ev).unwrap();
    let t = format!("https://example.com/l?s={{{long}}}");
    let n = expand(t.as_bytes(), &ev, ty, true, &mut out).unwrap();
    assert_eq!(&out[..n], b"https://example.com/l?s=s");
}

/// A cheap deterministic fuzzer: random concatenations of the tokens attacks are made of, sent
/// raw and percent-encoded (once and twice). Whatever passes must be a URL a browser sends to
/// example.com or one of its subdomains, and must make a valid `Location`. Nothing may panic.
#[test]
fn fuzzed_landing_urls_never_escape_the_allowlist() {
    const TOKENS: &[&str] = &[
        "https://",
        "http://",
        "HTTPS://",
        "https:",
        "//",
        "/",
        "\\",
        "@",
        "%",
        "%2F",
        "%5C",
        "%40",
        "%0d",
        "%0a",
        "%25",
        "%2540",
        "%252F",
        "example.com",
        "EXAMPLE.COM",
        "evil.com",
        ".",
        ":",
        ":443",
        "#",
        "?",
        "&",
        "=",
        "*",
        " ",
        "\t",
        "\r\n",
        "\u{0}",
        "\u{7f}",
        "е",
        "xn--e1a",
        "{",
        "}",
        "{click_id}",
        "javascript:",
        "data:",
        "www.",
        "a.",
        "-",
        "127.0.0.1",
        "[::1]",
        "+",
        "%2e",
        "%00",
    ];
    let cfg = Config::embedded();
    let r = rule(&cfg);
    let ty = cfg.event_type("click").unwrap();
    let mut ev = Event::ZERO;
    ev.type_id = ty.id;
    let mut seed = crate::xorshift::Xorshift64::new(0x9e37_79b9_7f4a_7c15);
    let mut next = move || seed.next();
    let mut passed = 0;
    for _ in 0..40_000 {
        let n = 1 + next() % 8;
        let mut url = String::new();
        // Half start like a good URL, so the tokens after it probe the host and path rules.
        match next() % 4 {
            0 => {}
            1 => url.push_str(["https://", "http://"][(next() % 2) as usize]),
            _ => url.push_str(
                ["https://example.com", "http://www.example.com", "HTTPS://A.Example.com"][(next() % 3) as usize],
            ),
        }
        for _ in 0..n {
            url.push_str(TOKENS[(next() % TOKENS.len() as u64) as usize]);
        }
        let value = match next() % 3 {
            0 => url.clone(),
            1 => enc(&url),
            _ => enc(&enc(&url)),
        };
        let mut buf = [0u8; LANDING_URL_BYTES_MAX];
        let q = format!("c=1&url={value}");
        let Ok(checked) = check(r, q.as_bytes(), NOW, &mut buf) else { continue };
        let landing = checked.url;
        passed += 1;
        let text = std::str::from_utf8(landing).expect("ASCII");
        assert!(landing.iter().all(|&b| (0x21..=0x7e).contains(&b) && b != b'\\'), "{text:?}");
        let lower = text.to_ascii_lowercase();
        let rest = lower.strip_prefix("https://").or_else(|| lower.strip_prefix("http://")).expect(text);
        let authority = rest.split(['/', '?', '#']).next().unwrap();
        let host = authority.split(':').next().unwrap();
        assert!(!authority.contains('@') && !authority.contains('%'), "{text:?}");
        assert!(host == "example.com" || host.ends_with(".example.com"), "{text:?} escaped to {host}");
        let mut out = [0u8; LOCATION_BYTES_MAX];
        let len = expand(landing, &ev, ty, true, &mut out).unwrap();
        let mut wbuf = Vec::with_capacity(4096);
        crate::http::response::redirect(&mut wbuf, &out[..len], true, 1, b"Sun, 06 Nov 1994 08:49:37 GMT")
            .expect("a passed URL is a valid Location");
    }
    eprintln!("{passed} of 40000 fuzzed landing URLs passed");
    assert!(passed > 500, "the fuzzer should also produce some good URLs ({passed})");
}

#[test]
fn a_wildcard_over_a_public_suffix_is_refused() {
    for open in ["*.com", "*.co.uk", "*.com.au", "*.ne.jp", "*.io"] {
        let e = url::Domain::parse(open).err().unwrap_or_else(|| panic!("{open} accepted"));
        assert!(e.contains("public suffix"), "{open}: {e}");
    }
    for fine in ["*.example.com", "*.shop.co.uk", "*.brand.io", "example.co.uk"] {
        assert!(url::Domain::parse(fine).is_ok(), "{fine}");
    }
}

#[test]
fn a_signature_that_would_cover_no_field_is_a_config_error_unless_asked_for() {
    let click = r#"
[[endpoint]]
path = "/c"
event = "click"
response = "redirect"
[endpoint.redirect]
require = "signature"
SIGNED
[[endpoint.redirect.key]]
id = "k1"
secret_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
[event.click]
fields = [ { name = "campaign_id", source = "query.c", type = "u64", required = true } ]
"#;
    // No identity and no signed_fields: a signed click's campaign could be rewritten.
    let e = Config::parse(&click.replace("SIGNED", ""), "t.toml").unwrap_err().0;
    assert!(
        e.iter().any(|e| e.key.ends_with("redirect.signed_fields") && e.message.contains("landing URL only")),
        "{e:?}"
    );
    // Listing the field signs it; an explicit empty list is the file's choice.
    let cfg = Config::parse(&click.replace("SIGNED", "signed_fields = [\"campaign_id\"]"), "t.toml").unwrap();
    let r = rule(&cfg);
    let url = "https://shop.test/p";
    let sig = sign(r, "k1", NOW + 60, url, &[("campaign_id", "7")]);
    assert!(run(r, &format!("c=7&url={}&exp={}&kid=k1&sig={sig}", enc(url), NOW + 60)).is_ok());
    assert!(run(r, &format!("c=999&url={}&exp={}&kid=k1&sig={sig}", enc(url), NOW + 60)).is_err());
    assert!(Config::parse(&click.replace("SIGNED", "signed_fields = []"), "t.toml").is_ok());
}

/// A signed click's id comes from its identity fields: a rule that requires a signature and
/// leaves one of them unsigned would let anyone vary it and mint clicks (each a new id). A
/// config error; an event type without identity is the file's choice, as above.
#[test]
fn every_identity_field_of_a_signed_click_must_be_signed() {
    let click = r#"
[[endpoint]]
path = "/c"
event = "click"
response = "redirect"
[endpoint.redirect]
require = "REQUIRE"
signed_fields = ["campaign_id"]
[[endpoint.redirect.key]]
id = "k1"
secret_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
[event.click]
identity = ["campaign_id", "impression_id"]
fields = [
  { name = "campaign_id", source = "query.c", type = "u64", required = true },
  { name = "impression_id", source = "query.imp", type = "string", max_bytes = 48 },
]
"#;
    for require in ["signature", "either", "both"] {
        let e = Config::parse(&click.replace("REQUIRE", require), "t.toml").unwrap_err().0;
        assert!(
            e.iter().any(|e| e.key.ends_with("redirect.signed_fields")
                && e.message.contains("identity field \"impression_id\" of event.click is not signed")),
            "{require}: {e:?}"
        );
    }
    // Without a signature there is nothing to vary against.
    assert!(Config::parse(&click.replace("REQUIRE", "allowlist"), "t.toml").is_ok());
    let both = click
        .replace("REQUIRE", "signature")
        .replace("[\"campaign_id\"]\n[[", "[\"campaign_id\", \"impression_id\"]\n[[");
    assert!(Config::parse(&both, "t.toml").is_ok());
}

/// The signature's own parameters cannot also be the landing URL's or a signed field's: the
/// server would read one value for two meanings.
#[test]
fn the_signature_parameters_are_not_for_the_landing_url_or_a_field() {
    let e = Config::parse(&crate::config::DEFAULT_TOML.replace("param = \"url\"", "param = \"sig\""), "t.toml")
        .unwrap_err()
        .0;
    assert!(
        e.iter().any(|e| e.key.ends_with("redirect.param") && e.message.contains("a parameter of the signature")),
        "{e:?}"
    );
    let text = with_keys("signature", &format!("[[endpoint.redirect.key]]\nid = \"k1\"\nsecret_hex = \"{KEY1}\"\n"))
        .replace("source = \"query.imp\"", "source = \"query.kid\"");
    let e = Config::parse(&text, "t.toml").unwrap_err().0;
    assert!(
        e.iter().any(|e| e.key.ends_with("redirect.signed_fields") && e.message.contains("read from query.kid")),
        "{e:?}"
    );
}

#[test]
fn sign_url_refuses_what_the_server_would_refuse() {
    let cfg = signed_config("signature");
    let r = rule(&cfg);
    let sign =
        |exp: u64, query: &str| signed_click_url(r, "https://t.test", query, "https://shop.test/p", None, exp, NOW);
    let q = "c=7&cr=1&imp=a";
    // Within signature_ttl_max_s: printed, and the server takes it.
    let u = sign(NOW + 60, q).unwrap();
    assert!(run(r, u.split_once('?').unwrap().1).is_ok());
    // 90 days ahead (past the ttl), already expired, or a signed value with a line break.
    let e = sign(NOW + 90 * 86_400, q).unwrap_err();
    assert!(e.contains("signature_ttl_max_s"), "{e}");
    assert!(sign(NOW, q).unwrap_err().contains("not in the future"));
    assert!(sign(NOW + 60, "c=7&cr=1&imp=a%0Db").unwrap_err().contains("CR or LF"));
    // Regressions: each of these was printed, and the server refused the URL (400).
    for (query, said) in [
        ("c=7&c=8&cr=1&imp=a", "c appears more than once"),
        ("c=7&cr=1&imp=a&url=x", "already has url"),
        ("c=7&cr=1&imp=a&sig=x", "already has sig"),
        ("c=7&cr=1&imp=a&exp=1", "already has exp"),
        ("c=7&cr=1&imp=a&kid=k", "already has kid"),
        ("c=7&cr=1&imp=a&site=%zz", "site: bad percent-encoding"),
    ] {
        let e = sign(NOW + 60, query).unwrap_err();
        assert!(e.contains(said), "{query}: {e}");
        let mut url = sign(NOW + 60, "c=7&cr=1&imp=a").unwrap();
        url.push('&');
        url.push_str(query.rsplit('&').next().unwrap());
        assert!(run(r, url.split_once('?').unwrap().1).is_err() || query.contains("site"), "{query}");
    }
    let long = format!("c=7&cr=1&imp={}", "a".repeat(SIGNED_VALUE_BYTES_MAX + 1));
    assert!(sign(NOW + 60, &long).unwrap_err().contains("longer than 320 bytes"));
    // Without an identity field the server answers 400 (no id to fold replays by).
    let e = sign(NOW + 60, "c=7&cr=1").unwrap_err();
    assert!(e.contains("the query has no value for imp: a signed click needs every identity field"), "{e}");
    for q in ["c=7&cr=1&imp=", "c=7&cr=1&imp=${IMP}"] {
        assert!(sign(NOW + 60, q).unwrap_err().contains("no value for imp"), "{q}");
    }
}

#[test]
fn a_signature_is_bound_to_the_endpoint_path() {
    let cfg = signed_config("signature");
    let r = rule(&cfg);
    let u = signed_click_url(r, "", "c=7&cr=1&imp=a", "https://shop.test/p", None, NOW + 60, NOW).unwrap();
    let q = u.strip_prefix("/c?").expect("the URL points at the endpoint it was signed for");
    assert!(run(r, q).is_ok());
    // The same keys on another path (a second endpoint sharing them): the URL does not verify.
    let other = RedirectRule { path: "/c2".to_string(), ..r.clone() };
    assert_eq!(run(&other, q), Err(Refused { status: 403, reason: "bad signature" }));
}
