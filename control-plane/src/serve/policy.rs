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
use std::net::IpAddr;

use weft_api::{AuthzAction, Document, Service};

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

/// The file name the cluster's Services are composed under (in diagnostics and `weft status`).
pub const CLUSTER_FILE: &str = "<kubernetes Services>";

/// What the policy is made of: the operators' files (checked as a set), the policy objects
/// applied to the cluster (one "file" per object, each decoded), and the Services a cluster
/// registry knows (their ports, protocols and virtual IPs).
#[derive(Default)]
pub struct PolicyInputs {
    files: Vec<(String, Vec<Document>)>,
    objects: Vec<(String, Vec<Document>)>,
    cluster: Vec<Service>,
    /// Why the policy folder's last load was refused (its previous documents serve).
    pub file_problems: Vec<String>,
    /// The policy objects that do not decode (their last good versions serve).
    pub object_problems: Vec<String>,
    /// What the last composition found across documents (objects held back, or the whole).
    pub set_problems: Vec<String>,
    /// Each object's version in the policy last served: what an object that breaks a rule
    /// across documents falls back to.
    served: BTreeMap<String, Vec<Document>>,
}

impl PolicyInputs {
    /// Takes a valid policy folder's documents (Service endpoints are the registry's and are
    /// dropped here).
    pub fn set_files(&mut self, mut files: Vec<(String, Vec<Document>)>) {
        for doc in files.iter_mut().flat_map(|(_, docs)| docs.iter_mut()) {
            if let Document::Service(s) = doc {
                s.spec.endpoints = Vec::new();
            }
        }
        self.files = files;
    }

    /// Takes the cluster's policy objects (decoded); false when they are the ones already held.
    pub fn set_objects(&mut self, objects: Vec<(String, Vec<Document>)>) -> bool {
        if self.objects == objects {
            return false;
        }
        self.objects = objects;
        true
    }

    /// Every problem of the inputs, files first.
    pub fn problems(&self) -> Vec<String> {
        self.file_problems.iter().chain(&self.object_problems).chain(&self.set_problems).cloned().collect()
    }

    /// Takes the cluster's Services; false when they are the ones already held. One that a
    /// policy file could not hold (a name Weft refuses) is left out with a warning, so it cannot
    /// keep the others out.
    pub fn set_cluster(&mut self, mut cluster: Vec<Service>) -> bool {
        cluster.retain(|svc| {
            let doc = [Document::Service(svc.clone())];
            match weft_api::validate::validate_documents(CLUSTER_FILE, &doc) {
                Ok(()) => true,
                Err(problems) => {
                    let key = service_key(&svc.metadata.name, &svc.metadata.namespace);
                    tracing::warn!(service = %key, %problems, "Kubernetes Service left out of the policy");
                    false
                }
            }
        });
        if self.cluster == cluster {
            return false;
        }
        self.cluster = cluster;
        true
    }

    /// The files with the cluster's Services merged in, and what had to be left out:
    /// - a Service a file or a policy object declares is theirs (the operator said how to serve it); when
    ///   it lists no virtual IPs it takes the cluster's;
    /// - a cluster Service no file declares is added as the cluster says;
    /// - a virtual IP that a file gives another Service, or an earlier cluster Service holds,
    ///   is left out (and reported), so an address always routes to one service.
    ///
    /// `held` names policy objects that broke a rule across documents: they take their
    /// version in the last served policy, or are left out if they were not in it. Without
    /// `cluster`, the cluster's Services (and the ClusterIPs they lend) are left out.
    pub fn compose(&self, held: &BTreeSet<String>, cluster: bool) -> (Vec<(String, Vec<Document>)>, Vec<String>) {
        let mut files = self.files.clone();
        for (label, docs) in &self.objects {
            match held.contains(label) {
                false => files.push((label.clone(), docs.clone())),
                true => files.extend(self.served.get(label).map(|docs| (label.clone(), docs.clone()))),
            }
        }
        let mut claimed: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut declared: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (f, (_, docs)) in files.iter().enumerate() {
            for (d, doc) in docs.iter().enumerate() {
                if let Document::Service(s) = doc {
                    let key = service_key(&s.metadata.name, &s.metadata.namespace);
                    for ip in &s.spec.virtual_ips {
                        claimed.entry(*ip).or_insert_with(|| key.clone());
                    }
                    declared.entry(key).or_insert((f, d));
                }
            }
        }
        let mut dropped = Vec::new();
        let mut added = Vec::new();
        for svc in self.cluster.iter().filter(|_| cluster) {
            let key = service_key(&svc.metadata.name, &svc.metadata.namespace);
            let mut ips = Vec::new();
            for ip in &svc.spec.virtual_ips {
                match claimed.get(ip) {
                    Some(owner) if *owner != key => {
                        dropped.push(format!("virtual IP {ip} of Kubernetes Service {key} is already {owner}'s"));
                    }
                    _ => {
                        claimed.insert(*ip, key.clone());
                        ips.push(*ip);
                    }
                }
            }
            match declared.get(&key) {
                Some(&(f, d)) => {
                    if let Document::Service(s) = &mut files[f].1[d]
                        && s.spec.virtual_ips.is_empty()
                    {
                        s.spec.virtual_ips = ips;
                    }
                }
                None => {
                    let mut svc = svc.clone();
                    svc.spec.virtual_ips = ips;
                    added.push(Document::Service(svc));
                }
            }
        }
        if !added.is_empty() {
            files.push((CLUSTER_FILE.to_string(), added));
        }
        (files, dropped)
    }

