//! The dedup window: one fixed-size, lock-free table shared by every shard, keyed by event id.
//!
//! Stage: after extraction (the id is known), before the ring push. A re-fired pixel or a
//! retried billing notice carries the same id (client `eid`, or derived from the type's identity
//! fields); the first arrival inside the window is published, later ones are answered exactly
//! alike but not published, and counted. Generated ids (UUIDv7) are unique by construction and
//! never looked up; nor are HEAD requests (`net::pipeline::publish`), which are not the user's.
//!
//! Layout: `buckets` cache lines of [`WAYS`] 16-byte entries, each one 128-bit atomic, allocated
//! once at start (`entries` × [`ENTRY_BYTES`]). An entry is
//! `fingerprint << 64 | shard << 56 | seq_low << 32 | time`, 0 = empty:
//! - the key (id, type) is hashed once with xxh3_128; the bucket is chosen by the low bits of
//!   its low half, the 64-bit fingerprint is its high half (0 taken as 1, so an entry is never
//!   0). A false duplicate — a different id answered as a repeat and never journaled — needs a
//!   fresh entry of another id in the same bucket with an equal 64-bit fingerprint: at most
//!   4 × 2⁻⁶⁴ = 2⁻⁶² per lookup, once in ~10⁶ years at 100k lookups/s. (A 32-bit fingerprint
//!   beside the time in one `AtomicU64` was 8 × 2⁻³² ≈ 2⁻²⁹: an event lost every hour or two at
//!   that rate on a well-filled table, billing notices included.)
//! - time is centiseconds of the Unix clock truncated to 32 bits (wraps after 497 days; ages are
//!   computed with wrapping subtraction). Only the low 32 bits are ever read as time (`stamp`);
//!   whole entries are only compared for equality (the compare-and-swap).
//! - shard (8 bits) and seq_low (the low [`SEQ_BITS`] of the ring sequence number) say where the
//!   first copy went: a duplicate on an `ack = "logged"` endpoint waits for that event to be
//!   journaled (see Acknowledgement). [`full_seq`] recovers the whole number from the shard's
//!   count of pushed events.
//!
//! Insert-or-find first looks for our fingerprint, fresh, in every way (→ duplicate), then scans
//! the ways in order again: our fingerprint and fresh → duplicate; an empty or
//! expired way → compare-and-swap our entry in (on failure, look at the same way again, so two
//! shards racing on one id both land on the same way and exactly one wins); a fresh entry of
//! another id → next way. A bucket full of fresh entries evicts its oldest (counted): the table
//! bounds memory, not traffic, so under overload an old id can be forgotten early — sized right
//! (`entries` ≥ distinct deduplicated ids per window), it is not. The eviction is a
//! compare-and-swap too (a loser looks again), so two shards evicting for one id at once insert
//! it once. The one race that lets a duplicate through is two arrivals of the same id while
//! another way of their bucket expires between their scans; a journal consumer that needs
//! exactly-once still keys by id.
//!
//! 128-bit atomics (`portable_atomic::AtomicU128`): on x86-64 a compare-exchange is
//! `lock cmpxchg16b`, chosen at run time (CPUID, read once) since the default x86-64 target does
//! not assume it; a load is `vmovdqa` on a CPU with AVX (16-byte aligned AVX loads are atomic per
//! Intel and AMD), else a `lock cmpxchg16b` that writes the line it reads. On a CPU without
//! CMPXCHG16B (the first x86-64 generation, or a VM given a bare CPU model such as `qemu64`) the
//! crate falls back to striped seqlocks: a lock on the request path. [`lock_free`]
//! tells, and `runtime::start` warns of it on such a CPU (saying to give the VM a CPU model
//! with it, x86-64-v2 or later, or to set `dedup.window_ms = 0`): still correct, just slower.
//!
//! Acknowledgement: on an `ack = "received"` endpoint a duplicate is answered at once. On an
//! `ack = "logged"` endpoint its response waits, as the first copy's own does, until the first
//! copy is in the journal (`net::connection`: the shard's own journal wakes it; another shard's
//! is polled, bounded by `idle_timeout_ms`), and when that journal fails it is refused as a
//! `logged` request whose own event failed is (the connection closes unanswered): a 2xx always
//! means the event survives `kill -9`, whichever copy carried it. A POST batch's answer waits
//! for the first copies of its duplicate items likewise, on at most
//! `net::pipeline::ELSEWHERE_MAX` other shards (an item past that is refused for a retry). While any shard's journal
//! fails, `logged` endpoints also refuse before this lookup (`ShardShared::any_journal_unavailable`).
//! A first copy more than 2^[`SEQ_BITS`] events behind its shard's newest is read as a later
//! event of that shard: the wait is then longer than it needs to be, never shorter (the ring
//! holds far fewer events, so such a first copy is journaled long since).
//!
//! Crossing: this table is the only state on the request path shared between shards. A lookup
//! touches one cache line; an insert one CAS on it.

