//! What an upstream sends back on an HTTP/1.1 connection, read from the connection's buffer
//! without copies: the response head (`parse_head`: framing per RFC 9112 §6, interim
//! responses, whether the connection can be reused) and the body's framing, step by step
//! (`Decode`: a length, chunks with their trailers, or until close).

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode, Version};

use super::{MAX_HEAD_BYTES, ProtocolError, head_too_large};
use crate::http::body::BoxError;
use crate::http::h1::{BadField, MAX_HEADERS, Span, field_at, parse_length, span_of};

/// Longest chunk-size line, extensions included.
pub(super) const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section of a chunked response.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

pub(crate) enum ResponseHead {
    /// A 1xx response other than 101, consumed from the buffer.
    Informational,
    /// The response head (consumed), how its body is framed, and whether the connection can
    /// take another request after it.
    Final((Response<()>, Decode, bool)),
}

/// Parses a response head at the start of `buf`. `None` until it is complete. Header values
/// share the buffer's memory (no copies); the header map is `recycle`'s allocation, taken.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    recycle: &mut HeaderMap,
) -> Result<Option<ResponseHead>, BoxError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // Offsets of each field's name and value in the head (the parser borrows the buffer,
    // which is then split off).
    let mut spans: [Span; MAX_HEADERS] = [[0; 4]; MAX_HEADERS];
    let (len, code, version, count) = {
        let mut resp = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut fields)
            .map_err(|e| Box::new(ProtocolError(parse_error(e))) as BoxError)?;
        let len = match status {
            httparse::Status::Complete(len) if len <= MAX_HEAD_BYTES => len,
            httparse::Status::Partial if buf.len() < MAX_HEAD_BYTES => return Ok(None),
            _ => return Err(head_too_large()),
        };
        let base = buf.as_ptr() as usize;
        for (span, field) in spans.iter_mut().zip(resp.headers.iter()) {
            *span = span_of(base, field);
        }
        (len, resp.code.unwrap_or(0), resp.version.unwrap_or(1), resp.headers.len())
    };
    if (100..200).contains(&code) && code != 101 {
        buf.advance(len);
        return Ok(Some(ResponseHead::Informational));
    }
    if code == 101 {
        return Err(Box::new(ProtocolError("upstream switched protocols without being asked to")));
    }
    let status =
        StatusCode::from_u16(code).map_err(|_| Box::new(ProtocolError("upstream sent an invalid status code")))?;
    let head = buf.split_to(len).freeze();
    let mut headers = std::mem::take(recycle);
    headers.clear();
    headers.reserve(count);
    let mut length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut close = version == 0;
    // This hop's own headers (RFC 9110 §7.6.1: `Connection` and those it names, `Keep-Alive`,
    // `Transfer-Encoding`, `Upgrade`...) stop here; the client's side frames the body its way.
    // The `Connection` values are kept to find the headers they name once all are in (no
    // allocation for the usual single one).
    let mut connection: (Option<HeaderValue>, Vec<HeaderValue>) = (None, Vec::new());
    for &span in &spans[..count] {
        let (name, value) = field_at(&head, span).map_err(|bad| {
            Box::new(ProtocolError(match bad {
                BadField::Name => "upstream sent an invalid header name",
                BadField::Value => "upstream sent an invalid header value",
            }))
        })?;
        if name == header::CONTENT_LENGTH {
            let n = parse_length(value.as_bytes())
                .ok_or_else(|| Box::new(ProtocolError("upstream sent an invalid Content-Length")))?;
            if length.is_some_and(|m| m != n) {
                return Err(Box::new(ProtocolError("upstream sent conflicting Content-Length values")));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding decides whether the body is chunked.
            chunked = value
                .as_bytes()
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        } else if name == header::CONNECTION {
            for token in crate::http::headers::tokens(value.as_bytes()) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if version == 0 && token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
            match connection.0 {
                None => connection.0 = Some(value),
                Some(_) => connection.1.push(value),
            }
            continue;
        } else if crate::http::headers::is_hop_by_hop(&name) || name == header::TE {
            continue;
        }
        headers.append(name, value);
    }
    for value in connection.0.iter().chain(&connection.1) {
        crate::http::headers::remove_named_by_connection(&mut headers, value);
    }
    let (decode, reusable) = if head_only || code == 204 || code == 304 {
        (Decode::Length(0), true)
    } else if transfer_encoding {
        // Both framings at once is how responses are smuggled: the body is read as chunked
        // and the connection is not trusted with another request.
        if length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
        }
        // In HTTP/1.0 Transfer-Encoding is faulty framing (RFC 9112 §6.1): never reused.
        let reusable = length.is_none() && version != 0;
        if chunked { (Decode::Chunked(Chunk::Size), reusable) } else { (Decode::UntilClose, false) }
    } else {
        match length {
            Some(n) => (Decode::Length(n), true),
            None => (Decode::UntilClose, false),
        }
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = if version == 0 { Version::HTTP_10 } else { Version::HTTP_11 };
    *resp.headers_mut() = headers;
    Ok(Some(ResponseHead::Final((resp, decode, reusable && !close))))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::TooManyHeaders => "upstream response has more than 100 header fields",
        httparse::Error::Version => "upstream response is not HTTP/1.x",
        httparse::Error::Status => "upstream response has an invalid status line",
        _ => "upstream response head is malformed",
    }
}

