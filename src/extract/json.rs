//! JSON request bodies: parse in place with simd-json, find batch items, look up `json.<path>`
//! field sources.
//!
//! Stage: extraction, for POST endpoints. In: the request body in a per-connection (or, after
//! gzip, per-shard) buffer with `INPUT_PADDING` spare bytes after it; out: a tape of nodes that
//! borrow strings from that buffer (simd-json unescapes strings in place, so the buffer is
//! modified). Pure, no I/O.
//!
//! Allocation: none per request once warm. simd-json keeps its working memory in `Buffers`
//! (structural indexes, string scratch, stage-2 stack) and the tape in a `Vec<Node>`; both live
//! in [`JsonScratch`], made once per shard, and are grown to their worst case for the largest
//! body at start ([`JsonScratch::new`] parses a worst-case document), so a request only reuses
//! them. `tests/alloc.rs` checks this.
//!
//! A batch simd-json refuses as a whole (one item with a number out of range, a lone surrogate)
//! is split at its top-level commas and parsed item by item ([`JsonScratch::parse_items`]), so
//! one bad item is refused alone, as every other bad item is.
//!
//! Numbers: simd-json gives integers as i64/u64 (exact) and other numbers as f64; it does not
//! keep their text. An f64 is written back in its shortest round-trip form, which equals the sent
//! text for every number of at most 15 significant digits (f64 holds 15 decimal digits exactly),
//! e.g. every price up to 999999999.999999. A number that needs more digits is refused by a
//! number field (send it as a string: strings are parsed from their exact text, money included),
//! except by a money field below 1e9, which takes the nearest micro: such digits are a binary
//! float's artefact (`19.990000000000002` from JavaScript arithmetic), not a price. A string
//! field takes the shortest round-trip text whatever its digits.

use simd_json::{Buffers, Node, StaticNode, Tape};

use crate::config::Field;
use crate::constants::BATCH_EVENTS_MAX;
use crate::event::{Event, FLAG_TRUNCATED};
use crate::schema::FieldKind;

/// Spare bytes simd-json needs after the document in its input buffer.
pub const INPUT_PADDING: usize = simd_json::INPUT_PADDING;

/// Deepest nesting accepted in a body. An event is a flat object with a few nested ids; 32 is
/// far above what a client sends and bounds simd-json's stage-2 stack.
pub const DEPTH_MAX: usize = 32;

/// A parsed body: the tape, root first.
pub type Doc<'t, 'i> = &'t [Node<'i>];

/// simd-json's working memory and the tape, reused by every parse on a shard.
pub struct JsonScratch {
    buffers: Buffers,
    tape: Tape<'static>,
    /// Item byte ranges of a batch that is not valid JSON as a whole (see `parse_items`).
    ranges: Vec<(u32, u32)>,
    /// One such item, copied out with padding to be parsed on its own.
    item: Vec<u8>,
}

/// What a parsed body holds, before its items are handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// The root is an array (a batch); else it is one object.
    pub is_array: bool,
    /// Items in the body (a split batch is counted up to `BATCH_EVENTS_MAX + 1`).
    pub items: usize,
}

/// Why a batch item that had to be parsed on its own was refused.
const ITEM_NOT_JSON: &str = "item is not valid JSON (a number out of range, a bad escape?)";
const BODY_NOT_JSON: &str = "body is not valid JSON";
const BODY_TOO_DEEP: &str = "body nested deeper than 32 levels (extract::json::DEPTH_MAX)";
const _: () = assert!(DEPTH_MAX == 32, "BODY_TOO_DEEP names the limit");

