//! Enrichment and protection steps between routing and the ring push: synchronous, I/O-free,
//! allocation-free on the request path; any shared state is a fixed-size atomic table made at
//! start.
//!
//! - [`budget`]  per-source token buckets keyed by address prefix (429 or answer-and-drop)
//! - [`privacy`] IP truncation, keyed hashing of user ids, opt-out signals, GDPR consent
//! - [`device`]  device class and bot flag from the User-Agent (field sources)
//! - [`step`]    the public `Step` trait: a deployment's own preprocessing, per event type
//! - [`ssai`]    device address / user agent from authenticated ad stitchers only
//! - [`tcf`]     IAB TCF v2 consent strings: Purpose 1 and vendor consent, for `privacy.gdpr = "enforce"`

pub mod budget;
pub mod device;
pub mod privacy;
pub mod ssai;
pub mod step;
pub mod tcf;
