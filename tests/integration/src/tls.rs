//! Hand-made TLS 1.3 clients for tests that speak to a TLS listener themselves (not through a
//! proxy). The rejection tests' client accepts any server certificate (they judge the server by
//! what it does, not by its name); the other checks the server's chain against a CA and not its
//! name (mesh certificates name only a SPIFFE id, which each test checks itself where it
//! matters). Either presents the identity a test picks, or none.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::mesh::IdentityFiles;

/// A TLS 1.3 client config that accepts any server certificate, offering `alpn`, presenting
/// `identity`'s certificate when given.
pub fn client_config(identity: Option<&IdentityFiles>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    with_verifier(Arc::new(AnyServer(provider)), identity, alpn)
}

/// A TLS 1.3 client config that checks the server's chain against the roots in `ca_pem` (and
/// nothing about its name), offering `alpn`, presenting `identity`'s certificate when given.
pub fn client_config_trusting(ca_pem: &Path, identity: Option<&IdentityFiles>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem).expect("read CA file") {
        roots.add(cert.expect("CA certificate")).expect("add CA certificate");
    }
    with_verifier(Arc::new(ChainOnly(roots)), identity, alpn)
}

fn with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<&IdentityFiles>,
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring")
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(files) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(files.path("cert.pem"))
                .expect("read cert.pem")
                .map(|c| c.expect("a certificate"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(files.path("key.pem")).expect("read key.pem");
            builder.with_client_auth_cert(chain, key).expect("the key belongs to the certificate")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection to `addr` with `config`; the handshake's error when it fails.
pub async fn connect(addr: SocketAddr, config: rustls::ClientConfig) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// A TLS 1.3 client with no certificate: sends one HTTP/1.1 request and returns whatever
/// comes back (nothing when the handshake fails).
pub async fn no_cert_tls_exchange(addr: SocketAddr) -> Vec<u8> {
    let Ok(mut stream) = connect(addr, client_config(None, &[b"http/1.1"])).await else { return Vec::new() };
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nhost: server\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

/// Accepts whatever certificate the server shows; signatures are still checked.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the server's chain against the roots, and nothing about its name.
#[derive(Debug)]
struct ChainOnly(rustls::RootCertStore);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        cert.verify_for_usage(algs.all, &self.0.roots, intermediates, now, webpki::KeyUsage::server_auth(), None, None)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(m, c, d, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}