impl JsonScratch {
    /// Sized for bodies of up to `input_bytes_max` bytes, and grown to the worst case now: a
    /// document of that size with one structural character per byte pair (`[0,0,0,…]`) fills
    /// the structural index and the tape as much as any body can, and a nest of `DEPTH_MAX`
    /// arrays fills the stage-2 stack.
    pub fn new(input_bytes_max: usize) -> JsonScratch {
        let mut s = JsonScratch {
            buffers: Buffers::with_max_depth(input_bytes_max, DEPTH_MAX),
            // Every node but the last takes at least two input bytes (`0,`, `[]`, `"":`).
            tape: Tape(Vec::with_capacity(input_bytes_max / 2 + 2)),
            ranges: Vec::with_capacity(BATCH_EVENTS_MAX + 1),
            item: vec![0; input_bytes_max + INPUT_PADDING],
        };
        let mut doc = vec![0u8; input_bytes_max.max(2) + INPUT_PADDING];
        let n = input_bytes_max.max(2);
        // `[0,0,…,0]` (odd length) and `[[[…]]]` to DEPTH_MAX - 1.
        doc[..n].fill(b',');
        doc[0] = b'[';
        let mut i = 1;
        while i < n - 1 {
            doc[i] = b'0';
            i += 2;
        }
        doc[n - 1] = b']';
        if doc[n - 2] == b',' {
            doc[n - 2] = b' ';
        }
        s.parse(&mut doc, n, |_| ());
        let depth = (DEPTH_MAX - 1).min(n / 2);
        doc[..n].fill(b' ');
        doc[..depth].fill(b'[');
        doc[depth..2 * depth].fill(b']');
        s.parse(&mut doc, n, |_| ());
        s
    }

    /// Parses `input[..len]` in place and hands the tape to `f`. `input` must hold at least
    /// `len + INPUT_PADDING` bytes (the padding may hold anything).
    pub fn parse<R>(
        &mut self,
        input: &mut [u8],
        len: usize,
        f: impl FnOnce(Result<Doc<'_, '_>, &'static str>) -> R,
    ) -> R {
        debug_assert!(input.len() >= len + INPUT_PADDING);
        let mut tape: Tape<'_> = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let r = match simd_json::fill_tape_padded(input, len, &mut self.buffers, &mut tape) {
            Ok(()) => f(Ok(&tape.0)),
            Err(e) if *e.error() == simd_json::ErrorType::DepthLimitExceeded => f(Err(BODY_TOO_DEEP)),
            Err(_) => f(Err(BODY_NOT_JSON)),
        };
        self.tape = tape.reset();
        r
    }

