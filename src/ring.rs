//! The per-core ring: a bounded, lock-free single-producer single-consumer queue of `Event`s
//! between a shard's reactor (producer) and its journal drain (consumer). The only data that
//! crosses cores on the ingest path crosses here.
//!
//! It is two SPSC tiers under one order. The **hot** tier (at most [`HOT_EVENTS`] slots, 1 MiB)
//! takes every event while the drain keeps up; the **spill** tier (the rest of
//! `server.ring_events`) only takes events while the hot one is full. Why: a slot is written
//! again one lap of its tier after it was last touched. With one 8 MiB tier that lap evicts it
//! from the core's L2, and zeroing the slot for the next event was the single largest user-space
//! item of a pixel request in perf (8% of the shard's CPU, ~0.4 µs, waiting on memory, in an
//! hour when the host's memory was contended; in a quiet one a miss is cheap and the tier saves
//! little); with a 1 MiB lap it stays in cache (1.6%). The spill tier keeps the burst capacity
//! an operator configured (a stalled msync, a slow disk) without paying for it while nothing
//! stalls.
//!
//! Invariants:
//! - in each tier, `head` (popped) and `tail` (pushed) only grow and `tail - head <= slots`;
//!   the producer writes a slot only while it is free and publishes it with a Release store of
//!   the tier's `tail`; the consumer reads it only after an Acquire load of that `tail` and frees
//!   it with a Release store of the tier's `head`;
//! - `commit` stamps each event with the next sequence number (1, 2, …) of the whole ring, so
//!   seqs increase within each tier, every seq is in exactly one tier, and the oldest unpopped
//!   event is at the head of one of them: the consumer pops by seq and never reorders. An event
//!   the consumer cannot see yet (its tier's tail not loaded) ends a batch; nothing later in the
//!   other tier overtakes it;
//! - events are built in place in the slot (`reserve` → fill → `commit`), so a 512-byte event is
//!   copied once, by the drain, into the journal.
//!
//! Backpressure is a return value: `reserve` returns None when both tiers are full; the reactor
//! answers 503.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::event::Event;

/// Slots of the hot tier: 1 MiB of events, which stays in a server core's L2 (1–2 MiB) beside
/// the connections' buffers. It holds a drain nap's backlog (5 ms at 200k events/s), and the
/// reactor wakes the drain once it is half full; a drain held up longer (an msync, its share of
/// a saturated core) spills: 1.9% of events at 210k/s on one core here (perf/RESULTS.md).
pub const HOT_EVENTS: usize = 2048;

/// One SPSC tier: its slots and the two counters its ends publish.
struct Tier {
    slots: Box<[UnsafeCell<Event>]>,
    /// Events popped from this tier; written by the consumer only.
    head: CachePadded<AtomicU64>,
    /// Events pushed into this tier; written by the producer only.
    tail: CachePadded<AtomicU64>,
}

impl Tier {
    fn new(slots: usize) -> Tier {
        Tier {
            slots: (0..slots).map(|_| UnsafeCell::new(Event::ZERO)).collect(),
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
        }
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    /// `i` steps on from slot `at`, wrapped (`i` < the tier's length).
    #[inline]
    fn step(&self, at: usize, i: usize) -> usize {
        let n = at + i;
        if n >= self.slots.len() {
            n - self.slots.len()
        } else {
            n
        }
    }
}

struct Inner {
    hot: Tier,
    spill: Tier,
}

// SAFETY: slots are accessed by at most one side at a time, as the head/tail protocol above
// guarantees; the halves that touch them are not Clone and each is owned by one thread.
unsafe impl Sync for Inner {}
unsafe impl Send for Inner {}

/// The producer's private view of one tier.
#[derive(Default)]
struct PushEnd {
    /// Its copy of the tier's `tail` (it is the only writer).
    tail: u64,
    /// Last `head` seen; refreshed only when the tier looks full.
    head_cache: u64,
    /// Slot of `tail` (`tail % slots`, kept without a division).
    at: usize,
}

impl PushEnd {
    #[inline]
    fn has_room(&mut self, t: &Tier) -> bool {
        if self.tail - self.head_cache >= t.len() {
            self.head_cache = t.head.load(Ordering::Acquire);
            return self.tail - self.head_cache < t.len();
        }
        true
    }

