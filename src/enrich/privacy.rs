//! Privacy: what of a person may leave the request path.
//!
//! Stage: right after extraction, before anything else looks at the event (dedup, the ring).
//! In: the extracted event, the request headers, the time; out: the same event with
//! - every `ip` field truncated to its prefix (IPv4 /24, IPv6 /48 by default) or removed;
//! - every user-id field replaced by a keyed hash: 32 hex digits of
//!   HMAC-SHA256(period key, raw value), where the period key is
//!   HMAC-SHA256(master key, "tracker-uid-v1\n" + period) and period = unix seconds /
//!   `hash_rotate_s`. Every shard and every process with the same master key derives the same
//!   period key without coordinating; after a rotation the same user hashes differently, so
//!   ids cannot be joined across periods. The raw value is overwritten in place (its whole
//!   byte range zeroed first), so it never reaches the ring, the journal or a collector;
//! - every referer field (`request.referer`, `header.referer`) trimmed in place to what
//!   `privacy.referer` keeps (`trim_referer`): by default its path, without the query and
//!   fragment, where pages put emails, search terms and session or reset tokens;
//! - on an opt-out signal (`Sec-GPC: 1`, `DNT: 1`, or the configured opt-out cookie present and
//!   not "0"/"false"), the user-id, ip and referer fields removed and the event flagged
//!   `opted_out`;
//! - with `gdpr = "enforce"`, the same for an event whose gdpr field is set (not 0) and whose
//!   consent field holds no IAB TCF v2 consent to Purpose 1 ([`tcf`]) or, with
//!   `tcf_vendor_id` set, none to that vendor: the caller counts it (reason
//!   `gdpr_no_consent`);
//! - an id derived from an identity field this step removed or changed (an ip field under
//!   opt-out, allowed as identity with `ip = "keep"`; a referer field not kept in full)
//!   re-keyed: HMAC-SHA256(period key, "tracker-id-v1\n" + id), cut to 128 bits. The derived
//!   id is an unkeyed hash of the raw values (made before this step), so left alone it would
//!   give back what was removed; keyed, repeats inside one period are still one id for the
//!   dedup window.
//!
//! No allocation: the period key is re-derived on the stack when the period changes (once per
//! `hash_rotate_s` per shard), the hash is written straight into the field's bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{EventType, PrivacyConfig};
use crate::enrich::tcf;
use crate::event::{Event, FLAG_ID_DERIVED, FLAG_OPTED_OUT, FLAG_TRUNCATED};
use crate::extract::{self, RequestView};
use crate::schema::FieldKind;

type HmacSha256 = Hmac<Sha256>;

/// Hex digits a hashed user id takes in its field (128 bits).
pub const USER_HASH_CHARS: usize = 32;

/// What to do with `ip` fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpPolicy {
    Truncate,
    Drop,
    Keep,
}

/// Most of a consent string the vendor check reads from the request when the consent field cut
/// it: a core segment longer than this (or a longer string without a '.') gives no vendor
/// consent. The core segment of a TCF string consenting to every one of ~1400 vendors by
/// bitfield, with a legitimate-interest bitfield as long, is ~500 characters.
const TCF_AS_SENT_BYTES: usize = 2048;

/// `privacy.gdpr`: what the GDPR consent fields are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GdprMode {
    /// Stored as any field; nothing acts on them.
    Record,
    /// GDPR applies and no TCF v2 consent to Purpose 1 (and to `tcf_vendor_id`, when set):
    /// handled as an opt-out.
    Enforce,
}

/// Where one event type holds the GDPR signals (`privacy.gdpr_field`,
/// `privacy.gdpr_consent_field`): indexes into its `fields`, None = the type has no such field.
/// Checked at config load: `applies` is a u32 field, `consent` a string field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GdprFields {
    pub applies: Option<u8>,
    pub consent: Option<u8>,
}

// A field index fits the u8 of `GdprFields`.
const _: () = assert!(crate::constants::FIELDS_MAX <= u8::MAX as usize);

/// What to do with referer fields (source `request.referer` or `header.referer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefererPolicy {
    /// `scheme://host[:port]/path`: no query, no fragment, no userinfo.
    Path,
    /// `scheme://host[:port]`.
    Origin,
    /// As received.
    Full,
    /// Never stored.
    Drop,
}

impl RefererPolicy {
    /// As written in `privacy.referer`.
    pub fn config_name(self) -> &'static str {
        match self {
            RefererPolicy::Path => "path",
            RefererPolicy::Origin => "origin",
            RefererPolicy::Full => "full",
            RefererPolicy::Drop => "drop",
        }
    }
}

/// Rewrites the referer `v` in place as `policy` says and returns how many bytes of `v` to
/// keep; 0 = store nothing. Bytes past the returned length are stale and must be zeroed by the
/// caller. The rewrite only removes bytes (a prefix kept, userinfo taken out of the middle), so
/// the value is unchanged exactly when the returned length is `v.len()`.
///
/// - `Path`: everything before the first `?` or `#`, whatever the shape of the value (a
///   relative reference, `android-app://…`, garbage alike); with a `scheme://` or `//` shape,
///   any userinfo (`user:pass@`) removed too, and nothing kept when its host is empty.
/// - `Origin`: only a value of the `scheme://host` shape (any scheme: `android-app://com.x`
///   is what Android apps send) or `//host` keeps that prefix and its authority, which ends at
///   the first `/`, `\`, `?` or `#` (`\` is a `/` to browsers), userinfo removed; anything
///   else: nothing.
/// - `Full`: all of it; `Drop`: nothing.
///
/// `%3F` and `%23` are not delimiters: the value is matched as sent, never decoded.
///
/// `cut`: `v` may have lost its tail to the field's `max_bytes`. If its authority then runs
/// to the end of `v`, the `@` that would show the start to be userinfo may be in the lost
/// tail: nothing is kept under `Path` and `Origin` rather than a possible password.
pub fn trim_referer(v: &mut [u8], policy: RefererPolicy, cut: bool) -> usize {
    let query_or_fragment = |b: &u8| *b == b'?' || *b == b'#';
    match policy {
        RefererPolicy::Full => return v.len(),
        RefererPolicy::Drop => return 0,
        RefererPolicy::Path | RefererPolicy::Origin => {}
    }
    let Some(start) = authority_start(v) else {
        return match policy {
            RefererPolicy::Path => v.iter().position(query_or_fragment).unwrap_or(v.len()),
            _ => 0,
        };
    };
    let mut end =
        v[start..].iter().position(|&b| matches!(b, b'/' | b'\\' | b'?' | b'#')).map_or(v.len(), |p| start + p);
    if cut && end == v.len() {
        return 0;
    }
    let mut len = v.len();
    // The last '@' (as browsers parse it), so a stray '@' in the userinfo leaves none of it.
    if let Some(at) = v[start..end].iter().rposition(|&b| b == b'@') {
        let host = start + at + 1;
        v.copy_within(host..len, start);
        len -= host - start;
        end -= host - start;
    }
    if end == start {
        return 0;
    }
    match policy {
        RefererPolicy::Origin => end,
        _ => v[end..len].iter().position(query_or_fragment).map_or(len, |p| end + p),
    }
}

