//! The control plane's admin listener: `/metrics`, `/ready`, `/live`, `/v1/status` (what
//! `weft status` shows) and `/v1/snapshot` (the whole state, or with `?service=NAME.NS` what a
//! proxy of that service receives).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::catalog::Catalog;
use super::discovery::{ResponseBody, full};

pub async fn serve(listener: TcpListener, catalog: Arc<Catalog>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let catalog = catalog.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let catalog = catalog.clone();
                async move { Ok::<_, Infallible>(route(&catalog, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn json(value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = full(StatusCode::OK, body);
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn route(catalog: &Catalog, req: &Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::GET {
        catalog.metrics.refused.with_label_values(&["admin", "wrong-method"]).inc();
        let mut r = full(StatusCode::METHOD_NOT_ALLOWED, "the admin API is read-only\n");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = full(StatusCode::OK, catalog.metrics.render());
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            r
        }
        "/live" => full(StatusCode::OK, "live\n"),
        "/ready" if Instant::now() >= catalog.warm_at() => full(StatusCode::OK, "ready\n"),
        "/ready" => full(StatusCode::SERVICE_UNAVAILABLE, "waiting for proxies to re-register\n"),
        "/v1/status" => json(&catalog.status()),
        "/v1/snapshot" => {
            let service = req.uri().query().unwrap_or("").split('&').find_map(|kv| kv.strip_prefix("service="));
            match service {
                Some(s) if s.contains('.') => json(&catalog.preview(s)),
                Some(s) => json(&catalog.preview(&format!("{s}.{}", weft_api::DEFAULT_NAMESPACE))),
                None => json(&catalog.dump()),
            }
        }
        _ => {
            catalog.metrics.refused.with_label_values(&["admin", "not-found"]).inc();
            full(
                StatusCode::NOT_FOUND,
                "not found; try /metrics, /ready, /live, /v1/status, /v1/snapshot[?service=NAME.NS]\n",
            )
        }
    }
}
