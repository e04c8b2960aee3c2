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
    AuthorizationPolicy, ControlPlaneSpec, Diagnostics, Document, Mesh, MtlsMode, Proxy, Route, RouteMatch, Service,
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

/// The proxy dials `HOST:PORT` itself, so the port must be written out.
pub(crate) fn check_url(s: &str) -> Result<(), String> {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    let authority = rest.map(|r| r.split('/').next().unwrap_or_default());
    match authority.and_then(|a| a.rsplit_once(':')) {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
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
    let address = if !tls && cp.has_bootstrap_credential() && !is_loopback_address(&cp.address) {
        Err(format!(
            "{:?} is plaintext and not on loopback: the bootstrap token would cross the network in clear; use https:// \
             with trustBundleFile",
            cp.address
        ))
    } else {
        Ok(())
    };
    (address, bundle)
}

/// Header values the proxy can compare against: visible ASCII, spaces and tabs (RFC 9110).
pub(crate) fn check_header_value(s: &str) -> Result<(), String> {
    if s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        Ok(())
    } else {
        Err(format!("invalid header value {s:?}; use visible ASCII characters, spaces and tabs"))
    }
}

/// A route's `timeout` covers the first try and every retry, so one try cannot outlast it.
pub(crate) fn check_per_try_timeout(per_try: Duration, route: Duration) -> Result<(), String> {
    if per_try <= route {
        Ok(())
    } else {
        Err(format!(
            "{} is longer than the rule's timeout {}; the route timeout bounds all tries together, \
             so shorten perTryTimeout or raise timeout",
            crate::duration::format_duration(per_try),
            crate::duration::format_duration(route)
        ))
    }
}

/// A `tracing` filter as the proxy parses it (`Targets`): comma-separated `LEVEL`, `TARGET` or
/// `TARGET[{FIELD,...}]=LEVEL`, where LEVEL is off, error, warn, info, debug, trace or 0-5.
pub fn check_log_level(s: &str) -> Result<(), String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5", ""];
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    for directive in s.split(',') {
        let Some((target, level)) = directive.split_once('=') else { continue };
        let problem = if level.contains('=') {
            Some("has more than one '='".to_string())
        } else if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            Some(format!("names the unknown level {level:?}; use off, error, warn, info, debug or trace"))
        } else if let Some((_, fields)) = target.split_once("[{") {
            (fields.contains("[{") || !fields.ends_with("}]")).then(|| "has a malformed [{field,...}] list".to_string())
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(format!("invalid log filter {s:?}: {directive:?} {problem}"));
        }
    }
    Ok(())
}

pub(crate) fn check_not_empty(s: &str) -> Result<(), String> {
    if s.is_empty() { Err("must not be empty".to_string()) } else { Ok(()) }
}

/// Checks one file's documents on their own: every value rule, fields that depend on each
/// other, and at most one Proxy (a file is one sidecar's `--config`). What involves several
/// documents is `validate_set`'s.
pub fn validate_documents(file: &str, docs: &[Document]) -> Result<(), Diagnostics> {
    let mut c = Checker { file, out: Diagnostics::default() };
    let mut first_proxy: Option<usize> = None;
    for doc in docs {
        c.document(doc);
        if let Document::Proxy(p) = doc {
            match first_proxy {
                Some(first) => {
                    let msg = format!("a file may hold only one Proxy document; the first is at {file}:{first}");
                    c.error(p.metadata.line, "kind", msg);
                }
                None => first_proxy = Some(p.metadata.line),
            }
        }
    }
    c.out.into_result()
}

/// Checks what a set of files deployed together (a policy folder, or the one file of
/// `weft-proxy --config`) means as a whole:
///
/// - no two documents with the same kind, namespace and name;
/// - conflicts: one Mesh, and per service (name + namespace, however it is written) at most
///   one Route, one TrafficPolicy and one AuthorizationPolicy. A proxy would otherwise take
///   some of one and some of the other; like `istioctl analyze`, both documents are named;
/// - references to services nobody declares. A Service declares its service, a Proxy the
///   service it stands beside, and a Proxy with a `controlPlane` the services of its upstream
///   ports (the control plane names their endpoints). Set-wide, references are only checked
///   when the set declares at least one Service: a folder for a registry-fed control plane
///   holds policy only, and its services come from the registry;
/// - for each file holding a Proxy, what `weft-proxy --config` needs of that file alone: its
///   Routes, TrafficPolicies and upstream ports name services declared in the file, and a Mesh
///   asking for mTLS (in the file, or from the control plane) comes with an identity.
pub fn validate_set(files: &[(String, Vec<Document>)]) -> Result<(), Diagnostics> {
    let files: Vec<(&str, &[Document])> = files.iter().map(|(f, docs)| (f.as_str(), docs.as_slice())).collect();
    SetCheck { files: &files, unread: &[] }.run()
}

