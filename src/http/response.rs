//! Response writers and the cached `Date` value.
//!
//! Every writer appends one complete response to the connection's write buffer, a `Vec<u8>`
//! whose capacity was reserved at start. Invariants:
//! - the buffer never grows: each piece is appended only if `len + piece <= capacity`
//!   (then `extend_from_slice` cannot reallocate); otherwise the writer truncates back to where
//!   it started and returns [`WriteError::Overflow`] with the numbers — a response is written
//!   whole or not at all;
//! - no allocation: numbers are formatted by `put_usize` on the stack, never by `format!`;
//! - every response carries `Server`, `Date` and, where a body is allowed, `Content-Length`;
//!   HEAD gets the same head as GET and no body (RFC 9110 §9.3.2); 204 has no Content-Length
//!   (RFC 9110 §8.6);
//! - header values that come from outside this file (Location, Allow) are checked for control
//!   bytes, so no caller can split a response.
//!
//! The status line is always `HTTP/1.1`, also to HTTP/1.0 clients (RFC 9110 §6.2: a server
//! sends its own highest conforming version). `version_minor` only decides the `Connection`
//! header: `close` whenever the connection will close, `keep-alive` for an HTTP/1.0 client
//! whose connection stays open, nothing for a persistent HTTP/1.1 connection.

/// Bytes of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const DATE_BYTES: usize = 29;

/// The 1×1 transparent GIF (GIF89a, 2-colour palette, colour 0 transparent), 43 bytes.
pub const GIF: [u8; 43] = [
    b'G', b'I', b'F', b'8', b'9', b'a', // signature and version
    0x01, 0x00, 0x01, 0x00, // logical screen 1 × 1
    0x80, 0x00, 0x00, // global colour table of 2 entries, background 0, no aspect ratio
    0x00, 0x00, 0x00, 0xff, 0xff, 0xff, // palette: black, white
    0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, // graphic control: colour 0 transparent
    0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // image 1 × 1 at 0,0
    0x02, 0x02, 0x44, 0x01, 0x00, // LZW min code 2; 2 bytes: clear, pixel 0, end
    0x3b, // trailer
];

/// Why nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The response needs `needed` bytes but only `free` are left below the capacity. The
    /// caller flushes and retries, or closes.
    Overflow { needed: usize, free: usize },
    /// A header value passed in (Location, Allow) contains CR, LF or another control byte.
    BadHeaderValue,
}

const CACHE_NEVER: &[u8] = b"Cache-Control: no-cache, no-store, must-revalidate\r\n";
/// What follows the date in the keep-alive HTTP/1.1 GIF answer without CORS, up to its body:
/// the lines `gif` writes one by one otherwise (`gif_fast_path_is_the_general_answer`).
const GIF_KEEP_ALIVE_REST: &[u8] = b"\r\nContent-Type: image/gif\r\n\
    Cache-Control: no-cache, no-store, must-revalidate\r\n\
    Content-Length: 43\r\n\r\n";

fn check_origin(allow_origin: Option<&[u8]>) -> Result<(), WriteError> {
    if allow_origin.is_some_and(|o| !is_header_value(o)) {
        return Err(WriteError::BadHeaderValue);
    }
    Ok(())
}

/// `HTTP/1.1 200 OK` with the 1×1 GIF, uncacheable so that every view reaches us.
/// `allow_origin`: see [`json`].
pub fn gif(
    out: &mut Vec<u8>,
    allow_origin: Option<&[u8]>,
    keep_alive: bool,
    head: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
) -> Result<usize, WriteError> {
    check_origin(allow_origin)?;
    let mut w = Out::new(out);
    if allow_origin.is_none() && keep_alive && version_minor == 1 {
        // Nearly every pixel: the head in three pieces around the date, not a dozen.
        w.put(b"HTTP/1.1 200 OK\r\nServer: tracker\r\nDate: ");
        w.put(date);
        w.put(GIF_KEEP_ALIVE_REST);
        if !head {
            w.put(&GIF);
        }
        return w.finish();
    }
    w.status_line(b"200 OK", date);
    w.allow_origin(allow_origin);
    w.put(b"Content-Type: image/gif\r\n");
    w.put(CACHE_NEVER);
    w.end_head(Some(GIF.len()), keep_alive, version_minor);
    if !head {
        w.put(&GIF);
    }
    w.finish()
}

