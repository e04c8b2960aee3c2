//! Writes a [`Yaml`] tree as block-style YAML, the way `kubectl get -o yaml` lays it out.
//!
//! Why not a serde YAML crate: the tree already knows each scalar's style, so the writer only
//! decides quoting, and a string is written plain only when no YAML 1.1 or 1.2 reader can take
//! it for anything else; otherwise it is double-quoted with JSON escapes (valid YAML) or, when it
//! spans lines, a literal block. Writing is deterministic, so reading the output back and
//! writing it again gives the same bytes: what makes `weft inject` idempotent.

use super::tree::Yaml;

/// One document's text, ending with a newline.
pub(crate) fn document(y: &Yaml) -> String {
    let mut out = String::new();
    match y {
        Yaml::Map(entries) if !entries.is_empty() => mapping(&mut out, entries, 0),
        Yaml::Seq(items) if !items.is_empty() => sequence(&mut out, items, 0),
        other => {
            out.push_str(&inline_scalar(other).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

fn pad(out: &mut String, indent: usize) {
    out.extend(std::iter::repeat_n(' ', indent));
}

fn mapping(out: &mut String, entries: &[(String, Yaml)], indent: usize) {
    for (key, value) in entries {
        pad(out, indent);
        out.push_str(&key_text(key));
        out.push(':');
        value_after_key(out, value, indent);
    }
}

/// Writes what follows `key:`, nested collections on the lines below.
fn value_after_key(out: &mut String, value: &Yaml, indent: usize) {
    match value {
        Yaml::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            mapping(out, entries, indent + 2);
        }
        // kubectl's layout: a list under a key starts at the key's own column.
        Yaml::Seq(items) if !items.is_empty() => {
            out.push('\n');
            sequence(out, items, indent);
        }
        scalar => scalar_after(out, scalar, indent + 2),
    }
}

fn sequence(out: &mut String, items: &[Yaml], indent: usize) {
    for item in items {
        match item {
            Yaml::Map(entries) if !entries.is_empty() => nested_first_line_dashed(out, indent, |o| {
                mapping(o, entries, indent + 2);
            }),
            Yaml::Seq(inner) if !inner.is_empty() => nested_first_line_dashed(out, indent, |o| {
                sequence(o, inner, indent + 2);
            }),
            scalar => {
                pad(out, indent);
                out.push('-');
                scalar_after(out, scalar, indent + 2);
            }
        }
    }
}

/// Writes a collection at `indent + 2`, then turns its first line's indentation into `- `.
fn nested_first_line_dashed(out: &mut String, indent: usize, write: impl FnOnce(&mut String)) {
    let start = out.len();
    write(out);
    out.replace_range(start + indent..start + indent + 1, "-");
}

/// ` value\n`, or ` |` and the lines of a literal block indented to `indent`.
fn scalar_after(out: &mut String, scalar: &Yaml, indent: usize) {
    if let Some(text) = inline_scalar(scalar) {
        out.push(' ');
        out.push_str(&text);
        out.push('\n');
        return;
    }
    let Yaml::Str(s) = scalar else { return };
    out.push_str(if s.ends_with('\n') { " |\n" } else { " |-\n" });
    for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
        if !line.is_empty() {
            pad(out, indent);
            out.push_str(line);
        }
        out.push('\n');
    }
}

/// The scalar on one line, or `None` for a string best written as a literal block.
fn inline_scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::Plain(s) if s.is_empty() => Some("null".to_string()),
        Yaml::Plain(s) if !s.contains('\n') => Some(s.clone()),
        Yaml::Plain(s) | Yaml::Str(s) if fits_literal_block(s) => None,
        Yaml::Plain(s) | Yaml::Str(s) if is_safe_plain(s) => Some(s.clone()),
        Yaml::Plain(s) | Yaml::Str(s) => Some(json_quoted(s)),
        Yaml::Map(_) => Some("{}".to_string()),
        Yaml::Seq(_) => Some("[]".to_string()),
    }
}

fn key_text(key: &str) -> String {
    if is_safe_plain(key) { key.to_string() } else { json_quoted(key) }
}

fn json_quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// Multi-line text that a `|` or `|-` block holds exactly: one trailing newline at most, a first
/// line that does not start with a space (that would need an indentation indicator), and no
/// control characters but tabs.
fn fits_literal_block(s: &str) -> bool {
    let body = s.strip_suffix('\n').unwrap_or(s);
    body.contains('\n')
        && !body.ends_with('\n')
        && !body.starts_with([' ', '\n'])
        && !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t')
        && !s.contains(['\u{85}', '\u{2028}', '\u{2029}', '\u{feff}'])
}

