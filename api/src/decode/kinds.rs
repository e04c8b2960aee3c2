//! Decoding of each kind's `spec`, field by field, falling back to the defaults in policy.rs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::join;
use super::reader::{Decoder, Map, key_text};
use crate::schema;
use crate::validate::{
    self, check_header_name, check_header_value, check_http_path, check_method, check_name, check_service_ref,
    check_spiffe_id,
};
use crate::yaml::{Node, Value};
use crate::*;

impl Decoder<'_> {
    pub(super) fn service(&mut self, spec: &Map) -> ServiceSpec {
        let mut ports = Vec::new();
        for (path, node) in self.list(spec, "ports") {
            let Some(m) = self.mapping(node, path, &schema::SERVICE_PORT.names()) else {
                continue;
            };
            let port = self.required(&m, "port").and_then(|_| self.integer(&m, "port", validate::PORT));
            let protocol = self.choice(&m, "protocol", Protocol::NAMES, Protocol::from_name).unwrap_or_default();
            ports.extend(port.map(|port| ServicePort { port, protocol }));
        }
        let mut endpoints = Vec::new();
        for (path, node) in self.list(spec, "endpoints") {
            let Some(m) = self.mapping(node, path, &schema::ENDPOINT.names()) else {
                continue;
            };
            let address = self.required_address(&m, "address");
            let weight = self.integer(&m, "weight", validate::WEIGHT).unwrap_or(DEFAULT_WEIGHT);
            let identity = self.string(&m, "identity", check_spiffe_id);
            endpoints.extend(address.map(|address| EndpointSpec { address, weight, identity }));
        }
        let mut virtual_ips = Vec::new();
        self.mark(spec, "virtualIPs");
        for (path, node) in self.list(spec, "virtualIPs") {
            let Some(text) = self.text(node, &path) else {
                continue;
            };
            match text.parse::<IpAddr>() {
                Ok(ip) if virtual_ips.contains(&ip) => self.error(node.pos(), &path, format!("{ip} is listed twice")),
                Ok(ip) if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() => self.error(
                    node.pos(),
                    &path,
                    format!("{ip} cannot stand for a service; write the Service's cluster IP such as 10.96.0.10"),
                ),
                Ok(ip) => virtual_ips.push(ip),
                Err(_) => self.error(
                    node.pos(),
                    &path,
                    format!("invalid IP address {text:?}; write an address such as 10.96.0.10 or fd00::10 (no port)"),
                ),
            }
        }
        ServiceSpec { ports, endpoints, virtual_ips }
    }

    pub(super) fn route(&mut self, spec: &Map) -> RouteSpec {
        let service = self.required_string(spec, "service", check_service_ref);
        self.mark(spec, "service");
        let mut rules = Vec::new();
        for (path, node) in self.list(spec, "rules") {
            let Some(m) = self.mapping(node, path, &schema::ROUTE_RULE.names()) else {
                continue;
            };
            let matches = match self.sub(&m, "match", &schema::ROUTE_MATCH.names()) {
                Some(mm) => self.route_match(&mm),
                None => RouteMatch::default(),
            };
            let mut backends = Vec::new();
            for (path, node) in self.list(&m, "backends") {
                let Some(b) = self.mapping(node, path, &schema::BACKEND.names()) else {
                    continue;
                };
                let service = self.required_string(&b, "service", check_service_ref);
                self.mark(&b, "service");
                let weight = self.integer(&b, "weight", validate::WEIGHT).unwrap_or(DEFAULT_WEIGHT);
                backends.push(BackendRef { service, weight });
            }
            let timeout = self.duration(&m, "timeout", true);
            let retry = self.sub(&m, "retry", &schema::RETRY.names()).map(|r| {
                let retry = self.retry(&r);
                if let (Some(route), Some(per_try), Some(node)) =
                    (timeout, retry.per_try_timeout, r.get("perTryTimeout"))
                    && let Err(message) = validate::check_per_try_timeout(per_try, route)
                {
                    self.error(node.pos(), &r.path("perTryTimeout"), message);
                }
                retry
            });
            rules.push(RouteRule { matches, backends, timeout, retry, line: node.line });
        }
        RouteSpec { service, rules }
    }

    fn route_match(&mut self, m: &Map) -> RouteMatch {
        let headers = match m.get("headers") {
            Some(node) => self.header_map(node, &m.path("headers")),
            None => BTreeMap::new(),
        };
        RouteMatch {
            path_prefix: self.string(m, "pathPrefix", check_http_path),
            path: self.string(m, "path", check_http_path),
            methods: self.strings(m, "methods", str::to_ascii_uppercase, check_method),
            headers,
        }
    }

    /// Header name → exact value. Names are open-ended, so this is not a `mapping` of fields.
    fn header_map(&mut self, node: &Node, path: &str) -> BTreeMap<String, String> {
        let mut headers = BTreeMap::new();
        let Value::Mapping(entries) = &node.value else {
            self.error(
                node.pos(),
                path,
                format!("expected a mapping of header names to values, found {}", node.describe()),
            );
            return headers;
        };
        for (key, value) in entries {
            let Some(name) = key_text(key).map(str::to_ascii_lowercase) else {
                self.error(key.pos(), path, format!("header names must be plain words, found {}", key.describe()));
                continue;
            };
            let value_path = join(path, &name);
            if let Err(message) = check_header_name(&name) {
                self.error(key.pos(), &value_path, message);
                continue;
            }
            // A null would silently match "header present with an empty value"; make it explicit.
            let text = match &value.value {
                Value::Scalar(s) if !value.is_null() => s.text.clone(),
                _ => {
                    let message =
                        format!("expected the header's exact value (write \"\" for empty), found {}", value.describe());
                    self.error(value.pos(), &value_path, message);
                    continue;
                }
            };
            if let Err(message) = check_header_value(&text) {
                self.error(value.pos(), &value_path, message);
                continue;
            }
            if headers.insert(name, text).is_some() {
                self.error(key.pos(), &value_path, "header is listed twice (names ignore case)");
            }
        }
        headers
    }

    fn retry(&mut self, m: &Map) -> RetryPolicy {
        let d = RetryPolicy::default();
        let on = match m.get("on") {
            Some(_) => {
                let mut on = Vec::new();
                for (path, node) in self.list(m, "on") {
                    on.extend(self.choice_node(node, &path, RetryOn::NAMES, RetryOn::from_name));
                }
                on
            }
            None => d.on,
        };
        RetryPolicy {
            attempts: self.integer(m, "attempts", validate::RETRY_ATTEMPTS).unwrap_or(d.attempts),
            on,
            per_try_timeout: self.duration(m, "perTryTimeout", true),
            backoff_base: self.duration(m, "backoffBase", false).unwrap_or(d.backoff_base),
            backoff_max: self.duration(m, "backoffMax", false).unwrap_or(d.backoff_max),
        }
    }

    pub(super) fn traffic_policy(&mut self, spec: &Map) -> TrafficPolicySpec {
        let service = self.required_string(spec, "service", check_service_ref);
        self.mark(spec, "service");
        let d = TrafficPolicySpec::defaults_for(&service);
        let limits = match self.sub(spec, "limits", &schema::LIMITS.names()) {
            Some(m) => Limits {
                max_concurrent_requests: self
                    .integer(&m, "maxConcurrentRequests", validate::AT_LEAST_ONE_U32)
                    .unwrap_or(d.limits.max_concurrent_requests),
                max_pending_requests: self
                    .integer(&m, "maxPendingRequests", validate::AT_LEAST_ONE_U32)
                    .unwrap_or(d.limits.max_pending_requests),
            },
            None => d.limits,
        };
        let outlier_detection = match self.sub(spec, "outlierDetection", &schema::OUTLIER_DETECTION.names()) {
            Some(m) => {
                let od = d.outlier_detection;
                OutlierDetection {
                    consecutive_failures: self
                        .integer(&m, "consecutiveFailures", validate::AT_LEAST_ONE_U32)
                        .unwrap_or(od.consecutive_failures),
                    base_ejection: self.duration(&m, "baseEjection", true).unwrap_or(od.base_ejection),
                    max_ejection: self.duration(&m, "maxEjection", false).unwrap_or(od.max_ejection),
                    max_ejection_percent: self
                        .integer(&m, "maxEjectionPercent", validate::PERCENT)
                        .unwrap_or(od.max_ejection_percent),
                }
            }
            None => d.outlier_detection,
        };
        let retry_budget = match self.sub(spec, "retryBudget", &schema::RETRY_BUDGET.names()) {
            Some(m) => RetryBudgetSpec {
                ratio: self.ratio(&m, "ratio").unwrap_or(d.retry_budget.ratio),
                min_per_second: self
                    .integer(&m, "minPerSecond", validate::ANY_U32)
                    .unwrap_or(d.retry_budget.min_per_second),
            },
            None => d.retry_budget,
        };
        TrafficPolicySpec {
            load_balancer: self
                .choice(spec, "loadBalancer", LoadBalancer::NAMES, LoadBalancer::from_name)
                .unwrap_or(d.load_balancer),
            connect_timeout: self.duration(spec, "connectTimeout", true).unwrap_or(d.connect_timeout),
            idle_timeout: self.duration(spec, "idleTimeout", true).unwrap_or(d.idle_timeout),
            limits,
            outlier_detection,
            retry_budget,
            service,
        }
    }

    pub(super) fn authorization(&mut self, spec: &Map) -> AuthorizationSpec {
        let service = self.required_string(spec, "service", check_service_ref);
        self.mark(spec, "service");
        let default = self.choice(spec, "default", AuthzAction::NAMES, authz_action).unwrap_or_default();
        let mut rules = Vec::new();
        for (path, node) in self.list(spec, "rules") {
            let Some(m) = self.mapping(node, path, &schema::AUTHZ_RULE.names()) else {
                continue;
            };
            rules.push(AuthzRule {
                action: self.choice(&m, "action", AuthzAction::NAMES, authz_action).unwrap_or(AuthzAction::Allow),
                from: self.strings(&m, "from", str::to_string, check_spiffe_id),
                paths: self.strings(&m, "paths", str::to_string, check_http_path),
                methods: self.strings(&m, "methods", str::to_ascii_uppercase, check_method),
                line: node.line,
            });
        }
        AuthorizationSpec { service, default, rules }
    }

    pub(super) fn mesh(&mut self, spec: &Map) -> MeshSpec {
        let d = MeshSpec::default();
        self.mark(spec, "mtls");
        MeshSpec {
            trust_domain: self.string(spec, "trustDomain", validate::check_trust_domain).unwrap_or(d.trust_domain),
            mtls: self.choice(spec, "mtls", MtlsMode::NAMES, mtls_mode).unwrap_or(d.mtls),
            cert_ttl: self.duration(spec, "certTTL", true).unwrap_or(d.cert_ttl),
        }
    }

    pub(super) fn proxy(&mut self, spec: &Map) -> ProxySpec {
        let service = self.required_string(spec, "service", check_name);
        for key in ["service", "tls", "controlPlane"] {
            self.mark(spec, key);
        }
        let d = ProxySpec::defaults_for(&service);
        let inbound = self.sub(spec, "inbound", &schema::INBOUND.names()).and_then(|m| {
            let listen = self.address(&m, "listen").unwrap_or(InboundSpec::DEFAULT_LISTEN);
            let protocol = self.choice(&m, "protocol", Protocol::NAMES, Protocol::from_name);
            let app = self.required_address(&m, "app")?;
            Some(InboundSpec { listen, app, protocol })
        });
        let outbound = self
            .sub(spec, "outbound", &schema::OUTBOUND.names())
            .map(|m| OutboundSpec { listen: self.address(&m, "listen").unwrap_or(OutboundSpec::DEFAULT_LISTEN) });
        let mut upstreams = Vec::new();
        for (path, node) in self.list(spec, "upstreams") {
            let Some(m) = self.mapping(node, path, &schema::UPSTREAM.names()) else {
                continue;
            };
            let service = self.required_string(&m, "service", check_service_ref);
            self.mark(&m, "service");
            upstreams.extend(self.required_address(&m, "listen").map(|listen| UpstreamSpec { service, listen }));
        }
        let admin = match self.sub(spec, "admin", &schema::ADMIN.names()) {
            Some(m) => AdminSpec { listen: self.address(&m, "listen").unwrap_or(d.admin.listen) },
            None => d.admin,
        };
        let tls = self.sub(spec, "tls", &schema::TLS.names()).map(|m| TlsFiles {
            cert_file: self.required_string(&m, "certFile", validate::check_not_empty),
            key_file: self.required_string(&m, "keyFile", validate::check_not_empty),
            bundle_file: self.required_string(&m, "bundleFile", validate::check_not_empty),
        });
        let control_plane = self.sub(spec, "controlPlane", &schema::CONTROL_PLANE.names()).map(|m| ControlPlaneSpec {
            address: self.required_string(&m, "address", validate::check_url),
            join_token_file: self.string(&m, "joinTokenFile", validate::check_not_empty),
            service_account_token_file: self.string(&m, "serviceAccountTokenFile", validate::check_not_empty),
            trust_bundle_file: self.string(&m, "trustBundleFile", validate::check_not_empty),
            identity: self.string(&m, "identity", validate::check_spiffe_id),
        });
        let http = match self.sub(spec, "http", &schema::HTTP_LIMITS.names()) {
            Some(m) => HttpLimits {
                max_header_bytes: self
                    .integer(&m, "maxHeaderBytes", validate::AT_LEAST_ONE_U32)
                    .unwrap_or(d.http.max_header_bytes),
                max_body_bytes: self.integer(&m, "maxBodyBytes", validate::ANY_U64).unwrap_or(d.http.max_body_bytes),
                header_read_timeout: self.duration(&m, "headerReadTimeout", true).unwrap_or(d.http.header_read_timeout),
                client_idle_timeout: self.duration(&m, "clientIdleTimeout", true).unwrap_or(d.http.client_idle_timeout),
            },
            None => d.http,
        };
        let log = match self.sub(spec, "log", &schema::LOG.names()) {
            Some(m) => LogSpec {
                format: self.choice(&m, "format", LogFormat::NAMES, log_format).unwrap_or(d.log.format),
                level: self.string(&m, "level", validate::check_log_level).unwrap_or(d.log.level),
                access_log: self.boolean(&m, "accessLog").unwrap_or(d.log.access_log),
            },
            None => d.log,
        };
        ProxySpec {
            inbound,
            outbound,
            upstreams,
            admin,
            tls,
            control_plane,
            identity_dir: self.string(spec, "identityDir", validate::check_not_empty),
            state_dir: self.string(spec, "stateDir", validate::check_not_empty),
            workers: self.integer(spec, "workers", validate::WORKERS).unwrap_or(d.workers),
            shutdown_grace: self.duration(spec, "shutdownGrace", false).unwrap_or(d.shutdown_grace),
            http,
            log,
            service,
        }
    }
}

