//! Bad input: malformed requests, oversized heads and bodies, slow senders, unknown services
//! and bad configs each get a clear answer, never a hang.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weft_integration::client::{H2Conn, must};
use weft_integration::net::{raw_exchange, read_head, read_until_close, status_of};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, document, eventually, metric_sum, service};

const RAW_DEADLINE: Duration = Duration::from_secs(10);

async fn proxy_for(api: &Backend, proxy_spec: &str) -> Proxy {
    Proxy::start(ProxyConfig {
        proxy_spec: proxy_spec.to_string(),
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_400() {
    let api = Backend::start("api").await;
    let proxy = proxy_for(&api, "").await;

    let cases: [&[u8]; 10] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api\r\nthis line has no colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: abc\r\n\r\n",
        // Smuggling shapes: both framings (either order), differing lengths, obs-fold.
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nX",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nHost: api\r\nX-A: one\r\n two\r\n\r\n",
        // A coding before chunked, or chunked twice: found by the differential test (h11).
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: identity, chunked\r\n\r\n1\r\nX\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    ];
    for request in cases {
        let raw = raw_exchange(proxy.outbound(), request, RAW_DEADLINE).await;
        assert_eq!(
            status_of(&raw),
            Some(400),
            "{:?} got {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&raw)
        );
        assert!(
            String::from_utf8_lossy(&raw).contains("\r\nweft-proxy-error: bad-request\r\n"),
            "{:?}: the proxy's own answer names its reason: {:?}",
            String::from_utf8_lossy(request),
            String::from_utf8_lossy(&raw)
        );
    }
    assert_eq!(api.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let api = Backend::start("api").await;
    let proxy = proxy_for(&api, "http: {maxHeaderBytes: 16384}").await;

    let fits = must(proxy.outbound(), &Req::get("/").host("api").header("x-big", &"a".repeat(4096))).await;
    assert_eq!(fits.status, 200, "a 4 KiB header is within the limit: {fits:?}");

    let request = format!("GET / HTTP/1.1\r\nHost: api\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let raw = raw_exchange(proxy.outbound(), request.as_bytes(), RAW_DEADLINE).await;
    assert_eq!(status_of(&raw), Some(431), "got {:?}", String::from_utf8_lossy(&raw[..raw.len().min(300)]));
    assert_eq!(api.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_sender_is_disconnected() {
    let api = Backend::start("api").await;
    let proxy = proxy_for(&api, "http: {headerReadTimeout: 1s}").await;

    let start = Instant::now();
    let stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // A header line every 300 ms: the connection is never idle, but the head never completes.
    let trickle = tokio::spawn(async move {
        if writer.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n").await.is_err() {
            return;
        }
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), read_until_close(&mut reader, &mut got)).await;
    let took = start.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "a client trickling headers was still connected after {took:?}");
    assert!(took >= Duration::from_millis(900), "disconnected after {took:?}, before headerReadTimeout 1s");
    if !got.is_empty() {
        assert_eq!(status_of(&got), Some(408), "only a 408 may be sent: {:?}", String::from_utf8_lossy(&got));
    }
    assert_eq!(api.hits(), 0);
}

/// Two requests on one kept-alive connection, longer than headerReadTimeout (1 s) apart.
async fn exchange_twice(name: &str, stream: &mut TcpStream, request: &[u8]) {
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1600)).await;
        }
        stream.write_all(request).await.unwrap();
        let (head, _) = read_head(stream, RAW_DEADLINE).await;
        assert!(head.starts_with("HTTP/1.1 204"), "{name}: request {i} on a kept-alive connection: {head:?}");
    }
}

