//! Request-side sections: `[dedup]` (and the other issue-3 protections as they land). Each
//! validates into a plain value with its unit in the name.

use super::raw::RawDedup;
use super::Validator;
use crate::dedup::{ENTRIES_MAX, ENTRIES_MIN, WINDOW_MS_MAX};

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
}