    /// Events in the tier, from a fresh load of its head.
    fn used(&mut self, t: &Tier) -> u64 {
        self.head_cache = t.head.load(Ordering::Acquire);
        self.tail - self.head_cache
    }
}

/// The consumer's private view of one tier.
#[derive(Default)]
struct PopEnd {
    head: u64,
    tail_cache: u64,
    /// Slot of `head`.
    at: usize,
}

impl PopEnd {
    /// The `i`-th published event after the head, if the producer has published it (the tail
    /// is loaded again only when the cached one is reached).
    #[inline]
    fn peek(&mut self, t: &Tier, i: usize) -> Option<*mut Event> {
        let pos = self.head + i as u64;
        if pos == self.tail_cache {
            self.tail_cache = t.tail.load(Ordering::Acquire);
        }
        (pos < self.tail_cache).then(|| t.slots[t.step(self.at, i)].get())
    }

    /// Frees the first `n` events (already handed out).
    fn advance(&mut self, t: &Tier, n: usize) {
        if n > 0 {
            self.head += n as u64;
            self.at = t.step(self.at, n);
            t.head.store(self.head, Ordering::Release);
        }
    }

    fn len(&mut self, t: &Tier) -> u64 {
        self.tail_cache = t.tail.load(Ordering::Acquire);
        self.tail_cache - self.head
    }
}

pub struct Producer {
    inner: Arc<Inner>,
    hot: PushEnd,
    spill: PushEnd,
    /// The tier of the slot `reserve` handed out and `commit` has not published yet: until then
    /// every `reserve` returns that same slot. (`net::pipeline` fills the slot through one
    /// reserve and publishes it through another: had the second chosen afresh, the drain freeing
    /// hot slots in between would have made it publish a stale hot slot in place of the spill
    /// slot just filled.)
    reserved: Option<Reserved>,
    /// Events committed so far (the last sequence number stamped).
    seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reserved {
    Hot,
    Spill,
}

pub struct Consumer {
    inner: Arc<Inner>,
    hot: PopEnd,
    spill: PopEnd,
    /// Events popped so far; the next to pop has seq `popped + 1`.
    popped: u64,
}

/// A ring of `capacity` events (a power of two), split into its two ends: a hot tier of
/// [`HOT_EVENTS`], or half of a smaller ring, and a spill tier of the rest. (A small ring is
/// split too, so that the spill path runs wherever a test fills a ring.)
pub fn ring(capacity: usize) -> (Producer, Consumer) {
    assert!(capacity.is_power_of_two() && capacity >= 2, "ring capacity {capacity} must be a power of two ≥ 2");
    tiered(capacity, HOT_EVENTS.min(capacity / 2))
}

/// A ring of `capacity` events whose hot tier holds `hot` of them (tests make it small to
/// exercise the spill tier).
fn tiered(capacity: usize, hot: usize) -> (Producer, Consumer) {
    assert!(hot >= 1 && hot <= capacity, "hot tier {hot} must be within 1..={capacity}");
    let inner = Arc::new(Inner { hot: Tier::new(hot), spill: Tier::new(capacity - hot) });
    (
        Producer { inner: inner.clone(), hot: PushEnd::default(), spill: PushEnd::default(), reserved: None, seq: 0 },
        Consumer { inner, hot: PopEnd::default(), spill: PopEnd::default(), popped: 0 },
    )
}

impl Producer {
    /// The next free slot, to be filled and then `commit`ted: in the hot tier when it has room,
    /// else in the spill tier; None when both are full. Until `commit`, every call returns the
    /// same slot (a request refused after its reserve leaves it to the next one).
    #[inline]
    pub fn reserve(&mut self) -> Option<&mut Event> {
        let inner = &*self.inner;
        let tier = match self.reserved {
            Some(t) => t,
            None if self.hot.has_room(&inner.hot) => Reserved::Hot,
            None if self.spill.has_room(&inner.spill) => Reserved::Spill,
            None => return None,
        };
        self.reserved = Some(tier);
        let slot = match tier {
            Reserved::Hot => &inner.hot.slots[self.hot.at],
            Reserved::Spill => &inner.spill.slots[self.spill.at],
        };
        // SAFETY: when the tier was chosen its tail - head < its length, so the consumer had
        // freed this slot (Acquire in has_room pairs with its Release of head); it will not
        // read it until `commit` publishes the tier's tail, and nothing moves that tail before.
        Some(unsafe { &mut *slot.get() })
    }

