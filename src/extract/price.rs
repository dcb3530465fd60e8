//! Encrypted prices: the scheme Google Authorized Buyers uses for `${AUCTION_PRICE}` (its
//! "decrypt price confirmations" guide), selected per field with `decrypt = "google"`.
//!
//! ```text
//! value      = web-safe base64 (padding optional) of  iv (16) | ciphertext (8) | signature (4)
//! pad        = HMAC-SHA1(encryption_key, iv)[0..8]
//! price      = ciphertext XOR pad               (big-endian u64, micros of the account currency)
//! signature == HMAC-SHA1(integrity_key, price || iv)[0..4]   else refused
//! ```
//! The keys are the 32-byte values the exchange issues, configured in web-safe base64. The HMAC
//! states are keyed once at config load and cloned per request: no allocation. The signature is
//! compared in constant time, so a forger learns nothing from timing.

use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// The reason text of a price that fails its integrity check (the connection counts it).
pub const INTEGRITY: &str = "failed its integrity check (encrypted price)";

#[derive(Clone)]
pub struct GooglePrice {
    encryption: HmacSha1,
    integrity: HmacSha1,
}

impl std::fmt::Debug for GooglePrice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GooglePrice { keys: <redacted> }")
    }
}

impl GooglePrice {
    /// Longest key accepted: HMAC-SHA1's block; a longer one would be hashed down first.
    pub const KEY_BYTES_MAX: usize = 64;
    /// Shortest key accepted (Google's keys are 32 bytes).
    pub const KEY_BYTES_MIN: usize = 16;

    /// One key as configured (web-safe base64, padding optional), decoded; `Err` says what a
    /// key must be.
    pub fn key_from_config(key: &str) -> Result<Vec<u8>, String> {
        let mut out = [0u8; Self::KEY_BYTES_MAX];
        match websafe_b64(key.as_bytes(), &mut out) {
            Some(n) if n >= Self::KEY_BYTES_MIN => Ok(out[..n].to_vec()),
            _ => Err(format!("is not web-safe base64 of a {}..={}-byte key", Self::KEY_BYTES_MIN, Self::KEY_BYTES_MAX)),
        }
    }

    /// From the two keys as configured; the first error names the key it is about.
    pub fn from_config(encryption_key: &str, integrity_key: &str) -> Result<GooglePrice, String> {
        let e = Self::key_from_config(encryption_key).map_err(|why| format!("encryption_key {why}"))?;
        let i = Self::key_from_config(integrity_key).map_err(|why| format!("integrity_key {why}"))?;
        Ok(Self::new(&e, &i))
    }

    /// From the two decoded keys.
    pub fn new(encryption_key: &[u8], integrity_key: &[u8]) -> GooglePrice {
        let mk = |k: &[u8]| HmacSha1::new_from_slice(k).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        GooglePrice { encryption: mk(encryption_key), integrity: mk(integrity_key) }
    }

    /// Decrypts one value to micros; `Err` with the reason.
    pub fn decrypt(&self, value: &[u8]) -> Result<i64, &'static str> {
        let mut raw = [0u8; 48];
        let n = websafe_b64(value, &mut raw).ok_or("is not a web-safe base64 encrypted price")?;
        if n != 28 {
            return Err("is not a 28-byte encrypted price");
        }
        let (iv, rest) = raw[..28].split_at(16);
        let (ct, sig) = rest.split_at(8);
        let mut e = self.encryption.clone();
        e.update(iv);
        let pad = e.finalize().into_bytes();
        let mut price = [0u8; 8];
        for k in 0..8 {
            price[k] = ct[k] ^ pad[k];
        }
        let mut i = self.integrity.clone();
        i.update(&price);
        i.update(iv);
        i.verify_truncated_left(sig).map_err(|_| INTEGRITY)?;
        i64::try_from(u64::from_be_bytes(price)).map_err(|_| "decrypted price is out of range")
    }
}

/// Decodes web-safe base64 (`-`, `_`; `=` padding optional) into `out`; None on any other byte,
/// a bad length, or an output longer than `out`.
fn websafe_b64(s: &[u8], out: &mut [u8]) -> Option<usize> {
    let s = match s.iter().position(|&c| c == b'=') {
        Some(p) if s[p..].iter().all(|&c| c == b'=') && s[p..].len() <= 2 => &s[..p],
        Some(_) => return None,
        None => s,
    };
    if s.len() % 4 == 1 {
        return None;
    }
    crate::http::query::base64url_decode(s, out).map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys and values published in Google's "decrypt price confirmations" guide.
    const EKEY: &str = "skU7Ax_NL5pPAFyKdkfZjZz2-VhIN8bjj1rVFOaJ_5o=";
    const IKEY: &str = "arO23ykdNqUQ5LEoQ0FVmPkBd7xB5CO89PDZlSjpFxo=";

    #[test]
    fn published_test_vectors_decrypt() {
        let g = GooglePrice::from_config(EKEY, IKEY).unwrap();
        assert_eq!(g.decrypt(b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msaw"), Ok(100));
        assert_eq!(g.decrypt(b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCAWJRxOgA"), Ok(1900));
        assert_eq!(g.decrypt(b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemC32prpWWw"), Ok(2700));
        assert_eq!(g.decrypt(b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemC32prpWWw=="), Ok(2700), "padding is optional");
    }

    #[test]
    fn tampered_values_and_wrong_keys_are_refused() {
        let g = GooglePrice::from_config(EKEY, IKEY).unwrap();
        // One flipped character in the ciphertext, the iv, the signature.
        for bad in [
            &b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msbw"[..],
            b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCde_6msaw",
            b"ZWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msaw",
        ] {
            assert_eq!(g.decrypt(bad), Err(INTEGRITY), "{}", String::from_utf8_lossy(bad));
        }
        let other = GooglePrice::from_config(IKEY, EKEY).unwrap();
        assert_eq!(other.decrypt(b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce_6msaw"), Err(INTEGRITY));
        assert!(g.decrypt(b"1.25").is_err());
        assert!(g.decrypt(b"YWJj").is_err());
        assert!(g.decrypt(b"YWJjMTIzZGVmNDU2Z2hpN7fhCuPemCce+6msaw").is_err(), "standard base64 alphabet");
        assert!(GooglePrice::from_config("short", IKEY).is_err());
    }
}
