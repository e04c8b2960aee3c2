//! Response bodies on their way back to the client: proxy-made ones and those streaming from
//! an upstream, with the accounting done when such a body ends (the concurrency permit, a
//! gRPC call's status from its trailers, outlier detection's view of a body that broke).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::balance::Endpoint;
use crate::clock;
use crate::connect::H1Body;
use crate::http::body::BoxError;
use crate::http::h2body::H2Body;
use crate::metrics::RouteMetrics;
use crate::target::Cluster;

/// Counts a forwarded response in `weft_requests_total` once its body has ended, so that
/// what is counted agrees with what the client got: a body the upstream broke after a 200
/// head is a failure, and a gRPC call's status arrives in its trailers.
pub(crate) struct Record {
    metrics: Arc<RouteMetrics>,
    status: u16,
    /// For a gRPC call, when the proxy received it: its duration runs to the trailers. Other
    /// responses had their duration observed at the head.
    grpc_since: Option<Instant>,
}

impl Record {
    /// A response whose duration was observed at its head.
    pub(crate) fn http(metrics: Arc<RouteMetrics>, status: u16) -> Record {
        Record { metrics, status, grpc_since: None }
    }

    /// A gRPC call received at `started`, whose status waits for its trailers.
    pub(crate) fn grpc(metrics: Arc<RouteMetrics>, status: u16, started: Instant) -> Record {
        Record { metrics, status, grpc_since: Some(started) }
    }

    /// `complete`: the body reached its end; `failed_status`: the trailers carried a
    /// `grpc-status` other than 0 (OK); `broke`: the upstream's body ended in an error. A
    /// client that went away does not make a plain response a failure; a gRPC call without
    /// its trailers has no status, and counts as failed.
    pub(crate) fn finish(self, complete: bool, failed_status: bool, broke: bool) {
        match self.grpc_since {
            Some(started) => {
                self.metrics.record(self.status, !complete || failed_status, started.elapsed().as_secs_f64())
            }
            None => self.metrics.count(self.status, broke),
        }
    }

    /// Whether these trailers report a failed call.
    pub(crate) fn is_failure(trailers: &http::HeaderMap) -> bool {
        trailers.get("grpc-status").is_some_and(|s| s.as_bytes() != b"0")
    }
}

/// Tells outlier detection how a response that went to the client ended: its head counted
/// only for the latency estimate (`EndpointSet::on_head_at`), and a body the upstream broke
/// part way is a failure of the endpoint, though the client already had the head.
pub(crate) struct BodyOutcome {
    cluster: Arc<Cluster>,
    endpoint: Arc<Endpoint>,
    /// When the head arrived (`clock` nanoseconds).
    head_at: u64,
}

impl BodyOutcome {
    pub(crate) fn new(cluster: Arc<Cluster>, endpoint: Arc<Endpoint>, head_at: u64) -> BodyOutcome {
        BodyOutcome { cluster, endpoint, head_at }
    }

    /// `broke`: the upstream's body ended in an error. A success is dated at its head (the
    /// clock is read again only for a failure, which may start an ejection).
    pub(crate) fn finish(self, broke: bool) {
        let now = if broke { clock::now_nanos() } else { self.head_at };
        if self.cluster.set.on_body_end(&self.endpoint, broke, now) {
            self.cluster.note_ejection(self.endpoint.addr);
        }
    }
}

/// Work to do once an upstream response body is finished or dropped: release the concurrency
/// permit, count the response (a gRPC call's status arrives in the trailers), and tell outlier
/// detection whether the upstream finished its answer. An HTTP/1.1 connection goes back to
/// the pool by itself (see `connect::H1Body`).
pub(crate) struct BodyEnd {
    pub permit: Option<crate::balance::Permit>,
    pub record: Option<Record>,
    pub outcome: Option<BodyOutcome>,
}

impl BodyEnd {
    /// `broke`: the upstream's body ended in an error.
    fn finish(self, complete: bool, failed_status: bool, broke: bool) {
        if let Some(record) = self.record {
            record.finish(complete, failed_status, broke);
        }
        if let Some(outcome) = self.outcome {
            outcome.finish(broke);
        }
        drop(self.permit);
    }
}

/// A response body as an upstream sends it: from an HTTP/1.1 connection (`connect::H1Conn`),
/// from hyper's after an upgrade, or from an HTTP/2 stream (`connect::H2Conn`).
pub(crate) enum UpstreamBody {
    Http1(H1Body),
    Upgraded(Incoming),
    Http2(H2Body),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(inner) => Pin::new(inner).poll_frame(cx),
            UpstreamBody::Upgraded(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Http2(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(inner) => inner.is_end_stream(),
            UpstreamBody::Upgraded(inner) => inner.is_end_stream(),
            UpstreamBody::Http2(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(inner) => inner.size_hint(),
            UpstreamBody::Upgraded(inner) => inner.size_hint(),
            UpstreamBody::Http2(inner) => inner.size_hint(),
        }
    }
}

/// A response body on its way back to the client.
pub(crate) enum RespBody {
    /// A proxy-made response (errors, admin pages).
    Full(Option<Bytes>),
    /// Streams from the upstream.
    /// `failed_status`: a gRPC call's trailers reported a failure (kept as a flag, not a copy
    /// of the trailers: the body is moved with every response). `broke`: the upstream's body
    /// ended in an error.
    Upstream { inner: UpstreamBody, end: Option<BodyEnd>, done: bool, failed_status: bool, broke: bool },
    /// A forwarded body the access log counts (only while it is on).
    Logged(Box<super::access::LoggedBody>),
}

impl RespBody {
    pub(crate) fn full(data: impl Into<Bytes>) -> RespBody {
        let data = data.into();
        RespBody::Full(if data.is_empty() { None } else { Some(data) })
    }

    pub(crate) fn upstream(inner: UpstreamBody, end: Option<BodyEnd>) -> RespBody {
        RespBody::Upstream { inner, end, done: false, failed_status: false, broke: false }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RespBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RespBody::Upstream { inner, end, done, failed_status, broke } => {
                let polled = Pin::new(inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => *done = true,
                    Poll::Ready(Some(Err(_))) => *broke = true,
                    Poll::Ready(Some(Ok(frame))) if end.is_some() => {
                        if let Some(t) = frame.trailers_ref() {
                            *failed_status = Record::is_failure(t);
                            *done = true;
                        }
                    }
                    _ => {}
                }
                polled
            }
            RespBody::Logged(logged) => logged.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RespBody::Full(data) => data.is_none(),
            RespBody::Upstream { inner, done, .. } => *done || inner.is_end_stream(),
            RespBody::Logged(logged) => logged.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RespBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            RespBody::Full(None) => SizeHint::with_exact(0),
            RespBody::Upstream { inner, .. } => inner.size_hint(),
            RespBody::Logged(logged) => logged.size_hint(),
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let RespBody::Upstream { inner, end, done, failed_status, broke } = self
            && let Some(end) = end.take()
        {
            let complete = *done || inner.is_end_stream();
            end.finish(complete, *failed_status, *broke);
        }
    }
}
