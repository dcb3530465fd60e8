//! A small blocking HTTP/1.1 client for collectors (std `TcpStream` + httparse): one request
//! per connection (`Connection: close`), every step bounded by a timeout, response bodies
//! bounded. Enough for a batch every few milliseconds; no TLS (put a local proxy in front).
//!
//! Names are looked up at most every RESOLVE_TTL, not once per request, on a thread of their
//! own: getaddrinfo has no timeout (resolv.conf's retries can add up to tens of seconds), so a
//! request waits for a lookup only until its own deadline, and while a name does not resolve
//! the addresses it last resolved to stay in use. Every address is tried in turn.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Largest response body read; a longer one is an error.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;
/// Header fields a response may carry. Ingress and proxy chains add a dozen or more (tracing,
/// security, CDN headers); a response over the limit is refused as malformed and its batch
/// retried for ever, so this is generous. 128 × 32 bytes of stack, off the request path.
const RESPONSE_HEADERS_MAX: usize = 128;
/// How long a name's addresses are used before it is looked up again (sooner after no address
/// took a connection).
const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// `http://host:port/base`, parsed once at configuration.
#[derive(Clone, Debug)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing '/', "" for none.
    pub base: String,
    /// The host's addresses; shared by the clones of one parsed Url.
    addrs: Arc<Addresses>,
    /// `host[:port]` as the URL wrote it, an IPv6 address in brackets: the Host header.
    authority: String,
}

impl PartialEq for Url {
    fn eq(&self, o: &Url) -> bool {
        (&self.host, self.port, &self.base) == (&o.host, o.port, &o.base)
    }
}
impl Eq for Url {}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| format!("\"{s}\": expected http://HOST:PORT[/PATH]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        // A ':' inside brackets belongs to an IPv6 address (`[::1]`), not to a port.
        let port_colon = authority.rfind(':').filter(|&i| !authority[i..].contains(']'));
        let (host, port) = match port_colon.map(|i| (&authority[..i], &authority[i + 1..])) {
            Some((h, p)) if !h.is_empty() => {
                (h, p.parse::<u16>().map_err(|_| format!("\"{s}\": port \"{p}\" is not a number 1..=65535"))?)
            }
            _ if !authority.is_empty() => (authority, 80),
            _ => return Err(format!("\"{s}\": no host")),
        };
        if path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
            return Err(format!("\"{s}\": the path may not hold spaces, '?' or '#'"));
        }
        let host = host.trim_matches(['[', ']']).to_string();
        let addrs = Arc::new(Addresses::new(&host, port, system_lookup));
        let base = path.trim_end_matches('/').to_string();
        Ok(Url { host, port, base, addrs, authority: authority.to_string() })
    }
}

/// A name lookup: the system resolver, or a test's.
type Lookup = fn(&str, u16) -> std::io::Result<Vec<SocketAddr>>;

fn system_lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    (host, port).to_socket_addrs().map(|a| a.collect())
}

/// The addresses of one host, and the one lookup of it that may be in flight.
#[derive(Debug)]
struct Addresses {
    host: String,
    port: u16,
    /// An IP address as the host: never looked up.
    literal: bool,
    lookup: Lookup,
    state: Mutex<AddrState>,
    /// Signalled when a lookup ends.
    looked_up: Condvar,
}

#[derive(Debug, Default)]
struct AddrState {
    /// From the last lookup that found any; empty before one did.
    addrs: Vec<SocketAddr>,
    /// When `addrs` were found; None = look up before the next use.
    found_at: Option<Instant>,
    looking_up: bool,
    /// Why the last lookup failed, until one succeeds.
    error: Option<String>,
}

impl Addresses {
    fn new(host: &str, port: u16, lookup: Lookup) -> Addresses {
        let ip = host.parse::<IpAddr>().ok();
        let state =
            AddrState { addrs: ip.map(|ip| SocketAddr::new(ip, port)).into_iter().collect(), ..Default::default() };
        Addresses {
            host: host.to_string(),
            port,
            literal: ip.is_some(),
            lookup,
            state: Mutex::new(state),
            looked_up: Condvar::new(),
        }
    }

