//! The header hygiene between hops (`http::headers`) on any fields and target. After it, no
//! hop-by-hop field and none the Connection field named is passed on, `TE` is `trailers` or
//! absent, an h2c offer is gone, every other field is untouched, each step is idempotent, and
//! the host the request is routed on is the Host an HTTP/1 upstream is told.
#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use libfuzzer_sys::fuzz_target;
use weft_proxy::fuzzing::{
    HostCheck, check_host, chunked_or_none, is_hop_by_hop, request_host, strip_h2c_upgrade, strip_hop_by_hop, to_http1,
};

/// The first line is the target (HTTP/1.0 when it starts with `1.0 `), each later one a field.
fn request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next()?;
    let (version, target) = match first.strip_prefix(b"1.0 ") {
        Some(rest) => (Version::HTTP_10, rest),
        None => (Version::HTTP_11, first),
    };
    let mut req = Request::new(());
    *req.uri_mut() = Uri::try_from(target).ok()?;
    *req.version_mut() = version;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        req.headers_mut().append(name, value);
    }
    Some(req)
}

fn tokens(headers: &HeaderMap, name: HeaderName) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| t.trim_ascii().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The fields (name, values in order) other than these, to see that nothing else was touched.
fn others(headers: &HeaderMap, except: &[&[u8]]) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out: Vec<(String, Vec<Vec<u8>>)> = headers
        .keys()
        .filter(|n| !except.iter().any(|e| n.as_str().as_bytes() == *e))
        .map(|n| (n.to_string(), headers.get_all(n).iter().map(|v| v.as_bytes().to_vec()).collect()))
        .collect();
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(mut req) = request(data) else { return };

    // Transfer-Encoding: taken only as `chunked` alone.
    let codings = tokens(req.headers(), header::TRANSFER_ENCODING);
    let te_fields = req.headers().get_all(header::TRANSFER_ENCODING).iter().count();
    assert_eq!(chunked_or_none(req.headers()), te_fields == 0 || codings == [b"chunked".to_vec()]);

    // An h2c offer goes, and nothing but it and what names it.
    let before = req.headers().clone();
    strip_h2c_upgrade(req.headers_mut());
    assert!(!tokens(req.headers(), header::UPGRADE).iter().any(|t| t == b"h2c"));
    assert!(!req.headers().contains_key("http2-settings"));
    let named = [&b"upgrade"[..], b"connection", b"http2-settings"];
    assert_eq!(others(req.headers(), &named), others(&before, &named));
    let once = req.headers().clone();
    assert!(!strip_h2c_upgrade(req.headers_mut()), "a second pass found an h2c offer");
    assert_eq!(req.headers(), &once);

    // Hop-by-hop fields and those Connection names go; TE stays only as `trailers`.
    let listed = tokens(req.headers(), header::CONNECTION);
    let before = req.headers().clone();
    strip_hop_by_hop(req.headers_mut());
    let h = req.headers();
    assert!(!h.contains_key(header::CONNECTION));
    assert!(h.keys().all(|n| !is_hop_by_hop(n)), "{h:?}");
    if let Some(te) = h.get(header::TE) {
        assert!(te.as_bytes().eq_ignore_ascii_case(b"trailers"), "TE {te:?} passed on");
    }
    let usual = [&b"close"[..], b"keep-alive", b"te"];
    for token in listed.iter().filter(|t| !usual.contains(&t.as_slice())) {
        assert!(!h.keys().any(|n| n.as_str().as_bytes() == token.as_slice()), "{token:?} named by Connection kept");
    }
    for (name, values) in others(&before, &[]) {
        let gone = name == "connection"
            || name == "te"
            || is_hop_by_hop(&HeaderName::from_bytes(name.as_bytes()).unwrap())
            || listed.iter().any(|t| t == name.as_bytes());
        if !gone {
            let kept: Vec<Vec<u8>> = h.get_all(name.as_str()).iter().map(|v| v.as_bytes().to_vec()).collect();
            assert_eq!(kept, values, "{name} changed");
        }
    }
    let once = req.headers().clone();
    strip_hop_by_hop(req.headers_mut());
    assert_eq!(req.headers(), &once, "a second pass changed the fields");

    // The host routed on is the Host an HTTP/1 upstream gets.
    match check_host(req.version(), req.uri(), req.headers()) {
        HostCheck::Ambiguous => return,
        HostCheck::Conflicts => {
            req.headers_mut().remove(header::HOST);
        }
        HostCheck::Agrees => {}
    }
    // Host names compare without case (RFC 9110 §4.2.3).
    let routed = request_host(&req).map(str::to_ascii_lowercase);
    to_http1(&mut req);
    assert!(req.uri().scheme().is_none() && req.uri().authority().is_none(), "not origin form: {}", req.uri());
    assert!(req.headers().get_all(header::HOST).iter().count() <= 1);
    assert_eq!(request_host(&req).map(str::to_ascii_lowercase), routed, "routed on one host, told another");
});
