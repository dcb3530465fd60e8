//! Request templates: the mix loadgen sends. Text in (a requests file, or the default mix), bytes
//! out: `Mix::render` writes one whole HTTP/1.1 request into a connection's reused buffer, with
//! `{seq}` and `{rand}` filled in. Pure and synchronous; nothing here allocates per request.
//!
//! File format, one item per line (`#` starts a comment line, blank lines are skipped):
//!
//! ```text
//! WEIGHT METHOD PATH?QUERY [BODY]        a request; BODY is the rest of the line, verbatim
//! header NAME: VALUE                     a header sent with every request (after Host)
//! ```
//!
//! `{seq}` becomes the request's number in the run (unique across connections and threads, so
//! event ids and order ids differ); `{rand}` becomes 16 random hex digits (cache busters). A
//! request with a body gets `Content-Length` and, unless a `header Content-Type: ...` line says
//! otherwise, `Content-Type: application/json` when the body starts with `{` or `[`, else
//! `text/plain;charset=UTF-8` (what `navigator.sendBeacon` sends).

use std::fmt;
use std::io::Write;

/// At most this many templates in a mix (each costs a few hundred bytes once, at start).
pub const TEMPLATES_MAX: usize = 1000;
/// A rendered request larger than this is refused at load time: it must fit a connection's
/// write buffer, which is allocated once.
pub const REQUEST_BYTES_MAX: usize = 16 * 1024;
/// Digits `{seq}` can take (u64) and the 16 of `{rand}`, for the size bound.
const SEQ_DIGITS_MAX: usize = 20;
const RAND_DIGITS: usize = 16;

/// The default mix: GET endpoints of the default config (pixel, video, click-like custom event,
/// win notice, conversion). POST bodies are supported by the format; see the commented example.
pub const DEFAULT_REQUESTS: &str = include_str!("default.requests");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// Bytes `start..end` of the mix's literal store.
    Lit(u32, u32),
    Seq,
    Rand,
}

#[derive(Debug)]
pub struct Template {
    method: String,
    /// Whether the response to this request has no body (HEAD).
    pub head: bool,
    target: Vec<Piece>,
    body: Option<Vec<Piece>>,
    /// The line as written (tests look at it).
    #[allow(dead_code)]
    line: String,
}

/// A parsed, validated request mix plus the headers every request carries.
#[derive(Debug)]
pub struct Mix {
    pub templates: Vec<Template>,
    /// Cumulative weights, for a weighted pick with one random number.
    cum: Vec<u64>,
    lits: Vec<u8>,
    /// `Host: ...\r\n` and the file's header lines, pre-rendered.
    headers: Vec<u8>,
    has_content_type: bool,
}