use portable_atomic::AtomicU128;
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed};

/// Entries per bucket: four 16-byte entries fill one 64-byte cache line.
pub const WAYS: usize = 4;
/// Bytes of one entry: what each of `dedup.entries` costs.
pub const ENTRY_BYTES: usize = 16;
/// Bounds of `dedup.entries`.
pub const ENTRIES_MIN: usize = 1024;
pub const ENTRIES_MAX: usize = 1 << 28;
/// Longest window: ages are 32-bit centiseconds; stay far below the wrap.
pub const WINDOW_MS_MAX: u64 = 7 * 86_400_000;

/// Bits of the first copy's sequence number kept in an entry (bits 32..56); its shard takes the
/// 8 above them.
pub const SEQ_BITS: u32 = 24;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

const _: () = assert!(ENTRIES_MIN.is_multiple_of(WAYS) && ENTRIES_MIN.is_power_of_two());
// The shard index fits the 8 bits above the seq.
const _: () = assert!(crate::constants::SHARDS_MAX <= 1 << (32 - SEQ_BITS));
// A shard's events not yet journaled are at most what its ring holds plus one drain batch
// popped and not yet published (at most another ring's worth): the newest seq with the right
// low bits at or below the shard's pushed count is then the first copy's whenever the first
// copy can still be waiting for the journal (`full_seq`).
const _: () = assert!(2 * crate::constants::RING_EVENTS_MAX < 1 << SEQ_BITS);
const _: () = assert!(WINDOW_MS_MAX / 10 < (u32::MAX / 2) as u64);

#[repr(C, align(64))]
struct Bucket([AtomicU128; WAYS]);

const _: () = assert!(std::mem::size_of::<AtomicU128>() == ENTRY_BYTES);
// cmpxchg16b needs 16-byte alignment; the bucket's 64 keeps each entry on it.
const _: () = assert!(std::mem::align_of::<AtomicU128>() == ENTRY_BYTES);
const _: () = assert!(std::mem::size_of::<Bucket>() == 64 && WAYS * ENTRY_BYTES == 64);

/// Whether the table's 128-bit compare-exchange is one CPU instruction on this machine (x86-64:
/// CMPXCHG16B). When it is not, every lookup takes one of portable-atomic's striped seqlocks.
pub fn lock_free() -> bool {
    AtomicU128::is_lock_free()
}

/// The entry's fingerprint (0 only in an empty way).
fn fingerprint(v: u128) -> u64 {
    (v >> 64) as u64
}

/// The entry's time, in centiseconds truncated to 32 bits.
fn stamp(v: u128) -> u32 {
    v as u32
}

/// The entry's first copy: its shard and the low SEQ_BITS of its sequence number.
fn first_copy(v: u128) -> FirstCopy {
    FirstCopy { shard: (v >> 56) as u8 as u16, seq_low: (v >> 32) as u32 & SEQ_MASK as u32 }
}

/// Where the first copy of a duplicated id went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirstCopy {
    pub shard: u16,
    /// The low [`SEQ_BITS`] of its sequence number in that shard's ring ([`full_seq`]).
    pub seq_low: u32,
}

