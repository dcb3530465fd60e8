//! Request-side sections: `[cors]`, `[dedup]`, `[budget]`, `[privacy]`. Each
//! validates into a plain value with its unit in the name.

use super::keys::{spec, BUDGET_KEYS, CORS_KEYS, DEDUP_KEYS, PRIVACY_KEYS};
use super::raw::{RawBudget, RawCors, RawDedup, RawEvent, RawPrivacy, S};
use super::{Cors, EventType, Validator};
use crate::enrich::budget::BudgetConfig;
use crate::enrich::privacy::{GdprFields, GdprMode, IpPolicy, RefererPolicy, Secret, USER_HASH_CHARS};
use crate::schema::FieldKind;

/// What an endpoint does with a request whose source is over its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// Answer as usual, do not publish, count (pixels: browsers never retry them).
    Drop,
    /// `429 Too Many Requests` with `Retry-After` (clients that retry: notices, batches).
    Reject,
}

/// `[dedup]`: the window of recent event ids shared by all shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupConfig {
    /// A repeat of an id within this many ms is answered but not published; 0 = off.
    pub window_ms: u64,
    /// Table entries (power of two); costs entries × 16 bytes, shared by all shards.
    pub entries: usize,
}

impl Validator<'_> {
    pub(super) fn cors(&mut self, r: &RawCors) -> Cors {
        let max_age_s = self.int(&r.max_age_s, spec(CORS_KEYS, "max_age_s")) as u32;
        let mut cors = Cors { origins: Vec::new(), any: false, max_age_s };
        for o in r.origins.as_ref().map(|o| o.get_ref().as_slice()).unwrap_or(&[]) {
            let v = o.get_ref();
            if v == "*" {
                cors.any = true;
            } else if v.len() <= super::ORIGIN_BYTES_MAX && is_origin(v) {
                cors.origins.push(v.as_bytes().into());
            } else {
                self.err_own(
                    o.span(),
                    "cors.origins",
                    format!("\"{v}\" is not an origin: expected \"https://host\" or \"http://host:port\" (no path, no trailing '/', at most {} bytes), or \"*\"", super::ORIGIN_BYTES_MAX),
                );
            }
        }
        cors
    }

    pub(super) fn dedup(&mut self, r: &RawDedup) -> DedupConfig {
        let window_ms = self.int(&r.window_ms, spec(DEDUP_KEYS, "window_ms")) as u64;
        let entries = self.int(&r.entries, spec(DEDUP_KEYS, "entries")) as usize;
        if !entries.is_power_of_two() {
            let s = r.entries.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.err_own(s, "dedup.entries", format!("{entries} is not a power of two"));
        }
        DedupConfig { window_ms, entries }
    }

    pub(super) fn budget(&mut self, r: &RawBudget) -> BudgetConfig {
        let rate_per_s = self.int(&r.rate_per_s, spec(BUDGET_KEYS, "rate_per_s")) as u32;
        let burst = self.int(&r.burst, spec(BUDGET_KEYS, "burst")) as u32;
        let burst_s_max = crate::enrich::budget::BURST_S_MAX;
        if rate_per_s > 0
            && u64::from(burst) > u64::from(rate_per_s) * burst_s_max
            && !self.refused_any(&["budget.rate_per_s", "budget.burst"])
        {
            let s = r.burst.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.err(s, "budget.burst", format!("{burst} requests at {rate_per_s}/s is more than {burst_s_max} s of budget (a bucket's time wraps after 3.2 days); at most rate_per_s × {burst_s_max} = {}", u64::from(rate_per_s) * burst_s_max));
        }
        let entries = self.int(&r.entries, spec(BUDGET_KEYS, "entries")) as usize;
        if !entries.is_power_of_two() {
            let s = r.entries.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.err_own(s, "budget.entries", format!("{entries} is not a power of two"));
        }
        BudgetConfig {
            rate_per_s,
            burst,
            ipv4_prefix_bits: self.int(&r.ipv4_prefix_bits, spec(BUDGET_KEYS, "ipv4_prefix_bits")) as u8,
            ipv6_prefix_bits: self.int(&r.ipv6_prefix_bits, spec(BUDGET_KEYS, "ipv6_prefix_bits")) as u8,
            entries,
            exempt_loopback: r.exempt_loopback.as_ref().is_none_or(|b| *b.get_ref()),
            connections_per_prefix_max: self
                .int(&r.connections_per_prefix_max, spec(BUDGET_KEYS, "connections_per_prefix_max"))
                as u32,
        }
    }
}