/// Where the authority of `scheme://authority…` starts: RFC 3986's scheme (a letter, then
/// letters, digits, '+', '-', '.') followed by "://", or a network-path reference
/// (`//authority…`, which RFC 9110 allows as a Referer); None for any other shape.
fn authority_start(v: &[u8]) -> Option<usize> {
    if v.starts_with(b"//") {
        return Some(2);
    }
    let colon = v.iter().position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))?;
    (colon > 0 && v[0].is_ascii_alphabetic() && v[colon..].starts_with(b"://")).then_some(colon + 3)
}

/// Why the privacy step removed an event's user ids, ips and referers (flagged `opted_out`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptOut {
    /// `Sec-GPC: 1`, `DNT: 1` or the opt-out cookie.
    Signal,
    /// `gdpr = "enforce"`: GDPR applies and the request carries no TCF v2 consent to Purpose 1
    /// (or, with `tcf_vendor_id` set, none to that vendor).
    NoGdprConsent,
}

/// One shard's privacy step: the config and the current period's key.
pub struct Privacy {
    cfg: PrivacyConfig,
    period: u64,
    period_mac: Option<HmacSha256>,
    /// Searcher for the opt-out cookie's name, built once: most Cookie headers do not hold it,
    /// and one SIMD search says so without splitting the header into pairs.
    optout_finder: Option<memchr::memmem::Finder<'static>>,
}

impl Privacy {
    pub fn new(cfg: PrivacyConfig) -> Privacy {
        let optout_finder = (!cfg.optout_cookie.is_empty())
            .then(|| memchr::memmem::Finder::new(cfg.optout_cookie.as_bytes()).into_owned());
        Privacy { cfg, period: u64::MAX, period_mac: None, optout_finder }
    }

    /// Applies the policy to `ev` (of type `ty`) in place; says why its identifiers were
    /// removed, if they were. A signal is looked for first: an event it opts out is not also
    /// one without consent (its consent string is then not read).
    pub fn apply(&mut self, ty: &EventType, req: &RequestView<'_>, ev: &mut Event) -> Option<OptOut> {
        let now_ns = req.now_ns;
        let opt_out = if self.opted_out(req.headers) {
            Some(OptOut::Signal)
        } else if self.cfg.gdpr == GdprMode::Enforce && !self.gdpr_consented(ty, req, ev) {
            Some(OptOut::NoGdprConsent)
        } else {
            None
        };
        // One path for both: without consent to store or read the device (TCF Purpose 1) the
        // uid cookie should not have been read, so the event keeps what an opted-out one does.
        let opted_out = opt_out.is_some();
        if opted_out {
            ev.flags |= FLAG_OPTED_OUT;
        }
        // An identity field whose value this step removes or changes: the derived id, an
        // unkeyed hash of the raw values, must not keep what the step took out.
        let mut identity_changed = false;
        // The consent string goes with the ids: its creation and update times (to the tenth of a
        // second) and vendor choices are one browser's until it consents again, so kept it
        // would single out the user the event no longer names (and join one user's events
        // across the hash periods). The flag and the gdpr field say why the ids are gone.
        let consent = self.cfg.gdpr_fields.get(ty.id as usize).and_then(|g| g.consent).map(usize::from);
        for (i, f) in ty.fields.iter().enumerate() {
            if !ev.has(f.slot) {
                continue;
            }
            if opted_out && consent == Some(i) {
                identity_changed |= ty.identity.contains(&i);
                clear(ev, f.slot, f.offset, f.max);
            } else if f.kind == FieldKind::Ip {
                if opted_out || self.cfg.ip != IpPolicy::Keep {
                    identity_changed |= ty.identity.contains(&i);
                }
                if opted_out || self.cfg.ip == IpPolicy::Drop {
                    clear(ev, f.slot, f.offset, f.max);
                } else if self.cfg.ip == IpPolicy::Truncate {
                    let bytes = &mut ev.bytes[f.offset..f.offset + 16];
                    let bits = if ev.slots[f.slot] == 4 {
                        self.cfg.ipv4_prefix_bits
                    } else if bytes[..2] == [0x20, 0x02] {
                        // 6to4 (2002::/16, RFC 3056) carries the whole IPv4 address of its site
                        // in bits 16..48, which an IPv6 /48 would keep: cut that address as an
                        // IPv4 one.
                        self.cfg.ipv6_prefix_bits.min(16 + self.cfg.ipv4_prefix_bits)
                    } else {
                        self.cfg.ipv6_prefix_bits
                    };
                    // The address as one big-endian u128 (IPv4 in its first 4 bytes), its
                    // first `bits` bits kept: one mask, no loop over the bytes.
                    let mask = u128::MAX.checked_shl(128 - u32::from(bits.min(128))).unwrap_or(0);
                    let kept = u128::from_be_bytes((&*bytes).try_into().expect("16 bytes")) & mask;
                    bytes.copy_from_slice(&kept.to_be_bytes());
                }
            } else if f.user_id {
                identity_changed |= ty.identity.contains(&i);
                if opted_out {
                    clear(ev, f.slot, f.offset, f.max);
                } else {
                    self.hash_in_place(ev, f.slot, f.offset, f.max, now_ns);
                }
            } else if f.referer {
                // Opted out: removed whatever the mode, as an ip is.
                let policy = if opted_out { RefererPolicy::Drop } else { self.cfg.referer };
                if policy != RefererPolicy::Full {
                    identity_changed |= ty.identity.contains(&i);
                }
                let len = ev.slots[f.slot] as usize;
                debug_assert!(len <= f.max);
                // `extract` cuts a long value at max_bytes, then back to a whole UTF-8
                // character (at most 3 bytes less), and flags the event.
                let cut = ev.flags & FLAG_TRUNCATED != 0 && len + 4 > f.max;
                let kept = trim_referer(&mut ev.bytes[f.offset..f.offset + len], policy, cut);
                if kept == 0 {
                    clear(ev, f.slot, f.offset, f.max);
                } else {
                    debug_assert!(kept <= len);
                    ev.bytes[f.offset + kept..f.offset + len].fill(0);
                    ev.slots[f.slot] = kept as u64;
                }
            }
        }
        if identity_changed && ev.flags & FLAG_ID_DERIVED != 0 {
            let mut m = self.period_mac(now_ns).clone();
            m.update(b"tracker-id-v1\n");
            m.update(&ev.id);
            let tag = m.finalize().into_bytes();
            ev.id.copy_from_slice(&tag[..16]);
            // Still a UUIDv8, as every derived id.
            ev.id[6] = (ev.id[6] & 0x0f) | 0x80;
            ev.id[8] = (ev.id[8] & 0x3f) | 0x80;
        }
        opt_out
    }

