//! The key at a byte offset of a TOML text, for errors that come from TOML deserialization, which
//! carry a span but no key: named the way the validator names keys (`server.listen`,
//! `endpoint[1].method`, `event.impression.fields[2].type`), and removed from the document so
//! that deserializing again goes on to the next error. Cold path: only on errors.

use toml_edit::{ArrayOfTables, ImDocument, Item, Table, TableLike, Value};

/// One step down a TOML document: a key of a table, or an index into an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// The path of the innermost key or value whose span holds `at`; None when the text is not
/// TOML (a syntax error: the caller reads the key off the line instead) or nothing holds `at`.
pub(super) fn key_path_at(text: &str, at: usize) -> Option<String> {
    let doc = ImDocument::parse(text).ok()?;
    locate(doc.as_table(), at).map(|steps| join(&steps))
}

/// The steps down to the innermost key or value of `root` whose span holds `at`: for a key, the
/// steps to its value. None when nothing holds `at`.
pub(super) fn locate(root: &Table, at: usize) -> Option<Vec<Step>> {
    let mut path = Vec::new();
    in_table(root, at, &mut path).then_some(path)
}

/// Removes what `steps` lead to (a key and its value, an array element, an array-of-tables
/// element) from `root`; whether there was such a thing.
pub(super) fn remove(root: &mut Table, steps: &[Step]) -> bool {
    remove_in_table(root, steps)
}

fn holds(span: Option<std::ops::Range<usize>>, at: usize) -> bool {
    span.is_some_and(|s| s.start <= at && at < s.end)
}

/// Whether `at` lies in `t`: pushes the steps down to it onto `path`.
fn in_table(t: &Table, at: usize, path: &mut Vec<Step>) -> bool {
    // A table's own span is its header line (`[server]`): an error about the table as a whole.
    in_entries(t, at, path) || holds(t.span(), at)
}

/// Whether `at` lies in one of the keys or values of `t` (a table or an inline table): pushes
/// the steps down to it onto `path`.
fn in_entries(t: &dyn TableLike, at: usize, path: &mut Vec<Step>) -> bool {
    for (k, item) in t.iter() {
        path.push(Step::Key(k.to_string()));
        if t.key(k).is_some_and(|key| holds(key.span(), at)) || in_item(item, at, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn in_item(item: &Item, at: usize, path: &mut Vec<Step>) -> bool {
    match item {
        Item::Table(t) => in_table(t, at, path),
        Item::ArrayOfTables(a) => a.iter().enumerate().any(|(i, t)| {
            path.push(Step::Index(i));
            in_table(t, at, path) || {
                path.pop();
                false
            }
        }),
        Item::Value(v) => in_value(v, at, path),
        Item::None => false,
    }
}

fn in_value(v: &Value, at: usize, path: &mut Vec<Step>) -> bool {
    if !holds(v.span(), at) {
        return false;
    }
    match v {
        Value::InlineTable(t) => {
            in_entries(t, at, path);
        }
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if in_value(e, at, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    // Inside this value but on none of its parts (a brace, a comma): the value itself.
    true
}

fn remove_in_table(t: &mut Table, steps: &[Step]) -> bool {
    match steps {
        [Step::Key(k)] => t.remove(k).is_some(),
        [Step::Key(k), rest @ ..] => t.get_mut(k).is_some_and(|item| remove_in_item(item, rest)),
        _ => false,
    }
}

fn remove_in_item(item: &mut Item, steps: &[Step]) -> bool {
    match (item, steps) {
        (Item::Table(t), _) => remove_in_table(t, steps),
        (Item::ArrayOfTables(a), [Step::Index(i)]) => remove_table_at(a, *i),
        (Item::ArrayOfTables(a), [Step::Index(i), rest @ ..]) => {
            a.get_mut(*i).is_some_and(|t| remove_in_table(t, rest))
        }
        (Item::Value(v), _) => remove_in_value(v, steps),
        _ => false,
    }
}

fn remove_in_value(v: &mut Value, steps: &[Step]) -> bool {
    match (v, steps) {
        (Value::InlineTable(t), [Step::Key(k)]) => t.remove(k).is_some(),
        (Value::InlineTable(t), [Step::Key(k), rest @ ..]) => t.get_mut(k).is_some_and(|v| remove_in_value(v, rest)),
        (Value::Array(a), [Step::Index(i)]) if *i < a.len() => {
            a.remove(*i);
            true
        }
        (Value::Array(a), [Step::Index(i), rest @ ..]) => a.get_mut(*i).is_some_and(|v| remove_in_value(v, rest)),
        _ => false,
    }
}

fn remove_table_at(a: &mut ArrayOfTables, i: usize) -> bool {
    let there = i < a.len();
    if there {
        a.remove(i);
    }
    there
}

/// `endpoint`, `1`, `method` → `endpoint[1].method`: an array element is named by its index on
/// its array's key.
pub(super) fn join(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) if s.is_empty() => s.push_str(k),
            Step::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Step::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
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