/// `[privacy]`, validated; see `crate::enrich::privacy` for what each does.
#[derive(Clone, Debug)]
pub struct PrivacyConfig {
    pub ip: IpPolicy,
    pub ipv4_prefix_bits: u8,
    pub ipv6_prefix_bits: u8,
    /// What of referer fields (`Field::referer`) is stored.
    pub referer: RefererPolicy,
    /// Per event type (index = type id): bit i set = field i is a user id.
    pub user_id_fields: Vec<u32>,
    /// Master key of the user-id hash: from `hash_key_file`, else random per start.
    pub hash_key: Secret,
    pub hash_key_from_file: bool,
    /// Period of the derived hash key, seconds; 0 = never rotate.
    pub hash_rotate_s: u64,
    pub honor_gpc: bool,
    pub honor_dnt: bool,
    /// Cookie whose presence (value not empty, "0" or "false") opts out; empty = none.
    pub optout_cookie: String,
    pub gdpr: GdprMode,
    /// `gdpr_unknown = "applies"`: under `gdpr = "enforce"`, an event with no GDPR signal (no
    /// gdpr value, or a type with a consent field and no gdpr field) is judged as gdpr=1.
    pub gdpr_unknown_applies: bool,
    /// Per event type (index = type id): its GDPR fields.
    pub gdpr_fields: Vec<GdprFields>,
    /// `tcf_vendor_id`: the vendor whose TCF consent `gdpr = "enforce"` also requires; None
    /// (0 in the file) = vendor consent not read.
    pub tcf_vendor_id: Option<std::num::NonZeroU16>,
    /// Ad stitchers allowed to pass the device's ip and user agent; None = no keys (the
    /// headers are always ignored).
    pub ssai: Option<crate::enrich::ssai::SsaiAuth>,
}

