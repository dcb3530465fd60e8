//! Request-side sections: `[dedup]`, `[budget]` (and the other issue-3 protections as they land). Each
//! validates into a plain value with its unit in the name.

use super::raw::{RawBudget, RawDedup};
use super::Validator;
use crate::dedup::{ENTRIES_MAX, ENTRIES_MIN, WINDOW_MS_MAX};
use crate::enrich::budget::{self, BudgetConfig};

/// What an endpoint does with a request whose source is over its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverBudget {
    /// Answer as usual, do not publish, count (pixels: browsers never retry them).
    Drop,
    /// `429 Too Many Requests` with `Retry-After` (clients that retry: notices, batches).
    Reject,
}

/// `[dedup]`: the window of recent event ids shared by all shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupConfig {
    /// A repeat of an id within this many ms is answered but not published; 0 = off.
    pub window_ms: u64,
    /// Table entries (power of two); costs entries × 8 bytes, shared by all shards.
    pub entries: usize,
}

impl Validator<'_> {
    pub(super) fn dedup(&mut self, r: &RawDedup) -> DedupConfig {
        let window_ms = self.int(&r.window_ms, "dedup.window_ms", 300_000, 0, WINDOW_MS_MAX as i64) as u64;
        let entries = self.int(&r.entries, "dedup.entries", 1 << 20, ENTRIES_MIN as i64, ENTRIES_MAX as i64) as usize;
        if !entries.is_power_of_two() {
            let s = r.entries.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.err(s, "dedup.entries", format!("{entries} is not a power of two"));
        }
        DedupConfig { window_ms, entries }
    }

    pub(super) fn budget(&mut self, r: &RawBudget) -> BudgetConfig {
        let rate_per_s = self.int(&r.rate_per_s, "budget.rate_per_s", 1000, 0, 10_000_000) as u32;
        let burst = self.int(&r.burst, "budget.burst", 2000, 1, 100_000_000) as u32;
        let entries =
            self.int(&r.entries, "budget.entries", 1 << 16, budget::ENTRIES_MIN as i64, budget::ENTRIES_MAX as i64)
                as usize;
        if !entries.is_power_of_two() {
            let s = r.entries.as_ref().map(|s| s.span()).unwrap_or(0..0);
            self.err(s, "budget.entries", format!("{entries} is not a power of two"));
        }
        BudgetConfig {
            rate_per_s,
            burst,
            ipv4_prefix_bits: self.int(&r.ipv4_prefix_bits, "budget.ipv4_prefix_bits", 24, 8, 32) as u8,
            ipv6_prefix_bits: self.int(&r.ipv6_prefix_bits, "budget.ipv6_prefix_bits", 48, 16, 128) as u8,
            entries,
            exempt_loopback: r.exempt_loopback.as_ref().is_none_or(|b| *b.get_ref()),
        }
    }
}
