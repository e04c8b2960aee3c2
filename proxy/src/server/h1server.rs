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

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::Handler;
use super::spares::{Buffers, MAX_KEPT_OUT, OUT_SIZE};
use crate::http::body::{BoxError, ClientBody};
use crate::http::h1::{
    COALESCE_BODY, MAX_HEADERS, READ_SIZE, forwardable_trailer, parse_length, push_field, push_hex, push_length,
};
use crate::http::headers;
use crate::response::body::RespBody;
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

/// A request head parsed from the buffer, with what serving it needs to know.
pub(crate) struct ParsedRequest {
    pub(crate) req: Request<ClientBody>,
    pub(crate) asked: Asked,
}

/// What a request's head decides about how its response is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Asked {
    /// The connection closes after this response (the client asked, or the proxy drains).
    pub(crate) close: bool,
    /// `HEAD`: the response has no body whatever its framing says.
    pub(crate) head_only: bool,
    /// The client accepts trailers (`TE: trailers`).
    pub(crate) trailers: bool,
}

pub(crate) enum Next {
    Request(ParsedRequest),
    /// Part of a head, within `maxHeaderBytes` so far; nothing was consumed.
    Partial,
    /// Not a request taken here (see the module doc); nothing was consumed.
    Handover,
    /// A head hyper would accept but `http` types cannot hold (nothing else; answered 400).
    Bad(&'static str),
}

/// What a request head's framing fields said (all are read before deciding, so that both
/// framings at once are seen whatever else the head has).
#[derive(Default)]
struct Framing {
    /// A `Content-Length` field, valid or not.
    length: bool,
    /// A `Transfer-Encoding` field.
    chunked: bool,
    /// An invalid `Content-Length`, or two that differ: refused here (400).
    bad_length: bool,
    /// Hyper's to serve: `Expect`, an upgrade.
    handover: bool,
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

/// Parses the request head at the start of `buf`, and takes it (with its body) when it is one
/// served here.
pub(crate) fn parse(buf: &mut BytesMut, recycle: &mut HeaderMap, max_head: usize) -> Next {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // Offsets of each field's name and value, and of the target, in the head (the parser
    // borrows the buffer, which is then split off).
    let mut spans = [[0u32; 4]; MAX_HEADERS];
    let mut body_len: Option<u64> = None;
    let mut framing = Framing::default();
    let mut close = false;
    let mut trailers = false;
    let (len, method, target, count) = {
        let mut head = httparse::Request::new(&mut []);
        let len = match head.parse_with_uninit_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete(len)) if len <= max_head && head.version == Some(1) => len,
            Ok(httparse::Status::Partial) if buf.len() <= max_head => return Next::Partial,
            // Answered here, so that the 400 carries `weft-proxy-error` like every other.
            Err(_) if buf.len() <= max_head => return Next::Bad("malformed request head"),
            _ => return Next::Handover,
        };
        let (Some(method), Some(path)) = (head.method, head.path) else { return Next::Handover };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Next::Handover };
        if method == Method::CONNECT {
            return Next::Handover;
        }
        let base = buf.as_ptr() as usize;
        let target = path.as_ptr() as usize - base;
        let target = [target, target + path.len()];
        for (span, field) in spans.iter_mut().zip(head.headers.iter()) {
            let (name, value) = (field.name.as_bytes(), field.value);
            match name.len() {
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    framing.length = true;
                    match parse_length(value) {
                        Some(n) if body_len.is_none_or(|m| m == n) => body_len = Some(n),
                        _ => framing.bad_length = true,
                    }
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => framing.chunked = true,
                6 if name.eq_ignore_ascii_case(b"expect") => framing.handover = true,
                7 if name.eq_ignore_ascii_case(b"upgrade") => framing.handover = true,
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for token in headers::tokens(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            framing.handover = true;
                        }
                    }
                }
                2 if name.eq_ignore_ascii_case(b"te") => {
                    trailers |= headers::has_token(value, b"trailers");
                }
                _ => {}
            }
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            *span = [name as u32, (name + field.name.len()) as u32, value as u32, (value + field.value.len()) as u32];
        }
        (len, method, target, head.headers.len())
    };
    // Both framings: hyper would read the body as chunked and drop the length, but a server
    // behind another proxy may not (request smuggling). Refused, wherever the fields are.
    if framing.chunked && framing.length {
        return Next::Bad("both Transfer-Encoding and Content-Length");
    }
    if framing.bad_length {
        return Next::Bad("invalid or conflicting Content-Length");
    }
    if framing.chunked || framing.handover {
        return Next::Handover;
    }
    // A body still on its way is streamed by hyper.
    let body_len = body_len.unwrap_or(0);
    if ((buf.len() - len) as u64) < body_len {
        return Next::Handover;
    }
    let head = buf.split_to(len).freeze();
    let body = (body_len > 0).then(|| buf.split_to(body_len as usize).freeze());
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target[0]..target[1])) else {
        return Next::Bad("invalid request target");
    };
    let mut headers = std::mem::take(recycle);
    headers.clear();
    headers.reserve(count);
    for &[ns, ne, vs, ve] in &spans[..count] {
        let Ok(name) = HeaderName::from_bytes(&head[ns as usize..ne as usize]) else {
            return Next::Bad("invalid header name");
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)) else {
            return Next::Bad("invalid header value");
        };
        // Equal duplicates were accepted above; one is passed on.
        if name == header::CONTENT_LENGTH && headers.contains_key(header::CONTENT_LENGTH) {
            continue;
        }
        headers.append(name, value);
    }
    let head_only = method == Method::HEAD;
    let mut req = Request::new(ClientBody::Buffered(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Next::Request(ParsedRequest { req, asked: Asked { close, head_only, trailers } })
}

/// Writes the status line and header fields into `out`, and says how the body follows. The
/// header map is kept in `recycle` for the next request.
fn encode_head(
    out: &mut Vec<u8>,
    recycle: &mut HeaderMap,
    mut parts: http::response::Parts,
    body: RespBody,
    asked: Asked,
) -> Pump {
    let Asked { mut close, head_only, trailers } = asked;
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut declared: Option<u64> = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH {
            // The first valid one goes out; any other is dropped.
            if declared.is_some() {
                continue;
            }
            declared = parse_length(value.as_bytes());
            if declared.is_none() {
                continue;
            }
        } else if name == header::DATE {
            dated = true;
        } else if name == header::TRANSFER_ENCODING {
            // The body is framed here.
            continue;
        } else if name == header::CONNECTION {
            close |= headers::has_token(value.as_bytes(), b"close");
            continue;
        }
        push_field(out, name, value);
    }
    *recycle = std::mem::take(&mut parts.headers);
    recycle.clear();
    if !dated {
        push_date(out);
    }
    let bodiless = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // Bytes still to send of a body with a declared length; `None`: chunked. A bodiless
    // response keeps the length it declared (a HEAD's is the GET's).
    let left = if bodiless {
        Some(0)
    } else if let Some(n) = declared {
        Some(n)
    } else if let Some(n) = body.size_hint().exact() {
        push_length(out, n);
        Some(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        None
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // A HEAD's upstream body (none on the wire) is dropped unread, which finishes it.
    let body = if bodiless { None } else { Some(body) };
    Pump { body, left, close, trailers, sent: 0, large: None }
}

/// Sends a response body after its head (in `out`), framed as the head said. A poll-driven
/// struct rather than an async fn: it is part of every connection's future, idle or not.
struct Pump {
    /// `None` once everything is in `out` (or `large`): then it is written, and done. A
    /// response without a body starts so.
    body: Option<RespBody>,
    /// Bytes still to send of a body with a declared length; `None`: chunked.
    left: Option<u64>,
    /// The connection closes after this response.
    close: bool,
    /// The client accepts trailers.
    trailers: bool,
    /// How much of `out` is written.
    sent: usize,
    /// A piece of body too large to copy into `out`, written after it.
    large: Option<Bytes>,
}

impl Pump {
    fn poll<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        out: &mut Vec<u8>,
    ) -> Poll<Result<bool, H1Error>> {
        loop {
            // The head waits in `out` for the first piece of body, and a body's last piece for
            // its end, so that a small response goes out in one write.
            if self.body.is_some() && self.large.is_none() {
                match self.next_piece(cx, out) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    // Nothing more yet: what there is goes out meanwhile.
                    Poll::Pending if self.sent == out.len() && self.large.is_none() => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            while self.sent < out.len() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &out[self.sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                self.sent += n;
            }
            while let Some(large) = &mut self.large {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, large))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
                }
                large.advance(n);
                if large.is_empty() {
                    self.large = None;
                }
            }
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            out.clear();
            self.sent = 0;
            if self.body.is_none() {
                return Poll::Ready(match self.left {
                    Some(short @ 1..) => Err(H1Error::ShortBody(short)),
                    _ => Ok(!self.close),
                });
            }
        }
    }

    /// Takes the body's pieces that are ready into `out` (or `large`), until the body ends
    /// (`body` taken), a piece is ready to go out, or none is ready.
    fn next_piece(&mut self, cx: &mut Context<'_>, out: &mut Vec<u8>) -> Poll<Result<(), H1Error>> {
        loop {
            let Some(body) = self.body.as_mut().filter(|b| !b.is_end_stream() && self.left != Some(0)) else {
                self.finish(out, None);
                return Poll::Ready(Ok(()));
            };
            let frame = match ready!(Pin::new(body).poll_frame(cx)) {
                None => {
                    self.finish(out, None);
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(H1Error::Body(e))),
                Some(Ok(frame)) => frame,
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    // Trailers end the body.
                    self.finish(out, frame.into_trailers().ok());
                    return Poll::Ready(Ok(()));
                }
            };
            if data.is_empty() {
                continue;
            }
            let mut data = data;
            match &mut self.left {
                Some(left) => {
                    let n = data.len() as u64;
                    if n > *left {
                        // More than the upstream declared: the client gets what was declared,
                        // and the connection is not trusted with another request.
                        data.truncate(*left as usize);
                        self.close = true;
                    }
                    *left -= data.len() as u64;
                }
                None => push_hex(out, data.len()),
            }
            // A large piece with a declared length is written as it is; chunks are copied, to
            // go out with their framing.
            if data.len() > COALESCE_BODY && self.left.is_some() {
                self.large = Some(data);
                return Poll::Ready(Ok(()));
            }
            out.extend_from_slice(&data);
            if self.left.is_none() {
                out.extend_from_slice(b"\r\n");
            }
            if self.close || self.left == Some(0) || self.body.as_ref().is_some_and(|b| b.is_end_stream()) {
                continue;
            }
            return Poll::Ready(Ok(()));
        }
    }

    /// The body ended: the chunked terminator (with trailers, if the client takes them).
    fn finish(&mut self, out: &mut Vec<u8>, fields: Option<HeaderMap>) {
        self.body = None;
        if self.left.is_none() {
            out.extend_from_slice(b"0\r\n");
            if let (true, Some(fields)) = (self.trailers, fields) {
                for (name, value) in fields.iter().filter(|(name, _)| forwardable_trailer(name)) {
                    push_field(out, name, value);
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends a `date` field, formatted at most once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Response;

    const MAX_HEAD: usize = 8192;

    fn taken(raw: &[u8]) -> (ParsedRequest, BytesMut) {
        let mut buf = BytesMut::from(raw);
        match parse(&mut buf, &mut HeaderMap::new(), MAX_HEAD) {
            Next::Request(p) => (p, buf),
            Next::Handover | Next::Partial => panic!("not taken: {:?}", String::from_utf8_lossy(raw)),
            Next::Bad(why) => panic!("bad: {why}"),
        }
    }

    fn handed_over(raw: &[u8], max_head: usize) -> bool {
        let mut buf = BytesMut::from(raw);
        let next = parse(&mut buf, &mut HeaderMap::new(), max_head);
        assert_eq!(&buf[..], raw, "nothing is consumed unless the request is taken");
        matches!(next, Next::Handover)
    }

    #[test]
    fn a_whole_head_is_taken_with_its_body_and_the_next_request_stays() {
        let (p, rest) =
            taken(b"POST /a?b=c HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloGET /next");
        assert_eq!(&rest[..], b"GET /next", "a pipelined request stays in the buffer");
        assert_eq!(p.req.method(), Method::POST);
        assert_eq!(p.req.uri().path_and_query().map(|p| p.as_str()), Some("/a?b=c"));
        assert_eq!(p.req.headers().get_all("x-a").iter().count(), 2, "repeated fields are kept");
        assert_eq!(p.req.headers()["host"], "api");
        assert_eq!(p.asked, Asked { close: false, head_only: false, trailers: false });
        assert!(matches!(p.req.body(), ClientBody::Buffered(Some(b)) if &b[..] == b"hello"));

        let (p, rest) = taken(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, close\r\nTE: deflate, trailers\r\n\r\n");
        assert!(rest.is_empty());
        assert_eq!(p.asked, Asked { close: true, head_only: true, trailers: true });
        assert!(p.req.body().is_end_stream(), "no body");

        // Equal Content-Length fields are one length: passed on once.
        let (p, _) = taken(b"POST / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok");
        assert_eq!(p.req.headers().get_all(header::CONTENT_LENGTH).iter().count(), 1);
    }

    #[test]
    fn both_framings_at_once_are_refused_whatever_else_the_head_has() {
        // Found by the property in h1_properties.rs: hyper, which these went to, reads such a
        // request as chunked and forwards it, where a server behind another hop may take the
        // length (request smuggling).
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nX",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\ncontent-length: 1\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(raw);
            let next = parse(&mut buf, &mut HeaderMap::new(), MAX_HEAD);
            assert!(matches!(next, Next::Bad(_)), "{:?} was not refused", String::from_utf8_lossy(raw));
        }
    }

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
    fn requests_not_taken_here_are_left_whole_for_hyper() {
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhalf"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nconnection: upgrade\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
        ] {
            assert!(handed_over(raw, MAX_HEAD), "{:?} was taken", String::from_utf8_lossy(raw));
        }
        // Malformed heads and lengths are refused here, so their 400 names its reason.
        for raw in [
            &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\na",
            b"THIS IS NOT HTTP\r\n\r\n",
            b"GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n",
        ] {
            let parsed = parse(&mut BytesMut::from(raw), &mut HeaderMap::new(), MAX_HEAD);
            assert!(matches!(parsed, Next::Bad(_)), "{:?} was not refused", String::from_utf8_lossy(raw));
        }
        // A head over maxHeaderBytes is hyper's to refuse (431; hyper's own limit is at least
        // 8 KiB, so a lower setting holds from there).
        let raw = b"GET / HTTP/1.1\r\nX-Big: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        assert!(handed_over(raw, raw.len() - 1));
        assert!(handed_over(&raw[..40], 39), "so is the part of one that already is");
        // Part of a head within the limit is waited for.
        let mut part = BytesMut::from(&raw[..40]);
        assert!(matches!(parse(&mut part, &mut HeaderMap::new(), raw.len()), Next::Partial));
        assert_eq!(part.len(), 40, "nothing consumed");
        let taken = parse(&mut BytesMut::from(&raw[..]), &mut HeaderMap::new(), raw.len());
        assert!(matches!(taken, Next::Request(_)), "a head of exactly maxHeaderBytes is taken");
    }

    /// The wire bytes of `resp` answered on a keep-alive connection (or not), and whether the
    /// connection could take another request.
    async fn written(resp: Response<RespBody>, keep_alive: bool, head_only: bool) -> (String, bool) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut out = Vec::new();
        let mut recycle = HeaderMap::new();
        let (parts, body) = resp.into_parts();
        let asked = Asked { close: !keep_alive, head_only, trailers: false };
        let mut pump = encode_head(&mut out, &mut recycle, parts, body, asked);
        let again = std::future::poll_fn(|cx| pump.poll(cx, &mut server, &mut out)).await.unwrap();
        drop(server);
        let mut wire = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut wire).await.unwrap();
        (String::from_utf8(wire).unwrap(), again)
    }

    #[tokio::test]
    async fn responses_are_framed_dated_and_say_when_the_connection_closes() {
        let mut resp = Response::new(RespBody::full("hello"));
        resp.headers_mut().insert("x-a", HeaderValue::from_static("1"));
        let (wire, again) = written(resp, true, false).await;
        assert!(wire.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "), "{wire}");
        assert!(wire.ends_with(" GMT\r\ncontent-length: 5\r\n\r\nhello"), "{wire}");
        assert!(again);

        // The upstream's own date and length are kept; a closing connection says so.
        let mut resp = Response::new(RespBody::full("hi"));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        resp.headers_mut().insert(header::DATE, HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        let (wire, again) = written(resp, false, false).await;
        assert_eq!(
            wire,
            "HTTP/1.1 404 Not Found\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 2\r\n\
             connection: close\r\n\r\nhi"
        );
        assert!(!again);

        // However many Content-Length fields the response has, one goes out.
        let mut resp = Response::new(RespBody::full("hello"));
        resp.headers_mut().append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        resp.headers_mut().append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let (wire, again) = written(resp, true, false).await;
        assert_eq!(wire.matches("content-length").count(), 1, "{wire}");
        assert!(wire.contains("\r\ncontent-length: 5\r\n") && wire.ends_with("\r\n\r\nhello") && again, "{wire}");

        // HEAD: the head only, with the length the body would have had.
        let (wire, again) = written(Response::new(RespBody::full("hello")), true, true).await;
        assert!(wire.ends_with("\r\n\r\n") && !wire.contains("hello"), "{wire}");
        assert!(again);
    }

    #[tokio::test]
    async fn a_body_shorter_than_its_declared_length_fails_the_connection() {
        let mut resp = Response::new(RespBody::full("abc"));
        resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        let (_client, mut server) = tokio::io::duplex(64 * 1024);
        let (mut out, mut recycle) = (Vec::new(), HeaderMap::new());
        let (parts, body) = resp.into_parts();
        let asked = Asked { close: false, head_only: false, trailers: false };
        let mut pump = encode_head(&mut out, &mut recycle, parts, body, asked);
        let sent = std::future::poll_fn(|cx| pump.poll(cx, &mut server, &mut out)).await;
        assert!(matches!(sent, Err(H1Error::ShortBody(7))), "{sent:?}");
    }

    #[test]
    fn an_idle_connection_future_stays_small() {
        // Held by every open HTTP/1.1 client connection, idle or not (docs/performance.md,
        // "Memory per idle connection").
        let size = crate::test_support::future_size(serve::<tokio::net::TcpStream>);
        assert!(size <= 832, "h1server::serve's future is {size} bytes");
    }
}
