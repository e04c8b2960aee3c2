//! Forwards one request to a backend service: concurrency limit, replayable body, tries with
//! load balancing, outlier reporting, retries within the budget, and the route timeout.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header;
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::balance::{InFlight, PickError};
use crate::clock;
use crate::connect::{self, Conn};
use crate::http::body::{BoxError, ClientBody, MAX_REPLAY_BYTES, ReqBody};
use crate::http::headers;
use crate::metrics::RouteMetrics;
use crate::response::access;
use crate::response::body::{BodyEnd, BodyOutcome, Record, RespBody, UpstreamBody};
use crate::response::errors::ProxyError;
use crate::routing::{Backend, Rule};
use crate::target::Cluster;

fn record(metrics: &RouteMetrics, status: u16, grpc_failed: bool, started: Instant) {
    metrics.record(status, grpc_failed, started.elapsed().as_secs_f64());
}

/// How many times one try sends a request again after HTTP/2 streams refused unprocessed.
const MAX_REFUSALS: u8 = 2;

/// A reused HTTP/1.1 connection closed without a response within this long of the try's start
/// was most likely closed by the upstream as the request went out (see `try_endpoint`).
const KEEP_ALIVE_RACE: std::time::Duration = std::time::Duration::from_millis(250);

/// How far a request got on a connection that gave it back unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// None of it reached the upstream: the connection could take no new request.
    NotSent,
    /// It was written, and the connection closed before any byte of a response (HTTP/1.1).
    Unanswered,
}

/// Where a try's connection came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    Pooled,
    New,
}

/// What becomes of a request its connection gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// At once, on a new connection to the same endpoint; not counted as a retry.
    FreshConnection,
    /// Intact, so it may go to another endpoint as after a connect failure, any method.
    Elsewhere,
    /// It may have been acted on: the try failed.
    No,
}

/// Whether a request given back after `since_try` is sent again. Only a request that never
/// reached the upstream is certainly unprocessed (a POST may go again only then); one that
/// was written and met a close is the keep-alive race (the upstream closed the idle
/// connection as the request went out) or the upstream failing it, so only an idempotent
/// one goes again, and only when the close came at once.
fn resend(delivery: Delivery, origin: Origin, idempotent: bool, since_try: std::time::Duration) -> Resend {
    match (delivery, origin) {
        (Delivery::NotSent, Origin::Pooled) => Resend::FreshConnection,
        (Delivery::NotSent, Origin::New) => Resend::Elsewhere,
        (Delivery::Unanswered, Origin::Pooled) if idempotent && since_try < KEEP_ALIVE_RACE => Resend::FreshConnection,
        (Delivery::Unanswered, _) => Resend::No,
    }
}

/// Connect failures are retried on other endpoints at least this often, whatever the route
/// says: nothing reached the upstream, so a retry cannot duplicate anything.
const CONNECT_RETRIES: u32 = 2;

/// What one try produced when it did not produce a response.
enum TryFailure {
    /// No connection could be made; the request is intact.
    Connect(Request<ReqBody>, connect::ConnectError),
    /// The request was (maybe partly) sent and the connection or stream broke.
    Reset(BoxError),
    /// The per-try timeout fired.
    Timeout,
    /// Too many requests are already waiting for connections to this service.
    PendingLimit,
}

impl TryFailure {
    fn ended(&self) -> Ended {
        match self {
            TryFailure::Connect(_, e) => Ended::ConnectFailed { tls: matches!(e, connect::ConnectError::Tls { .. }) },
            TryFailure::Reset(e) if is_body_too_large(e) => Ended::BodyTooLarge,
            TryFailure::Reset(_) => Ended::Reset,
            TryFailure::Timeout => Ended::TryTimeout,
            TryFailure::PendingLimit => Ended::PendingLimit,
        }
    }
}

/// How a try ended, as far as the choice after it is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The upstream answered with this status.
    Answered(u16),
    /// No connection could be made (`tls`: the TLS handshake with the peer proxy failed).
    ConnectFailed { tls: bool },
    /// The connection or stream broke after (some of) the request went out.
    Reset,
    /// The client's streamed body went past `maxBodyBytes`: not the upstream's fault.
    BodyTooLarge,
    /// The per-try timeout fired (the route's own deadline ends the request before this).
    TryTimeout,
    /// Too many requests already wait for connections to the service.
    PendingLimit,
}

