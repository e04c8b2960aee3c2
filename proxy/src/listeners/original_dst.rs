//! The address a client meant to reach when iptables redirected its connection here
//! (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`; socket2's safe wrappers, so no unsafe code).

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination of `stream` when it was redirected (transparent mode), `None` when
/// the client connected to this listener itself. Without conntrack (no nat rules at all) the
/// kernel has no original destination to give, which also means `None`.
pub(super) fn redirected_from(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    original.ok()?.as_socket().filter(|orig| *orig != local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_connection_was_not_redirected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(redirected_from(&server), None);
        drop(client);
    }
}
