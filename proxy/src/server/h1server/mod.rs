//! Serves HTTP/1.1 client connections: the request shapes nearly all traffic has, here, and
//! everything else by hyper's server, which gets the connection and the bytes read so far.
//!
//! Taken here: an HTTP/1.1 head within `maxHeaderBytes` and the 8 KiB read buffer, with either
//! no body or a `Content-Length` body that arrived with it; no `Transfer-Encoding`, `Expect` or
//! upgrade (including `CONNECT`). A head with both `Content-Length` and `Transfer-Encoding` is
//! refused here (400, connection closed) rather than read as chunked. Anything else (a streamed or chunked body, HTTP/1.0, an
//! upgrade, a larger or malformed head) goes to hyper, which answers, streams or refuses it as
//! before, for the rest of that connection. With hyper for every request, its server was
//! the largest part of a proxied request's cost (docs/performance.md), and it gave up its read buffer
//! on every request: right after taking a request it read ahead to see whether the client had
//! gone, into a buffer the request's head still shared, so it allocated a new 8 KiB one.
//!
//! Here the connection's task parses the head in place (header values and the body share the
//! read buffer's memory), routes the request (`Handler::call`), and while the answer is
//! pending reads only into the buffer's spare room, which notices a client that has gone (the
//! answer is dropped, and its upstream request with it) without reallocating. The response
//! head goes out in one write with the body when that is small and ready. The header map of
//! each response is kept for the next request's head.
//!
//! Time is bounded with one timer per connection, armed when it first waits and moved later
//! only when it fires early: `clientIdleTimeout` for the first byte of each request,
//! `headerReadTimeout` for the rest of a head once part of it has arrived (a head can come in
//! several TCP segments or TLS records). An idle close is quiet; a slow head is a protocol
//! error, as with hyper.
//!
//! `parse` reads a request head in place; `write` writes the response and its body; this
//! module runs the connection between them.

mod parse;
mod write;

pub(crate) use parse::{Asked, Next, ParsedRequest, parse};
use write::encode_head;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Handler;
use super::spares::{Buffers, MAX_KEPT_OUT, OUT_SIZE};
use crate::http::body::BoxError;
use crate::http::h1::READ_SIZE;
use crate::response::errors::ProxyError;

/// Spare room below which the buffer is compacted (or grown) before a read.
const MIN_ROOM: usize = 1024;
/// How long a closing connection waits for its TLS close_notify to go out.
const QUIET_CLOSE: Duration = Duration::from_secs(1);