/// Why a request is tried again: the retry counter it bumps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RetryReason {
    Status,
    Connect,
    Reset,
    Timeout,
}

impl RetryReason {
    fn counter(self, metrics: &crate::metrics::ServiceMetrics) -> &prometheus::IntCounter {
        match self {
            RetryReason::Status => &metrics.retries_5xx,
            RetryReason::Connect => &metrics.retries_connect,
            RetryReason::Reset => &metrics.retries_reset,
            RetryReason::Timeout => &metrics.retries_timeout,
        }
    }
}

/// The choice after one try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Choice {
    /// The try counts against the endpoint for outlier detection and the balancer.
    blame: bool,
    /// Try again, if the attempts so far are under this limit and the service's retry budget
    /// allows.
    retry: Option<(RetryReason, u32)>,
    /// Without a retry, the client's answer: this error, or (`None`) the upstream's response.
    error: Option<ProxyError>,
}

/// Decides what follows a try that ended as `ended`, under the route's `retry` policy;
/// `replayable`: the request can be sent again whole (its body was buffered). Synchronous
/// and without effects: `forward` does what it says (the table is in the tests).
fn after_try(ended: Ended, retry: &crate::routing::Retry, replayable: bool) -> Choice {
    let fail = |blame, e| Choice { blame, retry: None, error: Some(e) };
    let again = |reason, limit, e| Choice { blame: true, retry: Some((reason, limit)), error: Some(e) };
    match ended {
        Ended::Answered(status) if status < 500 => Choice { blame: false, retry: None, error: None },
        Ended::Answered(status) => Choice {
            blame: true,
            retry: (retry.on_status(status) && replayable).then_some((RetryReason::Status, retry.attempts)),
            error: None,
        },
        // Nothing was sent, so any method may go to another endpoint, and at least twice.
        Ended::ConnectFailed { tls } => again(
            RetryReason::Connect,
            retry.attempts.max(CONNECT_RETRIES),
            if tls { ProxyError::TlsFailed } else { ProxyError::ConnectFailed },
        ),
        Ended::Reset if retry.on_reset && replayable => {
            again(RetryReason::Reset, retry.attempts, ProxyError::UpstreamReset)
        }
        Ended::Reset => fail(true, ProxyError::UpstreamReset),
        Ended::BodyTooLarge => fail(false, ProxyError::BodyTooLarge),
        Ended::TryTimeout if retry.on_timeout && replayable => {
            again(RetryReason::Timeout, retry.attempts, ProxyError::Timeout)
        }
        Ended::TryTimeout => fail(true, ProxyError::Timeout),
        Ended::PendingLimit => fail(false, ProxyError::PendingLimit),
    }
}

