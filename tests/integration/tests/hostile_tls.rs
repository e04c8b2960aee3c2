//! Hostile TLS at the inbound listener and from upstreams, beyond what mtls.rs covers: a
//! client certificate that is not valid yet, a TLS 1.2 (or downgrade) ClientHello, huge and
//! malformed ClientHellos, handshakes that never finish, a server whose certificate expired,
//! and `weft-client-id` sent by someone other than the proxy on every path it could take to
//! the app (HTTP/1 and HTTP/2, over mTLS and plaintext, any spelling, twice, in trailers).
//! Each is refused, counted in `weft_tls_handshake_errors_total` and closed promptly.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weft_integration::client::must;
use weft_integration::mesh::{
    IdentityFiles, Pki, client_proxy, handshake_errors, mesh_mode, rejected_for, server_proxy, spiffe,
};
use weft_integration::net::{exchange_on, raw_exchange, read_until_close, send_until_closed};
use weft_integration::{Backend, Proxy, Req, eventually, metric_sum, tls};

/// The inbound listener's deadline for a connection to finish its handshake
/// (`HANDSHAKE_TIMEOUT` in proxy/src/tls/inbound.rs).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS handshake record carrying `body` (record version 1.0, as ClientHellos use).
fn record(body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x16, 0x03, 0x01];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// `message` cut into handshake records of at most 16 KiB (the largest TLS allows).
fn records(message: &[u8]) -> Vec<u8> {
    message.chunks(16 * 1024).flat_map(record).collect()
}

/// One extension: type, length, data.
fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A ClientHello handshake message as a TLS 1.2 client writes it: ECDHE suites, x25519,
/// ECDSA-P256 signatures; with `versions` a supported_versions extension listing them (a
/// TLS 1.3 client offering only those), and `padding` bytes of padding extension.
fn client_hello(versions: Option<&[u16]>, padding: usize) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two ECDHE AES-GCM suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression only
    let mut extensions = extension(0x000a, &[0x00, 0x02, 0x00, 0x1d]);
    extensions.extend(extension(0x000b, &[0x01, 0x00]));
    extensions.extend(extension(0x000d, &[0x00, 0x02, 0x04, 0x03]));
    if let Some(versions) = versions {
        let mut list = vec![(versions.len() * 2) as u8];
        list.extend(versions.iter().flat_map(|v| v.to_be_bytes()));
        extensions.extend(extension(0x002b, &list));
    }
    // A padding extension's length is two bytes: a longer pad is several of them.
    for chunk in vec![0u8; padding].chunks(60_000) {
        extensions.extend(extension(0x0015, chunk));
    }
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut message = vec![0x01];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    message.extend(body);
    message
}

/// The resident set of `proxy`, in KiB (`process_resident_memory_bytes`).
async fn rss_kib(proxy: &Proxy) -> u64 {
    metric_sum(&proxy.metrics().await, "process_resident_memory_bytes", &[]) as u64 / 1024
}

async fn inbound_errors(proxy: &Proxy) -> f64 {
    metric_sum(&proxy.metrics().await, "weft_tls_handshake_errors_total", &[("direction", "inbound")])
}

/// A strict server proxy with an identity from `pki` beside `app`.
async fn strict_server(pki: &Pki, app: &Backend) -> Proxy {
    server_proxy(&pki.issue("server", &spiffe("server"), "1h"), app, "").await
}

