//! The chunked transfer coding (RFC 9112 §7.1) decoded into a caller-provided fixed slice.
//!
//! ```text
//! chunked-body = *chunk last-chunk trailer-section CRLF
//! chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! last-chunk   = 1*("0") [ chunk-ext ] CRLF
//! ```
//!
//! Resumable: a body that arrives over many reads is decoded once. [`Progress`] remembers where
//! the last whole chunk ended (in the input and in the output), and the next call with the
//! longer input starts there. Decoding from the start after every read instead cost time
//! quadratic in the body (a client sending 1-byte chunks a byte per segment made a 64 KiB body
//! cost gigabytes of scanning).
//!
//! Strict where framing is decided, because a decoder that reads a chunk boundary differently
//! from an intermediary is a smuggling vector: hex digits only (no sign, no `0x`, no spaces
//! before the size), at most [`CHUNK_SIZE_DIGITS_MAX`] digits, every line ending in CRLF (bare
//! CR or LF refused, also inside extensions), exactly CRLF after each chunk's data. Chunk
//! extensions and trailer fields are checked for control bytes, bounded, and then ignored.

use super::query::hex;
use super::request::ParseError;

/// Most hex digits in a chunk size, leading zeros included: 16 digits cover u64, so the size
/// cannot overflow.
pub const CHUNK_SIZE_DIGITS_MAX: usize = 16;
/// Longest chunk extension in bytes, from just after the size to the CR. We ignore extensions;
/// the bound only limits the bytes a client can make us scan per chunk.
pub const CHUNK_EXT_BYTES_MAX: usize = 256;
/// Longest trailer section in bytes, including the blank line that ends it. Over → 431.
pub const TRAILER_BYTES_MAX: usize = 1024;

const fn invalid(status: u16, reason: &'static str) -> ParseError {
    ParseError::Invalid { status, reason }
}

/// Decodes the chunked body at the start of `src` into `dst`.
///
/// Returns `(decoded_len, consumed)`: the body is `dst[..decoded_len]` and the next pipelined
/// request starts at `src[consumed..]`. `Incomplete` means `src` is a valid prefix: read more
/// and call again (the contents of `dst` are then unspecified). A body that decodes to more
/// than `body_bytes_max` bytes is refused with 413 as soon as a chunk size says so.
///
/// `dst` must hold at least `body_bytes_max` bytes (a shorter `dst` lowers the limit). The
/// encoded body can be much larger than the decoded one (framing, extensions, trailers): a
/// caller whose read buffer fills while this still says `Incomplete` should answer 413.
pub fn decode(src: &[u8], dst: &mut [u8], body_bytes_max: usize) -> Result<(usize, usize), ParseError> {
    decode_from(src, dst, body_bytes_max, &mut Progress::default())
}

/// How far an incomplete chunked body was decoded: the input and output offsets just after its
/// last whole chunk. Start each body with `Progress::default()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pos: usize,
    total: usize,
    /// The input length below which another call cannot get further (0: any more input may).
    need: usize,
}

impl Progress {
    /// After `Incomplete`: how long the input must be before decoding can go on (or fail). Inside
    /// a chunk's data that is its end plus the first byte after it, so a caller can wait for a
    /// large chunk sent in many small reads without looking at the body (or at the request head
    /// before it) at every read; elsewhere it is 0, any byte may complete a line.
    pub fn input_needed(&self) -> usize {
        self.need
    }
}

/// [`decode`], resuming at `progress` and advancing it over every whole chunk. Between the
/// call that returned `Incomplete` and the next one, `src` may only grow at its end and `dst`
/// must keep its bytes; after any other result `progress` means nothing (reset it).
pub fn decode_from(
    src: &[u8],
    dst: &mut [u8],
    body_bytes_max: usize,
    progress: &mut Progress,
) -> Result<(usize, usize), ParseError> {
    debug_assert!(dst.len() >= body_bytes_max, "chunked scratch shorter than body_bytes_max");
    let limit = body_bytes_max.min(dst.len());
    let Progress { mut pos, mut total, .. } = *progress;
    progress.need = 0;
    debug_assert!(pos <= src.len() && total <= limit);
    loop {
        let (size, line_len) = size_line(&src[pos..])?;
        pos += line_len;
        if size == 0 {
            break;
        }
        // `limit - total` cannot underflow: every chunk so far passed this check.
        if size > (limit - total) as u64 {
            return Err(invalid(413, "body too large"));
        }
        let size = size as usize; // ≤ limit, so it fits.
        let Some(data) = src.get(pos..pos + size) else {
            // Nothing changes until the data is whole and the byte after it (the CR, or the
            // framing error) has come.
            progress.need = pos + size + 1;
            return Err(ParseError::Incomplete);
        };
        dst[total..total + size].copy_from_slice(data);
        total += size;
        pos += size;
        pos += crlf(&src[pos..], "chunk data not followed by CRLF")?;
        *progress = Progress { pos, total, need: 0 };
    }
    pos += trailers(&src[pos..])?;
    debug_assert!(total <= limit && pos <= src.len());
    Ok((total, pos))
}

