//! Routing: which backend gets a request, by host form, path, method, header, weight and port.

use std::time::Duration;

use weft_integration::client::{must, send_h2};
use weft_integration::net::{raw_exchange, status_of};
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, document, run_load, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_form_reaches_the_named_service() {
    let api = Backend::start("api").await;
    let web = Backend::start("web").await;
    let proxy = Proxy::start(ProxyConfig {
        policy: service("api", "http", &[api.addr()]) + &service("web", "http", &[web.addr()]),
        ..Default::default()
    })
    .await;

    for host in ["api", "api:80", "api.default", "api.default:80", "api.default.svc.cluster.local"] {
        let resp = must(proxy.outbound(), &Req::get("/hello?x=1").host(host)).await;
        assert_eq!(resp.status, 200, "Host: {host}: {resp:?}");
        assert_eq!(resp.backend(), Some("api"), "Host: {host}");
        assert_eq!(resp.header("x-echo-path"), Some("/hello?x=1"), "Host: {host}");
    }
    let resp = must(proxy.outbound(), &Req::get("/").host("web.default.svc.cluster.local:80")).await;
    assert_eq!(resp.backend(), Some("web"));

    // Absolute-form: the request target names the service, whatever the Host header says.
    let resp = must(proxy.outbound(), &Req::get("http://web.default/abs").host("api")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.backend(), Some("web"));
    assert_eq!(resp.header("x-echo-path"), Some("/abs"));
    assert_eq!(api.hits(), 5);
    assert_eq!(web.hits(), 2);
}

/// The host a request is routed by is the host its upstream is told: the target's authority
/// wins over a conflicting Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1), so a call that routing,
/// authorization and metrics count as `echo`'s never reaches `echo`'s app saying `Host: evil`.
/// Checked on each server a request can meet: the proxy's own HTTP/1.1 server, hyper's (a
/// chunked body is handed to it), HTTP/2, and an HTTP/2 upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_told_the_host_that_routing_used() {
    let echo = Backend::start("echo").await;
    let evil = Backend::start("evil").await;
    let echo2 = Backend::start("echo2").await;
    let proxy = Proxy::start(ProxyConfig {
        policy: service("echo", "http", &[echo.addr()])
            + &service("evil", "http", &[evil.addr()])
            + &service("echo2", "http2", &[echo2.addr()]),
        ..Default::default()
    })
    .await;

    let resp = must(proxy.outbound(), &Req::get("http://echo/x").host("evil")).await;
    assert_eq!((resp.status, resp.backend()), (200, Some("echo")), "{resp:?}");
    assert_eq!(resp.header("x-echo-host"), Some("echo"), "HTTP/1.1 absolute-form with a conflicting Host");

    let chunked =
        b"POST http://echo/x HTTP/1.1\r\nHost: evil\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let raw = raw_exchange(proxy.outbound(), chunked, Duration::from_secs(10)).await;
    assert_eq!(status_of(&raw), Some(200), "{:?}", String::from_utf8_lossy(&raw));
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(
        raw.contains("\r\nx-backend: echo\r\n") && raw.contains("\r\nx-echo-host: echo\r\n"),
        "hyper's server: {raw}"
    );

    let h2 = Req::get("/x").host("echo").header("host", "evil");
    let resp = send_h2(proxy.outbound(), &h2).await.expect("h2 request");
    assert_eq!((resp.status, resp.backend()), (200, Some("echo")), "{resp:?}");
    assert_eq!(resp.header("x-echo-host"), Some("echo"), "HTTP/2 :authority with a conflicting host");
    assert_eq!(resp.header("x-echo-version"), Some("HTTP/1.1"));

    let resp = send_h2(proxy.outbound(), &Req::get("/x").host("echo2").header("host", "evil")).await.expect("h2");
    assert_eq!((resp.status, resp.backend()), (200, Some("echo2")), "{resp:?}");
    assert_eq!(resp.header("x-echo-host"), Some("echo2"), "an HTTP/2 upstream gets the :authority, no host");

    // Two Host fields and no authority to decide between them: refused (RFC 9112 §3.2).
    let twice = b"GET /x HTTP/1.1\r\nHost: echo\r\nHost: evil\r\n\r\n";
    let raw = raw_exchange(proxy.outbound(), twice, Duration::from_secs(10)).await;
    assert_eq!(status_of(&raw), Some(400), "{:?}", String::from_utf8_lossy(&raw));
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(raw.contains("weft-proxy-error: bad-host"), "{raw}");
    // No Host at all: HTTP/1.1 must send one (400); HTTP/1.0 may not, and names no service.
    let raw = raw_exchange(proxy.outbound(), b"GET /x HTTP/1.1\r\n\r\n", Duration::from_secs(10)).await;
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(raw.starts_with("http/1.1 400 ") && raw.contains("weft-proxy-error: bad-host"), "{raw}");
    let raw = raw_exchange(proxy.outbound(), b"GET /x HTTP/1.0\r\n\r\n", Duration::from_secs(10)).await;
    let raw = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(raw.contains(" 404 ") && raw.contains("weft-proxy-error: unknown-service"), "{raw}");

    assert_eq!(evil.hits(), 0, "the service named only by Host never saw a request");
    assert_eq!((echo.hits(), echo2.hits()), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_path_and_path_prefix_pick_the_rule() {
    let api = Backend::start("api").await;
    let exact = Backend::start("exact").await;
    let v2 = Backend::start("v2").await;
    let route = document(
        "Route",
        "api",
        r#"
        service: api
        rules:
          - match: {path: /exact}
            backends: [{service: exact, weight: 1}]
          - match: {pathPrefix: /v2/}
            backends: [{service: v2, weight: 1}]
          - match: {pathPrefix: /}
            backends: [{service: api, weight: 1}]
        "#,
    );
    let policy = service("api", "http", &[api.addr()])
        + &service("exact", "http", &[exact.addr()])
        + &service("v2", "http", &[v2.addr()])
        + &route;
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let cases = [
        ("/exact", "exact"),
        ("/exact?q=1", "exact"),
        ("/exact/more", "api"),
        ("/exactly", "api"),
        ("/v2/users", "v2"),
        ("/v2/", "v2"),
        ("/v2x", "api"),
        ("/other", "api"),
        ("/", "api"),
    ];
    for (path, expected) in cases {
        let resp = must(proxy.outbound(), &Req::get(path).host("api")).await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.backend(), Some(expected), "{path}");
        assert_eq!(resp.header("x-echo-path"), Some(path), "the path is forwarded unchanged");
    }
}

