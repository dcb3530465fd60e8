//! Malformed, ambiguous and oversize requests: the documented status, `Connection: close`, the
//! connection closed, and the server still serving the next client.

use crate::harness::*;

fn expect_reject(s: &Server, raw: &[u8], status: u16) {
    let mut c = s.connect();
    c.send(raw);
    let r = c.read_response(false);
    assert_eq!(r.status, status, "for {:?}: body {:?}", String::from_utf8_lossy(raw), String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"), "for {:?}", String::from_utf8_lossy(raw));
    assert!(!r.body.is_empty(), "a reject carries its reason");
    assert!(c.is_closed(), "connection must close after {:?}", String::from_utf8_lossy(raw));
    // The server keeps serving.
    assert_eq!(s.connect().get("/i?c=1").status, 200);
}

#[test]
fn malformed_and_ambiguous_requests_are_400_and_close() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 12x\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\n\r\n",
        // Codings that do not end in chunked: the body's length cannot be known (RFC 9112 §6.3).
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: , ,\r\n\r\n",
        b"POST /batch HTTP/1.0\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for raw in cases {
        expect_reject(&s, raw, 400);
    }
    assert_eq!(s.stop(), 0);
}

/// RFC 9112 §3.2: a request whose Host is not `uri-host [":" port]` (or empty) is a 400. A
/// server that takes such a Host lets a client put a path, credentials or a second port where a
/// proxy, a log reader or a virtual-host table expects a host name.
#[test]
fn an_invalid_host_is_400_and_close() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let hosts: &[&[u8]] = &[b"t/evil", b"u@t", b"t:80:81", b"t:8o", b"t?x", b"t#x", b"t x", b"t\\x", b"[::1", b"t<x>"];
    for host in hosts {
        let mut raw = b"GET /i?c=1 HTTP/1.1\r\nHost: ".to_vec();
        raw.extend_from_slice(host);
        raw.extend_from_slice(b"\r\n\r\n");
        let mut c = s.connect();
        c.send(&raw);
        let r = c.read_response(false);
        assert_eq!(
            (r.status, &r.body[..]),
            (400, &b"invalid Host header\n"[..]),
            "Host {:?}",
            String::from_utf8_lossy(host)
        );
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.is_closed());
    }
    // Valid forms are served, on one kept-alive connection: empty, host:port, IP literals.
    let mut c = s.connect();
    for host in ["", "t.example:8080", "127.0.0.1:1", "[::1]:8080", "[v1.x]"] {
        c.send(format!("GET /i?c=2 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "Host {host:?}: {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 5, "only the valid requests became events");
}

/// RFC 9112 §6.1: a transfer coding the server does not implement, in a list that ends in
/// chunked, is 501 (Not Implemented) rather than 400: the request is well formed, the server
/// lacks the coding. The connection still closes: the body that follows is not read as one.
#[test]
fn an_unsupported_transfer_coding_is_501_and_close() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let cases: &[&[u8]] = &[
        b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        b"POST /batch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: deflate\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: x-custom;a=\"1, 2\", chunked\r\n\r\n0\r\n\r\n",
    ];
    for raw in cases {
        let mut c = s.connect();
        c.send(raw);
        let r = c.read_response(false);
        let what = String::from_utf8_lossy(raw);
        assert_eq!((r.status, &r.body[..]), (501, &b"unsupported transfer coding (only chunked)\n"[..]), "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        assert!(c.is_closed(), "{what}");
    }
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(requests_with_status(&s, "501"), 3.0);
    assert_eq!(s.stop(), 0);
}

#[test]
fn http_1_2_is_served_as_1_1_and_a_major_version_2_gets_505() {
    let mut s = Server::start(None, &["--shards", "1"]);
    // RFC 9110 §2.5: a newer minor version of a major version we speak is read as the one we
    // implement, keep-alive included (a pipelined pair on one connection).
    let mut c = s.connect();
    c.send(b"GET /i?c=71 HTTP/1.2\r\nHost: t\r\n\r\nGET /i?c=72 HTTP/1.1\r\nHost: t\r\n\r\n");
    for _ in 0..2 {
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "body {:?}", String::from_utf8_lossy(&r.body));
        assert_ne!(r.header("connection"), Some("close"));
    }
    assert_eq!(c.get("/i?c=73").status, 200);
    expect_reject(&s, b"GET /i?c=74 HTTP/2.0\r\nHost: t\r\n\r\n", 505);
    assert_eq!(s.stop(), 0);
    let mut campaigns: Vec<u64> =
        journal_cat(&s.journal()).iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    campaigns.sort_unstable();
    assert_eq!(campaigns, [1, 71, 72, 73], "the served requests (and expect_reject's probe), nothing of the 505");
}

#[test]
fn oversize_requests_get_413_414_431() {
    let cfg =
        "[server]\nrequest_line_bytes_max = 256\nheader_bytes_max = 1024\nheader_count_max = 8\nbody_bytes_max = 16\n"
            .to_string()
            + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let long_target = format!("GET /i?c=1&x={} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(300));
    expect_reject(&s, long_target.as_bytes(), 414);
    let big_header = format!("GET /i?c=1 HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(1100));
    expect_reject(&s, big_header.as_bytes(), 431);
    let mut many = String::from("GET /i?c=1 HTTP/1.1\r\nHost: t\r\n");
    for i in 0..12 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    expect_reject(&s, many.as_bytes(), 431);
    expect_reject(&s, b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n", 413);
    // A length no machine word holds is a body too large, not a malformed length.
    expect_reject(&s, b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999999999999999999\r\n\r\n", 413);
    assert_eq!(s.stop(), 0);
}

/// RFC 9110 §9.3.2: no answer to a HEAD has a body, a refusal's neither. A client reading one
/// stops at the blank line, so a reason sent after it would be read as the next response.
#[test]
fn a_refused_head_request_gets_its_status_and_no_body() {
    let cfg = "[server]\nbody_bytes_max = 16\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let cases: &[(&[u8], u16)] = &[
        // Refused while the head is parsed: no Host, a body over the limit, framing.
        (b"HEAD /i?c=1 HTTP/1.1\r\n\r\n", 400),
        (b"\r\nHEAD /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n", 413),
        (b"HEAD /i?c=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400),
        // Refused while its chunked body is decoded.
        (b"HEAD /i?c=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ];
    for &(raw, status) in cases {
        let what = String::from_utf8_lossy(raw);
        let mut c = s.connect();
        c.send(raw);
        let r = c.read_response(true);
        assert_eq!((r.status, r.header("connection")), (status, Some("close")), "for {what:?}");
        assert!(c.is_closed(), "after the head of the answer to {what:?}, the close and no body");
    }
    // The same refusal of a GET carries its reason.
    expect_reject(&s, b"GET /i?c=1 HTTP/1.1\r\n\r\n", 400);
    assert_eq!(s.stop(), 0);
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    let r = c.get("/nope");
    assert_eq!(r.status, 404);
    c.send(b"POST /i HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 405);
    // Every configured path answers OPTIONS, so every Allow names it (RFC 9110 §10.2.1).
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert_eq!(c.get("/batch").header("allow"), Some("POST, OPTIONS"));
    // Both keep the connection.
    assert_eq!(c.get("/i?c=2").status, 200);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 1);
}

/// RFC 9110 §9.3.7: OPTIONS on a resource asks which methods it supports, and a server that
/// implements OPTIONS answers 2xx with `Allow`. It answered 405 with an `Allow` that did not even
/// name OPTIONS on a GET path, and 403 on a POST path when the request was not a CORS preflight
/// (no `Origin`). Never an event, and counted like `OPTIONS *`.
#[test]
fn options_on_a_path_is_204_with_its_methods_in_allow() {
    // The default endpoints plus a POST on a GET path, so one path has both methods.
    let cfg = "[[endpoint]]\npath = \"/cv\"\nmethod = \"POST\"\nevent = \"batch_event\"\nresponse = \"no_content\"\n\n"
        .to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    for (path, allow) in
        [("/i", "GET, HEAD, OPTIONS"), ("/batch", "POST, OPTIONS"), ("/cv", "GET, HEAD, POST, OPTIONS")]
    {
        c.send(format!("OPTIONS {path}?c=1 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 204, "{path}: body {:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("allow"), Some(allow), "{path}");
        // Kept open; a 204 has no Content-Length; not a preflight, so no CORS grant.
        assert_eq!((r.header("connection"), r.header("content-length")), (None, None), "{path}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{path}");
    }
    // An unknown path is still not a resource.
    c.send(b"OPTIONS /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(false).status, 404);
    // Every 405 names OPTIONS among the methods that would work.
    c.send(b"POST /i HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD, OPTIONS")));
    c.send(b"HEAD /batch HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST, OPTIONS")));
    c.send(b"DELETE /cv HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD, POST, OPTIONS")));
    assert_eq!(c.get("/i?c=2").status, 200);
    assert_eq!(requests_with_status(&s, "204"), 3.0);
    assert_eq!(s.stop(), 0);
    // Only the pixel: OPTIONS is never an event.
    assert_eq!(journal_cat(&s.journal()).len(), 1);
}

/// RFC 9110 §9.3.7, RFC 9112 §3.2.4: `OPTIONS *` asks about the server, not a resource. It is
/// answered 204 with the methods the server implements at all, and keeps the connection; `*`
/// with any other method is not a valid target.
#[test]
fn options_asterisk_is_204_with_allow_and_keeps_the_connection() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 204, "body {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
    assert_eq!((r.header("connection"), r.header("content-length")), (None, None));
    // HTTP/1.0 with keep-alive, pipelined behind a pixel: both answered, in order, kept open.
    c.send(b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\n\r\nOPTIONS * HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    let r = c.read_response(false);
    assert_eq!((r.status, r.header("connection")), (204, Some("keep-alive")));
    assert_eq!(c.get("/i?c=2").status, 200);
    for raw in [
        &b"GET * HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"POST * HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        b"DELETE * HTTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        expect_reject(&s, raw, 400);
    }
    // A HEAD's refusal has no body (a_refused_head_request_gets_its_status_and_no_body).
    let mut c = s.connect();
    c.send(b"HEAD * HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!((r.status, r.header("connection")), (400, Some("close")));
    assert!(c.is_closed());
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(requests_with_status(&s, "204"), 2.0);
    assert_eq!(s.stop(), 0);
    // The two pixels and expect_reject's four probes; OPTIONS is never an event.
    assert_eq!(journal_cat(&s.journal()).len(), 6);
}

#[test]
fn a_slow_header_or_body_is_answered_408_at_the_deadline() {
    let cfg = "[server]\nheader_read_timeout_ms = 300\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    // A head that never ends, and a batch whose body stops short of its Content-Length after a
    // request answered on the same connection.
    let mut head = s.connect();
    head.send(b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\n");
    let mut body = s.connect();
    assert_eq!(body.get("/i?c=2").status, 200);
    body.send(
        b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n[{\"type\":",
    );
    // No further bytes: each gets 408 with the reason, then the close (bounded by the harness wait).
    for c in [&mut head, &mut body] {
        let r = c.read_response(false);
        assert_eq!(r.status, 408);
        assert_eq!(r.header("Connection"), Some("close"));
        assert!(String::from_utf8_lossy(&r.body).contains("header_read_timeout_ms"), "{r:?}");
        assert!(c.is_closed());
    }
    assert_eq!(s.connect().get("/i?c=3").status, 200);
    let timed_out = requests_with_status(&s, "408");
    assert_eq!(timed_out, 2.0);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 2);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let cfg = "[server]\nidle_timeout_ms = 300\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=1").status, 200);
    // Answered, kept alive, then silent: the server closes it (bounded by the harness wait).
    assert!(c.is_closed());
    assert_eq!(s.connect().get("/i?c=2").status, 200);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 2);
}

/// Regression: RFC 9112 §2.2 has a server ignore empty lines before a request line (old clients
/// end a POST with an extra CRLF). Left in the buffer they counted as a request begun, so the
/// idle keep-alive connection got an unsolicited 408 and a close at header_read_timeout_ms — a
/// 408 a client sending its next request then reads as that request's answer — instead of
/// waiting idle_timeout_ms and closing without a word.
#[test]
fn empty_lines_after_a_request_are_not_a_request_begun() {
    let cfg = "[server]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 2000\n".to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    c.send(b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\n\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    // The empty lines are ignored before the next request too.
    c.send(b"\r\n\r\nGET /i?c=2 HTTP/1.1\r\nHost: t\r\n\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    // Past the header deadline nothing is said; at the idle timeout the connection just closes.
    let r = c.try_read_response(false);
    assert!(r.is_none(), "an idle connection was answered: {r:?}");
    assert_eq!(requests_with_status(&s, "408"), 0.0);
    // Ignored, not unbounded: empty lines are dropped as they come (kept, each read scanned
    // them all again), and they do not hold the connection open: its idle timeout runs from
    // the last answer. A client sending one every 100 ms is closed, with no answer, once that
    // timeout is past; it used to be kept for as long as it kept sending.
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=3").status, 200);
    use std::io::{Read, Write};
    c.stream.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        assert!(std::time::Instant::now() < deadline, "empty lines kept the connection open for {WAIT:?}");
        if c.stream.write_all(b"\r\n").is_err() {
            break;
        }
        match c.stream.read(&mut [0u8; 256]) {
            Ok(0) => break,
            Ok(n) => panic!("an answer to empty lines ({n} bytes)"),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            // Reset: closed too.
            Err(_) => break,
        }
    }
    assert_eq!((requests_with_status(&s, "408"), requests_with_status(&s, "431")), (0.0, 0.0));
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 3);
}

/// `tracker_requests_total` summed over the series with this status.
fn requests_with_status(s: &Server, status: &str) -> f64 {
    let m = crate::metrics::parse_metrics(&String::from_utf8(s.admin_get("/metrics").body).unwrap());
    crate::metrics::sum(&m, "tracker_requests_total", &format!("status=\"{status}\""))
}

/// A connection that never sends a byte is closed at header_read_timeout_ms, not held for the
/// (much longer) keep-alive idle timeout: otherwise a client that opens connections and sends
/// nothing holds each one for idle_timeout_ms, and fills connections_per_shard_max at a sixth
/// of the rate the slowloris guard allows for a client that sends one byte.
#[test]
fn a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let cfg = "[server]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 3600000\n".to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1", "--admin-listen", "127.0.0.1:0"]);
    let mut silent = s.connect();
    // Closed without an answer (nothing was asked), well before the harness's wait runs out.
    assert!(silent.is_closed());
    // A kept-alive connection is still held for the idle timeout after its answer: it outlives
    // a second silent connection opened after it.
    let mut kept = s.connect();
    assert_eq!(kept.get("/i?c=1").status, 200);
    let mut second = s.connect();
    assert!(second.is_closed());
    assert_eq!(kept.get("/i?c=2").status, 200);
    let timed_out = requests_with_status(&s, "408");
    assert_eq!(timed_out, 0.0);
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 2);
}

/// TCP state of a socket from TCP_INFO (1 = ESTABLISHED, 7 = CLOSE, 8 = CLOSE_WAIT).
fn tcp_state(s: &std::net::TcpStream) -> u8 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO writes at most `len` bytes into our buffer; its first byte is tcpi_state.
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len)
    };
    assert_eq!(rc, 0);
    info[0]
}

