//! Click redirects: decide whether a landing URL may be followed, and build the `Location`.
//!
//! Stage: for endpoints with `response = "redirect"`, between routing and the ring push. In: the
//! request's query, the endpoint's [`RedirectRule`], the time; out: the landing URL decoded into
//! a caller's fixed buffer, or a [`Refused`] with the 4xx status and reason. After extraction,
//! [`expand`] fills the URL's `{macros}` from the event into a second fixed buffer. Synchronous,
//! no I/O, no allocation, no panic on any input.
//!
//! What must never happen: a 3xx to a URL that did not pass the rule; a `Location` with a byte
//! that could split the response or that a browser would read as another host. The rule:
//! - the URL is parsed strictly ([`url`]): absolute http(s), plain DNS host, no user info, no
//!   backslash, no control or non-ASCII byte, no encoded control byte — anything else is 400;
//! - then, per `require`: the host is on the allowlist ([`url::Domain`]), and/or the URL carries
//!   a valid, unexpired HMAC-SHA256 signature ([`sign`]) over the endpoint's path, the URL, the
//!   signed fields and the expiry, by one of the endpoint's keys (`kid`) — a failure is 403;
//! - the parameters that decide (`url`, `sig`, `exp`, `kid`) may appear only once: two copies
//!   could be read differently by a proxy in front of us.

pub mod sign;
pub mod url;

use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{EventType, Source};
use crate::event::{format_uuid, Event};
use crate::http::query;
use crate::schema::FieldKind;

pub use sign::Key;
pub use url::Domain;

/// Longest landing URL accepted, after one percent-decoding, bytes. Browsers handle ~2 KB URLs
/// everywhere; costs this much stack per redirect request.
pub const LANDING_URL_BYTES_MAX: usize = 2048;
/// Longest `Location` after macro expansion, bytes; longer is refused (414).
pub const LOCATION_BYTES_MAX: usize = 2048;
/// The query parameters a signature brings: a landing-URL parameter or a signed field may not
/// be one of them (config/redirect.rs), and `sign-url` appends them.
pub const SIGNATURE_PARAMS: [&str; 3] = ["sig", "exp", "kid"];

/// Longest value of one signed field, bytes after percent-decoding.
pub const SIGNED_VALUE_BYTES_MAX: usize = 320;

/// Which checks a landing URL must pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Require {
    /// The host is on the allowlist.
    Allowlist,
    /// A valid signature.
    Signature,
    /// The host is on the allowlist, or a valid signature (unlisted hosts need a signature).
    Either,
    /// Both.
    Both,
}

/// An endpoint's redirect rule, validated from `[endpoint.redirect]`.
#[derive(Clone, Debug)]
pub struct RedirectRule {
    /// The endpoint's configured path: signatures are bound to it, so a key shared by two
    /// endpoints does not let a URL signed for one pass the other's rule.
    pub path: String,
    /// Query parameter carrying the landing URL (`url`).
    pub param: String,
    pub require: Require,
    pub allow: Vec<Domain>,
    pub keys: Vec<Key>,
    /// (field name, its query parameter) of each signed field, in config order.
    pub signed: Vec<(String, String)>,
    /// The query parameters of the event type's identity fields. A signed click must carry each
    /// (its id comes from them); under a rule that requires a signature they are all signed.
    pub identity_params: Vec<String>,
    /// A signature whose `exp` lies further ahead than this is refused, seconds.
    pub ttl_max_s: u64,
}

/// A landing URL that passed the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landing<'u> {
    /// Decoded, macros unexpanded.
    pub url: &'u [u8],
    /// A signature was verified: the click's signed fields are the signer's. Its event id must
    /// then come from them, not from an `id_from` value the signature does not cover.
    pub signed: bool,
}

/// Why a click is not redirected: answer `status` (400, 403 or 414) with `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Refused {
    Refused { status: 400, reason }
}

const fn forbidden(reason: &'static str) -> Refused {
    Refused { status: 403, reason }
}