    /// Stamps the reserved slot with the next sequence number and publishes it. Returns that
    /// number (the event's 1-based position in this ring's order), or 0 when no slot is
    /// reserved: nothing is published then.
    #[inline]
    pub fn commit(&mut self) -> u64 {
        let inner = &*self.inner;
        let (end, tier) = match self.reserved.take() {
            Some(Reserved::Hot) => (&mut self.hot, &inner.hot),
            Some(Reserved::Spill) => (&mut self.spill, &inner.spill),
            // A caller's bug (net::pipeline::publish asserts the number it gets in debug builds).
            None => return 0,
        };
        self.seq += 1;
        // SAFETY: the slot reserve handed out, still ours: its tier's tail is not yet past it.
        unsafe { (*tier.slots[end.at].get()).seq = self.seq };
        end.tail += 1;
        end.at = tier.step(end.at, 1);
        tier.tail.store(end.tail, Ordering::Release);
        self.prefetch_next();
        self.seq
    }

    /// Asks the CPU to bring the next hot slot's cache lines into L1 before the next request
    /// fills it (from L2, where the hot tier's short lap keeps it). Not while the cached head
    /// says the hot tier is full: that slot is then the consumer's next read, and a prefetch
    /// for writing would pull its lines away from the consumer's core. (The cached head is
    /// never ahead of the real one, so "room" from it is certain; "full" may be stale, and
    /// then one prefetch in a lap of the tier is skipped.)
    #[inline]
    fn prefetch_next(&self) {
        if self.hot.tail - self.hot.head_cache >= self.inner.hot.len() {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            let next = self.inner.hot.slots[self.hot.at].get() as *const i8;
            for line in (0..std::mem::size_of::<Event>()).step_by(64) {
                // SAFETY: a prefetch is a hint with no effect on memory, and `next + line` stays
                // inside the slot; the slot itself may still be the consumer's (prefetching
                // reads nothing the program sees).
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(next.add(line)) };
            }
        }
    }

    /// The hot tier more than half full, or any event in the spill tier: a hint to wake the
    /// consumer before events start landing (or keep landing) in slots that are out of cache.
    /// Refreshes the cached heads: two cross-core loads, so call it once per batch, not per event.
    #[inline]
    pub fn is_filling(&mut self) -> bool {
        let inner = &*self.inner;
        self.hot.used(&inner.hot) > inner.hot.len() / 2 || self.spill.used(&inner.spill) > 0
    }

    /// Events pushed so far (the last committed sequence number).
    pub fn pushed(&self) -> u64 {
        self.seq
    }

    /// A read-only view of this ring's counters for other threads (metrics, readiness).
    pub fn watch(&self) -> RingWatch {
        RingWatch { inner: self.inner.clone() }
    }
}

/// Pushed and popped counts of a ring, readable from any thread (they only grow; depth is the
/// difference, which a reader racing both ends may see off by a few). Reads never touch the slots.
pub struct RingWatch {
    inner: Arc<Inner>,
}

impl RingWatch {
    pub fn pushed(&self) -> u64 {
        self.inner.hot.tail.load(Ordering::Acquire) + self.inner.spill.tail.load(Ordering::Acquire)
    }

