//! Strict landing-URL syntax and the domain allowlist.
//!
//! In: the landing URL after exactly one percent-decoding of the query parameter. Out: the host
//! (a sub-slice) or why the URL is unsafe to put in a `Location` header. Browsers repair
//! malformed URLs in surprising ways (WHATWG URL: `\` is `/`, tabs and newlines are dropped,
//! `https:evil.com` and `https:///evil.com` both reach evil.com, `good.com@evil.com` is evil.com),
//! so instead of parsing the way a browser would we accept only a small, unambiguous subset and
//! refuse everything else:
//!
//! ```text
//! landing  = scheme "://" host [ ":" port ] [ rest ]
//! scheme   = "http" / "https"                       (ASCII case-insensitive)
//! host     = label *( "." label )                   (1..=253 bytes, letters, digits, '-')
//! label    = 1..=63 of [A-Za-z0-9-], not starting or ending with '-'
//!            the last label is alphabetic or "xn--…" (so no IPv4 in any notation)
//! port     = 1..=5 digits, 1..=65535
//! rest     = ( "/" / "?" / "#" ) *( visible ASCII except '\' )
//!            where every '%' starts a %XX escape that does not encode a control byte or '\'
//! ```
//! Nothing here allocates or panics; the caller bounds the length.

/// Why a landing URL was refused: the 400 reason text.
pub type Why = &'static str;

/// Validates `url` and returns its host.
pub fn parse(url: &[u8]) -> Result<&[u8], Why> {
    if url.is_empty() {
        return Err("landing URL is empty");
    }
    for &b in url {
        if b == b'\\' {
            return Err("landing URL contains a backslash");
        }
        if !(0x21..=0x7e).contains(&b) {
            return Err("landing URL contains a space, control or non-ASCII byte");
        }
    }
    check_escapes(url)?;
    let rest = strip_prefix_ci(url, b"https://")
        .or_else(|| strip_prefix_ci(url, b"http://"))
        .ok_or("landing URL must start with http:// or https://")?;
    let end = rest.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.contains(&b'@') {
        return Err("landing URL has user info (@) before the host");
    }
    if authority.contains(&b'%') {
        return Err("landing URL host is percent-encoded");
    }
    let (host, port) = match authority.iter().position(|&b| b == b':') {
        Some(p) => (&authority[..p], Some(&authority[p + 1..])),
        None => (authority, None),
    };
    if let Some(port) = port {
        let ok = !port.is_empty()
            && port.len() <= 5
            && port.iter().all(u8::is_ascii_digit)
            && (1..=65535).contains(&port.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0')));
        if !ok {
            return Err("landing URL port is not a number in 1..=65535");
        }
    }
    check_host(host)?;
    Ok(host)
}

/// Host name rules (see the module grammar); also used for allowlist entries.
pub fn check_host(host: &[u8]) -> Result<(), Why> {
    if host.is_empty() {
        return Err("landing URL has no host");
    }
    if host.len() > 253 {
        return Err("landing URL host is longer than 253 bytes");
    }
    let mut last: &[u8] = b"";
    for label in host.split(|&b| b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err("landing URL host has an empty or over-long label");
        }
        if !label.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("landing URL host has a byte other than letters, digits, '-' and '.'");
        }
        if label[0] == b'-' || label[label.len() - 1] == b'-' {
            return Err("landing URL host label starts or ends with '-'");
        }
        last = label;
    }
    let tld_ok = last.iter().all(u8::is_ascii_alphabetic) || strip_prefix_ci(last, b"xn--").is_some();
    if !tld_ok {
        return Err("landing URL host is an IP address or has a numeric top-level label");
    }
    Ok(())
}

/// Every `%` must start `%XX`; the escaped byte may not be a control byte or a backslash
/// (a double-encoded `%250d%250a` arrives here as `%0d%0a`).
fn check_escapes(url: &[u8]) -> Result<(), Why> {
    let mut i = 0;
    while i < url.len() {
        if url[i] == b'%' {
            let hi = url.get(i + 1).and_then(|&c| hex(c));
            let lo = url.get(i + 2).and_then(|&c| hex(c));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err("landing URL has a '%' that is not a %XX escape");
            };
            let b = hi << 4 | lo;
            if b < 0x20 || b == 0x7f || b == b'\\' {
                return Err("landing URL has an encoded control byte or backslash");
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)).then(|| &s[prefix.len()..])
}

/// One allowlist entry: `example.com` matches that host only; `*.example.com` matches every
/// subdomain of it (`a.example.com`, `a.b.example.com`) but not `example.com` itself — list
/// both to allow both. Hosts compare ASCII case-insensitively (DNS names are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Lower-case host, without the `*.`.
    pub host: String,
    pub subdomains: bool,
}

/// Second-level labels registries sell names under (`co.uk`, `com.au`, `ne.jp`, …).
const REGISTRY_LABELS: [&str; 10] = ["co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go"];

