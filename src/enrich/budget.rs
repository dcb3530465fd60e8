//! Per-source budgets: a token bucket per client address prefix, in one fixed-size lock-free
//! table shared by all shards.
//!
//! Stage: right after routing, before anything is decoded. In: the client address and the
//! time; out: within budget, or over it with the seconds until one more request would pass.
//! What the endpoint then does (`429` + `Retry-After`, or answer and drop) is the caller's.
//!
//! Keys: the client address masked to a prefix (IPv4 /24, IPv6 /48 by default: one household,
//! office or small hosting block — one client can cycle addresses inside it, not across it).
//! IPv4-mapped IPv6 addresses, and IPv4 clients in the NAT64 well-known prefix `64:ff9b::/96`
//! (what an IPv6-only tracker behind a stateless translator sees), count as IPv4.
//!
//! The bucket is kept as a GCRA "theoretical arrival time" (TAT), one `AtomicU64` per entry:
//! `fingerprint (20 bits) << 44 | TAT (44 bits of 1/64 µs of Unix time, wrapping every 3.2
//! days)`. Times are compared by their wrapping distance only, so there is no epoch: a wall
//! clock stepped back, even to before the process started, is one more step on the circle. A request at `now` computes `tat' = max(tat, now) + interval`; it passes
//! when `tat' - now <= interval × burst`, and then stores `tat'` with one compare-and-swap
//! (retried a bounded number of times; a CAS that keeps losing lets the request pass).
//! Equivalent to a bucket of `burst` tokens refilled at `rate_per_s`; 1/64 µs keeps the
//! interval within 1% of the configured rate up to ~640,000/s (whole µs let 600,000/s pass
//! as 1,000,000/s).
//!
//! A TAT is never legitimately more than `interval × (burst + 1)` ahead of the latest clock
//! read. Another shard's read may be older than that (each connection read is charged with the
//! time it was received, and a POST batch's items all with one), by up to STALE_SLACK. One further
//! ahead than both is stale: an entry idle so long its time wrapped, or a wall clock stepped
//! back. It counts as a fresh bucket, so neither throttles a source that did nothing.
//!
//! The table is direct-mapped, its hash seeded at random per process, so which prefixes share an
//! entry cannot be worked out ahead. An entry holding another prefix's fingerprint is taken over
//! as a fresh bucket only when that bucket is idle (its TAT not ahead of now: it holds its whole
//! burst, so nothing of it is lost). While it is in use the newcomer is charged against it too:
//! two prefixes that collide while both are busy share one budget. That fails closed, on
//! purpose: taking over a live bucket let two colliding prefixes take turns resetting each other
//! (A, B, A, B, … each met a fresh bucket), which is no limit at all. Size `entries` above the
//! number of prefixes active at once to keep sharing rare.

use crate::xorshift::random_seed;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::SeqCst};

pub const ENTRIES_MIN: usize = 1024;
pub const ENTRIES_MAX: usize = 1 << 24;
const TAT_BITS: u32 = 44;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
/// TAT units per µs.
const TICKS_PER_US: u64 = 64;
/// CAS attempts before a contended request is let through.
const CAS_TRIES: usize = 4;
/// How much older than another shard's one shard's `now` may be and still charge against its
/// TAT, in ticks (1 s). A TAT only one interval past the tolerance was taken for stale: a shard
/// whose clock read lagged by 1.5 ms (a POST batch under way) handed a throttled source a full
/// burst, at 1000/s.
const STALE_SLACK: u64 = 1_000_000 * TICKS_PER_US;
/// Longest budget a bucket holds, `burst / rate_per_s`, in seconds (the config refuses more;
/// `Budgets::new` caps it). The TAT's distance from now is read modulo 2^44 ticks (3.26 days):
/// a tolerance near that could never be exceeded — every request would pass.
pub const BURST_S_MAX: u64 = 86_400;
// The furthest a TAT may be ahead (tolerance + one interval at the slowest rate of 1/s + the
// slack) stays within half the TAT's range, so ahead and behind are told apart.
const _: () = assert!((BURST_S_MAX + 1) * 1_000_000 * TICKS_PER_US + STALE_SLACK < 1 << (TAT_BITS - 1));