/// Forwards `req` according to `rule` and returns the response to send to the client.
/// `started` is when the proxy received the request (for the duration metric, and the clock
/// reading the first try uses for the budget, the pick, the endpoint's latency and pool
/// expiry; later tries read the clock again).
///
/// Rule: all of it runs in this one async fn. Awaiting another async fn moves that fn's whole
/// future into this one's, and a timeout around it once more; the route's deadline bounds
/// each wait instead.
pub(crate) async fn forward(
    rule: Arc<Rule>,
    req: Request<ClientBody>,
    started: Instant,
    max_body: u64,
) -> Response<RespBody> {
    let backend = rule.pick_backend();
    let cluster = &backend.cluster;
    let Some(permit) = cluster.shared.limit.try_acquire() else {
        tracing::warn!(service = %cluster.name, limit = cluster.policy.limits.max_concurrent_requests,
            "rejected: too many requests in flight to the service; raise limits.maxConcurrentRequests or add capacity");
        return finish_error(backend, ProxyError::ConcurrencyLimit, started);
    };
    let deadline = rule.timeout.map(|t| started + t);
    let shared = &cluster.shared;
    shared.budget.deposit_at(clock::nanos_at(started));
    let prepared = match prepare(&rule, cluster, req, max_body) {
        Ok(p) => p,
        Err(e) => return finish_error(backend, e, started),
    };
    // Reading a replayable body takes as long as the client sends it: the clock is read again.
    let (first_at, (req, replay)) = match prepared {
        Prepared::Ready(ready) => (started, ready),
        Prepared::Collect(parts, body) => {
            let collecting = Box::pin(collect(cluster, parts, body));
            let ready = match deadline {
                None => collecting.await,
                Some(d) => tokio::time::timeout_at(d.into(), collecting).await.unwrap_or(Err(ProxyError::Timeout)),
            };
            match ready {
                Ok(ready) => (Instant::now(), ready),
                Err(e) => return finish_error(backend, e, started),
            }
        }
    };
    let mut pending: Option<Request<ReqBody>> = Some(req);
    let mut tried = [usize::MAX; 8];
    let mut tries = 0usize;
    let mut retries = 0u32;
    let mut last_error = ProxyError::ConnectFailed;
    let failed = loop {
        let req = match pending.take() {
            Some(r) => r,
            None => match &replay {
                Some(head) => head.build(),
                None => break last_error,
            },
        };
        let try_at = if tries == 0 { first_at } else { Instant::now() };
        let now = clock::nanos_at(try_at);
        let idx = match cluster.set.pick_at(&tried[..tries.min(tried.len())], now) {
            Ok(i) => i,
            Err(PickError::NoEndpoints) => break ProxyError::NoEndpoints,
            Err(PickError::AllEjected) => break ProxyError::CircuitOpen,
        };
        if tries < tried.len() {
            tried[tries] = idx;
        }
        tries += 1;
        let endpoint = &cluster.set.endpoints()[idx];
        let guard = endpoint.start_at(now);
        let identity = endpoint.identity.as_ref();
        // The try ends at its own timeout or at the route's deadline, whichever comes first.
        let ends_at = match (rule.retry.per_try_timeout, deadline) {
            (None, d) => d,
            (Some(t), None) => Some(try_at + t),
            (Some(t), Some(d)) => Some((try_at + t).min(d)),
        };
        let outcome = match ends_at {
            None => try_endpoint(cluster, endpoint.addr, identity, req, replay.as_deref(), try_at).await,
            Some(at) => {
                match tokio::time::timeout_at(
                    at.into(),
                    try_endpoint(cluster, endpoint.addr, identity, req, replay.as_deref(), try_at),
                )
                .await
                {
                    Ok(outcome) => outcome,
                    // The route's deadline: no time is left for another try.
                    Err(_) if Some(at) == deadline => {
                        drop(guard);
                        break ProxyError::Timeout;
                    }
                    Err(_) => Err(TryFailure::Timeout),
                }
            }
        };
        let ended = match &outcome {
            Ok(resp) => Ended::Answered(resp.status().as_u16()),
            Err(failure) => failure.ended(),
        };
        let choice = after_try(ended, &rule.retry, replay.is_some());
        let resp = match outcome {
            // A status below 500: the endpoint did its job, though its health waits for the body.
            Ok(resp) if !choice.blame => {
                let at = Instant::now();
                let head_at = clock::nanos_at(at);
                let endpoint = cluster.set.on_head_at(guard, head_at);
                let addr = endpoint.addr;
                let outcome = BodyOutcome::new(Arc::clone(cluster), endpoint, head_at);
                return respond(backend, addr, resp, permit, started, at, Some(outcome));
            }
            Ok(resp) => Some(resp),
            Err(TryFailure::Connect(req, e)) => {
                tracing::warn!(service = %cluster.name, endpoint = %endpoint.addr, error = %e, "connect failed; trying another endpoint");
                pending = Some(req);
                None
            }
            Err(TryFailure::Reset(e)) => {
                tracing::debug!(service = %cluster.name, endpoint = %endpoint.addr, error = %e, "upstream connection broke");
                None
            }
            Err(TryFailure::PendingLimit) => {
                tracing::warn!(service = %cluster.name, limit = cluster.policy.limits.max_pending_requests,
                    "rejected: too many requests waiting for connections; raise limits.maxPendingRequests or add capacity");
                None
            }
            Err(TryFailure::Timeout) => None,
        };
        if choice.blame {
            report_failure(cluster, idx, guard);
        } else {
            drop(guard);
        }
        let retry = choice.retry.filter(|&(_, limit)| may_retry(cluster, retries, limit));
        let Some((reason, _)) = retry else {
            match resp {
                // Without a retry left, the backend's own answer is the client's answer.
                Some(resp) => return respond(backend, endpoint.addr, resp, permit, started, Instant::now(), None),
                None => break choice.error.unwrap_or(last_error),
            }
        };
        last_error = choice.error.unwrap_or(last_error);
        // Dropping a response closes its connection rather than reading a body we discard.
        drop(resp);
        retries += 1;
        reason.counter(&shared.metrics).inc();
        if !backoff(&rule, retries, deadline).await {
            break ProxyError::Timeout;
        }
    };
    // The endpoint of the last try, for the access log (`tried` keeps the first eight).
    let last = tries.checked_sub(1).map(|t| cluster.set.endpoints()[tried[t.min(tried.len() - 1)]].addr);
    finish_error_at(backend, last, failed, started)
}

