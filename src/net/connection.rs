//! One client connection on a shard: read into the connection's fixed buffer, answer every
//! complete request in it (pipelining: in order, one write per batch), repeat.
//!
//! Invariants:
//! - the read buffer holds at most header_bytes_max + body_bytes_max bytes; the parser rejects
//!   anything that could not fit (414/431/413) before the buffer is full;
//! - responses are appended to the write buffer, whose capacity is reserved at start and never
//!   grows; a batch is flushed before the buffer could overflow;
//! - an `ack = "logged"` response is written only after the drain reports its event in the
//!   journal; the whole batch waits for the highest such sequence number. A duplicate's response
//!   waits for its first copy instead: in this shard's journal the same way, in another's by
//!   polling it, and a response that waits on another shard ends its batch; a journal that
//!   fails, or has not taken the event within `idle_timeout_ms`, closes the connection
//!   unanswered;
//! - a malformed request is answered with `Connection: close` and the connection closed after
//!   the responses before it are written: the bytes after it cannot be trusted;
//! - a connection we close after a response is half-closed and read (and discarded) for up to
//!   LINGER_GRACE first, never closed with unread bytes: that close is a reset, which can cost
//!   the client the response (RFC 9112 §9.6).
//!
//! Deadlines: a request (head and body) must arrive within header_read_timeout_ms of its first
//! byte, or it is answered 408 and the connection closed; a new connection that sends nothing
//! within header_read_timeout_ms of its accept is closed unanswered; an idle keep-alive
//! connection is closed after idle_timeout_ms, and so is one whose client does not take its
//! responses within idle_timeout_ms. A read or write arms the
//! connection's slot in the shard's deadline sweep (`deadline.rs`), which also applies the
//! shutdown graces. A read that completes with bytes in the same reactor turn as its deadline
//! (or the stop) fires has them answered: every request whole in the buffer gets its response,
//! then the connection closes without reading again.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;

use crate::config::{Ack, OverBudget, ResponseKind, Server};
use crate::endpoint::{RequestMethod, Route};
use crate::enrich::budget::Charge;
use crate::enrich::ssai;
use crate::event::FLAG_HEAD;
use crate::extract::RequestView;
use crate::http::{self, BodyFraming, ParseError};
use crate::metrics::{Reason, Status};
use crate::net::deadline::{self, Wait};
use crate::net::pipeline::{self, Elsewhere};
use crate::net::{body, post};
use crate::redirect;
use crate::runtime::shard::ShardCtx;

/// Write buffer per connection: room for a batch of pipelined responses.
pub const WRITE_BYTES: usize = 16 * 1024;
/// Flush the batch when less than this is free: the largest single response we build (a 302
/// with the longest Location, or an error with a 256-byte reason, plus headers).
pub(crate) const RESPONSE_BYTES_MAX: usize = redirect::LOCATION_BYTES_MAX + 512;
const _: () = assert!(RESPONSE_BYTES_MAX * 4 <= WRITE_BYTES);

/// A connection's buffers and deadline slot, allocated once per shard at start and recycled.
pub struct ConnBufs {
    read: Vec<u8>,
    write: Vec<u8>,
    body: Vec<u8>,
    /// This connection's slot in the shard's `Deadlines`; unique among the pool's entries.
    slot: usize,
    /// Its count in the per-prefix connection table, released when it closes (`ShardCtx`).
    pub source: Option<crate::enrich::budget::Admitted>,
}

/// Bytes of buffers one connection slot holds (read + write + body scratch), as `ConnBufs::new`
/// allocates them.
pub fn buffer_bytes(s: &Server) -> usize {
    s.header_bytes_max + s.body_bytes_max + WRITE_BYTES + s.body_bytes_max + crate::extract::json::INPUT_PADDING
}

impl ConnBufs {
    pub fn new(s: &Server, slot: usize) -> ConnBufs {
        ConnBufs {
            slot,
            source: None,
            read: Vec::with_capacity(s.header_bytes_max + s.body_bytes_max),
            write: Vec::with_capacity(WRITE_BYTES),
            // Bodies are parsed here: chunked ones decode into it, Content-Length ones are
            // copied into it (the JSON parser writes into its input). Zeroed pages are mapped
            // lazily; the padding is simd-json's.
            body: vec![0; s.body_bytes_max + crate::extract::json::INPUT_PADDING],
        }
    }
}

/// What answering one request decided about the connection.
pub(crate) struct Answer {
    pub(crate) keep_alive: bool,
    /// Journal sequence number this response must wait for (0 = none).
    pub(crate) logged_seq: u64,
    /// Events in other shards' journals it must wait for: first copies of duplicates, on an
    /// `ack = "logged"` endpoint (`pipeline::Published::wait_for`).
    pub(crate) elsewhere: Elsewhere,
}

