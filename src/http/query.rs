//! Reading values out of a request without allocating: query-string pairs, percent-decoding
//! into a caller's slice, cookies, header lookup and comma-separated header lists.
//!
//! Everything here returns sub-slices of its input or writes into a destination the caller
//! sized; a value that does not fit is an error (`TooLong`), never a reallocation.

use httparse::Header;

/// Why a query value could not be percent-decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// `%` not followed by two hex digits (`%zz`, or `%4` at the end): answer 400.
    BadEscape,
    /// The decoded value is longer than the destination slice.
    TooLong,
}

/// The `key=value` pairs of a query string, in order, raw (not decoded). Empty segments
/// (`a=1&&b=2`) are skipped; a segment without `=` is a key with an empty value. Keys are
/// compared raw by callers: configured parameter names are plain ASCII, and decoding keys would
/// cost a scratch buffer per pair.
#[derive(Debug, Clone)]
pub struct Pairs<'q> {
    rest: &'q [u8],
}

/// Iterates the pairs of `query` (the part after `?`, without it).
#[inline]
pub fn pairs(query: &[u8]) -> Pairs<'_> {
    Pairs { rest: query }
}

impl<'q> Iterator for Pairs<'q> {
    type Item = (&'q [u8], &'q [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let (pair, rest) = match self.rest.iter().position(|&b| b == b'&') {
                Some(i) => (&self.rest[..i], &self.rest[i + 1..]),
                None => (self.rest, &b""[..]),
            };
            self.rest = rest;
            if pair.is_empty() {
                continue;
            }
            return Some(match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            });
        }
        None
    }
}

/// The raw value of the first pair whose raw key is `key`.
#[inline]
pub fn find<'q>(query: &'q [u8], key: &[u8]) -> Option<&'q [u8]> {
    pairs(query).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Percent-decodes a query value into `dst` and returns the decoded length. `+` is a space
/// (application/x-www-form-urlencoded); bytes ≥ 0x80 pass through, so UTF-8 stays UTF-8 — the
/// result is not checked to be UTF-8, nor to be free of decoded control bytes (`%00`): that is
/// the consumer's decision. On error `dst` holds a partial value.
pub fn percent_decode(src: &[u8], dst: &mut [u8]) -> Result<usize, DecodeError> {
    match percent_decode_truncating(src, dst)? {
        (n, false) => Ok(n),
        (_, true) => Err(DecodeError::TooLong),
    }
}

/// Like `percent_decode`, but a value longer than `dst` is cut to fit: returns the bytes written
/// and whether any were dropped. The whole input is still checked for bad escapes.
pub fn percent_decode_truncating(src: &[u8], dst: &mut [u8]) -> Result<(usize, bool), DecodeError> {
    // Most values (ids, domains, consent strings) have no escape at all, or a long run before
    // the first: copy that run in one go, then decode byte by byte from there.
    let plain = memchr::memchr2(b'%', b'+', src).unwrap_or(src.len());
    let take = plain.min(dst.len());
    dst[..take].copy_from_slice(&src[..take]);
    let (mut i, mut n, mut truncated) = (plain, take, plain > take);
    while i < src.len() {
        let b = match src[i] {
            b'%' => {
                let hi = src.get(i + 1).copied().and_then(hex);
                let lo = src.get(i + 2).copied().and_then(hex);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(DecodeError::BadEscape);
                };
                i += 3;
                hi << 4 | lo
            }
            b'+' => {
                i += 1;
                b' '
            }
            c => {
                i += 1;
                c
            }
        };
        match dst.get_mut(n) {
            Some(slot) => {
                *slot = b;
                n += 1;
            }
            None => truncated = true,
        }
    }
    Ok((n, truncated))
}

/// Decodes base64url (RFC 4648 §5: `-` and `_`, no padding) into `out`. Returns the bytes
/// written and the leftover bits below the last whole byte (a canonical encoding leaves them 0);
/// None on a byte outside the alphabet or an output longer than `out`. Length and padding
/// rules are the caller's (a signature tag and an encrypted price differ there).
pub fn base64url_decode(s: &[u8], out: &mut [u8]) -> Option<(usize, u32)> {
    let (mut acc, mut bits, mut n) = (0u32, 0u32, 0usize);
    for &c in s {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    Some((n, acc))
}

/// The value of one hex digit (either case).
#[inline]
pub fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// The value of cookie `name` in one Cookie header value (`a=1; b=2`, RFC 6265 §4.2.1).
/// Names are case-sensitive; whitespace around pairs is tolerated (clients vary); a value in
/// double quotes is returned without them. The first match wins.
pub fn cookie<'v>(header_value: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    cookies(header_value, name).next()
}

