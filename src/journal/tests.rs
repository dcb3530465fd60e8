//! Journal tests with segments shrunk to 4 records, so rotation happens at once.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::segment::{copy_bytes_for, header_bytes_for, read_header, HeaderError, SegmentHeader};
use super::*;
use crate::event::{Event, EVENT_BYTES};
use crate::schema::{FieldKind, FieldSchema, Schema, TypeSchema, SCHEMA_VERSION};

/// Header (two copies, a page each) + 4 records.
const SEG_4: u64 = HDR + 4 * EVENT_BYTES as u64;
/// Header (two copies, a page each) + 8 records.
const SEG_8: u64 = HDR + 8 * EVENT_BYTES as u64;
/// The header of the test schemas: two copies of one page.
const HDR: u64 = 2 * PAGE_BYTES as u64;
const REC: u64 = EVENT_BYTES as u64;

fn field(name: &str, kind: FieldKind, slot: u8, offset: u16, max: u16) -> FieldSchema {
    FieldSchema { name: name.into(), kind, slot, offset, max }
}

fn schema_a() -> Schema {
    Schema {
        version: SCHEMA_VERSION,
        event_bytes: EVENT_BYTES as u32,
        types: vec![TypeSchema {
            id: 0,
            name: "impression".into(),
            fields: vec![
                field("campaign_id", FieldKind::U64, 0, 0, 0),
                field("site", FieldKind::Str, 1, 0, 32),
                field("big", FieldKind::U64, 4, 0, 0),
            ],
        }],
    }
}

/// Schema A with the campaign field renamed: the same slots decode under another name.
fn schema_b() -> Schema {
    let mut s = schema_a();
    s.types[0].fields[0].name = "campaign".into();
    s
}

fn ev(seq: u64) -> Event {
    let mut e = Event::ZERO;
    e.seq = seq;
    e.ts_ns = 1_700_000_000_000_000_000 + seq;
    e.id[0] = seq as u8;
    e.set_slot(0, seq * 10);
    e.set_str(1, 0, 32, format!("site-{seq}").as_bytes());
    e
}

fn seg_file(root: &Path, shard: u16, n: u64) -> std::path::PathBuf {
    segment_path(&shard_dir(root, shard), n)
}

/// Everything the reader has now, as (schema, event) pairs.
fn read_all(r: &mut JournalReader) -> Vec<(Schema, Event)> {
    let mut out = Vec::new();
    let n = r.poll(&mut |s, e| out.push((s.clone(), *e))).unwrap();
    assert_eq!(n as usize, out.len());
    out
}

fn seqs(v: &[(Schema, Event)]) -> Vec<u64> {
    v.iter().map(|(_, e)| e.seq).collect()
}

fn append_seqs(j: &mut ShardJournal, seqs: impl IntoIterator<Item = u64>) {
    for s in seqs {
        j.append(&mut ev(s)).unwrap();
    }
}

/// A fresh journal root whose shard 0 holds records seq 1..=n (schema A, SEG_8 segments),
/// written by a writer that has since been dropped.
fn closed_root(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=n);
    dir
}

fn patch(path: &Path, off: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

fn read_bytes(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0; len];
    fs::File::open(path).unwrap().read_exact_at(&mut b, off).unwrap();
    b
}

#[test]
fn appends_across_rotations_read_back_in_order_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j3, report) = ShardJournal::open(root, 3, SEG_4, &schema_a()).unwrap();
    assert_eq!(report.segment, 1);
    assert_eq!(report.new_segment_reason, Some("no segment in the shard directory yet"));
    append_seqs(&mut j3, 1..=11);
    assert_eq!(j3.segment_number(), 3);
    assert_eq!(j3.records_in_segment(), 3);
    assert_eq!(j3.bytes_written_total(), 3 * HDR + 11 * REC);
    j3.sync().unwrap();
    j3.sync().unwrap(); // nothing new: no-op

    let (mut j0, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j0, 100..=101);

    for n in 1..=3 {
        let p = seg_file(root, 3, n);
        assert_eq!(fs::metadata(&p).unwrap().len(), SEG_4, "{}", p.display());
    }
    assert!(root.join("shard-003/00000000000000000003.seg").exists());
    assert!(!seg_file(root, 3, 4).exists());

    let mut r = JournalReader::open(root).unwrap();
    let got = read_all(&mut r);
    // Shard 0 first, then shard 3, each in append order.
    assert_eq!(seqs(&got), [100, 101, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    for (schema, e) in &got {
        assert_eq!(*schema, schema_a());
        assert!(e.is_sealed_intact());
        assert_eq!(e.slots[0], e.seq * 10);
        assert_eq!(e.str_at(1, 0, 32), format!("site-{}", e.seq).as_bytes());
    }
    let mut json = String::new();
    got[2].0.write_json(&got[2].1, &mut json);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["campaign_id"], 10);
    assert_eq!(v["site"], "site-1");
    assert_eq!(r.corrupt_records() + r.corrupt_segments(), 0);

    let r3 = &mut JournalReader::open_shard(root, 3).unwrap();
    assert_eq!(read_all(r3).len(), 11);
}

#[test]
fn reopen_continues_the_last_segment_after_its_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=2);
    drop(j);
    let (mut j, report) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.torn_records), (1, 2, 0));
    assert_eq!(report.new_segment_reason, None);
    assert_eq!(j.records_in_segment(), 2);
    assert_eq!(j.bytes_written_total(), 0);
    append_seqs(&mut j, [3]);
    let mut r = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3]);

    // Full last segment: reopen moves on.
    append_seqs(&mut j, 4..=8);
    drop(j);
    let (j, report) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records), (2, 8));
    assert_eq!(report.new_segment_reason, Some("last segment is full"));
    assert_eq!(j.bytes_written_total(), HDR);
}

#[test]
fn a_bad_record_followed_by_records_is_left_in_place_and_the_writer_moves_on() {
    let dir = closed_root(5);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    let rec4 = HDR + 3 * REC;
    patch(&path, rec4 + 200, &[0xAB; 8]);

    // A reader before recovery: record 4 is bad but followed by record 5, so it is skipped.
    let mut before = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut before)), [1, 2, 3, 5]);
    assert_eq!(before.corrupt_records(), 1);
    let (warnings, dropped) = before.take_warnings();
    assert_eq!(dropped, 0);
    let msg = warnings[0].to_string();
    assert!(msg.contains("00000000000000000001.seg") && msg.contains(&format!("record 3 at offset {rec4}")), "{msg}");

    // That reader may be a collector whose cursor is now past record 5: writing new events over
    // slots 4 and 5 would make it skip them. The writer leaves segment 1 as it is.
    let seg1 = std::fs::read(&path).unwrap();
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(report.segment, 2);
    assert_eq!((report.records, report.torn_records, report.torn_bytes, report.sealed_bad_records), (4, 0, 0, 1));
    assert!(report.new_segment_reason.unwrap().contains("after a bad or missing record"));
    let detail = report.detail.unwrap();
    assert!(detail.contains("00000000000000000001.seg") && detail.contains("1 bad slot(s)"), "{detail}");
    assert_eq!(std::fs::read(&path).unwrap(), seg1, "segment 1 is not modified");

    append_seqs(&mut j, [42]);
    assert_eq!(seqs(&read_all(&mut before)), [42]);
    let mut fresh = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut fresh)), [1, 2, 3, 5, 42]);
    assert_eq!(fresh.corrupt_records(), 1);
    drop(j);

    // Opened again: segment 2 ends cleanly, so the writer goes on appending to it.
    let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.sealed_bad_records), (2, 1, 0));
    assert_eq!(report.new_segment_reason, None);
}

#[test]
fn records_after_a_zeroed_gap_are_left_in_place_and_the_writer_moves_on() {
    // A power loss can leave an early page unwritten while a later one reached the disk.
    let dir = closed_root(5);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    patch(&path, HDR + 2 * REC, &[0; EVENT_BYTES]);

    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.torn_records, report.sealed_bad_records), (2, 4, 0, 0));
    assert!(report.new_segment_reason.is_some());
    let detail = report.detail.unwrap();
    assert!(detail.contains("4 record(s) readers deliver and 0 bad slot(s)"), "{detail}");
    assert!(detail.contains("(2 of the records after a zeroed gap)"), "{detail}");
    // Nothing was overwritten: records 4 and 5 are still where they were.
    assert_eq!(Event::from_bytes(&read_bytes(&path, HDR + 3 * REC, EVENT_BYTES).try_into().unwrap()).seq, 4);
    append_seqs(&mut j, [42]);
    // A reader goes on past the gap of a segment the writer has left.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 4, 5, 42]);
    assert_eq!(r.corrupt_records(), 0);
}

#[test]
fn a_clean_tail_after_the_prefault_window_is_not_taken_for_data() {
    // The writer zero-fills (pwrite) a window ahead of itself: data to SEEK_DATA, but zeros.
    let dir = closed_root(3);
    let root = dir.path();
    let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.torn_records, report.sealed_bad_records), (1, 3, 0, 0));
    assert_eq!(report.new_segment_reason, None);
}

#[test]
fn data_beyond_the_prefault_window_after_a_hole_is_found() {
    // A segment larger than the zero-filled window: its tail is a hole to SEEK_DATA.
    let seg_bytes = HDR + 4096 * EVENT_BYTES as u64; // 2 MiB of records
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, seg_bytes, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=3);
    drop(j);
    let (j, report) = ShardJournal::open(root, 0, seg_bytes, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.sealed_bad_records), (1, 3, 0), "a clean tail");
    assert_eq!(report.new_segment_reason, None);
    drop(j);
    // A record written back 1.5 MiB in, far past the window, after a gap of zeros.
    let mut e = ev(99);
    e.seal();
    patch(&seg_file(root, 0, 1), HDR + 3072 * REC, e.as_bytes());
    let (_, report) = ShardJournal::open(root, 0, seg_bytes, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.sealed_bad_records), (2, 4, 0));
    assert!(report.detail.unwrap().contains("(1 of the records after a zeroed gap)"));
    // Readers find it too: past the written zeros of the prefault window, then the hole.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3, 99]);
}

#[test]
fn after_a_restart_of_the_machine_without_a_clean_stop_the_last_segment_is_left_as_is() {
    let dir = closed_root(3);
    let root = dir.path();
    // A torn fourth record, and a state file from another boot that never stopped cleanly.
    let path = seg_file(root, 0, 1);
    patch(&path, HDR + 3 * REC, &ev(4).as_bytes()[..100]);
    let state = root.join("shard-000").join("writer.state");
    std::fs::write(&state, "another-boot running\n").unwrap();
    let seg1 = std::fs::read(&path).unwrap();

    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.torn_records), (2, 3, 0));
    assert!(report.new_segment_reason.unwrap().contains("machine restarted"));
    assert_eq!(std::fs::read(&path).unwrap(), seg1, "nothing zeroed or overwritten");
    append_seqs(&mut j, [5]);
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3, 5]);

    // A clean stop makes the tail trusted again, whatever boot the next open is in.
    j.close_clean().unwrap();
    let text = std::fs::read_to_string(&state).unwrap();
    std::fs::write(&state, text.replace(text.split_whitespace().next().unwrap(), "another-boot")).unwrap();
    let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records), (2, 1));
    assert_eq!(report.new_segment_reason, None);
}

