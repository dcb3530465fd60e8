//! Extraction: one parsed request → one `Event`, following the event type's field table.
//!
//! Stage: after routing, before the ring push. In: the request's query, headers and client
//! address; out: a filled `Event` (written in place, straight into the ring slot) or the first
//! field that made the request unacceptable. Pure, no I/O, no allocation: values are decoded
//! directly into the event's slots and byte area.

mod id;
pub mod json;
pub mod price;
mod value;

pub use id::IdGen;
pub use value::{parse_number, percent_decode};

use std::net::IpAddr;

use crate::config::{DefaultValue, EventType, Field, QueryReader, Source};
use crate::event::{Event, FLAG_ID_CLIENT, FLAG_ID_DERIVED, FLAG_TRUNCATED, FLAG_UNSUBSTITUTED, SLOTS};
use crate::http::query::{cookie_in, header, header_last, pairs};
use crate::schema::FieldKind;

/// What extraction sees of a request.
pub struct RequestView<'a> {
    pub query: &'a [u8],
    pub headers: &'a [httparse::Header<'a>],
    /// The request's host ([`crate::http::Request::host`]): what a `header.host` source reads,
    /// so that an absolute-form target's authority replaces the Host header (RFC 9112 §3.2.2).
    pub host: Option<&'a [u8]>,
    pub client_ip: IpAddr,
    pub now_ns: u64,
    /// The device's user agent from an authenticated SSAI sender, used instead of the
    /// request's `User-Agent`, which is the stitcher's (see `enrich::ssai`); empty when the
    /// stitcher sent none (the event then has no user agent, device class `unknown`).
    pub user_agent: Option<&'a [u8]>,
    /// The JSON object this event comes from (a POST body or one item of a batch), for
    /// `json.<path>` sources; None for requests without a JSON body.
    pub json: Option<json::Doc<'a, 'a>>,
    /// Take no client-supplied id (`id_from`): a signed click's id comes from what its signature
    /// covers (the identity fields), or anyone holding one signed URL could add `eid=…` and mint
    /// clicks the dedup window cannot fold, with ids of their choosing.
    pub client_id_ignored: bool,
    /// This event's index among the items of a JSON array body; None for a GET and for a body
    /// that is one object. An id taken from the request rather than the item (a header, query
    /// or cookie `id_from` source, or identity fields none of which is `json.*`) is the same
    /// for every item: the index is mixed into it, or every item after the first would be
    /// answered accepted and dropped as a duplicate.
    pub item: Option<u32>,
}

/// Why a request cannot become an event: the field (index into the type's fields) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub field: usize,
    pub why: &'static str,
}

/// Longest numeric value accepted before decoding fails (covers u64, i64 and money with 6 decimals
/// plus percent-encoding slack).
const NUMBER_BYTES_MAX: usize = 48;
/// Longest amount read at all, decoded: any double printed exactly in plain notation fits (the
/// smallest subnormal has 1074 decimals).
const LONG_AMOUNT_BYTES_MAX: usize = 1100;

/// `a == b` for query parameter names, which are a few bytes long: compared inline, where the
/// slice `==` calls memcmp for every pair of equal length (~1% of a pixel's CPU in perf).
#[inline(always)]
fn key_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// The value a `header.<name>` source reads (`name` lower-case): the first field of that name,
/// except `host`, which is the request's host — the Host field, or the authority of an
/// absolute-form target, which RFC 9112 §3.2.2 says the server MUST use instead.
#[inline]
fn header_source<'a>(req: &RequestView<'a>, name: &str) -> Option<&'a [u8]> {
    if name == "host" {
        req.host
    } else {
        header(req.headers, name)
    }
}

