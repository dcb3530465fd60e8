//! IAB TCF v2 consent strings (`gdpr_consent`), read only as far as the privacy step needs:
//! does the string give consent to Purpose 1, "Store and/or access information on a device"?
//!
//! In: the string as received; out: yes or no. Anything that is not a TCF v2 string (another
//! version, a byte outside base64url, a core segment too short to hold the purpose bits) is
//! no: a string the tracker cannot read gives it no consent.
//!
//! Layout (IAB Tech Lab, "Consent string and vendor list formats v2", core string): segments
//! separated by '.', the core segment first, base64url without padding; its bits, most
//! significant first:
//!
//! ```text
//! bit   0  Version              6   (= 2)
//!       6  Created             36
//!      42  LastUpdated         36
//!      78  CmpId               12
//!      90  CmpVersion          12
//!     102  ConsentScreen        6
//!     108  ConsentLanguage     12
//!     120  VendorListVersion   12
//!     132  TcfPolicyVersion     6
//!     138  IsServiceSpecific    1
//!     139  UseNonStandardTexts  1
//!     140  SpecialFeatureOptIns 12
//!     152  PurposesConsent     24   (first bit = Purpose 1)
//!     176  PurposesLITransparency, PurposeOneTreatment, PublisherCC, vendor sections …
//! ```
//!
//! Vendor consent (whether this tracker's vendor id was consented) is not read: see
//! docs/privacy.md. No allocation: each base64url character is mapped to its 6 bits on the
//! fly, and only the two characters holding Version and Purpose 1 are looked at for value.

/// TCF version this decoder reads.
pub const VERSION: u8 = 2;
/// Bit offset of PurposesConsent's first bit (Purpose 1) in the core segment.
pub const PURPOSE_ONE_BIT: usize = 152;
/// Bits a core segment must hold for its PurposesConsent field to be whole: a string cut
/// inside that field is not trusted with its first bit either.
pub const CORE_BITS_MIN: usize = PURPOSE_ONE_BIT + 24;

const _: () = assert!(PURPOSE_ONE_BIT == 6 + 36 + 36 + 12 + 12 + 6 + 12 + 12 + 6 + 1 + 1 + 12);

/// Whether `tc` is a TCF v2 consent string whose core segment gives consent to Purpose 1.
pub fn purpose_one_consent(tc: &[u8]) -> bool {
    let core = match memchr::memchr(b'.', tc) {
        Some(end) => &tc[..end],
        None => tc,
    };
    if core.len() * 6 < CORE_BITS_MIN || !core.iter().all(|&c| sextet(c).is_some()) {
        return false;
    }
    let bit = |at: usize| sextet(core[at / 6]).is_some_and(|s| s >> (5 - at % 6) & 1 == 1);
    sextet(core[0]) == Some(VERSION) && bit(PURPOSE_ONE_BIT)
}

