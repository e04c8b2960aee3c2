//! The request head at the start of the read buffer, parsed in place: the target, header
//! names and values share the buffer (no copies), and a whole `Content-Length` body that came
//! with the head is taken with it. A head this server does not take is left whole for hyper.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, Request, Uri, Version};

use crate::http::body::ClientBody;
use crate::http::h1::{BadField, MAX_HEADERS, Span, field_at, parse_length, span_of};
use crate::http::headers;

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

/// Parses the request head at the start of `buf`, and takes it (with its body) when it is one
/// served here.
pub(crate) fn parse(buf: &mut BytesMut, recycle: &mut HeaderMap, max_head: usize) -> Next {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // Offsets of each field's name and value, and of the target, in the head (the parser
    // borrows the buffer, which is then split off).
    let mut spans: [Span; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
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
            *span = span_of(base, field);
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
    for &span in &spans[..count] {
        let (name, value) = match field_at(&head, span) {
            Ok(field) => field,
            Err(BadField::Name) => return Next::Bad("invalid header name"),
            Err(BadField::Value) => return Next::Bad("invalid header value"),
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

#[cfg(test)]
mod tests {
    use http_body::Body as _;

    use super::*;

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
}
