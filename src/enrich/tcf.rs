//! IAB TCF v2 consent strings (`gdpr_consent`), read only as far as the privacy step needs:
//! does the string give consent to Purpose 1, "Store and/or access information on a device",
//! and (when `privacy.tcf_vendor_id` is set) to that vendor?
//!
//! In: the string as received, the vendor id or none; out: yes or no. Anything that is not a
//! TCF v2 string (another version, a byte outside base64url, a core segment too short to hold
//! the purpose bits and PurposeOneTreatment) is no: a string the tracker cannot read gives it
//! no consent, nor does one saying Purpose 1 was never put to the user (PurposeOneTreatment =
//! 1). So is a core segment too short for the Vendor Consent Section it declares (a bitfield of
//! MaxVendorId bits, or NumEntries range entries), and a vendor id above its MaxVendorId.
//!
//! Layout (IAB Tech Lab, "Transparency and Consent String with Global Vendor & CMP List
//! Formats", Final v2.2, core string table): segments separated by '.', the core segment first,
//! base64url without padding; its bits, most significant first:
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
//!     176  PurposesLITransparency 24
//!     200  PurposeOneTreatment  1
//!     201  PublisherCC         12
//!     213  Vendor Consent Section:
//!            MaxVendorId       16
//!            IsRangeEncoding    1   (1 = ranges, 0 = bitfield)
//!            bitfield:  MaxVendorId bits, the first for vendor 1 (bit 230 = vendor 1)
//!            ranges:    NumEntries 12, then NumEntries times:
//!                         IsARange 1, StartOrOnlyVendorId 16, EndVendorId 16 (only if
//!                         IsARange = 1; the range is inclusive)
//!          Vendor Legitimate Interest Section: the same layout as the Vendor Consent Section
//!          Publisher restrictions:
//!            NumPubRestrictions 12, then that many times:
//!              PurposeId 6, RestrictionType 2 (0 not allowed, 1 require consent, 2 require
//!              legitimate interest, 3 undefined), NumEntries 12, then that many range
//!              entries as above
//! ```
//!
//! Checked against the specification's own text: the file "TCFv2/IAB Tech Lab - Consent
//! string and vendor list formats v2.md" of github.com/InteractiveAdvertisingBureau/
//! GDPR-Transparency-and-Consent-Framework ("Final v.2.2 May 2023", its version history up to
//! 2.3, April 2025, which changes no core field; commit 23217df4 of November 2025), section
//! "The Core String": the field order and widths above, "where index 0 is Vendor ID 1", and "If
//! a Vendor ID is not within the bounds of the ranges then the vendor is assumed to have 'No
//! Consent'". Not checked against another decoder.
//!
//! With a vendor id, a publisher restriction on Purpose 1 that names the vendor with any type but
//! "require consent" is no consent; so is a string that ends before the restrictions are whole.
//! Not read: what the legitimate-interest section says, restrictions on other purposes, and
//! the segments after the core (see docs/privacy.md). No allocation: each base64url character
//! is mapped to its 6 bits on the fly when a bit of it is read, and range entries are read one
//! at a time.

use std::num::NonZeroU16;

/// TCF version this decoder reads.
pub const VERSION: u8 = 2;
/// Bit offset of PurposesConsent's first bit (Purpose 1) in the core segment.
pub const PURPOSE_ONE_BIT: usize = 152;
/// Bit offset of PurposeOneTreatment: 1 = Purpose 1 was not disclosed to the user at all (a
/// publisher whose country treats device storage differently), so whatever PurposesConsent
/// says, no consent to it was given.
pub const PURPOSE_ONE_TREATMENT_BIT: usize = PURPOSE_ONE_BIT + 24 + 24;
/// Bits a core segment must hold for Purpose 1 to be judged: PurposesConsent whole (a string cut
/// inside that field is not trusted with its first bit either) and PurposeOneTreatment.
pub const CORE_BITS_MIN: usize = PURPOSE_ONE_TREATMENT_BIT + 1;
/// Bit offset of the Vendor Consent Section (its MaxVendorId) in the core segment: after
/// PurposesConsent 24, PurposesLITransparency 24, PurposeOneTreatment 1, PublisherCC 12.
pub const VENDOR_SECTION_BIT: usize = PURPOSE_ONE_BIT + 24 + 24 + 1 + 12;

