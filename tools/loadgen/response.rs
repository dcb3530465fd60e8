//! Response framing for keep-alive connections: bytes read so far in, "need more" or the status
//! and how many bytes the whole response takes out. Pure; no allocation (fixed header array).
//!
//! A response's end is known from its head alone: `Content-Length`, or no body at all for HEAD,
//! 204 and 304. A 1xx interim response (`100 Continue` to `Expect: 100-continue`) is only a
//! head before the final response: it is skipped, never taken for the answer. Chunked bodies and bodies framed by closing the connection are refused
//! (neither the tracker nor nginx's `return 204` send them), as is anything httparse rejects.

/// Headers looked at per response; more is a protocol error.
const RESPONSE_HEADERS_MAX: usize = 32;

#[derive(Debug, PartialEq, Eq)]
pub enum Framing {
    /// The head is not complete yet.
    Partial,
    /// A 1xx interim response of `head_bytes`: the final one follows.
    Interim { head_bytes: usize },
    Complete {
        status: u16,
        /// Bytes of the status line and headers, including the blank line.
        head_bytes: usize,
        body_bytes: u64,
        /// The server will close after this response (`Connection: close`, or HTTP/1.0 without
        /// keep-alive).
        close: bool,
    },
}

pub fn frame(buf: &[u8], head_request: bool) -> Result<Framing, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut r = httparse::Response::new(&mut headers);
    let head_bytes = match r.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(Framing::Partial),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => return Err("more than 32 response headers"),
        Err(_) => return Err("malformed response head"),
    };
    let status = r.code.unwrap_or(0);
    // 101 switches protocols: no HTTP response follows, so it is final (and not a 2xx).
    if (100..200).contains(&status) && status != 101 {
        return Ok(Framing::Interim { head_bytes });
    }
    let http10 = r.version == Some(0);
    let mut length: Option<u64> = None;
    let mut close = http10;
    for h in r.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).ok().and_then(|s| s.trim().parse::<u64>().ok());
            match (v, length) {
                (None, _) => return Err("invalid Content-Length"),
                (Some(a), Some(b)) if a != b => return Err("conflicting Content-Length headers"),
                (Some(a), _) => length = Some(a),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("Transfer-Encoding in a response (chunked bodies are not supported)");
        } else if h.name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    let bodiless = head_request || (100..200).contains(&status) || status == 204 || status == 304;
    let body_bytes = if bodiless {
        0
    } else {
        match length {
            Some(n) => n,
            None => return Err("response without Content-Length (body framed by close is not supported)"),
        }
    };
    Ok(Framing::Complete { status, head_bytes, body_bytes, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: u16, head_bytes: usize, body_bytes: u64, close: bool) -> Result<Framing, &'static str> {
        Ok(Framing::Complete { status, head_bytes, body_bytes, close })
    }

    #[test]
    fn no_content_has_no_body_even_without_length() {
        let r = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\nHTTP/1.1 200";
        assert_eq!(frame(r, false), done(204, 38, 0, false));
    }

    #[test]
    fn content_length_frames_the_body_and_partial_heads_wait() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: image/gif\r\nContent-Length: 43\r\n\r\nGIF89a";
        assert_eq!(frame(r, false), done(200, 64, 43, false));
        assert_eq!(frame(&r[..30], false), Ok(Framing::Partial));
        assert_eq!(frame(r, true), done(200, 64, 0, false));
    }

    #[test]
    fn an_interim_response_is_not_the_answer() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(frame(r, false), Ok(Framing::Interim { head_bytes: 25 }));
        assert_eq!(frame(&r[25..], false), done(204, 27, 0, false));
        assert_eq!(frame(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false), done(101, 36, 0, false));
    }

    #[test]
    fn close_and_http10_are_seen() {
        assert_eq!(
            frame(b"HTTP/1.1 400 Bad\r\nConnection: close\r\nContent-Length: 3\r\n\r\n", false),
            done(400, 58, 3, true)
        );
        assert_eq!(frame(b"HTTP/1.0 204 x\r\n\r\n", false), done(204, 18, 0, true));
        assert_eq!(frame(b"HTTP/1.0 204 x\r\nConnection: keep-alive\r\n\r\n", false), done(204, 42, 0, false));
    }

    #[test]
    fn unsupported_or_broken_framing_is_an_error() {
        assert!(frame(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).is_err());
        assert!(frame(b"HTTP/1.1 200 OK\r\n\r\n", false).is_err());
        assert!(frame(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(frame(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", false).is_err());
        assert!(frame(b"garbage\r\n\r\n", false).is_err());
    }
}
