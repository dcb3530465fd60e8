//! `tracker::http::parse` on arbitrary bytes: with the default limits, and with small limits
//! taken from the input's first bytes. When a head parses, checks what callers rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracker::http::{self, BodyFraming, Limits, Method, ParseError, HEADERS_MAX};

/// The `[server]` defaults of config/tracker.toml.
const DEFAULT: Limits =
    Limits { request_line_bytes_max: 4096, header_count_max: 64, header_bytes_max: 8192, body_bytes_max: 65536 };

fuzz_target!(|data: &[u8]| {
    check(data, &DEFAULT);
    // Small limits, so that every limit is met and crossed by short inputs; kept within what
    // config validation allows (request line < head, header count ≤ HEADERS_MAX).
    if let [a, b, c, d, rest @ ..] = data {
        let header_bytes_max = 16 + usize::from(*a) * 4;
        let limits = Limits {
            request_line_bytes_max: 1 + usize::from(*b) % (header_bytes_max - 1),
            header_count_max: usize::from(*c) % (HEADERS_MAX + 1),
            header_bytes_max,
            body_bytes_max: usize::from(*d) * 16,
        };
        check(rest, &limits);
    }
});

fn check(data: &[u8], limits: &Limits) {
    let mut headers = http::header_buf();
    let req = match http::parse(data, &mut headers, limits) {
        Ok(r) => r,
        Err(ParseError::Invalid { status, reason }) => {
            assert!((400..600).contains(&status), "status {status}");
            assert!(!reason.is_empty());
            return;
        }
        Err(ParseError::NewerMinorVersion { minor_at }) => {
            assert!(minor_at < data.len());
            assert!(data[minor_at].is_ascii_digit() && data[minor_at] > b'1', "minor_at points at {}", data[minor_at]);
            return;
        }
        Err(ParseError::Incomplete) => {
            assert!(data.len() < limits.header_bytes_max, "incomplete at the head limit");
            return;
        }
    };
    assert!(req.head_len <= data.len() && req.head_len <= limits.header_bytes_max);
    assert!(req.headers.len() <= limits.header_count_max);
    assert!(req.version_minor <= 1);
    // An empty slice may point anywhere (an absent query is `b""`).
    let within = |s: &[u8]| {
        let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + req.head_len);
        s.is_empty() || (s.as_ptr() as usize >= lo && s.as_ptr() as usize + s.len() <= hi)
    };
    // An absolute-form target with an empty path (`http://h`) has the path `/` (RFC 9112 §3.2.2).
    assert!(within(req.path) || req.path == b"/", "path outside the head");
    assert!(within(req.query), "query outside the head");
    assert!(req.host.is_none_or(within), "host outside the head");
    for h in req.headers {
        assert!(within(h.value) && within(h.name.as_bytes()), "header outside the head");
    }
    assert!(
        req.path.first() == Some(&b'/') || (req.path == b"*" && req.method == Method::Options),
        "path {:?}",
        String::from_utf8_lossy(req.path)
    );
    if let BodyFraming::Length(n) = req.framing {
        assert!(n <= limits.body_bytes_max);
    }
    // The head alone parses the same, and every shorter prefix of it is incomplete: a request
    // split across reads is read as it would be in one piece.
    let head = &data[..req.head_len];
    let mut h2 = http::header_buf();
    let again = http::parse(head, &mut h2, limits).expect("the head alone parses");
    assert_eq!(
        (again.head_len, again.framing, again.path, again.query),
        (req.head_len, req.framing, req.path, req.query)
    );
    for cut in [req.head_len - 1, req.head_len / 2, req.head_len.saturating_sub(2)] {
        let mut h3 = http::header_buf();
        let r = http::parse(&head[..cut], &mut h3, limits);
        assert!(matches!(r, Err(ParseError::Incomplete)), "a prefix of {cut} bytes of a good head: {:?}", r.err());
    }
}
