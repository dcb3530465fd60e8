//! Crash safety: a torn record is dropped at restart and appends continue after it; a bad record
//! with data after it is left in place and the writer moves to a new segment; with
//! `ack = "logged"` every acknowledged event survives `kill -9`.

use crate::harness::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The state word (`running`, `clean`) of a shard's `writer.state`.
fn writer_state(journal: &std::path::Path, shard: &str) -> String {
    let text = std::fs::read_to_string(journal.join(shard).join("writer.state")).unwrap();
    text.split_whitespace().nth(1).unwrap_or_default().to_string()
}

/// Makes a shard's `writer.state` say what a `kill -9` leaves (`running`, in this boot) instead of
/// the clean stop the test made: a record cut mid-copy comes only from a writer that died.
fn as_if_killed(journal: &std::path::Path, shard: &str) {
    let path = journal.join(shard).join("writer.state");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("clean  "), "{text:?}");
    std::fs::write(&path, text.replacen("clean  ", "running", 1)).unwrap();
}

fn first_segment(journal: &std::path::Path) -> std::path::PathBuf {
    journal.join("shard-000").join(format!("{:020}.seg", 1))
}

/// Serves pixels `/i?c=1` to `c=5` on one shard and stops; then lets `damage` change the bytes
/// of segment 1 (given the record area's offset), marks the stop as a kill when `killed`, and
/// starts a new server on the same journal. Returns it with segment 1's path and its bytes as
/// damaged.
fn five_pixels_then_restart(
    killed: bool,
    damage: impl FnOnce(&mut [u8], usize),
) -> (Server, std::path::PathBuf, Vec<u8>) {
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
    damage(&mut bytes, header);
    std::fs::write(&seg, &bytes).unwrap();
    if killed {
        as_if_killed(&s.journal(), "shard-000");
    }
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    (Server::start_in(dir, None, &["--shards", "1"]), seg, bytes)
}

/// Fires `/i?c=6`, stops the server and returns the campaigns `journal cat` prints, in order
/// (the server's directory lives as long as `s`).
fn sixth_pixel_then_campaigns(s: &mut Server) -> Vec<u64> {
    let mut c = s.connect();
    assert_eq!(c.get("/i?c=6").status, 200);
    assert_eq!(s.stop(), 0);
    let ev = journal_cat(&s.journal());
    ev.iter().map(|e| e["campaign_id"].as_u64().unwrap()).collect()
}

#[test]
fn a_record_cut_in_the_middle_is_dropped_and_appends_continue_after_it() {
    let fifth = |header: usize| header + 4 * 512;
    let (mut s, seg, _) = five_pixels_then_restart(true, |bytes, header| {
        // Simulate a crash mid-copy of record 5: its second half never reached the page cache.
        let fifth = fifth(header);
        assert_ne!(bytes[fifth + 4..fifth + 6], [0, 0], "record 5 is written");
        bytes[fifth + 256..fifth + 512].fill(0);
    });
    assert!(
        s.startup
            .iter()
            .any(|l| l.contains("journal segment 1 had a torn tail: 1 records (")
                && l.contains("dropped, 4 intact kept")),
        "startup: {:?}",
        s.startup
    );
    assert_eq!(sixth_pixel_then_campaigns(&mut s), [1, 2, 3, 4, 6]);
    // The new record went right after the fourth, in the same segment.
    let bytes = std::fs::read(&seg).unwrap();
    let header = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    assert_ne!(bytes[fifth(header) + 4..fifth(header) + 6], [0, 0]);
}

#[test]
fn a_bad_record_with_records_after_it_is_left_in_place_and_new_events_go_to_a_new_segment() {
    // Record 3 damaged in place (records 4 and 5 intact after it): a reader such as a
    // collector may already have delivered 4 and 5 and moved its cursor past them.
    let (mut s, seg, bytes) = five_pixels_then_restart(false, |bytes, header| bytes[header + 2 * 512 + 100] ^= 0xff);
    let lines = s.startup.clone();
    assert!(
        lines.iter().any(|l| l.contains("journal starts segment 2") && l.contains("left as is")),
        "startup: {lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("1 bad slot(s) they skip")), "startup: {lines:?}");
    // The bad record is skipped; nothing after it is lost or overwritten.
    assert_eq!(sixth_pixel_then_campaigns(&mut s), [1, 2, 4, 5, 6]);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "segment 1 is as it was");
    // `journal cat` says on stderr what it skipped, naming the file.
    let out =
        std::process::Command::new(BIN).args(["journal", "cat", "--journal-dir"]).arg(s.journal()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("journal cat: journal: read record") && err.contains("00000000000000000001.seg"), "{err}");
    assert!(err.contains("skipped 1 bad record(s) and 0 bad segment(s)"), "{err}");
    assert_eq!(out.status.code(), Some(0));
    // --strict: the same read, and an exit status a script can test.
    let strict = std::process::Command::new(BIN)
        .args(["journal", "cat", "--strict", "--journal-dir"])
        .arg(s.journal())
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(3));
    assert_eq!(strict.stdout, out.stdout);
}

