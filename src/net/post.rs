//! POST endpoints with a body: one JSON object (one event) or, for `response = "json"`, an
//! array of them (a batch), each item its own event with its own status.
//!
//! Stage: `connection::answer` hands over a routed POST request whose body is non-empty. In: the
//! body in the connection's body scratch (with `INPUT_PADDING` spare bytes); out: events pushed
//! to this shard's ring and one response.
//!
//! Invariants:
//! - one bad item never fails the others: each item is extracted, enriched and pushed on its
//!   own; a refused item is reported by index and reason and counted (`reason="field"`);
//! - the ring filling up mid-batch refuses the remaining items with reason `overloaded`
//!   (counted as `ring_full`); items already pushed stay pushed and are counted as accepted;
//! - a batch has at most `server.batch_events_max` items (more → 413, none pushed), so the
//!   answer — every rejected index and a reason of at most `BATCH_REASON_BYTES_MAX` bytes — fits
//!   `BATCH_ANSWER_BYTES_MAX`, which the connection keeps free in its write buffer;
//! - nothing is allocated: the body is parsed in place, the gzip output, the JSON tape and the
//!   answer are per-shard buffers sized at start (`PostScratch`).

use std::io::Write as _;

use crate::config::{Ack, Config, EventType, OverBudget, ResponseKind, Server};
use crate::constants::{BATCH_EVENTS_MAX, BATCH_REASON_BYTES_MAX};
use crate::enrich::budget::Charge;
use crate::extract::json::{JsonScratch, INPUT_PADDING};
use crate::extract::RequestView;
use crate::http::cors::{self, Origin};
use crate::http::{self, Request};
use crate::metrics::{Reason, Status};
use crate::ring::Producer;
use crate::runtime::shard::ShardCtx;

use super::body::{self, Encoding, Inflater};
use super::connection::{write_error, Answer};
use super::pipeline::{prepare, publish, Elsewhere, Published, Refusal};

/// Bytes of one rejected item in the answer: `{"index":127,"reason":"…"},`.
const ITEM_ANSWER_BYTES_MAX: usize = 28 + BATCH_REASON_BYTES_MAX;
/// Room for `{"accepted":128,"rejected":[` written in front of the list once the count is known.
const ANSWER_PREFIX_BYTES: usize = 32;
/// The largest answer body.
pub const BATCH_ANSWER_BYTES_MAX: usize = ANSWER_PREFIX_BYTES + BATCH_EVENTS_MAX * ITEM_ANSWER_BYTES_MAX + 2;
/// Write-buffer room a POST answer needs: the body plus a head with the longest allowed origin
/// echoed (config::request::ORIGIN_BYTES_MAX).
pub const POST_RESPONSE_BYTES_MAX: usize = BATCH_ANSWER_BYTES_MAX + 1024;
const _: () = assert!(POST_RESPONSE_BYTES_MAX <= super::connection::WRITE_BYTES);
const _: () = assert!(crate::config::ORIGIN_BYTES_MAX + 512 <= 1024);

/// A shard's POST buffers, allocated once at start and reused by every request.
pub struct PostScratch {
    json: JsonScratch,
    inflate: Inflater,
    answer: Vec<u8>,
}

impl PostScratch {
    /// Costs about 21 bytes per byte of the larger of `body_bytes_max` and
    /// `body_decoded_bytes_max` (JSON scratch and tape) plus `body_decoded_bytes_max` (inflate
    /// output).
    pub fn new(s: &Server) -> PostScratch {
        PostScratch {
            json: JsonScratch::new(s.body_bytes_max.max(s.body_decoded_bytes_max)),
            inflate: Inflater::new(s.body_decoded_bytes_max, s.body_inflate_ratio_max),
            answer: Vec::with_capacity(BATCH_ANSWER_BYTES_MAX),
        }
    }
}

