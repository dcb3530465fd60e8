//! One request head → [`Request`], a view that borrows the connection's read buffer.
//!
//! httparse does the tokenising into a fixed header array; this file adds what httparse leaves
//! to its caller: limits that hold while the head is still arriving, a byte scan for bare CR /
//! bare LF / control bytes, and the framing rules of RFC 9112 §6 that stop request smuggling.
//! httparse is used with its default `ParserConfig`, in which every lenient option for requests
//! is off (multiple spaces in the request line, space before the first header name, invalid
//! header lines ignored); obs-fold is never accepted in requests. Tests below pin each of these.
//!
//! Only the first request in the buffer is looked at; `head_len` (plus the body framing) tells
//! the caller where the next pipelined request starts.

use std::mem::MaybeUninit;

use httparse::Header;

use super::query::{header, list_has_token};

/// Compile-time size of the header array a connection keeps on its stack (64 × 32 bytes on
/// 64-bit). [`Limits::header_count_max`] may be lower, never higher.
pub const HEADERS_MAX: usize = 64;

/// The header array `parse` fills, left uninitialised: httparse writes only the entries it
/// parses, so a request does not pay for initialising all HEADERS_MAX (2 KiB of stores).
pub type HeaderBuf<'b> = [MaybeUninit<Header<'b>>; HEADERS_MAX];

#[inline(always)]
pub fn header_buf<'b>() -> HeaderBuf<'b> {
    [const { MaybeUninit::uninit() }; HEADERS_MAX]
}

/// Runtime limits on one request, from config. Each is checked before the input that breaks it
/// has fully arrived whenever that is possible, so a hostile client cannot make us buffer more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line in bytes, without its CRLF. Longer → 414. Costs nothing but the
    /// read buffer it may occupy (it is part of the head).
    pub request_line_bytes_max: usize,
    /// Most header fields per request, ≤ [`HEADERS_MAX`]. More → 431. Costs parse time only:
    /// the array is fixed.
    pub header_count_max: usize,
    /// Longest head in bytes: request line, header lines and the blank line that ends them.
    /// Longer → 431. Sizes the head part of every connection's read buffer.
    pub header_bytes_max: usize,
    /// Largest body in bytes (Content-Length, or chunked after decoding). Larger → 413. Sizes
    /// the body part of every connection's read buffer and the chunked scratch.
    pub body_bytes_max: usize,
}

/// The methods the endpoints can route on; anything else is `Other` (routing answers 405).
/// Method names are case-sensitive (RFC 9110 §9.1): `get` is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Options,
    Other,
}

/// How the body that follows the head is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Neither Content-Length nor Transfer-Encoding: a request without a body.
    None,
    /// Exactly this many bytes follow the head; already checked ≤ `body_bytes_max`.
    Length(usize),
    /// `Transfer-Encoding: chunked`; decode with [`super::chunked::decode`].
    Chunked,
}

/// Why a head (or a chunked body) could not be accepted. Hot path: two words, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The input is a valid prefix within every limit: read more and call again.
    Incomplete,
    /// Answer `status` with `reason` as the text body, then close: after a malformed request the
    /// framing of whatever follows cannot be trusted.
    Invalid { status: u16, reason: &'static str },
    /// The request line says HTTP/1.x with x > 1: RFC 9110 §2.5 says to process it as the
    /// highest minor version we implement, so the caller writes `1` at `minor_at` (an offset
    /// into the parsed buffer) and parses again. httparse itself only takes 1.0 and 1.1.
    NewerMinorVersion { minor_at: usize },
}

const fn invalid(status: u16, reason: &'static str) -> ParseError {
    ParseError::Invalid { status, reason }
}

/// A parsed request head. `'b` is the read buffer, `'h` the caller's header array.
#[derive(Debug, Clone, Copy)]
pub struct Request<'b, 'h> {
    pub method: Method,
    /// The request target before `?`, starting with `/` (absolute-form targets are reduced to
    /// their path; `*` only for OPTIONS). Not percent-decoded.
    pub path: &'b [u8],
    /// The host the request is for, `uri-host [ ":" port ]` as sent (not lower-cased): the
    /// authority of an absolute-form target, which RFC 9112 §3.2.2 says replaces the Host
    /// header, else the Host header's value. None only for an HTTP/1.0 request without Host
    /// and not in absolute form. Both are validated (`valid_host`); read the host here, never
    /// from `headers`.
    pub host: Option<&'b [u8]>,
    /// The request target after the first `?`, without it; empty when there is none.
    pub query: &'b [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (nothing else parses).
    pub version_minor: u8,
    /// Bytes of the head, including any empty lines before it and the blank line that ends it:
    /// the body (or the next pipelined request) starts at `buf[head_len..]`.
    pub head_len: usize,
    pub framing: BodyFraming,
    /// Whether the connection may stay open after the response (RFC 9112 §9.3).
    pub keep_alive: bool,
    /// HTTP/1.1 request with a body and `Expect: 100-continue`: the client may wait for an
    /// interim `100 Continue` (see [`super::response::continue_100`]) before sending the body.
    pub expect_continue: bool,
    /// The header fields in order, names and values as sent (values without surrounding OWS).
    pub headers: &'h [Header<'b>],
}

impl<'b> Request<'b, '_> {
    /// The first header field with this name, compared case-insensitively.
    #[inline]
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        header(self.headers, name)
    }
}