/// The budget as configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Sustained requests per second per prefix; 0 = budgets off.
    pub rate_per_s: u32,
    /// Requests a prefix may send at once above the sustained rate.
    pub burst: u32,
    pub ipv4_prefix_bits: u8,
    pub ipv6_prefix_bits: u8,
    /// Table entries, a power of two; costs entries × 8 bytes shared by all shards.
    pub entries: usize,
    /// 127.0.0.0/8 and ::1 are never limited (health checks, local load tests, a local proxy).
    pub exempt_loopback: bool,
    /// Open connections one prefix may hold across all shards; 0 = no limit.
    pub connections_per_prefix_max: u32,
}

/// Result of charging one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    Within,
    /// Over budget; one more request would pass in this many seconds (≥ 1).
    Over {
        retry_after_s: u32,
    },
}

pub struct Budgets {
    table: Box<[AtomicU64]>,
    mask: u64,
    /// The prefix hash's seed, drawn at start ([`random_seed`]).
    seed: u64,
    /// In ticks (1/64 µs), as the TAT.
    interval: u64,
    tolerance: u64,
    cfg: BudgetConfig,
}

impl Budgets {
    /// With a hash seed random per process: with a seed in the source, prefixes that share a
    /// table entry could be found offline.
    pub fn new(cfg: BudgetConfig) -> Budgets {
        Budgets::with_seed(cfg, random_seed())
    }

    /// `new` with a given hash seed (tests: which prefixes share an entry is then fixed).
    pub fn with_seed(cfg: BudgetConfig, seed: u64) -> Budgets {
        let entries = cfg.entries.clamp(ENTRIES_MIN, ENTRIES_MAX).next_power_of_two();
        let rate = u64::from(cfg.rate_per_s.max(1));
        let interval = (1_000_000 * TICKS_PER_US / rate).max(1);
        Budgets {
            table: (0..entries).map(|_| AtomicU64::new(0)).collect(),
            mask: (entries - 1) as u64,
            seed,
            interval,
            tolerance: (interval * u64::from(cfg.burst.max(1))).min(BURST_S_MAX * 1_000_000 * TICKS_PER_US),
            cfg,
        }
    }

    /// Charges one request from `ip` at `now_ns` (Unix ns).
    #[inline]
    pub fn charge(&self, ip: IpAddr, now_ns: u64) -> Charge {
        let Some(h) = prefix_hash(&self.cfg, ip, self.seed) else { return Charge::Within };
        let fp = (h >> 44) | 1; // 20 bits, never 0 (0 marks an empty entry)
        let slot = &self.table[(h & self.mask) as usize];
        // In µs first: now_ns × 64 would overflow.
        let now = ((now_ns / 1000) * TICKS_PER_US + (now_ns % 1000) * TICKS_PER_US / 1000) & TAT_MASK;
        let mut v = slot.load(Acquire);
        for _ in 0..CAS_TRIES {
            let tat = v & TAT_MASK;
            // Times wrap at 2^44 ticks: compare by wrapping distance. A TAT in the past, or
            // further ahead than any charge puts it (stale, see the module doc), restarts at now.
            let ahead = tat.wrapping_sub(now) & TAT_MASK;
            // An empty entry (0) is no bucket, whatever its zero TAT would read as.
            let live = v != 0 && ahead > 0 && ahead <= self.tolerance + self.interval + STALE_SLACK;
            // Another prefix's bucket: shared while in use, taken over once idle (module doc).
            let owner = if v >> TAT_BITS == fp || !live { fp } else { v >> TAT_BITS };
            let base = if live { tat } else { now };
            let next = (base + self.interval) & TAT_MASK;
            let wait = (next.wrapping_sub(now) & TAT_MASK).saturating_sub(self.tolerance);
            if wait > 0 {
                let per_s = 1_000_000 * TICKS_PER_US;
                return Charge::Over { retry_after_s: wait.div_ceil(per_s).clamp(1, u32::MAX as u64) as u32 };
            }
            match slot.compare_exchange(v, owner << TAT_BITS | next, AcqRel, Acquire) {
                Ok(_) => return Charge::Within,
                Err(cur) => v = cur,
            }
        }
        Charge::Within
    }
}