/// Presents `identity` to the server over TLS, asks for `/`, and returns what came back (nothing
/// when the server refused the certificate).
async fn request_presenting(server: &Proxy, identity: &IdentityFiles) -> Vec<u8> {
    match tls::connect(server.inbound(), tls::client_config(Some(identity), &[b"http/1.1"])).await {
        // In TLS 1.3 the client's certificate is judged after the client finished: the refusal
        // arrives on the first read.
        Ok(stream) => exchange_on(stream, b"GET / HTTP/1.1\r\nhost: server\r\n\r\n", Duration::from_secs(5)).await,
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_a_client_certificate_that_is_not_valid_yet() {
    let pki = Pki::new("hostile-not-yet");
    let app = Backend::start("app").await;
    let server = strict_server(&pki, &app).await;
    let early = pki.issue_starting_in("early", &spiffe("client"), "1h");

    let answer = request_presenting(&server, &early).await;
    assert!(!answer.starts_with(b"HTTP/"), "served a certificate valid only in an hour: {answer:?}");
    rejected_for(&server, "inbound", "not-yet-valid").await;
    // The same CA's current certificate for the same id is served: only the validity differs.
    let now = request_presenting(&server, &pki.issue("current", &spiffe("client"), "1h")).await;
    assert!(now.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&now));
    assert_eq!(app.hits(), 1);
}

/// The mesh speaks TLS 1.3 only (proxy/src/tls/identity.rs): a client that offers TLS 1.2,
/// by the legacy version field or by a supported_versions list without 1.3, gets an alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_only_tls_1_2_is_refused_with_an_alert() {
    let pki = Pki::new("hostile-tls12");
    let app = Backend::start("app").await;
    let server = strict_server(&pki, &app).await;
    for (case, versions) in
        [("TLS 1.2 ClientHello", None), ("supported_versions: [1.2, 1.1]", Some(&[0x0303, 0x0302][..]))]
    {
        let (answer, took) =
            send_until_closed(server.inbound(), records(&client_hello(versions, 0)), HANDSHAKE_TIMEOUT).await;
        // An alert record: content type 21, then (unencrypted, as no keys exist yet) its level
        // and description.
        assert_eq!(answer.first(), Some(&0x15), "{case}: expected an alert, got {answer:?}");
        assert!(took < Duration::from_secs(5), "{case}: closed after {took:?}");
        eprintln!("{case}: alert {:?}, closed after {took:?}", &answer[answer.len().saturating_sub(2)..]);
    }
    rejected_for(&server, "inbound", "incompatible").await;
    // The proxy counts after it closed: the second count may trail the client seeing the close.
    eventually("both refusals counted as incompatible", Duration::from_secs(5), || async {
        (handshake_errors(&server, "inbound", "incompatible").await == 2.0).then_some(())
    })
    .await;
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_malformed_client_hellos_are_refused_at_once_without_buffering_them() {
    let pki = Pki::new("hostile-hello");
    let app = Backend::start("app").await;
    let server = strict_server(&pki, &app).await;
    let mut random = vec![0u8; 512];
    let mut x: u32 = 0x9e37_79b9;
    for b in &mut random {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    // A handshake header announcing 16 MiB, then 16 MiB of it in 16 KiB records.
    let mut sixteen_mib = vec![0x01, 0xff, 0xff, 0xff];
    sixteen_mib.resize(16 << 20, 0);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a ClientHello of 16 MiB in 16 KiB records", records(&sixteen_mib)),
        ("a ClientHello with 70 KiB of padding in 5 records", records(&client_hello(Some(&[0x0304]), 70 * 1024))),
        ("a record header announcing 65535 bytes", {
            let mut r = vec![0x16, 0x03, 0x01, 0xff, 0xff];
            r.resize(5 + 0xffff, 0);
            r
        }),
        ("random bytes after a record header", record(&random)),
        ("a record of random type and version", [&[0x16, 0x7f, 0x13, 0x02, 0x00][..], &random].concat()),
    ];
    let before_kib = rss_kib(&server).await;
    for (n, (case, bytes)) in cases.into_iter().enumerate() {
        let (answer, took) = send_until_closed(server.inbound(), bytes, HANDSHAKE_TIMEOUT).await;
        assert!(!answer.starts_with(b"HTTP/"), "{case}: {answer:?}");
        assert!(took < Duration::from_secs(5), "{case}: closed after {took:?}");
        // Counted just after the close.
        eventually(&format!("{case}: one handshake error more"), Duration::from_secs(5), || async {
            (inbound_errors(&server).await == (n + 1) as f64).then_some(())
        })
        .await;
        eprintln!("{case}: closed after {took:?}, answered {} bytes", answer.len());
    }
    let after_kib = rss_kib(&server).await;
    eprintln!("server proxy RSS {before_kib} KiB before, {after_kib} KiB after");
    assert!(after_kib < before_kib + 8 * 1024, "RSS grew from {before_kib} to {after_kib} KiB");
    let metrics = server.metrics().await;
    let by_reason =
        |r: &str| metric_sum(&metrics, "weft_tls_handshake_errors_total", &[("direction", "inbound"), ("reason", r)]);
    assert_eq!(by_reason("not-tls"), 5.0, "{metrics}");
    assert_eq!(app.hits(), 0);
}

/// A client that connects and then stops, before sending anything or halfway through its
/// ClientHello, is closed at the handshake deadline and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_finishes_is_closed_at_the_deadline_and_counted() {
    let pki = Pki::new("hostile-stall");
    let app = Backend::start("app").await;
    let server = strict_server(&pki, &app).await;
    let hello = records(&client_hello(Some(&[0x0304]), 0));
    let stalls = [("silent after connecting", Vec::new()), ("half a ClientHello", hello[..hello.len() / 2].to_vec())];
    let limit = HANDSHAKE_TIMEOUT * 4;
    let waits = stalls.into_iter().map(|(case, bytes)| {
        let addr = server.inbound();
        async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(&bytes).await.expect("write");
            let started = Instant::now();
            let mut out = Vec::new();
            let closed = tokio::time::timeout(limit, read_until_close(&mut stream, &mut out)).await;
            assert!(closed.is_ok(), "{case}: still open after {limit:?}");
            (case, started.elapsed(), out)
        }
    });
    // Both at once: the test waits out one deadline, not two.
    let handles: Vec<_> = waits.map(tokio::spawn).collect();
    for handle in handles {
        let (case, took, out) = handle.await.expect("stall task");
        eprintln!("{case}: closed after {took:?}");
        assert!(out.is_empty(), "{case}: {out:?}");
        assert!(
            took >= HANDSHAKE_TIMEOUT - Duration::from_secs(1),
            "{case}: closed after {took:?}, before the deadline"
        );
    }
    rejected_for(&server, "inbound", "timeout").await;
    eventually("both stalls counted as timeout", Duration::from_secs(5), || async {
        (handshake_errors(&server, "inbound", "timeout").await == 2.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_whose_certificate_expired() {
    let pki = Pki::new("hostile-server-expired");
    let app = Backend::start("app").await;
    let expired = pki.issue("server", &spiffe("server"), "1s");
    // Wait out the 1 s certificate (nothing to poll: only the clock makes it expire).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let server = server_proxy(&expired, &app, "").await;
    let client = client_proxy(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;
    let resp = must(client.upstream("server"), &Req::get("/")).await;
    assert_eq!((resp.status, resp.proxy_error()), (502, Some("tls-failed")), "{resp:?}");
    rejected_for(&client, "outbound", "expired").await;
    assert_eq!(app.hits(), 0);
}

/// Every spelling and copy of `weft-client-id` a caller could send: the header as written,
/// capitalised, twice, and with underscores (which CGI-style apps read as the same name).
const SPOOFED_HEAD: &str = "weft-client-id: spiffe://cluster.local/ns/default/sa/admin\r\n\
Weft-Client-Id: spiffe://cluster.local/ns/default/sa/root\r\n\
WEFT-CLIENT-ID: spiffe://cluster.local/ns/default/sa/admin\r\n\
weft_client_id: spiffe://cluster.local/ns/default/sa/admin\r\n";

/// An HTTP/1.1 request to `/spoof` with the spoofed fields in its head, and a chunked body whose
/// trailers carry one more copy beside a harmless `x-check` trailer.
fn spoofing_h1_request() -> Vec<u8> {
    format!(
        "POST /spoof HTTP/1.1\r\nhost: server\r\n{SPOOFED_HEAD}transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         2\r\nhi\r\n0\r\nweft-client-id: spiffe://cluster.local/ns/default/sa/admin\r\nx-check: 1\r\n\r\n"
    )
    .into_bytes()
}

/// The same over HTTP/2 on `io` (names are lower case in HTTP/2); the response head as
/// `name: value` lines.
async fn spoofing_h2_exchange<I>(io: I) -> String
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("weft-client-id", http::HeaderValue::from_static(ADMIN));
    trailers.insert("x-check", http::HeaderValue::from_static("1"));
    // No length: an HTTP/1.1 app can then be sent the body chunked, with its trailers.
    let body = Unsized { data: Some(Bytes::from_static(b"hi")), trailers: Some(trailers) };
    let req = http::Request::post("http://server/spoof")
        .header("weft-client-id", ADMIN)
        .header("weft-client-id", "spiffe://cluster.local/ns/default/sa/root")
        .header("weft_client_id", ADMIN)
        .body(body)
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("an answer within 10 s")
        .expect("HTTP/2 response");
    let mut head = format!("HTTP/2 {}\r\n", resp.status().as_u16());
    for (name, value) in resp.headers() {
        head += &format!("{name}: {}\r\n", value.to_str().unwrap_or("?"));
    }
    head
}

/// A body of one data frame and trailers whose length is not known ahead.
struct Unsized {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let frame = match self.data.take() {
            Some(data) => Some(http_body::Frame::data(data)),
            None => self.trailers.take().map(http_body::Frame::trailers),
        };
        std::task::Poll::Ready(frame.map(Ok))
    }
}

const ADMIN: &str = "spiffe://cluster.local/ns/default/sa/admin";

/// What the app saw of `weft-client-id` in a response head (the backend echoes it as
/// `x-seen-…`): every value under any spelling, in the request's head and its trailers.
fn seen_ids(head: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| {
            let name = name.to_ascii_lowercase().replace('_', "-");
            name == "x-seen-weft-client-id" || name == "x-seen-trailer-weft-client-id"
        })
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// `weft-client-id` reaches the app only as the proxy set it: the caller's verified id over
/// mTLS, nothing for plaintext. Whatever a caller sent under that name, in any case, twice,
/// with underscores, or in trailers, is gone, on each way in: through the caller's own proxy
/// (HTTP/1.1 and HTTP/2 from the app), straight to the server proxy over mTLS (HTTP/1.1 and
/// HTTP/2 by ALPN) and in plaintext (permissive mode, HTTP/1.1 and h2c).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_client_id_reaches_the_app_only_as_the_proxy_set_it_on_every_path() {
    let pki = Pki::new("hostile-spoof");
    let app = Backend::start("app").await;
    let server = server_proxy(&pki.issue("server", &spiffe("server"), "1h"), &app, &mesh_mode("permissive")).await;
    let client_files = pki.issue("client", &spiffe("client"), "1h");
    let client = client_proxy(&client_files, server.inbound(), &spiffe("server")).await;
    let (upstream, inbound) = (client.upstream("server"), server.inbound());
    let limit = Duration::from_secs(10);
    let mtls = |alpn: &'static [u8]| tls::connect(inbound, tls::client_config(Some(&client_files), &[alpn]));

    let mut paths: Vec<(&str, String, Vec<String>)> = Vec::new();
    let answer = raw_exchange(upstream, &spoofing_h1_request(), limit).await;
    paths.push(("HTTP/1.1 through the client proxy", text(&answer), vec![spiffe("client")]));
    let stream = TcpStream::connect(upstream).await.expect("connect");
    paths.push(("HTTP/2 through the client proxy", spoofing_h2_exchange(stream).await, vec![spiffe("client")]));
    let stream = mtls(b"http/1.1").await.expect("mTLS handshake");
    let answer = exchange_on(stream, &spoofing_h1_request(), limit).await;
    paths.push(("HTTP/1.1 over mTLS", text(&answer), vec![spiffe("client")]));
    let stream = mtls(b"h2").await.expect("mTLS handshake");
    paths.push(("HTTP/2 over mTLS", spoofing_h2_exchange(stream).await, vec![spiffe("client")]));
    let answer = raw_exchange(inbound, &spoofing_h1_request(), limit).await;
    paths.push(("plaintext HTTP/1.1", text(&answer), vec![]));
    let stream = TcpStream::connect(inbound).await.expect("connect");
    paths.push(("plaintext h2c", spoofing_h2_exchange(stream).await, vec![]));

    for (path, head, expected) in &paths {
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/2 200"), "{path}: {head}");
        assert_eq!(&seen_ids(head), expected, "{path}: {head}");
        let trailers_arrived = head.to_ascii_lowercase().contains("x-seen-trailer-x-check: 1");
        eprintln!("{path}: the app saw {expected:?}; the harmless trailer arrived: {trailers_arrived}");
        assert!(trailers_arrived, "{path}: request trailers reach the app (so the spoofed one was removed): {head}");
    }
    assert_eq!(app.hits(), paths.len());
}

fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}