/// `HTTP/1.1 204 No Content`, uncacheable like the GIF: RFC 9110 §15.3.5 lets a cache keep a
/// 204, and a cached pixel is an event we never see. No `head` flag: a 204 has no body and no
/// Content-Length either way. `allow_origin`: see [`json`].
pub fn no_content(
    out: &mut Vec<u8>,
    allow_origin: Option<&[u8]>,
    keep_alive: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
) -> Result<usize, WriteError> {
    check_origin(allow_origin)?;
    let mut w = Out::new(out);
    if allow_origin.is_none() && keep_alive && version_minor == 1 {
        w.put(b"HTTP/1.1 204 No Content\r\nServer: tracker\r\nDate: ");
        w.put(date);
        w.put(b"\r\nCache-Control: no-cache, no-store, must-revalidate\r\n\r\n");
        return w.finish();
    }
    w.status_line(b"204 No Content", date);
    w.allow_origin(allow_origin);
    w.put(CACHE_NEVER);
    w.end_head(None, keep_alive, version_minor);
    w.finish()
}

/// `HTTP/1.1 302 Found` to `location`, uncacheable: a cached redirect would skip the click we
/// count. `location` must be a valid URI reference already (no encoding is done here). No
/// `head` flag: the response has no body (Content-Length: 0) either way.
pub fn redirect(
    out: &mut Vec<u8>,
    location: &[u8],
    keep_alive: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
) -> Result<usize, WriteError> {
    if location.is_empty() || !is_header_value(location) {
        return Err(WriteError::BadHeaderValue);
    }
    let mut w = Out::new(out);
    w.status_line(b"302 Found", date);
    w.put(b"Location: ");
    w.put(location);
    w.put(b"\r\n");
    w.put(CACHE_NEVER);
    w.end_head(Some(0), keep_alive, version_minor);
    w.finish()
}

/// `HTTP/1.1 200 OK` with a JSON body the caller has serialised (e.g. an ack). `allow_origin`
/// (a CORS-allowed `Origin`, or `*`) adds `Access-Control-Allow-Origin` and `Vary: Origin`.
#[allow(clippy::too_many_arguments)] // one flat call, like `error`
pub fn json(
    out: &mut Vec<u8>,
    body: &[u8],
    allow_origin: Option<&[u8]>,
    keep_alive: bool,
    head: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
) -> Result<usize, WriteError> {
    check_origin(allow_origin)?;
    let mut w = Out::new(out);
    w.status_line(b"200 OK", date);
    w.put(b"Content-Type: application/json\r\nCache-Control: no-store\r\n");
    w.allow_origin(allow_origin);
    w.end_head(Some(body.len()), keep_alive, version_minor);
    if !head {
        w.put(body);
    }
    w.finish()
}

/// `HTTP/1.1 204 No Content` answering a CORS preflight from an allowed origin (`allow_origin`
/// is that origin, or `*`): POST with the request headers a JSON or gzip body needs, cacheable
/// by the browser for `max_age_s`.
pub fn preflight(
    out: &mut Vec<u8>,
    allow_origin: &[u8],
    max_age_s: u32,
    keep_alive: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
) -> Result<usize, WriteError> {
    if allow_origin.is_empty() || !is_header_value(allow_origin) {
        return Err(WriteError::BadHeaderValue);
    }
    let mut w = Out::new(out);
    w.status_line(b"204 No Content", date);
    w.allow_origin(Some(allow_origin));
    w.put(b"Access-Control-Allow-Methods: POST, OPTIONS\r\n");
    w.put(b"Access-Control-Allow-Headers: Content-Type, Content-Encoding\r\nAccess-Control-Max-Age: ");
    let mut digits = [0u8; USIZE_DIGITS_MAX];
    w.put(put_usize(&mut digits, max_age_s as usize));
    w.put(b"\r\n");
    w.end_head(None, keep_alive, version_minor);
    w.finish()
}

/// The methods the tracker implements for some target, as `OPTIONS *` reports them.
pub const ALLOW_ALL: &str = "GET, HEAD, POST, OPTIONS";

