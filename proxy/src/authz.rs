//! AuthorizationPolicy for calls into the local app: rules are tried in order against the
//! caller's verified SPIFFE id, the path and the method; the first match decides, else the
//! policy's default. Denials get 403 `unauthorized`; every decision is counted.

use http::Method;
use prometheus::IntCounter;
use weft_api::{AuthorizationPolicy, AuthzAction};

use crate::metrics::METRICS;

/// The compiled policy of the proxy's own service (all its AuthorizationPolicy documents).
pub struct Authz {
    default_allow: bool,
    rules: Vec<Rule>,
    allowed: IntCounter,
    denied: IntCounter,
}

struct Rule {
    allow: bool,
    from: Vec<String>,
    paths: Vec<String>,
    methods: Vec<Method>,
    /// `policy-name#index` for logs.
    origin: String,
}

/// What a call gets, and which rule said so (`None`: the default).
#[derive(Debug, PartialEq, Eq)]
pub struct Decision<'a> {
    pub allowed: bool,
    pub rule: Option<&'a str>,
}

impl Authz {
    /// Compiles the policies that name `service`; `None` when there is none (everything allowed).
    /// Several policies for one service add up: rules in document order, and deny as the
    /// default if any of them says so.
    pub fn compile(service: &str, policies: &[&AuthorizationPolicy]) -> Option<Authz> {
        if policies.is_empty() {
            return None;
        }
        let default_allow = policies.iter().all(|p| p.spec.default == AuthzAction::Allow);
        let rules = policies
            .iter()
            .flat_map(|p| {
                p.spec.rules.iter().enumerate().map(move |(i, r)| Rule {
                    allow: r.action == AuthzAction::Allow,
                    from: r.from.clone(),
                    paths: r.paths.clone(),
                    methods: r.methods.iter().filter_map(|m| Method::from_bytes(m.as_bytes()).ok()).collect(),
                    origin: format!("{}#{i}", p.metadata.name),
                })
            })
            .collect();
        Some(Authz {
            default_allow,
            rules,
            allowed: METRICS.authz_decisions.with_label_values(&[service, "allow"]),
            denied: METRICS.authz_decisions.with_label_values(&[service, "deny"]),
        })
    }

    /// Decides one call. `method` and `path` are `None` for opaque TCP, where only rules
    /// without path or method conditions can match. Counts the decision.
    pub fn check(&self, caller: Option<&str>, method: Option<&Method>, path: Option<&str>) -> Decision<'_> {
        let decision = self.decide(caller, method, path);
        if decision.allowed {
            self.allowed.inc()
        } else {
            self.denied.inc()
        }
        decision
    }

    /// Like [`Authz::check`] without counting (for `/explain`).
    pub fn decide(&self, caller: Option<&str>, method: Option<&Method>, path: Option<&str>) -> Decision<'_> {
        for rule in &self.rules {
            // An empty `from` allows any *verified* caller, but denies any caller at all, so
            // neither reading lets a plaintext caller (permissive mode) through.
            let from_ok = match caller {
                Some(id) => rule.from.is_empty() || rule.from.iter().any(|f| f == id),
                None => rule.from.is_empty() && !rule.allow,
            };
            let path_ok = rule.paths.is_empty() || path.is_some_and(|p| rule.paths.iter().any(|r| p.starts_with(r)));
            let method_ok = rule.methods.is_empty() || method.is_some_and(|m| rule.methods.contains(m));
            if from_ok && path_ok && method_ok {
                return Decision { allowed: rule.allow, rule: Some(&rule.origin) };
            }
        }
        Decision { allowed: self.default_allow, rule: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(yaml: &str) -> Authz {
        let docs = weft_api::parse_file("t.yaml", yaml).unwrap();
        let policies: Vec<&AuthorizationPolicy> = docs
            .iter()
            .filter_map(|d| match d {
                weft_api::Document::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
            .collect();
        Authz::compile("payments", &policies).unwrap()
    }

    const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
    const OTHER: &str = "spiffe://cluster.local/ns/shop/sa/other";

    #[test]
    fn first_matching_rule_decides_else_the_default() {
        let a = authz(
            "kind: AuthorizationPolicy
metadata: {name: payments, namespace: shop}
spec:
  service: payments
  default: deny
  rules:
    - {action: deny, from: [\"spiffe://cluster.local/ns/shop/sa/frontend\"], paths: [/v1/admin]}
    - {from: [\"spiffe://cluster.local/ns/shop/sa/frontend\"], paths: [/v1/], methods: [GET]}
    - {paths: [/health]}
",
        );
        let get = Method::GET;
        let post = Method::POST;
        let allowed = |caller, method, path| a.decide(caller, method, path).allowed;
        assert!(allowed(Some(FRONTEND), Some(&get), Some("/v1/pay")));
        assert!(!allowed(Some(FRONTEND), Some(&post), Some("/v1/pay")), "method not listed");
        assert!(!allowed(Some(FRONTEND), Some(&get), Some("/v2/pay")), "path not listed");
        assert!(!allowed(Some(OTHER), Some(&get), Some("/v1/pay")), "caller not listed");
        assert!(!allowed(Some(FRONTEND), Some(&get), Some("/v1/admin/x")), "explicit deny comes first");
        assert!(allowed(Some(OTHER), Some(&post), Some("/health")), "any verified caller");
        assert!(!allowed(None, Some(&get), Some("/health")), "plaintext callers have no identity");
        assert!(!allowed(Some(FRONTEND), None, None), "TCP: rules with paths or methods never match");
        assert_eq!(a.decide(Some(FRONTEND), Some(&get), Some("/v1/x")).rule, Some("payments#1"));
        assert_eq!(a.decide(Some(OTHER), Some(&get), Some("/x")).rule, None);
    }

    #[test]
    fn default_allow_with_deny_rules() {
        let a = authz(
            "kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  service: payments
  default: allow
  rules: [{action: deny, methods: [DELETE]}]
",
        );
        assert!(a.decide(Some(OTHER), Some(&Method::GET), Some("/")).allowed);
        assert!(!a.decide(Some(OTHER), Some(&Method::DELETE), Some("/")).allowed);
        assert!(!a.decide(None, Some(&Method::DELETE), Some("/")).allowed, "a deny rule without from denies everyone");
        let before = a.denied.get();
        assert!(!a.check(Some(OTHER), Some(&Method::DELETE), Some("/")).allowed);
        assert_eq!(a.denied.get(), before + 1);
    }
}