#[test]
fn all_zero_checks_every_byte() {
    let mut b = vec![0u8; 4096 + 13];
    assert!(super::segment::all_zero(&b));
    assert!(super::segment::all_zero(&[]));
    for i in [0, 63, 64, 4095, 4096, 4108] {
        b[i] = 1;
        assert!(!super::segment::all_zero(&b), "byte {i}");
        b[i] = 0;
    }
}

#[test]
fn partially_copied_last_record_waits_in_the_reader_and_is_dropped_by_recovery() {
    let dir = closed_root(3);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    let mut e = ev(4);
    e.set_slot(4, u64::MAX); // bytes 96..104: byte 99 is not zero
    e.seal();
    patch(&path, HDR + 3 * REC, &e.as_bytes()[..100]);

    // The reader takes it for a record being written: not delivered, not corrupt.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3]);
    assert_eq!(read_all(&mut r).len(), 0);
    assert_eq!(r.corrupt_records(), 0);

    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.records, report.torn_records, report.torn_bytes), (3, 1, 100));
    append_seqs(&mut j, [4]);
    assert_eq!(seqs(&read_all(&mut r)), [4]);
    assert_eq!(r.corrupt_records(), 0);
}

#[test]
fn schema_change_on_reopen_starts_a_new_segment_and_each_decodes_with_its_own() {
    let dir = closed_root(2);
    let root = dir.path();
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_b()).unwrap();
    assert_eq!(report.segment, 2);
    assert_eq!(report.records, 2);
    assert_eq!(report.new_segment_reason, Some("schema changed since the last segment was written"));
    append_seqs(&mut j, 3..=4);

    let mut r = JournalReader::open(root).unwrap();
    let got = read_all(&mut r);
    assert_eq!(seqs(&got), [1, 2, 3, 4]);
    let names: Vec<String> = got
        .iter()
        .map(|(s, e)| {
            let mut json = String::new();
            s.write_json(e, &mut json);
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            let key = if v.get("campaign_id").is_some() { "campaign_id" } else { "campaign" };
            assert_eq!(v[key], e.seq * 10);
            key.to_string()
        })
        .collect();
    assert_eq!(names, ["campaign_id", "campaign_id", "campaign", "campaign"]);
}

#[test]
fn corrupt_header_is_skipped_with_a_warning_by_the_reader_and_set_aside_by_the_writer() {
    let dir = closed_root(2);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    // One byte of the embedded schema, in both copies: only the header CRC can tell.
    for copy in [0, PAGE_BYTES as u64] {
        let at = copy + HEADER_FIXED_BYTES as u64 + 2;
        let b = read_bytes(&path, at, 1)[0];
        patch(&path, at, &[b ^ 0x20]);
    }

    // Reader: skips the segment, names the file and the check that failed.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(read_all(&mut r).len(), 0);
    assert_eq!(r.corrupt_segments(), 1);
    let (warnings, _) = r.take_warnings();
    let msg = warnings[0].to_string();
    assert!(msg.starts_with(&format!("journal: read header {}: header CRC32C", path.display())), "{msg}");
    assert!(msg.ends_with("segment skipped"), "{msg}");

    // Writer: renames it and goes on in segment 2.
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(report.segment, 2);
    assert_eq!(report.new_segment_reason, Some("last segment's header fails its CRC; renamed to .corrupt"));
    assert!(report.detail.unwrap().contains("00000000000000000001.seg.corrupt"));
    assert!(!path.exists());
    assert!(root.join("shard-000/00000000000000000001.seg.corrupt").exists());
    append_seqs(&mut j, [3]);
    assert_eq!(seqs(&read_all(&mut r)), [3]);
    let mut fresh = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut fresh)), [3]);
    assert_eq!(fresh.corrupt_segments(), 0);

    // The .corrupt number is never reused, even once segment 2 is gone.
    drop(j);
    fs::remove_file(seg_file(root, 0, 2)).unwrap();
    let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(report.segment, 2);
}

/// `end` is where the next record goes: what collectors stopping with this process stop at.
#[test]
fn end_is_the_next_slot_of_the_active_segment_across_rotation_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(j.end(), (1, 0));
    append_seqs(&mut j, 1..=3);
    assert_eq!(j.end(), (1, 3));
    append_seqs(&mut j, 4..=10);
    assert_eq!(j.end(), (2, 2), "8 records fill segment 1");
    drop(j);
    let (j, _) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(j.end(), (2, 2), "resumed after its last record");
}

/// A rollback: the last segment was written by a later tracker, in a format version this build
/// does not read. Not damage: the writer leaves it where it is for that build (it used to be set
/// aside as .corrupt, where no reader looks) and goes on in the next segment.
#[test]
fn a_last_segment_of_a_newer_format_is_left_in_place_by_the_writer() {
    let dir = closed_root(2);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    for copy in [0, PAGE_BYTES as u64] {
        patch(&path, copy + 8, &(FORMAT_VERSION + 1).to_le_bytes());
    }
    let before = fs::read(&path).unwrap();

    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(report.segment, 2);
    assert_eq!(report.new_segment_reason, Some("last segment was written by a newer tracker; left as is"));
    let detail = report.detail.unwrap();
    assert!(detail.contains(&format!("format version {}", FORMAT_VERSION + 1)), "{detail}");
    assert_eq!(fs::read(&path).unwrap(), before, "not a byte changed");
    assert!(!root.join("shard-000/00000000000000000001.seg.corrupt").exists());
    append_seqs(&mut j, [3]);
    drop(j);
    // The next start resumes its own segment, not the newer one.
    let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.new_segment_reason), (2, 1, None));
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn follow_returns_only_new_records_across_rotations_and_new_shards() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(read_all(&mut r).len(), 0);
    append_seqs(&mut j, 1..=3);
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3]);
    assert_eq!(read_all(&mut r).len(), 0);
    // Fills segment 1 exactly, then two more rotations.
    append_seqs(&mut j, 4..=10);
    assert_eq!(j.segment_number(), 3);
    assert_eq!(seqs(&read_all(&mut r)), [4, 5, 6, 7, 8, 9, 10]);
    append_seqs(&mut j, [11]);
    assert_eq!(seqs(&read_all(&mut r)), [11]);

    let (mut j7, _) = ShardJournal::open(root, 7, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j7, [70]);
    append_seqs(&mut j, [12]);
    assert_eq!(seqs(&read_all(&mut r)), [12, 70]);
    assert_eq!(read_all(&mut r).len(), 0);
    assert_eq!(r.corrupt_records() + r.corrupt_segments(), 0);
}

/// Regression: a follower that fell behind while retention deleted a segment after the one it
/// was reading went on at the next segment left without a word, so `journal cat --follow` lost
/// that segment's events silently. The jump is now a warning naming the segment; a journal
/// whose first segments were deleted before the reader started is not one.
#[test]
fn a_follower_is_told_of_a_segment_deleted_before_it_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=5);
    fs::remove_file(seg_file(root, 0, 1)).unwrap();
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [5]);
    assert!(r.take_warnings().0.is_empty(), "segments deleted before the reader started are no gap");
    // Segment 2 ends with 8; 9..=12 fill segment 3, 13 starts segment 4.
    append_seqs(&mut j, 6..=13);
    assert_eq!(j.segment_number(), 4);
    fs::remove_file(seg_file(root, 0, 3)).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [6, 7, 8, 13]);
    let (warnings, _) = r.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let said = warnings[0].to_string();
    assert!(said.contains("segment 3 was deleted before it was read"), "{said}");
}

#[test]
fn sync_covers_the_segment_left_at_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=6); // rotation with 4 unsynced in segment 1
    j.sync().unwrap();
    append_seqs(&mut j, 7..=14); // two rotations between syncs
    j.sync().unwrap();
    let mut r = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..=14).collect::<Vec<_>>());
}

#[test]
fn writeback_starts_in_whole_pages_below_the_write_position_and_loses_nothing() {
    use super::segment::WRITEBACK_STEP;
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, 8 << 20, &schema_a()).unwrap();
    let header = j.released_off();
    let per_page = (PAGE_BYTES / EVENT_BYTES) as u64;
    let per_step = (WRITEBACK_STEP / EVENT_BYTES) as u64;
    // One record short of a step past the header: nothing starts.
    append_seqs(&mut j, 1..per_step);
    j.start_writeback();
    assert_eq!(j.released_off(), header);
    // Part of a page more than a step: the whole pages start, the page being written does not.
    append_seqs(&mut j, per_step..per_step + per_page / 2);
    j.start_writeback();
    assert_eq!(j.released_off(), header + WRITEBACK_STEP);
    // Appends go on into the page under the write position and the pages after it.
    let last = 3 * per_step + per_page / 2;
    append_seqs(&mut j, per_step + per_page / 2..=last);
    j.start_writeback();
    assert_eq!(j.released_off(), header + 3 * WRITEBACK_STEP);
    // Less than a step more waits; the sync writes it but leaves it to the next step, which
    // starts where the last one ended.
    append_seqs(&mut j, last + 1..=last + 2 * per_page);
    j.start_writeback();
    assert_eq!(j.released_off(), header + 3 * WRITEBACK_STEP);
    j.sync().unwrap();
    assert_eq!(j.released_off(), header + 3 * WRITEBACK_STEP);
    let more = last + 2 * per_page + per_step;
    append_seqs(&mut j, last + 2 * per_page + 1..=more);
    j.start_writeback();
    assert_eq!(j.released_off(), header + 4 * WRITEBACK_STEP + 2 * PAGE_BYTES);
    let mut r = JournalReader::open(dir.path()).unwrap();
    let got = read_all(&mut r);
    assert_eq!(seqs(&got), (1..=more).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, e)| e.slots[0] == e.seq * 10 && e.is_sealed_intact()));
}

/// A temporary directory on the filesystem holding the source tree, for tests of page-cache
/// residency: on tmpfs (a common /tmp) pages cannot leave the cache, which those tests assert.
fn disk_tempdir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs into a zeroed struct we own, on a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0, "statfs {}", dir.path().display());
    assert_ne!(
        st.f_type,
        libc::TMPFS_MAGIC,
        "{} is on tmpfs, whose pages never leave the cache: these tests need a disk filesystem",
        dir.path().display()
    );
    dir
}

/// How many of the pages of `path` in `[from, to)` are in the page cache, of how many
/// (`mincore` of a fresh map of a file this process owns: it reports the cache, not this map's
/// page tables).
fn cached_pages(path: &Path, from: usize, to: usize) -> (usize, usize) {
    let file = fs::File::open(path).unwrap();
    // SAFETY: a read-only map of a file this test owns; nothing reads through it.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let mut vec = vec![0u8; (to - from).div_ceil(PAGE_BYTES)];
    // SAFETY: the range lies inside the live map, page-aligned at `from`; `vec` holds one byte
    // per page of it.
    let rc = unsafe { libc::mincore(map.as_ptr().add(from) as *mut libc::c_void, to - from, vec.as_mut_ptr()) };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    (vec.iter().filter(|b| *b & 1 == 1).count(), vec.len())
}

