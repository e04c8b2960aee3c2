//! Certificates from the control plane's CA: make a key in memory (it is never sent, and
//! written only to `identityDir` when one is set), send a CSR for this workload's SPIFFE id
//! with the join token, install the answer, and renew at 70 % of the certificate's life.
//! A kept identity that is still valid serves at start, before the control plane answers.
//! Without a certificate the request is retried every second or so; with one, failures back
//! off while it keeps serving, and the watch stream reconnecting wakes the retry at once.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, SanType};
use serde::Deserialize;
use tokio::sync::Notify;
use weft_api::{ControlPlaneSpec, SpiffeId};

use super::control_plane::ControlPlaneTarget;
use super::stored::{self, IdentityPem};
use super::{MeshTls, TlsError};
use crate::state::ProxyState;

/// The route of the control plane's CA (docs/certificates.md).
pub(crate) const CERTIFICATES_PATH: &str = "/v1/certificates";
/// Renew when this share of the certificate's life has passed.
const RENEW_AT: f64 = 0.7;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Without a certificate the proxy cannot serve meshed traffic: ask about this often.
const RETRY_WITHOUT: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CsrResponse {
    certificate: String,
    bundle: String,
}

/// Woken when the watch stream to the control plane opens.
static ANSWERED: LazyLock<Notify> = LazyLock::new(Notify::new);

/// The control plane answered a watch: a pending certificate request is retried now.
pub(crate) fn control_plane_answered() {
    ANSWERED.notify_one();
}

/// How long to wait from `received` (when the certificate arrived) until renewal.
fn renew_in(tls: &MeshTls, received: SystemTime) -> Duration {
    let life = tls.not_after.duration_since(received).unwrap_or_default();
    let due = received + life.mul_f64(RENEW_AT);
    due.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Keeps the proxy's certificate fresh for as long as the process runs.
pub(crate) async fn run(state: Arc<ProxyState>, cp: ControlPlaneSpec) {
    let (id, target, dir) = {
        let snap = state.config.load();
        let id = SpiffeId::new(&snap.mesh.trust_domain, snap.proxy_namespace(), &snap.proxy.service);
        let target = ControlPlaneTarget::new(&cp, &snap.mesh.trust_domain);
        (id, target, snap.proxy.identity_dir.clone().map(PathBuf::from))
    };
    let (id, target) = match (id, target) {
        (Ok(id), Ok(t)) => (id, t),
        (Err(e), _) => return crate::state::fatal(format!("the Proxy document's identity: {e}")),
        (_, Err(e)) => return crate::state::fatal(format!("controlPlane: {e}")),
    };
    let mut wait = Duration::ZERO;
    if let Some(dir) = &dir {
        match stored::filesystem_of(dir) {
            Some(fs) if !stored::memory_backed(&fs) => tracing::warn!(
                dir = %dir.display(),
                filesystem = fs,
                "identityDir is not on memory-backed storage: the private key is written to {fs}; use tmpfs \
                 (an emptyDir with medium: Memory)"
            ),
            _ => {}
        }
        match stored::load(dir, &id) {
            Ok(Some((tls, received))) => {
                wait = renew_in(&tls, received);
                tracing::info!(dir = %dir.display(), renew_in = ?wait, "kept identity from identityDir installed");
                super::install(tls);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(dir = %dir.display(), "the identity kept in identityDir is not usable: {e}"),
        }
    }
    let mut retry = RETRY_MIN;
    loop {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match obtain(&target, &cp, &id).await {
            Ok((tls, pem)) => {
                wait = renew_in(&tls, SystemTime::now()).max(Duration::from_millis(100));
                if let Some(dir) = &dir
                    && let Err(e) = stored::save(dir, &pem)
                {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the identity in identityDir");
                }
                super::install(tls);
                retry = RETRY_MIN;
                tracing::info!(renew_in = ?wait, "certificate from the control plane installed");
            }
            Err(e) => {
                if let TlsError::Untrusted { fatal: true, .. } = &e {
                    return crate::state::fatal(e.to_string());
                }
                let left = super::current().map(|t| t.remaining()).filter(|l| !l.is_zero());
                let pause = match left {
                    // Nothing to serve meshed traffic with: ask again soon (jittered).
                    None => RETRY_WITHOUT.mul_f64(0.8 + 0.4 * fastrand::f64()),
                    Some(_) => {
                        let now = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        now
                    }
                };
                tracing::error!(error = %e, retry_in = ?pause, still_valid_for = ?left, "certificate request failed");
                // The watch stream reconnecting means the control plane is back: ask at once.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = ANSWERED.notified() => {}
                }
                wait = Duration::ZERO;
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

/// One CSR round trip: the new identity and its PEM (to keep in `identityDir`).
pub(crate) async fn obtain(
    target: &ControlPlaneTarget,
    cp: &ControlPlaneSpec,
    id: &SpiffeId,
) -> Result<(MeshTls, IdentityPem), TlsError> {
    let token = match cp.bootstrap_credential_file() {
        Some(path) => read_join_token(path)?,
        None => {
            return Err(TlsError::Refused(
                "controlPlane has neither joinTokenFile nor serviceAccountTokenFile".to_string(),
            ));
        }
    };
    let key =
        KeyPair::generate().map_err(|e| TlsError::Identity { what: "a new key".to_string(), reason: e.to_string() })?;
    let csr_pem = csr(&key, id)?;
    let body = serde_json::to_vec(&serde_json::json!({ "csr": csr_pem })).unwrap_or_default();
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, post(target, &token, body)).await.map_err(|_| {
        TlsError::ControlPlane { address: target.authority.clone(), reason: "no answer within 10s".to_string() }
    })??;
    let issued: CsrResponse = serde_json::from_slice(&resp)
        .map_err(|e| TlsError::Refused(format!("unreadable answer from the control plane: {e}")))?;
    let pem = IdentityPem { chain: issued.certificate, key: key.serialize_pem(), bundle: issued.bundle };
    let tls = MeshTls::from_pem(
        pem.chain.as_bytes(),
        pem.key.as_bytes(),
        pem.bundle.as_bytes(),
        "the control plane's certificate",
    )?;
    Ok((tls, pem))
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

/// POSTs `body` to the control plane's `/v1/certificates`; the answer's body on 200.
async fn post(target: &ControlPlaneTarget, token: &str, body: Vec<u8>) -> Result<Bytes, TlsError> {
    let authority = target.authority.as_str();
    let cp_err = |reason: String| TlsError::ControlPlane { address: authority.to_string(), reason };
    // No client certificate: the join token is this request's credential.
    let io = target.connect(b"http/1.1", false).await.map_err(|e| {
        let fatal = e.is_fatal();
        match e {
            super::control_plane::ConnectFailure::Untrusted(reason) => TlsError::Untrusted { reason, fatal },
            super::control_plane::ConnectFailure::Unreachable(reason) => cp_err(reason),
        }
    })?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(io))
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
