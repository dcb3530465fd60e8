//! Compile-time limits and the relations between them. Runtime limits live in config and are
//! validated against these bounds; each says what it costs.

use crate::event::{EVENT_BYTES, SLOTS, STR_BYTES};

/// Upper bound of the fixed httparse header array on each connection's stack frame
/// (64 × 32 bytes). `server.header_count_max` may be lower, never higher. Defined by the parser.
pub use crate::http::HEADERS_MAX;

/// Most fields one event type may declare: one numeric slot each.
pub const FIELDS_MAX: usize = SLOTS;

/// Most event types and endpoints: both are u16 indexes in the record.
pub const EVENT_TYPES_MAX: usize = 1024;
pub const ENDPOINTS_MAX: usize = 1024;

/// Bounds of `server.ring_events`: the ring holds ring_events × 512 bytes per shard.
pub const RING_EVENTS_MIN: usize = 16;
pub const RING_EVENTS_MAX: usize = 1 << 22;

/// Bounds of `journal.segment_bytes` (preallocated and prefaulted per shard).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
pub const SEGMENT_BYTES_MAX: u64 = 16 << 30;

/// Longest string a field may reserve in the event's byte area.
pub const FIELD_STR_BYTES_MAX: usize = STR_BYTES;

/// Bound of `server.batch_events_max`: a batch answer lists every rejected item (index and a
/// reason of at most `BATCH_REASON_BYTES_MAX`), and must fit the connection's write buffer.
pub const BATCH_EVENTS_MAX: usize = 128;
/// Longest reason given for one rejected batch item (longer ones are cut).
pub const BATCH_REASON_BYTES_MAX: usize = 64;
/// Bound of `server.body_decoded_bytes_max`: the per-shard inflate and JSON scratch cost about
/// 20 bytes per body byte (net::post), so this bound costs ~80 MiB per shard.
pub const BODY_DECODED_BYTES_MAX: usize = 4 << 20;

/// Most shards (u16 in the record; also bounded by the CPUs available).
pub const SHARDS_MAX: usize = 256;

/// Events the drain moves from a ring to the journal before it publishes progress and
/// considers syncing: bounds the latency an `ack = "logged"` request waits behind others.
pub const DRAIN_BATCH_EVENTS: usize = 256;

const _: () = assert!(EVENT_BYTES.is_power_of_two());
const _: () = assert!(RING_EVENTS_MIN.is_power_of_two() && RING_EVENTS_MAX.is_power_of_two());
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(4096));
const _: () = assert!(EVENT_TYPES_MAX <= u16::MAX as usize && ENDPOINTS_MAX <= u16::MAX as usize);
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize);