/// Answers a CORS preflight (`OPTIONS`) for the POST endpoint `ep_index`: 204 with the
/// `Access-Control-*` headers for an allowed origin, 403 for any other. `connection::answer`
/// calls it only for a request with an `Origin` (one without is answered with `Allow`); the
/// 403 for none stays as the safe answer should that ever change.
pub(super) fn preflight(
    ctx: &ShardCtx,
    cfg: &Config,
    ep_index: u16,
    req: &Request<'_, '_>,
    ka: bool,
    wbuf: &mut Vec<u8>,
) -> Answer {
    let counters = &ctx.shared.counters;
    let counter = cfg.endpoints[ep_index as usize].counter;
    match cors::origin(&cfg.cors, req.headers) {
        Origin::Allowed(o) => {
            let date = ctx.date.borrow();
            let _ = http::response::preflight(wbuf, o, cfg.cors.max_age_s, ka, req.version_minor, date.get());
            counters.request(Some(counter), Status::S204);
        }
        Origin::Absent | Origin::Denied => {
            counters.request(Some(counter), Status::S403);
            write_error(
                ctx,
                wbuf,
                Status::S403,
                "origin not allowed ([cors] origins)",
                ka,
                false,
                req.version_minor,
                None,
                None,
            );
        }
    }
    Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE }
}