const _: () = assert!(PURPOSE_ONE_BIT == 6 + 36 + 36 + 12 + 12 + 6 + 12 + 12 + 6 + 1 + 1 + 12);
const _: () = assert!(VENDOR_SECTION_BIT == 213);

/// Whether `tc` is a TCF v2 consent string whose core segment gives consent to Purpose 1.
pub fn purpose_one_consent(tc: &[u8]) -> bool {
    consent(tc, None)
}

/// Whether `tc` is a TCF v2 consent string whose core segment gives consent to Purpose 1 and,
/// when `vendor` is set, to that vendor in its Vendor Consent Section.
pub fn consent(tc: &[u8], vendor: Option<NonZeroU16>) -> bool {
    let Some(core) = Core::new(tc) else { return false };
    core.read(0, 6) == Some(u32::from(VERSION))
        && core.bit(PURPOSE_ONE_BIT) == 1
        && core.bit(PURPOSE_ONE_TREATMENT_BIT) == 0
        && vendor.is_none_or(|v| core.vendor_consent(v.get()))
}

/// A core segment checked to be base64url and to hold CORE_BITS_MIN bits.
struct Core<'a> {
    chars: &'a [u8],
}

impl<'a> Core<'a> {
    fn new(tc: &'a [u8]) -> Option<Core<'a>> {
        let chars = match memchr::memchr(b'.', tc) {
            Some(end) => &tc[..end],
            None => tc,
        };
        (chars.len() * 6 >= CORE_BITS_MIN && chars.iter().all(|&c| sextet(c).is_some())).then_some(Core { chars })
    }

    /// Bits the segment holds (a whole number of characters; the writer's padding to a byte
    /// included).
    fn len(&self) -> usize {
        self.chars.len() * 6
    }

    /// Bit `at` (< `len`), 0 or 1.
    fn bit(&self, at: usize) -> u32 {
        // Every character was checked in `new`.
        u32::from(sextet(self.chars[at / 6]).unwrap_or(0) >> (5 - at % 6) & 1)
    }

    /// The `width` (<= 16) bits from `at` as a big-endian number; None when the segment ends
    /// before them.
    fn read(&self, at: usize, width: usize) -> Option<u32> {
        debug_assert!(width <= 16);
        (at + width <= self.len()).then(|| (at..at + width).fold(0, |n, i| n << 1 | self.bit(i)))
    }

    /// The answer for `vendor` (>= 1): the Vendor Consent Section consents to it, and no
    /// publisher restriction on Purpose 1 other than "require consent" names it. No when the
    /// vendor is above MaxVendorId, or when the string ends before the Vendor Consent Section,
    /// the Vendor Legitimate Interest Section after it or the publisher restrictions after
    /// that are whole: a string cut there may have named the vendor in a restriction.
    fn vendor_consent(&self, vendor: u16) -> bool {
        let vendor = u32::from(vendor);
        let Some((consented, li)) = self.vendor_section(VENDOR_SECTION_BIT, vendor) else { return false };
        let Some((_, restrictions)) = self.vendor_section(li, vendor) else { return false };
        consented && self.purpose_one_restricted(restrictions, vendor) == Some(false)
    }

    /// A vendor section at `at` (MaxVendorId 16, IsRangeEncoding 1, then a bitfield of
    /// MaxVendorId bits or NumEntries 12 and the range entries): whether it names `vendor`
    /// (never above MaxVendorId), and the offset after it; None when the string ends inside it.
    fn vendor_section(&self, at: usize, vendor: u32) -> Option<(bool, usize)> {
        let (max, is_range) = (self.read(at, 16)?, self.read(at + 16, 1)?);
        let at = at + 17;
        if is_range == 0 {
            // The bitfield: MaxVendorId bits, vendor 1 first.
            let end = at + max as usize;
            return (end <= self.len()).then(|| (vendor <= max && self.bit(at + vendor as usize - 1) == 1, end));
        }
        let entries = self.read(at, 12)?;
        let (found, end) = self.range_entries(at + 12, entries, vendor)?;
        Some((found && vendor <= max, end))
    }

    /// `entries` range entries from `at` (IsARange 1, StartOrOnlyVendorId 16, and EndVendorId
    /// 16 when IsARange; inclusive): whether one holds `vendor`, and the offset after them.
    /// All are read (the spec does not require them sorted); each takes at least 17 bits, so
    /// the loop is bounded by the string's length whatever the count says.
    fn range_entries(&self, mut at: usize, entries: u32, vendor: u32) -> Option<(bool, usize)> {
        let mut found = false;
        for _ in 0..entries {
            let (is_a_range, start) = (self.read(at, 1)?, self.read(at + 1, 16)?);
            at += 17;
            let end = if is_a_range == 1 {
                let end = self.read(at, 16)?;
                at += 16;
                end
            } else {
                start
            };
            found |= start <= vendor && vendor <= end;
        }
        Some((found, at))
    }

    /// The publisher restrictions at `at` (NumPubRestrictions 12, then each: PurposeId 6,
    /// RestrictionType 2, NumEntries 12, range entries): whether one on Purpose 1 names
    /// `vendor` with a type other than 1, "require consent" (0: not allowed; 2: require
    /// legitimate interest, on which Purpose 1 can never rest; 3: undefined). None when the
    /// string ends inside them.
    fn purpose_one_restricted(&self, at: usize, vendor: u32) -> Option<bool> {
        let count = self.read(at, 12)?;
        let mut at = at + 12;
        let mut restricted = false;
        for _ in 0..count {
            let (purpose, kind, entries) = (self.read(at, 6)?, self.read(at + 6, 2)?, self.read(at + 8, 12)?);
            let (names, end) = self.range_entries(at + 20, entries, vendor)?;
            restricted |= purpose == 1 && kind != RESTRICTION_REQUIRE_CONSENT && names;
            at = end;
        }
        Some(restricted)
    }
}

/// Publisher restriction type 1: the vendor must have consent for the purpose (which Purpose 1
/// needs anyway).
const RESTRICTION_REQUIRE_CONSENT: u32 = 1;

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
        core_with(version, purposes, &[(0, 16), (0, 1)])
    }

    /// The fields of a core segment up to its Vendor Consent Section (bits 0..213), with
    /// `version` and `purposes`.
    fn head(version: u64, purposes: u64) -> Vec<(u64, usize)> {
        vec![
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
        ]
    }

    /// A whole core segment: `head`, then `vendors` as its Vendor Consent Section (MaxVendorId,
    /// IsRangeEncoding, the bitfield or range entries), then an empty legitimate-interest
    /// section and no publisher restrictions, as a CMP writes them.
    fn core_with(version: u64, purposes: u64, vendors: &[(u64, usize)]) -> String {
        let mut f = head(version, purposes);
        f.extend_from_slice(vendors);
        f.extend_from_slice(&[
            (0, 16), // MaxVendorId (legitimate interest)
            (0, 1),  // IsRangeEncoding
            (0, 12), // NumPubRestrictions
        ]);
        encode(&f)
    }

    const P1: u64 = 1 << 23;
    /// What `core_with` writes after the Vendor Consent Section: an empty legitimate-interest
    /// section (MaxVendorId 16, IsRangeEncoding 1) and NumPubRestrictions 12 = 0.
    const TRAILER_BITS: usize = 16 + 1 + 12;

    fn v(id: u16) -> Option<NonZeroU16> {
        Some(NonZeroU16::new(id).expect("a vendor id is not 0"))
    }

    /// A Vendor Consent Section as a bitfield: MaxVendorId, IsRangeEncoding = 0, one bit per
    /// vendor 1..=max, set for `consented`.
    fn bitfield(max: u16, consented: &[u16]) -> Vec<(u64, usize)> {
        let mut f = vec![(u64::from(max), 16), (0, 1)];
        f.extend((1..=max).map(|id| (u64::from(consented.contains(&id)), 1)));
        f
    }

    /// A Vendor Consent Section as ranges: MaxVendorId, IsRangeEncoding = 1, NumEntries, then
    /// each entry (start, end): IsARange = 0 and one id when start == end, else IsARange = 1
    /// and both.
    fn ranges(max: u16, entries: &[(u16, u16)]) -> Vec<(u64, usize)> {
        let mut f = vec![(u64::from(max), 16), (1, 1)];
        f.extend(range_entries(entries));
        f
    }

    /// NumEntries, then each entry (start, end): IsARange = 0 and one id when start == end,
    /// else IsARange = 1 and both (a vendor section's ranges, a publisher restriction's).
    fn range_entries(entries: &[(u16, u16)]) -> Vec<(u64, usize)> {
        let mut f = vec![(entries.len() as u64, 12)];
        for &(start, end) in entries {
            if start == end {
                f.extend_from_slice(&[(0, 1), (u64::from(start), 16)]);
            } else {
                f.extend_from_slice(&[(1, 1), (u64::from(start), 16), (u64::from(end), 16)]);
            }
        }
        f
    }

    #[test]
    fn the_vendor_consent_section_starts_after_the_publisher_cc() {
        assert_eq!(head(2, P1).iter().map(|&(_, w)| w).sum::<usize>(), VENDOR_SECTION_BIT);
        assert_eq!(VENDOR_SECTION_BIT, 213);
    }

    #[test]
    fn a_bitfield_consents_to_the_vendors_whose_bit_is_set() {
        let s = core_with(2, P1, &bitfield(10, &[2, 10]));
        for (id, yes) in [(1, false), (2, true), (3, false), (9, false), (10, true)] {
            assert_eq!(consent(s.as_bytes(), v(id)), yes, "vendor {id}");
        }
        // Above MaxVendorId: not in the section, no consent, whatever the bits after it say.
        assert!(!consent(s.as_bytes(), v(11)));
        assert!(!consent(s.as_bytes(), v(u16::MAX)));
        // Not checked: Purpose 1 alone decides, as before.
        assert!(consent(s.as_bytes(), None));
        // The vendor without Purpose 1 is no consent either.
        let no_p1 = core_with(2, 0x7f_ffff, &bitfield(10, &[2, 10]));
        assert!(!consent(no_p1.as_bytes(), v(2)));
        assert!(!consent(no_p1.as_bytes(), None));
        // Vendor 1 is the bitfield's first bit, right after IsRangeEncoding.
        let first = core_with(2, P1, &bitfield(1, &[1]));
        assert!(consent(first.as_bytes(), v(1)));
        assert!(!consent(first.as_bytes(), v(2)));
        // No vendors at all (MaxVendorId 0): nobody is consented.
        assert!(!consent(core(2, P1).as_bytes(), v(1)));
    }

    #[test]
    fn a_vendors_bit_is_read_at_its_own_offset() {
        // The bit after the section (the legitimate-interest MaxVendorId 0x8001 starts with a
        // 1; its section is ranges, none) is not vendor 4's.
        let mut f = head(2, P1);
        f.extend(bitfield(4, &[1, 2, 3]));
        f.extend_from_slice(&[(0x8001, 16), (1, 1), (0, 12), (0, 12)]);
        let s = encode(&f);
        assert!(consent(s.as_bytes(), v(3)));
        assert!(!consent(s.as_bytes(), v(4)));
        assert!(!consent(s.as_bytes(), v(5)), "above MaxVendorId: the next section's first bit");
        // The bit before vendor 1 is IsRangeEncoding, and before it MaxVendorId ends in a 1.
        assert!(!consent(core_with(2, P1, &bitfield(1, &[])).as_bytes(), v(1)));
        assert!(!consent(core_with(2, P1, &bitfield(3, &[])).as_bytes(), v(1)));
    }

    #[test]
    fn ranges_consent_to_their_single_ids_and_every_id_between_their_ends() {
        let s = core_with(2, P1, &ranges(300, &[(5, 5), (100, 200), (300, 300)]));
        for (id, yes) in [
            (4, false),
            (5, true),
            (6, false),
            (99, false),
            (100, true),
            (150, true),
            (200, true),
            (201, false),
            (299, false),
            (300, true),
        ] {
            assert_eq!(consent(s.as_bytes(), v(id)), yes, "vendor {id}");
        }
        assert!(!consent(s.as_bytes(), v(301)), "above MaxVendorId");
        // An entry reaching past MaxVendorId does not consent to the ids above it.
        let past = core_with(2, P1, &ranges(150, &[(100, 200)]));
        assert!(consent(past.as_bytes(), v(150)));
        assert!(!consent(past.as_bytes(), v(151)));
        // Entries in any order; the last one may be the match.
        let unordered = core_with(2, P1, &ranges(900, &[(700, 900), (1, 3), (42, 42)]));
        assert!(consent(unordered.as_bytes(), v(42)));
        assert!(consent(unordered.as_bytes(), v(800)));
        assert!(!consent(unordered.as_bytes(), v(41)));
        // A range written backwards holds nothing; no entries, nobody.
        let backwards = core_with(2, P1, &ranges(200, &[(200, 100)]));
        assert!(!consent(backwards.as_bytes(), v(150)));
        assert!(!consent(core_with(2, P1, &ranges(200, &[])).as_bytes(), v(1)));
        // Purpose 1 still comes first.
        let no_p1 = core_with(2, 0, &ranges(300, &[(1, 300)]));
        assert!(!consent(no_p1.as_bytes(), v(5)));
    }

    /// A section the string is too short for is not read, not even the part that is there: a
    /// string cut inside the vendor section (by a sender, or by the consent field's
    /// max_bytes) gives no vendor consent.
    #[test]
    fn a_string_too_short_for_its_vendor_section_gives_no_vendor_consent() {
        let chars = |bits: usize| bits.div_ceil(6);
        // Bitfield of 700 vendors, vendor 7 set: whole, then cut by one character inside it.
        let whole = core_with(2, P1, &bitfield(700, &[7]));
        let end = VENDOR_SECTION_BIT + 17 + 700;
        // `encode` pads to a byte, after the empty legitimate-interest section and
        // NumPubRestrictions.
        assert_eq!(whole.len(), chars((end + TRAILER_BITS).next_multiple_of(8)));
        assert!(consent(whole.as_bytes(), v(7)));
        let cut = &whole.as_bytes()[..chars(end) - 1];
        assert!(!consent(cut, v(7)), "bitfield cut after vendor 7's bit");
        assert!(consent(cut, None), "Purpose 1 is still whole");
        // Cut inside MaxVendorId: 216 bits, and 228 (one short of IsRangeEncoding's bit).
        assert!(!consent(&whole.as_bytes()[..36], v(7)));
        assert!(!consent(&whole.as_bytes()[..38], v(7)));
        // Ranges: NumEntries says 3, the third is cut (the match is in the first).
        let whole = core_with(2, P1, &ranges(500, &[(7, 7), (100, 200), (300, 500)]));
        let end = VENDOR_SECTION_BIT + 17 + 12 + 17 + 33 + 33;
        assert!(consent(whole.as_bytes(), v(7)));
        assert!(consent(whole.as_bytes(), v(400)));
        for cut in [chars(end) - 1, chars(end - 33), chars(VENDOR_SECTION_BIT + 17 + 6)] {
            let s = &whole.as_bytes()[..cut];
            assert!(!consent(s, v(7)), "cut at {cut} characters");
            assert!(!consent(s, v(400)), "cut at {cut} characters");
        }
        // Cut after another segment: the core ends at the '.', what follows is not its bits.
        let dotted = format!("{}.{}", &whole[..chars(end) - 1], &whole[chars(end) - 1..]);
        assert!(!consent(dotted.as_bytes(), v(7)));
        // NumEntries 4095 with nothing after it.
        let mut f = head(2, P1);
        f.extend_from_slice(&[(500, 16), (1, 1), (4095, 12)]);
        assert!(!consent(encode(&f).as_bytes(), v(7)));
    }

    /// Every cut of a string, character by character: before its vendor section, the empty
    /// legitimate-interest section and NumPubRestrictions after it are whole no vendor is
    /// consented; from there on each vendor gets the whole string's answer.
    #[test]
    fn every_cut_before_the_section_ends_gives_no_vendor_consent() {
        for (section, bits) in [
            (bitfield(40, &[1, 7, 39, 40]), 17 + 40),
            (ranges(900, &[(7, 7), (30, 40), (850, 900)]), 17 + 12 + 17 + 33 + 33),
        ] {
            let whole = core_with(2, P1, &section);
            let end = VENDOR_SECTION_BIT + bits + TRAILER_BITS;
            for cut in 0..=whole.len() {
                let s = &whole.as_bytes()[..cut];
                for id in [1, 2, 7, 8, 30, 35, 39, 40, 41, 849, 850, 900, 901] {
                    let want = cut * 6 >= end && consent(whole.as_bytes(), v(id));
                    assert_eq!(consent(s, v(id)), want, "vendor {id}, cut at {cut} of {}", whole.len());
                }
            }
        }
    }

    /// A whole core segment with Purpose 1 consented, `vendors` as its Vendor Consent Section,
    /// a legitimate-interest section naming vendors 1..=10, and `restrictions` (PurposeId,
    /// RestrictionType, first and last vendor of one range entry).
    fn core_restricted(vendors: &[(u64, usize)], restrictions: &[(u64, u64, u16, u16)]) -> String {
        let mut f = head(2, P1);
        f.extend_from_slice(vendors);
        f.extend(ranges(10, &[(1, 10)]));
        f.push((restrictions.len() as u64, 12));
        for &(purpose, kind, start, end) in restrictions {
            f.extend([(purpose, 6), (kind, 2)]);
            f.extend(range_entries(&[(start, end)]));
        }
        encode(&f)
    }

    /// A publisher may disallow a vendor for a purpose (RestrictionType 0), or require
    /// legitimate interest (2), on which Purpose 1 can never rest: either, on Purpose 1, takes
    /// away the vendor's consent; "require consent" (1) changes nothing, nor does a
    /// restriction on another purpose or another vendor.
    #[test]
    fn a_publisher_restriction_on_purpose_one_naming_the_vendor_takes_its_consent_away() {
        let vendors = bitfield(10, &[3, 5]);
        let free = core_restricted(&vendors, &[]);
        assert!(consent(free.as_bytes(), v(3)) && consent(free.as_bytes(), v(5)));
        for (kind, yes) in [(0, false), (1, true), (2, false), (3, false)] {
            let s = core_restricted(&vendors, &[(1, kind, 3, 3)]);
            assert_eq!(consent(s.as_bytes(), v(3)), yes, "type {kind}");
            assert!(consent(s.as_bytes(), v(5)), "type {kind} names vendor 3 only");
            assert!(purpose_one_consent(s.as_bytes()), "without a vendor id, restrictions name no one");
        }
        // Another purpose's restriction; a range around the vendor; the last of several.
        assert!(consent(core_restricted(&vendors, &[(2, 0, 1, 10)]).as_bytes(), v(3)));
        let around = core_restricted(&vendors, &[(1, 0, 2, 4)]);
        assert!(!consent(around.as_bytes(), v(3)));
        assert!(consent(around.as_bytes(), v(5)));
        let last = core_restricted(&vendors, &[(2, 0, 5, 5), (1, 1, 5, 5), (1, 0, 5, 6)]);
        assert!(!consent(last.as_bytes(), v(5)));
        assert!(consent(last.as_bytes(), v(3)));
        // Restrictions the string is too short for: no vendor consent, as it might name it.
        let whole = core_restricted(&vendors, &[(2, 0, 7, 7), (2, 0, 8, 8)]);
        let end = VENDOR_SECTION_BIT + 17 + 10 + (17 + 12 + 33) + 12 + 2 * (20 + 17);
        assert!(consent(whole.as_bytes(), v(3)));
        assert!(!consent(&whole.as_bytes()[..(end - 17).div_ceil(6)], v(3)));
        assert!(purpose_one_consent(&whole.as_bytes()[..(end - 17).div_ceil(6)]));
    }

    /// The real-world string of `a_real_world_string_decoded_by_hand`, its Vendor Consent
    /// Section decoded by hand:
    ///
    /// ```text
    /// chars 35..=38 'g' 'A' '5' 'm' = 100000 000000 111001 100110, bits 210..234:
    ///     bits 213..229 MaxVendorId = 000 000000 111001 1 = 115,
    ///     bit 229 IsRangeEncoding = 0 (a bitfield),
    ///     bits 230..234 vendors 1..=4 = 0 1 1 0
    /// char 57       'Y'     = 011000, bits 342..348: vendors 113, 114, 115 = 0 1 1 (bit
    ///                         344 = 230 + 114), then the legitimate-interest section
    /// ```
    #[test]
    fn a_real_world_strings_vendors_decoded_by_hand() {
        const TC: &str =
            "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA.argAC0gAAAAAAAAAAAA";
        assert_eq!(&TC[35..39], "gA5m");
        assert_eq!(&TC[57..58], "Y");
        let tc = TC.as_bytes();
        for (id, yes) in [(1, false), (2, true), (3, true), (4, false), (113, false), (114, true), (115, true)] {
            assert_eq!(consent(tc, v(id)), yes, "vendor {id}");
        }
        assert!(!consent(tc, v(116)), "above MaxVendorId 115");
        // 'Y' (011000) turned into 'Q' (010000): vendor 115 off, 114 still on.
        let mut off = tc.to_vec();
        off[57] = b'Q';
        assert!(!consent(&off, v(115)));
        assert!(consent(&off, v(114)));
        assert!(consent(&off, None));
    }

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

    /// PurposeOneTreatment = 1 says Purpose 1 was never put to the user: no consent, even with
    /// its PurposesConsent bit set. Regression: only the bit was read, so such a string (the
    /// spec calls a global one with the flag invalid) counted as consent.
    #[test]
    fn purpose_one_not_disclosed_is_no_consent_whatever_its_bit_says() {
        let mut f = head(2, P1);
        f[14] = (1, 1); // PurposeOneTreatment
        f.extend(bitfield(10, &[2]));
        f.extend_from_slice(&[(0, 16), (0, 1), (0, 12)]);
        let s = encode(&f);
        assert!(!purpose_one_consent(s.as_bytes()));
        assert!(!consent(s.as_bytes(), v(2)));
        assert!(!by_the_table(s.as_bytes(), None));
        f[14] = (0, 1);
        assert!(consent(encode(&f).as_bytes(), v(2)));
    }

    /// The consent answer read the slow way, for checking the decoder: the core segment
    /// expanded into one bool per bit, each field read at its place in the IAB table. Without
    /// a vendor, Purpose 1 alone.
    fn by_the_table(tc: &[u8], vendor: Option<u32>) -> bool {
        let core = tc.split(|&c| c == b'.').next().unwrap_or(b"");
        let Some(sextets) = core.iter().map(|&c| sextet(c)).collect::<Option<Vec<u8>>>() else { return false };
        let bits: Vec<bool> = sextets.iter().flat_map(|&s| (0..6).rev().map(move |i| s >> i & 1 == 1)).collect();
        let num = |at: usize, w: usize| -> Option<u32> {
            bits.get(at..at + w).map(|b| b.iter().fold(0, |n, &b| n << 1 | u32::from(b)))
        };
        if bits.len() < 201 || num(0, 6) != Some(2) || !bits[152] || bits[200] {
            return false;
        }
        let Some(vendor) = vendor else { return true };
        // Range entries from `at`: the vendors they hold, and where they end.
        let entries = |mut at: usize, n: u32| -> Option<(Vec<u32>, usize)> {
            let mut ids = Vec::new();
            for _ in 0..n {
                let (is_range, start) = (num(at, 1)?, num(at + 1, 16)?);
                at += 17;
                let end = if is_range == 1 {
                    at += 16;
                    num(at - 16, 16)?
                } else {
                    start
                };
                ids.extend(start..=end);
            }
            Some((ids, at))
        };
        // A vendor section from `at`: the vendors it consents to, and where it ends.
        let section = |at: usize| -> Option<(Vec<u32>, usize)> {
            let (max, ranges) = (num(at, 16)?, num(at + 16, 1)?);
            if ranges == 0 {
                let field = bits.get(at + 17..at + 17 + max as usize)?;
                let ids = (1..=max).filter(|&id| field[id as usize - 1]).collect();
                return Some((ids, at + 17 + max as usize));
            }
            let (ids, end) = entries(at + 29, num(at + 17, 12)?)?;
            Some((ids.into_iter().filter(|&id| id <= max).collect(), end))
        };
        let Some((consented, li_at)) = section(213) else { return false };
        let Some((_, restrictions_at)) = section(li_at) else { return false };
        let Some(count) = num(restrictions_at, 12) else { return false };
        let mut at = restrictions_at + 12;
        let mut restricted = false;
        for _ in 0..count {
            let (Some(purpose), Some(kind), Some(n)) = (num(at, 6), num(at + 6, 2), num(at + 8, 12)) else {
                return false;
            };
            let Some((ids, end)) = entries(at + 20, n) else { return false };
            restricted |= purpose == 1 && kind != 1 && ids.contains(&vendor);
            at = end;
        }
        consented.contains(&vendor) && !restricted
    }

    /// Random consent strings as CMPs write them (bitfields and ranges of random vendors), then
    /// cut, extended or with a character changed: the decoder never panics and answers as the
    /// IAB table read bit by bit does, for vendors inside, around and past MaxVendorId.
    #[test]
    fn random_strings_answer_as_the_table_read_bit_by_bit() {
        let mut rng = crate::xorshift::Xorshift64::new(0x2545_F491_4F6C_DD1D);
        let mut next = |n: u64| rng.below(n);
        let mut consented = 0;
        for _ in 0..4000 {
            let max = next(300) as u16;
            let section = if next(2) == 0 {
                let on: Vec<u16> = (1..=max).filter(|_| next(3) == 0).collect();
                bitfield(max, &on)
            } else {
                let mut f = vec![(u64::from(max), 16), (1, 1)];
                let n = next(6);
                f.push((n, 12));
                for _ in 0..n {
                    let start = next(u64::from(max) + 2);
                    if next(2) == 0 {
                        f.extend([(0, 1), (start, 16)]);
                    } else {
                        f.extend([(1, 1), (start, 16), ((start + next(40)).min(65535), 16)]);
                    }
                }
                f
            };
            let mut f = head(2, if next(8) == 0 { 0 } else { P1 });
            if next(16) == 0 {
                f[14] = (1, 1); // PurposeOneTreatment
            }
            f.extend_from_slice(&section);
            // A legitimate-interest section (empty, or a bitfield or ranges of its own), then
            // publisher restrictions: none, or a few on Purpose 1 or 2 of any type, some
            // naming vendors of the consent section.
            match next(3) {
                0 => f.extend_from_slice(&[(0, 16), (0, 1)]),
                1 => {
                    let li_max = next(200) as u16;
                    let on: Vec<u16> = (1..=li_max).filter(|_| next(2) == 0).collect();
                    f.extend(bitfield(li_max, &on));
                }
                _ => f.extend(ranges(next(300) as u16 + 1, &[(1, next(200) as u16 + 1)])),
            }
            let restrictions = if next(2) == 0 { 0 } else { next(4) };
            f.push((restrictions, 12));
            for _ in 0..restrictions {
                f.extend([(1 + next(2), 6), (next(4), 2)]);
                let start = next(u64::from(max) + 2) as u16;
                f.extend(range_entries(&[(start, start.saturating_add(next(30) as u16))]));
            }
            let mut tc = encode(&f).into_bytes();
            match next(4) {
                0 => tc.truncate(next(tc.len() as u64 + 1) as usize),
                1 => {
                    let at = next(tc.len() as u64) as usize;
                    tc[at] = b"AQgw_-.=+"[next(9) as usize];
                }
                2 => tc.extend_from_slice(b".argAC0gAAAAAAAAAAAA"),
                _ => {}
            }
            for vendor in [1, 2, next(u64::from(max) + 1) as u16 + 1, max, max.saturating_add(1), 65535] {
                let Some(nz) = NonZeroU16::new(vendor) else { continue };
                let got = consent(&tc, Some(nz));
                assert_eq!(
                    got,
                    by_the_table(&tc, Some(u32::from(vendor))),
                    "{} vendor {vendor}",
                    String::from_utf8_lossy(&tc)
                );
                consented += usize::from(got);
            }
            assert_eq!(purpose_one_consent(&tc), by_the_table(&tc, None), "{}", String::from_utf8_lossy(&tc));
        }
        assert!(consented > 1000, "the generator rarely makes a consenting string: {consented}");
    }
}
