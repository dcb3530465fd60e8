//! Integration tests: the real binary over real TCP sockets, one module per feature.

mod harness;

mod collectors;
mod config_errors;
mod durability;
mod http_rejects;
mod kafka;
mod pipeline;