/// The value of `key` in `query`, refusing a second occurrence.
fn unique<'q>(q: &'q [u8], key: &[u8], twice: &'static str) -> Result<Option<&'q [u8]>, Refused> {
    let mut found = None;
    for (k, v) in query::pairs(q) {
        if k == key {
            if found.is_some() {
                return Err(bad(twice));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

/// Checks the request's landing URL against `rule`; on success returns it, decoded into `buf`.
pub fn check<'u>(
    rule: &RedirectRule,
    q: &[u8],
    now_s: u64,
    buf: &'u mut [u8; LANDING_URL_BYTES_MAX],
) -> Result<Landing<'u>, Refused> {
    let raw = unique(q, rule.param.as_bytes(), "the landing URL parameter appears more than once")?
        .ok_or(bad("missing landing URL"))?;
    let n = match query::percent_decode(raw, &mut buf[..]) {
        Ok(n) => n,
        Err(query::DecodeError::TooLong) => return Err(Refused { status: 414, reason: "landing URL too long" }),
        Err(query::DecodeError::BadEscape) => return Err(bad("landing URL has a bad percent-escape")),
    };
    let landing = &buf[..n];
    let host = url::parse(landing).map_err(bad)?;
    let listed = url::allowed(&rule.allow, host);
    const NOT_LISTED: Refused = forbidden("landing domain is not allowed");
    let signed = match rule.require {
        Require::Allowlist if !listed => return Err(NOT_LISTED),
        Require::Allowlist => false,
        Require::Either if listed => false,
        Require::Both if !listed => return Err(NOT_LISTED),
        Require::Signature | Require::Either | Require::Both => {
            verify(rule, q, landing, now_s)?;
            true
        }
    };
    Ok(Landing { url: landing, signed })
}

/// Verifies `sig` / `exp` / `kid`.
fn verify(rule: &RedirectRule, q: &[u8], landing: &[u8], now_s: u64) -> Result<(), Refused> {
    let sig = unique(q, b"sig", "sig appears more than once")?.ok_or(forbidden("missing signature (sig)"))?;
    let exp = unique(q, b"exp", "exp appears more than once")?.ok_or(forbidden("missing expiry (exp)"))?;
    let kid = unique(q, b"kid", "kid appears more than once")?.ok_or(forbidden("missing key id (kid)"))?;
    let exp_s = parse_exp(exp).ok_or(bad("exp is not canonical decimal unix seconds"))?;
    if exp_s < now_s {
        return Err(forbidden("signature expired"));
    }
    if exp_s - now_s > rule.ttl_max_s {
        return Err(forbidden("signature expiry is too far ahead"));
    }
    let key = rule.keys.iter().find(|k| k.id.as_bytes() == kid).ok_or(forbidden("unknown key id (kid)"))?;
    let tag = sign::base64url_decode(sig).ok_or(forbidden("bad signature"))?;
    let mut m = key.start(rule.path.as_bytes(), exp, landing);
    let mut v = [0u8; SIGNED_VALUE_BYTES_MAX];
    for (name, param) in &rule.signed {
        let n = match unique(q, param.as_bytes(), "a signed field appears more than once")? {
            None => 0,
            Some(raw) => query::percent_decode(raw, &mut v).map_err(|_| bad("a signed field is malformed"))?,
        };
        if v[..n].iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(bad("a signed field contains a line break"));
        }
        m.field(name.as_bytes(), &v[..n]);
    }
    if m.verify(&tag) {
        Ok(())
    } else {
        Err(forbidden("bad signature"))
    }
}

/// Canonical decimal: digits only, no leading zero (one encoding per value), fits u64.
fn parse_exp(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || (s.len() > 1 && s[0] == b'0') {
        return None;
    }
    s.iter().try_fold(0u64, |v, &c| c.is_ascii_digit().then(|| v * 10 + u64::from(c - b'0')))
}

/// Copies `template` into `out`, replacing each `{name}` by the event's value, percent-encoded
/// (RFC 3986 unreserved characters kept, every other byte as %XX): `{event_id}` and
/// `{click_id}` are the event id as a UUID; `{field}` is a field of the event type (empty when
/// the request had no value). An unknown `{name}` is copied as it is. Returns the length, or 414
/// when the result would be longer than `out`.
///
/// `signed`: the landing URL passed a signature, so its signer wrote it. Otherwise the URL is
/// whatever the requester sent (on an allowlisted host), and only the id and fields read from
/// the query, which the requester sent too, are filled: a header, cookie or address field
/// (the clicking browser's own id, its IP) expands empty rather than go to a URL of the
/// requester's choosing.
pub fn expand(template: &[u8], ev: &Event, ty: &EventType, signed: bool, out: &mut [u8]) -> Result<usize, Refused> {
    const LONG: Refused = Refused { status: 414, reason: "landing URL too long after macros" };
    let mut w = Cursor { out, n: 0 };
    // A `}` further than the longest name cannot close a macro: looking no further keeps a
    // template of many `{` linear.
    let longest = ty.fields.iter().map(|f| f.name.len()).max().unwrap_or(0).max("click_id".len());
    let mut i = 0;
    while i < template.len() {
        let c = template[i];
        if c == b'{' {
            if let Some(len) = template[i + 1..].iter().take(longest + 1).position(|&b| b == b'}') {
                let name = &template[i + 1..i + 1 + len];
                if value(name, ev, ty, signed, &mut w).ok_or(LONG)? {
                    i += len + 2;
                    continue;
                }
            }
        }
        w.raw(&[c]).ok_or(LONG)?;
        i += 1;
    }
    Ok(w.n)
}

struct Cursor<'o> {
    out: &'o mut [u8],
    n: usize,
}

