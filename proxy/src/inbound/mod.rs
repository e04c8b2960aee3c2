//! Calls from other services to the local app: authorized, then forwarded to the app address
//! of the Proxy spec with the caller's verified identity in `weft-client-id`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

use crate::config::snapshot::AppTarget;
use crate::http::body::ClientBody;
use crate::response::errors::ProxyError;
use crate::routing::Rule;
use crate::state::ProxyState;

pub(crate) use crate::http::headers::CLIENT_ID_HEADER;

/// Admits a call to the local app's `port` (see `Side::Inbound`): checks the
/// AuthorizationPolicy, and sets `weft-client-id`
/// to `caller`, the verified SPIFFE id of the peer proxy (`None` for plaintext), removing
/// whatever a client sent under that name. Returns the rule and the body limit, or the error
/// to answer with. Synchronous, like `outbound::route`.
pub(crate) fn admit(
    state: &ProxyState,
    peer: SocketAddr,
    caller: Option<&str>,
    port: Option<u16>,
    req: &mut Request<ClientBody>,
) -> Result<(Arc<Rule>, u64), ProxyError> {
    let (rule, max_body) = {
        let snap = state.config.load();
        // An undeclared port is served as opaque TCP, never here.
        let Some(AppTarget::Declared(inbound)) = snap.app_target(port) else {
            return Err(ProxyError::NoEndpoints);
        };
        if let Some(authz) = &snap.authz {
            let decision = authz.check(caller, Some(req.method()), Some(req.uri().path()));
            if !decision.allowed {
                tracing::info!(%peer, caller = caller.unwrap_or("(none: plaintext)"), method = %req.method(),
                    path = req.uri().path(), rule = decision.rule.unwrap_or("default"), "denied by AuthorizationPolicy");
                return Err(ProxyError::Unauthorized);
            }
        }
        (inbound.rule.clone(), snap.proxy.http.max_body_bytes)
    };
    let headers = req.headers_mut();
    headers.remove(CLIENT_ID_HEADER);
    // Rare: only a client trying to spoof the id sends an underscore spelling.
    if headers.keys().any(crate::http::headers::names_client_id) {
        let spoofed: Vec<_> = headers.keys().filter(|n| crate::http::headers::names_client_id(n)).cloned().collect();
        for name in spoofed {
            headers.remove(name);
        }
    }
    if let Some(id) = caller.and_then(|id| http::HeaderValue::from_str(id).ok()) {
        headers.insert(CLIENT_ID_HEADER, id);
    }
    Ok((rule, max_body))
}