/// Fills `ev` (header fields other than crc/magic/seq included) from the request.
pub fn extract(
    ty: &EventType,
    req: &RequestView<'_>,
    ids: &mut IdGen,
    shard: u16,
    endpoint: u16,
    ev: &mut Event,
) -> Result<(), Rejected> {
    ev.type_id = ty.id;
    ev.ts_ns = req.now_ns;
    ev.shard = shard;
    ev.endpoint = endpoint;
    ev.flags = 0;
    ev.present = 0;
    // A ring slot is reused every `ring_events` events: what an earlier event left in it (a
    // longer string's tail, an absent field's value, another user's consent string) must not
    // reach this event's record on disk, where only `present` and the lengths say what is
    // whose. ~450 bytes of stores, a few ns.
    ev.slots = [0; crate::event::SLOTS];
    ev.bytes = [0; crate::event::STR_BYTES];

    // Query parameters: one pass over the pairs, each matched against the type's query keys;
    // the first occurrence of a parameter wins.
    let mut client_id: Option<&[u8]> = None;
    let mut client_id_rank = usize::MAX;
    // Whether `client_id` is percent-encoded text (a query value, a header or a cookie) or a
    // JSON string, which simd-json has already unescaped: decoding a JSON id again would make
    // `"a+b"` and `"a b"` (or `"x%41"` and `"xA"`) one id, and the second a dropped duplicate.
    let mut client_id_encoded = true;
    // Fields whose query value was an unsubstituted macro (`${AUCTION_PRICE}`, `[ERRORCODE]`)
    // or OpenRTB's `AUDIT`: left absent (never parsed as a value), the event flagged, and a
    // `required` field not refused for it — the notice did arrive, its sender substituted
    // nothing, and a 400 would only make the exchange retry.
    let mut macros = 0u32;
    let mut cut = CutIdentity::default();
    for (k, v) in pairs(req.query) {
        for qk in ty.query_keys_of_len(k.len()) {
            if !key_eq(&qk.name, k) {
                continue;
            }
            match qk.reader {
                QueryReader::Field(i) => {
                    let f = &ty.fields[i];
                    if ev.has(f.slot) || macros & (1 << i) != 0 {
                        continue;
                    }
                    if is_macro(v) {
                        macros |= 1 << i;
                        ev.flags |= FLAG_UNSUBSTITUTED;
                        continue;
                    }
                    if let Some(h) = store_text(f, v, true, ev).map_err(|why| Rejected { field: i, why })? {
                        cut.note(ty, i, h);
                    }
                }
                QueryReader::IdFrom(rank) => {
                    // An id macro the sender did not fill (`eid=${EVENT_ID}`) is no id: taken as
                    // one, it would give every such event one id, and dedup would drop all but
                    // the first.
                    if rank < client_id_rank && is_macro(v) {
                        ev.flags |= FLAG_UNSUBSTITUTED;
                        continue;
                    }
                    if rank < client_id_rank && !v.is_empty() {
                        client_id = Some(v);
                        client_id_rank = rank;
                    }
                }
            }
        }
    }

    for (i, f) in ty.fields.iter().enumerate() {
        if ev.has(f.slot) {
            continue;
        }
        let r = match &f.source {
            Source::Query(_) => Ok(None),
            // An ip field takes the last entry of the whole list (store_text), which is on the
            // last line: a balancer may add its own line after the client's instead of
            // extending it, and the first line is then the client's to invent.
            Source::Header(name) if f.kind == FieldKind::Ip && name != "host" => match header_last(req.headers, name) {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(None),
            },
            Source::Header(name) => match header_source(req, name) {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(None),
            },
            Source::Cookie(name) => match cookie_in(req.headers, name.as_bytes()) {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(None),
            },
            Source::UserAgent => match req.user_agent.or_else(|| header(req.headers, "user-agent")) {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(None),
            },
            Source::Referer => match header(req.headers, "referer") {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(None),
            },
            Source::Json(path) => match req.json.and_then(|obj| json::lookup(obj, path)) {
                Some(v) => json::store(f, v, ev),
                None => Ok(None),
            },
            Source::ClientIp => {
                store_ip(f, req.client_ip, ev);
                Ok(None)
            }
            Source::TimeMs => {
                ev.set_slot(f.slot, req.now_ns / 1_000_000);
                Ok(None)
            }
            Source::DeviceClass => {
                let ua = req.user_agent.or_else(|| header(req.headers, "user-agent"));
                ev.set_str(f.slot, f.offset, f.max, crate::enrich::device::class(ua).as_bytes());
                Ok(None)
            }
            Source::IsBot => {
                let ua = req.user_agent.or_else(|| header(req.headers, "user-agent"));
                ev.set_slot(f.slot, u64::from(ua.is_some_and(crate::enrich::device::is_bot)));
                Ok(None)
            }
        };
        if let Some(h) = r.map_err(|why| Rejected { field: i, why })? {
            cut.note(ty, i, h);
        }
        if !ev.has(f.slot) {
            match &f.default {
                Some(DefaultValue::Num(v)) => ev.set_slot(f.slot, *v),
                Some(DefaultValue::Bytes(b)) => ev.set_str(f.slot, f.offset, f.max, b),
                None if f.required && macros & (1 << i) == 0 => {
                    return Err(Rejected { field: i, why: "missing required value" })
                }
                None => {}
            }
        }
    }

    // The id: client-supplied, else derived from identity fields, else generated.
    let mut json_id = [0u8; 24];
    let mut json_id_len = 0;
    // `id_from` in its order, the first present wins: the other sources listed before the best
    // query source found above (`client_id_rank`, usize::MAX for none) are looked at here.
    let mut json_numeric = false;
    for s in ty.id_from.iter().take(client_id_rank) {
        let v = match s {
            Source::Header(n) => header_source(req, n),
            Source::Cookie(n) => cookie_in(req.headers, n.as_bytes()),
            Source::Json(path) => match req.json.and_then(|obj| json::lookup(obj, path)) {
                Some(simd_json::Node::String(s)) => Some(s.as_bytes()),
                // A numeric id is taken by its decimal text.
                Some(n) => {
                    json_id_len = json_id_text(n, &mut json_id);
                    if json_id_len > 0 {
                        json_numeric = true;
                        break;
                    }
                    None
                }
                None => None,
            },
            _ => None,
        };
        // An id macro left unfilled is no id here either (as `eid=${EVENT_ID}` in a query): a
        // postback template's `"eid":"${EVENT_ID}"` would give every such event one id, and
        // dedup would drop all but the first.
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            if is_macro(v) {
                ev.flags |= FLAG_UNSUBSTITUTED;
                continue;
            }
            client_id = Some(v);
            client_id_encoded = !matches!(s, Source::Json(_));
            break;
        }
    }
    if req.client_id_ignored {
        (client_id, json_numeric) = (None, false);
    }
    if json_numeric {
        client_id = Some(&json_id[..json_id_len]);
        client_id_encoded = false;
    }
    if let Some(v) = client_id {
        let mut buf = [0u8; 64];
        let (n, long, decodable) = match client_id_encoded {
            true => percent_decode(v, &mut buf).map_or((0, true, false), |(n, long)| (n, long, true)),
            false => {
                let (n, long) = copy(v, &mut buf);
                (n, long, false)
            }
        };
        ev.id = match crate::event::parse_uuid(&buf[..n]) {
            Some(u) if !long => u,
            // Hashed as decoded, so `order-1` and `order%2D1` in a query are one id, however
            // long (a value too long for `buf` is decoded again a piece at a time); a value that
            // is not valid percent-encoding is hashed as sent. A JSON id without `%` or `+`
            // hashes as it did when JSON ids were percent-decoded too, so such ids keep their
            // event ids.
            _ if !long => id::from_client_value(&buf[..n]),
            _ if decodable => {
                let mut h = id::client_value_hasher();
                hash_decoded(v, &mut h);
                id::finish_client_value(h)
            }
            _ => id::from_client_value(v),
        };
        if let (Some(item), true) = (req.item, client_id_encoded) {
            ev.id = of_item(ty.key, &ev.id, item);
        }
        ev.flags |= FLAG_ID_CLIENT;
    } else if !ty.identity.is_empty() && ty.identity.iter().all(|&i| ev.has(ty.fields[i].slot)) {
        let mut d = id::Derived::new(ty.key);
        for &i in &ty.identity {
            let f = &ty.fields[i];
            match f.kind {
                FieldKind::Str => {
                    d.part(ev.str_at(f.slot, f.offset, f.max));
                    if let Some(h) = cut.hash_of(i) {
                        d.part(&h.to_le_bytes());
                    }
                }
                FieldKind::Ip => d.part(&ev.bytes[f.offset..f.offset + 16]),
                _ => d.part(&ev.slots[f.slot].to_le_bytes()),
            }
        }
        ev.id = d.finish();
        if let Some(item) = req.item {
            if !ty.identity.iter().any(|&i| matches!(ty.fields[i].source, Source::Json(_))) {
                ev.id = of_item(ty.key, &ev.id, item);
            }
        }
        ev.flags |= FLAG_ID_DERIVED;
    } else if req.client_id_ignored && !ty.identity.is_empty() {
        // A signed click takes its id from its identity fields; a fresh id for one that lacks
        // one would make every replay of the same signed URL a new click (the dedup window
        // folds repeats by id). The config makes every identity field a signed one.
        let missing = ty.identity.iter().copied().find(|&i| !ev.has(ty.fields[i].slot)).unwrap_or(0);
        return Err(Rejected { field: missing, why: "missing: a signed click needs every identity field" });
    } else {
        ev.id = ids.generate(req.now_ns / 1_000_000);
    }
    debug_assert!(ty.fields.iter().all(|f| f.slot < SLOTS));
    Ok(())
}

