//! Crash safety: a torn record is dropped at restart and appends continue after it; a bad record
//! with data after it is left in place and the writer moves to a new segment; with
//! `ack = "logged"` every acknowledged event survives `kill -9`.

use crate::harness::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn first_segment(journal: &std::path::Path) -> std::path::PathBuf {
    journal.join("shard-000").join(format!("{:020}.seg", 1))
}

#[test]
fn a_record_cut_in_the_middle_is_dropped_and_appends_continue_after_it() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for i in 1..=5 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    assert_eq!(s.stop(), 0);
    let seg = first_segment(&s.journal());
    let mut bytes = std::fs::read(&seg).unwrap();
    let header = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    assert_eq!(header % 4096, 0);
    // Simulate a crash mid-copy of record 5: its second half never reached the page cache.
    let fifth = header + 4 * 512;
    assert_ne!(bytes[fifth + 4..fifth + 6], [0, 0], "record 5 is written");
    bytes[fifth + 256..fifth + 512].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, None, &["--shards", "1"]);
    assert!(
        s.startup
            .iter()
            .any(|l| l.contains("journal segment 1 had a torn tail: 1 records (")
                && l.contains("dropped, 4 intact kept")),
        "startup: {:?}",
        s.startup
    );
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=6").status, 200);
    assert_eq!(s.stop(), 0);
    let lines = s.stderr_lines();
    let ev = journal_cat(&s.journal());
    let campaigns: Vec<u64> = ev.iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns, [1, 2, 3, 4, 6], "stderr: {lines:?}");
    // The new record went right after the fourth, in the same segment.
    let bytes = std::fs::read(&seg).unwrap();
    assert_ne!(bytes[fifth + 4..fifth + 6], [0, 0]);
}

#[test]
fn a_bad_record_with_records_after_it_is_left_in_place_and_new_events_go_to_a_new_segment() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for i in 1..=5 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    assert_eq!(s.stop(), 0);
    let seg = first_segment(&s.journal());
    let mut bytes = std::fs::read(&seg).unwrap();
    let header = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    // Record 3 damaged in place (records 4 and 5 intact after it): a reader such as a
    // collector may already have delivered 4 and 5 and moved its cursor past them.
    let third = header + 2 * 512;
    bytes[third + 100] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, None, &["--shards", "1"]);
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=6").status, 200);
    assert_eq!(s.stop(), 0);
    let lines = s.startup.clone();
    assert!(
        lines.iter().any(|l| l.contains("journal starts segment 2") && l.contains("left as is")),
        "stderr: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("1 bad slot(s) left in place")), "stderr: {lines:?}");
    // Segment 1 is as it was; the bad record is skipped, nothing after it is lost or overwritten.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
    let ev = journal_cat(&s.journal());
    let campaigns: Vec<u64> = ev.iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect();
    assert_eq!(campaigns, [1, 2, 4, 5, 6], "stderr: {lines:?}");
}

#[test]
fn logged_acks_survive_kill_9_under_load() {
    let mut s = Server::start(None, &["--shards", "2"]);
    let addr = s.addr;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for t in 0..4 {
        let (acked, count, stop) = (acked.clone(), count.clone(), stop.clone());
        clients.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            for i in 0..200_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let order = format!("o{t}-{i}");
                let req = format!("GET /cv?c=9&value=1.25&order={order} HTTP/1.1\r\nHost: t\r\n\r\n");
                if c.stream.write_all_ok(req.as_bytes()).is_err() {
                    break;
                }
                match c.try_read_response_ok() {
                    Some(r) if r.status == 200 => {
                        acked.lock().unwrap().push(order);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(r) => panic!("unexpected status {}", r.status),
                    None => break,
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + WAIT;
    while count.load(Ordering::Relaxed) < 3000 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 1000, "load ran: {} acknowledged", acked.len());

    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, None, &["--shards", "2"]);
    assert_eq!(s.stop(), 0);
    let journaled: HashSet<String> =
        journal_cat(&s.journal()).iter().filter_map(|e| e["order_id"].as_str().map(str::to_string)).collect();
    let lost: Vec<&String> = acked.iter().filter(|o| !journaled.contains(*o)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged conversions lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

trait WriteOk {
    fn write_all_ok(&mut self, b: &[u8]) -> std::io::Result<()>;
}

impl WriteOk for std::net::TcpStream {
    fn write_all_ok(&mut self, b: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(self, b)
    }
}

impl Client {
    /// Like try_read_response, but a reset or error after a kill counts as "no response".
    fn try_read_response_ok(&mut self) -> Option<Response> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_read_response(false))).ok().flatten()
    }
}