/// What `weft-proxy` needs of the documents it runs from (its file, with the control plane's
/// on top): a Proxy document, and `validate_set`'s rules for them as one file. Value rules are
/// `validate_documents`'s, applied where the documents came in.
pub fn validate_proxy_config(source: &str, docs: &[Document]) -> Result<(), Diagnostics> {
    let mut out = SetCheck { files: &[(source, docs)], unread: &[] }.run().err().unwrap_or_default();
    if !docs.iter().any(|d| matches!(d, Document::Proxy(_))) {
        out.push(source, 1, "kind", "no Proxy document: weft-proxy needs one to know what to listen on");
    }
    out.into_result()
}

/// Text of a file that did not decode completely, and so may declare what the documents
/// decoded from it do not show.
pub(crate) struct Unread<'a> {
    pub(crate) file: &'a str,
    pub(crate) text: &'a str,
}

pub(crate) struct SetCheck<'a> {
    pub(crate) files: &'a [(&'a str, &'a [Document])],
    /// References to a name written anywhere in these are not reported: the broken file may
    /// declare it, and its own problem is reported already.
    pub(crate) unread: &'a [Unread<'a>],
}

/// (namespace, name) of a service.
type ServiceKey<'a> = (&'a str, &'a str);

/// Where a document or field was written.
#[derive(Clone, Copy)]
struct At<'a> {
    file: &'a str,
    line: usize,
}

impl std::fmt::Display for At<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

impl<'a> SetCheck<'a> {
    pub(crate) fn run(&self) -> Result<(), Diagnostics> {
        let mut out = Diagnostics::default();
        self.duplicates_and_conflicts(&mut out);
        let mut reported = HashSet::new();
        let everything: Vec<(&str, &Document)> =
            self.files.iter().flat_map(|(f, docs)| docs.iter().map(move |d| (*f, d))).collect();
        if everything.iter().any(|(_, d)| matches!(d, Document::Service(_))) {
            let declared = declared_services(everything.iter().map(|(_, d)| *d));
            for (file, doc) in &everything {
                for r in service_references(doc) {
                    self.reference(&mut out, &mut reported, file, doc, &r, &declared, None);
                }
            }
        }
        for &(file, docs) in self.files {
            if docs.iter().any(|d| matches!(d, Document::Proxy(_))) {
                self.proxy_file(&mut out, &mut reported, file, docs);
            }
        }
        out.into_result()
    }

