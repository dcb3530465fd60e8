//! Extraction: one parsed request → one `Event`, following the event type's field table.
//!
//! Stage: after routing, before the ring push. In: the request's query, headers and client
//! address; out: a filled `Event` (written in place, straight into the ring slot) or the first
//! field that made the request unacceptable. Pure, no I/O, no allocation: values are decoded
//! directly into the event's slots and byte area.

mod id;
mod value;

pub use id::IdGen;
pub use value::{parse_number, percent_decode};

use std::net::IpAddr;

use crate::config::{DefaultValue, EventType, Field, Source};
use crate::event::{Event, FLAG_ID_CLIENT, FLAG_ID_DERIVED, FLAG_TRUNCATED, SLOTS};
use crate::http::query::{cookie_in, header};
use crate::schema::FieldKind;

/// What extraction sees of a request.
pub struct RequestView<'a> {
    pub query: &'a [u8],
    pub headers: &'a [httparse::Header<'a>],
    pub client_ip: IpAddr,
    pub now_ns: u64,
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

    // Query parameters: one pass over the pairs, each matched against the (≤ 16) query fields;
    // the first occurrence of a parameter wins.
    let mut client_id: Option<&[u8]> = None;
    let mut client_id_rank = usize::MAX;
    for pair in req.query.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(p) => (&pair[..p], &pair[p + 1..]),
            None => (pair, &pair[..0]),
        };
        for (i, f) in ty.fields.iter().enumerate() {
            if let Source::Query(name) = &f.source {
                if name.as_bytes() == k && !ev.has(f.slot) {
                    store_text(f, v, true, ev).map_err(|why| Rejected { field: i, why })?;
                }
            }
        }
        for (rank, s) in ty.id_from.iter().enumerate() {
            if let Source::Query(name) = s {
                if name.as_bytes() == k && rank < client_id_rank && !v.is_empty() {
                    client_id = Some(v);
                    client_id_rank = rank;
                }
            }
        }
    }

    for (i, f) in ty.fields.iter().enumerate() {
        if ev.has(f.slot) {
            continue;
        }
        let r = match &f.source {
            Source::Query(_) => Ok(()),
            Source::Header(name) => match header(req.headers, name) {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(()),
            },
            Source::Cookie(name) => match cookie_in(req.headers, name.as_bytes()) {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(()),
            },
            Source::UserAgent => match header(req.headers, "user-agent") {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(()),
            },
            Source::Referer => match header(req.headers, "referer") {
                Some(v) => store_text(f, v, false, ev),
                None => Ok(()),
            },
            Source::ClientIp => {
                store_ip(f, req.client_ip, ev);
                Ok(())
            }
            Source::TimeMs => {
                ev.set_slot(f.slot, req.now_ns / 1_000_000);
                Ok(())
            }
        };
        r.map_err(|why| Rejected { field: i, why })?;
        if !ev.has(f.slot) {
            match &f.default {
                Some(DefaultValue::Num(v)) => ev.set_slot(f.slot, *v),
                Some(DefaultValue::Bytes(b)) => ev.set_str(f.slot, f.offset, f.max, b),
                None if f.required => return Err(Rejected { field: i, why: "missing required value" }),
                None => {}
            }
        }
    }

    // The id: client-supplied, else derived from identity fields, else generated.
    if client_id.is_none() {
        for s in ty.id_from.iter() {
            let v = match s {
                Source::Header(n) => header(req.headers, n),
                Source::Cookie(n) => cookie_in(req.headers, n.as_bytes()),
                _ => None,
            };
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                client_id = Some(v);
                break;
            }
        }
    }
    if let Some(v) = client_id {
        let mut buf = [0u8; 64];
        let (n, long) = percent_decode(v, &mut buf).unwrap_or((0, true));
        ev.id = match crate::event::parse_uuid(&buf[..n]) {
            Some(u) if !long => u,
            _ => id::from_client_value(v),
        };
        ev.flags |= FLAG_ID_CLIENT;
    } else if !ty.identity.is_empty() && ty.identity.iter().all(|&i| ev.has(ty.fields[i].slot)) {
        let mut d = id::Derived::new(ty.id);
        for &i in &ty.identity {
            let f = &ty.fields[i];
            match f.kind {
                FieldKind::Str => d.part(ev.str_at(f.slot, f.offset, f.max)),
                FieldKind::Ip => d.part(&ev.bytes[f.offset..f.offset + 16]),
                _ => d.part(&ev.slots[f.slot].to_le_bytes()),
            }
        }
        ev.id = d.finish();
        ev.flags |= FLAG_ID_DERIVED;
    } else {
        ev.id = ids.generate(req.now_ns / 1_000_000);
    }
    debug_assert!(ty.fields.iter().all(|f| f.slot < SLOTS));
    Ok(())
}

/// Stores a textual value (query values are percent-decoded first) as the field's kind.
#[inline]
fn store_text(f: &Field, raw: &[u8], query: bool, ev: &mut Event) -> Result<(), &'static str> {
    match f.kind {
        FieldKind::Str => {
            let dst = &mut ev.bytes[f.offset..f.offset + f.max];
            let (n, truncated) = if query {
                percent_decode(raw, dst)?
            } else {
                let n = raw.len().min(dst.len());
                dst[..n].copy_from_slice(&raw[..n]);
                (n, n < raw.len())
            };
            if truncated {
                ev.flags |= FLAG_TRUNCATED;
            }
            ev.set_slot(f.slot, n as u64);
            Ok(())
        }
        FieldKind::Ip => {
            let mut buf = [0u8; 64];
            let (n, long) = if query { percent_decode(raw, &mut buf)? } else { copy(raw, &mut buf) };
            let ip = std::str::from_utf8(&buf[..n])
                .ok()
                .filter(|_| !long)
                .and_then(|s| s.trim().parse::<IpAddr>().ok())
                .ok_or("is not an IP address")?;
            store_ip(f, ip, ev);
            Ok(())
        }
        kind => {
            if raw.is_empty() {
                // An empty parameter (`c=`) counts as absent: defaults and `required` apply.
                return Ok(());
            }
            let mut buf = [0u8; NUMBER_BYTES_MAX];
            let (n, long) = if query { percent_decode(raw, &mut buf)? } else { copy(raw, &mut buf) };
            if long {
                return Err("is too long for a number");
            }
            let (v, lossy) = parse_number(kind, &buf[..n])?;
            if lossy {
                ev.flags |= FLAG_TRUNCATED;
            }
            ev.set_slot(f.slot, v);
            Ok(())
        }
    }
}

#[inline]
fn copy(src: &[u8], dst: &mut [u8]) -> (usize, bool) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    (n, n < src.len())
}

#[inline]
fn store_ip(f: &Field, ip: IpAddr, ev: &mut Event) {
    let dst = &mut ev.bytes[f.offset..f.offset + 16];
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
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
        let t = cfg.event_type(ty).unwrap();
        let req =
            RequestView { query, headers, client_ip: "10.1.2.3".parse().unwrap(), now_ns: 1_795_000_000_000_000_000 };
        let mut ev = Event::ZERO;
        extract(t, &req, &mut IdGen::new(0), 0, 0, &mut ev)?;
        let mut s = String::new();
        cfg.schema.write_json(&ev, &mut s);
        Ok((ev, s))
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
}