pub async fn serve(ctx: Rc<ShardCtx>, mut stream: TcpStream, peer: SocketAddr, mut bufs: ConnBufs) {
    // [server] keys never change while running (reload keeps them), so they are read once; the
    // borrow of ctx.cfg must not live across an await (the control task swaps it on reload).
    let (limits, idle, header_timeout) = {
        let cfg = ctx.cfg.borrow();
        let server = &cfg.server;
        let limits = http::Limits {
            request_line_bytes_max: server.request_line_bytes_max,
            header_count_max: server.header_count_max,
            header_bytes_max: server.header_bytes_max,
            body_bytes_max: server.body_bytes_max,
        };
        (limits, server.idle_timeout_ms, server.header_read_timeout_ms)
    };
    let accepted_ms = crate::clock::mono_coarse_ms();
    let fd = stream.as_raw_fd();
    let slot = bufs.slot;
    let mut rbuf = std::mem::take(&mut bufs.read);
    let mut wbuf = std::mem::take(&mut bufs.write);
    rbuf.clear();
    wbuf.clear();
    // When (coarse monotonic ms) the first byte of the request now in the buffer arrived.
    let mut head_started: Option<u64> = None;
    // At shutdown a connection that has not been answered yet (accepted from the queue as the
    // shard stopped, or connected just before), or holds part of its next request, still gets
    // that request read and answered within server.stop_request_grace_ms; an answered, idle one is
    // closed at once.
    let mut answered_any = false;
    // When (coarse monotonic ms) the last batch answered a request: an idle keep-alive
    // connection's timeout runs from there, not from its last read, so bytes that begin no
    // request (blank lines) cannot keep it open.
    let mut idle_since = accepted_ms;
    // `100 Continue` went out for the request at the front of the buffer (RFC 9110 §10.1.1: a
    // client that sent `Expect: 100-continue` may wait for it before sending the body).
    let mut continue_sent = false;
    // The request at the front of the buffer waits for its body until the buffer holds this
    // many bytes (its head is not parsed again before): with Content-Length, the whole body;
    // chunked, the rest of the chunk whose data is arriving, and decoding resumes where the last
    // read's whole chunks ended. Either way a body arriving in many small reads costs time
    // linear in its size, not in its size times the head's.
    let mut need_bytes = 0usize;
    let mut chunked_progress = http::chunked::Progress::default();
    // The head length of the request at the front of the buffer while its chunked body is
    // incomplete: later reads resume decoding from `chunked_progress` without parsing the head
    // again, which it is only once the body is whole (or refused). Parsed at every read, a head
    // near header_bytes_max cost its whole length again for each small chunk a client sent.
    let mut chunked_head: Option<usize> = None;
    // The head at the front of the buffer was incomplete over its first this many bytes: it is
    // parsed again only once it may have ended after them (`http::request::head_pending`), so a
    // head trickled in costs time linear in its size, as a body does.
    let mut head_pending = 0usize;
    // The connection closes after a response that said `Connection: close` (an error, or the
    // client's own close): the client may still be sending, so it gets a lingering close.
    let mut linger = false;
    // Set when the sweep shut reads down (a deadline, or shutdown) during a read that still
    // brought bytes: what is whole in the buffer is answered, then the connection closes without
    // reading again. True when it was a begun request's header deadline.
    let mut reads_shut: Option<bool> = None;

    'conn: loop {
        // Answer every complete request in the buffer.
        let mut start = 0usize;
        let mut close = false;
        let mut logged_seq = 0u64;
        // First copies on other shards the batch's responses wait for. A response that waits
        // for any ends the batch (rare: a duplicate that came before its first copy was
        // journaled), so the next one starts with room for its own.
        let mut elsewhere = Elsewhere::NONE;
        // A POST needs more room than RESPONSE_BYTES_MAX (a batch's per-item status): the
        // responses before it are written first.
        let mut flush_first = false;
        // Also where the service time of each request below starts: the read that completed it.
        let now_ns = crate::clock::unix_nanos();
        // Requests answered (or refused) into `wbuf` by this batch: their service time ends
        // together, when the batch does and its responses can go out.
        let mut served = 0u64;
        ctx.date.borrow_mut().update(now_ns / 1_000_000_000);
        while start < rbuf.len() && rbuf.len() >= need_bytes && wbuf.capacity() - wbuf.len() >= RESPONSE_BYTES_MAX {
            // Still incomplete unless it may have ended; at the head limit the parse says 431.
            if start == 0
                && head_pending > 0
                && rbuf.len() < limits.header_bytes_max
                && !http::request::head_may_end(&rbuf, head_pending)
            {
                break;
            }
            head_pending = 0;
            // A chunked body resuming at the front: decoded on, the head left alone until done.
            let mut decoded = None;
            if let (0, Some(h)) = (start, chunked_head) {
                let scratch = &mut bufs.body[..limits.body_bytes_max];
                match http::chunked::decode_from(&rbuf[h..], scratch, limits.body_bytes_max, &mut chunked_progress) {
                    Err(ParseError::Incomplete | ParseError::NewerMinorVersion { .. }) => {
                        need_bytes = h + chunked_progress.input_needed();
                        break;
                    }
                    r => decoded = Some(r),
                }
                chunked_head = None;
            }
            let mut headers = http::header_buf();
            let req = match http::parse(&rbuf[start..], &mut headers, &limits) {
                Ok(r) => r,
                Err(ParseError::Incomplete) => {
                    // Relative to `start`, which becomes the front of the buffer below.
                    head_pending = http::request::head_pending(&rbuf[start..]);
                    break;
                }
                Err(ParseError::NewerMinorVersion { minor_at }) => {
                    // HTTP/1.x, x > 1, is read as HTTP/1.1: the digit is rewritten in place
                    // and the head parsed again (it then parses as 1.1 or fails otherwise).
                    rbuf[start + minor_at] = b'1';
                    continue;
                }
                Err(ParseError::Invalid { status, reason }) => {
                    let st = Status::from_code(status);
                    ctx.shared.counters.request(None, st);
                    ctx.shared.counters.reject(Reason::Malformed);
                    let head = http::request::is_head(&rbuf[start..]);
                    write_error(&ctx, &mut wbuf, st, reason, false, head, 1, None, None);
                    served += 1;
                    close = true;
                    break;
                }
            };
            let head_len = req.head_len;
            let (body_len, consumed) = match req.framing {
                BodyFraming::None => (0, head_len),
                BodyFraming::Length(n) => {
                    if rbuf.len() - start < head_len + n {
                        if invite_body(&ctx, &req, &mut continue_sent, &mut wbuf) == Invited::Refused {
                            served += 1;
                            close = true;
                            break;
                        }
                        // Relative to `start`, which becomes the front of the buffer below.
                        need_bytes = head_len + n;
                        break;
                    }
                    (n, head_len + n)
                }
                BodyFraming::Chunked => {
                    let scratch = &mut bufs.body[..limits.body_bytes_max];
                    let body = &rbuf[start + head_len..];
                    // Only an incomplete body at the front of the buffer carries progress (the
                    // batch breaks at it, and nothing writes the scratch until it resumes).
                    let r = decoded.take().unwrap_or_else(|| {
                        http::chunked::decode_from(body, scratch, limits.body_bytes_max, &mut chunked_progress)
                    });
                    match r {
                        Ok((n, used)) => (n, head_len + used),
                        // The decoder reports only Incomplete and Invalid.
                        Err(ParseError::Incomplete | ParseError::NewerMinorVersion { .. }) => {
                            // Inside a chunk's data, neither the head nor the body is looked
                            // at again until the data can be whole (relative to `start`, which
                            // becomes the front of the buffer below), as with Content-Length.
                            if invite_body(&ctx, &req, &mut continue_sent, &mut wbuf) == Invited::Refused {
                                served += 1;
                                close = true;
                                break;
                            }
                            need_bytes = head_len + chunked_progress.input_needed();
                            chunked_head = Some(head_len);
                            break;
                        }
                        Err(ParseError::Invalid { status, reason }) => {
                            let st = Status::from_code(status);
                            ctx.shared.counters.request(None, st);
                            ctx.shared.counters.reject(Reason::Malformed);
                            let head = req.method == http::Method::Head;
                            write_error(&ctx, &mut wbuf, st, reason, false, head, req.version_minor, None, None);
                            served += 1;
                            close = true;
                            break;
                        }
                    }
                }
            };
            if req.method == http::Method::Post && wbuf.capacity() - wbuf.len() < post::POST_RESPONSE_BYTES_MAX {
                flush_first = true;
                break;
            }
            if let (BodyFraming::Length(n), http::Method::Post) = (req.framing, req.method) {
                // Into the body scratch: the JSON parser writes into its input, and `req`
                // borrows the read buffer. A memcpy, small beside the parse.
                bufs.body[..n].copy_from_slice(&rbuf[start + head_len..start + head_len + n]);
            }
            need_bytes = 0;
            chunked_progress = Default::default();
            chunked_head = None;
            // At stop, a request with more bytes behind it (pipelined) keeps the connection
            // open so they are answered too; the last request in the buffer says close.
            // Only bytes that begin a request count: empty lines after it (an old client's CRLF
            // after a POST body) are no request to wait for, and a response that said keep-alive
            // for them would be followed by a close at stop (`begun` below).
            let last_read = reads_shut.is_some();
            let rest = &rbuf[start + consumed..];
            let more = !rest.is_empty() && (!(ctx.stopping.get() || last_read) || begins_request(rest));
            let a = answer(&ctx, &req, &mut bufs.body, body_len, more, last_read, peer, now_ns, &mut wbuf);
            answered_any = true;
            served += 1;
            logged_seq = logged_seq.max(a.logged_seq);
            debug_assert!(elsewhere.is_empty(), "a wait elsewhere ends the batch");
            elsewhere = a.elsewhere;
            start += consumed;
            head_started = None;
            continue_sent = false;
            if !a.keep_alive {
                close = true;
                break;
            }
            if !elsewhere.is_empty() {
                break;
            }
        }
        if served > 0 {
            record_service(&ctx, now_ns, served);
        }
        // RFC 9112 §2.2: empty lines before a request line are ignored (old clients end a POST
        // with an extra CRLF), so a tail of nothing else is no request begun: it must not start
        // the header deadline (the idle connection got a 408 at header_read_timeout_ms) nor
        // count as a request partly received at stop. It is dropped: kept, every later read
        // scanned it all again, and a client sending blank lines paid one scan of a growing
        // buffer per read (the idle timeout, from the last answer, still ends such a client).
        let begun = begins_request(&rbuf[start..]);
        if !begun {
            start = rbuf.len();
            head_pending = 0;
        }
        // The batch stopped for want of output space, not input: answer the rest after the write.
        let out_full = flush_first || !elsewhere.is_empty() || wbuf.capacity() - wbuf.len() < RESPONSE_BYTES_MAX;
        // Wake the drain once per batch; then wait for the journal if a response needs it.
        let filling = ctx.producer.borrow_mut().is_filling();
        ctx.shared.notify_drain(logged_seq > 0 || filling);
        if logged_seq > 0 && !ctx.journaled_within(logged_seq, idle).await {
            // The journal failed before this batch's `logged` events reached it, or did not
            // take them within the idle timeout (a disk that hangs without failing): they may
            // never be written, so no response of the batch goes out (a 2xx would promise it).
            // The client sees the connection close and retries; the event ids make the retry a
            // duplicate if the first copy does reach the journal.
            ctx.shared.counters.reject(Reason::JournalUnavailable);
            break 'conn;
        }
        // Likewise for first copies in other shards' journals, with the same bound.
        if !elsewhere.is_empty() {
            let until_ms = crate::clock::mono_coarse_ms() + idle;
            for &(shard, seq) in elsewhere.waits() {
                if !ctx.journaled_elsewhere(shard, seq, until_ms).await {
                    ctx.shared.counters.reject(Reason::JournalUnavailable);
                    break 'conn;
                }
            }
        }
        if !wbuf.is_empty() {
            let (res, b) = write_all(&ctx, &mut stream, wbuf, slot, idle).await;
            wbuf = b;
            wbuf.clear();
            if res.is_err() {
                break 'conn;
            }
        }
        // Idle from here: the answers are out (a `logged` batch's after its journal wait).
        if served > 0 {
            idle_since = crate::clock::mono_coarse_ms();
        }
        // At stop, a connection closes once it has no request left to answer: a request partly
        // received (its first, or a later one on a kept-alive connection) still gets the grace.
        if close {
            linger = true;
            break 'conn;
        }
        if ctx.stopping.get() && ((answered_any && !begun) || stop_grace_over(&ctx)) {
            break 'conn;
        }
        // Keep the unanswered tail (a partial request) at the front of the buffer.
        if start > 0 {
            rbuf.copy_within(start.., 0);
            rbuf.truncate(rbuf.len() - start);
        }
        if rbuf.len() == rbuf.capacity() {
            // The buffer holds header_bytes_max + body_bytes_max, so a head that fits the limits
            // leaves room for any body: only a chunked body whose framing (small chunks, long
            // extensions) outgrows that room gets here. Anything else would be a parser bug;
            // refuse rather than spin either way.
            let (st, reason) = full_buffer_refusal(&rbuf, &limits);
            ctx.date.borrow_mut().update(crate::clock::unix_nanos() / 1_000_000_000);
            ctx.shared.counters.request(None, st);
            ctx.shared.counters.reject(Reason::Malformed);
            write_error(&ctx, &mut wbuf, st, reason, false, false, 1, None, None);
            let (res, b) = write_all(&ctx, &mut stream, wbuf, slot, idle).await;
            wbuf = b;
            linger = res.is_ok();
            break 'conn;
        }
        if out_full {
            continue;
        }
        if let Some(head_timed_out) = reads_shut {
            // The deadline is final: another read would let a client that trickles its
            // request outlive it. A request begun and timed out is told why.
            if head_timed_out && begun && !ctx.stopping.get() {
                let b;
                (linger, b) = answer_timed_out(&ctx, &mut stream, wbuf, slot).await;
                wbuf = b;
            }
            break 'conn;
        }
        let now_ms = crate::clock::mono_coarse_ms();
        if begun && head_started.is_none() {
            head_started = Some(now_ms);
        }

        // Read more, bounded by the header deadline (a partial request, or a new connection's
        // first request, timed from the accept) or, between requests, the idle timeout.
        let until_ms = match head_started {
            Some(t) => t + header_timeout,
            None if !answered_any => accepted_ms + header_timeout,
            None => idle_since + idle,
        };
        let wait = if answered_any && head_started.is_none() { Wait::Read } else { Wait::Unanswered };
        let armed = ctx.deadlines.arm(slot, fd, until_ms, wait);
        let len = rbuf.len();
        let cap = rbuf.capacity();
        let (res, slice) = stream.read(rbuf.slice_mut(len..cap)).await;
        rbuf = slice.into_inner();
        // Given up by the sweep (reads shut down): a deadline, or shutdown.
        let expired = armed.expired();
        drop(armed);
        match res {
            // The read completed before the sweep ran but resumed us after it (both ready in
            // one turn of the reactor): what it brought was received, so it is answered first.
            Ok(n) if n > 0 => {
                if expired {
                    reads_shut = Some(head_started.is_some());
                }
            }
            _ => {
                // A request cut off in the middle is told why; an idle connection just closes.
                if expired && head_started.is_some() && !ctx.stopping.get() {
                    let b;
                    (linger, b) = answer_timed_out(&ctx, &mut stream, wbuf, slot).await;
                    wbuf = b;
                }
                break 'conn;
            }
        }
    }
    if linger {
        rbuf = linger_close(&ctx, &mut stream, rbuf, slot).await;
    }
    bufs.read = rbuf;
    bufs.write = wbuf;
    drop(stream);
    ctx.conn_closed(bufs);
}

