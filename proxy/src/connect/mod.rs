//! Connections to upstreams: TCP connect with a deadline, the HTTP/1.1 and HTTP/2 clients,
//! and the per-worker pool that reuses them.

mod h1conn;
mod h2conn;
mod pool;

pub(crate) use h1conn::{Decode, MAX_INTERIM, ResponseHead, Step, parse_head};
pub(crate) use h1conn::{H1Body, H1Conn, H1SendError, Home};
pub(crate) use h2conn::{H2Conn, H2SendError, handshake as handshake_h2};
pub(crate) use pool::{Conn, ConnectError, Reuse, Wire, checkout, sweep_idle, upgrade_h1};

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Opens a TCP connection within `timeout`, with Nagle off (requests are written whole).
pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(source)) => Err(ConnectError::Io { addr, source }),
        Err(_) => Err(ConnectError::Timeout { addr, timeout }),
    }
}