/// A hash of the prefix `ip` belongs to (IPv4-mapped IPv6, and an IPv4 client translated into
/// the NAT64 well-known prefix `64:ff9b::/96`, count as IPv4); None for an exempt loopback
/// address.
#[inline]
fn prefix_hash(cfg: &BudgetConfig, ip: IpAddr, seed: u64) -> Option<u64> {
    let mut key = [0u8; 17];
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().or_else(|| nat64_ipv4(&v6)).map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if cfg.exempt_loopback && ip.is_loopback() {
        return None;
    }
    match ip {
        IpAddr::V4(a) => {
            key[0] = 4;
            key[1..5].copy_from_slice(&mask(&a.octets(), cfg.ipv4_prefix_bits));
        }
        IpAddr::V6(a) => {
            key[0] = 6;
            key[1..].copy_from_slice(&mask(&a.octets(), cfg.ipv6_prefix_bits));
        }
    }
    Some(xxhash_rust::xxh3::xxh3_64_with_seed(&key, seed))
}

/// The IPv4 client inside a NAT64 well-known-prefix address (RFC 6052, `64:ff9b::a.b.c.d`), as
/// an IPv6-only tracker behind a stateless translator (SIIT-DC, RFC 7755) sees every IPv4
/// client: by its /48 they would all be one source, sharing one budget.
#[inline]
fn nat64_ipv4(v6: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    // A translator never uses the prefix for 127/8 (RFC 6052 §3.1): such an address is not
    // taken for the exempt loopback.
    nat64_embedded(v6).filter(|v4| !v4.is_loopback())
}

/// The IPv4 client an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`) or translated by
/// NAT64 (`64:ff9b::a.b.c.d`). What is stored, budgeted and checked as the client's address.
#[inline]
pub(crate) fn ipv4_inside(v6: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    v6.to_ipv4_mapped().or_else(|| nat64_embedded(v6))
}

/// The IPv4 address inside `64:ff9b::/96` (RFC 6052's well-known NAT64 prefix), whatever it is.
#[inline]
pub(crate) fn nat64_embedded(v6: &std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let o = v6.octets();
    (o[..12] == [0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])
        .then(|| std::net::Ipv4Addr::new(o[12], o[13], o[14], o[15]))
}

/// Open connections per address prefix, in one fixed-size table shared by all shards
/// (SO_REUSEPORT spreads one source's connections over them). Each prefix counts in two
/// counters picked by two parts of its hash and is judged by the smaller: another prefix
/// shares both only rarely, and a shared counter can only make a prefix look bigger. So
/// collisions fail closed here — a prefix may be refused early — and the table (`[budget]
/// entries` counters of 4 bytes) is sized to keep that rare. Connections accepted at the same
/// instant on several shards never pass the limit together: each counts itself in both
/// counters, then reads both again, and of those admitted the last to read sees them all (one
/// total order, SeqCst). Racing, they may all be refused instead: failing closed again.
pub struct Connections {
    counts: Box<[AtomicU32]>,
    mask: u64,
    seed: u64,
    max: u32,
    cfg: BudgetConfig,
}

/// An admitted connection's counters in [`Connections`]; `release` them when it closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    a: u32,
    b: u32,
}

/// What [`Connections::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Counted: release it when the connection closes.
    Counted(Admitted),
    /// A loopback address with `exempt_loopback`: not counted.
    Exempt,
    /// Its prefix already holds `connections_per_prefix_max`.
    Refused,
}

