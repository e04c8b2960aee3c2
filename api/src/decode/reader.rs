//! Typed readers for one field of a YAML mapping, each reporting its own problem and carrying on.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::{join, nearest};
use crate::Diagnostic;
use crate::duration::parse_duration;
use crate::validate;
use crate::yaml::{Node, Value};

/// A mapping whose keys were checked against the fields its place allows.
pub(super) struct Map<'n> {
    pub(super) path: String,
    /// Where the mapping starts: missing fields are reported here.
    pub(super) pos: (usize, usize),
    pub(super) entries: &'n [(Node, Node)],
}

impl<'n> Map<'n> {
    /// A field's value; an explicit null (`key:` or `key: ~`) reads as absent, so it takes the
    /// default like an omitted field does.
    pub(super) fn get(&self, key: &str) -> Option<&'n Node> {
        let value = self.entries.iter().find(|(k, _)| key_text(k) == Some(key)).map(|(_, v)| v);
        value.filter(|v| !v.is_null())
    }

    pub(super) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }
}

/// A key's text; `None` for keys that are lists or mappings (legal YAML, never a field name).
pub(super) fn key_text(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar(s) => Some(&s.text),
        _ => None,
    }
}

/// One file's decoding: the file name for diagnostics and every problem found so far.
pub(super) struct Decoder<'f> {
    pub(super) file: &'f str,
    /// Problems with the (line, column) they start at, so they can be sorted into reading order.
    pub(super) out: Vec<((usize, usize), Diagnostic)>,
    /// The current document's field lines (see [`crate::FieldLines`]).
    pub(super) lines: crate::FieldLines,
}