impl Cursor<'_> {
    #[inline]
    fn raw(&mut self, b: &[u8]) -> Option<()> {
        let dst = self.out.get_mut(self.n..self.n + b.len())?;
        dst.copy_from_slice(b);
        self.n += b.len();
        Some(())
    }

    fn encoded(&mut self, b: &[u8]) -> Option<()> {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for &c in b {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                self.raw(&[c])?;
            } else {
                self.raw(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]])?;
            }
        }
        Some(())
    }
}

/// Writes macro `name`'s value; Some(false) when `name` is not a macro, None when out of room.
fn value(name: &[u8], ev: &Event, ty: &EventType, signed: bool, w: &mut Cursor<'_>) -> Option<bool> {
    if name == b"event_id" || name == b"click_id" {
        let mut id = [0u8; 36];
        format_uuid(&ev.id, &mut id);
        w.raw(&id)?;
        return Some(true);
    }
    let Some(f) = ty.fields.iter().find(|f| f.name.as_bytes() == name) else {
        return Some(false);
    };
    if !ev.has(f.slot) || !(signed || matches!(f.source, Source::Query(_))) {
        return Some(true);
    }
    let mut tmp = [0u8; 48];
    let v = ev.slots[f.slot];
    let text: &[u8] = match f.kind {
        FieldKind::Str => return w.encoded(ev.str_at(f.slot, f.offset, f.max)).map(|_| true),
        FieldKind::U64 | FieldKind::U32 => fmt(&mut tmp, format_args!("{v}")),
        FieldKind::I64 => fmt(&mut tmp, format_args!("{}", v as i64)),
        FieldKind::Money => {
            let m = v as i64;
            let (sign, a) = if m < 0 { ("-", m.unsigned_abs()) } else { ("", m as u64) };
            let (whole, frac) = (a / 1_000_000, a % 1_000_000);
            let t = fmt(&mut tmp, format_args!("{sign}{whole}.{frac:06}"));
            let keep = t.iter().rposition(|&c| c != b'0').map_or(t.len(), |p| p + 1);
            let t = &t[..keep];
            t.strip_suffix(b".").unwrap_or(t)
        }
        FieldKind::Ip => {
            let b = &ev.bytes[f.offset..f.offset + 16];
            if v == 4 {
                fmt(&mut tmp, format_args!("{}", Ipv4Addr::new(b[0], b[1], b[2], b[3])))
            } else {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                fmt(&mut tmp, format_args!("{}", Ipv6Addr::from(a)))
            }
        }
    };
    w.encoded(text).map(|_| true)
}

/// Formats into a stack buffer (no allocation); the buffer is sized for every value above.
fn fmt<'t>(tmp: &'t mut [u8; 48], args: std::fmt::Arguments<'_>) -> &'t [u8] {
    let mut s = &mut tmp[..];
    let _ = s.write_fmt(args);
    let left = s.len();
    &tmp[..48 - left]
}

