//! Server-side ad insertion (SSAI): an ad stitcher fires the tracking requests on behalf of the
//! viewer's device and passes the device's address and user agent in `X-Device-IP` and
//! `X-Device-User-Agent`. Anyone can send those headers, so they are believed only from a
//! sender that proves it holds a configured key:
//!
//! ```text
//! X-Tracker-Auth: <kid> <ts> <sig>
//! sig = base64url-nopad( HMAC-SHA256(key, "tracker-ssai-v1" LF kid LF ts LF path LF query LF
//!                                          x-device-ip LF x-device-user-agent LF) )
//! ```
//! `ts` is unix seconds and must be within `ssai_skew_s` of our clock (a captured request cannot
//! be replayed later); `path` and `query` are the request target as sent, split at the first
//! `?` (query empty when there is none); an absent header signs as an empty line.
//!
//! Outcome: no `X-Device-IP` → nothing to do; valid → the event's client ip and user agent are
//! the device's (then truncated / hashed by the privacy step like any other; no
//! `X-Device-User-Agent` → no user agent, not the stitcher's own), and budgets
//! charge the device's prefix; valid but an address no remote viewer has (loopback,
//! unspecified, link-local, multicast, broadcast: [`usable_device_ip`]) → refused, 400
//! `X-Device-IP is not a client address`; valid but not an IP address at all (empty, a list,
//! a port, brackets) → refused, 400 `X-Device-IP is not an IP address`; both counted as
//! `ssai_device_ip_unusable`, nothing journaled. Anything else (not authenticated) → the
//! headers are ignored (the peer address is used) and the request counted as
//! `ssai_unauthenticated`. No allocation: the keyed HMAC states are cloned per request, the
//! tag compared in constant time.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::query::header;
use crate::redirect::sign::base64url_decode;

type HmacSha256 = Hmac<Sha256>;

/// The configured SSAI senders' keys.
#[derive(Clone)]
pub struct SsaiAuth {
    keys: Vec<(String, HmacSha256)>,
    pub skew_s: u64,
}

impl std::fmt::Debug for SsaiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("SsaiAuth").field("key_ids", &ids).field("skew_s", &self.skew_s).finish()
    }
}

/// What the SSAI headers of a request amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device<'a> {
    /// No `X-Device-IP`: an ordinary request.
    Absent,
    /// Authenticated: use these. `user_agent` is empty when the stitcher sent none: the
    /// request's own `User-Agent` is the stitcher's, never the device's.
    Trusted { ip: IpAddr, user_agent: &'a [u8] },
    /// Present but not authenticated (or no keys configured): ignored, counted.
    Untrusted,
    /// Authenticated, but the address cannot be a remote viewer's ([`usable_device_ip`]): a
    /// stitcher forwarding its own hop's address or an unset default. Refused (400).
    Unusable,
    /// Authenticated, but the value does not parse as an IP address (empty, a list, with a
    /// port or brackets): a stitcher bug, not an unauthenticated sender. Refused (400): falling
    /// back to the stitcher's address would journal and budget it as the viewer.
    NotAnAddress,
}

/// True when `ip` can be the address of a viewer a stitcher served from afar: not unspecified
/// (`0.0.0.0`, `::`), `0.0.0.0/8` ("this network"), loopback, link-local, multicast or the
/// broadcast address — in any of its IPv4-mapped (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::/96`)
/// forms. Such an address says nothing about the viewer, and would be budgeted wrongly:
/// loopback is exempt from budgets (`budget.exempt_loopback`), so a stitcher sending 127.0.0.1
/// had no limit; the others would put every such viewer in one shared bucket. Private and
/// shared (CGNAT) ranges are usable: an operator's own stitcher may well see its subscribers so.
pub fn usable_device_ip(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => super::budget::ipv4_inside(&v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            !(a.octets()[0] == 0 || a.is_loopback() || a.is_link_local() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            // fe80::/10, link-local unicast.
            let link_local = a.segments()[0] & 0xffc0 == 0xfe80;
            !(a.is_unspecified() || a.is_loopback() || link_local || a.is_multicast())
        }
    }
}

