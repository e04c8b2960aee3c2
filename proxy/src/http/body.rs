//! Request and response body types that flow through the proxy without boxing.
//!
//! Bodies stream straight through except where a retry needs a replayable copy: then a small
//! body (≤ 64 KiB) is buffered once and cloned per try.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::connect::{H1Body, H2Body};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body the proxy buffers so that a request can be retried.
pub const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// A request body as the client sends it: read by hyper's HTTP/1.1 server, from an HTTP/2
/// stream (`http::h2server`), or already whole in the read buffer of `http::h1server`
/// (`None`: no body).
pub enum ClientBody {
    Http1(Incoming),
    Http2(H2Body),
    Buffered(Option<Bytes>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Http1(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ClientBody::Http2(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            ClientBody::Buffered(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Http1(inner) => inner.is_end_stream(),
            ClientBody::Http2(inner) => inner.is_end_stream(),
            ClientBody::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Http1(inner) => inner.size_hint(),
            ClientBody::Http2(inner) => inner.size_hint(),
            ClientBody::Buffered(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

/// A request body on its way to an upstream.
pub enum ReqBody {
    /// Streams from the client as it arrives; usable for one try only.
    Streaming(ClientBody),
    /// A streamed body with a size limit; exceeding it aborts the stream.
    Limited { inner: ClientBody, remaining: u64 },
    /// Fully buffered (replayable).
    Buffered(Option<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the proxy's maxBodyBytes limit")]
pub struct BodyTooLarge;

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Streaming(inner) => Pin::new(inner).poll_frame(cx),
            ReqBody::Limited { inner, remaining } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let len = data.len() as u64;
                        if len > *remaining {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                        *remaining -= len;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other,
            },
            ReqBody::Buffered(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Streaming(inner) | ReqBody::Limited { inner, .. } => inner.is_end_stream(),
            ReqBody::Buffered(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Streaming(inner) | ReqBody::Limited { inner, .. } => inner.size_hint(),
            ReqBody::Buffered(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ReqBody::Buffered(None) => SizeHint::with_exact(0),
        }
    }
}

/// Work to do once an upstream response body is finished or dropped: release the concurrency
/// permit, record a gRPC call's outcome (its status arrives in the trailers), and tell outlier
/// detection whether the upstream finished its answer. An HTTP/1.1 connection goes back to
/// the pool by itself (see `connect::H1Body`).
pub struct BodyEnd {
    pub permit: Option<crate::balance::Permit>,
    pub grpc: Option<crate::forward::GrpcRecord>,
    pub outcome: Option<crate::forward::BodyOutcome>,
}

impl BodyEnd {
    /// `broke`: the upstream's body ended in an error.
    fn finish(self, complete: bool, failed_status: bool, broke: bool) {
        if let Some(grpc) = self.grpc {
            grpc.finish(complete, failed_status);
        }
        if let Some(outcome) = self.outcome {
            outcome.finish(broke);
        }
        drop(self.permit);
    }
}

/// A response body as an upstream sends it: from an HTTP/1.1 connection (`connect::H1Conn`),
/// from hyper's after an upgrade, or from an HTTP/2 stream (`connect::H2Conn`).
pub enum UpstreamBody {
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
pub enum RespBody {
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
    pub fn full(data: impl Into<Bytes>) -> RespBody {
        let data = data.into();
        RespBody::Full(if data.is_empty() { None } else { Some(data) })
    }

    pub fn empty() -> RespBody {
        RespBody::Full(None)
    }

    pub fn upstream(inner: UpstreamBody, end: Option<BodyEnd>) -> RespBody {
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
                            *failed_status = crate::forward::GrpcRecord::is_failure(t);
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
