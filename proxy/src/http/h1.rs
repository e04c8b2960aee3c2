//! HTTP/1.1 wire pieces that the server (`server::h1`) and the upstream client
//! (`connect::H1Conn`) share: numbers as the wire writes and reads them, header fields, and
//! which trailer fields may pass.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};

/// Most header fields in a head, a client's request or an upstream's response (hyper's limit
/// too).
pub(crate) const MAX_HEADERS: usize = 100;
/// A body piece up to this size goes out in the same write as its head.
pub(crate) const COALESCE_BODY: usize = 16 * 1024;
/// A connection's read buffer, both sides: the server takes a head only when it arrives whole
/// within it (`server::h1server`); the upstream client starts from it and grows it for
/// large bodies (`connect::H1Conn`).
pub(crate) const READ_SIZE: usize = 8 * 1024;

/// Where a parsed header field sits in its head: the byte offsets of its name and value. The
/// parser borrows the read buffer; the head is then split off and frozen, and each field is
/// rebuilt from its span sharing that memory (`field_at`), with no copy.
pub(crate) type Span = [u32; 4];

/// The span of `field`, parsed from a buffer that starts at address `base`.
pub(crate) fn span_of(base: usize, field: &httparse::Header<'_>) -> Span {
    let name = field.name.as_ptr() as usize - base;
    let value = field.value.as_ptr() as usize - base;
    [name as u32, (name + field.name.len()) as u32, value as u32, (value + field.value.len()) as u32]
}

/// Why a field could not become a `HeaderName` and `HeaderValue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadField {
    /// Not a valid field name.
    Name,
    /// A byte a field value may not hold.
    Value,
}

/// The field at `span` of `head`, its value sharing `head`'s memory.
pub(crate) fn field_at(head: &Bytes, [ns, ne, vs, ve]: Span) -> Result<(HeaderName, HeaderValue), BadField> {
    let name = HeaderName::from_bytes(&head[ns as usize..ne as usize]).map_err(|_| BadField::Name)?;
    let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize)).map_err(|_| BadField::Value)?;
    Ok((name, value))
}

/// Whether a request trailer field may be forwarded: not one that frames the message, routes
/// it, authenticates it (the caller's verified id among them) or controls how it is handled
/// (RFC 9110 §6.5.1), which a recipient could otherwise mistake for a header.
pub(crate) fn forwardable_trailer(name: &HeaderName) -> bool {
    if super::headers::names_client_id(name) {
        return false;
    }
    const NOT_IN_TRAILERS: [HeaderName; 12] = [
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONNECTION,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::EXPECT,
        header::HOST,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
    ];
    !NOT_IN_TRAILERS.contains(name) && name != header::TRAILER && name != header::RANGE
}

/// `name: value` and its CRLF.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(crate) fn push_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    push_number(out, n, 10);
}

/// A chunk-size line.
pub(crate) fn push_hex(out: &mut Vec<u8>, n: usize) {
    push_number(out, n as u64, 16);
}

/// `n` in base `radix` (10 or 16, upper-case digits) and a CRLF.
fn push_number(out: &mut Vec<u8>, mut n: u64, radix: u64) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = DIGITS[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// A Content-Length value: decimal digits only (no sign, no spaces inside), at most 19 of them.
pub(crate) fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_that_would_frame_route_or_authenticate_are_not_forwarded() {
        let names = ["content-length", "transfer-encoding", "host", "authorization", "te", "trailer"];
        for name in names.into_iter().chain(["weft-client-id", "weft_client_id"]) {
            assert!(!forwardable_trailer(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["grpc-status", "x-checksum", "server-timing"] {
            assert!(forwardable_trailer(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn lengths_parse_strictly_and_numbers_are_written_as_the_wire_wants() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b" 42 "), Some(42));
        assert_eq!(parse_length(b"+1"), None);
        assert_eq!(parse_length(b"1 2"), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
        let mut out = Vec::new();
        push_length(&mut out, 1234567);
        push_hex(&mut out, 0x1f40);
        assert_eq!(out, b"content-length: 1234567\r\n1F40\r\n");
    }
}
