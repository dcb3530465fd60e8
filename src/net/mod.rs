//! Network I/O of a shard: the SO_REUSEPORT listener and the connection loop.

pub mod body;
pub mod connection;
pub mod deadline;
pub mod listener;
mod pipeline;
pub mod post;