/// Whether `s` reads back as the same string from a plain scalar under YAML 1.1 and 1.2 (the
/// Kubernetes tools read 1.1: `on`, `no` and `y` are booleans there). Conservative on purpose:
/// anything starting with a digit, a sign or a dot is quoted.
fn is_safe_plain(s: &str) -> bool {
    const WORDS: [&str; 10] = ["y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"];
    let Some(first) = s.chars().next() else { return false };
    // Flags such as `--config` read as strings; `-1` and `- x` do not get here.
    let flag = s.trim_start_matches('-');
    let is_flag = s.len() - flag.len() <= 2 && flag.starts_with(|c: char| c.is_ascii_alphabetic());
    (first.is_ascii_alphabetic() || first == '/' || is_flag)
        && s.chars().all(|c| c.is_ascii_alphanumeric() || " ._/-+=@:".contains(c))
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.ends_with([':', ' '])
        && !WORDS.iter().any(|w| s.eq_ignore_ascii_case(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reread(text: &str) -> Yaml {
        Yaml::from_node(&weft_api::yaml::parse_stream(text).documents[0]).unwrap()
    }

    #[test]
    fn writes_kubectl_layout() {
        let y = Yaml::map([
            ("kind", Yaml::str("Pod")),
            ("metadata", Yaml::map([("name", Yaml::str("web")), ("labels", Yaml::Map(vec![]))])),
            (
                "spec",
                Yaml::map([(
                    "containers",
                    Yaml::Seq(vec![Yaml::map([
                        ("name", Yaml::str("app")),
                        (
                            "args",
                            Yaml::Seq(vec![Yaml::str("-c"), Yaml::str("echo hi"), Yaml::str("-"), Yaml::str("---x")]),
                        ),
                        ("ports", Yaml::Seq(vec![Yaml::map([("containerPort", Yaml::int(8080))])])),
                    ])]),
                )]),
            ),
        ]);
        let text = document(&y);
        let want = "kind: Pod\nmetadata:\n  name: web\n  labels: {}\nspec:\n  containers:\n  - name: app\n    args:\n    - -c\n    - echo hi\n    - \"-\"\n    - \"---x\"\n    ports:\n    - containerPort: 8080\n";
        assert_eq!(text, want);
        assert_eq!(document(&reread(&text)), text, "strings written plain read back plain, as the same text");
    }

    #[test]
    fn strings_that_look_like_other_types_are_quoted() {
        for s in [
            "8080", "true", "on", "No", "y", "~", "null", "1.5", "-1", ".inf", "", " x", "a: b", "a #b", "x:", "*a",
            "&a", "!t", "@x", "{a}", "[a]", "%x", "`x", "'x", "\"x", "100m",
        ] {
            let y = Yaml::map([("k", Yaml::str(s))]);
            let text = document(&y);
            assert!(text.starts_with("k: \""), "{s:?} written as {text:?}");
            assert_eq!(reread(&text), y, "{s:?}");
        }
        for s in ["web", "https://weft-control.weft:8086", "/var/run/weft", "weft.dev/inject", "echo hi", "a=b"] {
            assert_eq!(document(&Yaml::map([("k", Yaml::str(s))])), format!("k: {s}\n"));
        }
    }

    #[test]
    fn multi_line_strings_become_literal_blocks_that_read_back_the_same() {
        for s in ["a\nb\n", "a\n\n  b", "kind: Proxy\nspec:\n  service: web\n"] {
            let y = Yaml::map([("k", Yaml::Seq(vec![Yaml::str(s)])), ("m", Yaml::str(s))]);
            let text = document(&y);
            assert!(text.contains('|'), "{text}");
            assert_eq!(reread(&text), y, "{s:?} as {text}");
            assert_eq!(document(&reread(&text)), text);
        }
        for s in [" lead\nx", "a\nb\n\n", "a\r\nb"] {
            let y = Yaml::map([("k", Yaml::str(s))]);
            assert!(document(&y).starts_with("k: \""), "{s:?}");
            assert_eq!(reread(&document(&y)), y);
        }
    }

    #[test]
    fn plain_scalars_keep_their_text_and_nested_lists_read_back() {
        let y = reread("a: 0x1F\nb:\nc: [[1, 2], []]\nd: {\"x y\": 1, \"a:b\": 2}\n");
        let text = document(&y);
        assert_eq!(text, "a: 0x1F\nb: null\nc:\n- - 1\n  - 2\n- []\nd:\n  x y: 1\n  a:b: 2\n");
        assert_eq!(document(&reread(&text)), text);
    }
}
