//! Hostile input to the control plane's API (`weft serve --ca`): for every route a malformed
//! body, a 16 MiB body, a wrong method and an unknown path, a missing client certificate
//! where mTLS is required, certificate requests without a token, with a wrong one and for
//! another identity, and a flood of watch streams from one client. Each is refused with a
//! status that says why, bounded in memory, and counted (`weft_control_requests_refused_total`,
//! `weft_control_certificates_total`).
//!
//! The routes (control-plane/src/serve/discovery.rs and admin.rs): discovery `GET /v1/watch`,
//! `POST /v1/ack`, `/v1/leave`, `/v1/report`, `/v1/admission`, `/v1/certificates`; admin
//! `GET /metrics`, `/ready`, `/live`, `/v1/status`, `/v1/snapshot`.

use std::time::Duration;

use tokio::net::TcpStream;
use weft_integration::client::must;
use weft_integration::mesh::{ControlPlane, IdentityFiles, Pki, spiffe};
use weft_integration::net::{exchange_on, raw_exchange, send_until_closed, status_of};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, eventually, metric_sum, tls};

const CLIENT_TOKEN: &str = "client-token-0123456789";

async fn control_plane(label: &str, extra: &[&str]) -> (Pki, ControlPlane) {
    let pki = Pki::new(label);
    let cp = ControlPlane::start_with(&pki, &[(CLIENT_TOKEN, &spiffe("client"))], "1h", extra).await;
    (pki, cp)
}

async fn metrics(cp: &ControlPlane) -> String {
    must(cp.admin(), &Req::get("/metrics")).await.text()
}

async fn refused(cp: &ControlPlane, route: &str, reason: &str) -> f64 {
    metric_sum(&metrics(cp).await, "weft_control_requests_refused_total", &[("route", route), ("reason", reason)])
}

async fn certificates(cp: &ControlPlane, result: &str) -> f64 {
    metric_sum(&metrics(cp).await, "weft_control_certificates_total", &[("result", result)])
}

async fn rss_kib(cp: &ControlPlane) -> u64 {
    metric_sum(&metrics(cp).await, "process_resident_memory_bytes", &[]) as u64 / 1024
}

