//! Configuration from the control plane: the proxy subscribes (and self-registers) with
//! `controlPlane.address`, applies each version atomically on top of its file's documents,
//! acks it, and keeps the last good version in `stateDir` for starts without a control plane.
//!
//! `layer` holds what the stream said and the merge rule, `client` the stream itself,
//! `persist` the copy on disk. The file watcher builds through [`build_with_file`] so that
//! a file reload keeps the control-plane layer.

pub mod client;
pub mod layer;
pub mod persist;
pub mod report;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use prometheus::{IntCounterVec, IntGauge, Opts};
use weft_api::discovery::WatchRequest;
use weft_api::{Diagnostics, Document};

use crate::config::Snapshot;
use crate::metrics::METRICS;
use crate::state::ProxyState;
use layer::ControlPlaneLayer;

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

    pub fn awaiting_control_plane(&self) -> bool {
        self.awaiting.load(Ordering::Acquire)
    }

    /// The control-plane layer in effect, if any.
    pub fn control_plane(&self) -> Option<Arc<ControlPlaneLayer>> {
        self.lock().control_plane.clone()
    }
}

pub struct DiscoveryMetrics {
    /// 1 while a watch stream to the control plane is open.
    pub connected: IntGauge,
    /// Control-plane versions applied or rejected.
    pub updates: IntCounterVec,
    /// The control-plane version in effect (0: none).
    pub version: IntGauge,
}

pub static DISCOVERY: LazyLock<DiscoveryMetrics> = LazyLock::new(|| {
    let connected = IntGauge::new("weft_discovery_connected", "1 while the watch stream to the control plane is open.")
        .expect("valid metric");
    let updates = IntCounterVec::new(
        Opts::new("weft_discovery_updates_total", "Control-plane updates by result (applied, rejected)."),
        &["result"],
    )
    .expect("valid metric");
    let version =
        IntGauge::new("weft_discovery_version", "Control-plane version in effect (0: none).").expect("valid metric");
    let r = &METRICS.registry;
    r.register(Box::new(connected.clone())).expect("metric registered once");
    r.register(Box::new(updates.clone())).expect("metric registered once");
    r.register(Box::new(version.clone())).expect("metric registered once");
    DiscoveryMetrics { connected, updates, version }
});

fn source(config_path: &Path, cp: Option<&ControlPlaneLayer>) -> String {
    match cp {
        Some(cp) => format!("{} + control plane v{}", config_path.display(), cp.version),
        None => config_path.display().to_string(),
    }
}

/// Builds the next snapshot from new file documents and the control-plane layer in effect
/// (the file reload path). The caller swaps it in.
pub fn build_with_file(
    state: &ProxyState,
    docs: Vec<Document>,
    version: u64,
    prev: &Snapshot,
) -> Result<Snapshot, Diagnostics> {
    let mut layers = state.layers.lock();
    let merged = layer::merge(&docs, layers.control_plane.as_deref());
    let snap =
        Snapshot::build(merged, &source(&state.config_path, layers.control_plane.as_deref()), version, Some(prev))?;
    layers.file = docs;
    Ok(snap)
}

/// Checks a control-plane layer, builds it on top of the file layer and swaps it in; on any
/// problem nothing changes. Returns the proxy's new config version.
pub fn apply(state: &ProxyState, cp: ControlPlaneLayer) -> Result<u64, Diagnostics> {
    let result = cp.validate().and_then(|()| {
        let mut layers = state.layers.lock();
        let current = state.config.load_full();
        let merged = layer::merge(&layers.file, Some(&cp));
        let snap =
            Snapshot::build(merged, &source(&state.config_path, Some(&cp)), current.version + 1, Some(&current))?;
        let version = snap.version;
        state.config.store(Arc::new(snap));
        METRICS.config_version.set(version as i64);
        DISCOVERY.version.set(cp.version as i64);
        layers.control_plane = Some(Arc::new(cp));
        state.layers.awaiting.store(false, Ordering::Release);
        Ok(version)
    });
    DISCOVERY.updates.with_label_values(&[if result.is_ok() { "applied" } else { "rejected" }]).inc();
    result
}

/// With `controlPlane` set: serves the persisted layer (if any) at once, then subscribes.
pub fn start(state: &Arc<ProxyState>) {
    LazyLock::force(&DISCOVERY);
    let snap = state.config.load_full();
    let Some(cp) = snap.proxy.control_plane.clone() else { return };
    let target = match crate::tls::control_plane::ControlPlaneTarget::new(&cp, &snap.mesh.trust_domain) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            crate::runtime::fatal(format!("controlPlane: {e}"));
            return;
        }
    };
    state.layers.awaiting.store(true, Ordering::Release);
    // `weft status` names the proxy by its Proxy document's own name.
    let proxy_name;
    match crate::config::read_documents(&state.config_path) {
        Ok((docs, _)) => {
            proxy_name = docs.iter().find_map(|d| match d {
                weft_api::Document::Proxy(p) => Some(p.metadata.name.clone()),
                _ => None,
            });
            state.layers.lock().file = docs;
        }
        Err(diags) => {
            tracing::error!(problems = %diags, "cannot read the config file again; not subscribing");
            return;
        }
    }
    if let Some(dir) = &snap.proxy.state_dir {
        match persist::load(Path::new(dir)) {
            Ok(Some(saved)) => {
                let v = saved.version;
                match apply(state, saved) {
                    Ok(_) => tracing::info!(
                        version = v,
                        dir,
                        "serving the persisted control-plane config until the control plane answers"
                    ),
                    Err(diags) => {
                        tracing::warn!(problems = %diags, "the persisted control-plane config is not valid; ignoring it")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the persisted control-plane config; ignoring it"),
        }
    }
    let request = WatchRequest {
        service: snap.proxy.service.clone(),
        namespace: Some(snap.proxy_namespace().to_string()),
        address: snap.proxy.inbound.as_ref().map(|i| i.listen),
        // Filled in from the certificate before each registration (see `client::run`).
        identity: None,
        name: proxy_name,
    };
    tokio::spawn(client::run(state.clone(), target, request));
}
