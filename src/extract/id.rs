//! Event ids: 128-bit, formatted as UUIDs.
//!
//! - client-supplied (`eid`, `X-Request-Id`, ...): a UUID is kept as is; any other value is hashed
//!   (xxh3-128) so the same value always maps to the same id;
//! - derived from the event type's identity fields (a re-fired pixel gets the same id): xxh3-128
//!   of the type and the fields' stored values, marked as UUID version 8 (custom);
//! - generated: UUID version 7, unix milliseconds then the shard and a per-shard counter that
//!   starts at a random value, so ids are time-ordered and unique across shards and restarts.

use xxhash_rust::xxh3::Xxh3;

pub struct IdGen {
    shard: u16,
    counter: u64,
}

impl IdGen {
    pub fn new(shard: u16) -> IdGen {
        let mut seed = [0u8; 8];
        // A random start makes ids from two runs of the same shard in the same millisecond
        // differ; if the OS has no entropy to give, the clock still separates most runs.
        if getrandom::getrandom(&mut seed).is_err() {
            seed = (crate::clock::unix_nanos() ^ std::process::id() as u64).to_le_bytes();
        }
        IdGen { shard, counter: u64::from_le_bytes(seed) >> 2 }
    }

    /// A UUIDv7: 48 bits of unix ms, version 7, 12 bits of shard, variant, 62 bits of counter.
    #[inline]
    pub fn generate(&mut self, unix_ms: u64) -> [u8; 16] {
        self.counter = self.counter.wrapping_add(1) & ((1 << 62) - 1);
        let hi = (unix_ms & ((1 << 48) - 1)) << 16 | 0x7000 | (self.shard as u64 & 0xfff);
        let lo = 0x8000_0000_0000_0000 | self.counter;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&hi.to_be_bytes());
        id[8..].copy_from_slice(&lo.to_be_bytes());
        id
    }
}

/// Seed of the hash of a client-supplied id.
const CLIENT_SEED: u64 = 0x0065_6964;

/// Hashes a client-supplied id that is not a UUID.
#[inline]
pub fn from_client_value(v: &[u8]) -> [u8; 16] {
    mark_v8(xxhash_rust::xxh3::xxh3_128_with_seed(v, CLIENT_SEED))
}

/// `from_client_value` of a value fed in pieces: this hasher, `update` with each, then
/// `finish_client_value` (the same id as one call with the pieces joined).
#[inline]
pub fn client_value_hasher() -> Xxh3 {
    Xxh3::with_seed(CLIENT_SEED)
}

#[inline]
pub fn finish_client_value(h: Xxh3) -> [u8; 16] {
    mark_v8(h.digest128())
}

/// Incremental hash of identity parts for a derived id.
pub struct Derived(Xxh3);

impl Derived {
    #[inline]
    /// `type_key`: `EventType::key` (its name's hash), so an id stays the same when a reload
    /// adds, removes or reorders other types.
    pub fn new(type_key: u64) -> Derived {
        let mut h = Xxh3::with_seed(0x6964_656e_7469_7479);
        h.update(&type_key.to_le_bytes());
        Derived(h)
    }

    /// Adds one part, length-prefixed so ("ab","c") and ("a","bc") differ.
    #[inline]
    pub fn part(&mut self, b: &[u8]) {
        self.0.update(&(b.len() as u32).to_le_bytes());
        self.0.update(b);
    }

    #[inline]
    pub fn finish(self) -> [u8; 16] {
        mark_v8(self.0.digest128())
    }
}

#[inline]
fn mark_v8(h: u128) -> [u8; 16] {
    let mut id = h.to_be_bytes();
    id[6] = (id[6] & 0x0f) | 0x80;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_v7_ordered_and_distinct_per_shard() {
        let mut a = IdGen::new(1);
        let mut b = IdGen::new(2);
        let x = a.generate(1_000);
        let y = a.generate(1_001);
        let z = b.generate(1_000);
        assert_eq!(x[6] >> 4, 7);
        assert_eq!(x[8] >> 6, 2);
        assert!(x < y);
        assert_ne!(x, z);
        assert_eq!(&x[..6], &z[..6]);
    }

    #[test]
    fn a_client_value_fed_in_pieces_is_the_same_id() {
        let v = "order-".repeat(50);
        let mut h = client_value_hasher();
        for piece in v.as_bytes().chunks(7) {
            h.update(piece);
        }
        assert_eq!(finish_client_value(h), from_client_value(v.as_bytes()));
    }

    #[test]
    fn derived_ids_are_stable_and_part_boundaries_matter() {
        let id = |parts: &[&[u8]]| {
            let mut d = Derived::new(3);
            for p in parts {
                d.part(p);
            }
            d.finish()
        };
        assert_eq!(id(&[b"ab", b"c"]), id(&[b"ab", b"c"]));
        assert_ne!(id(&[b"ab", b"c"]), id(&[b"a", b"bc"]));
        assert_eq!(id(&[b"x"])[6] >> 4, 8);
    }
}
