//! Criterion benches of the request path's stages, each alone: HTTP parse, field extraction,
//! ring push/pop, journal append, latency recording, JSON batch parse and extraction. Run: `cargo bench --bench pipeline` (add `-- --quick` for a
//! short run). Results and the machine they ran on go to perf/RESULTS.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

use tracker::config::Config;
use tracker::event::Event;
use tracker::extract::{extract, IdGen, RequestView};
use tracker::http::{self, HEADERS_MAX};

/// The same realistic browser pixel request as perf/pixel.lua.
const PIXEL: &[u8] = b"GET /i?c=12345&cr=678&p=0.25&site=news.example.com&cb=8815 HTTP/1.1\r\nHost: t.example.com\r\nConnection: keep-alive\r\nsec-ch-ua: \"Chromium\";v=\"124\", \"Google Chrome\";v=\"124\"\r\nsec-ch-ua-mobile: ?0\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\nsec-ch-ua-platform: \"Windows\"\r\nAccept: image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: image\r\nReferer: https://news.example.com/world/article-123\r\nAccept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: uid=5f2b1c9e-8d7a-4e3b-9a1f-0c2d3e4f5a6b; _ga=GA1.2.1234567890.1700000000\r\n\r\n";

fn limits() -> http::Limits {
    http::Limits { request_line_bytes_max: 4096, header_count_max: 64, header_bytes_max: 8192, body_bytes_max: 65536 }
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("http");
    g.throughput(Throughput::Elements(1));
    let l = limits();
    // The floor: httparse alone, without our framing and smuggling checks.
    g.bench_function("httparse_only", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
            let mut r = httparse::Request::new(&mut headers);
            black_box(r.parse(black_box(PIXEL)).unwrap().unwrap())
        })
    });
    g.bench_function("parse_pixel_request", |b| {
        b.iter(|| {
            let mut headers = http::header_buf();
            let r = http::parse(black_box(PIXEL), &mut headers, &l).ok().unwrap();
            black_box(r.head_len)
        })
    });
    g.finish();
}

fn bench_extract(c: &mut Criterion) {
    let cfg = Config::embedded();
    let ty = cfg.event_type("impression").unwrap().clone();
    let l = limits();
    let mut headers = http::header_buf();
    let req = http::parse(PIXEL, &mut headers, &l).ok().unwrap();
    let view = RequestView {
        query: req.query,
        headers: req.headers,
        host: req.host,
        client_ip: "203.0.113.7".parse().unwrap(),
        now_ns: 1,
        user_agent: None,
        json: None,
        client_id_ignored: false,
        item: None,
    };
    let mut ids = IdGen::new(0);
    let mut ev = Event::ZERO;
    let mut g = c.benchmark_group("extract");
    g.throughput(Throughput::Elements(1));
    g.bench_function("impression_fields", |b| {
        b.iter(|| {
            extract(&ty, black_box(&view), &mut ids, 0, 0, &mut ev).unwrap();
            black_box(ev.slots[0])
        })
    });
    g.finish();
}

fn bench_ring(c: &mut Criterion) {
    let (mut p, mut cons) = tracker::ring::ring(1024);
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(64));
    g.bench_function("push_pop_64", |b| {
        b.iter(|| {
            for i in 0..64u64 {
                let e = p.reserve().unwrap();
                e.seq = i;
                p.commit();
            }
            black_box(cons.pop_batch(64, |e| black_box(e.seq) < u64::MAX))
        })
    });
    g.finish();
}

