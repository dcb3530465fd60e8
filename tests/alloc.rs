//! Zero heap allocations per request once warm, on the pixel path and the reject (400) path.
//!
//! A counting global allocator sees every allocation in this process: the tracker's shard and
//! drain threads run in-process, and the client loop below allocates nothing itself (static
//! request bytes, a stack buffer for responses). The server is warmed first, so one-time
//! allocations (task, canceller, timer wheel levels) are excluded.
//!
//! Latency histograms are recorded on both paths (service time per request in the reactor,
//! ingest-to-journal per event in the drain) and published every 10 ms here, so dozens of
//! publishes fall inside each measured window: recording and publishing allocate nothing either.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

const PIXEL: &[u8] = b"GET /i?c=12345&cr=678&p=0.25&site=news.example.com&cb=1 HTTP/1.1\r\nHost: t.example\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36\r\nAccept: image/avif,image/webp,*/*\r\nReferer: https://news.example.com/a\r\nCookie: uid=u-1; other=2\r\n\r\n";
const MISSING: &[u8] = b"GET /i?cr=1 HTTP/1.1\r\nHost: t\r\n\r\n";
const LOGGED: &[u8] = b"GET /cv?c=1&value=2.5&order=o-1 HTTP/1.1\r\nHost: t\r\n\r\n";

/// Sends `req` and reads exactly one response into a stack buffer; returns the status digit.
fn round_trip(s: &mut TcpStream, req: &[u8]) -> u8 {
    s.write_all(req).unwrap();
    let mut buf = [0u8; 4096];
    let mut n = 0;
    loop {
        let r = s.read(&mut buf[n..]).unwrap();
        assert!(r > 0, "server closed");
        n += r;
        // Every response here is short and ends with its body; wait for the full head + body.
        if let Some(end) = buf[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let len = content_length(head);
            if n >= end + 4 + len {
                return buf[9];
            }
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let key = b"content-length:";
    for line in head.split(|&b| b == b'\n') {
        if line.len() > key.len() && line[..key.len()].eq_ignore_ascii_case(key) {
            let mut v = 0usize;
            for &c in &line[key.len()..] {
                if c.is_ascii_digit() {
                    v = v * 10 + (c - b'0') as usize;
                }
            }
            return v;
        }
    }
    0
}

#[test]
fn no_heap_allocation_per_request_once_warm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tracker::config::Config::embedded();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shards = 1;
    cfg.server.connections_per_shard_max = 16;
    cfg.journal.dir = dir.path().join("journal");
    cfg.journal.segment_bytes = 64 << 20;
    let started_with = cfg.clone();
    cfg.admin.publish_interval_ms = 10;
    let running = tracker::runtime::start(cfg).unwrap();
    let mut s = TcpStream::connect(running.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();

    for (name, req, want) in [("pixel", PIXEL, b'2'), ("400", MISSING, b'4'), ("logged", LOGGED, b'2')] {
        for _ in 0..2_000 {
            assert_eq!(round_trip(&mut s, req), want);
        }
        let before = ALLOCS.load(Relaxed);
        for _ in 0..5_000 {
            assert_eq!(round_trip(&mut s, req), want);
        }
        let after = ALLOCS.load(Relaxed);
        let per_request = (after - before) as f64 / 5_000.0;
        eprintln!("{name}: {} allocations over 5000 requests ({per_request:.4}/request)", after - before);
        assert_eq!(after - before, 0, "{name} path allocated {} times in 5000 requests", after - before);
    }

    // After a hot reload (ops: runtime/reload.rs) the request path still allocates nothing: the
    // swap happens once, on the control task, not per request.
    let file = dir.path().join("tracker.toml");
    std::fs::write(&file, tracker::config::DEFAULT_TOML.replace("path = \"/i\"", "path = \"/i2\"")).unwrap();
    let overrides = tracker::config::Overrides {
        listen: Some(started_with.server.listen),
        journal_dir: Some(started_with.journal.dir.clone()),
        shards: Some(1),
        admin_listen: None,
    };
    let mut reloader =
        tracker::runtime::reload::Reloader::new(file, overrides, started_with, running.shards().to_vec());
    let report = reloader.reload().unwrap();
    assert!(report.late_shards.is_empty());
    const PIXEL2: &[u8] = b"GET /i2?c=12345&cr=678 HTTP/1.1\r\nHost: t\r\n\r\n";
    for _ in 0..2_000 {
        assert_eq!(round_trip(&mut s, PIXEL2), b'2');
    }
    let before = ALLOCS.load(Relaxed);
    for _ in 0..5_000 {
        assert_eq!(round_trip(&mut s, PIXEL2), b'2');
    }
    let after = ALLOCS.load(Relaxed);
    assert_eq!(after - before, 0, "pixel path after reload allocated {} times in 5000 requests", after - before);
    drop(s);
    let shard = running.shards()[0].clone();
    running.stop();
    running.wait();
    // Every request was recorded (4 × 7000: pixel, 400, logged, pixel after reload), and every
    // event journaled (3 × 7000: the 400s make none).
    assert_eq!(shard.counters.latency.service.cumulative().len(), 28_000);
    assert_eq!(shard.counters.latency.journal.cumulative().len(), 21_000);
}
