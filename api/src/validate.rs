//! Semantic checks on decoded documents: value rules, cross-field rules, duplicates, references.
//!
//! The value rules (ranges, name and path shapes, SPIFFE ids) are small functions that the
//! decoder also calls at the exact node, so YAML users get the precise line. `validate_documents`
//! applies them again so that it is a complete check for documents however they were built;
//! here the line is the document's (or the rule's), which is as close as a typed document knows.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::decode::nearest;
use crate::{
    AuthorizationPolicy, ControlPlaneSpec, Diagnostics, Document, Mesh, Proxy, Route, RouteMatch, Service,
    TrafficPolicy,
};

/// Backend and endpoint weights. Zero is refused: "no traffic" is said by removing the entry.
pub(crate) const WEIGHT: RangeInclusive<i128> = 1..=u32::MAX as i128;
/// Retries after the first try; more than this turns an outage into a storm.
pub(crate) const RETRY_ATTEMPTS: RangeInclusive<i128> = 0..=10;
pub(crate) const PORT: RangeInclusive<i128> = 1..=u16::MAX as i128;
pub(crate) const PERCENT: RangeInclusive<i128> = 0..=100;
/// Limits, failure counts and byte sizes: zero would refuse everything.
pub(crate) const AT_LEAST_ONE_U32: RangeInclusive<i128> = 1..=u32::MAX as i128;
pub(crate) const ANY_U32: RangeInclusive<i128> = 0..=u32::MAX as i128;
pub(crate) const ANY_U64: RangeInclusive<i128> = 0..=u64::MAX as i128;
/// Runtime threads; far beyond any core count a sidecar gets.
pub(crate) const WORKERS: RangeInclusive<i128> = 0..=1024;

pub(crate) fn check_range(value: i128, range: &RangeInclusive<i128>) -> Result<(), String> {
    if range.contains(&value) {
        return Ok(());
    }
    let (min, max) = (*range.start(), *range.end());
    // Ranges that only exist to fit the integer type read better as a one-sided bound.
    let unbounded_above = max >= i128::from(u32::MAX);
    Err(if value < min && unbounded_above {
        format!("must be at least {min}, found {value}")
    } else if value > max && min == 0 {
        format!("must be at most {max}, found {value}")
    } else {
        format!("must be between {min} and {max}, found {value}")
    })
}

pub(crate) fn check_ratio(value: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&value) { Ok(()) } else { Err(format!("must be between 0 and 1, found {value}")) }
}

pub(crate) fn check_positive(d: Duration) -> Result<(), String> {
    if d.is_zero() { Err("must be longer than 0s".to_string()) } else { Ok(()) }
}

