//! HTTP/2 toward upstreams and peer proxies, on the `h2` crate directly.
//!
//! hyper's HTTP/2 client hands every request to the connection's task through a channel and
//! spawns one more task per request to carry the response back. Here the request's own task
//! opens the stream and awaits the response head: a request without a body costs no spawn
//! and no cross-task hand-off. A request body is sent from the same task while the response
//! is awaited; only a body still streaming when the response head arrives moves to a task of
//! its own.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use h2::client::SendRequest;
use http::{Request, Response};
use http_body::Body;

use super::ConnectError;
use crate::http::body::BoxError;
use crate::http::h2body::{BodyPipe, H2Body};

/// Per-stream receive window: a stream may run this far ahead of the client reading it.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Receive window shared by every stream on one connection.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Largest response header block accepted from an upstream.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Request body bytes buffered per stream before the sender waits for the peer's window.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// A connection is pinged this often, and closed if the pong takes longer than the timeout:
/// a peer that vanished without a FIN is noticed before requests queue on it.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection that took no request for this long lets its task run before it takes
/// one (see `H2Conn::take`); one in steady use skips that.
const CATCH_UP_AFTER: Duration = Duration::from_millis(1);

/// One HTTP/2 connection, shared by every request of this worker to the same endpoint.
#[derive(Clone)]
pub(crate) struct H2Conn {
    tx: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

struct ConnState {
    /// Set by the connection's task when it ends.
    closed: AtomicBool,
    /// When the last request was given this connection (a `clock` reading).
    last_taken: AtomicU64,
}

/// Whether a pooled connection idle for `idle` must let its task catch up before a request:
/// only that task reads the socket, and it runs once the runtime polls for events, which a
/// request that arrived in the same turn would beat to a connection the upstream had closed.
fn needs_catch_up(idle: Duration) -> bool {
    idle >= CATCH_UP_AFTER
}

/// Why a request did not get a response head.
pub(crate) enum H2SendError<B> {
    /// The connection could take no new stream (closed, or going away); nothing was sent.
    NotSent(Request<B>, h2::Error),
    /// The upstream refused the stream unprocessed: its GOAWAY named an earlier stream as the
    /// last it will process, or it answered REFUSED_STREAM (RFC 9113 §8.7: either may be sent
    /// again, whatever its method). The request went into the stream and is gone.
    Refused(h2::Error),
    /// The stream was opened and then failed, or the request body failed while it was sent.
    Failed(BoxError),
}

/// Whether an error on a stream that got no response head says the upstream never processed
/// it. A GOAWAY fails only the streams above its last stream id that way; streams still open
/// when the connection then ends fail with a broken pipe instead.
fn refused(e: &h2::Error) -> bool {
    e.is_remote() && (e.is_go_away() || (e.is_reset() && e.reason() == Some(Reason::REFUSED_STREAM)))
}

impl H2Conn {
    /// Takes the connection out of use for new requests (it is going away: the upstream sent
    /// GOAWAY); the streams it carries finish on it.
    pub(crate) fn retire(&self) {
        self.state.closed.store(true, Ordering::Relaxed);
    }

    /// Whether the connection has ended (closed, failed, or missed its keep-alive pong), or
    /// was retired.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.closed.load(Ordering::Relaxed)
    }

    /// Takes this pooled connection for a request at `now` (a `clock` reading). Returns false
    /// when it turned out closed: after a pause in its use, its task first reads whatever the
    /// upstream sent meanwhile (a FIN, a GOAWAY), so that a request only goes out on a
    /// connection the upstream had not yet left.
    pub(crate) async fn take(&self, now: u64) -> bool {
        let last = self.state.last_taken.swap(now, Ordering::Relaxed);
        if needs_catch_up(Duration::from_nanos(now.saturating_sub(last))) {
            // Deferred until the runtime has polled for events and run the tasks they woke.
            tokio::task::yield_now().await;
        }
        !self.is_closed()
    }