/// The 6 bits a base64url character (RFC 4648 §5) stands for; None for any other byte,
/// padding ('=') included: the TC string is written without it.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core segment written field by field, as a CMP would: (value, width in bits), most
    /// significant bit first, then base64url without padding.
    fn encode(fields: &[(u64, usize)]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut bits = Vec::new();
        for &(v, w) in fields {
            assert!(w == 64 || v < 1 << w, "{v} does not fit {w} bits");
            bits.extend((0..w).rev().map(|i| (v >> i) & 1 == 1));
        }
        // A TC string's segments are padded with zero bits to a whole number of bytes.
        while bits.len() % 8 != 0 {
            bits.push(false);
        }
        bits.chunks(6)
            .map(|c| {
                let s = c.iter().enumerate().fold(0u8, |a, (i, &b)| a | (u8::from(b) << (5 - i)));
                ALPHABET[s as usize] as char
            })
            .collect()
    }

    /// A whole core segment (no vendors) with `version` and these PurposesConsent bits
    /// (bit 23 = Purpose 1).
    fn core(version: u64, purposes: u64) -> String {
        encode(&[
            (version, 6),
            (17_000_000_000, 36), // Created, deciseconds: 2023-11
            (17_000_000_000, 36), // LastUpdated
            (300, 12),            // CmpId
            (5, 12),              // CmpVersion
            (1, 6),               // ConsentScreen
            (4 * 64 + 13, 12),    // ConsentLanguage "EN"
            (250, 12),            // VendorListVersion
            (4, 6),               // TcfPolicyVersion
            (1, 1),               // IsServiceSpecific
            (0, 1),               // UseNonStandardTexts
            (0, 12),              // SpecialFeatureOptIns
            (purposes, 24),       // PurposesConsent
            (0, 24),              // PurposesLITransparency
            (0, 1),               // PurposeOneTreatment
            (4 * 64 + 4, 12),     // PublisherCC "EE"
            (0, 16),              // MaxVendorId (consent)
            (0, 1),               // IsRangeEncoding
            (0, 16),              // MaxVendorId (legitimate interest)
            (0, 1),               // IsRangeEncoding
            (0, 12),              // NumPubRestrictions
        ])
    }

    const P1: u64 = 1 << 23;

    #[test]
    fn purpose_one_is_the_first_purposes_consent_bit() {
        assert!(purpose_one_consent(core(2, P1).as_bytes()));
        // All purposes but Purpose 1: still no consent to store or read the device.
        assert!(!purpose_one_consent(core(2, 0x7f_ffff).as_bytes()));
        assert!(!purpose_one_consent(core(2, 0).as_bytes()));
        assert!(purpose_one_consent(core(2, 0xff_ffff).as_bytes()));
        // The bits around it (the last special feature, Purpose 2) are not it.
        let mut sf = core(2, 0x40_0000).into_bytes();
        assert!(!purpose_one_consent(&sf));
        sf = encode(&[(2, 6), (0, 64), (0, 64), (0, 6), (1, 12), (0, 24), (0, 60)]).into_bytes();
        assert!(!purpose_one_consent(&sf), "SpecialFeatureOptIns' last bit taken for Purpose 1");
    }

    #[test]
    fn later_segments_are_not_read() {
        let yes = core(2, P1);
        // Disclosed vendors (segment type 1) and publisher TC (3) after the core.
        assert!(purpose_one_consent(format!("{yes}.IAAA.YAAAAAAAAAAA").as_bytes()));
        // Garbage after the '.' is another segment's business.
        assert!(purpose_one_consent(format!("{yes}.!!").as_bytes()));
        assert!(!purpose_one_consent(format!("{}.IAAA", core(2, 0)).as_bytes()));
    }

    #[test]
    fn what_is_not_a_tcf_v2_string_gives_no_consent() {
        // TCF v1 (version 1: "B…") and a future version with the same bit set.
        assert!(!purpose_one_consent(core(1, P1).as_bytes()));
        assert!(!purpose_one_consent(core(3, P1).as_bytes()));
        // Bad base64url: standard base64's '+' and '/', padding, a space, percent-encoding.
        let yes = core(2, P1);
        for (at, bad) in [(10, b'+'), (10, b'/'), (10, b' '), (10, b'%'), (31, b'=')] {
            let mut s = yes.clone().into_bytes();
            s[at] = bad;
            assert!(!purpose_one_consent(&s), "{}", String::from_utf8_lossy(&s));
        }
        assert!(!purpose_one_consent(format!("{yes}==").as_bytes()));
        // Too short: cut before the purposes are whole, empty, a bare segment separator.
        assert!(purpose_one_consent(&yes.as_bytes()[..CORE_BITS_MIN.div_ceil(6)]));
        assert!(!purpose_one_consent(&yes.as_bytes()[..CORE_BITS_MIN / 6]));
        assert!(!purpose_one_consent(&yes.as_bytes()[..26]));
        assert!(!purpose_one_consent(format!("{}.{}", &yes[..26], &yes[26..]).as_bytes()));
        assert!(!purpose_one_consent(b""));
        assert!(!purpose_one_consent(b"."));
        // Unsubstituted macros, as players and SSPs send them.
        for m in [&b"${GDPR_CONSENT_123}"[..], b"[GDPRCONSENT]", b"%%GDPR_CONSENT%%", b"0", b"1"] {
            assert!(!purpose_one_consent(m));
        }
    }

    /// A string as CMPs write them (from the documentation of the GDPR::IAB::TCFv2 Perl
    /// module, which says it consents to purposes 1, 3, 9 and 10; CMP 21), decoded by hand:
    ///
    /// ```text
    /// char 0        'C'     = 000010: Version 2
    /// chars 13, 14  'A' 'V' = 000000 010101: CmpId (bits 78..90) = 21
    /// char 22       'C'     = 000010: TcfPolicyVersion (bits 132..138) = 2
    /// char 25       'K'     = 001010, bits 150..156: the last two SpecialFeatureOptIns (0, 0),
    ///                         then Purpose 1 (bit 152) = 1, Purpose 2 = 0, Purpose 3 = 1, 4 = 0
    /// ```
    #[test]
    fn a_real_world_string_decoded_by_hand() {
        const TC: &str =
            "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA.argAC0gAAAAAAAAAAAA";
        assert_eq!(&TC[25..26], "K");
        assert_eq!(sextet(b'K'), Some(0b001010));
        assert!(purpose_one_consent(TC.as_bytes()));
        // The same string with 'K' (001010) turned into 'C' (000010): Purpose 1 off, 3 on.
        let mut off = TC.as_bytes().to_vec();
        off[25] = b'C';
        assert!(!purpose_one_consent(&off));
        // A v2 string from this repo's own tests (CMP 31, all purposes off).
        assert!(!purpose_one_consent(b"CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA"));
    }
}
