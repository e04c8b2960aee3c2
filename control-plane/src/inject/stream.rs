//! Splits a YAML stream into its documents' raw text, so that documents the injector leaves
//! alone are written back byte for byte, comments and all.

/// One document's source: everything from its `---` line (if any) to the next one.
#[derive(Debug, PartialEq)]
pub(crate) struct RawDocument<'a> {
    pub(crate) text: &'a str,
}

/// A `---` line starts a document: `---` alone, or followed by blanks or a comment. YAML lets
/// content follow the marker (`--- !tag`); such a line also splits, and keeps its text.
fn is_document_start(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

pub(crate) fn split(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if is_document_start(line) && at > start {
            docs.push(RawDocument { text: &text[start..at] });
            start = at;
        }
        at += line.len();
    }
    if at > start || docs.is_empty() {
        docs.push(RawDocument { text: &text[start..] });
    }
    docs
}

impl RawDocument<'_> {
    /// The lines before the content: the `---` marker, comments and blank lines. Kept when the
    /// rest of the document is rewritten.
    pub(crate) fn preamble(&self) -> String {
        let mut out = String::new();
        for line in self.text.split_inclusive('\n') {
            let t = line.trim();
            let marker_only = line.starts_with("---") && (t == "---" || t[3..].trim_start().starts_with('#'));
            if marker_only || t.is_empty() || t.starts_with('#') {
                out.push_str(line);
            } else {
                if line.starts_with("---") && !out.contains("---") {
                    out.push_str("---\n");
                }
                break;
            }
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(s: &str) -> Vec<&str> {
        split(s).into_iter().map(|d| d.text).collect()
    }

    #[test]
    fn splits_at_document_markers_only() {
        assert_eq!(
            texts("a: 1\n---\nb: 2\n--- # c\nc: |\n  ---x\n"),
            ["a: 1\n", "---\nb: 2\n", "--- # c\nc: |\n  ---x\n"]
        );
        assert_eq!(texts("---\na: 1\n"), ["---\na: 1\n"]);
        assert_eq!(texts(""), [""]);
        assert_eq!(texts("----\n"), ["----\n"], "not a marker");
        let joined: String = texts("# top\n---\n---\nx: 1").concat();
        assert_eq!(joined, "# top\n---\n---\nx: 1");
    }

    #[test]
    fn the_preamble_is_the_marker_and_leading_comments() {
        let d = RawDocument { text: "---\n# the web app\n\nkind: Pod\n# inner\n" };
        assert_eq!(d.preamble(), "---\n# the web app\n\n");
        assert_eq!(RawDocument { text: "kind: Pod\n" }.preamble(), "");
        assert_eq!(RawDocument { text: "--- !x\nkind: Pod\n" }.preamble(), "---\n");
    }
}