/// Every value of cookie `name` in one Cookie header value, in order. A browser sends one pair
/// per path or domain the cookie was set for (`optout=; optout=1`), most specific path first.
pub fn cookies<'v, 'n>(header_value: &'v [u8], name: &'n [u8]) -> impl Iterator<Item = &'v [u8]> + 'n
where
    'v: 'n,
{
    header_value.split(|&b| b == b';').filter_map(move |part| {
        let part = trim_ows(part);
        let eq = part.iter().position(|&b| b == b'=')?;
        if trim_ows(&part[..eq]) != name {
            return None;
        }
        let v = trim_ows(&part[eq + 1..]);
        let unquoted = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\""));
        Some(unquoted.unwrap_or(v))
    })
}

/// The value of cookie `name` across every Cookie header of a request.
pub fn cookie_in<'b>(headers: &[Header<'b>], name: &[u8]) -> Option<&'b [u8]> {
    headers.iter().filter(|h| h.name.eq_ignore_ascii_case("cookie")).find_map(|h| cookie(h.value, name))
}

/// The value of the first header field named `name`, compared case-insensitively
/// (field names are case-insensitive, RFC 9110 §5.1).
#[inline]
pub fn header<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// The value of the last header field named `name`, compared case-insensitively. Several lines
/// of one field are one list in order (RFC 9110 §5.3): for a list intermediaries append to
/// (`X-Forwarded-For`), a line one adds after the client's own holds the list's end.
#[inline]
pub fn header_last<'b>(headers: &[Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers.iter().rev().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
}

/// Whether a comma-separated header value (`Connection: keep-alive, Upgrade`) holds `token`,
/// compared case-insensitively, ignoring optional whitespace around members.
pub fn list_has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|m| trim_ows(m).eq_ignore_ascii_case(token))
}

