//! Serves one client connection, HTTP/1.1 or HTTP/2, and hands each request to its side's
//! handler. The version comes from ALPN on TLS, or from the first bytes a plaintext client
//! sends (peeked, so they stay in the socket: the HTTP/1.1 server's first read gets them
//! whole). HTTP/1.1 is served by `h1server`, which hands connections with unusual requests to
//! hyper's server (`serve_hyper`); HTTP/2 by `h2server`. `timeouts` bounds how long a client
//! may take, `spares` lends idle connections their buffers.

#[cfg(test)]
mod h1_properties;
pub(crate) mod h1server;
pub(crate) mod h2server;
mod spares;
pub(crate) mod timeouts;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::http::body::ClientBody;
use crate::http::headers::{self, HostCheck};
use crate::http::path::{self, PathCheck};
use crate::metrics::METRICS;
use crate::outbound::ServiceBy;
use crate::response::access::AccessLine;
use crate::response::body::RespBody;
use crate::response::errors::ProxyError;
use crate::routing::Rule;
use crate::side::Side;
use crate::state::ProxyState;
use timeouts::{HeadTimer, ReadWatch};

/// The HTTP version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge (h2c) or negotiated by ALPN.
    Http2,
}

/// What every HTTP/2-with-prior-knowledge client sends first (RFC 9113 section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Tells HTTP/2 prior knowledge from HTTP/1.x by peeking at the first bytes, which stay in the
/// socket. `None`: the client closed, failed, sent nothing within `idle`, or started the
/// preface and did not finish it within `head`.
pub(crate) async fn sniff(stream: &TcpStream, idle: Duration, head: Duration) -> Option<Version> {
    let mut buf = [0u8; 24];
    // Nothing sent yet: the connection is idle, not slow.
    let first = tokio::time::timeout(idle, stream.peek(&mut buf)).await.ok()?.ok()?;
    let decide = async {
        let mut n = first;
        loop {
            if n == 0 {
                return None;
            }
            if let Some(version) = version_from_prefix(&buf[..n]) {
                return Some(version);
            }
            // Part of the preface so far (rare: it came in pieces); peeking again at once
            // would return the same bytes.
            tokio::time::sleep(Duration::from_millis(1)).await;
            n = stream.peek(&mut buf).await.ok()?;
        }
    };
    tokio::time::timeout(head, decide).await.ok().flatten()
}

/// The version the first bytes of a plaintext connection show: HTTP/2 once they are the whole
/// preface, HTTP/1.x as soon as they stop matching it; `None` while they are the start of it.
pub(crate) fn version_from_prefix(first: &[u8]) -> Option<Version> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Version::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Version::Http2)
    } else {
        None
    }
}

/// Serves a plaintext client connection: sniffs its version, then serves it. A client that
/// sends nothing within `clientIdleTimeout`, or only part of the HTTP/2 preface within
/// `headerReadTimeout`, is closed.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(crate) fn serve_plaintext(
    stream: TcpStream,
    peer: SocketAddr,
    side: Side,
    state: Arc<ProxyState>,
    caller: Option<Arc<str>>,
) -> impl Future<Output = ()> {
    // Not an async fn, which would keep its arguments twice in the future (as passed and as locals).
    async move {
        let (idle, head) = {
            let snap = state.config.load();
            (snap.proxy.http.client_idle_timeout, snap.proxy.http.header_read_timeout)
        };
        // Boxed: its state is gone once the version is known, and inline it would stay in every
        // connection's future (480 bytes, a sixth of an idle connection).
        let version = Box::pin(async {
            // A connection that has sent nothing does not hold up a drain for longer than a slow
            // head would.
            let mut drain = state.drain_signal();
            let idle = if state.is_draining() { head } else { idle };
            let mut sniffing = std::pin::pin!(sniff(&stream, idle, head));
            tokio::select! {
                biased;
                version = &mut sniffing => version,
                _ = drain.changed() => tokio::time::timeout(head, sniffing).await.ok().flatten(),
            }
        })
        .await;
        if let Some(version) = version {
            serve(stream, version, peer, side, state, caller).await;
        }
    }
}