// The YAML spellings of the enums below are their `NAMES` in policy.rs.

fn authz_action(s: &str) -> Option<AuthzAction> {
    match s {
        "allow" => Some(AuthzAction::Allow),
        "deny" => Some(AuthzAction::Deny),
        _ => None,
    }
}

fn mtls_mode(s: &str) -> Option<MtlsMode> {
    match s {
        "strict" => Some(MtlsMode::Strict),
        "permissive" => Some(MtlsMode::Permissive),
        "off" => Some(MtlsMode::Off),
        _ => None,
    }
}

fn log_format(s: &str) -> Option<LogFormat> {
    match s {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::tests::{addr, decode, meta, problems};
    use crate::*;

    #[test]
    fn service_round_trips() {
        let text = r#"apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 9090, protocol: grpc}]
  endpoints:
    - {address: 127.0.0.1:9001}
    - {address: 127.0.0.1:9002, weight: 2}
    - {address: "[::1]:4143", identity: "spiffe://cluster.local/ns/shop/sa/payments"}
  virtualIPs: [10.96.0.10, "fd00:96::10"]
"#;
        let expected = Document::Service(Service {
            metadata: meta("payments", "shop", 1),
            spec: ServiceSpec {
                ports: vec![
                    ServicePort { port: 8080, protocol: Protocol::Http },
                    ServicePort { port: 9090, protocol: Protocol::Grpc },
                ],
                endpoints: vec![
                    EndpointSpec { address: addr("127.0.0.1:9001"), weight: 1, identity: None },
                    EndpointSpec { address: addr("127.0.0.1:9002"), weight: 2, identity: None },
                    EndpointSpec {
                        address: addr("[::1]:4143"),
                        weight: 1,
                        identity: Some("spiffe://cluster.local/ns/shop/sa/payments".to_string()),
                    },
                ],
                virtual_ips: vec!["10.96.0.10".parse().unwrap(), "fd00:96::10".parse().unwrap()],
            },
        });
        assert_eq!(decode(text), std::slice::from_ref(&expected));
        // The discovery API carries it as JSON under the same name; an empty list is left out.
        let json = serde_json::to_value(&expected).unwrap();
        assert_eq!(json["spec"]["virtualIPs"], serde_json::json!(["10.96.0.10", "fd00:96::10"]));
        let Document::Service(mut bare) = expected else { unreachable!() };
        bare.spec.virtual_ips.clear();
        assert!(serde_json::to_value(&bare).unwrap()["spec"].get("virtualIPs").is_none());
    }

    #[test]
    fn virtual_ips_are_addresses_without_ports_each_once() {
        let text = "kind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, protocol: http}]\n  virtualIPs: [10.96.0.10:80, 10.96.0.11, 10.96.0.11, 127.0.0.1, 0.0.0.0, {ip: 1}]\n";
        assert_eq!(
            problems(text),
            [
                "f.yaml:5: spec.virtualIPs[0]: invalid IP address \"10.96.0.10:80\"; write an address such as 10.96.0.10 or fd00::10 (no port)",
                "f.yaml:5: spec.virtualIPs[2]: 10.96.0.11 is listed twice",
                "f.yaml:5: spec.virtualIPs[3]: 127.0.0.1 cannot stand for a service; write the Service's cluster IP such as 10.96.0.10",
                "f.yaml:5: spec.virtualIPs[4]: 0.0.0.0 cannot stand for a service; write the Service's cluster IP such as 10.96.0.10",
                "f.yaml:5: spec.virtualIPs[5]: expected a string, found a mapping",
            ]
        );
    }

    #[test]
    fn route_round_trips_with_normalised_methods_and_headers() {
        let text = r#"kind: Route
metadata: {name: payments-api, namespace: shop}
spec:
  service: payments
  rules:
    - match: {pathPrefix: /v1/, methods: [get, POST], headers: {X-Canary: "true", x-n: 5}}
      backends: [{service: payments, weight: 90}, {service: payments-v2, weight: 10}]
      timeout: 2s
      retry: {attempts: 3, on: [5xx, connect-failure, reset], perTryTimeout: 500ms, backoffBase: 10ms, backoffMax: 1s}
    - match: {path: /health}
"#;
        let expected = Document::Route(Route {
            metadata: meta("payments-api", "shop", 1),
            spec: RouteSpec {
                service: "payments".to_string(),
                rules: vec![
                    RouteRule {
                        matches: RouteMatch {
                            path_prefix: Some("/v1/".to_string()),
                            path: None,
                            methods: vec!["GET".to_string(), "POST".to_string()],
                            headers: [("x-canary", "true"), ("x-n", "5")]
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        },
                        backends: vec![
                            BackendRef { service: "payments".to_string(), weight: 90 },
                            BackendRef { service: "payments-v2".to_string(), weight: 10 },
                        ],
                        timeout: Some(Duration::from_secs(2)),
                        retry: Some(RetryPolicy {
                            attempts: 3,
                            on: vec![RetryOn::Status5xx, RetryOn::ConnectFailure, RetryOn::Reset],
                            per_try_timeout: Some(Duration::from_millis(500)),
                            backoff_base: Duration::from_millis(10),
                            backoff_max: Duration::from_secs(1),
                        }),
                        line: 6,
                    },
                    RouteRule {
                        matches: RouteMatch { path: Some("/health".to_string()), ..RouteMatch::default() },
                        backends: Vec::new(),
                        timeout: None,
                        retry: None,
                        line: 10,
                    },
                ],
            },
        });
        assert_eq!(decode(text), [expected]);
    }

    #[test]
    fn traffic_policy_round_trips_and_defaults_apply() {
        let text = r#"kind: TrafficPolicy
metadata: {name: payments, namespace: shop}
spec:
  service: payments
  loadBalancer: round-robin
  connectTimeout: 2s
  idleTimeout: 3s
  limits: {maxConcurrentRequests: 100, maxPendingRequests: 10}
  outlierDetection: {consecutiveFailures: 3, baseEjection: 10s, maxEjection: 1m, maxEjectionPercent: 30}
  retryBudget: {ratio: 0.1, minPerSecond: 5}
---
kind: TrafficPolicy
metadata: {name: other}
spec: {service: other, outlierDetection: {consecutiveFailures: 7}}
"#;
        let docs = decode(text);
        let full = TrafficPolicySpec {
            service: "payments".to_string(),
            load_balancer: LoadBalancer::RoundRobin,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
            limits: Limits { max_concurrent_requests: 100, max_pending_requests: 10 },
            outlier_detection: OutlierDetection {
                consecutive_failures: 3,
                base_ejection: Duration::from_secs(10),
                max_ejection: Duration::from_secs(60),
                max_ejection_percent: 30,
            },
            retry_budget: RetryBudgetSpec { ratio: 0.1, min_per_second: 5 },
        };
        assert_eq!(
            docs[0],
            Document::TrafficPolicy(TrafficPolicy { metadata: meta("payments", "shop", 1), spec: full })
        );
        let mut defaults = TrafficPolicySpec::defaults_for("other");
        defaults.outlier_detection.consecutive_failures = 7;
        assert_eq!(
            docs[1],
            Document::TrafficPolicy(TrafficPolicy { metadata: meta("other", "default", 12), spec: defaults })
        );
    }

    #[test]
    fn authorization_policy_round_trips() {
        let text = r#"kind: AuthorizationPolicy
metadata: {name: payments, namespace: shop}
spec:
  service: payments
  default: allow
  rules:
    - {from: ["spiffe://cluster.local/ns/shop/sa/frontend"], paths: [/v1/], methods: [get]}
    - {action: deny, methods: [delete]}
"#;
        let expected = Document::AuthorizationPolicy(AuthorizationPolicy {
            metadata: meta("payments", "shop", 1),
            spec: AuthorizationSpec {
                service: "payments".to_string(),
                default: AuthzAction::Allow,
                rules: vec![
                    AuthzRule {
                        action: AuthzAction::Allow,
                        from: vec!["spiffe://cluster.local/ns/shop/sa/frontend".to_string()],
                        paths: vec!["/v1/".to_string()],
                        methods: vec!["GET".to_string()],
                        line: 7,
                    },
                    AuthzRule {
                        action: AuthzAction::Deny,
                        from: Vec::new(),
                        paths: Vec::new(),
                        methods: vec!["DELETE".to_string()],
                        line: 8,
                    },
                ],
            },
        });
        assert_eq!(decode(text), [expected]);
        let minimal = decode("kind: AuthorizationPolicy\nmetadata: {name: a}\nspec: {service: a}\n");
        let Document::AuthorizationPolicy(a) = &minimal[0] else { panic!("wrong kind") };
        assert_eq!((a.spec.default, a.spec.rules.len()), (AuthzAction::Deny, 0));
    }

    #[test]
    fn mesh_round_trips_and_defaults_apply() {
        let docs = decode(
            "kind: Mesh\nmetadata: {name: default}\nspec: {trustDomain: example.org, mtls: permissive, certTTL: 1h}\n---\nkind: Mesh\nmetadata: {name: other}\n",
        );
        let spec = MeshSpec {
            trust_domain: "example.org".to_string(),
            mtls: MtlsMode::Permissive,
            cert_ttl: Duration::from_secs(3600),
        };
        assert_eq!(docs[0], Document::Mesh(Mesh { metadata: meta("default", "default", 1), spec }));
        assert_eq!(docs[1], Document::Mesh(Mesh { metadata: meta("other", "default", 5), spec: MeshSpec::default() }));
    }

    #[test]
    fn proxy_round_trips_and_defaults_apply() {
        let text = r#"kind: Proxy
metadata: {name: frontend, namespace: shop}
spec:
  service: frontend
  inbound: {listen: 0.0.0.0:4143, app: 127.0.0.1:8080, protocol: http2}
  outbound: {listen: 127.0.0.1:4140}
  upstreams: [{service: payments, listen: 127.0.0.1:9101}]
  admin: {listen: 127.0.0.1:4191}
  tls: {certFile: id.pem, keyFile: id-key.pem, bundleFile: bundle.pem}
  controlPlane: {address: "https://weft-control.weft:8086", joinTokenFile: /var/run/weft/token,
                 trustBundleFile: /var/run/weft/trust.pem, identity: "spiffe://cluster.local/ns/weft/sa/cp"}
  identityDir: /var/run/weft/identity
  stateDir: /var/lib/weft
  workers: 2
  shutdownGrace: 10s
  http: {maxHeaderBytes: 8192, maxBodyBytes: 1048576, headerReadTimeout: 5s, clientIdleTimeout: 1m}
  log: {format: json, level: debug, accessLog: true}
"#;
        let expected = ProxySpec {
            service: "frontend".to_string(),
            inbound: Some(InboundSpec {
                listen: addr("0.0.0.0:4143"),
                app: addr("127.0.0.1:8080"),
                protocol: Some(Protocol::Http2),
            }),
            outbound: Some(OutboundSpec { listen: addr("127.0.0.1:4140") }),
            upstreams: vec![UpstreamSpec { service: "payments".to_string(), listen: addr("127.0.0.1:9101") }],
            admin: AdminSpec { listen: addr("127.0.0.1:4191") },
            tls: Some(TlsFiles {
                cert_file: "id.pem".to_string(),
                key_file: "id-key.pem".to_string(),
                bundle_file: "bundle.pem".to_string(),
            }),
            control_plane: Some(ControlPlaneSpec {
                address: "https://weft-control.weft:8086".to_string(),
                join_token_file: Some("/var/run/weft/token".to_string()),
                service_account_token_file: None,
                trust_bundle_file: Some("/var/run/weft/trust.pem".to_string()),
                identity: Some("spiffe://cluster.local/ns/weft/sa/cp".to_string()),
            }),
            identity_dir: Some("/var/run/weft/identity".to_string()),
            state_dir: Some("/var/lib/weft".to_string()),
            workers: 2,
            shutdown_grace: Duration::from_secs(10),
            http: HttpLimits {
                max_header_bytes: 8192,
                max_body_bytes: 1048576,
                header_read_timeout: Duration::from_secs(5),
                client_idle_timeout: Duration::from_secs(60),
            },
            log: LogSpec { format: LogFormat::Json, level: "debug".to_string(), access_log: true },
        };
        assert_eq!(decode(text), [Document::Proxy(Proxy { metadata: meta("frontend", "shop", 1), spec: expected })]);

        let minimal = decode(
            "kind: Proxy\nmetadata: {name: p}\nspec: {service: p, inbound: {app: 127.0.0.1:80}, outbound: {}}\n",
        );
        let mut defaults = ProxySpec::defaults_for("p");
        defaults.inbound =
            Some(InboundSpec { listen: addr("0.0.0.0:4143"), app: addr("127.0.0.1:80"), protocol: None });
        defaults.outbound = Some(OutboundSpec { listen: addr("127.0.0.1:4140") });
        assert_eq!(minimal, [Document::Proxy(Proxy { metadata: meta("p", "default", 1), spec: defaults })]);
    }

    #[test]
    fn retry_defaults_apply_field_by_field() {
        let docs = decode("kind: Route\nmetadata: {name: r}\nspec:\n  service: s\n  rules: [{retry: {attempts: 1}}]\n");
        let Document::Route(r) = &docs[0] else { panic!("wrong kind") };
        let retry = r.spec.rules[0].retry.clone().unwrap();
        assert_eq!(retry, RetryPolicy { attempts: 1, ..RetryPolicy::default() });
    }
}
