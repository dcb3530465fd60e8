//! The event: one fixed-layout, 512-byte record that travels unchanged from the request path
//! through the per-core ring into the journal segment.
//!
//! Stage: produced by `extract`, pushed by the reactor into `ring`, written verbatim by the
//! journal drain. Invariants: the layout is `#[repr(C)]` with explicit widths and no padding
//! (asserted at compile time below), so the bytes on disk are exactly the bytes in memory and a
//! reader needs only the schema in the segment header to decode them.
//!
//! Byte layout (little-endian, offsets in bytes):
//! ```text
//!   0  crc       u32   CRC32C of bytes 4..512, written by the journal (0 until then)
//!   4  magic     u16   RECORD_MAGIC: a written record is never all zeroes
//!   6  type_id   u16   index of the event type in the schema
//!   8  ts_ns     u64   receive time, unix nanoseconds
//!  16  id        [16]  event id (UUID byte order)
//!  32  seq       u64   per-shard sequence number, ring push order, starts at 1 per process run
//!  40  flags     u32   FLAG_* bits
//!  44  present   u32   bit i set = slot i holds a value
//!  48  shard     u16   shard that received the request
//!  50  endpoint  u16   index of the endpoint in the config
//!  52  config_gen u32  generation of the config the event was made under: 0 at start, +1 per
//!                      applied reload (SIGHUP); the drain writes it under that config's schema
//!  56  reserved  [8]   zero
//!  64  slots     [u64; 16]   numeric values; a string slot holds its byte length
//! 192  bytes     [u8; 320]   string and IP values at schema-assigned offsets
//! ```

/// Size of one event record in memory, in the ring and on disk.
pub const EVENT_BYTES: usize = 512;
/// Numeric slots per event: also the most fields one event type may declare.
pub const SLOTS: usize = 16;
/// Bytes available to the string and IP fields of one event type, together.
pub const STR_BYTES: usize = 320;
/// Marks a written record; a zeroed slot in a segment (never written) does not carry it.
pub const RECORD_MAGIC: u16 = 0xE7E7;

/// A field value did not fit its slot or byte range and was truncated.
pub const FLAG_TRUNCATED: u32 = 1 << 0;
/// The id came from the client (`eid`, `X-Request-Id`, ...).
pub const FLAG_ID_CLIENT: u32 = 1 << 1;
/// The id was derived deterministically from the endpoint's identity fields.
pub const FLAG_ID_DERIVED: u32 = 1 << 2;
/// The request was a HEAD request (answered like GET, still an event).
pub const FLAG_HEAD: u32 = 1 << 3;
/// The request carried an opt-out signal (Sec-GPC, DNT, opt-out cookie): identifiers removed.
pub const FLAG_OPTED_OUT: u32 = 1 << 4;
/// A query value was an unsubstituted macro (`${AUCTION_PRICE}`, `[ERRORCODE]`) or `AUDIT`:
/// that field was left empty rather than parsed.
pub const FLAG_UNSUBSTITUTED: u32 = 1 << 5;

/// Appends the set FLAG_* bits that consumers see, as JSON members (`,"truncated":true`, ...),
/// in one order for `journal cat` and every collector payload.
pub fn write_flags_json(flags: u32, out: &mut String) {
    for (bit, name) in [
        (FLAG_TRUNCATED, "truncated"),
        (FLAG_OPTED_OUT, "opted_out"),
        (FLAG_UNSUBSTITUTED, "unsubstituted"),
        (FLAG_HEAD, "head"),
    ] {
        if flags & bit != 0 {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":true");
        }
    }
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct Event {
    pub crc: u32,
    pub magic: u16,
    pub type_id: u16,
    pub ts_ns: u64,
    pub id: [u8; 16],
    pub seq: u64,
    pub flags: u32,
    pub present: u32,
    pub shard: u16,
    pub endpoint: u16,
    /// Which config (0 = the one loaded at start, +1 per reload) `type_id` and `endpoint` refer to.
    pub config_gen: u32,
    pub reserved: [u8; 8],
    pub slots: [u64; SLOTS],
    pub bytes: [u8; STR_BYTES],
}

const _: () = assert!(std::mem::size_of::<Event>() == EVENT_BYTES);
const _: () = assert!(EVENT_BYTES.is_multiple_of(64));
const _: () = assert!(std::mem::align_of::<Event>() == 64);
// No padding: the declared fields add up to the whole record.
const _: () = assert!(4 + 2 + 2 + 8 + 16 + 8 + 4 + 4 + 2 + 2 + 4 + 8 + 8 * SLOTS + STR_BYTES == EVENT_BYTES);
const _: () = assert!(SLOTS <= 32, "present is a u32 bitmap");
const _: () = assert!(std::mem::offset_of!(Event, slots) == 64);
const _: () = assert!(std::mem::offset_of!(Event, bytes) == 64 + 8 * SLOTS);

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut id = [0u8; 36];
        format_uuid(&self.id, &mut id);
        f.debug_struct("Event")
            .field("type_id", &self.type_id)
            .field("id", &std::str::from_utf8(&id).unwrap_or("?"))
            .field("seq", &self.seq)
            .field("shard", &self.shard)
            .field("flags", &self.flags)
            .field("present", &format_args!("{:#x}", self.present))
            .finish_non_exhaustive()
    }
}

impl Event {
    pub const ZERO: Event = Event {
        crc: 0,
        magic: 0,
        type_id: 0,
        ts_ns: 0,
        id: [0; 16],
        seq: 0,
        flags: 0,
        present: 0,
        shard: 0,
        endpoint: 0,
        config_gen: 0,
        reserved: [0; 8],
        slots: [0; SLOTS],
        bytes: [0; STR_BYTES],
    };