    fn duplicates_and_conflicts(&self, out: &mut Diagnostics) {
        let mut names: HashMap<(&str, &str, &str), At> = HashMap::new();
        let mut targets: HashMap<(&str, ServiceKey), (&Document, At)> = HashMap::new();
        let mut mesh: Option<(&Document, At)> = None;
        let mut virtual_ips: HashMap<std::net::IpAddr, (&Document, At)> = HashMap::new();
        for &(file, docs) in self.files {
            for doc in docs {
                let meta = doc.metadata();
                if let Document::Service(s) = doc {
                    let at = At { file, line: meta.line_of("spec.virtualIPs") };
                    for ip in &s.spec.virtual_ips {
                        match virtual_ips.get(ip) {
                            Some((first, first_at)) => {
                                let msg = format!(
                                    "virtual IP {ip} of Service {} is already Service {}'s at {first_at}: a \
                                     virtual IP stands for one service",
                                    qualified(doc),
                                    qualified(first)
                                );
                                out.push(file, at.line, "spec.virtualIPs", msg);
                            }
                            None => {
                                virtual_ips.insert(*ip, (doc, at));
                            }
                        }
                    }
                }
                let at = At { file, line: meta.line };
                // A missing name was reported while decoding; it cannot clash with anything.
                if !meta.name.is_empty() {
                    let key = (doc.kind(), meta.namespace.as_str(), meta.name.as_str());
                    if let Some(first) = names.get(&key) {
                        let msg = format!("{} {} is already declared at {first}", doc.kind(), qualified(doc));
                        out.push(file, meta.line, "metadata.name", msg);
                        continue;
                    }
                    names.insert(key, at);
                }
                if matches!(doc, Document::Mesh(_)) {
                    match mesh {
                        Some((first, first_at)) => {
                            let msg = format!(
                                "Mesh {:?} conflicts with Mesh {:?} at {first_at}: a mesh has one Mesh document; \
                                 keep one and delete the other",
                                meta.name,
                                first.metadata().name
                            );
                            out.push(file, meta.line, "kind", msg);
                        }
                        None => mesh = Some((doc, at)),
                    }
                    continue;
                }
                let Some(target) = applies_to(doc) else { continue };
                let at = At { file, line: meta.line_of("spec.service") };
                match targets.get(&(doc.kind(), target)) {
                    Some((first, first_at)) => {
                        let (ns, name) = target;
                        let msg = format!(
                            "{kind} {} conflicts with {kind} {} at {first_at}: both apply to service \
                             \"{name}.{ns}\", which takes one {kind}; {}",
                            qualified(doc),
                            qualified(first),
                            merge_hint(doc),
                            kind = doc.kind(),
                        );
                        out.push(file, at.line, "spec.service", msg);
                    }
                    None => {
                        targets.insert((doc.kind(), target), (doc, at));
                    }
                }
            }
        }
    }

    /// The rules `weft-proxy --config` applies to its one file.
    fn proxy_file(
        &self,
        out: &mut Diagnostics,
        reported: &mut HashSet<(String, usize, String)>,
        file: &str,
        docs: &[Document],
    ) {
        let declared = declared_services(docs.iter());
        for doc in docs {
            let refs = match doc {
                Document::Route(_) | Document::TrafficPolicy(_) | Document::Proxy(_) => service_references(doc),
                _ => Vec::new(),
            };
            for r in refs {
                self.reference(out, reported, file, doc, &r, &declared, Some("in this file"));
            }
        }
        let mesh_in_file = docs.iter().find_map(|d| match d {
            Document::Mesh(m) => Some((m, file)),
            _ => None,
        });
        let mesh_in_set = || {
            self.files.iter().find_map(|&(f, docs)| {
                docs.iter().find_map(|d| match d {
                    Document::Mesh(m) => Some((m, f)),
                    _ => None,
                })
            })
        };
        for doc in docs {
            let Document::Proxy(p) = doc else { continue };
            // A proxy with a control plane is sent the mesh's Mesh document.
            let mesh = mesh_in_file.or_else(|| p.spec.control_plane.as_ref().and(mesh_in_set()));
            let Some((mesh, mesh_file)) = mesh else { continue };
            if mesh.spec.mtls == MtlsMode::Off || p.spec.has_identity_source() {
                continue;
            }
            let mode = format!("{:?}", mesh.spec.mtls).to_lowercase();
            let msg = format!(
                "the Mesh at {}:{} asks for mtls: {mode} but Proxy {} has no identity: set spec.tls (cert, key \
                 and bundle files) or spec.controlPlane with a joinTokenFile, or set the Mesh's mtls: off",
                mesh_file,
                mesh.metadata.line_of("spec.mtls"),
                qualified(doc),
            );
            out.push(file, p.metadata.line, "spec.tls", msg);
        }
    }

