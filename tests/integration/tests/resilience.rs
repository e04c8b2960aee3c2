//! Resilience: retries, retry budget, outlier ejection, limits, timeouts and dead endpoints.

use std::time::{Duration, Instant};

use weft_integration::client::{H2Conn, must, send};
use weft_integration::metrics::metric_sum;
use weft_integration::net::dead_addr;
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, catch_all_route, eventually, run_load, service};

/// The one Route of these tests: every path of `api` to it, with `settings` on its rule.
fn api_route(settings: &[&str]) -> String {
    catch_all_route("api", settings)
}

fn retry_route(retry: &str) -> String {
    api_route(&[&format!("retry: {retry}")])
}

/// Sends a call the backend holds for 5 s and checks that the proxy answers it with its own
/// 504 between the route's `deadline` and a second after it.
async fn assert_cut_at(outbound: std::net::SocketAddr, deadline: Duration) {
    let start = Instant::now();
    let resp = must(outbound, &Req::get("/delay/5000").host("api")).await;
    let took = start.elapsed();
    assert_eq!(resp.status, 504, "{resp:?}");
    assert_eq!(resp.proxy_error(), Some("timeout"));
    assert!(took >= deadline - Duration::from_millis(10), "504 before the {deadline:?} deadline: {took:?}");
    assert!(took < deadline + Duration::from_secs(1), "504 took {took:?}, deadline {deadline:?} + 1 s slack");
}

