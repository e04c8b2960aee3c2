//! Mutual TLS between proxies: the proxy's identity (from files or the control plane's CA),
//! the inbound handshake (strict or permissive), outbound connections that verify the peer's
//! SPIFFE id, and the handshake-failure metrics.
//!
//! The identity is process-wide (one workload, one certificate), like the metrics: it is read
//! with one atomic load when a connection starts, and replaced whole on rotation, so new
//! handshakes get the new certificate while existing connections carry on.

pub(crate) mod connect;
pub(crate) mod control_plane;
pub(crate) mod csr;
pub(crate) mod files;
pub mod identity;
pub(crate) mod inbound;
pub(crate) mod stored;
pub mod verify;

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use weft_api::MtlsMode;

pub(crate) use identity::MeshTls;

use crate::metrics::METRICS;
use crate::state::ProxyState;

/// Why an identity could not be loaded or obtained; the message names the source.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("cannot use the identity in {what}: {reason}")]
    Identity { what: String, reason: String },
    #[error("cannot read {what}: {source}")]
    Read { what: String, source: std::io::Error },
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
    #[error("cannot reach the control plane at {address}: {reason}")]
    ControlPlane { address: String, reason: String },
    /// The control plane's certificate does not verify; `fatal` when none ever has.
    #[error("{reason}")]
    Untrusted { reason: String, fatal: bool },
}

static CURRENT: ArcSwapOption<MeshTls> = ArcSwapOption::const_empty();

/// Bumped on every installed identity, so the discovery client re-reports the expiry.
static INSTALLED: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Wakes when a new identity is installed.
pub(crate) fn installs() -> tokio::sync::watch::Receiver<u64> {
    INSTALLED.subscribe()
}

/// Expiry of the current certificate (Unix seconds), if the proxy has one.
pub(crate) fn not_after() -> Option<u64> {
    CURRENT.load().as_ref().map(|t| unix_secs(t.not_after))
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Makes ring the process-wide rustls provider (both binaries call this first; aws-lc-rs is
/// never built).
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The proxy's identity, if it has one yet.
pub(crate) fn current() -> Option<Arc<MeshTls>> {
    CURRENT.load_full()
}

/// Swaps in a new identity: handshakes from now on use it; open connections keep theirs.
pub(crate) fn install(tls: MeshTls) {
    METRICS.cert_expiry.set(unix_secs(tls.not_after) as i64);
    tracing::info!(id = %tls.id, expires_in = ?tls.remaining(), "identity installed; new TLS handshakes use it");
    CURRENT.store(Some(Arc::new(tls)));
    INSTALLED.send_modify(|n| *n += 1);
}

/// How the inbound listener treats plaintext: the Mesh's `mtls` when the proxy has an identity
/// source, else off (nothing to present).
pub(crate) fn inbound_mode(state: &ProxyState) -> MtlsMode {
    let snap = state.config.load();
    if snap.proxy.has_identity_source() { snap.mesh.mtls } else { MtlsMode::Off }
}

/// `/ready` waits for this: when mTLS is on and the proxy has an identity source, it needs its
/// first certificate.
pub(crate) fn ready(state: &ProxyState) -> bool {
    inbound_mode(state) == MtlsMode::Off || CURRENT.load().is_some()
}

/// Starts keeping the identity fresh: files are loaded now and watched; with a control plane,
/// a certificate is requested and renewed. Runs on the control runtime.
pub(crate) fn start(state: &Arc<ProxyState>) {
    let spec = state.config.load().proxy.clone();
    if let Some(files) = spec.tls {
        tokio::spawn(files::watch(files));
    } else if let Some(cp) = spec.control_plane {
        if cp.has_bootstrap_credential() {
            tokio::spawn(csr::run(state.clone(), cp));
        } else {
            tracing::warn!(
                "controlPlane has no joinTokenFile or serviceAccountTokenFile: this proxy gets no certificate and speaks plaintext"
            );
        }
    }
}

/// Counts a failed handshake and says why in the log.
pub(crate) fn handshake_failed(direction: &'static str, peer: std::net::SocketAddr, e: &std::io::Error) {
    let reason = verify::failure_reason(e);
    METRICS.tls_handshake_errors.with_label_values(&[direction, reason]).inc();
    tracing::warn!(direction, %peer, reason, error = %verify::describe(e), "mTLS handshake failed");
}
