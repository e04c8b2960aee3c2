//! One immutable, fully compiled configuration version: services, routes, clusters and the
//! proxy's own settings. Built from policy documents, swapped in whole with arc-swap.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::Method;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use weft_api::{
    Diagnostics, Document, EndpointSpec, MeshSpec, Protocol, ProxySpec, RetryPolicy, RouteRule, TrafficPolicySpec,
};

use crate::authz::Authz;
use crate::balance::{Endpoint, EndpointSet, OutlierConfig};
use crate::metrics::RouteMetrics;
use crate::routing::{Backend, Matcher, Retry, Rule, RuleOrigin, ServiceRoutes};
use crate::target::{Cluster, ClusterShared};

/// Key under which the local app's cluster is kept across reloads.
const INBOUND_KEY: &str = "inbound";
/// Key prefix of the clusters of the app's other declared ports (`inbound:8081`).
const INBOUND_PORT_KEY: &str = "inbound:";

/// One version of the proxy's whole configuration, compiled for the request path: built once
/// per change (`Snapshot::build`), then read by every request through `ProxyState::config`
/// (an arc-swap guard, no lock) and never changed. State that must outlive a version (endpoint
/// health, limits, budgets, metric series) is carried over from the previous one by key.
pub struct Snapshot {
    /// Increases with every change applied (file reload or control-plane version).
    pub version: u64,
    /// Where this version came from (a file path, or the control plane).
    pub source: String,
    /// The Proxy document: listeners, timeouts, identity, control plane.
    pub proxy: ProxySpec,
    /// The mesh-wide settings (trust domain and the like).
    pub mesh: MeshSpec,
    /// The documents it was built from (for `/config` and `weft check`).
    pub documents: Vec<Document>,
    /// Every backend service by `name.namespace`.
    pub clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// Every service's compiled Routes by `name.namespace`.
    pub services: HashMap<Arc<str>, Arc<ServiceRoutes>>,
    hosts: HashMap<String, Arc<ServiceRoutes>>,
    /// The services of the Proxy's upstream ports, by the reference the port names them with:
    /// looked up on every request of such a port, so a short list compared by string rather
    /// than a `name.namespace` key hashed each time.
    upstream_services: Vec<(Box<str>, Arc<ServiceRoutes>)>,
    proxy_ns: Box<str>,
    /// The local app behind the inbound listener, if there is one.
    pub inbound: Option<Inbound>,
    /// The app's other ports that the proxy's own Service declares, each with its own cluster
    /// (at the app's IP) and protocol: redirected calls to them reach the app on that port.
    inbound_ports: Vec<(u16, Inbound)>,
    /// Services by the addresses an app may call them at, for connections redirected to the
    /// outbound listener (see `service_at`).
    destinations: HashMap<SocketAddr, Destination>,
    /// AuthorizationPolicy for calls into the local app; `None` allows every call.
    pub authz: Option<Arc<Authz>>,
}

/// The local app behind the inbound listener.
pub struct Inbound {
    /// The app as a backend.
    pub cluster: Arc<Cluster>,
    /// The rule every inbound call is forwarded under (timeouts, metrics).
    pub rule: Arc<Rule>,
}

/// Where a call into the local app goes.
pub enum AppTarget<'a> {
    /// A port the config knows: served with its protocol, authorization and metrics.
    Declared(&'a Inbound),
    /// A redirected call to a port no Service declares: relayed as opaque TCP to the app there.
    Undeclared(SocketAddr),
}

/// The service a redirected connection's original destination belongs to.
pub struct Destination {
    /// `name.namespace`.
    pub service: Arc<str>,
    /// What is spoken at that address.
    pub protocol: Protocol,
}

fn key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// Resolves a service reference written in a document of `namespace`: `name` or `name.ns`.
fn resolve_ref(reference: &str, namespace: &str) -> String {
    if reference.contains('.') { reference.to_string() } else { key(reference, namespace) }
}

