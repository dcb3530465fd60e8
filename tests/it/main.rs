//! Integration tests: the real binary over real TCP sockets, one module per feature.

mod harness;

mod batch;
mod budget;
mod collectors;
mod config_errors;
mod config_reference;
mod dedup;
mod docker;
mod durability;
mod http_rejects;
mod journal_failure;
mod kafka;
mod kafka_tls;
mod lifecycle;
mod loadgen;
mod metrics;
mod notices;
mod pipeline;
mod privacy;
mod redirect;
mod reload;
mod restart;
mod shards;
mod systemd;
