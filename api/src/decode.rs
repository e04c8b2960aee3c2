//! Turns marked YAML nodes into policy documents, collecting every error with line and field path.
//!
//! Each field is read on its own: a bad value is reported and replaced by its default, so one
//! pass finds every problem in a file. Value rules come from `validate` and are applied here,
//! where the line of the offending value is still known.
//!
//! `reader` holds the typed field readers, `kinds` the walk over each kind's `spec`.

mod kinds;
mod reader;

use crate::schema;
use crate::validate::check_name;
use crate::yaml::{self, Node};
use crate::*;
use reader::{Decoder, Map};

/// Decodes every document in `text`, or returns every problem found in any of them.
pub fn decode_documents(file: &str, text: &str) -> Result<Vec<Document>, Diagnostics> {
    let (docs, problems) = decode_best_effort(file, text);
    problems.into_result().map(|()| docs)
}

/// Decodes what can be decoded: documents of a known kind come back with any bad or missing
/// value replaced by its default (a missing required name by ""), next to every problem found.
/// `weft check` uses this so that one broken document does not hide what a whole folder
/// declares (a Route elsewhere naming that Service must not be reported as dangling).
pub fn decode_best_effort(file: &str, text: &str) -> (Vec<Document>, Diagnostics) {
    let decoded = decode_file(file, text);
    (decoded.documents, decoded.problems)
}

/// Decodes a weft.dev object as the Kubernetes API serves it (JSON, the CRD schema's defaults
/// filled in) with the decoder files go through, so a cluster object meets the same rules and
/// messages as a file. A policy watcher hands each listed or watched object here, then checks
/// the set as `check_files` does. Only apiVersion, kind, metadata.name, metadata.namespace and
/// spec are read: the rest of the metadata (labels, uid, managedFields) and any status are the
/// API server's. Problems name the object by `source` (e.g. `routes.weft.dev/shop/api`) and
/// have line 0: an object has no lines, its field path says where.
pub fn decode_object(source: &str, object: &serde_json::Value) -> Result<Document, Diagnostics> {
    let metadata = &object["metadata"];
    let mut trimmed = serde_json::json!({"kind": object["kind"], "metadata": {"name": metadata["name"]}});
    for (key, value) in [("apiVersion", &object["apiVersion"]), ("spec", &object["spec"])] {
        if !value.is_null() {
            trimmed[key] = value.clone();
        }
    }
    if !metadata["namespace"].is_null() {
        trimmed["metadata"]["namespace"] = metadata["namespace"].clone();
    }
    // JSON is YAML: one line of it goes through the same marked-node decoder as a file.
    let (docs, mut problems) = decode_best_effort(source, &trimmed.to_string());
    for problem in &mut problems.0 {
        problem.line = 0;
    }
    problems.into_result()?;
    docs.into_iter().next().ok_or_else(|| {
        let message = "not a weft.dev object".to_string();
        Diagnostics(vec![Diagnostic { file: source.to_string(), line: 0, path: String::new(), message }])
    })
}

/// A file's documents (best effort), its problems, and whether the documents show everything
/// the file declares.
pub(crate) struct Decoded {
    pub(crate) documents: Vec<Document>,
    pub(crate) problems: Diagnostics,
    /// False after a YAML syntax error (the rest of the file is unread), a document whose kind
    /// could not be read, or one without a usable name: the file may declare a service that
    /// `documents` does not show.
    pub(crate) complete: bool,
}

pub(crate) fn decode_file(file: &str, text: &str) -> Decoded {
    // YAML takes a lone CR as a line break, editors and `grep -n` do not: every line number
    // after one would point past where the problem is (found by fuzz/policy_decode).
    if let Some(at) =
        text.bytes().enumerate().position(|(i, b)| b == b'\r' && text.as_bytes().get(i + 1) != Some(&b'\n'))
    {
        let before = &text[..at];
        let line = 1 + before.matches('\n').count();
        let column = at - before.rfind('\n').map_or(0, |n| n + 1) + 1;
        let message = format!("a carriage return without a line feed (column {column}); end lines with LF or CRLF");
        let problem = Diagnostic { file: file.to_string(), line, path: String::new(), message };
        return Decoded { documents: Vec::new(), problems: Diagnostics(vec![problem]), complete: false };
    }
    let stream = yaml::parse_stream(text);
    let mut d = Decoder { file, out: Vec::new(), lines: FieldLines::default() };
    let nodes: Vec<&Node> = stream.documents.iter().filter(|n| !n.is_null()).collect();
    let docs: Vec<Document> = nodes.iter().filter_map(|n| d.document(n)).collect();
    let complete =
        stream.error.is_none() && docs.len() == nodes.len() && docs.iter().all(|doc| !doc.metadata().name.is_empty());
    if let Some(e) = stream.error {
        d.error((e.line, e.column), "", format!("invalid YAML: {} (column {})", e.message, e.column));
    }
    // Fields are decoded in the order the code reads them; users read the file top to bottom.
    d.out.sort_by_key(|(at, _)| *at);
    let problems = d.out.into_iter().map(|(_, diagnostic)| diagnostic).collect();
    Decoded { documents: docs, problems: Diagnostics(problems), complete }
}