/// A keep-alive connection waiting for its next request is idle, not slow: it lasts
/// `clientIdleTimeout`, and is then closed quietly (no 408). A head that has started to arrive
/// must complete within `headerReadTimeout` of its first byte, however long the connection
/// idled before. HTTP/2 connections with no stream open are closed (GOAWAY) after
/// `clientIdleTimeout` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_last_client_idle_timeout_and_slow_heads_header_read_timeout() {
    let api = Backend::start("api").await;
    let proxy = proxy_for(&api, "http: {headerReadTimeout: 1s, clientIdleTimeout: 3s}").await;
    let request = b"GET /status/204 HTTP/1.1\r\nHost: api\r\n\r\n";

    let mut idle = TcpStream::connect(proxy.outbound()).await.unwrap();
    let mut slow = TcpStream::connect(proxy.outbound()).await.unwrap();
    let h2 = H2Conn::connect(proxy.outbound()).await.expect("h2 connect");
    assert_eq!(h2.send(&Req::get("/h2").host("api")).await.expect("h2 request").status, 200);
    let h2_idle = tokio::spawn(async move {
        let since = Instant::now();
        while !h2.is_closed() && since.elapsed() < RAW_DEADLINE {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        since.elapsed()
    });
    exchange_twice("idle", &mut idle, request).await;
    let idle_h1 = tokio::spawn(async move {
        let since = Instant::now();
        let mut got = Vec::new();
        let closed = tokio::time::timeout(RAW_DEADLINE, read_until_close(&mut idle, &mut got)).await;
        (closed.is_ok(), since.elapsed(), got)
    });
    exchange_twice("slow", &mut slow, request).await;

    // The next head starts on `slow` after 1.6 s of idling, and never completes.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let first_byte = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n").await.unwrap();
    let (mut reader, mut writer) = slow.into_split();
    let trickle = tokio::spawn(async move {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(RAW_DEADLINE, read_until_close(&mut reader, &mut got)).await;
    let took = first_byte.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "a slow head was not cut off");
    assert!(took >= Duration::from_millis(900), "cut off {took:?} after its first byte, before headerReadTimeout");
    assert!(took < Duration::from_millis(2500), "cut off {took:?} after its first byte: that is the idle deadline");
    if !got.is_empty() {
        assert_eq!(status_of(&got), Some(408), "only a 408 may be sent: {:?}", String::from_utf8_lossy(&got));
    }

    let (closed, idled, got) = idle_h1.await.unwrap();
    assert!(closed, "an idle HTTP/1.1 connection was never closed");
    assert!(idled >= Duration::from_millis(2900), "closed after {idled:?} idle, before clientIdleTimeout 3s");
    assert!(idled < Duration::from_millis(4500), "closed only after {idled:?} idle (clientIdleTimeout 3s)");
    assert!(got.is_empty(), "an idle close sends nothing: {:?}", String::from_utf8_lossy(&got));

    // HTTP/2 is checked every 0.75 s, so it is closed between 3 and 4.5 s of idling.
    let idled = h2_idle.await.unwrap();
    assert!(idled >= Duration::from_millis(2900), "HTTP/2 closed after {idled:?} idle, before clientIdleTimeout 3s");
    assert!(idled < Duration::from_millis(5500), "HTTP/2 still open after {idled:?} idle (clientIdleTimeout 3s)");

    // Idle closes are ordinary ends; the slow head is the one protocol error.
    let metrics = proxy.metrics().await;
    assert_eq!(metric_sum(&metrics, "weft_protocol_errors_total", &[]), 1.0, "{metrics}");
    assert_eq!(api.hits(), 5, "the slow head never reached the backend");
}

/// What every HTTP/2 client sends first: the preface and a SETTINGS frame (here empty).
const H2_HELLO: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// A HEADERS frame on stream 1 (`:method: GET`, END_STREAM) without END_HEADERS: the header
/// block is left open, as if CONTINUATION frames were to follow.
const H2_OPEN_HEADER_BLOCK: &[u8] = b"\x00\x00\x01\x01\x01\x00\x00\x00\x01\x82";

/// Writes `bytes` on a new connection, never answers anything (not the GOAWAY, not the
/// PING), and returns how long the proxy took to close it (`None`: still open at `limit`).
async fn closed_after(addr: std::net::SocketAddr, bytes: &'static [u8], limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    stream.write_all(bytes).await.unwrap();
    let mut ignored = Vec::new();
    tokio::time::timeout(limit, read_until_close(&mut stream, &mut ignored)).await.ok()?;
    Some(start.elapsed())
}

/// An HTTP/2 client that goes silent is closed within a bounded time of its timeout, whatever
/// it does: h2 alone sends GOAWAY and a PING at `clientIdleTimeout` and waits for the answer
/// forever (100 such clients once held 100 sockets for good). A client that stops inside a
/// header block is closed at `headerReadTimeout` (h2 buffers the partial block silently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_http2_clients_are_closed_within_their_timeouts() {
    let api = Backend::start("api").await;
    let proxy = proxy_for(&api, "http: {headerReadTimeout: 500ms, clientIdleTimeout: 2s}").await;
    let limit = Duration::from_secs(15);

    let mut silent = tokio::task::JoinSet::new();
    for _ in 0..20 {
        silent.spawn(closed_after(proxy.outbound(), H2_HELLO, limit));
    }
    let hello_then_stall = [H2_HELLO, H2_OPEN_HEADER_BLOCK].concat().leak();
    let stalled = tokio::spawn(closed_after(proxy.outbound(), hello_then_stall, limit));
    eventually("every connection counted open", Duration::from_secs(5), || async {
        (metric_sum(&proxy.metrics().await, "weft_open_connections", &[]) >= 20.0).then_some(())
    })
    .await;

    let took = stalled.await.unwrap().expect("a client stalled inside a header block was never closed");
    assert!(took >= Duration::from_millis(450), "closed after {took:?}, before headerReadTimeout 500ms");
    assert!(took < Duration::from_millis(1800), "closed only after {took:?}: headerReadTimeout is 500ms");
    // GOAWAY comes between 1 and 1.5 times clientIdleTimeout; the close at most 1 s later.
    while let Some(took) = silent.join_next().await {
        let took = took.unwrap().expect("a silent HTTP/2 client was still connected 15 s later");
        assert!(took >= Duration::from_millis(1900), "closed after {took:?}, before clientIdleTimeout 2s");
        assert!(took < Duration::from_millis(5000), "closed only after {took:?} (clientIdleTimeout 2s)");
    }
    eventually("no connection left open", Duration::from_secs(5), || async {
        (metric_sum(&proxy.metrics().await, "weft_open_connections", &[]) == 0.0).then_some(())
    })
    .await;
    assert_eq!(api.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_gets_413() {
    body_over_max_body_bytes("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_gets_413_from_an_h2_backend_too() {
    body_over_max_body_bytes("http2").await;
}

async fn body_over_max_body_bytes(protocol: &str) {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: "http: {maxBodyBytes: 1024}".to_string(),
        policy: service("api", protocol, &[api.addr()]),
        ..Default::default()
    })
    .await;

    let fits = must(proxy.outbound(), &Req::post("/echo", vec![b'a'; 1000]).host("api")).await;
    assert_eq!(fits.status, 200, "{fits:?}");
    assert_eq!(fits.body.len(), 1000);

    let resp = must(proxy.outbound(), &Req::post("/echo", vec![b'a'; 4096]).host("api")).await;
    assert_eq!(resp.status, 413, "{resp:?}");
    assert_eq!(resp.proxy_error(), Some("body-too-large"));
    assert_eq!(api.hits(), 1, "a body declared too large never reaches the backend");

    // Chunked: the size is only known while reading.
    let chunk = "b".repeat(800);
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n\
         320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    let raw = raw_exchange(proxy.outbound(), request.as_bytes(), RAW_DEADLINE).await;
    assert_eq!(status_of(&raw), Some(413), "got {:?}", String::from_utf8_lossy(&raw[..raw.len().min(300)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_and_unmatched_path_get_404_with_reason() {
    let api = Backend::start("api").await;
    let route = document(
        "Route",
        "api",
        "service: api\nrules:\n  - match: {pathPrefix: /v1/}\n    backends: [{service: api, weight: 1}]\n",
    );
    let proxy =
        Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]) + &route, ..Default::default() })
            .await;

    for host in ["nosuch", "nosuch.default", "api.otherns", "example.com"] {
        let resp = must(proxy.outbound(), &Req::get("/v1/x").host(host)).await;
        assert_eq!(resp.status, 404, "Host: {host}: {resp:?}");
        assert_eq!(resp.proxy_error(), Some("unknown-service"), "Host: {host}");
    }
    let resp = must(proxy.outbound(), &Req::get("/v2/x").host("api")).await;
    assert_eq!(resp.status, 404, "{resp:?}");
    assert_eq!(resp.proxy_error(), Some("no-route"));
    let resp = must(proxy.outbound(), &Req::get("/v1/x").host("api")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(api.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_at_start_exits_with_the_problem() {
    let api = Backend::start("api").await;
    let route = document(
        "Route",
        "api",
        "service: api\nrules:\n  - match: {pathPrefix: /}\n    backendz: [{service: api, weight: 1}]\n",
    );
    let mut proxy =
        Proxy::spawn(&ProxyConfig { policy: service("api", "http", &[api.addr()]) + &route, ..Default::default() });
    let status = proxy.wait_exit(Duration::from_secs(20)).await;
    let status = status.expect("a proxy with an invalid config exits instead of serving");
    assert!(!status.success(), "exit status {status} for an invalid config");
    let logs = proxy.logs();
    assert!(logs.contains("backendz"), "the error names the bad field:\n{logs}");
}
