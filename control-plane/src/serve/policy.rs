//! The operators' policy, indexed for discovery: which documents concern which service, and
//! which services a given proxy may reach (its scope).
//!
//! The scope rule: a proxy of service S (identity `spiffe://<trust domain>/ns/<ns>/sa/<S>`)
//! may reach service T when T is S itself, or T has no AuthorizationPolicy, or one of T's
//! AuthorizationPolicies allows S (`default: allow`, or a rule whose `from` is empty or lists
//! S's identity). Every backend of a Route for a reachable service is reachable too (a canary
//! split must resolve). The proxy receives the Service, Route and TrafficPolicy documents of
//! its scope, its own service's AuthorizationPolicies, the Mesh, and the scope's endpoints.

use std::collections::{BTreeMap, BTreeSet};

use weft_api::{AuthzAction, Document};

#[derive(Debug, Default)]
pub struct Policy {
    /// Every document except Proxy ones; Service documents without their endpoints (those
    /// are registrations, served by the registry).
    documents: Vec<Document>,
    trust_domain: String,
    /// Service key → indexes of the Service, Route and TrafficPolicy documents about it.
    by_service: BTreeMap<String, Vec<usize>>,
    /// Service key → indexes of its AuthorizationPolicies.
    authz: BTreeMap<String, Vec<usize>>,
    /// Route target → services its rules send traffic to.
    backends: BTreeMap<String, BTreeSet<String>>,
    mesh: Option<usize>,
}

/// `name.namespace`.
pub fn service_key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

/// A reference written in a document of `namespace`: `name` or `name.ns`.
fn resolve(reference: &str, namespace: &str) -> String {
    if reference.contains('.') { reference.to_string() } else { service_key(reference, namespace) }
}

impl Policy {
    /// Indexes the documents of a valid policy folder.
    pub fn new(files: Vec<(String, Vec<Document>)>) -> Policy {
        let mut p = Policy { trust_domain: weft_api::MeshSpec::default().trust_domain, ..Policy::default() };
        for doc in files.into_iter().flat_map(|(_, docs)| docs) {
            let i = p.documents.len();
            let ns = doc.metadata().namespace.clone();
            let doc = match doc {
                Document::Proxy(_) => continue,
                Document::Service(mut s) => {
                    // Not `clear()`: at 100,000 endpoints the kept capacity is megabytes.
                    s.spec.endpoints = Vec::new();
                    p.by_service.entry(service_key(&s.metadata.name, &ns)).or_default().push(i);
                    Document::Service(s)
                }
                Document::Route(r) => {
                    let target = resolve(&r.spec.service, &ns);
                    let backends = p.backends.entry(target.clone()).or_default();
                    for rule in &r.spec.rules {
                        backends.extend(rule.backends.iter().map(|b| resolve(&b.service, &ns)));
                    }
                    p.by_service.entry(target).or_default().push(i);
                    Document::Route(r)
                }
                Document::TrafficPolicy(t) => {
                    p.by_service.entry(resolve(&t.spec.service, &ns)).or_default().push(i);
                    Document::TrafficPolicy(t)
                }
                Document::AuthorizationPolicy(a) => {
                    p.authz.entry(resolve(&a.spec.service, &ns)).or_default().push(i);
                    Document::AuthorizationPolicy(a)
                }
                Document::Mesh(m) => {
                    p.trust_domain = m.spec.trust_domain.clone();
                    p.mesh = Some(i);
                    Document::Mesh(m)
                }
            };
            p.documents.push(doc);
        }
        p
    }

    pub fn documents(&self) -> &[Document] {
        &self.documents
    }

    /// Services that have a Service document.
    pub fn declared_services(&self) -> impl Iterator<Item = &str> {
        self.by_service
            .keys()
            .map(String::as_str)
            .filter(|k| self.by_service[*k].iter().any(|i| matches!(self.documents[*i], Document::Service(_))))
    }

