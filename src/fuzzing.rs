//! Entry points for the fuzz targets in `tools/fuzz` (feature `fuzzing`; not a stable API, not
//! for production builds).
//!
//! [`RequestPath`] is the request path below the socket: the bytes one read put in a
//! connection's buffer, answered the way the batch loop of `net::connection::serve` answers
//! them — `http::parse` (and its HTTP/1.x minor-version rewrite), the body framing, the chunked
//! decoder into the body scratch, a Content-Length body copied there, then
//! `connection::answer`, the function the reactor calls: routing, CORS, SSAI, budgets,
//! redirects, extraction, privacy and steps, POST bodies (`net::post`: media type, gzip, JSON
//! batches), the ring and the response writers; responses batched in the write buffer and
//! flushed when it runs short (before a POST too), `100 Continue` for a request waiting for its
//! body, and the 413/431 for a read buffer filled to capacity. What it leaves out is I/O: reads
//! (so a body's progress across reads, which the `chunked` target covers), writes, deadlines,
//! the wait for the journal. Keep it in step with that loop.
//!
//! Every response is checked as a client would read it: a head httparse accepts, a status that
//! is a 2xx, 3xx or 4xx or one of the 5xx the path may answer (501 transfer coding, 503 ring
//! full or journal, 505 version), or a `100 Continue` last in its batch; a body exactly as long
//! as its Content-Length says, one response per request and nothing after them, and a write
//! buffer that never grew. Every event
//! that reached the ring is popped and written as `journal cat` would write it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::http::{self, BodyFraming, Limits, ParseError};
use crate::metrics::Status;
use crate::net::connection::{self, Invited, WRITE_BYTES};
use crate::ring::Consumer;
use crate::runtime::shard::ShardCtx;

/// One shard's request path with its connection buffers, reused for every input.
pub struct RequestPath {
    ctx: ShardCtx,
    consumer: Consumer,
    limits: Limits,
    /// The connection's read buffer: header_bytes_max + body_bytes_max, as `ConnBufs` sizes it.
    rbuf: Vec<u8>,
    /// The body scratch, with simd-json's padding after body_bytes_max.
    body: Vec<u8>,
    wbuf: Vec<u8>,
    /// One entry per response now in `wbuf`: whether it answers a HEAD (no body).
    heads: Vec<bool>,
    peer: SocketAddr,
    line: String,
}

impl RequestPath {
    /// A shard built from `cfg` (e.g. `Config::embedded()`), with requests coming from `peer`.
    pub fn new(cfg: Config, peer: SocketAddr) -> RequestPath {
        let s = &cfg.server;
        let limits = Limits {
            request_line_bytes_max: s.request_line_bytes_max,
            header_count_max: s.header_count_max,
            header_bytes_max: s.header_bytes_max,
            body_bytes_max: s.body_bytes_max,
        };
        let rbuf = Vec::with_capacity(s.header_bytes_max + s.body_bytes_max);
        let body = vec![0; s.body_bytes_max + crate::extract::json::INPUT_PADDING];
        let (producer, consumer) = crate::ring::ring(s.ring_events);
        let ctx = ShardCtx::detached(Arc::new(cfg), producer).expect("eventfd for a detached shard");
        RequestPath {
            ctx,
            consumer,
            limits,
            rbuf,
            body,
            wbuf: Vec::with_capacity(WRITE_BYTES),
            heads: Vec::new(),
            peer,
            line: String::with_capacity(4096),
        }
    }

