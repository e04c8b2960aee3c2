//! The proxy's own identity (certificate chain, private key, trust bundle) and the rustls
//! configurations built from it. A new identity is a new value swapped in whole.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use weft_api::SpiffeId;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::TlsError;

/// ALPN between proxies: one multiplexed HTTP/2 connection per peer.
pub(crate) const ALPN_H2: &[u8] = b"h2";

/// Everything needed to speak mTLS as this workload, built once per certificate.
pub(crate) struct MeshTls {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub(super) key: Arc<CertifiedKey>,
    pub(super) anchors: Arc<[TrustAnchor<'static>]>,
    /// Inbound: requires a client certificate that chains to the bundle.
    pub(super) server: Arc<ServerConfig>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl MeshTls {
    /// Builds the identity from PEM text: the chain (leaf first), its PKCS#8 key and the
    /// bundle of roots to trust. `what` names the source in errors.
    pub(crate) fn from_pem(chain: &[u8], key: &[u8], bundle: &[u8], what: &str) -> Result<MeshTls, TlsError> {
        let bad = |part: &str, reason: String| TlsError::Identity { what: format!("{what} ({part})"), reason };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("certificate", e.to_string()))?;
        let leaf = certs.first().ok_or_else(|| bad("certificate", "no CERTIFICATE block".to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad("key", e.to_string()))?;
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bundle)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("bundle", e.to_string()))?;
        if roots.is_empty() {
            return Err(bad("bundle", "no CERTIFICATE block".to_string()));
        }
        let (id, not_before, not_after) = leaf_identity(leaf).map_err(|reason| bad("certificate", reason))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = CertifiedKey::from_der(certs, key, &provider)
            .map_err(|e| bad("key", format!("{e}; the key must belong to the first certificate")))?;
        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone()).map_err(|e| bad("bundle", e.to_string()))?;
        }
        let anchors: Arc<[TrustAnchor<'static>]> = store.roots.clone().into();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| bad("bundle", e.to_string()))?;
        let key = Arc::new(certified);
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("provider", e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(FixedKey(key.clone())));
        server.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
        Ok(MeshTls { id, not_before, not_after, key, anchors, server: Arc::new(server), provider })
    }

    /// Time left before the certificate expires (zero once it has).
    pub(crate) fn remaining(&self) -> Duration {
        self.not_after.duration_since(SystemTime::now()).unwrap_or_default()
    }
}

/// Always presents the one certificate (as server, and as client when asked).
#[derive(Debug)]
pub(super) struct FixedKey(pub(super) Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for FixedKey {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The SPIFFE id (the one URI SAN) and validity of a leaf certificate.
pub(crate) fn leaf_identity(der: &CertificateDer<'_>) -> Result<(SpiffeId, SystemTime, SystemTime), String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let id = spiffe_id_of(&cert)?;
    let at = |t: x509_parser::time::ASN1Time| SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64);
    Ok((id, at(cert.validity().not_before), at(cert.validity().not_after)))
}

/// The SPIFFE id a peer's leaf certificate carries: exactly one `spiffe://` URI SAN.
pub fn peer_id(der: &CertificateDer<'_>) -> Result<SpiffeId, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    spiffe_id_of(&cert)
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    let san = cert.subject_alternative_name().map_err(|e| format!("unreadable subject alternative names: {e}"))?;
    let uris: Vec<&str> = san
        .map(|s| &s.value.general_names)
        .into_iter()
        .flatten()
        .filter_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| e.to_string()),
        [] => Err("the certificate carries no spiffe:// URI SAN".to_string()),
        _ => Err(format!("the certificate carries {} SPIFFE ids; a mesh identity has exactly one", uris.len())),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn self_signed(uri: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn loads_an_identity_and_says_what_is_wrong_with_a_bad_one() {
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let (cert, key) = self_signed(id);
        let tls = MeshTls::from_pem(cert.as_bytes(), key.as_bytes(), cert.as_bytes(), "files").unwrap();
        assert_eq!(tls.id.to_string(), id);
        assert!(tls.remaining() > Duration::ZERO);

        let (_, other_key) = self_signed(id);
        let err = MeshTls::from_pem(cert.as_bytes(), other_key.as_bytes(), cert.as_bytes(), "files").err().unwrap();
        assert!(err.to_string().contains("the key must belong to the first certificate"), "{err}");
        let err = MeshTls::from_pem(b"garbage", key.as_bytes(), cert.as_bytes(), "id.pem").err().unwrap();
        assert!(err.to_string().starts_with("cannot use the identity in id.pem (certificate)"), "{err}");
        let err = MeshTls::from_pem(cert.as_bytes(), key.as_bytes(), b"", "files").err().unwrap();
        assert!(err.to_string().contains("(bundle): no CERTIFICATE block"), "{err}");
        let (dns_cert, dns_key) = self_signed("https://example.com/");
        let err = MeshTls::from_pem(dns_cert.as_bytes(), dns_key.as_bytes(), cert.as_bytes(), "f").err().unwrap();
        assert!(err.to_string().contains("no spiffe:// URI SAN"), "{err}");
    }
}