/// A suffix anyone can register names under, without a public-suffix list: a single label
/// (`com`), or a registry label under a two-letter country code (`co.uk`, `com.br`). Not the
/// whole list, but a wildcard over one of these is never what an allowlist means.
fn is_public_suffix_like(host: &str) -> bool {
    match host.split_once('.') {
        None => true,
        Some((second, cc)) => cc.len() == 2 && !cc.contains('.') && REGISTRY_LABELS.contains(&second),
    }
}

impl Domain {
    /// Parses a config entry; `Err` says what is wrong with it.
    pub fn parse(entry: &str) -> Result<Domain, String> {
        if entry == "*" || entry == "*." {
            return Err(
                "\"*\" would allow every domain (an open redirect); list domains, or use require = \"signature\""
                    .into(),
            );
        }
        let (host, subdomains) = match entry.strip_prefix("*.") {
            Some(h) => (h, true),
            None => (entry, false),
        };
        if subdomains && is_public_suffix_like(host) {
            return Err(format!(
                "\"{entry}\" would allow every domain under a public suffix (an open redirect); list the advertisers' \
                 domains, e.g. \"*.shop.{host}\""
            ));
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!("\"{entry}\" must be lower case"));
        }
        check_host(host.as_bytes())
            .map_err(|why| format!("\"{entry}\": {}", why.trim_start_matches("landing URL ")))?;
        Ok(Domain { host: host.to_string(), subdomains })
    }

    #[inline]
    pub fn matches(&self, host: &[u8]) -> bool {
        let d = self.host.as_bytes();
        if !self.subdomains {
            return host.eq_ignore_ascii_case(d);
        }
        host.len() > d.len() + 1
            && host[host.len() - d.len()..].eq_ignore_ascii_case(d)
            && host[host.len() - d.len() - 1] == b'.'
    }
}

/// Whether any entry allows `host`. An empty list allows nothing.
#[inline]
pub fn allowed(list: &[Domain], host: &[u8]) -> bool {
    list.iter().any(|d| d.matches(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_http_and_https_urls() {
        for (url, host) in [
            ("https://example.com", "example.com"),
            ("https://example.com/", "example.com"),
            ("http://www.example.com:8080/a/b?x=1&y=%20z#frag", "www.example.com"),
            ("HTTPS://WWW.Example.COM/Path", "WWW.Example.COM"),
            ("https://shop.example.com?q={campaign_id}", "shop.example.com"),
            ("https://xn--bcher-kva.example/", "xn--bcher-kva.example"),
        ] {
            assert_eq!(parse(url.as_bytes()), Ok(host.as_bytes()), "{url}");
        }
    }

    #[test]
    fn refuses_every_known_trick() {
        for url in [
            "",
            "//evil.com",
            "/\\evil.com",
            "\\\\evil.com",
            "/evil",
            "https:evil.com",
            "https:/evil.com",
            "https:///evil.com",
            "https:\\\\evil.com",
            "https://good.com@evil.com",
            "https://good.com:443@evil.com/",
            "https://good.com%40evil.com",
            "https://evil.com\\@good.com",
            "https://ex%61mple.com/",
            "javascript:alert(1)",
            "JaVaScRiPt:alert(1)",
            "data:text/html,<script>alert(1)</script>",
            "ftp://example.com/",
            " https://example.com",
            "https://example.com/\r\nSet-Cookie:x=1",
            "https://example.com/\n",
            "https://exa\tmple.com/",
            "https://example.com/%0d%0aSet-Cookie:x=1",
            "https://example.com/%00",
            "https://example.com/%5c",
            "https://example.com/%zz",
            "https://example.com/%4",
            "https://example.com/\u{7f}",
            "https://еxample.com/",
            "https://[::1]/",
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://example.com./",
            "https://-example.com/",
            "https://example..com/",
            "https://example.com:0/",
            "https://example.com:65536/",
            "https://example.com:/",
            "https://example.com:80x/",
            "https://",
            "https://?x",
        ] {
            assert!(parse(url.as_bytes()).is_err(), "accepted {url:?}");
        }
    }

    #[test]
    fn allowlist_matches_exactly_or_by_explicit_subdomain() {
        let list = [Domain::parse("example.com").unwrap(), Domain::parse("*.example.org").unwrap()];
        let ok = |h: &str| allowed(&list, h.as_bytes());
        assert!(ok("example.com"));
        assert!(ok("EXAMPLE.com"));
        assert!(!ok("www.example.com"), "no subdomains without *.");
        assert!(!ok("example.org"), "*. does not match the apex");
        assert!(ok("www.example.org"));
        assert!(ok("a.b.example.org"));
        assert!(!ok("evilexample.org"));
        assert!(!ok("example.org.evil.com"));
        assert!(!ok("example.com.evil.com"));
        assert!(!allowed(&[], b"example.com"), "an empty allowlist allows nothing");
    }

    #[test]
    fn allowlist_entries_are_validated() {
        assert!(Domain::parse("*").is_err());
        assert!(Domain::parse("Example.com").is_err());
        assert!(Domain::parse("*.*.example.com").is_err());
        assert!(Domain::parse("ex*ample.com").is_err());
        assert!(Domain::parse("10.0.0.1").is_err());
        assert_eq!(Domain::parse("*.example.com").unwrap(), Domain { host: "example.com".into(), subdomains: true });
    }
}