/// Answers a POST with a non-empty body (`body[..body_len]`; `body` has `INPUT_PADDING` spare
/// bytes after it). `view` is the request's view without a JSON object; `allow_origin` the
/// request's origin when `[cors]` allows it (every answer, refusals included, carries it:
/// without it a browser hides the status and the reason from the page's script).
#[allow(clippy::too_many_arguments)] // the request's parts, as connection::answer has them
pub(super) fn answer(
    ctx: &ShardCtx,
    cfg: &Config,
    ep_index: u16,
    req: &Request<'_, '_>,
    view: RequestView<'_>,
    body: &mut [u8],
    body_len: usize,
    over_budget: bool,
    allow_origin: Option<&[u8]>,
    ka: bool,
    wbuf: &mut Vec<u8>,
) -> Answer {
    debug_assert!(body.len() >= body_len + INPUT_PADDING);
    let counters = &ctx.shared.counters;
    let v = req.version_minor;
    let ep = &cfg.endpoints[ep_index as usize];
    let ty = &cfg.types[ep.type_id as usize];
    // The body as a whole is refused (media type, gzip, not JSON, too many items): counted as
    // malformed; refused items of a parsed body are counted by their own reasons below.
    let refuse = |wbuf: &mut Vec<u8>, status: u16, reason: &str| {
        let st = Status::from_code(status);
        counters.request(Some(ep.counter), st);
        counters.reject(Reason::Malformed);
        let date = ctx.date.borrow();
        let _ = http::response::error(wbuf, st.code(), reason, ka, false, v, date.get(), None, allow_origin);
        Answer { keep_alive: ka, logged_seq: 0, elsewhere: Elsewhere::NONE }
    };
    let encoding = match body::content(req.headers) {
        Ok(e) => e,
        Err(r) => return refuse(wbuf, r.status, r.reason),
    };
    let mut scratch = ctx.post.borrow_mut();
    let PostScratch { json, inflate, answer } = &mut *scratch;
    let (input, len) = match encoding {
        Encoding::Identity => (body, body_len),
        Encoding::Gzip => match inflate.gunzip(&body[..body_len]) {
            Ok(n) => (inflate.out(), n),
            Err(r) => return refuse(wbuf, r.status, r.reason),
        },
    };
    let batch_max = cfg.server.batch_events_max;
    // What the items of one body did; the two callbacks of `parse_items` share it.
    struct Tally {
        accepted: usize,
        /// What the answer waits for on a `logged` endpoint: this shard's journal, and first
        /// copies of duplicate items in other shards' journals.
        logged_seq: u64,
        elsewhere: Elsewhere,
        overloaded: bool,
        first_refusal: Option<(Status, [u8; 256], usize)>,
        /// The body as a whole was refused: the answer is written.
        refused: Option<Answer>,
        /// The body is an array: its items carry their index (`RequestView::item`).
        is_array: bool,
    }
    let mut tally = Tally {
        accepted: 0,
        logged_seq: 0,
        elsewhere: Elsewhere::NONE,
        overloaded: false,
        first_refusal: None,
        refused: None,
        is_array: false,
    };
    let logged = ep.ack == Ack::Logged;
    let mut producer = ctx.producer.borrow_mut();
    answer.clear();
    answer.resize(ANSWER_PREFIX_BYTES, b' ');
    json.parse_items(
        input,
        len,
        &mut tally,
        |t, shape| {
            let refusal = match shape {
                Err(why) => Some((400, why)),
                Ok(s) if s.is_array && ep.response != ResponseKind::Json => {
                    Some((400, "a JSON array (batch) needs an endpoint with response = \"json\""))
                }
                Ok(s) if s.items > batch_max => Some((413, "more events in one body than server.batch_events_max")),
                Ok(_) => None,
            };
            if let Some((status, why)) = refusal {
                t.refused = Some(refuse(wbuf, status, why));
            }
            t.is_array = shape.is_ok_and(|s| s.is_array);
            refusal.is_none()
        },
        |t, index, item| {
            // The request paid for its first event; each further item is charged too, or a
            // batch would carry a hundred events on one request's budget.
            // (A request already over budget was counted once, and all its items go unjournaled.)
            // Items refused as overloaded are not charged: the client retries them, and a
            // burst the ring could not hold must not also spend the budget of their retry.
            // Once the ring was full, the rest of the body is refused (the answer's tail).
            let full = t.overloaded || producer.reserve().is_none();
            let charged_over = !over_budget
                && index > 0
                && !full
                && ctx
                    .budgets
                    .as_ref()
                    .is_some_and(|b| matches!(b.charge(view.client_ip, view.now_ns), Charge::Over { .. }));
            let r = match item {
                _ if full => Err(Refusal::Overloaded),
                _ if charged_over && ep.over_budget == OverBudget::Reject => Err(Refusal::OverBudget),
                Err(why) => Err(Refusal::Item(why)),
                Ok(obj) => {
                    let view = RequestView { json: Some(obj), item: t.is_array.then_some(index as u32), ..view };
                    let r = push(ctx, cfg, ty, ep_index, &view, over_budget || charged_over, &mut producer);
                    if charged_over && r.is_ok() {
                        // A `drop` endpoint: taken, answered, not journaled (as a pixel over
                        // budget). Counted once taken: an item refused for its fields is
                        // counted under that reason only.
                        counters.reject(Reason::OverBudget);
                    }
                    r
                }
            };
            // On a `logged` endpoint the answer waits for each item's event, or a duplicate's
            // first copy; one waiting on too many other shards is refused for a retry instead.
            let r = match r {
                Ok(p) if logged && !p.wait_for(ctx, &mut t.logged_seq, &mut t.elsewhere) => {
                    Err(Refusal::FirstCopyPending)
                }
                r => r,
            };
            match r {
                Ok(_) => t.accepted += 1,
                Err(refusal) => {
                    if let Some(reason) = refusal.reason() {
                        counters.reject(reason);
                    }
                    let status = match refusal {
                        Refusal::Overloaded => {
                            t.overloaded = true;
                            Status::S503
                        }
                        Refusal::FirstCopyPending => Status::S503,
                        Refusal::OverBudget => Status::S429,
                        _ => Status::S400,
                    };
                    let mut buf = [0u8; 256];
                    let text = refusal.text(&mut buf);
                    if ep.response == ResponseKind::Json {
                        if answer.len() > ANSWER_PREFIX_BYTES {
                            push_bytes(answer, b",");
                        }
                        write_item(answer, index, text);
                    } else if t.first_refusal.is_none() {
                        let n = text.len();
                        t.first_refusal = Some((status, buf, n));
                    }
                }
            }
        },
    );
    drop(producer);
    if let Some(a) = tally.refused {
        return a;
    }
    let Tally { accepted, logged_seq, elsewhere, first_refusal, .. } = tally;
    let date = ctx.date.borrow();
    let status = match ep.response {
        ResponseKind::Json => {
            push_bytes(answer, b"]}");
            let mut prefix = [0u8; ANSWER_PREFIX_BYTES];
            let mut w = &mut prefix[..];
            let _ = write!(w, "{{\"accepted\":{accepted},\"rejected\":[");
            let plen = ANSWER_PREFIX_BYTES - w.len();
            let at = ANSWER_PREFIX_BYTES - plen;
            answer[at..ANSWER_PREFIX_BYTES].copy_from_slice(&prefix[..plen]);
            let _ = http::response::json(wbuf, &answer[at..], allow_origin, ka, false, v, date.get());
            Status::S200
        }
        _ if first_refusal.is_some() => {
            let (st, buf, n) = first_refusal.unwrap_or((Status::S400, [0; 256], 0));
            let reason = std::str::from_utf8(&buf[..n]).unwrap_or("refused");
            let _ = http::response::error(wbuf, st.code(), reason, ka, false, v, date.get(), None, allow_origin);
            st
        }
        ResponseKind::Gif => {
            let _ = http::response::gif(wbuf, allow_origin, ka, false, v, date.get());
            Status::S200
        }
        ResponseKind::NoContent | ResponseKind::Redirect => {
            // Redirect endpoints are GET only (config), so this is a 204.
            let _ = http::response::no_content(wbuf, allow_origin, ka, v, date.get());
            Status::S204
        }
    };
    counters.request(Some(ep.counter), status);
    Answer { keep_alive: ka, logged_seq, elsewhere }
}