/// Names become DNS labels and `Host: <service>.<namespace>` parts, so they follow RFC 1123.
pub(crate) fn check_name(s: &str) -> Result<(), String> {
    let ok_chars = s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() {
        Err("must not be empty".to_string())
    } else if s.len() > 63 || !ok_chars || s.starts_with('-') || s.ends_with('-') {
        Err(format!(
            "invalid name {s:?}; use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// A reference to a service: `name` (in the referring document's namespace) or
/// `name.namespace`, the form callers use in `Host:`.
pub(crate) fn check_service_ref(s: &str) -> Result<(), String> {
    match s.split_once('.') {
        Some((name, ns)) => check_name(name)
            .and(check_name(ns))
            .map_err(|_| format!("invalid service reference {s:?}; write NAME or NAME.NAMESPACE in lower case")),
        None => check_name(s),
    }
}

/// (namespace, name) that a service reference written in `namespace` points at.
fn resolve<'a>(reference: &'a str, namespace: &'a str) -> (&'a str, &'a str) {
    match reference.split_once('.') {
        Some((name, ns)) => (ns, name),
        None => (namespace, reference),
    }
}

pub(crate) fn check_http_path(s: &str) -> Result<(), String> {
    if s.starts_with('/') { Ok(()) } else { Err(format!("path {s:?} must start with '/'")) }
}

/// A method is an HTTP token; the decoder upper-cases it first.
pub(crate) fn check_method(s: &str) -> Result<(), String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
        Ok(())
    } else {
        Err(format!("invalid method {s:?}; write e.g. GET or POST"))
    }
}

/// Header names are HTTP tokens; the decoder lower-cases them first.
pub(crate) fn check_header_name(s: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !s.is_empty() && s.bytes().all(tchar) { Ok(()) } else { Err(format!("invalid header name {s:?}")) }
}

pub(crate) fn check_trust_domain(s: &str) -> Result<(), String> {
    let ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
    if !s.is_empty() && s.bytes().all(ok) {
        Ok(())
    } else {
        Err(format!("invalid trust domain {s:?}; use lower-case letters, digits, '-', '.' and '_'"))
    }
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<account>`, the only shape the mesh CA issues.
pub(crate) fn check_spiffe_id(s: &str) -> Result<(), String> {
    crate::SpiffeId::parse(s).map(drop).map_err(|e| e.to_string())
}

pub(crate) fn check_url(s: &str) -> Result<(), String> {
    let host = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    match host {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err(format!("invalid address {s:?}; write http://HOST:PORT or https://HOST:PORT")),
    }
}

/// Whether `address` (`http://HOST:PORT…`, `https://…` or `HOST:PORT`) names a loopback host.
pub fn is_loopback_address(address: &str) -> bool {
    let rest = address.strip_prefix("https://").or_else(|| address.strip_prefix("http://")).unwrap_or(address);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How a proxy may reach its control plane: TLS needs the roots to verify it by, and a join
/// token (a bearer credential) never crosses a network in clear. Returns the problems with
/// `address` and with `trustBundleFile`.
fn check_control_plane_transport(cp: &ControlPlaneSpec) -> (Result<(), String>, Result<(), String>) {
    let tls = cp.address.starts_with("https://");
    let bundle = match (tls, &cp.trust_bundle_file) {
        (true, None) => Err("an https:// control plane needs trustBundleFile: the PEM roots its certificate must \
                             chain to (the mesh CA's ca.pem)"
            .to_string()),
        (false, Some(_)) => Err("trustBundleFile is used only with an https:// control-plane address".to_string()),
        _ => Ok(()),
    };
    let address = if !tls && cp.join_token_file.is_some() && !is_loopback_address(&cp.address) {
        Err(format!(
            "{:?} is plaintext and not on loopback: the join token would cross the network in clear; use https:// \
             with trustBundleFile",
            cp.address
        ))
    } else {
        Ok(())
    };
    (address, bundle)
}

pub(crate) fn check_not_empty(s: &str) -> Result<(), String> {
    if s.is_empty() { Err("must not be empty".to_string()) } else { Ok(()) }
}

/// Checks one file's documents: every value rule, fields that depend on each other, at most one
/// Proxy and one Mesh, and no two documents with the same kind, namespace and name.
pub fn validate_documents(file: &str, docs: &[Document]) -> Result<(), Diagnostics> {
    let mut c = Checker { file, out: Diagnostics::default() };
    let mut first_of_kind: HashMap<&str, usize> = HashMap::new();
    let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for doc in docs {
        let meta = doc.metadata();
        c.document(doc);
        if matches!(doc, Document::Proxy(_) | Document::Mesh(_)) {
            if let Some(first) = first_of_kind.get(doc.kind()) {
                let msg = format!("a file may hold only one {} document (the first is at line {first})", doc.kind());
                c.error(meta.line, "kind", msg);
            } else {
                first_of_kind.insert(doc.kind(), meta.line);
            }
        }
        let key = (doc.kind(), meta.namespace.as_str(), meta.name.as_str());
        match seen.get(&key) {
            Some(first) => {
                let msg = format!("{} {} is declared twice (first at line {first})", doc.kind(), qualified(doc));
                c.error(meta.line, "metadata.name", msg);
            }
            None => {
                seen.insert(key, meta.line);
            }
        }
    }
    c.out.into_result()
}

/// Checks a set of files that are deployed together (a policy folder): documents declared in
/// more than one file, and references to services that no file declares. Per-file problems are
/// `validate_documents`'s job and are not repeated here.
///
/// References are only checked when the set declares at least one Service: a folder for a
/// registry-fed control plane holds policy only, and its services come from the registry.
pub fn validate_set(files: &[(String, Vec<Document>)]) -> Result<(), Diagnostics> {
    let mut out = Diagnostics::default();
    let mut seen: HashMap<(&str, &str, &str), (&str, usize)> = HashMap::new();
    for (file, docs) in files {
        for doc in docs {
            let meta = doc.metadata();
            // A missing name was reported while decoding; it cannot clash with anything.
            if meta.name.is_empty() {
                continue;
            }
            let key = (doc.kind(), meta.namespace.as_str(), meta.name.as_str());
            match seen.get(&key) {
                Some((first_file, first_line)) if first_file != file => {
                    let msg =
                        format!("{} {} is also declared in {first_file}:{first_line}", doc.kind(), qualified(doc));
                    out.push(file, meta.line, "metadata.name", msg);
                }
                Some(_) => {}
                None => {
                    seen.insert(key, (file, meta.line));
                }
            }
        }
    }

    let services: HashSet<(&str, &str)> = files
        .iter()
        .flat_map(|(_, docs)| docs)
        .filter_map(|doc| match doc {
            Document::Service(s) => Some((s.metadata.namespace.as_str(), s.metadata.name.as_str())),
            _ => None,
        })
        .collect();
    if !services.is_empty() {
        for (file, docs) in files {
            for doc in docs {
                for (line, path, reference) in service_references(doc) {
                    let (ns, name) = resolve(reference, &doc.metadata().namespace);
                    if reference.is_empty() || services.contains(&(ns, name)) {
                        continue;
                    }
                    let mut msg = format!("service {name:?} is not declared in namespace {ns:?}");
                    let mut in_ns: Vec<&str> = services.iter().filter(|(n, _)| *n == ns).map(|(_, s)| *s).collect();
                    in_ns.sort_unstable(); // ties in `nearest` go the same way every run
                    if let Some(near) = nearest(name, &in_ns) {
                        msg.push_str(&format!("; did you mean {near:?}?"));
                    }
                    out.push(file, line, path, msg);
                }
            }
        }
    }
    out.into_result()
}

/// Every place a document names a service it depends on: (line, field path, service).
fn service_references(doc: &Document) -> Vec<(usize, String, &str)> {
    let line = doc.metadata().line;
    match doc {
        Document::Route(r) => {
            let mut refs = vec![(line, "spec.service".to_string(), r.spec.service.as_str())];
            for (i, rule) in r.spec.rules.iter().enumerate() {
                for (j, b) in rule.backends.iter().enumerate() {
                    refs.push((rule.line, format!("spec.rules[{i}].backends[{j}].service"), b.service.as_str()));
                }
            }
            refs
        }
        Document::TrafficPolicy(t) => {
            vec![(line, "spec.service".to_string(), t.spec.service.as_str())]
        }
        Document::AuthorizationPolicy(a) => {
            vec![(line, "spec.service".to_string(), a.spec.service.as_str())]
        }
        Document::Service(_) | Document::Mesh(_) | Document::Proxy(_) => Vec::new(),
    }
}

fn qualified(doc: &Document) -> String {
    let m = doc.metadata();
    format!("\"{}/{}\"", m.namespace, m.name)
}

struct Checker<'a> {
    file: &'a str,
    out: Diagnostics,
}

impl Checker<'_> {
    fn error(&mut self, line: usize, path: impl Into<String>, message: impl Into<String>) {
        self.out.push(self.file, line, path, message);
    }

    fn rule(&mut self, line: usize, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(line, path, message);
        }
    }

    fn document(&mut self, doc: &Document) {
        let meta = doc.metadata();
        self.rule(meta.line, "metadata.name", check_name(&meta.name));
        self.rule(meta.line, "metadata.namespace", check_name(&meta.namespace));
        match doc {
            Document::Service(s) => self.service(s),
            Document::Route(r) => self.route(r),
            Document::TrafficPolicy(t) => self.traffic_policy(t),
            Document::AuthorizationPolicy(a) => self.authorization(a),
            Document::Mesh(m) => self.mesh(m),
            Document::Proxy(p) => self.proxy(p),
        }
    }

    fn service(&mut self, s: &Service) {
        let line = s.metadata.line;
        let mut ports = HashSet::new();
        for (i, p) in s.spec.ports.iter().enumerate() {
            self.rule(line, format!("spec.ports[{i}].port"), check_range(p.port.into(), &PORT));
            if !ports.insert(p.port) {
                self.error(line, format!("spec.ports[{i}].port"), format!("port {} is listed twice", p.port));
            }
        }
        let mut addresses = HashSet::new();
        for (i, e) in s.spec.endpoints.iter().enumerate() {
            let path = format!("spec.endpoints[{i}]");
            self.rule(line, format!("{path}.weight"), check_range(e.weight.into(), &WEIGHT));
            if let Some(id) = &e.identity {
                self.rule(line, format!("{path}.identity"), check_spiffe_id(id));
            }
            if !addresses.insert(e.address) {
                self.error(line, format!("{path}.address"), format!("endpoint {} is listed twice", e.address));
            }
        }
    }

    fn route(&mut self, r: &Route) {
        let line = r.metadata.line;
        self.rule(line, "spec.service", check_service_ref(&r.spec.service));
        if r.spec.rules.is_empty() {
            self.error(line, "spec.rules", "a Route needs at least one rule");
        }
        for (i, rule) in r.spec.rules.iter().enumerate() {
            let path = format!("spec.rules[{i}]");
            self.route_match(rule.line, &format!("{path}.match"), &rule.matches);
            for (j, b) in rule.backends.iter().enumerate() {
                self.rule(rule.line, format!("{path}.backends[{j}].service"), check_service_ref(&b.service));
                self.rule(rule.line, format!("{path}.backends[{j}].weight"), check_range(b.weight.into(), &WEIGHT));
            }
            if let Some(t) = rule.timeout {
                self.rule(rule.line, format!("{path}.timeout"), check_positive(t));
            }
            if let Some(retry) = &rule.retry {
                let path = format!("{path}.retry");
                self.rule(rule.line, format!("{path}.attempts"), check_range(retry.attempts.into(), &RETRY_ATTEMPTS));
                if let Some(t) = retry.per_try_timeout {
                    self.rule(rule.line, format!("{path}.perTryTimeout"), check_positive(t));
                }
                if retry.backoff_base > retry.backoff_max {
                    self.error(rule.line, format!("{path}.backoffMax"), "must not be shorter than backoffBase");
                }
            }
        }
    }

    fn route_match(&mut self, line: usize, path: &str, m: &RouteMatch) {
        if let Some(p) = &m.path_prefix {
            self.rule(line, format!("{path}.pathPrefix"), check_http_path(p));
        }
        if let Some(p) = &m.path {
            self.rule(line, format!("{path}.path"), check_http_path(p));
        }
        if m.path.is_some() && m.path_prefix.is_some() {
            self.error(line, path, "set either path (exact) or pathPrefix, not both");
        }
        for (i, method) in m.methods.iter().enumerate() {
            self.rule(line, format!("{path}.methods[{i}]"), check_method(method));
        }
        for name in m.headers.keys() {
            self.rule(line, format!("{path}.headers.{name}"), check_header_name(name));
        }
    }

    fn traffic_policy(&mut self, t: &TrafficPolicy) {
        let (line, s) = (t.metadata.line, &t.spec);
        self.rule(line, "spec.service", check_service_ref(&s.service));
        self.rule(line, "spec.connectTimeout", check_positive(s.connect_timeout));
        self.rule(line, "spec.idleTimeout", check_positive(s.idle_timeout));
        let limits = &s.limits;
        let max_concurrent = check_range(limits.max_concurrent_requests.into(), &AT_LEAST_ONE_U32);
        self.rule(line, "spec.limits.maxConcurrentRequests", max_concurrent);
        let max_pending = check_range(limits.max_pending_requests.into(), &AT_LEAST_ONE_U32);
        self.rule(line, "spec.limits.maxPendingRequests", max_pending);
        let od = &s.outlier_detection;
        let failures = check_range(od.consecutive_failures.into(), &AT_LEAST_ONE_U32);
        self.rule(line, "spec.outlierDetection.consecutiveFailures", failures);
        self.rule(line, "spec.outlierDetection.baseEjection", check_positive(od.base_ejection));
        let percent = check_range(od.max_ejection_percent.into(), &PERCENT);
        self.rule(line, "spec.outlierDetection.maxEjectionPercent", percent);
        if od.base_ejection > od.max_ejection {
            self.error(line, "spec.outlierDetection.maxEjection", "must not be shorter than baseEjection");
        }
        self.rule(line, "spec.retryBudget.ratio", check_ratio(s.retry_budget.ratio));
    }

    fn authorization(&mut self, a: &AuthorizationPolicy) {
        self.rule(a.metadata.line, "spec.service", check_service_ref(&a.spec.service));
        for (i, rule) in a.spec.rules.iter().enumerate() {
            for (j, id) in rule.from.iter().enumerate() {
                self.rule(rule.line, format!("spec.rules[{i}].from[{j}]"), check_spiffe_id(id));
            }
            for (j, p) in rule.paths.iter().enumerate() {
                self.rule(rule.line, format!("spec.rules[{i}].paths[{j}]"), check_http_path(p));
            }
            for (j, m) in rule.methods.iter().enumerate() {
                self.rule(rule.line, format!("spec.rules[{i}].methods[{j}]"), check_method(m));
            }
        }
    }

    fn mesh(&mut self, m: &Mesh) {
        self.rule(m.metadata.line, "spec.trustDomain", check_trust_domain(&m.spec.trust_domain));
        self.rule(m.metadata.line, "spec.certTTL", check_positive(m.spec.cert_ttl));
    }

    fn proxy(&mut self, p: &Proxy) {
        let (line, s) = (p.metadata.line, &p.spec);
        self.rule(line, "spec.service", check_name(&s.service));
        for (i, u) in s.upstreams.iter().enumerate() {
            self.rule(line, format!("spec.upstreams[{i}].service"), check_service_ref(&u.service));
        }
        if let Some(tls) = &s.tls {
            self.rule(line, "spec.tls.certFile", check_not_empty(&tls.cert_file));
            self.rule(line, "spec.tls.keyFile", check_not_empty(&tls.key_file));
            self.rule(line, "spec.tls.bundleFile", check_not_empty(&tls.bundle_file));
        }
        if let Some(cp) = &s.control_plane {
            self.rule(line, "spec.controlPlane.address", check_url(&cp.address));
            let (address, bundle) = check_control_plane_transport(cp);
            self.rule(line, "spec.controlPlane.address", address);
            self.rule(line, "spec.controlPlane.trustBundleFile", bundle);
            if cp.address.starts_with("https://") && s.tls.is_none() && cp.join_token_file.is_none() {
                let msg = "an https:// control plane knows a proxy by its mesh certificate: set joinTokenFile (or tls \
                           files) so this proxy has one";
                self.error(line, "spec.controlPlane.joinTokenFile", msg.to_string());
            }
        }
        self.rule(line, "spec.workers", check_range(s.workers.into(), &WORKERS));
        let header_bytes = check_range(s.http.max_header_bytes.into(), &AT_LEAST_ONE_U32);
        self.rule(line, "spec.http.maxHeaderBytes", header_bytes);
        self.rule(line, "spec.http.headerReadTimeout", check_positive(s.http.header_read_timeout));
        self.rule(line, "spec.http.clientIdleTimeout", check_positive(s.http.client_idle_timeout));
        self.rule(line, "spec.log.level", check_not_empty(&s.log.level));

        // Port 0 asks the OS for a free port, so several such listeners never collide.
        let mut listeners = Vec::new();
        if let Some(i) = &s.inbound {
            listeners.push(("spec.inbound.listen".to_string(), i.listen));
        }
        if let Some(o) = &s.outbound {
            listeners.push(("spec.outbound.listen".to_string(), o.listen));
        }
        listeners.push(("spec.admin.listen".to_string(), s.admin.listen));
        for (i, u) in s.upstreams.iter().enumerate() {
            listeners.push((format!("spec.upstreams[{i}].listen"), u.listen));
        }
        for (i, (path, addr)) in listeners.iter().enumerate() {
            let earlier = listeners[..i].iter().find(|(_, a)| a == addr && a.port() != 0);
            if let Some((first, _)) = earlier {
                self.error(line, path.as_str(), format!("{addr} is already used by {first}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_documents;

    /// Decodes (which must succeed) and validates, returning the problems as printed.
    fn problems(text: &str) -> Vec<String> {
        let docs = decode_documents("f.yaml", text).unwrap_or_else(|e| panic!("decode failed:\n{e}"));
        match validate_documents("f.yaml", &docs) {
            Ok(()) => Vec::new(),
            Err(d) => d.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn set(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<(String, Vec<Document>)> =
            files.iter().map(|(f, t)| (f.to_string(), decode_documents(f, t).unwrap())).collect();
        match validate_set(&files) {
            Ok(()) => Vec::new(),
            Err(d) => d.0.iter().map(ToString::to_string).collect(),
        }
    }

    const SERVICE: &str = "kind: Service\nmetadata: {name: payments, namespace: shop}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn value_rules() {
        assert!(check_range(0, &WEIGHT).unwrap_err().contains("at least 1"));
        assert!(check_range(11, &RETRY_ATTEMPTS).unwrap_err().contains("at most 10"));
        assert!(check_range(0, &PORT).unwrap_err().contains("between 1 and 65535"));
        assert!(check_ratio(1.5).is_err() && check_ratio(0.0).is_ok());
        assert!(check_name("payments-v2").is_ok());
        for bad in ["", "Payments", "-a", "a.b", "a_b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_spiffe_id("spiffe://cluster.local/ns/shop/sa/web").is_ok());
        for bad in ["spiffe://cluster.local", "spiffe:///ns", "http://x/y", "spiffe://UP/x", "spiffe://d/"] {
            assert!(check_spiffe_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_http_path("v1").is_err());
        assert!(check_service_ref("payments.shop").is_ok() && check_service_ref("payments").is_ok());
        assert!(check_service_ref("a.b.c").is_err() && check_service_ref("A.b").is_err());
        assert!(check_url("https://weft-control:8086").is_ok() && check_url("weft:8086").is_err());
    }

    #[test]
    fn a_control_plane_is_reached_over_tls_unless_it_is_on_loopback() {
        let proxy = |cp: &str| {
            problems(&format!("kind: Proxy\nmetadata: {{name: p}}\nspec:\n  service: p\n  controlPlane: {cp}\n"))
        };
        assert_eq!(
            proxy("{address: \"https://cp:8086\", trustBundleFile: ca.pem, joinTokenFile: t}"),
            Vec::<String>::new()
        );
        assert_eq!(proxy("{address: \"http://127.0.0.1:8086\", joinTokenFile: t}"), Vec::<String>::new());
        assert_eq!(proxy("{address: \"http://[::1]:8086\", joinTokenFile: t}"), Vec::<String>::new());
        assert_eq!(proxy("{address: \"http://cp:8086\"}"), Vec::<String>::new(), "no credential to leak");
        let p = proxy("{address: \"https://cp:8086\", joinTokenFile: t}");
        assert!(
            p.len() == 1 && p[0].contains("spec.controlPlane.trustBundleFile: an https:// control plane needs"),
            "{p:?}"
        );
        let p = proxy("{address: \"http://cp:8086\", joinTokenFile: t}");
        assert!(p.len() == 1 && p[0].contains("spec.controlPlane.address: \"http://cp:8086\" is plaintext"), "{p:?}");
        let p = proxy("{address: \"http://localhost:8086\", trustBundleFile: ca.pem}");
        assert!(p.len() == 1 && p[0].contains("used only with an https://"), "{p:?}");
        assert!(is_loopback_address("127.0.0.2:1") && is_loopback_address("http://LOCALHOST:1/"));
        assert!(!is_loopback_address("http://10.0.0.1:8086") && !is_loopback_address("https://[::2]:1"));
    }

    #[test]
    fn path_and_prefix_are_exclusive() {
        let text = "kind: Route\nmetadata: {name: r}\nspec:\n  service: s\n  rules:\n    - match: {path: /a, pathPrefix: /b}\n";
        assert_eq!(problems(text), ["f.yaml:6: spec.rules[0].match: set either path (exact) or pathPrefix, not both"]);
    }

    #[test]
    fn route_needs_rules_and_ordered_backoff() {
        let text = "kind: Route\nmetadata: {name: r}\nspec: {service: s}\n---\nkind: Route\nmetadata: {name: q}\nspec:\n  service: s\n  rules:\n  - retry: {backoffBase: 2s, backoffMax: 1s}\n";
        assert_eq!(
            problems(text),
            [
                "f.yaml:1: spec.rules: a Route needs at least one rule",
                "f.yaml:10: spec.rules[0].retry.backoffMax: must not be shorter than backoffBase",
            ]
        );
    }

    #[test]
    fn one_proxy_and_one_mesh_per_file_and_no_duplicates() {
        let text = "kind: Mesh\nmetadata: {name: a}\n---\nkind: Mesh\nmetadata: {name: b}\n---\n".to_string()
            + SERVICE
            + "---\n"
            + SERVICE;
        assert_eq!(
            problems(&text),
            [
                "f.yaml:4: kind: a file may hold only one Mesh document (the first is at line 1)",
                "f.yaml:11: metadata.name: Service \"shop/payments\" is declared twice (first at line 7)",
            ]
        );
    }

    #[test]
    fn duplicate_ports_and_endpoints() {
        let text = "kind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}, {port: 80}]\n  endpoints: [{address: 127.0.0.1:1}, {address: 127.0.0.1:1}]\n";
        assert_eq!(
            problems(text),
            [
                "f.yaml:1: spec.ports[1].port: port 80 is listed twice",
                "f.yaml:1: spec.endpoints[1].address: endpoint 127.0.0.1:1 is listed twice",
            ]
        );
    }

    #[test]
    fn proxy_listeners_must_not_share_an_address_except_port_zero() {
        let text = "kind: Proxy\nmetadata: {name: p}\nspec:\n  service: p\n  outbound: {listen: 127.0.0.1:4191}\n  inbound: {listen: 127.0.0.1:0, app: 127.0.0.1:8080}\n  upstreams: [{service: a, listen: 127.0.0.1:0}]\n";
        assert_eq!(
            problems(text),
            ["f.yaml:1: spec.admin.listen: 127.0.0.1:4191 is already used by spec.outbound.listen"]
        );
    }

    #[test]
    fn hand_built_documents_get_the_value_rules_too() {
        let mut docs = decode_documents("f.yaml", SERVICE).unwrap();
        if let Document::Service(s) = &mut docs[0] {
            s.spec.ports[0].port = 0;
            s.metadata.name = "Bad".to_string();
        }
        let err = validate_documents("f.yaml", &docs).unwrap_err().to_string();
        assert!(err.contains("f.yaml:1: metadata.name: invalid name \"Bad\""), "{err}");
        assert!(err.contains("f.yaml:1: spec.ports[0].port: must be between 1 and 65535, found 0"), "{err}");
    }

    #[test]
    fn set_reports_cross_file_duplicates_and_unknown_services() {
        let route = "kind: Route\nmetadata: {name: r, namespace: shop}\nspec:\n  service: payments\n  rules:\n    - backends: [{service: paymnts}]\n";
        assert_eq!(
            set(&[("a.yaml", SERVICE), ("b.yaml", SERVICE), ("c.yaml", route)]),
            [
                "b.yaml:1: metadata.name: Service \"shop/payments\" is also declared in a.yaml:1",
                "c.yaml:6: spec.rules[0].backends[0].service: service \"paymnts\" is not declared in namespace \"shop\"; did you mean \"payments\"?",
            ]
        );
    }

    #[test]
    fn set_resolves_name_dot_namespace_references() {
        let route = "kind: Route\nmetadata: {name: r}\nspec:\n  service: payments.shop\n  rules: [{backends: [{service: payments.other}]}]\n";
        assert_eq!(
            set(&[("a.yaml", SERVICE), ("b.yaml", route)]),
            [
                "b.yaml:5: spec.rules[0].backends[0].service: service \"payments\" is not declared in namespace \"other\""
            ]
        );
    }

    #[test]
    fn set_without_services_skips_reference_checks() {
        let route = "kind: Route\nmetadata: {name: r}\nspec:\n  service: anything\n  rules: [{timeout: 1s}]\n";
        assert_eq!(set(&[("a.yaml", route)]), Vec::<String>::new());
    }
}
