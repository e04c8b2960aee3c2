//! Serves an HTTP/2 client connection on the `h2` crate directly.
//!
//! Each stream's request is routed in the connection's task, as it arrives, and its answer
//! (forwarding, then sending the response and its body) runs in a task of its own. hyper's
//! HTTP/2 server did the same with more layers around each stream: its own body type over
//! the stream, a second pass over the response's connection-specific headers, a date header,
//! and a state machine per stream (docs/performance.md has the measurements).
//!
//! Every connection ends within a bounded time of its timeouts, whatever the client does:
//! after GOAWAY (idle or draining) h2 waits for the client to answer a PING, so the proxy
//! closes the connection itself `CLOSE_GRACE` after its last stream; and a header block left
//! incomplete (which h2 buffers silently) closes it at `headerReadTimeout`. A response whose
//! client opens no window for `clientIdleTimeout` is reset: a stream open keeps the
//! connection from idling out, so a client that never read held it, and the upstream
//! request behind it, for good.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::Reason;
use h2::server::SendResponse;
use http::{HeaderValue, Request, Response, header};
use http_body::Body;

use super::timeouts::{HeaderBlockWatch, IdleTicker};
use super::{BoxedResponse, Handler};
use crate::http::body::ClientBody;
use crate::http::h2body::{BodyPipe, H2Body};
use crate::response::body::RespBody;

/// Each stream may run this far ahead of the proxy reading its request body, and all of a
/// connection's streams together `CONNECTION_WINDOW`.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams one client connection may have open at once on the outbound listener, whose only
/// client is the app.
const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// On the inbound listener, where callers share the app's concurrency budget (1024 by
/// default): a quarter of it, so that one caller's connection cannot take it all (the
/// hostile HTTP/2 suite found that one could). nginx allows 128 and haproxy 100.
const INBOUND_MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long a connection sent GOAWAY (idle or draining) waits, with no stream open, for the
/// client to answer its PING and close; at most `clientIdleTimeout`. Then it is closed anyway:
/// h2 alone waits for the PING's answer forever, and a silent client kept its socket open.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why an HTTP/2 client connection ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum H2ServeError {
    #[error("no HTTP/2 handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("HTTP/2 header block not complete within {0:?}")]
    HeadTimeout(Duration),
    #[error(transparent)]
    Protocol(#[from] h2::Error),
}

/// Performs the server handshake on `io` (whose client has sent, or is sending, the
/// preface), within `header_read_timeout`. The connection then runs as an `H2Connection`.
pub(crate) async fn handshake<S>(
    io: S,
    handler: Handler,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: u32,
) -> Result<H2Connection<S>, H2ServeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let header_block = Arc::new(AtomicBool::new(false));
    let streams = if handler.is_inbound() { INBOUND_MAX_CONCURRENT_STREAMS } else { MAX_CONCURRENT_STREAMS };
    let handshaking = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(max_header_bytes)
        .max_concurrent_streams(streams)
        .handshake::<_, Bytes>(HeaderBlockWatch::new(io, header_block.clone()));
    let wait = header_read_timeout;
    let conn = tokio::time::timeout(wait, handshaking).await.map_err(|_| H2ServeError::HandshakeTimeout(wait))??;
    Ok(H2Connection {
        conn,
        handler,
        idle: Some(IdleTicker::new(idle_timeout)),
        window_wait: idle_timeout,
        header_block,
        header_read_timeout,
        close_grace: CLOSE_GRACE.min(idle_timeout),
        head_by: None,
        close_by: None,
        timer: None,
    })
}

