//! The upstream HTTP/1.1 client's response reader (`connect::h1conn`) on any bytes, arriving
//! whole or in pieces. A response it reads has one framing decision, stated by what it passes
//! on: no Transfer-Encoding or Connection fields, at most one Content-Length and only when the
//! body was read by that length; a connection is reused only after a framed body; the body
//! decoded does not depend on how the bytes arrived.
#![no_main]

use http::header;
use libfuzzer_sys::fuzz_target;
use weft_proxy::fuzzing::{Framing, parse_upstream_response};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else { return };
    let head_only = flags & 1 == 1;
    let piece = usize::from(flags >> 1);
    let whole = parse_upstream_response(bytes, head_only, 0);
    let pieces = parse_upstream_response(bytes, head_only, piece);
    let Ok(Some(r)) = whole else {
        // A refusal or an incomplete head does not depend on how the bytes arrived.
        assert_eq!(whole.is_ok(), pieces.is_ok(), "whole: {:?}, in pieces of {piece}: {:?}", whole.err(), pieces.err());
        return;
    };
    let p = pieces.expect("read whole, refused in pieces").expect("read whole, incomplete in pieces");
    assert_eq!((p.framing, p.reusable, p.head_len, p.interim), (r.framing, r.reusable, r.head_len, r.interim));
    assert_eq!(p.response.status(), r.response.status());
    assert_eq!(p.response.headers(), r.response.headers());
    assert_eq!(p.body, r.body, "the body depends on how the bytes arrived (pieces of {piece})");
    assert_eq!(p.trailers, r.trailers);
    // A refusal's wording may depend on where the bytes were cut; whether it is one may not.
    assert_eq!(p.body_end.as_ref().ok(), r.body_end.as_ref().ok(), "{:?} / {:?}", p.body_end, r.body_end);

    let status = r.response.status();
    assert!(!status.is_informational(), "an interim response was taken as final");
    let headers = r.response.headers();
    for hop in [header::TRANSFER_ENCODING, header::CONNECTION, header::UPGRADE, header::TE] {
        assert!(!headers.contains_key(&hop), "{hop} passed on");
    }
    let lengths: Vec<u64> =
        headers.get_all(header::CONTENT_LENGTH).iter().map(|v| v.to_str().unwrap().trim().parse().unwrap()).collect();
    let bodiless = head_only || status == 204 || status == 304;
    match r.framing {
        Framing::Length(n) => {
            if !bodiless {
                assert!(!lengths.is_empty() && lengths.iter().all(|&m| m == n), "read {n} bytes, declared {lengths:?}");
            }
            assert!(r.body.len() as u64 <= n, "read past the declared length");
            assert_eq!(r.body_end, Ok(r.body.len() as u64 == n));
            assert_eq!(&bytes[r.head_len..r.head_len + r.body.len()], &r.body[..]);
        }
        Framing::Chunked => {
            assert!(lengths.is_empty(), "a chunked body passed on with Content-Length {lengths:?}");
            // The body the client gets, framed again as one chunk, decodes to itself.
            if r.body_end == Ok(true) && !r.body.is_empty() {
                let mut again =
                    format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n", r.body.len()).into_bytes();
                again.extend_from_slice(&r.body);
                again.extend_from_slice(b"\r\n0\r\n\r\n");
                let back = parse_upstream_response(&again, false, 0).unwrap().unwrap();
                assert_eq!(back.body, r.body);
                assert_eq!(back.body_end, Ok(true));
            }
        }
        Framing::UntilClose => {
            assert!(!r.reusable, "a body read until close left the connection reusable");
            assert!(lengths.is_empty() || bodiless, "read until close with Content-Length {lengths:?}");
            assert_eq!(&bytes[r.head_len..], &r.body[..]);
        }
    }
});