/// Serves `stream` until the client closes it, it idles out, or draining closes it.
/// `caller` is the peer's verified SPIFFE id when the connection is mutual TLS.
///
/// An idle HTTP/1.1 connection's whole cost is this future plus its read buffer, so its
/// layout matters: the connection is pinned here, once, and `drive` borrows it (an async fn
/// keeps a slot for each argument and each pinned local, so passing it by value stored it
/// twice); hyper's larger state, for the connections handed to it, is boxed.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(crate) fn serve<S>(
    stream: S,
    version: Version,
    peer: SocketAddr,
    side: Side,
    state: Arc<ProxyState>,
    caller: Option<Arc<str>>,
) -> impl Future<Output = ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // Not an async fn, which would keep its arguments twice in the future (as passed and as locals).
    async move {
        let direction = side.direction();
        let (header_read_timeout, idle_timeout, max_header_bytes) = {
            let snap = state.config.load();
            let http = &snap.proxy.http;
            (http.header_read_timeout, http.client_idle_timeout, http.max_header_bytes)
        };
        let service = Handler { state: state.clone(), side, peer, caller };
        let ended = match version {
            Version::Http1 => {
                let limits = h1server::Limits {
                    idle: idle_timeout,
                    head: header_read_timeout,
                    max_head: max_header_bytes as usize,
                };
                let served = {
                    let fast = std::pin::pin!(h1server::serve(stream, &service, limits));
                    // Draining is noticed by the connection itself (between requests); `drive` wakes it.
                    drive(&state, fast, |_| {}).await
                };
                match served {
                    h1server::Served::Ended(ended) => ended.map_err(|e| e.to_string()),
                    // Rare (see `h1server`), and with hyper's larger state: boxed.
                    h1server::Served::Handover(stream, read) => {
                        Box::pin(serve_hyper(stream, read, service, &state, limits)).await
                    }
                }
            }
            // Boxed: the HTTP/1.1 connection above stays inline, and the task of every
            // plaintext connection does not reserve room for HTTP/2's larger state too.
            Version::Http2 => Box::pin(async {
                let mut conn =
                    h2server::handshake(stream, service, header_read_timeout, idle_timeout, max_header_bytes).await?;
                drive(&state, Pin::new(&mut conn), |c| c.get_mut().graceful_shutdown()).await
            })
            .await
            .map_err(|e| e.to_string()),
        };
        if let Err(e) = ended {
            METRICS.protocol_errors.with_label_values(&[direction]).inc();
            tracing::debug!(%peer, direction, error = %e, "client connection ended with an error");
        }
    }
}

/// Serves an HTTP/1.1 connection on hyper's server from where `h1server` left it: `read` is
/// what it had read and not taken (the start of a head, at least).
async fn serve_hyper<S>(
    stream: S,
    read: bytes::Bytes,
    service: Handler,
    state: &ProxyState,
    limits: h1server::Limits,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timer = HeadTimer::new(limits.head, limits.idle);
    let head_begun = timer.head_begun();
    let io = TokioIo::new(ReadWatch::new(stream, read, &timer));
    let conn = std::pin::pin!(
        http1::Builder::new()
            .timer(timer)
            .header_read_timeout(limits.head)
            .max_buf_size(limits.max_head.max(8192))
            // Once draining, each new connection serves one request and closes, so the
            // app's late calls still work but nothing lingers.
            .keep_alive(!state.is_draining())
            .serve_connection(io, service)
            .with_upgrades()
    );
    match drive(state, conn, |c| c.graceful_shutdown()).await {
        // Idle for clientIdleTimeout: an ordinary end, not the client's fault.
        Err(e) if e.is_timeout() && !head_begun.load(std::sync::atomic::Ordering::Relaxed) => Ok(()),
        ended => ended.map_err(|e| e.to_string()),
    }
}

/// What a client connection's requests share; hyper calls it for each HTTP/1.1 request, and
/// `h2server` for each HTTP/2 stream.
pub(crate) struct Handler {
    state: Arc<ProxyState>,
    side: Side,
    peer: SocketAddr,
    caller: Option<Arc<str>>,
}