/// Appends within the reserved capacity (the answer never grows past `BATCH_ANSWER_BYTES_MAX`).
#[inline]
fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(out.len() + b.len() <= out.capacity());
    if out.len() + b.len() <= out.capacity() {
        out.extend_from_slice(b);
    }
}

/// `{"index":i,"reason":"…"}` with the reason JSON-escaped and cut to BATCH_REASON_BYTES_MAX.
fn write_item(out: &mut Vec<u8>, index: usize, reason: &str) {
    let mut head = [0u8; 32];
    let mut w = &mut head[..];
    let _ = write!(w, "{{\"index\":{index},\"reason\":\"");
    let n = 32 - w.len();
    push_bytes(out, &head[..n]);
    let mut esc = [0u8; BATCH_REASON_BYTES_MAX];
    let mut e = 0;
    for &b in reason.as_bytes() {
        let piece: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x20..=0x7e => std::slice::from_ref(&b),
            _ => b"?",
        };
        if e + piece.len() > esc.len() {
            break;
        }
        esc[e..e + piece.len()].copy_from_slice(piece);
        e += piece.len();
    }
    push_bytes(out, &esc[..e]);
    push_bytes(out, b"\"}");
}

/// One item → one event in the ring, through the same stages as a GET request (`pipeline`).
fn push<'c>(
    ctx: &ShardCtx,
    cfg: &'c Config,
    ty: &'c EventType,
    ep_index: u16,
    view: &RequestView<'_>,
    over_budget: bool,
    producer: &mut Producer,
) -> Result<Published, Refusal<'c>> {
    let Some(slot) = producer.reserve() else { return Err(Refusal::Overloaded) };
    let prepared = prepare(ctx, cfg, ty, ep_index, view, slot)?;
    Ok(publish(ctx, ty, prepared, view.now_ns, over_budget, producer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_answers_are_bounded_and_escaped() {
        let mut out = Vec::with_capacity(BATCH_ANSWER_BYTES_MAX);
        write_item(&mut out, 7, "field \"x\\\": bad\n");
        assert_eq!(std::str::from_utf8(&out).unwrap(), r#"{"index":7,"reason":"field \"x\\\": bad?"}"#);
        out.clear();
        let long = "y".repeat(500);
        write_item(&mut out, BATCH_EVENTS_MAX - 1, &long);
        assert!(out.len() <= ITEM_ANSWER_BYTES_MAX, "{}", out.len());
        // The whole answer at its worst fits.
        out.clear();
        out.resize(ANSWER_PREFIX_BYTES, b' ');
        for i in 0..BATCH_EVENTS_MAX {
            if i > 0 {
                push_bytes(&mut out, b",");
            }
            write_item(&mut out, i, &long);
        }
        push_bytes(&mut out, b"]}");
        assert!(out.len() <= BATCH_ANSWER_BYTES_MAX);
        assert_eq!(out.capacity(), BATCH_ANSWER_BYTES_MAX);
    }
}
