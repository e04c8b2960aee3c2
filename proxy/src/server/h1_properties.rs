//! Properties of the HTTP/1.1 request head parsing on generated requests (proptest, 256 cases
//! each): well-formed requests are taken as written, and ambiguous framing is never taken by
//! `h1server` and is refused by the hyper server it hands such connections to.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fuzzing::{RequestHead, parse_request_head};

const MAX_HEAD: usize = 8192;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// Header fields that say nothing about framing, the connection or upgrades.
fn field() -> impl Strategy<Value = (String, String)> {
    ("x-[a-z0-9-]{1,12}|accept|user-agent|host|cookie|authorization", "[!-~]([ -~]{0,20}[!-~])?")
}

/// A well-formed request: method, origin-form target, fields, and a body with its length.
fn request() -> impl Strategy<Value = (String, String, Vec<(String, String)>, Vec<u8>)> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("PUT"),
            Just("DELETE"),
            Just("PATCH"),
            Just("OPTIONS"),
            Just("HEAD")
        ],
        "/[a-zA-Z0-9/._~-]{0,24}(\\?[a-z0-9=&]{0,12})?",
        prop::collection::vec(field(), 0..8),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(m, t, f, b)| (m.to_string(), t, f, b))
}

fn wire(method: &str, target: &str, fields: &[(String, String)], extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    for (name, value) in fields {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(extra.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// How a request's framing is made ambiguous.
#[derive(Clone, Debug)]
enum Ambiguity {
    /// Content-Length and Transfer-Encoding, in either order.
    LengthAndChunked { te_first: bool },
    /// Two Content-Length fields that differ.
    DifferingLengths(u8, u8),
    /// A field continued on the next line (obs-fold).
    ObsFold,
    /// A CR not followed by LF inside the head.
    BareCr,
}

fn ambiguity() -> impl Strategy<Value = Ambiguity> {
    prop_oneof![
        any::<bool>().prop_map(|te_first| Ambiguity::LengthAndChunked { te_first }),
        (0u8..50, 0u8..50).prop_filter("differ", |(a, b)| a != b).prop_map(|(a, b)| Ambiguity::DifferingLengths(a, b)),
        Just(Ambiguity::ObsFold),
        Just(Ambiguity::BareCr),
    ]
}

fn ambiguous(method: &str, target: &str, fields: &[(String, String)], how: &Ambiguity) -> Vec<u8> {
    let extra = match how {
        Ambiguity::LengthAndChunked { te_first: true } => {
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n".to_string()
        }
        Ambiguity::LengthAndChunked { te_first: false } => {
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n".to_string()
        }
        Ambiguity::DifferingLengths(a, b) => format!("Content-Length: {a}\r\nContent-Length: {b}\r\n"),
        Ambiguity::ObsFold => "X-Folded: one\r\n two\r\n".to_string(),
        Ambiguity::BareCr => "X-Cr: a\rb\r\n".to_string(),
    };
    // A body that a chunked reading ends early and a length reading takes whole.
    wire(method, target, fields, &extra, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
}

/// Serves `bytes` on hyper's HTTP/1.1 server as `serve_hyper` builds it (default parsing
/// options) and returns what it answered and how many requests reached the service.
fn hyper_answer(bytes: &[u8]) -> (String, usize) {
    struct Count(Arc<AtomicUsize>);
    impl hyper::service::Service<Request<Incoming>> for Count {
        type Response = Response<http_body_util::Empty<bytes::Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn call(&self, _: Request<Incoming>) -> Self::Future {
            self.0.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok(Response::new(http_body_util::Empty::new())))
        }
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let answer = runtime.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(MAX_HEAD)
            .serve_connection(hyper_util::rt::TokioIo::new(server), Count(calls.clone()));
        let serving = tokio::spawn(conn);
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out)).await.unwrap().unwrap();
        let _ = serving.await;
        String::from_utf8_lossy(&out).into_owned()
    });
    (answer, calls.load(Ordering::Relaxed))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn a_well_formed_request_is_taken_as_written((method, target, fields, body) in request(), next in "(GET / HTTP/1.1\r\n)?") {
        let length = if body.is_empty() { String::new() } else { format!("Content-Length: {}\r\n", body.len()) };
        let mut bytes = wire(&method, &target, &fields, &length, &body);
        let len = bytes.len();
        bytes.extend_from_slice(next.as_bytes());
        let RequestHead::Taken { request, consumed, .. } = parse_request_head(&bytes, MAX_HEAD) else {
            return Err(TestCaseError::fail(format!("not taken: {:?}", String::from_utf8_lossy(&bytes))));
        };
        prop_assert_eq!(consumed, len, "a pipelined request stays unread");
        prop_assert_eq!(request.method().as_str(), method.as_str());
        prop_assert_eq!(request.uri().to_string(), target);
        prop_assert_eq!(request.body().as_deref().unwrap_or_default(), &body[..]);
        // Every field, in order within each name, with its value as sent.
        for (name, value) in &fields {
            let sent: Vec<&str> = fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
            let got: Vec<&str> = request.headers().get_all(name.as_str()).iter().map(|v| v.to_str().unwrap()).collect();
            prop_assert_eq!(&got, &sent, "{}: {}", name, value);
        }
        let extra = usize::from(!body.is_empty());
        prop_assert_eq!(request.headers().len(), fields.len() + extra);
    }

    #[test]
    fn ambiguous_framing_is_never_taken_and_always_refused(
        (method, target, fields, _) in request(),
        how in ambiguity(),
    ) {
        let bytes = ambiguous(&method, &target, &fields, &how);
        match parse_request_head(&bytes, MAX_HEAD) {
            RequestHead::Taken { .. } | RequestHead::Partial => {
                return Err(TestCaseError::fail(format!("{how:?} taken: {:?}", String::from_utf8_lossy(&bytes))));
            }
            // Answered 400 and closed by h1server itself.
            RequestHead::Bad(_) => {}
            // Handed to hyper with nothing consumed: hyper must refuse it before any request
            // reaches the proxy's handler.
            RequestHead::Handover => {
                let (answer, calls) = hyper_answer(&bytes);
                prop_assert!(answer.starts_with("HTTP/1.1 400"), "{:?}: hyper answered {:?}", how, answer);
                prop_assert_eq!(calls, 0, "{:?} reached the handler", how);
            }
        }
    }
}
