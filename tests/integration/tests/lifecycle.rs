//! Lifecycle: SIGTERM drains (readiness drops, in-flight and late calls finish, then exit),
//! the grace period bounds the drain, and `POST /shutdown` stops the proxy.

use std::time::{Duration, Instant};

use weft_integration::client::{H2Conn, must, send};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, eventually, service};

async fn proxy_with_grace(api: &Backend, grace: &str) -> Proxy {
    Proxy::start(ProxyConfig {
        proxy_spec: format!("shutdownGrace: {grace}"),
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_serves_late_calls() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "5s").await;
    let outbound = proxy.outbound();
    let slow = tokio::spawn(async move { send(outbound, &Req::get("/delay/3000").host("api")).await });
    // An HTTP/2 client's stream in flight too: its connection is told GOAWAY, and the stream
    // still finishes.
    let h2 = H2Conn::connect(outbound).await.expect("h2 connect");
    let slow_h2 = tokio::spawn(async move { h2.send(&Req::get("/delay/3000/h2").host("api")).await });
    eventually("the slow requests to reach the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 2).then_some(())
    })
    .await;

    let term = Instant::now();
    proxy.sigterm();
    eventually("/ready to turn 503", Duration::from_secs(2), || async {
        (proxy.admin_get("/ready").await.status == 503).then_some(())
    })
    .await;
    assert_eq!(proxy.admin_get("/live").await.status, 200, "a draining proxy is still alive");

    // The app's own late call, on a new connection, while the slow one is still in flight.
    let late = must(proxy.outbound(), &Req::get("/late").host("api")).await;
    assert_eq!(late.status, 200, "late outbound call during the drain: {late:?}");
    assert_eq!(late.backend(), Some("api"));
    assert_eq!(api.in_flight(), 2, "the slow requests were still in flight");

    let slow = slow.await.unwrap().expect("the in-flight request completes");
    assert_eq!(slow.status, 200, "{slow:?}");
    let slow_h2 = slow_h2.await.unwrap().expect("the in-flight HTTP/2 stream completes");
    assert_eq!(slow_h2.status, 200, "{slow_h2:?}");
    assert_eq!(slow_h2.header("x-echo-path"), Some("/delay/3000/h2"));
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("still running {:?} after SIGTERM (grace 5 s)", term.elapsed()));
    assert!(status.success(), "exit after a clean drain: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_at_the_grace_period_when_a_request_hangs() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "1s").await;
    let outbound = proxy.outbound();
    let _hung = tokio::spawn(async move { send(outbound, &Req::get("/delay/30000").host("api")).await });
    eventually("the hung request to reach the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 1).then_some(())
    })
    .await;

    let term = Instant::now();
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(6)).await;
    let took = term.elapsed();
    assert!(status.is_some(), "still running {took:?} after SIGTERM with a 1 s grace period");
    assert!(took >= Duration::from_millis(900), "exited after {took:?}, before the 1 s grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_when_idle() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "30s").await;
    let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
    assert_eq!(resp.status, 200);

    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("an idle proxy exits well before its 30 s grace period");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_stops_the_proxy() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "5s").await;

    let resp = proxy.admin_send(&Req::post("/shutdown", "")).await;
    assert!((200..300).contains(&resp.status), "POST /shutdown: {resp:?}");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("the proxy exits after POST /shutdown");
    assert!(status.success(), "{status}");
}

/// The postStart hook of a non-native sidecar (`weft inject`): `await` with no command only
/// waits for `/ready`, and leaves the proxy running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_without_a_command_waits_for_ready_and_leaves_the_proxy_running() {
    let api = Backend::start("api").await;
    let proxy = proxy_with_grace(&api, "5s").await;
    let admin = proxy.admin().to_string();
    let run = |admin: String, timeout: &'static str| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(weft_integration::binaries::bin("weft-proxy"))
                .args(["await", "--admin", &admin, "--timeout", timeout])
                .output()
                .unwrap()
        })
    };
    let ready = run(admin, "5s").await.unwrap();
    assert_eq!(ready.status.code(), Some(0), "{}", String::from_utf8_lossy(&ready.stderr));
    assert_eq!(proxy.admin_get("/ready").await.status, 200, "the proxy is not shut down");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let started = Instant::now();
    let late = run(nobody, "300ms").await.unwrap();
    assert_eq!(late.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&late.stderr).contains("was not ready within"));
    assert!(started.elapsed() < Duration::from_secs(5));
}
