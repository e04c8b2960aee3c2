//! Prometheus metrics (names from DESIGN.md), with handles resolved once per route or service
//! so the request path never looks labels up.

#[cfg(target_os = "linux")]
mod process;

use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the proxy exports, registered once per process.
pub(crate) struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    ejections: IntCounterVec,
    pub endpoints: IntGaugeVec,
    pub open_connections: IntGaugeVec,
    pub tls_handshake_errors: IntCounterVec,
    pub config_version: IntGauge,
    pub config_reload_errors: IntCounter,
    pub cert_expiry: IntGauge,
    pub protocol_errors: IntCounterVec,
    /// Failed accepts by `direction` (`outbound`, `inbound`, `admin`) and `reason`
    /// (`fd-limit` when the process is out of descriptors, else `other`).
    pub accept_errors: IntCounterVec,
    /// Inbound connections by `transport` (`mtls` or `plaintext`), so permissive mode shows
    /// who still calls without TLS.
    pub inbound_connections: IntCounterVec,
    pub authz_decisions: IntCounterVec,
    /// Redirected outbound connections to addresses outside the mesh, relayed as they are.
    pub passthrough_connections: IntCounter,
}

/// Buckets from 100 µs to 30 s: a sidecar hop is sub-millisecond, a slow backend is seconds.
const DURATION_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(v.clone())).expect("metric registered once");
    v
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry.register(Box::new(v.clone())).expect("metric registered once");
    v
}

/// `weft_build_info` and the process metrics (CPU, memory, file descriptors), which both the
/// proxy's and the control plane's registries carry.
pub fn register_process_metrics(registry: &Registry) {
    let build_info =
        IntGaugeVec::new(Opts::new("weft_build_info", "Build information."), &["version"]).expect("valid metric");
    build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(build_info)).expect("metric registered once");
    #[cfg(target_os = "linux")]
    {
        let pc = process::ProcessMetrics::for_self();
        registry.register(Box::new(pc)).expect("process collector registered once");
    }
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "weft_requests_total",
            "Requests handled, by direction, service, route, backend service, status code and classification.",
            &["direction", "service", "route", "backend", "code", "classification"],
        );
        let durations = HistogramVec::new(
            HistogramOpts::new("weft_request_duration_seconds", "Time from request received to response headers sent.")
                .buckets(DURATION_BUCKETS.to_vec()),
            &["direction", "service", "route", "backend"],
        )
        .expect("valid histogram");
        registry.register(Box::new(durations.clone())).expect("metric registered once");
        let retries = counter_vec(&registry, "weft_retries_total", "Retries sent.", &["service", "reason"]);
        let budget_exhausted = counter_vec(
            &registry,
            "weft_retry_budget_exhausted_total",
            "Retries not sent because the service's retry budget was spent.",
            &["service"],
        );
        let ejections = counter_vec(
            &registry,
            "weft_endpoint_ejections_total",
            "Endpoints ejected by outlier detection.",
            &["service"],
        );
        let endpoints =
            gauge_vec(&registry, "weft_endpoints", "Endpoints per service and state.", &["service", "state"]);
        let open_connections =
            gauge_vec(&registry, "weft_open_connections", "Open client connections.", &["direction"]);
        let tls_handshake_errors = counter_vec(
            &registry,
            "weft_tls_handshake_errors_total",
            "Failed TLS handshakes by direction and reason.",
            &["direction", "reason"],
        );
        let protocol_errors = counter_vec(
            &registry,
            "weft_protocol_errors_total",
            "Client connections closed for a protocol violation (malformed HTTP, header timeout).",
            &["direction"],
        );
        let accept_errors = counter_vec(
            &registry,
            "weft_accept_errors_total",
            "Failed accepts on a listener (fd-limit: out of file descriptors; the connection waits in the backlog).",
            &["direction", "reason"],
        );
        let inbound_connections = counter_vec(
            &registry,
            "weft_inbound_connections_total",
            "Inbound connections accepted, by transport (mtls or plaintext).",
            &["transport"],
        );
        let passthrough_connections = IntCounter::new(
            "weft_passthrough_connections_total",
            "Redirected outbound connections to an address no Service names, relayed to it as they are.",
        )
        .expect("valid metric");
        registry.register(Box::new(passthrough_connections.clone())).expect("metric registered once");
        let authz_decisions = counter_vec(
            &registry,
            "weft_authz_decisions_total",
            "AuthorizationPolicy decisions on inbound calls, by service and decision (allow or deny).",
            &["service", "decision"],
        );
        let config_version =
            IntGauge::new("weft_config_version", "Version of the applied configuration.").expect("valid metric");
        registry.register(Box::new(config_version.clone())).expect("metric registered once");
        let config_reload_errors =
            IntCounter::new("weft_config_reload_errors_total", "Configuration updates rejected as invalid.")
                .expect("valid metric");
        registry.register(Box::new(config_reload_errors.clone())).expect("metric registered once");
        let cert_expiry = IntGauge::new(
            "weft_cert_expiry_timestamp_seconds",
            "Unix time at which the proxy's certificate expires (0 without one).",
        )
        .expect("valid metric");
        registry.register(Box::new(cert_expiry.clone())).expect("metric registered once");
        register_process_metrics(&registry);
        Metrics {
            registry,
            requests,
            durations,
            retries,
            budget_exhausted,
            ejections,
            endpoints,
            open_connections,
            tls_handshake_errors,
            config_version,
            config_reload_errors,
            cert_expiry,
            protocol_errors,
            accept_errors,
            inbound_connections,
            authz_decisions,
            passthrough_connections,
        }
    }

    /// The text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// The label value of requests the proxy could not attribute to a service from policy (a 404