/// A journal on a disk filesystem whose segments hold 64 WRITEBACK_STEPs, with the path of its
/// first segment: the page-cache tests' start.
fn journal_of_64_steps() -> (tempfile::TempDir, ShardJournal, std::path::PathBuf) {
    let dir = disk_tempdir();
    let seg_bytes = (64 * super::segment::WRITEBACK_STEP) as u64;
    let (j, _) = ShardJournal::open(dir.path(), 0, seg_bytes, &schema_a()).unwrap();
    let path = j.segment_path().to_path_buf();
    (dir, j, path)
}

/// Appends one WRITEBACK_STEP of records (numbered on from `next`), then releases it as the
/// drain does: `interval` starts its writeback, `always` msyncs it first.
struct StepWriter {
    next: u64,
    start_writeback: bool,
}

impl StepWriter {
    fn step(&mut self, j: &mut ShardJournal) {
        let per_step = (super::segment::WRITEBACK_STEP / EVENT_BYTES) as u64;
        append_seqs(j, self.next..self.next + per_step);
        self.next += per_step;
        if self.start_writeback {
            j.start_writeback();
        } else {
            j.sync().unwrap();
            j.unmap_written();
        }
    }
}

#[test]
fn written_pages_leave_the_page_cache_behind_the_kept_window_and_stay_readable() {
    use super::segment::{CACHE_KEPT_BYTES, WRITEBACK_STEP};
    // `interval` (writeback started step by step) and `always` (msynced, then unmapped).
    for start_writeback in [true, false] {
        let dir = disk_tempdir();
        let seg_bytes = (CACHE_KEPT_BYTES + 8 * WRITEBACK_STEP) as u64;
        let (mut j, _) = ShardJournal::open(dir.path(), 0, seg_bytes, &schema_a()).unwrap();
        let path = j.segment_path().to_path_buf();
        let header = j.released_off();
        let mut w = StepWriter { next: 1, start_writeback };
        // Past the kept window by two steps, then every page clean (written back).
        let steps_kept = CACHE_KEPT_BYTES / WRITEBACK_STEP;
        for _ in 0..steps_kept + 2 {
            w.step(&mut j);
        }
        j.sync().unwrap();
        // The next step drops the step below the kept window, now surely clean (the one
        // before it was dropped while its writeback may still have been running): those pages
        // leave the cache.
        let released = j.released_off();
        w.step(&mut j);
        let (gone_from, gone_to) = (released - WRITEBACK_STEP - CACHE_KEPT_BYTES, released - CACHE_KEPT_BYTES);
        assert!(header < gone_from);
        let (cached, pages) = cached_pages(&path, gone_from, gone_to);
        assert_eq!(cached, 0, "still cached: {cached} of {pages} pages");
        // The kept window, which collectors read right behind the writer, is still cached.
        let (cached, pages) = cached_pages(&path, gone_to, released);
        assert_eq!(cached, pages, "dropped from the window: {} of {pages}", pages - cached);
        // Every record is still there, read back from the disk where it left the cache.
        j.sync().unwrap();
        let mut r = JournalReader::open(dir.path()).unwrap();
        assert_eq!(seqs(&read_all(&mut r)), (1..w.next).collect::<Vec<_>>(), "start_writeback {start_writeback}");
    }
}

#[test]
fn a_segment_left_at_rotation_leaves_the_page_cache_once_the_next_keeps_its_own_window() {
    use super::segment::{CACHE_KEPT_BYTES, WRITEBACK_STEP};
    for start_writeback in [true, false] {
        let dir = disk_tempdir();
        let seg_bytes = (CACHE_KEPT_BYTES + 4 * WRITEBACK_STEP) as u64;
        let (mut j, _) = ShardJournal::open(dir.path(), 0, seg_bytes, &schema_a()).unwrap();
        let first = j.segment_path().to_path_buf();
        let mut w = StepWriter { next: 1, start_writeback };
        while j.segment_number() == 1 {
            w.step(&mut j);
        }
        // The interval sync writes the segment left at rotation; until then it stays cached.
        j.sync().unwrap();
        let len = fs::metadata(&first).unwrap().len() as usize;
        assert!(cached_pages(&first, 0, len).0 > 0, "the left segment's tail is cached");
        while j.released_off() <= CACHE_KEPT_BYTES + WRITEBACK_STEP {
            w.step(&mut j);
        }
        let (cached, pages) = cached_pages(&first, 0, len);
        assert_eq!(cached, 0, "still cached: {cached} of {pages} pages");
        j.sync().unwrap();
        let mut r = JournalReader::open(dir.path()).unwrap();
        assert_eq!(seqs(&read_all(&mut r)), (1..w.next).collect::<Vec<_>>(), "start_writeback {start_writeback}");
    }
}

#[test]
fn a_resumed_segments_recovered_records_leave_the_page_cache_too() {
    use super::segment::{CACHE_KEPT_BYTES, WRITEBACK_STEP};
    let (dir, mut j, path) = journal_of_64_steps();
    let mut w = StepWriter { next: 1, start_writeback: false };
    for _ in 0..20 {
        w.step(&mut j);
    }
    j.close_clean().unwrap();
    // Resumed after a clean stop: the recovery scan reads every record through the new map.
    let seg_bytes = (64 * super::segment::WRITEBACK_STEP) as u64;
    let (mut j, _) = ShardJournal::open(dir.path(), 0, seg_bytes, &schema_a()).unwrap();
    assert_eq!(j.segment_path(), path, "the segment is resumed");
    // A step hands back at most 4 MiB (`DROP_STEP_MAX`): the 12 MiB below the window take three.
    for _ in 0..3 {
        w.step(&mut j);
    }
    let below = 20 * WRITEBACK_STEP - CACHE_KEPT_BYTES;
    let (cached, pages) = cached_pages(&path, 0, below);
    assert_eq!(cached, 0, "recovered pages still cached: {cached} of {pages}");
    j.sync().unwrap();
    let mut rd = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut rd)), (1..w.next).collect::<Vec<_>>());
}

#[test]
fn after_a_failed_sync_no_page_leaves_the_cache() {
    use super::segment::{CACHE_KEPT_BYTES, FAIL_MSYNC, WRITEBACK_STEP};
    let (_dir, mut j, path) = journal_of_64_steps();
    let mut w = StepWriter { next: 1, start_writeback: true };
    w.step(&mut j);
    // A page whose writeback failed stays clean in the cache, the only good copy of its
    // records: once a sync has failed, nothing is handed back.
    FAIL_MSYNC.set(true);
    assert!(j.sync().is_err());
    FAIL_MSYNC.set(false);
    let steps_kept = CACHE_KEPT_BYTES / WRITEBACK_STEP;
    for _ in 0..steps_kept + 4 {
        w.step(&mut j);
    }
    let (cached, pages) = cached_pages(&path, 0, 3 * WRITEBACK_STEP);
    assert_eq!(cached, pages, "dropped after a failed sync: {} of {pages}", pages - cached);
}

#[test]
fn under_interval_only_pages_a_sync_covered_leave_the_cache() {
    use super::segment::{CACHE_KEPT_BYTES, WRITEBACK_STEP};
    let (_dir, mut j, path) = journal_of_64_steps();
    // Records from the first whole page after the header (which the segment's making handles).
    let first = j.released_off().next_multiple_of(PAGE_BYTES);
    // `interval`: writeback started step by step, and no sync yet. Far past the kept window,
    // every page stays: its writeback may have failed, which only a sync would say, and a page
    // whose writeback failed is the only good copy of its records.
    let mut w = StepWriter { next: 1, start_writeback: true };
    let steps_kept = CACHE_KEPT_BYTES / WRITEBACK_STEP;
    for _ in 0..steps_kept + 8 {
        w.step(&mut j);
    }
    let (cached, pages) = cached_pages(&path, first, 6 * WRITEBACK_STEP);
    assert_eq!(cached, pages, "dropped before any sync: {} of {pages}", pages - cached);
    // A background sync, as the drain runs it; then the next steps hand those pages back.
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    background_outcome(&mut j).unwrap();
    for _ in 0..4 {
        w.step(&mut j);
    }
    let (cached, pages) = cached_pages(&path, first, 6 * WRITEBACK_STEP);
    assert_eq!(cached, 0, "still cached after the sync: {cached} of {pages}");
}

/// The outcome of the background sync `j` runs, once it has finished (bounded wait).
fn background_outcome(j: &mut ShardJournal) -> Result<(), JournalError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(r) = j.background_sync_done() {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "the background sync did not finish in 30 s");
        std::thread::yield_now();
    }
}

/// A background sync that could not be handed over because the sync thread held its lock at
/// that instant is a skip (None: the drain keeps its records to sync and tries again in 10 ms),
/// not a sync started (which would have the drain wait a whole interval, or for good on a
/// shard gone quiet).
#[test]
fn a_background_sync_skipped_for_the_threads_lock_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..2);
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    background_outcome(&mut j).unwrap();
    append_seqs(&mut j, 2..3);
    let shared = j.sync_thread_shared().expect("the sync thread runs");
    let held = shared.lock();
    assert!(j.sync_in_background().is_none(), "a sync that could not be handed over was reported started");
    drop(held);
    // The thread may take its lock a moment on its way to wait for a job: tried until handed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let started = loop {
        if let Some(r) = j.sync_in_background() {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "not handed over within 30 s");
        std::thread::yield_now();
    };
    assert!(started.is_ok());
    background_outcome(&mut j).unwrap();
    assert_eq!(j.syncs(), 2);
    let mut r = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), vec![1, 2]);
}

#[test]
fn a_background_sync_covers_the_segment_left_at_rotation_and_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let seg_bytes = HDR + 16 * EVENT_BYTES as u64;
    let (mut j, _) = ShardJournal::open(dir.path(), 0, seg_bytes, &schema_a()).unwrap();
    // Past one rotation: segment 1 is left unsynced, segment 2 is active with records in it.
    let mut next = 1u64;
    while j.segment_number() == 1 {
        append_seqs(&mut j, next..next + 1);
        next += 1;
    }
    append_seqs(&mut j, next..next + 3);
    next += 3;
    let (synced, written) = j.synced_and_written();
    assert!(synced < written);
    assert!(matches!(j.sync_in_background(), Some(Ok(()))), "nothing ran before: Ok at once");
    // The drain goes on appending meanwhile; those records wait for the next sync.
    append_seqs(&mut j, next..next + 2);
    next += 2;
    background_outcome(&mut j).unwrap();
    let (synced_now, written_now) = j.synced_and_written();
    assert_eq!((synced_now, written_now), (written, written + 2 * EVENT_BYTES));
    assert!(j.background_sync_done().is_none(), "an outcome is given once");
    // With nothing new in the left segment and the directory durable, only the active tail is left.
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    background_outcome(&mut j).unwrap();
    assert_eq!(j.synced_and_written(), (written_now, written_now));
    j.close_clean().unwrap();
    let mut r = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..next).collect::<Vec<_>>());
}

/// Threads of this process named `name` (`/proc/self/task/*/comm`, 15 bytes at most), by tid.
fn threads_named(name: &str) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim_end() == name).then(|| t.file_name().to_str()?.parse().ok())?
        })
        .collect();
    tids.sort();
    tids
}

