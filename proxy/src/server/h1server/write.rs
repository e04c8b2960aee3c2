//! The response as HTTP/1.1 bytes: the head written into the connection's write buffer, with
//! a small body beside it (one write), then the body piece by piece (`Pump`), chunked when its
//! length is unknown, with the trailers a client asked for.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http::StatusCode;
use http::header;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::{Asked, H1Error};
use crate::http::h1::{COALESCE_BODY, forwardable_trailer, parse_length, push_field, push_hex, push_length};
use crate::http::headers;
use crate::response::body::RespBody;

/// Writes the status line and header fields into `out`, and says how the body follows. The
/// header map is kept in `recycle` for the next request.
pub(super) fn encode_head(
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
pub(super) struct Pump {
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
    pub(super) fn poll<S: AsyncWrite + Unpin>(
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
    use http::Response;
    use http::header::HeaderValue;

    use super::*;

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
}