/// How a connection served here ended.
pub(crate) enum Served<S> {
    /// The client closed it, it idled out, draining closed it, or it broke.
    Ended(Result<(), H1Error>),
    /// The next request is not one this server takes: hyper serves the connection from here,
    /// starting with the bytes already read.
    Handover(S, Bytes),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum H1Error {
    #[error("client connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("response body failed: {0}")]
    Body(BoxError),
    #[error("response body ended {0} bytes short of its Content-Length")]
    ShortBody(u64),
    #[error("invalid request head: {0}")]
    BadRequest(&'static str),
    #[error("request head not complete within {0:?}")]
    HeadTimeout(Duration),
    #[error("client closed the connection in the middle of a request head")]
    Incomplete,
}

/// How long a connection may wait and how large a head may be.
#[derive(Clone, Copy)]
pub(crate) struct Limits {
    /// `clientIdleTimeout`: for the first byte of each request.
    pub idle: Duration,
    /// `headerReadTimeout`: for the rest of a head once it has begun.
    pub head: Duration,
    /// `maxHeaderBytes`.
    pub max_head: usize,
}

/// Serves `io` until it ends or hands it to hyper.
#[expect(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
pub(crate) fn serve<S>(mut io: S, handler: &Handler, limits: Limits) -> impl Future<Output = Served<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Not an async fn, which would keep its arguments twice in the future (as passed and as locals).
    async move {
        // Taken when bytes arrive, given to the thread's spares while the connection waits.
        let mut bufs = Buffers::default();
        let mut idle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut idle_since = Instant::now();
        // When the head being read must be complete, once part of it has arrived.
        let mut head_by: Option<Instant> = None;
        // Once draining, a connection that has been answered closes rather than wait; a new one
        // gets its first request served (with `connection: close`).
        let mut answered = false;
        loop {
            if bufs.read.is_empty() {
                match wait_for_bytes(&mut io, &mut bufs, handler, &mut idle_timer, idle_since + limits.idle, answered)
                    .await
                {
                    Wait::Bytes => {}
                    Wait::Closed | Wait::TimedOut => {
                        quiet_close(&mut io, &mut idle_timer).await;
                        return Served::Ended(Ok(()));
                    }
                    Wait::Failed(e) => return Served::Ended(Err(e.into())),
                }
            }
            // Requests and responses are moved out of the locals that held them before each
            // await; the blocks end those locals (a moved-from local still takes room in the
            // connection's future while its scope lasts).
            let taken = match parse(&mut bufs.read, &mut bufs.headers, limits.max_head) {
                Next::Request(ParsedRequest { req, asked }) => {
                    head_by = None;
                    Some(Ok((handler.call(req, Instant::now()), asked)))
                }
                // The rest of a usual head is on its way (a head can arrive in several reads, in
                // TCP segments or TLS records): waited for below, up to headerReadTimeout.
                Next::Partial if bufs.read.len() < READ_SIZE => None,
                Next::Partial | Next::Handover => return Served::Handover(io, bufs.read.freeze()),
                Next::Bad(why) => Some(Err(why)),
            };
            let Some(taken) = taken else {
                let by = *head_by.get_or_insert_with(|| Instant::now() + limits.head);
                match wait_for_bytes(&mut io, &mut bufs, handler, &mut idle_timer, by, false).await {
                    Wait::Bytes => continue,
                    Wait::Closed => return Served::Ended(Err(H1Error::Incomplete)),
                    Wait::TimedOut => return Served::Ended(Err(H1Error::HeadTimeout(limits.head))),
                    Wait::Failed(e) => return Served::Ended(Err(e.into())),
                }
            };
            let (answer, asked) = match taken {
                Ok(taken) => taken,
                Err(why) => {
                    let _ = io.write_all(&ProxyError::BadRequest.http1_bytes_then_close()).await;
                    let _ = io.shutdown().await;
                    return Served::Ended(Err(H1Error::BadRequest(why)));
                }
            };
            let mut pump = {
                let Some(resp) = answer_or_gone(&mut io, &mut bufs.read, answer).await else {
                    // The client went away; dropping the answer cancels its upstream request.
                    return Served::Ended(Ok(()));
                };
                answered = true;
                let asked = Asked { close: asked.close || handler.is_draining(), ..asked };
                let (parts, body) = resp.into_parts();
                encode_head(&mut bufs.out, &mut bufs.headers, parts, body, asked)
            };
            match std::future::poll_fn(|cx| pump.poll(cx, &mut io, &mut bufs.out)).await {
                Ok(true) => {}
                Ok(_) => {
                    let _ = io.shutdown().await;
                    return Served::Ended(Ok(()));
                }
                Err(e) => return Served::Ended(Err(e)),
            }
            // A large head or chunked body grew the write buffer: it is not kept.
            if bufs.out.capacity() > MAX_KEPT_OUT {
                bufs.out = Vec::with_capacity(OUT_SIZE);
            }
            idle_since = Instant::now();
        }
    }
}

/// What waiting for a client's bytes came to.
enum Wait {
    /// Some arrived (in `buf`).
    Bytes,
    /// The client closed, or draining began (where that closes).
    Closed,
    /// The deadline passed.
    TimedOut,
    Failed(io::Error),
}

/// Waits for more bytes from the client, until `deadline`; with `drain_closes`, only until
/// draining begins. While none have come and none are held (between requests), the
/// connection's buffers wait in the thread's spares. One timer per connection: armed the first time, moved earlier when a
/// deadline is earlier, and moved later only when it fires.
async fn wait_for_bytes<S: AsyncRead + Unpin>(
    io: &mut S,
    bufs: &mut Buffers,
    handler: &Handler,
    timer: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    deadline: Instant,
    drain_closes: bool,
) -> Wait {
    let deadline = tokio::time::Instant::from_std(deadline);
    std::future::poll_fn(|cx| {
        bufs.ensure();
        make_room(&mut bufs.read);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut bufs.read) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Wait::Closed),
            Poll::Ready(Ok(_)) => return Poll::Ready(Wait::Bytes),
            Poll::Ready(Err(e)) => return Poll::Ready(Wait::Failed(e)),
            Poll::Pending => bufs.release(),
        }
        if drain_closes && handler.is_draining() {
            return Poll::Ready(Wait::Closed);
        }
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(Wait::TimedOut);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Compacts the buffer, or grows it, when little room is left to read into. Compacting
/// reuses the allocation once the requests that shared it are gone. (A head cut short by the
/// room left is completed by the next read.)
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < MIN_ROOM {
        buf.reserve(READ_SIZE);
    }
}

/// Ends a connection that closes between requests: a TLS client gets its close_notify, for
/// at most `QUIET_CLOSE` (on the connection's one timer).
async fn quiet_close<S: AsyncWrite + Unpin>(io: &mut S, timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    let by = tokio::time::Instant::now() + QUIET_CLOSE;
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(by)));
    timer.as_mut().reset(by);
    std::future::poll_fn(|cx| {
        let done = Pin::new(&mut *io).poll_shutdown(cx).is_ready() || timer.as_mut().poll(cx).is_ready();
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await
}

/// Awaits the answer; meanwhile reads whatever the client sends into the buffer's spare room
/// (a pipelined request stays there). `None`: the client closed or broke the connection.
async fn answer_or_gone<S: AsyncRead + Unpin, F: Future + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    mut answer: F,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(resp) = Pin::new(&mut answer).poll(cx) {
            return Poll::Ready(Some(resp));
        }
        // With no room left, the client is not read until this answer is sent.
        while buf.capacity() > buf.len() {
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_running_out_of_room_is_compacted_in_place() {
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let start = buf.as_ptr();
        buf.extend_from_slice(&[b'a'; READ_SIZE - 100]);
        // Requests taken, and gone by the time the next one is read.
        drop(buf.split_to(READ_SIZE - 100).freeze());
        make_room(&mut buf);
        assert!(buf.capacity() >= READ_SIZE, "room left: {}", buf.capacity());
        assert_eq!(buf.as_ptr(), start, "the same allocation, from its start");
    }

    #[test]
    fn an_idle_connection_future_stays_small() {
        // Held by every open HTTP/1.1 client connection, idle or not (docs/performance.md,
        // "Memory per idle connection").
        let size = crate::test_support::future_size(serve::<tokio::net::TcpStream>);
        assert!(size <= 832, "h1server::serve's future is {size} bytes");
    }
}