fn bench_journal(c: &mut Criterion) {
    // Each measured batch appends 10,000 records into a fresh, preallocated 8 MiB segment, so
    // the disk use of a long run stays bounded and rotation cost is not part of the figure.
    const RECORDS: u64 = 10_000;
    let cfg = Config::embedded();
    let mut ev = Event::ZERO;
    ev.set_slot(0, 42);
    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(RECORDS));
    g.bench_function("append_10k_records", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let (j, _) = tracker::journal::ShardJournal::open(dir.path(), 0, 8 << 20, &cfg.schema).unwrap();
                (dir, j)
            },
            |(dir, mut j)| {
                for i in 0..RECORDS {
                    let mut e = ev;
                    e.seq = i;
                    j.append(&mut e).unwrap();
                }
                (dir, j)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The request-side steps of issue 3, each alone: click redirect (allowlist, and signature),
/// dedup lookup, budget charge, privacy (ip truncation + user-id hash).
fn bench_request_side(c: &mut Criterion) {
    use tracker::redirect::{check, expand, LANDING_URL_BYTES_MAX, LOCATION_BYTES_MAX};
    let cfg = Config::embedded();
    let rule = cfg.endpoints.iter().find(|e| e.path == "/c").unwrap().redirect.as_deref().unwrap().clone();
    let click = cfg.event_type("click").unwrap().clone();
    let q: &[u8] =
        b"c=77&cr=5&imp=i-1&url=https%3A%2F%2Fwww.example.com%2Fl%3Fclk%3D%7Bclick_id%7D%26c%3D%7Bcampaign_id%7D";
    let mut ev = Event::ZERO;
    let view = RequestView {
        query: q,
        headers: &[],
        host: None,
        client_ip: "203.0.113.7".parse().unwrap(),
        now_ns: 1,
        user_agent: None,
        json: None,
        client_id_ignored: false,
        item: None,
    };
    extract(&click, &view, &mut IdGen::new(0), 0, 0, &mut ev).unwrap();
    let mut g = c.benchmark_group("request_side");
    g.throughput(Throughput::Elements(1));
    g.bench_function("redirect_allowlist_check_and_expand", |b| {
        b.iter(|| {
            let mut buf = [0u8; LANDING_URL_BYTES_MAX];
            let url = check(&rule, black_box(q), 1_790_000_000, &mut buf).unwrap().url;
            let mut out = [0u8; LOCATION_BYTES_MAX];
            black_box(expand(url, &ev, &click, true, &mut out).unwrap())
        })
    });
    let mut signed = rule.clone();
    signed.require = tracker::redirect::Require::Signature;
    signed.keys = vec![tracker::redirect::Key::new("k1", &[7u8; 32])];
    let url = tracker::redirect::signed_click_url(
        &signed,
        "",
        "c=77&cr=5&imp=i-1",
        "https://www.example.com/l?clk={click_id}",
        Some("k1"),
        1_790_000_600,
        1_790_000_000,
    )
    .unwrap();
    let signed_q = url.split_once('?').unwrap().1.as_bytes().to_vec();
    g.bench_function("redirect_signature_check", |b| {
        b.iter(|| {
            let mut buf = [0u8; LANDING_URL_BYTES_MAX];
            black_box(check(&signed, black_box(&signed_q), 1_790_000_000, &mut buf).unwrap().url.len())
        })
    });
    let dedup = tracker::dedup::Dedup::new(1 << 20, 300_000);
    let mut n = 0u64;
    g.bench_function("dedup_check_new_id", |b| {
        b.iter(|| {
            n += 1;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&n.to_le_bytes());
            black_box(dedup.check(&id, 1, 1_790_000_000_000_000_000 + n, 0, n))
        })
    });
    let mut bcfg = cfg.budget;
    bcfg.exempt_loopback = false;
    bcfg.rate_per_s = 10_000_000;
    bcfg.burst = 100_000_000;
    let budgets = tracker::enrich::budget::Budgets::new(bcfg);
    let ip: std::net::IpAddr = "203.0.113.7".parse().unwrap();
    g.bench_function("budget_charge", |b| {
        b.iter(|| {
            n += 1;
            black_box(budgets.charge(black_box(ip), n * 1000))
        })
    });
    let conv = cfg.event_type("conversion").unwrap().clone();
    let headers = [httparse::Header { name: "Cookie", value: b"uid=5f2b1c9e-8d7a-4e3b-9a1f-0c2d3e4f5a6b" }];
    let view = RequestView {
        query: b"c=1&value=2.5",
        headers: &headers,
        host: None,
        client_ip: ip,
        now_ns: 1,
        user_agent: None,
        json: None,
        client_id_ignored: false,
        item: None,
    };
    let mut conv_ev = Event::ZERO;
    let mut privacy = tracker::enrich::privacy::Privacy::new(cfg.privacy.clone());
    let mut ids = IdGen::new(0);
    g.bench_function("extract_and_privacy_conversion_with_uid", |b| {
        b.iter(|| {
            extract(&conv, &view, &mut ids, 0, 0, &mut conv_ev).unwrap();
            privacy.apply(&conv, &view, &mut conv_ev);
            black_box(conv_ev.slots[3])
        })
    });
    g.finish();
}