    /// Sends `req` and waits for the response head. The request body is sent while waiting;
    /// what is left of it when the head arrives keeps streaming from a task of its own.
    pub(crate) async fn send<B>(&mut self, req: Request<B>) -> Result<Response<H2Body>, H2SendError<B>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if let Err(e) = poll_fn(|cx| self.tx.poll_ready(cx)).await {
            return Err(H2SendError::NotSent(req, e));
        }
        let (parts, body) = req.into_parts();
        let end_of_stream = body.is_end_stream();
        let (mut response, stream) = match self.tx.send_request(Request::from_parts(parts, ()), end_of_stream) {
            Ok(pair) => pair,
            Err(e) => return Err(H2SendError::Failed(e.into())),
        };
        let mut pipe = (!end_of_stream).then(|| BodyPipe::new(body, stream, Reason::CANCEL));
        let head = poll_fn(|cx| {
            if let Some(p) = pipe.as_mut()
                && let Poll::Ready(result) = p.poll_send(cx)
            {
                pipe = None;
                if let Err(e) = result {
                    // A refused stream may show first as the reset the body's pipe saw.
                    if let Poll::Ready(Err(e)) = Pin::new(&mut response).poll(cx)
                        && refused(&e)
                    {
                        return Poll::Ready(Err(H2SendError::Refused(e)));
                    }
                    return Poll::Ready(Err(H2SendError::Failed(e)));
                }
            }
            Pin::new(&mut response)
                .poll(cx)
                .map_err(|e| if refused(&e) { H2SendError::Refused(e) } else { H2SendError::Failed(e.into()) })
        })
        .await;
        let resp = match head {
            Ok(resp) => resp,
            Err(e) => return Err(e),
        };
        if let Some(mut p) = pipe {
            tokio::spawn(async move {
                if let Err(e) = poll_fn(|cx| p.poll_send(cx)).await {
                    tracing::debug!(error = %e, "request body to an HTTP/2 upstream ended with an error");
                }
            });
        }
        let (parts, recv) = resp.into_parts();
        let body = H2Body::new(&parts.headers, recv);
        Ok(Response::from_parts(parts, body))
    }
}

