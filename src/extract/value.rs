//! Value decoding for extraction: percent-decoding straight into a destination slice (the HTTP
//! layer's decoder, truncating), and the number and money parsers. Pure, allocation-free,
//! shared with config validation of defaults.

use crate::schema::FieldKind;

/// Why a value was refused (the caller prefixes the field name).
pub type Why = &'static str;

/// Percent-decodes a query value (`+` is a space) into `dst`. Returns the bytes written and
/// whether the decoded value was longer than `dst` (the rest is validated, then dropped).
#[inline]
pub fn percent_decode(src: &[u8], dst: &mut [u8]) -> Result<(usize, bool), Why> {
    crate::http::query::percent_decode_truncating(src, dst).map_err(|_| "bad percent-encoding")
}

/// Parses a decimal value for a numeric kind. Returns the slot bits and whether precision was
/// dropped (money with more than 6 decimals is truncated toward zero and flagged).
pub fn parse_number(kind: FieldKind, s: &[u8]) -> Result<(u64, bool), Why> {
    match kind {
        FieldKind::U64 => parse_u64(s).map(|v| (v, false)).ok_or("is not an unsigned 64-bit integer"),
        FieldKind::U32 => parse_u64(s)
            .filter(|&v| v <= u32::MAX as u64)
            .map(|v| (v, false))
            .ok_or("is not an unsigned 32-bit integer"),
        FieldKind::I64 => parse_i64(s).map(|v| (v as u64, false)).ok_or("is not a 64-bit integer"),
        FieldKind::Money => parse_money(s).map(|(v, t)| (v as u64, t)).ok_or("is not a decimal amount"),
        FieldKind::Str | FieldKind::Ip => Err("is not a number"),
    }
}

fn parse_u64(s: &[u8]) -> Option<u64> {
    // Leading zeros are no magnitude: `000…042` is 42 however many there are (money already
    // read it so); the length bound is for the digits that count.
    let digits = s.iter().position(|&c| c != b'0').map_or(&s[s.len().saturating_sub(1)..], |p| &s[p..]);
    if s.is_empty() || digits.len() > 20 {
        return None;
    }
    let s = digits;
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    Some(v)
}

fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let v = parse_u64(digits)?;
    if neg {
        if v <= i64::MAX as u64 + 1 {
            Some((v as i64).wrapping_neg())
        } else {
            None
        }
    } else {
        i64::try_from(v).ok()
    }
}

