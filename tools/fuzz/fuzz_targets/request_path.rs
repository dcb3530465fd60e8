//! The request path below the socket for the embedded default config (config/tracker.toml):
//! the input is what one read put in a connection's buffer, answered as the reactor answers it
//! (`tracker::fuzzing::RequestPath`: parse, route, extract, POST bodies, privacy, redirects,
//! ring, response writers), each response checked to be well formed.
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
}

fuzz_target!(|data: &[u8]| {
    PATH.with(|p| p.borrow_mut().serve(data));
});
