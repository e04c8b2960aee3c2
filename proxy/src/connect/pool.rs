//! The per-worker connection pool. Each worker thread runs its own single-threaded runtime, so
//! the pool is thread-local: checkout and return take no lock and share no cache line.
//!
//! HTTP/1.1 connections return to the pool only once their response body was read to the end
//! (see `H1Body`), so a pooled connection is always free for the next request.
//! HTTP/2 connections are shared: one per endpoint per worker, multiplexing every request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::{H1Conn, H2Conn, connect_tcp, handshake_h2};
use crate::http::body::ReqBody;

/// Idle HTTP/1.1 connections kept per endpoint per worker.
const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Idle longer than this, a connection's liveness is asked of the kernel before reuse (one
/// system call); sooner, the runtime's readiness state is trusted (none). The same threshold
/// as the HTTP/2 pool's look at its connection (`H2Conn::take`).
const KERNEL_PROBE_AFTER: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr} failed: {source}")]
    Io { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake { addr: SocketAddr, source: hyper::Error },
    #[error("HTTP/2 connection to {addr} failed: {source}")]
    Http2 { addr: SocketAddr, source: h2::Error },
    /// mTLS toward a peer proxy failed; `reason` is the metric label.
    #[error("mTLS with {addr} failed ({reason}): {detail}")]
    Tls { addr: SocketAddr, reason: &'static str, detail: String },
}

/// A connection ready for one request.
pub(crate) enum Conn {
    Http1 { conn: H1Conn, reused: bool },
    Http2 { tx: H2Conn, reused: bool },
}

impl Conn {
    pub(crate) fn reused(&self) -> bool {
        match self {
            Conn::Http1 { reused, .. } | Conn::Http2 { reused, .. } => *reused,
        }
    }
}

/// Returns an HTTP/1.1 connection, free for its next request, to this worker's pool.
pub(super) fn put_h1(addr: SocketAddr, conn: H1Conn, idle_timeout: Duration) {
    POOL.with(|p| p.borrow_mut().put_h1(addr, conn, idle_timeout));
}

/// An idle HTTP/1.1 connection to `addr` from this worker's pool, if one is usable.
#[cfg(test)]
pub(super) fn take_idle_h1(addr: SocketAddr, now: Instant) -> Option<H1Conn> {
    POOL.with(|p| p.borrow_mut().take_h1(addr, now))
}

struct IdleH1 {
    conn: H1Conn,
    /// When it came back to the pool.
    returned: Instant,
    expires: Instant,
}

/// The pool is keyed by endpoint address, looked up twice per request (checkout and return).
/// Its keys come from the config, never from clients, so a keyed (DoS-resistant) hash buys
/// nothing here; a folded multiply per word costs a few instructions instead of SipHash's rounds.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Folded multiply: the high half of the 128-bit product mixes every input bit into
        // the low half, so words differing in any bits do not cancel out.
        let product = u128::from(self.0 ^ n) * 0x9e37_79b9_7f4a_7c15_u128;
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type AddrMap<V> = HashMap<SocketAddr, V, BuildHasherDefault<AddrHasher>>;

#[derive(Default)]
struct Pool {
    h1: AddrMap<Vec<IdleH1>>,
    h2: AddrMap<H2Slot>,
}

/// An endpoint's shared HTTP/2 connection, or the one being made for it. Requests that find
/// one being made wait for it instead of each making their own: when an upstream's GOAWAY
/// refuses the streams in flight, every one of them needs a new connection at once.
enum H2Slot {
    Ready(H2Conn),
    /// `Some` once made; the sender dropped without a value means it failed.
    Connecting(watch::Receiver<Option<H2Conn>>),
}

/// What a checkout found in the slot.
enum Found {
    Ready(H2Conn),
    Connecting(watch::Receiver<Option<H2Conn>>),
    Nothing,
}

impl Pool {
    fn put_h1(&mut self, addr: SocketAddr, conn: H1Conn, idle_timeout: Duration) {
        let list = self.h1.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            let now = Instant::now();
            list.push(IdleH1 { conn, returned: now, expires: now + idle_timeout });
        }
    }

    /// The most recently used live connection (warm caches, and older ones expire first).
    /// One the upstream closed (or wrote to unasked) while idle is dropped here.
    fn take_h1(&mut self, addr: SocketAddr, now: Instant) -> Option<H1Conn> {
        let list = self.h1.get_mut(&addr)?;
        while let Some(idle) = list.pop() {
            // A connection back in the pool for a moment (the steady state under load) is
            // trusted to the runtime's readiness; one idle longer is asked of the kernel, the
            // window in which an upstream's keep-alive timeout closes it.
            let ask_kernel = now.saturating_duration_since(idle.returned) >= KERNEL_PROBE_AFTER;
            if idle.expires > now && idle.conn.is_usable(ask_kernel) {
                return Some(idle.conn);
            }
        }
        None
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// Closes this worker's idle connections whose idle timeout passed, so the proxy closes them
/// before the app's own keep-alive timeout would (the app closing first races with reuse).
pub(crate) fn sweep_idle() {
    let now = Instant::now();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        p.h1.retain(|_, list| {
            list.retain(|idle| idle.expires > now && idle.conn.is_usable(true));
            !list.is_empty()
        });
        p.h2.retain(|_, slot| match slot {
            H2Slot::Ready(tx) => !tx.is_closed(),
            // Abandoned: the request making it went away (its sender is gone).
            H2Slot::Connecting(rx) => rx.has_changed().is_ok(),
        });
    });
}