#[test]
fn a_client_that_never_reads_its_responses_is_cut_off() {
    let cfg = "[server]\nidle_timeout_ms = 300\n".to_string() + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let c = s.connect();
    let mut w = c.stream.try_clone().unwrap();
    // Pipeline far more responses than the socket buffers hold, and never read one.
    let writer = std::thread::spawn(move || {
        let req = b"GET /i?c=1 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
        for _ in 0..200 {
            if std::io::Write::write_all(&mut w, &req).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT;
    while tcp_state(&c.stream) == 1 {
        assert!(std::time::Instant::now() < deadline, "server never gave up on a client that does not read");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(c);
    writer.join().unwrap();
    assert_eq!(s.connect().get("/i?c=2").status, 200);
    assert_eq!(s.stop(), 0);
}

/// RFC 9112 §9.6: a server that closes while the client may still be sending must half-close
/// and read on, not close outright. A close with unread bytes in the socket makes the kernel
/// send RST: the client's next write fails and its read reports a reset, so a proxy in front
/// answers 502 (or retries the POST) instead of passing on our 413, and on a lossy path the
/// RST discards the 413 itself before it is acknowledged.
#[test]
fn a_refused_upload_still_being_sent_gets_its_answer_and_a_clean_close_not_a_reset() {
    let cfg = "[server]\nrequest_line_bytes_max = 256\nheader_bytes_max = 1024\nbody_bytes_max = 16\n".to_string()
        + &crate::pipeline::default_endpoints_and_events();
    let mut s = Server::start(Some(&cfg), &["--shards", "1"]);
    let mut c = s.connect();
    // Far more body than the connection's read buffer (1040 bytes) takes in one read: most of
    // it is still in the server's socket when the head is refused.
    let mut raw =
        b"POST /batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n".to_vec();
    raw.resize(raw.len() + 32 * 1024, b' ');
    c.send(&raw);
    let r = c.read_response(false);
    assert_eq!(r.status, 413, "body {:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("connection"), Some("close"));
    // The client, not knowing better yet, sends more of its body: the server takes it in...
    c.send(&[b' '; 16 * 1024]);
    // ...and its close is a FIN the client reads as end of stream, not a reset.
    let mut rest = [0u8; 64];
    match std::io::Read::read(&mut c.stream, &mut rest) {
        Ok(0) => {}
        other => panic!("expected a clean end of stream after the 413, got {other:?}"),
    }
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
}

/// Regression: with the process's open-file limit reached, every failed accept (one each 10 ms
/// per shard while a connection waits in the listen queue) printed a line: about 100 lines a
/// second per shard, which spends journald's rate limit for the service and so drops every
/// other line it writes. The failure is now said once, with the limit and the fix, and once
/// more when accepting works again.
#[test]
fn accept_failing_on_the_open_file_limit_is_said_once_not_every_10_ms() {
    use std::time::{Duration, Instant};
    let wrapper = ["bash", "-c", "ulimit -n 48 && exec \"$0\" \"$@\""];
    let mut s = Server::start_wrapped(tempfile::tempdir().unwrap(), &wrapper, None, &["--shards", "1"]);
    // More connections than descriptors left: the kernel queues them whether or not the tracker
    // can take them.
    let conns: Vec<std::net::TcpStream> = (0..64).map(|_| std::net::TcpStream::connect(s.addr).unwrap()).collect();
    let next_line = |within: Duration| s.stderr.recv_timeout(within).ok();
    let deadline = Instant::now() + WAIT;
    let first = loop {
        let line = next_line(deadline.saturating_duration_since(Instant::now())).expect("accept failure said");
        if line.contains("accept failed") {
            break line;
        }
    };
    assert!(first.contains("RLIMIT_NOFILE 48") && first.contains("LimitNOFILE"), "{first}");
    // The failure repeats every 10 ms while the connections stay: a bounded look for a repeat.
    // It may be said again only after a real recovery in between: a descriptor the tracker
    // closes for itself (the directory fsync of the next segment, made ahead at start) lets one
    // queued connection in, and the next accept fails anew.
    let look = Instant::now() + Duration::from_secs(1);
    // The last "works again" when no failure was said after it.
    let (mut recovery, mut said): (Option<String>, u32) = (None, 0);
    while let Some(line) = next_line(look.saturating_duration_since(Instant::now())) {
        if line.contains("accept works again") {
            recovery = Some(line);
        } else if line.contains("accept failed") {
            assert!(recovery.take().is_some(), "said again with no recovery between: {line}");
            said += 1;
        }
    }
    assert!(said <= 3, "said {said} more times in a second: the tracker's own descriptors do not churn that much");
    drop(conns);
    let again = match recovery {
        Some(line) => line,
        None => {
            let deadline = Instant::now() + WAIT;
            loop {
                let line = next_line(deadline.saturating_duration_since(Instant::now())).expect("recovery said");
                assert!(!line.contains("accept failed"), "said again: {line}");
                if line.contains("accept works again") {
                    break line;
                }
            }
        }
    };
    assert!(again.contains("failed attempts"), "{again}");
    assert_eq!(s.connect().get("/i?c=1").status, 200);
    assert_eq!(s.stop(), 0);
}

/// Regression: an absolute-form target (`GET http://host/i`) was reduced to its path and its
/// authority thrown away unchecked, so `http://user@t/…` or `http://t:80:81/…` was served as
/// if it named a host. RFC 9112 §3.2.2 makes that authority the request's host; it is held to
/// the rules of a Host value, must name a host (RFC 9110 §4.2.1), and carries no user info
/// (RFC 9110 §4.2.4).
#[test]
fn an_absolute_form_target_with_an_invalid_authority_is_400_and_close() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let cases: &[(&str, &str)] = &[
        ("http://user@t.example/i?c=1", "user info in the request target"),
        ("http://user:pw@t.example/i?c=1", "user info in the request target"),
        ("HTTPS://@t.example/i?c=1", "user info in the request target"),
        ("http://t.example:80:81/i?c=1", "invalid host in the request target"),
        ("http://t.example:8o/i?c=1", "invalid host in the request target"),
        ("http://[::1/i?c=1", "invalid host in the request target"),
        ("http://t%zz/i?c=1", "invalid host in the request target"),
        ("http://t{x}/i?c=1", "invalid host in the request target"),
        ("http:///i?c=1", "invalid host in the request target"),
        ("http://:80/i?c=1", "invalid host in the request target"),
        ("http://?c=1", "invalid host in the request target"),
    ];
    for (target, why) in cases {
        let mut c = s.connect();
        c.send(format!("GET {target} HTTP/1.1\r\nHost: t.example\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).trim()), (400, *why), "{target}");
        assert_eq!(r.header("connection"), Some("close"), "{target}");
        assert!(c.is_closed(), "{target}");
    }
    // Valid authorities are served, on one kept-alive connection; the scheme in any case.
    let mut c = s.connect();
    for target in
        ["http://t.example/i?c=1", "HTTP://T.Example:8080/i?c=2", "https://[::1]:8080/i?c=3", "hTTp://127.0.0.1/i?c=4"]
    {
        c.send(format!("GET {target} HTTP/1.1\r\nHost: t.example\r\n\r\n").as_bytes());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{target}: {:?}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(s.stop(), 0);
    assert_eq!(journal_cat(&s.journal()).len(), 4, "only the valid requests became events");
}

/// A head that arrives a little at a time (each part its own TCP segment, which the server
/// mostly reads on its own): parsed again only once it may have ended, so its end is found
/// wherever the parts split it, a bare-LF end is refused as soon as it comes, not at the
/// header deadline, and a trickled head that never ends still meets the head limit.
#[test]
fn a_head_sent_in_pieces_is_answered_wherever_its_end_falls() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let req = b"GET /i?c=7 HTTP/1.1\r\nHost: t\r\nUser-Agent: u\r\n\r\n";
    let mut c = s.connect();
    c.stream.set_nodelay(true).unwrap();
    for split in 1..req.len() {
        c.send(&req[..split]);
        c.send(&req[split..]);
        assert_eq!(c.read_response(false).status, 200, "split at {split}");
    }
    // One byte per write.
    for b in req.iter() {
        c.send(std::slice::from_ref(b));
    }
    assert_eq!(c.read_response(false).status, 200);
    // A bare LF ends the head too, for the parser to refuse: 400 at once.
    let mut c = s.connect();
    c.stream.set_nodelay(true).unwrap();
    c.send(b"GET /i?c=8 HTTP/1.1\r\nHost: t\r\n");
    c.send(b"\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 400, "{r:?}");
    // Header lines that never end the head: 431 at header_bytes_max (8 KiB by default).
    let mut c = s.connect();
    c.send(b"GET /i?c=9 HTTP/1.1\r\nHost: t\r\n");
    for _ in 0..200 {
        c.send(b"X-Pad: 0123456789012345678901234567890123456789\r\n");
    }
    assert_eq!(c.read_response(false).status, 431);
    assert_eq!(s.stop(), 0);
}