/// A client's HTTP/2 connection: accepts its streams until it closes, or until
/// `graceful_shutdown` has sent GOAWAY and the streams in flight have finished. Idle for
/// `clientIdleTimeout`, it sends GOAWAY itself. Either way, once no stream is open, the
/// client has `CLOSE_GRACE` to close before the proxy does; a header block left incomplete
/// for `headerReadTimeout` closes the connection at once.
pub(crate) struct H2Connection<S> {
    conn: h2::server::Connection<HeaderBlockWatch<S>, Bytes>,
    handler: Handler,
    /// `None` once the connection is closing for idleness.
    idle: Option<IdleTicker>,
    /// How long a response may wait for the client to open its window (`clientIdleTimeout`).
    window_wait: Duration,
    /// Set by the socket while the client is in the middle of a header block.
    header_block: Arc<AtomicBool>,
    header_read_timeout: Duration,
    close_grace: Duration,
    /// When the header block in progress must be complete.
    head_by: Option<Instant>,
    /// Once GOAWAY has gone out: when the connection is closed if no stream is open.
    close_by: Option<Instant>,
    /// Wakes the connection at the earlier of `head_by` and `close_by`; made when first needed
    /// (a header block split across reads, or a close), so most connections never have one.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> H2Connection<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Tells the client that no new streams will be accepted; the ones open finish, and the
    /// connection is closed `CLOSE_GRACE` after the last (sooner if the client closes it).
    pub(crate) fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
        if self.close_by.is_none() {
            self.close_by = Some(Instant::now() + self.close_grace);
        }
    }

    /// Whether a deadline has passed: `Ready(Err)` for a header block not complete in time,
    /// `Ready(Ok)` to close a connection that was sent GOAWAY and has no stream open. Called
    /// when h2 has nothing to do; without a deadline it costs one atomic load.
    fn poll_deadlines(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), H2ServeError>> {
        match (self.header_block.load(Ordering::Relaxed), self.head_by) {
            (true, None) => self.head_by = Some(Instant::now() + self.header_read_timeout),
            (false, Some(_)) => self.head_by = None,
            _ => {}
        }
        loop {
            let next = match (self.head_by, self.close_by) {
                (None, None) => return Poll::Pending,
                (Some(at), None) | (None, Some(at)) => at,
                (Some(head), Some(close)) => head.min(close),
            };
            let wake = tokio::time::Instant::from_std(next);
            let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // At least `next`, whatever the clocks' rounding: the deadline it fired for is due.
            let now = Instant::now().max(next);
            if self.head_by.is_some_and(|at| at <= now) {
                return Poll::Ready(Err(H2ServeError::HeadTimeout(self.header_read_timeout)));
            }
            if let Some(at) = self.close_by
                && at <= now
            {
                if !self.conn.has_streams() {
                    tracing::debug!("closing an HTTP/2 client connection that did not close after GOAWAY");
                    return Poll::Ready(Ok(()));
                }
                // Streams still running: checked again once the grace has passed once more.
                self.close_by = Some(now + self.close_grace);
            }
        }
    }
}

