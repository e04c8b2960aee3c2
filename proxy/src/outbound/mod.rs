//! The local app's own calls to other services: find the service (by the listener it arrived
//! on, or by Host) and pick the route rule; `forward` does the rest.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};

use crate::http::body::ClientBody;
use crate::http::headers;
use crate::metrics::RouteMetrics;
use crate::response::body::RespBody;
use crate::response::errors::ProxyError;
use crate::routing::Rule;
use crate::state::ProxyState;

/// How the service of an app's call is found.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ServiceBy<'a> {
    /// By Host (the outbound listener).
    Host,
    /// The service the port is bound to (upstream ports).
    Port(&'a str),
    /// By Host when it names a service, else the service whose address the app connected to
    /// (a connection redirected in transparent mode: the Host is often just that address).
    HostThenAddress(&'a str),
}

/// Finds the route rule for the app's call: the service (see `ServiceBy`), then the first
/// matching rule. Returns the rule and the body limit, or the error to answer with.
/// Synchronous, so the request's future (boxed once by the server) holds only the forwarding
/// that follows.
pub(crate) fn route(
    state: &ProxyState,
    by: ServiceBy<'_>,
    req: &Request<ClientBody>,
) -> Result<(Arc<Rule>, u64), ProxyError> {
    let snap = state.config.load();
    let by_host = || headers::request_host(req).and_then(|h| snap.lookup_host(h));
    let routes = match by {
        ServiceBy::Port(svc) => snap.service(svc),
        ServiceBy::Host => by_host(),
        ServiceBy::HostThenAddress(svc) => by_host().or_else(|| snap.service(svc)),
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
pub(crate) fn unknown_service(
    bound_service: Option<&str>,
    req: &Request<ClientBody>,
    started: Instant,
) -> Response<RespBody> {
    let resp = ProxyError::unknown_service_response(bound_service.or_else(|| headers::request_host(req)));
    RouteMetrics::unknown_service().record(resp.status().as_u16(), false, started.elapsed().as_secs_f64());
    resp
}