/// Where the response body decoder stands.
pub(crate) enum Decode {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Everything until the upstream closes.
    UntilClose,
    Done,
}

#[derive(Clone, Copy)]
pub(crate) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section, then the end.
    Trailers,
}

/// What the decoder made of the buffered bytes.
pub(crate) enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// Nothing to decode before more bytes arrive.
    More,
}

impl Decode {
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BoxError> {
        loop {
            match self {
                Decode::Done => return Ok(Step::End),
                Decode::Length(0) => {
                    *self = Decode::Done;
                    return Ok(Step::End);
                }
                Decode::Length(left) => return Ok(take(buf, left)),
                Decode::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Data(buf.split().freeze()));
                }
                Decode::Chunked(Chunk::Size) => {
                    let eol = buf.iter().position(|&b| b == b'\n');
                    if eol.unwrap_or(buf.len()) > MAX_CHUNK_LINE {
                        return Err(Box::new(ProtocolError("upstream sent an overlong chunk-size line")));
                    }
                    let Some(eol) = eol else {
                        return Ok(Step::More);
                    };
                    let size = parse_chunk_size(&buf[..=eol])
                        .ok_or_else(|| Box::new(ProtocolError("upstream sent an invalid chunk size")))?;
                    buf.advance(eol + 1);
                    *self = Decode::Chunked(if size == 0 { Chunk::Trailers } else { Chunk::Data(size) });
                }
                Decode::Chunked(Chunk::Data(left)) => {
                    let step = take(buf, left);
                    if *left == 0 {
                        *self = Decode::Chunked(Chunk::DataEnd);
                    }
                    return Ok(step);
                }
                Decode::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(Step::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Box::new(ProtocolError("upstream chunk data does not end with CRLF")));
                    }
                    buf.advance(2);
                    *self = Decode::Chunked(Chunk::Size);
                }
                Decode::Chunked(Chunk::Trailers) => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decode::Done;
                        return Ok(Step::End);
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
                    let bare_cr = end.is_none() && buf.len() >= 2 && buf[0] == b'\r' && buf[1] != b'\n';
                    if end.unwrap_or(buf.len()) > MAX_TRAILER_BYTES || bare_cr {
                        return Err(Box::new(ProtocolError("upstream sent an invalid or overlong trailer section")));
                    }
                    let Some(end) = end else {
                        return Ok(Step::More);
                    };
                    let trailers = parse_trailers(&buf[..end])?;
                    buf.advance(end);
                    *self = Decode::Done;
                    return Ok(Step::Trailers(trailers));
                }
            }
        }
    }
}

/// Up to `left` buffered bytes of the body (`More` when none is buffered).
fn take(buf: &mut BytesMut, left: &mut u64) -> Step {
    if buf.is_empty() {
        return Step::More;
    }
    let n = (*left).min(buf.len() as u64);
    *left -= n;
    Step::Data(buf.split_to(n as usize).freeze())
}

/// `1a;name=value\r\n` -> 26. Extensions are ignored; a bare LF is refused.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = line.split(|&b| b == b';').next()?.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| Some(n * 16 + u64::from((b as char).to_digit(16)?)))
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, BoxError> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let bad = || Box::new(ProtocolError("upstream sent a malformed trailer section")) as BoxError;
    let httparse::Status::Complete((_, fields)) = httparse::parse_headers(section, &mut fields).map_err(|_| bad())?
    else {
        return Err(bad());
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_bytes(field.value).map_err(|_| bad())?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_parse_strictly() {
        assert_eq!(parse_chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(parse_chunk_size(b"FF;name=value\r\n"), Some(255));
        assert_eq!(parse_chunk_size(b"0\r\n"), Some(0));
        assert_eq!(parse_chunk_size(b"1a\n"), None);
        assert_eq!(parse_chunk_size(b"\r\n"), None);
        assert_eq!(parse_chunk_size(b"-1\r\n"), None);
        assert_eq!(parse_chunk_size(b"ffffffffffffffffff\r\n"), None);
    }
}
