//! The policy kinds operators write (DESIGN.md "Policy YAML"), as plain typed structs.
//!
//! Field names follow the YAML (camelCase there, snake_case here). Defaults live in the
//! `Default` impls so that the decoder, the proxy and the docs agree on one value.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::serde_duration;

pub const API_VERSION: &str = "weft.dev/v1alpha1";
pub const DEFAULT_NAMESPACE: &str = "default";

/// One YAML document of any kind, with the line it starts on (for cross-document errors).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Document {
    Service(Service),
    Route(Route),
    TrafficPolicy(TrafficPolicy),
    AuthorizationPolicy(AuthorizationPolicy),
    Mesh(Mesh),
    Proxy(Proxy),
}

impl Document {
    pub fn metadata(&self) -> &Metadata {
        match self {
            Document::Service(d) => &d.metadata,
            Document::Route(d) => &d.metadata,
            Document::TrafficPolicy(d) => &d.metadata,
            Document::AuthorizationPolicy(d) => &d.metadata,
            Document::Mesh(d) => &d.metadata,
            Document::Proxy(d) => &d.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            Document::Service(d) => &mut d.metadata,
            Document::Route(d) => &mut d.metadata,
            Document::TrafficPolicy(d) => &mut d.metadata,
            Document::AuthorizationPolicy(d) => &mut d.metadata,
            Document::Mesh(d) => &mut d.metadata,
            Document::Proxy(d) => &mut d.metadata,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Document::Service(_) => "Service",
            Document::Route(_) => "Route",
            Document::TrafficPolicy(_) => "TrafficPolicy",
            Document::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Document::Mesh(_) => "Mesh",
            Document::Proxy(_) => "Proxy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    /// `default` when omitted.
    pub namespace: String,
    /// 1-based line of the document's first key, for diagnostics that span documents.
    #[serde(skip)]
    pub line: usize,
    /// Lines of the fields that checks across documents point at.
    #[serde(skip)]
    pub fields: FieldLines,
}

impl Metadata {
    /// The line `path` (e.g. `spec.service`) was written on, else the document's line.
    pub fn line_of(&self, path: &str) -> usize {
        self.fields.0.get(path).copied().unwrap_or(self.line)
    }
}

/// Lines of fields by path (`spec.service`, `spec.rules[0].backends[1].service`), filled by the
/// decoder for the fields that name other documents. Documents built in code or received as
/// JSON have none, and their problems point at the document's line.
///
/// Always equal: where a field was written is not what it means, so documents that differ only
/// in layout compare equal (the control plane publishes no new version for a reformatted file).
#[derive(Clone, Debug, Default)]
pub struct FieldLines(pub BTreeMap<String, usize>);

impl PartialEq for FieldLines {
    fn eq(&self, _: &FieldLines) -> bool {
        true
    }
}

// ---------------------------------------------------------------- Service

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub metadata: Metadata,
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub ports: Vec<ServicePort>,
    /// Static endpoints; empty when the registry supplies them.
    pub endpoints: Vec<EndpointSpec>,
    /// Addresses that stand for the whole service (a Kubernetes Service's ClusterIPs): a
    /// connection the transparent outbound listener sees addressed to one of them, on a
    /// declared port, goes to this service's balancer. Empty for most hand-written services.
    #[serde(rename = "virtualIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    pub const NAMES: &'static [&'static str] = &["http", "http2", "grpc", "tcp"];

    pub fn from_name(s: &str) -> Option<Protocol> {
        Some(match s {
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "tcp" => Protocol::Tcp,
            _ => return None,
        })
    }

    /// Whether upstream connections speak HTTP/2 (prior knowledge) rather than HTTP/1.1.
    pub fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// The weight of an endpoint or a backend that does not say.
pub const DEFAULT_WEIGHT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub address: SocketAddr,
    /// Relative share of traffic; default 1.
    pub weight: u32,
    /// SPIFFE id of a meshed peer proxy; present means "talk mTLS and verify this identity".
    pub identity: Option<String>,
}

// ---------------------------------------------------------------- Route

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub metadata: Metadata,
    pub spec: RouteSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The service whose calls this route decides.
    pub service: String,
    /// Evaluated in order; the first rule that matches wins.
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteRule {
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    /// Empty means "the route's own service".
    pub backends: Vec<BackendRef>,
    #[serde(with = "serde_duration::option")]
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// 1-based line of the rule, so `/explain` can point at it.
    #[serde(skip)]
    pub line: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub path_prefix: Option<String>,
    /// Exact path.
    pub path: Option<String>,
    /// Upper-case method names; empty matches any.
    pub methods: Vec<String>,
    /// Exact header values, names lower-cased.
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendRef {
    pub service: String,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Retries after the first try (so `attempts: 2` means up to 3 tries).
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    #[serde(with = "serde_duration::option")]
    pub per_try_timeout: Option<Duration>,
    #[serde(with = "serde_duration")]
    pub backoff_base: Duration,
    #[serde(with = "serde_duration")]
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure],
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetryOn {
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    Status5xx,
    /// 502, 503 and 504 only.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The connection could not be made (nothing was sent).
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection broke before a response arrived.
    #[serde(rename = "reset")]
    Reset,
    /// The per-try timeout fired.
    #[serde(rename = "timeout")]
    Timeout,
}

impl RetryOn {
    pub const NAMES: &'static [&'static str] = &["5xx", "gateway-error", "connect-failure", "reset", "timeout"];

    pub fn from_name(s: &str) -> Option<RetryOn> {
        Some(match s {
            "5xx" => RetryOn::Status5xx,
            "gateway-error" => RetryOn::GatewayError,
            "connect-failure" => RetryOn::ConnectFailure,
            "reset" => RetryOn::Reset,
            "timeout" => RetryOn::Timeout,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------- TrafficPolicy

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    pub metadata: Metadata,
    pub spec: TrafficPolicySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    pub service: String,
    pub load_balancer: LoadBalancer,
    #[serde(with = "serde_duration")]
    pub connect_timeout: Duration,
    /// Pooled upstream connections idle longer than this are closed. Kept below common app
    /// keep-alive timeouts (Node.js: 5 s) so the proxy, not the app, closes idle connections.
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    pub limits: Limits,
    pub outlier_detection: OutlierDetection,
    pub retry_budget: RetryBudgetSpec,
}

impl TrafficPolicySpec {
    pub fn defaults_for(service: &str) -> Self {
        TrafficPolicySpec {
            service: service.to_string(),
            load_balancer: LoadBalancer::PeakEwma,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(4),
            limits: Limits::default(),
            outlier_detection: OutlierDetection::default(),
            retry_budget: RetryBudgetSpec::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadBalancer {
    #[default]
    PeakEwma,
    RoundRobin,
    LeastRequest,
}

impl LoadBalancer {
    pub const NAMES: &'static [&'static str] = &["peak-ewma", "round-robin", "least-request"];

    pub fn from_name(s: &str) -> Option<LoadBalancer> {
        Some(match s {
            "peak-ewma" => LoadBalancer::PeakEwma,
            "round-robin" => LoadBalancer::RoundRobin,
            "least-request" => LoadBalancer::LeastRequest,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Requests in flight to the service at once; beyond it the proxy answers 503 at once.
    pub max_concurrent_requests: u32,
    /// Requests waiting for an upstream connection at once; beyond it, 503 at once.
    pub max_pending_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_concurrent_requests: 1024, max_pending_requests: 1024 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_failures: u32,
    /// First ejection lasts this long; each further ejection of the same endpoint doubles it.
    #[serde(with = "serde_duration")]
    pub base_ejection: Duration,
    /// Upper bound for the growing ejection time.
    #[serde(with = "serde_duration")]
    pub max_ejection: Duration,
    /// Never eject more than this share of a service's endpoints (0–100).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudgetSpec {
    /// Retries may add at most this share of the original requests (over a 10 s window)…
    pub ratio: f64,
    /// …plus this many per second, so low-traffic services can still retry.
    pub min_per_second: u32,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        RetryBudgetSpec { ratio: 0.2, min_per_second: 10 }
    }
}

// ---------------------------------------------------------------- AuthorizationPolicy

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: Metadata,
    pub spec: AuthorizationSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthorizationSpec {
    pub service: String,
    pub default: AuthzAction,
    pub rules: Vec<AuthzRule>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthzAction {
    Allow,
    #[default]
    Deny,
}

impl AuthzAction {
    pub const NAMES: &'static [&'static str] = &["allow", "deny"];
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthzRule {
    /// What a matching call gets; `allow` when omitted. The first matching rule decides, and a
    /// call no rule matches gets the policy's `default`.
    pub action: AuthzAction,
    /// Caller SPIFFE ids. Empty means, in an allow rule, any caller with a verified identity;
    /// in a deny rule, any caller at all (plaintext ones too).
    pub from: Vec<String>,
    /// Path prefixes; empty means any path.
    pub paths: Vec<String>,
    /// Methods; empty means any.
    pub methods: Vec<String>,
    #[serde(skip)]
    pub line: usize,
}

// ---------------------------------------------------------------- Mesh

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mesh {
    pub metadata: Metadata,
    pub spec: MeshSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    pub trust_domain: String,
    pub mtls: MtlsMode,
    #[serde(rename = "certTTL", with = "serde_duration")]
    pub cert_ttl: Duration,
}

impl Default for MeshSpec {
    fn default() -> Self {
        MeshSpec {
            trust_domain: "cluster.local".to_string(),
            mtls: MtlsMode::Strict,
            cert_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Strict,
    Permissive,
    Off,
}

impl MtlsMode {
    pub const NAMES: &'static [&'static str] = &["strict", "permissive", "off"];
}

// ---------------------------------------------------------------- Proxy

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    pub metadata: Metadata,
    pub spec: ProxySpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxySpec {
    /// The service this sidecar stands beside.
    pub service: String,
    pub inbound: Option<InboundSpec>,
    pub outbound: Option<OutboundSpec>,
    pub upstreams: Vec<UpstreamSpec>,
    pub admin: AdminSpec,
    pub tls: Option<TlsFiles>,
    pub control_plane: Option<ControlPlaneSpec>,
    /// Where a certificate from the control plane and its key are kept (mode 0600) so that a
    /// restart while the control plane is down serves at once. Put it on memory-backed storage
    /// (tmpfs, an `emptyDir` with `medium: Memory`), never on the config volume; unset, the key
    /// lives only in the process.
    pub identity_dir: Option<String>,
    pub state_dir: Option<String>,
    /// Runtime threads (one current-thread runtime each); 0 means one per available core.
    pub workers: u16,
    /// How long SIGTERM waits for in-flight requests and the app's late calls.
    #[serde(with = "serde_duration")]
    pub shutdown_grace: Duration,
    pub http: HttpLimits,
    pub log: LogSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundSpec {
    pub listen: SocketAddr,
    /// The local app.
    pub app: SocketAddr,
    /// The app's protocol; defaults to the port's protocol in the Service document, else http.
    pub protocol: Option<Protocol>,
}

impl InboundSpec {
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 4143));
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboundSpec {
    pub listen: SocketAddr,
}

impl OutboundSpec {
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4140));
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSpec {
    pub service: String,
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdminSpec {
    pub listen: SocketAddr,
}

impl Default for AdminSpec {
    fn default() -> Self {
        AdminSpec { listen: SocketAddr::from(([127, 0, 0, 1], 4191)) }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsFiles {
    pub cert_file: String,
    pub key_file: String,
    pub bundle_file: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// `https://HOST:PORT` (TLS, the control plane's certificate verified against
    /// `trust_bundle_file`), or `http://` for a control plane on loopback.
    pub address: String,
    pub join_token_file: Option<String>,
    /// A projected Kubernetes service-account token (audience `weft.dev`) sent as the bootstrap
    /// credential when there is no join token; the control plane's TokenReview of it is
    /// Kubernetes part 2, so until then it is refused like an unknown join token.
    pub service_account_token_file: Option<String>,
    /// PEM roots the control plane's certificate must chain to (required with `https://`).
    pub trust_bundle_file: Option<String>,
    /// The SPIFFE id the control plane must prove; default
    /// `spiffe://<trustDomain>/ns/weft/sa/weft-control`.
    pub identity: Option<String>,
}

impl ControlPlaneSpec {
    /// The file holding the credential a CSR is sent with: the join token, else the
    /// service-account token.
    pub fn bootstrap_credential_file(&self) -> Option<&str> {
        self.join_token_file.as_deref().or(self.service_account_token_file.as_deref())
    }

    pub fn has_bootstrap_credential(&self) -> bool {
        self.bootstrap_credential_file().is_some()
    }
}

/// Limits that protect the proxy from bad or slow clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpLimits {
    /// Request head (line + headers) larger than this gets 431.
    pub max_header_bytes: u32,
    /// Request bodies larger than this get 413; 0 means no limit (bodies stream).
    pub max_body_bytes: u64,
    /// A request head (for HTTP/2, a header block) must be complete this long after its first
    /// byte arrived, or the client is disconnected.
    #[serde(with = "serde_duration")]
    pub header_read_timeout: Duration,
    /// Client connections with nothing to do (no request in flight, no byte of the next head)
    /// are closed after this long (HTTP/2: GOAWAY, then closed at most 1 s later whatever the
    /// client does).
    #[serde(with = "serde_duration")]
    pub client_idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 0,
            header_read_timeout: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogSpec {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `weft_proxy=debug`.
    pub level: String,
    /// One line per request at info level.
    pub access_log: bool,
}

impl Default for LogSpec {
    fn default() -> Self {
        LogSpec { format: LogFormat::Text, level: "info".to_string(), access_log: false }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub const NAMES: &'static [&'static str] = &["text", "json"];
}

impl ProxySpec {
    /// Whether this proxy can get a certificate: static files, or a control plane with a
    /// bootstrap credential. Without one, a Mesh asking for mTLS cannot be honoured.
    pub fn has_identity_source(&self) -> bool {
        self.tls.is_some() || self.control_plane.as_ref().is_some_and(ControlPlaneSpec::has_bootstrap_credential)
    }

    pub fn defaults_for(service: &str) -> Self {
        ProxySpec {
            service: service.to_string(),
            inbound: None,
            outbound: None,
            upstreams: Vec::new(),
            admin: AdminSpec::default(),
            tls: None,
            control_plane: None,
            identity_dir: None,
            state_dir: None,
            workers: 0,
            shutdown_grace: Duration::from_secs(30),
            http: HttpLimits::default(),
            log: LogSpec::default(),
        }
    }
}