#[test]
fn one_sync_thread_serves_every_background_sync_and_ends_with_its_writer() {
    // A shard number no other test uses: the thread's name is this test's own.
    const SHARD: u16 = 97;
    let name = format!("tracker-sync-{SHARD}");
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), SHARD, SEG_4, &schema_a()).unwrap();
    assert!(threads_named(&name).is_empty(), "started before the first background sync");
    let mut thread = None;
    for n in 1..=3u64 {
        append_seqs(&mut j, n..n + 1);
        assert!(matches!(j.sync_in_background(), Some(Ok(()))));
        background_outcome(&mut j).unwrap();
        let tids = threads_named(&name);
        assert_eq!(tids.len(), 1, "sync threads after sync {n}: {tids:?}");
        assert_eq!(*thread.get_or_insert(tids[0]), tids[0], "sync {n} ran on a new thread");
    }
    assert_eq!(j.syncs(), 3);
    // A job still in flight when the writer goes: its thread writes it back, then ends.
    append_seqs(&mut j, 4..5);
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    drop(j);
    // Joined by the drop; its /proc entry may linger a moment after the join returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !threads_named(&name).is_empty() {
        assert!(std::time::Instant::now() < deadline, "the sync thread outlived its writer");
        std::thread::yield_now();
    }
    let mut r = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..5).collect::<Vec<_>>());
}

#[test]
fn a_background_sync_writes_the_segment_left_at_rotation_first() {
    use super::segment::FAIL_MSYNC;
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=5);
    assert_eq!(j.segment_number(), 2, "segment 1 was left unsynced at rotation");
    let left = j.segment_path().with_file_name(format!("{:020}.seg", 1));
    // The job's first write-back fails: it is the left segment's msync, so the job took it.
    FAIL_MSYNC.set(true);
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    FAIL_MSYNC.set(false);
    let e = background_outcome(&mut j).expect_err("the left segment's msync failed");
    assert_eq!((e.op(), e.path()), ("msync", left.as_path()), "{e}");
}

#[test]
fn a_failed_background_sync_is_reported_and_the_stop_is_not_clean() {
    use super::segment::FAIL_MSYNC;
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=3);
    let (synced, _) = j.synced_and_written();
    FAIL_MSYNC.set(true);
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    FAIL_MSYNC.set(false);
    let e = background_outcome(&mut j).expect_err("the background sync failed");
    assert_eq!(e.op(), "fdatasync", "{e}");
    assert_eq!(j.synced_and_written().0, synced, "nothing is counted synced");
    // A later sync that succeeds does not make the stop clean: the kernel reported the error once.
    j.sync().unwrap();
    assert!(j.close_clean().is_err());
}

#[test]
fn sync_waits_for_the_background_sync_and_returns_its_error() {
    use super::segment::FAIL_MSYNC;
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=3);
    FAIL_MSYNC.set(true);
    assert!(matches!(j.sync_in_background(), Some(Ok(()))));
    FAIL_MSYNC.set(false);
    // Not collected by the drain yet: the next sync says it, and still syncs.
    let e = j.sync().expect_err("the background sync's error");
    assert_eq!(e.op(), "fdatasync", "{e}");
    let (synced, written) = j.synced_and_written();
    assert_eq!(synced, written);
    assert!(j.background_sync_done().is_none());
}

#[test]
fn pages_leave_the_cache_whatever_the_batches_boundaries() {
    use super::segment::{CACHE_KEPT_BYTES, WRITEBACK_STEP};
    let (_dir, mut j, path) = journal_of_64_steps();
    // Batches of 301 records, msynced then released as under `always`: the release points fall
    // anywhere, not at the prefault writes' boundaries, where large folios begin and end.
    let mut next = 1u64;
    while j.released_off() < 40 * WRITEBACK_STEP {
        append_seqs(&mut j, next..next + 301);
        next += 301;
        j.sync().unwrap();
        j.unmap_written();
    }
    let below = j.released_off() - CACHE_KEPT_BYTES - 2 * WRITEBACK_STEP;
    let (cached, pages) = cached_pages(&path, 0, below);
    assert_eq!(cached, 0, "left behind: {cached} of {pages} pages");
}

#[test]
fn after_reopening_writeback_starts_at_the_last_page_not_over_the_recovered_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, 8 << 20, &schema_a()).unwrap();
    let header = j.released_off();
    append_seqs(&mut j, 1..=100);
    drop(j);
    let (mut j, _) = ShardJournal::open(dir.path(), 0, 8 << 20, &schema_a()).unwrap();
    assert_eq!(j.segment_number(), 1, "appends to the recovered segment");
    let end = header + 100 * EVENT_BYTES;
    assert_eq!(j.released_off(), end - end % PAGE_BYTES);
    append_seqs(&mut j, 101..=110);
    j.sync().unwrap();
    let mut r = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..=110).collect::<Vec<_>>());
}

#[test]
fn second_writer_on_a_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    let err = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    assert!(err.to_string().contains("another writer holds this shard"), "{err}");
}

#[test]
fn segment_bytes_too_small_names_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let err = ShardJournal::open(dir.path(), 0, HDR, &schema_a()).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains(&format!("segment_bytes {HDR} cannot hold")), "{err}");
    assert!(err.to_string().contains(&format!("at least {}", HDR + REC)), "{err}");
}

#[test]
fn leftover_tmp_segment_is_removed_and_its_number_reused_only_within_the_writers_boot() {
    for this_boot in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let shard = shard_dir(dir.path(), 0);
        fs::create_dir_all(&shard).unwrap();
        if this_boot {
            let dir_file = std::fs::File::open(&shard).unwrap();
            super::writer_state::write(&shard, &dir_file, super::writer_state::RUNNING).unwrap();
        }
        let tmp = shard.join("00000000000000000001.seg.tmp");
        fs::write(&tmp, [0u8; 100]).unwrap();
        // Made ahead, header on disk, no record (or its records did not reach the disk). Its
        // last byte marks it: the writer opened below makes a segment ahead of its own under the
        // same name when it resumes segment 1, and that one must not be taken for it.
        let ahead = unrenamed_tmp(dir.path(), 2, 0, 2, &[]);
        const MARK: u8 = 0xa5;
        fs::OpenOptions::new().write(true).open(&ahead).unwrap().write_all_at(&[MARK], SEG_4 - 1).unwrap();
        let (j, report) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
        // Regression: the check below raced with the writer's own made-ahead segment 2 (this
        // boot) and failed when the helper thread won.
        j.wait_ahead();
        // In this boot a .tmp was never renamed into place, so never read; after a machine
        // restart its rename may have been lost after readers saw it.
        assert_eq!(report.segment, if this_boot { 1 } else { 3 });
        assert!(!tmp.exists());
        let leftover = fs::read(&ahead).is_ok_and(|b| b.last() == Some(&MARK));
        assert!(!leftover, "the leftover made-ahead segment was removed");
        assert!(report.recovered_tmp.is_empty() && report.set_aside_tmp.is_empty() && report.notes.is_empty());
    }
}

#[test]
fn header_round_trips_and_each_check_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let json = schema_a().to_json();
    let h = SegmentHeader {
        header_bytes: header_bytes_for(json.len()) as u32,
        shard: 5,
        segment: 9,
        created_ns: 123,
        schema_json: json,
        first_copy_bad: None,
    };
    let check = |bytes: &[u8], shard, number| {
        fs::write(&path, bytes).unwrap();
        let f = fs::File::open(&path).unwrap();
        read_header(&f, bytes.len() as u64, shard, number).unwrap()
    };
    let good = h.encode();
    assert_eq!(good.len(), 2 * PAGE_BYTES, "two copies, a page each");
    assert_eq!(good[..PAGE_BYTES], good[PAGE_BYTES..]);
    assert_eq!(check(&good, 5, 9), Ok(h.clone()));
    assert_eq!(check(&good, 6, 9), Err(HeaderError::Shard { found: 5, expected: 6 }));
    assert_eq!(check(&good, 5, 8), Err(HeaderError::Number { found: 9, expected: 8 }));
    assert_eq!(check(&good[..10], 5, 9), Err(HeaderError::Short { file_bytes: 10 }));
    assert_eq!(check(&vec![0; 2 * PAGE_BYTES], 5, 9), Err(HeaderError::Blank));
    // Each check, on the first copy alone (the header is read from the second, which says what
    // was wrong with the first) and on both (rejected with the first copy's error).
    type Damage = (usize, u8, fn(&HeaderError) -> bool);
    let damaged: [Damage; 5] = [
        (0, b'X', |e| matches!(e, HeaderError::Magic { .. })),
        // On both copies this is how a newer tracker's segment reads (HeaderError::Newer).
        (8, 3, |e| matches!(e, HeaderError::Version { found: 3 } | HeaderError::Newer { found: 3 })),
        (41, 1, |e| matches!(e, HeaderError::Crc { .. })), // event_bytes 512 -> 256: the CRC catches it first
        (12, 1, |e| matches!(e, HeaderError::Layout { .. })), // header_bytes no longer two copies' pages
        (HEADER_FIXED_BYTES + 2, b'~', |e| matches!(e, HeaderError::Crc { .. })), // the schema
    ];
    for (at, byte, is) in damaged {
        let mut first = good.clone();
        first[at] = byte;
        let got = check(&first, 5, 9).unwrap();
        assert!(is(got.first_copy_bad.as_ref().unwrap()), "byte {at}: {got:?}");
        assert_eq!(SegmentHeader { first_copy_bad: None, ..got.clone() }, h, "byte {at}");
        assert_eq!(got.read_at(), PAGE_BYTES as u64);
        let mut both = first.clone();
        both[PAGE_BYTES + at] = byte;
        let err = check(&both, 5, 9).unwrap_err();
        assert!(is(&err), "byte {at}: {err:?}");
        if at == 8 {
            assert_eq!(got.first_copy_bad, Some(HeaderError::Version { found: 3 }), "one copy: damage");
            assert_eq!(err, HeaderError::Newer { found: 3 }, "both copies: a newer tracker's");
        }
    }
    // The only copy of a version 1 header with a version above ours: damage, not a newer
    // tracker's segment (the page at half its header_bytes is not a copy).
    let mut v1 = good[..PAGE_BYTES].to_vec();
    v1[8..12].copy_from_slice(&3u32.to_le_bytes());
    v1[12..16].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
    v1.resize(4 * PAGE_BYTES, 0);
    assert_eq!(check(&v1, 5, 9), Err(HeaderError::Version { found: 3 }));
    // The first copy blank (a page lost): read from the second.
    let mut blank_first = good.clone();
    blank_first[..PAGE_BYTES].fill(0);
    assert_eq!(check(&blank_first, 5, 9).unwrap().first_copy_bad, Some(HeaderError::Blank));
    // A header claiming more pages than the file has, and a second copy out of reach.
    assert!(matches!(check(&good[..2 * PAGE_BYTES - 1], 5, 9), Err(HeaderError::Layout { .. })));
    // Only a second copy that its own header_bytes puts at half counts: one a page further on
    // (as if the first copy's pages were one more) is not taken.
    // (The file is long enough for the search to reach it: 2 × its offset.)
    let mut moved = good.clone();
    moved[..PAGE_BYTES].fill(0xAA);
    moved.splice(PAGE_BYTES..PAGE_BYTES, vec![0; PAGE_BYTES]);
    moved.resize(6 * PAGE_BYTES, 0);
    assert!(matches!(check(&moved, 5, 9), Err(HeaderError::Magic { .. })));
    // A schema longer than one page: each copy is two pages, and the second is found at the
    // third page, past the first copy's own second page.
    let long = SegmentHeader { schema_json: vec![b' '; PAGE_BYTES], ..SegmentHeader::new_now(5, 9, Vec::new()) };
    let long = SegmentHeader { header_bytes: header_bytes_for(PAGE_BYTES) as u32, ..long };
    assert_eq!(long.header_bytes as usize, 4 * PAGE_BYTES);
    let mut bytes = long.encode();
    bytes.resize(8 * PAGE_BYTES, 0);
    bytes[HEADER_FIXED_BYTES + 10] = b'x';
    let got = check(&bytes, 5, 9).unwrap();
    assert_eq!(got.read_at(), 2 * PAGE_BYTES as u64);
    assert_eq!(SegmentHeader { first_copy_bad: None, ..got }, long);
    // A copy that names another segment says so, as the first would.
    let mut other = SegmentHeader { segment: 10, ..h.clone() }.encode();
    other[..PAGE_BYTES].fill(0);
    assert_eq!(check(&other, 5, 9), Err(HeaderError::Number { found: 10, expected: 9 }));
}