/// `HTTP/1.1 204 No Content` answering OPTIONS (RFC 9110 §9.3.7) with `Allow: {allow}`: for
/// `OPTIONS *`, a question about the server, [`ALLOW_ALL`]; for a path, that path's methods
/// (`endpoint::Route::Options`). Responses to OPTIONS are not cacheable, so no Cache-Control;
/// a 204 has no Content-Length (RFC 9110 §8.6).
pub fn options(
    out: &mut Vec<u8>,
    allow: &str,
    keep_alive: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
) -> Result<usize, WriteError> {
    if !is_header_value(allow.as_bytes()) {
        return Err(WriteError::BadHeaderValue);
    }
    let mut w = Out::new(out);
    w.status_line(b"204 No Content", date);
    w.put(b"Allow: ");
    w.put(allow.as_bytes());
    w.put(b"\r\n");
    w.end_head(None, keep_alive, version_minor);
    w.finish()
}

/// An error response with `reason` (plus a newline) as its text/plain body.
///
/// `status` is one of 400, 403, 404, 405, 408, 413, 414, 415, 429, 431, 500, 501, 503, 505; anything else
/// is a bug in the caller (debug assertion) and is sent as 500. 405 carries `Allow: {allow}`
/// (e.g. `GET, HEAD`), 503 carries `Retry-After: 1`. `allow_origin`: see [`json`] (a browser
/// shows a cross-origin script the reason only with it).
#[allow(clippy::too_many_arguments)] // one flat call per error path in `net`; a struct would only move the list
pub fn error(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    keep_alive: bool,
    head: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
    allow: Option<&str>,
    allow_origin: Option<&[u8]>,
) -> Result<usize, WriteError> {
    check_origin(allow_origin)?;
    let line = status_text(status);
    debug_assert!(line.is_some(), "no status text for {status}");
    debug_assert!(status != 405 || allow.is_some(), "405 without Allow");
    let line = line.unwrap_or("500 Internal Server Error").as_bytes();
    if let Some(allow) = allow {
        if !is_header_value(allow.as_bytes()) {
            return Err(WriteError::BadHeaderValue);
        }
    }
    let mut w = Out::new(out);
    w.status_line(line, date);
    w.allow_origin(allow_origin);
    w.put(b"Content-Type: text/plain; charset=utf-8\r\n");
    if let (405, Some(allow)) = (status, allow) {
        w.put(b"Allow: ");
        w.put(allow.as_bytes());
        w.put(b"\r\n");
    }
    if status == 503 {
        w.put(b"Retry-After: 1\r\n");
    }
    w.end_head(Some(reason.len() + 1), keep_alive, version_minor);
    if !head {
        w.put(reason.as_bytes());
        w.put(b"\n");
    }
    w.finish()
}

/// `HTTP/1.1 429 Too Many Requests` with `Retry-After: {retry_after_s}` and `reason` as the
/// text body: a client over its per-source budget. `allow_origin`: see [`json`].
#[allow(clippy::too_many_arguments)] // the parts of the head, as `error` takes them
pub fn too_many_requests(
    out: &mut Vec<u8>,
    retry_after_s: u32,
    reason: &str,
    keep_alive: bool,
    head: bool,
    version_minor: u8,
    date: &[u8; DATE_BYTES],
    allow_origin: Option<&[u8]>,
) -> Result<usize, WriteError> {
    check_origin(allow_origin)?;
    let mut w = Out::new(out);
    w.status_line(b"429 Too Many Requests", date);
    w.allow_origin(allow_origin);
    w.put(b"Content-Type: text/plain; charset=utf-8\r\nRetry-After: ");
    let mut digits = [0u8; USIZE_DIGITS_MAX];
    w.put(put_usize(&mut digits, retry_after_s as usize));
    w.put(b"\r\n");
    w.end_head(Some(reason.len() + 1), keep_alive, version_minor);
    if !head {
        w.put(reason.as_bytes());
        w.put(b"\n");
    }
    w.finish()
}

/// `HTTP/1.1 100 Continue`, the interim response to `Expect: 100-continue`.
pub fn continue_100(out: &mut Vec<u8>) -> Result<usize, WriteError> {
    let mut w = Out::new(out);
    w.put(b"HTTP/1.1 100 Continue\r\n\r\n");
    w.finish()
}

