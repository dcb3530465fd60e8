//! tracker — a thread-per-core io_uring HTTP event tracker for ad-tech.
//!
//! ```text
//! client ─TCP─▶ net (shard N: monoio io_uring reactor, SO_REUSEPORT listener, pinned to CPU N)
//!                 │  http      parse head with httparse into a fixed header array
//!                 │  endpoint  (method, path) → endpoint
//!                 │  extract   query / headers / cookies / JSON body → Event, in place in the ring slot
//!                 │  ring      per-shard SPSC ring (full → 503), then respond: GIF / 204 / 4xx
//!                 ▼
//!               runtime::drain (one thread per shard) ─▶ journal: mmapped append-only segments,
//!                                                         CRC32C per record, schema in header
//!               journal ─▶ collector threads (own cursors) ─▶ Kafka, banker, plugins
//! ```
//!
//! Modules in the order an event travels:
//! - [`config`]   TOML → validated `Config` (errors name file, line, key)
//! - [`runtime`]  start-up, shard reactors, journal drains, shutdown order; hot reload,
//!   systemd notify + watchdog, restart handoff (ops)
//! - [`net`]      listener (SO_REUSEPORT) and the per-connection loop (owned buffers, deadlines);
//!   POST bodies: media type, gzip with caps, batches with per-event status (`net::post`)
//! - [`http`]     request parsing and prebuilt responses, CORS origin check, no allocation, no I/O
//! - [`endpoint`] routing table built from config
//! - [`enrich`]   per-source budgets (and privacy steps), before anything is decoded
//! - [`redirect`] click endpoints: strict landing-URL parsing, allowlist, HMAC signatures, macros
//! - [`extract`]  request → `Event`, ids; JSON bodies parsed in place with simd-json; pure
//! - [`event`]    the fixed 512-byte record; [`schema`] how its slots map to field names
//! - [`dedup`]    window of recent event ids shared by all shards (lock-free, fixed size)
//! - [`ring`]     per-core SPSC ring (a cache-hot tier, a spill tier), the only crossing on the ingest path
//! - [`journal`]  segment format, writer, recovery, reader
//! - [`collector`] forwarders: read the journal from persisted cursors, project, batch, deliver
//! - [`metrics`]  per-shard counters and latency histograms (recorded locally, published on a timer)
//! - [`admin`]    control plane off the shards: `/metrics`, `/health`, `/ready`, `/stats`, `.hlog`
//!
//! Beside the flow: [`clock`] (clock reads for timestamps and deadlines), [`constants`],
//! [`xorshift`] (the collectors' retry jitter and the randomised tests' inputs).
//!
//! Synchronous and I/O-free: `http`, `endpoint`, `enrich`, `redirect`, `extract`, `event`,
//! `schema`, `dedup`, `ring`. Only `net`, `journal`, `runtime`, `collector` and `admin` do I/O;
//! only `ring`, `dedup`, the budget table and the collectors' cursors cross cores.

pub mod admin;
pub mod clock;
pub mod collector;
pub mod config;
pub mod constants;
pub mod dedup;
pub mod endpoint;
pub mod enrich;
pub mod event;
pub mod extract;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod net;
pub mod redirect;
pub mod ring;
pub mod runtime;
pub mod schema;
pub mod xorshift;
