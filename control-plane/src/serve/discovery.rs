//! The discovery listener: `GET /v1/watch` (a stream of newline-delimited JSON that also
//! self-registers the proxy), `POST /v1/ack`, `POST /v1/leave` and the CA's
//! `POST /v1/certificates`. TLS (the control plane's own certificate; client certificates
//! name the caller) or, from loopback, plaintext; HTTP/2 or HTTP/1.1 either way.
//!
//! Over TLS a watch, ack or leave needs the proxy's mesh certificate: a proxy watches only as
//! the service its SPIFFE id names, and acks or leaves only streams it opened itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Interval, Sleep};
use weft_api::EndpointSpec;
use weft_api::discovery::{Ack, Leave, TrafficReport, WatchMessage, WatchRequest};

use super::catalog::{Catalog, Item, Subscriber};
use super::policy::service_key;
use super::registry::self_registration::{Registration, SelfRegistration};
use super::tls::{Accept, Caller, HANDSHAKE_TIMEOUT, ServingTls, Transport, classify};
use super::watch_limit::{WatchLimit, WatchPermit};

pub type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// Every route of the discovery listener: path, name (the `route` label of
/// `weft_control_requests_refused_total`) and method.
static ROUTES: [(&str, &str, Method); 6] = [
    ("/v1/watch", "watch", Method::GET),
    ("/v1/ack", "ack", Method::POST),
    ("/v1/leave", "leave", Method::POST),
    ("/v1/report", "report", Method::POST),
    ("/v1/admission", "admission", Method::POST),
    (crate::ca::http::CERTIFICATES_PATH, "certificates", Method::POST),
];

/// Largest ack, leave or report body accepted.
const MAX_POST_BYTES: usize = 256 * 1024;
/// Largest AdmissionReview accepted (the API server sends the whole pod; 3 MiB is etcd's
/// object limit).
const MAX_ADMISSION_BYTES: usize = 3 * 1024 * 1024;

pub struct Discovery {
    pub catalog: Arc<Catalog>,
    pub self_registration: Arc<SelfRegistration>,
    /// Idle streams get a heartbeat line this often, and HTTP/2 connections a PING that must be
    /// answered within as long: a proxy that vanished without closing its connection (a frozen
    /// process, a lost host) loses its stream, and so its registration, within two periods.
    pub heartbeat: Duration,
    /// Signs proxies' CSRs on `POST /v1/certificates` when `weft serve --ca` is given.
    pub issuer: Option<Arc<crate::ca::Issuer>>,
    /// Checks Kubernetes service-account tokens for the CA (with `--ca` and `--kubernetes`).
    pub token_review: Option<crate::ca::TokenReviewer>,
    /// TLS with the control plane's own certificate (with `--ca`).
    pub tls: Option<Arc<ServingTls>>,
    /// Plaintext from any peer, not only loopback (`--insecure-plaintext`).
    pub insecure_plaintext: bool,
    /// Open watch streams per client (`--max-watches-per-client`).
    pub watch_limit: WatchLimit,
}

pub async fn serve(listener: TcpListener, discovery: Arc<Discovery>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "discovery accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, discovery.clone()));
    }
}

/// One connection: its transport decided by its first byte, then HTTP/1.1 or HTTP/2.
async fn connection(stream: TcpStream, peer: SocketAddr, discovery: Arc<Discovery>) {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return,
    }
    match classify(first[0], peer, discovery.tls.is_some(), discovery.insecure_plaintext) {
        Accept::Tls => {
            let tls = discovery.tls.clone().expect("classified as TLS only with a TLS config");
            match tls.accept(stream).await {
                Ok((stream, id)) => {
                    let caller = Caller { peer, transport: Transport::Tls(id) };
                    serve_http(TokioIo::new(stream), caller, discovery).await
                }
                Err(e) => tracing::warn!(%peer, error = %e, "discovery connection refused"),
            }
        }
        Accept::Plain => {
            serve_http(TokioIo::new(stream), Caller { peer, transport: Transport::Plain }, discovery).await
        }
        Accept::Refuse(why) => {
            discovery.catalog.metrics.refused.with_label_values(&["connection", "plaintext"]).inc();
            tracing::warn!(%peer, "discovery connection refused: {why}");
            let mut stream = stream;
            let body = format!("this control plane refused the connection: {why}\n");
            let answer = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
        }
    }
}