    /// Under `gdpr = "enforce"`: false when GDPR applies to the event and its consent field
    /// does not hold a TCF v2 string consenting to Purpose 1 and, with `tcf_vendor_id` set, to
    /// that vendor (absent, empty, unreadable, a core segment longer than TCF_AS_SENT_BYTES, or
    /// a type without a consent field included). GDPR applies when the gdpr field is set (any
    /// value but 0); with no gdpr value, or in a type with a consent field and no gdpr field,
    /// only under `gdpr_unknown = "applies"`. gdpr=0: true, the request says it does not apply.
    fn gdpr_consented(&self, ty: &EventType, req: &RequestView<'_>, ev: &Event) -> bool {
        let Some(at) = self.cfg.gdpr_fields.get(ty.id as usize) else { return true };
        let unknown = self.cfg.gdpr_unknown_applies;
        let applies = match at.applies.and_then(|i| ty.fields.get(i as usize)) {
            Some(f) if ev.has(f.slot) => ev.slots[f.slot] != 0,
            Some(_) => unknown,
            // A type with neither field has nothing to judge by: never affected.
            None => unknown && at.consent.is_some(),
        };
        if !applies {
            return true;
        }
        let Some(c) = at.consent.and_then(|i| ty.fields.get(i as usize)).filter(|c| ev.has(c.slot)) else {
            return false;
        };
        let vendor = self.cfg.tcf_vendor_id;
        let stored = ev.str_at(c.slot, c.offset, c.max);
        // A TCF string is ASCII, so one filling its field was cut there: its vendor section may
        // run past the cut (a bitfield of ~1400 vendors alone is ~230 characters), and so may a
        // byte that makes the string no TCF string at all. So a string filling its field is
        // judged as sent, read again from the request, whether or not a vendor is checked (the
        // verdict must not depend on max_bytes); its core segment (up to the first '.') is all
        // that is read.
        // Within 3 bytes of it, too: a cut backs off to a whole UTF-8 character (at most 4
        // bytes), and the string as sent then holds one, which no TCF string does.
        if stored.len() + 3 >= c.max {
            let mut buf = [0u8; TCF_AS_SENT_BYTES];
            return match extract::text_as_sent(c, req, &mut buf) {
                Some((sent, whole)) if whole || memchr::memchr(b'.', sent).is_some() => tcf::consent(sent, vendor),
                // A core segment longer than the buffer: no TC string has one (the GVL's ~1400
                // vendors in two bitfields are ~500 characters), so it is no consent rather than
                // a guess from its first part.
                Some(_) => false,
                // Not readable again (not a request text): the stored copy is all there is.
                None => tcf::consent(stored, vendor),
            };
        }
        tcf::consent(stored, vendor)
    }

