//! Entry points for the fuzz targets (fuzz/) and the property tests into the parsers that read
//! what clients and upstreams send: each runs the proxy's own function on a byte buffer instead
//! of a socket, and has no behaviour of its own.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response};

use crate::connect::{Decode, MAX_INTERIM, ResponseHead, Step, parse_head};
use crate::http::body::ClientBody;
pub use crate::server::Version;
use crate::server::h1server::{self, Next};
use crate::server::timeouts::FrameScan;

/// What the HTTP/1.1 server's own parser (`h1server`) made of the start of a client's bytes.
pub enum RequestHead {
    /// Served here: the request with its body, and how many bytes the two took.
    Taken { request: Request<Option<Bytes>>, consumed: usize, close: bool, head_only: bool, trailers: bool },
    /// The start of a head within the limit: more bytes are awaited (nothing consumed).
    Partial,
    /// Left whole for hyper's server (nothing consumed).
    Handover,
    /// Answered 400 and the connection closed.
    Bad(&'static str),
}

/// Parses `bytes` as the HTTP/1.1 server does the start of its read buffer.
pub fn parse_request_head(bytes: &[u8], max_head: usize) -> RequestHead {
    let mut buf = BytesMut::from(bytes);
    match h1server::parse(&mut buf, &mut HeaderMap::new(), max_head) {
        Next::Request(p) => {
            let (parts, body) = p.req.into_parts();
            let body = match body {
                ClientBody::Buffered(body) => body,
                ClientBody::Http1(_) | ClientBody::Http2(_) => None,
            };
            let consumed = bytes.len() - buf.len();
            RequestHead::Taken {
                request: Request::from_parts(parts, body),
                consumed,
                close: p.asked.close,
                head_only: p.asked.head_only,
                trailers: p.asked.trailers,
            }
        }
        Next::Partial => RequestHead::Partial,
        Next::Handover => RequestHead::Handover,
        Next::Bad(why) => RequestHead::Bad(why),
    }
}

/// How the upstream client reads a response's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A response the upstream client read from a buffer: head, framing and as much body as the
/// buffer held.
pub struct UpstreamResponse {
    pub response: Response<()>,
    /// Interim (1xx) responses skipped before it.
    pub interim: usize,
    pub framing: Framing,
    /// Whether the connection could take another request after this response.
    pub reusable: bool,
    /// Bytes of the head and of the interim heads before it.
    pub head_len: usize,
    /// The body bytes decoded from what followed the head.
    pub body: Vec<u8>,
    pub trailers: Option<HeaderMap>,
    /// `Ok(true)`: the body ended within the buffer; `Ok(false)`: more was awaited.
    pub body_end: Result<bool, String>,
}

/// Reads a response from `bytes` as the upstream HTTP/1.1 client does (`head_only`: the
/// request was `HEAD`), the bytes arriving `piece` at a time as from a socket (0: all at once).
/// `Ok(None)`: the head never completed.
pub fn parse_upstream_response(
    bytes: &[u8],
    head_only: bool,
    piece: usize,
) -> Result<Option<UpstreamResponse>, String> {
    let piece = if piece == 0 { bytes.len().max(1) } else { piece };
    let mut arriving = bytes.chunks(piece);
    let mut buf = BytesMut::new();
    let mut interim = 0;
    let mut head_len = 0;
    let (response, mut decode, reusable) = 'head: loop {
        let Some(next) = arriving.next() else { return Ok(None) };
        buf.extend_from_slice(next);
        loop {
            let before = buf.len();
            match parse_head(&mut buf, head_only, &mut HeaderMap::new()).map_err(|e| e.to_string())? {
                None => break,
                Some(ResponseHead::Informational) if interim < MAX_INTERIM => {
                    interim += 1;
                    head_len += before - buf.len();
                }
                Some(ResponseHead::Informational) => return Err("too many interim responses".to_string()),
                Some(ResponseHead::Final(parts)) => {
                    head_len += before - buf.len();
                    break 'head parts;
                }
            }
        }
    };
    let framing = match decode {
        Decode::Length(n) => Framing::Length(n),
        Decode::Chunked(_) => Framing::Chunked,
        Decode::UntilClose | Decode::Done => Framing::UntilClose,
    };
    let (mut body, mut trailers) = (Vec::new(), None);
    let body_end = 'body: loop {
        loop {
            match decode.step(&mut buf) {
                Ok(Step::Data(data)) => body.extend_from_slice(&data),
                Ok(Step::Trailers(fields)) => {
                    trailers = Some(fields);
                    break 'body Ok(true);
                }
                Ok(Step::End) => break 'body Ok(true),
                Ok(Step::More) => break,
                Err(e) => break 'body Err(e.to_string()),
            }
        }
        match arriving.next() {
            Some(next) => buf.extend_from_slice(next),
            None => break Ok(false),
        }
    };
    Ok(Some(UpstreamResponse { response, interim, framing, reusable, head_len, body, trailers, body_end }))
}

/// The version a plaintext connection's first bytes show (`None`: the start of the HTTP/2
/// preface, so far).
pub fn detect_version(first: &[u8]) -> Option<Version> {
    crate::server::version_from_prefix(first)
}

/// Whether an HTTP/2 header block is open after the client's bytes arrived in these pieces (what
/// the header-read timeout follows).
pub fn header_block_open<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> bool {
    let mut scan = FrameScan::new();
    let mut open = false;
    for piece in pieces {
        open = scan.feed(piece);
    }
    open
}

/// The header hygiene every forwarded request goes through (`http::headers`).
pub use crate::http::headers::{
    HostCheck, check_host, chunked_or_none, is_hop_by_hop, request_host, strip_h2c_upgrade, strip_hop_by_hop, to_http1,
};
