//! Calls from other services to the local app: authorized, then forwarded to the app address
//! of the Proxy spec with the caller's verified identity in `weft-client-id`.

pub mod authz;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::forward;
use crate::http::body::RespBody;
use crate::http::errors::ProxyError;
use crate::state::ProxyState;

/// Header through which the app learns the caller's verified identity. Whatever a client sent
/// under this name is removed first, so the app can trust it.
pub const CLIENT_ID_HEADER: &str = "weft-client-id";

/// `caller` is the verified SPIFFE id of the peer proxy (`None` for plaintext).
pub async fn handle(
    state: &ProxyState,
    peer: SocketAddr,
    caller: Option<Arc<str>>,
    mut req: Request<Incoming>,
    started: Instant,
) -> Response<RespBody> {
    let (rule, max_body) = {
        let snap = state.config.load();
        let Some(inbound) = &snap.inbound else {
            return ProxyError::NoEndpoints.response();
        };
        if let Some(authz) = &snap.authz {
            let decision = authz.check(caller.as_deref(), Some(req.method()), Some(req.uri().path()));
            if !decision.allowed {
                tracing::info!(%peer, caller = caller.as_deref().unwrap_or("(none: plaintext)"), method = %req.method(),
                    path = req.uri().path(), rule = decision.rule.unwrap_or("default"), "denied by AuthorizationPolicy");
                return ProxyError::Unauthorized.response();
            }
        }
        (inbound.rule.clone(), snap.proxy.http.max_body_bytes)
    };
    let headers = req.headers_mut();
    headers.remove(CLIENT_ID_HEADER);
    if let Some(id) = caller.as_deref().and_then(|id| http::HeaderValue::from_str(id).ok()) {
        headers.insert(CLIENT_ID_HEADER, id);
    }
    if forward::is_upgrade(&req) {
        return Box::pin(forward::forward_upgrade(rule, req, started)).await;
    }
    forward::forward(rule, req, started, max_body).await
}