/// The status line after `HTTP/1.1 ` of every error status we answer (the admin listener's too).
pub(crate) fn status_text(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "400 Bad Request",
        403 => "403 Forbidden",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        408 => "408 Request Timeout",
        413 => "413 Content Too Large",
        414 => "414 URI Too Long",
        415 => "415 Unsupported Media Type",
        429 => "429 Too Many Requests",
        431 => "431 Request Header Fields Too Large",
        500 => "500 Internal Server Error",
        501 => "501 Not Implemented",
        503 => "503 Service Unavailable",
        505 => "505 HTTP Version Not Supported",
        _ => return None,
    })
}

/// field-value bytes: visible ASCII, SP, HTAB, obs-text — no CR, LF, NUL or other controls.
fn is_header_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Appends to a fixed-capacity buffer; remembers overflow instead of growing.
struct Out<'v> {
    v: &'v mut Vec<u8>,
    start: usize,
    /// Bytes this response needs in total (counted on past an overflow, for the error).
    needed: usize,
    overflow: bool,
}

impl<'v> Out<'v> {
    fn new(v: &'v mut Vec<u8>) -> Out<'v> {
        let start = v.len();
        Out { v, start, needed: 0, overflow: false }
    }

    #[inline]
    fn put(&mut self, b: &[u8]) {
        self.needed += b.len();
        if self.overflow || self.v.len() + b.len() > self.v.capacity() {
            self.overflow = true;
            return;
        }
        let cap = self.v.capacity();
        self.v.extend_from_slice(b);
        debug_assert_eq!(self.v.capacity(), cap);
    }

    fn status_line(&mut self, status: &[u8], date: &[u8; DATE_BYTES]) {
        self.put(b"HTTP/1.1 ");
        self.put(status);
        self.put(b"\r\nServer: tracker\r\nDate: ");
        self.put(date);
        self.put(b"\r\n");
    }

    /// `Access-Control-Allow-Origin` and `Vary: Origin` for a CORS-allowed origin (checked by
    /// `check_origin` before anything was written).
    fn allow_origin(&mut self, origin: Option<&[u8]>) {
        if let Some(o) = origin {
            self.put(b"Access-Control-Allow-Origin: ");
            self.put(o);
            self.put(b"\r\nVary: Origin\r\n");
        }
    }

    fn end_head(&mut self, content_length: Option<usize>, keep_alive: bool, version_minor: u8) {
        if let Some(n) = content_length {
            self.put(b"Content-Length: ");
            let mut digits = [0u8; USIZE_DIGITS_MAX];
            self.put(put_usize(&mut digits, n));
            self.put(b"\r\n");
        }
        if !keep_alive {
            self.put(b"Connection: close\r\n");
        } else if version_minor == 0 {
            self.put(b"Connection: keep-alive\r\n");
        }
        self.put(b"\r\n");
    }

    fn finish(self) -> Result<usize, WriteError> {
        if self.overflow {
            let free = self.v.capacity() - self.start;
            self.v.truncate(self.start);
            return Err(WriteError::Overflow { needed: self.needed, free });
        }
        debug_assert_eq!(self.v.len() - self.start, self.needed);
        Ok(self.needed)
    }
}

/// Decimal digits of `usize::MAX` on 64-bit.
const USIZE_DIGITS_MAX: usize = 20;

/// Formats `n` in decimal at the end of `buf` and returns the digits.
fn put_usize(buf: &mut [u8; USIZE_DIGITS_MAX], mut n: usize) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// The current `Date` header value, re-formatted only when the second changes.
///
/// One per shard; the connection loop calls [`DateCache::update`] at most once per batch, so
/// formatting costs a few dozen integer operations per second, not per response.
#[derive(Debug, Clone)]
pub struct DateCache {
    unix_secs: u64,
    text: [u8; DATE_BYTES],
}

/// 9999-12-31T23:59:59Z: the last second an IMF-fixdate's 4-digit year can show.
const UNIX_SECS_MAX: u64 = 253_402_300_799;

impl DateCache {
    /// Starts at the Unix epoch; call [`DateCache::update`] before the first response.
    pub fn new() -> DateCache {
        let mut d = DateCache { unix_secs: 0, text: [0; DATE_BYTES] };
        format_imf_fixdate(0, &mut d.text);
        d
    }