/// The protocol spoken to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    Http1,
    Http2,
}

/// Whether a checkout may hand out a pooled connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    /// A free pooled connection if there is one, else a new one.
    Pooled,
    /// A new connection (the pooled one just failed under the request, or an upgrade).
    Fresh,
}

/// A connection to `addr` as `reuse` says. `now` is a recent clock reading, for idle expiry.
pub(crate) async fn checkout(
    addr: SocketAddr,
    wire: Wire,
    connect_timeout: Duration,
    reuse: Reuse,
    now: Instant,
) -> Result<Conn, ConnectError> {
    if wire == Wire::Http2 {
        let found = POOL.with(|p| match p.borrow().h2.get(&addr) {
            Some(H2Slot::Ready(tx)) if !tx.is_closed() => Found::Ready(tx.clone()),
            Some(H2Slot::Connecting(rx)) => Found::Connecting(rx.clone()),
            _ => Found::Nothing,
        });
        match found {
            Found::Ready(tx) if reuse == Reuse::Pooled => {
                if tx.take(crate::clock::nanos_at(now)).await {
                    return Ok(Conn::Http2 { tx, reused: true });
                }
            }
            // Being made by another request: new either way. If that fails, this one tries.
            Found::Connecting(rx) => {
                if let Some(tx) = Box::pin(made(rx)).await {
                    return Ok(Conn::Http2 { tx, reused: false });
                }
            }
            Found::Ready(_) | Found::Nothing => {}
        }
        // Boxed: the handshake futures are large and rare; inline they would be copied with
        // every request's future (see `server`).
        return Box::pin(make_h2(addr, connect_timeout)).await.map(|tx| Conn::Http2 { tx, reused: false });
    }
    if reuse == Reuse::Pooled
        && let Some(conn) = POOL.with(|p| p.borrow_mut().take_h1(addr, now))
    {
        return Ok(Conn::Http1 { conn, reused: true });
    }
    let stream = Box::pin(connect_tcp(addr, connect_timeout)).await?;
    Ok(Conn::Http1 { conn: H1Conn::new(stream), reused: false })
}

/// Hands a new HTTP/1.1 connection to hyper, for a request that upgrades it (WebSocket and
/// the like: after `101 Switching Protocols` hyper gives the socket back to be spliced).
pub(crate) async fn upgrade_h1(addr: SocketAddr, conn: H1Conn) -> Result<http1::SendRequest<ReqBody>, ConnectError> {
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(conn.into_io()))
        .await
        .map_err(|source| ConnectError::Handshake { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream HTTP/1.1 connection ended with an error");
        }
    });
    Ok(tx)
}

/// Makes `addr`'s HTTP/2 connection, with the slot saying so meanwhile.
async fn make_h2(addr: SocketAddr, timeout: Duration) -> Result<H2Conn, ConnectError> {
    let (done, ours) = watch::channel(None);
    POOL.with(|p| p.borrow_mut().h2.insert(addr, H2Slot::Connecting(ours.clone())));
    let result = connect_h2(addr, timeout).await;
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        match &result {
            Ok(tx) => {
                p.h2.insert(addr, H2Slot::Ready(tx.clone()));
            }
            // Unless another request has made one since.
            Err(_) => {
                if matches!(p.h2.get(&addr), Some(H2Slot::Connecting(rx)) if rx.same_channel(&ours)) {
                    p.h2.remove(&addr);
                }
            }
        }
    });
    if let Ok(tx) = &result {
        done.send_replace(Some(tx.clone()));
    }
    result
}

/// The connection another request is making, once made; `None` if that failed.
async fn made(mut rx: watch::Receiver<Option<H2Conn>>) -> Option<H2Conn> {
    rx.wait_for(Option::is_some).await.ok().and_then(|made| made.clone())
}

async fn connect_h2(addr: SocketAddr, timeout: Duration) -> Result<H2Conn, ConnectError> {
    let stream = connect_tcp(addr, timeout).await?;
    handshake_h2(addr, stream, "upstream HTTP/2").await
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn addresses_that_differ_in_ip_or_port_hash_apart() {
        let build = BuildHasherDefault::<AddrHasher>::default();
        let mut seen = HashSet::new();
        for ip in 0..32u8 {
            for port in [80u16, 8080, 8081, 9001] {
                let v4 = SocketAddr::from(([10, 0, 0, ip], port));
                let v6 = SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, u16::from(ip)], port));
                assert!(seen.insert(build.hash_one(v4)), "collision for {v4}");
                assert!(seen.insert(build.hash_one(v6)), "collision for {v6}");
            }
        }
        let mut map: AddrMap<u32> = AddrMap::default();
        map.insert(SocketAddr::from(([127, 0, 0, 1], 1)), 1);
        map.insert(SocketAddr::from(([127, 0, 0, 1], 2)), 2);
        assert_eq!(map.get(&SocketAddr::from(([127, 0, 0, 1], 2))), Some(&2));
        assert_eq!(map.get(&SocketAddr::from(([127, 0, 0, 2], 1))), None);
    }
}
