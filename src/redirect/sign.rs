//! The click-URL signature: HMAC-SHA256 over a canonical message, sent as base64url.
//!
//! ```text
//! message = "tracker-redirect-v2" LF
//!           endpoint-path LF           (the [[endpoint]]'s `path`, exactly as configured)
//!           kid LF
//!           exp LF                     (decimal unix seconds, exactly as in the URL)
//!           landing-url LF             (after one percent-decoding of the `url` parameter)
//!           1*( field-name "=" value LF )   (each signed field in config order; value is the
//!                                        percent-decoded query parameter, empty when absent)
//! sig     = base64url-without-padding( HMAC-SHA256(key, message) )   (43 characters)
//! ```
//! docs/redirects.md states the same for people signing from other languages, with a test
//! vector that `tests::doc_test_vector` checks.
//!
//! Verification clones a keyed HMAC state prepared at config load (no key schedule per
//! request, no allocation) and compares tags with `Mac::verify_slice`, which is constant-time:
//! an early-exit compare would tell an attacker, byte by byte through response timing, how
//! much of a forged signature is right.
//!
//! The endpoint's path is in the message because keys may be shared between redirect
//! endpoints with different rules: without it a URL signed for a lenient endpoint would verify
//! on a strict one. It is the configured path, not the request target, so the signer (who knows
//! only the config) and the verifier agree byte for byte whatever encoding a client sends.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub type HmacSha256 = Hmac<Sha256>;

/// First line of every signed message: names the algorithm so a future version cannot be
/// confused with this one. v2 added the endpoint-path line; v1 (no path) is not accepted, so no
/// v1 signature can verify as a v2 message.
pub const DOMAIN: &[u8] = b"tracker-redirect-v2\n";
/// Length of a base64url (no padding) SHA-256 tag.
pub const SIG_CHARS: usize = 43;

/// A signing key: its id (the `kid` parameter) and the HMAC state keyed with its secret.
/// `Debug` prints the id only, so a config dump never shows a secret.
#[derive(Clone)]
pub struct Key {
    pub id: String,
    mac: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(id: &str, secret: &[u8]) -> Key {
        // HMAC takes keys of any length: new_from_slice cannot fail for it.
        let mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        Key { id: id.to_string(), mac }
    }

    /// A fresh HMAC state keyed with this key, with the message's fixed head written. `path`
    /// is the endpoint's configured path; it never holds a line break (config refuses one).
    #[inline]
    pub fn start(&self, path: &[u8], exp: &[u8], url: &[u8]) -> Signer {
        debug_assert!(!path.contains(&b'\n'));
        let mut m = self.mac.clone();
        m.update(DOMAIN);
        m.update(path);
        m.update(b"\n");
        m.update(self.id.as_bytes());
        m.update(b"\n");
        m.update(exp);
        m.update(b"\n");
        m.update(url);
        m.update(b"\n");
        Signer(m)
    }
}

/// An HMAC over a message being written; add the signed fields, then finish or verify.
pub struct Signer(HmacSha256);

impl Signer {
    #[inline]
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.0.update(name);
        self.0.update(b"=");
        self.0.update(value);
        self.0.update(b"\n");
    }

    /// The tag as base64url without padding.
    pub fn finish(self) -> [u8; SIG_CHARS] {
        let tag = self.0.finalize().into_bytes();
        let mut out = [0u8; SIG_CHARS];
        base64url_encode(&tag, &mut out);
        out
    }

    /// Constant-time comparison with a received tag.
    #[inline]
    pub fn verify(self, tag: &[u8; 32]) -> bool {
        self.0.verify_slice(tag).is_ok()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Encodes 32 bytes as 43 base64url characters, no padding.
pub fn base64url_encode(tag: &[u8], out: &mut [u8; SIG_CHARS]) {
    debug_assert_eq!(tag.len(), 32);
    let mut o = 0;
    for chunk in tag.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for k in 0..chars {
            out[o] = B64[(n >> (18 - 6 * k) & 63) as usize];
            o += 1;
        }
    }
    debug_assert_eq!(o, SIG_CHARS);
}

/// Decodes exactly 43 base64url characters (no padding) into a 32-byte tag. Refuses any other
/// length, any other alphabet (`+`, `/`, `=`), and non-canonical trailing bits.
pub fn base64url_decode(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != SIG_CHARS {
        return None;
    }
    let mut out = [0u8; 32];
    let (n, leftover) = crate::http::query::base64url_decode(s, &mut out)?;
    // 43 × 6 = 258 bits: 256 used, the last 2 must be zero (one encoding per tag).
    (n == 32 && leftover == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hexd(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// The vector printed in docs/redirects.md, computed independently of this code (Python's
    /// hmac module and `openssl dgst -mac HMAC`); if this test changes, the doc must change with
    /// it.
    #[test]
    fn doc_test_vector() {
        let key = Key::new("2026-11", &hexd("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"));
        let mut s =
            key.start(b"/c", b"1798761600", b"https://www.example.com/landing?utm_source=tracker&cid={campaign_id}");
        s.field(b"campaign_id", b"123");
        s.field(b"creative_id", b"45");
        s.field(b"impression_id", b"imp-abc");
        let sig = s.finish();
        assert_eq!(std::str::from_utf8(&sig).unwrap(), DOC_SIG);
        let tag = base64url_decode(&sig).unwrap();
        let mut v =
            key.start(b"/c", b"1798761600", b"https://www.example.com/landing?utm_source=tracker&cid={campaign_id}");
        v.field(b"campaign_id", b"123");
        v.field(b"creative_id", b"45");
        v.field(b"impression_id", b"imp-abc");
        assert!(v.verify(&tag));
    }

    pub const DOC_SIG: &str = "X0E-JflEKx2mxBewb-yQN8gu437wA_UwdYjro2qLXF4";

    /// The same click signed under v1 (no endpoint-path line; the vector docs/redirects.md
    /// printed before v2, from Python's hmac module) is refused: v1 URLs are not accepted.
    #[test]
    fn v1_signature_does_not_verify() {
        let key = Key::new("2026-11", &hexd("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"));
        let v1 = base64url_decode(b"KGDJyzalfRILQk7k9Ritxru5__ZxlhT_DtbnE9cz8og").unwrap();
        for path in [&b"/c"[..], b""] {
            let mut v =
                key.start(path, b"1798761600", b"https://www.example.com/landing?utm_source=tracker&cid={campaign_id}");
            v.field(b"campaign_id", b"123");
            v.field(b"creative_id", b"45");
            v.field(b"impression_id", b"imp-abc");
            assert!(!v.verify(&v1));
        }
    }

    #[test]
    fn base64url_round_trip_and_strictness() {
        for seed in 0u8..50 {
            let tag: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed));
            let mut s = [0u8; SIG_CHARS];
            base64url_encode(&tag, &mut s);
            assert_eq!(base64url_decode(&s), Some(tag));
        }
        let mut s = [b'A'; SIG_CHARS];
        assert_eq!(base64url_decode(&s), Some([0; 32]));
        s[42] = b'B'; // sets one of the two unused trailing bits
        assert_eq!(base64url_decode(&s), None);
        s[42] = b'+';
        assert_eq!(base64url_decode(&s), None);
        assert_eq!(base64url_decode(&s[..42]), None);
        assert_eq!(base64url_decode(b""), None);
    }
}