/// Whether an id was seen inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time inside the window: publish it.
    New,
    /// Published already inside the window: answer, do not publish.
    Duplicate(FirstCopy),
}

/// The sequence number of a first copy from its low [`SEQ_BITS`]: the newest seq at or below
/// `newest` with those bits, 0 when there is none (seqs start at 1). `newest` must be at least
/// the first copy's seq: its shard's pushed count read after the entry, plus one (the other
/// reactor enters its entry just before it commits the event). A first copy older than a lap
/// of 2^SEQ_BITS reads as a newer seq: a wait for a later event of the same shard.
pub fn full_seq(seq_low: u32, newest: u64) -> u64 {
    let low = u64::from(seq_low) & SEQ_MASK;
    let candidate = (newest & !SEQ_MASK) | low;
    if candidate <= newest {
        candidate
    } else {
        // Below: the previous lap, when there is one.
        candidate.saturating_sub(1 << SEQ_BITS)
    }
}

pub struct Dedup {
    buckets: Box<[Bucket]>,
    mask: u64,
    window_cs: u32,
    evictions: AtomicU64,
}

impl Dedup {
    /// `entries` is a power of two in ENTRIES_MIN..=ENTRIES_MAX (config validates it);
    /// `window_ms` ≥ 1.
    pub fn new(entries: usize, window_ms: u64) -> Dedup {
        let entries = entries.clamp(ENTRIES_MIN, ENTRIES_MAX).next_power_of_two();
        let n = entries / WAYS;
        let buckets: Box<[Bucket]> = (0..n).map(|_| Bucket(Default::default())).collect();
        Dedup {
            buckets,
            mask: (n - 1) as u64,
            window_cs: window_ms.clamp(1, WINDOW_MS_MAX).div_ceil(10) as u32,
            evictions: AtomicU64::new(0),
        }
    }

    /// Records `id` (of event type `type_id`) at `now_ns` (Unix ns) unless it is already there
    /// and fresh; `shard` and `seq` say where this copy goes when it is new (the caller's shard
    /// and the sequence number its commit will give it), and a duplicate is told the first's.
    /// `type_key`: `EventType::key`, a hash of the type's name (not its position in the
    /// config, which a reload that adds or removes a type shifts).
    #[inline]
    pub fn check(&self, id: &[u8; 16], type_key: u64, now_ns: u64, shard: u16, seq: u64) -> Seen {
        debug_assert!((shard as usize) < crate::constants::SHARDS_MAX);
        let mut key = [0u8; 24];
        key[..16].copy_from_slice(id);
        key[16..].copy_from_slice(&type_key.to_le_bytes());
        let h = xxhash_rust::xxh3::xxh3_128_with_seed(&key, 0x0064_6564_7570);
        // The bucket from the low half, the fingerprint from the high half: ids that share a
        // bucket still have 64 bits of fingerprint to differ in.
        let fp = ((h >> 64) as u64).max(1);
        let now = (now_ns / 10_000_000) as u32;
        let place = u64::from(shard as u8) << 24 | (seq & SEQ_MASK);
        let mine = u128::from(fp) << 64 | u128::from(place) << 32 | u128::from(now);
        let bucket = &self.buckets[(h as u64 & self.mask) as usize].0;
        // Signed age: another shard (its clock read once per read batch) or a clock stepped
        // back can stamp an entry a little after our `now`; that entry is fresh, not 497 days
        // old. Up to one window ahead counts (the window is at most 7 days, far inside i32).
        let window = self.window_cs as i32;
        let fresh = |v: u128| v != 0 && (-window..window).contains(&(now.wrapping_sub(stamp(v)) as i32));
        // Until our entry is in or a live one of our id is found: a way that changed under an
        // eviction's compare-and-swap sends us round again.
        loop {
            // First look for our own live entry in every way: an expired way of another id may sit
            // before it and would otherwise take a second copy.
            for w in bucket {
                let v = w.load(Acquire);
                if fingerprint(v) == fp && fresh(v) {
                    return Seen::Duplicate(first_copy(v));
                }
            }
            for way in bucket {
                let mut v = way.load(Acquire);
                loop {
                    if fingerprint(v) == fp && fresh(v) {
                        return Seen::Duplicate(first_copy(v));
                    }
                    if fresh(v) {
                        break; // another id's live entry: try the next way
                    }
                    match way.compare_exchange(v, mine, AcqRel, Acquire) {
                        Ok(_) => return Seen::New,
                        Err(now_there) => v = now_there,
                    }
                }
            }
            // Every way holds a fresh entry of another id: replace the oldest. By compare-and-swap,
            // not a store: two shards evicting for the same id at once would both insert it (a
            // duplicate through), and a store could overwrite an entry another shard has just put
            // there (its id's repeat then through). The loser looks again, and finds the winner's.
            // One look at every way, which the swap then holds to: our id there now (another
            // shard's insert since our scans) is a duplicate, not a way to evict.
            let ways: [u128; WAYS] = std::array::from_fn(|i| bucket[i].load(Acquire));
            if let Some(&v) = ways.iter().find(|&&v| fingerprint(v) == fp && fresh(v)) {
                return Seen::Duplicate(first_copy(v));
            }
            let (oldest, seen) = ways
                .iter()
                .copied()
                .enumerate()
                .max_by_key(|&(_, v)| now.wrapping_sub(stamp(v)) as i32)
                .unwrap_or((0, 0));
            // AcqRel, as the insert above: a shard that reads this entry (Acquire) must then see
            // this shard's ring count at least as of this insert, or it would rebuild the first
            // copy's seq too low and answer a `logged` repeat before that copy is journaled
            // (`ShardCtx::first_copy_pending`).
            if bucket[oldest].compare_exchange(seen, mine, AcqRel, Acquire).is_ok() {
                self.evictions.fetch_add(1, Relaxed);
                return Seen::New;
            }
        }
    }

