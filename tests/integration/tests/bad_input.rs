//! Bad input: malformed requests, oversized heads and bodies, slow senders, unknown services
//! and bad configs each get a clear answer, never a hang.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use weft_integration::client::must;
use weft_integration::net::{raw_exchange, read_until_close, status_of};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, document, service};

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

    let cases: [&[u8]; 3] = [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api\r\nthis line has no colon\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: abc\r\n\r\n",
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