impl Snapshot {
    /// Compiles `docs` into a snapshot. State that must survive a reload (endpoint health,
    /// budgets, limits) is taken over from `prev` for services and endpoints that still exist.
    ///
    /// What the documents must satisfy together (references, conflicts, an identity for mTLS)
    /// is weft-api's `validate_proxy_config`, the check `weft check` runs too; compiling
    /// relies on it.
    pub fn build(
        docs: Vec<Document>,
        source: &str,
        version: u64,
        prev: Option<&Snapshot>,
    ) -> Result<Snapshot, Diagnostics> {
        weft_api::validate::validate_proxy_config(source, &docs)?;
        let mut diags = Diagnostics::default();
        let mut proxy_doc = None;
        let mut mesh = MeshSpec::default();
        let mut policies: HashMap<String, TrafficPolicySpec> = HashMap::new();
        for doc in &docs {
            match doc {
                Document::Proxy(p) => proxy_doc = Some(p.clone()),
                Document::Mesh(m) => mesh = m.spec.clone(),
                Document::TrafficPolicy(tp) => {
                    policies.insert(resolve_ref(&tp.spec.service, &tp.metadata.namespace), tp.spec.clone());
                }
                _ => {}
            }
        }
        let Some(proxy_doc) = proxy_doc else {
            diags.push(source, 1, "kind", "no Proxy document");
            return Err(diags);
        };
        let proxy_ns = proxy_doc.metadata.namespace.clone();
        let proxy = proxy_doc.spec;

        // Clusters: one per Service document.
        let mut clusters: HashMap<Arc<str>, Arc<Cluster>> = HashMap::new();
        for doc in &docs {
            let Document::Service(svc) = doc else { continue };
            let k = key(&svc.metadata.name, &svc.metadata.namespace);
            let policy = policies.remove(&k).unwrap_or_else(|| TrafficPolicySpec::defaults_for(&svc.metadata.name));
            let protocol = svc.spec.ports.first().map(|p| p.protocol).unwrap_or_default();
            let cluster = build_cluster(&k, &svc.metadata.name, protocol, &svc.spec.endpoints, policy, prev);
            clusters.insert(cluster.key.clone(), Arc::new(cluster));
        }

        // Routes, grouped by the service they decide.
        let mut rules_by_service: HashMap<String, Vec<Arc<Rule>>> = HashMap::new();
        for doc in &docs {
            let Document::Route(route) = doc else { continue };
            let ns = &route.metadata.namespace;
            let svc_key = resolve_ref(&route.spec.service, ns);
            let Some(own) = clusters.get(svc_key.as_str()) else {
                let line = route.metadata.line_of("spec.service");
                diags.push(source, line, "spec.service", format!("unknown service {svc_key}"));
                continue;
            };
            let list = rules_by_service.entry(svc_key.clone()).or_default();
            for (i, rule) in route.spec.rules.iter().enumerate() {
                match compile_rule(rule, i, &route.metadata.name, ns, own, &clusters) {
                    Ok(r) => list.push(Arc::new(r)),
                    Err((path, msg)) => diags.push(source, rule.line, format!("spec.rules[{i}].{path}"), msg),
                }
            }
        }

        let mut services: HashMap<Arc<str>, Arc<ServiceRoutes>> = HashMap::new();
        for (k, cluster) in &clusters {
            let rules = match rules_by_service.remove(k.as_ref()) {
                Some(rules) => rules,
                None => vec![Arc::new(default_rule(cluster))],
            };
            let routes = ServiceRoutes { key: k.clone(), name: cluster.name.clone(), rules };
            services.insert(k.clone(), Arc::new(routes));
        }

        let mut upstream_services = Vec::with_capacity(proxy.upstreams.len());
        for (i, up) in proxy.upstreams.iter().enumerate() {
            let k = resolve_ref(&up.service, &proxy_ns);
            if let Some(routes) = services.get(k.as_str()) {
                if !upstream_services.iter().any(|(r, _): &(Box<str>, _)| **r == *up.service) {
                    upstream_services.push((up.service.as_str().into(), routes.clone()));
                }
            } else {
                let path = format!("spec.upstreams[{i}].service");
                diags.push(source, proxy_doc.metadata.line_of(&path), path, format!("unknown service {k}"));
            }
        }

        let own_key = key(&proxy.service, &proxy_ns);
        let own_ports = docs
            .iter()
            .find_map(|d| match d {
                Document::Service(s) if key(&s.metadata.name, &s.metadata.namespace) == own_key => Some(&s.spec.ports),
                _ => None,
            })
            .map_or(&[][..], Vec::as_slice);
        let inbound = proxy.inbound.as_ref().map(|ib| {
            let protocol =
                ib.protocol.unwrap_or_else(|| clusters.get(own_key.as_str()).map(|c| c.protocol).unwrap_or_default());
            build_inbound(INBOUND_KEY, &proxy.service, ib.app, protocol, prev)
        });
        let inbound_ports = match &proxy.inbound {
            Some(ib) => own_ports
                .iter()
                .filter(|p| p.port != ib.app.port())
                .map(|p| {
                    let app = SocketAddr::new(ib.app.ip(), p.port);
                    let k = format!("{INBOUND_PORT_KEY}{}", p.port);
                    (p.port, build_inbound(&k, &proxy.service, app, p.protocol, prev))
                })
                .collect(),
            None => Vec::new(),
        };
        let destinations = destinations(&docs, &clusters);

        let policies: Vec<&weft_api::AuthorizationPolicy> = docs
            .iter()
            .filter_map(|d| match d {
                Document::AuthorizationPolicy(a) if resolve_ref(&a.spec.service, &a.metadata.namespace) == own_key => {
                    Some(a)
                }
                _ => None,
            })
            .collect();
        let authz = Authz::compile(&proxy.service, &policies).map(Arc::new);

        diags.into_result()?;
        let hosts = host_aliases(&services, &proxy_ns, &mesh.trust_domain);
        Ok(Snapshot {
            version,
            source: source.to_string(),
            proxy,
            mesh,
            documents: docs,
            clusters,
            services,
            hosts,
            upstream_services,
            proxy_ns: proxy_ns.into(),
            inbound,
            inbound_ports,
            destinations,
            authz,
        })
    }

