//! The local app's own calls to other services: find the service (by the listener it arrived
//! on, or by Host), pick the route rule, and forward.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::forward;
use crate::http::body::RespBody;
use crate::http::errors::ProxyError;
use crate::http::headers;
use crate::state::ProxyState;

/// `bound_service` is set for upstream ports, which always mean one service.
pub async fn handle(
    state: &ProxyState,
    bound_service: Option<&str>,
    req: Request<Incoming>,
    started: Instant,
) -> Response<RespBody> {
    let (rule, max_body) = {
        let snap = state.config.load();
        let routes = match bound_service {
            Some(svc) => snap.service(svc),
            None => headers::request_host(&req).and_then(|h| snap.lookup_host(h)),
        };
        let Some(routes) = routes else {
            tracing::debug!(host = ?headers::request_host(&req), "no service for this host");
            return ProxyError::UnknownService.response();
        };
        let Some(rule) = routes.find(req.method(), req.uri().path(), req.headers()) else {
            tracing::debug!(service = %routes.key, path = req.uri().path(), "no route rule matches");
            return ProxyError::NoRoute.response();
        };
        (rule.clone(), snap.proxy.http.max_body_bytes)
    };
    if forward::is_upgrade(&req) {
        // Boxed: rare, and its future would otherwise enlarge every request's.
        return Box::pin(forward::forward_upgrade(rule, req, started)).await;
    }
    forward::forward(rule, req, started, max_body).await
}