/// The candidate closest to `word` by edit distance (ignoring case), if it is close enough to be
/// a plausible typo rather than a different word.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (edit_distance(&word, &c.to_lowercase()), *c))
        .filter(|(d, _)| *d <= limit && *d < word.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars, one row at a time.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

impl Decoder<'_> {
    fn document(&mut self, root: &Node) -> Option<Document> {
        let top = self.mapping(root, String::new(), &["apiVersion", "kind", "metadata", "spec"])?;
        let line = top.entries.first().map_or(root.line, |(k, _)| k.line);
        // apiVersion may be left out (DESIGN.md's own examples do); a different one is refused so
        // that a future v1 file is not silently read with v1alpha1 meanings.
        if let Some(version) = self.string(&top, "apiVersion", |_| Ok(()))
            && version != API_VERSION
        {
            let at = top.get("apiVersion").map_or(top.pos, Node::pos);
            self.error(at, "apiVersion", format!("unsupported apiVersion {version:?}; expected {API_VERSION:?}"));
        }
        let kind = self.kind(&top);
        let metadata = self.metadata(&top, line);
        let kind = kind?;
        let fields = schema::kind(kind).map(|k| k.spec.names()).unwrap_or_default();
        let spec = self.sub_or_empty(&top, "spec", &fields)?;
        self.lines = FieldLines::default();
        let mut doc = match kind {
            "Service" => Document::Service(Service { metadata, spec: self.service(&spec) }),
            "Route" => Document::Route(Route { metadata, spec: self.route(&spec) }),
            "TrafficPolicy" => Document::TrafficPolicy(TrafficPolicy { metadata, spec: self.traffic_policy(&spec) }),
            "AuthorizationPolicy" => {
                Document::AuthorizationPolicy(AuthorizationPolicy { metadata, spec: self.authorization(&spec) })
            }
            "Mesh" => Document::Mesh(Mesh { metadata, spec: self.mesh(&spec) }),
            _ => Document::Proxy(Proxy { metadata, spec: self.proxy(&spec) }),
        };
        doc.metadata_mut().fields = std::mem::take(&mut self.lines);
        Some(doc)
    }

    fn kind(&mut self, top: &Map) -> Option<&'static str> {
        let node = self.required(top, "kind")?;
        let text = self.text(node, "kind")?;
        if let Some(kind) = schema::kind(text) {
            return Some(kind.name);
        }
        let kinds = schema::kind_names();
        let hint = match nearest(text, &kinds) {
            Some(near) => format!("did you mean {near:?}?"),
            None => format!("expected one of: {}", kinds.join(", ")),
        };
        self.error(node.pos(), "kind", format!("unknown kind {text:?}; {hint}"));
        None
    }

    fn metadata(&mut self, top: &Map, line: usize) -> Metadata {
        let Some(m) =
            self.required(top, "metadata").and_then(|n| self.mapping(n, "metadata".into(), &schema::METADATA.names()))
        else {
            return Metadata {
                name: String::new(),
                namespace: DEFAULT_NAMESPACE.to_string(),
                line,
                fields: FieldLines::default(),
            };
        };
        Metadata {
            name: self.required_string(&m, "name", check_name),
            namespace: self.string(&m, "namespace", check_name).unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            line,
            fields: FieldLines::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    pub(super) fn decode(text: &str) -> Vec<Document> {
        decode_documents("f.yaml", text).unwrap_or_else(|e| panic!("unexpected problems:\n{e}"))
    }

    pub(super) fn problems(text: &str) -> Vec<String> {
        match decode_documents("f.yaml", text) {
            Ok(_) => Vec::new(),
            Err(d) => d.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_lone_carriage_return_is_refused_at_its_own_line() {
        // YAML counts a lone CR as a line break, so a later error was reported on line 62 of an
        // 8-line file (fuzz/policy_decode). CRLF files decode as before.
        let crlf = "apiVersion: weft.dev/v1alpha1\r\nkind: Mesh\r\nmetadata: {name: default}\r\n";
        assert_eq!(decode(crlf).len(), 1);
        let lone = "apiVersion: weft.dev/v1alpha1\nkind: Mesh # old\r\r\rnote\nmetadata: {name: default}\n";
        assert_eq!(
            problems(lone),
            ["f.yaml:2: a carriage return without a line feed (column 17); end lines with LF or CRLF"]
        );
        assert_eq!(
            problems("kind: Mesh\r"),
            ["f.yaml:1: a carriage return without a line feed (column 11); end lines with LF or CRLF"]
        );
    }

    pub(super) fn meta(name: &str, namespace: &str, line: usize) -> Metadata {
        Metadata { name: name.to_string(), namespace: namespace.to_string(), line, fields: FieldLines::default() }
    }

    pub(super) fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_error_in_every_document_with_line_and_path() {
        let text = r#"apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: api}
spec:
  service: payments
  rules:
    - match: {pathPrefix: v1, methods: [GET]}
      timout: 2s
      retry: {attempts: 20, on: [5xx, conect-failure], perTryTimeout: 2sec}
      backends: [{service: payments, weight: 0}]
---
apiVersion: weft.dev/v2
kind: TrafficPolicy
metadata: {namespace: shop}
spec:
  service: payments
  loadBalancer: fastest
  limits: {maxConcurrentRequests: "10"}
  retryBudget: {ratio: 1.5}
  outlierDetection: 5
---
kind: Servce
metadata: {name: x}
"#;
        assert_eq!(
            problems(text),
            [
                "f.yaml:7: spec.rules[0].match.pathPrefix: path \"v1\" must start with '/'",
                "f.yaml:8: spec.rules[0].timout: unknown field; did you mean \"timeout\"?",
                "f.yaml:9: spec.rules[0].retry.attempts: must be at most 10, found 20",
                "f.yaml:9: spec.rules[0].retry.on[1]: invalid value \"conect-failure\"; did you mean \"connect-failure\"? valid values: 5xx, gateway-error, connect-failure, reset, timeout",
                "f.yaml:9: spec.rules[0].retry.perTryTimeout: unknown unit \"sec\" in duration \"2sec\"; use ms, s, m or h",
                "f.yaml:10: spec.rules[0].backends[0].weight: must be at least 1, found 0",
                "f.yaml:12: apiVersion: unsupported apiVersion \"weft.dev/v2\"; expected \"weft.dev/v1alpha1\"",
                "f.yaml:14: metadata.name: required field is missing",
                "f.yaml:17: spec.loadBalancer: invalid value \"fastest\"; valid values: peak-ewma, round-robin, least-request",
                "f.yaml:18: spec.limits.maxConcurrentRequests: expected a whole number, found the string \"10\"",
                "f.yaml:19: spec.retryBudget.ratio: must be between 0 and 1, found 1.5",
                "f.yaml:20: spec.outlierDetection: expected a mapping, found \"5\"",
                "f.yaml:22: kind: unknown kind \"Servce\"; did you mean \"Service\"?",
            ]
        );
    }

    #[test]
    fn metadata_and_kind_rules() {
        let docs = decode("\n# comment\nkind: Mesh\nmetadata:\n  name: m\n");
        assert_eq!(docs[0].metadata(), &meta("m", "default", 3));
        assert_eq!(
            problems("spec: {}\n"),
            ["f.yaml:1: kind: required field is missing", "f.yaml:1: metadata: required field is missing"]
        );
        assert_eq!(
            problems("kind: Widget\nmetadata: {name: Bad_Name, labels: {}}\n"),
            [
                "f.yaml:1: kind: unknown kind \"Widget\"; expected one of: Service, Route, TrafficPolicy, AuthorizationPolicy, Mesh, Proxy",
                "f.yaml:2: metadata.name: invalid name \"Bad_Name\"; use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
                "f.yaml:2: metadata.labels: unknown field; expected one of: name, namespace",
            ]
        );
    }

    #[test]
    fn type_errors() {
        let text = r#"kind: Proxy
metadata: {name: p}
spec:
  service: [p]
  admin: {listen: "localhost:4191"}
  log: {accessLog: "true", format: xml}
  upstreams: {service: a}
  workers: 2.5
  service: q
"#;
        assert_eq!(
            problems(text),
            [
                "f.yaml:4: spec.service: expected a string, found a list",
                "f.yaml:5: spec.admin.listen: invalid address \"localhost:4191\"; write IP:PORT such as 127.0.0.1:8080 or [::1]:8080",
                "f.yaml:6: spec.log.accessLog: expected true or false, found the string \"true\"",
                "f.yaml:6: spec.log.format: invalid value \"xml\"; valid values: text, json",
                "f.yaml:7: spec.upstreams: expected a list, found a mapping",
                "f.yaml:8: spec.workers: expected a whole number, found \"2.5\"",
                "f.yaml:9: spec.service: field is set twice",
            ]
        );
    }

    #[test]
    fn header_values_must_be_given() {
        let text = "kind: Route\nmetadata: {name: r}\nspec:\n  service: s\n  rules:\n  - match:\n      headers: {x-a: , X-B: 1, x-b: 2, \"bad name\": 3}\n";
        assert_eq!(
            problems(text),
            [
                "f.yaml:7: spec.rules[0].match.headers.x-a: expected the header's exact value (write \"\" for empty), found nothing",
                "f.yaml:7: spec.rules[0].match.headers.x-b: header is listed twice (names ignore case)",
                "f.yaml:7: spec.rules[0].match.headers.bad name: invalid header name \"bad name\"",
            ]
        );
    }

    #[test]
    fn empty_documents_are_skipped_and_syntax_errors_reported() {
        assert_eq!(decode("---\n---\n# nothing\n").len(), 0);
        let text = "kind: Mesh\nmetadata: {name: m, bogus: 1}\n---\nkind: Mesh\nmetadata: {name: [m\n";
        let found = problems(text);
        assert_eq!(found[0], "f.yaml:2: metadata.bogus: unknown field; expected one of: name, namespace");
        assert!(found[1].starts_with("f.yaml:6: invalid YAML: "), "{found:?}");
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn best_effort_keeps_documents_with_defaults() {
        let (docs, problems) =
            decode_best_effort("f.yaml", "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}], nope: 1}\n");
        assert_eq!(problems.0.len(), 2);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].metadata().name, "s");
    }

    #[test]
    fn a_cluster_object_decodes_as_its_file_does() {
        let file = "kind: Route\nmetadata: {name: api, namespace: shop}\nspec:\n  service: api\n  rules: [{timeout: 2s, backends: [{service: api}]}]\n";
        // As the API server returns it: its own metadata, a status, and the CRD's defaults filled in.
        let object = serde_json::json!({
            "apiVersion": "weft.dev/v1alpha1",
            "kind": "Route",
            "metadata": {"name": "api", "namespace": "shop", "uid": "0a1b", "labels": {"team": "x"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"service": "api", "rules": [{"timeout": "2s", "backends": [{"service": "api", "weight": 1}]}]},
            "status": {"observedGeneration": 1},
        });
        let decoded = decode_object("routes.weft.dev/shop/api", &object).unwrap();
        // The same meaning (lines aside: the object has none worth keeping).
        let json = |d: &Document| serde_json::to_value(d).unwrap();
        assert_eq!(json(&decoded), json(&decode(file)[0]));

        let mut bad = object.clone();
        bad["spec"]["rules"][0]["timout"] = serde_json::json!("1s");
        bad["spec"]["rules"][0]["backends"][0]["weight"] = serde_json::json!(0);
        let problems: Vec<String> =
            decode_object("routes.weft.dev/shop/api", &bad).unwrap_err().0.iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "routes.weft.dev/shop/api:0: spec.rules[0].backends[0].weight: must be at least 1, found 0",
                "routes.weft.dev/shop/api:0: spec.rules[0].timout: unknown field; did you mean \"timeout\"?",
            ]
        );
    }

    #[test]
    fn nearest_names() {
        assert_eq!(nearest("timout", &["timeout", "retry"]), Some("timeout"));
        assert_eq!(nearest("pathprefix", &["path", "pathPrefix"]), Some("pathPrefix"));
        assert_eq!(nearest("xyz", &["timeout", "retry"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
