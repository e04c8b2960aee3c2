//! The control-plane layer of the config: what the stream has said so far, how a snapshot or a
//! delta changes it, and how it goes on top of the static file's documents.
//!
//! Merge rule: a control-plane document replaces the file's document of the same kind,
//! namespace and name, and the file's documents it would conflict with (its Mesh replaces the
//! file's Mesh; its Route, TrafficPolicy or AuthorizationPolicy for a service replaces the
//! file's one for that service); for every service the control plane sends endpoints for, its list
//! replaces the file's; services known only by their endpoints get a plain Service document.
//! The Proxy document always comes from the file.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use serde::{Deserialize, Serialize};
use weft_api::discovery::{Delta, Snapshot as Message};
use weft_api::validate::applies_to;
use weft_api::{Diagnostics, Document, EndpointSpec, Metadata, Service, ServiceSpec};

use super::Snapshot;
use crate::metrics::METRICS;

/// The two sources of the effective config; snapshots are built from both, under this lock.
#[derive(Default)]
pub struct Layers {
    inner: Mutex<LayerState>,
    /// Set while a control plane is configured and none of its versions (received or
    /// persisted) is in effect yet: `/ready` stays 503, so an app gated on readiness does not
    /// make its first calls into a proxy that knows no endpoints.
    awaiting: AtomicBool,
}

#[derive(Default)]
struct LayerState {
    file: Vec<Document>,
    control_plane: Option<Arc<ControlPlaneLayer>>,
}

impl Layers {
    fn lock(&self) -> MutexGuard<'_, LayerState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `/ready` waits for the control plane's first version.
    pub fn awaiting_control_plane(&self) -> bool {
        self.awaiting.load(Ordering::Acquire)
    }

    /// A control plane is configured: `/ready` waits for its first version.
    pub fn await_control_plane(&self) {
        self.awaiting.store(true, Ordering::Release);
    }

    /// The control-plane layer in effect, if any.
    pub fn control_plane(&self) -> Option<Arc<ControlPlaneLayer>> {
        self.lock().control_plane.clone()
    }

    /// Replaces the file's documents without building (at start, before the first version).
    pub fn set_file(&self, docs: Vec<Document>) {
        self.lock().file = docs;
    }

    /// Builds the next snapshot from new file documents and the control-plane layer in effect
    /// (the file reload path). The caller swaps it in.
    pub fn build_with_file(
        &self,
        config_path: &Path,
        docs: Vec<Document>,
        version: u64,
        prev: &Snapshot,
    ) -> Result<Snapshot, Diagnostics> {
        let mut layers = self.lock();
        let cp = layers.control_plane.as_deref();
        let snap = Snapshot::build(merge(&docs, cp), &source(config_path, cp), version, Some(prev))?;
        layers.file = docs;
        Ok(snap)
    }

    /// Checks a control-plane layer, builds it on top of the file layer and swaps it into
    /// `config`; on any problem nothing changes. Returns the proxy's new config version.
    pub fn apply_control_plane(
        &self,
        config: &ArcSwap<Snapshot>,
        config_path: &Path,
        cp: ControlPlaneLayer,
    ) -> Result<u64, Diagnostics> {
        cp.validate()?;
        let mut layers = self.lock();
        let current = config.load_full();
        let merged = merge(&layers.file, Some(&cp));
        let snap = Snapshot::build(merged, &source(config_path, Some(&cp)), current.version + 1, Some(&current))?;
        let version = snap.version;
        config.store(Arc::new(snap));
        METRICS.config_version.set(version as i64);
        layers.control_plane = Some(Arc::new(cp));
        self.awaiting.store(false, Ordering::Release);
        Ok(version)
    }
}

fn source(config_path: &Path, cp: Option<&ControlPlaneLayer>) -> String {
    match cp {
        Some(cp) => format!("{} + control plane v{}", config_path.display(), cp.version),
        None => config_path.display().to_string(),
    }
}

/// Name used for the control plane in diagnostics.
pub const SOURCE: &str = "control-plane";

/// What the control plane's stream has said so far: its documents and endpoints, at a version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlPlaneLayer {
    /// The control plane's version (not the proxy's config version).
    pub version: u64,
    /// Documents it sent, replacing the file's of the same kind and name.
    pub documents: Vec<Document>,
    /// Endpoints by service key `name.namespace`.
    pub endpoints: BTreeMap<String, Vec<EndpointSpec>>,
}

impl ControlPlaneLayer {
    /// The layer a full snapshot message describes.
    pub fn from_snapshot(s: Message) -> ControlPlaneLayer {
        ControlPlaneLayer { version: s.version, documents: s.documents, endpoints: s.endpoints }
    }

    /// The layer after `delta`. A delta must move the version forward.
    pub fn with_delta(&self, delta: &Delta) -> Result<ControlPlaneLayer, String> {
        let mut next = self.clone();
        next.apply_delta(delta)?;
        Ok(next)
    }

