//! Outbound connections to peer proxies: TCP, then TLS 1.3 presenting this proxy's certificate
//! and verifying the peer's SPIFFE id, then one HTTP/2 connection per peer and worker that
//! multiplexes every request. A rotated identity makes the next request open a new connection;
//! requests already on the old one finish there.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::pki_types::TrustAnchor;
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use weft_api::SpiffeId;

use super::MeshTls;
use super::identity::{ALPN_H2, FixedKey};
use super::verify::SpiffeServerVerifier;
use crate::connect::{ConnectError, H2Conn, Reuse, connect_tcp, handshake_h2};

struct MeshConn {
    tx: H2Conn,
    /// The identity the connection was made with, to notice rotation.
    tls: Arc<MeshTls>,
}

thread_local! {
    static POOL: RefCell<HashMap<(SocketAddr, Arc<str>), MeshConn>> = RefCell::new(HashMap::new());
}

/// An HTTP/2 connection to the peer proxy at `addr` that proved it is `identity`, and whether
/// it was reused (`reuse` allowing). `now` is a recent clock reading (see `H2Conn::take`).
pub(crate) async fn checkout(
    addr: SocketAddr,
    identity: &Arc<str>,
    connect_timeout: Duration,
    reuse: Reuse,
    now: Instant,
) -> Result<(H2Conn, bool), ConnectError> {
    let Some(tls) = super::current() else {
        return Err(ConnectError::Tls {
            addr,
            reason: "no-identity",
            detail: "this proxy has no certificate yet, so it cannot call a meshed endpoint".to_string(),
        });
    };
    let key = (addr, identity.clone());
    if reuse == Reuse::Pooled {
        let pooled = POOL.with(|p| {
            p.borrow().get(&key).filter(|c| !c.tx.is_closed() && Arc::ptr_eq(&c.tls, &tls)).map(|c| c.tx.clone())
        });
        if let Some(tx) = pooled
            && tx.take(crate::clock::nanos_at(now)).await
        {
            return Ok((tx, true));
        }
    }
    // Boxed: the TLS and HTTP/2 handshake futures are large (~5 KiB) and needed once per
    // peer; inline they would be reserved, and copied, in every request's future.
    let tx = Box::pin(connect(addr, identity, &tls, connect_timeout)).await?;
    POOL.with(|p| p.borrow_mut().insert(key, MeshConn { tx: tx.clone(), tls }));
    Ok((tx, false))
}

/// Drops closed connections (run by each worker's idle sweep).
pub(crate) fn sweep() {
    POOL.with(|p| p.borrow_mut().retain(|_, c| !c.tx.is_closed()));
}

async fn connect(
    addr: SocketAddr,
    identity: &str,
    tls: &Arc<MeshTls>,
    timeout: Duration,
) -> Result<H2Conn, ConnectError> {
    let stream = handshake(addr, identity, tls, timeout, vec![ALPN_H2.to_vec()]).await?;
    handshake_h2(addr, stream, "mTLS HTTP/2 to a peer proxy").await
}

/// An mTLS stream to the peer proxy at `addr` that proved it is `identity`, for opaque TCP.
pub(crate) async fn connect_stream(
    addr: SocketAddr,
    identity: &str,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let Some(tls) = super::current() else {
        return Err(ConnectError::Tls {
            addr,
            reason: "no-identity",
            detail: "this proxy has no certificate yet, so it cannot call a meshed endpoint".to_string(),
        });
    };
    handshake(addr, identity, &tls, timeout, Vec::new()).await
}

/// TCP connect and TLS handshake, each within `timeout`; failures counted and logged.
async fn handshake(
    addr: SocketAddr,
    identity: &str,
    tls: &MeshTls,
    timeout: Duration,
    alpn: Vec<Vec<u8>>,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tls_err = |reason: &'static str, detail: String| ConnectError::Tls { addr, reason, detail };
    let expected = SpiffeId::parse(identity).map_err(|e| tls_err("bad-identity", e.to_string()))?;
    let config = client_config(tls, expected, alpn).map_err(|e| tls_err("config", e.to_string()))?;
    let tcp = connect_tcp(addr, timeout).await?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(ServerName::IpAddress(addr.ip().into()), tcp);
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            super::handshake_failed("outbound", addr, &e);
            Err(tls_err(super::verify::failure_reason(&e), super::verify::describe(&e)))
        }
        Err(_) => {
            let e =
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("handshake not finished within {timeout:?}"));
            super::handshake_failed("outbound", addr, &e);
            Err(tls_err("timeout", e.to_string()))
        }
    }
}

/// TLS 1.3 only, this proxy's certificate as client, the peer verified against `expected`.
fn client_config(tls: &MeshTls, expected: SpiffeId, alpn: Vec<Vec<u8>>) -> Result<ClientConfig, rustls::Error> {
    spiffe_client_config(tls.provider.clone(), tls.anchors.clone(), expected, Some(tls.key.clone()), alpn)
}

/// A TLS 1.3 client that accepts only a server chaining to `anchors` and proving `expected`,
/// presenting `key` when given: for peer proxies and for the control plane alike.
pub(super) fn spiffe_client_config(
    provider: Arc<CryptoProvider>,
    anchors: Arc<[TrustAnchor<'static>]>,
    expected: SpiffeId,
    key: Option<Arc<CertifiedKey>>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, rustls::Error> {
    let verifier = SpiffeServerVerifier { anchors, expected, provider: provider.clone() };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match key {
        Some(key) => builder.with_client_cert_resolver(Arc::new(FixedKey(key))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    Ok(config)
}