impl SsaiAuth {
    pub fn new(keys: Vec<(String, Vec<u8>)>, skew_s: u64) -> SsaiAuth {
        let keys = keys
            .into_iter()
            .map(|(id, k)| {
                let m = HmacSha256::new_from_slice(&k).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
                (id, m)
            })
            .collect();
        SsaiAuth { keys, skew_s }
    }

    /// Signs a request (cold path: tests, examples); returns the `X-Tracker-Auth` value.
    pub fn sign(&self, kid: &str, ts: u64, path: &[u8], query: &[u8], ip: &[u8], ua: &[u8]) -> Option<String> {
        let (_, k) = self.keys.iter().find(|(id, _)| id == kid)?;
        let ts = ts.to_string();
        let tag = message(k.clone(), kid.as_bytes(), ts.as_bytes(), path, query, ip, ua).finalize().into_bytes();
        let mut out = [0u8; crate::redirect::sign::SIG_CHARS];
        crate::redirect::sign::base64url_encode(&tag, &mut out);
        Some(format!("{kid} {ts} {}", String::from_utf8_lossy(&out)))
    }
}

fn message(mut m: HmacSha256, kid: &[u8], ts: &[u8], path: &[u8], query: &[u8], ip: &[u8], ua: &[u8]) -> HmacSha256 {
    m.update(b"tracker-ssai-v1\n");
    for part in [kid, ts, path, query, ip, ua] {
        m.update(part);
        m.update(b"\n");
    }
    m
}

