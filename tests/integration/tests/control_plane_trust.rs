//! The control plane trusts no one on the network without an identity: its discovery API is
//! TLS with its own certificate from the mesh CA, a proxy watches, acks and leaves only as the
//! SPIFFE id its certificate names, and a proxy with the wrong trust bundle stops with a clear
//! error. A proxy keeps its identity across restarts in `identityDir`, so a restart during a
//! control-plane outage serves at once, and a proxy without a certificate gets one within
//! about a second of the control plane coming back. Join tokens added to a running control
//! plane work at once, and every certificate issued or refused is in its log and metrics.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use weft_integration::mesh::{ControlPlane, IdentityFiles, Pki, client_of_server, spiffe};
use weft_integration::tls;
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, TempDir, eventually, metric_sum, run_load};

const SERVER_TOKEN: &str = "server-token-0123456789";
const CLIENT_TOKEN: &str = "client-token-0123456789";

fn tokens() -> [(&'static str, String); 2] {
    [(SERVER_TOKEN, spiffe("server")), (CLIENT_TOKEN, spiffe("client"))]
}

async fn control_plane(pki: &Pki) -> ControlPlane {
    let t = tokens();
    let pairs: Vec<(&str, &str)> = t.iter().map(|(t, id)| (*t, id.as_str())).collect();
    ControlPlane::start(pki, &pairs, "1h").await
}

/// A proxy beside `app` with its certificate from `cp` (over TLS).
async fn server(cp: &ControlPlane, pki: &Pki, app: &Backend) -> Proxy {
    Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: cp.tls_line(pki, "server", SERVER_TOKEN),
        ..Default::default()
    })
    .await
}