    /// Applies `delta` in place; on an error nothing changed.
    pub fn apply_delta(&mut self, delta: &Delta) -> Result<(), String> {
        if delta.version <= self.version {
            return Err(format!("delta version {} is not after the applied version {}", delta.version, self.version));
        }
        self.version = delta.version;
        for change in &delta.changes {
            let list = self.endpoints.entry(change.service.clone()).or_default();
            let gone: HashSet<SocketAddr> =
                change.remove.iter().chain(change.upsert.iter().map(|e| &e.address)).copied().collect();
            list.retain(|e| !gone.contains(&e.address));
            list.extend(change.upsert.iter().cloned());
            list.sort_by_key(|e| e.address);
        }
        Ok(())
    }

    /// Checks what the control plane sent, the way a policy file is checked, plus the rules
    /// for the stream itself.
    pub fn validate(&self) -> Result<(), Diagnostics> {
        let mut diags = weft_api::validate::validate_documents(SOURCE, &self.documents).err().unwrap_or_default();
        for doc in &self.documents {
            if matches!(doc, Document::Proxy(_)) {
                diags.push(
                    SOURCE,
                    0,
                    "kind",
                    "the control plane sent a Proxy document; a proxy's own settings come only from its file",
                );
            }
        }
        for (service, list) in &self.endpoints {
            if !service.split_once('.').is_some_and(|(name, ns)| !name.is_empty() && !ns.is_empty()) {
                diags.push(SOURCE, 0, format!("endpoints.{service}"), "service keys must be NAME.NAMESPACE");
            }
            for (i, e) in list.iter().enumerate() {
                if e.weight == 0 {
                    diags.push(SOURCE, 0, format!("endpoints.{service}[{i}].weight"), "must be at least 1, found 0");
                }
            }
        }
        diags.into_result()
    }
}

fn doc_key(d: &Document) -> (&'static str, String, String) {
    (d.kind(), d.metadata().namespace.clone(), d.metadata().name.clone())
}

fn service_key(name: &str, namespace: &str) -> String {
    format!("{name}.{namespace}")
}

fn plain_service(key: &str, endpoints: Vec<EndpointSpec>) -> Document {
    let (name, namespace) = key.split_once('.').unwrap_or((key, weft_api::DEFAULT_NAMESPACE));
    Document::Service(Service {
        metadata: Metadata {
            name: name.to_string(),
            namespace: namespace.to_string(),
            line: 0,
            fields: Default::default(),
        },
        spec: ServiceSpec { ports: Vec::new(), endpoints, virtual_ips: Vec::new() },
    })
}

