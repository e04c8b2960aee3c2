//! `POST /v1/certificates`: the CSR-signing route that `weft serve` mounts (see
//! docs/certificates.md for the exchange).

use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};

use super::token_review::Refusal;
use super::{CaError, Issuer, TokenReviewer};

pub const CERTIFICATES_PATH: &str = "/v1/certificates";
/// A CSR is well under 2 KiB; anything this large is not one.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
struct CsrRequest {
    /// PEM `CERTIFICATE REQUEST`.
    csr: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CsrResponse<'a> {
    /// The leaf first, then any intermediates.
    certificate: &'a str,
    /// The roots to trust for peers.
    bundle: &'a str,
    /// Unix seconds.
    not_after: u64,
}

/// Answers one `POST /v1/certificates` (the credential comes as `Authorization: Bearer
/// <token>`: a join token, or with `reviewer` a Kubernetes service-account token), and writes
/// the audit line and counts the result: every certificate issued or refused, with the
/// identity, serial and expiry or the reason, never the token.
pub async fn handle<B>(
    issuer: &Issuer,
    reviewer: Option<&TokenReviewer>,
    metrics: &crate::serve::metrics::ControlMetrics,
    peer: std::net::SocketAddr,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (resp, audit) = answer(issuer, reviewer, req).await;
    match audit {
        Audit::Issued { id, credential, serial, not_after } => {
            metrics.certificates.with_label_values(&["issued"]).inc();
            tracing::info!(%peer, %id, credential = credential.name(), serial, not_after, "certificate issued");
        }
        Audit::Refused { reason, credential, message } => {
            metrics.certificates.with_label_values(&[reason]).inc();
            let credential = credential.map(Credential::name).unwrap_or("none");
            tracing::warn!(%peer, reason, credential, "certificate refused: {message}");
        }
    }
    resp
}

/// Which kind of bearer token earned (or failed to earn) the identity.
#[derive(Clone, Copy)]
enum Credential {
    JoinToken,
    ServiceAccount,
}

impl Credential {
    fn name(self) -> &'static str {
        match self {
            Credential::JoinToken => "join-token",
            Credential::ServiceAccount => "service-account-token",
        }
    }
}

/// What the audit log says about one request.
enum Audit {
    Issued { id: String, credential: Credential, serial: String, not_after: u64 },
    Refused { reason: &'static str, credential: Option<Credential>, message: String },
}

/// The status a proxy gets for a refused service-account token: 503 when the API server could
/// not be asked (the proxy retries), else the token is not good enough.
fn review_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::Unauthenticated(_) | Refusal::WrongAudience(_) => StatusCode::UNAUTHORIZED,
        Refusal::NotAServiceAccount(_) => StatusCode::FORBIDDEN,
        Refusal::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

async fn answer<B>(issuer: &Issuer, reviewer: Option<&TokenReviewer>, req: Request<B>) -> (Response<Full<Bytes>>, Audit)
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let refused = |status: StatusCode, reason: &'static str, message: String, credential: Option<Credential>| {
        (error(status, &message), Audit::Refused { reason, credential, message })
    };
    if req.method() != http::Method::POST {
        return refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad-request",
            "use POST with a JSON body {\"csr\": \"<PEM>\"}".to_string(),
            None,
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(token) = token else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "no-token",
            "send the join token or service-account token as `Authorization: Bearer <token>`".to_string(),
            None,
        );
    };
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        // No more than the limit is read: the connection closes with the rest unread.
        Err(e) if e.is::<LengthLimitError>() => {
            let message = format!("the body is larger than {MAX_REQUEST_BYTES} bytes; a CSR is well under 2 KiB");
            return refused(StatusCode::PAYLOAD_TOO_LARGE, "too-large", message, None);
        }
        Err(e) => {
            return refused(StatusCode::BAD_REQUEST, "bad-request", format!("cannot read the request body: {e}"), None);
        }
    };
    let request: CsrRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return refused(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("the body must be {{\"csr\": \"<PEM>\"}}: {e}"),
                None,
            );
        }
    };
    // Join tokens first: they work exactly as without Kubernetes, and cost no API call.
    let (allowed, credential) = match (issuer.join_token_id(&token), reviewer) {
        (Some(id), _) => (id, Credential::JoinToken),
        (None, Some(reviewer)) => match reviewer.review(&token).await {
            Ok(id) => (id, Credential::ServiceAccount),
            Err(refusal) => {
                let status = review_status(&refusal);
                return refused(status, refusal.label(), refusal.to_string(), Some(Credential::ServiceAccount));
            }
        },
        (None, None) => {
            return refused(StatusCode::UNAUTHORIZED, "unknown-token", CaError::UnknownToken.to_string(), None);
        }
    };
    match issuer.sign_csr_as(&allowed, &request.csr) {
        Ok(issued) => {
            let not_after =
                issued.not_after.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
            let body = CsrResponse { certificate: &issued.chain_pem, bundle: issuer.bundle_pem(), not_after };
            let audit = Audit::Issued { id: allowed.to_string(), credential, serial: issued.serial.clone(), not_after };
            (json(StatusCode::OK, serde_json::to_vec(&body).unwrap_or_default()), audit)
        }
        Err(e) => {
            let (status, reason) = match e {
                CaError::CsrIdentityMismatch { .. } => (StatusCode::FORBIDDEN, "wrong-identity"),
                CaError::BadCsr { .. } => (StatusCode::BAD_REQUEST, "bad-csr"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
            };
            refused(status, reason, e.to_string(), Some(credential))
        }
    }
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json(status, serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