impl<S> Future for H2Connection<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Output = Result<(), H2ServeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let accepted = match this.conn.poll_accept(cx) {
                Poll::Ready(accepted) => accepted,
                Poll::Pending => {
                    let conn = &this.conn;
                    if let Some(Poll::Ready(())) =
                        this.idle.as_mut().map(|idle| idle.poll_idle(cx, || conn.has_streams()))
                    {
                        tracing::debug!("closing an idle HTTP/2 client connection (clientIdleTimeout)");
                        this.idle = None;
                        this.graceful_shutdown();
                        continue;
                    }
                    return this.poll_deadlines(cx);
                }
            };
            match accepted {
                Some(Ok((req, respond))) => {
                    if let Some(idle) = this.idle.as_mut() {
                        idle.stream_started();
                    }
                    let started = Instant::now();
                    let (parts, recv) = req.into_parts();
                    let body = ClientBody::Http2(H2Body::new(&parts.headers, recv));
                    let resp = this.handler.call(Request::from_parts(parts, body), started);
                    tokio::spawn(Answer::new(resp, respond, this.window_wait));
                }
                // A client that says goodbye with NO_ERROR closed the connection normally.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                None => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// One stream's answer: waits for the response to its request and sends it. A client that
/// resets the stream first cancels the request: its future is dropped, and with it the
/// upstream call.
///
/// A hand-written future rather than an async fn: it is moved into a task per stream, and
/// the async fn kept the response, its parts and the body pipe in separate slots, about three
/// times this size, and each was copied at spawn.
struct Answer {
    respond: SendResponse<Bytes>,
    state: AnswerState,
    window: WindowWatch,
}

enum AnswerState {
    Waiting(BoxedResponse),
    Sending(BodyPipe<RespBody>),
}

impl Answer {
    fn new(resp: BoxedResponse, respond: SendResponse<Bytes>, window_wait: Duration) -> Answer {
        Answer { respond, state: AnswerState::Waiting(resp), window: WindowWatch { limit: window_wait, stall: None } }
    }
}

impl Future for Answer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match &mut this.state {
            AnswerState::Waiting(resp) => {
                let Poll::Ready(resp) = resp.as_mut().poll(cx) else {
                    return this.respond.poll_reset(cx).map(drop);
                };
                match send_head(&mut this.respond, resp) {
                    Some(pipe) => this.state = AnswerState::Sending(pipe),
                    None => return Poll::Ready(()),
                }
            }
            AnswerState::Sending(_) => {}
        }
        let AnswerState::Sending(pipe) = &mut this.state else { unreachable!("set above") };
        let Poll::Ready(sent) = pipe.poll_send(cx) else {
            if this.window.expired(pipe, cx) {
                tracing::debug!(waited = ?this.window.limit, "resetting a response whose HTTP/2 client opens no window");
                pipe.reset(Reason::CANCEL);
                return Poll::Ready(());
            }
            return Poll::Pending;
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "response body to an HTTP/2 client ended early");
        }
        Poll::Ready(())
    }
}

/// Times a response body that waits for the client's flow-control window with nothing sent.
struct WindowWatch {
    limit: Duration,
    /// The bytes sent when the current wait began, and the timer at its end; `None` until
    /// the body first waits for window.
    stall: Option<(u64, Pin<Box<tokio::time::Sleep>>)>,
}

impl WindowWatch {
    /// Whether `pipe` (just polled, pending) has waited `limit` for window without sending a
    /// byte. Arms the timer on the first wait, re-arms it whenever bytes went out since.
    fn expired(&mut self, pipe: &BodyPipe<RespBody>, cx: &mut Context<'_>) -> bool {
        if !pipe.waits_for_window() {
            return false;
        }
        let sent = pipe.bytes_sent();
        let deadline = tokio::time::Instant::now() + self.limit;
        let (since, timer) = self.stall.get_or_insert_with(|| (sent, Box::pin(tokio::time::sleep_until(deadline))));
        if *since != sent {
            *since = sent;
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// Sends the response head; returns what is left to send of its body.
fn send_head(respond: &mut SendResponse<Bytes>, resp: Response<RespBody>) -> Option<BodyPipe<RespBody>> {
    let (mut parts, body) = resp.into_parts();
    // The proxy's own answers (errors) say their length and date, as hyper's HTTP/1.1 server
    // adds them; forwarded ones carry the upstream's. Responses never carry connection-specific
    // fields here: the HTTP/1.1 client drops them while it parses, and HTTP/2 forbids them on
    // the upstream side too.
    if let RespBody::Full(data) = &body {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts.headers.insert(header::CONTENT_LENGTH, data.as_ref().map_or(0, Bytes::len).into());
        }
        if !parts.headers.contains_key(header::DATE)
            && let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(std::time::SystemTime::now()))
        {
            parts.headers.insert(header::DATE, date);
        }
    }
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(stream) => (!end).then(|| BodyPipe::new(body, stream, Reason::INTERNAL_ERROR)),
        Err(e) => {
            tracing::debug!(error = %e, "could not send a response to an HTTP/2 client");
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_task_stays_small() {
        // Moved into a task for every stream: 1.3 KiB as an async fn, 352 bytes now.
        let size = std::mem::size_of::<Answer>();
        assert!(size <= 448, "Answer is {size} bytes");
        // A client's request body sits in every request's future: HTTP/2's must not make it
        // larger than hyper's HTTP/1.1 body alone.
        assert!(std::mem::size_of::<ClientBody>() <= std::mem::size_of::<hyper::body::Incoming>());
    }
}
