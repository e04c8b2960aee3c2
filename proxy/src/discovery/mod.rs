//! Configuration from the control plane: the proxy subscribes (and self-registers) with
//! `controlPlane.address`, applies each version atomically on top of its file's documents,
//! acks it, and keeps the last good version in `stateDir` for starts without a control plane.
//!
//! `config::layer` holds what the stream said and the merge rule, `client` the stream itself,
//! `persist` the copy on disk.

pub(crate) mod client;
pub(crate) mod persist;
pub(crate) mod report;

use std::path::Path;
use std::sync::{Arc, LazyLock};

use prometheus::{IntCounterVec, IntGauge, Opts};
use weft_api::Diagnostics;
use weft_api::discovery::WatchRequest;

use crate::config::layer::ControlPlaneLayer;
use crate::metrics::METRICS;
use crate::state::ProxyState;

pub(crate) struct DiscoveryMetrics {
    /// 1 while a watch stream to the control plane is open.
    pub connected: IntGauge,
    /// Control-plane versions applied or rejected.
    pub updates: IntCounterVec,
    /// The control-plane version in effect (0: none).
    pub version: IntGauge,
}

pub(crate) static DISCOVERY: LazyLock<DiscoveryMetrics> = LazyLock::new(|| {
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

/// Checks a control-plane layer, builds it on top of the file layer and swaps it in; on any
/// problem nothing changes. Returns the proxy's new config version.
pub(crate) fn apply(state: &ProxyState, cp: ControlPlaneLayer) -> Result<u64, Diagnostics> {
    let cp_version = cp.version;
    let result = state.layers.apply_control_plane(&state.config, &state.config_path, cp);
    if result.is_ok() {
        DISCOVERY.version.set(cp_version as i64);
    }
    DISCOVERY.updates.with_label_values(&[if result.is_ok() { "applied" } else { "rejected" }]).inc();
    result
}

/// With `controlPlane` set: serves the persisted layer (if any) at once, then subscribes.
pub(crate) fn start(state: &Arc<ProxyState>) {
    LazyLock::force(&DISCOVERY);
    let snap = state.config.load_full();
    let Some(cp) = snap.proxy.control_plane.clone() else { return };
    let target = match crate::tls::control_plane::ControlPlaneTarget::new(&cp, &snap.mesh.trust_domain) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            crate::state::fatal(format!("controlPlane: {e}"));
            return;
        }
    };
    state.layers.await_control_plane();
    // `weft status` names the proxy by its Proxy document's own name.
    let proxy_name;
    match crate::config::read_documents(&state.config_path) {
        Ok((docs, _)) => {
            proxy_name = docs.iter().find_map(|d| match d {
                weft_api::Document::Proxy(p) => Some(p.metadata.name.clone()),
                _ => None,
            });
            state.layers.set_file(docs);
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