    /// The addresses to try, looked up first when due, waiting for that at most until `deadline`.
    /// A lookup that failed or did not answer in time leaves the last addresses found in use.
    fn get(self: &Arc<Self>, deadline: Instant) -> Result<Vec<SocketAddr>, String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if self.literal || st.found_at.is_some_and(|t| t.elapsed() < RESOLVE_TTL) {
            return Ok(st.addrs.clone());
        }
        if !st.looking_up {
            st.looking_up = true;
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new().name("tracker-resolve".into()).spawn(move || me.look_up());
            if spawned.is_err() {
                // No thread to spare: look up here, unbounded, rather than never.
                drop(st);
                self.look_up();
                st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            }
        }
        while st.looking_up {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.looked_up.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        if !st.addrs.is_empty() {
            return Ok(st.addrs.clone());
        }
        match (&st.error, st.looking_up) {
            (Some(e), _) => Err(e.clone()),
            (None, true) => Err(format!("resolve {}: no answer in time", self.host)),
            (None, false) => Err(format!("resolve {}: no address", self.host)),
        }
    }

    fn look_up(&self) {
        let found = (self.lookup)(&self.host, self.port);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match found {
            Ok(a) if !a.is_empty() => {
                st.addrs = a;
                st.found_at = Some(Instant::now());
                st.error = None;
            }
            Ok(_) => st.error = Some(format!("resolve {}: no address", self.host)),
            Err(e) => st.error = Some(format!("resolve {}:{}: {e}", self.host, self.port)),
        }
        st.looking_up = false;
        self.looked_up.notify_all();
    }

    /// No address took a connection: look the name up again before the next request.
    fn refused(&self) {
        if !self.literal {
            self.state.lock().unwrap_or_else(|p| p.into_inner()).found_at = None;
        }
    }
}

