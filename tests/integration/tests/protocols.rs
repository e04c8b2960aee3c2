//! Protocols: HTTP/1.1 ↔ h2c translation, gRPC status and trailers, Upgrade and opaque TCP.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_integration::client::{H2Conn, must, send_h2};
use weft_integration::metrics::metric_sum;
use weft_integration::net::{read_head, read_until_close};
use weft_integration::tcp_echo::{GREETING, expect_greeting, send_and_read_to_eof};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, TcpEcho, eventually, service};

const IO_DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_reaches_h2_backend() {
    let api = Backend::start("api").await;
    let proxy =
        Proxy::start(ProxyConfig { policy: service("api", "http2", &[api.addr()]), ..Default::default() }).await;

    let resp = must(proxy.outbound(), &Req::get("/hello").host("api")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.version, http::Version::HTTP_11);
    assert_eq!(resp.header("x-echo-version"), Some("HTTP/2.0"), "the proxy spoke h2 to the backend");
    assert_eq!(resp.text(), "api\n");

    let body = vec![b'z'; 200_000];
    let resp = must(proxy.outbound(), &Req::post("/echo", body.clone()).host("api")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.as_ref(), body.as_slice(), "a 200 KB body crosses h1 → h2 intact");

    let resp = must(proxy.outbound(), &Req::get("/status/404").host("api")).await;
    assert_eq!(resp.status, 404);
    assert_eq!(resp.proxy_error(), None, "the backend's 404 is not a proxy error");
}

/// Bodies larger than every HTTP/2 flow-control window on the way (the backend's 1 MiB
/// stream and connection windows, the proxy's 2 MiB stream window), many at once on the
/// proxy's one shared connection, arrive whole and unmixed in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_to_an_h2_backend_respect_flow_control() {
    let api = Backend::start("api").await;
    let proxy =
        Proxy::start(ProxyConfig { policy: service("api", "http2", &[api.addr()]), ..Default::default() }).await;

    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let resp = must(proxy.outbound(), &Req::post("/echo", big.clone()).host("api")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-echo-version"), Some("HTTP/2.0"));
    assert!(resp.body.as_ref() == big.as_slice(), "3 MB echoed: got {} bytes", resp.body.len());

    let tasks: Vec<_> = (0..12u8)
        .map(|i| {
            let addr = proxy.outbound();
            tokio::spawn(async move {
                let body = vec![b'a' + i; 300_000 + usize::from(i) * 1000];
                let resp = must(addr, &Req::post(&format!("/echo/{i}"), body.clone()).host("api")).await;
                (i, body, resp)
            })
        })
        .collect();
    for task in tasks {
        let (i, body, resp) = task.await.unwrap();
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert!(
            resp.body.as_ref() == body.as_slice(),
            "request {i}: {} bytes back, {} sent",
            resp.body.len(),
            body.len()
        );
    }
    assert_eq!(api.hits(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_reaches_http1_backend_multiplexed() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig {
        upstreams: vec!["api".to_string()],
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await;

    let resp = send_h2(proxy.outbound(), &Req::get("/h2").host("api")).await.expect("h2 request");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.version, http::Version::HTTP_2);
    assert_eq!(resp.header("x-echo-version"), Some("HTTP/1.1"), "the proxy spoke HTTP/1.1 to the backend");
    assert_eq!(resp.header("x-echo-path"), Some("/h2"));

    // Twenty concurrent streams on one client connection, some slow, all answered.
    let conn = H2Conn::connect(proxy.outbound()).await.expect("h2 connect");
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let path = format!("/delay/{}/n{i}", (i % 4) * 50);
                (path.clone(), conn.send(&Req::post(&path, format!("body {i}")).host("api")).await)
            })
        })
        .collect();
    for task in tasks {
        let (path, resp) = task.await.unwrap();
        let resp = resp.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.header("x-echo-path"), Some(path.as_str()));
    }

    let resp = send_h2(proxy.upstream("api"), &Req::get("/via-upstream")).await.expect("h2 to upstream port");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.backend(), Some("api"));
    assert_eq!(api.hits(), 22);
}

