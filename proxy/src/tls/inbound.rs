//! The inbound listener's side of mTLS: peek at the first byte to tell TLS from plaintext,
//! refuse plaintext in strict mode (permissive lets it through, counted), run the handshake
//! that requires a client certificate from the bundle, and learn the caller's SPIFFE id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use weft_api::MtlsMode;

use super::identity::peer_id;
use crate::metrics::METRICS;
use crate::response::errors::ProxyError;
use crate::state::ProxyState;

/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// First byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// In permissive mode a plaintext TCP client of a server-first protocol (SMTP, MySQL) sends
/// nothing until the app greets it: after this long without a byte, it is served as plaintext.
const SERVER_FIRST_WAIT: Duration = Duration::from_millis(300);

/// An inbound connection that passed this side's checks, ready to be served.
pub(crate) enum Admitted {
    /// Plaintext, let through in permissive mode (counted).
    Plaintext(TcpStream),
    /// mTLS with a client certificate that names a workload; `h2`: the peer chose HTTP/2 by
    /// ALPN (HTTP/2 over TLS requires ALPN, so a client that offered none speaks HTTP/1.1).
    Mtls { stream: TlsStream<TcpStream>, caller: Arc<str>, h2: bool },
}

/// Checks one inbound connection under `mode` (strict or permissive), bound for the app's
/// `port` (see `Side::Inbound`): `None` when it was refused (answered, counted and logged
/// here) or closed before it said anything.
pub(crate) async fn admit(
    stream: TcpStream,
    peer: SocketAddr,
    port: Option<u16>,
    state: &ProxyState,
    mode: MtlsMode,
) -> Option<Admitted> {
    let server_first = mode == MtlsMode::Permissive && state.config.load().app_is_tcp(port);
    let wait = if server_first { SERVER_FIRST_WAIT } else { HANDSHAKE_TIMEOUT };
    let mut first = [0u8; 1];
    let plaintext = match tokio::time::timeout(wait, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] != TLS_HANDSHAKE_RECORD,
        Err(_) if server_first => true,
        // Connected, then silent for the whole handshake deadline: a stuck or hostile client
        // holding a descriptor, counted like a handshake that never finishes.
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "nothing sent within 10s");
            super::handshake_failed("inbound", peer, &e);
            return None;
        }
        // Closed or broken before sending anything (a TCP probe): nothing to serve or count.
        _ => return None,
    };
    if plaintext {
        if mode == MtlsMode::Permissive {
            METRICS.inbound_connections.with_label_values(&["plaintext"]).inc();
            return Some(Admitted::Plaintext(stream));
        }
        refuse_plaintext(stream, peer).await;
        return None;
    }
    let Some(tls) = super::current() else {
        METRICS.tls_handshake_errors.with_label_values(&["inbound", "no-identity"]).inc();
        tracing::warn!(%peer, "mTLS connection refused: this proxy has no certificate yet");
        return None;
    };
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(tls.server.clone()).accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            super::handshake_failed("inbound", peer, &e);
            return None;
        }
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake not finished within 10s");
            super::handshake_failed("inbound", peer, &e);
            return None;
        }
    };
    // The verifier required a certificate chaining to the bundle; it must also name a workload.
    let caller = match stream.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(cert) => peer_id(cert),
        None => Err("no client certificate".to_string()),
    };
    let caller = match caller {
        Ok(id) => id,
        Err(reason) => {
            METRICS.tls_handshake_errors.with_label_values(&["inbound", "no-spiffe-id"]).inc();
            tracing::warn!(%peer, reason, "mTLS connection refused: the client certificate names no workload");
            return None;
        }
    };
    METRICS.inbound_connections.with_label_values(&["mtls"]).inc();
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    Some(Admitted::Mtls { stream, caller: Arc::from(caller.to_string()), h2 })
}

/// Strict mode: a plaintext client gets one HTTP answer saying why (most plaintext callers are
/// HTTP clients that bypassed their sidecar), then the connection closes.
async fn refuse_plaintext(mut stream: TcpStream, peer: SocketAddr) {
    METRICS.tls_handshake_errors.with_label_values(&["inbound", "plaintext"]).inc();
    tracing::warn!(%peer, reason = "plaintext", "plaintext connection refused: mtls is strict; call through a Weft proxy");
    let resp = ProxyError::MtlsRequired.http1_bytes_then_close();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        // Read the request first: closing with unread bytes would reset the connection and
        // lose the answer.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        let _ = stream.write_all(&resp).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
