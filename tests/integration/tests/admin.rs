//! The admin listener: readiness, metrics that match the traffic, config, endpoints, explain,
//! log level and shutdown.

use std::time::Duration;

use weft_integration::client::must;
use weft_integration::metrics::{has_metric, metric_sum};
use weft_integration::net::dead_addr;
use weft_integration::{Backend, Proxy, ProxyConfig, Req, document, eventually, service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_traffic_sent() {
    let api = Backend::start("api").await;
    let app = Backend::start("app").await;
    let proxy = Proxy::start(ProxyConfig {
        inbound_app: Some(app.addr()),
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await;

    for i in 0..37 {
        let resp = must(proxy.outbound(), &Req::get(&format!("/ok/{i}")).host("api")).await;
        assert_eq!(resp.status, 200);
    }
    for _ in 0..5 {
        let resp = must(proxy.outbound(), &Req::get("/status/500").host("api")).await;
        assert_eq!(resp.status, 500);
    }
    for _ in 0..3 {
        let resp = must(proxy.inbound(), &Req::get("/in").host("client")).await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!((api.hits(), app.hits()), (42, 3));

    let metrics = eventually("request counters to match the traffic", Duration::from_secs(10), || async {
        let metrics = proxy.metrics().await;
        let outbound = |code| {
            metric_sum(
                &metrics,
                "weft_requests_total",
                &[("direction", "outbound"), ("service", "api"), ("code", code)],
            )
        };
        let inbound = metric_sum(&metrics, "weft_requests_total", &[("direction", "inbound")]);
        (outbound("200") == 37.0 && outbound("500") == 5.0 && inbound == 3.0).then_some(metrics)
    })
    .await;
    let out = [("direction", "outbound"), ("service", "api")];
    let classified = |class| {
        let mut filters = out.to_vec();
        filters.push(("classification", class));
        metric_sum(&metrics, "weft_requests_total", &filters)
    };
    assert_eq!(classified("success"), 37.0, "{metrics}");
    assert_eq!(classified("failure"), 5.0, "a 500 is a failure:\n{metrics}");
    assert_eq!(metric_sum(&metrics, "weft_requests_total", &[]), 45.0, "{metrics}");
    // Without a split, a route's one backend is its own service.
    assert_eq!(metric_sum(&metrics, "weft_requests_total", &[("service", "api"), ("backend", "api")]), 42.0);
    assert_eq!(metric_sum(&metrics, "weft_request_duration_seconds_count", &[]), 45.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "weft_endpoints", &[("service", "api")]), 1.0, "one endpoint:\n{metrics}");
    assert_eq!(metric_sum(&metrics, "weft_retries_total", &[("service", "api")]), 0.0, "{metrics}");
    let version = proxy.config_version().await;
    assert_eq!(metric_sum(&metrics, "weft_config_version", &[]), version as f64, "{metrics}");
    for name in ["weft_build_info", "weft_open_connections"] {
        assert!(has_metric(&metrics, name), "{name} missing:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_is_counted_under_its_own_backend() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let route = document(
        "Route",
        "payments-api",
        r#"
        service: payments
        rules:
          - backends: [{service: payments, weight: 70}, {service: payments-v2, weight: 30}]
        "#,
    );
    let policy =
        service("payments", "http", &[stable.addr()]) + &service("payments-v2", "http", &[canary.addr()]) + &route;
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    for i in 0..100 {
        let resp = must(proxy.outbound(), &Req::get(&format!("/pay/{i}")).host("payments")).await;
        assert_eq!(resp.status, 200);
    }
    let (to_stable, to_canary) = (stable.hits() as f64, canary.hits() as f64);
    assert!(to_canary > 0.0 && to_stable > 0.0, "both backends got traffic: {to_stable} / {to_canary}");

    let metrics = eventually("request counters per backend", Duration::from_secs(10), || async {
        let metrics = proxy.metrics().await;
        (metric_sum(&metrics, "weft_requests_total", &[("service", "payments")]) == 100.0).then_some(metrics)
    })
    .await;
    let by_backend = |name, backend| {
        metric_sum(&metrics, name, &[("service", "payments"), ("route", "payments-api"), ("backend", backend)])
    };
    assert_eq!(by_backend("weft_requests_total", "payments-v2"), to_canary, "{metrics}");
    assert_eq!(by_backend("weft_requests_total", "payments"), to_stable, "{metrics}");
    assert_eq!(by_backend("weft_request_duration_seconds_count", "payments-v2"), to_canary, "{metrics}");
    assert_eq!(by_backend("weft_request_duration_seconds_count", "payments"), to_stable, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_answers_are_counted_without_the_host() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    for i in 0..3 {
        let host = format!("made-up-{i}.example");
        let resp = must(proxy.outbound(), &Req::get("/").host(&host)).await;
        assert_eq!(resp.status, 404);
        assert_eq!(resp.header("weft-proxy-error"), Some("unknown-service"));
        assert!(resp.text().contains(&format!("host: \"{host}\"")), "the name looked up is echoed: {resp:?}");
    }
    let metrics = eventually("404s counted", Duration::from_secs(10), || async {
        let metrics = proxy.metrics().await;
        let unknown = [("direction", "outbound"), ("service", "unknown"), ("code", "404")];
        (metric_sum(&metrics, "weft_requests_total", &unknown) == 3.0).then_some(metrics)
    })
    .await;
    let unknown = [("service", "unknown"), ("route", "unknown"), ("backend", "unknown")];
    assert_eq!(metric_sum(&metrics, "weft_request_duration_seconds_count", &unknown), 3.0, "{metrics}");
    assert!(!metrics.contains("made-up"), "no label carries a requested host:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_live_config_and_endpoints() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let proxy =
        Proxy::start(ProxyConfig { policy: service("payments", "http", &[a.addr(), b.addr()]), ..Default::default() })
            .await;

    assert_eq!(proxy.admin_get("/ready").await.status, 200);
    assert_eq!(proxy.admin_get("/live").await.status, 200);

    let config = proxy.config_json().await;
    assert!(config["version"].is_u64(), "{config}");
    assert!(config.to_string().contains("payments"), "the effective config names the service: {config}");

    let resp = proxy.admin_get("/endpoints").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let endpoints: serde_json::Value = serde_json::from_slice(&resp.body).expect("/endpoints is JSON");
    let text = endpoints.to_string();
    for addr in [a.addr(), b.addr()] {
        assert!(text.contains(&addr.to_string()), "{addr} missing from /endpoints: {text}");
    }
    assert!(text.contains("payments"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_route_that_matches() {
    let api = Backend::start("api").await;
    let v1 = Backend::start("v1").await;
    let route = document(
        "Route",
        "api-routes",
        r#"
        service: api
        rules:
          - match: {pathPrefix: /v1/, methods: [GET]}
            backends: [{service: api-v1, weight: 1}]
          - match: {pathPrefix: /}
            backends: [{service: api, weight: 1}]
        "#,
    );
    let policy = service("api", "http", &[api.addr()]) + &service("api-v1", "http", &[v1.addr()]) + &route;
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;

    let resp = proxy.admin_get("/explain?host=api&path=/v1/users&method=GET").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("/explain is JSON");
    let text = json.to_string();
    assert!(text.contains("api-routes"), "the route is named: {text}");
    assert!(text.contains("api-v1"), "the backend is named: {text}");
    // The explanation agrees with real routing.
    let real = must(proxy.outbound(), &Req::get("/v1/users").host("api")).await;
    assert_eq!(real.backend(), Some("v1"));

    let resp = proxy.admin_get("/explain?host=api&path=/v1/users&method=POST").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let post: serde_json::Value = serde_json::from_slice(&resp.body).expect("/explain is JSON");
    assert_ne!(post, json, "a POST takes the other rule, so the explanation differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_for_upstream_ports_and_refuses_bad_questions_with_400() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig {
        upstreams: vec!["api".to_string()],
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await;
    let port = proxy.upstream("api").port();

    let resp = proxy.admin_get(&format!("/explain?port={port}&path=/v1/x")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("/explain is JSON");
    assert_eq!(json["port"], port, "{json}");
    assert_eq!(json["service"], "api.default", "{json}");
    assert_eq!(json["backends"][0]["service"], "api.default", "{json}");
    // The explanation agrees with real routing: the port sends whatever Host to its service.
    let real = must(proxy.upstream("api"), &Req::get("/v1/x").host("elsewhere")).await;
    assert_eq!(real.backend(), Some("api"));

    for query in ["path=/", &format!("port={}", port.wrapping_add(1)), "port=web", "host=api&port=1"] {
        let resp = proxy.admin_get(&format!("/explain?{query}")).await;
        assert_eq!(resp.status, 400, "{query}: {resp:?}");
        let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("an error is JSON too");
        assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{query}: {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_can_be_changed_at_runtime() {
    let dead = dead_addr();
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: "log: {format: text, level: error}".to_string(),
        policy: service("api", "http", &[dead.addr()]),
        ..Default::default()
    })
    .await;
    let verbose = |logs: String| logs.lines().filter(|l| l.contains("WARN") || l.contains("DEBUG")).count();

    // A connect failure is worth a warning, which the `error` level hides.
    let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
    assert_eq!(resp.status, 502);
    assert_eq!(verbose(proxy.logs()), 0, "level error shows no warnings:\n{}", proxy.logs());

    let resp = proxy.admin_send(&Req::new("PUT", "/log-level").body("debug")).await;
    assert!((200..300).contains(&resp.status), "PUT /log-level debug: {resp:?}");
    eventually("warnings or debug lines after raising the level", Duration::from_secs(10), || async {
        let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
        assert_eq!(resp.status, 502);
        (verbose(proxy.logs()) > 0).then_some(())
    })
    .await;

    let resp = proxy.admin_send(&Req::new("PUT", "/log-level").body("weft_proxy=notalevel")).await;
    assert_eq!(resp.status, 400, "an unparsable filter is refused: {resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_reads_back_and_takes_json() {
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: "log: {format: text, level: error}".to_string(),
        policy: service("api", "http", &[dead_addr().addr()]),
        ..Default::default()
    })
    .await;
    let current = || async {
        let resp = proxy.admin_get("/log-level").await;
        assert_eq!(resp.status, 200, "GET /log-level: {resp:?}");
        let json: serde_json::Value = serde_json::from_slice(&resp.body).expect("GET /log-level is JSON");
        json["level"].as_str().expect("a level").to_string()
    };
    assert_eq!(current().await, "error");

    let resp = proxy.admin_send(&Req::new("PUT", "/log-level").body(r#"{"level":"info"}"#)).await;
    assert_eq!(resp.status, 200, "PUT /log-level with JSON: {resp:?}");
    assert_eq!(current().await, "info", "the JSON's level, not the JSON text, is the filter");
    let resp = proxy.admin_send(&Req::new("PUT", "/log-level").body("weft_proxy=debug,warn\n")).await;
    assert_eq!(resp.status, 200, "PUT /log-level with a plain filter: {resp:?}");
    assert_eq!(current().await, "weft_proxy=debug,warn");

    for bad in [r#"{"level":"info""#, r#"{"lvl":"info"}"#, "", "weft_proxy=notalevel"] {
        let resp = proxy.admin_send(&Req::new("PUT", "/log-level").body(bad)).await;
        assert_eq!(resp.status, 400, "{bad:?} is refused: {resp:?}");
    }
    assert_eq!(current().await, "weft_proxy=debug,warn", "a refused filter changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_needs_post() {
    let api = Backend::start("api").await;
    let mut proxy =
        Proxy::start(ProxyConfig { policy: service("api", "http", &[api.addr()]), ..Default::default() }).await;

    let resp = proxy.admin_get("/shutdown").await;
    assert!(!(200..300).contains(&resp.status), "GET /shutdown must not shut down: {resp:?}");
    assert_eq!(proxy.wait_exit(Duration::from_millis(300)).await, None, "the proxy exited after GET /shutdown");
    assert_eq!(proxy.admin_get("/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_with_its_outcome() {
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: "log: {format: text, level: warn, accessLog: true}".to_string(),
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await;
    let resp = must(proxy.outbound(), &Req::get("/logged?q=1").host("api")).await;
    assert_eq!(resp.status, 200);
    let resp = must(proxy.outbound(), &Req::get("/nowhere").host("nosuchservice")).await;
    assert_eq!(resp.status, 404);

    let lines = eventually("two access log lines", Duration::from_secs(10), || async {
        let logs = proxy.logs();
        let lines: Vec<String> = logs.lines().filter(|l| l.contains("access")).map(str::to_string).collect();
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 2, "one line per request:\n{}", lines.join("\n"));
    let ok = &lines[0];
    for want in ["direction=\"outbound\"", "method=GET", "path=\"/logged?q=1\"", "status=200", "micros="] {
        assert!(ok.contains(want), "{want} missing from {ok}");
    }
    let err = &lines[1];
    for want in ["path=\"/nowhere\"", "status=404", "proxy_error=\"unknown-service\""] {
        assert!(err.contains(want), "{want} missing from {err}");
    }
}

/// The `fields` of every JSON access log line in `logs`.
fn json_access_lines(logs: &str) -> Vec<serde_json::Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "access")
        .map(|l| l["fields"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_name_the_upstream_route_and_bytes() {
    let stable = Backend::start("stable").await;
    let canary = Backend::start("canary").await;
    let app = Backend::start("app").await;
    let route = document(
        "Route",
        "api-split",
        r#"
        service: api
        rules:
          - match: {headers: {x-canary: "true"}}
            backends: [{service: api-v2, weight: 1}]
          - backends: [{service: api, weight: 1}]
        "#,
    );
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: "log: {format: json, level: warn, accessLog: true}".to_string(),
        inbound_app: Some(app.addr()),
        policy: service("api", "http", &[stable.addr()]) + &service("api-v2", "http", &[canary.addr()]) + &route,
        ..Default::default()
    })
    .await;
    let body = "x".repeat(1000);
    let resp = must(proxy.outbound(), &Req::post("/echo", body.clone()).host("api").header("x-canary", "true")).await;
    assert_eq!(resp.text(), body);
    // An absolute-form proxy request: logged by its path, as an origin-form one is.
    let resp = must(proxy.outbound(), &Req::get("http://api/stable?n=1")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let resp = must(proxy.inbound(), &Req::get("/in").host("client")).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    let lines = eventually("three JSON access lines", Duration::from_secs(10), || async {
        let lines = json_access_lines(&proxy.logs());
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(lines.len(), 3, "{lines:?}");
    let canary_line = &lines[0];
    assert_eq!(canary_line["path"], "/echo", "{canary_line}");
    assert_eq!(canary_line["service"], "api", "{canary_line}");
    assert_eq!(canary_line["route"], "api-split", "{canary_line}");
    assert_eq!(canary_line["backend"], "api-v2", "{canary_line}");
    assert_eq!(canary_line["endpoint"], canary.addr().to_string(), "{canary_line}");
    assert_eq!(canary_line["response_bytes"], 1000, "{canary_line}");
    assert_eq!(canary_line["status"], 200, "{canary_line}");
    let stable_line = &lines[1];
    assert_eq!(stable_line["path"], "/stable?n=1", "not the absolute URI: {stable_line}");
    assert_eq!(stable_line["host"], "api", "{stable_line}");
    assert_eq!(stable_line["endpoint"], stable.addr().to_string(), "{stable_line}");
    let inbound_line = &lines[2];
    assert_eq!(inbound_line["direction"], "inbound", "{inbound_line}");
    assert_eq!(inbound_line["path"], "/in", "{inbound_line}");
    assert_eq!(inbound_line["route"], "inbound", "{inbound_line}");
    assert_eq!(inbound_line["endpoint"], app.addr().to_string(), "{inbound_line}");
    assert!(inbound_line.get("caller").is_none(), "a plaintext caller has no identity: {inbound_line}");
}