/// Looks at the SSAI headers of a request. `auth` None = no keys configured.
pub fn device<'a>(
    auth: Option<&SsaiAuth>,
    path: &[u8],
    query: &[u8],
    headers: &'a [httparse::Header<'a>],
    now_s: u64,
) -> Device<'a> {
    let Some(ip_raw) = header(headers, "x-device-ip") else {
        return Device::Absent;
    };
    let Some(auth) = auth else { return Device::Untrusted };
    let ua = header(headers, "x-device-user-agent");
    let Some(value) = header(headers, "x-tracker-auth") else {
        return Device::Untrusted;
    };
    let mut parts = value.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let (Some(kid), Some(ts), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Device::Untrusted;
    };
    let Some(ts_s) = std::str::from_utf8(ts).ok().filter(|t| t.len() <= 19).and_then(|t| t.parse::<u64>().ok()) else {
        return Device::Untrusted;
    };
    if ts_s.abs_diff(now_s) > auth.skew_s {
        return Device::Untrusted;
    }
    let Some((_, key)) = auth.keys.iter().find(|(id, _)| id.as_bytes() == kid) else {
        return Device::Untrusted;
    };
    let Some(tag) = base64url_decode(sig) else { return Device::Untrusted };
    let m = message(key.clone(), kid, ts, path, query, ip_raw, ua.unwrap_or(b""));
    if m.verify_slice(&tag).is_err() {
        return Device::Untrusted;
    }
    match std::str::from_utf8(ip_raw).ok().and_then(|s| s.trim().parse::<IpAddr>().ok()) {
        Some(ip) if usable_device_ip(ip) => Device::Trusted { ip, user_agent: ua.unwrap_or(b"") },
        Some(_) => Device::Unusable,
        None => Device::NotAnAddress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use httparse::Header;

    const NOW: u64 = 1_790_000_000;

    fn auth() -> SsaiAuth {
        SsaiAuth::new(vec![("s1".into(), vec![7u8; 32])], 300)
    }

    /// The layout in docs/privacy.md, computed with Python's hmac module.
    #[test]
    fn doc_vector() {
        let a = SsaiAuth::new(vec![("st1".into(), vec![0x5a; 32])], 300);
        let v = a.sign("st1", 1_790_000_000, b"/v", b"ev=start&c=1", b"198.51.100.7", b"Roku/DVP-9.10").unwrap();
        assert_eq!(v, "st1 1790000000 Lyx-iGkAd8B8gQdM_0XIJq7umLBO2Kk8Wkw6mvwnE-Q");
    }

    #[test]
    fn trusted_only_with_a_fresh_valid_signature() {
        let a = auth();
        let sig = a.sign("s1", NOW, b"/v", b"ev=start", b"198.51.100.7", b"Roku/DVP-9.10").unwrap();
        fn h(sig: &str) -> Vec<Header<'_>> {
            vec![
                Header { name: "X-Device-IP", value: b"198.51.100.7" },
                Header { name: "X-Device-User-Agent", value: b"Roku/DVP-9.10" },
                Header { name: "X-Tracker-Auth", value: sig.as_bytes() },
            ]
        }
        let sig_owned = sig.clone();
        let hs = h(&sig_owned);
        assert_eq!(
            device(Some(&a), b"/v", b"ev=start", &hs, NOW + 10),
            Device::Trusted { ip: "198.51.100.7".parse().unwrap(), user_agent: &b"Roku/DVP-9.10"[..] }
        );
        // Another target, a stale timestamp, no keys, a wrong key id: untrusted.
        assert_eq!(device(Some(&a), b"/v", b"ev=complete", &hs, NOW), Device::Untrusted);
        assert_eq!(device(Some(&a), b"/v", b"ev=start", &hs, NOW + 301), Device::Untrusted);
        assert_eq!(device(None, b"/v", b"ev=start", &hs, NOW), Device::Untrusted);
        let wrong = sig.replacen("s1", "s2", 1);
        assert_eq!(device(Some(&a), b"/v", b"ev=start", &h(&wrong), NOW), Device::Untrusted);
        // A changed device header breaks the signature.
        let mut forged = hs.clone();
        forged[0].value = b"203.0.113.1";
        assert_eq!(device(Some(&a), b"/v", b"ev=start", &forged, NOW), Device::Untrusted);
        // No X-Device-IP: nothing to do.
        assert_eq!(device(Some(&a), b"/v", b"", &[Header { name: "User-Agent", value: b"x" }], NOW), Device::Absent);
        assert_eq!(
            device(Some(&a), b"/v", b"", &[Header { name: "X-Device-IP", value: b"1.2.3.4" }], NOW),
            Device::Untrusted
        );
        // Signed, but no viewer's address.
        let sig = a.sign("s1", NOW, b"/v", b"", b"::ffff:127.0.0.1", b"").unwrap();
        let hs = [
            Header { name: "X-Device-IP", value: b"::ffff:127.0.0.1" },
            Header { name: "X-Tracker-Auth", value: sig.as_bytes() },
        ];
        assert_eq!(device(Some(&a), b"/v", b"", &hs, NOW), Device::Unusable);
        // Signed, but not an address at all: refused too, not taken for unauthenticated.
        for raw in [&b""[..], b"nope", b"198.51.100.7, 10.0.0.1", b"198.51.100.7:443", b"[::1]", b"\xff"] {
            let sig = a.sign("s1", NOW, b"/v", b"", raw, b"").unwrap();
            let hs =
                [Header { name: "X-Device-IP", value: raw }, Header { name: "X-Tracker-Auth", value: sig.as_bytes() }];
            assert_eq!(device(Some(&a), b"/v", b"", &hs, NOW), Device::NotAnAddress, "{raw:?}");
            // Unsigned, the same value is only ignored.
            assert_eq!(device(Some(&a), b"/v", b"", &hs[..1], NOW), Device::Untrusted, "{raw:?}");
        }
    }

    #[test]
    fn device_addresses_no_remote_viewer_has_are_unusable() {
        let usable = |s: &str| usable_device_ip(s.parse().unwrap());
        for bad in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::127.0.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "169.254.169.254",
            "fe80::1",
            "febf::1",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "::ffff:0.0.0.0",
        ] {
            assert!(!usable(bad), "{bad}");
        }
        for good in [
            "198.51.100.7",
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "2001:db8::1",
            "fc00::1",
            "fec0::1",
            "64:ff9b::198.51.100.7",
        ] {
            assert!(usable(good), "{good}");
        }
    }
}