/// An HTTP/2 client's uploads larger than the proxy's windows (1 MiB per stream and per
/// connection) arrive whole, several at once on one connection: the proxy gives window back
/// as it forwards each piece, so nothing stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_uploads_larger_than_the_proxy_windows_arrive_whole() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    let conn = H2Conn::connect(proxy.outbound()).await.expect("h2 connect");
    let uploads: Vec<_> = (0..3u8)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let body: Vec<u8> = (0..3 * 1024 * 1024 + 7).map(|n| (n % 251) as u8 ^ i).collect();
                let resp = conn.send(&Req::post(&format!("/echo/{i}"), body.clone()).host("api")).await;
                (body, resp)
            })
        })
        .collect();
    for upload in uploads {
        let (body, resp) = upload.await.unwrap();
        let resp = resp.expect("upload answered");
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.body.len(), body.len());
        assert!(resp.body.as_ref() == body.as_slice(), "the 3 MiB body changed on the way");
    }
}

/// A proxy in front of `api` that lets one request at a time through to it.
async fn proxy_with_one_slot(api: &Backend) -> Proxy {
    let policy = service("api", "http", &[api.addr()])
        + &weft_integration::document("TrafficPolicy", "api", "service: api\nlimits: {maxConcurrentRequests: 1}");
    Proxy::start(ProxyConfig { policy, ..Default::default() }).await
}

/// A client that resets its stream (RST_STREAM) while the upstream is still working cancels
/// the call: the proxy drops it, and its concurrency slot is free again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_resetting_its_stream_cancels_the_upstream_call() {
    let api = Backend::start("api").await;
    let proxy = proxy_with_one_slot(&api).await;

    let conn = H2Conn::connect(proxy.outbound()).await.expect("h2 connect");
    let slow = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.send(&Req::get("/delay/20000").host("api")).await })
    };
    eventually("the slow call to reach the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 1).then_some(())
    })
    .await;
    let busy = conn.send(&Req::get("/busy").host("api")).await.expect("answered");
    assert_eq!(busy.status, 503, "the one slot is taken: {busy:?}");
    assert_eq!(busy.proxy_error(), Some("concurrency-limit"));
    assert_eq!(
        busy.header("content-length").and_then(|v| v.parse::<usize>().ok()),
        Some(busy.body.len()),
        "the proxy's own answer says its length"
    );
    assert!(busy.header("date").is_some_and(|d| d.ends_with(" GMT")), "and its date: {busy:?}");

    // Dropping the client's request resets its stream (CANCEL).
    slow.abort();
    let resp = eventually("the slot to be free again", Duration::from_secs(5), || async {
        let resp = conn.send(&Req::get("/after").host("api")).await.ok()?;
        (resp.status == 200).then_some(resp)
    })
    .await;
    assert_eq!(resp.header("x-echo-path"), Some("/after"));
}

fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

