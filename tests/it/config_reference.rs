//! docs/config-reference.md is exactly what `tracker config-reference` prints, so the reference
//! cannot drift from the key table the validator uses (src/config/keys.rs).

use std::process::Command;

use crate::harness::BIN;

#[test]
fn docs_config_reference_matches_the_generated_text() {
    let out = Command::new(BIN).arg("config-reference").output().unwrap();
    assert!(out.status.success(), "tracker config-reference failed: {}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config-reference.md");
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/config-reference.md differs from `tracker config-reference` (src/config/keys.rs changed?).\n\
         Regenerate it: cargo run -- config-reference > docs/config-reference.md"
    );
    for key in ["listen", "ring_events", "segment_bytes", "sync_interval_ms", "max_bytes"] {
        assert!(generated.contains(&format!("`{key}`")), "{key} missing from the reference");
    }
}