/// The id of item `item` of a batch whose id came from the request, not the item: a retry of
/// the same request gives each item its id again, and two items never share one.
#[cold]
fn of_item(type_key: u64, request_id: &[u8; 16], item: u32) -> [u8; 16] {
    let mut d = id::Derived::new(type_key);
    d.part(request_id);
    d.part(&item.to_le_bytes());
    d.finish()
}

/// Identity fields whose value was truncated to its slot, with a hash of the whole value: two
/// notices whose auction or impression ids differ only past `max_bytes` must not get one id
/// (the second would be dropped as a duplicate). One entry per field a type may declare
/// (`SLOTS`), so every identity field cut is remembered, however many; 256 bytes of stack, left
/// uninitialised: nearly every request cuts nothing, and zeroing them cost a memset each.
struct CutIdentity {
    /// Invariant: `fields[..len]` are initialised.
    fields: [std::mem::MaybeUninit<(usize, u64)>; SLOTS],
    len: usize,
}

impl Default for CutIdentity {
    fn default() -> CutIdentity {
        CutIdentity { fields: [const { std::mem::MaybeUninit::uninit() }; SLOTS], len: 0 }
    }
}

impl CutIdentity {
    #[cold]
    fn note(&mut self, ty: &EventType, field: usize, hash: u64) {
        if self.len < self.fields.len() && ty.identity.contains(&field) {
            self.fields[self.len].write((field, hash));
            self.len += 1;
        }
    }

    fn hash_of(&self, field: usize) -> Option<u64> {
        self.fields[..self.len].iter().find_map(|e| {
            // SAFETY: entries below `len` were written by `note` (the type's invariant).
            let &(f, h) = unsafe { e.assume_init_ref() };
            (f == field).then_some(h)
        })
    }
}

/// The decimal text of an integer JSON id (`"eid": 123`); other values are no id.
/// Returns its length, 0 for no id.
fn json_id_text(n: &simd_json::Node<'_>, buf: &mut [u8; 24]) -> usize {
    use std::io::Write as _;
    let mut w = &mut buf[..];
    let ok = match n {
        simd_json::Node::Static(simd_json::StaticNode::I64(i)) => write!(w, "{i}").is_ok(),
        simd_json::Node::Static(simd_json::StaticNode::U64(u)) => write!(w, "{u}").is_ok(),
        _ => false,
    };
    if ok {
        24 - w.len()
    } else {
        0
    }
}

/// The length of `b` without a UTF-8 sequence its end cuts short: a value truncated to its
/// slot keeps whole characters (a cut through `é` would make the stored text invalid UTF-8,
/// shown as U+FFFD downstream). Bytes that are not UTF-8 at all are left as they are.
fn whole_utf8_prefix(b: &[u8]) -> usize {
    // The last lead byte among the final 3 bytes (a longer sequence is not cut short here).
    for back in 1..=b.len().min(3) {
        let i = b.len() - back;
        let byte = b[i];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: look further back for its lead
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if back < need { i } else { b.len() };
    }
    b.len()
}

/// The value of string field `f` in this request as extraction reads it (a query value
/// percent-decoded, a header or cookie as sent, a JSON string unescaped) but before the field's
/// `max_bytes` cuts it, written into `buf`: the bytes and whether they are the whole value
/// (false: `buf` was too short). None when the request has no such value, or a query value is
/// not valid percent-encoding. For a step that must judge what was sent rather than what the
/// record keeps: a TCF consent string whose vendor section runs past the consent field.
/// A query parameter is its first non-empty occurrence (extraction also skips an unsubstituted
/// macro there, which no caller of this needs to tell apart).
pub fn text_as_sent<'b>(f: &Field, req: &RequestView<'_>, buf: &'b mut [u8]) -> Option<(&'b [u8], bool)> {
    let copy = |v: &[u8], buf: &'b mut [u8]| {
        let n = v.len().min(buf.len());
        buf[..n].copy_from_slice(&v[..n]);
        Some((&buf[..n], n == v.len()))
    };
    match &f.source {
        Source::Query(name) => {
            let (_, v) = pairs(req.query).find(|(k, v)| key_eq(name.as_bytes(), k) && !v.is_empty())?;
            let (n, cut) = percent_decode(v, buf).ok()?;
            Some((&buf[..n], !cut))
        }
        Source::Header(name) => copy(header_source(req, name)?, buf),
        Source::Cookie(name) => copy(cookie_in(req.headers, name.as_bytes())?, buf),
        Source::UserAgent => copy(req.user_agent.or_else(|| header(req.headers, "user-agent"))?, buf),
        Source::Referer => copy(header(req.headers, "referer")?, buf),
        Source::Json(path) => match req.json.and_then(|obj| json::lookup(obj, path)) {
            Some(simd_json::Node::String(s)) => copy(s.as_bytes(), buf),
            _ => None,
        },
        Source::ClientIp | Source::TimeMs | Source::DeviceClass | Source::IsBot => None,
    }
}

/// A user id (`privacy.user_id_fields`) that may not fit its field: stored as the hex of a
/// 128-bit digest of the whole value, which the privacy step then hashes with its key like any
/// user id. Cut to the field instead, ids sharing their first `max_bytes` (long JWT-like values)
/// would become one user. The digest never leaves the slot unkeyed: the privacy step runs on it
/// (or clears it on an opt-out) before the event is published. A query value is decoded first
/// when it fits the scratch buffer, so `a%2Db` and `a-b` stay one user, as for short ids.
fn store_long_user_id(f: &Field, raw: &[u8], query: bool, ev: &mut Event) -> Result<Option<u64>, &'static str> {
    let mut buf = [0u8; 512];
    let digest = match query.then(|| percent_decode(raw, &mut buf)).transpose()? {
        Some((n, false)) if n <= f.max => {
            // Short once decoded: stored as it is.
            ev.set_str(f.slot, f.offset, f.max, &buf[..n]);
            return Ok(None);
        }
        Some((n, false)) => xxhash_rust::xxh3::xxh3_128(&buf[..n]),
        // Longer than the scratch even decoded: the same digest of the decoded value, fed a
        // piece at a time, so `a-b…` and `a%2Db…` are one user however long (privacy.md).
        Some((_, true)) => {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            hash_decoded(raw, &mut h);
            h.digest128()
        }
        // A header or cookie value: as sent.
        None => xxhash_rust::xxh3::xxh3_128(raw),
    }
    .to_be_bytes();
    let mut hex = [0u8; 32];
    debug_assert!(f.max >= hex.len(), "config: user id fields hold at least USER_HASH_CHARS");
    let n = crate::event::write_hex(&digest, &mut hex[..f.max.min(32)]);
    ev.set_str(f.slot, f.offset, f.max, &hex[..n]);
    Ok(None)
}