/// The HTTP/2 client handshake on an open stream (plaintext to an h2c backend, or mTLS to a
/// peer proxy). The connection runs in its own task with keep-alive pings; `what` names it
/// in the log line when it ends with an error.
pub(crate) async fn handshake<S>(addr: SocketAddr, stream: S, what: &'static str) -> Result<H2Conn, ConnectError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|e| ConnectError::Http2 { addr, source: e })?;
    let state =
        Arc::new(ConnState { closed: AtomicBool::new(false), last_taken: AtomicU64::new(crate::clock::now_nanos()) });
    let done = state.clone();
    let mut pings = conn.ping_pong();
    tokio::spawn(async move {
        let keepalive = async {
            let Some(pings) = pings.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(PING_INTERVAL).await;
                match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("keep-alive ping failed: {e}"),
                    Err(_) => return format!("no keep-alive pong within {PING_TIMEOUT:?}"),
                }
            }
        };
        tokio::select! {
            result = conn => if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "{what} connection ended with an error");
            },
            why = keepalive => tracing::warn!(%addr, "{what} connection closed: {why}"),
        }
        done.closed.store(true, Ordering::Relaxed);
    });
    Ok(H2Conn { tx, state })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use std::task::Context;

    use http::HeaderMap;
    use http_body::Frame;

    use super::*;
    use crate::http::h2body::h2_reason;

    /// A request body that yields the frames (or error) it was given, in order.
    struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// What the server side of the connection received on its first stream.
    struct Received {
        data: Vec<u8>,
        trailers: Option<HeaderMap>,
        error: Option<h2::Error>,
    }

    /// An `h2` server on the other end of an in-memory pipe: reads the first stream's body and
    /// trailers (giving the window back as it goes), answers 200 with `answer`, and reports
    /// what it got.
    fn server(io: tokio::io::DuplexStream, answer: &'static [u8]) -> tokio::task::JoinHandle<Received> {
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(io).await.expect("server handshake");
            let (req, mut respond) = conn.accept().await.expect("a stream").expect("a request");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut got = Received { data: Vec::new(), trailers: None, error: None };
            while let Some(chunk) = body.data().await {
                match chunk {
                    Ok(chunk) => {
                        got.data.extend_from_slice(&chunk);
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    Err(e) => {
                        got.error = Some(e);
                        return got;
                    }
                }
            }
            got.trailers = body.trailers().await.expect("trailers");
            let mut stream = respond.send_response(Response::new(()), false).expect("respond");
            stream.send_data(Bytes::from_static(answer), true).expect("response body");
            got
        })
    }

    fn request(frames: Vec<Result<Frame<Bytes>, BoxError>>) -> Request<Frames> {
        Request::builder().uri("http://upstream.test/upload").body(Frames(frames.into())).expect("request")
    }

    #[tokio::test]
    async fn a_stream_the_upstream_refuses_is_told_apart_from_one_that_failed() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.expect("server handshake");
            // The first stream is refused unprocessed, the second reset as a failure.
            let (_, mut first) = conn.accept().await.expect("a stream").expect("a request");
            first.send_reset(Reason::REFUSED_STREAM);
            let (_, mut second) = conn.accept().await.expect("a stream").expect("a request");
            second.send_reset(Reason::INTERNAL_ERROR);
            while conn.accept().await.is_some() {}
        });
        let mut conn = handshake(SocketAddr::from(([127, 0, 0, 1], 1)), client_io, "test").await.expect("handshake");
        let get = || Request::builder().uri("http://upstream.test/").body(Frames(VecDeque::new())).expect("request");
        assert!(matches!(conn.send(get()).await, Err(H2SendError::Refused(_))), "REFUSED_STREAM: may go again");
        assert!(matches!(conn.send(get()).await, Err(H2SendError::Failed(_))), "INTERNAL_ERROR: a failure");
    }

    #[tokio::test]
    async fn a_body_larger_than_the_window_and_its_trailers_arrive_whole() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let received = server(server_io, b"done");
        let mut conn = handshake(SocketAddr::from(([127, 0, 0, 1], 1)), client_io, "test").await.expect("handshake");

        // 200 KB is three times the server's default 64 KiB stream window.
        let big = Bytes::from(vec![7u8; 200_000]);
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "1400000".parse().unwrap());
        let req = request(vec![
            Ok(Frame::data(Bytes::from_static(b"head:"))),
            Ok(Frame::data(big.clone())),
            Ok(Frame::trailers(trailers)),
        ]);
        let Ok(resp) = conn.send(req).await else { panic!("send failed") };
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("response body").to_bytes();
        assert_eq!(body.as_ref(), b"done");

        let got = received.await.unwrap();
        assert!(got.error.is_none(), "{:?}", got.error);
        assert_eq!(got.data.len(), 5 + big.len());
        assert_eq!(&got.data[..5], b"head:");
        assert!(got.data[5..] == big[..], "body bytes changed on the way");
        assert_eq!(
            got.trailers.as_ref().and_then(|t| t.get("x-checksum")).map(|v| v.as_bytes()),
            Some(&b"1400000"[..])
        );
    }

    #[test]
    fn only_a_connection_left_idle_waits_for_its_task() {
        let cases = [
            (Duration::ZERO, false),
            (Duration::from_micros(900), false),
            (CATCH_UP_AFTER, true),
            (Duration::from_secs(60), true),
        ];
        for (idle, expected) in cases {
            assert_eq!(needs_catch_up(idle), expected, "idle {idle:?}");
        }
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_not_taken_even_before_its_task_ran() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move { h2::server::handshake(server_io).await.expect("server handshake") });
        let conn = handshake(SocketAddr::from(([127, 0, 0, 1], 1)), client_io, "test").await.expect("handshake");
        drop(server.await.unwrap());
        let now = crate::clock::now_nanos();
        assert!(!conn.is_closed(), "the connection's task has not run since the upstream left");
        let idle = now + CATCH_UP_AFTER.as_nanos() as u64;
        assert!(!conn.take(idle).await, "taking an idle connection lets its task notice the close");
        assert!(conn.is_closed());
    }

    #[test]
    fn a_reset_passes_on_the_upstream_reason_found_in_an_error_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("upstream body failed")]
        struct Wrapped(#[source] h2::Error);

        let refused: BoxError = Box::new(Wrapped(h2::Error::from(Reason::REFUSED_STREAM)));
        assert_eq!(h2_reason(&*refused), Some(Reason::REFUSED_STREAM), "found below the top error");
        let plain: BoxError = Box::new(std::io::Error::other("connection reset"));
        assert_eq!(h2_reason(&*plain), None, "no reason: the pipe's own default applies");
    }

    #[tokio::test]
    async fn a_failing_body_resets_the_stream_and_reports_the_cause() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let received = server(server_io, b"unused");
        let mut conn = handshake(SocketAddr::from(([127, 0, 0, 1], 1)), client_io, "test").await.expect("handshake");

        let req = request(vec![
            Ok(Frame::data(Bytes::from_static(b"partial"))),
            Err(Box::new(crate::http::body::BodyTooLarge)),
        ]);
        match conn.send(req).await {
            Err(H2SendError::Failed(e)) => assert!(e.is::<crate::http::body::BodyTooLarge>(), "cause kept: {e}"),
            Err(H2SendError::NotSent(..) | H2SendError::Refused(_)) => panic!("the stream was opened, so it was sent"),
            Ok(resp) => panic!("a response ({}) despite the failed body", resp.status()),
        }
        let got = received.await.unwrap();
        assert_eq!(got.error.and_then(|e| e.reason()), Some(Reason::CANCEL), "the upstream saw a reset");
        assert!(!conn.is_closed(), "one failed stream leaves the connection usable");
    }
}