/// Strips SP and HTAB (OWS, RFC 9110 §5.6.3) from both ends.
#[inline]
fn trim_ows(b: &[u8]) -> &[u8] {
    let ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = b.iter().position(|c| !ows(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !ows(c)).map_or(start, |p| p + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(src: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut dst = [0u8; 32];
        percent_decode(src, &mut dst).map(|n| dst[..n].to_vec())
    }

    #[test]
    fn pairs_in_order() {
        let got: Vec<_> = pairs(b"a=1&&b=&c&=d&e=x=y&").collect();
        let want: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", b""), (b"c", b""), (b"", b"d"), (b"e", b"x=y")];
        assert_eq!(got, want);
        assert_eq!(pairs(b"").count(), 0);
        assert_eq!(pairs(b"&&").count(), 0);
    }

    #[test]
    fn find_first_occurrence() {
        assert_eq!(find(b"cid=1&u=2&cid=3", b"cid"), Some(&b"1"[..]));
        assert_eq!(find(b"cid=1&u=2", b"u"), Some(&b"2"[..]));
        assert_eq!(find(b"cid=1", b"ci"), None);
        assert_eq!(find(b"xcid=1", b"cid"), None);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(decode(b"%41"), Ok(b"A".to_vec()));
        assert_eq!(decode(b"a%2Fb%2f"), Ok(b"a/b/".to_vec()));
        assert_eq!(decode(b"a+b"), Ok(b"a b".to_vec()));
        assert_eq!(decode(b"%2B"), Ok(b"+".to_vec()));
        assert_eq!(decode(b"plain-_.~"), Ok(b"plain-_.~".to_vec()));
        assert_eq!(decode(b""), Ok(Vec::new()));
    }

    #[test]
    fn percent_decoding_utf8_passthrough() {
        assert_eq!(decode("é".as_bytes()), Ok("é".as_bytes().to_vec()));
        assert_eq!(decode(b"%C3%A9"), Ok("é".as_bytes().to_vec()));
    }

    #[test]
    fn percent_decoding_rejects_bad_escapes() {
        assert_eq!(decode(b"%zz"), Err(DecodeError::BadEscape));
        assert_eq!(decode(b"%4"), Err(DecodeError::BadEscape));
        assert_eq!(decode(b"ab%4"), Err(DecodeError::BadEscape));
        assert_eq!(decode(b"%"), Err(DecodeError::BadEscape));
        assert_eq!(decode(b"%4g"), Err(DecodeError::BadEscape));
        assert_eq!(decode(b"%+1"), Err(DecodeError::BadEscape));
    }

    #[test]
    fn percent_decoding_too_long() {
        let mut dst = [0u8; 3];
        assert_eq!(percent_decode(b"abc", &mut dst), Ok(3));
        assert_eq!(percent_decode(b"%41%42%43", &mut dst), Ok(3));
        assert_eq!(percent_decode(b"abcd", &mut dst), Err(DecodeError::TooLong));
        assert_eq!(percent_decode(b"a", &mut []), Err(DecodeError::TooLong));
    }

    #[test]
    fn percent_decoding_after_a_plain_run() {
        // The run before the first escape is copied whole; what follows is still decoded and
        // checked, also once the output is full.
        assert_eq!(decode(b"abc%41d+e"), Ok(b"abcAd e".to_vec()));
        let mut dst = [0u8; 3];
        assert_eq!(percent_decode_truncating(b"abcdef", &mut dst), Ok((3, true)));
        assert_eq!(&dst, b"abc");
        assert_eq!(percent_decode_truncating(b"ab%41%42", &mut dst), Ok((3, true)));
        assert_eq!(&dst, b"abA");
        assert_eq!(percent_decode_truncating(b"abcdef%zz", &mut dst), Err(DecodeError::BadEscape));
        assert_eq!(percent_decode_truncating(b"abcdef%4", &mut dst), Err(DecodeError::BadEscape));
    }

    #[test]
    fn cookies() {
        assert_eq!(cookie(b"a=1; b=2", b"a"), Some(&b"1"[..]));
        assert_eq!(cookie(b"a=1; b=2", b"b"), Some(&b"2"[..]));
        assert_eq!(cookie(b"a=1;b=2", b"b"), Some(&b"2"[..]));
        assert_eq!(cookie(b"  a = 1 ;\tb=2  ", b"a"), Some(&b"1"[..]));
        assert_eq!(cookie(b"a=1; b=2", b"c"), None);
        assert_eq!(cookie(b"a=1; b=2", b"A"), None, "names are case-sensitive");
        assert_eq!(cookie(b"ab=1; b=2", b"b"), Some(&b"2"[..]));
        assert_eq!(cookie(b"flag; b=", b"b"), Some(&b""[..]));
        assert_eq!(cookie(b"uid=\"x y\"", b"uid"), Some(&b"x y"[..]));
        assert_eq!(cookie(b"uid=a=b", b"uid"), Some(&b"a=b"[..]));
        assert_eq!(cookie(b"", b"a"), None);
        // The name's bytes appear, but only inside another cookie's name or value.
        assert_eq!(cookie(b"x=optout; optout2=1", b"optout"), None);
        assert_eq!(cookie(b"x=optout; optout=1", b"optout"), Some(&b"1"[..]));
    }

    #[test]
    fn cookies_across_headers() {
        let h = [
            Header { name: "Host", value: b"a" },
            Header { name: "Cookie", value: b"a=1" },
            Header { name: "cookie", value: b"b=2; a=3" },
        ];
        assert_eq!(cookie_in(&h, b"b"), Some(&b"2"[..]));
        assert_eq!(cookie_in(&h, b"a"), Some(&b"1"[..]));
        assert_eq!(cookie_in(&h, b"c"), None);
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let h = [Header { name: "User-Agent", value: b"ua" }, Header { name: "X-A", value: b"1" }];
        assert_eq!(header(&h, "user-agent"), Some(&b"ua"[..]));
        assert_eq!(header(&h, "USER-AGENT"), Some(&b"ua"[..]));
        assert_eq!(header(&h, "x-b"), None);
    }

    #[test]
    fn token_lists() {
        assert!(list_has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(list_has_token(b" Close ", b"close"));
        assert!(!list_has_token(b"closed", b"close"));
        assert!(!list_has_token(b"", b"close"));
    }
}
