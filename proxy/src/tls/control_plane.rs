//! The connection to the control plane: TCP, then for an `https://` address TLS 1.3 that
//! verifies the control plane's certificate against `trustBundleFile` and its SPIFFE id, and
//! presents this proxy's mesh certificate once it has one (the control plane authorises the
//! watch, acks and leave by it). `http://` is plaintext, for a control plane on loopback.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use weft_api::{ControlPlaneSpec, SpiffeId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Set by the first handshake whose certificate verified: from then on a verification failure
/// is an incident to retry through (a CA change in progress), not a mistake in the config.
static EVER_TRUSTED: AtomicBool = AtomicBool::new(false);

/// A byte stream to the control plane, plaintext or TLS.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Where the control plane is and how to trust it.
#[derive(Debug)]
pub(crate) struct ControlPlaneTarget {
    /// `host:port`.
    pub authority: String,
    tls: Option<TlsTarget>,
}

#[derive(Debug)]
struct TlsTarget {
    bundle_file: PathBuf,
    expected: SpiffeId,
}

/// Why a connection to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectFailure {
    /// Down, refused, slow: retry.
    #[error("{0}")]
    Unreachable(String),
    /// It answered with a certificate that does not verify (or the bundle cannot be read).
    #[error("{0}")]
    Untrusted(String),
}

impl ConnectFailure {
    /// True when the config cannot work: no certificate from the control plane has ever
    /// verified in this process. The proxy then stops with this error instead of retrying
    /// forever against the wrong trust bundle.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, ConnectFailure::Untrusted(_)) && !EVER_TRUSTED.load(Ordering::Acquire)
    }
}

