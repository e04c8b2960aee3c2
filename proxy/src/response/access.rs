//! The access log (`log.accessLog: true`): one line per request, written once its response
//! has been sent, so it can say how many body bytes went back. None of this runs while the
//! access log is off.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};

use super::body::RespBody;
use super::errors::ERROR_HEADER;
use crate::http::body::BoxError;
use crate::http::headers;
use crate::routing::Rule;

/// The upstream a forwarded response came from, put in the response's extensions for the
/// access log (only while it is on).
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    /// The backend service the rule chose (differs from the route's service on a split).
    pub backend: Arc<str>,
    /// The endpoint of the last try; `None` when no endpoint was tried.
    pub endpoint: Option<SocketAddr>,
}

/// Notes `upstream` in `resp` when the access log is on (one relaxed load when it is off).
pub(crate) fn note_upstream(resp: &mut Response<RespBody>, backend: &Arc<str>, endpoint: Option<SocketAddr>) {
    if crate::logging::access_log_enabled() {
        resp.extensions_mut().insert(Upstream { backend: backend.clone(), endpoint });
    }
}

/// What is known of a request when it is routed; completed when its response ends.
pub(crate) struct AccessLine {
    direction: &'static str,
    peer: SocketAddr,
    /// The caller's verified SPIFFE id (inbound mutual TLS).
    caller: Option<Arc<str>>,
    method: http::Method,
    host: Option<Box<str>>,
    /// The request target in origin form (path and query) on every side: an HTTP/2 request
    /// from a peer proxy, or an absolute-form proxy request, carries a full URI.
    path: Box<str>,
    service: Option<Arc<str>>,
    route: Option<Arc<str>>,
    started: Instant,
    // Set once the response head is known.
    status: u16,
    proxy_error: Option<http::HeaderValue>,
    upstream: Option<Upstream>,
    head_micros: u64,
}

impl AccessLine {
    pub(crate) fn new<B>(
        direction: &'static str,
        peer: SocketAddr,
        caller: Option<Arc<str>>,
        req: &Request<B>,
        rule: Option<&Rule>,
        started: Instant,
    ) -> AccessLine {
        let uri = req.uri();
        let path = uri.path_and_query().map_or_else(|| uri.path(), |p| p.as_str());
        AccessLine {
            direction,
            peer,
            caller,
            method: req.method().clone(),
            host: headers::request_host(req).map(Into::into),
            path: path.into(),
            service: rule.map(|r| r.service().clone()),
            route: rule.map(|r| r.route.clone()),
            started,
            status: 0,
            proxy_error: None,
            upstream: None,
            head_micros: 0,
        }
    }

    /// Completes the line with the response head, and writes it once the body has been sent
    /// (at once for a body the proxy made itself, whose length is known).
    pub(crate) fn finish(mut self, mut resp: Response<RespBody>) -> Response<RespBody> {
        self.status = resp.status().as_u16();
        self.proxy_error = resp.headers().get(ERROR_HEADER).cloned();
        self.upstream = resp.extensions_mut().remove::<Upstream>();
        self.head_micros = self.started.elapsed().as_micros() as u64;
        if let RespBody::Full(data) = resp.body() {
            self.write(data.as_ref().map_or(0, |d| d.len() as u64), true);
            return resp;
        }
        resp.map(|inner| RespBody::Logged(Box::new(LoggedBody { inner, bytes: 0, ended: false, line: Some(self) })))
    }

    fn write(&self, bytes: u64, complete: bool) {
        let upstream = self.upstream.as_ref();
        tracing::info!(
            target: "access",
            direction = self.direction,
            peer = %self.peer,
            caller = self.caller.as_deref(),
            method = %self.method,
            host = self.host.as_deref(),
            path = &*self.path,
            service = self.service.as_deref(),
            route = self.route.as_deref(),
            backend = upstream.map(|u| &*u.backend),
            endpoint = upstream.and_then(|u| u.endpoint).map(tracing::field::display),
            status = self.status,
            proxy_error = self.proxy_error.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            micros = self.head_micros,
            response_bytes = bytes,
            complete,
        );
    }
}

/// A forwarded response body that counts the bytes sent and writes the access line when it
/// ends or is dropped (the client went away, or the upstream broke off).
pub(crate) struct LoggedBody {
    inner: RespBody,
    bytes: u64,
    ended: bool,
    line: Option<AccessLine>,
}

impl LoggedBody {
    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if frame.is_trailers() {
                    self.ended = true;
                }
            }
            Poll::Ready(None) => self.ended = true,
            _ => {}
        }
        polled
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            line.write(self.bytes, self.ended || self.inner.is_end_stream());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    /// Runs `f` with a subscriber that writes the access lines as JSON into the returned text.
    fn capture(f: impl FnOnce()) -> String {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || SharedBuf(writer.clone()))
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(out.lock().unwrap().clone()).unwrap()
    }

    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn fields(text: &str) -> Vec<serde_json::Value> {
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["fields"].clone()).collect()
    }

    fn line(uri: &str, caller: Option<&str>) -> AccessLine {
        let req = Request::get(uri).header("host", "ignored").body(()).unwrap();
        let peer = SocketAddr::from(([127, 0, 0, 1], 5000));
        AccessLine::new("inbound", peer, caller.map(Arc::from), &req, None, Instant::now())
    }

    #[test]
    fn an_absolute_uri_is_logged_as_its_path_like_an_origin_form_one() {
        let text = capture(|| {
            for uri in ["http://payments.shop:8080/v1/pay?id=7", "/v1/pay?id=7"] {
                drop(line(uri, None).finish(Response::new(RespBody::full("ok"))));
            }
        });
        let lines = fields(&text);
        assert_eq!(lines.len(), 2, "{text}");
        for l in &lines {
            assert_eq!(l["path"], "/v1/pay?id=7", "{l}");
        }
        assert_eq!(lines[0]["host"], "payments.shop", "the authority, without the port: {}", lines[0]);
        assert_eq!(lines[1]["host"], "ignored", "the Host header: {}", lines[1]);
        assert!(lines[0].get("uri").is_none(), "{}", lines[0]);
    }

    #[tokio::test]
    async fn a_forwarded_body_is_counted_and_logged_once_when_it_ends() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || SharedBuf(writer.clone())).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let mut resp = Response::new(RespBody::full("hello, world"));
        let upstream = Upstream { backend: "payments-v2".into(), endpoint: Some(([10, 0, 0, 7], 4143).into()) };
        resp.extensions_mut().insert(upstream);
        // As `finish` leaves a streamed body: wrapped, the line not written yet.
        let mut line = line("/x", Some("spiffe://cluster.local/ns/shop/sa/web"));
        line.status = 200;
        line.upstream = resp.extensions_mut().remove::<Upstream>();
        let body = RespBody::Logged(Box::new(LoggedBody {
            inner: resp.into_body(),
            bytes: 0,
            ended: false,
            line: Some(line),
        }));
        assert!(out.lock().unwrap().is_empty(), "nothing before the body is sent");
        let sent = body.collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"hello, world");
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines = fields(&text);
        assert_eq!(lines.len(), 1, "{text}");
        let l = &lines[0];
        assert_eq!(l["response_bytes"], 12, "{l}");
        assert_eq!(l["complete"], true, "{l}");
        assert_eq!(l["backend"], "payments-v2", "{l}");
        assert_eq!(l["endpoint"], "10.0.0.7:4143", "{l}");
        assert_eq!(l["caller"], "spiffe://cluster.local/ns/shop/sa/web", "{l}");
        assert_eq!(l["status"], 200, "{l}");
    }
}
