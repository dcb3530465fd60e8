//! The schema: which field of which event type lives in which slot and byte range.
//!
//! Built from config at start, embedded as JSON in every journal segment header, so a segment is
//! self-describing: `tracker journal cat` decodes events with the schema it finds in the file,
//! never with the config that happens to be on disk now.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use crate::event::{format_uuid, Event};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    pub version: u32,
    pub event_bytes: u32,
    pub types: Vec<TypeSchema>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TypeSchema {
    pub id: u16,
    pub name: String,
    pub fields: Vec<FieldSchema>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FieldSchema {
    pub name: String,
    pub kind: FieldKind,
    /// Numeric slot (strings: their length; ip: the address family, 4 or 6).
    pub slot: u8,
    /// Start of the value in the byte area (strings and ip only).
    #[serde(default)]
    pub offset: u16,
    /// Bytes reserved in the byte area (strings and ip only).
    #[serde(default)]
    pub max: u16,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    /// Unsigned 64-bit id (campaign, creative, line item ...).
    U64,
    /// Unsigned 32-bit count or duration.
    U32,
    /// Signed 64-bit integer.
    I64,
    /// Money as signed micros: "0.25" is stored as 250000.
    Money,
    /// Bounded byte string; longer values are truncated and the event flagged.
    Str,
    /// IPv4 or IPv6 address, 16 bytes in the byte area (IPv4 as its first 4 bytes).
    Ip,
}

impl FieldKind {
    pub const ALL: [FieldKind; 6] =
        [FieldKind::U64, FieldKind::U32, FieldKind::I64, FieldKind::Money, FieldKind::Str, FieldKind::Ip];

    /// The kind as a field's `type = "…"` spells it in the config.
    pub fn config_name(self) -> &'static str {
        match self {
            FieldKind::U64 => "u64",
            FieldKind::U32 => "u32",
            FieldKind::I64 => "i64",
            FieldKind::Money => "money",
            FieldKind::Str => "string",
            FieldKind::Ip => "ip",
        }
    }

    /// Bytes this kind needs in the byte area for a declared maximum.
    pub fn area_bytes(self, max: u16) -> u16 {
        match self {
            FieldKind::Str => max,
            FieldKind::Ip => 16,
            _ => 0,
        }
    }
}

impl Schema {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("schema serialises")
    }

    pub fn from_json(b: &[u8]) -> Result<Schema, String> {
        let s: Schema = serde_json::from_slice(b).map_err(|e| format!("schema JSON: {e}"))?;
        if s.version != SCHEMA_VERSION {
            return Err(format!("schema version {} (this build reads {SCHEMA_VERSION})", s.version));
        }
        Ok(s)
    }

    /// The version `json` declares when it is one this build does not read because it is
    /// newer: a segment written by a later tracker, not a damaged one. Readers stop there
    /// rather than skip it, so a rollback never passes over events a re-upgrade would deliver.
    pub fn newer_version(json: &[u8]) -> Option<u32> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        serde_json::from_slice::<Versioned>(json).ok().map(|v| v.version).filter(|&v| v > SCHEMA_VERSION)
    }

    /// Appends the event as one JSON object (no newline) to `out`: `type`, `id`, `ts`, `ts_ns`,
    /// `shard`, `seq`, `truncated` when set, then every present field by its configured name.
    pub fn write_json(&self, e: &Event, out: &mut String) {
        let ty = self.types.iter().find(|t| t.id == e.type_id);
        let mut id = [0u8; 36];
        format_uuid(&e.id, &mut id);
        out.push_str("{\"type\":");
        match ty {
            Some(t) => json_str(out, t.name.as_bytes()),
            None => {
                let _ = write!(out, "\"#{}\"", e.type_id);
            }
        }
        let _ = write!(
            out,
            ",\"id\":\"{}\",\"ts\":\"{}\",\"ts_ns\":{},\"shard\":{},\"seq\":{}",
            std::str::from_utf8(&id).unwrap_or(""),
            rfc3339_nanos(e.ts_ns),
            e.ts_ns,
            e.shard,
            e.seq
        );
        crate::event::write_flags_json(e.flags, out);
        let Some(t) = ty else {
            out.push('}');
            return;
        };
        for f in &t.fields {
            let slot = f.slot as usize;
            if slot >= e.slots.len() || !e.has(slot) {
                continue;
            }
            out.push(',');
            json_str(out, f.name.as_bytes());
            out.push(':');
            let v = e.slots[slot];
            match f.kind {
                FieldKind::U64 | FieldKind::U32 => {
                    let _ = write!(out, "{v}");
                }
                FieldKind::I64 => {
                    let _ = write!(out, "{}", v as i64);
                }
                FieldKind::Money => {
                    let m = v as i64;
                    let sign = if m < 0 { "-" } else { "" };
                    let a = m.unsigned_abs();
                    let _ = write!(out, "{sign}{}.{:06}", a / 1_000_000, a % 1_000_000);
                }
                FieldKind::Str => {
                    let (o, m) = (f.offset as usize, f.max as usize);
                    if o + m <= e.bytes.len() {
                        json_str(out, e.str_at(slot, o, m));
                    } else {
                        out.push_str("null");
                    }
                }
                FieldKind::Ip => {
                    let o = f.offset as usize;
                    if o + 16 > e.bytes.len() {
                        out.push_str("null");
                        continue;
                    }
                    let b = &e.bytes[o..o + 16];
                    let ip: std::net::IpAddr = if v == 4 {
                        std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
                    } else {
                        let mut a = [0u8; 16];
                        a.copy_from_slice(b);
                        std::net::Ipv6Addr::from(a).into()
                    };
                    let _ = write!(out, "\"{ip}\"");
                }
            }
        }
        out.push('}');
    }
}

