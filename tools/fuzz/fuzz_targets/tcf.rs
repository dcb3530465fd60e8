//! The TCF v2 consent decoder (`tracker::enrich::tcf`) on arbitrary strings, with the vendor id
//! taken from the first two bytes. It reads a string a browser or an SSP sent, so no input may
//! panic it; and the privacy step relies on its answers keeping to three rules.
#![no_main]

use std::num::NonZeroU16;

use libfuzzer_sys::fuzz_target;
use tracker::enrich::tcf::{consent, purpose_one_consent};

fuzz_target!(|data: &[u8]| {
    let [v0, v1, tc @ ..] = data else { return };
    let vendor = NonZeroU16::new(u16::from_le_bytes([*v0, *v1]));
    let with_vendor = consent(tc, vendor);
    let purpose_one = purpose_one_consent(tc);
    // A vendor's consent is never given without Purpose 1's.
    assert!(!with_vendor || purpose_one, "vendor {vendor:?} consents without Purpose 1");
    // Without a vendor, the answer is Purpose 1's.
    assert_eq!(consent(tc, None), purpose_one);
    // Only the core segment (up to the first '.') is read: the segments after it change nothing.
    if let Some(dot) = tc.iter().position(|&b| b == b'.') {
        assert_eq!(consent(&tc[..dot], vendor), with_vendor, "the segments after the core changed the answer");
    }
});