impl Handler {
    /// Whether its client calls the app from elsewhere (the inbound listener).
    pub(crate) fn is_inbound(&self) -> bool {
        matches!(self.side, Side::Inbound(_))
    }
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<RespBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, mut req: Request<Incoming>) -> ResponseFuture {
        // The one place an h2c upgrade can arrive: `h1server` hands every request with an
        // Upgrade field to hyper, and HTTP/2 refuses the field.
        if req.headers().contains_key(http::header::UPGRADE) {
            headers::strip_h2c_upgrade(req.headers_mut());
        }
        // `h1server` hands every chunked request to hyper, which takes any coding list that
        // ends in `chunked`; the proxy forwards `chunked` alone (differential test: h11).
        if !headers::chunked_or_none(req.headers()) {
            return ResponseFuture(Box::pin(std::future::ready(refuse_framing())));
        }
        ResponseFuture(Handler::call(self, req.map(ClientBody::Http1), Instant::now()))
    }
}

impl Handler {
    pub(crate) fn is_draining(&self) -> bool {
        self.state.is_draining()
    }

    /// Starts answering a request that arrived at `started`: routed now, forwarded by the
    /// future returned (wrapped to write the access log line when that is on).
    pub(crate) fn call(&self, mut req: Request<ClientBody>, started: Instant) -> BoxedResponse {
        let routed = self.route(&mut req);
        if crate::logging::access_log_enabled() {
            return self.respond_logged(routed, req, started);
        }
        self.respond(routed, req, started)
    }

    fn route(&self, req: &mut Request<ClientBody>) -> Result<(Arc<Rule>, u64), ProxyError> {
        // Routing, authorization, metrics and the upstream must all see one host and one path.
        match headers::check_host(req.version(), req.uri(), req.headers()) {
            HostCheck::Agrees => {}
            HostCheck::Conflicts => {
                req.headers_mut().remove(http::header::HOST);
            }
            HostCheck::Ambiguous => return Err(ProxyError::BadHost),
        }
        match path::check_path(req.uri()) {
            PathCheck::Normal => {}
            // Rare (and out of line): the path was rebuilt.
            PathCheck::Rewritten(normal) => with_path(req.uri_mut(), normal)?,
            PathCheck::Refused(why) => {
                tracing::debug!(peer = %self.peer, path = req.uri().path(), why, "request path refused");
                return Err(ProxyError::BadRequest);
            }
        }
        match &self.side {
            Side::Outbound => crate::outbound::route(&self.state, ServiceBy::Host, req),
            Side::Transparent(service) => crate::outbound::route(&self.state, ServiceBy::HostThenAddress(service), req),
            Side::BoundService(service) => crate::outbound::route(&self.state, ServiceBy::Port(service), req),
            Side::Inbound(port) => crate::inbound::admit(&self.state, self.peer, self.caller.as_deref(), *port, req),
        }
    }

    /// Boxes only the forwarding (or the error response) of a request routed synchronously.
    /// Rule: no async layer around a request's future. It is moved each time a layer of async
    /// fns wraps it, and with routing inside three such layers memcpy led the profile.
    fn respond(
        &self,
        routed: Result<(Arc<Rule>, u64), ProxyError>,
        req: Request<ClientBody>,
        started: Instant,
    ) -> BoxedResponse {
        match routed {
            Err(ProxyError::UnknownService) => {
                let bound = match &self.side {
                    Side::BoundService(service) => Some(&**service),
                    _ => None,
                };
                Box::pin(std::future::ready(crate::outbound::unknown_service(bound, &req, started)))
            }
            Err(e) => Box::pin(std::future::ready(e.response())),
            // Rare, and with its own (larger) future.
            Ok((rule, _)) if crate::forward::is_upgrade(&req) => {
                Box::pin(crate::forward::forward_upgrade(rule, req, started))
            }
            Ok((rule, max_body)) => boxed_in_place(|| crate::forward::forward(rule, req, started, max_body)),
        }
    }

    /// `respond`, with the request's access log line written once its response is sent.
    fn respond_logged(
        &self,
        routed: Result<(Arc<Rule>, u64), ProxyError>,
        req: Request<ClientBody>,
        started: Instant,
    ) -> BoxedResponse {
        let rule = routed.as_ref().ok().map(|(rule, _)| &**rule);
        let line = AccessLine::new(self.side.direction(), self.peer, self.caller.clone(), &req, rule, started);
        let resp = self.respond(routed, req, started);
        Box::pin(async move { line.finish(resp.await) })
    }
}