    /// Reports `r` unless it resolves in `declared`, was reported already, or may be declared
    /// by a file that did not decode.
    #[allow(clippy::too_many_arguments)] // one call per scope; a struct would only rename them
    fn reference(
        &self,
        out: &mut Diagnostics,
        reported: &mut HashSet<(String, usize, String)>,
        file: &str,
        doc: &Document,
        r: &Reference,
        declared: &HashSet<ServiceKey>,
        scope: Option<&str>,
    ) {
        let (ns, name) = resolve(r.service, &doc.metadata().namespace);
        let line = doc.metadata().line_of(&r.path);
        if r.service.is_empty() || declared.contains(&(ns, name)) || self.may_be_declared(name, file, line) {
            return;
        }
        if !reported.insert((file.to_string(), line, r.path.clone())) {
            return;
        }
        let mut msg = match scope {
            None => format!("service {name:?} is not declared in namespace {ns:?}"),
            Some(scope) => format!(
                "service {name:?} (namespace {ns:?}) is not declared {scope}; weft-proxy --config needs its Service \
                 document in the same file"
            ),
        };
        let mut in_ns: Vec<&str> = declared.iter().filter(|(n, _)| *n == ns).map(|(_, s)| *s).collect();
        in_ns.sort_unstable(); // ties in `nearest` go the same way every run
        if let Some(near) = nearest(name, &in_ns) {
            msg.push_str(&format!("; did you mean {near:?}?"));
        }
        out.push(file, line, r.path.clone(), msg);
    }

    /// Whether `name` is written in a file that did not decode (other than on the referring
    /// line itself).
    fn may_be_declared(&self, name: &str, file: &str, line: usize) -> bool {
        self.unread.iter().any(|u| {
            u.text.lines().enumerate().any(|(i, text)| {
                !(u.file == file && i + 1 == line)
                    && text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).any(|word| word == name)
            })
        })
    }
}

/// What to do about two documents of `doc`'s kind for one service.
fn merge_hint(doc: &Document) -> &'static str {
    match doc {
        Document::Route(_) => "merge their rules into one Route (rules are tried in order)",
        Document::AuthorizationPolicy(_) => "merge their rules into one AuthorizationPolicy",
        _ => "keep one and delete the other",
    }
}

/// The service (namespace, name) a Route, TrafficPolicy or AuthorizationPolicy applies to,
/// however its `spec.service` is written; `None` for other kinds. Each service takes at most
/// one document of each of these kinds.
pub fn applies_to(doc: &Document) -> Option<(&str, &str)> {
    let ns = doc.metadata().namespace.as_str();
    let service = match doc {
        Document::Route(r) => &r.spec.service,
        Document::TrafficPolicy(t) => &t.spec.service,
        Document::AuthorizationPolicy(a) => &a.spec.service,
        _ => return None,
    };
    (!service.is_empty()).then(|| resolve(service, ns))
}

/// The services `docs` declare (see `validate_set`).
fn declared_services<'a>(docs: impl Iterator<Item = &'a Document>) -> HashSet<ServiceKey<'a>> {
    let mut out = HashSet::new();
    for doc in docs {
        let ns = doc.metadata().namespace.as_str();
        match doc {
            Document::Service(s) => {
                out.insert((ns, s.metadata.name.as_str()));
            }
            Document::Proxy(p) => {
                out.insert((ns, p.spec.service.as_str()));
                if p.spec.control_plane.is_some() {
                    out.extend(p.spec.upstreams.iter().map(|u| resolve(&u.service, ns)));
                }
            }
            _ => {}
        }
    }
    out
}

/// A place where a document names a service it depends on.
struct Reference<'a> {
    path: String,
    service: &'a str,
}

