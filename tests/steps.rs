//! The public preprocessing-step API, used the way a deployment would: a `Step` added in code
//! to the config before `runtime::start`, then requests over TCP and the journal read back.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use tracker::config::{Config, EventType};
use tracker::enrich::step::Step;
use tracker::event::Event;
use tracker::extract::RequestView;

/// Refuses campaign 0 and rewrites the site to lower case in place.
#[derive(Debug)]
struct Tidy;

impl Step for Tidy {
    fn name(&self) -> &str {
        "tidy"
    }
    fn apply(&self, ty: &EventType, _req: &RequestView<'_>, ev: &mut Event) -> Result<(), &'static str> {
        let c = ty.fields.iter().find(|f| f.name == "campaign_id").ok_or("no campaign_id")?;
        if ev.has(c.slot) && ev.slots[c.slot] == 0 {
            return Err("campaign 0 is a placeholder");
        }
        if let Some(s) = ty.fields.iter().find(|f| f.name == "site") {
            if ev.has(s.slot) {
                let n = ev.slots[s.slot] as usize;
                ev.bytes[s.offset..s.offset + n].make_ascii_lowercase();
            }
        }
        Ok(())
    }
}

fn get(s: &mut TcpStream, target: &str) -> (u16, String) {
    s.write_all(format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return (text[9..12].parse().unwrap(), text[end + 4..end + 4 + len].to_string());
            }
        }
    }
}

#[test]
fn a_step_added_in_code_changes_and_refuses_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.shards = 1;
    cfg.server.connections_per_shard_max = 4;
    cfg.journal.dir = dir.path().join("journal");
    cfg.journal.segment_bytes = 1 << 20;
    assert!(cfg.add_step("nope", Arc::new(Tidy)).is_err());
    cfg.add_step("impression", Arc::new(Tidy)).unwrap();
    let running = tracker::runtime::start(cfg).unwrap();
    let mut s = TcpStream::connect(running.addr()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    assert_eq!(get(&mut s, "/i?c=5&site=News.Example.COM").0, 200);
    assert_eq!(get(&mut s, "/i?c=0&site=x"), (400, "step tidy: campaign 0 is a placeholder\n".to_string()));
    // Other types are untouched by it.
    assert_eq!(get(&mut s, "/e?n=signup").0, 204);
    drop(s);
    running.stop();
    // Bounded: a stop that hangs fails the test instead of hanging the suite.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        running.wait();
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the server did not stop within 30 s");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tracker"))
        .args(["journal", "cat", "--journal-dir"])
        .arg(dir.path().join("journal"))
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["site"], "news.example.com");
    assert_eq!(lines[1]["name"], "signup");
}