#[test]
fn a_version_one_segment_with_one_header_copy_is_read_and_appended_to() {
    let dir = closed_root(2);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    // The same segment as version 1 wrote it: the header once (version 1, `header_bytes` its own
    // page), the records right after it, the file as long.
    let two = fs::read(&path).unwrap();
    let schema_bytes = u32::from_le_bytes(two[44..48].try_into().unwrap()) as usize;
    assert_eq!(copy_bytes_for(schema_bytes), PAGE_BYTES);
    let mut v1 = two[..PAGE_BYTES].to_vec();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    v1[12..16].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
    let mut crc = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    crc.update(&v1[..60]);
    crc.update(&v1[HEADER_FIXED_BYTES..HEADER_FIXED_BYTES + schema_bytes]);
    v1[60..64].copy_from_slice(&(crc.finalize() as u32).to_le_bytes());
    v1.extend_from_slice(&two[2 * PAGE_BYTES..]);
    v1.resize(two.len(), 0);
    fs::write(&path, &v1).unwrap();

    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2]);
    assert!(r.take_warnings().0.is_empty());
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.new_segment_reason), (1, 2, None), "{report:?}");
    append_seqs(&mut j, [3]);
    assert_eq!(seqs(&read_all(&mut r)), [3]);
    assert_eq!(read_bytes(&path, 0, PAGE_BYTES), v1[..PAGE_BYTES], "its header is left as it was");
    assert_eq!(read_bytes(&path, 8, 4), 1u32.to_le_bytes());
}

/// One byte of the embedded schema in one copy of the header (only that copy's CRC can tell):
/// readers read every record (through the second copy when the first is the damaged one, and
/// say so), and the writer rewrites the damaged copy from the other, says so, and appends to
/// the same segment.
#[test]
fn a_damaged_header_copy_is_read_around_and_rewritten_from_the_other_by_the_writer() {
    for (copy, note) in [
        (0, "first copy was damaged (header CRC32C".to_string()),
        (PAGE_BYTES, format!("second copy, at offset {PAGE_BYTES}, did not match the first")),
    ] {
        let dir = closed_root(2);
        let root = dir.path();
        let path = seg_file(root, 0, 1);
        let original = read_bytes(&path, 0, 2 * PAGE_BYTES);
        let at = copy + HEADER_FIXED_BYTES + 2;
        patch(&path, at as u64, &[original[at] ^ 0x20]);

        let mut r = JournalReader::open(root).unwrap();
        assert_eq!(seqs(&read_all(&mut r)), [1, 2], "copy at {copy}");
        assert_eq!(r.corrupt_segments(), 0);
        let warnings: Vec<String> = r.take_warnings().0.iter().map(|w| w.to_string()).collect();
        if copy == 0 {
            let start = format!("journal: read header {}: first copy damaged (header CRC32C", path.display());
            assert!(warnings[0].starts_with(&start), "{warnings:?}");
            assert!(warnings[0].ends_with(&format!("read from the second, at offset {PAGE_BYTES}")), "{warnings:?}");
        } else {
            assert!(warnings.is_empty(), "the second copy is not read while the first is good: {warnings:?}");
        }

        let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
        assert_eq!((report.segment, report.records, report.new_segment_reason), (1, 2, None), "{report:?}");
        assert!(report.notes.iter().any(|n| n.contains(&note) && n.contains("rewritten")), "{report:?}");
        assert_eq!(read_bytes(&path, 0, 2 * PAGE_BYTES), original, "both copies as written");
        append_seqs(&mut j, [3]);
        assert_eq!(seqs(&read_all(&mut r)), [3]);
        let mut fresh = JournalReader::open(root).unwrap();
        assert_eq!(seqs(&read_all(&mut fresh)), [1, 2, 3]);
        assert!(fresh.take_warnings().0.is_empty());
        // Nothing left to put right: no note.
        drop(j);
        let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
        assert!(report.notes.is_empty(), "{report:?}");
    }
    // Bytes past a good first copy's schema, which no CRC covers, are not damage: left alone.
    let dir = closed_root(1);
    let path = seg_file(dir.path(), 0, 1);
    patch(&path, PAGE_BYTES as u64 - 1, b"~");
    let (_, report) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    assert!(report.notes.is_empty(), "{report:?}");
    assert_eq!(read_bytes(&path, PAGE_BYTES as u64 - 1, 1), b"~");
}

#[test]
fn bad_tail_of_a_segment_the_writer_has_left_is_corrupt_not_pending() {
    let dir = closed_root(3);
    let root = dir.path();
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_b()).unwrap();
    assert_eq!(report.segment, 2);
    append_seqs(&mut j, [4]);
    // Damage after the writer left segment 1: a half record at its tail.
    patch(&seg_file(root, 0, 1), HDR + 3 * REC, &ev(9).as_bytes()[..100]);
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3, 4]);
    assert_eq!(r.corrupt_records(), 1);
}

#[test]
fn set_schema_starts_a_new_segment_only_when_the_schema_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=2);
    assert!(!j.set_schema(&schema_a()).unwrap(), "same schema: same segment");
    assert_eq!(j.segment_number(), 1);
    assert!(j.set_schema(&schema_b()).unwrap());
    assert_eq!(j.segment_number(), 2);
    append_seqs(&mut j, 3..=4);
    j.sync().unwrap();

    let got = read_all(&mut JournalReader::open(root).unwrap());
    assert_eq!(seqs(&got), [1, 2, 3, 4]);
    let schemas: Vec<bool> = got.iter().map(|(s, _)| *s == schema_a()).collect();
    assert_eq!(schemas, [true, true, false, false], "each record decodes with the schema it was written under");
    // A reopen with the new schema continues its segment.
    drop(j);
    let (j, report) = ShardJournal::open(root, 0, SEG_8, &schema_b()).unwrap();
    assert_eq!((report.segment, report.records, j.segment_number()), (2, 2, 2));
}

#[test]
fn under_kernel_writeback_rotation_keeps_nothing_for_sync_and_unmapping_loses_nothing() {
    use super::segment::WRITEBACK_STEP;
    let dir = tempfile::tempdir().unwrap();
    // Segments of 3 steps past the header: a rotation every ~3 MiB of records.
    let seg = (header_bytes_for(schema_a().to_json().len()) + 3 * WRITEBACK_STEP) as u64;
    let (mut j, _) = ShardJournal::open(dir.path(), 0, seg, &schema_a()).unwrap();
    let header = j.released_off();
    j.leave_writeback_to_kernel();
    let per_step = (WRITEBACK_STEP / EVENT_BYTES) as u64;
    append_seqs(&mut j, 1..=per_step + 3);
    j.unmap_written();
    assert_eq!(j.released_off(), header + WRITEBACK_STEP, "a whole step behind the writer is unmapped");
    // Past two rotations, unmapping after every batch of 100 as the drain does.
    let last = 7 * per_step;
    let mut next = per_step + 4;
    while next <= last {
        let to = (next + 99).min(last);
        append_seqs(&mut j, next..=to);
        j.unmap_written();
        next = to + 1;
    }
    assert_eq!(j.segment_number(), 3);
    assert!(!j.has_retired(), "no segment waits for an msync under the none policy");
    j.close_clean().unwrap();
    let mut r = JournalReader::open(dir.path()).unwrap();
    let got = read_all(&mut r);
    assert_eq!(seqs(&got), (1..=last).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, e)| e.slots[0] == e.seq * 10 && e.is_sealed_intact()));
    assert_eq!(r.corrupt_records() + r.corrupt_segments(), 0);

    // The default keeps the segment left at rotation for the next sync.
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=6);
    assert!(j.has_retired());
}

fn tmp_files(root: &Path, shard: u16) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(shard_dir(root, shard))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.ends_with(TMP_SUFFIX))
        .collect();
    v.sort();
    v
}

#[test]
fn rotation_takes_the_segment_made_ahead_stamped_with_its_activation_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    j.wait_ahead();
    // Made under its .tmp name: no reader takes segment 1 for finished.
    assert_eq!(tmp_files(root, 0), ["00000000000000000002.seg.tmp"]);
    assert!(!seg_file(root, 0, 2).exists());
    let before = super::segment::now_ns();
    append_seqs(&mut j, 1..=5); // 4 records per segment: rotates into segment 2
    assert_eq!((j.segment_number(), j.segments_made_ahead()), (2, 1));
    let f = fs::File::open(seg_file(root, 0, 2)).unwrap();
    let h = read_header(&f, SEG_4, 0, 2).unwrap().unwrap();
    assert!(h.created_ns >= before, "the header says when the segment became active, not when it was made");
    assert_eq!(h.schema_json, schema_a().to_json());
    // The rename is made durable by the helper or, at the latest, by the next sync.
    j.sync().unwrap();
    assert!(j.rename_durable());
    j.wait_ahead();
    append_seqs(&mut j, 6..=9);
    assert_eq!((j.segment_number(), j.segments_made_ahead()), (3, 2));
    j.close_clean().unwrap();
    assert!(tmp_files(root, 0).is_empty(), "a clean stop removes the segment made ahead");
    let got = read_all(&mut JournalReader::open(root).unwrap());
    assert_eq!(seqs(&got), (1..=9).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, e)| e.is_sealed_intact()));
}

#[test]
fn a_dropped_writer_leaves_no_segment_made_ahead_and_a_new_schema_does_not_take_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=2);
    j.wait_ahead();
    // Made ahead with schema a: a rotation for schema b creates its own segment.
    assert!(j.set_schema(&schema_b()).unwrap());
    assert_eq!((j.segment_number(), j.segments_made_ahead()), (2, 0));
    let f = fs::File::open(seg_file(root, 0, 2)).unwrap();
    assert_eq!(read_header(&f, SEG_8, 0, 2).unwrap().unwrap().schema_json, schema_b().to_json());
    drop(j);
    assert!(tmp_files(root, 0).is_empty(), "dropping the writer waits for its helper and removes the file");
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_b()).unwrap();
    assert_eq!((report.segment, report.records), (2, 0));
    append_seqs(&mut j, 3..=4);
    j.sync().unwrap();
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), [1, 2, 3, 4]);
}