impl Validator<'_> {
    pub(super) fn privacy(
        &mut self,
        r: &RawPrivacy,
        types: &[EventType],
        raw_events: &std::collections::BTreeMap<String, super::raw::Table<RawEvent>>,
    ) -> PrivacyConfig {
        let ip = self.choice(
            &r.ip,
            "privacy.ip",
            spec(PRIVACY_KEYS, "ip"),
            &[("truncate", IpPolicy::Truncate), ("drop", IpPolicy::Drop), ("keep", IpPolicy::Keep)],
        );
        let referer = self.choice(
            &r.referer,
            "privacy.referer",
            spec(PRIVACY_KEYS, "referer"),
            &[
                ("path", RefererPolicy::Path),
                ("origin", RefererPolicy::Origin),
                ("full", RefererPolicy::Full),
                ("drop", RefererPolicy::Drop),
            ],
        );
        let mut masks = vec![0u32; types.len()];
        if let Some(list) = &r.user_id_fields {
            for n in list.get_ref() {
                let name = n.get_ref();
                let mut found = false;
                for t in types {
                    let Some(i) = t.fields.iter().position(|f| &f.name == name) else { continue };
                    found = true;
                    let f = &t.fields[i];
                    if f.kind != FieldKind::Str || f.max < USER_HASH_CHARS {
                        self.err(n.span(), "privacy.user_id_fields", format!("\"{name}\" of event.{} must be a string field with max_bytes >= {USER_HASH_CHARS} to hold its hash", t.name));
                    }
                    if t.identity.contains(&i) {
                        self.err(n.span(), "privacy.user_id_fields", format!("\"{name}\" is an identity field of event.{}: the event id would be derived from the raw user id", t.name));
                    }
                    // In any type's id_from, not only this one's: a cookie read as a user id
                    // here is the same raw id wherever it is hashed into an event id.
                    for u in types.iter().filter(|u| u.id_from.contains(&f.source)) {
                        self.err(n.span(), "privacy.user_id_fields", format!("the source of \"{name}\" (of event.{}) is in id_from of event.{}: the event id would be an unkeyed hash of the raw user id", t.name, u.name));
                    }
                    masks[t.id as usize] |= 1 << i;
                }
                if !found {
                    self.err(
                        n.span(),
                        "privacy.user_id_fields",
                        format!("\"{name}\" is not a field of any event type"),
                    );
                }
            }
        }
        let (hash_key, from_file) = match &r.hash_key_file {
            Some(p) => match std::fs::read_to_string(p.get_ref()) {
                Ok(text) => match decode_hex(text.trim()) {
                    Some(k) if k.len() >= 32 => (k, true),
                    _ => {
                        self.err_own(
                            p.span(),
                            "privacy.hash_key_file",
                            format!(
                                "\"{}\" must hold at least 32 bytes as hex (generate with `openssl rand -hex 32`)",
                                p.get_ref()
                            ),
                        );
                        (vec![0; 32], true)
                    }
                },
                Err(e) => {
                    self.err_own(p.span(), "privacy.hash_key_file", format!("cannot read \"{}\": {e}", p.get_ref()));
                    (vec![0; 32], true)
                }
            },
            None => {
                let mut k = vec![0u8; 32];
                if getrandom::getrandom(&mut k).is_err() {
                    self.err(
                        0..0,
                        "privacy.hash_key_file",
                        "no key file and the OS gave no randomness for a temporary key",
                    );
                }
                (k, false)
            }
        };
        let rotate = self.int(&r.hash_rotate_s, spec(PRIVACY_KEYS, "hash_rotate_s")) as u64;
        let optout_cookie = r.optout_cookie.as_ref().map_or_else(|| "optout".to_string(), |c| c.get_ref().clone());
        if optout_cookie.bytes().any(|b| !b.is_ascii_graphic() || b == b';' || b == b'=') {
            let s = r.optout_cookie.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.err_own(s, "privacy.optout_cookie", format!("\"{optout_cookie}\" is not a cookie name"));
        }
        let gdpr = self.choice(
            &r.gdpr,
            "privacy.gdpr",
            spec(PRIVACY_KEYS, "gdpr"),
            &[("record", GdprMode::Record), ("enforce", GdprMode::Enforce)],
        );
        let gdpr_unknown_applies = self.choice(
            &r.gdpr_unknown,
            "privacy.gdpr_unknown",
            spec(PRIVACY_KEYS, "gdpr_unknown"),
            &[("not_applicable", false), ("applies", true)],
        );
        // Written as "applies": only "enforce" acts on it, and only through a consent field.
        let unknown_written = r.gdpr_unknown.as_ref().filter(|_| gdpr_unknown_applies).map(|g| g.span());
        if let Some(span) = unknown_written.clone().filter(|_| gdpr == GdprMode::Record) {
            self.err_own(
                span,
                "privacy.gdpr_unknown",
                "\"applies\" acts only with privacy.gdpr = \"enforce\" (here \"record\": nothing is enforced)",
            );
        }
        // Written as "enforce": the fields must exist, or nothing would be enforced (or, with
        // no consent field, every event under GDPR would lose its ids) without a word.
        let enforce_written = r.gdpr.as_ref().filter(|_| gdpr == GdprMode::Enforce).map(|g| g.span());
        // Looked up under "record" too: an opted-out event loses its consent string whatever the
        // mode (docs/privacy.md). There, with the names left to their defaults, a field of that
        // name but another type is simply not the signal; written or enforced, it is an error.
        let strict = gdpr == GdprMode::Enforce || r.gdpr_field.is_some() || r.gdpr_consent_field.is_some();
        let applies = GdprField { key: "gdpr_field", kind: FieldKind::U32 };
        let consent = GdprField { key: "gdpr_consent_field", kind: FieldKind::Str };
        // Not strict: looked up for the opt-out only, and never an error (as before it was).
        let applies_needed = enforce_written.clone().filter(|_| strict);
        let applies = self.gdpr_field(&r.gdpr_field, &applies, strict, applies_needed, types, raw_events);
        let consent_needed = enforce_written.or(unknown_written).filter(|_| strict);
        let consent = self.gdpr_field(&r.gdpr_consent_field, &consent, strict, consent_needed, types, raw_events);
        let gdpr_fields: Vec<GdprFields> =
            applies.iter().zip(&consent).map(|(&applies, &consent)| GdprFields { applies, consent }).collect();
        let tcf_vendor_id = self.int(&r.tcf_vendor_id, spec(PRIVACY_KEYS, "tcf_vendor_id"));
        let tcf_vendor_id = u16::try_from(tcf_vendor_id).ok().and_then(std::num::NonZeroU16::new);
        let ssai_keys = self.load_keys(&r.ssai_key, "privacy.ssai_key");
        let skew = self.int(&r.ssai_skew_s, spec(PRIVACY_KEYS, "ssai_skew_s")) as u64;
        let ssai = (!ssai_keys.is_empty()).then(|| crate::enrich::ssai::SsaiAuth::new(ssai_keys, skew));
        PrivacyConfig {
            ssai,
            ip,
            referer,
            ipv4_prefix_bits: self.int(&r.ipv4_prefix_bits, spec(PRIVACY_KEYS, "ipv4_prefix_bits")) as u8,
            ipv6_prefix_bits: self.int(&r.ipv6_prefix_bits, spec(PRIVACY_KEYS, "ipv6_prefix_bits")) as u8,
            user_id_fields: masks,
            hash_key: Secret(hash_key),
            hash_key_from_file: from_file,
            hash_rotate_s: rotate,
            honor_gpc: r.honor_gpc.as_ref().is_none_or(|b| *b.get_ref()),
            honor_dnt: r.honor_dnt.as_ref().is_none_or(|b| *b.get_ref()),
            optout_cookie,
            gdpr,
            gdpr_unknown_applies,
            gdpr_fields,
            tcf_vendor_id,
        }
    }

    /// The index of the field `named` (or the key's default name) in each event type (index =
    /// type id), checked to be of `f.kind`. Like `user_id_fields`, a name means that field in
    /// every type that has it. An error names the key's line when it is written, else the
    /// field's `type` (the name came from the default). `must_exist`: the span of a written
    /// `gdpr = "enforce"`, which a name no type has would leave without effect.
    fn gdpr_field(
        &mut self,
        named: &Option<S<String>>,
        f: &GdprField,
        // False: a field of another type is passed over instead of refused.
        strict: bool,
        must_exist: Option<std::ops::Range<usize>>,
        types: &[EventType],
        raw_events: &std::collections::BTreeMap<String, super::raw::Table<RawEvent>>,
    ) -> Vec<Option<u8>> {
        let k = spec(PRIVACY_KEYS, f.key);
        let super::keys::KeyDefault::Str(default) = k.default else {
            panic!("{} has no default name in keys.rs", k.name())
        };
        let name = named.as_ref().map_or(default, |n| n.get_ref().as_str());
        let key = k.name();
        let mut at = vec![None; types.len()];
        for (t, raw) in types.iter().zip(raw_events.values()) {
            let Some(i) = t.fields.iter().position(|x| x.name == name) else { continue };
            if t.fields[i].kind != f.kind {
                if !strict {
                    continue;
                }
                let span = named.as_ref().map_or_else(|| raw.get_ref().fields[i].get_ref().kind.span(), |n| n.span());
                self.err(
                    span,
                    &key,
                    format!(
                        "\"{name}\" of event.{} must be a {} field to be read as GDPR consent (set privacy.{} to another field, or privacy.gdpr = \"record\")",
                        t.name,
                        f.kind.config_name(),
                        f.key
                    ),
                );
            }
            at[t.id as usize] = Some(i as u8);
        }
        if at.iter().all(Option::is_none) {
            if let Some(span) = named.as_ref().map(|n| n.span()).or(must_exist) {
                self.err(span, &key, format!("\"{name}\" is not a field of any event type"));
            }
        }
        at
    }
}