/// The client's config: its upstream port reaches `server` over mTLS; its certificate comes
/// from `cp` and is kept in `identity_dir`.
fn client_config(cp: &ControlPlane, pki: &Pki, server: &Proxy, identity_dir: &std::path::Path) -> ProxyConfig {
    let spec = format!(
        "{}\nidentityDir: \"{}\"\nstateDir: \"{}\"\n",
        cp.tls_line(pki, "client", CLIENT_TOKEN),
        identity_dir.display(),
        identity_dir.with_extension("state").display()
    );
    client_of_server(spec, server.inbound())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_while_the_control_plane_is_down_serves_mtls_at_once() {
    let pki = Pki::new("trust-restart");
    let mut cp = control_plane(&pki).await;
    let app = Backend::start("app").await;
    let server = server(&cp, &pki, &app).await;
    let identity = TempDir::in_memory("identity");
    let dir = identity.path().join("client");
    let config = client_config(&cp, &pki, &server, &dir);
    let first = Proxy::start(config.clone()).await;
    let before = run_load(first.upstream("server"), 2, Limit::Requests(50), |_| Req::get("/")).await;
    assert_eq!(before.failures(), 0, "{}", before.summary());
    assert!(dir.join("key.pem").exists(), "the key is kept in identityDir");

    cp.kill();
    drop(first);
    let started = Instant::now();
    let mut restarted = Proxy::spawn(&config);
    restarted.wait_ready(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e}\n{}", restarted.log_tail(30)));
    let ready_after = started.elapsed();
    let logs = restarted.logs();
    assert!(logs.contains("kept identity from identityDir installed"), "{}", restarted.log_tail(30));
    if weft_integration::TempDir::in_memory("probe").path().starts_with("/dev/shm") {
        assert!(!logs.contains("not on memory-backed storage"), "{}", restarted.log_tail(30));
    }
    let report =
        run_load(restarted.upstream("server"), 4, Limit::For(Duration::from_secs(2)), |i| Req::get(&format!("/{i}")))
            .await;
    assert_eq!(report.failures(), 0, "with the control plane down: {}", report.summary());
    assert!(report.responses > 20, "{}", report.summary());
    eprintln!("restarted proxy ready after {ready_after:?}; {}", report.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_a_certificate_gets_one_soon_after_the_control_plane_returns() {
    let pki = Pki::new("trust-return");
    let t = tokens();
    let pairs: Vec<(&str, &str)> = t.iter().map(|(t, id)| (*t, id.as_str())).collect();
    let mut cp = ControlPlane::stopped(&pki, &pairs, "1h");
    let app = Backend::start("app").await;
    let mut proxy = Proxy::spawn(&ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: cp.tls_line(&pki, "server", SERVER_TOKEN),
        ..Default::default()
    });
    // Long enough for a doubling back-off to have grown well past a few seconds.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(proxy.wait_ready(Duration::from_millis(100)).await.is_err(), "ready without a certificate");
    cp.restart().await;
    let back = Instant::now();
    proxy.wait_ready(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail(30)));
    let waited = back.elapsed();
    eprintln!("certificate {waited:?} after the control plane came back");
    assert!(waited < Duration::from_secs(2), "certificate {waited:?} after the control plane returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_the_wrong_trust_bundle_stops_with_a_clear_error() {
    let pki = Pki::new("trust-wrong");
    let other = Pki::new("trust-other");
    let cp = control_plane(&pki).await;
    let app = Backend::start("app").await;
    let mut proxy = Proxy::spawn(&ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        // The bundle of another CA: the control plane's certificate cannot verify.
        proxy_spec: cp.tls_line(&other, "server", SERVER_TOKEN),
        ..Default::default()
    });
    let status = proxy.wait_exit(Duration::from_secs(10)).await.expect("the proxy stops");
    assert_eq!(status.code(), Some(1), "{}", proxy.log_tail(20));
    let logs = proxy.logs();
    assert!(logs.contains("does not verify against trustBundleFile"), "{logs}");
    assert!(logs.contains("unknown-ca"), "{logs}");
}

/// A TLS connection to the control plane, presenting `identity` when given. The test checks
/// the control plane's SPIFFE id itself (below); the client only checks the chain.
async fn tls_to(
    pki: &Pki,
    addr: SocketAddr,
    identity: Option<&IdentityFiles>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let config = tls::client_config_trusting(&pki.ca_dir().join("ca.pem"), identity, &[b"http/1.1"]);
    let stream = tls::connect(addr, config).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Sends one request; the status and, for a watch (which never ends), the first line only.
async fn call(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let (status, text, _body) = call_keeping(send, method, path, body).await;
    (status, text)
}

/// Like [`call`], also returning the body (a watch stream stays open while it is held).
async fn call_keeping(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, hyper::body::Incoming) {
    send.ready().await.unwrap();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "weft-control")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while !text.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap() {
            Some(Ok(f)) => text.extend_from_slice(f.data_ref().map(|d| d.as_ref()).unwrap_or_default()),
            _ => break,
        }
    }
    (status, String::from_utf8_lossy(&text).to_string(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_acks_and_leaves_are_bound_to_the_callers_certificate() {
    let pki = Pki::new("trust-authz");
    let cp = control_plane(&pki).await;
    let alice = pki.issue("alice", &spiffe("alice"), "1h");
    let mallory = pki.issue("mallory", &spiffe("mallory"), "1h");
    let watch_alice = "/v1/watch?service=alice&namespace=default&address=127.0.0.1:4999";

    // No client certificate: only a certificate request would be allowed.
    let mut anon = tls_to(&pki, cp.addr(), None).await;
    let (status, text) = call(&mut anon, "GET", watch_alice, "").await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("mesh certificate"), "{text}");

    // Mallory cannot watch as alice (she would read alice's view and register as her).
    let mut as_mallory = tls_to(&pki, cp.addr(), Some(&mallory)).await;
    let (status, text) = call(&mut as_mallory, "GET", watch_alice, "").await;
    assert_eq!(status, 403, "{text}");

    // Alice's own stream: its session id is a secret that is not shown in the status.
    let mut as_alice = tls_to(&pki, cp.addr(), Some(&alice)).await;
    let (status, line, _stream) = call_keeping(&mut as_alice, "GET", watch_alice, "").await;
    assert_eq!(status, 200, "{line}");
    let snapshot: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let session = snapshot["session"].as_str().unwrap().to_string();
    assert_eq!(session.len(), 32, "128 random bits as hex: {session}");
    let status_json = weft_integration::client::must(cp.admin(), &Req::get("/v1/status")).await.text();
    assert!(!status_json.contains(&session), "the status shows the secret session id: {status_json}");
    assert!(status_json.contains(&spiffe("alice")), "the status names the stream's identity: {status_json}");

    // Mallory knows the session (say it leaked): still not hers to ack or leave.
    let ack = format!("{{\"session\": \"{session}\", \"version\": 1}}");
    let leave = format!("{{\"session\": \"{session}\"}}");
    let mut as_mallory = tls_to(&pki, cp.addr(), Some(&mallory)).await;
    assert_eq!(call(&mut as_mallory, "POST", "/v1/ack", &ack).await.0, 403);
    assert_eq!(call(&mut as_mallory, "POST", "/v1/leave", &leave).await.0, 403);
    let mut anon = tls_to(&pki, cp.addr(), None).await;
    assert_eq!(call(&mut anon, "POST", "/v1/leave", &leave).await.0, 401);
    let status_json = weft_integration::client::must(cp.admin(), &Req::get("/v1/status")).await.text();
    assert!(status_json.contains("127.0.0.1:4999"), "alice's instance stays registered: {status_json}");

    // Alice acks her own stream.
    let mut as_alice_2 = tls_to(&pki, cp.addr(), Some(&alice)).await;
    assert_eq!(call(&mut as_alice_2, "POST", "/v1/ack", &ack).await.0, 204);

    let metrics = weft_integration::client::must(cp.admin(), &Req::get("/metrics")).await.text();
    let refused = |route: &str, reason: &str| {
        metric_sum(&metrics, "weft_control_requests_refused_total", &[("route", route), ("reason", reason)])
    };
    assert_eq!(refused("watch", "no-client-certificate"), 1.0, "{metrics}");
    assert_eq!(refused("watch", "other-identity"), 1.0);
    assert_eq!(refused("ack", "other-identity"), 1.0);
    assert_eq!(refused("leave", "other-identity"), 1.0);
    assert_eq!(refused("leave", "no-client-certificate"), 1.0);
    drop(as_alice);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_added_to_a_running_control_plane_works_and_every_certificate_is_audited() {
    let pki = Pki::new("trust-tokens");
    let cp = control_plane(&pki).await;
    let app = Backend::start("app").await;
    let new_token = "added-later-token-0123456789";
    let mut proxy = Proxy::spawn(&ProxyConfig {
        service: "late".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: cp.tls_line(&pki, "late", new_token),
        ..Default::default()
    });
    eventually("the unknown token to be refused", Duration::from_secs(10), || async {
        proxy.logs().contains("join token is not known").then_some(())
    })
    .await;

    // A broken token file is rejected and the last good tokens stay.
    cp.write_tokens("this line is not a token line\n");
    eventually("the broken token file to be rejected", Duration::from_secs(5), || async {
        cp.logs().contains("join token file change rejected").then_some(())
    })
    .await;
    let t = tokens();
    let mut text: String = t.iter().map(|(t, id)| format!("{t} {id}\n")).collect();
    text += &format!("{new_token} {}\n", spiffe("late"));
    cp.write_tokens(&text);
    proxy.wait_ready(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_tail(30)));

    let logs = cp.logs();
    let issued = logs.lines().find(|l| l.contains("certificate issued")).unwrap_or_else(|| panic!("{logs}"));
    assert!(
        issued.contains(&spiffe("late")) && issued.contains("serial=") && issued.contains("not_after="),
        "{issued}"
    );
    assert!(logs.lines().any(|l| l.contains("certificate refused") && l.contains("unknown-token")), "{logs}");
    assert!(!logs.contains(new_token), "the log never holds a token");
    let metrics = weft_integration::client::must(cp.admin(), &Req::get("/metrics")).await.text();
    let certs = |result: &str| metric_sum(&metrics, "weft_control_certificates_total", &[("result", result)]);
    assert_eq!(certs("issued"), 1.0, "{metrics}");
    assert!(certs("unknown-token") >= 1.0, "{metrics}");
    let reloads = |result: &str| metric_sum(&metrics, "weft_control_join_token_reloads_total", &[("result", result)]);
    assert!(reloads("rejected") >= 1.0 && reloads("applied") >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_stat_shows_each_services_rate_success_and_latency_from_the_proxies_reports() {
    let pki = Pki::new("trust-stat");
    let cp = control_plane(&pki).await;
    let app = Backend::start("app").await;
    let server = server(&cp, &pki, &app).await;
    let identity = TempDir::in_memory("identity");
    let client = Proxy::start(client_config(&cp, &pki, &server, &identity.path().join("client"))).await;
    // One call in ten fails; every call takes at least 5 ms at the app.
    let report = run_load(client.upstream("server"), 4, Limit::For(Duration::from_secs(5)), |i| {
        Req::get(if i % 10 == 0 { "/status/500/delay/5" } else { "/delay/5" })
    })
    .await;
    assert!(report.responses > 100, "{}", report.summary());
    let url = format!("http://{}", cp.admin());
    let rows = eventually("both sides of the traffic in weft stat", Duration::from_secs(10), || async {
        let out = std::process::Command::new(weft_integration::bin("weft"))
            .args(["stat", "--control-plane", &url, "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let side = |d: &str| rows.iter().any(|r| r["direction"] == d && r["service"] == "server");
        (side("outbound") && side("inbound")).then_some(rows)
    })
    .await;
    for row in rows.iter().filter(|r| r["service"] == "server") {
        let success = row["successRate"].as_f64().unwrap();
        assert!((0.85..=0.95).contains(&success), "one in ten failed: {row}");
        assert!(row["requestsPerSecond"].as_f64().unwrap() > 1.0, "{row}");
        let p50 = row["p50"].as_f64().unwrap();
        assert!(p50 >= 0.004, "every call takes 5 ms at the app: {row}");
        assert!(row["p99"].as_f64().unwrap() >= p50, "{row}");
    }
    let table = std::process::Command::new(weft_integration::bin("weft"))
        .args(["status", "--control-plane", &url])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("strict") && table.contains(env!("CARGO_PKG_VERSION")), "{table}");
    assert!(table.contains("CA certificate expires in"), "{table}");
    assert!(table.contains("test-proxy"), "proxies are named by their Proxy document: {table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_halfway_through_a_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new("trust-slow");
    let cp = control_plane(&pki).await;
    // Plaintext from loopback is served; this client sends half a head and then nothing.
    let mut slow = tokio::net::TcpStream::connect(cp.addr()).await.unwrap();
    slow.write_all(b"GET /v1/watch?service=x HTTP/1.1\r\nhost: cp\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the half-sent head was still held open after 20 s");
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(9), "closed after {after:?}, before the 10 s head deadline");
}
