//! The field tables of every kind's `spec`, in the order DESIGN.md lists them.
//!
//! Ranges are `validate`'s constants and defaults are read from policy.rs, so a change there
//! reaches the schema; a field added to the decoder must be added here, or the decoder refuses
//! it as unknown.

use serde_json::{Value, json};

use super::{Field, Kind, Object, Text, Type};
use crate::duration::format_duration;
use crate::validate::{ANY_U32, ANY_U64, AT_LEAST_ONE_U32, PERCENT, PORT, RETRY_ATTEMPTS, WEIGHT, WORKERS};
use crate::*;

const fn f(name: &'static str, ty: Type, doc: &'static str) -> Field {
    Field::new(name, ty, doc)
}

fn duration(d: std::time::Duration) -> Value {
    json!(format_duration(d))
}

fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

pub(crate) static KINDS: &[Kind] = &[
    Kind {
        name: "Service",
        plural: "services",
        short_names: &["wsvc"],
        spec: &SERVICE_SPEC,
        columns: &[],
        doc: "A logical service and its ports; static endpoints when no registry supplies them.",
    },
    Kind {
        name: "Route",
        plural: "routes",
        short_names: &["wrt"],
        spec: &ROUTE_SPEC,
        columns: &[("Service", ".spec.service", "The service whose calls this route decides.")],
        doc: "How calls to a service are routed: rules tried in order, the first match wins.",
    },
    Kind {
        name: "TrafficPolicy",
        plural: "trafficpolicies",
        short_names: &["wtp"],
        spec: &TRAFFIC_POLICY_SPEC,
        columns: &[
            ("Service", ".spec.service", "The service whose endpoints this policy governs."),
            ("Balancer", ".spec.loadBalancer", "The load balancer."),
        ],
        doc: "How a service's endpoints are used: balancing, timeouts, limits, outlier ejection, retry budget.",
    },
    Kind {
        name: "AuthorizationPolicy",
        plural: "authorizationpolicies",
        short_names: &["wauthz"],
        spec: &AUTHORIZATION_SPEC,
        columns: &[
            ("Service", ".spec.service", "The service whose inbound calls this policy authorizes."),
            ("Default", ".spec.default", "What a call no rule matches gets."),
        ],
        doc: "Which callers (SPIFFE ids) may call a service, on which paths and methods.",
    },
    Kind {
        name: "Mesh",
        plural: "meshes",
        short_names: &["wmesh"],
        spec: &MESH_SPEC,
        columns: &[
            ("Trust-Domain", ".spec.trustDomain", "The SPIFFE trust domain."),
            ("mTLS", ".spec.mtls", "strict, permissive or off."),
        ],
        doc: "Mesh-wide settings: trust domain, mTLS mode, certificate lifetime. One per mesh.",
    },
    Kind {
        name: "Proxy",
        plural: "proxies",
        short_names: &["wproxy"],
        spec: &PROXY_SPEC,
        columns: &[("Service", ".spec.service", "The service this sidecar stands beside.")],
        doc: "One sidecar's own settings (the file of weft-proxy --config).",
    },
];

pub(crate) static METADATA: Object = Object {
    fields: &[
        f("name", Type::Text(Text::Name), "The document's name (an RFC 1123 label).").required(),
        f("namespace", Type::Text(Text::Name), "The namespace; default when omitted.")
            .default(|| json!(DEFAULT_NAMESPACE)),
    ],
};

// ---------------------------------------------------------------- Service

pub(crate) static SERVICE_SPEC: Object = Object {
    fields: &[
        f("ports", Type::List(&Type::Object(&SERVICE_PORT)), "The service's ports and their protocols."),
        f(
            "endpoints",
            Type::List(&Type::Object(&ENDPOINT)),
            "Static endpoints (static mode only; otherwise from the registry).",
        ),
        f(
            "virtualIPs",
            Type::List(&Type::Ip),
            "Addresses that stand for the whole service (a Kubernetes Service's ClusterIPs), no port.",
        ),
    ],
};

pub(crate) static SERVICE_PORT: Object = Object {
    fields: &[
        f("port", Type::Integer(&PORT), "The port number.").required(),
        f("protocol", Type::Enum(Protocol::NAMES), "The protocol spoken on the port.")
            .default(|| to_json(Protocol::default())),
    ],
};

