//! Device class and bot flag from a User-Agent, without allocation: the User-Agent is
//! lower-cased into a stack buffer, then searched (memchr) for short, documented token lists, in a fixed order (bot, then connected TV,
//! tablet, mobile; anything else with a User-Agent is desktop). Coarse by design — good enough
//! to split reports and to keep crawlers out of billing, never a fingerprint.
//!
//! Used by the field sources `request.device_class` (string: bot, ctv, tablet, mobile, desktop,
//! unknown) and `request.is_bot` (0 or 1), only for event types that declare such a field: the
//! cost is a few dozen byte searches per request (~50 tokens over the User-Agent).

/// Tokens of crawlers, monitors and HTTP libraries.
pub const BOT_TOKENS: &[&[u8]] = &[
    b"bot",
    b"crawl",
    b"spider",
    b"slurp",
    b"curl/",
    b"wget/",
    b"python-requests",
    b"python-urllib",
    b"go-http-client",
    b"headlesschrome",
    b"phantomjs",
    b"lighthouse",
    b"facebookexternalhit",
    b"httpclient",
    b"libwww",
    b"scrapy",
];
/// Names that contain the token `bot` and are not crawlers: the phone brand Cubot ("CUBOT_X30"
/// in its User-Agent) was flagged a bot, its users' events kept out of reports and billing.
pub const NOT_BOT_WORDS: &[&[u8]] = &[b"cubot"];
/// Connected TVs, streaming sticks and consoles.
pub const CTV_TOKENS: &[&[u8]] = &[
    b"smart-tv",
    b"smarttv",
    b"googletv",
    b"android tv",
    b"appletv",
    b"apple tv",
    b"crkey",
    b"roku",
    b"aftb",
    b"aftm",
    b"afts",
    b"aftt",
    b"bravia",
    b"tizen",
    b"web0s",
    b"webos",
    b"hbbtv",
    b"playstation",
    b"xbox",
    b"nintendo",
];
pub const TABLET_TOKENS: &[&[u8]] = &[b"ipad", b"tablet", b"kindle", b"silk/", b"playbook"];
pub const MOBILE_TOKENS: &[&[u8]] = &[b"mobi", b"iphone", b"ipod", b"android", b"windows phone", b"blackberry"];

/// Bytes of a User-Agent looked at; the rest is ignored (real ones are ~100–300 bytes).
pub const UA_BYTES_MAX: usize = 512;

/// The device class of a User-Agent (None = no User-Agent).
pub fn class(ua: Option<&[u8]>) -> &'static str {
    let Some(ua) = ua.filter(|u| !u.is_empty()) else { return "unknown" };
    let mut buf = [0u8; UA_BYTES_MAX];
    let ua = lower(ua, &mut buf);
    if any_bot(ua) {
        "bot"
    } else if any(ua, CTV_TOKENS) {
        "ctv"
    } else if any(ua, TABLET_TOKENS) || android_browser_without_mobile(ua) {
        "tablet"
    } else if any(ua, MOBILE_TOKENS) {
        "mobile"
    } else {
        "desktop"
    }
}

/// An Android browser that does not say `Mobile`: Chrome on Android marks phones so and leaves
/// tablets unmarked. Only browsers (`Mozilla/`) follow that convention: an app's own HTTP
/// client or player (`Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 …)`, ExoPlayer) never says
/// `Mobile`, and was taken for a tablet; it is classed with the phones, most of Android.
fn android_browser_without_mobile(ua: &[u8]) -> bool {
    contains(ua, b"android") && !contains(ua, b"mobile") && ua.starts_with(b"mozilla/")
}

/// Whether a User-Agent is a crawler, monitor or HTTP library.
pub fn is_bot(ua: &[u8]) -> bool {
    let mut buf = [0u8; UA_BYTES_MAX];
    any_bot(lower(ua, &mut buf))
}

/// BOT_TOKENS in a lower-cased User-Agent; `bot` counts only where it is not part of one of
/// NOT_BOT_WORDS.
fn any_bot(ua: &[u8]) -> bool {
    BOT_TOKENS.iter().any(|t| {
        if *t != b"bot" {
            return contains(ua, t);
        }
        let mut i = 0;
        while let Some(p) = find(&ua[i..], b"bot") {
            let end = i + p + b"bot".len();
            if !NOT_BOT_WORDS.iter().any(|w| ua[..end].ends_with(w)) {
                return true;
            }
            i += p + 1;
        }
        false
    })
}

/// ASCII-lower-cased copy of the first UA_BYTES_MAX bytes, on the caller's stack.
fn lower<'b>(ua: &[u8], buf: &'b mut [u8; UA_BYTES_MAX]) -> &'b [u8] {
    let n = ua.len().min(UA_BYTES_MAX);
    for (d, s) in buf.iter_mut().zip(&ua[..n]) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..n]
}

fn any(ua: &[u8], tokens: &[&[u8]]) -> bool {
    tokens.iter().any(|t| contains(ua, t))
}

/// Whether `hay` contains `needle`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Where `needle` first occurs in `hay`: a SIMD scan for the needle's first byte, then a compare.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let Some((&first, rest)) = needle.split_first() else { return Some(0) };
    let mut i = 0;
    while let Some(p) = memchr::memchr(first, &hay[i..]) {
        let s = i + p;
        if hay.len() - s < needle.len() {
            return None;
        }
        if &hay[s + 1..s + needle.len()] == rest {
            return Some(s);
        }
        i = s + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        for (ua, want) in [
            ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36", "desktop"),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Version/17.4 Safari/605.1.15",
                "desktop",
            ),
            ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "mobile"),
            ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36", "mobile"),
            ("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 Chrome/124.0 Safari/537.36", "tablet"),
            ("Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148", "tablet"),
            // An app's own HTTP client or player says Android but never Mobile: not a tablet.
            ("Dalvik/2.1.0 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230805.001)", "mobile"),
            ("MyApp/1.0 (Linux;Android 13) ExoPlayerLib/2.18.1", "mobile"),
            ("Roku/DVP-9.10 (519.10E04111A)", "ctv"),
            ("Mozilla/5.0 (Linux; Android 9; AFTMM Build/PS7233) AppleWebKit/537.36", "ctv"),
            ("Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36", "ctv"),
            ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
            ("curl/8.5.0", "bot"),
            ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/124.0 Safari/537.36", "bot"),
        ] {
            assert_eq!(class(Some(ua.as_bytes())), want, "{ua}");
        }
        assert_eq!(class(None), "unknown");
        assert_eq!(class(Some(b"")), "unknown");
        assert!(is_bot(b"Mozilla/5.0 (compatible; bingbot/2.0)"));
        // A Cubot phone is not a bot; a crawler that also names one still is.
        let cubot = b"Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 Chrome/124.0 Mobile Safari/537.36";
        assert!(!is_bot(cubot));
        assert_eq!(class(Some(cubot)), "mobile");
        assert!(is_bot(b"Mozilla/5.0 (Linux; Android 10; CUBOT_X30) (compatible; Googlebot/2.1)"));
        assert!(is_bot(b"cubot-crawler"), "another token still counts");
        assert!(!is_bot(b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0"));
    }
}
