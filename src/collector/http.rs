//! A small blocking HTTP/1.1 client for collectors (std `TcpStream` + httparse): one request
//! per connection (`Connection: close`), every step bounded by a timeout, response bodies
//! bounded. Enough for a batch every few milliseconds; no TLS (put a local proxy in front).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest response body read; a longer one is an error.
pub const RESPONSE_BYTES_MAX: usize = 1 << 20;

/// `http://host:port/base`, parsed once at configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing '/', "" for none.
    pub base: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s.strip_prefix("http://").ok_or_else(|| format!("\"{s}\": expected http://HOST:PORT[/PATH]"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => {
                (h, p.parse::<u16>().map_err(|_| format!("\"{s}\": port \"{p}\" is not a number 1..=65535"))?)
            }
            _ if !authority.is_empty() => (authority, 80),
            _ => return Err(format!("\"{s}\": no host")),
        };
        if path.bytes().any(|b| b <= b' ' || b == b'?' || b == b'#') {
            return Err(format!("\"{s}\": the path may not hold spaces, '?' or '#'"));
        }
        Ok(Url { host: host.trim_matches(['[', ']']).to_string(), port, base: path.trim_end_matches('/').to_string() })
    }

    fn addr(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolve {}:{}: {e}", self.host, self.port))?
            .next()
            .ok_or_else(|| format!("resolve {}: no address", self.host))
    }
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
    let addr = url.addr()?;
    let deadline = Instant::now() + timeout;
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
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = s.set_nodelay(true);
    let mut head = format!(
        "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
        url.base,
        url.host,
        url.port,
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
    for mut part in [head.as_bytes(), body] {
        while !part.is_empty() {
            s.set_write_timeout(Some(left("send to")?)).map_err(|e| e.to_string())?;
            match s.write(part) {
                Ok(0) => return Err(format!("send to {addr}: connection closed")),
                Ok(n) => part = &part[n..],
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(expired("send to")),
                Err(e) => return Err(format!("send to {addr}: {e}")),
            }
        }
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(left("read from")?)).map_err(|e| e.to_string())?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if timed_out(&e) => return Err(expired("read from")),
            Err(e) => return Err(format!("read from {addr}: {e}")),
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > RESPONSE_BYTES_MAX + 16 * 1024 {
            return Err(format!("response from {addr} is over {RESPONSE_BYTES_MAX} bytes"));
        }
        if let Some(r) = parse_response(&buf, false)? {
            return Ok(r);
        }
    }
    // EOF: a response without Content-Length ends here.
    match parse_response(&buf, true)? {
        Some(r) => Ok(r),
        None => Err(format!("{addr} closed the connection before a whole response")),
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
        let mut headers = [httparse::EMPTY_HEADER; 32];
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
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("http://127.0.0.1:9100").unwrap(),
            Url { host: "127.0.0.1".into(), port: 9100, base: String::new() }
        );
        assert_eq!(Url::parse("http://b.example/x/").unwrap().base, "/x");
        assert_eq!(Url::parse("http://[::1]:80/").unwrap().host, "::1");
        assert!(Url::parse("https://x").is_err());
        assert!(Url::parse("http://x:99999").is_err());
    }

    /// Answers one request with `answer` on a fresh port; returns the client's result.
    fn exchange(answer: &'static [u8]) -> Result<Response, String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            // The whole request (head, then the body `{}`): closing with some of it unread
            // would reset the connection under the client's read.
            let (mut req, mut chunk) = (Vec::new(), [0u8; 1024]);
            while !req.ends_with(b"{}") {
                match c.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&chunk[..n]),
                }
            }
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

    #[test]
    fn the_timeout_bounds_the_whole_answer_not_each_read() {
        // A destination that answers a byte every 20 ms: each read is quick, the whole answer
        // takes 4 s, far past the 300 ms the attempt may take.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
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
}