pub(crate) static ENDPOINT: Object = Object {
    fields: &[
        f("address", Type::Address, "IP:PORT of the instance, or of its peer proxy's inbound port.").required(),
        f("weight", Type::Integer(&WEIGHT), "Relative share of traffic.").default(|| json!(DEFAULT_WEIGHT)),
        f(
            "identity",
            Type::Text(Text::SpiffeId),
            "SPIFFE id of a meshed peer proxy: talk mTLS and verify this identity.",
        ),
    ],
};

// ---------------------------------------------------------------- Route

pub(crate) static ROUTE_SPEC: Object = Object {
    fields: &[
        f(
            "service",
            Type::Text(Text::ServiceRef),
            "The service whose calls this route decides (NAME or NAME.NAMESPACE).",
        )
        .required(),
        f("rules", Type::List(&Type::Object(&ROUTE_RULE)), "Tried in order; the first rule that matches wins."),
    ],
};

pub(crate) static ROUTE_RULE: Object = Object {
    fields: &[
        f("match", Type::Object(&ROUTE_MATCH), "What a call must look like; empty matches every call."),
        f(
            "backends",
            Type::List(&Type::Object(&BACKEND)),
            "Weighted services to send matching calls to; empty means the route's own service.",
        ),
        f("timeout", Type::Duration, "Bounds the first try and every retry together."),
        f("retry", Type::Object(&RETRY), "Retries of failed tries (replayable requests only)."),
    ],
};

pub(crate) static ROUTE_MATCH: Object = Object {
    fields: &[
        f("pathPrefix", Type::Text(Text::HttpPath), "The path starts with this."),
        f("path", Type::Text(Text::HttpPath), "The path is exactly this."),
        f("methods", Type::List(&Type::Text(Text::Method)), "Any of these methods; empty matches any."),
        f("headers", Type::StringMap, "Header names to exact values (names ignore case)."),
    ],
};

pub(crate) static BACKEND: Object = Object {
    fields: &[
        f("service", Type::Text(Text::ServiceRef), "NAME or NAME.NAMESPACE.").required(),
        f("weight", Type::Integer(&WEIGHT), "Relative share of matching calls.").default(|| json!(DEFAULT_WEIGHT)),
    ],
};

pub(crate) static RETRY: Object = Object {
    fields: &[
        f("attempts", Type::Integer(&RETRY_ATTEMPTS), "Retries after the first try.")
            .default(|| json!(RetryPolicy::default().attempts)),
        f("on", Type::List(&Type::Enum(RetryOn::NAMES)), "Which failures are retried.")
            .default(|| to_json(RetryPolicy::default().on)),
        f("perTryTimeout", Type::Duration, "Bounds each try; at most the rule's timeout."),
        f("backoffBase", Type::Duration, "First backoff (jittered, doubling).")
            .default(|| duration(RetryPolicy::default().backoff_base)),
        f("backoffMax", Type::Duration, "Longest backoff.").default(|| duration(RetryPolicy::default().backoff_max)),
    ],
};

// ---------------------------------------------------------------- TrafficPolicy

fn traffic() -> TrafficPolicySpec {
    TrafficPolicySpec::defaults_for("")
}

pub(crate) static TRAFFIC_POLICY_SPEC: Object = Object {
    fields: &[
        f("service", Type::Text(Text::ServiceRef), "The service whose endpoints this policy governs.").required(),
        f("loadBalancer", Type::Enum(LoadBalancer::NAMES), "How an endpoint is picked.")
            .default(|| to_json(traffic().load_balancer)),
        f("connectTimeout", Type::Duration, "Connecting to an endpoint gives up after this.")
            .default(|| duration(traffic().connect_timeout)),
        f("idleTimeout", Type::Duration, "Pooled upstream connections idle longer are closed.")
            .default(|| duration(traffic().idle_timeout)),
        f("limits", Type::Object(&LIMITS), "Concurrency limits that fail fast with 503."),
        f("outlierDetection", Type::Object(&OUTLIER_DETECTION), "Ejection of failing endpoints."),
        f("retryBudget", Type::Object(&RETRY_BUDGET), "How many retries the service's callers may add."),
    ],
};