impl Connections {
    /// None when `connections_per_prefix_max` is 0 (no limit).
    pub fn new(cfg: BudgetConfig) -> Option<Connections> {
        let entries = cfg.entries.clamp(ENTRIES_MIN, ENTRIES_MAX).next_power_of_two();
        (cfg.connections_per_prefix_max > 0).then(|| Connections {
            counts: (0..entries).map(|_| AtomicU32::new(0)).collect(),
            mask: (entries - 1) as u64,
            seed: random_seed(),
            max: cfg.connections_per_prefix_max,
            cfg,
        })
    }

    /// Counts a new connection from `ip`, unless its prefix is full.
    pub fn admit(&self, ip: IpAddr) -> Admission {
        let Some(h) = prefix_hash(&self.cfg, ip, self.seed) else { return Admission::Exempt };
        let a = (h & self.mask) as u32;
        let mut b = ((h >> 32) & self.mask) as u32;
        if b == a {
            b = (a + 1) & self.mask as u32;
        }
        let (ca, cb) = (&self.counts[a as usize], &self.counts[b as usize]);
        let held = (ca.fetch_add(1, SeqCst) + 1).min(cb.fetch_add(1, SeqCst) + 1);
        // Read again once counted in both: a connection admitted on another shard between our
        // two increments shows in one of them only at the first reading.
        let held = held.max(ca.load(SeqCst).min(cb.load(SeqCst)));
        let admitted = Admitted { a, b };
        if held > self.max {
            self.release(admitted);
            return Admission::Refused;
        }
        Admission::Counted(admitted)
    }

    pub fn release(&self, c: Admitted) {
        self.counts[c.a as usize].fetch_sub(1, AcqRel);
        self.counts[c.b as usize].fetch_sub(1, AcqRel);
    }
}

