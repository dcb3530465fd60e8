//! CORS for the POST endpoints: is the request's `Origin` on the `[cors] origins` allowlist?
//!
//! Stage: before routing (a preflight `OPTIONS` is answered here, never becomes an event) and
//! when writing a POST answer (the allowed origin is echoed). Pure, no allocation.
//!
//! The rule: an origin is allowed when it equals, byte for byte, one of the configured origins
//! (browsers send `Origin` as `scheme://host[:port]`, lower-case, no trailing slash), or when
//! `"*"` was configured explicitly. The answer echoes the request's origin (or `*`) with
//! `Vary: Origin`, so a shared cache never hands one origin's answer to another. Credentials
//! are never allowed (no `Access-Control-Allow-Credentials`), so a page's script cannot read
//! the answer to a credentialed request. That does not stop the browser sending cookies with a
//! simple POST (sendBeacon does): `cookie.*` fields are read from them as from a pixel's.

use crate::config::Cors;
use crate::http::query::header;

/// What the request's `Origin` is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// No `Origin` header: not a cross-origin browser request (or a same-origin GET).
    Absent,
    /// Allowed: the value for `Access-Control-Allow-Origin` (the origin itself, or `*`).
    Allowed(&'a [u8]),
    /// Present and not on the list.
    Denied,
}

impl<'a> Origin<'a> {
    /// The value for `Access-Control-Allow-Origin`, when allowed.
    pub fn allowed(self) -> Option<&'a [u8]> {
        match self {
            Origin::Allowed(o) => Some(o),
            Origin::Absent | Origin::Denied => None,
        }
    }
}

pub fn origin<'a>(cors: &Cors, headers: &[httparse::Header<'a>]) -> Origin<'a> {
    let Some(o) = header(headers, "origin") else { return Origin::Absent };
    if cors.any {
        Origin::Allowed(b"*")
    } else if cors.origins.iter().any(|a| **a == *o) {
        Origin::Allowed(o)
    } else {
        Origin::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &'static [u8]) -> [httparse::Header<'static>; 1] {
        [httparse::Header { name: "Origin", value: v }]
    }

    #[test]
    fn allowlist_is_exact() {
        let cors = Cors { origins: vec![b"https://shop.example".as_slice().into()], any: false, max_age_s: 600 };
        assert_eq!(origin(&cors, &[]), Origin::Absent);
        assert_eq!(origin(&cors, &h(b"https://shop.example")), Origin::Allowed(b"https://shop.example"));
        for bad in
            [&b"https://shop.example.evil.com"[..], b"http://shop.example", b"https://shop.example/", b"null", b""]
        {
            let hh = [httparse::Header { name: "origin", value: bad }];
            assert_eq!(origin(&cors, &hh), Origin::Denied, "{bad:?}");
        }
        let empty = Cors::default();
        assert_eq!(origin(&empty, &h(b"https://shop.example")), Origin::Denied);
        let any = Cors { any: true, ..Cors::default() };
        assert_eq!(origin(&any, &h(b"https://whoever.example")), Origin::Allowed(b"*"));
    }
}