#[test]
fn a_made_ahead_segments_number_is_not_reused_when_a_machine_restart_lost_its_rename() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    j.wait_ahead();
    append_seqs(&mut j, 1..=6); // 5 and 6 land in made-ahead segment 2
    assert_eq!((j.segment_number(), j.segments_made_ahead()), (2, 1));
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..=6).collect::<Vec<_>>()); // a reader is at (2, 2)
    drop(j);
    // A power loss before the directory fsync: the rename is undone, and another boot starts.
    let shard = shard_dir(root, 0);
    fs::rename(seg_file(root, 0, 2), shard.join("00000000000000000002.seg.tmp")).unwrap();
    fs::write(shard.join("writer.state"), "another-boot running\n").unwrap();
    let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    assert_eq!(report.segment, 3, "segment 2 was published and read: its number is not reused");
    assert_eq!(report.recovered_tmp, [2], "its records are put back into place, not removed");
    append_seqs(&mut j, 7..=9);
    assert_eq!(seqs(&read_all(&mut r)), [7, 8, 9], "the reader goes on where it was");
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), (1..=9).collect::<Vec<_>>());
}

#[test]
fn the_writer_never_appends_to_a_segment_older_than_one_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=2);
    assert!(j.set_schema(&schema_b()).unwrap());
    append_seqs(&mut j, 3..=3);
    drop(j);
    let mut follower = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut follower)), [1, 2, 3]);
    // What an open leaves when segment 2's header was bad and making segment 3 then failed.
    fs::rename(seg_file(root, 0, 2), shard_dir(root, 0).join("00000000000000000002.seg.corrupt")).unwrap();
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(report.segment, 3);
    append_seqs(&mut j, 4..=5);
    assert_eq!(seqs(&read_all(&mut follower)), [4, 5]);
}

#[test]
fn a_resumed_segment_s_directory_entry_is_made_durable_before_its_records_are_reported_synced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    j.wait_ahead();
    append_seqs(&mut j, 1..=5); // 5 lands in made-ahead segment 2, renamed into place

    // A kill -9 can come before the helper (or a sync) fsyncs the directory: the rename is then
    // in the page cache only, and nothing the next writer can see says whether it reached the
    // disk. (Dropping the writer here joins the helper; the reopen cannot know that it did.)
    drop(j);
    let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.new_segment_reason), (2, 1, None));
    assert!(!j.rename_durable(), "a resumed segment's rename is not assumed durable");
    append_seqs(&mut j, [6]);
    j.sync().unwrap();
    assert!(j.rename_durable(), "the first sync fsyncs the directory");
}

#[test]
fn a_segment_published_by_a_rotation_that_failed_after_the_rename_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=4); // segment 1 is full

    // What a rotation leaves when it fails after renaming segment 2 into place (the directory
    // fsync or the mmap failed): a published, empty segment 2, and the writer still on 1.
    let two = seg_file(root, 0, 2);
    let header = SegmentHeader::new_now(0, 2, schema_a().to_json()).encode();
    fs::write(&two, &header).unwrap();
    OpenOptions::new().write(true).open(&two).unwrap().set_len(SEG_4).unwrap();
    // A follower sees segment 1 finished and opens segment 2, waiting at its first slot.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3, 4]);
    // The retried rotation must not put another file under that name: the follower holds the
    // one it opened and would never see the records written to the new one.
    j.wait_ahead();
    append_seqs(&mut j, 5..=6);
    assert_eq!(seqs(&read_all(&mut r)), [5, 6]);
    assert_eq!(j.segment_number(), 3);
    drop(j);
    let got = read_all(&mut JournalReader::open(root).unwrap());
    assert_eq!(seqs(&got), (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_failed_msync_at_rotation_fails_the_next_sync() {
    // Under sync = "always" the drain answers `logged` requests once sync() returns Ok: a batch
    // of more records than a (64 KiB) segment holds rotates twice, and the second rotation
    // msyncs the segment the first one left. When that msync fails, the sync that would
    // acknowledge those records must say so.
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=8); // segment 1 full and left for sync(), segment 2 full
    assert!(j.has_retired());
    super::segment::FAIL_MSYNC.set(true);
    let r = j.append(&mut ev(9)); // rotates: msyncs segment 1, which fails
    super::segment::FAIL_MSYNC.set(false);
    if r.is_err() {
        j.append(&mut ev(9)).unwrap(); // the drain retries
    }
    assert!(j.sync().is_err(), "records 1..=4 may not be on disk");
    let mut reader = JournalReader::open(dir.path()).unwrap();
    assert_eq!(seqs(&read_all(&mut reader)), (1..=9).collect::<Vec<_>>(), "each record once");
    assert!(j.close_clean().is_err(), "never a clean stop after a failed msync");
}

#[test]
fn a_segment_that_failed_to_open_is_read_at_the_next_poll_not_skipped() {
    let dir = closed_root(12);
    let root = dir.path();
    let first = seg_file(root, 0, 1);
    assert!(seg_file(root, 0, 2).exists());
    // A stand-in for a passing I/O error (EIO, EMFILE): segment 1's name opens, but as a
    // directory its header cannot be read.
    let aside = root.join("seg1.aside");
    fs::rename(&first, &aside).unwrap();
    fs::create_dir(&first).unwrap();
    let mut r = JournalReader::open(root).unwrap();
    let e = r.poll(&mut |_, _| {}).expect_err("segment 1 cannot be read");
    assert!(e.to_string().contains("read header"), "{e}");
    // The error passes; the same reader, polled again, starts at segment 1.
    fs::remove_dir(&first).unwrap();
    fs::rename(&aside, &first).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..=12).collect::<Vec<_>>());
}

#[test]
fn a_resumed_segment_that_lost_its_preallocation_gets_it_back_before_appends() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    // Records 1..=3 fill part of the first page after the header; the free tail after that
    // page is four prefault windows long, so resuming's prefault does not cover it.
    const SEG_TAIL: u64 = 2 * HDR + 4 * super::segment::PREFAULT_BYTES as u64;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_TAIL, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=3);
    drop(j);
    // The free tail as a hole, as a sparse copy (cp --sparse, rsync -S, a restore) leaves it.
    let path = seg_file(root, 0, 1);
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    let (from, len) = (2 * HDR, SEG_TAIL - 2 * HDR);
    // SAFETY: fallocate on a file descriptor we own; no memory is involved.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            from as libc::off_t,
            len as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    let allocated = |p: &Path| fs::metadata(p).unwrap().blocks() * 512;
    assert!(allocated(&path) < SEG_TAIL);

    // Resumed, every block of the file is allocated again: a store on a full disk cannot SIGBUS.
    let (mut j, report) = ShardJournal::open(root, 0, SEG_TAIL, &schema_a()).unwrap();
    assert_eq!((report.segment, report.new_segment_reason), (1, None));
    assert!(allocated(&path) >= SEG_TAIL, "{} of {SEG_TAIL} bytes allocated", allocated(&path));
    append_seqs(&mut j, [4]);
    drop(j);
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), [1, 2, 3, 4]);
}

#[test]
fn a_clean_stop_after_a_kill_is_not_recorded_until_the_killed_writers_unsynced_segment_is_synced() {
    // A writer killed (-9) within a sync interval of a rotation leaves the segment it rotated
    // away from with records only in the page cache. The next writer (same boot) resumes the
    // newer segment and syncs only what it appends there: its clean stop must not say `clean`
    // (everything on disk) unless the killed writer's leftovers were synced too.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=5); // segment 1 left at rotation, never synced
    assert!(j.has_retired());
    drop(j); // killed: no sync, `running` in this boot
    super::segment::FAIL_MSYNC.set(true); // the disk fails every sync of the reopen
    let reopened = ShardJournal::open(root, 0, SEG_4, &schema_a());
    super::segment::FAIL_MSYNC.set(false);
    let (mut j, report) = reopened.expect("a failed sync of the leftovers does not stop the writer");
    assert_eq!((report.segment, report.records), (2, 1));
    append_seqs(&mut j, [6]);
    let e = j.close_clean().expect_err("segment 1's records may not be on disk");
    assert!(e.to_string().contains("not recorded as clean"), "{e}");
    let state = fs::read_to_string(shard_dir(root, 0).join("writer.state")).unwrap();
    assert_eq!(state.split_whitespace().nth(1), Some("running"), "{state}");
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), (1..=6).collect::<Vec<_>>());
}

#[test]
fn a_file_numbered_u64_max_is_not_taken_for_a_segment() {
    // 20 digits hold u64::MAX, but no segment can follow it: the writer's next number and the
    // reader's next one (n + 1) overflowed, a panic here and a wrap to 0 (every segment read
    // again, forever) in a release build.
    let dir = closed_root(2);
    let root = dir.path();
    let max = shard_dir(root, 0).join(format!("{}.seg", u64::MAX));
    fs::copy(seg_file(root, 0, 1), &max).unwrap();
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2]);
    assert_eq!(read_all(&mut r).len(), 0, "nothing twice");
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records), (1, 2));
    append_seqs(&mut j, [3]);
    assert_eq!(seqs(&read_all(&mut r)), [3]);
    assert!(max.exists(), "left as it is");
}

#[test]
fn a_bad_last_record_after_a_clean_stop_is_damage_not_a_torn_write() {
    // A clean stop leaves no record half-copied, and readers may have delivered every record
    // before it. A last record that is bad at the next open was damaged after it was read:
    // zeroing it and appending there would put the next event where a reader's position is
    // already past it.
    let dir = closed_root(0);
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=3);
    let mut follower = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut follower)), [1, 2, 3]);
    j.close_clean().unwrap();
    patch(&seg_file(root, 0, 1), HDR + 2 * REC + 100, &[0xff]);
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.torn_records, report.sealed_bad_records), (2, 0, 1), "{report:?}");
    append_seqs(&mut j, 4..=5);
    assert_eq!(seqs(&read_all(&mut follower)), [4, 5], "nothing written where the follower had been");
}

/// Writes `shard-000/<n>.seg.tmp` as a power loss leaves a made-ahead segment whose rename into
/// place was undone after the writer appended to it: a header for (`header_shard`,
/// `header_number`) with schema A, then `seqs` as sealed records, in a SEG_4 file.
fn unrenamed_tmp(root: &Path, n: u64, header_shard: u16, header_number: u64, seqs: &[u64]) -> std::path::PathBuf {
    let shard = shard_dir(root, 0);
    fs::create_dir_all(&shard).unwrap();
    let tmp = shard.join(format!("{n:020}.seg.tmp"));
    let f = fs::File::create(&tmp).unwrap();
    f.set_len(SEG_4).unwrap();
    f.write_all_at(&SegmentHeader::new_now(header_shard, header_number, schema_a().to_json()).encode(), 0).unwrap();
    for (i, &s) in seqs.iter().enumerate() {
        let mut e = ev(s);
        e.seal();
        f.write_all_at(e.as_bytes(), HDR + i as u64 * REC).unwrap();
    }
    tmp
}

