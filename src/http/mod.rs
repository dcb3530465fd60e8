//! HTTP/1.1 on the request path: parse one request head, decode a chunked body, read query
//! strings and cookies, and write responses — synchronous, no I/O, no heap allocation.
//!
//! Stage: first step after `net` has read bytes into a connection's fixed buffer, last step
//! before `net` writes. In: a byte slice that may hold a partial request, one request, or
//! several pipelined ones. Out: a [`Request`] that borrows from that slice (method, path, query,
//! headers, body framing, keep-alive), or a [`ParseError`] that is either `Incomplete` (read more)
//! or `Invalid` with the status to answer before closing. Responses are appended to the
//! connection's write buffer, whose capacity was reserved at start.
//!
//! Files in the order a request uses them:
//! - [`request`]  head parsing with httparse into a fixed header array; validation; framing
//! - [`chunked`]  chunked transfer-coding → a caller-provided fixed scratch slice
//! - [`cors`]     `Origin` against the `[cors]` allowlist (POST endpoints, preflights)
//! - [`query`]    `k=v&…` pairs, percent-decoding into a slice, cookies, header lookup
//! - [`response`] GIF / 204 / 302 / JSON / error writers, and the cached `Date` value
//!
//! What must never happen here:
//! - a heap allocation (no `String`, `format!`, `to_vec`, `Vec` growth): writers check
//!   `len + needed <= capacity` and report overflow instead of reallocating;
//! - a request accepted whose framing another HTTP implementation could read differently
//!   (request smuggling): both Content-Length and Transfer-Encoding, repeated Content-Length,
//!   any transfer coding other than exactly `chunked`, bare CR or LF, NUL and other control
//!   bytes, obs-fold — all are rejected with 400 and the connection is closed by the caller;
//! - a limit that is only checked once the whole input has arrived: the request line (414) and
//!   the head (431) are refused while still incomplete, as soon as they cannot fit;
//! - a panic on any input (the parsers are meant to be fuzzed).

pub mod chunked;
pub mod cors;
pub mod query;
pub mod request;
pub mod response;

pub use request::{header_buf, parse, BodyFraming, HeaderBuf, Limits, Method, ParseError, Request, HEADERS_MAX};
pub use response::{DateCache, WriteError, DATE_BYTES};
