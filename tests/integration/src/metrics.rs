//! Reads Prometheus text exposition: sums of a metric's samples filtered by labels.

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every sample in `text`; comment and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        None => {
            let space = line.find(' ')?;
            (&line[..space], Vec::new(), &line[space..])
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(rest) = text.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = text.find('=')?;
        let key = text[..eq].trim().to_string();
        let mut chars = text[eq + 1..].char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => {
                    end = Some(eq + 1 + i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key, value));
        text = &text[end?..];
    }
}

/// Sum of all samples named `name` whose labels include every `(label, value)` in `filters`.
pub fn metric_sum(text: &str, name: &str, filters: &[(&str, &str)]) -> f64 {
    parse(text)
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| filters.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .map(|s| s.value)
        .sum()
}

/// Whether any sample named `name` exists.
pub fn has_metric(text: &str, name: &str) -> bool {
    parse(text).iter().any(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP weft_requests_total Requests.
# TYPE weft_requests_total counter
weft_requests_total{direction="outbound",service="api",backend="api",code="200",classification="success"} 30
weft_requests_total{direction="outbound",service="api",backend="api-v2",code="503",classification="failure"} 2
weft_requests_total{direction="inbound",service="api",code="200",classification="success"} 7
weft_config_version 3
odd{path="a\"b}c"} 1.5
"#;

    #[test]
    fn sums_with_label_filters() {
        assert_eq!(metric_sum(TEXT, "weft_requests_total", &[]), 39.0);
        assert_eq!(metric_sum(TEXT, "weft_requests_total", &[("direction", "outbound")]), 32.0);
        assert_eq!(metric_sum(TEXT, "weft_requests_total", &[("code", "200"), ("service", "api")]), 37.0);
        assert_eq!(metric_sum(TEXT, "weft_config_version", &[]), 3.0);
        assert_eq!(metric_sum(TEXT, "missing", &[]), 0.0);
    }

    #[test]
    fn label_values_may_hold_quotes_and_braces() {
        let samples = parse(TEXT);
        let odd = samples.iter().find(|s| s.name == "odd").unwrap();
        assert_eq!(odd.label("path"), Some("a\"b}c"));
        assert_eq!(odd.value, 1.5);
    }
}
