//! The control plane's Prometheus metrics (`weft_control_*`, names from DESIGN.md).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct ControlMetrics {
    registry: Registry,
    pub proxies_connected: IntGauge,
    pub config_version: IntGauge,
    /// Version published → acked, one sample per proxy and version it received.
    pub convergence: Histogram,
    pub registry_instances: IntGaugeVec,
    /// 1 while a registry source serves its last known state because its origin (the
    /// Kubernetes API) cannot be read; 0 when it is current.
    pub registry_stale: IntGaugeVec,
    /// Problems found in the last policy load (0: the policy on disk is serving).
    pub policy_errors: IntGauge,
    pub policy_reloads: IntCounterVec,
    /// Fresh snapshots sent on open streams, by reason (`overflow`, `policy`, `scope`).
    pub resyncs: IntCounterVec,
    /// Discovery and admin requests refused, by route and reason: who sent them
    /// (`no-client-certificate`, `other-identity`), what they sent (`bad-request`, `too-large`,
    /// `wrong-method`, `not-found`) or how many watches they hold (`too-many-watches`).
    pub refused: IntCounterVec,
    /// Certificate requests by result (`issued`, or why one was refused).
    pub certificates: IntCounterVec,
    /// Join token file reloads by result (applied, rejected).
    pub token_reloads: IntCounterVec,
}

/// From 1 ms (a loopback push) to 30 s (a proxy that was stuck).
const CONVERGENCE_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl ControlMetrics {
    pub fn new() -> ControlMetrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let proxies_connected = gauge("weft_control_proxies_connected", "Open watch streams.");
        let config_version = gauge("weft_control_config_version", "Latest published discovery version.");
        let policy_errors = gauge(
            "weft_control_policy_errors",
            "Problems in the policy folder's last load; while above 0 the last good policy keeps serving.",
        );
        let convergence = Histogram::with_opts(
            HistogramOpts::new(
                "weft_control_convergence_seconds",
                "Time from a version being published to a proxy acking it, per proxy.",
            )
            .buckets(CONVERGENCE_BUCKETS.to_vec()),
        )
        .expect("valid histogram");
        registry.register(Box::new(convergence.clone())).expect("metric registered once");
        let registry_instances = IntGaugeVec::new(
            Opts::new("weft_control_registry_instances", "Registered service instances by registry source."),
            &["source"],
        )
        .expect("valid metric");
        registry.register(Box::new(registry_instances.clone())).expect("metric registered once");
        let registry_stale = IntGaugeVec::new(
            Opts::new(
                "weft_control_registry_stale",
                "1 while a registry source keeps serving its last known state because its origin cannot be read.",
            ),
            &["source"],
        )
        .expect("valid metric");
        registry.register(Box::new(registry_stale.clone())).expect("metric registered once");
        let policy_reloads = IntCounterVec::new(
            Opts::new("weft_control_policy_reloads_total", "Policy folder loads by result (applied, rejected)."),
            &["result"],
        )
        .expect("valid metric");
        registry.register(Box::new(policy_reloads.clone())).expect("metric registered once");
        let resyncs = IntCounterVec::new(
            Opts::new("weft_control_resyncs_total", "Fresh snapshots sent on open streams, by reason."),
            &["reason"],
        )
        .expect("valid metric");
        registry.register(Box::new(resyncs.clone())).expect("metric registered once");
        let counters = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let refused = counters(
            "weft_control_requests_refused_total",
            "Discovery and admin requests refused, by route and reason (the caller's identity, a malformed or too large body, the watch limit, a wrong method or path).",
            &["route", "reason"],
        );
        let certificates = counters(
            "weft_control_certificates_total",
            "Certificate signing requests by result: issued, or the reason for a refusal.",
            &["result"],
        );
        let token_reloads = counters(
            "weft_control_join_token_reloads_total",
            "Join token file reloads by result (applied, rejected: the last good tokens stay).",
            &["result"],
        );
        weft_proxy::metrics::register_process_metrics(&registry);
        ControlMetrics {
            registry,
            proxies_connected,
            config_version,
            convergence,
            registry_instances,
            registry_stale,
            policy_errors,
            policy_reloads,
            resyncs,
            refused,
            certificates,
            token_reloads,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        ControlMetrics::new()
    }
}