/// A problem in a requests file: where, and what was expected.
#[derive(Debug, PartialEq, Eq)]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl Mix {
    /// Parses a requests file. `host` is the Host header value.
    pub fn parse(text: &str, host: &str) -> Result<Mix, TemplateError> {
        let mut mix = Mix {
            templates: Vec::new(),
            cum: Vec::new(),
            lits: Vec::new(),
            headers: Vec::new(),
            has_content_type: false,
        };
        check_header_value(host).map_err(|m| TemplateError { line: 0, message: format!("Host {host:?}: {m}") })?;
        write!(mix.headers, "Host: {host}\r\n").unwrap();
        let mut total = 0u64;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let err = |message: String| TemplateError { line: n, message };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(h) = line.strip_prefix("header ") {
                let (name, value) =
                    h.split_once(':').ok_or_else(|| err(format!("{h:?}: expected `header NAME: VALUE`")))?;
                let (name, value) = (name.trim(), value.trim());
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return Err(err(format!("header name {name:?} is not a token")));
                }
                if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("content-length") {
                    return Err(err(format!("header {name} is set by loadgen (use --host for Host)")));
                }
                check_header_value(value).map_err(|m| err(format!("header {name}: {m}")))?;
                mix.has_content_type |= name.eq_ignore_ascii_case("content-type");
                write!(mix.headers, "{name}: {value}\r\n").unwrap();
                continue;
            }
            let mut parts = line.splitn(4, [' ', '\t']);
            let weight = parts.next().unwrap_or("");
            let method = parts.next().unwrap_or("");
            let target = parts.next().unwrap_or("");
            let body = parts.next().map(str::trim_start).filter(|b| !b.is_empty());
            let weight: u32 = weight.parse().ok().filter(|w| (1..=1_000_000).contains(w)).ok_or_else(|| {
                err(format!(
                    "weight {weight:?}: expected an integer in 1..=1000000 (line format: WEIGHT METHOD PATH [BODY])"
                ))
            })?;
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(err(format!("method {method:?}: expected an upper-case token such as GET or POST")));
            }
            if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                return Err(err(format!("path {target:?}: expected /path?query without spaces")));
            }
            if body.is_some() && (method == "GET" || method == "HEAD") {
                return Err(err(format!("{method} with a body: use POST (or another method) for a body")));
            }
            if mix.templates.len() == TEMPLATES_MAX {
                return Err(err(format!("more than {TEMPLATES_MAX} request templates")));
            }
            let target = mix.pieces(target);
            let body = body.map(|b| mix.pieces(b));
            let t =
                Template { method: method.to_string(), head: method == "HEAD", target, body, line: line.to_string() };
            let worst = mix.bytes_max(&t);
            if worst > REQUEST_BYTES_MAX {
                return Err(err(format!(
                    "renders to up to {worst} bytes: at most {REQUEST_BYTES_MAX} (shorten the path, body or headers)"
                )));
            }
            total += u64::from(weight);
            mix.cum.push(total);
            mix.templates.push(t);
        }
        if mix.templates.is_empty() {
            return Err(TemplateError {
                line: 0,
                message: "no request templates (expected lines `WEIGHT METHOD PATH [BODY]`)".into(),
            });
        }
        Ok(mix)
    }

    fn pieces(&mut self, s: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        let mut rest = s;
        loop {
            let next = [("{seq}", Piece::Seq), ("{rand}", Piece::Rand)]
                .into_iter()
                .filter_map(|(pat, p)| rest.find(pat).map(|at| (at, pat.len(), p)))
                .min_by_key(|(at, _, _)| *at);
            let (lit, tail) = match next {
                Some((at, len, _)) => (&rest[..at], &rest[at + len..]),
                None => (rest, ""),
            };
            if !lit.is_empty() {
                let start = self.lits.len() as u32;
                self.lits.extend_from_slice(lit.as_bytes());
                out.push(Piece::Lit(start, self.lits.len() as u32));
            }
            match next {
                Some((_, _, p)) => out.push(p),
                None => return out,
            }
            rest = tail;
        }
    }

    fn pieces_len(&self, pieces: &[Piece], seq_digits: usize) -> usize {
        pieces
            .iter()
            .map(|p| match *p {
                Piece::Lit(a, b) => (b - a) as usize,
                Piece::Seq => seq_digits,
                Piece::Rand => RAND_DIGITS,
            })
            .sum()
    }

    fn bytes_max(&self, t: &Template) -> usize {
        let body = t.body.as_deref().map(|b| self.pieces_len(b, SEQ_DIGITS_MAX)).unwrap_or(0);
        t.method.len()
            + 1
            + self.pieces_len(&t.target, SEQ_DIGITS_MAX)
            + " HTTP/1.1\r\n".len()
            + self.headers.len()
            + "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 18446744073709551615\r\n\r\n".len()
            + body
    }

    /// Which template a uniform random number picks, by weight.
    pub fn pick(&self, r: u64) -> usize {
        let x = r % self.cum.last().copied().unwrap_or(1);
        self.cum.partition_point(|&c| c <= x)
    }

    /// Appends request `t` to `out` (cleared first). `out` has room for `REQUEST_BYTES_MAX`, so
    /// this does not allocate.
    pub fn render(&self, t: usize, seq: u64, rand: u64, out: &mut Vec<u8>) {
        let t = &self.templates[t];
        out.clear();
        out.extend_from_slice(t.method.as_bytes());
        out.push(b' ');
        self.put(&t.target, seq, rand, out);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        out.extend_from_slice(&self.headers);
        if let Some(body) = &t.body {
            let len = self.pieces_len(body, digits(seq));
            if !self.has_content_type {
                let first = body.first().map(|p| match *p {
                    Piece::Lit(a, _) => self.lits[a as usize],
                    _ => b'0',
                });
                let ct =
                    if matches!(first, Some(b'{' | b'[')) { "application/json" } else { "text/plain;charset=UTF-8" };
                write!(out, "Content-Type: {ct}\r\n").unwrap();
            }
            write!(out, "Content-Length: {len}\r\n\r\n").unwrap();
            self.put(body, seq, rand, out);
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }

    fn put(&self, pieces: &[Piece], seq: u64, rand: u64, out: &mut Vec<u8>) {
        for p in pieces {
            match *p {
                Piece::Lit(a, b) => out.extend_from_slice(&self.lits[a as usize..b as usize]),
                Piece::Seq => write!(out, "{seq}").unwrap(),
                Piece::Rand => write!(out, "{rand:016x}").unwrap(),
            }
        }
    }
}