    /// Parses a body and hands out its events: `shape` first (it returns false to refuse the
    /// body: then no item is handed out), then `each(state, index, item)` for every item in
    /// order. A batch that is not valid JSON as a whole — usually one item with a number out of
    /// range or a lone surrogate escape — is split at its top-level commas and each item parsed
    /// on its own, so one bad item is refused by itself instead of failing every other. Any
    /// other body that is not JSON goes to `shape` as `Err`. `input` as for [`Self::parse`].
    pub fn parse_items<S>(
        &mut self,
        input: &mut [u8],
        len: usize,
        state: &mut S,
        shape: impl FnOnce(&mut S, Result<Shape, &'static str>) -> bool,
        mut each: impl FnMut(&mut S, usize, Result<&[Node<'_>], &'static str>),
    ) {
        // simd-json unescapes strings in place, also in a body it then fails on: keep the text
        // for the split below when it has escapes (only those change bytes).
        let escaped = memchr::memchr(b'\\', &input[..len]).is_some();
        if escaped {
            self.item[..len].copy_from_slice(&input[..len]);
        }
        let mut shape = Some(shape);
        let parsed = self.parse(input, len, |doc| {
            let doc = match doc {
                Ok(doc) => doc,
                // Not split: each item is shallower than the body, so split items would pass a
                // limit the body failed.
                Err(BODY_TOO_DEEP) => {
                    shape.take().expect("called once")(state, Err(BODY_TOO_DEEP));
                    return true;
                }
                Err(_) => return false,
            };
            let shape = shape.take().expect("called once");
            match Items::new(doc) {
                Ok(items) => {
                    let is_array = matches!(doc.first(), Some(Node::Array { .. }));
                    if shape(state, Ok(Shape { is_array, items: items.len() })) {
                        for (index, item) in items.enumerate() {
                            each(state, index, item);
                        }
                    }
                }
                Err(why) => {
                    shape(state, Err(why));
                }
            }
            true
        });
        if parsed {
            return;
        }
        let shape = shape.take().expect("not called: the body did not parse");
        if escaped {
            input[..len].copy_from_slice(&self.item[..len]);
        }
        if let Err(why) = split_array(&input[..len], &mut self.ranges, BATCH_EVENTS_MAX + 1) {
            shape(state, Err(why));
            return;
        }
        if !shape(state, Ok(Shape { is_array: true, items: self.ranges.len() })) {
            return;
        }
        // Each item is copied out before its parse: simd-json may write past a string's end
        // (into what it takes for padding), which in place would be the next item.
        let mut item = std::mem::take(&mut self.item);
        for index in 0..self.ranges.len() {
            let (from, to) = self.ranges[index];
            let n = (to - from) as usize;
            item[..n].copy_from_slice(&input[from as usize..to as usize]);
            self.parse(&mut item, n, |doc| match doc {
                Ok(doc) => match doc.first() {
                    Some(Node::Object { .. }) => each(state, index, Ok(doc)),
                    _ => each(state, index, Err("item is not a JSON object")),
                },
                Err(_) => each(state, index, Err(ITEM_NOT_JSON)),
            });
        }
        self.item = item;
    }
}

/// Splits the text of a JSON array into the byte ranges of its items (whitespace trimmed),
/// at most `cap` of them (a longer array stops there), into `out`. Only strings, escapes and
/// bracket depth are tracked: an item's own text is checked when it is parsed. `Err` when
/// `b` is not an array whose brackets close, or nests deeper than `DEPTH_MAX` (a body simd-json
/// refused for another reason first must not be let through for its depth by the split).
fn split_array(b: &[u8], out: &mut Vec<(u32, u32)>, cap: usize) -> Result<(), &'static str> {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    out.clear();
    let Some(open) = b.iter().position(|c| !ws(c)) else { return Err(BODY_NOT_JSON) };
    if b[open] != b'[' || b.len() > u32::MAX as usize {
        return Err(BODY_NOT_JSON);
    }
    let (mut start, mut depth, mut in_string) = (open + 1, 0usize, false);
    // Bit d - 1 set: the bracket open at depth d is `{` (else `[`), so `[{"a":1]]` is not
    // taken for closed brackets. DEPTH_MAX bounds the depth below 64.
    let mut objects = 0u64;
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    // `depth` leaves out the array itself.
                    if depth >= DEPTH_MAX {
                        return Err(BODY_TOO_DEEP);
                    }
                    let bit = 1u64 << (depth - 1);
                    objects = if c == b'{' { objects | bit } else { objects & !bit };
                }
                b']' | b'}' if depth > 0 => {
                    let open_is_object = objects & (1u64 << (depth - 1)) != 0;
                    if open_is_object != (c == b'}') {
                        return Err(BODY_NOT_JSON);
                    }
                    depth -= 1;
                }
                b',' | b']' if depth == 0 => {
                    let item = &b[start..i];
                    let from = start + item.iter().position(|c| !ws(c)).unwrap_or(item.len());
                    let to = start + item.iter().rposition(|c| !ws(c)).map_or(0, |p| p + 1);
                    let to = to.max(from);
                    // `[]` has no item; `[1,]` has an empty (bad) second one.
                    if !(c == b']' && out.is_empty() && from == to) {
                        if out.len() == cap {
                            return Ok(());
                        }
                        out.push((from as u32, to as u32));
                    }
                    if c == b']' {
                        return if b[i + 1..].iter().all(ws) { Ok(()) } else { Err(BODY_NOT_JSON) };
                    }
                    start = i + 1;
                }
                b'}' => return Err(BODY_NOT_JSON),
                _ => {}
            }
        }
        i += 1;
    }
    Err(BODY_NOT_JSON)
}

/// Nodes a value occupies on the tape, itself included.
#[inline]
fn span(n: &Node<'_>) -> usize {
    match n {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
    }
}

/// The events in a body: the root object (one event), or each element of the root array.
pub struct Items<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Items<'t, 'i> {
    pub fn new(doc: Doc<'t, 'i>) -> Result<Items<'t, 'i>, &'static str> {
        match doc.first() {
            Some(Node::Array { len, .. }) => Ok(Items { rest: &doc[1..], left: *len }),
            Some(Node::Object { .. }) => Ok(Items { rest: doc, left: 1 }),
            _ => Err("body is not a JSON object or array"),
        }
    }

    /// Items not yet returned.
    pub fn len(&self) -> usize {
        self.left
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl<'t, 'i> Iterator for Items<'t, 'i> {
    /// An item's nodes, or why it is not an event (not an object).
    type Item = Result<&'t [Node<'i>], &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let n = span(self.rest.first()?).min(self.rest.len());
        let (item, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(match item[0] {
            Node::Object { .. } => Ok(item),
            _ => Err("item is not a JSON object"),
        })
    }
}