/// Whether `tail` holds anything of a request: not only the empty lines (CRLF pairs) RFC 9112
/// §2.2 has a server ignore before a request line.
fn begins_request(tail: &[u8]) -> bool {
    tail.chunks(2).any(|p| p != b"\r\n")
}

/// Answers 408 to a request not received whole within header_read_timeout_ms, counted. Returns
/// whether it went out (the connection then lingers) and the write buffer.
async fn answer_timed_out(ctx: &ShardCtx, stream: &mut TcpStream, mut wbuf: Vec<u8>, slot: usize) -> (bool, Vec<u8>) {
    ctx.shared.counters.reject(Reason::HeaderTimeout);
    ctx.shared.counters.request(None, Status::S408);
    let why = "request not received whole within header_read_timeout_ms";
    // The shard's Date was last set by a batch, which on a quiet shard may be long ago.
    ctx.date.borrow_mut().update(crate::clock::unix_nanos() / 1_000_000_000);
    write_error(ctx, &mut wbuf, Status::S408, why, false, false, 1, None, None);
    let grace = deadline::ms(deadline::TIMED_OUT_ANSWER_GRACE);
    let (res, b) = write_all(ctx, stream, wbuf, slot, grace).await;
    (res.is_ok(), b)
}

/// The answer to a read buffer filled to capacity with no request in it answered: 413 when its
/// head parses (a chunked body whose framing outgrew the room), else 431.
pub(crate) fn full_buffer_refusal(rbuf: &[u8], limits: &http::Limits) -> (Status, &'static str) {
    let mut headers = http::header_buf();
    match http::parse(rbuf, &mut headers, limits) {
        Ok(_) => (Status::S413, "chunked body framing larger than the request buffer"),
        Err(_) => (Status::S431, "request too large"),
    }
}