/// The documents the snapshot is built from: the file's, with the control-plane layer on top.
/// With a control plane configured, upstream ports whose service nobody declared yet get an
/// empty Service (503 "no endpoints" until the control plane names some), so a proxy can
/// start before its control plane answers.
pub fn merge(file: &[Document], cp: Option<&ControlPlaneLayer>) -> Vec<Document> {
    let mut out: Vec<Document> = match cp {
        Some(cp) => {
            let replaced: HashSet<_> = cp.documents.iter().map(doc_key).collect();
            let cp_mesh = cp.documents.iter().any(|d| matches!(d, Document::Mesh(_)));
            let cp_targets: HashSet<_> =
                cp.documents.iter().filter_map(|d| applies_to(d).map(|target| (d.kind(), target))).collect();
            let replaced_by_cp = |d: &&Document| {
                replaced.contains(&doc_key(d))
                    || (cp_mesh && matches!(d, Document::Mesh(_)))
                    || applies_to(d).is_some_and(|target| cp_targets.contains(&(d.kind(), target)))
            };
            file.iter().filter(|d| !replaced_by_cp(d)).chain(&cp.documents).cloned().collect()
        }
        None => file.to_vec(),
    };
    let mut declared: HashSet<String> = HashSet::new();
    for doc in &mut out {
        if let Document::Service(s) = doc {
            let key = service_key(&s.metadata.name, &s.metadata.namespace);
            if let Some(list) = cp.and_then(|cp| cp.endpoints.get(&key)) {
                s.spec.endpoints = list.clone();
            }
            declared.insert(key);
        }
    }
    if let Some(cp) = cp {
        for (key, list) in &cp.endpoints {
            if declared.insert(key.clone()) {
                out.push(plain_service(key, list.clone()));
            }
        }
    }
    let proxy = out.iter().find_map(|d| match d {
        Document::Proxy(p) if p.spec.control_plane.is_some() => Some(p.clone()),
        _ => None,
    });
    if let Some(p) = proxy {
        for up in &p.spec.upstreams {
            let key = if up.service.contains('.') {
                up.service.clone()
            } else {
                service_key(&up.service, &p.metadata.namespace)
            };
            if declared.insert(key.clone()) {
                out.push(plain_service(&key, Vec::new()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::discovery::EndpointChange;

    fn ep(addr: &str) -> EndpointSpec {
        EndpointSpec { address: addr.parse().unwrap(), weight: 1, identity: None }
    }

    const FILE: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Proxy
metadata: {name: frontend}
spec:
  service: frontend
  upstreams: [{service: payments, listen: 127.0.0.1:9101}, {service: ledger, listen: 127.0.0.1:9102}]
  controlPlane: {address: http://127.0.0.1:8086}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: payments}
spec: {ports: [{port: 80, protocol: http2}], endpoints: [{address: 127.0.0.1:1}]}
";

    fn services(docs: &[Document]) -> Vec<(String, Vec<EndpointSpec>)> {
        docs.iter()
            .filter_map(|d| match d {
                Document::Service(s) => Some((s.metadata.name.clone(), s.spec.endpoints.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn control_plane_endpoints_replace_the_files_and_fill_in_services() {
        let file = weft_api::parse_file("f.yaml", FILE).unwrap();
        let layer = ControlPlaneLayer {
            version: 7,
            documents: vec![],
            endpoints: BTreeMap::from([
                ("payments.default".into(), vec![ep("127.0.0.1:2")]),
                ("billing.default".into(), vec![ep("127.0.0.1:3")]),
            ]),
        };
        let merged = merge(&file, Some(&layer));
        assert_eq!(
            services(&merged),
            vec![
                ("payments".into(), vec![ep("127.0.0.1:2")]),
                ("billing".into(), vec![ep("127.0.0.1:3")]),
                ("ledger".into(), vec![]),
            ]
        );
        let Document::Service(p) = &merged[1] else { panic!("payments keeps its file document") };
        assert!(p.spec.ports[0].protocol.is_h2(), "the file's ports stay");
        // Without a control-plane layer yet, only the placeholder is added.
        assert_eq!(services(&merge(&file, None)).len(), 2);
    }

    #[test]
    fn control_plane_policy_replaces_the_files_for_the_same_service() {
        let extra = "---\nkind: Route\nmetadata: {name: from-file}\nspec: {service: payments, rules: [{timeout: 1s}]}\n\
                     ---\nkind: Mesh\nmetadata: {name: local}\nspec: {mtls: off}\n";
        let file = weft_api::parse_file("f.yaml", &format!("{FILE}{extra}")).unwrap();
        let cp_docs = "kind: Route\nmetadata: {name: from-cp}\nspec: {service: payments.default, rules: [{timeout: 2s}]}\n\
                       ---\nkind: Mesh\nmetadata: {name: default}\nspec: {mtls: off}\n";
        let layer = ControlPlaneLayer {
            version: 1,
            documents: weft_api::parse_file("cp", cp_docs).unwrap(),
            ..Default::default()
        };
        let merged = merge(&file, Some(&layer));
        let names: Vec<String> = merged
            .iter()
            .filter(|d| matches!(d, Document::Route(_) | Document::Mesh(_)))
            .map(|d| format!("{} {}", d.kind(), d.metadata().name))
            .collect();
        assert_eq!(names, ["Route from-cp", "Mesh default"], "one Route per service, one Mesh");
        weft_api::validate::validate_proxy_config("merged", &merged).unwrap();
    }

    #[test]
    fn deltas_change_single_endpoints_and_must_move_forward() {
        let layer = ControlPlaneLayer {
            version: 5,
            documents: vec![],
            endpoints: BTreeMap::from([("s.default".into(), vec![ep("127.0.0.1:1"), ep("127.0.0.1:2")])]),
        };
        let delta = Delta {
            version: 6,
            changes: vec![EndpointChange {
                service: "s.default".into(),
                upsert: vec![EndpointSpec { weight: 3, ..ep("127.0.0.1:2") }, ep("127.0.0.1:4")],
                remove: vec!["127.0.0.1:1".parse().unwrap()],
            }],
        };
        let next = layer.with_delta(&delta).unwrap();
        assert_eq!(
            next.endpoints["s.default"],
            vec![EndpointSpec { weight: 3, ..ep("127.0.0.1:2") }, ep("127.0.0.1:4")]
        );
        assert!(next.with_delta(&delta).unwrap_err().contains("not after"));
    }

    #[test]
    fn garbage_from_the_control_plane_is_named() {
        let mut layer = ControlPlaneLayer::default();
        layer.endpoints.insert("nonamespace".into(), vec![EndpointSpec { weight: 0, ..ep("127.0.0.1:1") }]);
        layer.documents = weft_api::parse_file("f.yaml", FILE).unwrap();
        let text = layer.validate().unwrap_err().to_string();
        assert!(text.contains("Proxy document"), "{text}");
        assert!(text.contains("NAME.NAMESPACE"), "{text}");
        assert!(text.contains("weight"), "{text}");
    }
}