    /// Sec-GPC: 1, DNT: 1 (each when honoured) or the opt-out cookie set: one pass over the
    /// header fields, which every event pays for (`FLAG_OPTED_OUT` is recorded on all of them).
    fn opted_out(&self, headers: &[httparse::Header<'_>]) -> bool {
        let c = &self.cfg;
        let cookie_name = c.optout_cookie.as_bytes();
        headers.iter().any(|h| {
            let is = |name: &str| h.name.len() == name.len() && h.name.eq_ignore_ascii_case(name);
            if c.honor_gpc && is("sec-gpc") || c.honor_dnt && is("dnt") {
                h.value.trim_ascii() == b"1"
            } else if let Some(finder) = self.optout_finder.as_ref().filter(|_| is("cookie")) {
                // Every pair of that name counts, not the first: an empty one set for another
                // path must not hide the opt-out.
                finder.find(h.value).is_some()
                    && crate::http::query::cookies(h.value, cookie_name)
                        .any(|v| !v.is_empty() && v != b"0" && !v.eq_ignore_ascii_case(b"false"))
            } else {
                false
            }
        })
    }

    /// The keyed HMAC state of the period `now_ns` falls in, re-derived when the period changes.
    fn period_mac(&mut self, now_ns: u64) -> &HmacSha256 {
        let period = match self.cfg.hash_rotate_s {
            0 => 0,
            r => now_ns / 1_000_000_000 / r,
        };
        if period != self.period || self.period_mac.is_none() {
            self.period = period;
            self.period_mac = None;
        }
        self.period_mac.get_or_insert_with(|| period_key(&self.cfg.hash_key.0, period, self.cfg.hash_rotate_s))
    }

    fn hash_in_place(&mut self, ev: &mut Event, slot: usize, offset: usize, max: usize, now_ns: u64) {
        let mut m = self.period_mac(now_ns).clone();
        m.update(ev.str_at(slot, offset, max));
        let tag = m.finalize().into_bytes();
        let area = &mut ev.bytes[offset..offset + max];
        area.fill(0);
        let n = crate::event::write_hex(&tag[..USER_HASH_CHARS / 2], &mut area[..USER_HASH_CHARS.min(max)]);
        ev.slots[slot] = n as u64;
    }
}

/// The HMAC state keyed with the key of `period` (rotate_s = 0: one key forever).
pub fn period_key(master: &[u8], period: u64, rotate_s: u64) -> HmacSha256 {
    let mut d = HmacSha256::new_from_slice(master).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    d.update(b"tracker-uid-v1\n");
    if rotate_s > 0 {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut p = period;
        loop {
            i -= 1;
            digits[i] = b'0' + (p % 10) as u8;
            p /= 10;
            if p == 0 {
                break;
            }
        }
        d.update(&digits[i..]);
    }
    let k = d.finalize().into_bytes();
    HmacSha256::new_from_slice(&k).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

fn clear(ev: &mut Event, slot: usize, offset: usize, max: usize) {
    ev.bytes[offset..offset + max].fill(0);
    ev.slots[slot] = 0;
    ev.present &= !(1 << slot);
}

/// A secret whose `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_TOML};
    use crate::extract::{extract, IdGen, RequestView};

    const NOW: u64 = 1_790_000_000_000_000_000;

    fn run(cfg: &Config, ty: &str, q: &[u8], h: &[httparse::Header<'_>], now: u64) -> serde_json::Value {
        run_from("203.0.113.77", cfg, ty, q, h, now)
    }

    fn run_from(ip: &str, cfg: &Config, ty: &str, q: &[u8], h: &[httparse::Header<'_>], now: u64) -> serde_json::Value {
        apply_from(ip, cfg, ty, q, h, now).0
    }

    /// The event of type `ty` for this request after the step, as JSON, and what the step said.
    fn apply_from(
        ip: &str,
        cfg: &Config,
        ty: &str,
        q: &[u8],
        h: &[httparse::Header<'_>],
        now: u64,
    ) -> (serde_json::Value, Option<OptOut>) {
        let t = cfg.event_type(ty).unwrap();
        let req = RequestView {
            query: q,
            headers: h,
            host: None,
            client_ip: ip.parse().unwrap(),
            now_ns: now,
            user_agent: None,
            json: None,
            client_id_ignored: false,
            item: None,
        };
        let mut ev = Event::ZERO;
        extract(t, &req, &mut IdGen::new(0), 0, 0, &mut ev).unwrap();
        let why = Privacy::new(cfg.privacy.clone()).apply(t, &req, &mut ev);
        let mut s = String::new();
        cfg.schema.write_json(&ev, &mut s);
        assert!(!ev.bytes.windows(7).any(|w| w == b"raw-uid"), "raw user id left in the record");
        (serde_json::from_str(&s).unwrap(), why)
    }

    #[test]
    fn ip_truncated_and_user_id_hashed_by_default() {
        let cfg = Config::embedded();
        let h = [httparse::Header { name: "Cookie", value: b"uid=raw-uid-12345" }];
        let v = run(&cfg, "conversion", b"c=1", &h, NOW);
        assert_eq!(v["ip"], "203.0.113.0");
        let hashed = v["user_id"].as_str().unwrap();
        assert_eq!(hashed.len(), USER_HASH_CHARS);
        assert!(hashed.bytes().all(|b| b.is_ascii_hexdigit()));
        // Stable within a period, different in the next one.
        let again = run(&cfg, "conversion", b"c=1", &h, NOW + 1_000_000_000);
        assert_eq!(again["user_id"], v["user_id"]);
        let next_day = run(&cfg, "conversion", b"c=1", &h, NOW + 86_400 * 1_000_000_000);
        assert_ne!(next_day["user_id"], v["user_id"]);
    }

    #[test]
    fn an_ipv4_address_inside_an_ipv6_one_is_cut_as_ipv4() {
        let cfg = Config::embedded();
        let ip = |from: &str| run_from(from, &cfg, "conversion", b"c=1", &[], NOW)["ip"].clone();
        // 203.0.113.77 behind a 6to4 relay: a /48 would keep all of it.
        assert_eq!(ip("2002:cb00:714d:1:2:3:4:5"), "2002:cb00:7100::");
        // IPv4-mapped is stored as IPv4; native IPv6 keeps its /48.
        assert_eq!(ip("::ffff:203.0.113.77"), "203.0.113.0");
        // So is an IPv4 client behind a NAT64 translator (it was stored as 64:ff9b:: at /48).
        assert_eq!(ip("64:ff9b::203.0.113.77"), "203.0.113.0");
        assert_eq!(ip("2001:db8:abcd:12:1:2:3:4"), "2001:db8:abcd::");
        // Prefixes that end inside a byte, and the ends of the range.
        let mut cfg = Config::embedded();
        let ip = |cfg: &Config, from: &str| run_from(from, cfg, "conversion", b"c=1", &[], NOW)["ip"].clone();
        (cfg.privacy.ipv4_prefix_bits, cfg.privacy.ipv6_prefix_bits) = (20, 28);
        assert_eq!(ip(&cfg, "203.0.127.77"), "203.0.112.0");
        assert_eq!(ip(&cfg, "2001:dbff::1"), "2001:dbf0::");
        assert_eq!(ip(&cfg, "2002:cbff:7f4d::1"), "2002:cbf0::");
        cfg.privacy.ipv6_prefix_bits = 64;
        assert_eq!(ip(&cfg, "2002:cb00:7f4d:1::1"), "2002:cb00:7000::");
        (cfg.privacy.ipv4_prefix_bits, cfg.privacy.ipv6_prefix_bits) = (32, 128);
        assert_eq!(ip(&cfg, "203.0.113.77"), "203.0.113.77");
        assert_eq!(ip(&cfg, "2001:db8::77"), "2001:db8::77");
        (cfg.privacy.ipv4_prefix_bits, cfg.privacy.ipv6_prefix_bits) = (0, 0);
        assert_eq!(ip(&cfg, "203.0.113.77"), "0.0.0.0");
    }

    #[test]
    fn gpc_dnt_and_optout_cookie_drop_identifiers() {
        let cfg = Config::embedded();
        for h in [
            [
                httparse::Header { name: "Sec-GPC", value: b"1" },
                httparse::Header { name: "Cookie", value: b"uid=raw-uid-1" },
            ],
            [
                httparse::Header { name: "DNT", value: b"1" },
                httparse::Header { name: "Cookie", value: b"uid=raw-uid-1" },
            ],
            [
                httparse::Header { name: "X", value: b"" },
                httparse::Header { name: "Cookie", value: b"uid=raw-uid-1; optout=1" },
            ],
        ] {
            let v = run(&cfg, "conversion", b"c=1&order=o", &h, NOW);
            assert!(v.get("user_id").is_none() && v.get("ip").is_none(), "{v}");
            assert_eq!(v["opted_out"], true);
            assert_eq!(v["order_id"], "o");
        }
        let h = [
            httparse::Header { name: "Sec-GPC", value: b"0" },
            httparse::Header { name: "Cookie", value: b"uid=raw-uid-1; optout=0" },
        ];
        let v = run(&cfg, "conversion", b"c=1", &h, NOW);
        assert!(v.get("user_id").is_some() && v.get("opted_out").is_none());
    }

    /// Regression: under `gdpr = "record"` with the field names left to their defaults, the
    /// consent fields were never looked up, so an opted-out event kept its consent string.
    #[test]
    fn an_opted_out_event_loses_its_consent_string_under_record_with_default_field_names() {
        let mut text = DEFAULT_TOML.to_string();
        for (from, to) in [
            ("\ngdpr = \"enforce\"\n", "\ngdpr = \"record\"\n"),
            ("\ngdpr_field = \"gdpr\"\n", "\n"),
            ("\ngdpr_consent_field = \"gdpr_consent\"\n", "\n"),
        ] {
            assert!(text.contains(from), "{from}");
            text = text.replace(from, to);
        }
        let cfg = Config::parse(&text, "t.toml").unwrap();
        assert_eq!(cfg.privacy.gdpr, GdprMode::Record);
        let h = [
            httparse::Header { name: "Sec-GPC", value: b"1" },
            httparse::Header { name: "Cookie", value: b"uid=raw-uid-1" },
        ];
        let q = format!("c=1&gdpr=1&gdpr_consent={TC_P1}");
        let v = run(&cfg, "conversion", q.as_bytes(), &h, NOW);
        assert_eq!(v["opted_out"], true, "{v}");
        assert!(v.get("gdpr_consent").is_none() && v.get("user_id").is_none(), "{v}");
        assert_eq!(v["gdpr"], 1);
        // Without the signal, "record" keeps it, and judges nothing.
        let v = run(&cfg, "conversion", format!("c=1&gdpr=1&gdpr_consent={TC_NONE}").as_bytes(), &h[1..], NOW);
        assert_eq!((v["gdpr_consent"].as_str(), v.get("opted_out")), (Some(TC_NONE), None), "{v}");
    }

    /// Purposes 1, 3, 9, 10 (enrich::tcf's hand-decoded string) and none (CMP 31).
    const TC_P1: &str =
        "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA.argAC0gAAAAAAAAAAAA";
    const TC_NONE: &str = "CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA";

    /// The conversion of `q` with a uid cookie, and what the step said.
    fn gdpr_run(cfg: &Config, q: &str) -> (serde_json::Value, Option<OptOut>) {
        let h = [httparse::Header { name: "Cookie", value: b"uid=raw-uid-1" }];
        apply_from("203.0.113.77", cfg, "conversion", q.as_bytes(), &h, NOW)
    }

    #[test]
    fn gdpr_without_purpose_one_consent_is_an_opt_out_when_enforced() {
        let cfg = Config::embedded();
        assert_eq!(cfg.privacy.gdpr, GdprMode::Enforce, "the shipped default");
        // Purpose 1 is set in it, but the purposes field is cut: not trusted.
        let unread = &TC_P1[..28];
        for q in [
            "c=1&gdpr=1".to_string(),
            "c=1&gdpr=1&gdpr_consent=".to_string(),
            format!("c=1&gdpr=1&gdpr_consent={TC_NONE}"),
            format!("c=1&gdpr=1&gdpr_consent={unread}"),
            "c=1&gdpr=1&gdpr_consent=%24%7BGDPR_CONSENT_52%7D".to_string(),
            format!("c=1&gdpr=2&gdpr_consent={TC_NONE}"),
        ] {
            let (v, why) = gdpr_run(&cfg, &q);
            assert_eq!(why, Some(OptOut::NoGdprConsent), "{q}");
            assert!(v.get("user_id").is_none() && v.get("ip").is_none(), "{q}: {v}");
            assert_eq!(v["opted_out"], true, "{q}");
            // The signals themselves are kept: they say why the ids are gone.
            assert!(v["gdpr"].as_u64().unwrap() > 0);
        }
        for q in [
            format!("c=1&gdpr=1&gdpr_consent={TC_P1}"),
            format!("c=1&gdpr=0&gdpr_consent={TC_NONE}"),
            "c=1&gdpr=0".to_string(),
            "c=1".to_string(),
        ] {
            let (v, why) = gdpr_run(&cfg, &q);
            assert_eq!(why, None, "{q}");
            assert_eq!((v["ip"].as_str(), v.get("opted_out")), (Some("203.0.113.0"), None), "{q}");
            assert_eq!(v["user_id"].as_str().map(str::len), Some(USER_HASH_CHARS), "{q}");
        }
        // A signal wins: the event is opted out by it, not counted as lacking consent.
        let h = [httparse::Header { name: "Sec-GPC", value: b"1" }];
        let v = run(&cfg, "conversion", b"c=1&gdpr=1", &h, NOW);
        assert_eq!(v["opted_out"], true);
    }

    /// TC_P1 with vendor 115's bit cleared (character 57, 'Y' → 'Q'; see enrich::tcf):
    /// Purpose 1 and vendors 2, 3, 114 still consented.
    fn tc_p1_without_vendor_115() -> String {
        let mut s = TC_P1.as_bytes().to_vec();
        assert_eq!(s[57], b'Y');
        s[57] = b'Q';
        String::from_utf8(s).unwrap()
    }

    #[test]
    fn an_unsaid_gdpr_is_judged_by_the_consent_string_only_when_gdpr_unknown_applies() {
        let mut cfg = Config::embedded();
        let unsaid = [
            "c=1".to_string(),
            "c=1&gdpr=".to_string(),
            // ${GDPR} left unsubstituted: the field is left empty, as not sent.
            "c=1&gdpr=%24%7BGDPR%7D".to_string(),
            format!("c=1&gdpr_consent={TC_NONE}"),
        ];
        for q in &unsaid {
            assert_eq!(gdpr_run(&cfg, q).1, None, "default not_applicable: {q}");
        }
        let vast = |cfg: &Config, q: &str| {
            let h = [httparse::Header { name: "Cookie", value: b"uid=raw-uid-1" }];
            apply_from("203.0.113.77", cfg, "video", format!("ev=start&{q}").as_bytes(), &h, NOW).1
        };
        // The VAST type has a consent field and no gdpr field: untouched by default.
        assert_eq!(vast(&cfg, &format!("gdpr_consent={TC_NONE}")), None);
        cfg.privacy.gdpr_unknown_applies = true;
        for q in &unsaid {
            let (v, why) = gdpr_run(&cfg, q);
            assert_eq!(why, Some(OptOut::NoGdprConsent), "{q}");
            assert!(v.get("user_id").is_none() && v["opted_out"] == true, "{q}: {v}");
        }
        assert_eq!(vast(&cfg, &format!("gdpr_consent={TC_NONE}")), Some(OptOut::NoGdprConsent));
        assert_eq!(vast(&cfg, ""), Some(OptOut::NoGdprConsent));
        assert_eq!(vast(&cfg, &format!("gdpr_consent={TC_P1}")), None);
        // Said either way, the request is believed: gdpr=0 is not GDPR, gdpr=1 needs consent.
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr_consent={TC_P1}")).1, None);
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=0&gdpr_consent={TC_NONE}")).1, None);
        assert_eq!(gdpr_run(&cfg, "c=1&gdpr=0").1, None);
        // A type with neither field (the custom event) has nothing to be judged by.
        assert!(cfg.event_type("custom").is_some_and(|t| t.fields.iter().all(|f| !f.name.starts_with("gdpr"))));
        let h = [httparse::Header { name: "Cookie", value: b"uid=raw-uid-1" }];
        assert_eq!(apply_from("203.0.113.77", &cfg, "custom", b"n=x", &h, NOW).1, None);
        // Only "enforce" acts on it.
        cfg.privacy.gdpr = GdprMode::Record;
        assert_eq!(gdpr_run(&cfg, "c=1").1, None);
    }

    #[test]
    fn with_a_vendor_id_gdpr_also_needs_that_vendors_consent() {
        let mut cfg = Config::embedded();
        assert_eq!(cfg.privacy.tcf_vendor_id, None, "the shipped default: vendor consent not checked");
        let without_115 = tc_p1_without_vendor_115();
        // Not checked: Purpose 1 is enough, as before.
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={without_115}")).1, None);
        cfg.privacy.tcf_vendor_id = std::num::NonZeroU16::new(115);
        for q in [
            format!("c=1&gdpr=1&gdpr_consent={without_115}"),
            // Vendor 115 consented, Purpose 1 not: TC_P1 with Purpose 1 cleared ('K' → 'C').
            format!("c=1&gdpr=1&gdpr_consent={}C{}", &TC_P1[..25], &TC_P1[26..]),
            format!("c=1&gdpr=1&gdpr_consent={TC_NONE}"),
            "c=1&gdpr=1".to_string(),
        ] {
            let (v, why) = gdpr_run(&cfg, &q);
            assert_eq!(why, Some(OptOut::NoGdprConsent), "{q}");
            assert!(v.get("user_id").is_none() && v.get("ip").is_none(), "{q}: {v}");
            assert_eq!(v["opted_out"], true, "{q}");
        }
        for q in [
            format!("c=1&gdpr=1&gdpr_consent={TC_P1}"),
            // GDPR does not apply: neither is read.
            format!("c=1&gdpr=0&gdpr_consent={without_115}"),
            "c=1".to_string(),
        ] {
            let (v, why) = gdpr_run(&cfg, &q);
            assert_eq!(why, None, "{q}");
            assert_eq!(v["user_id"].as_str().map(str::len), Some(USER_HASH_CHARS), "{q}");
        }
        // Above the string's MaxVendorId (115): no consent.
        cfg.privacy.tcf_vendor_id = std::num::NonZeroU16::new(116);
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={TC_P1}")).1, Some(OptOut::NoGdprConsent));
        // Only enforced: recorded, the vendor id is not read.
        cfg.privacy.gdpr = GdprMode::Record;
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={without_115}")).1, None);
    }

    /// The consent field's max_bytes cuts a string whose vendor section runs past it: the record
    /// keeps the cut string, but the vendor is judged on the string as sent, read again from
    /// the request. Regression: the cut section was taken for no vendor consent, so with the
    /// shipped 160–192-byte consent fields most real strings (bitfields of ~1400 vendors) lost
    /// their users' consent.
    #[test]
    fn a_consent_string_cut_by_its_field_is_judged_as_sent() {
        // TC_P1's bitfield ends at bit 345, inside character 57; 57 characters are 342 bits.
        let text = DEFAULT_TOML.replace(
            "{ name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = 160 },\n]\n\n# VAST",
            "{ name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = 57 },\n]\n\n# VAST",
        );
        assert_ne!(text, DEFAULT_TOML);
        let mut cfg = Config::parse(&text, "t.toml").unwrap();
        let q = format!("c=1&gdpr=1&gdpr_consent={TC_P1}");
        assert_eq!(gdpr_run(&cfg, &q).1, None, "Purpose 1 is whole in 57 characters");
        for vendor in [2, 115] {
            cfg.privacy.tcf_vendor_id = std::num::NonZeroU16::new(vendor);
            let (v, why) = gdpr_run(&cfg, &q);
            assert_eq!(why, None, "vendor {vendor}");
            assert_eq!((v["truncated"].as_bool(), v["gdpr_consent"].as_str()), (Some(true), Some(&TC_P1[..57])));
        }
        // Vendor 115's bit, past the cut, cleared in the string as sent: no consent.
        let without_115 = tc_p1_without_vendor_115();
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={without_115}")).1, Some(OptOut::NoGdprConsent));
        // Percent-encoded as sent, decoded as extraction decodes it.
        let encoded = format!("{}%{:02X}{}", &TC_P1[..60], TC_P1.as_bytes()[60], &TC_P1[61..]);
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={encoded}")).1, None);
        // A core segment longer than the string is read for (TCF_AS_SENT_BYTES): no consent,
        // not a guess from its first part; after a '.', the other segments do not count.
        let core = &TC_P1[..TC_P1.find('.').unwrap()];
        let long = format!("{core}{}", "A".repeat(TCF_AS_SENT_BYTES));
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={long}")).1, Some(OptOut::NoGdprConsent));
        let segments = format!("{core}.{}", "A".repeat(TCF_AS_SENT_BYTES));
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={segments}")).1, None);
    }

    /// Regressions: without a vendor id the string was judged on the stored copy, so the
    /// verdict on Purpose 1 depended on the field's max_bytes. Cut below the 30 characters
    /// that hold Purpose 1, a consenting string was no consent; cut above a byte that is no
    /// base64url (padding here), a string that is no TCF string was consent.
    #[test]
    fn purpose_one_is_judged_on_the_string_as_sent_whatever_max_bytes() {
        let with_max = |max: usize| {
            let text = DEFAULT_TOML.replace(
                "{ name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = 160 },\n]\n\n# VAST",
                &format!("{{ name = \"gdpr_consent\",  source = \"query.gdpr_consent\", type = \"string\", max_bytes = {max} }},\n]\n\n# VAST"),
            );
            assert_ne!(text, DEFAULT_TOML);
            Config::parse(&text, "t.toml").unwrap()
        };
        assert_eq!(gdpr_run(&with_max(29), &format!("c=1&gdpr=1&gdpr_consent={TC_P1}")).1, None);
        let core = &TC_P1[..TC_P1.find('.').unwrap()];
        let padded = format!("{}{}==", &core[..84.min(core.len())], "A".repeat(100));
        let cfg = Config::parse(DEFAULT_TOML, "t.toml").unwrap();
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={padded}")).1, Some(OptOut::NoGdprConsent));
        // Within the field, the same padding was always no consent.
        let short = format!("{}==", &core[..84.min(core.len())]);
        assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={short}")).1, Some(OptOut::NoGdprConsent));
        // A core segment longer than the string is read for: no consent, also when the vendor's
        // bit lies within the stored copy.
        let long = format!("{core}{}", "A".repeat(TCF_AS_SENT_BYTES));
        let mut cfg = cfg;
        for vendor in [None, std::num::NonZeroU16::new(2)] {
            cfg.privacy.tcf_vendor_id = vendor;
            assert_eq!(gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={long}")).1, Some(OptOut::NoGdprConsent));
        }
        // Regression: a field cut backs off to a whole UTF-8 character, so a string cut inside
        // one is stored shorter than max_bytes and was judged on that copy: consent, though
        // the string as sent holds a byte no TCF string has.
        for max in [57, 58, 59] {
            let cut_inside = format!("c=1&gdpr=1&gdpr_consent={}%E2%82%AC{}", &core[..56], &core[56..]);
            let (v, why) = gdpr_run(&with_max(max), &cut_inside);
            assert_eq!(why, Some(OptOut::NoGdprConsent), "max_bytes {max}: {v}");
        }
    }

    #[test]
    fn tcf_vendor_id_is_a_gvl_id_or_0() {
        let cfg = |v: &str| {
            Config::parse(&DEFAULT_TOML.replace("\ntcf_vendor_id = 0\n", &format!("\ntcf_vendor_id = {v}\n")), "t.toml")
        };
        assert_eq!(cfg("0").unwrap().privacy.tcf_vendor_id, None);
        assert_eq!(cfg("755").unwrap().privacy.tcf_vendor_id, std::num::NonZeroU16::new(755));
        assert_eq!(cfg("65535").unwrap().privacy.tcf_vendor_id, std::num::NonZeroU16::new(65535));
        let line = DEFAULT_TOML.lines().position(|l| l == "tcf_vendor_id = 0").expect("written in [privacy]") + 1;
        for (v, why) in [
            ("65536", "65536 is out of range: expected 0..=65535".to_string()),
            ("-1", "-1 is out of range: expected 0..=65535".to_string()),
        ] {
            let e = cfg(v).unwrap_err().to_string();
            assert!(e.contains(&format!("t.toml:{line}: privacy.tcf_vendor_id: {why}")), "{e}");
        }
        let e = cfg("\"755\"").unwrap_err().to_string();
        assert!(e.contains(&format!("t.toml:{line}: privacy.tcf_vendor_id")), "{e}");
    }

    #[test]
    fn gdpr_is_only_stored_when_recorded() {
        let text = DEFAULT_TOML.replace("\ngdpr = \"enforce\"\n", "\ngdpr = \"record\"\n");
        assert_ne!(text, DEFAULT_TOML);
        let cfg = Config::parse(&text, "t.toml").unwrap();
        let (v, why) = gdpr_run(&cfg, &format!("c=1&gdpr=1&gdpr_consent={TC_NONE}"));
        assert_eq!(why, None);
        assert_eq!((v["ip"].as_str(), v.get("opted_out")), (Some("203.0.113.0"), None));
        assert_eq!((v["gdpr"].as_u64(), v["gdpr_consent"].as_str()), (Some(1), Some(TC_NONE)));
        assert!(v["user_id"].is_string());
    }

    #[test]
    fn gdpr_fields_are_named_by_config_and_checked_at_load() {
        let ty =
            |fields: &str| format!("[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\nfields = [\n{fields}\n]\n");
        let ip = "  { name = \"ip\", source = \"client.ip\", type = \"ip\" },";
        // Other names, as a custom config may use.
        let text = format!(
            "[privacy]\ngdpr_field = \"regs_gdpr\"\ngdpr_consent_field = \"tcf\"\n{}",
            ty(&format!("{ip}\n  {{ name = \"regs_gdpr\", source = \"query.g\", type = \"u32\" }},\n  {{ name = \"tcf\", source = \"query.t\", type = \"string\", max_bytes = 100 }},"))
        );
        let cfg = Config::parse(&text, "t.toml").unwrap();
        let t = cfg.event_type("x").unwrap();
        assert_eq!(cfg.privacy.gdpr_fields[t.id as usize], GdprFields { applies: Some(1), consent: Some(2) });
        // A type without them (the default names, unset): nothing to enforce, no error.
        let cfg = Config::parse(&ty(ip), "t.toml").unwrap();
        assert_eq!(cfg.privacy.gdpr_fields, vec![GdprFields::default()]);
        let errors = |text: &str| match Config::parse(text, "t.toml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        // A default-named field of the wrong type: its own line.
        let gdpr_str = ty("  { name = \"gdpr\", source = \"query.gdpr\", type = \"string\", max_bytes = 4 },");
        let e = errors(&gdpr_str);
        assert!(e.contains("t.toml:6: privacy.gdpr_field: \"gdpr\" of event.x must be a u32 field"), "{e}");
        // Under "record" with the names unwritten, it is just not the signal.
        let cfg = Config::parse(&format!("[privacy]\ngdpr = \"record\"\n{gdpr_str}"), "t.toml").unwrap();
        assert_eq!(cfg.privacy.gdpr_fields, vec![GdprFields::default()]);
        let e = errors(&format!(
            "[privacy]\ngdpr_consent_field = \"gdpr\"\n{}",
            ty("  { name = \"gdpr\", source = \"query.gdpr\", type = \"u32\" },")
        ));
        assert!(e.contains("t.toml:2: privacy.gdpr_consent_field: \"gdpr\" of event.x must be a string field"), "{e}");
        // A written name no type has, or enforce written without the fields.
        let e = errors(&format!("[privacy]\ngdpr_field = \"regs\"\n{}", ty(ip)));
        assert!(e.contains("t.toml:2: privacy.gdpr_field: \"regs\" is not a field of any event type"), "{e}");
        let e = errors(&format!("[privacy]\ngdpr = \"enforce\"\n{}", ty(ip)));
        assert!(e.contains("t.toml:2: privacy.gdpr_field: \"gdpr\" is not a field of any event type"), "{e}");
        assert!(
            e.contains("t.toml:2: privacy.gdpr_consent_field: \"gdpr_consent\" is not a field of any event type"),
            "{e}"
        );
        let e = errors(&format!("[privacy]\ngdpr = \"always\"\n{}", ty(ip)));
        assert!(e.contains("t.toml:2: privacy.gdpr: \"always\" is not one of \"record\", \"enforce\""), "{e}");
    }

    #[test]
    fn period_keys_follow_the_documented_derivation() {
        // docs/privacy.md test vector (computed with Python's hmac module).
        let master: Vec<u8> = (0u8..32).collect();
        let mut m = period_key(&master, 20_717, 86_400);
        m.update(b"user-42");
        let tag = m.finalize().into_bytes();
        let hex: String = tag[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, DOC_HASH);
    }

    fn trimmed(v: &str, policy: RefererPolicy, cut: bool) -> String {
        let mut b = v.as_bytes().to_vec();
        let n = trim_referer(&mut b, policy, cut);
        String::from_utf8(b[..n].to_vec()).unwrap()
    }

    #[test]
    fn referers_keep_what_their_policy_promises() {
        use RefererPolicy::*;
        // (received, under path, under origin)
        for (v, path, origin) in [
            ("https://shop.example/cart?email=a%40b.c", "https://shop.example/cart", "https://shop.example"),
            ("https://shop.example/a/b#token=s3cret", "https://shop.example/a/b", "https://shop.example"),
            ("https://shop.example/a?q=x#frag", "https://shop.example/a", "https://shop.example"),
            ("https://shop.example/a#frag?not-a-query", "https://shop.example/a", "https://shop.example"),
            ("http://shop.example:8080/p/?s=1", "http://shop.example:8080/p/", "http://shop.example:8080"),
            ("https://[2001:db8::1]:8443/x?y=1", "https://[2001:db8::1]:8443/x", "https://[2001:db8::1]:8443"),
            ("https://[2001:db8::1]", "https://[2001:db8::1]", "https://[2001:db8::1]"),
            // No path: the query or fragment ends the authority.
            ("https://shop.example", "https://shop.example", "https://shop.example"),
            ("https://shop.example?q=1", "https://shop.example", "https://shop.example"),
            ("https://shop.example#f", "https://shop.example", "https://shop.example"),
            ("https://shop.example/", "https://shop.example/", "https://shop.example"),
            // Percent-encoded '?' and '#' are path bytes, not delimiters.
            ("https://shop.example/a%3Fb%23c?d", "https://shop.example/a%3Fb%23c", "https://shop.example"),
            // Userinfo never survives either mode.
            ("https://alice:pw@shop.example/a?b", "https://shop.example/a", "https://shop.example"),
            ("https://a@b@shop.example/a", "https://shop.example/a", "https://shop.example"),
            ("https://shop.example/u/a@b.c?x", "https://shop.example/u/a@b.c", "https://shop.example"),
            // A backslash is a slash to browsers: it ends the authority.
            ("https://shop.example\\secret/path", "https://shop.example\\secret/path", "https://shop.example"),
            // Other schemes: the same shape rules.
            (
                "android-app://com.example.app/path?x",
                "android-app://com.example.app/path",
                "android-app://com.example.app",
            ),
            ("HTTPS://Shop.Example/A?b", "HTTPS://Shop.Example/A", "HTTPS://Shop.Example"),
            // No `scheme://` shape: path cuts at '?' or '#', origin keeps nothing.
            ("/relative/page?session=1", "/relative/page", ""),
            ("shop.example/a?b", "shop.example/a", ""),
            ("about:blank", "about:blank", ""),
            ("mailto:x?subject=s", "mailto:x", ""),
            ("?only=query", "", ""),
            ("1http://x/y?z", "1http://x/y", ""),
            // A network-path reference (`//host/path`) has an authority, so userinfo, too.
            ("//alice:pw@shop.example/a?b", "//shop.example/a", "//shop.example"),
            ("not a url #at all", "not a url ", ""),
            // `scheme://` with no host: nothing.
            ("file:///etc/passwd?x", "", ""),
            ("https://@/x", "", ""),
            ("", "", ""),
        ] {
            assert_eq!(trimmed(v, Path, false), path, "path of {v:?}");
            assert_eq!(trimmed(v, Origin, false), origin, "origin of {v:?}");
            assert_eq!(trimmed(v, Full, false), v, "full of {v:?}");
            assert_eq!(trimmed(v, Drop, false), "", "drop of {v:?}");
        }
    }

    /// An id derived from a referer field hashes the value as received, query included: unless
    /// the field is kept whole, the privacy step re-keys it, as it does an opted-out ip's.
    #[test]
    fn an_id_derived_from_a_referer_is_rekeyed_unless_kept_in_full() {
        let text = |mode: &str| {
            format!(
                "[privacy]\nreferer = \"{mode}\"\n[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[event.x]\n\
                 identity = [\"r\"]\nfields = [ {{ name = \"r\", source = \"header.referer\", type = \"string\", max_bytes = 64 }} ]\n"
            )
        };
        let h = [httparse::Header { name: "REFERER", value: b"https://shop.example/a?email=a%40b.c" }];
        let id = |cfg: &Config| {
            let v = run(cfg, "x", b"", &h, NOW);
            (v["id"].clone(), v["r"].clone())
        };
        let (full, full_r) = id(&Config::parse(&text("full"), "t.toml").unwrap());
        // One config: its hash key is made at parse when no key file is set.
        let path_cfg = Config::parse(&text("path"), "t.toml").unwrap();
        let (path, path_r) = id(&path_cfg);
        assert_eq!(
            (full_r.as_str(), path_r.as_str()),
            (Some("https://shop.example/a?email=a%40b.c"), Some("https://shop.example/a"))
        );
        assert_ne!(path, full, "an unkeyed hash of the query left in the id");
        assert_eq!(id(&path_cfg).0, path, "repeats in one period are one id");
    }

    #[test]
    fn a_referer_cut_at_max_bytes_keeps_nothing_it_cannot_vouch_for() {
        use RefererPolicy::*;
        // Cut inside the query or the path: the authority is whole, trimmed as usual.
        assert_eq!(trimmed("https://shop.example/a?email=x%40y", Path, true), "https://shop.example/a");
        assert_eq!(trimmed("https://shop.example/a/very/long/pa", Path, true), "https://shop.example/a/very/long/pa");
        assert_eq!(trimmed("https://shop.example/a/very/long/pa", Origin, true), "https://shop.example");
        // Cut inside the authority: what looks like a host may be a user and password whose
        // '@' was cut off.
        assert_eq!(trimmed("https://alice:hunter2-and-so-on", Path, true), "");
        assert_eq!(trimmed("https://alice:hunter2-and-so-on", Origin, true), "");
        assert_eq!(trimmed("https://alice:hunter2-and-so-on", Full, true), "https://alice:hunter2-and-so-on");
        // The same bytes not cut are a whole (odd) host.
        assert_eq!(trimmed("https://alice:hunter2-and-so-on", Origin, false), "https://alice:hunter2-and-so-on");
        // No `scheme://` shape: a path cut is still a path.
        assert_eq!(trimmed("/relative/long/pa", Path, true), "/relative/long/pa");
    }

    const DOC_HASH: &str = "8f3eb5be70de2bec3b0dfc3db9fdc00a";
}