/// A shard 0 journal with segments 1 and 2 full (seqs 1..=8, SEG_4) whose writer was running
/// when the machine went down (`writer.state` names another boot).
fn root_after_power_loss() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = ShardJournal::open(dir.path(), 0, SEG_4, &schema_a()).unwrap();
    append_seqs(&mut j, 1..=8);
    j.sync().unwrap();
    drop(j);
    let shard = shard_dir(dir.path(), 0);
    // What a writer killed with the machine leaves: no made-ahead file was ever synced into place.
    for name in tmp_files(dir.path(), 0) {
        fs::remove_file(shard.join(name)).unwrap();
    }
    fs::write(shard.join("writer.state"), "another-boot running\n").unwrap();
    dir
}

#[test]
fn records_in_a_made_ahead_segment_whose_rename_a_power_loss_undid_are_recovered() {
    let dir = root_after_power_loss();
    let root = dir.path();
    unrenamed_tmp(root, 3, 0, 3, &[9, 10]);
    let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    assert!(seg_file(root, 0, 3).exists(), "renamed into place");
    assert!(tmp_files(root, 0).iter().all(|n| n != "00000000000000000003.seg.tmp"), "{:?}", tmp_files(root, 0));
    // Then recovered like any last segment: another boot's running writer, so left as is.
    assert_eq!((report.last_segment, report.records, report.segment), (3, 2, 4));
    assert_eq!(report.recovered_tmp, [3]);
    assert!(report.notes.iter().any(|n| n.contains("00000000000000000003.seg.tmp") && n.contains("2 record(s)")));
    append_seqs(&mut j, [11]);
    j.sync().unwrap();
    drop(j);

    // `journal cat` reads the recovered records in order, with nothing skipped.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), (1..=11).collect::<Vec<_>>());
    assert_eq!(r.corrupt_records() + r.corrupt_segments(), 0);
    assert_eq!(r.take_warnings().0.len(), 0);

    // A collector whose cursor is in segment 3 (it read 9 from the page cache before the power
    // loss) goes on from there; one whose cursor is at segment 2 reads all of segment 3.
    use crate::collector::cursor::Position;
    use crate::collector::source::{ShardSource, Tail};
    let mut src = ShardSource::new(root, 0);
    assert_eq!(src.resolve(Position { segment: 3, index: 1 }).unwrap(), Some(Position { segment: 3, index: 1 }));
    let mut out = Vec::new();
    assert_eq!(src.read(3, 1, None, 100, &mut out).unwrap(), Tail::Finished);
    assert_eq!(out.iter().map(|(i, e)| (*i, e.seq)).collect::<Vec<_>>(), [(1, 10)]);
    out.clear();
    assert_eq!(src.read(3, 0, None, 100, &mut out).unwrap(), Tail::Finished);
    assert_eq!(out.iter().map(|(_, e)| e.seq).collect::<Vec<_>>(), [9, 10]);
    assert_eq!(src.corrupt_skipped + src.corrupt_segments, 0);
}

#[test]
fn a_made_ahead_segment_with_records_is_set_aside_never_removed_when_its_place_is_ambiguous() {
    // (tmp number, header shard, header number, whether 3.seg exists too, why)
    let cases = [
        (3, 0, 3, true, "exists too"),
        (3, 1, 3, false, "header says shard 1"),
        (3, 0, 7, false, "header says segment 7"),
        (4, 0, 4, false, "not the next number after segment 2"),
    ];
    for (n, header_shard, header_number, live_too, why) in cases {
        let dir = root_after_power_loss();
        let root = dir.path();
        if live_too {
            // Segment 3 was created and its directory entry synced; a .tmp under its number
            // (which no writer makes) holds records too.
            let (mut j, _) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
            assert_eq!(j.segment_number(), 3);
            append_seqs(&mut j, [9]);
            drop(j);
            for name in tmp_files(root, 0) {
                fs::remove_file(shard_dir(root, 0).join(name)).unwrap();
            }
        }
        let before = read_all(&mut JournalReader::open(root).unwrap());
        let tmp = unrenamed_tmp(root, n, header_shard, header_number, &[90, 91]);
        let tmp_bytes = fs::read(&tmp).unwrap();
        let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
        let aside = shard_dir(root, 0).join(format!("{n:020}.seg.unpublished"));
        assert_eq!(fs::read(&aside).unwrap(), tmp_bytes, "{why}: kept whole under a name no one reads or deletes");
        assert!(!tmp.exists(), "{why}");
        assert_eq!((report.recovered_tmp.len(), &report.set_aside_tmp[..]), (0, &[n][..]), "{why}");
        let note = report.notes.join("\n");
        assert!(
            note.contains(why) && note.contains(&aside.display().to_string()) && note.contains("2 record(s)"),
            "{note}"
        );
        // (Segment 3 itself, when live, is resumed as usual.)
        assert!(report.segment > n || live_too, "{why}: the number set aside is not reused");
        append_seqs(&mut j, [42]);
        drop(j);
        // Readers never see it; the size limit counts it; retention leaves it.
        let after = read_all(&mut JournalReader::open(root).unwrap());
        assert_eq!(seqs(&after), [seqs(&before), vec![42]].concat(), "{why}");
        let on_disk = |kind: &str| {
            fs::read_dir(shard_dir(root, 0))
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_str().unwrap().ends_with(kind))
                .map(|e| e.metadata().unwrap().len())
                .sum::<u64>()
        };
        assert_eq!(
            crate::collector::retention::disk_bytes(root),
            on_disk(".seg") + on_disk(".unpublished") + on_disk(".tmp")
        );
        crate::collector::retention::pass(root, &[], 1, 0);
        assert!(aside.exists(), "{why}");
        // Opened again: the file stays as it is, and says nothing more.
        let (_, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
        assert!(aside.exists() && report.notes.is_empty(), "{why}");
    }
}

#[test]
fn two_made_ahead_segments_whose_renames_were_undone_are_both_put_back_in_order() {
    let dir = root_after_power_loss();
    let root = dir.path();
    unrenamed_tmp(root, 3, 0, 3, &[9, 10, 11, 12]);
    unrenamed_tmp(root, 4, 0, 4, &[13]);
    let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    assert_eq!((report.recovered_tmp, report.set_aside_tmp.len(), report.segment), (vec![3, 4], 0, 5));
    append_seqs(&mut j, [14]);
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), (1..=14).collect::<Vec<_>>());
}

#[test]
fn a_recovered_segment_is_resumed_like_any_last_segment_when_its_tail_is_trusted() {
    // A rename lost after a clean stop cannot happen (the stop fsyncs the directory), but a
    // restored copy can look like it: the last writer stopped cleanly, so the page cache held
    // nothing the disk lacks, and the writer goes on after the last record.
    let dir = root_after_power_loss();
    let root = dir.path();
    fs::write(shard_dir(root, 0).join("writer.state"), "another-boot clean\n").unwrap();
    unrenamed_tmp(root, 3, 0, 3, &[9]);
    let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    assert_eq!(
        (report.recovered_tmp, report.segment, report.records, report.new_segment_reason),
        (vec![3], 3, 1, None)
    );
    append_seqs(&mut j, [10]);
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), (1..=10).collect::<Vec<_>>());
}

/// Regression: a `.seg.tmp` with records to set aside under a number that already had a
/// `.seg.unpublished` (an operator's copy, or one set aside by an earlier open and put back by
/// hand) failed the open: the writer would neither replace the older file nor start. It now
/// takes the next free name, `.seg.unpublished.1`, `.2`, …, which everything that knows
/// `.seg.unpublished` treats the same way: not read, counted by the size limit, never deleted,
/// and its number never reused.
#[test]
fn a_second_file_set_aside_under_one_number_takes_a_free_name_and_keeps_both() {
    let dir = root_after_power_loss();
    let root = dir.path();
    let shard = shard_dir(root, 0);
    let first = shard.join(format!("{:020}.seg.unpublished", 3));
    fs::write(&first, b"an operator's copy").unwrap();
    let before = seqs(&read_all(&mut JournalReader::open(root).unwrap()));
    let mut kept = vec![(first.clone(), fs::read(&first).unwrap())];
    for (k, seqs_in_tmp) in [(1, [90, 91]), (2, [92, 93])] {
        let tmp = unrenamed_tmp(root, 3, 0, 3, &seqs_in_tmp);
        let tmp_bytes = fs::read(&tmp).unwrap();
        let (mut j, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
        let aside = shard.join(format!("{:020}.seg.unpublished.{k}", 3));
        assert!(fs::read(&aside).is_ok_and(|b| b == tmp_bytes), "set aside whole under the next free name");
        assert!(!tmp.exists());
        for (path, bytes) in &kept {
            assert!(&fs::read(path).unwrap() == bytes, "{} is kept as it was", path.display());
        }
        kept.push((aside.clone(), tmp_bytes));
        assert_eq!(report.set_aside_tmp, [3]);
        let note = report.notes.join("\n");
        assert!(note.contains("SET ASIDE as") && note.contains(&aside.display().to_string()), "{note}");
        assert!(note.contains(&format!("{} and any lower copy number were taken", first.display())), "{note}");
        assert!(report.segment > 3, "the number set aside is not reused");
        append_seqs(&mut j, [40 + k]);
        drop(j);
    }
    // Readers never see them; the size limit counts them; retention leaves them.
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), [before, vec![41, 42]].concat());
    let on_disk: u64 = fs::read_dir(&shard)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().contains(".seg"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(crate::collector::retention::disk_bytes(root), on_disk);
    crate::collector::retention::pass(root, &[], 1, 0);
    assert!(kept.iter().all(|(p, _)| p.exists()));
    // With only a suffixed copy left under 3 (and nothing above it), 3 is still not reused.
    drop(dir);
    let dir = root_after_power_loss();
    let root = dir.path();
    fs::write(shard_dir(root, 0).join(format!("{:020}.seg.unpublished.1", 3)), b"copy").unwrap();
    let (_, report) = ShardJournal::open(root, 0, SEG_4, &schema_a()).unwrap();
    assert_eq!(report.segment, 4);
}

/// Regression: a last segment whose header is bad was renamed `.seg.corrupt` over an existing
/// `.seg.corrupt` of the same number (an operator's copy put back), which was lost.
#[test]
fn a_segment_set_aside_as_corrupt_never_replaces_an_older_corrupt_file() {
    let dir = closed_root(2);
    let root = dir.path();
    let shard = shard_dir(root, 0);
    let older = shard.join(format!("{:020}.seg.corrupt", 1));
    fs::write(&older, b"an older set-aside copy").unwrap();
    let path = seg_file(root, 0, 1);
    for copy in [0, PAGE_BYTES as u64] {
        patch(&path, copy, b"XXXXXXXX");
    }
    let bad = fs::read(&path).unwrap();
    let (_, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert!(fs::read(&older).unwrap() == b"an older set-aside copy", "the older file is kept as it was");
    let aside = shard.join(format!("{:020}.seg.corrupt.1", 1));
    assert!(fs::read(&aside).unwrap() == bad, "the bad segment is set aside whole under the next free name");
    assert!(report.detail.as_deref().unwrap().contains(&aside.display().to_string()), "{report:?}");
    assert_eq!(report.segment, 2);
}
#[test]
fn segment_names_with_a_copy_number_parse_only_in_one_spelling() {
    use super::segment::parse_segment_name;
    let n = |s: &str| format!("{:020}.seg{s}", 7);
    assert_eq!(parse_segment_name(&n(".unpublished")), Some((7, SegmentFile::Unpublished(0))));
    assert_eq!(parse_segment_name(&n(".unpublished.1")), Some((7, SegmentFile::Unpublished(1))));
    assert_eq!(parse_segment_name(&n(".unpublished.12")), Some((7, SegmentFile::Unpublished(12))));
    assert_eq!(parse_segment_name(&n(".corrupt")), Some((7, SegmentFile::Corrupt(0))));
    assert_eq!(parse_segment_name(&n(".corrupt.3")), Some((7, SegmentFile::Corrupt(3))));
    // One name per file: `.0`, a leading zero, a sign or other text would be a second spelling
    // of a name already taken, or someone else's file.
    for bad in [".unpublished.0", ".unpublished.01", ".unpublished.", ".unpublished.+1", ".unpublished.bak", ".tmp.1"] {
        assert_eq!(parse_segment_name(&n(bad)), None, "{bad}");
    }
    assert_eq!(parse_segment_name(&n(".corrupt.4294967296")), None, "beyond u32");
    // And back: the path a listing entry names is the file it was parsed from.
    let dir = Path::new("/j/shard-000");
    for kind in [SegmentFile::Live, SegmentFile::Tmp, SegmentFile::Corrupt(0), SegmentFile::Unpublished(2)] {
        let path = kind.path(dir, 7);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_segment_name(name), Some((7, kind)), "{name}");
    }
}