/// The answer to a request whose body's framing the proxy will not pass on: 400, and the
/// connection closed, since where that body ends is exactly what is in doubt.
#[cold]
fn refuse_framing() -> Response<RespBody> {
    let mut resp = ProxyError::BadRequest.response();
    resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// Puts the normal form of the path (and the query) into the request target, keeping its
/// scheme and authority.
#[cold]
fn with_path(uri: &mut http::Uri, normal: http::uri::PathAndQuery) -> Result<(), ProxyError> {
    tracing::debug!(from = uri.path(), to = normal.path(), "request path normalised");
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(normal);
    *uri = http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest)?;
    Ok(())
}

pub(crate) type BoxedResponse = Pin<Box<dyn Future<Output = Response<RespBody>> + Send>>;

/// Boxes the future `build` returns, allocating first so that the future can be built in the
/// box rather than on the stack and copied in.
fn boxed_in_place<F>(build: impl FnOnce() -> F) -> BoxedResponse
where
    F: Future<Output = Response<RespBody>> + Send + 'static,
{
    let boxed: Pin<Box<F>> = Box::into_pin(Box::write(Box::new_uninit(), build()));
    boxed
}

/// What hyper gets for each request: the boxed response future, which never fails (errors are
/// responses). Boxed, because hyper keeps a slot of its type for the whole life of an HTTP/1.1
/// connection, idle or not, and copies it into the task it spawns for each HTTP/2 stream.
pub(crate) struct ResponseFuture(BoxedResponse);

impl Future for ResponseFuture {
    type Output = Result<Response<RespBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx).map(Ok)
    }
}

