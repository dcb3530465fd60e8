//! The stages between a parsed request and the ring, shared by GET requests (`connection.rs`)
//! and every item of a POST body (`post.rs`), so both paths publish exactly alike:
//! `prepare` (extract into the reserved ring slot, privacy, preprocessing steps) and `publish`
//! (dedup window, then commit). What sits between the two (a HEAD flag, a click's Location)
//! stays with the caller. Synchronous, no allocation.

use std::io::Write as _;

use crate::config::{Config, EventType};
use crate::dedup::{FirstCopy, Seen};
use crate::enrich::privacy::OptOut;
use crate::event::{Event, FLAG_HEAD, FLAG_ID_CLIENT, FLAG_ID_DERIVED};
use crate::extract::{extract, RequestView};
use crate::metrics::Reason;
use crate::ring::Producer;
use crate::runtime::shard::ShardCtx;

/// Why a request or an item did not become an event.
pub(super) enum Refusal<'c> {
    /// The ring is full.
    Overloaded,
    /// A POST item that is not a JSON object, or similar.
    Item(&'static str),
    /// A field's value: (field name, why, failed a price integrity check).
    Field(&'c str, &'static str, bool),
    /// A preprocessing step: (step name, why).
    Step(&'c str, &'static str),
    /// A POST item past the source's budget on a `reject` endpoint.
    OverBudget,
    /// A duplicate batch item on a `logged` endpoint whose first copy is on its way to the
    /// journal on another shard, when the answer already waits for ELSEWHERE_MAX such shards.
    FirstCopyPending,
}

impl Refusal<'_> {
    /// The reason as text, into `buf`.
    pub(super) fn text<'b>(&self, buf: &'b mut [u8; 256]) -> &'b str {
        let mut w = &mut buf[..];
        let _ = match self {
            Refusal::Overloaded => write!(w, "overloaded"),
            Refusal::Item(why) => write!(w, "{why}"),
            Refusal::Field(name, why, _) => write!(w, "field {name}: {why}"),
            Refusal::Step(name, why) => write!(w, "step {name}: {why}"),
            Refusal::OverBudget => write!(w, "over budget, retry later"),
            Refusal::FirstCopyPending => write!(w, "duplicate of an event not journaled yet, retry"),
        };
        let n = 256 - w.len();
        std::str::from_utf8(&buf[..n]).unwrap_or("refused")
    }

    /// The reject counter it moves; None when the item was counted already (`publish` counts
    /// every repeat as a duplicate, one pending too far away included).
    pub(super) fn reason(&self) -> Option<Reason> {
        Some(match self {
            Refusal::Overloaded => Reason::RingFull,
            Refusal::Field(_, _, true) => Reason::PriceIntegrity,
            Refusal::OverBudget => Reason::OverBudget,
            Refusal::FirstCopyPending => return None,
            _ => Reason::Field,
        })
    }
}

/// What `prepare` learned that counts only once the event is published (a repeat inside the
/// dedup window, or an event dropped over budget, is not one).
#[must_use]
pub(super) struct Prepared {
    /// The privacy step opted the event out for want of GDPR consent.
    no_gdpr_consent: bool,
}

/// Fills the reserved `slot`: extraction, privacy (nothing after it sees a raw user id or a full
/// client address), then the steps added in code for this type, in order. On a refusal the
/// slot's byte area is zeroed: the slot is reused by the next request and must keep no raw
/// value (a user id) behind.
pub(super) fn prepare<'c>(
    ctx: &ShardCtx,
    cfg: &'c Config,
    ty: &'c EventType,
    ep_index: u16,
    view: &RequestView<'_>,
    slot: &mut Event,
) -> Result<Prepared, Refusal<'c>> {
    if let Err(rej) = extract(ty, view, &mut ctx.ids.borrow_mut(), ctx.shared.index, ep_index, slot) {
        slot.bytes.fill(0);
        let integrity = rej.why == crate::extract::price::INTEGRITY;
        return Err(Refusal::Field(&ty.fields[rej.field].name, rej.why, integrity));
    }
    let no_gdpr_consent = ctx.privacy.borrow_mut().apply(ty, view, slot) == Some(OptOut::NoGdprConsent);
    for (_, type_id, step) in &cfg.steps {
        if *type_id == ty.id {
            if let Err(why) = step.apply(ty, view, slot) {
                slot.bytes.fill(0);
                return Err(Refusal::Step(step.name(), why));
            }
        }
    }
    Ok(Prepared { no_gdpr_consent })
}