    /// The record's bytes, exactly as they are written to a segment.
    #[inline]
    pub fn as_bytes(&self) -> &[u8; EVENT_BYTES] {
        // SAFETY: Event is repr(C), exactly EVENT_BYTES long with no padding (asserted above),
        // and every field is a plain integer or byte array, so all its bytes are initialised.
        unsafe { &*(self as *const Event as *const [u8; EVENT_BYTES]) }
    }

    /// Reads a record back from its bytes (any bit pattern is a valid Event).
    #[inline]
    pub fn from_bytes(b: &[u8; EVENT_BYTES]) -> Event {
        let mut e = Event::ZERO;
        // SAFETY: as in as_bytes; every bit pattern is a valid value of every field.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), &mut e as *mut Event as *mut u8, EVENT_BYTES) };
        e
    }

    /// CRC32C over everything but the crc field itself.
    #[inline]
    pub fn compute_crc(&self) -> u32 {
        crc_fast::crc32_iscsi(&self.as_bytes()[4..])
    }

    /// Seals the record for the journal: magic and CRC.
    #[inline]
    pub fn seal(&mut self) {
        self.magic = RECORD_MAGIC;
        self.crc = self.compute_crc();
    }

    /// True when the record carries the magic and its CRC matches.
    #[inline]
    pub fn is_sealed_intact(&self) -> bool {
        self.magic == RECORD_MAGIC && self.crc == self.compute_crc()
    }

    #[inline]
    pub fn has(&self, slot: usize) -> bool {
        self.present & (1 << slot) != 0
    }

    #[inline]
    pub fn set_slot(&mut self, slot: usize, v: u64) {
        self.slots[slot] = v;
        self.present |= 1 << slot;
    }

    /// The string stored for `slot` at `offset` (length in the slot, bounded by `max`).
    #[inline]
    pub fn str_at(&self, slot: usize, offset: usize, max: usize) -> &[u8] {
        let len = (self.slots[slot] as usize).min(max);
        &self.bytes[offset..offset + len]
    }

    /// Copies `v` into the byte area, truncating to `max` and flagging the event if it did not fit.
    #[inline]
    pub fn set_str(&mut self, slot: usize, offset: usize, max: usize, v: &[u8]) {
        let n = v.len().min(max);
        if n < v.len() {
            self.flags |= FLAG_TRUNCATED;
        }
        self.bytes[offset..offset + n].copy_from_slice(&v[..n]);
        self.set_slot(slot, n as u64);
    }
}

/// Writes `src` as lowercase hex into the start of `dst` (two digits a byte), as many whole
/// bytes as fit; returns the digits written.
pub fn write_hex(src: &[u8], dst: &mut [u8]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = src.len().min(dst.len() / 2);
    for (k, b) in src[..n].iter().enumerate() {
        dst[2 * k] = HEX[usize::from(b >> 4)];
        dst[2 * k + 1] = HEX[usize::from(b & 15)];
    }
    2 * n
}

/// Formats a 16-byte id as a lowercase UUID string into `out` (36 bytes).
pub fn format_uuid(id: &[u8; 16], out: &mut [u8; 36]) {
    // 8-4-4-4-12 digits: bytes 0..4, 4..6, 6..8, 8..10 and 10..16, a dash between groups.
    let mut j = 0;
    for (k, group) in [0..4, 4..6, 6..8, 8..10, 10..16].into_iter().enumerate() {
        if k > 0 {
            out[j] = b'-';
            j += 1;
        }
        j += write_hex(&id[group], &mut out[j..]);
    }
}

/// Parses a UUID written as 32 hex digits with or without the four dashes.
pub fn parse_uuid(s: &[u8]) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    let mut n = 0usize;
    let mut hi: Option<u8> = None;
    if !(s.len() == 32 || s.len() == 36) {
        return None;
    }
    for (i, &c) in s.iter().enumerate() {
        if c == b'-' {
            if s.len() == 36 && matches!(i, 8 | 13 | 18 | 23) {
                continue;
            }
            return None;
        }
        let v = crate::http::query::hex(c)?;
        match hi.take() {
            None => hi = Some(v),
            Some(h) => {
                if n == 16 {
                    return None;
                }
                out[n] = h << 4 | v;
                n += 1;
            }
        }
    }
    (n == 16 && hi.is_none()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_verify_and_detect_a_flipped_byte() {
        let mut e = Event::ZERO;
        e.set_slot(3, 42);
        e.seal();
        assert!(e.is_sealed_intact());
        let mut b = *e.as_bytes();
        b[100] ^= 1;
        assert!(!Event::from_bytes(&b).is_sealed_intact());
        assert!(!Event::ZERO.is_sealed_intact());
    }

    #[test]
    fn uuid_round_trip() {
        let id = [0x01, 0x8f, 0xab, 0xcd, 0, 1, 0x70, 2, 0x80, 3, 4, 5, 6, 7, 8, 0xff];
        let mut s = [0u8; 36];
        format_uuid(&id, &mut s);
        assert_eq!(&s, b"018fabcd-0001-7002-8003-0405060708ff");
        assert_eq!(parse_uuid(&s), Some(id));
        assert_eq!(parse_uuid(b"018fabcd000170028003040506070 8ff"), None);
        assert_eq!(parse_uuid(b"018fabcd00017002800304050607 8ff"), None);
        assert_eq!(parse_uuid(b"018fabcd0001700280030405060708ff"), Some(id));
    }

    #[test]
    fn string_truncation_is_flagged() {
        let mut e = Event::ZERO;
        e.set_str(2, 10, 4, b"abcdef");
        assert_eq!(e.str_at(2, 10, 4), b"abcd");
        assert_ne!(e.flags & FLAG_TRUNCATED, 0);
    }
}
