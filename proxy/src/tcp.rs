//! Opaque TCP forwarding for `protocol: tcp` ports: pick an endpoint, connect (trying others on
//! failure), then copy bytes both ways until either side closes. Also the pass-through of
//! redirected calls to addresses outside the mesh.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::snapshot::AppTarget;
use crate::connect::connect_tcp;
use crate::metrics::METRICS;
use crate::side::Side;
use crate::state::ProxyState;
use crate::target::Cluster;

const CONNECT_TRIES: usize = 3;
/// How long a pass-through (or a call to an undeclared app port) may take to connect.
const DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Inbound TCP from a peer to the app's `port` (see `Side::Inbound`): the
/// AuthorizationPolicy decides on the caller's identity alone.
pub(crate) async fn serve_inbound<S>(client: S, caller: Option<Arc<str>>, port: Option<u16>, state: &ProxyState)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let authz = state.config.load().authz.clone();
    if let Some(authz) = authz {
        let decision = authz.check(caller.as_deref(), None, None);
        if !decision.allowed {
            tracing::info!(
                caller = caller.as_deref().unwrap_or("(none)"),
                rule = decision.rule.unwrap_or("default"),
                "TCP connection denied by AuthorizationPolicy"
            );
            return;
        }
    }
    serve(client, Side::Inbound(port), state).await;
}

pub(crate) async fn serve<S>(mut client: S, side: Side, state: &ProxyState)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let cluster: Option<Arc<Cluster>> = {
        let snap = state.config.load();
        match &side {
            Side::BoundService(svc) => snap.service(svc).and_then(|s| snap.clusters.get(&s.key)).cloned(),
            Side::Inbound(port) => match snap.app_target(*port) {
                Some(AppTarget::Declared(i)) => Some(i.cluster.clone()),
                Some(AppTarget::Undeclared(app)) => {
                    drop(snap);
                    return relay(client, app).await;
                }
                None => None,
            },
            Side::Outbound | Side::Transparent(_) => None,
        }
    };
    let Some(cluster) = cluster else {
        tracing::warn!(?side, "no service for this TCP listener; closing the connection");
        return;
    };
    let Some(_permit) = cluster.shared.limit.try_acquire() else {
        tracing::warn!(service = %cluster.name, "TCP connection refused: limits.maxConcurrentRequests reached");
        return;
    };
    let mut tried = Vec::with_capacity(CONNECT_TRIES);
    for _ in 0..CONNECT_TRIES {
        let Ok(idx) = cluster.set.pick(&tried) else {
            tracing::warn!(service = %cluster.name, "no available endpoint for TCP connection");
            return;
        };
        tried.push(idx);
        let endpoint = &cluster.set.endpoints()[idx];
        let guard = endpoint.start();
        let timeout = cluster.policy.connect_timeout;
        let failure = match &endpoint.identity {
            // A meshed peer: the bytes travel inside mTLS, verified against its identity.
            Some(id) => match crate::tls::connect::connect_stream(endpoint.addr, id, timeout).await {
                Ok(mut upstream) => {
                    cluster.set.on_success(idx, guard);
                    return splice(&cluster, &mut client, &mut upstream).await;
                }
                Err(e) => e,
            },
            None => match connect_tcp(endpoint.addr, timeout).await {
                Ok(mut upstream) => {
                    cluster.set.on_success(idx, guard);
                    return splice(&cluster, &mut client, &mut upstream).await;
                }
                Err(e) => e,
            },
        };
        tracing::warn!(service = %cluster.name, endpoint = %endpoint.addr, error = %failure, "TCP connect failed");
        if cluster.set.on_failure(idx, guard) {
            cluster.shared.metrics.ejections.inc();
        }
    }
}

/// A redirected call to `to`, an address no Service names: connected and relayed as it is,
/// so the app's calls outside the mesh keep working.
pub(crate) async fn pass_through<S>(client: S, to: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    METRICS.passthrough_connections.inc();
    relay(client, to).await;
}

/// Connects to `to` and copies bytes both ways until either side closes.
async fn relay<S>(mut client: S, to: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match connect_tcp(to, DIRECT_CONNECT_TIMEOUT).await {
        Ok(mut upstream) => {
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%to, error = %e, "relayed TCP stream ended with an error");
            }
        }
        Err(e) => tracing::warn!(%to, error = %e, "cannot connect to the original destination; closing"),
    }
}

/// Copies bytes both ways until either side closes.
async fn splice<A, B>(cluster: &Cluster, client: &mut A, upstream: &mut B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if let Err(e) = tokio::io::copy_bidirectional(client, upstream).await {
        tracing::debug!(service = %cluster.name, error = %e, "TCP stream ended with an error");
    }
}
