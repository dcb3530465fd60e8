//! The request path below the socket for the embedded default config (config/tracker.toml):
//! the input is what one read put in a connection's buffer, answered as the reactor answers it
//! (`tracker::fuzzing::RequestPath`: parse, route, extract, POST bodies, privacy, redirects,
//! ring, response writers), each response checked to be well formed.
//!
//! Every input is served twice: by a shard with the default `[server]` limits, and by one with
//! the smallest the config allows, whose read buffer (header_bytes_max + body_bytes_max = 512
//! bytes) an input fills easily: the 413/431 for a full buffer, and limits hit at every turn.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tracker::fuzzing::RequestPath;

thread_local! {
    // One shard for the whole run: building one (POST scratch, ring, dedup table) costs far more
    // than a request. Loopback is exempt from budgets, so a long run is not all 429s.
    static PATH: RefCell<RequestPath> = RefCell::new(RequestPath::new(
        tracker::config::Config::embedded(),
        "127.0.0.1:40000".parse().unwrap(),
    ));
    static SMALL: RefCell<RequestPath> = RefCell::new(RequestPath::new(small(), "127.0.0.1:40000".parse().unwrap()));
}

/// The embedded config with the smallest request limits its ranges allow (config/keys.rs),
/// request line below header_bytes_max as validation requires.
fn small() -> tracker::config::Config {
    let mut cfg = tracker::config::Config::embedded();
    cfg.server.request_line_bytes_max = 128;
    cfg.server.header_count_max = 4;
    cfg.server.header_bytes_max = 256;
    cfg.server.body_bytes_max = 256;
    cfg
}

fuzz_target!(|data: &[u8]| {
    PATH.with(|p| p.borrow_mut().serve(data));
    SMALL.with(|p| p.borrow_mut().serve(data));
});