/// Parses the first request head in `buf`.
///
/// `headers` is the caller's fixed array (usually `header_buf()`, on its stack);
/// at most `limits.header_count_max` of it is used. On `Incomplete`, nothing in `buf` was wrong
/// so far and every limit can still be met; call again when more bytes have arrived.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [MaybeUninit<Header<'b>>],
    limits: &Limits,
) -> Result<Request<'b, 'h>, ParseError> {
    debug_assert!(limits.header_count_max <= HEADERS_MAX);
    debug_assert!(limits.header_count_max <= headers.len());
    debug_assert!(limits.request_line_bytes_max < limits.header_bytes_max);

    let count = limits.header_count_max.min(headers.len());
    let mut req = httparse::Request::new(&mut []);
    let partial = match req.parse_with_uninit_headers(buf, &mut headers[..count]) {
        Ok(httparse::Status::Complete(n)) => Ok(n),
        Ok(httparse::Status::Partial) => Err(ParseError::Incomplete),
        Err(e) => Err(from_httparse(e, buf)),
    };
    let head_len = match partial {
        Ok(n) => n,
        Err(ParseError::Incomplete) => {
            check_request_line(buf, limits.request_line_bytes_max)?;
            // Everything in `buf` belongs to the unfinished head, which needs at least one
            // more byte: if `buf` already fills the limit, the head cannot fit.
            if buf.len() >= limits.header_bytes_max {
                return Err(invalid(431, "request head too large"));
            }
            return Err(ParseError::Incomplete);
        }
        Err(e) => return Err(e),
    };
    let httparse::Request { method, path, version, headers } = req;
    let headers: &'h [Header<'b>] = headers;

    // httparse fills all three on Complete; treat a gap as malformed rather than panic.
    let (Some(method), Some(target), Some(version_minor)) = (method, path, version) else {
        return Err(invalid(400, "malformed request line"));
    };
    // With the strict default config the line is exactly `METHOD SP target SP HTTP/1.x`, so
    // its length is known without scanning for its LF.
    if method.len() + target.len() + " HTTP/1.1".len() + 1 > limits.request_line_bytes_max {
        return Err(invalid(414, "request line too long"));
    }
    if head_len > limits.header_bytes_max {
        return Err(invalid(431, "request head too large"));
    }
    check_line_ends(&buf[..head_len], headers)?;
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let (path, query, authority) = split_target(method, target.as_bytes())?;

    // One pass over the fields; the length switch keeps the common headers (User-Agent,
    // Accept, Cookie, …) to one integer compare each.
    let mut content_length: Option<usize> = None;
    let mut codings = TransferCodings::default();
    let mut host_field: Option<&'b [u8]> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                if host_field.is_some() {
                    return Err(invalid(400, "more than one Host header"));
                }
                // Checked even when an absolute-form target overrides it (RFC 9112 §3.2: any
                // request with an invalid Host value is a 400).
                if !valid_host(h.value) {
                    return Err(invalid(400, "invalid Host header"));
                }
                host_field = Some(h.value);
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                // Other expectations are ignored, which RFC 9110 §10.1.1 permits.
                expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                // Browsers send exactly `keep-alive`: one compare instead of two list scans.
                if h.value.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else {
                    close |= list_has_token(h.value, b"close");
                    keep_alive_token |= list_has_token(h.value, b"keep-alive");
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                // Even an identical repeat is refused: some intermediaries take the first,
                // some the last, some the sum of a list; refusing is the only safe reading.
                if content_length.is_some() {
                    return Err(invalid(400, "more than one Content-Length header"));
                }
                content_length = Some(parse_content_length(h.value)?);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => codings.add_field_line(h.value)?,
            _ => {}
        }
    }

    // Framing first (400: nothing after this request can be trusted), then whether we
    // implement the codings (501).
    let chunked = codings.present;
    if chunked {
        if !codings.chunked && !codings.other {
            // Only empty list members: no coding named at all.
            return Err(TE_MALFORMED);
        }
        if content_length.is_some() {
            return Err(invalid(400, "both Content-Length and Transfer-Encoding"));
        }
        if version_minor == 0 {
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 means faulty framing.
            return Err(invalid(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !codings.chunked_last {
            // RFC 9112 §6.3: then the body's length cannot be determined, and the server MUST
            // answer 400 — which takes precedence over §6.1's SHOULD 501 for `gzip` alone.
            return Err(invalid(400, "Transfer-Encoding does not end in chunked"));
        }
        if codings.other {
            // RFC 9112 §6.1: a coding we do not understand (`gzip, chunked`). We implement none
            // but chunked (`identity` is not one any more). The connection still closes: we do
            // not read the body to skip it.
            return Err(invalid(501, "unsupported transfer coding (only chunked)"));
        }
    }
    if version_minor == 1 && host_field.is_none() {
        return Err(invalid(400, "missing Host header"));
    }
    let framing = match content_length {
        Some(n) if n > limits.body_bytes_max => return Err(invalid(413, "body too large")),
        Some(n) => BodyFraming::Length(n),
        None if chunked => BodyFraming::Chunked,
        None => BodyFraming::None,
    };
    let keep_alive = match version_minor {
        1 => !close,
        _ => keep_alive_token && !close,
    };
    // RFC 9110 §10.1.1: ignore 100-continue from HTTP/1.0, and without a body there is
    // nothing to wait for.
    let expect_continue = expect_continue && version_minor == 1 && framing != BodyFraming::None;

    // RFC 9112 §3.2.2: the target's authority, when it has one, is the host; Host is ignored.
    let host = authority.or(host_field);

    Ok(Request { method, path, host, query, version_minor, head_len, framing, keep_alive, expect_continue, headers })
}

const TE_MALFORMED: ParseError = invalid(400, "malformed Transfer-Encoding");

/// The Transfer-Encoding field lines of a request, read as the one list they make (RFC 9110
/// §5.3): `#transfer-coding`, `transfer-coding = token *( OWS ";" OWS transfer-parameter )`
/// (RFC 9112 §7). Only what framing and the 400/501 choice need is kept.
#[derive(Debug, Default)]
struct TransferCodings {
    /// A Transfer-Encoding field line was present, even an empty one.
    present: bool,
    /// `chunked` was named (at most once: a second is refused as it is met).
    chunked: bool,
    /// The last coding named so far is `chunked`.
    chunked_last: bool,
    /// A coding other than `chunked` was named.
    other: bool,
}

impl TransferCodings {
    /// Adds one field line's codings. Syntax errors and a second `chunked` are refused at once.
    fn add_field_line(&mut self, v: &[u8]) -> Result<(), ParseError> {
        self.present = true;
        // The whole field as browsers, curl and every HTTP library send it: one compare.
        if v.eq_ignore_ascii_case(b"chunked") {
            return self.add(true);
        }
        let mut i = 0;
        loop {
            // OWS and empty list members (RFC 9110 §5.6.1: a recipient ignores them).
            while i < v.len() && matches!(v[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            if i == v.len() {
                return Ok(());
            }
            let name = token(v, &mut i)?;
            let chunked = name.eq_ignore_ascii_case(b"chunked");
            skip_ows(v, &mut i);
            let mut parameters = false;
            while v.get(i) == Some(&b';') {
                // transfer-parameter = token BWS "=" BWS ( token / quoted-string )
                i += 1;
                skip_ows(v, &mut i);
                token(v, &mut i)?;
                skip_ows(v, &mut i);
                if v.get(i) != Some(&b'=') {
                    return Err(TE_MALFORMED);
                }
                i += 1;
                skip_ows(v, &mut i);
                if v.get(i) == Some(&b'"') {
                    quoted_string(v, &mut i)?;
                } else {
                    token(v, &mut i)?;
                }
                skip_ows(v, &mut i);
                parameters = true;
            }
            if !matches!(v.get(i), None | Some(b',')) {
                return Err(TE_MALFORMED);
            }
            if chunked && parameters {
                // RFC 9112 §7.1 defines none; another reader may or may not take it as chunked.
                return Err(invalid(400, "chunked with parameters in Transfer-Encoding"));
            }
            self.add(chunked)?;
        }
    }

    fn add(&mut self, chunked: bool) -> Result<(), ParseError> {
        if chunked {
            // RFC 9112 §6.1: a sender MUST NOT apply chunked more than once.
            if self.chunked {
                return Err(invalid(400, "chunked more than once in Transfer-Encoding"));
            }
            self.chunked = true;
        } else {
            self.other = true;
        }
        self.chunked_last = chunked;
        Ok(())
    }
}

/// `1*tchar` at `v[*i..]`, advancing past it; an empty token is malformed.
fn token<'v>(v: &'v [u8], i: &mut usize) -> Result<&'v [u8], ParseError> {
    let start = *i;
    while *i < v.len() && TCHAR[v[*i] as usize] {
        *i += 1;
    }
    if *i == start {
        return Err(TE_MALFORMED);
    }
    Ok(&v[start..*i])
}

/// A quoted-string starting at `v[*i] == b'"'`, advancing past its closing quote. The head scan
/// has already refused control bytes other than HTAB, so only the quote and backslash matter.
fn quoted_string(v: &[u8], i: &mut usize) -> Result<(), ParseError> {
    debug_assert_eq!(v.get(*i), Some(&b'"'));
    *i += 1;
    loop {
        match v.get(*i) {
            None => return Err(TE_MALFORMED),
            Some(b'"') => {
                *i += 1;
                return Ok(());
            }
            Some(b'\\') if *i + 1 < v.len() => *i += 2,
            Some(b'\\') => return Err(TE_MALFORMED),
            Some(_) => *i += 1,
        }
    }
}

fn skip_ows(v: &[u8], i: &mut usize) {
    while *i < v.len() && matches!(v[*i], b' ' | b'\t') {
        *i += 1;
    }
}

/// tchar (RFC 9110 §5.6.2): the bytes of a token.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~'
            );
        i += 1;
    }
    t
};