fn traffic_policy(spec: &str) -> String {
    weft_integration::traffic_policy("api", spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_during_load_fails_no_idempotent_request() {
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let policy = service("api", "http", &[a.addr(), b.addr(), c.addr()])
        + &retry_route("{attempts: 3, on: [connect-failure, reset, 5xx], backoffBase: 5ms, backoffMax: 50ms}")
        + &traffic_policy(
            "connectTimeout: 1s\noutlierDetection: {consecutiveFailures: 2, baseEjection: 1s, maxEjection: 5s, maxEjectionPercent: 50}",
        );
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let load = tokio::spawn(run_load(proxy.outbound(), 4, Limit::For(Duration::from_secs(4)), |i| {
        Req::get(&format!("/work/{i}")).host("api")
    }));
    eventually("backend b to serve part of the load", Duration::from_secs(10), || async {
        (b.hits() >= 30).then_some(())
    })
    .await;
    b.stop().await;
    let report = load.await.unwrap();

    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(report.total() > 100, "the load ran: {}", report.summary());
    eprintln!("backend killed under load: {}", report.summary());
    let after_kill = report.backends.get("a").copied().unwrap_or(0) + report.backends.get("c").copied().unwrap_or(0);
    assert!(after_kill > 0, "{}", report.summary());
    let metrics = proxy.metrics().await;
    let ejections = metric_sum(&metrics, "weft_endpoint_ejections_total", &[("service", "api")]);
    assert!(ejections >= 1.0, "the dead endpoint was never ejected:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_endpoint_is_probed_back_after_it_recovers() {
    let a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let policy = service("api", "http", &[a.addr(), b.addr()])
        + &retry_route("{attempts: 2, on: [connect-failure], backoffBase: 5ms, backoffMax: 20ms}")
        // Round-robin keeps sending b its share until it is ejected. (Under the default peak
        // EWMA, b's first failure doubles its cost and it loses every comparison with a, so its
        // second consecutive failure only comes once its estimate has faded, seconds later.)
        + &traffic_policy(
            "loadBalancer: round-robin\n\
             outlierDetection: {consecutiveFailures: 2, baseEjection: 500ms, maxEjection: 1s, maxEjectionPercent: 50}",
        );
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    b.stop().await;
    let mut sent = 0;
    eventually("the stopped endpoint to be ejected", Duration::from_secs(15), || {
        sent += 1;
        let proxy = &proxy;
        async move {
            let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
            assert_eq!(resp.status, 200, "request {sent} failed while b was down: {resp:?}");
            let metrics = proxy.metrics().await;
            (metric_sum(&metrics, "weft_endpoint_ejections_total", &[("service", "api")]) >= 1.0).then_some(())
        }
    })
    .await;

    b.restart().await;
    let before = b.hits();
    eventually("the recovered endpoint to get traffic again", Duration::from_secs(15), || async {
        let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        (b.hits() > before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_not_retried_on_5xx_but_idempotent_methods_are() {
    let api = Backend::start("api").await;
    let policy = service("api", "http", &[api.addr()])
        + &retry_route("{attempts: 2, on: [5xx, reset], backoffBase: 1ms, backoffMax: 5ms}")
        + &traffic_policy("outlierDetection: {consecutiveFailures: 1000, baseEjection: 1s, maxEjectionPercent: 50}");
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let resp = must(proxy.outbound(), &Req::post("/status/503", "order #1").host("api")).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.backend(), Some("api"), "the backend's own 503 is passed through");
    assert_eq!(api.hits(), 1, "a POST must not be retried after the backend saw it");

    let resp = must(proxy.outbound(), &Req::get("/status/503").host("api")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(api.hits(), 1 + 3, "a GET is tried once and retried twice");

    let resp = must(proxy.outbound(), &Req::new("PUT", "/status/503").body("v").host("api")).await;
    assert_eq!(resp.status, 503);
    assert_eq!(api.hits(), 4 + 3, "PUT is idempotent and retried like GET");

    // An HTTP/2 GET ends its stream with its HEADERS and, from most clients, carries no
    // content-length: its empty body must still count as replayable.
    let h2 = H2Conn::connect(proxy.outbound()).await.expect("h2 connect");
    let resp = h2.send(&Req::get("/status/503").host("api")).await.expect("h2 GET");
    assert_eq!(resp.status, 503);
    assert_eq!(api.hits(), 7 + 3, "an HTTP/2 GET is retried like an HTTP/1.1 one");

    let metrics = proxy.metrics().await;
    assert_eq!(metric_sum(&metrics, "weft_retries_total", &[("service", "api")]), 6.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_on_another_endpoint_when_connect_fails() {
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let policy = service("api", "http", &[dead.addr(), live.addr()])
        + &retry_route("{attempts: 2, on: [connect-failure], backoffBase: 1ms, backoffMax: 5ms}");
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    for i in 0..20 {
        let body = format!("payment {i}");
        let resp = must(proxy.outbound(), &Req::post("/pay", body.clone()).host("api")).await;
        assert_eq!(resp.status, 200, "POST {i}: {resp:?}");
        assert_eq!(resp.header("x-echo-body-len"), Some(body.len().to_string().as_str()));
    }
    assert_eq!(live.hits(), 20, "each POST reached the live endpoint exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_after_backend_restart_uses_a_fresh_connection() {
    post_after_restart("http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_after_h2_backend_restart_uses_a_fresh_connection() {
    post_after_restart("http2").await;
}

/// A pooled connection (HTTP/1.1 keep-alive, or the shared HTTP/2 one) that died with its
/// backend is replaced without failing a request or sending a POST twice.
async fn post_after_restart(protocol: &str) {
    let mut api = Backend::start("api").await;
    let proxy =
        Proxy::start(ProxyConfig { policy: service("api", protocol, &[api.addr()]), ..Default::default() }).await;

    let resp = must(proxy.outbound(), &Req::post("/first", "a").host("api")).await;
    assert_eq!(resp.status, 200);
    // The proxy's pooled keep-alive connection dies with the backend.
    api.stop().await;
    api.restart().await;
    for i in 0..3 {
        let resp = must(proxy.outbound(), &Req::post("/again", "b").host("api")).await;
        assert_eq!(resp.status, 200, "POST {i} after restart: {resp:?}");
    }
    assert_eq!(api.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_when_every_backend_fails() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    a.always_status(Some(503));
    b.always_status(Some(503));
    let (ratio, min_per_second) = (0.1, 2.0);
    let policy = service("api", "http", &[a.addr(), b.addr()])
        + &retry_route("{attempts: 3, on: [5xx], backoffBase: 1ms, backoffMax: 2ms}")
        + &traffic_policy(&format!(
            "outlierDetection: {{consecutiveFailures: 10000, baseEjection: 1s, maxEjectionPercent: 50}}\n\
             retryBudget: {{ratio: {ratio}, minPerSecond: {min_per_second}}}"
        ));
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let requests = 400;
    let report = run_load(proxy.outbound(), 8, Limit::Requests(requests), |_| Req::get("/").host("api")).await;
    assert_eq!(report.status(503), requests, "{}", report.summary());

    let retries = (a.hits() + b.hits()) as f64 - requests as f64;
    // Budget: ratio of requests plus minPerSecond over the budget's 10 s window (or the run,
    // if longer), plus a little for requests counted at window edges. Unbudgeted: 3 × 400.
    let window = report.elapsed.as_secs_f64().max(10.0) + 1.0;
    let allowed = ratio * requests as f64 + min_per_second * window + 2.0;
    assert!(retries <= allowed, "{retries} retries for {requests} requests, budget allows {allowed}");
    assert!(retries >= 1.0, "the budget's minimum should allow some retries");

    let metrics = proxy.metrics().await;
    assert_eq!(metric_sum(&metrics, "weft_retries_total", &[("service", "api")]), retries, "{metrics}");
    assert!(metric_sum(&metrics, "weft_retry_budget_exhausted_total", &[("service", "api")]) >= 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_answers_503_at_once() {
    let api = Backend::start("api").await;
    let policy = service("api", "http", &[api.addr()])
        + &traffic_policy("limits: {maxConcurrentRequests: 2, maxPendingRequests: 2}");
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let outbound = proxy.outbound();
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { send(outbound, &Req::get("/delay/3000").host("api")).await }))
        .collect();
    eventually("two requests in flight at the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 2).then_some(())
    })
    .await;

    let start = Instant::now();
    let resp = must(outbound, &Req::get("/").host("api")).await;
    let took = start.elapsed();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.proxy_error(), Some("concurrency-limit"));
    assert!(took < Duration::from_secs(1), "the 503 took {took:?}; it must not wait for a slot");
    assert_eq!(api.hits(), 2, "the rejected request never reached the backend");

    for task in slow {
        let resp = task.await.unwrap().expect("slow request");
        assert_eq!(resp.status, 200);
    }
    let resp = must(outbound, &Req::get("/").host("api")).await;
    assert_eq!(resp.status, 200, "slots are released: {resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_returns_504_within_the_deadline() {
    let api = Backend::start("api").await;
    let route = api_route(&["timeout: 300ms"]);
    let proxy =
        Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]) + &route, ..Default::default() })
            .await;

    let resp = must(proxy.outbound(), &Req::get("/delay/20").host("api")).await;
    assert_eq!(resp.status, 200, "a fast request is not cut: {resp:?}");

    assert_cut_at(proxy.outbound(), Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeouts_retry_until_the_route_deadline_ends_them() {
    let api = Backend::start("api").await;
    let route = api_route(&[
        "timeout: 700ms",
        "retry: {attempts: 10, on: [timeout], perTryTimeout: 200ms, backoffBase: 1ms, backoffMax: 2ms}",
    ]);
    let policy = service("api", "http", &[api.addr()])
        + &route
        + &traffic_policy("outlierDetection: {consecutiveFailures: 1000, baseEjection: 30s}");
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    // Tries start at about 0, 200, 400 and 600 ms; the route's deadline cuts the last one.
    assert_cut_at(proxy.outbound(), Duration::from_millis(700)).await;
    let hits = api.hits();
    assert!((3..=5).contains(&hits), "each per-try timeout led to a retry, within the deadline: {hits} tries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_gives_502_connect_failed_without_hanging() {
    let dead = dead_addr();
    let policy = service("api", "http", &[dead.addr()])
        + &traffic_policy(
            "connectTimeout: 1s\noutlierDetection: {consecutiveFailures: 10000, baseEjection: 30s, maxEjectionPercent: 100}",
        );
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    for method in ["GET", "POST", "GET"] {
        let start = Instant::now();
        let resp = must(proxy.outbound(), &Req::new(method, "/").body("x").host("api")).await;
        assert!(start.elapsed() < Duration::from_secs(5), "a dead backend must not hang the client");
        assert_eq!(resp.status, 502, "{method}: {resp:?}");
        assert_eq!(resp.proxy_error(), Some("connect-failed"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_ejected_gives_503_circuit_open() {
    let dead = dead_addr();
    let policy = service("api", "http", &[dead.addr()])
        + &traffic_policy(
            "connectTimeout: 1s\noutlierDetection: {consecutiveFailures: 2, baseEjection: 30s, maxEjectionPercent: 100}",
        );
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let mut seen = Vec::new();
    for _ in 0..20 {
        let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
        let reason = resp.proxy_error().unwrap_or("-").to_string();
        seen.push((resp.status, reason.clone()));
        match (resp.status, reason.as_str()) {
            (502, "connect-failed") => continue,
            (503, "circuit-open") => return,
            other => panic!("unexpected answer {other:?} after {seen:?}"),
        }
    }
    panic!("the only endpoint was never ejected after 20 failed requests: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_endpoints_gives_503_no_endpoints() {
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[]), ..Default::default() }).await;
    let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(resp.proxy_error(), Some("no-endpoints"));
}