/// `chunk-size [ chunk-ext ] CRLF` → (size, bytes of the line including CRLF).
fn size_line(line: &[u8]) -> Result<(u64, usize), ParseError> {
    let mut size = 0u64;
    let mut i = 0;
    while let Some(d) = line.get(i).copied().and_then(hex) {
        if i == CHUNK_SIZE_DIGITS_MAX {
            return Err(invalid(400, "chunk size longer than 16 hex digits"));
        }
        size = size << 4 | u64::from(d);
        i += 1;
    }
    if i == line.len() {
        return Err(ParseError::Incomplete);
    }
    if i == 0 {
        return Err(invalid(400, "chunk size is not hex"));
    }
    // chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ): only whitespace may come
    // before the first ';', then any visible bytes, SP or HTAB until CRLF. Whitespace with no
    // ';' after it is not in the grammar at all, so it is refused rather than read leniently.
    let ext_start = i;
    let mut in_ext = false;
    loop {
        if i - ext_start > CHUNK_EXT_BYTES_MAX {
            return Err(invalid(400, "chunk extension too long"));
        }
        let Some(&b) = line.get(i) else {
            return Err(ParseError::Incomplete);
        };
        match b {
            b'\r' if !in_ext && i > ext_start => return Err(invalid(400, "whitespace after chunk size")),
            b'\r' => return Ok((size, i + crlf(&line[i..], "bare CR in chunk size line")?)),
            b'\n' => return Err(invalid(400, "bare LF in chunk size line")),
            b';' => in_ext = true,
            b' ' | b'\t' => {}
            _ if !in_ext => return Err(invalid(400, "chunk size is not hex")),
            _ if b < 0x20 || b == 0x7f => {
                return Err(invalid(400, "control character in chunk extension"));
            }
            _ => {}
        }
        i += 1;
    }
}

/// `trailer-section CRLF`: zero or more field lines, then a blank line. Returns its length.
fn trailers(src: &[u8]) -> Result<usize, ParseError> {
    let mut pos = 0;
    loop {
        // Even the final blank line needs 2 bytes; a field line needs more.
        let budget = TRAILER_BYTES_MAX - pos;
        if budget < 2 {
            return Err(invalid(431, "chunked trailers too large"));
        }
        let window = &src[pos..src.len().min(pos + budget)];
        match window.first() {
            None => return Err(ParseError::Incomplete),
            Some(b'\r') => return Ok(pos + crlf(window, "bare CR after chunked body")?),
            Some(_) => match field_line(window) {
                Err(ParseError::Incomplete) if window.len() == budget => {
                    return Err(invalid(431, "chunked trailers too large"));
                }
                Err(e) => return Err(e),
                Ok(n) => pos += n,
            },
        }
    }
}

/// One `field-name ":" OWS field-value OWS CRLF` trailer line; returns its length.
fn field_line(line: &[u8]) -> Result<usize, ParseError> {
    const BAD: ParseError = invalid(400, "invalid chunked trailer field");
    let name_len = line.iter().position(|&b| !is_tchar(b)).unwrap_or(line.len());
    match line.get(name_len) {
        None => return Err(ParseError::Incomplete),
        // An empty name also catches obs-fold (a line starting with SP or HTAB).
        Some(b':') if name_len > 0 => {}
        Some(_) => return Err(BAD),
    }
    let mut i = name_len + 1;
    loop {
        let Some(&b) = line.get(i) else {
            return Err(ParseError::Incomplete);
        };
        match b {
            b'\r' => return Ok(i + crlf(&line[i..], "bare CR in chunked trailer")?),
            b'\t' => {}
            _ if b < 0x20 || b == 0x7f => return Err(BAD),
            _ => {}
        }
        i += 1;
    }
}