/// `unknown-service`): never the host the client asked for, which would make one series per
/// name a client makes up.
pub const UNKNOWN: &str = "unknown";

/// Request metrics of one backend of one route rule (the labels `service`, `route` and
/// `backend` are all from policy, so their number is bounded by the config): the histogram is
/// resolved at config build time, the counters for each status code on first use (then one
/// atomic increment per request).
pub struct RouteMetrics {
    direction: &'static str,
    service: Arc<str>,
    route: Arc<str>,
    backend: Arc<str>,
    duration: Histogram,
    /// Indexed by status code − 100; classification follows the status (5xx = failure).
    by_code: Box<[OnceLock<IntCounter>]>,
    /// Failures under a status below 500 by code: a gRPC call whose `grpc-status` said so
    /// (nearly always under a 200, kept apart so it takes no lock), and a response whose body
    /// the upstream broke after its head.
    failed_200: OnceLock<IntCounter>,
    failed_other: Mutex<Vec<(u16, IntCounter)>>,
}

impl RouteMetrics {
    /// `backend` is the service the request is sent to: `service` itself unless the rule
    /// splits traffic (a canary's own success rate is read from its `backend` series).
    pub fn new(direction: &'static str, service: &str, route: &str, backend: &str) -> RouteMetrics {
        let duration = METRICS.durations.with_label_values(&[direction, service, route, backend]);
        RouteMetrics {
            direction,
            service: service.into(),
            route: route.into(),
            backend: backend.into(),
            duration,
            by_code: (100..600).map(|_| OnceLock::new()).collect(),
            failed_200: OnceLock::new(),
            failed_other: Mutex::new(Vec::new()),
        }
    }

    /// Requests answered 404 `unknown-service`, under `service`, `route` and `backend`
    /// [`UNKNOWN`].
    pub fn unknown_service() -> &'static RouteMetrics {
        static UNKNOWN_SERVICE: LazyLock<RouteMetrics> =
            LazyLock::new(|| RouteMetrics::new("outbound", UNKNOWN, UNKNOWN, UNKNOWN));
        &UNKNOWN_SERVICE
    }

    /// The service the requests were for.
    pub fn service(&self) -> &Arc<str> {
        &self.service
    }

    /// The service the requests were sent to.
    pub fn backend(&self) -> &Arc<str> {
        &self.backend
    }

    fn counter(&self, code: u16, failure: bool) -> IntCounter {
        let class = if failure { "failure" } else { "success" };
        // Runs once per (route, backend, code): the allocation here is off the steady-state path.
        let code = code.to_string();
        METRICS.requests.with_label_values(&[self.direction, &self.service, &self.route, &self.backend, &code, class])
    }

    /// Counts one finished request and its duration. `failed`: it failed whatever its status
    /// says (a gRPC call's status, or a body the upstream broke).
    pub fn record(&self, status: u16, failed: bool, elapsed_secs: f64) {
        self.observe(elapsed_secs);
        self.count(status, failed);
    }

    /// The duration part of `record`, for a response counted when its body ends.
    pub fn observe(&self, elapsed_secs: f64) {
        self.duration.observe(elapsed_secs);
    }

    /// The counting part of `record`: a status of 500 or more is always a failure.
    pub fn count(&self, status: u16, failed: bool) {
        if failed && status < 500 {
            if status == 200 {
                self.failed_200.get_or_init(|| self.counter(status, true)).inc();
                return;
            }
            let mut other = self.failed_other.lock().unwrap_or_else(|e| e.into_inner());
            match other.iter().find(|(code, _)| *code == status) {
                Some((_, counter)) => counter.inc(),
                None => {
                    let counter = self.counter(status, true);
                    counter.inc();
                    other.push((status, counter));
                }
            }
            return;
        }
        let idx = status.clamp(100, 599) as usize - 100;
        self.by_code[idx].get_or_init(|| self.counter(status, status >= 500)).inc();
    }
}

