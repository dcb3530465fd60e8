//! A journal segment file with arbitrary bytes, in a temp journal dir: read as `journal cat`
//! reads it (`JournalReader::poll`, each record written as JSON with its segment's schema),
//! then opened by the writer (`ShardJournal::open`: the recovery scan, torn-tail truncation,
//! `.corrupt` set-aside), appended to, and read again. Errors naming the file are fine; panics
//! are not.
//!
//! The first byte picks how the file is presented: bit 0 names it `.seg.tmp` (a left-over
//! segment made ahead, resolved at open) instead of `.seg`; bit 1 reseals the CRCs of the
//! header and of every record first (`tracker::fuzzing::reseal_segment`), so the fuzzer's
//! changes to the schema JSON and to records reach the code behind the checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracker::event::Event;
use tracker::journal::ShardJournal;

fuzz_target!(|data: &[u8]| {
    let [mode, file @ ..] = data else { return };
    let mut file = file.to_vec();
    if mode & 2 != 0 {
        tracker::fuzzing::reseal_segment(&mut file);
    }
    // On tmpfs when there is one: the writer fsyncs and preallocates, which costs a disk
    // round trip per input elsewhere.
    let shm = std::path::Path::new("/dev/shm");
    let root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    let shard = root.path().join("shard-000");
    std::fs::create_dir(&shard).unwrap();
    let name = if mode & 1 != 0 { "00000000000000000001.seg.tmp" } else { "00000000000000000001.seg" };
    std::fs::write(shard.join(name), &file).unwrap();

    tracker::fuzzing::read_journal(root.path());
    let cfg = tracker::config::Config::embedded();
    // Small segments: the writer preallocates each one it makes.
    if let Ok((mut j, _report)) = ShardJournal::open(root.path(), 0, 64 << 10, &cfg.schema) {
        let mut e = Event::ZERO;
        e.seq = 1;
        let _ = j.append(&mut e);
        let _ = j.sync();
        drop(j);
        tracker::fuzzing::read_journal(root.path());
    }
});