pub(crate) static LIMITS: Object = Object {
    fields: &[
        f("maxConcurrentRequests", Type::Integer(&AT_LEAST_ONE_U32), "Requests in flight to the service at once.")
            .default(|| json!(Limits::default().max_concurrent_requests)),
        f("maxPendingRequests", Type::Integer(&AT_LEAST_ONE_U32), "Requests waiting for a connection at once.")
            .default(|| json!(Limits::default().max_pending_requests)),
    ],
};

pub(crate) static OUTLIER_DETECTION: Object = Object {
    fields: &[
        f("consecutiveFailures", Type::Integer(&AT_LEAST_ONE_U32), "Failures in a row that eject an endpoint.")
            .default(|| json!(OutlierDetection::default().consecutive_failures)),
        f("baseEjection", Type::Duration, "First ejection time; each further ejection doubles it.")
            .default(|| duration(OutlierDetection::default().base_ejection)),
        f("maxEjection", Type::Duration, "Upper bound of the growing ejection time.")
            .default(|| duration(OutlierDetection::default().max_ejection)),
        f("maxEjectionPercent", Type::Integer(&PERCENT), "Never eject more than this share of the endpoints.")
            .default(|| json!(OutlierDetection::default().max_ejection_percent)),
    ],
};

pub(crate) static RETRY_BUDGET: Object = Object {
    fields: &[
        f("ratio", Type::Ratio, "Retries may add at most this share of the original requests.")
            .default(|| json!(RetryBudgetSpec::default().ratio)),
        f("minPerSecond", Type::Integer(&ANY_U32), "Plus this many retries per second.")
            .default(|| json!(RetryBudgetSpec::default().min_per_second)),
    ],
};

// ---------------------------------------------------------------- AuthorizationPolicy

pub(crate) static AUTHORIZATION_SPEC: Object = Object {
    fields: &[
        f("service", Type::Text(Text::ServiceRef), "The service whose inbound calls this policy authorizes.")
            .required(),
        f("default", Type::Enum(AuthzAction::NAMES), "What a call no rule matches gets.")
            .default(|| to_json(AuthzAction::default())),
        f("rules", Type::List(&Type::Object(&AUTHZ_RULE)), "Tried in order; the first matching rule decides."),
    ],
};

pub(crate) static AUTHZ_RULE: Object = Object {
    fields: &[
        f("action", Type::Enum(AuthzAction::NAMES), "What a matching call gets.")
            .default(|| to_json(AuthzAction::Allow)),
        f("from", Type::List(&Type::Text(Text::SpiffeId)), "Caller SPIFFE ids; empty means any caller."),
        f("paths", Type::List(&Type::Text(Text::HttpPath)), "Path prefixes; empty means any path."),
        f("methods", Type::List(&Type::Text(Text::Method)), "Methods; empty means any."),
    ],
};

// ---------------------------------------------------------------- Mesh

pub(crate) static MESH_SPEC: Object = Object {
    fields: &[
        f("trustDomain", Type::Text(Text::TrustDomain), "The SPIFFE trust domain of the mesh's identities.")
            .default(|| json!(MeshSpec::default().trust_domain)),
        f("mtls", Type::Enum(MtlsMode::NAMES), "strict: mTLS only; permissive: plaintext accepted too; off.")
            .default(|| to_json(MeshSpec::default().mtls)),
        f("certTTL", Type::Duration, "Lifetime of the certificates the CA issues.")
            .default(|| duration(MeshSpec::default().cert_ttl)),
    ],
};

// ---------------------------------------------------------------- Proxy

fn proxy() -> ProxySpec {
    ProxySpec::defaults_for("")
}

