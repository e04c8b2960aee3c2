//! The HTTP/1.1 server's request head parser (`h1server`) on any bytes. A request it takes has
//! one unambiguous framing (no Transfer-Encoding, one Content-Length that is the body it took),
//! is not an upgrade or CONNECT, and, written out again as the proxy forwards it, parses to the
//! same request; the same head cut short is never taken.
#![no_main]

use http::header;
use libfuzzer_sys::fuzz_target;
use weft_proxy::fuzzing::{RequestHead, parse_request_head};

const MAX_HEAD: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let RequestHead::Taken { request, consumed, close, head_only, .. } = parse_request_head(data, MAX_HEAD) else {
        return;
    };
    assert!(consumed <= data.len());
    let headers = request.headers();
    assert!(!headers.contains_key(header::TRANSFER_ENCODING), "a chunked request was taken");
    assert!(!headers.contains_key(header::UPGRADE) && !headers.contains_key(header::EXPECT));
    assert_ne!(request.method(), http::Method::CONNECT);
    assert_eq!(request.version(), http::Version::HTTP_11);
    assert_eq!(head_only, request.method() == http::Method::HEAD);
    let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "several Content-Length fields passed on");
    let declared: u64 = lengths.first().map_or(0, |v| v.to_str().unwrap().trim().parse().unwrap());
    let body = request.body().as_deref().unwrap_or_default();
    assert_eq!(body.len() as u64, declared, "the body taken is not the declared length");
    assert_eq!(request.body().is_some(), declared > 0);
    let head_len = consumed - body.len();
    assert_eq!(&data[head_len..consumed], body, "the body is not the bytes after the head");

    // Cut short anywhere in its head, it is awaited (or handed over), never taken.
    for cut in [head_len - 1, head_len / 2] {
        let short = parse_request_head(&data[..cut], MAX_HEAD);
        assert!(matches!(short, RequestHead::Partial | RequestHead::Handover), "a head cut at {cut} was taken");
    }

    // Written out as the proxy writes a head, it parses to the same request.
    let mut wire = Vec::new();
    wire.extend_from_slice(request.method().as_str().as_bytes());
    wire.push(b' ');
    wire.extend_from_slice(request.uri().to_string().as_bytes());
    wire.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        wire.extend_from_slice(name.as_str().as_bytes());
        wire.extend_from_slice(b": ");
        wire.extend_from_slice(value.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(body);
    match parse_request_head(&wire, wire.len().max(MAX_HEAD)) {
        RequestHead::Taken { request: again, consumed: n, close: close_again, .. } => {
            assert_eq!(n, wire.len());
            assert_eq!(again.method(), request.method());
            assert_eq!(again.uri(), request.uri());
            assert_eq!(again.headers(), request.headers());
            assert_eq!(again.body(), request.body());
            assert_eq!(close_again, close);
        }
        _ => panic!("the re-encoded head was not taken: {:?}", String::from_utf8_lossy(&wire)),
    }
});