impl Decoder<'_> {
    pub(super) fn error(&mut self, at: (usize, usize), path: &str, message: impl Into<String>) {
        let diagnostic =
            Diagnostic { file: self.file.to_string(), line: at.0, path: path.to_string(), message: message.into() };
        self.out.push((at, diagnostic));
    }

    /// Remembers the line of `key` in `m`, for problems found later across documents.
    pub(super) fn mark(&mut self, m: &Map, key: &str) {
        if let Some(node) = m.get(key) {
            self.lines.0.insert(m.path(key), node.line);
        }
    }

    /// Checks that `node` is a mapping holding only `fields`, each at most once.
    pub(super) fn mapping<'n>(&mut self, node: &'n Node, path: String, fields: &[&str]) -> Option<Map<'n>> {
        let Value::Mapping(entries) = &node.value else {
            self.error(node.pos(), &path, format!("expected a mapping, found {}", node.describe()));
            return None;
        };
        for (i, (key, _)) in entries.iter().enumerate() {
            let Some(name) = key_text(key) else {
                self.error(key.pos(), &path, format!("field names must be plain words, found {}", key.describe()));
                continue;
            };
            let key_path = join(&path, name);
            if !fields.contains(&name) {
                let hint = match nearest(name, fields) {
                    Some(near) => format!("did you mean {near:?}?"),
                    None => format!("expected one of: {}", fields.join(", ")),
                };
                self.error(key.pos(), &key_path, format!("unknown field; {hint}"));
            } else if entries[..i].iter().any(|(k, _)| key_text(k) == Some(name)) {
                self.error(key.pos(), &key_path, "field is set twice");
            }
        }
        Some(Map { path, pos: node.pos(), entries })
    }

    /// An optional nested mapping.
    pub(super) fn sub<'n>(&mut self, m: &Map<'n>, key: &str, fields: &[&str]) -> Option<Map<'n>> {
        self.mapping(m.get(key)?, m.path(key), fields)
    }

    /// A nested mapping that may be left out entirely, so its own defaults apply.
    pub(super) fn sub_or_empty<'n>(&mut self, m: &Map<'n>, key: &str, fields: &[&str]) -> Option<Map<'n>> {
        match m.get(key) {
            Some(node) => self.mapping(node, m.path(key), fields),
            None => Some(Map { path: m.path(key), pos: m.pos, entries: &[] }),
        }
    }

    pub(super) fn required<'n>(&mut self, m: &Map<'n>, key: &str) -> Option<&'n Node> {
        let node = m.get(key);
        if node.is_none() {
            self.error(m.pos, &m.path(key), "required field is missing");
        }
        node
    }

    /// Any scalar, as written. Plain `8080` or `true` are accepted as text: a string field has
    /// one reading, so refusing them would only be pedantic.
    pub(super) fn text<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n str> {
        match &node.value {
            Value::Scalar(s) => Some(&s.text),
            _ => {
                self.error(node.pos(), path, format!("expected a string, found {}", node.describe()));
                None
            }
        }
    }

    pub(super) fn checked_text(
        &mut self,
        node: &Node,
        path: &str,
        rule: fn(&str) -> Result<(), String>,
    ) -> Option<String> {
        let text = self.text(node, path)?;
        match rule(text) {
            Ok(()) => Some(text.to_string()),
            Err(message) => {
                self.error(node.pos(), path, message);
                None
            }
        }
    }

    pub(super) fn string(&mut self, m: &Map, key: &str, rule: fn(&str) -> Result<(), String>) -> Option<String> {
        self.checked_text(m.get(key)?, &m.path(key), rule)
    }

    /// A required string; "" when missing or invalid (already reported).
    pub(super) fn required_string(&mut self, m: &Map, key: &str, rule: fn(&str) -> Result<(), String>) -> String {
        self.required(m, key).and_then(|n| self.checked_text(n, &m.path(key), rule)).unwrap_or_default()
    }

    pub(super) fn integer<T: TryFrom<i128>>(&mut self, m: &Map, key: &str, range: RangeInclusive<i128>) -> Option<T> {
        let node = m.get(key)?;
        let path = m.path(key);
        let Some(value) = node.plain().and_then(|t| t.parse::<i128>().ok()) else {
            self.error(node.pos(), &path, format!("expected a whole number, found {}", node.describe()));
            return None;
        };
        if let Err(message) = validate::check_range(value, &range) {
            self.error(node.pos(), &path, message);
            return None;
        }
        T::try_from(value).ok()
    }

    pub(super) fn ratio(&mut self, m: &Map, key: &str) -> Option<f64> {
        let node = m.get(key)?;
        let path = m.path(key);
        let Some(value) = node.plain().and_then(|t| t.parse::<f64>().ok()).filter(|v| v.is_finite()) else {
            self.error(node.pos(), &path, format!("expected a number, found {}", node.describe()));
            return None;
        };
        match validate::check_ratio(value) {
            Ok(()) => Some(value),
            Err(message) => {
                self.error(node.pos(), &path, message);
                None
            }
        }
    }

    pub(super) fn boolean(&mut self, m: &Map, key: &str) -> Option<bool> {
        let node = m.get(key)?;
        match node.plain() {
            Some("true" | "True" | "TRUE") => Some(true),
            Some("false" | "False" | "FALSE") => Some(false),
            _ => {
                self.error(node.pos(), &m.path(key), format!("expected true or false, found {}", node.describe()));
                None
            }
        }
    }

    /// A duration such as `250ms`; `positive` refuses `0s` where zero would mean "fail at once".
    pub(super) fn duration(&mut self, m: &Map, key: &str, positive: bool) -> Option<Duration> {
        let node = m.get(key)?;
        let path = m.path(key);
        let text = self.text(node, &path)?;
        let checked =
            parse_duration(text).and_then(|d| if positive { validate::check_positive(d).map(|()| d) } else { Ok(d) });
        match checked {
            Ok(d) => Some(d),
            Err(message) => {
                self.error(node.pos(), &path, message);
                None
            }
        }
    }

    pub(super) fn address(&mut self, m: &Map, key: &str) -> Option<SocketAddr> {
        let node = m.get(key)?;
        let path = m.path(key);
        let text = self.text(node, &path)?;
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                let message = format!("invalid address {text:?}; write IP:PORT such as 127.0.0.1:8080 or [::1]:8080");
                self.error(node.pos(), &path, message);
                None
            }
        }
    }

    pub(super) fn required_address(&mut self, m: &Map, key: &str) -> Option<SocketAddr> {
        self.required(m, key)?;
        self.address(m, key)
    }

    /// One of a fixed set of names (an enum).
    pub(super) fn choice<T>(
        &mut self,
        m: &Map,
        key: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let node = m.get(key)?;
        let path = m.path(key);
        self.choice_node(node, &path, names, parse)
    }

    pub(super) fn choice_node<T>(
        &mut self,
        node: &Node,
        path: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let text = self.text(node, path)?;
        if let Some(value) = parse(text) {
            return Some(value);
        }
        let hint = nearest(text, names).map(|n| format!("did you mean {n:?}? ")).unwrap_or_default();
        self.error(node.pos(), path, format!("invalid value {text:?}; {hint}valid values: {}", names.join(", ")));
        None
    }

    /// A list's items with their paths; a missing list is empty.
    pub(super) fn list<'n>(&mut self, m: &Map<'n>, key: &str) -> Vec<(String, &'n Node)> {
        let Some(node) = m.get(key) else {
            return Vec::new();
        };
        let path = m.path(key);
        match &node.value {
            Value::Sequence(items) => items.iter().enumerate().map(|(i, n)| (format!("{path}[{i}]"), n)).collect(),
            _ => {
                self.error(node.pos(), &path, format!("expected a list, found {}", node.describe()));
                Vec::new()
            }
        }
    }

    /// A list of strings, each normalised by `map` and then checked by `rule`.
    pub(super) fn strings(
        &mut self,
        m: &Map,
        key: &str,
        map: fn(&str) -> String,
        rule: fn(&str) -> Result<(), String>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (path, node) in self.list(m, key) {
            if let Some(text) = self.text(node, &path).map(map) {
                match rule(&text) {
                    Ok(()) => out.push(text),
                    Err(message) => self.error(node.pos(), &path, message),
                }
            }
        }
        out
    }
}