    pub fn popped(&self) -> u64 {
        self.inner.hot.head.load(Ordering::Acquire) + self.inner.spill.head.load(Ordering::Acquire)
    }

    pub fn capacity(&self) -> u64 {
        self.inner.hot.len() + self.inner.spill.len()
    }

    /// Events that went through the spill tier: pushed while the hot tier was full, because the
    /// drain was behind. Each cost its request a wait on memory.
    pub fn spilled(&self) -> u64 {
        self.inner.spill.tail.load(Ordering::Acquire)
    }
}

impl Consumer {
    /// Events the ring holds when full.
    pub fn capacity(&self) -> usize {
        (self.inner.hot.len() + self.inner.spill.len()) as usize
    }

    /// Hands up to `max` published events, in sequence order, to `f`, then frees the slots of
    /// those `f` accepted (returned true for); the first refusal stops the batch and leaves that
    /// event first for the next call. Returns how many were accepted. `f` may modify the event
    /// (the journal seals it in place) but not its `seq`.
    #[inline]
    pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(&mut Event) -> bool) -> usize {
        let inner = &*self.inner;
        let (mut from_hot, mut from_spill) = (0, 0);
        while from_hot + from_spill < max {
            let want = self.popped + (from_hot + from_spill) as u64 + 1;
            // SAFETY (both derefs): peek returns only published slots the producer will not touch
            // until we advance the tier's head past them.
            let in_hot = self.hot.peek(&inner.hot, from_hot).filter(|&e| unsafe { (*e).seq } == want);
            let (e, hot) = match in_hot {
                Some(e) => (e, true),
                None => match self.spill.peek(&inner.spill, from_spill).filter(|&e| unsafe { (*e).seq } == want) {
                    Some(e) => (e, false),
                    // Not published yet (or not yet visible): nothing after it may go first.
                    None => break,
                },
            };
            // SAFETY: as above; no other reference to this slot exists while `f` runs.
            if !f(unsafe { &mut *e }) {
                break;
            }
            if hot {
                from_hot += 1;
            } else {
                from_spill += 1;
            }
        }
        self.hot.advance(&inner.hot, from_hot);
        self.spill.advance(&inner.spill, from_spill);
        self.popped += (from_hot + from_spill) as u64;
        from_hot + from_spill
    }

