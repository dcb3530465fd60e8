//! Per-source budgets: a token bucket per client address prefix, in one fixed-size lock-free
//! table shared by all shards.
//!
//! Stage: right after routing, before anything is decoded. In: the client address and the
//! time; out: within budget, or over it with the seconds until one more request would pass.
//! What the endpoint then does (`429` + `Retry-After`, or answer and drop) is the caller's.
//!
//! Keys: the client address masked to a prefix (IPv4 /24, IPv6 /48 by default: one household,
//! office or small hosting block — one client can cycle addresses inside it, not across it).
//! IPv4-mapped IPv6 addresses count as IPv4.
//!
//! The bucket is kept as a GCRA "theoretical arrival time" (TAT), one `AtomicU64` per entry:
//! `fingerprint (20 bits) << 44 | TAT (44 bits of µs since the table was made, 203 days)`.
//! A request at `now` computes `tat' = max(tat, now) + interval`; it passes when
//! `tat' - now <= interval × burst`, and then stores `tat'` with one compare-and-swap (retried
//! a bounded number of times; a CAS that keeps losing lets the request pass). Equivalent to a
//! bucket of `burst` tokens refilled at `rate_per_s`.
//!
//! The table is direct-mapped: an entry holding another prefix's fingerprint is taken over as a
//! fresh bucket. Two busy prefixes that share an entry therefore reset each other and both get
//! more than their budget — collisions fail open, never throttling an innocent source. Size
//! `entries` above the number of prefixes active at once to keep that rare.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::AcqRel, Ordering::Acquire};

pub const ENTRIES_MIN: usize = 1024;
pub const ENTRIES_MAX: usize = 1 << 24;
const TAT_BITS: u32 = 44;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;
/// CAS attempts before a contended request is let through.
const CAS_TRIES: usize = 4;

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
    interval_us: u64,
    tolerance_us: u64,
    epoch_ns: u64,
    cfg: BudgetConfig,
}

impl Budgets {
    /// `now_ns`: Unix nanoseconds at creation (the TAT epoch).
    pub fn new(cfg: BudgetConfig, now_ns: u64) -> Budgets {
        let entries = cfg.entries.clamp(ENTRIES_MIN, ENTRIES_MAX).next_power_of_two();
        let rate = u64::from(cfg.rate_per_s.max(1));
        let interval_us = (1_000_000 / rate).max(1);
        Budgets {
            table: (0..entries).map(|_| AtomicU64::new(0)).collect(),
            mask: (entries - 1) as u64,
            interval_us,
            tolerance_us: interval_us * u64::from(cfg.burst.max(1)),
            epoch_ns: now_ns,
            cfg,
        }
    }

    /// Charges one request from `ip` at `now_ns` (Unix ns).
    #[inline]
    pub fn charge(&self, ip: IpAddr, now_ns: u64) -> Charge {
        let mut key = [0u8; 17];
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) => {
                if self.cfg.exempt_loopback && a.is_loopback() {
                    return Charge::Within;
                }
                key[0] = 4;
                key[1..5].copy_from_slice(&mask(&a.octets(), self.cfg.ipv4_prefix_bits));
            }
            IpAddr::V6(a) => {
                if self.cfg.exempt_loopback && a.is_loopback() {
                    return Charge::Within;
                }
                key[0] = 6;
                key[1..].copy_from_slice(&mask(&a.octets(), self.cfg.ipv6_prefix_bits));
            }
        }
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(&key, 0x0000_6275_6467_6574);
        let fp = (h >> 44) | 1; // 20 bits, never 0 (0 marks an empty entry)
        let slot = &self.table[(h & self.mask) as usize];
        let now = (now_ns.saturating_sub(self.epoch_ns) / 1000) & TAT_MASK;
        let mut v = slot.load(Acquire);
        for _ in 0..CAS_TRIES {
            let tat = if v >> TAT_BITS == fp { v & TAT_MASK } else { now };
            // Ages wrap at 2^44 µs (203 days): compare by wrapping distance.
            let ahead = tat.wrapping_sub(now) & TAT_MASK;
            let base = if ahead > TAT_MASK / 2 { now } else { tat }; // tat in the past → now
            let next = (base + self.interval_us) & TAT_MASK;
            let wait = (next.wrapping_sub(now) & TAT_MASK).saturating_sub(self.tolerance_us);
            if wait > 0 {
                return Charge::Over { retry_after_s: wait.div_ceil(1_000_000).clamp(1, u32::MAX as u64) as u32 };
            }
            match slot.compare_exchange(v, fp << TAT_BITS | next, AcqRel, Acquire) {
                Ok(_) => return Charge::Within,
                Err(cur) => v = cur,
            }
        }
        Charge::Within
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

    fn budgets(rate: u32, burst: u32) -> Budgets {
        Budgets::new(
            BudgetConfig {
                rate_per_s: rate,
                burst,
                ipv4_prefix_bits: 24,
                ipv6_prefix_bits: 48,
                entries: 1024,
                exempt_loopback: true,
            },
            T0,
        )
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