    /// Fresh entries forgotten early because their bucket was full.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_entry_stamped_a_little_after_now_is_still_seen() {
        use super::*;
        const T0: u64 = 1_795_000_000_000_000_000;
        const MS: u64 = 1_000_000;
        let d = Dedup::new(1024, 300_000);
        let id = [7u8; 16];
        // Another shard's later clock read landed first.
        assert_eq!(d.check(&id, 0, T0 + 20 * MS, 0, 1), Seen::New);
        assert_eq!(d.check(&id, 0, T0 + 10 * MS, 0, 1), DUP);
        // Far in the future (more than a window): stale, the id is new again.
        let far = [8u8; 16];
        assert_eq!(d.check(&far, 0, T0 + 400_000 * MS, 0, 1), Seen::New);
        assert_eq!(d.check(&far, 0, T0, 0, 1), Seen::New);
    }

    use super::*;
    use std::sync::Arc;

    fn id(n: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        id
    }

    const T0: u64 = 1_790_000_000_000_000_000;
    /// What a first copy recorded by the tests that do not look at it (shard 0, seq 1) gives.
    const DUP: Seen = Seen::Duplicate(FirstCopy { shard: 0, seq_low: 1 });
    const MS: u64 = 1_000_000;

    #[test]
    fn a_repeat_inside_the_window_is_a_duplicate_and_outside_is_new() {
        let d = Dedup::new(1024, 1000);
        assert_eq!(d.check(&id(1), 0, T0, 0, 1), Seen::New);
        assert_eq!(d.check(&id(1), 0, T0 + 999 * MS, 0, 1), DUP);
        assert_eq!(d.check(&id(1), 1, T0, 0, 1), Seen::New, "the type is part of the key");
        assert_eq!(d.check(&id(2), 0, T0, 0, 1), Seen::New);
        assert_eq!(d.check(&id(1), 0, T0 + 1000 * MS, 0, 1), Seen::New, "the window has passed");
        assert_eq!(d.check(&id(1), 0, T0 + 1500 * MS, 0, 1), DUP, "re-recorded at 1000 ms");
    }

    #[test]
    fn a_full_bucket_evicts_its_oldest_and_counts_it() {
        let d = Dedup::new(1024, 60_000);
        for n in 0..20_000u64 {
            d.check(&id(n), 0, T0 + n * MS, 0, 1);
        }
        assert!(d.evictions() > 0);
        // The most recent ids are still remembered.
        for n in 19_990..20_000u64 {
            assert_eq!(d.check(&id(n), 0, T0 + 20_000 * MS, 0, 1), DUP, "{n}");
        }
    }

    /// Regression: with a 32-bit fingerprint, two distinct ids that landed in one bucket with
    /// equal fingerprints were one id to the table, and the second (a real event, perhaps a
    /// billing notice) was answered as a duplicate and never journaled. Here two such ids are
    /// found by a birthday search over the old scheme (xxh3_64: bucket from the low bits of a
    /// 1024-entry, 8-way table, fingerprint = high 32 bits | 1), and the table must tell them
    /// apart.
    #[test]
    fn ids_that_collided_in_the_old_32_bit_fingerprint_are_told_apart() {
        const OLD_BUCKET_MASK: u64 = 1024 / 8 - 1;
        let old_key = |n: u64| {
            let mut key = [0u8; 24];
            key[..16].copy_from_slice(&id(n));
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key, 0x0064_6564_7570);
            (((h >> 32) as u32 | 1) as u64) << 32 | (h & OLD_BUCKET_MASK)
        };
        // 38 bits to match (7 of bucket, 31 of fingerprint): a collision is expected after
        // ~2^19 ids; 2^22 makes missing one a ~1e-14 event (and the search is deterministic).
        let mut seen = std::collections::HashMap::with_capacity(1 << 20);
        let (a, b) = (0..1u64 << 22)
            .find_map(|n| seen.insert(old_key(n), n).map(|m| (m, n)))
            .expect("a 38-bit collision among 2^22 ids");
        assert_ne!(a, b);
        assert_eq!(old_key(a), old_key(b), "the old table could not tell {a} from {b}");

        let d = Dedup::new(1024, 60_000);
        assert_eq!(d.check(&id(a), 0, T0, 0, 1), Seen::New);
        assert_eq!(d.check(&id(b), 0, T0, 0, 1), Seen::New, "{b} is a different event from {a}");
        assert_eq!(d.check(&id(a), 0, T0 + MS, 0, 1), DUP);
        assert_eq!(d.check(&id(b), 0, T0 + MS, 0, 1), DUP);
    }

    #[test]
    fn an_entry_keeps_the_first_copys_shard_and_low_sequence_bits() {
        let d = Dedup::new(1024, 60_000);
        let seq = (5u64 << SEQ_BITS) | 0x00ab_cdef;
        assert_eq!(d.check(&id(1), 0, T0, 255, seq), Seen::New);
        let first = FirstCopy { shard: 255, seq_low: 0x00ab_cdef };
        // Whoever asks next, and whatever seq it would have given the event, learns the first's.
        assert_eq!(d.check(&id(1), 0, T0 + MS, 3, 99), Seen::Duplicate(first));
        assert_eq!(d.check(&id(1), 0, T0 + 2 * MS, 255, seq + 7), Seen::Duplicate(first));
        // Past the window the id is recorded again, with the new copy's shard and seq.
        assert_eq!(d.check(&id(1), 0, T0 + 60_000 * MS, 7, 12), Seen::New);
        assert_eq!(d.check(&id(1), 0, T0 + 60_001 * MS, 0, 1), Seen::Duplicate(FirstCopy { shard: 7, seq_low: 12 }));
    }

    /// Bits 32..64 of an entry were always zero; now they hold the shard and seq. Expiry and
    /// eviction must still read the time from the low 32 bits alone.
    #[test]
    fn expiry_and_eviction_read_only_the_time_with_shard_and_seq_bits_set() {
        let d = Dedup::new(1024, 1000);
        let all_ones = (1u64 << SEQ_BITS) - 1;
        assert_eq!(d.check(&id(1), 0, T0, 255, all_ones), Seen::New);
        assert_eq!(
            d.check(&id(1), 0, T0 + 999 * MS, 0, 1),
            Seen::Duplicate(FirstCopy { shard: 255, seq_low: 0xff_ffff })
        );
        assert_eq!(d.check(&id(1), 0, T0 + 1000 * MS, 1, 2), Seen::New, "expired at one window");
        // A full bucket still evicts its oldest, by time: fill the table with set high bits.
        let d = Dedup::new(1024, 600_000);
        for n in 0..20_000u64 {
            d.check(&id(n), 0, T0 + n * MS, 255, all_ones - n);
        }
        assert!(d.evictions() > 0);
        for n in 19_990..20_000u64 {
            let want = FirstCopy { shard: 255, seq_low: ((all_ones - n) & all_ones) as u32 };
            assert_eq!(d.check(&id(n), 0, T0 + 20_000 * MS, 0, 1), Seen::Duplicate(want), "{n}");
        }
    }

    #[test]
    fn the_full_sequence_number_is_the_newest_one_with_those_low_bits() {
        const WRAP: u64 = 1 << SEQ_BITS;
        let low = |s: u64| (s & (WRAP - 1)) as u32;
        // Not wrapped yet.
        assert_eq!(full_seq(low(5), 5), 5);
        assert_eq!(full_seq(low(5), 9), 5);
        assert_eq!(full_seq(low(WRAP - 1), WRAP - 1), WRAP - 1);
        // Around the wrap: a first copy just before it, the shard just after.
        assert_eq!(full_seq(low(WRAP - 1), WRAP), WRAP - 1);
        assert_eq!(full_seq(low(WRAP - 1), WRAP + 3), WRAP - 1);
        assert_eq!(full_seq(low(WRAP), WRAP), WRAP);
        assert_eq!(full_seq(low(WRAP + 2), WRAP + 3), WRAP + 2);
        // Many laps on.
        assert_eq!(full_seq(low(7 * WRAP + 10), 7 * WRAP + 10), 7 * WRAP + 10);
        assert_eq!(full_seq(low(7 * WRAP - 10), 7 * WRAP + 10), 7 * WRAP - 10);
        // Never newer than `newest`, never 0: a seq older than a lap reads as the newest with
        // its low bits (a wait for a later event, which is safe).
        assert_eq!(full_seq(low(WRAP + 3), WRAP + 3 + WRAP), 2 * WRAP + 3);
        assert_eq!(full_seq(0, WRAP - 1), 0, "no seq ≤ newest has those bits: nothing to wait for");
        assert_eq!(full_seq(low(9), 3), 0, "newer than `newest`: not in this run");
    }

    #[test]
    fn concurrent_shards_publish_each_id_exactly_once() {
        let d = Arc::new(Dedup::new(1 << 16, 60_000));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let mut new = 0u32;
                    for round in 0..2000u64 {
                        // Every thread sends the same ids in a different order.
                        let n = (round * 7 + t * 13) % 2000;
                        if d.check(&id(n), 3, T0, t as u16, round + 1) == Seen::New {
                            new += 1;
                        }
                    }
                    new
                })
            })
            .collect();
        let total: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 2000);
        assert_eq!(d.evictions(), 0);
    }

    /// Regression: in a table whose buckets are full of fresh entries, two shards that got the
    /// same id at once both reached the eviction, a plain store, and both inserted it: a
    /// duplicate through. Each round here starts both at once on a new id.
    #[test]
    fn two_shards_evicting_for_the_same_id_at_once_insert_it_once() {
        let d = Arc::new(Dedup::new(ENTRIES_MIN, 60_000));
        // Every bucket full of fresh entries of other ids.
        for n in 0..(ENTRIES_MIN as u64 * 8) {
            d.check(&id(1_000_000 + n), 3, T0, 0, n + 1);
        }
        let rounds = 2000u64;
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2u16)
            .map(|t| {
                let (d, barrier) = (d.clone(), barrier.clone());
                std::thread::spawn(move || {
                    (0..rounds)
                        .filter(|&n| {
                            barrier.wait();
                            d.check(&id(n), 3, T0, t, n + 1) == Seen::New
                        })
                        .count()
                })
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total as u64, rounds, "an id inserted twice");
    }
}