/// Builds a signed click URL (cold path: `tracker sign-url`, tests, examples): `base` (scheme
/// and host, or empty), the rule's endpoint path (the one the signature binds, so the printed
/// URL cannot point at another endpoint than it was signed for), `?`, `query` (already-encoded
/// pairs such as `c=1&cr=2`), then `url`, `exp`, `kid`, `sig`. The signed field values are read
/// back from `query` exactly as the server will read them. Refuses what the server would refuse at `now_s`: an expiry in the past or beyond
/// `signature_ttl_max_s`, a signed value with CR or LF.
pub fn signed_click_url(
    rule: &RedirectRule,
    base: &str,
    query: &str,
    landing: &str,
    kid: Option<&str>,
    exp_s: u64,
    now_s: u64,
) -> Result<String, String> {
    url::parse(landing.as_bytes()).map_err(|why| format!("the server would refuse this URL: {why}"))?;
    // The server refuses an expiry in the past or more than signature_ttl_max_s ahead: a URL it
    // would answer 403 for days is not printed.
    if exp_s <= now_s {
        return Err(format!("expiry {exp_s} is not in the future (now {now_s})"));
    }
    if exp_s - now_s > rule.ttl_max_s {
        return Err(format!(
            "expiry {exp_s} is {} s ahead: the server refuses more than this endpoint's signature_ttl_max_s ({} s); \
             sign for a shorter time or raise signature_ttl_max_s",
            exp_s - now_s,
            rule.ttl_max_s
        ));
    }
    if landing.len() > LANDING_URL_BYTES_MAX {
        return Err(format!("landing URL is {} bytes: at most {LANDING_URL_BYTES_MAX}", landing.len()));
    }
    let key = match kid {
        Some(id) => rule.keys.iter().find(|k| k.id == id).ok_or_else(|| {
            let ids: Vec<&str> = rule.keys.iter().map(|k| k.id.as_str()).collect();
            format!("no key \"{id}\" on this endpoint (keys: {})", ids.join(", "))
        })?,
        None => rule.keys.last().ok_or("this endpoint has no [[endpoint.redirect.key]]")?,
    };
    // What the server refuses in the rest of the query: the parameters this call appends, a
    // value that is not valid percent-encoding (every field's extraction refuses it).
    let q = query.as_bytes();
    for (k, v) in query::pairs(q) {
        for own in std::iter::once(rule.param.as_str()).chain(SIGNATURE_PARAMS).map(str::as_bytes) {
            if k == own {
                return Err(format!(
                    "the query already has {}: sign-url appends it, and the server refuses a click URL with it twice",
                    String::from_utf8_lossy(own)
                ));
            }
        }
        if query::percent_decode_truncating(v, &mut [0u8; 64]).is_err() {
            return Err(format!("{}: bad percent-encoding", String::from_utf8_lossy(k)));
        }
    }
    // As the server reads it (extract): the first occurrence that is neither empty nor a macro.
    let has_value =
        |p: &str| query::pairs(q).any(|(k, v)| k == p.as_bytes() && !v.is_empty() && !crate::extract::is_macro(v));
    if let Some(p) = rule.identity_params.iter().find(|p| !has_value(p)) {
        return Err(format!(
            "the query has no value for {p}: a signed click needs every identity field of its event type (its id \
             comes from them, so replays of one URL fold into one click); the server would answer 400"
        ));
    }
    let exp = exp_s.to_string();
    let mut m = key.start(rule.path.as_bytes(), exp.as_bytes(), landing.as_bytes());
    for (name, param) in &rule.signed {
        let mut v = vec![0u8; SIGNED_VALUE_BYTES_MAX];
        let raw = unique(q, param.as_bytes(), "")
            .map_err(|_| format!("{param} appears more than once: the server refuses a signed field given twice"))?;
        let n = match raw {
            None => 0,
            Some(raw) => query::percent_decode(raw, &mut v).map_err(|_| {
                format!("{param}: its value is longer than {SIGNED_VALUE_BYTES_MAX} bytes decoded, the most a signed field may hold")
            })?,
        };
        if v[..n].iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(format!("{param}: a signed value may not hold CR or LF"));
        }
        m.field(name.as_bytes(), &v[..n]);
    }
    let sig = m.finish();
    let mut enc = vec![0u8; landing.len() * 3];
    let mut w = Cursor { out: &mut enc, n: 0 };
    w.encoded(landing.as_bytes()).ok_or("landing URL too long")?;
    let n = w.n;
    let sep = if query.is_empty() { "" } else { "&" };
    Ok(format!(
        "{base}{}?{query}{sep}{}={}&exp={exp}&kid={}&sig={}",
        rule.path,
        rule.param,
        String::from_utf8_lossy(&enc[..n]),
        key.id,
        String::from_utf8_lossy(&sig)
    ))
}

#[cfg(test)]
mod tests;