impl ControlPlaneTarget {
    /// From the Proxy's `controlPlane` (paths already resolved against the config file's
    /// folder); `trust_domain` gives the default identity the control plane must prove.
    pub(crate) fn new(cp: &ControlPlaneSpec, trust_domain: &str) -> Result<ControlPlaneTarget, String> {
        let (tls, rest) = match (cp.address.strip_prefix("https://"), cp.address.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => (false, cp.address.as_str()),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!(
                "{}: the control plane address needs a host and a port, e.g. https://weft-control.weft:8086",
                cp.address
            ));
        }
        let tls = match (tls, &cp.trust_bundle_file) {
            (false, _) => None,
            (true, None) => return Err(format!("{}: an https:// control plane needs trustBundleFile", cp.address)),
            (true, Some(bundle)) => {
                let expected = match &cp.identity {
                    Some(id) => SpiffeId::parse(id).map_err(|e| format!("controlPlane.identity: {e}"))?,
                    None => SpiffeId::new(trust_domain, "weft", "weft-control").map_err(|e| e.to_string())?,
                };
                Some(TlsTarget { bundle_file: PathBuf::from(bundle), expected })
            }
        };
        Ok(ControlPlaneTarget { authority: authority.to_string(), tls })
    }

    /// `https` or `http`, for request URIs.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// A connection speaking `alpn` (TLS only), presenting this proxy's certificate when
    /// `present_identity` and it has one.
    pub(crate) async fn connect(&self, alpn: &[u8], present_identity: bool) -> Result<Box<dyn Io>, ConnectFailure> {
        let unreachable = |e: String| ConnectFailure::Unreachable(e);
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| unreachable(format!("connect to {} timed out", self.authority)))?
            .map_err(|e| unreachable(format!("cannot connect to {}: {e}", self.authority)))?;
        let _ = tcp.set_nodelay(true);
        let Some(target) = &self.tls else { return Ok(Box::new(tcp)) };
        let config = self.client_config(target, alpn, present_identity)?;
        // The name plays no part: the verifier checks the SPIFFE id.
        let name = ServerName::try_from("weft-control").expect("a valid DNS name");
        let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        match tokio::time::timeout(CONNECT_TIMEOUT * 5, handshake).await {
            Ok(Ok(stream)) => {
                EVER_TRUSTED.store(true, Ordering::Release);
                Ok(Box::new(stream))
            }
            Ok(Err(e)) => {
                let reason = super::verify::failure_reason(&e);
                let detail = super::verify::describe(&e);
                match reason {
                    "unknown-ca" | "wrong-identity" | "no-spiffe-id" | "expired" | "not-yet-valid"
                    | "bad-certificate" => Err(ConnectFailure::Untrusted(format!(
                        "the control plane at {} presented a certificate that does not verify against \
                             trustBundleFile {} as {} ({reason}: {detail}); check trustBundleFile and \
                             controlPlane.identity",
                        self.authority,
                        target.bundle_file.display(),
                        target.expected
                    ))),
                    _ => Err(unreachable(format!("TLS handshake with {}: {detail}", self.authority))),
                }
            }
            Err(_) => Err(unreachable(format!("TLS handshake with {} timed out", self.authority))),
        }
    }

    fn client_config(
        &self,
        target: &TlsTarget,
        alpn: &[u8],
        present_identity: bool,
    ) -> Result<ClientConfig, ConnectFailure> {
        let untrusted = |e: String| {
            ConnectFailure::Untrusted(format!("controlPlane.trustBundleFile {}: {e}", target.bundle_file.display()))
        };
        // Read at every connection, so a rotated bundle on disk is used without a restart.
        let pem = std::fs::read(&target.bundle_file).map_err(|e| untrusted(e.to_string()))?;
        let mut store = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(&pem) {
            store.add(root.map_err(|e| untrusted(e.to_string()))?).map_err(|e| untrusted(e.to_string()))?;
        }
        if store.is_empty() {
            return Err(untrusted("no CERTIFICATE block".to_string()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = super::current().filter(|_| present_identity).map(|tls| tls.key.clone());
        super::connect::spiffe_client_config(
            provider,
            store.roots.into(),
            target.expected.clone(),
            key,
            vec![alpn.to_vec()],
        )
        .map_err(|e| untrusted(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(address: &str, bundle: Option<&str>, identity: Option<&str>) -> ControlPlaneSpec {
        ControlPlaneSpec {
            address: address.to_string(),
            join_token_file: None,
            service_account_token_file: None,
            trust_bundle_file: bundle.map(str::to_string),
            identity: identity.map(str::to_string),
        }
    }

    #[test]
    fn addresses_say_how_to_connect() {
        let t = ControlPlaneTarget::new(&spec("http://127.0.0.1:8086", None, None), "cluster.local").unwrap();
        assert_eq!((t.authority.as_str(), t.scheme()), ("127.0.0.1:8086", "http"));
        let t = ControlPlaneTarget::new(&spec("weft-control:8086/", None, None), "cluster.local").unwrap();
        assert_eq!((t.authority.as_str(), t.scheme()), ("weft-control:8086", "http"));
        let t = ControlPlaneTarget::new(&spec("https://cp.weft:8086", Some("ca.pem"), None), "example.org").unwrap();
        assert_eq!((t.authority.as_str(), t.scheme()), ("cp.weft:8086", "https"));
        let expected = &t.tls.as_ref().unwrap().expected;
        assert_eq!(expected.to_string(), "spiffe://example.org/ns/weft/sa/weft-control");
        let id = "spiffe://cluster.local/ns/infra/sa/cp";
        let t = ControlPlaneTarget::new(&spec("https://cp:1", Some("ca.pem"), Some(id)), "cluster.local").unwrap();
        assert_eq!(t.tls.unwrap().expected.to_string(), id);
        let err = ControlPlaneTarget::new(&spec("https://cp:1", None, None), "cluster.local").unwrap_err();
        assert!(err.contains("needs trustBundleFile"), "{err}");
        let err = ControlPlaneTarget::new(&spec("http://nohost", None, None), "cluster.local").unwrap_err();
        assert!(err.contains("host and a port"), "{err}");
    }
}