/// The client's response from the upstream's: observes its latency at the head, counts it
/// once its body ends (a gRPC call's status arrives in the trailers, and a body the upstream
/// breaks is a failure), and keeps the connection and the concurrency permit until then.
/// `at` is when the upstream's head arrived; `outcome`, when the endpoint's health waits for
/// the body.
fn respond(
    backend: &Backend,
    endpoint: std::net::SocketAddr,
    resp: Response<UpstreamBody>,
    permit: crate::balance::Permit,
    started: Instant,
    at: Instant,
    outcome: Option<BodyOutcome>,
) -> Response<RespBody> {
    let metrics = &backend.metrics;
    let status = resp.status().as_u16();
    let is_grpc = is_grpc_response(&resp);
    let (parts, body) = resp.into_parts();
    let took = at.saturating_duration_since(started).as_secs_f64();
    let record = if is_grpc {
        // Trailers-only gRPC responses carry the status in the headers.
        match parts.headers.get("grpc-status") {
            Some(s) => {
                metrics.record(status, s.as_bytes() != b"0", took);
                None
            }
            None => Some(Record::grpc(metrics.clone(), status, started)),
        }
    } else {
        // The latency is the head's; whether the request succeeded waits for its body.
        metrics.observe(took);
        Some(Record::http(metrics.clone(), status))
    };
    let end = BodyEnd { permit: Some(permit), record, outcome };
    let mut resp = Response::from_parts(parts, RespBody::upstream(body, Some(end)));
    access::note_upstream(&mut resp, metrics.backend(), Some(endpoint));
    resp
}