    /// The service a client means by `host` (`name`, `name.ns`, `name.ns.svc[.cluster.local]`).
    pub fn lookup_host(&self, host: &str) -> Option<&Arc<ServiceRoutes>> {
        if let Some(s) = self.hosts.get(host) {
            return Some(s);
        }
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.hosts.get(&host.to_ascii_lowercase());
        }
        None
    }

    /// A service by `name.namespace` or, in the proxy's namespace, by bare name. The services of
    /// the Proxy's upstream ports are found without building or hashing a key.
    pub fn service(&self, reference: &str) -> Option<&Arc<ServiceRoutes>> {
        if let Some((_, routes)) = self.upstream_services.iter().find(|(r, _)| **r == *reference) {
            return Some(routes);
        }
        if reference.contains('.') {
            return self.services.get(reference);
        }
        self.services.get(key(reference, &self.proxy_ns).as_str())
    }

    /// The service an app meant by connecting to `addr` (the original destination of a
    /// connection redirected to the outbound listener): a Service's endpoint address, or an
    /// endpoint's IP with one of the Service's declared ports (the app calls a pod by its
    /// address and app port, while the endpoint names that pod's proxy). Service virtual IPs
    /// join this index with Kubernetes discovery.
    pub fn service_at(&self, addr: SocketAddr) -> Option<&Destination> {
        self.destinations.get(&addr)
    }

    /// Where a call into the local app goes. `port` is the app port a redirected caller
    /// addressed; `None` (a call to the inbound listener itself) means the configured app.
    pub fn app_target(&self, port: Option<u16>) -> Option<AppTarget<'_>> {
        let inbound = self.inbound.as_ref()?;
        let app = self.proxy.inbound.as_ref()?.app;
        Some(match port {
            Some(port) if port != app.port() => match self.inbound_ports.iter().find(|(p, _)| *p == port) {
                Some((_, declared)) => AppTarget::Declared(declared),
                None => AppTarget::Undeclared(SocketAddr::new(app.ip(), port)),
            },
            _ => AppTarget::Declared(inbound),
        })
    }

    /// Whether calls into the app at `port` (see `app_target`) are opaque TCP.
    pub fn app_is_tcp(&self, port: Option<u16>) -> bool {
        match self.app_target(port) {
            Some(AppTarget::Declared(i)) => i.cluster.protocol == Protocol::Tcp,
            Some(AppTarget::Undeclared(_)) => true,
            None => false,
        }
    }

    /// The cluster kept under `k` (a service, or one of the local app's), to carry its state
    /// into the next version.
    fn cluster_by_key(&self, k: &str) -> Option<&Arc<Cluster>> {
        if k == INBOUND_KEY {
            return self.inbound.as_ref().map(|i| &i.cluster);
        }
        if k.starts_with(INBOUND_PORT_KEY) {
            return self.inbound_ports.iter().map(|(_, i)| &i.cluster).find(|c| *c.key == *k);
        }
        self.clusters.get(k)
    }

    /// The namespace of the proxy's own service.
    pub fn proxy_namespace(&self) -> &str {
        &self.proxy_ns
    }

    /// Every listener address, to tell an operator when a reload changed one (that needs a restart).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        let mut out = vec![self.proxy.admin.listen];
        out.extend(self.proxy.inbound.as_ref().map(|i| i.listen));
        out.extend(self.proxy.outbound.as_ref().map(|o| o.listen));
        out.extend(self.proxy.upstreams.iter().map(|u| u.listen));
        out
    }
}