/// The fuzz targets' reseal reaches both header copies: a byte changed in either passes its
/// CRC after it, so the fuzzer gets past the CRC to the reader behind it.
#[cfg(feature = "fuzzing")]
#[test]
fn reseal_makes_either_header_copy_pass_its_crc() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h");
    let good = SegmentHeader::new_now(5, 9, schema_a().to_json()).encode();
    let check = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        read_header(&fs::File::open(&path).unwrap(), bytes.len() as u64, 5, 9).unwrap()
    };
    let mut b = good.clone();
    b[32] ^= 1; // created_ns of the first copy
    assert_eq!(check(&b).unwrap().first_copy_bad.map(|e| matches!(e, HeaderError::Crc { .. })), Some(true));
    super::segment::reseal(&mut b);
    assert_eq!(check(&b).unwrap().first_copy_bad, None);
    // The second copy, read only while the first is blank.
    let mut b = good.clone();
    b[..PAGE_BYTES].fill(0);
    b[PAGE_BYTES + 32] ^= 1;
    assert!(matches!(check(&b), Err(HeaderError::Blank)));
    b[8..16].copy_from_slice(&good[8..16]); // reseal finds the copy through version and header_bytes
    super::segment::reseal(&mut b);
    assert!(check(&b).is_ok());
}

/// A record the disk cannot read (EIO) in the last segment: recovery reads with `pread`, so it
/// is an error it handles (through a map it was a SIGBUS at every start). The segment is left
/// as it is, events go to a new one, and readers skip only the unreadable slot, with a warning.
#[test]
fn an_unreadable_record_in_the_last_segment_leaves_it_as_is_and_readers_skip_only_that_slot() {
    let dir = closed_root(6);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    let seg1 = fs::read(&path).unwrap();
    let rec3 = HDR + 2 * REC;
    let _bad = fail_reads(&path, rec3..rec3 + 8);

    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.segment, report.records, report.sealed_bad_records, report.torn_records), (2, 5, 0, 0));
    assert!(report.new_segment_reason.unwrap().contains("cannot be read"));
    let detail = report.detail.unwrap();
    assert!(
        detail.contains("00000000000000000001.seg") && detail.contains("1 slot(s) that cannot be read"),
        "{detail}"
    );
    append_seqs(&mut j, [7]);

    // The writer has left segment 1: the slot is skipped, named and counted; the rest is read.
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 4, 5, 6, 7]);
    assert_eq!((r.unreadable_records(), r.corrupt_records()), (1, 0));
    let (warnings, _) = r.take_warnings();
    let msg = warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("\n");
    assert!(msg.contains(&format!("record 2 at offset {rec3}")) && msg.contains("Input/output error"), "{msg}");
    drop(_bad);
    assert_eq!(fs::read(&path).unwrap(), seg1, "segment 1 is not modified");
}

/// A segment whose two header copies both cannot be read is left, not renamed (the disk may
/// answer again), and not a failed open: the tracker serves from a new segment.
#[test]
fn a_last_segment_whose_header_cannot_be_read_is_left_and_the_writer_starts_the_next() {
    let dir = closed_root(2);
    let root = dir.path();
    let path = seg_file(root, 0, 1);
    let bad = fail_reads(&path, 0..HDR);
    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!(report.segment, 2);
    assert!(report.new_segment_reason.unwrap().contains("header cannot be read"));
    assert!(report.detail.unwrap().contains("Input/output error"));
    assert!(path.exists(), "left under its name");
    append_seqs(&mut j, [3]);
    drop(bad);
    let mut r = JournalReader::open(root).unwrap();
    assert_eq!(seqs(&read_all(&mut r)), [1, 2, 3]);
}

/// A root with shards 0 and 1, their writers still open, holding seqs 1..=n and 11..=10+n.
fn two_shards(n: u64) -> (tempfile::TempDir, [ShardJournal; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let (mut j0, _) = ShardJournal::open(dir.path(), 0, SEG_8, &schema_a()).unwrap();
    let (mut j1, _) = ShardJournal::open(dir.path(), 1, SEG_8, &schema_a()).unwrap();
    append_seqs(&mut j0, 1..=n);
    append_seqs(&mut j1, 11..=10 + n);
    (dir, [j0, j1])
}

/// `journal cat`'s reader: an unreadable record where the writer still appends is an error for
/// that shard only, retried from the same place; the other shards are delivered in full.
#[test]
fn an_unreadable_record_of_one_shards_active_segment_holds_up_only_that_shard() {
    let (dir, _writers) = two_shards(4);
    let root = dir.path();
    let rec3 = HDR + 2 * REC;
    let bad = fail_reads(&seg_file(root, 0, 1), rec3..rec3 + REC);

    let mut r = JournalReader::open(root).unwrap();
    let mut got = Vec::new();
    let e = r.poll(&mut |_, e| got.push(e.seq)).unwrap_err().to_string();
    assert!(e.contains("shard-000") && e.contains("Input/output error"), "{e}");
    assert_eq!(got, [1, 2, 11, 12, 13, 14], "shard 0 up to the slot, shard 1 in full");
    assert_eq!(r.unreadable_records(), 0, "not skipped: the writer may still be on it");

    // The disk answers again: shard 0 goes on from the slot it stopped at.
    drop(bad);
    assert_eq!(seqs(&read_all(&mut r)), [3, 4]);
}

/// A `.seg.tmp` whose slots cannot be read may hold records: it is not removed as an empty
/// leftover.
#[test]
fn a_made_ahead_segment_that_cannot_be_read_is_not_removed_as_empty() {
    let dir = root_after_power_loss();
    let root = dir.path();
    let tmp = unrenamed_tmp(root, 3, 0, 3, &[]);
    // Written (zeros), so the scan does not pass it as a hole.
    patch(&tmp, HDR, &[0; EVENT_BYTES]);
    let _bad = fail_reads(&tmp, HDR..HDR + REC);
    let (_j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    let notes = report.notes.join("\n");
    assert!(notes.contains("1 slot(s) that cannot be read"), "{notes}");
    assert!(!tmp.exists() && (report.recovered_tmp == [3] || report.set_aside_tmp == [3]), "{notes}");
}

/// A made-ahead segment (`2.seg.tmp`, no record) that a machine restart left behind: its number
/// is not reused (it may have been read under its final name), and the last segment is still
/// recovered as after any power loss: scanned, counted, its header copies repaired, left as is.
#[test]
fn a_leftover_made_ahead_segment_after_a_power_loss_does_not_skip_the_last_segments_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut j, _) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    j.wait_ahead();
    append_seqs(&mut j, 1..=3);
    j.sync().unwrap();
    drop(j);
    let shard = shard_dir(root, 0);
    // What the machine going down leaves: the made-ahead file (whose own fsync made its name
    // durable), a running writer of another boot, and a damaged second header copy.
    fs::write(shard.join("00000000000000000002.seg.tmp"), SegmentHeader::new_now(0, 2, schema_a().to_json()).encode())
        .unwrap();
    fs::write(shard.join("writer.state"), "another-boot running\n").unwrap();
    let path = seg_file(root, 0, 1);
    patch(&path, HDR / 2 + 100, &[0xAB; 4]);

    let (mut j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
    assert_eq!((report.last_segment, report.records, report.segment), (1, 3, 3));
    assert!(report.new_segment_reason.unwrap().contains("machine restarted"));
    assert!(report.detail.unwrap().contains("left as is with 3 record(s)"));
    assert!(report.notes.iter().any(|n| n.contains("second copy")), "{:?}", report.notes);
    assert_eq!(read_bytes(&path, HDR / 2, 4096), read_bytes(&path, 0, 4096), "second copy rewritten");
    append_seqs(&mut j, [4]);
    assert_eq!(seqs(&read_all(&mut JournalReader::open(root).unwrap())), [1, 2, 3, 4]);
}

/// A header copy the disk cannot read (EIO) is a damaged copy: readers read the other one, and
/// the writer rewrites it from the other (the write usually makes the drive remap the sector).
#[test]
fn an_unreadable_header_copy_is_read_around_and_rewritten() {
    for (copy, note) in [(0, "first copy was damaged (header cannot be read"), (PAGE_BYTES as u64, "second copy")] {
        let dir = closed_root(2);
        let root = dir.path();
        let path = seg_file(root, 0, 1);
        let bad = fail_reads(&path, copy..copy + 8);
        let mut r = JournalReader::open(root).unwrap();
        assert_eq!(seqs(&read_all(&mut r)), [1, 2], "copy at {copy}");
        let (_j, report) = ShardJournal::open(root, 0, SEG_8, &schema_a()).unwrap();
        assert_eq!((report.segment, report.records, report.new_segment_reason), (1, 2, None), "{report:?}");
        assert!(report.notes.iter().any(|n| n.contains(note) && n.contains("rewritten")), "{report:?}");
        drop(bad);
        assert_eq!(read_bytes(&path, 0, PAGE_BYTES), read_bytes(&path, PAGE_BYTES as u64, PAGE_BYTES));
    }
}

/// Two shards failing the same way at every poll (a follower's, each second): the first is the
/// poll's error, the other a warning once, not at every poll.
#[test]
fn a_second_shard_failing_the_same_way_is_warned_of_once() {
    let (dir, _writers) = two_shards(2);
    let root = dir.path();
    let _bad0 = fail_reads(&seg_file(root, 0, 1), HDR..HDR + REC);
    let _bad1 = fail_reads(&seg_file(root, 1, 1), HDR..HDR + REC);
    let mut r = JournalReader::open(root).unwrap();
    for round in 0..3 {
        let e = r.poll(&mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("shard-000"), "{e}");
        let (warnings, _) = r.take_warnings();
        let expected = usize::from(round == 0);
        assert_eq!(warnings.len(), expected, "round {round}: {warnings:?}");
        assert!(warnings.iter().all(|w| w.to_string().contains("shard-001")), "{warnings:?}");
    }
}
