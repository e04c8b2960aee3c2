//! An HTTP backend (HTTP/1.1 and h2c) that says who it is and does what each request asks.
//!
//! Responses carry `x-backend: <name>` and echo the method, path, host, HTTP version and body
//! length in `x-echo-*` headers; request headers starting with `x-` (and `weft-client-id`,
//! `upgrade`, `http2-settings`) come back as `x-seen-<name>` (every value), request trailers
//! among them as `x-seen-trailer-<name>`.
//! Behaviour is picked by the request: a path segment pair `/status/<code>`, `/delay/<ms>` or
//! `/bytes/<n>` (a body of n bytes, made as it is sent) anywhere in the path (or headers
//! `x-status`, `x-delay-ms`), a path starting with `/echo`
//! returns the request body, `content-type: application/grpc` gets a gRPC-style answer whose
//! trailer `grpc-status` comes from the request header `x-grpc-status`, and an
//! `Upgrade: websocket` (or `h2c`, as a server that takes the offer would) request is switched
//! to a raw byte echo.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A running backend; stopping or dropping it closes the listener and every connection.
pub struct Backend {
    state: Arc<State>,
    addr: SocketAddr,
    task: Option<Serving>,
    /// While stopped, the port stays reserved for [`Backend::restart`] (see `net::Reserved`).
    parked: Option<crate::net::Reserved>,
}

/// The accept loop's task, and the way to tell it to stop.
struct Serving {
    task: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl Serving {
    fn spawn(listener: TcpListener, state: Arc<State>) -> Serving {
        let (stop, stopped) = oneshot::channel();
        Serving { task: tokio::spawn(serve(listener, state, stopped)), stop }
    }
}

struct State {
    name: String,
    hits: Arc<AtomicUsize>,
    /// Requests received per first path segment (`/reset/1` counts under `reset`).
    hits_by_segment: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    /// When non-zero, every plain request gets this status.
    forced_status: AtomicU16,
    /// Upgraded (WebSocket) echo tasks, which outlive their HTTP connection task.
    upgraded: Mutex<Vec<AbortHandle>>,
}

impl Backend {
    /// Starts a backend called `name` on a fresh loopback port.
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let state = Arc::new(State {
            name: name.to_string(),
            hits: Arc::new(AtomicUsize::new(0)),
            hits_by_segment: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            forced_status: AtomicU16::new(0),
            upgraded: Mutex::new(Vec::new()),
        });
        let task = Serving::spawn(listener, state.clone());
        Backend { state, addr, task: Some(task), parked: None }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far (counted when the request head arrives).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests received so far whose path starts with `/<segment>`.
    pub fn hits_at(&self, segment: &str) -> usize {
        self.state.hits_by_segment.lock().unwrap().get(segment).copied().unwrap_or(0)
    }

    /// The shared request counter, for tests that watch it from another task.
    pub fn hit_counter(&self) -> Arc<AtomicUsize> {
        self.state.hits.clone()
    }

    /// Requests whose response has not been returned yet.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// Makes every later plain request answer `code` (or behave normally again with `None`).
    pub fn always_status(&self, code: Option<u16>) {
        self.state.forced_status.store(code.unwrap_or(0), Ordering::SeqCst);
    }

    /// Kills the backend: the listener and all open connections close, before this returns
    /// (a connection task that is only told to abort may still hold its socket open, and
    /// take a request, after the test went on as if the backend were gone).
    pub async fn stop(&mut self) {
        if let Some(serving) = self.task.take() {
            let _ = serving.stop.send(());
            let _ = serving.task.await;
            self.parked = crate::net::reserve_addr(self.addr);
        }
        self.abort_upgraded();
    }

    /// Starts serving again on the same port after [`Backend::stop`].
    pub async fn restart(&mut self) {
        assert!(self.task.is_none(), "restart() needs a stopped backend");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind backend {} on {}: {e}", self.state.name, self.addr),
            }
        };
        self.parked = None;
        self.task = Some(Serving::spawn(listener, self.state.clone()));
    }

    fn abort_upgraded(&self) {
        for handle in self.state.upgraded.lock().unwrap().drain(..) {
            handle.abort();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(serving) = self.task.take() {
            serving.task.abort();
        }
        self.abort_upgraded();
    }
}

/// Accepts connections until told to stop, then ends every connection and waits until each
/// is gone. Dropping this future (on abort) drops the JoinSet and so, soon after, every
/// connection.
async fn serve(listener: TcpListener, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => {
                drop(listener);
                conns.shutdown().await;
                return;
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let segment = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default();
    *state.hits_by_segment.lock().unwrap().entry(segment.to_string()).or_default() += 1;
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&state);
    let is_upgrade = req.headers().get(http::header::UPGRADE).is_some_and(|v| {
        v.as_bytes().split(|&b| b == b',').any(|t| {
            let t = t.trim_ascii();
            t.eq_ignore_ascii_case(b"websocket") || t.eq_ignore_ascii_case(b"h2c")
        })
    });
    let is_grpc =
        req.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    Ok(if is_upgrade {
        upgrade(&state, req)
    } else if is_grpc {
        grpc(&state, req).await
    } else {
        plain(&state, req).await
    })
}