/// Every place a document names a service it depends on.
fn service_references(doc: &Document) -> Vec<Reference<'_>> {
    fn at(path: String, service: &str) -> Reference<'_> {
        Reference { path, service }
    }
    match doc {
        Document::Route(r) => {
            let mut refs = vec![at("spec.service".to_string(), &r.spec.service)];
            for (i, rule) in r.spec.rules.iter().enumerate() {
                for (j, b) in rule.backends.iter().enumerate() {
                    refs.push(at(format!("spec.rules[{i}].backends[{j}].service"), &b.service));
                }
            }
            refs
        }
        Document::TrafficPolicy(t) => vec![at("spec.service".to_string(), &t.spec.service)],
        Document::AuthorizationPolicy(a) => vec![at("spec.service".to_string(), &a.spec.service)],
        Document::Proxy(p) => p
            .spec
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| at(format!("spec.upstreams[{i}].service"), &u.service))
            .collect(),
        Document::Service(_) | Document::Mesh(_) => Vec::new(),
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
                    if let Some(route) = rule.timeout {
                        self.rule(rule.line, format!("{path}.perTryTimeout"), check_per_try_timeout(t, route));
                    }
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
        for (name, value) in &m.headers {
            self.rule(line, format!("{path}.headers.{name}"), check_header_name(name));
            self.rule(line, format!("{path}.headers.{name}"), check_header_value(value));
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
            if let Some(sa) = &cp.service_account_token_file {
                self.rule(line, "spec.controlPlane.serviceAccountTokenFile", check_not_empty(sa));
            }
            if cp.address.starts_with("https://") && s.tls.is_none() && !cp.has_bootstrap_credential() {
                let msg = "an https:// control plane knows a proxy by its mesh certificate: set joinTokenFile or \
                           serviceAccountTokenFile (or tls files) so this proxy has one";
                self.error(line, "spec.controlPlane.joinTokenFile", msg.to_string());
            }
        }
        self.rule(line, "spec.workers", check_range(s.workers.into(), &WORKERS));
        let header_bytes = check_range(s.http.max_header_bytes.into(), &AT_LEAST_ONE_U32);
        self.rule(line, "spec.http.maxHeaderBytes", header_bytes);
        self.rule(line, "spec.http.headerReadTimeout", check_positive(s.http.header_read_timeout));
        self.rule(line, "spec.http.clientIdleTimeout", check_positive(s.http.client_idle_timeout));
        self.rule(line, "spec.log.level", check_log_level(&s.log.level));

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
        assert!(check_url("http://weft-control").is_err(), "the proxy dials HOST:PORT");
    }

    #[test]
    fn a_service_account_token_is_a_bootstrap_credential_like_a_join_token() {
        let proxy = |cp: &str| {
            problems(&format!("kind: Proxy\nmetadata: {{name: p}}\nspec:\n  service: p\n  controlPlane: {cp}\n"))
        };
        let sa = "serviceAccountTokenFile: /var/run/secrets/weft.dev/token";
        assert_eq!(
            proxy(&format!("{{address: \"https://cp:8086\", trustBundleFile: ca.pem, {sa}}}")),
            Vec::<String>::new()
        );
        let p = proxy(&format!("{{address: \"http://cp:8086\", {sa}}}"));
        assert!(p.len() == 1 && p[0].contains("is plaintext and not on loopback"), "{p:?}");
        let empty = "kind: Proxy\nmetadata: {name: p}\nspec:\n  service: p\n  controlPlane: {address: \"https://cp:8086\", \
                     trustBundleFile: ca.pem, serviceAccountTokenFile: \"\"}\n";
        let decoded = crate::decode::decode_file("f.yaml", empty);
        let p: Vec<String> = decoded.problems.0.iter().map(ToString::to_string).collect();
        assert_eq!(p, ["f.yaml:5: spec.controlPlane.serviceAccountTokenFile: must not be empty"]);
        let p = proxy("{address: \"https://cp:8086\", trustBundleFile: ca.pem}");
        assert!(p.len() == 1 && p[0].contains("set joinTokenFile or serviceAccountTokenFile"), "{p:?}");
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

    /// Every problem `check_files` finds in `files`, as printed.
    fn check(files: &[(&str, &str)]) -> Vec<String> {
        let files: Vec<(String, String)> = files.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect();
        crate::check_files(&files).1.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_virtual_ip_stands_for_one_service() {
        let svc = |name: &str, ips: &str| {
            format!(
                "kind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n  virtualIPs: [{ips}]\n"
            )
        };
        assert_eq!(
            set(&[("a.yaml", &svc("a", "10.96.0.1, 10.96.0.2")), ("b.yaml", &svc("b", "10.96.0.3, 10.96.0.2"))]),
            [
                "b.yaml:5: spec.virtualIPs: virtual IP 10.96.0.2 of Service \"default/b\" is already Service \"default/a\"'s at a.yaml:5: a virtual IP stands for one service"
            ]
        );
        assert_eq!(
            set(&[("a.yaml", &svc("a", "10.96.0.1")), ("b.yaml", &svc("b", "10.96.0.3"))]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn one_proxy_and_one_mesh_per_file_and_no_duplicates() {
        let text = "kind: Mesh\nmetadata: {name: a}\nspec: {mtls: off}\n---\nkind: Mesh\nmetadata: {name: b}\n---\n"
            .to_string()
            + SERVICE
            + "---\n"
            + SERVICE
            + "---\nkind: Proxy\nmetadata: {name: p}\nspec: {service: p}\n---\nkind: Proxy\nmetadata: {name: q}\nspec: {service: q}\n";
        assert_eq!(
            check(&[("f.yaml", &text)]),
            [
                "f.yaml:5: kind: Mesh \"b\" conflicts with Mesh \"a\" at f.yaml:1: a mesh has one Mesh document; keep one and delete the other",
                "f.yaml:12: metadata.name: Service \"shop/payments\" is already declared at f.yaml:8",
                "f.yaml:20: kind: a file may hold only one Proxy document; the first is at f.yaml:16",
            ]
        );
    }

    const PROXY: &str = "kind: Proxy\nmetadata: {name: frontend, namespace: shop}\nspec:\n  service: frontend\n  outbound: {listen: 127.0.0.1:4140}\n";

    #[test]
    fn a_strict_mesh_needs_the_proxy_to_have_an_identity() {
        // The reproduction: a Proxy with no tls files and no join token, and a strict Mesh.
        let strict = format!("{PROXY}---\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{mtls: strict}}\n");
        assert_eq!(
            check(&[("p.yaml", &strict)]),
            [
                "p.yaml:1: spec.tls: the Mesh at p.yaml:9 asks for mtls: strict but Proxy \"shop/frontend\" has no identity: set spec.tls (cert, key and bundle files) or spec.controlPlane with a joinTokenFile, or set the Mesh's mtls: off"
            ]
        );
        assert_eq!(check(&[("p.yaml", &strict.replace("mtls: strict", "mtls: off"))]), Vec::<String>::new());
        let permissive = strict.replace("mtls: strict", "mtls: permissive");
        assert!(check(&[("p.yaml", &permissive)])[0].contains("asks for mtls: permissive"));
        let files = strict.replace(
            "  service: frontend\n",
            "  service: frontend\n  tls: {certFile: c.pem, keyFile: k.pem, bundleFile: b.pem}\n",
        );
        assert_eq!(check(&[("p.yaml", &files)]), Vec::<String>::new());
        // A control plane without a join token cannot issue a certificate either.
        let no_token =
            strict.replace("  service: frontend\n", "  service: frontend\n  controlPlane: {address: http://cp:8086}\n");
        assert_eq!(check(&[("p.yaml", &no_token)]).len(), 1);
        let token =
            no_token.replace("http://cp:8086}", "\"https://cp:8086\", trustBundleFile: ca.pem, joinTokenFile: t}");
        assert_eq!(check(&[("p.yaml", &token)]), Vec::<String>::new());
    }

    #[test]
    fn a_proxy_with_a_control_plane_gets_the_folders_mesh() {
        let proxy =
            PROXY.replace("  service: frontend\n", "  service: frontend\n  controlPlane: {address: http://cp:8086}\n");
        let mesh = "kind: Mesh\nmetadata: {name: default}\nspec:\n  mtls: strict\n";
        let found = check(&[("mesh.yaml", mesh), ("proxy.yaml", &proxy)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("proxy.yaml:1: spec.tls: the Mesh at mesh.yaml:4 asks for mtls: strict"),
            "{found:?}"
        );
        // Without a control plane the proxy never sees that Mesh.
        assert_eq!(check(&[("mesh.yaml", mesh), ("proxy.yaml", PROXY)]), Vec::<String>::new());
    }

    const ROUTE_A: &str =
        "kind: Route\nmetadata: {name: a, namespace: shop}\nspec:\n  service: payments\n  rules: [{timeout: 1s}]\n";

    #[test]
    fn two_routes_for_one_service_conflict_naming_both() {
        let route_b = ROUTE_A.replace("name: a", "name: b");
        let text = format!("{SERVICE}---\n{ROUTE_A}---\n{route_b}");
        assert_eq!(
            check(&[("f.yaml", &text)]),
            [
                "f.yaml:14: spec.service: Route \"shop/b\" conflicts with Route \"shop/a\" at f.yaml:8: both apply to service \"payments.shop\", which takes one Route; merge their rules into one Route (rules are tried in order)"
            ]
        );
        // Across files of one folder too.
        let found = check(&[("a.yaml", &format!("{SERVICE}---\n{ROUTE_A}")), ("b.yaml", &route_b)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0]
                .starts_with("b.yaml:4: spec.service: Route \"shop/b\" conflicts with Route \"shop/a\" at a.yaml:8")
        );
    }

    #[test]
    fn routes_conflict_by_the_service_they_resolve_to_not_by_how_it_is_written() {
        let other = "kind: Service\nmetadata: {name: payments, namespace: other}\nspec: {ports: [{port: 80}]}\n";
        // Same name in two namespaces: two services, no conflict.
        let elsewhere = ROUTE_A.replace("namespace: shop", "namespace: other");
        assert_eq!(
            check(&[("f.yaml", &format!("{SERVICE}---\n{other}---\n{ROUTE_A}---\n{elsewhere}"))]),
            Vec::<String>::new()
        );
        // A Route in another namespace naming payments.shop decides the same service.
        let qualified = elsewhere.replace("service: payments", "service: payments.shop");
        let found = check(&[("f.yaml", &format!("{SERVICE}---\n{other}---\n{ROUTE_A}---\n{qualified}"))]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("Route \"other/a\" conflicts with Route \"shop/a\""), "{found:?}");
        assert!(found[0].contains("service \"payments.shop\""), "{found:?}");
    }

    #[test]
    fn two_traffic_or_authorization_policies_for_one_service_conflict() {
        let tp = "kind: TrafficPolicy\nmetadata: {name: a, namespace: shop}\nspec: {service: payments}\n";
        let tp2 = "kind: TrafficPolicy\nmetadata: {name: b, namespace: shop}\nspec: {service: payments, loadBalancer: round-robin}\n";
        let found = check(&[("a.yaml", &format!("{SERVICE}---\n{tp}")), ("b.yaml", tp2)]);
        assert_eq!(
            found,
            [
                "b.yaml:3: spec.service: TrafficPolicy \"shop/b\" conflicts with TrafficPolicy \"shop/a\" at a.yaml:7: both apply to service \"payments.shop\", which takes one TrafficPolicy; keep one and delete the other"
            ]
        );
        let authz = "kind: AuthorizationPolicy\nmetadata: {name: a, namespace: shop}\nspec: {service: payments, default: allow}\n";
        let authz2 = authz.replace("name: a", "name: b").replace("allow", "deny");
        let found = check(&[("a.yaml", &format!("{SERVICE}---\n{authz}---\n{authz2}"))]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("a.yaml:11: spec.service: AuthorizationPolicy \"shop/b\" conflicts with AuthorizationPolicy \"shop/a\" at a.yaml:7"), "{found:?}");
    }

    #[test]
    fn two_meshes_in_a_folder_conflict() {
        let strict = "kind: Mesh\nmetadata: {name: default}\nspec: {mtls: strict}\n";
        let off = "kind: Mesh\nmetadata: {name: dev}\nspec: {mtls: off}\n";
        assert_eq!(
            check(&[("a.yaml", strict), ("b.yaml", off)]),
            [
                "b.yaml:1: kind: Mesh \"dev\" conflicts with Mesh \"default\" at a.yaml:1: a mesh has one Mesh document; keep one and delete the other"
            ]
        );
    }

    #[test]
    fn a_dangling_reference_points_at_the_field() {
        let route =
            "kind: Route\nmetadata: {name: r, namespace: shop}\nspec:\n  rules: [{timeout: 1s}]\n  service: paymnts\n";
        assert_eq!(
            check(&[("a.yaml", SERVICE), ("b.yaml", route)]),
            [
                "b.yaml:5: spec.service: service \"paymnts\" is not declared in namespace \"shop\"; did you mean \"payments\"?"
            ]
        );
    }

    #[test]
    fn a_proxys_file_must_declare_what_it_routes_to() {
        // No Service at all: a policy folder would wait for a registry, but weft-proxy --config
        // resolves its Routes, TrafficPolicies and upstream ports in this file.
        let text = format!(
            "{PROXY}  upstreams: [{{service: ledger, listen: 127.0.0.1:9101}}]\n---\n{ROUTE_A}---\nkind: TrafficPolicy\nmetadata: {{name: t, namespace: shop}}\nspec:\n  service: payments\n"
        );
        let found = check(&[("p.yaml", &text)]);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].starts_with("p.yaml:6: spec.upstreams[0].service: service \"ledger\" (namespace \"shop\") is not declared in this file"), "{found:?}");
        assert!(found[1].starts_with("p.yaml:11: spec.service: service \"payments\""), "{found:?}");
        assert!(found[2].starts_with("p.yaml:17: spec.service: service \"payments\""), "{found:?}");
        // With a control plane, upstream ports name services whose endpoints it will send.
        let cp =
            text.replace("  service: frontend\n", "  service: frontend\n  controlPlane: {address: http://cp:8086}\n");
        assert_eq!(check(&[("p.yaml", &cp)]).len(), 2);
    }

    #[test]
    fn a_broken_file_hides_no_declaration() {
        // The reproduction: a.yaml would have declared payments-v2 but for a syntax error.
        let broken = "kind: Service\nmetadata: {name: payments-v2, namespace: shop}\nspec:\n  ports: [{port: 80}\n";
        let route = "kind: Route\nmetadata: {name: r, namespace: shop}\nspec:\n  service: payments\n  rules:\n    - backends: [{service: payments-v2}]\n    - backends: [{service: payments-v3}]\n";
        let found = check(&[("a.yaml", broken), ("b.yaml", SERVICE), ("c.yaml", route)]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("a.yaml:5: invalid YAML: "), "{found:?}");
        // payments-v3 is written nowhere else, so it is dangling whatever a.yaml holds.
        assert!(
            found[1].starts_with("c.yaml:7: spec.rules[1].backends[0].service: service \"payments-v3\""),
            "{found:?}"
        );
    }

    #[test]
    fn problems_come_sorted_by_file_then_line() {
        let bad = "kind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 0}]}\n---\nkind: Servce\n";
        let found = check(&[("b.yaml", bad), ("a.yaml", "kind: Mesh\nmetadata: {name: m, x: 1}\n")]);
        let at: Vec<&str> = found.iter().map(|p| p.split(": ").next().unwrap()).collect();
        assert_eq!(at, ["b.yaml:3", "b.yaml:5", "b.yaml:5", "a.yaml:2"], "files in the order given");
    }

    #[test]
    fn per_try_timeout_must_fit_in_the_route_timeout() {
        let text = "kind: Route\nmetadata: {name: r}\nspec:\n  service: s\n  rules:\n    - timeout: 1s\n      retry:\n        attempts: 2\n        perTryTimeout: 2s\n    - timeout: 1s\n      retry: {perTryTimeout: 1s}\n";
        let message = "spec.rules[0].retry.perTryTimeout: 2s is longer than the rule's timeout 1s; the route timeout bounds all tries together, so shorten perTryTimeout or raise timeout";
        assert_eq!(check(&[("f.yaml", text)]), [format!("f.yaml:9: {message}")]);
        // Documents built in code get the same rule, at the rule's line.
        let mut docs = decode_documents("f.yaml", &text.replace("perTryTimeout: 2s", "perTryTimeout: 1s")).unwrap();
        if let Document::Route(r) = &mut docs[0] {
            r.spec.rules[0].retry.as_mut().unwrap().per_try_timeout = Some(Duration::from_secs(2));
        }
        assert_eq!(validate_documents("f.yaml", &docs).unwrap_err().to_string(), format!("f.yaml:6: {message}"));
    }

    #[test]
    fn log_filters_header_values_and_addresses_the_proxy_would_refuse() {
        for ok in ["info", "weft_proxy=debug,warn", "a[{x,y}]=TRACE", "weft", "3", "info,"] {
            assert!(check_log_level(ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "weft=loud", "a=b=c", "a[{x=info", "a[{x}][{y}]=info"] {
            assert!(check_log_level(bad).is_err(), "{bad:?}");
        }
        assert!(check_header_value("true").is_ok() && check_header_value("a b\tc").is_ok());
        assert!(check_header_value("caf\u{e9}").is_err() && check_header_value("a\u{7f}").is_err());
        assert!(check_url("http://127.0.0.1:8086").is_ok() && check_url("https://cp.weft:8086/x").is_ok());
        assert!(check_url("http://cp").is_err() && check_url("http://:8086").is_err());
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
                "b.yaml:1: metadata.name: Service \"shop/payments\" is already declared at a.yaml:1",
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