/// Connects to the first of `addrs` that accepts, giving each an equal share of the time left
/// before `deadline`, so that one address that drops packets cannot use up the exchange's
/// whole time before the next is tried.
fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<(TcpStream, SocketAddr), String> {
    let mut last = None;
    for (i, a) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(a, left / (addrs.len() - i) as u32) {
            Ok(s) => return Ok((s, *a)),
            Err(e) => last = Some(format!("connect {a}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| "connect: no time left".into()))
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends one request and reads the response; an `Err` is a transport failure (retriable).
/// `timeout` bounds the whole exchange, connect to last byte: a destination that trickles its
/// answer a byte at a time still times out.
pub fn request(
    url: &Url,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response, String> {
    let deadline = Instant::now() + timeout;
    let addrs = url.addrs.get(deadline)?;
    let (mut s, addr) = connect_any(&addrs, deadline).inspect_err(|_| url.addrs.refused())?;
    let expired = |what: &str| format!("{what} {addr}: the exchange did not finish within {} ms", timeout.as_millis());
    // The time left before the deadline, or the error to return when none is.
    let left = |what: &str| {
        let d = deadline.saturating_duration_since(Instant::now());
        if d.is_zero() {
            Err(expired(what))
        } else {
            Ok(d)
        }
    };
    // SO_SNDTIMEO / SO_RCVTIMEO set from `left` expired: the deadline, said as such.
    let timed_out =
        |e: &std::io::Error| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
    let _ = s.set_nodelay(true);
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        url.base,
        url.authority,
        body.len()
    );
    for (n, v) in headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    // Each write gets what is left of the deadline: a peer that reads slowly cannot stretch a
    // large body's send past it.
    // A peer may answer from the head alone and close with the body unread (413 for a body over
    // its limit): the write then fails, but the answer is in the receive buffer, and it is what
    // says why. So a failed send reads on; only when no refusal is there is it a send failure.
    let mut send_failed = None;
    'send: for mut part in [head.as_bytes(), body] {
        while !part.is_empty() {
            s.set_write_timeout(Some(left("send to")?)).map_err(|e| e.to_string())?;
            match s.write(part) {
                Ok(0) => {
                    send_failed = Some(format!("send to {addr}: connection closed"));
                    break 'send;
                }
                Ok(n) => part = &part[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(expired("send to")),
                Err(e) => {
                    send_failed = Some(format!("send to {addr}: {e}"));
                    break 'send;
                }
            }
        }
    }
    // An answer to a request that was not sent whole acknowledges nothing: only a refusal is
    // taken from it.
    let early = |r: Response| match &send_failed {
        Some(e) if (200..300).contains(&r.status) => Err(e.clone()),
        _ => Ok(r),
    };
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(left("read from")?)).map_err(|e| e.to_string())?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if timed_out(&e) => return Err(send_failed.unwrap_or_else(|| expired("read from"))),
            Err(e) => return Err(send_failed.unwrap_or_else(|| format!("read from {addr}: {e}"))),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > RESPONSE_BYTES_MAX + 16 * 1024 {
            return Err(format!("response from {addr} is over {RESPONSE_BYTES_MAX} bytes"));
        }
        match parse_response(&buf, false) {
            Ok(Some(r)) => return early(r),
            Ok(None) => {}
            Err(e) => return Err(send_failed.unwrap_or(e)),
        }
    }
    // EOF: a response without Content-Length ends here.
    match parse_response(&buf, true) {
        Ok(Some(r)) => early(r),
        Ok(None) => Err(send_failed.unwrap_or_else(|| format!("{addr} closed the connection before a whole response"))),
        Err(e) => Err(send_failed.unwrap_or(e)),
    }
}

/// The final response in `buf`, `None` when more bytes are needed. Interim 1xx responses
/// before it (`100 Continue`, `103 Early Hints`: a server or proxy may send them unasked, and
/// HTTP/1.1 clients must read past them) are skipped; taken as the answer, they would fail
/// every attempt of a batch the destination accepted. `eof`: the peer closed, so a response
/// without a length ends here.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
        let mut r = httparse::Response::new(&mut headers);
        let head = match r.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => at + n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("bad response: {e}")),
        };
        let status = r.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            at = head;
            continue;
        }
        // RFC 9112 §6.3: a Transfer-Encoding whose final coding is chunked frames the body, a
        // Content-Length beside it notwithstanding; the body ends at its last chunk, also on a
        // connection the destination keeps open.
        let chunked = r
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .flat_map(|h| h.value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|c| !c.is_empty())
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        if chunked {
            // Decoded from the start at each read: answers are small, and bounded by the caller.
            let mut body = vec![0u8; RESPONSE_BYTES_MAX];
            return match crate::http::chunked::decode(&buf[head..], &mut body, RESPONSE_BYTES_MAX) {
                Ok((n, _)) => {
                    body.truncate(n);
                    Ok(Some(Response { status, body }))
                }
                // At EOF the caller says the answer was cut short.
                Err(crate::http::ParseError::Incomplete | crate::http::ParseError::NewerMinorVersion { .. }) => {
                    Ok(None)
                }
                Err(crate::http::ParseError::Invalid { status: 413, .. }) => {
                    Err(format!("chunked response body is over {RESPONSE_BYTES_MAX} bytes"))
                }
                Err(crate::http::ParseError::Invalid { reason, .. }) => Err(format!("bad chunked response: {reason}")),
            };
        }
        let len = r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
        return match len {
            Some(l) if l > RESPONSE_BYTES_MAX => Err(format!("response body of {l} bytes is too large")),
            Some(l) if buf.len() >= head + l => Ok(Some(Response { status, body: buf[head..head + l].to_vec() })),
            // Cut short: what came is all there is (the status line still says what happened).
            Some(_) if eof => Ok(Some(Response { status, body: buf[head..].to_vec() })),
            Some(_) => Ok(None),
            None if status == 204 || status == 304 => Ok(Some(Response { status, body: Vec::new() })),
            // No length: the body ends at EOF, which the caller reaches by reading on.
            None if eof => Ok(Some(Response { status, body: buf[head..].to_vec() })),
            None => Ok(None),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:9100").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.base.as_str()), ("127.0.0.1", 9100, ""));
        assert_eq!(Url::parse("http://b.example/x/").unwrap().base, "/x");
        assert_eq!(Url::parse("http://[::1]:80/").unwrap().host, "::1");
        // Regression: without a port, the address's last ':' was taken for the port's.
        let v6 = Url::parse("http://[::1]/spend").unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.base.as_str(), v6.authority.as_str()),
            ("::1", 80, "/spend", "[::1]")
        );
        assert!(Url::parse("https://x").is_err());
        assert!(Url::parse("http://x:99999").is_err());
    }

    #[test]
    fn a_response_with_many_header_fields_is_read() {
        // Regression: more than 32 fields (a proxy chain's) was "bad response", retried for ever.
        let mut r = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..100 {
            r.extend_from_slice(format!("X-Proxy-{i}: hop\r\n").as_bytes());
        }
        r.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
        let got = parse_response(&r, false).unwrap().expect("a whole response");
        assert_eq!(got.status, 200);
    }

    /// The next connection to `l`, within 30 s, with reads bounded the same: a test whose
    /// client never connects (or stops sending) fails instead of hanging on the server thread.
    fn accept_one(l: &std::net::TcpListener) -> std::net::TcpStream {
        const BOUND: Duration = Duration::from_secs(30);
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + BOUND;
        loop {
            match l.accept() {
                Ok((c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(BOUND)).unwrap();
                    return c;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("no connection within {BOUND:?}: {e}"),
            }
        }
    }

    /// Reads a test request whole (head, then the body `{}`): closing with some of it unread
    /// would reset the connection under the client's read.
    fn read_request(c: &mut std::net::TcpStream) -> Vec<u8> {
        let (mut req, mut chunk) = (Vec::new(), [0u8; 1024]);
        while !req.ends_with(b"{}") {
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => req.extend_from_slice(&chunk[..n]),
            }
        }
        req
    }

    /// Answers one request with `answer` on a fresh port; returns the client's result.
    fn exchange(answer: &'static [u8]) -> Result<Response, String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut c = accept_one(&l);
            read_request(&mut c);
            let _ = c.write_all(answer);
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let r = request(&url, "POST", "/v1/spend", &[], b"{}", Duration::from_secs(5));
        server.join().unwrap();
        r
    }

    #[test]
    fn interim_1xx_answers_are_read_past_to_the_final_one() {
        let r = exchange(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        // Without a length the final answer's body ends at EOF, after the interim ones too.
        let r = exchange(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\n\r\nlater").unwrap();
        assert_eq!((r.status, &r.body[..]), (503, &b"later"[..]));
        // Only interim answers, then EOF: no answer.
        assert!(exchange(b"HTTP/1.1 100 Continue\r\n\r\n").is_err());
    }

    /// Regression: a chunked answer (what many HTTP stacks and proxies send for a body of
    /// unknown length) was taken raw, framing and all, so the banker's `200 {"applied":true}`
    /// did not parse and the batch was retried for ever; and on a connection the destination
    /// kept open after it, each attempt waited out its whole timeout.
    #[test]
    fn a_chunked_answer_is_decoded_and_ends_at_its_last_chunk() {
        let r = exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7;ext=1\r\n{\"a\":1,\r\n4\r\n\"b\":\r\n2\r\n2}\r\n0\r\nX-T: 1\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &br#"{"a":1,"b":2}"#[..]));
        // Chunked wins over a Content-Length beside it (RFC 9112 §6.3).
        let r = exchange(
            b"HTTP/1.1 409 Conflict\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, &r.body[..]), (409, &b"no"[..]));
        // Bad framing is an error (the attempt is retried), not a body.
        assert!(exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n").is_err());
        // Cut short by EOF: no whole answer.
        assert!(exchange(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel").is_err());
        // The destination keeps the connection open after the last chunk: the answer is whole
        // there, well before the attempt's timeout.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut c = accept_one(&l);
            read_request(&mut c);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n");
            // Open until the client closes (or 20 s pass).
            let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
            let _ = c.read(&mut [0u8; 16]);
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let r = request(&url, "POST", "/v1/spend", &[], b"{}", Duration::from_secs(10)).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        server.join().unwrap();
    }

    /// Regression: a destination that refuses a request from its head alone (413 for a body
    /// over its limit) and closes without reading the body made the client's write fail, and
    /// the refusal was taken for a transport failure: retried for ever instead of stopping
    /// with the destination's reason.
    #[test]
    fn an_answer_sent_before_the_body_was_read_is_the_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut c = accept_one(&l);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = c.write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 13\r\nConnection: close\r\n\r\nbody too big\n",
            );
            // Closed with the body unread: the kernel answers what follows with a reset.
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let body = vec![b'x'; 32 << 20];
        let r = request(&url, "POST", "/v1/spend", &[], &body, Duration::from_secs(10));
        server.join().unwrap();
        let r = r.expect("the 413 is the answer");
        assert_eq!((r.status, &r.body[..]), (413, &b"body too big\n"[..]));
    }

    #[test]
    fn the_timeout_bounds_the_whole_answer_not_each_read() {
        // A destination that answers a byte every 20 ms: each read is quick, the whole answer
        // takes 4 s, far past the 300 ms the attempt may take.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut c = accept_one(&l);
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n");
            for _ in 0..200 {
                if c.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let r = request(&url, "POST", "/v1/spend", &[], b"{}", Duration::from_millis(300));
        let e = r.expect_err("a trickled answer must time out");
        assert!(e.contains("within 300 ms"), "{e}");
        server.join().unwrap();
    }

    /// Answers `n` requests, one per connection, with `200 ok`; returns its address.
    fn answer_ok(n: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..n {
                let mut c = accept_one(&l);
                read_request(&mut c);
                let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            }
        });
        (addr, server)
    }

    fn url_with(port: u16, lookup: Lookup) -> Url {
        let host = "banker.test";
        let addrs = Arc::new(Addresses::new(host, port, lookup));
        Url { host: host.into(), port, base: String::new(), addrs, authority: format!("{host}:{port}") }
    }

    fn post(url: &Url, timeout_ms: u64) -> Result<Response, String> {
        request(url, "POST", "/v1/spend", &[], b"{}", Duration::from_millis(timeout_ms))
    }

    static DEAD_FIRST: Mutex<Option<SocketAddr>> = Mutex::new(None);

    #[test]
    fn every_address_of_a_name_is_tried_in_turn() {
        // The name's first address has nothing listening (a port just freed); the second answers.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        *DEAD_FIRST.lock().unwrap() = Some(dead);
        fn lookup(_: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            Ok(vec![DEAD_FIRST.lock().unwrap().unwrap(), SocketAddr::from(([127, 0, 0, 1], port))])
        }
        let (live, server) = answer_ok(1);
        let r = post(&url_with(live.port(), lookup), 5000).unwrap();
        assert_eq!(r.status, 200);
        server.join().unwrap();
    }

    static HUNG_CALLS: AtomicUsize = AtomicUsize::new(0);
    static RELEASED: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

    /// A resolver that answers only once the test releases it (or gives up after 20 s).
    fn hung_lookup(_: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        HUNG_CALLS.fetch_add(1, Relaxed);
        let end = Instant::now() + Duration::from_secs(20);
        let mut released = RELEASED.0.lock().unwrap();
        while !*released {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::other("never released"));
            }
            released = RELEASED.1.wait_timeout(released, left).unwrap().0;
        }
        Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
    }

    #[test]
    fn a_lookup_that_does_not_answer_is_bounded_by_the_request_timeout() {
        let (live, server) = answer_ok(1);
        let url = url_with(live.port(), hung_lookup);
        // Not 20 s: the request gives up at its own deadline, and its retry does not start a
        // second lookup beside the one still in flight.
        for _ in 0..2 {
            let e = post(&url, 200).expect_err("no address yet");
            assert!(e.contains("resolve banker.test: no answer in time"), "{e}");
        }
        assert_eq!(HUNG_CALLS.load(Relaxed), 1);
        *RELEASED.0.lock().unwrap() = true;
        RELEASED.1.notify_all();
        assert_eq!(post(&url, 5000).unwrap().status, 200);
        assert_eq!(HUNG_CALLS.load(Relaxed), 1);
        server.join().unwrap();
    }

    static FLAKY_CALLS: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_failing_lookup_leaves_the_last_addresses_in_use() {
        fn lookup(_: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            match FLAKY_CALLS.fetch_add(1, Relaxed) {
                0 => Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]),
                _ => Err(std::io::Error::other("Temporary failure in name resolution")),
            }
        }
        let (live, server) = answer_ok(2);
        let url = url_with(live.port(), lookup);
        assert_eq!(post(&url, 5000).unwrap().status, 200);
        // Due again (as after RESOLVE_TTL); the resolver fails; the address it gave still works.
        url.addrs.state.lock().unwrap().found_at = None;
        assert_eq!(post(&url, 5000).unwrap().status, 200);
        assert_eq!(FLAKY_CALLS.load(Relaxed), 2);
        server.join().unwrap();
    }

    #[test]
    fn the_host_header_is_the_urls_authority_with_an_ipv6_address_in_brackets() {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let mut c = accept_one(&l);
            let req = read_request(&mut c);
            let _ = c.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
            String::from_utf8(req).unwrap()
        });
        let url = Url::parse(&format!("http://[::1]:{port}/bank")).unwrap();
        assert_eq!(post(&url, 5000).unwrap().status, 204);
        let req = server.join().unwrap();
        assert!(req.starts_with("POST /bank/v1/spend HTTP/1.1\r\n"), "{req}");
        assert!(req.contains(&format!("\r\nHost: [::1]:{port}\r\n")), "{req}");
    }
}
