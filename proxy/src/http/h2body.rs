//! HTTP/2 bodies, both ways: [`H2Body`] reads one from a stream (an upstream's response or a
//! client's request) and [`BodyPipe`] writes one onto a stream within the peer's window.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use http::header;
use http_body::{Body, Frame, SizeHint};

use super::body::BoxError;

/// Copies a body onto its HTTP/2 stream, within the peer's flow-control window: a request's
/// toward an upstream, or a response's toward an HTTP/2 client (`server::h2`).
pub(crate) struct BodyPipe<B> {
    body: B,
    stream: SendStream<Bytes>,
    /// Data read from the body and not yet sent, waiting for window.
    chunk: Option<Bytes>,
    /// Bytes handed to h2 so far: whether a pipe waiting for window has moved since.
    sent: u64,
    /// Why the stream is reset when the body fails, unless the failure carries an HTTP/2
    /// reason of its own: CANCEL for a request (the client gave up), INTERNAL_ERROR for a
    /// response (the upstream failed).
    on_error: Reason,
}

impl<B> BodyPipe<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(crate) fn new(body: B, stream: SendStream<Bytes>, on_error: Reason) -> BodyPipe<B> {
        BodyPipe { body, stream, chunk: None, sent: 0, on_error }
    }

    /// Whether the pipe holds data that waits for the peer's flow-control window (rather than
    /// for the body to produce more).
    pub(crate) fn waits_for_window(&self) -> bool {
        self.chunk.is_some()
    }

    /// Bytes of the body sent so far.
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.sent
    }

    /// Gives up on the stream: resets it with `reason` (the body is dropped with the pipe).
    pub(crate) fn reset(&mut self, reason: Reason) {
        self.stream.send_reset(reason);
    }

    /// `Ready(Ok)` once the body is sent (or the peer said it needs no more of it).
    pub(crate) fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        loop {
            if let Some(chunk) = self.chunk.as_mut() {
                self.stream.reserve_capacity(chunk.len());
                let window = match ready!(self.stream.poll_capacity(cx)) {
                    Some(Ok(n)) => n,
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Err("HTTP/2 stream closed while sending the request body".into())),
                };
                if window == 0 {
                    continue;
                }
                let part = chunk.split_to(window.min(chunk.len()));
                self.sent += part.len() as u64;
                let last = chunk.is_empty() && self.body.is_end_stream();
                if chunk.is_empty() {
                    self.chunk = None;
                }
                self.stream.send_data(part, last)?;
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The peer may end or refuse the stream while the client is still sending:
            // RST_STREAM(NO_ERROR) after a complete response means it needs no more body.
            if let Poll::Ready(reset) = self.stream.poll_reset(cx) {
                return Poll::Ready(match reset {
                    Ok(Reason::NO_ERROR) => Ok(()),
                    Ok(reason) => Err(h2::Error::from(reason).into()),
                    Err(e) => Err(e.into()),
                });
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    let e: BoxError = e.into();
                    self.stream.send_reset(h2_reason(&*e).unwrap_or(self.on_error));
                    return Poll::Ready(Err(e));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => self.chunk = Some(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            let trailers = trailers
                                .iter()
                                .filter(|(name, _)| super::h1::forwardable_trailer(name))
                                .map(|(name, value)| (name.clone(), value.clone()))
                                .collect();
                            self.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
            }
        }
    }
}

/// The HTTP/2 reason somewhere in an error's chain (an upstream's RST_STREAM, say).
pub(crate) fn h2_reason(e: &(dyn std::error::Error + 'static)) -> Option<Reason> {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return Some(reason);
        }
        cause = e.source();
    }
    None
}

/// A body read from an HTTP/2 stream (an upstream's response, or an HTTP/2 client's request);
/// each chunk's window is given back to the peer once the chunk is handed on, so a slow
/// reader slows the sender down.
pub(crate) struct H2Body {
    recv: RecvStream,
    /// What `content-length` said is still to come; `UNKNOWN_LENGTH` without one. Kept to 8
    /// bytes: the body sits in every request's future, beside HTTP/1.1's.
    remaining: u64,
}

const UNKNOWN_LENGTH: u64 = u64::MAX;

impl H2Body {
    /// The body of a message with these `headers`; `h2` has already checked that the data
    /// adds up to their `content-length`.
    pub(crate) fn new(headers: &http::HeaderMap, recv: RecvStream) -> H2Body {
        // A message whose HEADERS ended the stream has an empty body, `content-length` or
        // not: its size must say so exactly (a retry needs a replayable body; GETs from
        // most HTTP/2 clients carry no `content-length`).
        let remaining = if recv.is_end_stream() {
            0
        } else {
            headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(UNKNOWN_LENGTH, |n| n.min(UNKNOWN_LENGTH - 1))
        };
        H2Body { recv, remaining }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        // Once the data has ended, `poll_data` keeps answering `None` (rarely asked: only
        // while the trailers are awaited).
        match ready!(this.recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = this.recv.flow_control().release_capacity(data.len());
                if this.remaining != UNKNOWN_LENGTH {
                    this.remaining = this.remaining.saturating_sub(data.len() as u64);
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Some(Err(e)) => return Poll::Ready(Some(Err(e))),
            None => {}
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            UNKNOWN_LENGTH => SizeHint::default(),
            n => SizeHint::with_exact(n),
        }
    }
}
