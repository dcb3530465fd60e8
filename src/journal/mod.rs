//! The journal: per-shard, mmapped, append-only segment files of sealed 512-byte events.
//!
//! Stage: after the ring. Each shard's drain thread pops events and [`ShardJournal::append`]s
//! them; [`JournalReader`] reads them back for `tracker journal cat [--follow]` and the
//! forwarders. In: [`Event`](crate::event::Event)s and the [`Schema`](crate::schema::Schema)
//! they were made with. Out: files under `journal.dir`.
//!
//! # What must hold
//! - **In order, and never rewritten where a reader may have been.** A shard's journal is the
//!   events appended, in append order. Readers read the page cache, ahead of any msync. Recovery
//!   zeroes and writes over only a torn last record (a bad slot with nothing but zeros after
//!   it, where every reader waits), and only when the page cache readers saw is still there or
//!   was synced (same boot, or a clean stop: `writer_state.rs`). When written data follows a
//!   bad or missing record, or the machine restarted under a running writer, the segment is
//!   left as it is and appends go to a new one, so no reader's position is ever reused.
//! - **Every record checked twice.** Sealed (magic + CRC32C) before it is copied in, verified
//!   again by recovery and by the reader.
//! - **No syscall, fault or allocation on append** except at rotation: segments are preallocated
//!   (`set_len` + `posix_fallocate`, so a full disk fails at rotation and never as a SIGBUS on a
//!   store; a resumed segment is allocated again, in case a sparse copy dropped that) and prefaulted in a rolling window ahead of the writer (`MADV_POPULATE_WRITE`).
//! - **One writer per shard directory**, enforced with an `flock` on the directory; the segment
//!   is written only through the writer's map. Readers only read.
//! - **Self-describing.** Every segment header embeds the schema its records were written with;
//!   a reader never needs the current config.
//! - **A `.seg` file always has its header on disk.** A segment is created as `.seg.tmp`, its
//!   header written and fsynced, then renamed; the directory is fsynced before any record in it
//!   is reported synced (at once, or by the helper that makes segments ahead: `ahead.rs`).
//! - **Durability is the caller's policy** ([`SyncPolicy`](crate::config::SyncPolicy)): the drain decides when to call
//!   [`ShardJournal::sync`]. Records survive `kill -9` as soon as `append` returns (they are in
//!   the page cache); they survive power loss after `sync`.
//!
//! # Byte layout
//! ```text
//! root/shard-000/00000000000000000001.seg      shard: 3+ digits; segment number: 20 digits, from 1
//!               00000000000000000002.seg
//!               00000000000000000003.seg.corrupt  both header copies failed their checks; set
//!                                                 aside by the writer
//!               00000000000000000004.seg.tmp      being created, or made ahead for the next
//!                                                 rotation (resolved at open if left over: see
//!                                                 Recover)
//!               00000000000000000005.seg.unpublished  a left-over .tmp holding records that
//!                                                 could not be put into place; set aside by the
//!                                                 writer, never read or deleted by the tracker
//!               00000000000000000005.seg.unpublished.1  the same, when the name without a copy
//!                                                 number was taken (`.corrupt.1` likewise);
//!                                                 a set-aside file never replaces another
//!
//! segment:  [ header: fixed 64 bytes + schema JSON, zero-padded to 4096 × k ]
//!           [ record 0: 512 bytes ][ record 1 ] ... [ zero slots ... ]   up to segment_bytes
//! ```
//! The header fields are tabled beside their constants in `segment.rs`; the record layout is
//! the [`Event`](crate::event::Event) itself (`event.rs`). In the segment being written, the
//! first all-zero slot ends its records so far; in a segment the writer has left, readers go on
//! past a zeroed gap (a page a power loss kept off the disk) to the records after it. A segment
//! is full when the next record does not fit in its file.
//!
//! # Write
//! [`ShardJournal::append`] seals the event and copies it to the next slot of the map. When it
//! does not fit, the writer rotates: renames segment N+1, made ahead on a helper thread
//! (preallocated, header, fsync: `ahead.rs`), into place and maps it, then starts making N+2;
//! only when none was made ahead does it create N+1 itself (preallocate, header, fsync, rename,
//! fsync dir). The full segment's unsynced range is flushed by the next `sync`.
//!
//! # Recover
//! [`ShardJournal::open`] first resolves each left-over `.seg.tmp`, in number order. One with no
//! intact record (a creation cut short, a segment made ahead and never used) is removed. One
//! with intact records is a made-ahead segment a rotation renamed into place and the writer
//! appended to, whose rename a power loss undid before the directory fsync (its blocks reached
//! the disk, its name did not): its records were acknowledged `received` and collectors may have
//! read them. When its header is good for this shard and number, no `N.seg` exists and N is the
//! number after every other segment file, it is renamed back to `N.seg` (nothing in it changed)
//! and the directory fsynced; anything else (`N.seg` exists too, N is not the next number, a
//! header that is bad or names another shard or number) is ambiguous, so it is renamed
//! `N.seg.unpublished` (`N.seg.unpublished.1`, `.2`, … when that name is taken) and kept, never
//! read and never deleted, and the report's notes name it
//! (counted by `journal.size_bytes_max` like a `.corrupt` file). A removed `.tmp`'s number is
//! not reused after a machine restart (readers may have seen records under it that the power
//! loss kept off the disk); a set-aside one's never is.
//!
//! It then takes the highest-numbered segment (a `.tmp` put back into place included). If the machine restarted since
//! its writer opened it and that writer did not stop cleanly (`shard-NNN/writer.state`), the
//! segment is left as it is. Otherwise its slots are scanned for the end of the intact prefix,
//! with `pread` (`pread.rs`), never through a map: a sector the disk cannot read is an error
//! the scan handles (the segment is left as it is, like one with a bad record), not a SIGBUS at
//! every start; the segment is mapped only to append to it. A header neither of whose copies
//! can be read leaves the segment as it is too (not renamed: the disk may answer again).
//! Nothing after it = clean end; one bad slot and only zeros after it = a torn record, zeroed
//! and synced, counted in the [`RecoveryReport`] (only when the last writer did not stop
//! cleanly: a clean stop cuts no record, so after one that slot is damage to a record readers
//! may have passed, and is left in place like the next case); any written data after the first
//! bad or zero slot = left in place (`sealed_bad_records`), and readers deliver every intact record in it,
//! past bad slots and zeroed gaps. It then goes on appending to that segment, or
//! starts a new one (reason and detail in the report) when the segment was left in place, is
//! full, has another schema, or has a bad header (both copies bad: the file is renamed `.corrupt`;
//! one copy bad: it is rewritten from the other, a note in the report). When the last
//! writer did not stop cleanly, a `syncfs` writes back what it left in the page cache (in any
//! segment), so this writer's clean stop covers it. Then it records `<boot id> running`, and
//! [`ShardJournal::close_clean`] `<boot id> clean`.
//!
//! # Read
//! [`JournalReader::poll`] delivers the records that became available since the last call,
//! each with the schema of its segment; see `reader.rs` for how it tells a record being written
//! from a corrupt one. The collectors read with their own cursor-based reader
//! (`collector/source.rs`); retention (`collector/retention.rs`) deletes the segments every
//! collector has passed.

