//! Request bodies of POST endpoints: which media types and encodings are accepted, and gzip
//! inflation with hard caps.
//!
//! Stage: between framing (connection.rs has the body bytes, Content-Length or de-chunked) and
//! JSON parsing (extract::json). In: the request headers and body; out: the body to parse, either
//! the received bytes or the inflated ones in this shard's fixed scratch — or a 4xx with a reason.
//!
//! Must never happen: memory growing with what a client sends. A gzip body inflates into a
//! buffer of `server.body_decoded_bytes_max` bytes allocated at start; inflation stops at that
//! cap, or earlier at `body_inflate_ratio_max` × the compressed size, and the request gets 413 —
//! a gzip bomb costs at most one scratch's worth of inflate work. miniz_oxide inflates raw
//! deflate into a caller's slice with no allocation of its own; we parse the gzip framing
//! (RFC 1952) around it and check the trailer's CRC32 and size.

use miniz_oxide::inflate::core::{decompress, inflate_flags, DecompressorOxide};
use miniz_oxide::inflate::TINFLStatus;

use crate::extract::json::INPUT_PADDING;
use crate::http::query::header;

/// Why a body is refused: the status and a reason for the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub reason: &'static str,
}

const fn refused(status: u16, reason: &'static str) -> Refused {
    Refused { status, reason }
}

/// How the body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
}

/// Checks `Content-Type` (JSON; `text/plain` as `navigator.sendBeacon` sends a string; absent)
/// and `Content-Encoding` (absent, identity or gzip). Anything else is 415.
pub fn content(headers: &[httparse::Header<'_>]) -> Result<Encoding, Refused> {
    // A singleton field (RFC 9110 §8.3): two lines could each be read as the one that counts.
    if headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-type")).nth(1).is_some() {
        return Err(refused(400, "more than one Content-Type"));
    }
    if let Some(ct) = header(headers, "content-type") {
        let media = ct.split(|&b| b == b';').next().unwrap_or(b"");
        let media = media.trim_ascii();
        let ok = media.eq_ignore_ascii_case(b"application/json")
            || media.eq_ignore_ascii_case(b"text/plain")
            || media.is_empty();
        if !ok {
            return Err(refused(415, "content type must be application/json or text/plain (a JSON text)"));
        }
    }
    // Every coding of every Content-Encoding field line, in order (RFC 9110 §8.4: a list, and
    // several lines are one list): reading only the first line would take a twice-gzipped
    // body for a once-gzipped one.
    let mut encoding = Encoding::Identity;
    let lines = headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-encoding"));
    for coding in lines.flat_map(|h| h.value.split(|&b| b == b',')).map(<[u8]>::trim_ascii) {
        if coding.is_empty() || coding.eq_ignore_ascii_case(b"identity") {
            continue;
        }
        if !(coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip")) {
            return Err(refused(415, "content encoding must be gzip or identity"));
        }
        if encoding == Encoding::Gzip {
            return Err(refused(415, "content encoding gzip applied more than once"));
        }
        encoding = Encoding::Gzip;
    }
    Ok(encoding)
}

/// gzip member header flags (RFC 1952 §2.3.1).
const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

/// The inflate state and output of one shard, allocated once at start.
pub struct Inflater {
    state: Box<DecompressorOxide>,
    /// `decoded_max + INPUT_PADDING` bytes: the JSON parser needs the padding after the text.
    out: Vec<u8>,
    decoded_max: usize,
    ratio_max: usize,
}

impl Inflater {
    pub fn new(decoded_max: usize, ratio_max: usize) -> Inflater {
        Inflater { state: Box::default(), out: vec![0; decoded_max + INPUT_PADDING], decoded_max, ratio_max }
    }

    /// Inflates one gzip member. Returns the inflated length; the bytes are `out()[..len]` and
    /// `out()` has `INPUT_PADDING` spare bytes after them.
    pub fn gunzip(&mut self, input: &[u8]) -> Result<usize, Refused> {
        let data = deflate_data(input)?;
        // The ratio is taken over the deflate stream and its trailer: over the whole body, the
        // optional header fields (an extra field of up to 64 KiB, a name, a comment) would lift
        // the cap of a tiny stream to megabytes.
        let cap = self.decoded_max.min(data.len().saturating_mul(self.ratio_max));
        self.state.init();
        let flags = inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        let (status, used, n) = decompress(&mut self.state, data, &mut self.out[..cap], 0, flags);
        match status {
            TINFLStatus::Done => {}
            TINFLStatus::HasMoreOutput if cap < self.decoded_max => {
                return Err(refused(413, "gzip body inflates more than body_inflate_ratio_max times its size"))
            }
            TINFLStatus::HasMoreOutput => return Err(refused(413, "gzip body inflates beyond body_decoded_bytes_max")),
            _ => return Err(refused(400, "gzip body is corrupt or truncated")),
        }
        let trailer = &data[used..];
        if trailer.len() != 8 {
            return Err(refused(400, "gzip body has a bad trailer or more than one member"));
        }
        let crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let size = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        if crc != crc32fast::hash(&self.out[..n]) || size != n as u32 {
            return Err(refused(400, "gzip body fails its CRC32 or size check"));
        }
        Ok(n)
    }

