//! The local app's own calls to other services: find the service (by the listener it arrived
//! on, or by Host) and pick the route rule; `forward` does the rest.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};

use crate::http::body::{ClientBody, RespBody};
use crate::http::errors::ProxyError;
use crate::http::headers;
use crate::metrics::RouteMetrics;
use crate::routing::Rule;
use crate::state::ProxyState;

/// Finds the route rule for the app's call: the service by the listener it arrived on
/// (`bound_service`, set for upstream ports) or by Host, then the first matching rule. Returns
/// the rule and the body limit, or the error to answer with. Synchronous, so the request's
/// future (boxed once by the server) holds only the forwarding that follows.
pub fn route(
    state: &ProxyState,
    bound_service: Option<&str>,
    req: &Request<ClientBody>,
) -> Result<(Arc<Rule>, u64), ProxyError> {
    let snap = state.config.load();
    let routes = match bound_service {
        Some(svc) => snap.service(svc),
        None => headers::request_host(req).and_then(|h| snap.lookup_host(h)),
    };
    let Some(routes) = routes else {
        tracing::debug!(host = ?headers::request_host(req), "no service for this host");
        return Err(ProxyError::UnknownService);
    };
    let Some(rule) = routes.find(req.method(), req.uri().path(), req.headers()) else {
        tracing::debug!(service = %routes.key, path = req.uri().path(), "no route rule matches");
        return Err(ProxyError::NoRoute);
    };
    Ok((rule.clone(), snap.proxy.http.max_body_bytes))
}

/// The answer to a call for a service no policy names (`route` said `UnknownService`): a 404
/// that echoes the name looked up (the port's service on an upstream port, else the host),
/// counted under the service `unknown`, never under that name: a client could make up any
/// number of them.
pub fn unknown_service(bound_service: Option<&str>, req: &Request<ClientBody>, started: Instant) -> Response<RespBody> {
    let resp = ProxyError::unknown_service_response(bound_service.or_else(|| headers::request_host(req)));
    RouteMetrics::unknown_service().record(resp.status().as_u16(), false, started.elapsed().as_secs_f64());
    resp
}