    /// Answers every complete request at the front of `input` (cut to the read buffer's size),
    /// in order, until one is incomplete or closes the connection. Returns how many were answered.
    /// Panics if a response is malformed (see the module doc).
    ///
    /// As the batch loop does: responses accumulate in the write buffer, which is "written"
    /// (checked and cleared) when less than `RESPONSE_BYTES_MAX` is free, or before a POST when
    /// less than `POST_RESPONSE_BYTES_MAX` is; a request waiting for its body queues
    /// `100 Continue` when it asked for one; a buffer filled to capacity with nothing answered
    /// gets the 413/431 the reactor sends before it closes.
    pub fn serve(&mut self, input: &[u8]) -> usize {
        let cap = self.rbuf.capacity();
        self.rbuf.clear();
        self.rbuf.extend_from_slice(&input[..input.len().min(cap)]);
        let now_ns = crate::clock::unix_nanos();
        self.ctx.date.borrow_mut().update(now_ns / 1_000_000_000);
        self.wbuf.clear();
        self.heads.clear();
        let mut start = 0;
        let mut answered = 0;
        let mut close = false;
        let mut continue_sent = false;
        while start < self.rbuf.len() {
            if self.wbuf.capacity() - self.wbuf.len() < connection::RESPONSE_BYTES_MAX {
                self.flush();
            }
            let mut headers = http::header_buf();
            let req = match http::parse(&self.rbuf[start..], &mut headers, &self.limits) {
                Ok(r) => r,
                Err(ParseError::Incomplete) => break,
                Err(ParseError::NewerMinorVersion { minor_at }) => {
                    self.rbuf[start + minor_at] = b'1';
                    continue;
                }
                Err(ParseError::Invalid { status, reason }) => {
                    let st = Status::from_code(status);
                    connection::write_error(&self.ctx, &mut self.wbuf, st, reason, false, false, 1, None, None);
                    self.heads.push(false);
                    answered += 1;
                    close = true;
                    break;
                }
            };
            let head_len = req.head_len;
            let (body_len, consumed) = match req.framing {
                BodyFraming::None => (0, head_len),
                BodyFraming::Length(n) => {
                    if self.rbuf.len() - start < head_len + n {
                        if invite_body(&self.ctx, &req, &mut continue_sent, &mut self.wbuf, &mut self.heads)
                            == Invited::Refused
                        {
                            answered += 1;
                            close = true;
                        }
                        break;
                    }
                    (n, head_len + n)
                }
                BodyFraming::Chunked => {
                    let scratch = &mut self.body[..self.limits.body_bytes_max];
                    let src = &self.rbuf[start + head_len..];
                    let mut progress = http::chunked::Progress::default();
                    match http::chunked::decode_from(src, scratch, self.limits.body_bytes_max, &mut progress) {
                        Ok((n, used)) => (n, head_len + used),
                        Err(ParseError::Incomplete | ParseError::NewerMinorVersion { .. }) => {
                            if invite_body(&self.ctx, &req, &mut continue_sent, &mut self.wbuf, &mut self.heads)
                                == Invited::Refused
                            {
                                answered += 1;
                                close = true;
                            }
                            break;
                        }
                        Err(ParseError::Invalid { status, reason }) => {
                            let st = Status::from_code(status);
                            let v = req.version_minor;
                            connection::write_error(&self.ctx, &mut self.wbuf, st, reason, false, false, v, None, None);
                            self.heads.push(false);
                            answered += 1;
                            close = true;
                            break;
                        }
                    }
                }
            };
            if req.method == http::Method::Post
                && self.wbuf.capacity() - self.wbuf.len() < crate::net::post::POST_RESPONSE_BYTES_MAX
            {
                // The reactor writes the batch so far and parses this request again.
                self.flush();
                continue;
            }
            if let (BodyFraming::Length(n), http::Method::Post) = (req.framing, req.method) {
                self.body[..n].copy_from_slice(&self.rbuf[start + head_len..start + head_len + n]);
            }
            let more = start + consumed < self.rbuf.len();
            let head = req.method == http::Method::Head;
            let a = connection::answer(
                &self.ctx,
                &req,
                &mut self.body,
                body_len,
                more,
                false,
                self.peer,
                now_ns,
                &mut self.wbuf,
            );
            self.heads.push(head);
            answered += 1;
            self.pop_events();
            start += consumed;
            continue_sent = false;
            if !a.keep_alive {
                close = true;
                break;
            }
        }
        if !close && start == 0 && self.rbuf.len() == cap {
            // The buffer holds header_bytes_max + body_bytes_max: a head within the limits leaves
            // room for any Content-Length body, so only chunked framing can fill it.
            let mut headers = http::header_buf();
            if let Ok(req) = http::parse(&self.rbuf, &mut headers, &self.limits) {
                assert_eq!(
                    req.framing,
                    BodyFraming::Chunked,
                    "a full read buffer holds a whole head and no chunked body"
                );
            }
            let (st, reason) = connection::full_buffer_refusal(&self.rbuf, &self.limits);
            connection::write_error(&self.ctx, &mut self.wbuf, st, reason, false, false, 1, None, None);
            self.heads.push(false);
            answered += 1;
        }
        self.flush();
        answered
    }

