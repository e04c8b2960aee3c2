//! The HTTP/1.1 client for upstreams: writes a request and reads its response on a pooled
//! connection, in the task of the client connection that asked for it.
//!
//! hyper's client runs every upstream connection as a task of its own and hands it each request
//! through a channel and each response back through another, so one proxied request woke three
//! times as many tasks as it needed, and its connection task read ahead while the response was
//! still in flight, which made it give up its read buffer (8 KiB reallocated per request).
//! Here the request's own task writes the request, reads the response head, and reads the body
//! as the client side asks for it; an idle connection is not read at all, so by the next
//! request the previous response's bytes are gone and the buffer is reused in place.
//!
//! Framing follows RFC 9112 §6: no body for HEAD, 1xx, 204 and 304; `Transfer-Encoding`
//! (chunked or until close) over `Content-Length`, and a response carrying both is not reused;
//! otherwise the body runs until the upstream closes. Upgrades stay with hyper
//! (`forward::forward_upgrade`). `decode` reads what the upstream sends (the head, then the
//! body's framing); this module writes the request and owns the connection.

mod decode;

use decode::Chunk;
pub(crate) use decode::{Decode, ResponseHead, Step, parse_head};

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::http::body::{BoxError, ReqBody};
use crate::http::h1::{COALESCE_BODY, READ_SIZE, forwardable_trailer, push_field, push_hex, push_length};

/// Largest response head accepted (status line and headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most interim (1xx) responses before the final one.
pub(crate) const MAX_INTERIM: usize = 8;
/// Free space ensured before each read starts at `READ_SIZE`: it doubles after a read that
/// fills it, up to this maximum, and halves after one that uses under a quarter. A body of
/// known length gets room for all of it (up to the maximum), so a 64 KiB response takes two
/// reads, head and rest.
const MAX_READ_SIZE: usize = 128 * 1024;

/// An HTTP/1.1 connection to an upstream, idle between requests.
pub(crate) struct H1Conn {
    io: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept for its allocation).
    out: Vec<u8>,
    read_size: usize,
}

/// Where a connection goes back to once its response body was read to the end.
#[derive(Clone, Copy)]
pub(crate) struct Home {
    pub addr: SocketAddr,
    pub idle_timeout: Duration,
}