fn build_cluster(
    k: &str,
    name: &str,
    protocol: Protocol,
    specs: &[EndpointSpec],
    policy: TrafficPolicySpec,
    prev: Option<&Snapshot>,
) -> Cluster {
    let old = prev.and_then(|p| p.cluster_by_key(k));
    let endpoints = specs
        .iter()
        .map(|spec| {
            let identity: Option<Arc<str>> = spec.identity.as_deref().map(Arc::from);
            let reused = old.and_then(|c| {
                c.set
                    .endpoints()
                    .iter()
                    .find(|e| e.addr == spec.address && e.weight == spec.weight && e.identity == identity)
                    .cloned()
            });
            reused.unwrap_or_else(|| Arc::new(Endpoint::new(spec.address, spec.weight, identity)))
        })
        .collect();
    let shared = match old {
        Some(c) => {
            c.shared.update(&policy);
            c.shared.clone()
        }
        None => Arc::new(ClusterShared::new(name, &policy)),
    };
    let set = EndpointSet::new(endpoints, policy.load_balancer, OutlierConfig::from(&policy.outlier_detection));
    let authority = Authority::try_from(name).unwrap_or_else(|_| Authority::from_static("localhost"));
    Cluster { key: k.into(), name: name.into(), protocol, set, policy, shared, authority }
}

/// The local app at `app` behind the inbound listener, as a one-endpoint cluster and its rule.
fn build_inbound(k: &str, service: &str, app: SocketAddr, protocol: Protocol, prev: Option<&Snapshot>) -> Inbound {
    let endpoints = [EndpointSpec { address: app, weight: 1, identity: None }];
    let policy = TrafficPolicySpec::defaults_for(service);
    let cluster = Arc::new(build_cluster(k, service, protocol, &endpoints, policy, prev));
    let metrics = RouteMetrics::new("inbound", service, "inbound", service);
    let rule = Rule::new(
        RuleOrigin { route: "inbound".into(), index: 0, line: 0 },
        Matcher::default(),
        vec![Backend { cluster: cluster.clone(), weight: 1, metrics: Arc::new(metrics) }],
        None,
        Retry::from_policy(&RetryPolicy::default()),
    );
    Inbound { cluster, rule: Arc::new(rule) }
}

/// The index behind `Snapshot::service_at`: each Service's virtual IPs with its declared ports,
/// every endpoint address, then every endpoint IP with each declared port of its Service. The
/// first service to claim an address keeps it (`weft check` refuses a virtual IP claimed twice).
fn destinations(docs: &[Document], clusters: &HashMap<Arc<str>, Arc<Cluster>>) -> HashMap<SocketAddr, Destination> {
    let services: Vec<(&Arc<Cluster>, &weft_api::ServiceSpec)> = docs
        .iter()
        .filter_map(|d| match d {
            Document::Service(s) => {
                clusters.get(key(&s.metadata.name, &s.metadata.namespace).as_str()).map(|c| (c, &s.spec))
            }
            _ => None,
        })
        .collect();
    let mut out = HashMap::new();
    for (cluster, spec) in &services {
        for ip in &spec.virtual_ips {
            for port in &spec.ports {
                out.entry(SocketAddr::new(*ip, port.port))
                    .or_insert_with(|| Destination { service: cluster.key.clone(), protocol: port.protocol });
            }
        }
    }
    for (cluster, spec) in &services {
        for ep in &spec.endpoints {
            out.entry(ep.address)
                .or_insert_with(|| Destination { service: cluster.key.clone(), protocol: cluster.protocol });
        }
    }
    for (cluster, spec) in &services {
        let ips: Vec<IpAddr> = spec.endpoints.iter().map(|e| e.address.ip()).collect();
        for ip in ips {
            for port in &spec.ports {
                out.entry(SocketAddr::new(ip, port.port))
                    .or_insert_with(|| Destination { service: cluster.key.clone(), protocol: port.protocol });
            }
        }
    }
    out
}

fn default_rule(cluster: &Arc<Cluster>) -> Rule {
    Rule::new(
        RuleOrigin { route: "default".into(), index: 0, line: 0 },
        Matcher::default(),
        vec![outbound_backend(cluster, 1, &cluster.name, "default")],
        None,
        Retry::from_policy(&RetryPolicy::default()),
    )
}