    /// Checks the responses in the write buffer, one for each entry of `heads`, and clears both:
    /// what the reactor's write of a batch does, as far as the client can tell.
    fn flush(&mut self) {
        check_responses(&self.wbuf, &self.heads);
        self.wbuf.clear();
        self.heads.clear();
    }

    /// Takes every event off the ring, as the drain would, and writes it as `journal cat` does.
    fn pop_events(&mut self) {
        let cfg = self.ctx.cfg.borrow().clone();
        let line = &mut self.line;
        self.consumer.pop_batch(usize::MAX, |ev| {
            line.clear();
            cfg.schema.write_json(ev, line);
            true
        });
    }
}

/// `connection::invite_body`, noting in `heads` what the write buffer now holds: a 100, or the
/// refusal that replaces it.
fn invite_body(
    ctx: &ShardCtx,
    req: &http::Request<'_, '_>,
    sent: &mut bool,
    wbuf: &mut Vec<u8>,
    heads: &mut Vec<bool>,
) -> Invited {
    let before = wbuf.len();
    let r = connection::invite_body(ctx, req, sent, wbuf);
    if wbuf.len() != before {
        heads.push(req.method == http::Method::Head && r == Invited::Refused);
    }
    r
}

/// Panics unless `w` is exactly one complete, well-formed response per entry of `heads` (true:
/// answers a HEAD), in order; a `100 Continue` may only come last (see the module doc).
#[allow(clippy::ptr_arg)] // a Vec: its capacity is checked too
fn check_responses(w: &Vec<u8>, heads: &[bool]) {
    assert_eq!(w.capacity(), WRITE_BYTES, "the write buffer grew");
    let mut at = 0;
    for (i, &head) in heads.iter().enumerate() {
        let rest = &w[at..];
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let head_len = match r.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("response head does not parse ({other:?}): {:?}", String::from_utf8_lossy(w)),
        };
        let code = r.code.unwrap_or(0);
        if code == 100 {
            assert_eq!(
                i + 1,
                heads.len(),
                "100 Continue is the last response of a batch: {:?}",
                String::from_utf8_lossy(w)
            );
            assert_eq!(head_len, rest.len(), "100 Continue has no body");
            return;
        }
        assert!(
            (200..500).contains(&code) || [501, 503, 505].contains(&code),
            "status {code} on the request path: {:?}",
            String::from_utf8_lossy(w)
        );
        let length = r.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length")).map(|h| {
            std::str::from_utf8(h.value).ok().and_then(|v| v.parse::<usize>().ok()).expect("Content-Length is a number")
        });
        let body = match (head, length) {
            (true, _) | (false, None) => 0,
            (false, Some(n)) => n,
        };
        assert!(
            head_len + body <= rest.len(),
            "body shorter than its Content-Length: {:?}",
            String::from_utf8_lossy(w)
        );
        at += head_len + body;
    }
    assert_eq!(at, w.len(), "bytes after the last response: {:?}", String::from_utf8_lossy(w));
}

/// Reads the journal under `root` as `tracker journal cat` does (every record written as JSON
/// with its segment's schema, the warnings rendered), without the output: a few polls reach
/// the end of one file. Panics only if the directory cannot be opened at all.
pub fn read_journal(root: &std::path::Path) {
    let mut reader = crate::journal::JournalReader::open(root).expect("open the journal dir");
    let mut line = String::new();
    for _ in 0..4 {
        match reader.poll(&mut |schema, ev| {
            line.clear();
            schema.write_json(ev, &mut line);
        }) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    let (warnings, _) = reader.take_warnings();
    for w in warnings {
        let _ = w.to_string();
    }
}

/// Rewrites the header CRC and the record seals of segment file bytes (see
/// `journal::segment::reseal`), so a fuzzed schema or record reaches the code behind the CRCs.
pub fn reseal_segment(bytes: &mut [u8]) {
    crate::journal::segment_reseal(bytes)
}