/// A request that produced no response.
pub(crate) enum H1SendError {
    /// The connection ended before any byte of a response arrived, and the request's body was
    /// not consumed: it comes back, to be sent again where that is safe.
    Closed(Request<ReqBody>, io::Error),
    /// The request may have been acted on, or its body is gone.
    Failed(BoxError),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct ProtocolError(&'static str);

fn failed(msg: &'static str) -> H1SendError {
    H1SendError::Failed(Box::new(ProtocolError(msg)))
}

fn head_too_large() -> BoxError {
    Box::new(ProtocolError("upstream response head exceeds 64 KiB"))
}

/// What the upstream said while the request body was still going out.
enum Early {
    Nothing,
    /// A final response that refuses the request: stop sending the body.
    Refused,
    /// A final response that accepts it: send the rest, then read the response.
    Answered,
}

/// How the request body goes out.
enum Outgoing {
    /// Everything, head and body, is in `out`.
    Done,
    /// The body follows the head as is (declared with Content-Length).
    Buffered(Bytes),
    /// The body streams, with a declared length or chunked.
    Stream { chunked: bool, declared: Option<u64> },
}

impl H1Conn {
    pub(crate) fn new(io: TcpStream) -> H1Conn {
        H1Conn { io, buf: BytesMut::new(), out: Vec::new(), read_size: READ_SIZE }
    }

    /// The socket, for hyper to take over (upgrades). Only for a connection never used.
    pub(crate) fn into_io(self) -> TcpStream {
        self.io
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it nor
    /// sent anything unasked. With `ask_kernel`, in one system call: the runtime learns of an
    /// upstream's FIN only when it next polls for events, and a request that arrived in the
    /// same turn would otherwise go out on a connection already closed (the keep-alive race).
    /// Without, it costs no system call unless the socket became readable.
    pub(crate) fn is_usable(&self, ask_kernel: bool) -> bool {
        use std::io::Read as _;
        let socket = socket2::SockRef::from(&self.io);
        let mut probe = [0u8; 1];
        let mut asked = false;
        // Through the runtime when it saw the socket readable, so that a `WouldBlock` clears
        // that readiness and the response's first read waits without a wasted call.
        let mut answer = self.io.try_io(Interest::READABLE, || {
            asked = true;
            (&*socket).read(&mut probe)
        });
        if !asked && ask_kernel {
            answer = (&*socket).read(&mut probe);
        }
        matches!(answer, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `req` and reads the response head; the body then reads from this connection and
    /// returns it to this worker's pool when it ends (see `H1Body`).
    pub(crate) async fn send(mut self, mut req: Request<ReqBody>, home: Home) -> Result<Response<H1Body>, H1SendError> {
        let mut early = false;
        match self.encode_head(&req) {
            Outgoing::Done => {
                if let Err(e) = self.io.write_all(&self.out).await {
                    return Err(H1SendError::Closed(req, e));
                }
            }
            Outgoing::Buffered(body) => {
                if let Err(e) = self.io.write_all(&self.out).await {
                    return Err(H1SendError::Closed(req, e));
                }
                if let Err(e) = self.io.write_all(&body).await {
                    return Err(H1SendError::Closed(req, e));
                }
            }
            // The head goes out with the first piece of the body. Boxed: its future is large,
            // and inline it would be reserved (and moved) in every request's future.
            Outgoing::Stream { chunked, declared } => {
                early =
                    Box::pin(self.stream_body(req.body_mut(), chunked, declared)).await.map_err(H1SendError::Failed)?;
            }
        }
        let head_only = req.method() == Method::HEAD;
        // A 2xx to CONNECT turns the connection into a tunnel whatever its framing says.
        let tunnel = req.method() == Method::CONNECT;
        let mut received = false;
        let mut interim = 0;
        let (resp, decode, keep_alive) = loop {
            if !self.buf.is_empty() {
                received = true;
                // The request's header map, no longer needed once a response is arriving, is
                // cleared and filled with the response's: hyper's server hands it back for the
                // next request, so in a steady stream no header map is allocated.
                match parse_head(&mut self.buf, head_only, req.headers_mut()) {
                    Ok(Some(ResponseHead::Final(parts))) => break parts,
                    Ok(Some(ResponseHead::Informational)) if interim < MAX_INTERIM => {
                        interim += 1;
                        continue;
                    }
                    Ok(Some(ResponseHead::Informational)) => {
                        return Err(failed("upstream sent too many interim responses"));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(H1SendError::Failed(e)),
                }
            }
            self.reserve();
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) if !received && replayable(&req) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before responding",
                    );
                    return Err(H1SendError::Closed(req, e));
                }
                Ok(0) => return Err(failed("upstream closed the connection before the response head ended")),
                Ok(_) => {}
                Err(e) if !received && replayable(&req) => return Err(H1SendError::Closed(req, e)),
                Err(e) => return Err(H1SendError::Failed(e.into())),
            }
        };
        // A refusal that came before the request body was all sent leaves the connection in an
        // unknown state.
        let keep_alive = keep_alive && !early && !tunnel;
        let mut body = H1Body { conn: Some(self), decode, keep_alive, home };
        if body.is_end_stream() {
            // No body to read (HEAD, 204, 304, Content-Length: 0): free at once.
            body.finish();
        }
        Ok(resp.map(|()| body))
    }

    /// Writes the request head into `out`, with the body too when it is small and buffered.
    fn encode_head(&mut self, req: &Request<ReqBody>) -> Outgoing {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(req.method().as_str().as_bytes());
        out.push(b' ');
        let uri = req.uri();
        match uri.path_and_query() {
            Some(pq) if uri.scheme().is_none() => out.extend_from_slice(pq.as_str().as_bytes()),
            _ => out.extend_from_slice(uri.to_string().as_bytes()),
        }
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut had_length = false;
        for (name, value) in req.headers() {
            // The framing is this hop's own (hop-by-hop headers were removed before).
            if name == header::CONTENT_LENGTH {
                had_length = true;
                continue;
            }
            if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
                continue;
            }
            push_field(out, name, value);
        }
        let outgoing = match req.body() {
            ReqBody::Buffered(None) => {
                if had_length
                    || !matches!(
                        *req.method(),
                        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE | Method::CONNECT
                    )
                {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Outgoing::Done
            }
            ReqBody::Buffered(Some(body)) => {
                push_length(out, body.len() as u64);
                if body.len() <= COALESCE_BODY {
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(body);
                    return Outgoing::Done;
                }
                Outgoing::Buffered(body.clone())
            }
            streaming => match streaming.size_hint().exact() {
                Some(n) => {
                    push_length(out, n);
                    Outgoing::Stream { chunked: false, declared: Some(n) }
                }
                None => {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Outgoing::Stream { chunked: true, declared: None }
                }
            },
        };
        out.extend_from_slice(b"\r\n");
        outgoing
    }

    /// Streams the request body after the head (still in `out`), each piece in one write when
    /// small; the head goes with the first piece when that is ready at once, else on its own
    /// (the upstream sees the request while the client takes its time). Returns true when the
    /// upstream refused the request before its body was all sent (an error status or
    /// `Connection: close`): the rest is not sent, and the response is read next. An early
    /// success answer does not stop the body; it is read once the body is all sent.
    async fn stream_body(
        &mut self,
        body: &mut ReqBody,
        chunked: bool,
        declared: Option<u64>,
    ) -> Result<bool, BoxError> {
        match self.stream_body_inner(body, chunked, declared).await {
            // An upstream that answers early and closes without reading the rest makes a write
            // fail (reset): its answer is still in the receive queue.
            Err(e) if e.is::<io::Error>() && self.salvage() => Ok(true),
            other => other,
        }
    }

    async fn stream_body_inner(
        &mut self,
        body: &mut ReqBody,
        chunked: bool,
        declared: Option<u64>,
    ) -> Result<bool, BoxError> {
        let mut sent = 0u64;
        let mut head_sent = false;
        let mut answered = false;
        let mut trailers = None;
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(frame) => Some(frame),
                Poll::Pending => None,
            })
        })
        .await;
        let mut next = match first {
            Some(frame) => Some(frame),
            None => {
                self.io.write_all(&self.out).await?;
                head_sent = true;
                None
            }
        };
        loop {
            let frame = match next.take() {
                Some(frame) => frame,
                None => tokio::select! {
                    biased;
                    ready = self.io.readable(), if head_sent && !answered => {
                        ready?;
                        match self.read_early()? {
                            Early::Refused => return Ok(true),
                            Early::Answered => answered = true,
                            Early::Nothing => {}
                        }
                        continue;
                    }
                    frame = body.frame() => frame,
                },
            };
            if head_sent {
                self.out.clear();
            }
            match frame {
                None => break,
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        sent += data.len() as u64;
                        if declared.is_some_and(|n| sent > n) {
                            return Err(Box::new(ProtocolError("request body longer than its Content-Length")));
                        }
                        if data.is_empty() {
                            continue;
                        }
                        if chunked {
                            push_hex(&mut self.out, data.len());
                        }
                        if data.len() <= COALESCE_BODY {
                            self.out.extend_from_slice(&data);
                            if chunked {
                                self.out.extend_from_slice(b"\r\n");
                            }
                            self.io.write_all(&self.out).await?;
                        } else {
                            self.io.write_all(&self.out).await?;
                            self.io.write_all(&data).await?;
                            if chunked {
                                self.io.write_all(b"\r\n").await?;
                            }
                        }
                        head_sent = true;
                    }
                    Err(frame) => {
                        // Trailers end the body (only chunked framing can carry them).
                        if let Ok(last) = frame.into_trailers() {
                            trailers = Some(last);
                            break;
                        }
                    }
                },
            }
        }
        if declared.is_some_and(|n| sent < n) {
            return Err(Box::new(ProtocolError("request body shorter than its Content-Length")));
        }
        if chunked {
            self.out.extend_from_slice(b"0\r\n");
            for (name, value) in trailers.iter().flatten().filter(|(name, _)| forwardable_trailer(name)) {
                push_field(&mut self.out, name, value);
            }
            self.out.extend_from_slice(b"\r\n");
        }
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
        }
        Ok(false)
    }

    /// Reads what the upstream sent while the request body was going out. Interim responses
    /// (100 Continue) are consumed; a final head is left in the buffer for `send`.
    fn read_early(&mut self) -> Result<Early, BoxError> {
        self.reserve();
        match self.io.try_read_buf(&mut self.buf) {
            // Closed: fine if it answered first (the answer is in the buffer).
            Ok(0) => {
                return match self.early_head()? {
                    Early::Nothing => {
                        Err(Box::new(ProtocolError("upstream closed the connection while the request body was sent")))
                    }
                    _ => Ok(Early::Refused),
                };
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Early::Nothing),
            Err(e) => return Err(e.into()),
        }
        self.early_head()
    }

    /// Whether a final response head is in the buffer (interim ones are consumed).
    fn early_head(&mut self) -> Result<Early, BoxError> {
        loop {
            // Parsed on a copy (a final head stays for `send`), and only once it is complete.
            if !self.buf.windows(4).any(|w| w == b"\r\n\r\n") {
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(head_too_large());
                }
                return Ok(Early::Nothing);
            }
            let mut peek = self.buf.clone();
            match parse_head(&mut peek, false, &mut HeaderMap::new())? {
                Some(ResponseHead::Informational) => self.buf = peek,
                Some(ResponseHead::Final((resp, _, keep_alive))) => {
                    let refused = resp.status().as_u16() >= 400 || !keep_alive;
                    return Ok(if refused { Early::Refused } else { Early::Answered });
                }
                None => return Ok(Early::Nothing),
            }
        }
    }

    /// After a failed write: reads whatever the upstream sent before it closed (straight from
    /// the socket: the runtime may not have seen it readable yet); true if that holds a final
    /// response head.
    fn salvage(&mut self) -> bool {
        use std::io::Read as _;
        let socket = socket2::SockRef::from(&self.io);
        let mut chunk = [0u8; 4096];
        while self.buf.len() < MAX_HEAD_BYTES {
            match (&*socket).read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        matches!(self.early_head(), Ok(Early::Refused | Early::Answered))
    }

    /// Makes room for the next read, reusing the buffer in place when nothing else holds it.
    fn reserve(&mut self) {
        self.reserve_for(0);
    }

    /// Makes room for `expected` more bytes (or the adaptive read size, if larger).
    fn reserve_for(&mut self, expected: usize) {
        let want = self.read_size.max(expected.min(MAX_READ_SIZE));
        if self.buf.capacity() - self.buf.len() < want / 2 {
            self.buf.reserve(want);
        }
    }

    /// Reads into the buffer for a body that has `expected` bytes to come (0: unknown).
    fn poll_read(&mut self, cx: &mut Context<'_>, expected: usize) -> Poll<io::Result<usize>> {
        self.reserve_for(expected);
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf))?;
        if n == room && self.read_size < MAX_READ_SIZE {
            self.read_size *= 2;
        } else if n < self.read_size / 4 && self.read_size > READ_SIZE {
            self.read_size /= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// Whether the request can be sent again as it is: its body was never consumed.
fn replayable(req: &Request<ReqBody>) -> bool {
    matches!(req.body(), ReqBody::Buffered(_))
}

/// A response body read from its connection as the client side asks for it. Read to the end,
/// it returns the connection to this worker's pool; dropped before, it closes it.
pub(crate) struct H1Body {
    conn: Option<H1Conn>,
    decode: Decode,
    keep_alive: bool,
    home: Home,
}

impl H1Body {
    /// The body ended: the connection goes back to the pool when it can take another request
    /// (framed response, nothing left over), else it closes.
    fn finish(&mut self) {
        self.decode = Decode::Done;
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            // A read buffer grown to the largest size is let go (`capacity()` only counts what
            // is past the bytes handed on, so the read size tells what was allocated).
            if conn.read_size >= MAX_READ_SIZE || conn.out.capacity() > 2 * COALESCE_BODY {
                conn.buf = BytesMut::new();
                conn.out = Vec::new();
                conn.read_size = READ_SIZE;
            }
            super::pool::put_h1(self.home.addr, conn, self.home.idle_timeout);
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decode.step(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    if matches!(this.decode, Decode::Length(0)) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let expected = match this.decode {
                Decode::Length(left) | Decode::Chunked(Chunk::Data(left)) => {
                    usize::try_from(left).unwrap_or(usize::MAX)
                }
                _ => 0,
            };
            match ready!(conn.poll_read(cx, expected)) {
                Ok(0) if matches!(this.decode, Decode::UntilClose) => {
                    this.decode = Decode::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(ProtocolError(
                        "upstream closed the connection before the response body ended",
                    )))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decode, Decode::Done | Decode::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decode {
            Decode::Length(n) => SizeHint::with_exact(n),
            Decode::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use http::{HeaderValue, StatusCode};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A client connection and the upstream's end of it, on loopback.
    async fn pair() -> (H1Conn, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (H1Conn::new(client), server, addr)
    }

    fn home(addr: SocketAddr) -> Home {
        Home { addr, idle_timeout: Duration::from_secs(30) }
    }

    fn request(method: Method, body: Option<&'static str>) -> Request<ReqBody> {
        let mut req = Request::new(ReqBody::Buffered(body.map(|b| Bytes::from_static(b.as_bytes()))));
        *req.method_mut() = method;
        *req.uri_mut() = "/path?q=1".parse().unwrap();
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("svc"));
        req
    }

    /// Reads one request head (and `body` more bytes) from the upstream's side.
    async fn read_request(server: &mut TcpStream, body: usize) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(server.read(&mut byte).await.unwrap(), 1, "connection closed mid-head");
            got.push(byte[0]);
        }
        let mut rest = vec![0u8; body];
        server.read_exact(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        String::from_utf8(got).unwrap()
    }

    /// What the upstream does after its answer.
    #[derive(Clone, Copy)]
    enum Then {
        Close,
        Hold,
    }

    /// A client connection whose upstream reads one request, writes `pieces` (stopping at a
    /// failed write), then closes or holds the connection open.
    async fn answering(pieces: Vec<Vec<u8>>, then: Then) -> (H1Conn, SocketAddr) {
        let (conn, mut server, addr) = pair().await;
        tokio::spawn(async move {
            read_request(&mut server, 0).await;
            for piece in pieces {
                if server.write_all(&piece).await.is_err() {
                    return;
                }
            }
            if let Then::Hold = then {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        (conn, addr)
    }

    async fn send_ok(conn: H1Conn, req: Request<ReqBody>, addr: SocketAddr) -> Response<H1Body> {
        match conn.send(req, home(addr)).await {
            Ok(resp) => resp,
            Err(H1SendError::Closed(_, e)) => panic!("closed: {e}"),
            Err(H1SendError::Failed(e)) => panic!("failed: {e}"),
        }
    }

    fn send_error(result: Result<Response<H1Body>, H1SendError>) -> String {
        match result {
            Ok(resp) => panic!("expected an error, got {}", resp.status()),
            Err(H1SendError::Closed(_, e)) => format!("closed: {e}"),
            Err(H1SendError::Failed(e)) => e.to_string(),
        }
    }

    fn pooled(addr: SocketAddr) -> Option<H1Conn> {
        super::super::pool::take_idle_h1(addr, Instant::now())
    }

    #[tokio::test]
    async fn a_sized_response_is_read_and_its_connection_serves_the_next_request() {
        let (conn, mut server, addr) = pair().await;
        let upstream = tokio::spawn(async move {
            let first = read_request(&mut server, 0).await;
            server
                .write_all(b"HTTP/1.1 200 OK\r\nX-Early: 1\r\nContent-Length: 5\r\nX-A: 1\r\nConnection: keep-alive, x-hop,X-Early\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\nhello")
                .await
                .unwrap();
            let second = read_request(&mut server, 3).await;
            server.write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            (first, second)
        });
        let resp = send_ok(conn, request(Method::GET, None), addr).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-a"], "1");
        for hop in ["connection", "x-hop", "x-early", "keep-alive"] {
            assert!(!resp.headers().contains_key(hop), "hop-by-hop {hop} stops at the proxy");
        }
        assert_eq!(resp.body().size_hint().exact(), Some(5));
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
        let conn = pooled(addr).expect("the connection went back to the pool");
        let resp = send_ok(conn, request(Method::POST, Some("abc")), addr).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"ok");
        let (first, second) = upstream.await.unwrap();
        assert_eq!(first, "GET /path?q=1 HTTP/1.1\r\nhost: svc\r\n\r\n");
        assert_eq!(second, "POST /path?q=1 HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\n\r\nabc");
    }

    #[tokio::test]
    async fn a_chunked_response_arrives_whole_with_its_trailers() {
        let (conn, mut server, addr) = pair().await;
        tokio::spawn(async move {
            read_request(&mut server, 0).await;
            server.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhel").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            server.write_all(b"lo\r\n6\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n").await.unwrap();
            // Keep the connection open: the body must end on the framing, not on a close.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let resp = send_ok(conn, request(Method::GET, None), addr).await;
        assert!(!resp.headers().contains_key("transfer-encoding"), "the client's side frames the body itself");
        let collected = resp.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], b"hello world");
        assert!(pooled(addr).is_some(), "a chunked response leaves the connection reusable");
    }

    #[tokio::test]
    async fn a_response_without_framing_runs_until_close_and_is_not_reused() {
        let pieces = vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ".to_vec(), b"close".to_vec()];
        let (conn, addr) = answering(pieces, Then::Close).await;
        let resp = send_ok(conn, request(Method::GET, None), addr).await;
        assert_eq!(resp.body().size_hint().exact(), None);
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"until close");
        assert!(pooled(addr).is_none());
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_bodiless_ones_free_the_connection_at_once() {
        let (conn, mut server, addr) = pair().await;
        tokio::spawn(async move {
            read_request(&mut server, 0).await;
            server.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            read_request(&mut server, 0).await;
            // HEAD: the length describes the body a GET would have; none follows.
            server.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let resp = send_ok(conn, request(Method::GET, None), addr).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert!(resp.body().is_end_stream());
        let conn = pooled(addr).expect("pooled without reading the (empty) body");
        let resp = send_ok(conn, request(Method::HEAD, None), addr).await;
        assert_eq!(resp.headers()["content-length"], "10");
        assert!(resp.into_body().collect().await.unwrap().to_bytes().is_empty());
        assert!(pooled(addr).is_some());
    }

    #[tokio::test]
    async fn a_response_with_both_framings_is_read_as_chunked_and_not_reused() {
        let response =
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (conn, addr) = answering(vec![response.to_vec()], Then::Hold).await;
        let resp = send_ok(conn, request(Method::GET, None), addr).await;
        assert!(resp.headers().get("content-length").is_none());
        assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"abc");
        assert!(pooled(addr).is_none());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc";
        let (conn, addr) = answering(vec![response.to_vec()], Then::Close).await;
        let resp = send_ok(conn, request(Method::GET, None), addr).await;
        let err = resp.into_body().collect().await.expect_err("a truncated body fails");
        assert!(err.to_string().contains("before the response body ended"), "{err}");
        assert!(pooled(addr).is_none());
    }

    #[tokio::test]
    async fn malformed_and_oversized_heads_are_errors() {
        let cases: [(&[u8], &str); 5] = [
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid status line"),
            (b"SPDY/3 200 OK\r\n\r\n", "not HTTP/1.x"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n", "invalid Content-Length"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n", "conflicting Content-Length"),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
        ];
        for (response, expected) in cases {
            let (conn, addr) = answering(vec![response.to_vec()], Then::Hold).await;
            let err = send_error(conn.send(request(Method::GET, None), home(addr)).await);
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        let filler = format!("x-filler: {}\r\n", "y".repeat(1000)).into_bytes();
        let pieces = std::iter::once(b"HTTP/1.1 200 OK\r\n".to_vec()).chain(std::iter::repeat_n(filler, 70)).collect();
        let (conn, addr) = answering(pieces, Then::Hold).await;
        let err = send_error(conn.send(request(Method::GET, None), home(addr)).await);
        assert!(err.contains("exceeds 64 KiB"), "{err}");
    }

    #[tokio::test]
    async fn an_upstream_that_closes_without_answering_gives_the_request_back() {
        let (conn, mut server, addr) = pair().await;
        tokio::spawn(async move {
            read_request(&mut server, 0).await;
            drop(server);
        });
        match conn.send(request(Method::PUT, Some("abc")), home(addr)).await {
            Err(H1SendError::Closed(req, _)) => {
                assert_eq!(req.method(), Method::PUT);
                assert!(matches!(req.body(), ReqBody::Buffered(Some(b)) if &b[..] == b"abc"));
            }
            Err(H1SendError::Failed(e)) => panic!("failed: {e}"),
            Ok(resp) => panic!("got {}", resp.status()),
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_is_not_usable() {
        let (conn, server, _) = pair().await;
        assert!(conn.is_usable(false));
        drop(server);
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.is_usable(false) {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (conn, mut server, _) = pair().await;
        server.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.is_usable(false) {
            assert!(Instant::now() < deadline, "unasked bytes were never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_close_the_runtime_has_not_polled_for_yet_is_still_seen() {
        // The race behind a POST answered 502 after a backend restart: the FIN is in the
        // kernel, but the runtime has not polled for events since it came, so its readiness
        // state says nothing is there. No `.await` below lets it poll.
        let (conn, server, _) = pair().await;
        assert!(conn.is_usable(true), "an open idle connection is usable (and its readiness cleared)");
        drop(server);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!conn.is_usable(true), "the FIN was in the kernel before the check");
    }

    #[tokio::test]
    async fn connections_with_untrustworthy_framing_are_not_reused() {
        // HTTP/1.0 with Transfer-Encoding (faulty framing), and a 2xx to CONNECT (a tunnel).
        let cases: [(Method, &[u8]); 2] = [
            (
                Method::GET,
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",
            ),
            (Method::CONNECT, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        ];
        for (method, response) in cases {
            let (conn, addr) = answering(vec![response.to_vec()], Then::Hold).await;
            let resp = send_ok(conn, request(method.clone(), None), addr).await;
            resp.into_body().collect().await.unwrap();
            assert!(pooled(addr).is_none(), "{method} {}", String::from_utf8_lossy(response));
        }
    }

    #[tokio::test]
    async fn limits_hold_on_complete_input_too() {
        use super::decode::MAX_CHUNK_LINE;
        let long_line = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE + 10));
        let interim =
            "HTTP/1.1 103 Early Hints\r\n\r\n".repeat(MAX_INTERIM + 1) + "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let cases = [
            (format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{long_line}"), "overlong chunk-size line"),
            (interim, "too many interim responses"),
        ];
        for (response, expected) in cases {
            let (conn, addr) = answering(vec![response.into_bytes()], Then::Hold).await;
            let err = match conn.send(request(Method::GET, None), home(addr)).await {
                Ok(resp) => resp.into_body().collect().await.expect_err("the body fails").to_string(),
                Err(e) => send_error(Err(e)),
            };
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
    }
}