/// Per-service counters for retries, budget and ejections, resolved once per service.
pub(crate) struct ServiceMetrics {
    pub retries_5xx: IntCounter,
    pub retries_connect: IntCounter,
    pub retries_reset: IntCounter,
    pub retries_timeout: IntCounter,
    pub budget_exhausted: IntCounter,
    pub ejections: IntCounter,
    pub endpoints_available: IntGauge,
    pub endpoints_ejected: IntGauge,
}

impl ServiceMetrics {
    pub(crate) fn new(service: &str) -> ServiceMetrics {
        let m = &*METRICS;
        ServiceMetrics {
            retries_5xx: m.retries.with_label_values(&[service, "5xx"]),
            retries_connect: m.retries.with_label_values(&[service, "connect-failure"]),
            retries_reset: m.retries.with_label_values(&[service, "reset"]),
            retries_timeout: m.retries.with_label_values(&[service, "timeout"]),
            budget_exhausted: m.budget_exhausted.with_label_values(&[service]),
            ejections: m.ejections.with_label_values(&[service]),
            endpoints_available: m.endpoints.with_label_values(&[service, "available"]),
            endpoints_ejected: m.endpoints.with_label_values(&[service, "ejected"]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_under_a_status_below_500_are_counted_under_their_own_code() {
        let m = RouteMetrics::new("outbound", "count-test", "r", "count-test");
        let value = |code: &str, class: &str| {
            METRICS.requests.with_label_values(&["outbound", "count-test", "r", "count-test", code, class]).get()
        };
        m.count(200, false);
        m.count(200, true);
        m.count(206, true);
        m.count(206, true);
        m.count(404, true);
        m.count(503, false);
        assert_eq!((value("200", "success"), value("200", "failure")), (1, 1));
        assert_eq!((value("206", "success"), value("206", "failure")), (0, 2));
        assert_eq!(value("404", "failure"), 1);
        assert_eq!((value("503", "failure"), value("503", "success")), (1, 0), "5xx always fails");
    }

    /// docs/reference.md is where dashboards and alerts look names and labels up: every
    /// metric of the proxy is there, and so is each request label.
    #[test]
    fn every_metric_is_in_the_reference() {
        let reference = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference.md")).unwrap();
        // Labelled families appear in a scrape only once used.
        let _ = METRICS.requests.with_label_values(&["outbound", "docs", "docs", "docs", "200", "success"]);
        METRICS.durations.with_label_values(&["outbound", "docs", "docs", "docs"]).observe(0.0);
        for name in ["weft_retries_total", "weft_retry_budget_exhausted_total", "weft_endpoint_ejections_total"] {
            assert!(reference.contains(&format!("`{name}`")), "{name} missing from docs/reference.md");
        }
        for family in METRICS.registry.gather() {
            let name = family.name();
            if name.starts_with("weft_") {
                assert!(reference.contains(&format!("`{name}")), "{name} missing from docs/reference.md");
            }
        }
        let labels = "`direction`, `service`, `route`, `backend`, `code`, `classification`";
        assert!(reference.contains(&format!("| `weft_requests_total` | {labels} |")), "request labels");
    }
}