pub(crate) static PROXY_SPEC: Object = Object {
    fields: &[
        f("service", Type::Text(Text::Name), "The service this sidecar stands beside.").required(),
        f("inbound", Type::Object(&INBOUND), "mTLS from other proxies, forwarded to the local app."),
        f("outbound", Type::Object(&OUTBOUND), "The local app's own calls to other services."),
        f("upstreams", Type::List(&Type::Object(&UPSTREAM)), "Local ports bound to one named service each."),
        f("admin", Type::Object(&ADMIN), "/metrics, /ready, /config and the other admin paths."),
        f("tls", Type::Object(&TLS), "A static identity; omit when the control plane issues it."),
        f("controlPlane", Type::Object(&CONTROL_PLANE), "The control plane to subscribe to."),
        f("identityDir", Type::Text(Text::NonEmpty), "Where an issued certificate and key are kept (memory-backed)."),
        f("stateDir", Type::Text(Text::NonEmpty), "Where the last good config from the control plane is kept."),
        f("workers", Type::Integer(&WORKERS), "Runtime threads; 0 means one per available core.")
            .default(|| json!(proxy().workers)),
        f("shutdownGrace", Type::Duration, "How long SIGTERM waits for in-flight requests.")
            .default(|| duration(proxy().shutdown_grace)),
        f("http", Type::Object(&HTTP_LIMITS), "Limits that protect the proxy from bad or slow clients."),
        f("log", Type::Object(&LOG), "Log format, filter and access log."),
    ],
};

pub(crate) static INBOUND: Object = Object {
    fields: &[
        f("listen", Type::Address, "Where peer proxies connect.").default(|| to_json(InboundSpec::DEFAULT_LISTEN)),
        f("app", Type::Address, "The local app.").required(),
        f("protocol", Type::Enum(Protocol::NAMES), "The app's protocol; default: the Service port's, else http."),
    ],
};

pub(crate) static OUTBOUND: Object = Object {
    fields: &[f("listen", Type::Address, "Where the local app sends its calls.")
        .default(|| to_json(OutboundSpec::DEFAULT_LISTEN))],
};

pub(crate) static UPSTREAM: Object = Object {
    fields: &[
        f("service", Type::Text(Text::ServiceRef), "The service this port is bound to.").required(),
        f("listen", Type::Address, "The local address to listen on.").required(),
    ],
};

pub(crate) static ADMIN: Object =
    Object { fields: &[f("listen", Type::Address, "The admin listener.").default(|| to_json(proxy().admin.listen))] };

pub(crate) static TLS: Object = Object {
    fields: &[
        f("certFile", Type::Text(Text::NonEmpty), "PEM certificate chain.").required(),
        f("keyFile", Type::Text(Text::NonEmpty), "PEM private key.").required(),
        f("bundleFile", Type::Text(Text::NonEmpty), "PEM trust bundle.").required(),
    ],
};

pub(crate) static CONTROL_PLANE: Object = Object {
    fields: &[
        f("address", Type::Text(Text::Url), "https://HOST:PORT, or http:// on loopback.").required(),
        f("joinTokenFile", Type::Text(Text::NonEmpty), "The bootstrap join token."),
        f(
            "serviceAccountTokenFile",
            Type::Text(Text::NonEmpty),
            "A projected service-account token (audience weft.dev).",
        ),
        f("trustBundleFile", Type::Text(Text::NonEmpty), "PEM roots the control plane's certificate must chain to."),
        f("identity", Type::Text(Text::SpiffeId), "The SPIFFE id the control plane must prove."),
    ],
};

pub(crate) static HTTP_LIMITS: Object = Object {
    fields: &[
        f("maxHeaderBytes", Type::Integer(&AT_LEAST_ONE_U32), "A larger request head gets 431.")
            .default(|| json!(proxy().http.max_header_bytes)),
        f("maxBodyBytes", Type::Integer(&ANY_U64), "A larger request body gets 413; 0 means no limit.")
            .default(|| json!(proxy().http.max_body_bytes)),
        f("headerReadTimeout", Type::Duration, "A request head must be complete this long after its first byte.")
            .default(|| duration(proxy().http.header_read_timeout)),
        f("clientIdleTimeout", Type::Duration, "Idle client connections are closed after this.")
            .default(|| duration(proxy().http.client_idle_timeout)),
    ],
};

pub(crate) static LOG: Object = Object {
    fields: &[
        f("format", Type::Enum(LogFormat::NAMES), "Log line format.").default(|| to_json(proxy().log.format)),
        f("level", Type::Text(Text::LogLevel), "A tracing filter such as info or weft_proxy=debug.")
            .default(|| json!(proxy().log.level)),
        f("accessLog", Type::Boolean, "One line per request at info level.").default(|| json!(proxy().log.access_log)),
    ],
};