/// Expects CRLF at the start of `s`; returns 2. `why` names what the CRLF should have ended.
fn crlf(s: &[u8], why: &'static str) -> Result<usize, ParseError> {
    match s {
        [b'\r', b'\n', ..] => Ok(2),
        [] | [b'\r'] => Err(ParseError::Incomplete),
        _ => Err(invalid(400, why)),
    }
}

/// tchar (RFC 9110 §5.6.2).
#[inline]
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64;

    fn run(src: &[u8]) -> Result<(Vec<u8>, usize), ParseError> {
        let mut dst = [0u8; MAX];
        decode(src, &mut dst, MAX).map(|(n, used)| (dst[..n].to_vec(), used))
    }

    #[track_caller]
    fn rejects(src: &[u8], status: u16, reason: &str) {
        match run(src) {
            Err(ParseError::Invalid { status: s, reason: r }) => assert_eq!((s, r), (status, reason)),
            other => panic!("expected {status} {reason:?}, got {other:?}"),
        }
    }

    #[test]
    fn decodes_chunks() {
        let src = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        assert_eq!(run(src), Ok((b"hello, world".to_vec(), src.len())));
    }

    #[test]
    fn empty_body() {
        assert_eq!(run(b"0\r\n\r\n"), Ok((Vec::new(), 5)));
        assert_eq!(run(b"000\r\n\r\n"), Ok((Vec::new(), 7)));
    }

    #[test]
    fn hex_sizes_any_case() {
        let mut src = b"a\r\n0123456789\r\nB\r\n0123456789a\r\n".to_vec();
        src.extend_from_slice(b"0\r\n\r\n");
        let (body, used) = run(&src).unwrap();
        assert_eq!((body.len(), used), (21, src.len()));
        // 16 digits with leading zeros is still a size.
        assert_eq!(run(b"0000000000000001\r\nx\r\n0\r\n\r\n"), Ok((b"x".to_vec(), 26)));
    }

    #[test]
    fn stops_at_end_of_body_for_pipelining() {
        let src = b"1\r\nx\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        assert_eq!(run(src), Ok((b"x".to_vec(), 11)));
    }

    #[test]
    fn split_input_is_incomplete_until_complete() {
        let src = b"5;a=b\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
        for i in 0..src.len() {
            assert_eq!(run(&src[..i]), Err(ParseError::Incomplete), "prefix {i}");
        }
        assert_eq!(run(src), Ok((b"hello0123456789abcdef".to_vec(), src.len())));
    }

    #[test]
    fn extensions_allowed_but_bounded() {
        let src = b"1;name=\"v a\" ; x\r\nx\r\n0;last\r\n\r\n";
        assert_eq!(run(src), Ok((b"x".to_vec(), src.len())));
        assert_eq!(run(b"1 ;x\r\nx\r\n0\r\n\r\n"), Ok((b"x".to_vec(), 14)));
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'e', CHUNK_EXT_BYTES_MAX - 1));
        let mut ok = long.clone();
        ok.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(run(&ok).is_ok());
        long.push(b'e');
        // Refused while incomplete: no need to wait for the CRLF.
        rejects(&long, 400, "chunk extension too long");
    }

    #[test]
    fn rejects_bad_sizes() {
        rejects(b"\r\n\r\n", 400, "chunk size is not hex");
        rejects(b"+5\r\nhello\r\n0\r\n\r\n", 400, "chunk size is not hex");
        rejects(b"-5\r\nhello\r\n0\r\n\r\n", 400, "chunk size is not hex");
        rejects(b"0x5\r\nhello\r\n0\r\n\r\n", 400, "chunk size is not hex");
        rejects(b" 5\r\nhello\r\n0\r\n\r\n", 400, "chunk size is not hex");
        rejects(b"5 x\r\nhello\r\n0\r\n\r\n", 400, "chunk size is not hex");
        rejects(b"g\r\n", 400, "chunk size is not hex");
    }

    #[test]
    fn whitespace_after_a_chunk_size_without_an_extension_is_refused() {
        // BWS is only allowed before a ';' (RFC 9112 §7.1.1); `5 \r\n` is not a chunk-size
        // line, and a front end that reads it another way would frame the body differently.
        rejects(b"5 \r\nhello\r\n0\r\n\r\n", 400, "whitespace after chunk size");
        rejects(b"0\t\r\n\r\n", 400, "whitespace after chunk size");
        assert_eq!(run(b"5 \t;x\r\nhello\r\n0\r\n\r\n").map(|(b, _)| b), Ok(b"hello".to_vec()));
    }

    #[test]
    fn rejects_oversized_sizes() {
        // 17 digits, even when the value would be small.
        rejects(b"00000000000000001\r\nx\r\n0\r\n\r\n", 400, "chunk size longer than 16 hex digits");
        // 16 digits that would overflow nothing but far exceed the body limit.
        rejects(b"ffffffffffffffff\r\n", 413, "body too large");
        rejects(b"10000000000000000", 400, "chunk size longer than 16 hex digits");
    }

    #[test]
    fn rejects_body_over_limit() {
        let mut src = Vec::new();
        src.extend_from_slice(b"20\r\n");
        src.extend(std::iter::repeat_n(b'a', 32));
        src.extend_from_slice(b"\r\n20\r\n");
        src.extend(std::iter::repeat_n(b'b', 32));
        src.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(run(&src).map(|(b, _)| b.len()), Ok(64));
        // One more byte: refused at the size line, before its data arrives.
        assert_eq!(run(b"40\r\n"), Err(ParseError::Incomplete));
        rejects(b"41\r\n", 413, "body too large");
        let mut over = src[..src.len() - 5].to_vec();
        over.extend_from_slice(b"1\r\n");
        rejects(&over, 413, "body too large");
    }

    #[test]
    fn rejects_bad_line_endings() {
        rejects(b"5\nhello\r\n0\r\n\r\n", 400, "bare LF in chunk size line");
        rejects(b"5\rhello\r\n0\r\n\r\n", 400, "bare CR in chunk size line");
        rejects(b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400, "bare LF in chunk size line");
        rejects(b"5\r\nhelloXX0\r\n\r\n", 400, "chunk data not followed by CRLF");
        rejects(b"5\r\nhello\n0\r\n\r\n", 400, "chunk data not followed by CRLF");
        rejects(b"5\r\nhello\rX", 400, "chunk data not followed by CRLF");
        rejects(b"0\r\n\rX", 400, "bare CR after chunked body");
        rejects(b"0\r\n\n", 400, "invalid chunked trailer field");
    }

    #[test]
    fn rejects_control_bytes_in_extension() {
        rejects(b"1;a\x00\r\nx\r\n0\r\n\r\n", 400, "control character in chunk extension");
        rejects(b"1;a\x7f\r\nx\r\n0\r\n\r\n", 400, "control character in chunk extension");
    }

    #[test]
    fn trailers_allowed_but_bounded() {
        let src = b"1\r\nx\r\n0\r\nX-Checksum: abc\r\nX-B:\t1 \r\n\r\n";
        assert_eq!(run(src), Ok((b"x".to_vec(), src.len())));
        rejects(b"0\r\n x: 1\r\n\r\n", 400, "invalid chunked trailer field");
        rejects(b"0\r\nx 1\r\n\r\n", 400, "invalid chunked trailer field");
        rejects(b"0\r\n: 1\r\n\r\n", 400, "invalid chunked trailer field");
        rejects(b"0\r\nx: a\x00b\r\n\r\n", 400, "invalid chunked trailer field");
        rejects(b"0\r\nx: a\nb: 1\r\n\r\n", 400, "invalid chunked trailer field");
        rejects(b"0\r\nx: a\rb\r\n\r\n", 400, "bare CR in chunked trailer");

        // A trailer section of exactly TRAILER_BYTES_MAX is accepted; one byte more is not,
        // and that is known before the blank line arrives.
        let mut t = b"0\r\nX: ".to_vec();
        t.extend(std::iter::repeat_n(b'v', TRAILER_BYTES_MAX - 3 - 2 - 2));
        t.extend_from_slice(b"\r\n\r\n");
        assert_eq!(run(&t).map(|(_, used)| used), Ok(3 + TRAILER_BYTES_MAX));
        let mut long = t[..t.len() - 4].to_vec();
        long.push(b'v');
        long.extend_from_slice(b"\r\n");
        rejects(&long, 431, "chunked trailers too large");
        let mut long_line = b"0\r\nX: ".to_vec();
        long_line.extend(std::iter::repeat_n(b'v', TRAILER_BYTES_MAX));
        rejects(&long_line, 431, "chunked trailers too large");
    }

    /// A scratch shorter than the limit breaks the caller's contract: a debug build says so, a
    /// release build lowers the limit to the scratch rather than write past it.
    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "chunked scratch shorter than body_bytes_max"))]
    fn short_dst_is_refused_in_debug_and_lowers_the_limit_in_release() {
        let mut dst = [0u8; 2];
        assert_eq!(decode(b"3\r\n", &mut dst, 64), Err(invalid(413, "body too large")));
    }

    /// Deterministic mutation run: no input may panic; accepted bodies respect the limit.
    #[test]
    fn a_body_fed_a_byte_at_a_time_decodes_as_a_whole_and_each_chunk_once() {
        let src: &[u8] = b"3\r\nabc\r\n2;x=y\r\nde\r\n1\r\nf\r\n0\r\nT: v\r\n\r\nGET /next";
        let end = src.len() - b"GET /next".len();
        let mut dst = [0u8; MAX];
        let mut p = Progress::default();
        let mut resumed_past = 0;
        for cut in 0..end {
            assert_eq!(decode_from(&src[..cut], &mut dst, MAX, &mut p), Err(ParseError::Incomplete), "cut {cut}");
            // Progress only moves forward and never past the input seen; what it says is
            // needed is always more than there is.
            assert!(p.pos >= resumed_past && p.pos <= cut, "cut {cut}: {p:?}");
            assert!(p.need == 0 || p.need > cut, "cut {cut}: {p:?}");
            resumed_past = p.pos;
        }
        assert_eq!(p, Progress { pos: 25, total: 6, need: 0 }, "after the last whole chunk");
        assert_eq!(decode_from(src, &mut dst, MAX, &mut p), Ok((6, end)));
        assert_eq!(&dst[..6], b"abcdef");
    }

    #[test]
    fn inside_a_chunks_data_the_input_needed_is_its_end_and_one_byte() {
        let src: &[u8] = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut dst = [0u8; MAX];
        let mut p = Progress::default();
        // The size line and 4 bytes of the 10: the data ends at 13, the CR comes at 13.
        assert_eq!(decode_from(&src[..7], &mut dst, MAX, &mut p), Err(ParseError::Incomplete));
        assert_eq!(p.input_needed(), 14);
        // Every input shorter than that is incomplete the same way: a caller may wait for it.
        for cut in 7..13 {
            assert_eq!(decode_from(&src[..cut], &mut dst, MAX, &mut p), Err(ParseError::Incomplete));
            assert_eq!(p.input_needed(), 14, "cut {cut}");
        }
        // A wrong byte where the CR belongs is refused as soon as it is there.
        let mut bad = src[..13].to_vec();
        bad.push(b'X');
        assert_eq!(
            decode_from(&bad, &mut dst, MAX, &mut p.clone()),
            Err(invalid(400, "chunk data not followed by CRLF"))
        );
        // Whole: decoded, and nothing more is waited for.
        assert_eq!(decode_from(src, &mut dst, MAX, &mut p), Ok((10, src.len())));
        // In a size line (or a CRLF, or the trailers) any byte may complete it.
        let mut q = Progress::default();
        assert_eq!(decode_from(b"a", &mut dst, MAX, &mut q), Err(ParseError::Incomplete));
        assert_eq!(q.input_needed(), 0);
        assert_eq!(decode_from(b"1\r\nx\r", &mut dst, MAX, &mut q), Err(ParseError::Incomplete));
        assert_eq!(q.input_needed(), 0);
    }

    #[test]
    fn mutated_inputs_never_panic() {
        let seed = b"5;a=b\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n";
        let mut x = crate::xorshift::Xorshift64::new(0x2545_f491_4f6c_dd1d);
        let mut next = move || x.next();
        for _ in 0..30_000 {
            let mut src = seed.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = next() as usize % src.len();
                match next() % 3 {
                    0 => src[at] = next() as u8,
                    1 => src.insert(at, b"\r\n0f;: \x00"[next() as usize % 8]),
                    _ => drop(src.remove(at)),
                }
            }
            let cut = next() as usize % (src.len() + 1);
            let mut dst = [0u8; 16];
            if let Ok((n, used)) = decode(&src[..cut], &mut dst, 16) {
                assert!(n <= 16 && used <= cut);
            }
        }
    }
}
