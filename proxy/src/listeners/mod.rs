//! Listening sockets: bound once at start (one per worker with SO_REUSEPORT, so the kernel
//! spreads connections and no worker steals another's), then an accept loop per worker. A
//! connection that iptables redirected (transparent mode) is served by what its original
//! destination was: a known service, the app on another port, or a pass-through.

mod accept_errors;
mod original_dst;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use socket2::{Domain, Protocol as SockProto, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use weft_api::{MtlsMode, Protocol};

use crate::config::snapshot::Snapshot;
use crate::metrics::METRICS;
use crate::server::Version;
pub(crate) use crate::side::Side;
use crate::state::ProxyState;
use crate::tls::inbound::Admitted;

pub(crate) use accept_errors::{ACCEPT_BACKOFF, AcceptErrors, is_fd_limit};

/// What a connection is served as, once its original destination is known.
enum Serve {
    As(Side),
    /// Opaque TCP to this side's service, whatever the protocol of the service's first port
    /// (a redirected call to a port declared `tcp`).
    Relay(Side),
    /// A redirected call to an address outside the mesh: relayed as is, so it keeps working.
    PassThrough(SocketAddr),
}

/// Decides how to serve a connection accepted on `side`'s listener that was redirected from
/// `original` (`None`: not redirected, served as today).
fn classify(side: &Side, original: Option<SocketAddr>, snap: &Snapshot) -> Serve {
    let Some(original) = original else { return Serve::As(side.clone()) };
    match side {
        Side::Inbound(_) => Serve::As(Side::Inbound(Some(original.port()))),
        Side::Outbound => match snap.service_at(original) {
            Some(d) if d.protocol == Protocol::Tcp => Serve::Relay(Side::BoundService(d.service.clone())),
            Some(d) => Serve::As(Side::Transparent(d.service.clone())),
            None => Serve::PassThrough(original),
        },
        // Upstream ports are called by address: nothing is redirected to them.
        Side::Transparent(_) | Side::BoundService(_) => Serve::As(side.clone()),
    }
}

/// One listening address with a socket per worker.
pub(crate) struct Bound {
    pub addr: SocketAddr,
    pub side: Side,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Binds `addr` `workers` times (SO_REUSEPORT when more than one).
pub(crate) fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
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
pub(crate) fn bind_all(spec: &weft_api::ProxySpec, workers: usize) -> Result<Vec<Bound>, String> {
    let mut wanted = Vec::new();
    if let Some(o) = &spec.outbound {
        wanted.push((o.listen, Side::Outbound));
    }
    for u in &spec.upstreams {
        wanted.push((u.listen, Side::BoundService(u.service.as_str().into())));
    }
    if let Some(i) = &spec.inbound {
        wanted.push((i.listen, Side::Inbound(None)));
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
pub(crate) async fn accept_loop(listener: TcpListener, side: Side, state: Arc<ProxyState>) {
    let gauge = METRICS.open_connections.with_label_values(&[side.direction()]);
    let mut errors = AcceptErrors::new(side.direction());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                errors.failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        errors.accepted();
        let _ = stream.set_nodelay(true);
        let serve = match side {
            Side::BoundService(_) => Serve::As(side.clone()),
            _ => classify(&side, original_dst::redirected_from(&stream), &state.config.load()),
        };
        let state = state.clone();
        let gauge = gauge.clone();
        tokio::spawn(async move {
            gauge.inc();
            state.open_connections.fetch_add(1, Ordering::Relaxed);
            serve_connection(stream, peer, serve, &state).await;
            state.open_connections.fetch_sub(1, Ordering::Relaxed);
            gauge.dec();
        });
    }
}

/// Serves one accepted connection as `serve` says, to its end.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, serve: Serve, state: &Arc<ProxyState>) {
    // Each kind of connection is boxed on its own: the task then holds only the one it
    // serves (an idle plaintext HTTP connection does not carry a TLS handshake's or a
    // TCP relay's state), which keeps memory per open connection low.
    let side = match serve {
        Serve::As(side) => side,
        Serve::Relay(side) => return Box::pin(crate::tcp::serve(stream, side, state)).await,
        Serve::PassThrough(to) => return Box::pin(crate::tcp::pass_through(stream, to)).await,
    };
    let mtls = match side {
        Side::Inbound(_) => crate::tls::inbound_mode(state),
        Side::Outbound | Side::Transparent(_) | Side::BoundService(_) => MtlsMode::Off,
    };
    if let (Side::Inbound(port), true) = (&side, mtls != MtlsMode::Off) {
        Box::pin(serve_mtls(stream, peer, *port, state, mtls)).await;
    } else if is_tcp(state, &side) {
        Box::pin(serve_tcp(stream, None, side, state)).await;
    } else {
        Box::pin(crate::server::serve_plaintext(stream, peer, side, state.clone(), None)).await;
    }
}

/// An inbound connection under mTLS (strict or permissive): checked by `tls::inbound`, then
/// served as opaque TCP or HTTP by the app port's protocol, with the caller's verified id.
async fn serve_mtls(stream: TcpStream, peer: SocketAddr, port: Option<u16>, state: &Arc<ProxyState>, mode: MtlsMode) {
    let side = Side::Inbound(port);
    match crate::tls::inbound::admit(stream, peer, port, state, mode).await {
        None => {}
        Some(Admitted::Plaintext(stream)) if is_tcp(state, &side) => serve_tcp(stream, None, side, state).await,
        Some(Admitted::Plaintext(stream)) => {
            crate::server::serve_plaintext(stream, peer, side, state.clone(), None).await;
        }
        Some(Admitted::Mtls { stream, caller, .. }) if is_tcp(state, &side) => {
            crate::tcp::serve_inbound(stream, Some(caller), port, state).await;
        }
        Some(Admitted::Mtls { stream, caller, h2 }) => {
            let version = if h2 { Version::Http2 } else { Version::Http1 };
            crate::server::serve(stream, version, peer, side, state.clone(), Some(caller)).await;
        }
    }
}

/// Opaque TCP: to the app for the inbound side (the caller's id, if any, goes in the log),
/// else to the side's service.
async fn serve_tcp<S>(stream: S, caller: Option<Arc<str>>, side: Side, state: &Arc<ProxyState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match side {
        Side::Inbound(port) => crate::tcp::serve_inbound(stream, caller, port, state).await,
        side => crate::tcp::serve(stream, side, state).await,
    }
}

/// Whether connections on this listener are opaque TCP (decided per connection, so a reload
/// that changes a service's protocol takes effect for new connections).
fn is_tcp(state: &ProxyState, side: &Side) -> bool {
    let snap = state.config.load();
    match side {
        Side::Outbound | Side::Transparent(_) => false,
        Side::BoundService(svc) => {
            snap.service(svc).and_then(|s| snap.clusters.get(&s.key)).is_some_and(|c| c.protocol == Protocol::Tcp)
        }
        Side::Inbound(port) => snap.app_is_tcp(*port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let text = "kind: Proxy\nmetadata: {name: c}\nspec: {service: c, outbound: {listen: 127.0.0.1:4140}}\n---\n\
                    kind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 8080, protocol: http}], \
                    endpoints: [{address: 10.0.0.2:4143}]}\n---\n\
                    kind: Service\nmetadata: {name: echo}\nspec: {ports: [{port: 7, protocol: tcp}], \
                    endpoints: [{address: 10.0.0.3:7}]}\n";
        let docs = weft_api::parse_file("t.yaml", text).unwrap();
        Snapshot::build(docs, "t.yaml", 1, None).unwrap()
    }

    fn describe(serve: Serve) -> String {
        match serve {
            Serve::As(Side::Outbound) => "outbound".into(),
            Serve::As(Side::Transparent(s)) => format!("transparent {s}"),
            Serve::As(Side::BoundService(s)) => format!("bound service {s}"),
            Serve::Relay(side) => format!("tcp {side:?}"),
            Serve::As(Side::Inbound(port)) => format!("inbound {port:?}"),
            Serve::PassThrough(to) => format!("pass-through {to}"),
        }
    }

    #[test]
    fn a_redirected_connection_is_served_by_its_original_destination() {
        let snap = snapshot();
        let cases: &[(Side, Option<&str>, &str)] = &[
            (Side::Outbound, None, "outbound"),
            (Side::Outbound, Some("10.0.0.2:8080"), "transparent web.default"),
            (Side::Outbound, Some("10.0.0.3:7"), "tcp BoundService(\"echo.default\")"),
            (Side::Outbound, Some("192.0.2.1:443"), "pass-through 192.0.2.1:443"),
            (Side::Inbound(None), None, "inbound None"),
            (Side::Inbound(None), Some("10.0.0.2:9000"), "inbound Some(9000)"),
        ];
        for (side, original, want) in cases {
            let original = original.map(|a| a.parse().unwrap());
            assert_eq!(describe(classify(side, original, &snap)), *want, "{side:?} from {original:?}");
        }
    }
}
