//! `Config::parse` on arbitrary UTF-8: an error (naming file, line and key) is fine, a panic
//! is not. A config that parses must also build its routing table, as a start or reload does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracker::config::Config;

fuzz_target!(|text: &str| {
    match Config::parse(text, "fuzz.toml") {
        Ok(cfg) => {
            let _ = tracker::endpoint::Routes::new(&cfg);
            let _ = cfg.schema.to_json();
        }
        Err(errors) => assert!(!errors.to_string().is_empty()),
    }
});
