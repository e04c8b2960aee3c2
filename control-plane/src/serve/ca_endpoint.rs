//! `weft serve --ca DIR --join-token-file F [--listen ADDR] [--cert-ttl DURATION]`: a minimal
//! control plane that only signs proxies' CSRs on `POST /v1/certificates` (plaintext HTTP/1.1,
//! for loopback and tests). The full `weft serve` mounts the same handler.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::ca::http::CERTIFICATES_PATH;
use crate::ca::{Authority, Issuer, JoinTokens};

const USAGE: &str = "\
Usage: weft serve --ca DIR --join-token-file FILE [--listen ADDR] [--cert-ttl DURATION]
  Sign proxies' certificate requests on POST /v1/certificates (default listen 0.0.0.0:8086,
  certificate lifetime 24h). FILE holds one `<token> <spiffe-id>` per line.
";

pub fn run(args: &[String]) -> u8 {
    let mut ca = None;
    let mut tokens = None;
    let mut listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8086));
    let mut ttl = Duration::from_secs(24 * 3600);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let value = match (arg.as_str(), it.next()) {
            ("-h" | "--help", _) => {
                print!("{USAGE}");
                return 0;
            }
            (_, Some(v)) => v,
            (flag, None) => return usage(&format!("{flag} needs a value")),
        };
        match arg.as_str() {
            "--ca" => ca = Some(PathBuf::from(value)),
            "--join-token-file" => tokens = Some(PathBuf::from(value)),
            "--listen" => match value.parse() {
                Ok(a) => listen = a,
                Err(e) => return usage(&format!("--listen {value:?}: {e}")),
            },
            "--cert-ttl" => match weft_api::duration::parse_duration(value) {
                Ok(d) => ttl = d,
                Err(e) => return usage(&format!("--cert-ttl: {e}")),
            },
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let (Some(ca), Some(tokens)) = (ca, tokens) else {
        return usage("--ca and --join-token-file are required");
    };
    let issuer = match Authority::load(&ca).and_then(|a| JoinTokens::load(&tokens).and_then(|t| Issuer::new(a, t, ttl)))
    {
        Ok(i) => Arc::new(i),
        Err(e) => {
            eprintln!("weft serve: {e}");
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft serve: cannot start the runtime: {e}");
            return 1;
        }
    };
    rt.block_on(serve(issuer, listen))
}

fn usage(msg: &str) -> u8 {
    eprintln!("weft serve: {msg}\n\n{USAGE}");
    2
}

async fn serve(issuer: Arc<Issuer>, listen: SocketAddr) -> u8 {
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("weft serve: cannot listen on {listen}: {e}");
            return 1;
        }
    };
    eprintln!("weft serve: signing certificates on http://{listen}{CERTIFICATES_PATH}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let issuer = issuer.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let issuer = issuer.clone();
                        async move { Ok::<_, Infallible>(route(&issuer, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
            _ = tokio::signal::ctrl_c() => return 0,
        }
    }
}

async fn route(issuer: &Issuer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == CERTIFICATES_PATH {
        return crate::ca::http::handle(issuer, req).await;
    }
    let mut resp =
        Response::new(Full::new(Bytes::from_static(b"not found; this control plane serves POST /v1/certificates\n")));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}