    /// True when nothing is published and unread (fresh loads of the producer's tails).
    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }

    /// Events popped so far.
    pub fn popped(&self) -> u64 {
        self.popped
    }

    /// Events published and not yet popped (fresh loads of the producer's tails).
    pub fn len(&mut self) -> usize {
        let inner = &*self.inner;
        (self.hot.len(&inner.hot) + self.spill.len(&inner.spill)) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commits one event carrying `mark`; false when the ring is full.
    fn push(p: &mut Producer, mark: u64) -> bool {
        match p.reserve() {
            Some(e) => {
                e.slots[0] = mark;
                p.commit();
                true
            }
            None => false,
        }
    }

    /// Pops up to `max`, returning (seq, mark) of each.
    fn pop(c: &mut Consumer, max: usize) -> Vec<(u64, u64)> {
        let mut seen = vec![];
        c.pop_batch(max, |e| {
            seen.push((e.seq, e.slots[0]));
            true
        });
        seen
    }

    /// `net::pipeline` fills a slot through one reserve and publishes it through a second: the
    /// drain freeing a hot slot in between must not make the second hand out that stale slot.
    #[test]
    fn a_second_reserve_before_commit_returns_the_slot_being_filled() {
        let (mut p, mut c) = ring(4); // hot 2, spill 2
        assert!(push(&mut p, 1) && push(&mut p, 2));
        p.reserve().unwrap().slots[0] = 99; // hot full: the spill tier's slot
        assert_eq!(pop(&mut c, 1), [(1, 1)]); // the drain frees a hot slot meanwhile
        assert_eq!(p.reserve().unwrap().slots[0], 99);
        assert_eq!(p.commit(), 3);
        assert_eq!(pop(&mut c, 10), [(2, 2), (3, 99)]);
    }

    /// A commit with no slot reserved (a caller's bug) publishes nothing: it must not stamp or
    /// publish a slot the consumer has not freed.
    #[test]
    fn a_commit_without_a_reserve_publishes_nothing() {
        let (mut p, mut c) = ring(2); // hot 1, spill 1
        assert!(push(&mut p, 1) && push(&mut p, 2));
        assert!(p.reserve().is_none());
        assert_eq!(p.commit(), 0);
        assert_eq!(pop(&mut c, 10), [(1, 1), (2, 2)]);
        assert!(push(&mut p, 3));
        assert_eq!(pop(&mut c, 10), [(3, 3)]);
    }

    #[test]
    fn full_ring_refuses_then_accepts_after_pop() {
        let (mut p, mut c) = tiered(4, 4);
        for i in 0..4 {
            assert!(push(&mut p, 10 + i));
        }
        assert!(p.reserve().is_none());
        assert_eq!(pop(&mut c, 2), [(1, 10), (2, 11)]);
        assert!(p.reserve().is_some());
    }

    #[test]
    fn tier_sizes() {
        let sizes = |cap| {
            let (p, _c) = ring(cap);
            (p.inner.hot.slots.len(), p.inner.spill.slots.len())
        };
        assert_eq!(sizes(1 << 14), (HOT_EVENTS, (1 << 14) - HOT_EVENTS));
        assert_eq!(sizes(2 * HOT_EVENTS), (HOT_EVENTS, HOT_EVENTS));
        assert_eq!(sizes(16), (8, 8));
        assert_eq!(sizes(2), (1, 1));
    }

    #[test]
    fn uncommitted_reserve_is_not_published() {
        let (mut p, mut c) = ring(4);
        p.reserve().unwrap().slots[0] = 7;
        assert!(c.is_empty());
        p.reserve().unwrap().slots[0] = 8;
        assert_eq!(p.commit(), 1);
        assert_eq!(pop(&mut c, 10), [(1, 8)]);
    }

    #[test]
    fn spill_tier_takes_the_overflow_and_order_holds_across_tiers() {
        let (mut p, mut c) = tiered(8, 2);
        for i in 1..=5 {
            assert!(push(&mut p, i));
        }
        // Hot holds 1 and 2, spill 3, 4, 5. Popping 1 frees a hot slot, which 6 takes.
        assert_eq!(pop(&mut c, 1), [(1, 1)]);
        assert!(push(&mut p, 6));
        let w = p.watch();
        assert_eq!((w.pushed(), w.popped(), w.capacity(), w.spilled()), (6, 1, 8, 3));
        assert_eq!(c.len(), 5);
        assert_eq!(pop(&mut c, 10), [(2, 2), (3, 3), (4, 4), (5, 5), (6, 6)]);
        assert!(c.is_empty());
        assert_eq!(c.popped(), 6);
    }

    #[test]
    fn both_tiers_full_refuses() {
        let (mut p, _c) = tiered(8, 2);
        for i in 0..8 {
            assert!(push(&mut p, i), "event {i}");
        }
        assert!(p.reserve().is_none());
    }

    #[test]
    fn a_refused_event_stays_first_whichever_tier_holds_it() {
        let (mut p, mut c) = tiered(4, 1);
        for i in 1..=3 {
            assert!(push(&mut p, i));
        }
        // 1 is hot, 2 and 3 spilled: refuse 2, then take the rest.
        let mut n = 0;
        assert_eq!(
            c.pop_batch(10, |e| {
                n += 1;
                e.seq == 1
            }),
            1
        );
        assert_eq!(n, 2);
        assert_eq!(pop(&mut c, 10), [(2, 2), (3, 3)]);
    }

    #[test]
    fn filling_means_hot_tier_past_half_or_any_spill() {
        let (mut p, mut c) = tiered(16, 4);
        assert!(push(&mut p, 1) && push(&mut p, 2));
        assert!(!p.is_filling(), "hot tier at half");
        assert!(push(&mut p, 3));
        assert!(p.is_filling(), "hot tier past half");
        assert_eq!(pop(&mut c, 2).len(), 2);
        assert!(!p.is_filling());
        for i in 4..=6 {
            assert!(push(&mut p, i));
        }
        // Hot: 3, 4, 5, 6 (full, past half); 7 spills.
        assert!(push(&mut p, 7));
        assert_eq!(pop(&mut c, 4).len(), 4);
        assert!(p.is_filling(), "an event in the spill tier");
        assert_eq!(pop(&mut c, 4), [(7, 7)]);
        assert!(!p.is_filling());
    }

    /// Random reserves, abandoned reserves, commits and pops (some refused) against a queue
    /// model: the ring hands out exactly the committed events, in order, and refuses a push
    /// only when it holds `capacity` events.
    #[test]
    fn matches_a_queue_under_random_operations() {
        for (cap, hot) in [(16, 4), (16, 16), (8, 1), (32, 5)] {
            let (mut p, mut c) = tiered(cap, hot);
            let mut model = std::collections::VecDeque::new();
            let mut rng = crate::xorshift::Xorshift64::new(0x9E37_79B9_7F4A_7C15);
            let mut next = || rng.next();
            let mut seq = 0;
            for step in 0..20_000u64 {
                match next() % 4 {
                    0 | 1 => match p.reserve() {
                        Some(e) => {
                            e.slots[0] = step;
                            if next() % 5 != 0 {
                                seq += 1;
                                assert_eq!(p.commit(), seq);
                                model.push_back((seq, step));
                            }
                        }
                        None => assert_eq!(model.len(), cap, "refused with room (step {step})"),
                    },
                    _ => {
                        let max = (next() % 6) as usize;
                        let accept = (next() % 7) as usize;
                        let mut got = vec![];
                        c.pop_batch(max, |e| {
                            if got.len() == accept {
                                return false;
                            }
                            got.push((e.seq, e.slots[0]));
                            true
                        });
                        let want: Vec<_> = model.drain(..max.min(accept).min(model.len())).collect();
                        assert_eq!(got, want, "pop at step {step} ({cap}/{hot})");
                    }
                }
                assert_eq!(c.len(), model.len());
            }
        }
    }

    fn cross_thread_order(p: Producer, mut c: Consumer) {
        const N: u64 = 200_000;
        let t = std::thread::spawn(move || {
            let mut next = 1u64;
            while next <= N {
                c.pop_batch(32, |e| {
                    assert_eq!(e.seq, next);
                    assert_eq!(e.slots[0], next * 3);
                    next += 1;
                    true
                });
                std::hint::spin_loop();
            }
        });
        let mut p = p;
        let mut i = 1u64;
        while i <= N {
            // As net::pipeline does: fill through one reserve, publish after another.
            match p.reserve() {
                Some(e) => {
                    e.slots[0] = i * 3;
                    p.reserve().expect("the slot stays reserved");
                    p.commit();
                    i += 1;
                }
                // A consumer that failed an assertion pops no more: stop and report it.
                None if t.is_finished() => break,
                None => std::thread::yield_now(),
            }
        }
        t.join().unwrap();
    }

    #[test]
    fn cross_thread_order_is_preserved() {
        let (p, c) = ring(64);
        cross_thread_order(p, c);
    }

    #[test]
    fn cross_thread_order_is_preserved_across_tiers() {
        let (p, c) = tiered(64, 4);
        cross_thread_order(p, c);
    }
}