/// What a request asks of the backend, by its path segments and headers.
#[derive(Default)]
struct Asked {
    status: Option<u16>,
    delay_ms: Option<u64>,
    /// A body of this many bytes instead of the backend's name.
    body_bytes: Option<u64>,
}

fn requested_behaviour(req: &Request<Incoming>) -> Asked {
    let segments: Vec<&str> = req.uri().path().split('/').collect();
    let mut asked = Asked::default();
    for pair in segments.windows(2) {
        match pair[0] {
            "status" => asked.status = pair[1].parse().ok().or(asked.status),
            "delay" => asked.delay_ms = pair[1].parse().ok().or(asked.delay_ms),
            "bytes" => asked.body_bytes = pair[1].parse().ok().or(asked.body_bytes),
            _ => {}
        }
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(status) = header("x-status").and_then(|v| v.parse().ok()) {
        asked.status = Some(status);
    }
    if let Some(delay) = header("x-delay-ms").and_then(|v| v.parse().ok()) {
        asked.delay_ms = Some(delay);
    }
    asked
}

/// A body of `left` bytes, sent in 64 KiB slices of one buffer: a large response costs the
/// backend no memory, and it is made only as fast as the peer takes it.
struct Filler {
    left: u64,
    chunk: Bytes,
}

impl Filler {
    fn new(len: u64) -> Filler {
        Filler { left: len, chunk: Bytes::from(vec![b'x'; 64 * 1024]) }
    }
}

impl http_body::Body for Filler {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

async fn plain(state: &State, req: Request<Incoming>) -> Response<Body> {
    let asked = requested_behaviour(&req);
    let forced = state.forced_status.load(Ordering::SeqCst);
    let status = if forced != 0 { forced } else { asked.status.unwrap_or(200) };
    let echo_body = req.uri().path().starts_with("/echo");
    let mut headers = echo_headers(state, &req);
    let collected = req.into_body().collect().await.ok();
    for (name, value) in collected.as_ref().and_then(|c| c.trailers()).into_iter().flatten() {
        if seen(name)
            && let Ok(seen) = HeaderName::try_from(format!("x-seen-trailer-{}", name.as_str()))
        {
            headers.insert(seen, value.clone());
        }
    }
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    insert(&mut headers, "x-echo-body-len", &body.len().to_string());
    if let Some(ms) = asked.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let text = if echo_body { body } else { Bytes::from(format!("{}\n", state.name)) };
    let body = match asked.body_bytes {
        Some(len) => Filler::new(len).boxed_unsync(),
        None => Full::new(text).boxed_unsync(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    *resp.headers_mut() = headers;
    resp
}

async fn grpc(state: &State, req: Request<Incoming>) -> Response<Body> {
    let code = req.headers().get("x-grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_string();
    let mut headers = echo_headers(state, &req);
    insert(&mut headers, "content-type", "application/grpc");
    let message = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let mut trailers = HeaderMap::new();
    insert(&mut trailers, "grpc-status", &code);
    insert(&mut trailers, "grpc-message", &format!("from {}", state.name));
    let body = Full::new(message).with_trailers(async move { Some(Ok(trailers)) });
    let mut resp = Response::new(body.boxed_unsync());
    *resp.headers_mut() = headers;
    resp
}

fn upgrade(state: &State, mut req: Request<Incoming>) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    let echo = tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    });
    state.upgraded.lock().unwrap().push(echo.abort_handle());
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = echo_headers(state, &req);
    let asked = req.headers().get(http::header::UPGRADE).and_then(|v| v.to_str().ok()).unwrap_or("websocket");
    let protocol = if asked.to_ascii_lowercase().contains("h2c") { "h2c" } else { "websocket" };
    insert(&mut headers, "upgrade", protocol);
    insert(&mut headers, "connection", "upgrade");
    *resp.headers_mut() = headers;
    resp
}

fn echo_headers(state: &State, req: &Request<Incoming>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    insert(&mut headers, "x-backend", &state.name);
    insert(&mut headers, "x-echo-method", req.method().as_str());
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    insert(&mut headers, "x-echo-path", path);
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    insert(&mut headers, "x-echo-host", host);
    insert(&mut headers, "x-echo-version", &format!("{:?}", req.version()));
    for (name, value) in req.headers() {
        if seen(name)
            && let Ok(seen) = HeaderName::try_from(format!("x-seen-{}", name.as_str()))
        {
            headers.append(seen, value.clone());
        }
    }
    headers
}

/// Whether a request field comes back as `x-seen-…`: `x-` fields, a few the proxy handles
/// specially, and `weft-client-id` in any spelling a CGI-style app reads as it (`weft_client_id`).
fn seen(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-") || matches!(name, "upgrade" | "http2-settings") || name.replace('_', "-") == "weft-client-id"
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