mod ahead;
mod background_sync;
mod dir;
mod error;
mod pread;
mod reader;
mod segment;
#[cfg(test)]
mod tests;
mod writer_state;

pub use dir::{create_dir_durable, fsync_dir};
pub use error::JournalError;
#[cfg(test)]
pub(crate) use pread::fail_reads;
pub(crate) use pread::read_exact_at;
#[cfg(feature = "fuzzing")]
pub(crate) use segment::reseal as segment_reseal;
#[cfg(test)]
pub(crate) use segment::FAIL_MSYNC;
// For the collectors' positioned reader (collector/source.rs).
pub use reader::{JournalReader, READ_CHUNK_BYTES, WARNINGS_KEPT_MAX};
pub(crate) use segment::{
    all_zero, header_bytes_for, list_segments, next_nonzero_slot, parse_shard_dir_name, read_header,
    segment_created_ns, SegmentFile,
};
pub use segment::{
    segment_path, shard_dir, RecoveryReport, ShardJournal, CORRUPT_SUFFIX, FORMAT_VERSION, HEADER_FIXED_BYTES,
    PAGE_BYTES, SCHEMA_BYTES_MAX, SEGMENT_MAGIC, SEGMENT_NAME_DIGITS, SEGMENT_SUFFIX, TMP_SUFFIX, UNPUBLISHED_SUFFIX,
};
