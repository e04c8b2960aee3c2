//! Listening sockets: bound once at start (one per worker with SO_REUSEPORT, so the kernel
//! spreads connections and no worker steals another's), then an accept loop per worker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use socket2::{Domain, Protocol as SockProto, Socket, Type};
use tokio::net::TcpListener;
use weft_api::{MtlsMode, Protocol};

use crate::metrics::METRICS;
use crate::state::ProxyState;

/// Which side of the proxy a listener serves.
#[derive(Clone, Debug)]
pub enum Side {
    /// The app's calls, routed by Host.
    Outbound,
    /// The app's calls on a port bound to one service (`upstreams`).
    Upstream(Arc<str>),
    /// Other services' calls to the local app.
    Inbound,
}

impl Side {
    pub fn direction(&self) -> &'static str {
        match self {
            Side::Inbound => "inbound",
            Side::Outbound | Side::Upstream(_) => "outbound",
        }
    }
}

/// One listening address with a socket per worker.
pub struct Bound {
    pub addr: SocketAddr,
    pub side: Side,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Binds `addr` `workers` times (SO_REUSEPORT when more than one).
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    (0..workers)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(SockProto::TCP))?;
            socket.set_reuse_address(true)?;
            if workers > 1 {
                socket.set_reuse_port(true)?;
            }
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket.into())
        })
        .collect()
}

/// Binds every data-plane listener of the Proxy spec; errors name the address.
pub fn bind_all(spec: &weft_api::ProxySpec, workers: usize) -> Result<Vec<Bound>, String> {
    let mut wanted = Vec::new();
    if let Some(o) = &spec.outbound {
        wanted.push((o.listen, Side::Outbound));
    }
    for u in &spec.upstreams {
        wanted.push((u.listen, Side::Upstream(u.service.as_str().into())));
    }
    if let Some(i) = &spec.inbound {
        wanted.push((i.listen, Side::Inbound));
    }
    wanted
        .into_iter()
        .map(|(addr, side)| {
            let sockets =
                bind(addr, workers).map_err(|e| format!("cannot listen on {addr} ({} side): {e}", side.direction()))?;
            Ok(Bound { addr, side, sockets })
        })
        .collect()
}

/// Accepts connections until the process exits. Runs inside one worker's runtime.
pub async fn accept_loop(listener: TcpListener, side: Side, state: Arc<ProxyState>) {
    let gauge = METRICS.open_connections.with_label_values(&[side.direction()]);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let side = side.clone();
        let gauge = gauge.clone();
        tokio::spawn(async move {
            gauge.inc();
            state.open_connections.fetch_add(1, Ordering::Relaxed);
            let mtls = match side {
                Side::Inbound => crate::tls::inbound_mode(&state),
                Side::Outbound | Side::Upstream(_) => MtlsMode::Off,
            };
            // Each kind of connection is boxed on its own: the task then holds only the one it
            // serves (an idle plaintext HTTP connection does not carry a TLS handshake's or a
            // TCP relay's state), which keeps memory per open connection low.
            if mtls != MtlsMode::Off {
                Box::pin(crate::tls::inbound::serve(stream, peer, state.clone(), mtls)).await;
            } else if is_tcp(&state, &side) {
                if matches!(side, Side::Inbound) {
                    Box::pin(crate::tcp::serve_inbound(stream, None, &state)).await;
                } else {
                    Box::pin(crate::tcp::serve(stream, side, &state)).await;
                }
            } else {
                Box::pin(crate::http::server::serve_plaintext(stream, peer, side, state.clone(), None)).await;
            }
            state.open_connections.fetch_sub(1, Ordering::Relaxed);
            gauge.dec();
        });
    }
}

/// Whether connections on this listener are opaque TCP (decided per connection, so a reload
/// that changes a service's protocol takes effect for new connections).
fn is_tcp(state: &ProxyState, side: &Side) -> bool {
    let snap = state.config.load();
    match side {
        Side::Outbound => false,
        Side::Upstream(svc) => {
            snap.service(svc).and_then(|s| snap.clusters.get(&s.key)).is_some_and(|c| c.protocol == Protocol::Tcp)
        }
        Side::Inbound => snap.inbound.as_ref().is_some_and(|i| i.cluster.protocol == Protocol::Tcp),
    }
}
