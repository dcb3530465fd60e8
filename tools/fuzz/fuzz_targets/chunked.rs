//! The chunked body decoder fed the way a connection feeds it: the same body growing over
//! several reads, resuming from `Progress` each time. The first byte of the input picks the
//! body limit, the next few the read boundaries. Whatever the split, the answer must be the one
//! a single read of the whole body gets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracker::http::chunked::{decode, decode_from, Progress};
use tracker::http::ParseError;

fuzz_target!(|data: &[u8]| {
    let [limit, c1, c2, c3, body @ ..] = data else { return };
    let body_bytes_max = usize::from(*limit) * 8;
    let mut whole_dst = vec![0u8; body_bytes_max];
    let whole = decode(body, &mut whole_dst, body_bytes_max);
    if let Ok((n, used)) = whole {
        assert!(n <= body_bytes_max && used <= body.len());
    }

    let mut cuts: Vec<usize> = [c1, c2, c3].iter().map(|&&c| usize::from(c) * body.len() / 255).collect();
    cuts.sort_unstable();
    cuts.push(body.len());
    let mut dst = vec![0u8; body_bytes_max];
    let mut progress = Progress::default();
    for cut in cuts {
        match decode_from(&body[..cut], &mut dst, body_bytes_max, &mut progress) {
            Err(ParseError::Incomplete) => continue,
            r => {
                assert_eq!(r, whole, "split at {cut} of {}", body.len());
                if let Ok((n, _)) = r {
                    assert_eq!(dst[..n], whole_dst[..n], "decoded bytes differ when split");
                }
                return;
            }
        }
    }
    assert_eq!(whole, Err(ParseError::Incomplete));
});