/// "12.345678" → 12345678 micros. At most 6 decimals are kept; more are truncated (flagged).
/// An exponent (`5.0E-4`, `1.25e2`) is taken too: Java, Python, Go and JavaScript print small
/// amounts so, and an exchange substitutes `${AUCTION_PRICE}` with whatever its language
/// printed — refused, its notice would be retried until dropped. The decimal point is moved
/// exactly, on the digits; there is no float in between.
fn parse_money(s: &[u8]) -> Option<(i64, bool)> {
    let (neg, s) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match s.iter().position(|&c| c == b'e' || c == b'E') {
        Some(p) => (&s[..p], parse_exponent(&s[p + 1..])?),
        None => (s, 0),
    };
    let (int, frac) = match mantissa.iter().position(|&c| c == b'.') {
        Some(p) => (&mantissa[..p], &mantissa[p + 1..]),
        None => (mantissa, &mantissa[..0]),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = || int.iter().chain(frac);
    if !digits().all(u8::is_ascii_digit) {
        return None;
    }
    // The digits, int then frac, with the point after `point` of them (before the first when
    // negative, past the last when beyond). The first `kept` digits reach the micros; any
    // other non-zero one is cut (toward zero).
    let point = int.len() as i64 + i64::from(exp);
    let kept = (point + 6).clamp(0, (int.len() + frac.len()) as i64) as usize;
    let mut value: u64 = 0;
    for &c in digits().take(kept) {
        value = value.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
    }
    let truncated = digits().skip(kept).any(|&c| c != b'0');
    // The kept digits end `point + 6 - kept` places above the micros (>= 0 when any is kept):
    // scale them up.
    let total = match value {
        0 => 0,
        v => v.checked_mul(10u64.checked_pow(u32::try_from(point + 6 - kept as i64).ok()?)?)?,
    };
    let total = i64::try_from(total).ok()?;
    Some((if neg { -total } else { total }, truncated))
}

/// The exponent after `e`: an optional sign and 1..=4 digits (beyond, any non-zero amount is
/// out of range or below a micro).
fn parse_exponent(s: &[u8]) -> Option<i32> {
    let (neg, d) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if d.is_empty() || d.len() > 4 || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = d.iter().fold(0i32, |v, &c| v * 10 + i32::from(c - b'0'));
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        let mut d = [0u8; 8];
        assert_eq!(percent_decode(b"a%41+b", &mut d), Ok((4, false)));
        assert_eq!(&d[..4], b"aA b");
        assert_eq!(percent_decode(b"%zz", &mut d), Err("bad percent-encoding"));
        assert_eq!(percent_decode(b"ab%4", &mut d), Err("bad percent-encoding"));
        assert_eq!(percent_decode(b"0123456789", &mut d), Ok((8, true)));
        assert_eq!(percent_decode(b"%C3%A9", &mut d), Ok((2, false)));
        assert_eq!(&d[..2], "é".as_bytes());
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(FieldKind::U64, b"18446744073709551615"), Ok((u64::MAX, false)));
        assert!(parse_number(FieldKind::U64, b"18446744073709551616").is_err());
        assert!(parse_number(FieldKind::U64, b"").is_err());
        // Leading zeros do not count towards the 20 digits (they did: 21 characters were refused).
        assert_eq!(parse_number(FieldKind::U64, b"000000000000000000042"), Ok((42, false)));
        assert_eq!(parse_number(FieldKind::U64, b"0000"), Ok((0, false)));
        assert_eq!(parse_number(FieldKind::I64, b"-0000000000000000000007"), Ok(((-7i64) as u64, false)));
        assert!(parse_number(FieldKind::U64, b"000000000000000000000018446744073709551616").is_err());
        assert!(parse_number(FieldKind::U64, b"-1").is_err());
        assert!(parse_number(FieldKind::U64, b"1x").is_err());
        assert_eq!(parse_number(FieldKind::U32, b"4294967295"), Ok((u32::MAX as u64, false)));
        assert!(parse_number(FieldKind::U32, b"4294967296").is_err());
        assert_eq!(parse_number(FieldKind::I64, b"-9223372036854775808"), Ok((i64::MIN as u64, false)));
        assert!(parse_number(FieldKind::I64, b"9223372036854775808").is_err());
    }

    #[test]
    fn money_in_micros() {
        let m = |s: &[u8]| parse_number(FieldKind::Money, s).map(|(v, t)| (v as i64, t));
        assert_eq!(m(b"0.25"), Ok((250_000, false)));
        assert_eq!(m(b"12"), Ok((12_000_000, false)));
        assert_eq!(m(b".5"), Ok((500_000, false)));
        assert_eq!(m(b"1.1234567"), Ok((1_123_456, true)));
        assert_eq!(m(b"1.1234560"), Ok((1_123_456, false)));
        assert_eq!(m(b"-0.000001"), Ok((-1, false)));
        assert!(m(b".").is_err());
        assert!(m(b"1.2.3").is_err());
        assert_eq!(m(b"1e3"), Ok((1_000_000_000, false)));
        assert_eq!(m(b"5.0E-4"), Ok((500, false)));
        assert_eq!(m(b"1.234567e-1"), Ok((123_456, true)));
        assert_eq!(m(b"-2.5e+1"), Ok((-25_000_000, false)));
        assert_eq!(m(b"0e9999"), Ok((0, false)));
        assert_eq!(m(b"1e-9999"), Ok((0, true)));
        assert_eq!(m(b"00000000000000000000000001.5"), Ok((1_500_000, false)));
        assert!(m(b"1e9999").is_err());
        assert!(m(b"1e13").is_err(), "past i64 micros");
        for bad in [&b"1e"[..], b"e5", b"1e-", b"1e+", b"1e1.5", b"1ee1", b"1e12345", b".e1", b"1e 1"] {
            assert!(m(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(m(b"${AUCTION_PRICE}").is_err());
        assert!(m(b"9223372036855").is_err());
    }
}
