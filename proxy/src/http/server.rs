//! Serves one client connection (HTTP/1.1 or HTTP/2, detected from the first bytes the client
//! sends, which it does at once) and hands each request to its side's handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::body::RespBody;
use crate::listeners::Side;
use crate::metrics::METRICS;
use crate::state::ProxyState;

/// Serves `stream` until the client closes it, it idles out, or draining closes it.
/// `caller` is the peer's verified SPIFFE id when the connection is mutual TLS.
pub async fn serve<S>(stream: S, peer: SocketAddr, side: Side, state: Arc<ProxyState>, caller: Option<Arc<str>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.config.load().proxy.http.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size((limits.max_header_bytes as usize).max(8192))
        // Once draining, each new connection serves one request and closes, so the app's late
        // calls still work but nothing lingers.
        .keep_alive(!state.is_draining());
    builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes).max_concurrent_streams(1024);

    let svc_state = state.clone();
    let svc_side = side.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let fut = handle(svc_state.clone(), svc_side.clone(), peer, caller.clone(), req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut drain = state.drain_signal();
    let result = if state.is_draining() {
        conn.as_mut().await
    } else {
        tokio::select! {
            r = conn.as_mut() => r,
            _ = drain.changed() => {
                conn.as_mut().graceful_shutdown();
                conn.as_mut().await
            }
        }
    };
    if let Err(e) = result {
        METRICS.protocol_errors.with_label_values(&[side.direction()]).inc();
        tracing::debug!(%peer, direction = side.direction(), error = %e, "client connection ended with an error");
    }
}

async fn handle(
    state: Arc<ProxyState>,
    side: Side,
    peer: SocketAddr,
    caller: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Response<RespBody> {
    let started = Instant::now();
    if !crate::logging::access_log_enabled() {
        return dispatch(&state, &side, peer, caller, req, started).await;
    }
    // Boxed so the access-log path does not add a second copy of the request future's layout.
    Box::pin(handle_logged(&state, &side, peer, caller, req, started)).await
}

async fn handle_logged(
    state: &ProxyState,
    side: &Side,
    peer: SocketAddr,
    caller: Option<Arc<str>>,
    req: Request<Incoming>,
    started: Instant,
) -> Response<RespBody> {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = dispatch(state, side, peer, caller, req, started).await;
    tracing::info!(
        target: "access",
        direction = side.direction(),
        %peer,
        %method,
        %uri,
        status = resp.status().as_u16(),
        proxy_error = resp.headers().get(super::errors::ERROR_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(""),
        micros = started.elapsed().as_micros() as u64,
    );
    resp
}

async fn dispatch(
    state: &ProxyState,
    side: &Side,
    peer: SocketAddr,
    caller: Option<Arc<str>>,
    req: Request<Incoming>,
    started: Instant,
) -> Response<RespBody> {
    match side {
        Side::Outbound => crate::outbound::handle(state, None, req, started).await,
        Side::Upstream(service) => crate::outbound::handle(state, Some(service), req, started).await,
        Side::Inbound => crate::inbound::handle(state, peer, caller, req, started).await,
    }
}