/// A raw HTTP/1.1 request with `body` (plaintext from loopback is served); the answer's
/// status and text.
async fn ask(cp: &ControlPlane, method: &str, target: &str, headers: &str, body: &str) -> (Option<u16>, String) {
    let raw = format!(
        "{method} {target} HTTP/1.1\r\nhost: weft-control\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = raw_exchange(cp.addr(), raw.as_bytes(), Duration::from_secs(10)).await;
    (status_of(&answer), String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_malformed_input_wrong_methods_and_unknown_paths_and_counts_them() {
    let (pki, cp) = control_plane("cp-malformed", &[]).await;
    let bearer = format!("authorization: Bearer {CLIENT_TOKEN}\r\n");
    let cases: [(&str, &str, &str, &str, u16, &str, &str); 11] = [
        ("POST", "/v1/ack", "", "{not json", 400, "ack", "bad-request"),
        ("POST", "/v1/leave", "", "[]", 400, "leave", "bad-request"),
        ("POST", "/v1/report", "", "{\"session\": 7}", 400, "report", "bad-request"),
        ("POST", "/v1/admission", "", "{\"kind\": \"Pod\"}", 400, "admission", "bad-request"),
        ("GET", "/v1/watch?colour=red", "", "", 400, "watch", "bad-request"),
        ("GET", "/v1/watch?service=a&address=nope", "", "", 400, "watch", "bad-request"),
        ("GET", "/v1/ack", "", "", 405, "ack", "wrong-method"),
        ("POST", "/v1/watch?service=a", "", "{}", 405, "watch", "wrong-method"),
        ("DELETE", "/v1/leave", "", "", 405, "leave", "wrong-method"),
        ("GET", "/v1/../etc/passwd", "", "", 404, "other", "not-found"),
        ("POST", "/v2/watch", "", "{}", 404, "other", "not-found"),
    ];
    for (method, target, headers, body, status, route, reason) in cases {
        let before = refused(&cp, route, reason).await;
        let (got, answer) = ask(&cp, method, target, headers, body).await;
        assert_eq!(got, Some(status), "{method} {target}: {answer}");
        assert_eq!(refused(&cp, route, reason).await, before + 1.0, "{method} {target}: counted as {route}/{reason}");
    }
    let (_, answer) = ask(&cp, "GET", "/v1/ack", "", "").await;
    assert!(answer.to_ascii_lowercase().contains("allow: post"), "405 says which method: {answer}");

    // The CA's route: counted with the certificates it refuses.
    let csr_cases = [
        ("GET", bearer.as_str(), "", 405, "bad-request"),
        ("POST", bearer.as_str(), "{\"csr\": 42}", 400, "bad-request"),
        ("POST", bearer.as_str(), "{\"csr\": \"-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n\"}", 400, "bad-csr"),
    ];
    for (method, headers, body, status, result) in csr_cases {
        let before = certificates(&cp, result).await;
        let (got, answer) = ask(&cp, method, "/v1/certificates", headers, body).await;
        assert_eq!(got, Some(status), "{method} {body}: {answer}");
        assert_eq!(certificates(&cp, result).await, before + 1.0, "{method} {body}: counted as {result}");
    }

    // The admin listener is read-only.
    let put = must(cp.admin(), &Req::new("PUT", "/metrics")).await;
    assert_eq!((put.status, put.header("allow")), (405, Some("GET")), "{}", put.text());
    assert_eq!(must(cp.admin(), &Req::get("/v1/secrets")).await.status, 404);
    assert_eq!(refused(&cp, "admin", "wrong-method").await, 1.0);
    assert_eq!(refused(&cp, "admin", "not-found").await, 1.0);

    // Over TLS, the proxy routes want the caller's mesh certificate.
    for route in ["ack", "leave", "report"] {
        let stream = tls::connect(cp.addr(), tls::client_config(None, &[b"http/1.1"])).await.expect("TLS handshake");
        let session = "\"session\": \"0123456789abcdef0123456789abcdef\"";
        let body = match route {
            "ack" => format!("{{{session}, \"version\": 1}}"),
            "report" => format!("{{{session}, \"stats\": []}}"),
            _ => format!("{{{session}}}"),
        };
        let raw =
            format!("POST /v1/{route} HTTP/1.1\r\nhost: weft-control\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        let answer = exchange_on(stream, raw.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(status_of(&answer), Some(401), "{route}: {}", String::from_utf8_lossy(&answer));
        assert_eq!(refused(&cp, route, "no-client-certificate").await, 1.0, "{route}");
    }
    drop(pki);
}

/// A 16 MiB body is refused after the route's limit (256 KiB for the proxies' posts, 64 KiB
/// for a CSR, 3 MiB for an AdmissionReview) without the rest being read: 413, or the
/// connection closed under the sender, and the control plane's memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_mib_body_is_refused_on_every_route_without_being_read_whole() {
    let (_pki, cp) = control_plane("cp-huge", &[]).await;
    let before_kib = rss_kib(&cp).await;
    let huge = vec![b'x'; 16 << 20];
    for (route, path) in [
        ("ack", "/v1/ack"),
        ("leave", "/v1/leave"),
        ("report", "/v1/report"),
        ("admission", "/v1/admission"),
        ("certificates", "/v1/certificates"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: weft-control\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            huge.len()
        );
        let bytes = [head.as_bytes(), &huge].concat();
        let (answer, took) = send_until_closed(cp.addr(), bytes, Duration::from_secs(20)).await;
        let status = status_of(&answer);
        assert!(matches!(status, Some(413) | None), "{path}: {}", String::from_utf8_lossy(&answer));
        eprintln!("{path}: {status:?} after {took:?}");
        let counted = if route == "certificates" {
            certificates(&cp, "too-large").await
        } else {
            refused(&cp, route, "too-large").await
        };
        assert_eq!(counted, 1.0, "{path}: counted as too-large");
    }
    let after_kib = rss_kib(&cp).await;
    eprintln!("control plane RSS {before_kib} KiB before, {after_kib} KiB after five 16 MiB bodies");
    assert!(after_kib < before_kib + 16 * 1024, "RSS grew from {before_kib} to {after_kib} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_refused_without_a_token_with_a_wrong_one_and_for_another_identity() {
    let (pki, cp) = control_plane("cp-csr", &[]).await;
    let body = "{\"csr\": \"not looked at before the token earns an identity\"}";
    let (status, answer) = ask(&cp, "POST", "/v1/certificates", "", body).await;
    assert_eq!(status, Some(401), "{answer}");
    assert!(answer.contains("Authorization: Bearer"), "says how to send a token: {answer}");
    let wrong = "authorization: Bearer not-a-known-token-0123\r\n";
    let (status, answer) = ask(&cp, "POST", "/v1/certificates", wrong, body).await;
    assert_eq!(status, Some(401), "{answer}");
    assert_eq!((certificates(&cp, "no-token").await, certificates(&cp, "unknown-token").await), (1.0, 1.0));

    // A real proxy beside `payments` holding client's token asks for payments' id.
    let app = Backend::start("app").await;
    let mut proxy = Proxy::spawn(&ProxyConfig {
        service: "payments".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: cp.tls_line(&pki, "payments", CLIENT_TOKEN),
        ..Default::default()
    });
    eventually("the CSR for payments to be refused", Duration::from_secs(10), || async {
        (certificates(&cp, "wrong-identity").await >= 1.0).then_some(())
    })
    .await;
    assert!(proxy.wait_ready(Duration::from_secs(1)).await.is_err(), "ready with another identity's certificate");
    assert!(proxy.logs().contains("403 Forbidden"), "{}", proxy.log_tail(20));
    assert_eq!(certificates(&cp, "issued").await, 0.0);
    let logs = cp.logs();
    assert!(!logs.contains(CLIENT_TOKEN) && !logs.contains("not-a-known-token"), "a token is never logged");
}

/// Opens a watch over TLS with `files`' certificate, for `account` (its service account in
/// `default`); the answer's status, and the connection (held open for a stream that was
/// accepted).
async fn open_watch(cp: &ControlPlane, files: &IdentityFiles, account: &str) -> (u16, WatchConn) {
    let mut stream = tls::connect(cp.addr(), tls::client_config(Some(files), &[b"http/1.1"])).await.expect("TLS");
    let req = format!("GET /v1/watch?service={account}&namespace=default HTTP/1.1\r\nhost: weft-control\r\n\r\n");
    let head = exchange_on(&mut stream, req.as_bytes(), Duration::from_secs(10)).await;
    (status_of(&head).expect("a status line"), stream)
}

type WatchConn = tokio_rustls::client::TlsStream<TcpStream>;

/// Opens `n` watches as `alice` (`files`) one after another; how many were served and refused,
/// and the connections of those served.
async fn flood(cp: &ControlPlane, files: &IdentityFiles, n: usize) -> (usize, usize, Vec<WatchConn>) {
    let mut held = Vec::new();
    let mut too_many = 0;
    for _ in 0..n {
        match open_watch(cp, files, "alice").await {
            (200, stream) => held.push(stream),
            (429, _) => too_many += 1,
            (other, _) => panic!("a watch answered {other}"),
        }
    }
    (held.len(), too_many, held)
}

async fn connected(cp: &ControlPlane) -> f64 {
    metric_sum(&metrics(cp).await, "weft_control_proxies_connected", &[])
}

/// 500 watch streams over mTLS from one client (one address, one certificate): the first 100
/// (the default limit) are served, the rest refused with 429 and counted; the memory they hold
/// is small and bounded, another client is still served, and a closed stream gives its place
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_watches_from_one_client_is_cut_at_the_limit_and_counted() {
    let (pki, cp) = control_plane("cp-flood", &[]).await;
    let alice = pki.issue("alice", &spiffe("alice"), "1h");
    let before_kib = rss_kib(&cp).await;
    let (served, too_many, mut held) = flood(&cp, &alice, 500).await;
    assert_eq!((served, too_many), (100, 400));
    let after_kib = rss_kib(&cp).await;
    assert_eq!(refused(&cp, "watch", "too-many-watches").await, 400.0);
    assert_eq!(connected(&cp).await, 100.0);
    eprintln!(
        "100 watches held, 400 refused: RSS {before_kib} -> {after_kib} KiB ({:.1} KiB per held watch)",
        after_kib.saturating_sub(before_kib) as f64 / 100.0
    );
    assert!(after_kib < before_kib + 32 * 1024, "RSS grew from {before_kib} to {after_kib} KiB");

    // Another identity, and plaintext from loopback (weft demo, benchmarks), are not held back.
    let (status, _bob) = open_watch(&cp, &pki.issue("bob", &spiffe("bob"), "1h"), "bob").await;
    assert_eq!(status, 200, "bob's first watch");
    let mut plain = TcpStream::connect(cp.addr()).await.expect("connect");
    let req = b"GET /v1/watch?service=alice&namespace=default HTTP/1.1\r\nhost: weft-control\r\n\r\n";
    let head = exchange_on(&mut plain, req, Duration::from_secs(10)).await;
    assert_eq!(status_of(&head), Some(200), "{}", String::from_utf8_lossy(&head));

    held.truncate(90);
    eventually("closed streams to give their places back", Duration::from_secs(10), || async {
        (connected(&cp).await == 92.0).then_some(())
    })
    .await;
    let (served, too_many, _more) = flood(&cp, &alice, 20).await;
    assert_eq!((served, too_many), (10, 10), "ten places were free again");
}

/// What one watch stream over mTLS costs: with the limit raised, 500 held by one client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_costs_the_control_plane_a_few_kib() {
    let (pki, cp) = control_plane("cp-per-watch", &["--max-watches-per-client", "1000"]).await;
    let alice = pki.issue("alice", &spiffe("alice"), "1h");
    // Warm up allocator and runtime with a few streams first, so the figure is the streams'.
    let (_, _, warm) = flood(&cp, &alice, 10).await;
    let before_kib = rss_kib(&cp).await;
    let (served, _, held) = flood(&cp, &alice, 500).await;
    assert_eq!(served, 500);
    let after_kib = rss_kib(&cp).await;
    let per_watch = after_kib.saturating_sub(before_kib) as f64 / 500.0;
    eprintln!("500 watches: RSS {before_kib} -> {after_kib} KiB, {per_watch:.1} KiB per watch");
    assert!(per_watch < 96.0, "{per_watch:.1} KiB per watch stream");
    drop((warm, held));
}