fn is_grpc_response<B>(resp: &Response<B>) -> bool {
    resp.headers().get(header::CONTENT_TYPE).is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

fn finish_error(backend: &Backend, e: ProxyError, started: Instant) -> Response<RespBody> {
    finish_error_at(backend, None, e, started)
}

/// `finish_error` once `endpoint` was tried.
fn finish_error_at(
    backend: &Backend,
    endpoint: Option<std::net::SocketAddr>,
    e: ProxyError,
    started: Instant,
) -> Response<RespBody> {
    record(&backend.metrics, e.status().as_u16(), false, started);
    let mut resp = e.response();
    access::note_upstream(&mut resp, backend.metrics.backend(), endpoint);
    resp
}

/// Turns the client's request into one the upstream accepts, buffering the body when a retry
/// may need it again. Returns the request and a copy of its head for replays.
///
/// Synchronous unless the body must be buffered: an async fn here was one more future moved
/// into `forward`'s on every request, and its result moved out again.
fn prepare(rule: &Rule, cluster: &Cluster, req: Request<ClientBody>, max_body: u64) -> Result<Prepared, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let declared_len = body.size_hint().exact();
    if max_body > 0 && body.size_hint().lower() > max_body {
        return Err(ProxyError::BodyTooLarge);
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    let replay = rule.retry.needs_replay()
        && headers::is_idempotent(&parts.method)
        && declared_len.is_some_and(|n| n <= MAX_REPLAY_BYTES);
    let body = if body.is_end_stream() {
        ReqBody::Buffered(None)
    } else if let ClientBody::Buffered(whole) = body {
        // Already whole in memory (it came with its head; within `max_body`, checked above):
        // it can go again as it is, to a retry or after a stream the upstream refused.
        ReqBody::Buffered(whole)
    } else if replay {
        return Ok(Prepared::Collect(parts, body));
    } else if max_body > 0 {
        ReqBody::Limited { inner: body, remaining: max_body }
    } else {
        ReqBody::Streaming(body)
    };
    Ok(Prepared::Ready(finish_prepare(cluster, Request::from_parts(parts, body), replay)))
}

enum Prepared {
    Ready((Request<ReqBody>, Option<Box<ReplayHead>>)),
    /// A replayable body to read into memory first.
    Collect(http::request::Parts, ClientBody),
}

/// Reads a replayable body into memory (boxed: rare, and its future is large).
async fn collect(
    cluster: &Cluster,
    parts: http::request::Parts,
    body: ClientBody,
) -> Result<(Request<ReqBody>, Option<Box<ReplayHead>>), ProxyError> {
    let bytes = body.collect().await.map_err(|_| ProxyError::BadRequest)?.to_bytes();
    Ok(finish_prepare(cluster, Request::from_parts(parts, ReqBody::Buffered(Some(bytes))), true))
}

fn finish_prepare(
    cluster: &Cluster,
    mut req: Request<ReqBody>,
    replay: bool,
) -> (Request<ReqBody>, Option<Box<ReplayHead>>) {
    if cluster.protocol.is_h2() {
        headers::to_http2(&mut req, &cluster.authority);
    } else {
        headers::to_http1(&mut req);
    }
    // Boxed: most routes never replay, and inline it would sit in every request's future.
    let head = if replay { Some(Box::new(ReplayHead::of(&req))) } else { None };
    (req, head)
}

/// What is needed to send the same request again.
struct ReplayHead {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
    body: Option<Bytes>,
}

impl ReplayHead {
    fn of(req: &Request<ReqBody>) -> ReplayHead {
        let body = match req.body() {
            ReqBody::Buffered(b) => b.clone(),
            _ => None,
        };
        ReplayHead {
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    fn build(&self) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Buffered(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Whether a send failed because the request body exceeded `maxBodyBytes` while streaming.
fn is_body_too_large(e: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(err) = source {
        if err.is::<crate::http::body::BodyTooLarge>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Whether one more retry is allowed: under the route's attempt limit and within the
/// service's retry budget (which a successful check spends).
fn may_retry(cluster: &Cluster, retries: u32, limit: u32) -> bool {
    if retries >= limit {
        return false;
    }
    if !cluster.shared.budget.try_withdraw() {
        cluster.shared.metrics.budget_exhausted.inc();
        tracing::debug!(service = %cluster.name, "retry budget exhausted; not retrying");
        return false;
    }
    true
}

/// Waits before retry number `retries`; false when the route's deadline comes first.
async fn backoff(rule: &Rule, retries: u32, deadline: Option<Instant>) -> bool {
    let wait = crate::retry::backoff(retries, rule.retry.backoff_base, rule.retry.backoff_max);
    if wait.is_zero() {
        return deadline.is_none_or(|d| Instant::now() < d);
    }
    let until = Instant::now() + wait;
    match deadline {
        Some(d) if d <= until => {
            tokio::time::sleep_until(d.into()).await;
            false
        }
        _ => {
            tokio::time::sleep_until(until.into()).await;
            true
        }
    }
}

/// One try on one endpoint. A pooled connection found closed at checkout is never used (any
/// method), and a request a connection gives back goes again as `resend` decides.
/// `identity` set means a meshed peer proxy: mTLS + HTTP/2 whatever the service's protocol.
/// `try_at` is when the try started, the clock reading pooled connections expire against.
async fn try_endpoint(
    cluster: &Cluster,
    addr: std::net::SocketAddr,
    identity: Option<&Arc<str>>,
    mut req: Request<ReqBody>,
    replay: Option<&ReplayHead>,
    try_at: Instant,
) -> Result<Response<UpstreamBody>, TryFailure> {
    let wire = if cluster.protocol.is_h2() { connect::Wire::Http2 } else { connect::Wire::Http1 };
    let connect_timeout = cluster.policy.connect_timeout;
    let mut reuse = connect::Reuse::Pooled;
    let mut refusals = 0u8;
    let idempotent = headers::is_idempotent(req.method());
    loop {
        let Some(pending) = cluster.shared.pending.try_acquire() else {
            return Err(TryFailure::PendingLimit);
        };
        let conn = match identity {
            Some(id) => crate::tls::connect::checkout(addr, id, connect_timeout, reuse, try_at)
                .await
                .map(|(tx, reused)| Conn::Http2 { tx, reused }),
            None => connect::checkout(addr, wire, connect_timeout, reuse, try_at).await,
        };
        drop(pending);
        let conn = match conn {
            Ok(c) => c,
            Err(e) => return Err(TryFailure::Connect(req, e)),
        };
        let origin = if conn.reused() { Origin::Pooled } else { Origin::New };
        let h2 = matches!(conn, Conn::Http2 { .. });
        let (back, delivery, e) = match conn {
            Conn::Http1 { conn, .. } => {
                let home = connect::Home { addr, idle_timeout: cluster.policy.idle_timeout };
                match conn.send(req, home).await {
                    Ok(resp) => return Ok(resp.map(UpstreamBody::Http1)),
                    Err(connect::H1SendError::Closed(back, source)) => {
                        (back, Delivery::Unanswered, connect::ConnectError::Io { addr, source })
                    }
                    Err(connect::H1SendError::Failed(e)) => return Err(TryFailure::Reset(e)),
                }
            }
            // Boxed: its future is twice HTTP/1.1's, and inline it would be reserved (and
            // copied through every layer above) in each HTTP/1.1 request's future too.
            Conn::Http2 { mut tx, .. } => {
                // A stream the upstream refuses unprocessed (a GOAWAY naming an earlier last
                // stream, as nginx sends every `keepalive_requests`, or REFUSED_STREAM) goes
                // again on a new connection, any method: a whole body makes that possible,
                // so its head is kept (the route's replay copy when it has one).
                let copy = match (replay, req.body()) {
                    (None, ReqBody::Buffered(_)) => Some(Box::new(ReplayHead::of(&req))),
                    _ => None,
                };
                match Box::pin(tx.send(as_http2(req, cluster))).await {
                    Ok(resp) => return Ok(resp.map(UpstreamBody::Http2)),
                    Err(connect::H2SendError::NotSent(back, source)) => {
                        tx.retire();
                        (back, Delivery::NotSent, connect::ConnectError::Http2 { addr, source })
                    }
                    // The connection is going away: the next checkout makes (or waits for)
                    // its successor, shared with the other requests it refused.
                    Err(connect::H2SendError::Refused(e)) => match copy.as_deref().or(replay) {
                        Some(head) if refusals < MAX_REFUSALS => {
                            tracing::debug!(endpoint = %addr, error = %e, "stream refused unprocessed; sending it again on a new connection");
                            tx.retire();
                            refusals += 1;
                            req = head.build();
                            continue;
                        }
                        _ => return Err(TryFailure::Reset(e.into())),
                    },
                    Err(connect::H2SendError::Failed(e)) => return Err(TryFailure::Reset(e)),
                }
            }
        };
        match resend(delivery, origin, idempotent, try_at.elapsed()) {
            Resend::FreshConnection => {
                tracing::debug!(endpoint = %addr, "pooled connection closed under the request; sending it again on a fresh one");
                req = back;
                // A retired HTTP/2 connection is not handed out again: the pool's next one
                // may be shared with the other requests it gave back.
                reuse = if h2 { connect::Reuse::Pooled } else { connect::Reuse::Fresh };
            }
            Resend::Elsewhere => return Err(TryFailure::Connect(back, e)),
            Resend::No => {
                return Err(TryFailure::Reset(match e {
                    connect::ConnectError::Io { source, .. } => source.into(),
                    other => other.into(),
                }));
            }
        }
    }
}

/// HTTP/1 requests to a meshed peer travel as HTTP/2; the peer's proxy restores HTTP/1.
fn as_http2(mut req: Request<ReqBody>, cluster: &Cluster) -> Request<ReqBody> {
    if req.version() != Version::HTTP_2 {
        headers::to_http2(&mut req, &cluster.authority);
    }
    req
}

fn report_failure(cluster: &Cluster, idx: usize, guard: InFlight) {
    if cluster.set.on_failure(idx, guard) {
        cluster.note_ejection(cluster.set.endpoints()[idx].addr);
    }
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and the like).
pub(crate) fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req.headers().get(header::CONNECTION).is_some_and(|v| headers::has_token(v.as_bytes(), b"upgrade"))
}

/// Forwards an Upgrade request on a dedicated HTTP/1.1 connection; after `101 Switching
/// Protocols` both sides are spliced byte for byte until either closes.
pub(crate) async fn forward_upgrade(
    rule: Arc<Rule>,
    mut req: Request<ClientBody>,
    started: Instant,
) -> Response<RespBody> {
    let backend = rule.pick_backend();
    let cluster = &backend.cluster;
    if cluster.protocol.is_h2() {
        return finish_error(backend, ProxyError::BadRequest, started);
    }
    let idx = match cluster.set.pick(&[]) {
        Ok(i) => i,
        Err(PickError::NoEndpoints) => return finish_error(backend, ProxyError::NoEndpoints, started),
        Err(PickError::AllEjected) => return finish_error(backend, ProxyError::CircuitOpen, started),
    };
    let endpoint = cluster.set.endpoints()[idx].clone();
    let guard = endpoint.start();
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    let mut up_req = Request::from_parts(parts, ReqBody::Streaming(body));
    headers::to_http1(&mut up_req);
    let conn = match connect::checkout(
        endpoint.addr,
        connect::Wire::Http1,
        cluster.policy.connect_timeout,
        connect::Reuse::Fresh,
        started,
    )
    .await
    {
        Ok(Conn::Http1 { conn, .. }) => connect::upgrade_h1(endpoint.addr, conn).await,
        Ok(Conn::Http2 { .. }) => return finish_error(backend, ProxyError::BadRequest, started),
        Err(e) => Err(e),
    };
    let mut tx = match conn {
        Ok(tx) => tx,
        Err(e) => {
            tracing::warn!(service = %cluster.name, endpoint = %endpoint.addr, error = %e, "connect failed for upgrade");
            report_failure(cluster, idx, guard);
            return finish_error(backend, ProxyError::ConnectFailed, started);
        }
    };
    let mut resp = match tx.send_request(up_req).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(service = %cluster.name, error = %e, "upgrade request failed");
            report_failure(cluster, idx, guard);
            return finish_error(backend, ProxyError::UpstreamReset, started);
        }
    };
    cluster.set.on_success(idx, guard);
    record(&backend.metrics, resp.status().as_u16(), false, started);
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let mut client = hyper_util::rt::TokioIo::new(client);
            let mut upstream = hyper_util::rt::TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            }
        });
    }
    let (parts, body) = resp.into_parts();
    let mut resp = Response::from_parts(parts, RespBody::upstream(UpstreamBody::Upgraded(body), None));
    access::note_upstream(&mut resp, backend.metrics.backend(), Some(endpoint.addr));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::future_size;

    #[test]
    fn the_choice_after_each_try() {
        use Ended::*;
        use ProxyError as E;
        use RetryReason as R;
        let none = crate::routing::Retry {
            attempts: 0,
            on_5xx: false,
            on_gateway_error: false,
            on_connect_failure: false,
            on_reset: false,
            on_timeout: false,
            per_try_timeout: None,
            backoff_base: std::time::Duration::ZERO,
            backoff_max: std::time::Duration::ZERO,
        };
        let all = crate::routing::Retry { attempts: 3, on_5xx: true, on_reset: true, on_timeout: true, ..none };
        let gateway = crate::routing::Retry { attempts: 1, on_gateway_error: true, ..none };
        // (policy, how the try ended, replayable) → (blame the endpoint, retry, answer without one)
        type Case<'a> = (&'a crate::routing::Retry, Ended, bool, bool, Option<(R, u32)>, Option<E>);
        let cases: &[Case<'_>] = &[
            (&all, Answered(200), true, false, None, None),
            (&all, Answered(404), true, false, None, None),
            (&all, Answered(503), true, true, Some((R::Status, 3)), None),
            // A body that was streamed cannot be sent again: the 5xx goes to the client.
            (&all, Answered(503), false, true, None, None),
            (&none, Answered(500), true, true, None, None),
            (&gateway, Answered(502), true, true, Some((R::Status, 1)), None),
            (&gateway, Answered(500), true, true, None, None),
            // Connect failures go elsewhere whatever the policy, the body and the method.
            (&none, ConnectFailed { tls: false }, false, true, Some((R::Connect, 2)), Some(E::ConnectFailed)),
            (&all, ConnectFailed { tls: true }, false, true, Some((R::Connect, 3)), Some(E::TlsFailed)),
            (&all, Reset, true, true, Some((R::Reset, 3)), Some(E::UpstreamReset)),
            (&all, Reset, false, true, None, Some(E::UpstreamReset)),
            (&none, Reset, true, true, None, Some(E::UpstreamReset)),
            // The client's own body broke the limit: the endpoint is not to blame.
            (&all, BodyTooLarge, true, false, None, Some(E::BodyTooLarge)),
            (&all, TryTimeout, true, true, Some((R::Timeout, 3)), Some(E::Timeout)),
            (&all, TryTimeout, false, true, None, Some(E::Timeout)),
            (&none, TryTimeout, true, true, None, Some(E::Timeout)),
            (&all, PendingLimit, true, false, None, Some(E::PendingLimit)),
        ];
        for &(policy, ended, replayable, blame, retry, error) in cases {
            assert_eq!(
                after_try(ended, policy, replayable),
                Choice { blame, retry, error },
                "{ended:?} replayable={replayable} attempts={}",
                policy.attempts
            );
        }
    }

    #[test]
    fn only_a_request_that_never_reached_the_upstream_is_resent_whatever_its_method() {
        use Delivery::*;
        use Origin::*;
        let at_once = std::time::Duration::ZERO;
        let late = KEEP_ALIVE_RACE;
        // (how far it got, connection, idempotent, time since the try began) → what happens
        let cases = [
            // Refused before its HEADERS went out (closed, or going away): nothing to repeat.
            ((NotSent, Pooled, false, at_once), Resend::FreshConnection),
            ((NotSent, Pooled, false, late), Resend::FreshConnection),
            ((NotSent, Pooled, true, at_once), Resend::FreshConnection),
            ((NotSent, New, false, at_once), Resend::Elsewhere),
            ((NotSent, New, true, late), Resend::Elsewhere),
            // Written, then closed unanswered: maybe processed, so a POST is never repeated.
            ((Unanswered, Pooled, false, at_once), Resend::No),
            ((Unanswered, Pooled, true, at_once), Resend::FreshConnection),
            ((Unanswered, Pooled, true, late), Resend::No),
            ((Unanswered, New, true, at_once), Resend::No),
            ((Unanswered, New, false, at_once), Resend::No),
        ];
        for ((delivery, origin, idempotent, since_try), expected) in cases {
            assert_eq!(
                resend(delivery, origin, idempotent, since_try),
                expected,
                "{delivery:?} on a {origin:?} connection, idempotent: {idempotent}, after {since_try:?}"
            );
        }
    }

    #[test]
    fn a_request_future_stays_small() {
        // `forward`'s future is boxed per request, and every layer of async fns below it is
        // moved into it when it starts: a larger one costs memcpy on every request. What
        // each bound bought is in docs/architecture.md ("Rules of the request path").
        let size = future_size(forward);
        assert!(size <= 3472, "forward's future is {size} bytes");
        let size = future_size(try_endpoint);
        assert!(size <= 1920, "try_endpoint's future is {size} bytes");
    }
}