    /// Sets the time; formats only if the second changed.
    #[inline]
    pub fn update(&mut self, unix_secs: u64) {
        if unix_secs != self.unix_secs {
            self.unix_secs = unix_secs;
            format_imf_fixdate(unix_secs, &mut self.text);
        }
    }

    /// The formatted value, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
    #[inline]
    pub fn get(&self) -> &[u8; DATE_BYTES] {
        &self.text
    }
}

impl Default for DateCache {
    fn default() -> Self {
        DateCache::new()
    }
}

/// IMF-fixdate (RFC 9110 §5.6.7) of a Unix time, clamped to year 9999.
fn format_imf_fixdate(unix_secs: u64, out: &mut [u8; DATE_BYTES]) {
    const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let secs = unix_secs.min(UNIX_SECS_MAX);
    let days = secs / 86_400;
    let day_secs = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ((days + 4) % 7) as usize;

    out[0..3].copy_from_slice(DAYS[weekday]);
    out[3..5].copy_from_slice(b", ");
    two_digits(&mut out[5..7], day);
    out[7] = b' ';
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[11] = b' ';
    two_digits(&mut out[12..14], year / 100);
    two_digits(&mut out[14..16], year % 100);
    out[16] = b' ';
    two_digits(&mut out[17..19], day_secs / 3600);
    out[19] = b':';
    two_digits(&mut out[20..22], day_secs / 60 % 60);
    out[22] = b':';
    two_digits(&mut out[23..25], day_secs % 60);
    out[25..29].copy_from_slice(b" GMT");
}

fn two_digits(out: &mut [u8], n: u64) {
    debug_assert!(n < 100);
    out[0] = b'0' + (n / 10) as u8;
    out[1] = b'0' + (n % 10) as u8;
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01, proleptic Gregorian.
/// Counts in 400-year eras that start on 1 March, so the leap day is the last day of a year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let doe = z - era * 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from 1 March, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &[u8; DATE_BYTES] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn buf() -> Vec<u8> {
        Vec::with_capacity(1024)
    }

    #[test]
    fn gif_bytes_exact() {
        let mut out = buf();
        let n = gif(&mut out, None, true, false, 1, DATE).unwrap();
        let mut want = b"HTTP/1.1 200 OK\r\n\
            Server: tracker\r\n\
            Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
            Content-Type: image/gif\r\n\
            Cache-Control: no-cache, no-store, must-revalidate\r\n\
            Content-Length: 43\r\n\
            \r\n"
            .to_vec();
        want.extend_from_slice(&GIF);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
        assert_eq!(out, want);
        assert_eq!(n, out.len());
    }

