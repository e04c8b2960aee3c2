//! The admin listener: metrics, readiness, the effective config, endpoint state, `/explain`,
//! log level changes and shutdown. Kept off the data-plane workers.

mod explain;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::clock::now_nanos;
use crate::listeners::{ACCEPT_BACKOFF, AcceptErrors, is_fd_limit};
use crate::metrics::METRICS;
use crate::state::ProxyState;

type AdminResponse = Response<Full<Bytes>>;

/// How long the admin connection served on the reserve descriptor may take: while it is
/// served no other admin connection is accepted.
const RESERVE_CONNECTION_LIMIT: Duration = Duration::from_secs(5);

pub(crate) async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    // One descriptor held back for this port: when the data plane has taken every other one,
    // it is given up for one admin connection, so /metrics and /ready still answer at the limit.
    let mut reserve = reserve_descriptor();
    let mut errors = AcceptErrors::new("admin");
    loop {
        if reserve.is_none() {
            reserve = reserve_descriptor();
        }
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                errors.failed(&e);
                // Out of descriptors, accept fails whether or not a connection waits: with the
                // reserve given up, take a connection only if one is there now.
                if is_fd_limit(&e) && reserve.take().is_some() {
                    if let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, listener.accept()).await {
                        let one = serve_connection(stream, peer, state.clone(), KeepAlive::No);
                        let _ = tokio::time::timeout(RESERVE_CONNECTION_LIMIT, one).await;
                        continue;
                    }
                    reserve = reserve_descriptor();
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        errors.accepted();
        tokio::spawn(serve_connection(stream, peer, state.clone(), KeepAlive::Yes));
    }
}

/// Whether an admin connection may carry more than one request.
#[derive(Clone, Copy)]
enum KeepAlive {
    Yes,
    /// The connection on the reserve descriptor: one request, then the descriptor is free again.
    No,
}

fn reserve_descriptor() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, state: Arc<ProxyState>, keep: KeepAlive) {
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, peer, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(matches!(keep, KeepAlive::Yes))
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json_response(value: &serde_json::Value) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

async fn route(state: &ProxyState, peer: SocketAddr, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => {
            update_endpoint_gauges(state);
            let mut r = text(StatusCode::OK, METRICS.render());
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        (Method::GET, "/ready") => {
            if state.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if !crate::tls::ready(state) {
                text(StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n")
            } else if state.layers.awaiting_control_plane() {
                text(StatusCode::SERVICE_UNAVAILABLE, "waiting for the first config from the control plane\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        (Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (Method::GET, "/config") => {
            let snap = state.config.load();
            json_response(&json!({
                "version": snap.version,
                "source": snap.source,
                "documents": snap.documents,
            }))
        }
        (Method::GET, "/endpoints") => json_response(&endpoints_json(state)),
        (Method::GET, "/explain") => {
            let query = req.uri().query().unwrap_or("");
            match explain::explain(&state.config.load(), query) {
                Ok(explained) => json_response(&explained),
                Err(error) => {
                    let mut r = json_response(&json!({ "error": error }));
                    *r.status_mut() = StatusCode::BAD_REQUEST;
                    r
                }
            }
        }
        (Method::PUT, "/log-level") => {
            let body = match Limited::new(req.into_body(), 4096).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::BAD_REQUEST, "body too large\n"),
            };
            let filter = match crate::logging::filter_from_body(&body) {
                Ok(f) => f,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            };
            match &state.log {
                Some(log) => match log.set(&filter) {
                    Ok(()) => {
                        tracing::info!(filter, "log level changed");
                        text(StatusCode::OK, format!("log level set to {filter}\n"))
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                },
                None => text(StatusCode::SERVICE_UNAVAILABLE, "logging is not reloadable in this process\n"),
            }
        }
        (Method::GET, "/log-level") => match &state.log {
            Some(log) => json_response(&json!({ "level": log.current() })),
            None => text(StatusCode::SERVICE_UNAVAILABLE, "logging is not reloadable in this process\n"),
        },
        (Method::POST, "/shutdown") => {
            if !peer.ip().is_loopback() {
                return text(StatusCode::FORBIDDEN, "shutdown is only accepted from loopback\n");
            }
            tracing::info!(%peer, "shutdown requested through the admin port");
            state.start_drain();
            text(StatusCode::ACCEPTED, "shutting down\n")
        }
        (_, "/metrics" | "/ready" | "/live" | "/config" | "/endpoints" | "/explain" | "/log-level" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /ready /live /config /endpoints /explain?host=&path=&method= (or port=) GET|PUT /log-level POST /shutdown\n",
        ),
    }
}

fn endpoints_json(state: &ProxyState) -> serde_json::Value {
    let snap = state.config.load();
    let now = now_nanos();
    let mut services: Vec<serde_json::Value> = snap
        .clusters
        .values()
        .map(|c| {
            json!({
                "service": c.key.as_ref(),
                "protocol": c.protocol,
                "loadBalancer": c.policy.load_balancer,
                "inFlight": c.shared.limit.in_flight(),
                "endpoints": c.set.endpoints().iter().map(|e| e.status(now)).collect::<Vec<_>>(),
            })
        })
        .collect();
    services.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
    if let Some(ib) = &snap.inbound {
        services.push(json!({
            "service": "inbound",
            "protocol": ib.cluster.protocol,
            "endpoints": ib.cluster.set.endpoints().iter().map(|e| e.status(now)).collect::<Vec<_>>(),
        }));
    }
    json!({ "version": snap.version, "services": services })
}

fn update_endpoint_gauges(state: &ProxyState) {
    let snap = state.config.load();
    let now = now_nanos();
    for c in snap.clusters.values() {
        let (available, ejected) = c.set.counts(now);
        c.shared.metrics.endpoints_available.set(available as i64);
        c.shared.metrics.endpoints_ejected.set(ejected as i64);
    }
}