/// Writes `b` as a JSON string; valid UTF-8 as its text, each byte that is not part of valid
/// UTF-8 as a lone surrogate escape `\udc80`..`\udcff` (below). U+2028 and U+2029 are
/// escaped too: JSON allows them raw, but JavaScript before ES2019 ends a line at them, so a
/// consumer that embeds our JSON in a script would break on an event carrying one.
pub fn json_str(out: &mut String, b: &[u8]) {
    out.push('"');
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 || is_js_line_separator(c) => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        // A byte that is not part of valid UTF-8 (always 0x80..=0xFF) as the lone low surrogate
        // U+DC80 + (byte - 0x80), PEP 383's "surrogateescape": valid JSON text, and never the
        // escape of a valid string (UTF-8 cannot hold a surrogate), so different bytes stay
        // different strings where U+FFFD made them one. Python reads the bytes back with
        // `s.encode("utf-8", "surrogateescape")`.
        for &x in chunk.invalid() {
            let _ = write!(out, "\\u{:04x}", 0xdc00 + u32::from(x));
        }
    }
    out.push('"');
}

/// U+2028 LINE SEPARATOR and U+2029 PARAGRAPH SEPARATOR: valid raw in JSON, line ends in
/// JavaScript before ES2019; every JSON string we write escapes them.
fn is_js_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// `v` as compact JSON, as `serde_json::to_vec` writes it but with U+2028 and U+2029 escaped
/// like [`json_str`] does: for JSON built with serde_json (the banker's body).
pub fn json_vec(v: &serde_json::Value) -> Vec<u8> {
    struct JsSafe;
    impl serde_json::ser::Formatter for JsSafe {
        fn write_string_fragment<W: ?Sized + std::io::Write>(&mut self, w: &mut W, s: &str) -> std::io::Result<()> {
            let mut rest = s;
            while let Some(i) = rest.find(is_js_line_separator) {
                let c = rest[i..].chars().next().expect("found at i");
                w.write_all(&rest.as_bytes()[..i])?;
                write!(w, "\\u{:04x}", c as u32)?;
                rest = &rest[i + c.len_utf8()..];
            }
            w.write_all(rest.as_bytes())
        }
    }
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, JsSafe);
    v.serialize(&mut ser).expect("a JSON value serialises");
    out
}

/// Unix nanoseconds as RFC 3339 UTC with nanoseconds, e.g. `2026-11-26T07:22:02.123456789Z`.
pub fn rfc3339_nanos(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let nanos = ns % 1_000_000_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: U+2028 and U+2029 were written raw. JSON allows them in strings, JavaScript
    /// before ES2019 does not, so a consumer embedding a line of `journal cat`, jsonl or a Kafka
    /// value in a script broke on an event that carried one.
    #[test]
    fn json_strings_escape_the_javascript_line_separators() {
        let mut out = String::new();
        json_str(&mut out, "a\u{2028}b\u{2029}c\u{2027}".as_bytes());
        assert_eq!(out, "\"a\\u2028b\\u2029c\u{2027}\"");
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), "a\u{2028}b\u{2029}c\u{2027}");
    }

    /// Regression: invalid bytes became U+FFFD, so `a\xff` and `a\xfe` were written alike.
    #[test]
    fn json_strings_keep_bytes_that_are_not_utf8_apart_as_lone_surrogates() {
        let j = |b: &[u8]| {
            let mut out = String::new();
            json_str(&mut out, b);
            out
        };
        assert_eq!(j(b"a\xff"), r#""a\udcff""#);
        assert_eq!(j(b"a\xfe"), r#""a\udcfe""#);
        // A truncated sequence, then valid text again; U+FFFD itself stays as it is.
        assert_eq!(j(b"\xe2\x82x\xc3\xa9\xef\xbf\xbd"), "\"\\udce2\\udc82x\u{e9}\u{fffd}\"");
        // Valid UTF-8 is written as before, and reads back with a strict parser.
        assert_eq!(j("a%FF\u{fffd}".as_bytes()), "\"a%FF\u{fffd}\"");
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339_nanos(1_795_678_922_500_000_000), "2026-11-26T07:42:02.500000000Z");
    }

    #[test]
    fn event_json_names_every_present_field() {
        let schema = Schema {
            version: SCHEMA_VERSION,
            event_bytes: 512,
            types: vec![TypeSchema {
                id: 0,
                name: "impression".into(),
                fields: vec![
                    FieldSchema { name: "campaign_id".into(), kind: FieldKind::U64, slot: 0, offset: 0, max: 0 },
                    FieldSchema { name: "price".into(), kind: FieldKind::Money, slot: 1, offset: 0, max: 0 },
                    FieldSchema { name: "site".into(), kind: FieldKind::Str, slot: 2, offset: 0, max: 8 },
                    FieldSchema { name: "absent".into(), kind: FieldKind::U32, slot: 3, offset: 0, max: 0 },
                ],
            }],
        };
        let mut e = Event::ZERO;
        e.set_slot(0, 7);
        e.set_slot(1, 250_000);
        e.set_str(2, 0, 8, b"a\"b");
        let mut s = String::new();
        schema.write_json(&e, &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["type"], "impression");
        assert_eq!(v["campaign_id"], 7);
        assert_eq!(v["price"].as_f64(), Some(0.25));
        assert_eq!(v["site"], "a\"b");
        assert!(v.get("absent").is_none());
    }
}