/// Stores a textual value (query values are percent-decoded first) as the field's kind.
/// `Some(hash of raw)` when a string was truncated to its slot: what an id derived from it
/// hashes instead of the cut value, so two values that differ only past the cut stay apart.
#[inline]
fn store_text(f: &Field, raw: &[u8], query: bool, ev: &mut Event) -> Result<Option<u64>, &'static str> {
    match f.kind {
        // An empty value is absent, as for numbers: `required` refuses it, `default` fills it,
        // and an identity field left empty (an exchange that does not fill its macro) makes no
        // derived id, so distinct wins of one auction are not merged into one.
        FieldKind::Str if raw.is_empty() => Ok(None),
        FieldKind::Str => {
            let dst = &mut ev.bytes[f.offset..f.offset + f.max];
            if f.user_id && raw.len() > dst.len() {
                return store_long_user_id(f, raw, query, ev);
            }
            let (n, truncated) = if query {
                percent_decode(raw, dst)?
            } else {
                let n = raw.len().min(dst.len());
                dst[..n].copy_from_slice(&raw[..n]);
                (n, n < raw.len())
            };
            let n = if truncated {
                ev.flags |= FLAG_TRUNCATED;
                let whole = whole_utf8_prefix(&dst[..n]);
                // Past the length the slot holds zeros (nothing of a cut character stays).
                dst[whole..n].fill(0);
                whole
            } else {
                n
            };
            if !f.one_of.is_empty() && (truncated || !f.one_of.iter().any(|o| **o == dst[..n])) {
                return Err("is not one of the allowed values");
            }
            ev.set_slot(f.slot, n as u64);
            // A query value is hashed as decoded, as it is stored: a retry that encodes the
            // value otherwise (`-` or `%2D`) is the same value, and must keep its id.
            Ok(truncated.then(|| if query { decoded_hash(raw) } else { xxhash_rust::xxh3::xxh3_64(raw) }))
        }
        FieldKind::Ip => {
            let mut buf = [0u8; 64];
            // A list (`X-Forwarded-For: client, proxy, …`): the last entry is the one the
            // nearest proxy appended, the only one it vouches for; the earlier ones are the
            // client's to invent. Only the tail is looked at, so a long list is no error.
            let tail = &raw[raw.iter().rposition(|&b| b == b',').map_or(0, |p| p + 1)..];
            // `Forwarded` (RFC 7239) says it as the element's `for=` parameter; an element
            // without one names no client.
            let tail = match &f.source {
                Source::Header(h) if h == "forwarded" => match forwarded_for(tail) {
                    Some(node) => node,
                    None => return Ok(None),
                },
                _ => tail,
            };
            // `unknown` (RFC 7239 §6.2; also what Squid writes into X-Forwarded-For when told to
            // hide the client) and an obfuscated node (`_hidden`, §6.3) name no address: the
            // field is absent, not a refused request.
            let node = tail.trim_ascii();
            if node.eq_ignore_ascii_case(b"unknown") || node.first() == Some(&b'_') {
                return Ok(None);
            }
            let (n, long) = if query { percent_decode(tail, &mut buf)? } else { copy(tail, &mut buf) };
            let ip = std::str::from_utf8(&buf[..n])
                .ok()
                .filter(|_| !long)
                .and_then(|s| parse_ip(s.trim()))
                .ok_or("is not an IP address")?;
            store_ip(f, ip, ev);
            Ok(None)
        }
        FieldKind::Money if f.decrypt.is_some() => {
            if raw.is_empty() {
                return Ok(None);
            }
            let mut buf = [0u8; 64];
            let (n, long) = if query { percent_decode(raw, &mut buf)? } else { copy(raw, &mut buf) };
            if long {
                return Err("is too long for an encrypted price");
            }
            let micros = match &f.decrypt {
                Some(g) => g.decrypt(&buf[..n])?,
                None => 0,
            };
            in_range(f, micros as u64)?;
            ev.set_slot(f.slot, micros as u64);
            Ok(None)
        }
        kind => {
            if raw.is_empty() {
                // An empty parameter (`c=`) counts as absent: defaults and `required` apply.
                return Ok(None);
            }
            let mut buf = [0u8; NUMBER_BYTES_MAX];
            let (n, long) = if query { percent_decode(raw, &mut buf)? } else { copy(raw, &mut buf) };
            let (v, lossy) = if long { parse_long_number(kind, raw, query)? } else { parse_number(kind, &buf[..n])? };
            in_range(f, v)?;
            if lossy {
                ev.flags |= FLAG_TRUNCATED;
            }
            ev.set_slot(f.slot, v);
            Ok(None)
        }
    }
}

/// [`parse_number`] of a value longer than NUMBER_BYTES_MAX. Only an amount can be that long and
/// valid: `0.1000000000000000055511151231257827021181583404541015625` is how Java's
/// `BigDecimal(double)` or Python's `Decimal(float)` print 0.1, and an exchange substitutes
/// `${AUCTION_PRICE}` with whatever its language printed. Refused, its notice would be retried
/// until dropped; read, it is cut to micros and flagged like any amount with more decimals.
#[cold]
fn parse_long_number(kind: FieldKind, raw: &[u8], query: bool) -> Result<(u64, bool), &'static str> {
    const TOO_LONG: &str = "is too long for a number";
    if kind != FieldKind::Money {
        return Err(TOO_LONG);
    }
    let mut buf = [0u8; LONG_AMOUNT_BYTES_MAX];
    let (n, long) = if query { percent_decode(raw, &mut buf)? } else { copy(raw, &mut buf) };
    if long {
        return Err(TOO_LONG);
    }
    parse_number(kind, &buf[..n])
}

/// xxh3-64 of a query value as percent-decoded, however long: decoded a piece at a time into a
/// stack buffer (a value may be as long as the request line), each piece cut before a `%` whose
/// escape it would split. The value was checked for bad escapes when it was stored.
#[cold]
fn decoded_hash(raw: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    hash_decoded(raw, &mut h);
    h.digest()
}