    /// The SPIFFE id of the proxies of service `key` (`name.namespace`).
    pub fn identity_of(&self, key: &str) -> String {
        let (name, ns) = key.split_once('.').unwrap_or((key, weft_api::DEFAULT_NAMESPACE));
        format!("spiffe://{}/ns/{ns}/sa/{name}", self.trust_domain)
    }

    fn allows(&self, target: &str, caller: &str) -> bool {
        let Some(policies) = self.authz.get(target) else { return true };
        policies.iter().any(|i| match &self.documents[*i] {
            Document::AuthorizationPolicy(a) => {
                a.spec.default == AuthzAction::Allow
                    || a.spec.rules.iter().any(|r| r.from.is_empty() || r.from.iter().any(|f| f == caller))
            }
            _ => false,
        })
    }

    /// The services a proxy of `self_key` may reach, among `known` (policy and registry).
    pub fn scope(&self, known: &BTreeSet<String>, self_key: &str) -> BTreeSet<String> {
        let caller = self.identity_of(self_key);
        let mut scope: BTreeSet<String> =
            known.iter().filter(|t| *t == self_key || self.allows(t, &caller)).cloned().collect();
        let mut todo: Vec<String> = scope.iter().cloned().collect();
        while let Some(t) = todo.pop() {
            for b in self.backends.get(&t).into_iter().flatten() {
                if scope.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        scope
    }

    /// The documents a proxy of `self_key` with this `scope` receives.
    pub fn documents_for(&self, scope: &BTreeSet<String>, self_key: &str) -> Vec<Document> {
        let mut picked: BTreeSet<usize> = BTreeSet::new();
        for key in scope {
            picked.extend(self.by_service.get(key).into_iter().flatten());
        }
        picked.extend(self.authz.get(self_key).into_iter().flatten());
        picked.extend(self.mesh);
        picked.into_iter().map(|i| self.documents[i].clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Policy {
        let docs = weft_api::parse_file("p.yaml", text).unwrap();
        Policy::new(vec![("p.yaml".into(), docs)])
    }

    const POLICY: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec: {ports: [{port: 80}], endpoints: [{address: 127.0.0.1:9001}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: payments-v2, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: ledger, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: weft.dev/v1alpha1
kind: Route
metadata: {name: payments, namespace: shop}
spec:
  service: payments
  rules: [{backends: [{service: payments, weight: 9}, {service: payments-v2, weight: 1}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger, namespace: shop}
spec:
  service: ledger
  default: deny
  rules: [{from: [\"spiffe://cluster.local/ns/shop/sa/payments\"]}]
";

    fn known(p: &Policy) -> BTreeSet<String> {
        p.declared_services().map(String::from).chain(["frontend.shop".to_string()]).collect()
    }

    #[test]
    fn authorization_limits_the_scope_and_routes_extend_it() {
        let p = policy(POLICY);
        let frontend = p.scope(&known(&p), "frontend.shop");
        assert_eq!(
            frontend,
            BTreeSet::from(["frontend.shop".into(), "payments.shop".into(), "payments-v2.shop".into()])
        );
        let payments = p.scope(&known(&p), "payments.shop");
        assert!(payments.contains("ledger.shop"), "{payments:?}");
    }

    #[test]
    fn a_proxy_gets_its_scopes_documents_without_endpoints() {
        let p = policy(POLICY);
        let scope = p.scope(&known(&p), "frontend.shop");
        let docs = p.documents_for(&scope, "frontend.shop");
        let names: Vec<String> = docs.iter().map(|d| format!("{} {}", d.kind(), d.metadata().name)).collect();
        assert_eq!(names, ["Service payments", "Service payments-v2", "Route payments"]);
        let Document::Service(s) = &docs[0] else { unreachable!() };
        assert!(s.spec.endpoints.is_empty(), "endpoints are registrations, sent apart");
        let ledger = p.documents_for(&p.scope(&known(&p), "ledger.shop"), "ledger.shop");
        assert!(ledger.iter().any(|d| d.kind() == "AuthorizationPolicy"), "a proxy gets its own authorization");
    }
}
