//! Integration tests: the real binary over real TCP sockets, one module per feature.

mod harness;

mod collectors;
mod config_errors;
mod config_reference;
mod durability;
mod http_rejects;
mod kafka;
mod loadgen;
mod metrics;
mod pipeline;
mod reload;
mod restart;
mod shards;
mod systemd;