/// The value at `path` (object keys, outermost first) in `obj`, if every step exists.
pub fn lookup<'t, 'i>(obj: &'t [Node<'i>], path: &[Box<str>]) -> Option<&'t Node<'i>> {
    let mut cur = obj;
    for key in path {
        let Some(&Node::Object { len, .. }) = cur.first() else { return None };
        let mut i = 1;
        let mut found = None;
        for _ in 0..len {
            let Node::String(k) = cur.get(i)? else { return None };
            let v = cur.get(i + 1)?;
            let n = span(v);
            // The first occurrence of a duplicated key wins, as for query parameters.
            if found.is_none() && *k == &**key {
                found = Some(cur.get(i + 1..i + 1 + n)?);
            }
            i += 1 + n;
        }
        cur = found?;
    }
    cur.first()
}

/// A money field's JSON float of more than 15 significant digits is rounded to the micro below
/// this magnitude (where an f64 resolves far finer than a micro), refused at or above it.
const MONEY_ROUNDED_BELOW: f64 = 1e9;

/// Longest text a JSON scalar is turned into before it is stored (numbers only; strings are
/// stored from the input directly).
const NUMBER_TEXT_BYTES_MAX: usize = 48;

/// Stores the value found for field `f` as its kind. `null` counts as absent; objects and
/// arrays are refused. `Some(hash)` as `store_text` says: a string truncated to its slot.
pub fn store(f: &Field, v: &Node<'_>, ev: &mut Event) -> Result<Option<u64>, &'static str> {
    let mut buf = [0u8; NUMBER_TEXT_BYTES_MAX];
    let text: &[u8] = match v {
        Node::String(s) => s.as_bytes(),
        Node::Object { .. } | Node::Array { .. } => return Err("is an object or array, not a value"),
        Node::Static(StaticNode::Null) => return Ok(None),
        Node::Static(StaticNode::Bool(b)) => match (f.kind, *b) {
            (FieldKind::Str, true) => b"true",
            (FieldKind::Str, false) => b"false",
            (_, true) => b"1",
            (_, false) => b"0",
        },
        Node::Static(StaticNode::I64(i)) => fmt(&mut buf, format_args!("{i}"))?,
        Node::Static(StaticNode::U64(u)) => fmt(&mut buf, format_args!("{u}"))?,
        Node::Static(StaticNode::F64(x)) => {
            // -0.0 prints as "-0", which the unsigned kinds refuse though the integer -0 is 0.
            let x = if *x == 0.0 { 0.0 } else { *x };
            let Ok(t) = fmt(&mut buf, format_args!("{x}")) else {
                // Plain text longer than the buffer: a magnitude below ~1e-30 or above ~1e47,
                // far under a micro or past every number kind's range. Its exponent form says
                // which, exactly: an amount reads it as 0 (cut, flagged), the rest refuse it
                // as out of range, a string keeps it as it is.
                let mut exp = [0u8; NUMBER_TEXT_BYTES_MAX];
                return super::store_text(f, fmt(&mut exp, format_args!("{x:e}"))?, false, ev);
            };
            // A string field takes the shortest round-trip text as it is: nothing is guessed,
            // the 15-digit rule is about reading a number back as the decimal that was meant.
            if f.kind == FieldKind::Str || significant_digits(t) <= 15 {
                t
            } else if f.kind == FieldKind::Money && f.decrypt.is_none() && x.abs() < MONEY_ROUNDED_BELOW {
                // A binary float's artefact (JavaScript's 0.1 * 3 is 0.30000000000000004, its
                // 0.7 * 0.1 is 0.06999999999999999): the sender meant a decimal the f64 only
                // approximates. Below 1e9 an f64 is within far less than half a micro of it, so
                // the nearest micro is that decimal; the value is flagged as changed.
                let micros = (x.abs() * 1e6).round() as u64;
                ev.flags |= FLAG_TRUNCATED;
                let sign = if x < 0.0 && micros > 0 { "-" } else { "" };
                let (whole, frac) = (micros / 1_000_000, micros % 1_000_000);
                let mut rounded = [0u8; NUMBER_TEXT_BYTES_MAX];
                let t = fmt(&mut rounded, format_args!("{sign}{whole}.{frac:06}"))?;
                return super::store_text(f, t, false, ev);
            } else {
                return Err("over 15 significant digits: send as string");
            }
        }
    };
    super::store_text(f, text, false, ev)
}

fn fmt<'b>(buf: &'b mut [u8; NUMBER_TEXT_BYTES_MAX], args: std::fmt::Arguments<'_>) -> Result<&'b [u8], &'static str> {
    use std::io::Write as _;
    let mut w = &mut buf[..];
    w.write_fmt(args).map_err(|_| "is too long for a number")?;
    let n = NUMBER_TEXT_BYTES_MAX - w.len();
    Ok(&buf[..n])
}

