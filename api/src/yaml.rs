//! A YAML node tree that remembers the line of every node (built from saphyr-parser events).
//!
//! Why not serde: a serde decoder stops at the first error, and `weft check` must print every
//! problem of a file at once, each with its file:line and field path. So YAML is parsed into this
//! marked tree first and `decode` walks it by hand, collecting errors as it goes.
//!
//! Scalars keep their raw text and whether they were quoted: the decoder resolves types per
//! field, so `"true"` stays a string and `timeout: 2s` never passes through a float.

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// One YAML node and where it starts (1-based line and column).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub line: usize,
    pub column: usize,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    /// Entries in source order; duplicate keys are kept so the decoder can report them.
    Mapping(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scalar {
    /// The text after YAML unescaping, before any type resolution.
    pub text: String,
    /// Quoted, block (`|`, `>`) or `!!str`-tagged: always a string, never a number or bool.
    pub quoted: bool,
}

impl Node {
    /// (line, column), for ordering problems as they appear in the file.
    pub fn pos(&self) -> (usize, usize) {
        (self.line, self.column)
    }

    /// The plain scalar text, or `None` for quoted scalars and collections.
    pub fn plain(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) if !s.quoted => Some(&s.text),
            _ => None,
        }
    }

    /// `~`, `null`, or nothing at all (`key:` with no value).
    pub fn is_null(&self) -> bool {
        matches!(self.plain(), Some("" | "~" | "null" | "Null" | "NULL"))
    }

    /// What the node is, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Sequence(_) => "a list".to_string(),
            Value::Mapping(_) => "a mapping".to_string(),
            Value::Scalar(_) if self.is_null() => "nothing".to_string(),
            Value::Scalar(s) if s.quoted => format!("the string {:?}", s.text),
            Value::Scalar(s) => format!("{:?}", s.text),
        }
    }
}

/// A YAML syntax error. Parsing stops there: YAML has no reliable way to resynchronise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The documents of a stream, in order, and the syntax error that ended it early, if any.
/// Documents completed before the error are kept so their own problems can be reported too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    pub documents: Vec<Node>,
    pub error: Option<SyntaxError>,
}

/// Aliases are expanded by copying, so a few nested aliases can blow up exponentially (the
/// "billion laughs" file); policy files are small, so a generous cap costs nobody anything.
const MAX_NODES: usize = 100_000;

/// Parses a whole (possibly multi-document) YAML stream.
pub fn parse_stream(text: &str) -> Stream {
    let mut builder = Builder::default();
    let mut stream = Stream::default();
    for event in Parser::new_from_str(text) {
        let result = match event {
            Ok((event, span)) => builder.on_event(event, span, &mut stream.documents),
            Err(e) => Err(SyntaxError {
                line: e.marker().line(),
                column: e.marker().col() + 1,
                message: e.info().to_string(),
            }),
        };
        if let Err(e) = result {
            stream.error = Some(e);
            break;
        }
    }
    stream
}

/// A collection whose children are still arriving.
enum Open {
    Sequence { start: Node, anchor: usize, items: Vec<Node> },
    Mapping { start: Node, anchor: usize, entries: Vec<(Node, Node)>, key: Option<Node> },
}

#[derive(Default)]
struct Builder {
    open: Vec<Open>,
    root: Option<Node>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
}

