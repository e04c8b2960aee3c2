//! The discovery listener's transport: TLS with the control plane's own certificate from the
//! mesh CA (signed in-process for its SPIFFE id, renewed at 70 % of its life), client
//! certificates verified against the mesh trust bundle but optional (a proxy asking for its
//! first certificate has none yet), and the rule for plaintext: loopback peers only, unless
//! the operator opts out of that with `--insecure-plaintext`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use weft_api::SpiffeId;

use crate::ca::Issuer;

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// A connection must say what it speaks, and finish a TLS handshake, within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Renew the serving certificate when this share of its life has passed.
const RENEW_AT: f64 = 0.7;

/// How a discovery request reached the control plane, and who sent it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub peer: SocketAddr,
    pub transport: Transport,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Transport {
    /// TLS; the SPIFFE id of the client certificate when one was presented (it chains to the
    /// mesh trust bundle: rustls verified it).
    Tls(Option<SpiffeId>),
    /// Plaintext: from loopback, or any peer with `--insecure-plaintext`. Nothing about the
    /// caller is known; the session id (unguessable) is what binds acks and leaves.
    Plain,
}

/// What the first bytes of a new connection decide.
#[derive(Debug, PartialEq)]
pub enum Accept {
    Tls,
    Plain,
    /// Plaintext from a peer that is not allowed it; the string says why, for the log.
    Refuse(&'static str),
}

/// Decides a connection's transport from its first byte and the peer (a function, so the rule
/// has a table of tests).
pub fn classify(first: u8, peer: SocketAddr, tls: bool, insecure_plaintext: bool) -> Accept {
    if first == TLS_HANDSHAKE_RECORD {
        return if tls { Accept::Tls } else { Accept::Refuse("TLS, but this control plane has no CA (--ca)") };
    }
    if peer.ip().is_loopback() || insecure_plaintext {
        Accept::Plain
    } else if tls {
        Accept::Refuse("plaintext from a non-loopback peer; use https:// with trustBundleFile")
    } else {
        Accept::Refuse("plaintext from a non-loopback peer; start weft serve with --ca (or --insecure-plaintext)")
    }
}

/// The control plane's own identity and the TLS acceptor built on it.
pub struct ServingTls {
    pub id: SpiffeId,
    /// DNS names in the certificate too (`--tls-san`).
    dns_names: Vec<String>,
    acceptor: TlsAcceptor,
    key: Arc<ServingKey>,
}

/// The current serving certificate, swapped whole on renewal.
#[derive(Debug)]
struct ServingKey(ArcSwap<CertifiedKey>);

impl rustls::server::ResolvesServerCert for ServingKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ServingTls {
    /// Signs a certificate for `id` with `issuer`'s CA and builds the acceptor: TLS 1.3, ALPN
    /// h2 and http/1.1, client certificates optional and verified against the trust bundle.
    pub fn new(issuer: &Issuer, id: SpiffeId, dns_names: Vec<String>, ttl: Duration) -> Result<ServingTls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = sign(issuer, &id, &dns_names, ttl, &provider)?;
        let key = Arc::new(ServingKey(ArcSwap::from_pointee(certified)));
        let mut roots = RootCertStore::empty();
        for root in CertificateDer::pem_slice_iter(issuer.bundle_pem().as_bytes()) {
            let root = root.map_err(|e| format!("the trust bundle: {e}"))?;
            roots.add(root).map_err(|e| format!("the trust bundle: {e}"))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("client verifier: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(key.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServingTls { id, dns_names, acceptor: TlsAcceptor::from(Arc::new(config)), key })
    }

    /// Keeps the serving certificate fresh: a new one at 70 % of `ttl`, retried every few
    /// seconds on failure while the current one serves.
    pub fn renew_forever(self: &Arc<Self>, issuer: Arc<Issuer>, ttl: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut wait = ttl.mul_f64(RENEW_AT);
            loop {
                tokio::time::sleep(wait).await;
                match sign(&issuer, &this.id, &this.dns_names, ttl, &provider) {
                    Ok(k) => {
                        this.key.0.store(Arc::new(k));
                        tracing::info!(id = %this.id, "control plane's serving certificate renewed");
                        wait = ttl.mul_f64(RENEW_AT);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot renew the control plane's serving certificate; retrying");
                        wait = Duration::from_secs(5);
                    }
                }
            }
        });
    }

    /// The TLS handshake, within [`HANDSHAKE_TIMEOUT`]; the stream and the caller's id.
    pub async fn accept(&self, tcp: TcpStream) -> Result<(TlsStream<TcpStream>, Option<SpiffeId>), String> {
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp))
            .await
            .map_err(|_| format!("TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}"))?
            .map_err(|e| format!("TLS handshake: {}", weft_proxy::tls::verify::describe(&e)))?;
        let id = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => {
                Some(weft_proxy::tls::identity::peer_id(leaf).map_err(|e| format!("client certificate: {e}"))?)
            }
            None => None,
        };
        Ok((stream, id))
    }
}

fn sign(
    issuer: &Issuer,
    id: &SpiffeId,
    dns_names: &[String],
    ttl: Duration,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("a new key: {e}"))?;
    let issued = issuer.authority().sign_server(id, dns_names, &key, ttl).map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the signed chain: {e}"))?;
    let der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| format!("the key: {e}"))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| format!("the serving key: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plaintext_only_from_loopback_unless_the_operator_opts_out() {
        let (lo, lo6, remote) = (addr("127.0.0.1:5000"), addr("[::1]:5000"), addr("10.1.2.3:5000"));
        let cases = [
            // (first byte, peer, has CA, --insecure-plaintext) → expected
            (0x16, remote, true, false, Accept::Tls),
            (0x16, lo, true, false, Accept::Tls),
            (b'P', lo, true, false, Accept::Plain),
            (b'P', lo6, false, false, Accept::Plain),
            (b'P', remote, true, true, Accept::Plain),
            (b'G', remote, false, true, Accept::Plain),
        ];
        for (first, peer, tls, insecure, want) in cases {
            assert_eq!(classify(first, peer, tls, insecure), want, "{first} from {peer}");
        }
        assert!(matches!(classify(b'P', remote, true, false), Accept::Refuse(r) if r.contains("https://")));
        assert!(matches!(classify(b'P', remote, false, false), Accept::Refuse(r) if r.contains("--ca")));
        assert!(matches!(classify(0x16, lo, false, false), Accept::Refuse(r) if r.contains("no CA")));
    }
}
