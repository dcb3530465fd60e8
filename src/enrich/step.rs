//! The preprocessing-step API: code a deployment adds to the request path, per event type.
//!
//! A step runs after extraction and the privacy step and before dedup and the ring push: it
//! sees the event as it will be journaled (ip truncated, user ids hashed) and may change it or
//! refuse the request. Built-in steps are configuration (`one_of`, `min`/`max`, defaults,
//! `request.device_class`…); a [`Step`] is for what configuration cannot say.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tracker::config::{Config, EventType};
//! use tracker::enrich::step::Step;
//! use tracker::event::Event;
//! use tracker::extract::RequestView;
//!
//! /// Refuses impressions of campaign 0 (a placeholder some ad servers send).
//! #[derive(Debug)]
//! struct NoCampaignZero;
//!
//! impl Step for NoCampaignZero {
//!     fn name(&self) -> &str { "no_campaign_zero" }
//!     fn apply(&self, ty: &EventType, _req: &RequestView<'_>, ev: &mut Event) -> Result<(), &'static str> {
//!         let f = ty.fields.iter().find(|f| f.name == "campaign_id").ok_or("no campaign_id")?;
//!         if ev.has(f.slot) && ev.slots[f.slot] == 0 { Err("campaign 0 is a placeholder") } else { Ok(()) }
//!     }
//! }
//!
//! let mut cfg = Config::embedded();
//! cfg.add_step("impression", Arc::new(NoCampaignZero)).unwrap();
//! let running = tracker::runtime::start(cfg).unwrap();
//! # running.stop(); running.wait();
//! ```
//!
//! Contract (the request path's): no heap allocation, no lock, no blocking call, no panic;
//! bounded work. A refusal is answered `400 step <name>: <reason>` and the event is dropped.
//! Steps run in the order added. A SIGHUP reload keeps them, re-attached by event type name.

use crate::config::EventType;
use crate::event::Event;
use crate::extract::RequestView;

pub trait Step: Send + Sync + std::fmt::Debug {
    /// Short name, used in refusals (`step <name>: <reason>`).
    fn name(&self) -> &str;
    /// Adjusts or checks `ev`, an event of type `ty` made from `req`.
    fn apply(&self, ty: &EventType, req: &RequestView<'_>, ev: &mut Event) -> Result<(), &'static str>;
}