/// What service-time recording adds to each request: a wall-clock read (vDSO) and a histogram
/// record (metrics::latency, net::connection::record_service).
fn bench_latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("latency");
    g.throughput(Throughput::Elements(1));
    let mut h = tracker::metrics::latency::LocalHistogram::new();
    let t0 = tracker::clock::unix_nanos();
    g.bench_function("clock_and_record", |b| {
        b.iter(|| h.record(black_box(tracker::clock::unix_nanos().saturating_sub(t0) % 10_000)))
    });
    g.bench_function("clock", |b| b.iter(|| black_box(tracker::clock::unix_nanos())));
    let mut v = 3_000u64;
    g.bench_function("record", |b| {
        b.iter(|| {
            // Service times of a few µs, varying like real ones.
            v = (v * 13 + 7) % 9_000 + 1_000;
            h.record(black_box(v))
        })
    });
    g.finish();
}

/// A 10-item JSON batch (sendBeacon-sized, ~1 KB): the in-place simd-json parse alone, and
/// parse + extraction of every item into an Event (the default config's batch_event type).
fn bench_json(c: &mut Criterion) {
    use tracker::extract::json::{Items, JsonScratch, INPUT_PADDING};
    let cfg = Config::embedded();
    let ty = cfg.event_type("batch_event").unwrap().clone();
    let items: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"type":"add_to_cart","name":"sku-{i}","value":19.99,"campaign_id":{i},"eid":"e-{i}"}}"#))
        .collect();
    let body = format!("[{}]", items.join(",")).into_bytes();
    let mut scratch = JsonScratch::new(65536);
    let mut buf = vec![0u8; body.len() + INPUT_PADDING];
    let mut g = c.benchmark_group("json");
    g.throughput(Throughput::Elements(10));
    g.bench_function("parse_batch_10", |b| {
        b.iter(|| {
            buf[..body.len()].copy_from_slice(&body);
            scratch.parse(&mut buf, body.len(), |d| black_box(d.map(|d| d.len()).unwrap_or(0)))
        })
    });
    let mut ids = IdGen::new(0);
    let mut ev = Event::ZERO;
    g.bench_function("parse_and_extract_batch_10", |b| {
        b.iter(|| {
            buf[..body.len()].copy_from_slice(&body);
            scratch.parse(&mut buf, body.len(), |d| {
                for (i, item) in Items::new(d.unwrap()).unwrap().flatten().enumerate() {
                    let view = RequestView {
                        query: b"",
                        headers: &[],
                        host: None,
                        client_ip: "203.0.113.7".parse().unwrap(),
                        now_ns: 1,
                        user_agent: None,
                        json: Some(item),
                        client_id_ignored: false,
                        item: Some(i as u32),
                    };
                    extract(&ty, &view, &mut ids, 0, 0, &mut ev).unwrap();
                }
                black_box(ev.slots[0])
            })
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_extract,
    bench_ring,
    bench_journal,
    bench_latency,
    bench_request_side,
    bench_json
);
criterion_main!(benches);
