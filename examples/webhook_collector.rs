//! An example collector plugin: POSTs each batch as JSON lines to a webhook.
//!
//! It uses only the public Collector API, exactly like the built-in kinds: a type implementing
//! [`Collector`], a factory reading its `[collector.options]`, and a build of the tracker that
//! registers the kind. Run it like `tracker serve`:
//!
//! ```sh
//! cargo run --example webhook_collector -- --config my.toml
//! ```
//! with, in my.toml:
//! ```toml
//! [[collector]]
//! name = "hook"
//! kind = "webhook"
//! events = ["click", "conversion"]      # or "all"
//! fields = ["campaign_id", "value"]     # nothing else leaves the process
//! linger_ms = 200
//! [collector.options]
//! url = "http://127.0.0.1:9200/events"
//! ```
//! See docs/collectors.md.

use std::process::ExitCode;
use std::time::Duration;

use tracker::collector::http::{request, Url};
use tracker::collector::{Batch, Collector, Delivery, Options, Registry};
use tracker::config::Config;

/// Delivers a batch as one `POST` of JSON lines; the batch key goes in `Idempotency-Key` so the
/// receiver can drop a batch it already has (a retry or a replay sends the same key).
pub struct Webhook {
    url: Url,
    timeout: Duration,
    body: String,
}

/// Reads `url` (required) and `timeout_ms` (default 5000). Errors are reported with the file,
/// line and key by the framework; unknown options are refused.
pub fn webhook_factory(o: &mut Options) -> Result<Box<dyn Collector>, String> {
    let url = Url::parse(&o.string("url")).map_err(|e| format!("url: {e}"))?;
    let timeout = Duration::from_millis(o.u64("timeout_ms", 5000, 10, 600_000));
    Ok(Box::new(Webhook { url, timeout, body: String::new() }))
}

impl Collector for Webhook {
    fn deliver(&mut self, batch: &Batch) -> Delivery {
        self.body.clear();
        for e in &batch.events {
            // Only the envelope and the allowlisted fields are in `e`.
            e.write_json(&mut self.body);
            self.body.push('\n');
        }
        let headers = [("Content-Type", "application/x-ndjson"), ("Idempotency-Key", batch.key.as_str())];
        match request(&self.url, "POST", "", &headers, self.body.as_bytes(), self.timeout) {
            Ok(r) if (200..300).contains(&r.status) => Delivery::Acked,
            Ok(r) if r.status == 429 || r.status >= 500 => Delivery::Retry(format!("webhook answered {}", r.status)),
            Ok(r) => Delivery::Fatal(format!("webhook refused the batch with {}", r.status)),
            Err(e) => Delivery::Retry(e),
        }
    }
}

/// The built-in kinds plus "webhook".
pub fn registry() -> Registry {
    let mut r = Registry::builtin();
    r.register("webhook", webhook_factory);
    r
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let cfg = match args.iter().position(|a| a == "--config").and_then(|i| args.get(i + 1)) {
        Some(path) => match Config::load(std::path::Path::new(path)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        None => Config::embedded(),
    };
    let running = match tracker::runtime::start(cfg.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tracker: {e}");
            return ExitCode::from(1);
        }
    };
    let forwarders = match tracker::collector::start(&cfg, &registry()) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tracker: collectors: {e}");
            running.stop();
            running.wait();
            return ExitCode::from(2);
        }
    };
    eprintln!("tracker: listening on {} (with the webhook collector kind)", running.addr());
    let stop = running.stopper();
    let mut signals =
        match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("signals: {e}");
                return ExitCode::from(1);
            }
        };
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stop();
        }
    });
    running.wait();
    forwarders.stop();
    forwarders.join(Duration::from_secs(10));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A webhook that records each request body; answers 503 to the first to exercise retry.
    fn hook() -> (String, mpsc::Receiver<(String, String)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/events", l.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let mut s = s.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let k = s.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..k]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
                            .unwrap_or(0);
                        break (p + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let k = s.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..k]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let key = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Idempotency-Key: ").map(str::to_string))
                    .unwrap_or_default();
                if n == 0 {
                    let _ = s.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
                    continue;
                }
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
                let _ = tx.send((key, String::from_utf8_lossy(&buf[head_end..]).to_string()));
            }
        });
        (url, rx)
    }

    #[test]
    fn webhook_gets_only_clicks_fields_it_may_see_once_acknowledged() {
        let (url, rx) = hook();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[[collector]]\nname = \"hook\"\nkind = \"webhook\"\nevents = [\"conversion\"]\nfields = [\"campaign_id\", \"value\"]\nlinger_ms = 20\nretry_initial_ms = 10\n[collector.options]\nurl = \"{url}\"\n",
            tracker::config::DEFAULT_TOML
        );
        let mut cfg = Config::parse(&text, "t.toml").unwrap();
        cfg.server.listen = "127.0.0.1:0".parse().unwrap();
        cfg.server.shards = 1;
        cfg.journal.dir = dir.path().join("journal");
        cfg.journal.segment_bytes = 1 << 20;
        let running = tracker::runtime::start(cfg.clone()).unwrap();
        let fwd = tracker::collector::start(&cfg, &registry()).unwrap();
        let mut s = std::net::TcpStream::connect(running.addr()).unwrap();
        for i in 0..5 {
            s.write_all(format!("GET /i?c={i}&p=1 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
            s.write_all(
                format!("GET /cv?c={i}&value=2.5&order=o{i} HTTP/1.1\r\nHost: t\r\nCookie: uid=secret\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        }
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines.len() < 5 && Instant::now() < deadline {
            if let Ok((key, body)) = rx.recv_timeout(Duration::from_millis(100)) {
                // `<key_prefix>:<collector>:<shard>:...`, the prefix the journal's own.
                let prefix = std::fs::read_to_string(cfg.journal.dir.join("collectors/default_key_prefix")).unwrap();
                assert!(key.starts_with(&format!("{}:hook:0:", prefix.trim_end())), "{key}");
                lines.extend(body.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()));
            }
        }
        assert_eq!(lines.len(), 5, "{lines:?}");
        for l in &lines {
            assert_eq!(l["type"], "conversion");
            assert_eq!(l["value"].as_f64(), Some(2.5));
            assert!(l.get("user_id").is_none() && l.get("order_id").is_none() && l.get("ip").is_none(), "{l}");
        }
        running.stop();
        running.wait();
        fwd.stop();
        assert_eq!(fwd.join(Duration::from_secs(10)), 0);
    }
}