/// 414 if the request line (after the empty lines RFC 9112 §2.2 lets a client send before it)
/// is longer than `max` bytes without its CRLF — known as soon as `max + 2` bytes hold no LF.
fn check_request_line(buf: &[u8], max: usize) -> Result<(), ParseError> {
    let start = request_line_start(buf);
    let window = &buf[start..buf.len().min(start + max + 2)];
    let too_long = match window.iter().position(|&b| b == b'\n') {
        Some(lf) => lf - usize::from(lf > 0 && window[lf - 1] == b'\r') > max,
        None => window.len() == max + 2,
    };
    if too_long {
        return Err(invalid(414, "request line too long"));
    }
    Ok(())
}

/// Every line of the head ends in CRLF. httparse (strict default config, the version Cargo.lock
/// pins) already refuses every control byte but HTAB in the request line and in field names and
/// values, and a CR not followed by LF; but it accepts a bare LF as a line end, and an
/// intermediary that does not would see other field lines. So what is left to check is where
/// each line ends: right before each field name (whose position in `head` httparse's slices
/// give) and at the head's end — a few byte compares instead of another pass over the head.
/// `head_bytes_match_httparse_plus_line_ends` holds httparse to that claim on random heads,
/// against the whole-head rule [`check_head_bytes`]. Empty lines before the request line (RFC
/// 9112 §2.2; rare, and ahead of anything httparse's slices point at) take the whole-head rule.
fn check_line_ends(head: &[u8], headers: &[Header<'_>]) -> Result<(), ParseError> {
    const BARE_LF: ParseError = invalid(400, "bare LF in request head");
    if matches!(head.first(), Some(b'\r' | b'\n')) {
        return check_head_bytes(head);
    }
    let base = head.as_ptr() as usize;
    for h in headers {
        // httparse's slices point into `head`; a field name never starts the head.
        let at = (h.name.as_ptr() as usize).wrapping_sub(base);
        if head.get(at.wrapping_sub(2)..at) != Some(b"\r\n") {
            return Err(BARE_LF);
        }
    }
    if !head.ends_with(b"\r\n\r\n") {
        return Err(BARE_LF);
    }
    Ok(())
}

/// Every line of `head` ends in CRLF and holds no control byte but HTAB, judged a byte at a
/// time: for a head that starts with empty lines, and the rule the line-end check is tested
/// against.
fn check_head_bytes(head: &[u8]) -> Result<(), ParseError> {
    let mut i = 0;
    while i < head.len() {
        match head[i] {
            // A CR must be followed by LF; both are consumed together, so any LF met on its
            // own is bare. A CR as the very last byte may still get its LF.
            b'\r' => match head.get(i + 1) {
                Some(b'\n') => i += 2,
                None => i += 1,
                Some(_) => return Err(invalid(400, "bare CR in request head")),
            },
            b'\n' => return Err(invalid(400, "bare LF in request head")),
            b if is_ctl(b) && b != b'\t' => return Err(invalid(400, "control character in request head")),
            _ => i += 1,
        }
    }
    Ok(())
}

#[inline(always)]
fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// `1*DIGIT`. No sign, no spaces, no list (`5, 5`), no empty value. A length too large for
/// usize is read as usize::MAX: it is valid syntax for a body larger than any limit, so it is
/// refused later as one (413), after the framing checks that take precedence over it.
fn parse_content_length(v: &[u8]) -> Result<usize, ParseError> {
    const BAD: ParseError = invalid(400, "invalid Content-Length");
    if v.is_empty() {
        return Err(BAD);
    }
    let mut n: usize = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(BAD);
        }
        n = n.saturating_mul(10).saturating_add(usize::from(b - b'0'));
    }
    Ok(n)
}

/// Whether a Host field value is valid (RFC 9112 §3.2): empty, or `uri-host [ ":" port ]` with
/// RFC 3986's grammar — an IP-literal (`[` IPv6address or IPvFuture `]`), or a reg-name
/// (unreserved / pct-encoded / sub-delims, which also covers IPv4address); `port = *DIGIT`.
/// Refused, so that no later reader mistakes part of it for something else: a path (`/`),
/// userinfo (`@`), a query or fragment, spaces, a second `:`, an unclosed `[`, raw UTF-8 (IDNs
/// come as `xn--`). Runs on every request: one table load per byte of a host name of a few
/// dozen bytes; only a bracketed literal goes through std's (non-allocating) IPv6 parser.
fn valid_host(v: &[u8]) -> bool {
    let port = if v.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', v) else {
            return false;
        };
        if !valid_ip_literal(&v[1..close]) {
            return false;
        }
        &v[close + 1..]
    } else {
        let mut i = 0;
        while i < v.len() {
            if REG_NAME[v[i] as usize] {
                i += 1;
            } else if v[i] == b'%' && i + 2 < v.len() && v[i + 1].is_ascii_hexdigit() && v[i + 2].is_ascii_hexdigit() {
                i += 3;
            } else {
                break;
            }
        }
        &v[i..]
    };
    match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// What is between the brackets of an IP-literal: `IPv6address`, or
/// `IPvFuture = "v" 1*HEXDIG "." 1*( unreserved / sub-delims / ":" )`.
fn valid_ip_literal(a: &[u8]) -> bool {
    match a {
        [b'v' | b'V', rest @ ..] => {
            let Some(dot) = rest.iter().position(|&b| b == b'.') else {
                return false;
            };
            let (version, tail) = (&rest[..dot], &rest[dot + 1..]);
            !version.is_empty()
                && version.iter().all(u8::is_ascii_hexdigit)
                && !tail.is_empty()
                && tail.iter().all(|&b| REG_NAME[b as usize] || b == b':')
        }
        // std's parser allocates nothing; it takes no zone id, as RFC 3986 takes none either.
        _ => std::str::from_utf8(a).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok()),
    }
}

/// Bytes a reg-name holds as they are (RFC 3986 §3.2.2): unreserved and sub-delims. `%` starts
/// a pct-encoded triplet and is checked apart.
const REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=');
        i += 1;
    }
    t
};

/// A request target's (path, query, authority of an absolute-form target).
type Target<'t> = (&'t [u8], &'t [u8], Option<&'t [u8]>);

/// Splits the request target into path, query and authority (RFC 9112 §3.2). Origin-form is
/// what we expect; absolute-form must be accepted by servers: its path routes and its authority
/// is the request's host (§3.2.2), so it must be one — a valid Host value ([`valid_host`]) that
/// names a host (RFC 9110 §4.2.1: an empty host MUST be rejected) and has no user info (RFC 9110
/// §4.2.4: `user@host` is not allowed in http(s) URIs). `*` is only meaningful for OPTIONS;
/// authority-form (CONNECT) and anything else are refused.
fn split_target(method: Method, target: &[u8]) -> Result<Target<'_>, ParseError> {
    let (rest, authority) = if target.first() == Some(&b'/') {
        (target, None)
    } else if let Some(after) = strip_scheme(target) {
        // The authority ends at the path, the query or a fragment (RFC 3986 §3.2).
        let end = after.iter().position(|&b| matches!(b, b'/' | b'?' | b'#')).unwrap_or(after.len());
        let authority = &after[..end];
        if memchr::memchr(b'@', authority).is_some() {
            return Err(invalid(400, "user info in the request target"));
        }
        if matches!(authority.first(), None | Some(b':')) || !valid_host(authority) {
            return Err(invalid(400, "invalid host in the request target"));
        }
        (&after[end..], Some(authority))
    } else if target == b"*" && method == Method::Options {
        return Ok((target, b"", None));
    } else {
        return Err(invalid(400, "invalid request target"));
    };
    // A fragment is never part of a request target (RFC 9110 §4.2.3); a client that sends one
    // anyway (`/i?c=1#top`) does not get `top` into the last query value.
    let rest = memchr::memchr(b'#', rest).map_or(rest, |f| &rest[..f]);
    let (path, query) = match rest.iter().position(|&b| b == b'?') {
        Some(q) => (&rest[..q], &rest[q + 1..]),
        None => (rest, &b""[..]),
    };
    // An absolute-form target with an empty path means "/" (RFC 9110 §4.2.3).
    let path = if path.is_empty() { &b"/"[..] } else { path };
    Ok((path, query, authority))
}

fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if target.len() >= scheme.len() && target[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Some(&target[scheme.len()..]);
        }
    }
    None
}

/// The version of a complete request line (`… SP HTTP/D.D CRLF`, after any empty lines before
/// it) as (offset of `HTTP/`, major digit, minor digit); `None` when the line is not complete or
/// its last word is not of that form. Only looked at after httparse refused the version.
fn request_line_version(buf: &[u8]) -> Option<(usize, u8, u8)> {
    let start = request_line_start(buf);
    let lf = start + buf[start..].iter().position(|&b| b == b'\n')?;
    let line = buf[start..lf].strip_suffix(b"\r")?;
    // `METHOD SP target SP version`: the version is the third word (a target has no SP).
    if line.iter().filter(|&&b| b == b' ').count() != 2 {
        return None;
    }
    let (major, minor) = version_word(line)?;
    Some((start + line.len() - 8, major, minor))
}

/// For a head `parse` found incomplete in `buf`: how many of its bytes the next parse need not
/// wait on, or 0 while its request line is still coming (whose 414 the parse must check at every
/// read). The head cannot be whole until a line end and an empty line come after them
/// ([`head_may_end`]): until then a new read need not be parsed. httparse keeps no state
/// between calls, so parsing the whole head at every read would cost time quadratic in its size
/// when a client trickles it a byte at a time.
pub fn head_pending(buf: &[u8]) -> usize {
    let at = request_line_start(buf);
    if memchr::memchr(b'\n', &buf[at..]).is_some() {
        buf.len()
    } else {
        0
    }
}

/// Whether the head of which the first `pending` bytes were incomplete ([`head_pending`]) may end
/// in `buf` now: a line end followed by an empty line (`\r\n\r\n`; or a bare LF form, for the
/// parser to refuse) that ends after those bytes. Reads only what came after them, and the
/// three bytes before, where such an end can start.
pub fn head_may_end(buf: &[u8], pending: usize) -> bool {
    let from = pending.saturating_sub(3).min(buf.len());
    memchr::memchr_iter(b'\n', &buf[from..]).any(|i| {
        let rest = &buf[from + i + 1..];
        rest.starts_with(b"\n") || rest.starts_with(b"\r\n")
    })
}

/// Whether the request in `buf` is a HEAD, by its first word, whether or not its head parses:
/// the answer to a HEAD carries no body (RFC 9110 §9.3.2), a refusal's neither, since a client
/// reading it stops at the blank line and would take the reason for the next response.
pub fn is_head(buf: &[u8]) -> bool {
    buf[request_line_start(buf)..].starts_with(b"HEAD ")
}

/// Where the request line starts: after the empty lines RFC 9112 §2.2 lets a client send first.
fn request_line_start(buf: &[u8]) -> usize {
    let mut start = 0;
    while buf[start..].starts_with(b"\r\n") {
        start += 2;
    }
    start
}

/// The (major, minor) digits of a line that ends in `SP HTTP/D.D`.
fn version_word(line: &[u8]) -> Option<(u8, u8)> {
    match line[line.len().checked_sub(9)?..] {
        [b' ', b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Some((major, minor))
        }
        _ => None,
    }
}

/// Whether `buf` is a request line cut right after a well-formed `SP HTTP/D.D` (and maybe its
/// CR): the LF that decides what it is has not arrived yet.
fn version_line_unfinished(buf: &[u8]) -> bool {
    let line = &buf[request_line_start(buf)..];
    !line.contains(&b'\n') && version_word(line.strip_suffix(b"\r").unwrap_or(line)).is_some()
}