/// Digits of a plain decimal (`-0.00120`, `1200`) from the first non-zero one, trailing zeros
/// not counted (after the point, or at the end of an integer: `1200` has 2).
fn significant_digits(t: &[u8]) -> usize {
    let digits = t.iter().filter(|c| c.is_ascii_digit());
    let mut n = 0;
    let mut started = false;
    let mut pending_zeros = 0;
    for &c in digits {
        if c == b'0' && !started {
            continue;
        }
        started = true;
        if c == b'0' {
            pending_zeros += 1;
        } else {
            n += pending_zeros + 1;
            pending_zeros = 0;
        }
    }
    // Zeros at the end of an integer part are not counted either: the shortest round-trip
    // text of `1e15` or `2.5e17` is its digits padded to the magnitude, which is the number
    // that was sent; whether it fits the field is the field's own range check.
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_array_finds_top_level_items_only() {
        let mut out = Vec::new();
        let text = |b: &[u8], out: &Vec<(u32, u32)>| -> Vec<String> {
            out.iter().map(|&(f, t)| String::from_utf8_lossy(&b[f as usize..t as usize]).into_owned()).collect()
        };
        let b = br#" [ {"a":"x,]}\"{"} , [1,[2]] ,3,{"b":{"c":"\\"}} ] "#;
        split_array(b, &mut out, 10).unwrap();
        assert_eq!(text(b, &out), [r#"{"a":"x,]}\"{"}"#, "[1,[2]]", "3", r#"{"b":{"c":"\\"}}"#]);
        split_array(b"[]", &mut out, 10).unwrap();
        assert!(out.is_empty());
        split_array(b"[1,,2,]", &mut out, 10).unwrap();
        assert_eq!(text(b"[1,,2,]", &out), ["1", "", "2", ""]);
        // Stops at the cap: the caller refuses the body as too many items.
        split_array(b"[1,2,3,4]", &mut out, 2).unwrap();
        assert_eq!(out.len(), 2);
        // 32 levels with the array itself; one more is refused, brackets in strings not counted.
        let nest = |n: usize| format!("[1,{}{}]", "[".repeat(n), "]".repeat(n)).into_bytes();
        split_array(&nest(DEPTH_MAX - 1), &mut out, 10).unwrap();
        assert_eq!(split_array(&nest(DEPTH_MAX), &mut out, 10), Err(BODY_TOO_DEEP));
        split_array(format!("[\"{}\"]", "[".repeat(40)).as_bytes(), &mut out, 10).unwrap();
        let deep_mixed = format!("[{}1{}]", "{\"a\":[".repeat(15), "]}".repeat(15));
        split_array(deep_mixed.as_bytes(), &mut out, 10).unwrap();
        // Mixed bracket kinds do not close each other, at any depth.
        let mixed = [&b"[{\"type\":\"a\"]]"[..], b"[[1}]", b"[{\"a\":[1}}]", b"[{\"a\":{\"b\":1]}]"];
        for bad in [&b"{}"[..], b"", b"  ", b"[1,2", b"[1}", b"[\"]", b"[1] 2", b"x[1]"].into_iter().chain(mixed) {
            assert_eq!(split_array(bad, &mut out, 10), Err(BODY_NOT_JSON), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parse_items_refuses_only_the_items_that_do_not_parse() {
        let mut scratch = JsonScratch::new(1024);
        let text = br#"[{"a":"\u00e9"},{"b":1e999},7,{"c":"\ud800"},{"d":[1,2]}]"#;
        let mut buf = text.to_vec();
        buf.resize(text.len() + INPUT_PADDING, 0);
        let mut seen: Vec<(usize, Result<usize, &str>)> = Vec::new();
        let mut shape_seen = None;
        scratch.parse_items(
            &mut buf,
            text.len(),
            &mut seen,
            |_, s| {
                shape_seen = Some(s);
                true
            },
            |seen, i, item| seen.push((i, item.map(|d| d.len()))),
        );
        assert_eq!(shape_seen, Some(Ok(Shape { is_array: true, items: 5 })));
        assert_eq!(
            seen,
            [
                (0, Ok(3)),
                (1, Err(ITEM_NOT_JSON)),
                (2, Err("item is not a JSON object")),
                (3, Err(ITEM_NOT_JSON)),
                (4, Ok(5))
            ]
        );
        // A shape refused: no item is handed out.
        let mut buf = text.to_vec();
        buf.resize(text.len() + INPUT_PADDING, 0);
        let mut n = 0;
        scratch.parse_items(&mut buf, text.len(), &mut n, |_, _| false, |n, _, _| *n += 1);
        assert_eq!(n, 0);
    }

    fn path(p: &str) -> Vec<Box<str>> {
        p.split('.').map(Box::from).collect()
    }

    fn with_doc<R>(text: &str, f: impl FnOnce(Result<Doc<'_, '_>, &'static str>) -> R) -> R {
        let mut scratch = JsonScratch::new(1024);
        let mut buf = text.as_bytes().to_vec();
        buf.resize(text.len() + INPUT_PADDING, 0);
        scratch.parse(&mut buf, text.len(), f)
    }

    fn text_of(n: &Node<'_>) -> String {
        match n {
            Node::String(s) => format!("s:{s}"),
            Node::Static(x) => format!("{x:?}"),
            Node::Object { .. } => "object".into(),
            Node::Array { .. } => "array".into(),
        }
    }

    #[test]
    fn lookup_finds_nested_paths() {
        let text = r#"{"a":1,"imp":{"id":"x\"y","w":[1,{"id":2}],"n":{"id":3}},"price":1.25,"imp2":{"id":9}}"#;
        with_doc(text, |d| {
            let d = d.unwrap();
            assert_eq!(text_of(lookup(d, &path("a")).unwrap()), "U64(1)");
            assert_eq!(text_of(lookup(d, &path("imp.id")).unwrap()), "s:x\"y");
            assert_eq!(text_of(lookup(d, &path("imp.n.id")).unwrap()), "U64(3)");
            assert_eq!(text_of(lookup(d, &path("imp2.id")).unwrap()), "U64(9)");
            assert_eq!(text_of(lookup(d, &path("price")).unwrap()), "F64(1.25)");
            assert_eq!(text_of(lookup(d, &path("imp.w")).unwrap()), "array");
            assert!(lookup(d, &path("imp.w.id")).is_none());
            assert!(lookup(d, &path("a.b")).is_none());
            assert!(lookup(d, &path("nope")).is_none());
        });
    }

    #[test]
    fn duplicate_key_first_wins() {
        with_doc(r#"{"a":1,"a":2}"#, |d| {
            assert_eq!(text_of(lookup(d.unwrap(), &path("a")).unwrap()), "U64(1)");
        });
    }

    #[test]
    fn items_of_object_and_array() {
        with_doc(r#"{"a":1}"#, |d| {
            let it = Items::new(d.unwrap()).unwrap();
            assert_eq!(it.len(), 1);
            assert_eq!(it.filter(Result::is_ok).count(), 1);
        });
        with_doc(r#"[{"a":{"b":[1,2,{"c":3}]}}, 5, "x", [1], {"a":2}, null, {}]"#, |d| {
            let d = d.unwrap();
            let items: Vec<_> = Items::new(d).unwrap().collect();
            assert_eq!(items.len(), 7);
            let ok: Vec<bool> = items.iter().map(Result::is_ok).collect();
            assert_eq!(ok, [true, false, false, false, true, false, true]);
            assert_eq!(text_of(lookup(items[4].unwrap(), &path("a")).unwrap()), "U64(2)");
            assert_eq!(text_of(lookup(items[0].unwrap(), &path("a")).unwrap()), "object");
        });
        with_doc("3", |d| assert!(Items::new(d.unwrap()).is_err()));
        with_doc("[]", |d| assert!(Items::new(d.unwrap()).unwrap().is_empty()));
        with_doc("{", |d| assert!(d.is_err()));
    }

    #[test]
    fn significant_digit_counts() {
        assert_eq!(significant_digits(b"0.000001"), 1);
        assert_eq!(significant_digits(b"-1.25"), 3);
        assert_eq!(significant_digits(b"1200"), 2, "an integer's trailing zeros are its magnitude");
        assert_eq!(significant_digits(b"1000000000000000"), 1);
        assert_eq!(significant_digits(b"12345678901234567000"), 17);
        assert_eq!(significant_digits(b"120.500"), 4);
        assert_eq!(significant_digits(b"999999999.999999"), 15);
        assert_eq!(significant_digits(b"0.1000000000000001"), 16);
    }

    #[test]
    fn prices_as_json_numbers_are_exact() {
        // Every 15-digit decimal survives f64 parse + shortest formatting.
        for p in ["0.1", "1.23", "0.000001", "999999999.999999", "123456.789012", "5", "-2.5", "0.3"] {
            with_doc(&format!("{{\"p\":{p}}}"), |d| {
                let n = lookup(d.unwrap(), &path("p")).unwrap();
                let mut buf = [0u8; NUMBER_TEXT_BYTES_MAX];
                let t = match n {
                    Node::Static(StaticNode::F64(x)) => fmt(&mut buf, format_args!("{x}")).unwrap().to_vec(),
                    Node::Static(StaticNode::I64(x)) => x.to_string().into_bytes(),
                    Node::Static(StaticNode::U64(x)) => x.to_string().into_bytes(),
                    _ => panic!(),
                };
                assert_eq!(std::str::from_utf8(&t).unwrap(), p);
            });
        }
    }

    /// Random and mutated bodies never panic, and nothing reads past the tape.
    #[test]
    fn random_bodies_never_panic() {
        let mut scratch = JsonScratch::new(512);
        let seeds: [&[u8]; 4] = [
            br#"[{"type":"a","value":1,"eid":"x"},{"imp":{"id":"\u00e9"}}]"#,
            br#"{"a":[[[[{"b":null}]]]],"c":1e400,"d":-0,"e":18446744073709551616}"#,
            b"[1,2,3,{\"x\":\"y\"},[],{}]",
            b"\"just a string\"",
        ];
        let mut x = crate::xorshift::Xorshift64::new(0x9e37_79b9_7f4a_7c15);
        let mut rnd = || x.next();
        let alphabet = b"{}[]\":,\\0123456789.eE-+truefalsnul ax\x00\xff";
        for round in 0..4000 {
            let seed = seeds[round % seeds.len()];
            let mut body = seed.to_vec();
            let edits = 1 + rnd() % 6;
            for _ in 0..edits {
                let r = rnd();
                let i = (r as usize >> 8) % (body.len() + 1);
                let c = alphabet[(r as usize) % alphabet.len()];
                match r % 3 {
                    0 if i < body.len() => body[i] = c,
                    1 => body.insert(i, c),
                    _ if i < body.len() => {
                        body.remove(i);
                    }
                    _ => {}
                }
            }
            body.truncate(512);
            let len = body.len();
            body.resize(len + INPUT_PADDING, 0);
            scratch.parse(&mut body, len, |d| {
                if let Ok(d) = d {
                    if let Ok(items) = Items::new(d) {
                        for item in items.flatten() {
                            for p in ["type", "imp.id", "a.b", "value", "x"] {
                                let _ = lookup(item, &path(p));
                            }
                        }
                    }
                }
            });
        }
    }
}
