//! xorshift64 (Marsaglia, 2003): a few shifts per draw, deterministic from its seed. For a
//! collector's retry jitter and for the inputs of the randomised tests, which must draw the same
//! sequence on every run. Not for anything a client must not be able to predict.

/// A xorshift64 state. Never 0, the generator's one fixed point.
#[derive(Clone, Debug)]
pub struct Xorshift64(u64);

impl Xorshift64 {
    /// Starts from `seed`; 0 (which would draw only zeros) is taken as another fixed seed.
    pub fn new(seed: u64) -> Xorshift64 {
        Xorshift64(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next draw, never 0.
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends and is never collected
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// The next draw in `0..n` (`n` > 0). Its modulo bias is irrelevant for jitter and test inputs.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 64 bits from the OS's random source, for a seed that must differ per process (retry jitter,
/// the budget table's hash). Should the source fail (it does not on Linux ≥ 3.17), the clock
/// and this process's id stand in: still not a constant anyone can read in the source.
pub fn random_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    eprintln!("tracker: warning: the OS random source failed; seeding from the clock and process id");
    crate::clock::unix_nanos() ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_marsaglias_sequence_and_never_sticks_at_zero() {
        // The first draw from 1, by the shifts (13, 7, 17): 8193, then 8257, then 8257 ^ 8257 << 17.
        let mut r = Xorshift64::new(1);
        assert_eq!(r.next(), 1_082_269_761);
        let mut z = Xorshift64::new(0);
        assert!((0..1000).all(|_| z.next() != 0));
        let mut b = Xorshift64::new(7);
        assert!((0..1000).all(|_| b.below(10) < 10));
    }
}
