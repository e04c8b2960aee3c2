//! Calls from other services to the local app: forwarded to the app address of the Proxy spec.

use std::net::SocketAddr;
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

pub async fn handle(
    state: &ProxyState,
    _peer: SocketAddr,
    mut req: Request<Incoming>,
    started: Instant,
) -> Response<RespBody> {
    let (rule, max_body) = {
        let snap = state.config.load();
        let Some(inbound) = &snap.inbound else {
            return ProxyError::NoEndpoints.response();
        };
        (inbound.rule.clone(), snap.proxy.http.max_body_bytes)
    };
    req.headers_mut().remove(CLIENT_ID_HEADER);
    if forward::is_upgrade(&req) {
        return Box::pin(forward::forward_upgrade(rule, req, started)).await;
    }
    forward::forward(rule, req, started, max_body).await
}