fn compile_rule(
    rule: &RouteRule,
    index: usize,
    route_name: &str,
    ns: &str,
    own: &Arc<Cluster>,
    clusters: &HashMap<Arc<str>, Arc<Cluster>>,
) -> Result<Rule, (String, String)> {
    let m = &rule.matches;
    let methods = m
        .methods
        .iter()
        .map(|s| {
            Method::from_bytes(s.as_bytes()).map_err(|_| ("match.methods".to_string(), format!("invalid method {s:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let headers = m
        .headers
        .iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| (format!("match.headers.{k}"), "invalid header name".to_string()))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| (format!("match.headers.{k}"), "invalid header value".to_string()))?;
            Ok((name, value))
        })
        .collect::<Result<Vec<_>, (String, String)>>()?;
    let matcher = Matcher { path_prefix: m.path_prefix.clone(), path: m.path.clone(), methods, headers };
    let backends = if rule.backends.is_empty() {
        vec![outbound_backend(own, 1, &own.name, route_name)]
    } else {
        let mut out = Vec::with_capacity(rule.backends.len());
        for (i, b) in rule.backends.iter().enumerate() {
            let k = resolve_ref(&b.service, ns);
            let Some(cluster) = clusters.get(k.as_str()) else {
                return Err((
                    format!("backends[{i}].service"),
                    format!("unknown service {k}: add a Service document for it"),
                ));
            };
            out.push(outbound_backend(cluster, b.weight, &own.name, route_name));
        }
        out
    };
    let retry = Retry::from_policy(rule.retry.as_ref().unwrap_or(&RetryPolicy::default()));
    Ok(Rule::new(
        RuleOrigin { route: route_name.into(), index, line: rule.line },
        matcher,
        backends,
        rule.timeout,
        retry,
    ))
}

/// A backend of an outbound rule of `service`'s Route `route`, with its metrics labels
/// resolved now rather than per request.
fn outbound_backend(cluster: &Arc<Cluster>, weight: u32, service: &str, route: &str) -> Backend {
    let metrics = RouteMetrics::new("outbound", service, route, &cluster.name);
    Backend { cluster: cluster.clone(), weight, metrics: Arc::new(metrics) }
}

/// Every name a client may use for each service. A bare name means the service in the
/// proxy's own namespace, or the only service of that name in any namespace.
fn host_aliases(
    services: &HashMap<Arc<str>, Arc<ServiceRoutes>>,
    proxy_ns: &str,
    trust_domain: &str,
) -> HashMap<String, Arc<ServiceRoutes>> {
    let mut hosts = HashMap::new();
    let mut bare: HashMap<&str, Vec<(&str, &Arc<ServiceRoutes>)>> = HashMap::new();
    for (k, svc) in services {
        let (name, ns) = k.split_once('.').unwrap_or((k, proxy_ns));
        hosts.insert(k.to_string(), svc.clone());
        hosts.insert(format!("{k}.svc"), svc.clone());
        hosts.insert(format!("{k}.svc.{trust_domain}"), svc.clone());
        if trust_domain != "cluster.local" {
            hosts.insert(format!("{k}.svc.cluster.local"), svc.clone());
        }
        bare.entry(name).or_default().push((ns, svc));
    }
    for (name, candidates) in bare {
        let chosen = candidates.iter().find(|(ns, _)| *ns == proxy_ns).or(if candidates.len() == 1 {
            candidates.first()
        } else {
            None
        });
        if let Some((_, svc)) = chosen {
            hosts.insert(name.to_string(), (*svc).clone());
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
kind: Proxy
metadata: {name: frontend, namespace: shop}
spec:
  service: frontend
  outbound: {listen: 127.0.0.1:4140}
  inbound: {listen: 127.0.0.1:4143, app: 127.0.0.1:8080}
  upstreams: [{service: payments, listen: 127.0.0.1:9101}]
---
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  endpoints: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002, weight: 3}]
---
kind: Service
metadata: {name: payments-v2, namespace: shop}
spec:
  ports: [{port: 80, protocol: grpc}]
  endpoints: [{address: 127.0.0.1:9003}]
---
kind: Service
metadata: {name: ledger, namespace: finance}
spec:
  endpoints: [{address: 127.0.0.1:9004}]
";

    fn build(text: &str, prev: Option<&Snapshot>) -> Result<Snapshot, Diagnostics> {
        let docs = weft_api::parse_file("test.yaml", text)?;
        Snapshot::build(docs, "test.yaml", prev.map_or(1, |p| p.version + 1), prev)
    }

    #[test]
    fn hosts_resolve_by_every_accepted_name() {
        let snap = build(BASE, None).unwrap();
        for host in ["payments", "payments.shop", "payments.shop.svc", "payments.shop.svc.cluster.local", "PAYMENTS"] {
            assert_eq!(snap.lookup_host(host).map(|s| s.key.as_ref()), Some("payments.shop"), "{host}");
        }
        // A bare name from another namespace resolves only because it is unique.
        assert_eq!(snap.lookup_host("ledger").map(|s| s.key.as_ref()), Some("ledger.finance"));
        assert!(snap.lookup_host("nope").is_none());
        assert_eq!(snap.clusters["payments-v2.shop"].protocol, Protocol::Grpc);
    }

    #[test]
    fn services_resolve_by_name_in_the_proxy_namespace_or_by_full_name() {
        let snap = build(BASE, None).unwrap();
        assert_eq!(snap.proxy_namespace(), "shop");
        // `payments` is an upstream port's service (the pre-resolved list); the others are not.
        assert_eq!(&*snap.service("payments").unwrap().key, "payments.shop");
        assert_eq!(&*snap.service("payments.shop").unwrap().key, "payments.shop");
        assert_eq!(&*snap.service("payments-v2").unwrap().key, "payments-v2.shop");
        assert_eq!(&*snap.service("ledger.finance").unwrap().key, "ledger.finance");
        assert!(snap.service("ledger").is_none(), "a bare name means the proxy's own namespace");
        assert!(snap.service(&"x".repeat(300)).is_none());
    }

    #[test]
    fn a_service_without_routes_gets_a_default_rule_to_itself() {
        let snap = build(BASE, None).unwrap();
        let svc = snap.lookup_host("payments").unwrap();
        let rule = svc.find(&Method::DELETE, "/any", &http::HeaderMap::new()).unwrap();
        assert_eq!(rule.route.as_ref(), "default");
        assert_eq!(rule.backends[0].cluster.key.as_ref(), "payments.shop");
    }

    #[test]
    fn routes_compile_in_order_with_weighted_backends() {
        let text = format!(
            "{BASE}---
kind: Route
metadata: {{name: payments-api, namespace: shop}}
spec:
  service: payments
  rules:
    - match: {{pathPrefix: /v1/, headers: {{x-canary: \"true\"}}}}
      backends: [{{service: payments-v2, weight: 1}}]
    - match: {{pathPrefix: /v1/}}
      backends: [{{service: payments, weight: 90}}, {{service: payments-v2, weight: 10}}]
      timeout: 2s
"
        );
        let snap = build(&text, None).unwrap();
        let svc = snap.lookup_host("payments").unwrap();
        let mut canary = http::HeaderMap::new();
        canary.insert("x-canary", HeaderValue::from_static("true"));
        assert_eq!(svc.find(&Method::GET, "/v1/a", &canary).unwrap().index, 0);
        let second = svc.find(&Method::GET, "/v1/a", &http::HeaderMap::new()).unwrap();
        assert_eq!(second.index, 1);
        assert_eq!(second.timeout, Some(std::time::Duration::from_secs(2)));
        assert!(svc.find(&Method::GET, "/v2/a", &http::HeaderMap::new()).is_none(), "no rule: 404 no-route");
        let v2 = (0..10_000).filter(|_| second.pick_backend().cluster.key.as_ref() == "payments-v2.shop").count();
        assert!((700..1300).contains(&v2), "10% split, got {v2} of 10000");
    }

    #[test]
    fn each_backend_of_a_split_counts_under_its_own_service() {
        // Names of their own: the metrics registry is shared by every test of this process.
        let text = BASE.replace("payments", "ledgerx")
            + "---
kind: Route
metadata: {name: ledgerx-api, namespace: shop}
spec:
  service: ledgerx
  rules:
    - backends: [{service: ledgerx, weight: 90}, {service: ledgerx-v2, weight: 10}]
";
        let snap = build(&text, None).unwrap();
        let rule = &snap.lookup_host("ledgerx").unwrap().rules[0];
        let labels: Vec<(&str, &str)> =
            rule.backends.iter().map(|b| (b.metrics.service().as_ref(), b.metrics.backend().as_ref())).collect();
        assert_eq!(labels, [("ledgerx", "ledgerx"), ("ledgerx", "ledgerx-v2")]);
        rule.backends[1].metrics.record(503, false, 0.001);
        let text = String::from_utf8(crate::metrics::METRICS.render()).unwrap();
        let want = r#"weft_requests_total{backend="ledgerx-v2",classification="failure",code="503",direction="outbound",route="ledgerx-api",service="ledgerx"} 1"#;
        assert!(text.contains(want), "{want} missing from:\n{text}");
        // A service without a Route: its default rule's one backend is itself.
        let own = &snap.lookup_host("ledgerx-v2").unwrap().rules[0].backends[0].metrics;
        assert_eq!((own.service().as_ref(), own.backend().as_ref()), ("ledgerx-v2", "ledgerx-v2"));
    }

    #[test]
    fn unknown_references_are_errors_with_lines() {
        let text = format!(
            "{BASE}---
kind: Route
metadata: {{name: bad, namespace: shop}}
spec:
  service: payments
  rules:
    - backends: [{{service: nowhere, weight: 1}}]
"
        );
        let err = match build(&text, None) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a backend naming an unknown service must be rejected"),
        };
        assert!(err.contains("spec.rules[0].backends[0].service"), "{err}");
        assert!(err.contains("service \"nowhere\" is not declared in namespace \"shop\""), "{err}");
    }

    #[test]
    fn reload_keeps_endpoint_state_and_shared_counters() {
        let first = build(BASE, None).unwrap();
        let second = build(BASE, Some(&first)).unwrap();
        let (a, b) = (&first.clusters["payments.shop"], &second.clusters["payments.shop"]);
        assert!(Arc::ptr_eq(&a.shared, &b.shared), "limits and budgets survive a reload");
        for (x, y) in a.set.endpoints().iter().zip(b.set.endpoints()) {
            assert!(Arc::ptr_eq(x, y), "endpoint health and latency survive a reload");
        }
        assert!(Arc::ptr_eq(
            &first.inbound.as_ref().unwrap().cluster.set.endpoints()[0],
            &second.inbound.as_ref().unwrap().cluster.set.endpoints()[0]
        ));
        // A changed weight makes a new endpoint (its share changes); others are kept.
        let changed = BASE.replace("weight: 3", "weight: 4");
        let third = build(&changed, Some(&second)).unwrap();
        let eps = third.clusters["payments.shop"].set.endpoints();
        assert!(Arc::ptr_eq(&eps[0], &b.set.endpoints()[0]));
        assert!(!Arc::ptr_eq(&eps[1], &b.set.endpoints()[1]));
        assert_eq!(eps[1].weight, 4);
    }

    #[test]
    fn a_mesh_asking_for_mtls_needs_an_identity_source() {
        let strict = format!("{BASE}---\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{mtls: strict}}\n");
        let err = build(&strict, None).err().expect("strict without tls files or controlPlane");
        assert!(
            err.to_string().contains("test.yaml:2: spec.tls: the Mesh at test.yaml:28 asks for mtls: strict"),
            "{err}"
        );
        let off = strict.replace("mtls: strict", "mtls: off");
        assert!(build(&off, None).is_ok());
        let with_files = strict.replace(
            "  service: frontend\n",
            "  service: frontend\n  tls: {certFile: c.pem, keyFile: k.pem, bundleFile: b.pem}\n",
        );
        assert!(build(&with_files, None).is_ok());
    }

    /// The issue's reproduction: with two Routes and two TrafficPolicies for payments, a proxy
    /// used the first Route's rules but the second TrafficPolicy. Both are refused now.
    #[test]
    fn two_routes_or_traffic_policies_for_one_service_are_refused() {
        let text = format!(
            "{BASE}---
kind: Route
metadata: {{name: first, namespace: shop}}
spec: {{service: payments, rules: [{{timeout: 1s}}]}}
---
kind: Route
metadata: {{name: second, namespace: shop}}
spec: {{service: payments, rules: [{{timeout: 9s}}]}}
---
kind: TrafficPolicy
metadata: {{name: first, namespace: shop}}
spec: {{service: payments, loadBalancer: round-robin}}
---
kind: TrafficPolicy
metadata: {{name: second, namespace: shop}}
spec: {{service: payments.shop, loadBalancer: least-request}}
"
        );
        let err = build(&text, None).err().expect("conflicting documents").to_string();
        assert!(
            err.contains(
                "test.yaml:32: spec.service: Route \"shop/second\" conflicts with Route \"shop/first\" at test.yaml:28"
            ),
            "{err}"
        );
        assert!(
            err.contains("TrafficPolicy \"shop/second\" conflicts with TrafficPolicy \"shop/first\" at test.yaml:36"),
            "{err}"
        );
        // The same documents built without going through a file (the control-plane path).
        let mut docs = weft_api::decode::decode_documents("test.yaml", &text).unwrap();
        docs.iter_mut().for_each(|d| d.metadata_mut().fields = Default::default());
        let err = Snapshot::build(docs, "cp", 1, None).err().expect("conflicts from any source").to_string();
        assert!(err.contains("Route \"shop/second\" conflicts with Route \"shop/first\""), "{err}");
    }

    #[test]
    fn a_route_for_an_undeclared_service_points_at_its_service_field() {
        let text = format!(
            "{BASE}---\nkind: Route\nmetadata: {{name: r, namespace: shop}}\nspec:\n  rules: [{{timeout: 1s}}]\n  service: billing\n"
        );
        let err = build(&text, None).err().expect("billing has no Service").to_string();
        assert!(
            err.starts_with("test.yaml:30: spec.service: service \"billing\" is not declared in namespace \"shop\""),
            "{err}"
        );
    }

    #[test]
    fn authorization_policies_of_the_own_service_only() {
        let text = format!(
            "{BASE}---
kind: AuthorizationPolicy
metadata: {{name: mine, namespace: shop}}
spec: {{service: frontend, default: deny}}
---
kind: AuthorizationPolicy
metadata: {{name: theirs, namespace: shop}}
spec: {{service: payments, default: allow}}
"
        );
        let snap = build(&text, None).unwrap();
        let authz = snap.authz.as_ref().expect("frontend's policy compiled");
        assert!(!authz.decide(Some("spiffe://cluster.local/ns/shop/sa/x"), Some(&Method::GET), Some("/")).allowed);
        assert!(build(BASE, None).unwrap().authz.is_none(), "no policy: everything allowed");
    }

    #[test]
    fn a_file_without_proxy_document_is_rejected() {
        let text = "kind: Service\nmetadata: {name: a}\nspec: {endpoints: [{address: 127.0.0.1:1}]}\n";
        let err = build(text, None).err().expect("no Proxy document");
        assert!(err.to_string().contains("no Proxy document"));
    }

    /// A pod at 10.0.0.2 whose proxy serves `web` (http on 8080, its proxy's inbound at 4143)
    /// and a TCP service declared by its endpoint address.
    const TRANSPARENT: &str = "
kind: Proxy
metadata: {name: web, namespace: shop}
spec:
  service: web
  outbound: {listen: 127.0.0.1:4140}
  inbound: {listen: 0.0.0.0:4143, app: 127.0.0.1:8080}
---
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 8081, protocol: tcp}]
  endpoints: [{address: 10.0.0.2:4143}]
---
kind: Service
metadata: {name: db, namespace: shop}
spec:
  ports: [{port: 5432, protocol: tcp}]
  endpoints: [{address: 10.0.0.3:5432}, {address: 10.0.0.2:4143}]
  virtualIPs: [10.96.0.20, 'fd00:96::20']
";

    #[test]
    fn original_destinations_find_their_service_by_endpoint_or_by_endpoint_ip_and_port() {
        let snap = build(TRANSPARENT, None).unwrap();
        let at = |a: &str| snap.service_at(a.parse().unwrap()).map(|d| (d.service.as_ref(), d.protocol));
        assert_eq!(at("10.0.0.2:8080"), Some(("web.shop", Protocol::Http)), "the pod's address and app port");
        assert_eq!(at("10.0.0.2:8081"), Some(("web.shop", Protocol::Tcp)), "each declared port with its protocol");
        assert_eq!(at("10.0.0.3:5432"), Some(("db.shop", Protocol::Tcp)), "an endpoint address itself");
        assert_eq!(at("10.0.0.2:4143").map(|d| d.0), Some("web.shop"), "the first service keeps an address");
        assert_eq!(at("10.0.0.9:8080"), None, "outside the mesh");
        assert_eq!(at("10.0.0.2:9999"), None, "a port no Service declares");
        assert_eq!(at("10.96.0.20:5432"), Some(("db.shop", Protocol::Tcp)), "a virtual IP on a declared port");
        assert_eq!(at("[fd00:96::20]:5432").map(|d| d.0), Some("db.shop"), "an IPv6 virtual IP");
        assert_eq!(at("10.96.0.20:80"), None, "a virtual IP on a port the Service does not declare");
    }

    #[test]
    fn a_redirected_call_reaches_the_app_on_the_port_it_was_addressed_to() {
        let snap = build(TRANSPARENT, None).unwrap();
        let target = |port| match snap.app_target(port) {
            Some(AppTarget::Declared(i)) => format!("{} {:?}", i.cluster.set.endpoints()[0].addr, i.cluster.protocol),
            Some(AppTarget::Undeclared(a)) => format!("{a} opaque"),
            None => "none".into(),
        };
        assert_eq!(target(None), "127.0.0.1:8080 Http", "not redirected: the configured app");
        assert_eq!(target(Some(8080)), "127.0.0.1:8080 Http");
        assert_eq!(target(Some(8081)), "127.0.0.1:8081 Tcp", "a declared port, with its protocol");
        assert_eq!(target(Some(9000)), "127.0.0.1:9000 opaque", "an undeclared port keeps the app's IP");
        assert!(snap.app_is_tcp(Some(8081)) && snap.app_is_tcp(Some(9000)) && !snap.app_is_tcp(None));
    }

    #[test]
    fn the_apps_other_ports_keep_their_state_across_reloads() {
        let first = build(TRANSPARENT, None).unwrap();
        let second = build(TRANSPARENT, Some(&first)).unwrap();
        let shared = |s: &Snapshot| match s.app_target(Some(8081)) {
            Some(AppTarget::Declared(i)) => i.cluster.shared.clone(),
            _ => panic!("8081 is declared"),
        };
        assert!(Arc::ptr_eq(&shared(&first), &shared(&second)));
    }
}
