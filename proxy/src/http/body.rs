//! Request body types that flow through the proxy without boxing (the response side is
//! `response::body`).
//!
//! Bodies stream straight through except where a retry needs a replayable copy: then a small
//! body (≤ 64 KiB) is buffered once and cloned per try.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::h2body::H2Body;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body the proxy buffers so that a request can be retried.
pub(crate) const MAX_REPLAY_BYTES: u64 = 64 * 1024;

/// A request body as the client sends it: read by hyper's HTTP/1.1 server, from an HTTP/2
/// stream (`server::h2server`), or already whole in the read buffer of `server::h1server`
/// (`None`: no body).
pub(crate) enum ClientBody {
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
pub(crate) enum ReqBody {
    /// Streams from the client as it arrives; usable for one try only.
    Streaming(ClientBody),
    /// A streamed body with a size limit; exceeding it aborts the stream.
    Limited { inner: ClientBody, remaining: u64 },
    /// Fully buffered (replayable).
    Buffered(Option<Bytes>),
}

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the proxy's maxBodyBytes limit")]
pub(crate) struct BodyTooLarge;

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