/// Feeds `raw` percent-decoded to `h`, a piece at a time (see `decoded_hash`).
#[cold]
fn hash_decoded(raw: &[u8], h: &mut xxhash_rust::xxh3::Xxh3) {
    let mut buf = [0u8; 256];
    let mut rest = raw;
    while !rest.is_empty() {
        let mut cut = rest.len().min(buf.len());
        if cut < rest.len() {
            if let Some(p) = rest[cut - 2..cut].iter().position(|&b| b == b'%') {
                cut = cut - 2 + p;
            }
        }
        // A piece decodes to at most its own length, so it fits; a bad escape cannot occur here.
        let (n, _) = percent_decode(&rest[..cut], &mut buf).unwrap_or((0, false));
        h.update(&buf[..n]);
        rest = &rest[cut..];
    }
}

/// Whether a raw query value is an unsubstituted macro — `${NAME}` (OpenRTB), `[NAME]` (VAST),
/// `{name}`, `%%NAME%%` (ad servers), raw or percent-encoded — or OpenRTB's `AUDIT` value
/// (sent in place of real values when an exchange tests a notice URL). A UUID in braces or
/// brackets (`{3F2504E0-4F89-11D3-9A0C-0305E82C3301}`, .NET's `Guid.ToString("B")`) is a value:
/// no macro is named like one, and taken for a macro an auction id was dropped, so the notice
/// got a generated id and each retry was journaled and billed again.
#[inline]
pub fn is_macro(raw: &[u8]) -> bool {
    if raw.is_empty() || !matches!(raw[0], b'$' | b'[' | b'{' | b'%' | b'A') || raw.len() > 96 {
        return false;
    }
    let inner_ok = |inner: &[u8]| {
        !inner.is_empty()
            && inner.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b':' || c == b'-')
    };
    // `%%NAME%%` sent raw is not valid percent-encoding: recognise it before decoding.
    if raw.len() >= 4 && raw.starts_with(b"%%") && raw.ends_with(b"%%") && inner_ok(&raw[2..raw.len() - 2]) {
        return true;
    }
    let mut buf = [0u8; 96];
    let v = match percent_decode(raw, &mut buf) {
        Ok((n, false)) => &buf[..n],
        _ => return false,
    };
    let bracketed = |inner: &[u8]| inner_ok(inner) && crate::event::parse_uuid(inner).is_none();
    v == b"AUDIT"
        || (v.starts_with(b"${") && v.ends_with(b"}") && inner_ok(&v[2..v.len() - 1]))
        || (v.len() >= 2 && v[0] == b'[' && v[v.len() - 1] == b']' && bracketed(&v[1..v.len() - 1]))
        || (v.len() >= 2 && v[0] == b'{' && v[v.len() - 1] == b'}' && bracketed(&v[1..v.len() - 1]))
        || (v.len() >= 4 && v.starts_with(b"%%") && v.ends_with(b"%%") && inner_ok(&v[2..v.len() - 2]))
}

/// The field's `min`/`max`, compared signed for i64 and money.
#[inline]
fn in_range(f: &Field, v: u64) -> Result<(), &'static str> {
    let Some((lo, hi)) = f.range else { return Ok(()) };
    let ok = match f.kind {
        FieldKind::I64 | FieldKind::Money => (lo as i64..=hi as i64).contains(&(v as i64)),
        _ => (lo..=hi).contains(&v),
    };
    if ok {
        Ok(())
    } else {
        Err("is out of the allowed range (min/max)")
    }
}

#[inline]
fn copy(src: &[u8], dst: &mut [u8]) -> (usize, bool) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    (n, n < src.len())
}

/// An address as proxies write it: bare, or with the port some add (`198.51.100.7:4711`,
/// `[2001:db8::7]:4711`), or an IPv6 one in brackets without a port (`Forwarded`'s
/// `for="[2001:db8::7]"`); the port is no part of what is stored.
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6))
}

/// The node of one `Forwarded` element (RFC 7239 §4: `for=192.0.2.43;proto=https`): its `for`
/// parameter's value, unquoted (`for="[2001:db8:cafe::17]:4711"`); None when it has none.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|&b| b == b';').find_map(|pair| {
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        name.eq_ignore_ascii_case(b"for")
            .then(|| value.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(value))
    })
}

