//! Route rules compiled for matching: which rule of a service decides a request, and which
//! backend service gets it.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use weft_api::{RetryOn, RetryPolicy};

use crate::metrics::RouteMetrics;
use crate::target::Cluster;

/// Conditions of one rule; all present conditions must hold.
#[derive(Default)]
pub struct Matcher {
    pub path_prefix: Option<String>,
    pub path: Option<String>,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Matcher {
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        if let Some(p) = &self.path
            && path != p
        {
            return false;
        }
        if let Some(p) = &self.path_prefix
            && !path.starts_with(p.as_str())
        {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        self.headers.iter().all(|(name, value)| headers.get(name) == Some(value))
    }
}

/// A retry policy with its conditions as flags, checked per response without scanning lists.
#[derive(Clone, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Retry {
    pub fn from_policy(p: &RetryPolicy) -> Retry {
        Retry {
            attempts: p.attempts,
            on_5xx: p.on.contains(&RetryOn::Status5xx),
            on_gateway_error: p.on.contains(&RetryOn::GatewayError),
            on_connect_failure: p.on.contains(&RetryOn::ConnectFailure),
            on_reset: p.on.contains(&RetryOn::Reset),
            on_timeout: p.on.contains(&RetryOn::Timeout),
            per_try_timeout: p.per_try_timeout,
            backoff_base: p.backoff_base,
            backoff_max: p.backoff_max,
        }
    }

    /// Whether any condition needs the request again after it was sent (so its body must be
    /// kept). Connect failures never do: nothing was sent.
    pub fn needs_replay(&self) -> bool {
        self.attempts > 0 && (self.on_5xx || self.on_gateway_error || self.on_reset || self.on_timeout)
    }

    pub fn on_status(&self, status: u16) -> bool {
        (self.on_5xx && status >= 500) || (self.on_gateway_error && matches!(status, 502..=504))
    }
}

/// One weighted backend of a rule, with the request metrics of the rule's calls it gets.
pub struct Backend {
    pub cluster: Arc<Cluster>,
    pub weight: u32,
    /// Shared with the gRPC calls still waiting for their trailers.
    pub metrics: Arc<RouteMetrics>,
}

/// Where a rule came from, for metrics and `/explain`.
pub struct RuleOrigin {
    /// Route name (`default` when the service has no Route, `inbound` for the local app).
    pub route: Arc<str>,
    pub index: usize,
    /// Line of the rule in its file (0 for built-in rules).
    pub line: usize,
}

/// A compiled route rule.
pub struct Rule {
    pub route: Arc<str>,
    pub index: usize,
    pub line: usize,
    pub matcher: Matcher,
    pub backends: Vec<Backend>,
    total_weight: u32,
    pub timeout: Option<Duration>,
    pub retry: Retry,
}

impl Rule {
    pub fn new(
        origin: RuleOrigin,
        matcher: Matcher,
        backends: Vec<Backend>,
        timeout: Option<Duration>,
        retry: Retry,
    ) -> Rule {
        let total_weight = backends.iter().map(|b| b.weight).sum();
        let RuleOrigin { route, index, line } = origin;
        Rule { route, index, line, matcher, backends, total_weight, timeout, retry }
    }

    /// The service whose route this rule is (the `service` label of its metrics).
    pub fn service(&self) -> &Arc<str> {
        self.backends[0].metrics.service()
    }

    /// Picks a backend by weight (a single backend costs nothing).
    pub fn pick_backend(&self) -> &Backend {
        if self.backends.len() == 1 || self.total_weight == 0 {
            return &self.backends[0];
        }
        let mut point = fastrand::u32(0..self.total_weight);
        for b in &self.backends {
            if point < b.weight {
                return b;
            }
            point -= b.weight;
        }
        &self.backends[self.backends.len() - 1]
    }
}

/// The routing table of one service: its rules in order.
pub struct ServiceRoutes {
    /// `name.namespace`.
    pub key: Arc<str>,
    pub name: Arc<str>,
    pub rules: Vec<Arc<Rule>>,
}

impl ServiceRoutes {
    pub fn find(&self, method: &Method, path: &str, headers: &HeaderMap) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.matcher.matches(method, path, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn matcher_checks_every_condition() {
        let m = Matcher {
            path_prefix: Some("/v1/".into()),
            path: None,
            methods: vec![Method::GET, Method::POST],
            headers: vec![(HeaderName::from_static("x-canary"), HeaderValue::from_static("true"))],
        };
        let canary = hdrs(&[("x-canary", "true")]);
        assert!(m.matches(&Method::GET, "/v1/pay", &canary));
        assert!(!m.matches(&Method::DELETE, "/v1/pay", &canary));
        assert!(!m.matches(&Method::GET, "/v2/pay", &canary));
        assert!(!m.matches(&Method::GET, "/v1/pay", &hdrs(&[("x-canary", "false")])));
        assert!(!m.matches(&Method::GET, "/v1/pay", &HeaderMap::new()));
    }

    #[test]
    fn exact_path_is_exact() {
        let m = Matcher { path: Some("/health".into()), ..Matcher::default() };
        assert!(m.matches(&Method::GET, "/health", &HeaderMap::new()));
        assert!(!m.matches(&Method::GET, "/healthz", &HeaderMap::new()));
        assert!(Matcher::default().matches(&Method::PATCH, "/anything", &HeaderMap::new()));
    }

    #[test]
    fn retry_conditions() {
        let mut p = RetryPolicy::default();
        assert!(!Retry::from_policy(&p).needs_replay(), "connect-failure alone never replays");
        p.on = vec![RetryOn::GatewayError];
        let r = Retry::from_policy(&p);
        assert!(r.needs_replay());
        assert!(r.on_status(503));
        assert!(!r.on_status(500));
        p.on = vec![RetryOn::Status5xx];
        assert!(Retry::from_policy(&p).on_status(500));
        p.attempts = 0;
        assert!(!Retry::from_policy(&p).needs_replay());
    }
}