/// One of the two GDPR field keys and the field type it needs.
struct GdprField {
    key: &'static str,
    kind: FieldKind,
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    (0..b.len()).step_by(2).map(|i| u8::from_str_radix(std::str::from_utf8(&b[i..i + 2]).ok()?, 16).ok()).collect()
}

/// `scheme://host[:port]` as browsers send it in `Origin`: http or https, a host of letters,
/// digits, '-', '.', or a bracketed IPv6 literal, an optional port, nothing else.
fn is_origin(v: &str) -> bool {
    let Some(rest) = v.strip_prefix("https://").or_else(|| v.strip_prefix("http://")) else { return false };
    let port = if let Some(r) = rest.strip_prefix('[') {
        let Some((h, p)) = r.split_once(']') else { return false };
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return false;
        }
        p
    } else {
        let (h, p) = rest.find(':').map_or((rest, ""), |i| rest.split_at(i));
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return false;
        }
        p
    };
    port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod origin_tests {
    #[test]
    fn origins() {
        for ok in ["https://example.com", "http://localhost:8080", "https://a-b.example.com", "http://[::1]:3000"] {
            assert!(super::is_origin(ok), "{ok}");
        }
        for bad in [
            "example.com",
            "https://example.com/",
            "https://ex ample.com",
            "ftp://x",
            "https://",
            "https://x:",
            "https://x:123456",
            "https://x/y",
            "null",
        ] {
            assert!(!super::is_origin(bad), "{bad}");
        }
    }
}