/// What `publish` did with a prepared event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Published {
    /// Committed to this shard's ring with this sequence number.
    Pushed(u64),
    /// A repeat inside the dedup window, not published: where its first copy went.
    Duplicate(FirstCopy),
    /// Not published: the source is over budget on a `drop` endpoint.
    Dropped,
}

/// Most first copies on other shards one response waits for (a batch of duplicates of events
/// other shards took and have not journaled yet). Beyond it, a batch item is refused for a retry
/// (`Refusal::FirstCopyPending`); a GET waits for one at most.
pub(crate) const ELSEWHERE_MAX: usize = 4;

/// First copies on other shards a response on an `ack = "logged"` endpoint waits for: at most
/// one (the highest seq) per shard. Fixed size: nothing is allocated.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Elsewhere {
    len: u8,
    waits: [(u16, u64); ELSEWHERE_MAX],
}

impl Elsewhere {
    pub(crate) const NONE: Elsewhere = Elsewhere { len: 0, waits: [(0, 0); ELSEWHERE_MAX] };

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (shard, seq) pairs to wait for.
    pub(crate) fn waits(&self) -> &[(u16, u64)] {
        &self.waits[..self.len as usize]
    }

    /// Adds a wait for `seq` on `shard`; false when that needs a new place and none is left.
    fn add(&mut self, shard: u16, seq: u64) -> bool {
        let len = self.len as usize;
        if let Some(w) = self.waits[..len].iter_mut().find(|w| w.0 == shard) {
            w.1 = w.1.max(seq);
            return true;
        }
        if len == ELSEWHERE_MAX {
            return false;
        }
        self.waits[len] = (shard, seq);
        self.len += 1;
        true
    }
}

impl Published {
    /// Adds what this asks of a response on an `ack = "logged"` endpoint: this shard's event
    /// (or a duplicate's first copy here) to `logged_seq`, a first copy on another shard not
    /// yet journaled to `elsewhere`. False when `elsewhere` has no room for it.
    pub(super) fn wait_for(self, ctx: &ShardCtx, logged_seq: &mut u64, elsewhere: &mut Elsewhere) -> bool {
        match self {
            Published::Pushed(seq) => *logged_seq = (*logged_seq).max(seq),
            Published::Duplicate(first) => match ctx.first_copy_pending(first) {
                None => {}
                Some((shard, seq)) if shard == ctx.shared.index => *logged_seq = (*logged_seq).max(seq),
                Some((shard, seq)) => return elsewhere.add(shard, seq),
            },
            Published::Dropped => {}
        }
        true
    }
}

/// Publishes the prepared slot unless it is a repeat of a client or derived id inside the dedup
/// window (shared by all shards; answered like the first, counted, not published: the answer
/// says where the first copy went, for a `logged` endpoint to wait for it) or its source is
/// over budget on a `drop` endpoint.
/// A HEAD (flagged by the caller) neither consults nor enters the window: it is a link scanner
/// or a prefetcher, not the user, and taking the id would drop the user's GET that follows as
/// its duplicate.
pub(super) fn publish(
    ctx: &ShardCtx,
    ty: &EventType,
    prepared: Prepared,
    now_ns: u64,
    over_budget: bool,
    producer: &mut Producer,
) -> Published {
    let next_seq = producer.pushed() + 1;
    let Some(slot) = producer.reserve() else {
        debug_assert!(false, "publish without a prepared slot");
        return Published::Dropped;
    };
    let seen = match &ctx.dedup {
        _ if over_budget || slot.flags & FLAG_HEAD != 0 => Seen::New,
        Some(d) if slot.flags & (FLAG_ID_CLIENT | FLAG_ID_DERIVED) != 0 => {
            d.check(&slot.id, ty.key, now_ns, ctx.shared.index, next_seq)
        }
        _ => Seen::New,
    };
    if let Seen::Duplicate(first) = seen {
        ctx.shared.counters.reject(Reason::Duplicate);
        return Published::Duplicate(first);
    }
    if over_budget {
        return Published::Dropped;
    }
    slot.config_gen = ctx.config_gen.get();
    let seq = producer.commit();
    debug_assert_eq!(seq, next_seq);
    ctx.shared.counters.event(ty.counter);
    if prepared.no_gdpr_consent {
        ctx.shared.counters.reject(Reason::GdprNoConsent);
    }
    Published::Pushed(seq)
}
