//! A backend service as the data path sees it (a "cluster"): its endpoints and balancer, its
//! traffic policy, and the state that must outlive config reloads (limits, budget, metrics).

use std::sync::Arc;

use http::uri::Authority;
use weft_api::{Protocol, TrafficPolicySpec};

use crate::balance::{ConcurrencyLimit, EndpointSet};
use crate::metrics::ServiceMetrics;
use crate::retry::RetryBudget;

/// One backend service of one config version: its endpoints with their balancer and health,
/// its traffic policy, and (`shared`) what carries over to the next version.
pub struct Cluster {
    /// `name.namespace`.
    pub key: Arc<str>,
    pub name: Arc<str>,
    pub protocol: Protocol,
    pub set: EndpointSet,
    pub policy: TrafficPolicySpec,
    pub shared: Arc<ClusterShared>,
    /// `:authority` for HTTP/2 upstream requests that arrived without one.
    pub authority: Authority,
}

impl Cluster {
    /// Counts and logs an endpoint that outlier detection has just ejected.
    pub fn note_ejection(&self, endpoint: std::net::SocketAddr) {
        self.shared.metrics.ejections.inc();
        tracing::warn!(service = %self.name, %endpoint,
            "endpoint ejected after consecutive failures (outlierDetection); it is probed again when the ejection ends");
    }
}

/// Per-service state carried from one config version to the next, so a reload neither resets
/// a retry budget nor forgets requests in flight.
pub struct ClusterShared {
    pub limit: Arc<ConcurrencyLimit>,
    pub pending: Arc<ConcurrencyLimit>,
    pub budget: RetryBudget,
    pub(crate) metrics: ServiceMetrics,
}

impl ClusterShared {
    pub fn new(service: &str, policy: &TrafficPolicySpec) -> ClusterShared {
        ClusterShared {
            limit: ConcurrencyLimit::new(policy.limits.max_concurrent_requests),
            pending: ConcurrencyLimit::new(policy.limits.max_pending_requests),
            budget: RetryBudget::new(policy.retry_budget.ratio, policy.retry_budget.min_per_second),
            metrics: ServiceMetrics::new(service),
        }
    }

    /// Applies a new policy's numbers to the state kept across reloads.
    pub fn update(&self, policy: &TrafficPolicySpec) {
        self.limit.set_max(policy.limits.max_concurrent_requests);
        self.pending.set_max(policy.limits.max_pending_requests);
        self.budget.set_params(policy.retry_budget.ratio, policy.retry_budget.min_per_second);
    }
}
