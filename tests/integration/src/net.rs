//! Loopback address helpers: free ports and raw-socket exchanges for hand-written HTTP.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Loopback addresses kept for processes that bind them later (a proxy's listeners, a control
/// plane): while this lives each port stays bound by a socket with `SO_REUSEADDR` that never
/// listens. The kernel then hands the port to no one else (a released port could go to another
/// test's backend before the process binds it) and a plain bind of it fails, while a listener
/// that sets `SO_REUSEADDR` itself, as tokio's and the proxy's do, binds it normally.
pub struct Reserved {
    _holders: Vec<tokio::net::TcpSocket>,
    addrs: Vec<SocketAddr>,
}

impl Reserved {
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The first address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }
}

/// A socket bound to `addr` that never listens; with `reuse`, a listener that sets
/// `SO_REUSEADDR` can still bind the same port (see [`Reserved`]).
fn holder(addr: SocketAddr, reuse: bool) -> std::io::Result<tokio::net::TcpSocket> {
    let holder = tokio::net::TcpSocket::new_v4()?;
    holder.set_reuseaddr(reuse)?;
    holder.bind(addr)?;
    Ok(holder)
}

const ANY_LOOPBACK_PORT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// `n` distinct reserved loopback addresses (see [`Reserved`]).
pub fn reserve_addrs(n: usize) -> Reserved {
    let holders: Vec<tokio::net::TcpSocket> =
        (0..n).map(|_| holder(ANY_LOOPBACK_PORT, true).expect("bind 127.0.0.1:0")).collect();
    let addrs = holders.iter().map(|h| h.local_addr().expect("local addr")).collect();
    Reserved { _holders: holders, addrs }
}

/// Reserves `addr` itself (a port just released by its listener), if no one took it already.
pub fn reserve_addr(addr: SocketAddr) -> Option<Reserved> {
    let holder = holder(addr, true).ok()?;
    Some(Reserved { _holders: vec![holder], addrs: vec![addr] })
}

/// `n` distinct loopback addresses whose ports were free a moment ago (all bound before any is
/// released). For a process outside the tests (benches); tests use [`reserve_addrs`].
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr")).collect()
}

/// A loopback address where nothing listens, and where nothing else can start listening while
/// this lives: its port stays bound to a socket that never listens, so connecting is refused
/// (a released port can be handed to the next test's backend, which then answers for "dead").
pub struct DeadAddr {
    _holder: tokio::net::TcpSocket,
    addr: SocketAddr,
}

impl DeadAddr {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A [`DeadAddr`]: for endpoints whose connections must fail.
pub fn dead_addr() -> DeadAddr {
    // Without SO_REUSEADDR: no listener can bind the port while this lives.
    let holder = holder(ANY_LOOPBACK_PORT, false).expect("bind 127.0.0.1:0");
    let addr = holder.local_addr().expect("local addr");
    DeadAddr { _holder: holder, addr }
}

/// Sends `bytes` on a fresh connection and reads until a whole response head has arrived, the
/// peer closes, or `limit` passes.
///
/// Returns what was read. Used for malformed requests that no HTTP client library would send.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> Vec<u8> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    exchange_on(stream, bytes, limit).await
}

/// Like [`raw_exchange`], on a connection already made (a TLS stream, say).
pub async fn exchange_on(mut stream: impl AsyncRead + AsyncWrite + Unpin, bytes: &[u8], limit: Duration) -> Vec<u8> {
    // The peer may answer and close before reading everything (a 431 for a huge head): a
    // failed write is fine as long as a response comes back.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        while find(&out, b"\r\n\r\n").is_none() {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Sends `bytes` on a fresh connection (while reading, so a server that answers early is
/// heard) and returns what came back and how long the server took to close.
pub async fn send_until_closed(addr: SocketAddr, bytes: Vec<u8>, limit: Duration) -> (Vec<u8>, Duration) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        // The server may refuse and close before it has all of it: a failed write is fine.
        let _ = write.write_all(&bytes).await;
        write
    });
    let mut out = Vec::new();
    let closed = tokio::time::timeout(limit, read_until_close(&mut read, &mut out)).await;
    assert!(closed.is_ok(), "still open after {limit:?}, having answered {out:?}");
    let took = started.elapsed();
    writer.abort();
    (out, took)
}

/// Reads into `out` until EOF or an error (a reset counts as the end).
pub async fn read_until_close(stream: &mut (impl AsyncRead + Unpin), out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads a response head (up to the blank line) from a raw stream, with a deadline.
///
/// Returns the head as text and any bytes read past it.
pub async fn read_head(stream: &mut TcpStream, limit: Duration) -> (String, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(end) = find(&got, b"\r\n\r\n") {
            let rest = got.split_off(end + 4);
            return (String::from_utf8_lossy(&got).into_owned(), rest);
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("response head within the deadline")
            .expect("read response head");
        assert!(n > 0, "connection closed before a full response head: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The status code on the first line of a raw HTTP/1.x response, if there is one.
pub fn status_of(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}