fn digits(mut x: u64) -> usize {
    let mut d = 1;
    while x >= 10 {
        x /= 10;
        d += 1;
    }
    d
}

fn check_header_value(v: &str) -> Result<(), &'static str> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        Err("CR, LF or NUL in a header value")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(mix: &Mix, t: usize, seq: u64, rand: u64) -> String {
        let mut out = Vec::with_capacity(REQUEST_BYTES_MAX);
        mix.render(t, seq, rand, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn default_mix_parses_and_only_gets_endpoints_of_the_default_config() {
        let mix = Mix::parse(DEFAULT_REQUESTS, "t").unwrap();
        assert!(mix.templates.len() >= 5);
        for t in &mix.templates {
            assert!(t.method == "GET", "{}", t.line);
            let path = t.line.split_whitespace().nth(2).unwrap();
            let path = path.split('?').next().unwrap();
            assert!(["/i", "/v", "/win", "/e", "/cv"].contains(&path), "{path}");
        }
    }

    #[test]
    fn placeholders_are_filled_and_body_framed() {
        let text = "header User-Agent: lg\n3 GET /i?c=1&eid={seq}&cb={rand}\n1 POST /b [{\"id\":{seq}}] tail\n";
        let mix = Mix::parse(text, "h:1").unwrap();
        assert_eq!(
            render(&mix, 0, 42, 0xab),
            "GET /i?c=1&eid=42&cb=00000000000000ab HTTP/1.1\r\nHost: h:1\r\nUser-Agent: lg\r\n\r\n"
        );
        assert_eq!(
            render(&mix, 1, 1234, 0),
            "POST /b HTTP/1.1\r\nHost: h:1\r\nUser-Agent: lg\r\nContent-Type: application/json\r\nContent-Length: 18\r\n\r\n[{\"id\":1234}] tail"
        );
    }

    #[test]
    fn weights_pick_in_proportion() {
        let mix = Mix::parse("3 GET /a\n1 GET /b\n", "h").unwrap();
        let picks: Vec<usize> = (0..8).map(|r| mix.pick(r)).collect();
        assert_eq!(picks, [0, 0, 0, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn errors_name_the_line_and_the_expectation() {
        let e = Mix::parse("# c\n\n1 GET /ok\nx GET /a\n", "h").unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.contains("1..=1000000"), "{e}");
        assert_eq!(Mix::parse("1 GET /a body\n", "h").unwrap_err().line, 1);
        assert_eq!(Mix::parse("1 get /a\n", "h").unwrap_err().line, 1);
        assert_eq!(Mix::parse("header Host: x\n1 GET /a\n", "h").unwrap_err().line, 1);
        assert!(Mix::parse("# nothing\n", "h").is_err());
        let long = format!("1 GET /{}\n", "a".repeat(REQUEST_BYTES_MAX));
        assert!(Mix::parse(&long, "h").unwrap_err().message.contains("at most"));
    }

    #[test]
    fn render_stays_within_the_preallocated_buffer() {
        let mix = Mix::parse("1 POST /b {seq}{rand}{seq}\n", "h").unwrap();
        let mut out = Vec::with_capacity(REQUEST_BYTES_MAX);
        let p = out.as_ptr();
        mix.render(0, u64::MAX, u64::MAX, &mut out);
        assert_eq!(p, out.as_ptr(), "render reallocated");
        assert!(out.len() <= mix.bytes_max(&mix.templates[0]));
    }
}