    pub fn out(&mut self) -> &mut [u8] {
        &mut self.out
    }
}

/// The deflate stream (and trailer) after a gzip member header.
fn deflate_data(b: &[u8]) -> Result<&[u8], Refused> {
    const BAD: Refused = refused(400, "body is not gzip");
    if b.len() < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 || b[3] & FRESERVED != 0 {
        return Err(BAD);
    }
    let flg = b[3];
    let mut i = 10;
    if flg & FEXTRA != 0 {
        let xlen = u16::from_le_bytes([*b.get(i).ok_or(BAD)?, *b.get(i + 1).ok_or(BAD)?]) as usize;
        i += 2 + xlen;
    }
    for flag in [FNAME, FCOMMENT] {
        if flg & flag != 0 {
            let z = b.get(i..).ok_or(BAD)?.iter().position(|&c| c == 0).ok_or(BAD)?;
            i += z + 1;
        }
    }
    if flg & FHCRC != 0 {
        // The low 16 bits of the CRC32 of the header before it.
        let stored = u16::from_le_bytes([*b.get(i).ok_or(BAD)?, *b.get(i + 1).ok_or(BAD)?]);
        if stored != crc32fast::hash(&b[..i]) as u16 {
            return Err(refused(400, "gzip header fails its CRC16"));
        }
        i += 2;
    }
    b.get(i..).ok_or(BAD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn gz(data: &[u8]) -> Vec<u8> {
        // Built by hand (header, raw deflate, trailer) so the test needs no other encoder.
        let mut v = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        v.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
        v.extend(crc32fast::hash(data).to_le_bytes());
        v.extend((data.len() as u32).to_le_bytes());
        v
    }

    #[test]
    fn inflates_and_checks_trailer() {
        let mut inf = Inflater::new(4096, 100);
        let body = br#"[{"type":"a"},{"type":"b"}]"#;
        let n = inf.gunzip(&gz(body)).unwrap();
        assert_eq!(&inf.out()[..n], body);
        let mut bad = gz(body);
        let l = bad.len();
        bad[l - 5] ^= 1; // CRC
        assert_eq!(inf.gunzip(&bad).unwrap_err().status, 400);
        assert_eq!(inf.gunzip(b"not gzip at all, not at all").unwrap_err().status, 400);
        // Trailing bytes after the member are refused.
        let mut two = gz(body);
        two.extend(gz(body));
        assert_eq!(inf.gunzip(&two).unwrap_err().status, 400);
    }

    #[test]
    fn header_fields_are_skipped() {
        let body = b"{\"a\":1}";
        let plain = gz(body);
        let mut v = vec![0x1f, 0x8b, 8, FEXTRA | FNAME | FCOMMENT, 0, 0, 0, 0, 0, 255, 2, 0, b'x', b'y'];
        v.extend(b"name\0comment\0");
        v.extend(&plain[10..]);
        let mut inf = Inflater::new(4096, 100);
        let n = inf.gunzip(&v).unwrap();
        assert_eq!(&inf.out()[..n], body);
        // FHCRC: the low 16 bits of the header's CRC32, checked.
        let mut h = vec![0x1f, 0x8b, 8, FHCRC, 0, 0, 0, 0, 0, 255];
        let crc16 = (crc32fast::hash(&h) as u16).to_le_bytes();
        h.extend(crc16);
        h.extend(&plain[10..]);
        let n = inf.gunzip(&h).unwrap();
        assert_eq!(&inf.out()[..n], body);
        h[10] ^= 1;
        assert_eq!(inf.gunzip(&h).unwrap_err().reason, "gzip header fails its CRC16");
    }

    /// Header fields do not count towards the ratio: 60 KiB of extra field around a stream
    /// that inflates 1000 times its size is still refused at a ratio of 100.
    #[test]
    fn the_ratio_is_over_the_deflate_stream_not_the_header() {
        let zeros = vec![0u8; 200_000];
        let plain = gz(&zeros);
        let stream = plain.len() - 10;
        assert!(zeros.len() > 100 * stream, "{stream}");
        let mut padded = vec![0x1f, 0x8b, 8, FEXTRA, 0, 0, 0, 0, 0, 255];
        padded.extend(60_000u16.to_le_bytes());
        padded.extend(vec![b'x'; 60_000]);
        padded.extend(&plain[10..]);
        assert!(zeros.len() < 100 * padded.len(), "over the whole body it would pass");
        let mut inf = Inflater::new(1 << 20, 100);
        let e = inf.gunzip(&padded).unwrap_err();
        assert_eq!((e.status, e.reason), (413, "gzip body inflates more than body_inflate_ratio_max times its size"));
        assert_eq!(Inflater::new(1 << 20, 10_000).gunzip(&padded), Ok(zeros.len()));
    }

    #[test]
    fn bombs_stop_at_the_caps() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = gz(&zeros);
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        // Size cap (ratio generous).
        let mut inf = Inflater::new(64 * 1024, 100_000);
        let e = inf.gunzip(&bomb).unwrap_err();
        assert_eq!((e.status, e.reason), (413, "gzip body inflates beyond body_decoded_bytes_max"));
        // Ratio cap.
        let mut inf = Inflater::new(4 << 20, 10);
        assert_eq!(inf.gunzip(&bomb).unwrap_err().status, 413);
        // A body at exactly the cap is fine.
        let mut inf = Inflater::new(1000, 100_000);
        assert_eq!(inf.gunzip(&gz(&[b' '; 1000])).unwrap(), 1000);
    }

    #[test]
    fn media_types() {
        let h = |name: &'static str, v: &'static [u8]| httparse::Header { name, value: v };
        assert_eq!(content(&[]), Ok(Encoding::Identity));
        assert_eq!(content(&[h("Content-Type", b"text/plain;charset=UTF-8")]), Ok(Encoding::Identity));
        assert_eq!(content(&[h("content-type", b"Application/JSON; charset=utf-8")]), Ok(Encoding::Identity));
        assert_eq!(content(&[h("Content-Type", b"application/x-www-form-urlencoded")]).unwrap_err().status, 415);
        assert_eq!(content(&[h("Content-Encoding", b"gzip")]), Ok(Encoding::Gzip));
        assert_eq!(content(&[h("Content-Encoding", b"br")]).unwrap_err().status, 415);
        // A list, over one line or several: every coding counts.
        assert_eq!(content(&[h("Content-Encoding", b"identity, gzip")]), Ok(Encoding::Gzip));
        assert_eq!(content(&[h("Content-Encoding", b"gzip, gzip")]).unwrap_err().status, 415);
        let twice = [h("Content-Encoding", b"gzip"), h("Content-Type", b"text/plain"), h("content-encoding", b"gzip")];
        assert_eq!(content(&twice).unwrap_err().reason, "content encoding gzip applied more than once");
        assert_eq!(content(&[h("Content-Encoding", b"gzip"), h("Content-Encoding", b"br")]).unwrap_err().status, 415);
        let two_types = [h("Content-Type", b"text/plain"), h("content-type", b"application/x-www-form-urlencoded")];
        assert_eq!(content(&two_types).unwrap_err().reason, "more than one Content-Type");
    }

    /// Random bytes, and gzip with random damage, never panic; whatever is accepted keeps to both
    /// limits and is refused with a 4xx otherwise.
    #[test]
    fn random_bodies_never_panic_and_keep_to_the_limits() {
        let mut inf = Inflater::new(4096, 50);
        let good = gz(br#"[{"type":"a","value":1},{"type":"b","value":2}]"#);
        let mut rng = crate::xorshift::Xorshift64::new(0x2545_f491_4f6c_dd1d);
        for round in 0..3000 {
            let x = rng.next();
            let mut v = good.clone();
            if round % 2 == 0 {
                let i = (x as usize >> 8) % v.len();
                v[i] = x as u8;
                v.truncate(v.len() - (x as usize >> 20) % 4);
            } else {
                v.clear();
                let _ = write!(v, "{x:x}{}", x.wrapping_mul(31));
                v.splice(0..0, [0x1f, 0x8b, 8, (x >> 3) as u8]);
            }
            match inf.gunzip(&v) {
                Ok(n) => assert!(n <= 4096 && n <= v.len() * 50, "round {round}: {n} bytes from {}", v.len()),
                Err(e) => assert!(matches!(e.status, 400 | 413), "round {round}: {}", e.status),
            }
        }
    }
}