/// Runs a pinned connection to its end; when draining starts, asks it to finish gracefully
/// first. It borrows the connection: see `serve` for why.
async fn drive<C>(state: &ProxyState, mut conn: Pin<&mut C>, graceful: impl FnOnce(Pin<&mut C>)) -> C::Output
where
    C: Future,
{
    if state.is_draining() {
        return conn.await;
    }
    let mut drain = state.drain_signal();
    let mut changed = std::pin::pin!(drain.changed());
    // The drain future is polled only when the waker is new to it: polling it on every wake-up
    // took the watch's lock each time (a lock per request for nothing). Between those
    // polls it holds the task's waker, and `start_drain` sets the flag before it notifies.
    let mut registered: Option<std::task::Waker> = None;
    let ended = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if registered.as_ref().is_none_or(|w| !w.will_wake(cx.waker())) {
            registered = Some(cx.waker().clone());
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        if state.is_draining() { Poll::Ready(None) } else { Poll::Pending }
    })
    .await;
    match ended {
        Some(r) => r,
        None => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::test_support::future_size;

    /// A connected pair on loopback: (client, server side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[test]
    fn an_idle_plaintext_connection_future_stays_small() {
        // Each open client connection holds this future (boxed) for its whole life, idle or
        // not; its buffers wait in the thread's spares while it is idle (`spares`). What it
        // weighed and why is in docs/performance.md ("Memory per idle connection").
        let size = future_size(serve_plaintext);
        assert!(size <= 1664, "serve_plaintext's future is {size} bytes");
    }

    /// A connection that never ends by itself, only after `graceful` is called; it counts
    /// how often it is polled.
    struct Lingering {
        asked: bool,
        polls: usize,
    }

    impl Future for Lingering {
        type Output = Result<(), hyper::Error>;

        fn poll(mut self: Pin<&mut Self>, _: &mut std::task::Context<'_>) -> Poll<Self::Output> {
            self.polls += 1;
            if self.asked { Poll::Ready(Ok(())) } else { Poll::Pending }
        }
    }

    fn test_state() -> Arc<ProxyState> {
        test_state_with("")
    }

    /// A proxy state whose Proxy spec has `extra` (flow-map entries) besides its service.
    fn test_state_with(extra: &str) -> Arc<ProxyState> {
        let yaml = format!("kind: Proxy\nmetadata: {{name: t}}\nspec: {{service: t{extra}}}\n");
        let docs = weft_api::parse_file("t.yaml", &yaml).unwrap();
        let snapshot = crate::config::snapshot::Snapshot::build(docs, "t.yaml", 1, None).unwrap();
        ProxyState::new(snapshot, "t.yaml".into(), None)
    }

    #[tokio::test]
    async fn a_connection_is_asked_to_finish_when_draining_starts_while_it_waits() {
        let state = test_state();
        let drainer = Arc::clone(&state);
        let mut conn = Lingering { asked: false, polls: 0 };
        let r = {
            let mut driven = std::pin::pin!(drive(&state, Pin::new(&mut conn), |c| c.get_mut().asked = true));
            // Wake-ups before the drain: the drain future is polled on the first only (it
            // keeps the task's waker), and the connection on each.
            for _ in 0..3 {
                assert!(poll_once(driven.as_mut()).await.is_none());
            }
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drainer.start_drain();
            });
            tokio::time::timeout(Duration::from_secs(5), driven).await
        };
        assert!(matches!(r, Ok(Ok(()))), "drive ended once draining started: {r:?}");
        assert!(conn.asked, "the connection was asked to finish gracefully");
        assert!(conn.polls >= 5, "polled on every wake-up and after the drain: {}", conn.polls);
    }

    /// Polls `f` once with the test task's waker.
    async fn poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut f).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn an_http2_client_that_never_finishes_its_handshake_is_closed() {
        let state = test_state_with(", http: {headerReadTimeout: 200ms}");
        let (mut client, server) = tokio::io::duplex(4096);
        // Half a preface, then silence (as over TLS, where ALPN chose h2 before any byte).
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let started = Instant::now();
        let served = tokio::time::timeout(
            Duration::from_secs(5),
            serve(server, Version::Http2, peer, Side::Outbound, state, None),
        )
        .await;
        assert!(served.is_ok(), "the connection was given up");
        assert!(started.elapsed() >= Duration::from_millis(200), "not before headerReadTimeout");
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut rest).await.unwrap();
    }

    /// Once draining, a new HTTP/1.1 connection still gets its first request served (and is
    /// then closed), even when the request arrives after the connection was taken (as over TLS,
    /// where the handshake comes first).
    #[tokio::test]
    async fn a_new_http1_connection_while_draining_is_answered_once() {
        let state = test_state();
        state.start_drain();
        let (mut client, server) = tokio::io::duplex(4096);
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        let served = tokio::spawn(serve(server, Version::Http1, peer, Side::Outbound, state, None));
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got);
        tokio::time::timeout(Duration::from_secs(5), read).await.expect("closed after answering").unwrap();
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 404 "), "answered: {text:?}");
        assert!(text.contains("connection: close\r\n"), "and told it closes: {text:?}");
        served.await.unwrap();
    }

    #[tokio::test]
    async fn http1_is_known_from_the_first_byte_and_the_bytes_stay_in_the_socket() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniff(&server, Duration::from_secs(5), Duration::from_secs(5)).await, Some(Version::Http1));
        let mut buf = [0u8; 16];
        let n = server.peek(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n", "sniffing consumed nothing");
    }

    #[tokio::test]
    async fn a_preface_that_arrives_in_pieces_is_http2() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            client.write_all(&H2_PREFACE[10..]).await.unwrap();
            client
        });
        assert_eq!(sniff(&server, Duration::from_secs(5), Duration::from_secs(5)).await, Some(Version::Http2));
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_prefix_of_the_preface_then_other_bytes_is_http1() {
        let (mut client, server) = pair().await;
        // "PRI" is a valid (if odd) HTTP/1.1 method; only the full preface means HTTP/2.
        client.write_all(b"PRI /x HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniff(&server, Duration::from_secs(5), Duration::from_secs(5)).await, Some(Version::Http1));
    }

    #[tokio::test]
    async fn a_silent_or_closed_client_is_given_up() {
        let (client, server) = pair().await;
        let started = Instant::now();
        assert_eq!(sniff(&server, Duration::from_millis(100), Duration::from_secs(5)).await, None);
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(client);
        assert_eq!(sniff(&server, Duration::from_secs(5), Duration::from_secs(5)).await, None, "EOF before any byte");
    }

    #[tokio::test]
    async fn a_preface_left_unfinished_is_given_up_after_the_head_timeout() {
        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let started = Instant::now();
        assert_eq!(sniff(&server, Duration::from_secs(5), Duration::from_millis(100)).await, None);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(5), "gave up after {took:?}");
    }
}
