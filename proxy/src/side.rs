//! Which side of the proxy a connection arrived on, and so how its requests are routed: the
//! listeners decide it, the server, the TCP relay and the handler read it.

use std::sync::Arc;

/// Which side of the proxy a listener serves.
#[derive(Clone, Debug)]
pub(crate) enum Side {
    /// The app's calls, routed by Host.
    Outbound,
    /// The app's calls redirected to the outbound listener whose original destination is this
    /// service's (`name.namespace`): routed by Host when it names a service, else to this one.
    Transparent(Arc<str>),
    /// The app's calls on a local port bound to one service (the Proxy's `upstreams`).
    BoundService(Arc<str>),
    /// Other services' calls to the local app; with the app port a redirected caller
    /// addressed (`None`: the inbound listener itself, so the configured app).
    Inbound(Option<u16>),
}

impl Side {
    pub(crate) fn direction(&self) -> &'static str {
        match self {
            Side::Inbound(_) => "inbound",
            Side::Outbound | Side::Transparent(_) | Side::BoundService(_) => "outbound",
        }
    }
}