    /// The three-piece answers are exactly what the line-by-line writer makes of the same
    /// request (GIF with and without body, 204).
    #[test]
    fn gif_fast_path_is_the_general_answer() {
        for head in [false, true] {
            let mut fast = buf();
            gif(&mut fast, None, true, head, 1, DATE).unwrap();
            let mut general = buf();
            let mut w = Out::new(&mut general);
            w.status_line(b"200 OK", DATE);
            w.put(b"Content-Type: image/gif\r\n");
            w.put(CACHE_NEVER);
            w.end_head(Some(GIF.len()), true, 1);
            if !head {
                w.put(&GIF);
            }
            w.finish().unwrap();
            assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&general), "head {head}");
        }
        let mut fast = buf();
        no_content(&mut fast, None, true, 1, DATE).unwrap();
        let mut general = buf();
        let mut w = Out::new(&mut general);
        w.status_line(b"204 No Content", DATE);
        w.put(CACHE_NEVER);
        w.end_head(None, true, 1);
        w.finish().unwrap();
        assert_eq!(fast, general);
        // A write buffer without room still says how much the answer needs.
        let mut small = Vec::with_capacity(10);
        assert!(matches!(gif(&mut small, None, true, false, 1, DATE), Err(WriteError::Overflow { .. })));
        assert!(small.is_empty());
    }

    #[test]
    fn gif_is_a_1x1_gif89a() {
        assert_eq!(GIF.len(), 43);
        assert_eq!(&GIF[..6], b"GIF89a");
        assert_eq!((GIF[6], GIF[8]), (1, 1));
        assert_eq!(GIF[GIF.len() - 1], 0x3b);
    }

    #[test]
    fn no_content_bytes_exact() {
        let mut out = buf();
        no_content(&mut out, None, true, 1, DATE).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nServer: tracker\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
              Cache-Control: no-cache, no-store, must-revalidate\r\n\r\n"
        );
    }

    #[test]
    fn connection_header() {
        let mut out = buf();
        no_content(&mut out, None, false, 1, DATE).unwrap();
        assert!(out.ends_with(b"must-revalidate\r\nConnection: close\r\n\r\n"));
        out.clear();
        no_content(&mut out, None, true, 0, DATE).unwrap();
        assert!(out.ends_with(b"must-revalidate\r\nConnection: keep-alive\r\n\r\n"));
        out.clear();
        no_content(&mut out, None, false, 0, DATE).unwrap();
        assert!(out.ends_with(b"must-revalidate\r\nConnection: close\r\n\r\n"));
        out.clear();
        gif(&mut out, None, false, false, 1, DATE).unwrap();
        assert!(out.ends_with(&[&b"Content-Length: 43\r\nConnection: close\r\n\r\n"[..], &GIF].concat()));
    }

    #[test]
    fn head_has_same_headers_and_no_body() {
        let (mut get, mut head) = (buf(), buf());
        gif(&mut get, None, true, false, 1, DATE).unwrap();
        gif(&mut head, None, true, true, 1, DATE).unwrap();
        assert_eq!(head, get[..get.len() - GIF.len()]);
        assert!(head.ends_with(b"Content-Length: 43\r\n\r\n"));

        let (mut get, mut head) = (buf(), buf());
        error(&mut get, 404, "no such endpoint", true, false, 1, DATE, None, None).unwrap();
        error(&mut head, 404, "no such endpoint", true, true, 1, DATE, None, None).unwrap();
        assert!(get.ends_with(b"Content-Length: 17\r\n\r\nno such endpoint\n"));
        assert_eq!(head, get[..get.len() - 17]);

        let (mut get, mut head) = (buf(), buf());
        json(&mut get, b"{\"ok\":true}", None, true, false, 1, DATE).unwrap();
        json(&mut head, b"{\"ok\":true}", None, true, true, 1, DATE).unwrap();
        assert_eq!(head, get[..get.len() - 11]);
    }

    #[test]
    fn error_bytes_exact() {
        let mut out = buf();
        error(&mut out, 400, "missing required field campaign_id", false, false, 1, DATE, None, None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 35\r\n\
             Connection: close\r\n\
             \r\n\
             missing required field campaign_id\n"
        );
    }

    #[test]
    fn error_statuses() {
        for (status, line) in [
            (400, "400 Bad Request"),
            (404, "404 Not Found"),
            (413, "413 Content Too Large"),
            (414, "414 URI Too Long"),
            (431, "431 Request Header Fields Too Large"),
            (501, "501 Not Implemented"),
        ] {
            let mut out = buf();
            error(&mut out, status, "r", true, false, 1, DATE, None, None).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {line}\r\n")), "{text}");
            assert!(!text.contains("Allow") && !text.contains("Retry-After"));
            assert!(text.ends_with("Content-Length: 2\r\n\r\nr\n"), "{text}");
        }
    }

    #[test]
    fn error_405_has_allow() {
        let mut out = buf();
        error(&mut out, 405, "method not allowed", true, false, 1, DATE, Some("GET, HEAD"), None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"));
        let mut out = buf();
        let bad = error(&mut out, 405, "m", true, false, 1, DATE, Some("GET\r\nX: y"), None);
        assert_eq!(bad, Err(WriteError::BadHeaderValue));
        assert!(out.is_empty());
    }

    #[test]
    fn error_503_has_retry_after() {
        let mut out = buf();
        error(&mut out, 503, "overloaded, retry", true, false, 1, DATE, None, None).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("\r\nRetry-After: 1\r\n"));
    }

    #[test]
    fn errors_gifs_and_204s_carry_the_cors_grant_when_given_one() {
        let mut out = Vec::with_capacity(1024);
        error(&mut out, 400, "bad", true, false, 1, DATE, None, Some(b"https://a.example")).unwrap();
        let text = String::from_utf8_lossy(&out).to_string();
        assert!(text.contains("\r\nAccess-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n"), "{text}");
        out.clear();
        gif(&mut out, Some(b"*"), true, false, 1, DATE).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("\r\nAccess-Control-Allow-Origin: *\r\n"));
        out.clear();
        no_content(&mut out, Some(b"*"), true, 1, DATE).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("\r\nAccess-Control-Allow-Origin: *\r\n"));
        out.clear();
        assert_eq!(
            error(&mut out, 400, "bad", true, false, 1, DATE, None, Some(b"x\r\ny")),
            Err(WriteError::BadHeaderValue)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn redirect_bytes_exact() {
        let mut out = buf();
        redirect(&mut out, b"https://example.com/landing?a=1", true, 1, DATE).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 302 Found\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Location: https://example.com/landing?a=1\r\n\
             Cache-Control: no-cache, no-store, must-revalidate\r\n\
             Content-Length: 0\r\n\
             \r\n"
        );
    }

    #[test]
    fn redirect_refuses_header_injection() {
        let mut out = buf();
        for bad in [&b"/a\r\nSet-Cookie: x=1"[..], b"/a\nb", b"/a\x00", b""] {
            assert_eq!(redirect(&mut out, bad, true, 1, DATE), Err(WriteError::BadHeaderValue));
        }
        assert!(out.is_empty());
    }

    #[test]
    fn json_bytes_exact() {
        let mut out = buf();
        json(&mut out, b"{\"ok\":true}", None, true, false, 0, DATE).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: application/json\r\n\
             Cache-Control: no-store\r\n\
             Content-Length: 11\r\n\
             Connection: keep-alive\r\n\
             \r\n\
             {\"ok\":true}"
        );
    }

    #[test]
    fn cors_bytes_exact() {
        let mut out = buf();
        json(&mut out, b"{}", Some(b"https://a.example"), true, false, 1, DATE).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: application/json\r\n\
             Cache-Control: no-store\r\n\
             Access-Control-Allow-Origin: https://a.example\r\n\
             Vary: Origin\r\n\
             Content-Length: 2\r\n\
             \r\n\
             {}"
        );
        let mut out = buf();
        preflight(&mut out, b"*", 600, false, 1, DATE).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Access-Control-Allow-Origin: *\r\n\
             Vary: Origin\r\n\
             Access-Control-Allow-Methods: POST, OPTIONS\r\n\
             Access-Control-Allow-Headers: Content-Type, Content-Encoding\r\n\
             Access-Control-Max-Age: 600\r\n\
             Connection: close\r\n\
             \r\n"
        );
        let mut out = buf();
        assert_eq!(
            preflight(&mut out, b"https://x\r\nSet-Cookie: a=b", 1, true, 1, DATE),
            Err(WriteError::BadHeaderValue)
        );
        assert_eq!(json(&mut out, b"{}", Some(b"a\nb"), true, false, 1, DATE), Err(WriteError::BadHeaderValue));
        assert!(out.is_empty());
    }

    #[test]
    fn options_bytes_exact() {
        let mut out = buf();
        options(&mut out, ALLOW_ALL, true, 1, DATE).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 204 No Content\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Allow: GET, HEAD, POST, OPTIONS\r\n\
             \r\n"
        );
        let mut out = buf();
        options(&mut out, ALLOW_ALL, true, 0, DATE).unwrap();
        assert!(out.ends_with(b"Allow: GET, HEAD, POST, OPTIONS\r\nConnection: keep-alive\r\n\r\n"));
        let mut out = buf();
        options(&mut out, "GET, HEAD, OPTIONS", false, 1, DATE).unwrap();
        assert!(out.ends_with(b"Allow: GET, HEAD, OPTIONS\r\nConnection: close\r\n\r\n"));
        let mut out = buf();
        assert_eq!(options(&mut out, "GET\r\nX: y", true, 1, DATE), Err(WriteError::BadHeaderValue));
        assert!(out.is_empty());
    }

    #[test]
    fn too_many_requests_bytes_exact() {
        let mut out = buf();
        too_many_requests(&mut out, 7, "over budget", true, false, 1, DATE, None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 429 Too Many Requests\r\n\
             Server: tracker\r\n\
             Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Retry-After: 7\r\n\
             Content-Length: 12\r\n\
             \r\n\
             over budget\n"
        );
    }

    #[test]
    fn continue_bytes_exact() {
        let mut out = buf();
        assert_eq!(continue_100(&mut out), Ok(25));
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn writers_never_reallocate() {
        let mut out = Vec::with_capacity(4096);
        let (cap, ptr) = (out.capacity(), out.as_ptr());
        let mut writes = 0;
        loop {
            let r = match writes % 4 {
                0 => gif(&mut out, None, true, false, 1, DATE),
                1 => no_content(&mut out, None, true, 1, DATE),
                2 => error(&mut out, 400, "bad", true, false, 1, DATE, None, None),
                _ => redirect(&mut out, b"/x", true, 1, DATE),
            };
            if r.is_err() {
                break;
            }
            writes += 1;
        }
        assert!(writes > 10);
        assert_eq!((out.capacity(), out.as_ptr()), (cap, ptr));
        assert!(out.len() <= cap);
    }

    #[test]
    fn overflow_writes_nothing_and_reports_numbers() {
        let mut out = Vec::with_capacity(200);
        out.extend_from_slice(b"earlier response");
        let before = out.clone();
        let cap = out.capacity();
        let r = gif(&mut out, None, true, false, 1, DATE);
        let mut probe = Vec::with_capacity(1024);
        let needed = gif(&mut probe, None, true, false, 1, DATE).unwrap();
        assert_eq!(r, Err(WriteError::Overflow { needed, free: cap - before.len() }));
        assert_eq!(out, before);
        assert_eq!(out.capacity(), cap);
        // Exactly enough room fits.
        let mut exact = Vec::with_capacity(needed);
        let cap = exact.capacity();
        if cap == needed {
            assert_eq!(gif(&mut exact, None, true, false, 1, DATE), Ok(needed));
            assert_eq!(exact.capacity(), cap);
        }
    }

    #[test]
    fn numbers() {
        let mut d = [0u8; USIZE_DIGITS_MAX];
        assert_eq!(put_usize(&mut d, 0), b"0");
        assert_eq!(put_usize(&mut d, 7), b"7");
        assert_eq!(put_usize(&mut d, 1000), b"1000");
        assert_eq!(put_usize(&mut d, usize::MAX), usize::MAX.to_string().as_bytes());
    }

    #[test]
    fn date_cache() {
        let mut d = DateCache::new();
        assert_eq!(d.get(), b"Thu, 01 Jan 1970 00:00:00 GMT");
        d.update(784_111_777);
        assert_eq!(d.get(), DATE);
        d.update(784_111_777);
        assert_eq!(d.get(), DATE);
        d.update(784_111_778);
        assert_eq!(d.get(), b"Sun, 06 Nov 1994 08:49:38 GMT");
    }

    #[test]
    fn date_formatting() {
        let cases: [(u64, &[u8; DATE_BYTES]); 8] = [
            (0, b"Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, b"Tue, 29 Feb 2000 00:00:00 GMT"),
            (951_868_799, b"Tue, 29 Feb 2000 23:59:59 GMT"),
            (951_868_800, b"Wed, 01 Mar 2000 00:00:00 GMT"),
            (4_107_542_399, b"Sun, 28 Feb 2100 23:59:59 GMT"),
            (4_107_542_400, b"Mon, 01 Mar 2100 00:00:00 GMT"),
            (1_767_225_599, b"Wed, 31 Dec 2025 23:59:59 GMT"),
            (253_402_300_799, b"Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, want) in cases {
            let mut out = [0u8; DATE_BYTES];
            format_imf_fixdate(secs, &mut out);
            assert_eq!(&out, want, "{secs}: {}", String::from_utf8_lossy(&out));
        }
        let mut out = [0u8; DATE_BYTES];
        format_imf_fixdate(u64::MAX, &mut out);
        assert_eq!(&out, b"Fri, 31 Dec 9999 23:59:59 GMT");
    }
}