/// Path rules match the normalised path, and that is the path the upstream receives: a
/// request routed as `/v1/…` never reaches an upstream as `/admin/…`. Encoded slashes and a
/// `..` above the root are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_rules_match_the_normalised_path_that_the_upstream_receives() {
    let api = Backend::start("api").await;
    let admin = Backend::start("admin").await;
    let route = document(
        "Route",
        "api",
        r#"
        service: api
        rules:
          - match: {pathPrefix: /admin/}
            backends: [{service: admin, weight: 1}]
          - match: {path: /health}
            backends: [{service: admin, weight: 1}]
          - match: {pathPrefix: /}
            backends: [{service: api, weight: 1}]
        "#,
    );
    let policy = service("api", "http", &[api.addr()]) + &service("admin", "http", &[admin.addr()]) + &route;
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let cases = [
        ("/v1/../admin/x", "admin", "/admin/x"),
        ("//admin/x", "admin", "/admin/x"),
        ("/%61dmin/x?a=/../b", "admin", "/admin/x?a=/../b"),
        ("/admin/./x/", "admin", "/admin/x/"),
        ("/v1/%2e%2e/health", "admin", "/health"),
        ("/v1//x", "api", "/v1/x"),
        ("/admin/..", "api", "/"),
    ];
    for (path, backend, received) in cases {
        let resp = must(proxy.outbound(), &Req::get(path).host("api")).await;
        assert_eq!((resp.status, resp.backend()), (200, Some(backend)), "{path}: {resp:?}");
        assert_eq!(resp.header("x-echo-path"), Some(received), "{path}");
        let resp = send_h2(proxy.outbound(), &Req::get(path).host("api")).await.expect("h2 request");
        assert_eq!((resp.backend(), resp.header("x-echo-path")), (Some(backend), Some(received)), "HTTP/2 {path}");
    }
    for path in ["/v1%2F../admin/x", "/admin%5cx", "/../admin/x", "/v1/../../admin/x"] {
        let resp = must(proxy.outbound(), &Req::get(path).host("api")).await;
        assert_eq!((resp.status, resp.proxy_error()), (400, Some("bad-request")), "{path}: {resp:?}");
    }
    assert_eq!((api.hits(), admin.hits()), (4, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_and_header_matches_pick_the_rule() {
    let api = Backend::start("api").await;
    let writer = Backend::start("writer").await;
    let canary = Backend::start("canary").await;
    let route = document(
        "Route",
        "api",
        r#"
        service: api
        rules:
          - match: {pathPrefix: /, headers: {x-canary: "true"}}
            backends: [{service: canary, weight: 1}]
          - match: {pathPrefix: /, methods: [POST, PUT]}
            backends: [{service: writer, weight: 1}]
          - match: {pathPrefix: /}
            backends: [{service: api, weight: 1}]
        "#,
    );
    let policy = service("api", "http", &[api.addr()])
        + &service("writer", "http", &[writer.addr()])
        + &service("canary", "http", &[canary.addr()])
        + &route;
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let cases = [
        (Req::get("/"), "api"),
        (Req::post("/", "x"), "writer"),
        (Req::new("PUT", "/"), "writer"),
        (Req::new("DELETE", "/"), "api"),
        (Req::get("/").header("x-canary", "true"), "canary"),
        (Req::get("/").header("x-canary", "false"), "api"),
        (Req::post("/", "x").header("x-canary", "true"), "canary"),
    ];
    for (req, expected) in cases {
        let req = req.host("api");
        let resp = must(proxy.outbound(), &req).await;
        assert_eq!(resp.status, 200, "{req:?}: {resp:?}");
        assert_eq!(resp.backend(), Some(expected), "{req:?}");
        assert_eq!(resp.header("x-echo-method"), Some(req.method.as_str()));
    }
    // The matched header is passed on to the backend, not consumed by the proxy.
    let resp = must(proxy.outbound(), &Req::get("/").host("api").header("x-canary", "true")).await;
    assert_eq!(resp.header("x-seen-x-canary"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_backends_split_traffic_within_tolerance() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let route = document(
        "Route",
        "api",
        r#"
        service: api
        rules:
          - match: {pathPrefix: /}
            backends: [{service: stable, weight: 80}, {service: canary, weight: 20}]
        "#,
    );
    let policy = service("api", "http", &[stable.addr()])
        + &service("stable", "http", &[stable.addr()])
        + &service("canary", "http", &[canary.addr()])
        + &route;
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let report = run_load(proxy.outbound(), 4, Limit::Requests(1000), |_| Req::get("/").host("api")).await;
    assert_eq!(report.status(200), 1000, "{}", report.summary());
    let canary_share = report.backends.get("canary").copied().unwrap_or(0) as f64 / 1000.0;
    // 20 % expected; ±7 points is more than 5 standard deviations of a fair 1000-draw split.
    assert!(
        (0.13..=0.27).contains(&canary_share),
        "canary got {:.1} % of requests, expected 20 % ± 7: {}",
        canary_share * 100.0,
        report.summary()
    );
    assert_eq!(stable.hits() + canary.hits(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_port_sends_everything_to_its_service() {
    let api = Backend::start("api").await;
    let other = Backend::start("other").await;
    let proxy = Proxy::start(ProxyConfig {
        upstreams: vec!["api".to_string()],
        policy: service("api", "http", &[api.addr()]) + &service("other", "http", &[other.addr()]),
        ..Default::default()
    })
    .await;

    for host in ["api", "other", "localhost", "whatever.example"] {
        let resp = must(proxy.upstream("api"), &Req::get("/up").host(host)).await;
        assert_eq!(resp.status, 200, "Host: {host}: {resp:?}");
        assert_eq!(resp.backend(), Some("api"), "Host: {host}");
    }
    let resp = must(proxy.upstream("api"), &Req::post("/echo", "payload")).await;
    assert_eq!(resp.text(), "payload");
    // The outbound listener still routes by Host.
    let resp = must(proxy.outbound(), &Req::get("/").host("other")).await;
    assert_eq!(resp.backend(), Some("other"));
    assert_eq!(other.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_forwards_to_the_local_app() {
    let app = Backend::start("app").await;
    let proxy = Proxy::start(ProxyConfig { inbound_app: Some(app.addr()), ..Default::default() }).await;

    for i in 0..3 {
        let path = format!("/inbound/{i}");
        let resp = must(proxy.inbound(), &Req::get(&path).host("client")).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.backend(), Some("app"));
        assert_eq!(resp.header("x-echo-path"), Some(path.as_str()));
    }
    let body = "b".repeat(100_000);
    let resp = must(proxy.inbound(), &Req::post("/echo", body.clone()).host("client")).await;
    assert_eq!(resp.text(), body);
    assert_eq!(app.hits(), 4);
}