fn from_httparse(e: httparse::Error, buf: &[u8]) -> ParseError {
    match e {
        httparse::Error::TooManyHeaders => invalid(431, "too many header fields"),
        // The HTTP/2 connection preface (RFC 9113 §3.4) parses as a request line with version
        // HTTP/2.0; name it, since prior-knowledge h2 clients are a common misconfiguration.
        // 400 rather than 505: the client will not read an HTTP/1.1 response either way.
        httparse::Error::Version if buf.starts_with(b"PRI * HTTP/2.0") => {
            invalid(400, "HTTP/2 is not supported, use HTTP/1.1")
        }
        httparse::Error::Version => match request_line_version(buf) {
            Some((at, b'1', minor)) if minor > b'1' => ParseError::NewerMinorVersion { minor_at: at + 7 },
            // RFC 9110 §15.6.6: a major version we do not speak.
            Some((_, major, _)) if major > b'1' => invalid(505, "HTTP version not supported, use HTTP/1.1"),
            // httparse judges the version as soon as its 8 bytes are in: wait for the line's
            // end before telling a newer version from a bad one.
            None if version_line_unfinished(buf) => ParseError::Incomplete,
            _ => invalid(400, "unsupported HTTP version"),
        },
        httparse::Error::Token => invalid(400, "malformed request line"),
        httparse::Error::NewLine => invalid(400, "malformed line ending"),
        // Includes obs-fold: a line starting with SP or HTAB is not a field name.
        httparse::Error::HeaderName => invalid(400, "invalid header name"),
        httparse::Error::HeaderValue => invalid(400, "invalid header value"),
        httparse::Error::Status => invalid(400, "malformed request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits =
        Limits { request_line_bytes_max: 64, header_count_max: 8, header_bytes_max: 256, body_bytes_max: 1000 };

    /// Parses with LIMITS and hands the result to `f` (the request borrows a local array).
    fn with<R>(buf: &[u8], f: impl FnOnce(Result<Request<'_, '_>, ParseError>) -> R) -> R {
        let mut h = header_buf();
        f(parse(buf, &mut h, &LIMITS))
    }

    #[track_caller]
    fn rejects(buf: &[u8], status: u16, reason: &str) {
        with(buf, |r| match r {
            Err(ParseError::Invalid { status: s, reason: why }) => {
                assert_eq!((s, why), (status, reason), "input {:?}", String::from_utf8_lossy(buf))
            }
            Err(e) => panic!("expected {status} {reason:?}, got {e:?}"),
            Ok(req) => panic!("expected {status} {reason:?}, got {req:?}"),
        })
    }

    #[track_caller]
    fn accepts(buf: &[u8]) {
        with(buf, |r| assert!(r.is_ok(), "{r:?}"));
    }

    fn head_with(line: &str) -> Vec<u8> {
        format!("POST /e HTTP/1.1\r\nHost: a\r\n{line}\r\n\r\n").into_bytes()
    }

    #[test]
    fn get_with_query() {
        let buf = b"GET /p/i.gif?cid=42&u=%41 HTTP/1.1\r\nHost: t.example\r\nUser-Agent: x\r\nCookie: a=1\r\n\r\n";
        with(buf, |r| {
            let r = r.unwrap();
            assert_eq!(r.method, Method::Get);
            assert_eq!(r.path, b"/p/i.gif");
            assert_eq!(r.query, b"cid=42&u=%41");
            assert_eq!(r.version_minor, 1);
            assert_eq!(r.head_len, buf.len());
            assert_eq!(r.framing, BodyFraming::None);
            assert!(r.keep_alive);
            assert!(!r.expect_continue);
            assert_eq!(r.headers.len(), 3);
            assert_eq!(r.header("HOST"), Some(&b"t.example"[..]));
            assert_eq!(r.header("user-agent"), Some(&b"x"[..]));
            assert_eq!(r.header("referer"), None);
        });
    }

    #[test]
    fn a_fragment_is_not_part_of_path_or_query() {
        with(b"GET /i?c=1&p=0.25#top HTTP/1.1\r\nHost: a\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.path, r.query), (&b"/i"[..], &b"c=1&p=0.25"[..]));
        });
        with(b"GET /i#x?c=1 HTTP/1.1\r\nHost: a\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.path, r.query), (&b"/i"[..], &b""[..]));
        });
    }

    #[test]
    fn path_without_query_and_empty_query() {
        with(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.path, r.query), (&b"/a"[..], &b""[..]));
        });
        with(b"GET /a? HTTP/1.1\r\nHost: a\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.path, r.query), (&b"/a"[..], &b""[..]));
        });
    }

    #[test]
    fn head_method() {
        with(b"HEAD /i.gif HTTP/1.1\r\nHost: a\r\n\r\n", |r| {
            assert_eq!(r.unwrap().method, Method::Head);
        });
    }

    #[test]
    fn other_methods() {
        with(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", |r| {
            let r = r.unwrap();
            assert_eq!((r.method, r.framing), (Method::Post, BodyFraming::Length(2)));
            assert_eq!(r.head_len, 48);
        });
        with(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.method, r.path), (Method::Options, &b"*"[..]));
        });
        // Methods are case-sensitive.
        with(b"get / HTTP/1.1\r\nHost: a\r\n\r\n", |r| assert_eq!(r.unwrap().method, Method::Other));
        with(b"PUT / HTTP/1.1\r\nHost: a\r\n\r\n", |r| assert_eq!(r.unwrap().method, Method::Other));
    }

    #[test]
    fn http10_keep_alive() {
        // No Host needed in 1.0; closes by default; `Connection: keep-alive` keeps it open.
        with(b"GET / HTTP/1.0\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.version_minor, r.keep_alive), (0, false));
        });
        with(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.version_minor, r.keep_alive), (0, true));
        });
        with(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", |r| {
            assert!(!r.unwrap().keep_alive);
        });
    }

    #[test]
    fn http11_connection_close() {
        with(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", |r| {
            assert!(!r.unwrap().keep_alive);
        });
        // A comma list, tokens case-insensitive, split over two fields.
        with(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: foo , CLOSE\r\n\r\n", |r| {
            assert!(!r.unwrap().keep_alive);
        });
        // `closed` is not `close`.
        with(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed\r\n\r\n", |r| {
            assert!(r.unwrap().keep_alive);
        });
    }

    #[test]
    fn pipelined_two_requests() {
        let buf =
            b"GET /a?x=1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET";
        let (first_len, second_start) = with(buf, |r| {
            let r = r.unwrap();
            assert_eq!((r.method, r.path, r.query), (Method::Get, &b"/a"[..], &b"x=1"[..]));
            (r.head_len, r.head_len)
        });
        assert_eq!(first_len, 32);
        let rest = &buf[second_start..];
        let body_end = with(rest, |r| {
            let r = r.unwrap();
            assert_eq!((r.method, r.path, r.framing), (Method::Post, &b"/b"[..], BodyFraming::Length(3)));
            assert_eq!(&rest[r.head_len..r.head_len + 3], b"abc");
            r.head_len + 3
        });
        // The third request has only begun.
        with(&rest[body_end..], |r| assert_eq!(r.unwrap_err(), ParseError::Incomplete));
    }

    #[test]
    fn empty_lines_before_request_are_skipped() {
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        with(buf, |r| assert_eq!(r.unwrap().head_len, buf.len()));
    }

    #[test]
    fn split_at_every_byte_is_incomplete_until_complete() {
        let buf = b"POST /e?a=1&b=2 HTTP/1.1\r\nHost: t.example\r\nContent-Length: 5\r\nCookie: u=abc\r\n\r\nhello";
        let head_len = buf.len() - 5;
        for i in 0..head_len {
            with(&buf[..i], |r| assert_eq!(r.unwrap_err(), ParseError::Incomplete, "prefix {i}"));
        }
        for i in head_len..=buf.len() {
            with(&buf[..i], |r| {
                let r = r.unwrap();
                assert_eq!((r.head_len, r.framing), (head_len, BodyFraming::Length(5)));
            });
        }
    }

    #[test]
    fn expect_continue() {
        with(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 9\r\n\r\n", |r| {
            assert!(r.unwrap().expect_continue);
        });
        with(b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n", |r| {
            assert!(!r.unwrap().expect_continue, "no body, nothing to wait for");
        });
        with(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n", |r| {
            assert!(!r.unwrap().expect_continue, "ignored from HTTP/1.0");
        });
    }

    #[test]
    fn absolute_form_is_reduced_to_path() {
        with(b"GET http://t.example/p?q=1 HTTP/1.1\r\nHost: t.example\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.path, r.query), (&b"/p"[..], &b"q=1"[..]));
        });
        with(b"GET HTTPS://t.example?q=1 HTTP/1.1\r\nHost: t.example\r\n\r\n", |r| {
            let r = r.unwrap();
            assert_eq!((r.path, r.query), (&b"/"[..], &b"q=1"[..]));
        });
    }

    /// RFC 9112 §3.2.2: the authority of an absolute-form target is the host, whatever Host says.
    #[test]
    fn the_host_is_the_absolute_form_authority_else_the_host_header() {
        let cases: [(&[u8], Option<&[u8]>); 8] = [
            (b"GET /p HTTP/1.1\r\nHost: h.example:80\r\n\r\n", Some(b"h.example:80")),
            (b"GET /p HTTP/1.0\r\n\r\n", None),
            (b"GET http://t.example/p HTTP/1.1\r\nHost: h.example\r\n\r\n", Some(b"t.example")),
            (b"GET hTTpS://T.example:8443?q HTTP/1.1\r\nHost: \r\n\r\n", Some(b"T.example:8443")),
            (b"GET http://[::1]:1#f HTTP/1.1\r\nHost: h\r\n\r\n", Some(b"[::1]:1")),
            (b"GET http://t.example/p HTTP/1.0\r\n\r\n", Some(b"t.example")),
            (b"GET http://%74.example/a@b HTTP/1.0\r\n\r\n", Some(b"%74.example")),
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", Some(b"h")),
        ];
        for (raw, host) in cases {
            with(raw, |r| assert_eq!(r.map(|r| r.host), Ok(host), "{:?}", String::from_utf8_lossy(raw)));
        }
    }

    #[test]
    fn rejects_an_absolute_form_authority_that_is_no_host() {
        for target in ["http://u@t", "http://u:p@t/", "http://@t/p", "https://t@/p"] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
            rejects(raw.as_bytes(), 400, "user info in the request target");
        }
        for target in [
            "http://",
            "http:///p",
            "http://?q",
            "http://#f",
            "http://:80/p",
            "http://t:80:81/",
            "http://t:x/",
            "http://[::1/",
            "http://[::1]x/",
            "http://t%zz/",
            "http://t%/",
            "http://t\"x/",
            "http://t{x}/",
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
            rejects(raw.as_bytes(), 400, "invalid host in the request target");
        }
        // The Host header is still held to its own rules (RFC 9112 §3.2), even when ignored.
        rejects(b"GET http://t/p HTTP/1.1\r\nHost: u@t\r\n\r\n", 400, "invalid Host header");
        rejects(b"GET http://t/p HTTP/1.1\r\n\r\n", 400, "missing Host header");
        // Only http and https are absolute-form targets here.
        rejects(b"GET ftp://t/p HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid request target");
    }

    // ---- rejections: request line ----

    #[test]
    fn rejects_bad_request_line() {
        rejects(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
        rejects(b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
        rejects(b"GET /\r\nHost: a\r\n\r\n", 400, "malformed request line");
        rejects(b"GET\r\n\r\n", 400, "malformed request line");
        rejects(b" GET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
        rejects(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "malformed line ending");
    }

    #[test]
    fn rejects_bad_method_token() {
        rejects(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
        rejects(b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
    }

    #[test]
    fn rejects_bad_target() {
        rejects(b"GET foo HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target");
        rejects(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target");
        rejects(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "invalid request target");
        rejects(b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
        rejects(b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
    }

    #[test]
    fn rejects_not_http1() {
        rejects(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP version not supported, use HTTP/1.1");
        rejects(b"\r\nGET / HTTP/3.0\r\n\r\n", 505, "HTTP version not supported, use HTTP/1.1");
        rejects(b"GET / HTTP/2.0 \r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
        rejects(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "malformed line ending");
        rejects(b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
        rejects(b"GET / HTTP/0.9\r\n\r\n", 400, "unsupported HTTP version");
        // A version that cannot become HTTP/1.x is refused before it is complete.
        rejects(b"GET / HTTP/2", 400, "unsupported HTTP version");
    }

    #[test]
    fn a_version_is_judged_only_once_its_line_has_ended() {
        for cut in [&b"GET /i HTTP/1.2"[..], b"GET /i HTTP/1.2\r", b"\r\nGET /i HTTP/2.0"] {
            with(cut, |r| {
                assert!(matches!(r, Err(ParseError::Incomplete)), "{:?}: {r:?}", String::from_utf8_lossy(cut))
            });
        }
        // A line that cannot end well is refused at once, and waiting is bounded by the limits.
        rejects(b"GET /i HTTP/2.0 x", 400, "unsupported HTTP version");
        rejects(format!("GET /{} HTTP/1.2", "a".repeat(80)).as_bytes(), 414, "request line too long");
    }

    #[test]
    fn two_versions_on_a_line_are_refused_not_rewritten() {
        rejects(b"GET / HTTP/1.2 HTTP/1.5\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
        rejects(b"GET / HTTP/1.3 HTTP/2.0\r\nHost: a\r\n\r\n", 400, "unsupported HTTP version");
    }

    #[test]
    fn a_newer_http1_minor_version_is_read_as_1_1() {
        for raw in [&b"GET /i HTTP/1.2\r\nHost: a\r\n\r\n"[..], b"\r\n\r\nGET /i HTTP/1.9\r\nHost: a\r\n\r\n"] {
            let mut buf = raw.to_vec();
            let at = with(&buf, |r| match r {
                Err(ParseError::NewerMinorVersion { minor_at }) => minor_at,
                other => panic!("{other:?}"),
            });
            assert!(buf[at].is_ascii_digit() && buf[at] > b'1' && buf[..at].ends_with(b"HTTP/1."));
            buf[at] = b'1';
            with(&buf, |r| {
                let r = r.unwrap();
                assert_eq!((r.version_minor, r.path, r.keep_alive), (1, &b"/i"[..], true));
            });
        }
    }

    #[test]
    fn rejects_http2_preface() {
        rejects(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "HTTP/2 is not supported, use HTTP/1.1");
    }

    #[test]
    fn rejects_long_request_line_complete() {
        // request_line_bytes_max = 64: "GET " + target + " HTTP/1.1" = 13 + target bytes.
        let ok = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(64 - 14));
        accepts(ok.as_bytes());
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(64 - 13));
        rejects(long.as_bytes(), 414, "request line too long");
    }

    #[test]
    fn rejects_long_request_line_while_incomplete() {
        // No CRLF within 64 + 2 bytes: refused before the rest arrives.
        let partial = format!("GET /{}", "a".repeat(61));
        assert_eq!(partial.len(), 66);
        rejects(partial.as_bytes(), 414, "request line too long");
        // One byte less could still end in CRLF: wait.
        with(&partial.as_bytes()[..65], |r| assert_eq!(r.unwrap_err(), ParseError::Incomplete));
    }

    // ---- rejections: head size and header count ----

    #[test]
    fn rejects_long_head_while_incomplete() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        buf.resize(LIMITS.header_bytes_max - 1, b'p');
        with(&buf, |r| assert_eq!(r.unwrap_err(), ParseError::Incomplete));
        buf.push(b'p');
        rejects(&buf, 431, "request head too large");
    }

    #[test]
    fn rejects_long_head_complete() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ".to_vec();
        let pad = LIMITS.header_bytes_max - buf.len() - 4;
        buf.extend(std::iter::repeat_n(b'p', pad));
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(buf.len(), LIMITS.header_bytes_max);
        accepts(&buf);
        buf.insert(30, b'p');
        rejects(&buf, 431, "request head too large");
    }

    #[test]
    fn rejects_too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for _ in 1..LIMITS.header_count_max {
            buf.extend_from_slice(b"X: 1\r\n");
        }
        let mut full = buf.clone();
        full.extend_from_slice(b"\r\n");
        accepts(&full);
        buf.extend_from_slice(b"X: 1\r\n\r\n");
        rejects(&buf, 431, "too many header fields");
    }

    // ---- rejections: body framing ----

    #[test]
    fn rejects_content_length_and_transfer_encoding() {
        rejects(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            "both Content-Length and Transfer-Encoding",
        );
        rejects(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            400,
            "both Content-Length and Transfer-Encoding",
        );
    }

    #[test]
    fn rejects_duplicate_content_length_even_identical() {
        rejects(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n",
            400,
            "more than one Content-Length header",
        );
        rejects(&head_with("Content-Length: 5, 5"), 400, "invalid Content-Length");
    }

    #[test]
    fn rejects_bad_content_length() {
        for v in ["", "abc", "5a", "+5", "-1", "0x10", "1 0", "1.0"] {
            rejects(&head_with(&format!("Content-Length: {v}")), 400, "invalid Content-Length");
        }
        with(&head_with("Content-Length: 007"), |r| assert_eq!(r.unwrap().framing, BodyFraming::Length(7)));
        with(&head_with("Content-Length:  12  "), |r| assert_eq!(r.unwrap().framing, BodyFraming::Length(12)));
    }

    #[test]
    fn rejects_content_length_over_body_limit() {
        with(&head_with("Content-Length: 1000"), |r| assert_eq!(r.unwrap().framing, BodyFraming::Length(1000)));
        rejects(&head_with("Content-Length: 1001"), 413, "body too large");
        // Too large for usize: still a length, refused as too large, not as malformed; the
        // framing checks still come first.
        rejects(&head_with("Content-Length: 99999999999999999999999"), 413, "body too large");
        rejects(
            &head_with("Content-Length: 99999999999999999999999\r\nContent-Length: 1"),
            400,
            "more than one Content-Length header",
        );
        rejects(
            &head_with("Content-Length: 99999999999999999999999\r\nTransfer-Encoding: chunked"),
            400,
            "both Content-Length and Transfer-Encoding",
        );
    }

    #[test]
    fn a_head_request_is_known_by_its_first_word_even_when_it_does_not_parse() {
        assert!(is_head(b"HEAD /i HTTP/1.1\r\n\r\n"));
        assert!(is_head(b"\r\n\r\nHEAD /i HTTP/1.1\r\n"));
        assert!(is_head(b"HEAD "));
        for buf in [&b"GET /i HTTP/1.1\r\n"[..], b"HEADX / HTTP/1.1\r\n", b"head / HTTP/1.1\r\n", b"HEAD", b"", b"\r\n"]
        {
            assert!(!is_head(buf), "{:?}", String::from_utf8_lossy(buf));
        }
    }

    #[test]
    fn accepts_chunked_case_insensitive() {
        with(&head_with("Transfer-Encoding: Chunked"), |r| assert_eq!(r.unwrap().framing, BodyFraming::Chunked));
    }

    #[test]
    fn accepts_chunked_as_the_only_coding_of_a_list() {
        // Empty list members are ignored (RFC 9110 §5.6.1), and so is an empty field line.
        for v in ["chunked", "CHUNKED", ", chunked", "chunked ,", " ,, chunked, "] {
            with(&head_with(&format!("Transfer-Encoding: {v}")), |r| {
                assert_eq!(r.map(|r| r.framing), Ok(BodyFraming::Chunked), "{v:?}")
            });
        }
        let two_lines = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n";
        with(two_lines, |r| assert_eq!(r.map(|r| r.framing), Ok(BodyFraming::Chunked)));
    }

    /// RFC 9112 §6.1: a well-formed coding list ending in chunked, with a coding before it we do
    /// not implement, is 501 (the framing is known; the content's coding is not).
    #[test]
    fn an_unsupported_coding_before_chunked_is_501() {
        let why = "unsupported transfer coding (only chunked)";
        for v in [
            "gzip, chunked",
            "deflate,chunked",
            "GZIP , Chunked",
            "x-custom, chunked",
            "identity, chunked",
            "gzip;level=1, chunked",
            "gzip ; q = \"a, b\\\"\" , chunked",
            ", gzip,, chunked ,",
        ] {
            rejects(&head_with(&format!("Transfer-Encoding: {v}")), 501, why);
        }
        // Two field lines make one list (RFC 9110 §5.3).
        let two_lines = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
        rejects(two_lines, 501, why);
    }

    /// RFC 9112 §6.3: in a request whose codings do not end in chunked the body's length cannot
    /// be known, and the server MUST answer 400 — so `gzip` alone is 400, not 501.
    #[test]
    fn a_coding_list_that_does_not_end_in_chunked_is_400() {
        let why = "Transfer-Encoding does not end in chunked";
        for v in ["gzip", "deflate", "identity", "xchunked", "chunked, gzip", "gzip, chunked, deflate"] {
            rejects(&head_with(&format!("Transfer-Encoding: {v}")), 400, why);
        }
        let two_lines = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n";
        rejects(two_lines, 400, why);
    }

    #[test]
    fn chunked_twice_is_400() {
        let why = "chunked more than once in Transfer-Encoding";
        for v in ["chunked, chunked", "chunked,,Chunked", "gzip, chunked, chunked"] {
            rejects(&head_with(&format!("Transfer-Encoding: {v}")), 400, why);
        }
        rejects(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            why,
        );
    }

    #[test]
    fn a_malformed_coding_list_is_400() {
        for v in [
            "",
            ",",
            " , ,",
            "chunked chunked",
            "gzip/1, chunked",
            "\"gzip\", chunked",
            "gzip;, chunked",
            "gzip;a, chunked",
            "gzip;a=, chunked",
            "gzip;=1, chunked",
            "gzip;a=\"x, chunked",
            "gzip;a=b c, chunked",
        ] {
            rejects(&head_with(&format!("Transfer-Encoding: {v}")), 400, "malformed Transfer-Encoding");
        }
        // chunked defines no parameters (RFC 9112 §7.1).
        rejects(&head_with("Transfer-Encoding: chunked;q=1"), 400, "chunked with parameters in Transfer-Encoding");
    }

    #[test]
    fn rejects_transfer_encoding_in_http10() {
        for te in ["chunked", "gzip, chunked", "gzip"] {
            rejects(
                format!("POST / HTTP/1.0\r\nTransfer-Encoding: {te}\r\n\r\n").as_bytes(),
                400,
                "Transfer-Encoding in an HTTP/1.0 request",
            );
        }
    }

    #[test]
    fn content_length_with_any_transfer_encoding_is_400_not_501() {
        for te in ["gzip, chunked", "gzip"] {
            rejects(
                format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: {te}\r\n\r\n")
                    .as_bytes(),
                400,
                "both Content-Length and Transfer-Encoding",
            );
        }
    }

    // ---- rejections: bytes that do not belong in a head ----

    #[test]
    fn rejects_nul() {
        rejects(b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 400, "invalid header value");
        rejects(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line");
        rejects(b"GET / HTTP/1.1\r\nHo\x00st: a\r\n\r\n", 400, "invalid header name");
    }

    #[test]
    fn rejects_bare_cr() {
        rejects(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "invalid header value");
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n", 400, "invalid header value");
        rejects(b"GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "malformed line ending");
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\n\rX\r\n\r\n", 400, "malformed line ending");
    }

    #[test]
    fn rejects_bare_lf() {
        // httparse accepts a bare LF as a line end; we do not.
        rejects(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF in request head");
        rejects(b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400, "bare LF in request head");
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\n\n", 400, "bare LF in request head");
        rejects(b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare LF in request head");
    }

    #[test]
    fn rejects_control_characters() {
        for c in (0x01u8..0x20).chain([0x7f]) {
            if c == b'\t' || c == b'\r' || c == b'\n' {
                continue;
            }
            let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX: a".to_vec();
            buf.extend_from_slice(&[c, b'b', b'\r', b'\n', b'\r', b'\n']);
            rejects(&buf, 400, "invalid header value");
        }
        // HTAB inside a value is field content; obs-text passes through.
        with(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\tb \xc3\xa9\r\n\r\n", |r| {
            assert_eq!(r.unwrap().header("x"), Some(&b"a\tb \xc3\xa9"[..]));
        });
    }

    #[test]
    fn head_byte_rule_catches_what_httparse_would_miss() {
        assert_eq!(
            check_head_bytes(b"GET / HTTP/1.1\r\nX: \x01\r\n\r\n"),
            Err(invalid(400, "control character in request head"))
        );
        assert_eq!(check_head_bytes(b"X: a\rb\r\n"), Err(invalid(400, "bare CR in request head")));
        assert_eq!(check_head_bytes(b"X: a\r"), Ok(()));
        assert_eq!(check_head_bytes(b"X: a\t\xff\r\n\r\n"), Ok(()));
    }

    /// What `parse` relies on: on every head httparse accepts, its checks plus the line-end
    /// check give the whole-head rule's verdict. Random heads dense in CR, LF, HTAB, NUL, DEL
    /// and other control bytes, anywhere in the request line, names and values; an httparse
    /// upgrade that loosens what it refuses fails here.
    #[test]
    fn head_bytes_match_httparse_plus_line_ends() {
        let mut x = crate::xorshift::Xorshift64::new(0x9e37_79b9_7f4a_7c15);
        let mut next = || x.next();
        let noise = b"\r\n\t\x00\x01\x0b\x1f\x7f\xff :ab";
        let (mut accepted, mut refused_by_line_ends) = (0, 0);
        for _ in 0..200_000 {
            let mut head = b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-A: v w\r\nCookie: c=1\r\n\r\n".to_vec();
            for _ in 0..1 + next() % 3 {
                let at = (next() % head.len() as u64) as usize;
                let b = noise[(next() % noise.len() as u64) as usize];
                match next() % 3 {
                    0 => head[at] = b,
                    1 => head.insert(at, b),
                    _ => drop(head.remove(at)),
                }
            }
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let Ok(httparse::Status::Complete(n)) = req.parse(&head) else { continue };
            let head = &head[..n];
            accepted += 1;
            let got = check_line_ends(head, req.headers);
            refused_by_line_ends += got.is_err() as usize;
            assert_eq!(got.is_ok(), check_head_bytes(head).is_ok(), "{:?}", String::from_utf8_lossy(head));
        }
        assert!(accepted > 10_000 && refused_by_line_ends > 100, "{accepted} {refused_by_line_ends}");
    }

    #[test]
    fn rejects_obs_fold() {
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400, "invalid header name");
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", 400, "invalid header name");
    }

    #[test]
    fn lenient_httparse_options_are_off() {
        // Space before the first header name.
        rejects(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "invalid header name");
        // Space between header name and colon (a smuggling classic).
        rejects(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "invalid header name");
        rejects(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400, "invalid header name");
        // Invalid header lines are refused, not skipped.
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: 1\r\n\r\n", 400, "invalid header name");
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n", 400, "invalid header name");
    }

    // ---- rejections: Host ----

    #[test]
    fn rejects_http11_without_host() {
        rejects(b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", 400, "missing Host header");
    }

    #[test]
    fn rejects_more_than_one_host() {
        rejects(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, "more than one Host header");
        rejects(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, "more than one Host header");
    }

    /// RFC 9112 §3.2: `Host = uri-host [ ":" port ]` (RFC 3986: IP-literal, IPv4address or
    /// reg-name; `port = *DIGIT`), or empty.
    #[test]
    fn accepts_valid_host_values() {
        let hosts = [
            "",
            "a",
            "t.example",
            "T.Example.:8080",
            "t.example:",
            "127.0.0.1",
            "127.0.0.1:65535",
            "xn--bcher-kva.example",
            "a-b_c~d.e",
            "%41b%7e",
            "!$&'()*+,;=",
            "[::1]",
            "[::1]:8080",
            "[2001:DB8::7]",
            "[::ffff:192.0.2.1]:1",
            "[v1.fe80::a+en1]",
            "[V7f.a~:!]",
        ];
        for v in hosts {
            let raw = format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n");
            with(raw.as_bytes(), |r| assert_eq!(r.map(|r| r.header("host")), Ok(Some(v.as_bytes())), "{v:?}"));
        }
    }

    #[test]
    fn rejects_invalid_host_values() {
        let hosts: [&[u8]; 36] = [
            b"a b",
            b"a/b",
            b"a/",
            b"u@a",
            b"a?b",
            b"a#b",
            b"a\"b",
            b"a<b",
            b"a>b",
            b"a\\b",
            b"a^b",
            b"a`b",
            b"a{b",
            b"a|b",
            b"a}b",
            b"a[b",
            b"a]",
            b"a:80:81",
            b"::1",
            b"a:8o",
            b"a:-1",
            b"a: 80",
            b"a%",
            b"a%4",
            b"a%zz",
            b"caf\xc3\xa9.example",
            b"a\tb",
            b"[::1",
            b"[::1]x",
            b"[::1]:x",
            b"[]",
            b"[::g]",
            b"[1.2.3.4]",
            b"[v1.]",
            b"[vz.a]",
            b"[v1.a/b]",
        ];
        for v in hosts {
            let mut raw = b"GET / HTTP/1.1\r\nHost: ".to_vec();
            raw.extend_from_slice(v);
            raw.extend_from_slice(b"\r\n\r\n");
            rejects(&raw, 400, "invalid Host header");
        }
        // Also in HTTP/1.0, where Host is optional but, when sent, must be valid.
        rejects(b"GET / HTTP/1.0\r\nHost: a/b\r\n\r\n", 400, "invalid Host header");
    }

    /// Deterministic mutation run: no input may panic, and every accepted head stays inside
    /// its buffer and its limits (the fuzz target's invariants, cheaply, on every test run).
    #[test]
    fn mutated_inputs_never_panic() {
        let seeds: [&[u8]; 5] = [
            b"GET /p?a=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"POST /e HTTP/1.1\r\nHost: [::1]:80\r\nTransfer-Encoding: x;q=\"a\\\"b\", chunked\r\n\r\n0\r\n\r\n",
            b"POST /e HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            b"GET / HTTP/1.0\r\nContent-Length: 12\r\n\r\n",
            b"GET /v?ev=start HTTP/1.2\r\nHost: a\r\n\r\n",
        ];
        let mut x = crate::xorshift::Xorshift64::new(0x9e37_79b9_7f4a_7c15);
        let mut next = move || x.next();
        for round in 0..30_000 {
            let mut buf = seeds[round % seeds.len()].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % buf.len();
                match next() % 3 {
                    0 => buf[at] = next() as u8,
                    1 => buf.insert(at, b"\r\n:; \t\x00"[next() as usize % 7]),
                    _ => drop(buf.remove(at)),
                }
            }
            let cut = next() as usize % (buf.len() + 1);
            let mut input = buf[..cut].to_vec();
            // What the connection loop does with a newer HTTP/1 minor version: rewrite the digit
            // it names, once, and parse again; that must never ask for another rewrite.
            let rewrite = with(&input, |r| match r {
                Err(ParseError::NewerMinorVersion { minor_at }) => Some(minor_at),
                _ => None,
            });
            if let Some(at) = rewrite {
                assert!(at < input.len() && input[at].is_ascii_digit() && input[at] > b'1', "{input:?} at {at}");
                input[at] = b'1';
                with(&input, |r| assert!(!matches!(r, Err(ParseError::NewerMinorVersion { .. })), "{r:?}"));
            }
            with(&input, |r| {
                if let Ok(r) = r {
                    assert!(r.head_len <= cut && r.head_len <= LIMITS.header_bytes_max);
                    assert!(r.headers.len() <= LIMITS.header_count_max);
                    assert!(!r.path.is_empty());
                    if let BodyFraming::Length(n) = r.framing {
                        assert!(n <= LIMITS.body_bytes_max);
                    }
                }
            });
        }
    }

    /// `head_pending` and `head_may_end`: a new read is parsed only where the head can end in
    /// it; wherever the end falls between two reads it is found, CRLF or bare-LF form.
    #[test]
    fn a_pending_head_is_parsed_again_only_where_it_may_end() {
        let req = b"\r\nGET /i HTTP/1.1\r\nHost: t\r\nX: y\r\n\r\n";
        for split in 1..req.len() {
            let (first, all) = (&req[..split], &req[..]);
            let pending = head_pending(first);
            // Before the request line's LF nothing is pending: every read is parsed.
            assert_eq!(pending == 0, !first.get(2..).unwrap_or(&[]).contains(&b'\n'), "split {split}");
            if pending > 0 {
                assert!(head_may_end(all, pending), "end missed with the split at {split}");
            }
        }
        let line = b"GET /i HTTP/1.1\r\nHost: t\r\n";
        let pending = head_pending(line);
        assert_eq!(pending, line.len());
        assert!(!head_may_end(b"GET /i HTTP/1.1\r\nHost: t\r\nX-A: b\r", pending));
        assert!(!head_may_end(b"GET /i HTTP/1.1\r\nHost: t\r\nX-A: b\r\n", pending));
        assert!(head_may_end(b"GET /i HTTP/1.1\r\nHost: t\r\n\n", pending));
        assert!(head_may_end(b"GET /i HTTP/1.1\r\nHost: t\r\nX-A: b\n\r\n", pending));
        // Empty lines before the request line are no head end.
        assert_eq!(head_pending(b"\r\n\r\nGET /i HT"), 0);
    }
}
