//! Certificates from the control plane's CA: make a key in memory (it is never written or
//! sent), send a CSR for this workload's SPIFFE id with the join token, install the answer,
//! and renew at 70 % of the certificate's life. Failures are retried with backoff while the
//! current certificate keeps serving.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde::Deserialize;
use weft_api::{ControlPlaneSpec, SpiffeId};

use super::{MeshTls, TlsError};
use crate::state::ProxyState;

/// The route of the control plane's CA (docs/certificates.md).
pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Renew when this share of the certificate's life has passed.
const RENEW_AT: f64 = 0.7;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsrResponse {
    certificate: String,
    bundle: String,
}

/// Keeps the proxy's certificate fresh for as long as the process runs.
pub async fn run(state: Arc<ProxyState>, cp: ControlPlaneSpec) {
    let mut retry = RETRY_MIN;
    loop {
        let id = {
            let snap = state.config.load();
            SpiffeId::new(&snap.mesh.trust_domain, snap.proxy_namespace(), &snap.proxy.service)
        };
        let outcome = match id {
            Ok(id) => obtain(&cp, &id).await,
            Err(e) => Err(TlsError::Identity { what: "the Proxy document".to_string(), reason: e.to_string() }),
        };
        match outcome {
            Ok(tls) => {
                let life = tls.remaining();
                super::install(tls);
                retry = RETRY_MIN;
                let wait = life.mul_f64(RENEW_AT);
                tracing::info!(renew_in = ?wait, "certificate from the control plane installed");
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                let left = super::current().map(|t| t.remaining());
                tracing::error!(error = %e, retry_in = ?retry, still_valid_for = ?left, "certificate request failed");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The join token in `path` (docs/certificates.md): the token alone, on one line; whitespace
/// around it (a trailing newline) is ignored. Read again for every request, so a replaced file
/// is used from the next renewal on.
fn read_join_token(path: &str) -> Result<String, TlsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TlsError::Read { what: format!("joinTokenFile {path}"), source })?;
    let token = text.trim();
    let refuse =
        |reason: &str| TlsError::Identity { what: format!("joinTokenFile {path}"), reason: reason.to_string() };
    if token.is_empty() {
        return Err(refuse("the file is empty; it must hold the join token"));
    }
    if token.contains(char::is_whitespace) {
        // Most likely a line of the control plane's token file, `<token> <spiffe-id>`.
        return Err(refuse(
            "the file must hold the token alone, on one line (the control plane's `<token> <spiffe-id>` lines are for `weft serve --join-token-file`)",
        ));
    }
    Ok(token.to_string())
}

/// One CSR round trip.
pub async fn obtain(cp: &ControlPlaneSpec, id: &SpiffeId) -> Result<MeshTls, TlsError> {
    let token = match &cp.join_token_file {
        Some(path) => read_join_token(path)?,
        None => return Err(TlsError::Refused("controlPlane.joinTokenFile is not set".to_string())),
    };
    let key =
        KeyPair::generate().map_err(|e| TlsError::Identity { what: "a new key".to_string(), reason: e.to_string() })?;
    let csr_pem = csr(&key, id)?;
    let body = serde_json::to_vec(&serde_json::json!({ "csr": csr_pem })).unwrap_or_default();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, post(&cp.address, &token, body)).await.map_err(|_| {
        TlsError::ControlPlane { address: cp.address.clone(), reason: "no answer within 10s".to_string() }
    })??;
    let issued: CsrResponse = serde_json::from_slice(&resp)
        .map_err(|e| TlsError::Refused(format!("unreadable answer from the control plane: {e}")))?;
    MeshTls::from_pem(
        issued.certificate.as_bytes(),
        key.serialize_pem().as_bytes(),
        issued.bundle.as_bytes(),
        "the control plane's certificate",
    )
}

fn csr(key: &KeyPair, id: &SpiffeId) -> Result<String, TlsError> {
    let bad =
        |e: rcgen::Error| TlsError::Identity { what: "the certificate request".to_string(), reason: e.to_string() };
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = id.to_string().try_into().map_err(|e: rcgen::Error| bad(e))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.serialize_request(key).and_then(|c| c.pem()).map_err(bad)
}

/// POSTs `body` to `<address>/v1/certificates`; the answer's body on 200.
async fn post(address: &str, token: &str, body: Vec<u8>) -> Result<Bytes, TlsError> {
    let cp_err = |reason: String| TlsError::ControlPlane { address: address.to_string(), reason };
    let Some(authority) = address.strip_prefix("http://").map(|a| a.trim_end_matches('/')) else {
        return Err(cp_err(
            "only http:// control-plane addresses can request certificates in this version".to_string(),
        ));
    };
    let tcp = tokio::net::TcpStream::connect(authority).await.map_err(|e| cp_err(e.to_string()))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .map_err(|e| cp_err(e.to_string()))?;
    tokio::spawn(conn);
    let req = Request::post(CERTIFICATES_PATH)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| cp_err(e.to_string()))?;
    let resp = tx.send_request(req).await.map_err(|e| cp_err(e.to_string()))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(|e| cp_err(e.to_string()))?.to_bytes();
    if !status.is_success() {
        return Err(TlsError::Refused(format!("{status}: {}", String::from_utf8_lossy(&bytes).trim())));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(name: &str, text: &str) -> String {
        let path = std::env::temp_dir().join(format!("weft-join-token-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_join_token_file_holds_the_token_on_one_line() {
        let path = token_file("ok", "  0123456789abcdef-token\n\n");
        assert_eq!(read_join_token(&path).unwrap(), "0123456789abcdef-token", "surrounding whitespace trimmed");
        for (name, text, says) in [
            ("empty", "\n  \n", "empty"),
            ("pair", "0123456789abcdef spiffe://cluster.local/ns/shop/sa/web\n", "token alone"),
            ("lines", "0123456789abcdef\nsecond\n", "token alone"),
        ] {
            let path = token_file(name, text);
            let err = read_join_token(&path).expect_err(name).to_string();
            assert!(err.contains(says) && err.contains(&path), "{name}: {err}");
        }
        let missing = std::env::temp_dir().join("weft-join-token-missing").display().to_string();
        assert!(read_join_token(&missing).unwrap_err().to_string().contains("cannot read joinTokenFile"));
    }
}