/// Writes all of `buf`, giving up (error) when the client has not taken it within `timeout_ms`,
/// or within STOP_WRITE_GRACE once the shard stops: a client that never reads its responses
/// must not hold a connection (or shutdown) forever, while responses in flight at shutdown
/// still go out.
async fn write_all(
    ctx: &ShardCtx,
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    slot: usize,
    timeout_ms: u64,
) -> (std::io::Result<()>, Vec<u8>) {
    let armed = ctx.deadlines.arm(slot, stream.as_raw_fd(), crate::clock::mono_coarse_ms() + timeout_ms, Wait::Write);
    let mut done = 0;
    while done < buf.len() {
        let len = buf.len();
        let (res, slice) = stream.write(buf.slice(done..len)).await;
        buf = slice.into_inner();
        if armed.expired() {
            return (Err(std::io::ErrorKind::TimedOut.into()), buf);
        }
        match res {
            Ok(0) => return (Err(std::io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => done += n,
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

/// Lingering close (RFC 9112 §9.6): half-closes, then reads and discards until the client
/// closes too, for at most LINGER_GRACE. Closing a socket that still holds unread bytes makes
/// the kernel send RST instead of FIN, and a reset makes the client's next write fail and its
/// read report an error: the response just written (a 413 to an upload still being sent, a 400
/// to a pipelined batch) is lost to the client or the proxy in front, which answers 502 or
/// retries. The FIN after our response lets a client that has read it close at once; one that
/// keeps sending is read until the grace ends (and at shutdown, until the next sweep).
///
/// Not after the sweep shut the reads down (the 408 at a header deadline, a close at a deadline
/// or at stop): Linux resets a socket in FIN_WAIT with its reads shut when data arrives (RFC
/// 1122's MUST), whatever is done here. Ending the read with an io_uring cancel instead of
/// `shutdown(SHUT_RD)` would avoid that, at a cancel handle per read (`deadline.rs`).
async fn linger_close(ctx: &ShardCtx, stream: &mut TcpStream, mut rbuf: Vec<u8>, slot: usize) -> Vec<u8> {
    let fd = stream.as_raw_fd();
    // SAFETY: `fd` is this connection's open socket; shutdown only changes its state.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
        return rbuf;
    }
    let armed =
        ctx.deadlines.arm(slot, fd, crate::clock::mono_coarse_ms() + deadline::ms(deadline::LINGER_GRACE), Wait::Read);
    loop {
        // The read buffer is free now: its contents are never answered.
        rbuf.clear();
        let cap = rbuf.capacity();
        let (res, slice) = stream.read(rbuf.slice_mut(0..cap)).await;
        rbuf = slice.into_inner();
        if armed.expired() || !matches!(res, Ok(n) if n > 0) {
            break;
        }
    }
    drop(armed);
    rbuf.clear();
    rbuf
}

fn stop_grace_over(ctx: &ShardCtx) -> bool {
    ctx.stop_at.get().is_none_or(|t| crate::clock::mono_coarse_ms() >= t + ctx.deadlines.stop_request_grace_ms())
}

/// Routes, extracts, pushes and writes the response for one well-formed request. `body[..body_len]`
/// is its body (`body` has the JSON parser's padding after it); `more`: bytes of another request
/// follow it in the read buffer; `last_read`: the connection reads nothing more (a deadline shut
/// its reads while the read that brought this request completed).
#[allow(clippy::too_many_arguments)] // the request's parts, as the batch loop has them
pub(crate) fn answer(
    ctx: &ShardCtx,
    req: &http::Request<'_, '_>,
    body: &mut [u8],
    body_len: usize,
    more: bool,
    last_read: bool,
    peer: SocketAddr,
    now_ns: u64,
    wbuf: &mut Vec<u8>,
) -> Answer {
    let counters = &ctx.shared.counters;
    let head = req.method == http::Method::Head;
    // While the shard stops, answer with `Connection: close`: the client opens its next request
    // on a new connection (the new process in a restart) instead of racing our close. Not while
    // requests it pipelined are still in the buffer: they were received and are answered first
    // (a close here would drop them unanswered); the stop graces bound how long that lasts.
    // Likewise after the last read: the client must not send a next request nobody reads.
    let ka = req.keep_alive && ((!ctx.stopping.get() && !last_read) || more);
    let v = req.version_minor;
    let method = request_method(req.method);
    // Borrowed for this request only: the control task swaps both between requests on reload.
    let cfg = ctx.cfg.borrow();
    let routes = ctx.routes.borrow();
    // `OPTIONS *` (asterisk-form, only parsed for OPTIONS): about the server as a whole.
    if req.method == http::Method::Options && req.path == b"*" {
        counters.request(None, Status::S204);
        let date = ctx.date.borrow();
        let _ = http::response::options(wbuf, http::response::ALLOW_ALL, ka, v, date.get());
        return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
    }
    // CORS preflight for a POST endpoint (http::cors); never an event. A browser sends every
    // preflight with `Origin` (the Fetch standard); an OPTIONS without one is a plain question about
    // the path and is answered below with its `Allow`, like OPTIONS on a GET path.
    if req.method == http::Method::Options && http::query::header(req.headers, "origin").is_some() {
        if let Route::Found(i) = routes.route(RequestMethod::Post, req.path) {
            return post::preflight(ctx, &cfg, i, req, ka, wbuf);
        }
    }
    let ep_index = match routes.route(method, req.path) {
        Route::Found(i) => i,
        // Counted as `OPTIONS *` is: no endpoint's request, since no endpoint ran.
        Route::Options(allow) => {
            counters.request(None, Status::S204);
            let date = ctx.date.borrow();
            let _ = http::response::options(wbuf, allow, ka, v, date.get());
            return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
        }
        Route::NotFound => {
            counters.request(None, Status::S404);
            write_error(ctx, wbuf, Status::S404, "no such endpoint", ka, head, v, None, None);
            return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
        }
        Route::MethodNotAllowed(allow) => {
            counters.request(None, Status::S405);
            write_error(ctx, wbuf, Status::S405, "method not allowed", ka, head, v, Some(allow), None);
            return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
        }
    };
    let ep = &cfg.endpoints[ep_index as usize];
    let ty = &cfg.types[ep.type_id as usize];
    // Every answer of a POST endpoint to an allowed origin carries the CORS grant, refusals
    // included (docs/post.md): without it a browser hides the status and the reason from the
    // page's script. GET endpoints never grant it.
    let allow_origin = match ep.method {
        crate::config::Method::Post => http::cors::origin(&cfg.cors, req.headers).allowed(),
        crate::config::Method::Get => None,
    };
    // Journal over journal.size_bytes_max (collector/retention.rs): refuse what must be logged
    // rather than fill the disk; and while a journal fails (the drain retries), refuse it
    // rather than promise what may never be written — any shard's, since a retry that lands on
    // a healthy shard would be taken for a duplicate of the copy stuck in the failing one.
    // Two relaxed loads.
    if ep.ack == Ack::Logged {
        let why = if crate::collector::retention::journal_over_limit() {
            Some("journal full, retry")
        } else if ctx.shared.any_journal_unavailable() {
            counters.reject(Reason::JournalUnavailable);
            Some("journal unavailable, retry")
        } else {
            None
        };
        if let Some(why) = why {
            counters.request(Some(ep.counter), Status::S503);
            write_error(ctx, wbuf, Status::S503, why, ka, head, v, None, allow_origin);
            return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
        }
    }
    // SSAI: the device's address and user agent, believed only from an authenticated stitcher.
    let (mut client_ip, mut device_ua) = (peer.ip(), None);
    let device = ssai::device(cfg.privacy.ssai.as_ref(), req.path, req.query, req.headers, now_ns / 1_000_000_000);
    match device {
        ssai::Device::Absent => {}
        ssai::Device::Trusted { ip, user_agent } => (client_ip, device_ua) = (ip, Some(user_agent)),
        ssai::Device::Untrusted => counters.reject(Reason::SsaiUnauthenticated),
        // Signed, but no viewer's address: charged as itself it would be exempt (loopback) or
        // one bucket for all such viewers, and journaled it says nothing. Refused, so the
        // stitcher's operator sees the bug rather than a budget bypass or silent bad data.
        // Signed, but not an address at all: a stitcher bug too, not an unauthenticated sender;
        // falling back to the stitcher's address would journal and budget it as the viewer.
        // One counter for both: either way the stitcher sends no usable device address.
        ssai::Device::Unusable | ssai::Device::NotAnAddress => {
            counters.reject(Reason::SsaiDeviceIpUnusable);
            counters.request(Some(ep.counter), Status::S400);
            let why = match device {
                ssai::Device::Unusable => "X-Device-IP is not a client address",
                _ => "X-Device-IP is not an IP address",
            };
            write_error(ctx, wbuf, Status::S400, why, ka, head, v, None, allow_origin);
            return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
        }
    }
    // Per-source budget, before anything is decoded. `drop` endpoints answer as usual below and
    // only skip the publish; `reject` endpoints answer 429 now.
    let mut over_budget = false;
    if let Some(b) = &ctx.budgets {
        if let Charge::Over { retry_after_s } = b.charge(client_ip, now_ns) {
            counters.reject(Reason::OverBudget);
            if ep.over_budget == OverBudget::Reject {
                counters.request(Some(ep.counter), Status::S429);
                let date = ctx.date.borrow();
                let _ = http::response::too_many_requests(
                    wbuf,
                    retry_after_s,
                    "over budget, retry later",
                    ka,
                    head,
                    v,
                    date.get(),
                    allow_origin,
                );
                return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
            }
            over_budget = true;
        }
    }
    // Click redirects: the landing URL must pass the endpoint's rule before anything is logged
    // (a refused click is not a click). Decoded into this stack buffer; nothing is allocated.
    // The 2 KiB buffers are only initialised on redirect endpoints: zeroing them for every pixel
    // was ~4 KiB of memset per request.
    let mut landing_buf: [u8; redirect::LANDING_URL_BYTES_MAX];
    let landing = match &ep.redirect {
        None => None,
        Some(rule) => {
            landing_buf = [0u8; redirect::LANDING_URL_BYTES_MAX];
            match redirect::check(rule, req.query, now_ns / 1_000_000_000, &mut landing_buf) {
                Ok(url) => Some(url),
                Err(refused) => return refuse_redirect(ctx, wbuf, ep.counter, refused, ka, head, v),
            }
        }
    };
    let view = RequestView {
        query: req.query,
        headers: req.headers,
        host: req.host,
        client_ip,
        now_ns,
        user_agent: device_ua,
        json: None,
        client_id_ignored: landing.is_some_and(|l| l.signed),
        item: None,
    };
    // POST bodies: a JSON object, or a batch of them, each its own event (net::post). A body
    // on a GET endpoint is ignored, as it always was.
    if body_len > 0 && ep.method == crate::config::Method::Post {
        return post::answer(ctx, &cfg, ep_index, req, view, body, body_len, over_budget, allow_origin, ka, wbuf);
    }
    if ep.response == ResponseKind::Json {
        counters.request(Some(ep.counter), Status::S400);
        // A body refused as a whole, as post::answer counts one that is not JSON: `field` is
        // for an item's field.
        counters.reject(Reason::Malformed);
        write_error(
            ctx,
            wbuf,
            Status::S400,
            "empty body: expected a JSON object or array",
            ka,
            head,
            v,
            None,
            allow_origin,
        );
        return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
    }
    let mut producer = ctx.producer.borrow_mut();
    let Some(slot) = producer.reserve() else {
        counters.request(Some(ep.counter), Status::S503);
        counters.reject(Reason::RingFull);
        write_error(ctx, wbuf, Status::S503, "overloaded, retry", ka, head, v, None, allow_origin);
        return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
    };
    let prepared = match pipeline::prepare(ctx, &cfg, ty, ep_index, &view, slot) {
        Ok(p) => p,
        Err(refusal) => {
            counters.request(Some(ep.counter), Status::S400);
            if let Some(reason) = refusal.reason() {
                counters.reject(reason);
            }
            let mut msg = [0u8; 256];
            write_error(ctx, wbuf, Status::S400, refusal.text(&mut msg), ka, head, v, None, allow_origin);
            return Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE };
        }
    };
    if head {
        slot.flags |= FLAG_HEAD;
    }
    let mut location_buf: [u8; redirect::LOCATION_BYTES_MAX];
    let location: &[u8] = match landing {
        None => &[],
        Some(template) => {
            location_buf = [0u8; redirect::LOCATION_BYTES_MAX];
            match redirect::expand(template.url, slot, ty, template.signed, &mut location_buf) {
                Ok(n) => &location_buf[..n],
                Err(refused) => return refuse_redirect(ctx, wbuf, ep.counter, refused, ka, head, v),
            }
        }
    };
    let published = pipeline::publish(ctx, ty, prepared, now_ns, over_budget, &mut producer);
    let date = ctx.date.borrow();
    let status = match ep.response {
        ResponseKind::Gif => {
            let _ = http::response::gif(wbuf, allow_origin, ka, head, v, date.get());
            Status::S200
        }
        ResponseKind::NoContent => {
            let _ = http::response::no_content(wbuf, allow_origin, ka, v, date.get());
            Status::S204
        }
        ResponseKind::Json => {
            // Unreachable: a json endpoint has answered above (body or 400 for none).
            debug_assert!(false, "json response without a body");
            let _ = http::response::no_content(wbuf, None, ka, v, date.get());
            Status::S204
        }
        ResponseKind::Redirect => match http::response::redirect(wbuf, location, ka, v, date.get()) {
            Ok(_) => Status::S302,
            Err(_) => {
                // Unreachable: the URL was validated and macro values encoded, and the batch
                // loop keeps RESPONSE_BYTES_MAX free. The event is logged; say so honestly.
                debug_assert!(false, "redirect write failed");
                let _ =
                    http::response::error(wbuf, 500, "cannot write the redirect", ka, head, v, date.get(), None, None);
                Status::S400
            }
        },
    };
    counters.request(Some(ep.counter), status);
    let (mut logged_seq, mut elsewhere) = (0, Elsewhere::NONE);
    if ep.ack == Ack::Logged {
        // One event: always room for its one wait.
        let _ = published.wait_for(ctx, &mut logged_seq, &mut elsewhere);
    }
    Answer { keep_alive: ka, logged_seq, elsewhere }
}

/// Records the service time of a batch's `count` requests (metrics::latency): no allocation, no
/// lock, one vDSO clock read per batch (~17–50 ns; benches/pipeline.rs `latency`), not one per
/// request. It uses the wall clock so that the start is the read the batch already makes for
/// event timestamps; a clock step during a batch is clamped (backwards → 1 ns, forwards → at
/// most 60 s).
#[inline]
fn record_service(ctx: &ShardCtx, start_ns: u64, count: u64) {
    ctx.service.borrow_mut().record_n(crate::clock::unix_nanos().saturating_sub(start_ns), count);
}

/// A click whose landing URL failed the endpoint's rule: 4xx with the reason, counted, no event.
fn refuse_redirect(
    ctx: &ShardCtx,
    wbuf: &mut Vec<u8>,
    counter: u16,
    refused: redirect::Refused,
    keep_alive: bool,
    head: bool,
    version_minor: u8,
) -> Answer {
    let st = Status::from_code(refused.status);
    ctx.shared.counters.request(Some(counter), st);
    ctx.shared.counters.reject(Reason::Redirect);
    write_error(ctx, wbuf, st, refused.reason, keep_alive, head, version_minor, None, None);
    Answer { keep_alive, logged_seq: 0, elsewhere: Elsewhere::NONE }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn write_error(
    ctx: &ShardCtx,
    wbuf: &mut Vec<u8>,
    status: Status,
    reason: &str,
    keep_alive: bool,
    head: bool,
    version_minor: u8,
    allow: Option<&str>,
    allow_origin: Option<&[u8]>,
) {
    let date = ctx.date.borrow();
    let _ = http::response::error(
        wbuf,
        status.code(),
        reason,
        keep_alive,
        head,
        version_minor,
        date.get(),
        allow,
        allow_origin,
    );
}

fn request_method(m: http::Method) -> RequestMethod {
    match m {
        http::Method::Get => RequestMethod::Get,
        http::Method::Head => RequestMethod::Head,
        http::Method::Post => RequestMethod::Post,
        http::Method::Options => RequestMethod::Options,
        _ => RequestMethod::Other,
    }
}

/// What [`invite_body`] did for a request whose body has not all arrived.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Invited {
    /// Wait for the body: `100 Continue` went out if the client asked for it (once).
    Wait,
    /// The client asked for `100 Continue`, but the request is refused whatever its body holds:
    /// the refusal is in `wbuf` (`Connection: close`); answer nothing more and close.
    Refused,
}

/// Queues `100 Continue` once for a request whose body has not all arrived, when it asked for
/// one; the final response follows when the body is in. A request that will be refused whatever
/// its body holds — no such endpoint, a method its path does not take, a media type or coding
/// its POST endpoint does not read — is refused instead (RFC 9110 §10.1.1: the final status may
/// replace the 100), so the client need not send a body to have it thrown away; one it sends
/// anyway is read and dropped by the lingering close. Without the expectation the body is on its
/// way already and the request is answered after it, as any other.
pub(crate) fn invite_body(ctx: &ShardCtx, req: &http::Request<'_, '_>, sent: &mut bool, wbuf: &mut Vec<u8>) -> Invited {
    if !req.expect_continue || *sent {
        return Invited::Wait;
    }
    let counters = &ctx.shared.counters;
    let (head, v) = (req.method == http::Method::Head, req.version_minor);
    let cfg = ctx.cfg.borrow();
    // `OPTIONS *` is about the server, answered before routing (`answer`): not refused here.
    let about_server = req.method == http::Method::Options && req.path == b"*";
    let route = (!about_server).then(|| ctx.routes.borrow().route(request_method(req.method), req.path));
    let refused = match route {
        None => None,
        Some(Route::NotFound) => Some((None, Status::S404, "no such endpoint", None, None)),
        Some(Route::MethodNotAllowed(allow)) => Some((None, Status::S405, "method not allowed", Some(allow), None)),
        Some(Route::Found(i)) if cfg.endpoints[i as usize].method == crate::config::Method::Post => {
            body::content(req.headers).err().map(|r| {
                let origin = http::cors::origin(&cfg.cors, req.headers).allowed();
                (Some(cfg.endpoints[i as usize].counter), Status::from_code(r.status), r.reason, None, origin)
            })
        }
        Some(Route::Found(_) | Route::Options(_)) => None,
    };
    *sent = true;
    // The batch loop runs only with RESPONSE_BYTES_MAX free in wbuf: a 100 or an error fits.
    let Some((counter, st, reason, allow, origin)) = refused else {
        let _ = http::response::continue_100(wbuf);
        return Invited::Wait;
    };
    counters.request(counter, st);
    if counter.is_some() {
        // As the same refusal after the body is counted (net::post).
        counters.reject(Reason::Malformed);
    }
    write_error(ctx, wbuf, st, reason, false, head, v, allow, origin);
    Invited::Refused
}