    /// Whether `file` names one of the policy objects.
    pub fn is_object(&self, file: &str) -> bool {
        self.objects.iter().any(|(label, _)| label == file)
    }

    /// Records the objects of a policy that is now served.
    pub fn served(&mut self, files: &[(String, Vec<Document>)]) {
        self.served = files.iter().filter(|(f, _)| self.is_object(f)).cloned().collect();
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

    fn cluster_service(name: &str, ns: &str, ips: &[&str]) -> Service {
        Service {
            metadata: weft_api::Metadata {
                name: name.into(),
                namespace: ns.into(),
                line: 0,
                fields: Default::default(),
            },
            spec: weft_api::ServiceSpec {
                ports: vec![weft_api::ServicePort { port: 8080, protocol: weft_api::Protocol::Tcp }],
                endpoints: Vec::new(),
                virtual_ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            },
        }
    }

    fn services(files: &[(String, Vec<Document>)]) -> Vec<(String, String, Vec<String>, Vec<u16>)> {
        let mut out = Vec::new();
        for (file, docs) in files {
            for doc in docs {
                if let Document::Service(s) = doc {
                    out.push((
                        file.clone(),
                        service_key(&s.metadata.name, &s.metadata.namespace),
                        s.spec.virtual_ips.iter().map(ToString::to_string).collect(),
                        s.spec.ports.iter().map(|p| p.port).collect(),
                    ));
                }
            }
        }
        out
    }

    #[test]
    fn the_files_say_how_a_service_is_served_and_the_cluster_where_it_is_addressed() {
        let text = "\
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
  endpoints: [{address: \"10.0.0.1:8080\"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: pinned, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
  virtualIPs: [10.96.0.9]
";
        let mut inputs = PolicyInputs::default();
        inputs.set_files(vec![("p.yaml".into(), weft_api::parse_file("p.yaml", text).unwrap())]);
        assert!(inputs.set_cluster(vec![
            cluster_service("payments", "shop", &["10.96.0.7"]),
            cluster_service("pinned", "shop", &["10.96.0.8"]),
            cluster_service("cart", "shop", &["10.96.0.9", "10.96.0.10"]),
            cluster_service("orders", "shop", &["10.96.0.10"]),
            cluster_service("Not_A_Name", "shop", &["10.96.0.11"]),
        ]));
        assert_eq!(inputs.cluster.len(), 4, "a Service Weft cannot name is left out, not the others");
        assert!(!inputs.set_cluster(inputs.cluster.clone()), "the same Services are no change");
        let (files, dropped) = inputs.compose(&BTreeSet::new(), true);
        let p = |f: &str, k: &str, ips: &[&str], ports: &[u16]| {
            (f.to_string(), k.to_string(), ips.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ports.to_vec())
        };
        assert_eq!(
            services(&files),
            [
                p("p.yaml", "payments.shop", &["10.96.0.7"], &[80]),
                p("p.yaml", "pinned.shop", &["10.96.0.9"], &[80]),
                p(CLUSTER_FILE, "cart.shop", &["10.96.0.10"], &[8080]),
                p(CLUSTER_FILE, "orders.shop", &[], &[8080]),
            ],
            "a file's Service keeps its ports and its own virtual IPs; a claimed IP stays its owner's"
        );
        assert_eq!(
            dropped,
            [
                "virtual IP 10.96.0.9 of Kubernetes Service cart.shop is already pinned.shop's",
                "virtual IP 10.96.0.10 of Kubernetes Service orders.shop is already cart.shop's",
            ]
        );
        let endpoints = files.iter().flat_map(|(_, d)| d).filter_map(|d| match d {
            Document::Service(s) => Some(s.spec.endpoints.len()),
            _ => None,
        });
        assert_eq!(endpoints.sum::<usize>(), 0, "endpoints are the registry's, not the policy's");
        assert!(weft_api::validate::validate_set(&files).is_ok());
    }
}
