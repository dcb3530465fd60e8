//! A journal segment file with arbitrary bytes, read as `tracker journal cat` reads it
//! (`JournalReader::poll`, each record written as JSON with its segment's schema), and nothing
//! else: no writer. `journal_segment` also opens the writer on each input, which preallocates
//! and starts a helper thread (~100 inputs/s); without it the reader gets thousands per second.
//! Errors and warnings naming the file are fine; panics are not.
//!
//! The first byte picks what surrounds the file (bit 1 means the same as in `journal_segment`,
//! so the two corpora seed each other):
//! - bit 0: `writer.state` says the writer stopped cleanly, so a bad last record is damage
//!   (`skip_damage_after_clean_stop`) rather than a record being written;
//! - bit 1: the CRCs of the header and of every record are resealed first
//!   (`tracker::fuzzing::reseal_segment`), so changes to the schema JSON and to records reach
//!   the code behind the checksums;
//! - bit 2: an empty newer segment exists, so the writer has left this one: the reader's last
//!   pass (zero slots are gaps, skipped over the file's holes; bad records are corrupt).
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

thread_local! {
    // One journal dir for the whole run, its files rewritten per input: a directory per input
    // costs more than reading the segment. On tmpfs when there is one.
    static ROOT: tempfile::TempDir = {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
        std::fs::create_dir(root.path().join("shard-000")).unwrap();
        root
    };
}

fuzz_target!(|data: &[u8]| {
    let [mode, file @ ..] = data else { return };
    let mut file = file.to_vec();
    if mode & 2 != 0 {
        tracker::fuzzing::reseal_segment(&mut file);
    }
    ROOT.with(|root| {
        let shard: PathBuf = root.path().join("shard-000");
        std::fs::write(shard.join("00000000000000000001.seg"), &file).unwrap();
        let state = shard.join("writer.state");
        if mode & 1 != 0 {
            std::fs::write(&state, "fuzz-boot clean\n").unwrap();
        } else {
            let _ = std::fs::remove_file(&state);
        }
        let newer = shard.join("00000000000000000002.seg");
        if mode & 4 != 0 {
            std::fs::write(&newer, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&newer);
        }
        tracker::fuzzing::read_journal(root.path());
    });
});