/// `octets` with all bits after the first `bits` cleared.
#[inline]
fn mask<const N: usize>(octets: &[u8; N], bits: u8) -> [u8; N] {
    let mut out = *octets;
    for (i, b) in out.iter_mut().enumerate() {
        let keep = (bits as usize).saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_790_000_000_000_000_000;
    const MS: u64 = 1_000_000;

    fn config(rate: u32, burst: u32) -> BudgetConfig {
        BudgetConfig {
            rate_per_s: rate,
            burst,
            ipv4_prefix_bits: 24,
            ipv6_prefix_bits: 48,
            entries: 1024,
            exempt_loopback: true,
            connections_per_prefix_max: 0,
        }
    }

    /// A fixed hash seed: which prefixes share an entry is the same on every run.
    const SEED: u64 = 0x5eed_0fb0_d6e7;

    fn budgets(rate: u32, burst: u32) -> Budgets {
        Budgets::with_seed(config(rate, burst), SEED)
    }

    /// Two /24s whose buckets share one entry of `b`'s table, with different fingerprints.
    fn colliding_pair(b: &Budgets) -> (IpAddr, IpAddr) {
        let mut seen = std::collections::HashMap::new();
        for n in 0u32..1 << 16 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | n << 8));
            let h = prefix_hash(&b.cfg, ip, b.seed).unwrap();
            if let Some(&(other, fp)) = seen.get(&(h & b.mask)) {
                if fp != (h >> 44) | 1 {
                    return (other, ip);
                }
            }
            seen.insert(h & b.mask, (ip, (h >> 44) | 1));
        }
        unreachable!("65536 prefixes into 1024 entries always collide")
    }

    /// Regression: an entry held by another prefix was taken over as a fresh bucket, so two
    /// colliding prefixes taking turns each met a full burst every time: no limit at all. While
    /// the entry's bucket is in use they now share it; once it is idle it is taken over.
    #[test]
    fn colliding_prefixes_share_a_live_bucket_instead_of_resetting_it() {
        let b = budgets(1, 4);
        let (a, c) = colliding_pair(&b);
        let mut passed = 0;
        for i in 0..40 {
            let ip = if i % 2 == 0 { a } else { c };
            passed += usize::from(b.charge(ip, T0) == Charge::Within);
        }
        assert_eq!(passed, 4, "one burst between them, not one each turn");
        // Idle again (the burst refilled): the other prefix takes the entry over, whole.
        let later = T0 + 60_000 * MS;
        for _ in 0..4 {
            assert_eq!(b.charge(c, later), Charge::Within);
        }
        assert!(matches!(b.charge(c, later), Charge::Over { .. }));
    }

    #[test]
    fn the_prefix_hash_is_seeded_per_process() {
        let (x, y) = (Budgets::new(config(1, 1)), Budgets::new(config(1, 1)));
        assert_ne!(x.seed, y.seed, "two draws of 64 random bits");
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_ne!(prefix_hash(&x.cfg, ip, x.seed), prefix_hash(&y.cfg, ip, y.seed));
    }

    #[test]
    fn a_source_idle_for_months_or_a_clock_stepped_back_is_not_throttled() {
        const DAY: u64 = 86_400_000 * MS;
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for idle_days in [2, 3, 4, 7, 60, 102, 150, 203, 204, 400] {
            let b = budgets(1000, 2000);
            assert_eq!(b.charge(ip, T0 + MS), Charge::Within);
            assert_eq!(b.charge(ip, T0 + idle_days * DAY), Charge::Within, "after {idle_days} days");
        }
        let b = budgets(1000, 2000);
        assert_eq!(b.charge(ip, T0 + 10_000 * MS), Charge::Within);
        assert_eq!(b.charge(ip, T0 + 5_000 * MS), Charge::Within, "the clock stepped back 5 s");
    }

    /// Regression: a TAT more than one interval past the tolerance was taken for stale, so a
    /// shard charging with a clock read 1.5 ms older than another's (each connection read is
    /// charged with its receive time) gave a throttled source a fresh burst.
    #[test]
    fn a_throttled_source_stays_throttled_for_a_shard_whose_clock_read_lags() {
        let b = budgets(1000, 2000);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let now = T0 + 10_000 * MS;
        let passed = (0..3000).take_while(|_| b.charge(ip, now) == Charge::Within).count();
        assert_eq!(passed, 2000);
        for lag_us in [1, 1_500, 50_000, 500_000] {
            assert!(matches!(b.charge(ip, now - lag_us * 1000), Charge::Over { .. }), "read {lag_us} µs older");
        }
    }

    /// Regression: time was counted from the table's creation and saturated at it, so a wall
    /// clock stepped back to before the process started (NTP correcting a clock that booted
    /// fast) froze every bucket: each source got its burst and then nothing until the clock
    /// caught up again.
    #[test]
    fn a_wall_clock_stepped_back_to_before_the_start_still_refills() {
        let b = budgets(10, 5);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(b.charge(ip, T0), Charge::Within);
        let back = T0 - 3_600_000 * MS;
        for i in 0..5 {
            assert_eq!(b.charge(ip, back), Charge::Within, "burst request {i}");
        }
        assert!(matches!(b.charge(ip, back), Charge::Over { .. }));
        // 10/s: one token every 100 ms, on the new timeline.
        assert_eq!(b.charge(ip, back + 100 * MS), Charge::Within);
        assert!(matches!(b.charge(ip, back + 100 * MS), Charge::Over { .. }));
    }

    #[test]
    fn a_high_rate_is_kept_within_one_percent() {
        for rate in [300_000u32, 600_000] {
            // A burst of 50 absorbs the 0.5 µs steps of the arrivals below.
            let b = budgets(rate, 50);
            let ip: IpAddr = "198.51.100.7".parse().unwrap();
            // One request every 0.5 µs for one second: twice the rate at least.
            let passed = (0..2_000_000u64).filter(|i| b.charge(ip, T0 + i * 500) == Charge::Within).count();
            let limit = rate as usize + rate as usize / 100 + 50;
            assert!(passed <= limit, "{passed} passed in one second at rate {rate}");
            assert!(passed >= rate as usize - rate as usize / 100, "{passed} at rate {rate}");
        }
    }

    #[test]
    fn connections_per_prefix_are_capped_shared_by_the_prefix_and_freed_on_release() {
        let cfg = BudgetConfig { connections_per_prefix_max: 2, ..config(0, 1) };
        assert!(Connections::new(BudgetConfig { connections_per_prefix_max: 0, ..cfg }).is_none());
        let t = Connections::new(cfg).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let counted = |a: Admission| match a {
            Admission::Counted(x) => x,
            other => panic!("{other:?}"),
        };
        let a = counted(t.admit(ip("203.0.113.7")));
        // Same /24, and the same address written as IPv4-mapped IPv6: one prefix.
        let b = counted(t.admit(ip("::ffff:203.0.113.200")));
        assert_eq!(t.admit(ip("203.0.113.9")), Admission::Refused);
        // Another prefix has its own count; loopback is exempt and never counted.
        let other = counted(t.admit(ip("198.51.100.1")));
        for _ in 0..10 {
            assert_eq!(t.admit(ip("127.0.0.1")), Admission::Exempt);
        }
        t.release(a);
        let c = counted(t.admit(ip("203.0.113.1")));
        assert_eq!(t.admit(ip("203.0.113.2")), Admission::Refused, "a refusal leaves no count behind");
        for x in [b, c, other] {
            t.release(x);
        }
        assert!(t.counts.iter().all(|c| c.load(Acquire) == 0));
    }

    /// Shards admitting connections of one prefix at the same instant never hold more than the
    /// limit together (they passed it by one each when each judged by its own increments).
    #[test]
    fn connections_admitted_at_once_on_several_shards_never_pass_the_limit() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Barrier};
        let t = Arc::new(Connections::new(BudgetConfig { connections_per_prefix_max: 1, ..config(0, 1) }).unwrap());
        const THREADS: usize = 4;
        const ROUNDS: usize = 20_000;
        let barrier = Arc::new(Barrier::new(THREADS));
        let (admitted, worst) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..THREADS)
            .map(|k| {
                let (t, barrier, admitted, worst) = (t.clone(), barrier.clone(), admitted.clone(), worst.clone());
                std::thread::spawn(move || {
                    let ip: IpAddr = format!("203.0.113.{k}").parse().unwrap();
                    for _ in 0..ROUNDS {
                        barrier.wait();
                        let got = t.admit(ip);
                        if matches!(got, Admission::Counted(_)) {
                            admitted.fetch_add(1, SeqCst);
                        }
                        // Every admission of the round made, none released yet: all held at once.
                        barrier.wait();
                        if k == 0 {
                            worst.fetch_max(admitted.swap(0, SeqCst), SeqCst);
                        }
                        barrier.wait();
                        if let Admission::Counted(a) = got {
                            t.release(a);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(worst.load(SeqCst), 1, "connections of one prefix held at once");
        assert!(t.counts.iter().all(|c| c.load(Acquire) == 0));
    }

    #[test]
    fn a_burst_longer_than_the_tat_range_still_throttles() {
        // 1/s with a burst of 300,000: 3.5 days of budget, past the 44-bit TAT's 3.26 days. The
        // tolerance is capped at BURST_S_MAX seconds of budget, so the bucket still empties.
        let b = budgets(1, 300_000);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let passed = (0..300_001u64).take_while(|_| b.charge(ip, T0) == Charge::Within).count();
        assert_eq!(passed as u64, BURST_S_MAX, "requests passed at once");
        assert_eq!(b.charge(ip, T0), Charge::Over { retry_after_s: 1 });
    }

    #[test]
    fn burst_then_rate_then_refill() {
        let b = budgets(10, 5);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..5 {
            assert_eq!(b.charge(ip, T0), Charge::Within, "burst request {i}");
        }
        assert_eq!(b.charge(ip, T0), Charge::Over { retry_after_s: 1 });
        // 10/s: one token every 100 ms.
        assert_eq!(b.charge(ip, T0 + 100 * MS), Charge::Within);
        assert!(matches!(b.charge(ip, T0 + 100 * MS), Charge::Over { .. }));
        // After a long pause the full burst is back, no more.
        let later = T0 + 60_000 * MS;
        for _ in 0..5 {
            assert_eq!(b.charge(ip, later), Charge::Within);
        }
        assert!(matches!(b.charge(ip, later), Charge::Over { .. }));
    }

    #[test]
    fn prefixes_share_a_budget_and_others_do_not() {
        let b = budgets(1, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same: IpAddr = "192.0.2.200".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.3.1".parse().unwrap();
        assert_eq!(b.charge(a, T0), Charge::Within);
        assert_eq!(b.charge(same, T0), Charge::Within);
        assert!(matches!(b.charge(mapped, T0), Charge::Over { .. }), "same /24, v4-mapped");
        assert_eq!(b.charge(other, T0), Charge::Within);
        let v6a: IpAddr = "2001:db8:1:aaaa::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8:1:bbbb::2".parse().unwrap();
        let v6c: IpAddr = "2001:db8:2::1".parse().unwrap();
        assert_eq!(b.charge(v6a, T0), Charge::Within);
        assert_eq!(b.charge(v6b, T0), Charge::Within);
        assert!(matches!(b.charge(v6a, T0), Charge::Over { .. }), "same /48");
        assert_eq!(b.charge(v6c, T0), Charge::Within);
    }

    /// Behind a stateless IPv4/IPv6 translator (SIIT-DC, RFC 7755) an IPv6-only tracker sees
    /// every IPv4 client as `64:ff9b::a.b.c.d` (RFC 6052): keyed by its /48, all of them
    /// shared one budget, and one busy source got every IPv4 client refused.
    #[test]
    fn ipv4_clients_behind_a_nat64_prefix_each_have_their_own_budget() {
        let b = budgets(1, 1);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(b.charge(ip("64:ff9b::198.51.100.7"), T0), Charge::Within);
        assert_eq!(b.charge(ip("64:ff9b::203.0.113.9"), T0), Charge::Within, "another IPv4 /24");
        assert!(matches!(b.charge(ip("64:ff9b::198.51.100.200"), T0), Charge::Over { .. }), "the same /24");
        assert!(matches!(b.charge(ip("198.51.100.1"), T0), Charge::Over { .. }), "the same /24, untranslated");
        assert_eq!(b.charge(ip("64:ff9b::127.0.0.1"), T0), Charge::Within);
        assert!(matches!(b.charge(ip("64:ff9b::127.0.0.1"), T0), Charge::Over { .. }), "not the exempt loopback");
    }

    #[test]
    fn loopback_is_exempt_and_retry_after_counts_whole_seconds() {
        let b = budgets(1, 1);
        for _ in 0..100 {
            assert_eq!(b.charge("127.0.0.1".parse().unwrap(), T0), Charge::Within);
            assert_eq!(b.charge("::1".parse().unwrap(), T0), Charge::Within);
        }
        let ip: IpAddr = "10.9.9.9".parse().unwrap();
        assert_eq!(b.charge(ip, T0), Charge::Within);
        assert_eq!(b.charge(ip, T0), Charge::Over { retry_after_s: 1 });
        let slow = budgets(1, 1);
        slow.charge(ip, T0);
        // 1/s with a burst of 1: the next token is due 1 s later.
        assert_eq!(slow.charge(ip, T0 + 10 * MS), Charge::Over { retry_after_s: 1 });
        assert_eq!(slow.charge(ip, T0 + 1000 * MS), Charge::Within);
    }

    #[test]
    fn masks() {
        assert_eq!(mask(&[10, 1, 2, 3], 24), [10, 1, 2, 0]);
        assert_eq!(mask(&[255, 255, 255, 255], 20), [255, 255, 240, 0]);
        assert_eq!(mask(&[1, 2, 3, 4], 32), [1, 2, 3, 4]);
        assert_eq!(mask(&[1, 2, 3, 4], 0), [0, 0, 0, 0]);
    }
}