fn grpc_call(status: &str) -> Req {
    Req::post("/weft.test.Echo/Say", grpc_frame(b"hello"))
        .host("echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-grpc-status", status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_status_and_trailers_pass_through() {
    let echo = Backend::start("echo").await;
    let proxy =
        Proxy::start(ProxyConfig { policy: service("echo", "grpc", &[echo.addr()]), ..Default::default() }).await;
    let conn = H2Conn::connect(proxy.outbound()).await.expect("h2 connect");

    let ok = conn.send(&grpc_call("0")).await.expect("grpc call");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.header("content-type"), Some("application/grpc"));
    assert_eq!(ok.body.as_ref(), grpc_frame(b"hello").as_slice());
    assert_eq!(ok.trailer("grpc-status"), Some("0"), "trailers: {:?}", ok.trailers);
    assert_eq!(ok.header("x-echo-version"), Some("HTTP/2.0"));

    let failed = conn.send(&grpc_call("14")).await.expect("grpc call");
    assert_eq!(failed.status, 200, "gRPC errors travel in trailers, not the HTTP status");
    assert_eq!(failed.trailer("grpc-status"), Some("14"), "trailers: {:?}", failed.trailers);
    assert_eq!(failed.trailer("grpc-message"), Some("from echo"));

    // grpc-status 14 is a failure even though the HTTP status was 200.
    eventually("gRPC calls classified in metrics", Duration::from_secs(10), || async {
        let metrics = proxy.metrics().await;
        let count =
            |class| metric_sum(&metrics, "weft_requests_total", &[("service", "echo"), ("classification", class)]);
        (count("success") == 1.0 && count("failure") == 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_passes_through() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: api\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, rest) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 101"), "expected 101 Switching Protocols, got:\n{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("x-backend: api"), "{head}");
    assert!(rest.is_empty(), "no bytes before the client speaks: {rest:?}");

    for round in 0..5 {
        let message = format!("frame {round} \u{0}\u{1}\u{ff}");
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(IO_DEADLINE, stream.read_exact(&mut back)).await.expect("echo in time").unwrap();
        assert_eq!(back, message.as_bytes());
    }
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let (mut reader, mut writer) = stream.into_split();
    let to_send = big.clone();
    let write = tokio::spawn(async move {
        writer.write_all(&to_send).await.unwrap();
        writer
    });
    let mut back = vec![0u8; big.len()];
    tokio::time::timeout(IO_DEADLINE, reader.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert_eq!(back, big);
    drop(write.await.unwrap());
    assert_eq!(api.hits(), 1);
}

/// An `Upgrade: h2c` offer is taken out and the request served as plain HTTP/1.1 (as Envoy
/// does): passed on, a backend that accepts it (this one would) answers 101, and the proxy
/// would tunnel the rest of the connection, out of reach of routing and authorization (h2c
/// smuggling). The next request on the connection is routed on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_served_as_plain_http1_and_never_tunnelled() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: api\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
              HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, rest) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 200"), "an h2c offer must get a plain answer, got:\n{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-backend: api"), "{head}");
    assert!(!lower.contains("x-seen-upgrade") && !lower.contains("x-seen-http2-settings"), "offer passed on: {head}");
    let mut body = vec![0u8; "api\n".len() - rest.len()];
    tokio::time::timeout(IO_DEADLINE, stream.read_exact(&mut body)).await.expect("body in time").unwrap();

    // A tunnel would hand these bytes to the backend; the proxy routes them, and knows no `nowhere`.
    stream.write_all(b"GET /second HTTP/1.1\r\nHost: nowhere\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 404"), "the next request was not routed:\n{head}");
    assert!(head.to_ascii_lowercase().contains("weft-proxy-error: unknown-service"), "{head}");
    assert_eq!(api.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_through_upstream_port() {
    let echo = TcpEcho::start().await;
    let proxy = Proxy::start(ProxyConfig {
        upstreams: vec!["db".to_string()],
        policy: service("db", "tcp", &[echo.addr()]),
        ..Default::default()
    })
    .await;

    // Bytes that are not HTTP at all.
    let mut stream = TcpStream::connect(proxy.upstream("db")).await.unwrap();
    let hello = b"\x00\x01\x02PING\r\n";
    stream.write_all(hello).await.unwrap();
    let mut back = [0u8; 9];
    tokio::time::timeout(IO_DEADLINE, stream.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert_eq!(&back, hello);

    // A large stream both ways at once, then a half-close: the peer's close comes back as EOF.
    let big: Vec<u8> = (0..512 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let received = send_and_read_to_eof(stream, &big, IO_DEADLINE).await;
    assert_eq!(received.len(), big.len());
    assert!(received == big, "bytes changed on the way");

    let mut second = TcpStream::connect(proxy.upstream("db")).await.unwrap();
    second.write_all(b"again").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(IO_DEADLINE, second.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert_eq!(&back, b"again");
    assert_eq!(echo.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_server_that_speaks_first_is_not_stalled() {
    // Like SMTP or MySQL: the server greets before the client sends a byte, so a declared tcp
    // port must not wait to sniff the client's first bytes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(GREETING).await.unwrap();
        let mut buf = [0u8; 4];
        socket.read_exact(&mut buf).await.unwrap();
        socket.write_all(&buf).await.unwrap();
    });
    let proxy = Proxy::start(ProxyConfig {
        upstreams: vec!["mail".to_string()],
        policy: service("mail", "tcp", &[addr]),
        ..Default::default()
    })
    .await;

    let mut stream = TcpStream::connect(proxy.upstream("mail")).await.unwrap();
    expect_greeting(&mut stream).await;
    stream.write_all(b"QUIT").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(IO_DEADLINE, stream.read_exact(&mut back)).await.expect("echo in time").unwrap();
    assert_eq!(&back, b"QUIT");
    server.await.unwrap();
}

/// Request bodies stream through the proxy's HTTP/1.1 client as they arrive: a chunked upload
/// sent in pieces with pauses, and a 1 MiB sized one (three times, on a reused upstream
/// connection), reach an HTTP/1.1 backend intact, and its echoes come back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_and_response_bodies_stream_through_intact() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        let resp = must(proxy.outbound(), &Req::post("/echo", body.clone()).host("api")).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.header("x-echo-body-len"), Some("1048576"));
        assert!(resp.body.as_ref() == body.as_slice(), "a 1 MiB body crosses intact both ways");
    }

    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: api\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let mut sent = Vec::new();
    for (i, size) in [100usize, 70_000, 1].into_iter().enumerate() {
        let piece = vec![b'a' + i as u8; size];
        stream.write_all(format!("{size:x}\r\n").as_bytes()).await.unwrap();
        stream.write_all(&piece).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
        sent.extend_from_slice(&piece);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(IO_DEADLINE, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("x-echo-body-len: {}", sent.len())), "{head}");
    assert!(raw[split..] == sent[..], "the chunked upload arrived whole and in order");
}

/// An upstream that answers before the request body is all sent: a refusal (413, closing
/// without reading the rest) reaches the client as the upstream's own 413, not a 502, and a
/// success answer does not cut the upload short (the upstream still reads all of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_during_an_upload_mean_what_the_upstream_meant() {
    const BODY: usize = 200_000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (got_tx, mut got_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                let (head, rest) = read_head(&mut socket, IO_DEADLINE).await;
                if head.contains("/refuse") {
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
                        )
                        .await;
                    return; // closes with the body unread
                }
                socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
                let mut got = rest.len();
                let mut buf = vec![0u8; 65536];
                while got < BODY {
                    match tokio::time::timeout(IO_DEADLINE, socket.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                        Ok(Ok(n)) => got += n,
                    }
                }
                let _ = got_tx.send(got);
                tokio::time::sleep(IO_DEADLINE).await;
            });
        }
    });
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[upstream]), ..Default::default() }).await;

    // The client sends half its body and waits: the refusal must still come back.
    let mut client = TcpStream::connect(proxy.outbound()).await.unwrap();
    let head = format!("POST /refuse HTTP/1.1\r\nHost: api\r\nContent-Length: {BODY}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&vec![b'r'; BODY / 2]).await.unwrap();
    let (head, rest) = read_head(&mut client, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(rest.starts_with(b"big!") || rest.is_empty(), "{rest:?}");

    // The whole body, in pauses, after the upstream already said 200.
    let mut client = TcpStream::connect(proxy.outbound()).await.unwrap();
    let head = format!("POST /accept HTTP/1.1\r\nHost: api\r\nContent-Length: {BODY}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        client.write_all(&vec![b'a'; BODY / 4]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let (head, _) = read_head(&mut client, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let got = tokio::time::timeout(IO_DEADLINE, got_rx.recv()).await.expect("the upstream finished reading");
    assert_eq!(got, Some(BODY), "the upload was sent whole after the early 200");
}

/// What an HTTP/1.1 client pipelined on one connection (sent together, before any answer),
/// answered in order: plain requests, one with a body, and one whose chunked body makes the
/// proxy hand the rest of the connection to hyper's server (see `server::h1server`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_of_every_shape_are_answered_in_order() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    let requests = b"GET /one HTTP/1.1\r\nHost: api\r\n\r\n\
        POST /echo/two HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello\
        POST /echo/three HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nthree\r\n0\r\n\r\n\
        GET /four HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n";
    stream.write_all(requests).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(IO_DEADLINE, read_until_close(&mut stream, &mut got)).await.expect("closed after /four");
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert_eq!(text.matches("http/1.1 200 ok\r\n").count(), 4, "{text}");
    let at = |needle: &str| text.find(needle).unwrap_or_else(|| panic!("no {needle:?} in {text}"));
    let order = [
        at("x-echo-path: /one"),
        at("x-echo-path: /echo/two"),
        at("x-echo-path: /echo/three"),
        at("x-echo-path: /four"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "answered out of order: {text}");
    assert!(at("\r\n\r\nhello") < order[2] && at("\r\n\r\nthree") > order[2], "bodies went to their requests: {text}");
    assert_eq!(api.hits(), 4);
}

/// Heads and bodies that do not arrive whole, `Expect: 100-continue`, and HTTP/1.0 are all
/// served (by hyper's server, which the proxy hands such connections to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_requests_in_pieces_expecting_continue_or_in_http_1_0_are_served() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    // A head in two pieces, then a body that follows later, on a kept-alive connection that
    // had a plain request first.
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: api\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream.write_all(b"POST /echo/pieces HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"st: api\r\nContent-Length: 6\r\n\r\nab").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"cdef").await.unwrap();
    let (head, body) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("x-echo-path: /echo/pieces"), "{head}");
    let mut body = body;
    while body.len() < 6 {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(IO_DEADLINE, stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the body");
        body.extend_from_slice(&buf[..n]);
    }
    assert_eq!(&body[..], b"abcdef");

    // Expect: 100-continue: the interim answer comes before the body is sent.
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream
        .write_all(b"POST /echo/continue HTTP/1.1\r\nHost: api\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");
    stream.write_all(b"ok").await.unwrap();
    let (head, _) = read_head(&mut stream, IO_DEADLINE).await;
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("x-echo-path: /echo/continue"), "{head}");

    // HTTP/1.0 without keep-alive: answered, then closed.
    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(b"GET /old HTTP/1.0\r\nHost: api\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(IO_DEADLINE, read_until_close(&mut stream, &mut got)).await.expect("closed after answering");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with("api\n"), "{text}");
    assert_eq!(api.hits(), 4);
}

/// An HTTP/1.1 client that closes its connection while the upstream is still working cancels
/// the call: its concurrency slot is free again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_closing_mid_call_cancels_the_upstream_call() {
    let api = Backend::start("api").await;
    let proxy = proxy_with_one_slot(&api).await;

    let mut stream = TcpStream::connect(proxy.outbound()).await.unwrap();
    stream.write_all(b"GET /delay/20000 HTTP/1.1\r\nHost: api\r\n\r\n").await.unwrap();
    eventually("the slow call to reach the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 1).then_some(())
    })
    .await;
    let busy = must(proxy.outbound(), &Req::get("/busy").host("api")).await;
    assert_eq!(busy.proxy_error(), Some("concurrency-limit"), "the one slot is taken: {busy:?}");
    drop(stream);
    let resp = eventually("the slot to be free again", Duration::from_secs(5), || async {
        let resp = must(proxy.outbound(), &Req::get("/after").host("api")).await;
        (resp.status == 200).then_some(resp)
    })
    .await;
    assert_eq!(resp.header("x-echo-path"), Some("/after"));
}