impl Builder {
    fn on_event(&mut self, event: Event<'_>, span: Span, documents: &mut Vec<Node>) -> Result<(), SyntaxError> {
        let (line, column) = (span.start.line(), span.start.col() + 1);
        let at = |value| Node { line, column, value };
        match event {
            Event::DocumentStart(_) => {
                self.root = None;
                // Anchors are scoped to their document.
                self.anchors.clear();
            }
            Event::DocumentEnd => documents.extend(self.root.take()),
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = style != ScalarStyle::Plain || is_str_tag(tag.as_ref());
                let node = at(Value::Scalar(Scalar { text: text.into_owned(), quoted }));
                self.complete(node, anchor, line, column)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open.push(Open::Sequence { start: at(Value::Sequence(Vec::new())), anchor, items: Vec::new() })
            }
            Event::MappingStart(anchor, _) => self.open.push(Open::Mapping {
                start: at(Value::Mapping(Vec::new())),
                anchor,
                entries: Vec::new(),
                key: None,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.open.pop() {
                    Some(Open::Sequence { mut start, anchor, items }) => {
                        start.value = Value::Sequence(items);
                        (start, anchor)
                    }
                    Some(Open::Mapping { mut start, anchor, entries, .. }) => {
                        start.value = Value::Mapping(entries);
                        (start, anchor)
                    }
                    None => return Err(syntax(line, column, "unbalanced collection end")),
                };
                self.complete(node, anchor, line, column)?;
            }
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| syntax(line, column, "alias refers to an anchor that is not complete yet"))?;
                self.complete(node, 0, line, column)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// Attaches a finished node to its parent (or makes it the document root).
    fn complete(&mut self, node: Node, anchor: usize, line: usize, column: usize) -> Result<(), SyntaxError> {
        self.nodes += count(&node);
        if self.nodes > MAX_NODES {
            return Err(syntax(line, column, "document too large (aliases expand to over 100000 nodes)"));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.open.last_mut() {
            None => self.root = Some(node),
            Some(Open::Sequence { items, .. }) => items.push(node),
            Some(Open::Mapping { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
        Ok(())
    }
}

fn count(node: &Node) -> usize {
    1 + match &node.value {
        Value::Scalar(_) => 0,
        Value::Sequence(items) => items.iter().map(count).sum(),
        Value::Mapping(entries) => entries.iter().map(|(k, v)| count(k) + count(v)).sum(),
    }
}

fn is_str_tag(tag: Option<&Cow<'_, Tag>>) -> bool {
    tag.is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str")
}

fn syntax(line: usize, column: usize, message: &str) -> SyntaxError {
    SyntaxError { line, column, message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> (&str, bool) {
        match &node.value {
            Value::Scalar(s) => (&s.text, s.quoted),
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn entries(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Mapping(e) => e,
            other => panic!("not a mapping: {other:?}"),
        }
    }

    #[test]
    fn marks_lines_and_columns() {
        let s = parse_stream("a: 1\nb:\n  c: [x, \"true\"]\n");
        assert_eq!(s.error, None);
        let root = &s.documents[0];
        assert_eq!((root.line, root.column), (1, 1));
        let e = entries(root);
        assert_eq!((e[0].0.line, scalar(&e[0].1)), (1, ("1", false)));
        let inner = entries(&e[1].1);
        assert_eq!((inner[0].0.line, inner[0].0.column), (3, 3));
        let Value::Sequence(items) = &inner[0].1.value else { panic!("not a list") };
        assert_eq!(scalar(&items[0]), ("x", false));
        assert_eq!(scalar(&items[1]), ("true", true));
        assert_eq!((items[1].line, items[1].column), (3, 10));
    }

    #[test]
    fn block_sequence_items_start_on_their_dash_line() {
        let s = parse_stream("rules:\n  - match: {}\n    timeout: 1s\n  - timeout: 2s\n");
        let e = entries(&s.documents[0]);
        let Value::Sequence(items) = &e[0].1.value else { panic!("not a list") };
        assert_eq!(items.iter().map(|n| n.line).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn multi_document_streams_and_empty_documents() {
        let s = parse_stream("a: 1\n---\n---\nb: 2\n");
        assert_eq!(s.error, None);
        assert_eq!(s.documents.len(), 3);
        assert!(s.documents[1].is_null());
        assert_eq!(s.documents[2].line, 4);
    }

    #[test]
    fn str_tag_and_block_scalars_count_as_quoted() {
        let s = parse_stream("a: !!str 5\nb: |\n  text\nc: null\n");
        let e = entries(&s.documents[0]);
        assert_eq!(scalar(&e[0].1), ("5", true));
        assert_eq!(scalar(&e[1].1), ("text\n", true));
        assert!(e[2].1.is_null());
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let s = parse_stream("a: &x {k: v}\nb: *x\n");
        let e = entries(&s.documents[0]);
        assert_eq!(e[0].1.value, e[1].1.value);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let p = i - 1;
            text.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let s = parse_stream(&text);
        assert!(s.error.unwrap().message.contains("too large"));
    }

    #[test]
    fn syntax_errors_keep_earlier_documents() {
        let s = parse_stream("a: 1\n---\nb: [1, 2\nc: 3\n");
        assert_eq!(s.documents.len(), 1);
        let e = s.error.unwrap();
        assert!(e.line >= 3, "{e:?}");
    }
}