/// One bad byte in a segment's header used to hide all of its events (the schema that decodes
/// them is there): the header is written twice, and the second copy stands in for the first.
#[test]
fn a_damaged_header_is_read_from_its_copy_and_rewritten_at_restart_losing_nothing() {
    let (mut s, seg, damaged) = five_pixels_then_restart(false, |bytes, header| {
        assert_eq!(bytes[..header / 2], bytes[header / 2..header], "the header is there twice");
        bytes[70] ^= 0x20; // a byte of the first copy's schema JSON: only its CRC can tell
    });
    let header = u32::from_le_bytes(damaged[12..16].try_into().unwrap()) as usize;
    // `journal cat` of the segment as damaged (the server has repaired its own file by now):
    // every event, and a line naming the file and the copy it read.
    let scratch = tempfile::tempdir().unwrap();
    std::fs::create_dir(scratch.path().join("shard-000")).unwrap();
    std::fs::write(scratch.path().join("shard-000").join(seg.file_name().unwrap()), &damaged).unwrap();
    let out =
        std::process::Command::new(BIN).args(["journal", "cat", "--journal-dir"]).arg(scratch.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("00000000000000000001.seg: first copy damaged (header CRC32C"), "{err}");
    assert!(err.contains(&format!("read from the second, at offset {}", header / 2)), "{err}");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    // The restarted server rewrote the first copy, said so, and went on in the same segment.
    assert!(
        s.startup.iter().any(|l| l.contains("00000000000000000001.seg: the header's first copy was damaged")
            && l.contains("rewritten from the second")),
        "startup: {:?}",
        s.startup
    );
    assert!(!s.startup.iter().any(|l| l.contains("journal starts segment 2")), "startup: {:?}", s.startup);
    assert_eq!(sixth_pixel_then_campaigns(&mut s), [1, 2, 3, 4, 5, 6]);
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(bytes[..header / 2], bytes[header / 2..header], "both copies good again");
    let out =
        std::process::Command::new(BIN).args(["journal", "cat", "--journal-dir"]).arg(s.journal()).output().unwrap();
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Regression: a last record that went bad after a clean stop was taken for a torn write,
/// zeroed, and the next event written in its place, where a collector that had delivered the
/// record (its cursor past it) never looked again.
#[test]
fn a_last_record_damaged_after_a_clean_stop_is_left_in_place_and_new_events_go_to_a_new_segment() {
    let (mut s, seg, bytes) = five_pixels_then_restart(false, |bytes, header| bytes[header + 4 * 512 + 100] ^= 0xff);
    let lines = s.startup.clone();
    assert!(
        lines.iter().any(|l| l.contains("journal starts segment 2") && l.contains("stopped cleanly")),
        "startup: {lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("torn tail")), "startup: {lines:?}");
    assert_eq!(sixth_pixel_then_campaigns(&mut s), [1, 2, 3, 4, 6]);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "segment 1 is as it was");
}

/// Segment 1 of shard 0 under `root`, written with the writer API: campaigns 1..=3, then a
/// clean stop (`writer.state` says `clean`). Returns the segment's path and where its records
/// start.
fn three_records_then_clean_stop(root: &std::path::Path) -> (std::path::PathBuf, usize) {
    use tracker::event::{Event, EVENT_BYTES};
    use tracker::journal::{ShardJournal, PAGE_BYTES};
    use tracker::schema::{FieldKind, FieldSchema, Schema, TypeSchema, SCHEMA_VERSION};
    let campaign = FieldSchema { name: "campaign_id".into(), kind: FieldKind::U64, slot: 0, offset: 0, max: 0 };
    let schema = Schema {
        version: SCHEMA_VERSION,
        event_bytes: EVENT_BYTES as u32,
        types: vec![TypeSchema { id: 0, name: "impression".into(), fields: vec![campaign] }],
    };
    let (mut j, _) = ShardJournal::open(root, 0, (2 * PAGE_BYTES + 8 * EVENT_BYTES) as u64, &schema).unwrap();
    for c in 1..=3 {
        let mut e = Event::ZERO;
        e.seq = c;
        e.set_slot(0, c);
        j.append(&mut e).unwrap();
    }
    let seg = j.segment_path().to_path_buf();
    j.close_clean().unwrap();
    assert_eq!(writer_state(root, "shard-000"), "clean");
    let bytes = std::fs::read(&seg).unwrap();
    (seg, u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize)
}

/// `tracker journal cat --strict` on `root`: (exit code, campaigns printed, stderr).
fn strict_cat(root: &std::path::Path) -> (Option<i32>, Vec<u64>, String) {
    let out = std::process::Command::new(BIN)
        .args(["journal", "cat", "--strict", "--journal-dir"])
        .arg(root)
        .output()
        .unwrap();
    let campaigns = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["campaign_id"].as_u64().unwrap())
        .collect();
    (out.status.code(), campaigns, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Regression: `journal cat --strict` took a bad last record of the newest segment for a
/// record still being copied even when its writer had stopped cleanly (nothing is written any
/// more), printed the records before it and exited 0, so a script checking the journal after a
/// clean stop never heard of the damage.
#[test]
fn strict_cat_reports_a_last_record_damaged_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (seg, header) = three_records_then_clean_stop(root);
    assert_eq!(strict_cat(root), (Some(0), vec![1, 2, 3], String::new()), "intact: a clean read");

    let third = header + 2 * 512;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[third + 100] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (code, campaigns, err) = strict_cat(root);
    assert_eq!((code, &campaigns[..]), (Some(3), &[1, 2][..]), "{err}");
    assert!(err.contains(&seg.display().to_string()) && err.contains(&format!("offset {third}")), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
    assert!(err.contains("skipped 1 bad record(s) and 0 bad segment(s)"), "{err}");

    // The same bytes while the state says a writer is running (or was killed mid-copy): the
    // record may still be being written, so it is not damage, and the read is clean so far.
    as_if_killed(root, "shard-000");
    assert_eq!(strict_cat(root), (Some(0), vec![1, 2], String::new()));
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

    // Killed: each shard's journal still says its writer runs (in this boot, so the restart
    // below may append to the last segments).
    for shard in ["shard-000", "shard-001"] {
        assert_eq!(writer_state(&s.journal(), shard), "running");
    }
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, None, &["--shards", "2"]);
    assert_eq!(s.stop(), 0);
    for shard in ["shard-000", "shard-001"] {
        assert_eq!(writer_state(&s.journal(), shard), "clean", "a SIGTERM stop is recorded as clean");
    }
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

#[test]
fn a_torn_tail_is_logged_against_its_own_segment_when_a_new_schema_starts_another() {
    let mut s = Server::start(None, &["--shards", "1"]);
    let mut c = s.connect();
    for i in 1..=3 {
        assert_eq!(c.get(&format!("/i?c={i}")).status, 200);
    }
    assert_eq!(s.stop(), 0);
    // A crash mid-copy of record 3: its second half never reached the page cache.
    let seg = first_segment(&s.journal());
    let header = u32::from_le_bytes(std::fs::read(&seg).unwrap()[12..16].try_into().unwrap()) as u64;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 256], header + 2 * 512 + 256).unwrap();
    as_if_killed(&s.journal(), "shard-000");
    // Restarted with another schema (impression's creative_id renamed): events go to segment 2,
    // while the torn record was dropped from segment 1.
    let old = r#"{ name = "creative_id",   source = "query.cr",  type = "u64" },"#;
    let cfg = tracker::config::DEFAULT_TOML.replacen(old, &old.replace("creative_id", "creative"), 1);
    assert_ne!(cfg, tracker::config::DEFAULT_TOML);
    let dir = std::mem::replace(&mut s.dir, tempfile::tempdir().unwrap());
    drop(s);
    let mut s = Server::start_in(dir, Some(&cfg), &["--shards", "1"]);
    let lines = s.startup.clone();
    assert!(lines.iter().any(|l| l.contains("journal starts segment 2: schema changed")), "startup: {lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("journal segment 1 had a torn tail: 1 records (")
                && l.contains("dropped, 2 intact kept")),
        "startup: {lines:?}"
    );
    assert_eq!(s.stop(), 0);
}
