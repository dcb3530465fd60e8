//! The dotted key at a byte offset of a TOML text, named the way the validator names keys
//! (`server.listen`, `endpoint[1].method`, `event.impression.fields[2].type`): for errors that
//! come from TOML deserialization, which carry a span but no key. Cold path: only on errors.

use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

/// The path of the innermost key or value whose span holds `at`; None when the text is not
/// TOML (a syntax error: the caller reads the key off the line instead) or nothing holds `at`.
pub(super) fn key_path_at(text: &str, at: usize) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    let mut path = Vec::new();
    in_table(doc.as_table(), at, &mut path).then(|| join(&path))
}

fn holds(span: Option<std::ops::Range<usize>>, at: usize) -> bool {
    span.is_some_and(|s| s.start <= at && at < s.end)
}

/// Whether `at` lies in `t`: pushes the keys (and array indexes) down to it onto `path`.
fn in_table(t: &Table, at: usize, path: &mut Vec<String>) -> bool {
    for (k, item) in t.iter() {
        path.push(k.to_string());
        if t.key(k).is_some_and(|key| holds(key.span(), at)) || in_item(item, at, path) {
            return true;
        }
        path.pop();
    }
    // A table's own span is its header line (`[server]`): an error about the table as a whole.
    holds(t.span(), at)
}

fn in_item(item: &Item, at: usize, path: &mut Vec<String>) -> bool {
    match item {
        Item::Table(t) => in_table(t, at, path),
        Item::ArrayOfTables(a) => a.iter().enumerate().any(|(i, t)| {
            index(path, i);
            in_table(t, at, path) || {
                unindex(path);
                false
            }
        }),
        Item::Value(v) => in_value(v, at, path),
        Item::None => false,
    }
}

fn in_value(v: &Value, at: usize, path: &mut Vec<String>) -> bool {
    if !holds(v.span(), at) {
        return false;
    }
    match v {
        Value::InlineTable(t) => {
            in_inline(t, at, path);
        }
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                index(path, i);
                if in_value(e, at, path) {
                    return true;
                }
                unindex(path);
            }
        }
        _ => {}
    }
    // Inside this value but on none of its parts (a brace, a comma): the value itself.
    true
}

fn in_inline(t: &InlineTable, at: usize, path: &mut Vec<String>) -> bool {
    for (k, v) in t.iter() {
        path.push(k.to_string());
        if t.key(k).is_some_and(|key| holds(key.span(), at)) || in_value(v, at, path) {
            return true;
        }
        path.pop();
    }
    false
}

/// `fields` → `fields[i]`: an array element is named by its index on its array's key.
fn index(path: &mut [String], i: usize) {
    if let Some(last) = path.last_mut() {
        last.push_str(&format!("[{i}]"));
    }
}

fn unindex(path: &mut [String]) {
    if let Some(last) = path.last_mut() {
        if let Some(open) = last.rfind('[') {
            last.truncate(open);
        }
    }
}

fn join(path: &[String]) -> String {
    path.join(".")
}

#[cfg(test)]
mod tests {
    use super::key_path_at;

    fn at(text: &str, needle: &str) -> Option<String> {
        key_path_at(text, text.find(needle).expect("needle in text"))
    }

    #[test]
    fn names_keys_as_the_validator_does() {
        let text = "[server]\nlisten = \"x\"\n[[endpoint]]\npath = \"/a\"\n[[endpoint]]\npath = \"/b\"\nmethod = 7\n\
                    [event.x]\nfields = [\n  { name = \"a\" },\n  { name = \"b\", requried = true },\n]\n";
        assert_eq!(at(text, "listen").as_deref(), Some("server.listen"));
        assert_eq!(at(text, "\"x\"").as_deref(), Some("server.listen"));
        assert_eq!(at(text, "7").as_deref(), Some("endpoint[1].method"));
        assert_eq!(at(text, "\"/a\"").as_deref(), Some("endpoint[0].path"));
        assert_eq!(at(text, "requried").as_deref(), Some("event.x.fields[1].requried"));
        assert_eq!(at(text, "{ name = \"b\"").as_deref(), Some("event.x.fields[1]"));
        assert_eq!(at(text, "[event.x]").as_deref(), Some("event.x"));
    }

    #[test]
    fn none_for_text_that_is_not_toml() {
        assert_eq!(key_path_at("[server\nlisten = 1\n", 3), None);
    }
}