#[inline]
fn store_ip(f: &Field, ip: IpAddr, ev: &mut Event) {
    let dst = &mut ev.bytes[f.offset..f.offset + 16];
    // An IPv4 client seen through a NAT64 translator (`64:ff9b::a.b.c.d`) is that IPv4 client,
    // as budgets count it: stored as IPv6, privacy's /48 left every such client `64:ff9b::`.
    let ip = match ip {
        IpAddr::V6(v6) => crate::enrich::budget::ipv4_inside(&v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            dst.fill(0);
            dst[..4].copy_from_slice(&a.octets());
            ev.set_slot(f.slot, 4);
        }
        IpAddr::V6(a) => {
            dst.copy_from_slice(&a.octets());
            ev.set_slot(f.slot, 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn run(
        cfg: &Config,
        ty: &str,
        query: &[u8],
        headers: &[httparse::Header<'_>],
    ) -> Result<(Event, String), Rejected> {
        run_in(cfg, ty, query, headers, Event::ZERO)
    }

    /// `run` into a slot that holds `ev` beforehand (a reused ring slot).
    fn run_in(
        cfg: &Config,
        ty: &str,
        query: &[u8],
        headers: &[httparse::Header<'_>],
        mut ev: Event,
    ) -> Result<(Event, String), Rejected> {
        let t = cfg.event_type(ty).unwrap();
        let req = RequestView {
            query,
            headers,
            host: header(headers, "host"),
            client_ip: "10.1.2.3".parse().unwrap(),
            now_ns: 1_795_000_000_000_000_000,
            user_agent: None,
            json: None,
            client_id_ignored: false,
            item: None,
        };
        extract(t, &req, &mut IdGen::new(0), 0, 0, &mut ev)?;
        let mut s = String::new();
        cfg.schema.write_json(&ev, &mut s);
        Ok((ev, s))
    }

    #[test]
    fn identity_values_that_differ_only_past_max_bytes_get_different_ids() {
        let cfg = Config::embedded();
        // imp_id holds 32 bytes; these two differ in the 34th.
        let p = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f";
        let q = |n: u32| format!("exch=x1&auction=a1&bid=b1&imp={p}-{n}&price=1");
        let (a, _) = run(&cfg, "win", q(1).as_bytes(), &[]).unwrap();
        let (b, _) = run(&cfg, "win", q(2).as_bytes(), &[]).unwrap();
        let (a2, _) = run(&cfg, "win", q(1).as_bytes(), &[]).unwrap();
        assert_ne!(a.flags & FLAG_ID_DERIVED, 0);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id, a2.id, "a retry is still one id");
    }

    #[test]
    fn a_cut_query_value_is_hashed_as_decoded_whatever_its_length() {
        // Escapes at every position around the 256-byte pieces the value is decoded in.
        for pad in 250..260 {
            let raw = format!("{}%2D%41+b{}", "a".repeat(pad), "%43".repeat(200));
            let decoded = format!("{}-A b{}", "a".repeat(pad), "C".repeat(200));
            assert_eq!(decoded_hash(raw.as_bytes()), xxhash_rust::xxh3::xxh3_64(decoded.as_bytes()), "{pad}");
        }
        assert_eq!(decoded_hash(b""), xxhash_rust::xxh3::xxh3_64(b""));
    }

    /// A query user id longer than the decode scratch (512 bytes) was hashed as sent, so `a-b…`
    /// and `a%2Db…` became two users; it is hashed as decoded, as shorter ones are.
    #[test]
    fn a_very_long_query_user_id_is_one_user_however_it_is_encoded() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[privacy]\nuser_id_fields = [\"uid\"]\n\
                    [event.x]\nfields = [ { name = \"uid\", source = \"query.uid\", type = \"string\", max_bytes = 48 } ]\n";
        let cfg = Config::parse(text, "t.toml").unwrap();
        let uid = |q: String| {
            let (_, json) = run(&cfg, "x", q.as_bytes(), &[]).unwrap();
            serde_json::from_str::<serde_json::Value>(&json).unwrap()["uid"].as_str().unwrap().to_string()
        };
        for len in [100, 400, 600] {
            let plain = uid(format!("uid={}", "a-".repeat(len)));
            assert_eq!(plain, uid(format!("uid={}", "a%2D".repeat(len))), "{len}");
            assert_eq!(plain.len(), 32);
        }
        assert_ne!(uid(format!("uid={}", "a-".repeat(600))), uid(format!("uid={}", "a-".repeat(601))));
    }

    #[test]
    fn a_client_id_is_one_id_however_it_is_percent_encoded() {
        let cfg = Config::embedded();
        let id = |q: &str| run(&cfg, "impression", q.as_bytes(), &[]).unwrap().0.id;
        assert_eq!(id("c=1&eid=order-1"), id("c=1&eid=order%2D1"));
        assert_ne!(id("c=1&eid=order-1"), id("c=1&eid=order-2"));
    }

    #[test]
    fn ids_may_not_be_unkeyed_hashes_of_user_ids_or_addresses() {
        let text = crate::config::DEFAULT_TOML.to_string()
            + "\n[event.probe]\nid_from = [\"cookie.uid\"]\n\
               identity = [\"addr\"]\nfields = [\n  { name = \"user_id\", source = \"cookie.uid\", type = \"string\", max_bytes = 64 },\n\
               { name = \"addr\", source = \"client.ip\", type = \"ip\" },\n]\n";
        let err = Config::parse(&text, "t.toml").map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("is in id_from of event.probe"), "{err}");
        assert!(err.contains("event.probe.identity") && err.contains("\"addr\" is the client address"), "{err}");
    }

    #[test]
    fn a_value_truncated_to_its_slot_keeps_whole_characters() {
        let cfg = Config::embedded();
        // `site` holds 64 bytes: 63 ASCII bytes, then `é` (2 bytes) does not fit whole.
        let site = format!("{}%C3%A9tail", "a".repeat(63));
        let q = format!("c=1&cr=2&p=0.1&site={site}");
        // Into a slot whose bytes are all set, as a reused ring slot may be.
        let mut dirty = Event::ZERO;
        dirty.bytes.fill(0xAA);
        let (ev, json) = run_in(&cfg, "impression", q.as_bytes(), &[], dirty).unwrap();
        assert_ne!(ev.flags & FLAG_TRUNCATED, 0);
        let site = cfg.event_type("impression").unwrap().fields.iter().find(|f| &*f.name == "site").unwrap();
        assert_eq!(ev.bytes[site.offset + 63], 0, "the cut character's first byte is cleared");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["site"], "a".repeat(63), "{json}");
        // A 3-byte character cut after its first or second byte, a 4-byte one after its third.
        assert_eq!(whole_utf8_prefix("ab€".as_bytes()), 5);
        assert_eq!(whole_utf8_prefix(&"ab€".as_bytes()[..3]), 2);
        assert_eq!(whole_utf8_prefix(&"ab€".as_bytes()[..4]), 2);
        assert_eq!(whole_utf8_prefix(&"a😀".as_bytes()[..4]), 1);
        assert_eq!(whole_utf8_prefix(&"a😀".as_bytes()[..5]), 5);
        // Not UTF-8 to begin with: left alone.
        assert_eq!(whole_utf8_prefix(b"ab\xff"), 3);
        assert_eq!(whole_utf8_prefix(b""), 0);
    }

    #[test]
    fn impression_fields_from_the_default_config() {
        let cfg = Config::embedded();
        let (ev, json) = run(&cfg, "impression", b"c=123&cr=45&p=0.25&site=news%2Eexample.com&cb=999", &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["campaign_id"], 123);
        assert_eq!(v["creative_id"], 45);
        assert_eq!(v["price"].as_f64(), Some(0.25));
        assert_eq!(v["site"], "news.example.com");
        assert_eq!(v["ip"], "10.1.2.3");
        assert_eq!(ev.flags & (FLAG_ID_CLIENT | FLAG_ID_DERIVED), 0);
    }

    /// Regression: an amount longer than 48 bytes was refused ("is too long for a number"),
    /// though how Java's BigDecimal(double) prints 0.1 is a fine price, cut to micros.
    #[test]
    fn a_long_exact_amount_is_cut_to_micros_not_refused() {
        let cfg = Config::embedded();
        let exact = "0.1000000000000000055511151231257827021181583404541015625";
        for p in [exact.to_string(), exact.replace('.', "%2E"), format!("{exact}E1")] {
            let (ev, json) = run(&cfg, "impression", format!("c=1&p={p}").as_bytes(), &[]).unwrap();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let want = if p.ends_with("E1") { 1.0 } else { 0.1 };
            assert_eq!((v["price"].as_f64(), v["truncated"].as_bool()), (Some(want), Some(true)), "{p}");
            assert_ne!(ev.flags & crate::event::FLAG_TRUNCATED, 0);
        }
        // Past any double printed exactly, and not an amount: still refused, with the field.
        let t = cfg.event_type("impression").unwrap();
        let long = format!("c=1&p=0.{}", "1".repeat(LONG_AMOUNT_BYTES_MAX));
        let e = run(&cfg, "impression", long.as_bytes(), &[]).unwrap_err();
        assert_eq!((t.fields[e.field].name.as_str(), e.why), ("price", "is too long for a number"));
        let e = run(&cfg, "impression", format!("c={}", "1".repeat(60)).as_bytes(), &[]).unwrap_err();
        assert_eq!((t.fields[e.field].name.as_str(), e.why), ("campaign_id", "is too long for a number"));
    }

    #[test]
    fn nothing_of_an_earlier_event_in_the_slot_survives() {
        let cfg = Config::embedded();
        let t = cfg.event_type("impression").unwrap();
        // What a slot looks like after an event with every field, and longer values.
        let mut used = Event::ZERO;
        used.slots = [0xAAAA; crate::event::SLOTS];
        used.bytes = [0xAA; crate::event::STR_BYTES];
        let (ev, _) = run_in(&cfg, "impression", b"c=7&site=a.io", &[], used).unwrap();
        let (mut fresh, _) = run(&cfg, "impression", b"c=7&site=a.io", &[]).unwrap();
        fresh.id = ev.id;
        assert_eq!(ev.as_bytes()[..], fresh.as_bytes()[..], "the record depends only on this request");
        let site = t.fields.iter().find(|f| f.name == "site").unwrap();
        assert_eq!(&ev.bytes[site.offset..site.offset + site.max], &[b"a.io".as_slice(), &[0; 60]].concat()[..]);
    }

    #[test]
    fn missing_required_and_bad_values_name_the_field() {
        let cfg = Config::embedded();
        let t = cfg.event_type("impression").unwrap();
        let e = run(&cfg, "impression", b"cr=1", &[]).unwrap_err();
        assert_eq!((t.fields[e.field].name.as_str(), e.why), ("campaign_id", "missing required value"));
        let e = run(&cfg, "impression", b"c=12a", &[]).unwrap_err();
        assert_eq!(t.fields[e.field].name, "campaign_id");
        let e = run(&cfg, "impression", b"c=1&p=%zz", &[]).unwrap_err();
        assert_eq!((t.fields[e.field].name.as_str(), e.why), ("price", "bad percent-encoding"));
    }

    #[test]
    fn ids_client_then_identity_then_generated() {
        let cfg = Config::embedded();
        let uuid = b"c=1&eid=0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b";
        let (ev, _) = run(&cfg, "impression", uuid, &[]).unwrap();
        assert_eq!(ev.id, crate::event::parse_uuid(b"0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b").unwrap());
        let (a, _) = run(&cfg, "impression", b"c=1&imp=abc&cb=1", &[]).unwrap();
        let (b, _) = run(&cfg, "impression", b"c=1&imp=abc&cb=2", &[]).unwrap();
        assert_eq!(a.id, b.id, "cache busters never change a derived id");
        assert_ne!(a.flags & FLAG_ID_DERIVED, 0);
        let (c, _) = run(&cfg, "impression", b"c=1", &[]).unwrap();
        let (d, _) = run(&cfg, "impression", b"c=1", &[]).unwrap();
        assert_eq!(c.id[6] >> 4, 7);
        assert_eq!(c.id[..6], d.id[..6]);
    }

    #[test]
    fn unsubstituted_macros_and_audit_are_flagged_not_parsed() {
        for v in [
            "${AUCTION_PRICE}",
            "%24%7BAUCTION_PRICE%7D",
            "AUDIT",
            "[ERRORCODE]",
            "%5BADPLAYHEAD%5D",
            "{price}",
            "%%WINNING_PRICE%%",
        ] {
            assert!(is_macro(v.as_bytes()), "{v}");
        }
        for v in [
            "1.25",
            "AUDITED",
            "[]",
            "$5",
            "abc",
            "%41",
            "",
            "{3F2504E0-4F89-11D3-9A0C-0305E82C3301}",
            "%7B3f2504e0-4f89-11d3-9a0c-0305e82c3301%7D",
            "[3F2504E04F8911D39A0C0305E82C3301]",
        ] {
            assert!(!is_macro(v.as_bytes()), "{v}");
        }
        let cfg = Config::embedded();
        let (ev, json) =
            run(&cfg, "bill", b"auction=a1&price=%24%7BAUCTION_PRICE%7D&cur=${AUCTION_CURRENCY}", &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v.get("price").is_none(), "{json}");
        assert_eq!(v["currency"], "USD", "the default applies");
        assert_eq!(v["unsubstituted"], true);
        assert_ne!(ev.flags & FLAG_UNSUBSTITUTED, 0);
        let (_, json) = run(&cfg, "win", b"auction=AUDIT&price=AUDIT", &[]).unwrap();
        assert!(json.contains("\"unsubstituted\":true") && !json.contains("\"price\""), "{json}");
        // A plain bad price is still refused.
        assert!(run(&cfg, "win", b"auction=a&price=cheap", &[]).is_err());
    }

    #[test]
    fn min_and_max_bound_numbers() {
        let cfg = Config::embedded();
        let t = cfg.event_type("win").unwrap();
        let e = run(&cfg, "win", b"auction=a&price=-0.01", &[]).unwrap_err();
        assert_eq!((t.fields[e.field].name.as_str(), e.why), ("price", "is out of the allowed range (min/max)"));
        assert!(run(&cfg, "win", b"auction=a&price=0", &[]).is_ok());
        let text = "[event.x]\nfields = [\n  { name = \"n\", source = \"query.n\", type = \"i64\", min = -5, max = 5 },\n  { name = \"m\", source = \"query.m\", type = \"u32\", min = 9, max = 2 },\n  { name = \"s\", source = \"query.s\", type = \"string\", min = 1 },\n]\n";
        let errs = Config::parse(text, "t.toml").unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["event.x.fields[1].min", "event.x.fields[2].min"], "{errs:?}");
        let ok =
            "[event.x]\nfields = [\n  { name = \"n\", source = \"query.n\", type = \"i64\", min = -5, max = 5 },\n]\n";
        let cfg = Config::parse(ok, "t.toml").unwrap();
        assert!(run(&cfg, "x", b"n=-5", &[]).is_ok() && run(&cfg, "x", b"n=5", &[]).is_ok());
        assert!(run(&cfg, "x", b"n=-6", &[]).is_err() && run(&cfg, "x", b"n=6", &[]).is_err());
    }

    #[test]
    fn one_of_restricts_string_values() {
        let cfg = Config::embedded();
        assert!(run(&cfg, "video", b"ev=firstQuartile", &[]).is_ok());
        let t = cfg.event_type("video").unwrap();
        let e = run(&cfg, "video", b"ev=firstquartile", &[]).unwrap_err();
        assert_eq!((t.fields[e.field].name.as_str(), e.why), ("vast_event", "is not one of the allowed values"));
        let (_, json) = run(&cfg, "video", b"ev=error&err=[ERRORCODE]&aph=00%3A00%3A15.000", &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v.get("error_code").is_none());
        assert_eq!(v["ad_playhead"], "00:00:15.000");
    }

    /// `Forwarded` (RFC 7239) gives the client in its last element's `for=` parameter, which
    /// was refused as "not an IP address" (every event through such a proxy was lost); and a
    /// proxy that hides the client (`unknown`, `_hidden`) leaves the field absent.
    #[test]
    fn an_ip_field_reads_forwarded_and_takes_unknown_for_absent() {
        let text = "[[endpoint]]\npath = \"/x\"\nevent = \"x\"\n[privacy]\nip = \"keep\"\n[event.x]\nfields = [\n\
                    { name = \"fwd\", source = \"header.forwarded\", type = \"ip\" },\n\
                    { name = \"xff\", source = \"header.x-forwarded-for\", type = \"ip\" },\n]\n";
        let cfg = Config::parse(text, "t.toml").unwrap();
        let addr = |fwd: &[u8], xff: &[u8]| {
            let h = [
                httparse::Header { name: "Forwarded", value: fwd },
                httparse::Header { name: "X-Forwarded-For", value: xff },
            ];
            let (_, json) = run(&cfg, "x", b"", &h).unwrap_or_else(|e| panic!("{e:?}"));
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            (v["fwd"].as_str().map(str::to_string), v["xff"].as_str().map(str::to_string))
        };
        let ip = |s: &str| Some(s.to_string());
        assert_eq!(addr(b"for=192.0.2.43", b"198.51.100.7"), (ip("192.0.2.43"), ip("198.51.100.7")));
        assert_eq!(addr(b"for=192.0.2.60;proto=http;by=203.0.113.43", b"10.0.0.1:4711").0, ip("192.0.2.60"));
        assert_eq!(addr(b"For=\"[2001:db8:cafe::17]:4711\"", b"10.0.0.1").0, ip("2001:db8:cafe::17"));
        assert_eq!(addr(b"for=\"[2001:db8::1]\"", b"10.0.0.1").0, ip("2001:db8::1"));
        // The last element: the one the nearest proxy wrote.
        assert_eq!(addr(b"for=1.2.3.4, for=192.0.2.43", b"10.0.0.1").0, ip("192.0.2.43"));
        assert_eq!(addr(b"for=unknown", b"unknown"), (None, None));
        assert_eq!(addr(b"for=_hidden, proto=https", b"_x").0, None);
        assert_eq!(addr(b"by=203.0.113.43", b"10.0.0.1").0, None, "no for=: no client named");
        let h = [httparse::Header { name: "Forwarded", value: b"for=not-an-address" }];
        assert!(run(&cfg, "x", b"", &h).is_err());
    }

    #[test]
    fn cookies_and_defaults() {
        let cfg = Config::embedded();
        let h = [httparse::Header { name: "Cookie", value: b"a=1; uid=\"u-42\"; z=9" }];
        let (_, json) = run(&cfg, "conversion", b"order=o1", &h).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["user_id"], "u-42");
        let (_, json) = run(&cfg, "win", b"auction=a1&price=1.5", &[]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["currency"], "USD");
        assert_eq!(v["price"].as_f64(), Some(1.5));
    }

    #[test]
    fn a_derived_id_does_not_move_when_a_reload_adds_another_type() {
        // A type named before `bill` shifts its position (its `id`); a retried bill must keep
        // its id, or the dedup window and every consumer count it twice.
        let before = Config::embedded();
        let text = crate::config::DEFAULT_TOML.to_string() + "\n[event.aaa]\nfields = []\n";
        let after = Config::parse(&text, "t.toml").unwrap();
        assert_ne!(before.event_type("bill").unwrap().id, after.event_type("bill").unwrap().id);
        let q = b"exch=x1&auction=a1&bid=b1&imp=i1&price=1.25";
        let (x, _) = run(&before, "bill", q, &[]).unwrap();
        let (y, _) = run(&after, "bill", q, &[]).unwrap();
        assert_eq!(x.id, y.id);
        assert_ne!(x.flags & FLAG_ID_DERIVED, 0);
    }

    #[test]
    fn an_empty_identity_value_makes_no_derived_id_and_fails_required() {
        let cfg = Config::embedded();
        // An exchange that leaves its bid and imp macros empty: two slots of one auction.
        let (a, _) = run(&cfg, "win", b"exch=x1&auction=a1&bid=&imp=&price=1.10", &[]).unwrap();
        let (b, _) = run(&cfg, "win", b"exch=x1&auction=a1&bid=&imp=&price=2.20", &[]).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.flags & FLAG_ID_DERIVED, 0);
        // Empty is absent: a required string refuses it like a missing one.
        let ty = cfg.event_type("win").unwrap();
        let auction = ty.fields.iter().find(|f| f.name == "auction_id").expect("win has auction_id");
        assert!(auction.required, "the default win requires its auction id");
        assert!(run(&cfg, "win", b"exch=x1&auction=&bid=b&imp=i&price=1", &[]).is_err());
    }

    #[test]
    fn every_cut_identity_field_keeps_ids_apart_not_only_the_first_four() {
        let mut text = String::from("[[endpoint]]\npath = \"/n\"\nevent = \"n\"\n[event.n]\nidentity = [\"a\", \"b\", \"c\", \"d\", \"e\"]\nfields = [\n");
        for f in ["a", "b", "c", "d", "e"] {
            text.push_str(&format!(
                "  {{ name = \"{f}\", source = \"query.{f}\", type = \"string\", max_bytes = 4 }},\n"
            ));
        }
        text.push_str("]\n");
        let cfg = Config::parse(&text, "t.toml").unwrap();
        // Every value is cut at 4 bytes; the two requests differ only past the cut of the 5th.
        let q = |last: &str| format!("a=aaaaaa&b=bbbbbb&c=cccccc&d=dddddd&e=eeee{last}");
        let (x, _) = run(&cfg, "n", q("x1").as_bytes(), &[]).unwrap();
        let (y, _) = run(&cfg, "n", q("y2").as_bytes(), &[]).unwrap();
        assert_ne!(x.flags & FLAG_ID_DERIVED, 0);
        assert_ne!(x.id, y.id);
    }
}
