//! Policy YAML for tests, in the format of DESIGN.md "Policy YAML".
//!
//! Tests write each document's `spec` by hand (so the YAML under test is visible in the test)
//! and these helpers add the `apiVersion`/`kind`/`metadata` frame. Everything lives in the
//! `default` namespace.

use std::fmt::Write;
use std::net::SocketAddr;

pub const NAMESPACE: &str = "default";

/// One YAML document of `kind` named `name`, with `spec` (YAML text, any indentation) nested
/// under `spec:`. Starts with a document separator so documents can be concatenated.
pub fn document(kind: &str, name: &str, spec: &str) -> String {
    let mut out = format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n"
    );
    for line in dedent(spec).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// A `Service` on port 80 speaking `protocol` (`http`, `http2`, `grpc`, `tcp`), with these
/// endpoints at weight 1.
pub fn service(name: &str, protocol: &str, endpoints: &[SocketAddr]) -> String {
    let weighted: Vec<(SocketAddr, u32)> = endpoints.iter().map(|a| (*a, 1)).collect();
    service_weighted(name, protocol, &weighted)
}

/// A `Service` like [`service`], with an explicit weight per endpoint.
pub fn service_weighted(name: &str, protocol: &str, endpoints: &[(SocketAddr, u32)]) -> String {
    let mut spec = format!("ports: [{{port: 80, protocol: {protocol}}}]\n");
    if endpoints.is_empty() {
        spec.push_str("endpoints: []\n");
    } else {
        spec.push_str("endpoints:\n");
        for (addr, weight) in endpoints {
            let _ = writeln!(spec, "  - {{address: \"{addr}\", weight: {weight}}}");
        }
    }
    document("Service", name, &spec)
}

/// A `Route` sending every path of `service` to it, with `settings` (YAML lines such as
/// `timeout: 1s` or `retry: {…}`) on its one rule.
pub fn catch_all_route(service: &str, settings: &[&str]) -> String {
    let mut rule = format!(
        "service: {service}\nrules:\n  - match: {{pathPrefix: /}}\n    backends: [{{service: {service}, weight: 1}}]\n"
    );
    for line in settings {
        let _ = writeln!(rule, "    {line}");
    }
    document("Route", service, &rule)
}

/// A `TrafficPolicy` for `service` with `spec` (YAML lines) after its `service:` line.
pub fn traffic_policy(service: &str, spec: &str) -> String {
    document("TrafficPolicy", service, &format!("service: {service}\n{spec}"))
}

/// Removes the common leading indentation and surrounding blank lines of an indented literal.
fn dedent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let indent =
        lines.iter().filter(|l| !l.trim().is_empty()).map(|l| l.len() - l.trim_start().len()).min().unwrap_or(0);
    let body: Vec<&str> = lines.iter().map(|l| if l.len() >= indent { &l[indent..] } else { l.trim_start() }).collect();
    let start = body.iter().position(|l| !l.trim().is_empty()).unwrap_or(body.len());
    let end = body.iter().rposition(|l| !l.trim().is_empty()).map_or(start, |i| i + 1);
    body[start..end].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_nests_dedented_spec() {
        let doc = document("Route", "r", "\n    service: api\n    rules:\n      - backends: []\n");
        assert_eq!(
            doc,
            "---\napiVersion: weft.dev/v1alpha1\nkind: Route\nmetadata: {name: r, namespace: default}\n\
             spec:\n  service: api\n  rules:\n    - backends: []\n"
        );
    }

    #[test]
    fn service_lists_endpoints_with_weights() {
        let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let doc = service_weighted("api", "http2", &[(addr, 3)]);
        assert!(doc.contains("  ports: [{port: 80, protocol: http2}]\n"));
        assert!(doc.contains("    - {address: \"127.0.0.1:9001\", weight: 3}\n"));
    }
}