async fn serve_http<I>(io: TokioIo<I>, caller: Caller, discovery: Arc<Discovery>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let heartbeat = discovery.heartbeat;
    let peer = caller.peer;
    let svc = service_fn(move |req| {
        let discovery = discovery.clone();
        let caller = caller.clone();
        async move { Ok::<_, Infallible>(discovery.route(&caller, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(heartbeat)).keep_alive_timeout(heartbeat);
    // Without a timer hyper applies no header deadline: a client that sends half a request
    // head would hold its connection (and a descriptor) forever.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
    if let Err(e) = builder.serve_connection(io, svc).await {
        tracing::debug!(%peer, error = %e, "discovery connection ended");
    }
}

pub fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

impl Discovery {
    async fn route(&self, caller: &Caller, req: Request<Incoming>) -> Response<ResponseBody> {
        let Some((_, route, method)) = ROUTES.iter().find(|(path, ..)| *path == req.uri().path()) else {
            return self.refuse(caller, "other", Refusal::NotFound);
        };
        // The CA's route answers a wrong method itself, counted with the certificates.
        if req.method() != method && *route != "certificates" {
            return self.refuse(caller, route, Refusal::WrongMethod(method));
        }
        match *route {
            "watch" => self.watch(caller, req.uri().query().unwrap_or("")),
            "ack" => match self.read_json::<Ack>(caller, route, req).await {
                Ok(ack) => match self.stream_of(caller, "ack", &ack.session) {
                    Ok(_) if self.catalog.ack(&ack.session, ack.version, ack.cert_not_after) => {
                        full(StatusCode::NO_CONTENT, "")
                    }
                    Ok(_) => full(StatusCode::NOT_FOUND, "no such open stream; reconnect\n"),
                    Err(resp) => *resp,
                },
                Err(resp) => resp,
            },
            "leave" => match self.read_json::<Leave>(caller, route, req).await {
                Ok(leave) => match self.stream_of(caller, "leave", &leave.session) {
                    Ok(sub) => {
                        if let Some(addr) = sub.address {
                            tracing::info!(service = %sub.self_key, %addr, "proxy left (draining)");
                            self.self_registration.leave(&sub.self_key, addr);
                        }
                        full(StatusCode::NO_CONTENT, "")
                    }
                    Err(resp) => *resp,
                },
                Err(resp) => resp,
            },
            "report" => match self.read_json::<TrafficReport>(caller, route, req).await {
                Ok(report) => match self.stream_of(caller, "report", &report.session) {
                    Ok(sub) => {
                        self.catalog.report(&sub, report);
                        full(StatusCode::NO_CONTENT, "")
                    }
                    Err(resp) => *resp,
                },
                Err(resp) => resp,
            },
            // The Kubernetes API server calls with no client certificate; injecting a pod
            // grants nothing (the pod still needs its own credential for a certificate).
            "admission" => match self.read_body(caller, route, req, MAX_ADMISSION_BYTES).await {
                Ok(body) => match crate::inject::admission::review(&body, &crate::inject::Options::default()) {
                    Ok(review) => {
                        let mut r = full(StatusCode::OK, review.to_string());
                        r.headers_mut()
                            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                        r
                    }
                    Err(e) => self.refuse(caller, route, Refusal::BadRequest(format!("/v1/admission: {e}"))),
                },
                Err(resp) => resp,
            },
            _ => match &self.issuer {
                Some(issuer) => {
                    let review = self.token_review.as_ref();
                    crate::ca::http::handle(issuer, review, &self.catalog.metrics, caller.peer, req)
                        .await
                        .map(|b| b.boxed_unsync())
                }
                None => full(
                    StatusCode::NOT_FOUND,
                    "this control plane does not sign certificates; start it with --ca DIR --join-token-file FILE\n",
                ),
            },
        }
    }

    /// The open stream `session` names, if `caller` may act on it: over TLS only the identity
    /// that opened it may; on plaintext the secret session id is the credential.
    fn stream_of(
        &self,
        caller: &Caller,
        route: &str,
        session: &str,
    ) -> Result<Arc<Subscriber>, Box<Response<ResponseBody>>> {
        let caller_id = match &caller.transport {
            Transport::Tls(None) => return Err(Box::new(self.refuse(caller, route, Refusal::NoCertificate))),
            Transport::Tls(Some(id)) => Some(id.to_string()),
            Transport::Plain => None,
        };
        let Some(sub) = self.catalog.subscriber(session) else {
            return Err(Box::new(full(StatusCode::NOT_FOUND, "no such open stream; reconnect\n")));
        };
        if caller_id.is_some() && caller_id != sub.identity {
            return Err(Box::new(self.refuse(caller, route, Refusal::OtherIdentity)));
        }
        Ok(sub)
    }

    /// Answers with the refusal's status, counts it, and logs who was refused.
    fn refuse(&self, caller: &Caller, route: &str, why: Refusal) -> Response<ResponseBody> {
        let (status, reason, message) = match why {
            Refusal::NoCertificate => (
                StatusCode::UNAUTHORIZED,
                "no-client-certificate",
                "present this proxy's mesh certificate (mutual TLS); a proxy without one may only request a certificate"
                    .to_string(),
            ),
            Refusal::OtherIdentity => (
                StatusCode::FORBIDDEN,
                "other-identity",
                "a proxy may act only as the identity its certificate names".to_string(),
            ),
            Refusal::TooManyWatches(max) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-watches",
                format!("this client already holds {max} open watch streams (weft serve --max-watches-per-client)"),
            ),
            Refusal::TooLarge(max) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too-large", format!("the body is larger than {max} bytes"))
            }
            Refusal::BadRequest(message) => (StatusCode::BAD_REQUEST, "bad-request", message),
            Refusal::WrongMethod(method) => {
                let mut r = full(StatusCode::METHOD_NOT_ALLOWED, format!("use {method} on this path\n"));
                r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(method.as_str()));
                self.catalog.metrics.refused.with_label_values(&[route, "wrong-method"]).inc();
                return r;
            }
            Refusal::NotFound => {
                self.catalog.metrics.refused.with_label_values(&[route, "not-found"]).inc();
                let paths: Vec<String> = ROUTES.iter().map(|(path, _, method)| format!("{method} {path}")).collect();
                return full(StatusCode::NOT_FOUND, format!("not found; the discovery API is {}\n", paths.join(", ")));
            }
        };
        self.catalog.metrics.refused.with_label_values(&[route, reason]).inc();
        let id = match &caller.transport {
            Transport::Tls(Some(id)) => id.to_string(),
            _ => "none".to_string(),
        };
        tracing::warn!(peer = %caller.peer, caller = %id, route, reason, "discovery request refused");
        full(status, format!("{message}\n"))
    }

    fn watch(&self, caller: &Caller, query: &str) -> Response<ResponseBody> {
        let mut req = match WatchRequest::from_query(query) {
            Ok(r) => r,
            Err(e) => return self.refuse(caller, "watch", Refusal::BadRequest(format!("/v1/watch: {e}"))),
        };
        let peer = caller.peer;
        let key = match (req.service.split_once('.'), &req.namespace) {
            (Some(_), _) => req.service.clone(),
            (None, Some(ns)) => service_key(&req.service, ns),
            (None, None) => service_key(&req.service, weft_api::DEFAULT_NAMESPACE),
        };
        // Over TLS the certificate says who is watching: the service is its service account in
        // its namespace, and the instance it registers is reached under that same id.
        let caller_id = match &caller.transport {
            Transport::Tls(None) => return self.refuse(caller, "watch", Refusal::NoCertificate),
            Transport::Tls(Some(id)) => {
                if key != service_key(id.service_account(), id.namespace())
                    || req.identity.as_ref().is_some_and(|i| *i != id.to_string())
                {
                    return self.refuse(caller, "watch", Refusal::OtherIdentity);
                }
                req.identity = Some(id.to_string());
                Some(id.to_string())
            }
            Transport::Plain => None,
        };
        // Plaintext from loopback is the operator's own tooling (`weft demo`, benchmarks that
        // play many proxies): not limited.
        let permit = if caller.transport == Transport::Plain && peer.ip().is_loopback() {
            None
        } else {
            match self.watch_limit.acquire((peer.ip(), caller_id.clone())) {
                Some(permit) => Some(permit),
                None => return self.refuse(caller, "watch", Refusal::TooManyWatches(self.watch_limit.max())),
            }
        };
        // An instance listening on every interface is reached at the address it called from.
        let address =
            req.address.map(|a| if a.ip().is_unspecified() { SocketAddr::new(peer.ip(), a.port()) } else { a });
        let name = req.name.clone().unwrap_or_else(|| match address {
            Some(a) => format!("{key}@{a}"),
            None => format!("{key}@{peer}"),
        });
        let (sub, rx) = self.catalog.subscribe_as(key.clone(), name, address, caller_id);
        tracing::info!(stream = %sub.public_id, proxy = %sub.name, identity = ?sub.identity, "watch stream opened");
        let registration = address.map(|a| {
            self.self_registration
                .register(&key, EndpointSpec { address: a, weight: 1, identity: req.identity.clone() })
        });
        let warm_at = self.catalog.warm_at();
        let warmup = (warm_at > tokio::time::Instant::now().into_std())
            .then(|| Box::pin(tokio::time::sleep_until(warm_at.into())));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let body = WatchBody {
            catalog: self.catalog.clone(),
            sub,
            rx,
            started: false,
            warmup,
            heartbeat,
            _registration: registration,
            _permit: permit,
        };
        let mut r = Response::new(body.boxed_unsync());
        r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
        r
    }
}

/// Why a caller may not do what it asked.
enum Refusal {
    /// Over TLS without a client certificate.
    NoCertificate,
    /// A certificate for another proxy than the one asked about.
    OtherIdentity,
    /// The client holds the most watch streams it may (the limit).
    TooManyWatches(usize),
    /// A body over the route's limit (in bytes); no more than that was read.
    TooLarge(usize),
    /// A body or query that does not parse; the message says what is wrong.
    BadRequest(String),
    /// A known path with another method than its own.
    WrongMethod(&'static Method),
    NotFound,
}

impl Discovery {
    /// A whole request body of at most `max` bytes: a larger one is refused (413) once `max`
    /// bytes have been read, without reading the rest.
    async fn read_body(
        &self,
        caller: &Caller,
        route: &str,
        req: Request<Incoming>,
        max: usize,
    ) -> Result<Bytes, Response<ResponseBody>> {
        match Limited::new(req.into_body(), max).collect().await {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<LengthLimitError>() => Err(self.refuse(caller, route, Refusal::TooLarge(max))),
            Err(e) => Err(self.refuse(caller, route, Refusal::BadRequest(format!("cannot read the body: {e}")))),
        }
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        caller: &Caller,
        route: &str,
        req: Request<Incoming>,
    ) -> Result<T, Response<ResponseBody>> {
        let body = self.read_body(caller, route, req, MAX_POST_BYTES).await?;
        serde_json::from_slice(&body)
            .map_err(|e| self.refuse(caller, route, Refusal::BadRequest(format!("invalid JSON body: {e}"))))
    }
}

/// The response body of one watch stream: pulls lines from the stream's queue as fast as the
/// connection takes them. Dropping it (the proxy went away) closes the subscription and
/// starts the registration's grace period.
struct WatchBody {
    catalog: Arc<Catalog>,
    sub: Arc<Subscriber>,
    rx: mpsc::Receiver<Item>,
    started: bool,
    warmup: Option<Pin<Box<Sleep>>>,
    heartbeat: Interval,
    _registration: Option<Registration>,
    _permit: Option<WatchPermit>,
}

impl WatchBody {
    fn snapshot(&mut self, timed: bool) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        // Everything queued so far is older than the snapshot about to be built.
        while self.rx.try_recv().is_ok() {}
        let bytes = self.catalog.snapshot_for(&self.sub, timed);
        self.heartbeat.reset();
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if !this.started {
            if let Some(w) = &mut this.warmup {
                if w.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.warmup = None;
            }
            this.started = true;
            this.sub.take_resync();
            return this.snapshot(false);
        }
        loop {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => {
                    if this.sub.take_resync() {
                        return this.snapshot(true);
                    }
                    if let Item::Line { version, bytes, published } = item
                        && this.sub.accept(version, Some(published))
                    {
                        this.heartbeat.reset();
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if this.heartbeat.poll_tick(cx).is_ready() {
                        let line = WatchMessage::Heartbeat { version: this.sub.sent_version() }.to_line();
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for WatchBody {
    fn drop(&mut self) {
        tracing::info!(stream = %self.sub.public_id, proxy = %self.sub.name, "watch stream closed");
        self.catalog.unsubscribe(&self.sub.session);
    }
}
