//! Discovery end to end: the real `weft serve` and real `weft-proxy` processes on loopback.
//! Proxies learn endpoints and routes from the stream, keep serving through control-plane
//! outages (and restart from their persisted state), reject garbage, and many subscribers
//! converge on a change.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use weft_integration::client::must;
use weft_integration::kube_api::Lines;
use weft_integration::metrics::metric_sum;
use weft_integration::watch::{Watcher, mentions_endpoint, quantile};
use weft_integration::{
    Backend, ControlPlane, Limit, Proxy, ProxyConfig, Req, TempDir, document, eventually, run_load, service,
};

const SETTLE: Duration = Duration::from_secs(15);

/// Runs the `weft` CLI and returns its stdout; panics unless it exits 0.
fn weft(args: &[&str]) -> String {
    let out = std::process::Command::new(weft_integration::bin("weft")).args(args).output().expect("run weft");
    assert!(out.status.success(), "weft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// A proxy subscribed to `cp`, with no policy of its own.
async fn subscribed_proxy(cp: &ControlPlane, extra: &str) -> Proxy {
    Proxy::start(ProxyConfig {
        proxy_spec: format!("controlPlane: {{address: \"{}\"}}\n{extra}", cp.url()),
        ..Default::default()
    })
    .await
}

/// Which backend answers a call to `host` through the proxy (None: not routed yet).
async fn answer(proxy: &Proxy, host: &str) -> Option<String> {
    let resp = must(proxy.outbound(), &Req::get("/which").host(host)).await;
    (resp.status == 200).then(|| resp.backend().unwrap_or("-").to_string())
}

/// Waits until `n` calls in a row are answered by backends in `names` only.
async fn routes_only_to(proxy: &Proxy, host: &str, names: &[&str], n: usize) {
    eventually(&format!("{host} to be served by {names:?} only"), SETTLE, || async {
        for _ in 0..n {
            match answer(proxy, host).await {
                Some(b) if names.contains(&b.as_str()) => {}
                _ => return None,
            }
        }
        Some(())
    })
    .await;
}

fn route_to(service: &str, backend: &str) -> String {
    document(
        "Route",
        service,
        &format!(
            "service: {service}\nrules:\n  - match: {{pathPrefix: /}}\n    backends: [{{service: {backend}, weight: 1}}]\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_learns_new_endpoints_and_route_changes_from_the_stream() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let cp = ControlPlane::start(&service("api", "http", &[a.addr()])).await;
    let proxy = subscribed_proxy(&cp, "").await;
    routes_only_to(&proxy, "api", &["a"], 3).await;

    // A new endpoint arrives as a delta and takes traffic.
    cp.write_policy(&service("api", "http", &[a.addr(), b.addr()]));
    eventually("the new endpoint b to take traffic", SETTLE, || async {
        (answer(&proxy, "api").await.as_deref() == Some("b")).then_some(())
    })
    .await;

    // A route change sends api's calls to api-v2.
    let v2 = service("api", "http", &[a.addr(), b.addr()])
        + &service("api-v2", "http", &[c.addr()])
        + &route_to("api", "api-v2");
    cp.write_policy(&v2);
    routes_only_to(&proxy, "api", &["c"], 10).await;
    let config = proxy.config_json().await;
    assert!(config["source"].as_str().is_some_and(|s| s.contains("control plane v")), "{config}");

    // weft status sees the proxy, its acked version and the registrations.
    let status = eventually("the proxy's ack to reach the control plane", SETTLE, || async {
        let s = cp.status().await;
        let p = &s["proxies"][0];
        (p["ackedVersion"].as_u64() == Some(s["version"].as_u64().unwrap_or(0))).then_some(s)
    })
    .await;
    assert_eq!(status["proxies"].as_array().map(Vec::len), Some(1), "{status}");
    let api = status["services"].as_array().unwrap().iter().find(|s| s["service"] == "api.default").cloned();
    assert_eq!(api.map(|s| s["instances"]["yaml-dir"].clone()), Some(serde_json::json!(2)), "{status}");
    assert!(metric_sum(&cp.metrics().await, "weft_control_convergence_seconds_count", &[]) >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_stops_receiving_traffic() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let cp = ControlPlane::start(&service("api", "http", &[a.addr(), b.addr()])).await;
    let proxy = subscribed_proxy(&cp, "").await;
    eventually("both endpoints to take traffic", SETTLE, || async {
        let _ = answer(&proxy, "api").await;
        (a.hits() > 0 && b.hits() > 0).then_some(())
    })
    .await;

    cp.write_policy(&service("api", "http", &[b.addr()]));
    routes_only_to(&proxy, "api", &["b"], 10).await;
    let a_hits = a.hits();
    for _ in 0..50 {
        assert_eq!(answer(&proxy, "api").await.as_deref(), Some("b"));
    }
    assert_eq!(a.hits(), a_hits, "the removed endpoint got traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_registered_proxies_take_traffic_and_leave_when_draining() {
    let app = Backend::start("payments-app").await;
    let cp = ControlPlane::start("").await;
    let mut payments = Proxy::start(ProxyConfig {
        service: "payments".into(),
        inbound_app: Some(app.addr()),
        proxy_spec: format!("controlPlane: {{address: \"{}\"}}\nshutdownGrace: 2s\n", cp.url()),
        ..Default::default()
    })
    .await;
    let client = subscribed_proxy(&cp, "").await;
    // client → (outbound, Host: payments) → payments' inbound (self-registered) → the app.
    routes_only_to(&client, "payments", &["payments-app"], 3).await;
    let status = cp.status().await;
    let reg = status["services"].as_array().unwrap().iter().find(|s| s["service"] == "payments.default").cloned();
    assert_eq!(reg.map(|s| s["instances"]["self-registration"].clone()), Some(serde_json::json!(1)), "{status}");

    // `weft status`, for people and for scripts.
    let url = format!("http://{}", cp.admin());
    let table = weft(&["status", "--control-plane", &url]);
    assert!(table.contains("2 proxies connected"), "{table}");
    assert!(table.contains("payments.default") && table.contains("self-registration=1"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&weft(&["status", "--control-plane", &url, "-o", "json"])).unwrap();
    assert_eq!(json["proxies"].as_array().map(Vec::len), Some(2), "{json}");

    payments.sigterm();
    eventually("the draining proxy's registration to be withdrawn", SETTLE, || async {
        let s = cp.status().await;
        let n = s["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == "payments.default")
            .map(|s| s["instances"].clone());
        (n == Some(serde_json::json!({}))).then_some(())
    })
    .await;
    eventually("the client to stop routing to it", SETTLE, || async {
        let resp = must(client.outbound(), &Req::get("/").host("payments")).await;
        (resp.status == 503).then_some(())
    })
    .await;
    assert!(payments.wait_exit(Duration::from_secs(10)).await.is_some(), "the drained proxy exits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_outages_drop_nothing_and_a_restarted_proxy_serves_its_persisted_state() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let mut cp = ControlPlane::start(&service("api", "http", &[a.addr(), b.addr()])).await;
    let state = TempDir::new("state");
    let state_line = format!("stateDir: \"{}\"\n", state.path().display());
    let proxy = subscribed_proxy(&cp, &state_line).await;
    routes_only_to(&proxy, "api", &["a", "b"], 3).await;
    eventually("the state to be persisted", SETTLE, || async {
        state.path().join("control-plane.json").exists().then_some(())
    })
    .await;

    // Kill the control plane under load, then bring it back: no request may fail.
    let load = tokio::spawn(run_load(proxy.outbound(), 4, Limit::For(Duration::from_secs(5)), |i| {
        Req::get(&format!("/r/{i}")).host("api")
    }));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cp.kill();
    eventually("the proxy to notice the outage", SETTLE, || async {
        (metric_sum(&proxy.metrics().await, "weft_discovery_connected", &[]) == 0.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cp.restart().await;
    let report = load.await.unwrap();
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(report.total() > 100, "{}", report.summary());
    eprintln!("control plane killed and restarted under load: {}", report.summary());
    eventually("the proxy to resubscribe", SETTLE, || async {
        (metric_sum(&proxy.metrics().await, "weft_discovery_connected", &[]) == 1.0).then_some(())
    })
    .await;
    routes_only_to(&proxy, "api", &["a", "b"], 4).await;

    // With the control plane down, a restarted proxy serves what it persisted.
    cp.kill();
    drop(proxy);
    let restarted = subscribed_proxy(&cp, &state_line).await;
    routes_only_to(&restarted, "api", &["a", "b"], 10).await;
    assert!(restarted.logs().contains("persisted"), "{}", restarted.log_tail(20));
}

/// A fake control plane: the first stream gets a good snapshot and then, once told, a line of
/// garbage; every later stream gets a snapshot that does not hold together.
struct FakeControlPlane {
    addr: std::net::SocketAddr,
    garbage: mpsc::UnboundedSender<()>,
    streams: Arc<AtomicUsize>,
}

impl FakeControlPlane {
    async fn start(good: String, bad: String) -> FakeControlPlane {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (garbage, garbage_rx) = mpsc::unbounded_channel::<()>();
        let garbage_rx = Arc::new(tokio::sync::Mutex::new(garbage_rx));
        let streams = Arc::new(AtomicUsize::new(0));
        let counter = streams.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (good, bad, garbage_rx, counter) = (good.clone(), bad.clone(), garbage_rx.clone(), counter.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (good, bad, garbage_rx, counter) =
                            (good.clone(), bad.clone(), garbage_rx.clone(), counter.clone());
                        async move {
                            let (tx, rx) = mpsc::unbounded_channel();
                            if req.uri().path() == "/v1/watch" {
                                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                                    let _ = tx.send(Bytes::from(good));
                                    tokio::spawn(async move {
                                        garbage_rx.lock().await.recv().await;
                                        let _ =
                                            tx.send(Bytes::from_static(b"{\"type\": \"snapshot\", this is not JSON\n"));
                                        tokio::time::sleep(Duration::from_secs(60)).await;
                                    });
                                } else {
                                    let _ = tx.send(Bytes::from(bad));
                                    tokio::spawn(async move {
                                        tokio::time::sleep(Duration::from_secs(60)).await;
                                        drop(tx);
                                    });
                                }
                            }
                            Ok::<_, Infallible>(Response::new(Lines(rx)))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeControlPlane { addr, garbage, streams }
    }
}

fn snapshot_line(version: u64, documents: serde_json::Value, endpoints: serde_json::Value) -> String {
    let line = serde_json::json!({"type": "snapshot", "version": version, "session": "fake", "documents": documents, "endpoints": endpoints});
    format!("{line}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_control_plane_is_rejected_and_the_old_config_kept() {
    let a = Backend::start("a").await;
    let good = snapshot_line(
        10,
        serde_json::json!([]),
        serde_json::json!({"api.default": [{"address": a.addr().to_string(), "weight": 1, "identity": null}]}),
    );
    // Well-formed JSON that does not hold together: a Route to a service nobody declares.
    let route = serde_json::json!({"kind": "Route", "metadata": {"name": "api", "namespace": "default"}, "spec": {"service": "api", "rules": [
        {"match": {"pathPrefix": "/", "path": null, "methods": [], "headers": {}}, "backends": [{"service": "ghost", "weight": 1}], "timeout": null, "retry": null}]}});
    let bad = snapshot_line(
        11,
        serde_json::json!([route]),
        serde_json::json!({"api.default": [{"address": a.addr().to_string(), "weight": 1, "identity": null}]}),
    );
    let fake = FakeControlPlane::start(good, bad).await;
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: format!("controlPlane: {{address: \"http://{}\"}}\n", fake.addr),
        ..Default::default()
    })
    .await;
    routes_only_to(&proxy, "api", &["a"], 3).await;
    let version = proxy.config_version().await;

    fake.garbage.send(()).unwrap();
    eventually("both bad updates to be rejected", SETTLE, || async {
        let rejected = metric_sum(&proxy.metrics().await, "weft_discovery_updates_total", &[("result", "rejected")]);
        (rejected >= 2.0 && fake.streams.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    assert_eq!(proxy.config_version().await, version, "a rejected update must not change the config");
    routes_only_to(&proxy, "api", &["a"], 10).await;
    let logs = proxy.logs();
    assert!(logs.contains("not a discovery message"), "{}", proxy.log_tail(30));
    assert!(logs.contains("ghost"), "the rejection names the problem: {}", proxy.log_tail(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_subscribers_converge_on_a_change() {
    const N: usize = 100;
    let cp = ControlPlane::start(&service("api", "http", &["127.0.0.1:1".parse().unwrap()])).await;
    let mut watchers = Vec::with_capacity(N);
    for i in 0..N {
        let (mut w, snap) = Watcher::connect(cp.listen(), &format!("service=sim&name=sim-{i}")).await.unwrap();
        assert!(w.ack(snap["version"].as_u64().unwrap()).await);
        watchers.push(w);
    }
    let new_endpoint = "127.0.0.1:5999";
    let start = tokio::time::Instant::now();
    // The change: one more instance of api registers itself.
    let (_registrant, _) = Watcher::connect(cp.listen(), &format!("service=api&address={new_endpoint}")).await.unwrap();
    let tasks: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                while let Some((at, msg)) = w.next(SETTLE).await {
                    if mentions_endpoint(&msg, "api.default", new_endpoint) {
                        assert!(w.ack(msg["version"].as_u64().unwrap()).await);
                        return Some(at - start);
                    }
                }
                None
            })
        })
        .collect();
    let mut times = Vec::with_capacity(N);
    for t in tasks {
        times.push(t.await.unwrap().expect("a subscriber did not see the change"));
    }
    times.sort();
    println!(
        "convergence of {N} subscribers (registration sent -> delta received): p50 {:?}, p99 {:?}, max {:?}",
        quantile(&times, 0.5),
        quantile(&times, 0.99),
        times[N - 1]
    );
    let text = eventually("every ack to be counted", SETTLE, || async {
        let text = cp.metrics().await;
        (metric_sum(&text, "weft_control_convergence_seconds_count", &[]) >= N as f64).then_some(text)
    })
    .await;
    let count = metric_sum(&text, "weft_control_convergence_seconds_count", &[]);
    let sum = metric_sum(&text, "weft_control_convergence_seconds_sum", &[]);
    println!("control plane publish -> ack: {count} samples, mean {:.2} ms", sum / count * 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policy_is_rejected_with_file_lines_and_the_last_good_keeps_serving() {
    let a = Backend::start("a").await;
    let good = service("api", "http", &[a.addr()]);
    let cp = ControlPlane::start(&good).await;
    let proxy = subscribed_proxy(&cp, "").await;
    routes_only_to(&proxy, "api", &["a"], 3).await;
    let version = cp.status().await["version"].as_u64().unwrap();

    cp.write_policy(&good.replace("protocol: http", "protocol: htp"));
    let status = eventually("the bad policy to be rejected", SETTLE, || async {
        let s = cp.status().await;
        (s["policyValid"] == false).then_some(s)
    })
    .await;
    let errors = status["policyErrors"].to_string();
    assert!(errors.contains("policy.yaml:") && errors.contains("spec.ports[0].protocol"), "{errors}");
    assert_eq!(status["version"].as_u64(), Some(version), "nothing was published");
    assert!(metric_sum(&cp.metrics().await, "weft_control_policy_errors", &[]) >= 1.0);
    assert!(cp.logs().contains("spec.ports[0].protocol: invalid value \"htp\""), "{}", cp.logs());
    routes_only_to(&proxy, "api", &["a"], 5).await;
    // The same bad file written again (an editor's second save, a second burst of events) is
    // reported once, not once per load.
    cp.write_policy(&good.replace("protocol: http", "protocol: htp"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let said = cp.logs().matches("spec.ports[0].protocol: invalid value \"htp\"").count();
    assert_eq!(said, 1, "{}", cp.logs());
    let rejected = metric_sum(&cp.metrics().await, "weft_control_policy_reloads_total", &[("result", "rejected")]);
    assert_eq!(rejected, 1.0);

    cp.write_policy(&good);
    eventually("the fixed policy to clear the errors", SETTLE, || async {
        (metric_sum(&cp.metrics().await, "weft_control_policy_errors", &[]) == 0.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_gets_a_resync_and_blocks_no_one() {
    let cp = ControlPlane::start(&service("api", "http", &["127.0.0.1:1".parse().unwrap()])).await;
    // A subscriber that stops reading: a 1 KiB HTTP/2 window it never releases.
    let stream = tokio::net::TcpStream::connect(cp.listen()).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1024)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/v1/watch?service=stuck", cp.listen()))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let mut stuck = send.send_request(req).await.unwrap().into_body();
    let (mut healthy, _) = Watcher::connect(cp.listen(), "service=healthy").await.unwrap();

    // 150 instances register (150 deltas), more than a stream's queue holds.
    let mut registrants = Vec::new();
    for i in 0..150 {
        let (w, _) =
            Watcher::connect(cp.listen(), &format!("service=api&address=127.0.0.2:{}", 2000 + i)).await.unwrap();
        registrants.push(w);
    }
    let last = "127.0.0.2:2149";
    let mut seen = false;
    while let Some((_, msg)) = healthy.next(SETTLE).await {
        if mentions_endpoint(&msg, "api.default", last) {
            seen = true;
            break;
        }
    }
    assert!(seen, "the healthy subscriber did not see every registration");
    eventually("the stuck stream to be marked for a resync", SETTLE, || async {
        let m = cp.metrics().await;
        (metric_sum(&m, "weft_control_resyncs_total", &[("reason", "overflow")]) >= 1.0).then_some(())
    })
    .await;

    // Reading again, it gets a fresh snapshot with everything instead of the backlog.
    use http_body_util::BodyExt;
    let mut buf = Vec::new();
    let mut messages = 0;
    let found = tokio::time::timeout(SETTLE, async {
        while let Some(Ok(frame)) = stuck.frame().await {
            buf.extend_from_slice(&frame.into_data().unwrap_or_default());
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let msg: serde_json::Value = serde_json::from_slice(&line).unwrap();
                messages += 1;
                if msg["type"] == "snapshot" && mentions_endpoint(&msg, "api.default", last) {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no resync snapshot with the latest registration");
    assert!(messages < 100, "the backlog was replayed ({messages} messages) instead of a resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_is_not_ready_until_its_first_control_plane_config() {
    let a = Backend::start("a").await;
    // Reserved until the control plane binds it, so no other test's socket takes it meanwhile.
    let reserved = weft_integration::net::reserve_addrs(1);
    let listen = reserved.addr();
    let mut proxy = Proxy::spawn(&ProxyConfig {
        proxy_spec: format!("controlPlane: {{address: \"http://{listen}\"}}\n"),
        ..Default::default()
    });
    let resp = eventually("the admin listener to answer", SETTLE, || async {
        weft_integration::client::send(proxy.admin(), &Req::get("/ready")).await.ok()
    })
    .await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("control plane"), "{}", resp.text());

    let _cp = ControlPlane::start_at(&service("api", "http", &[a.addr()]), listen).await;
    proxy.wait_ready(SETTLE).await.unwrap();
    routes_only_to(&proxy, "api", &["a"], 3).await;
}

/// Instances of `service` in `weft status`, by registry source.
async fn registrations(cp: &ControlPlane, service: &str) -> serde_json::Value {
    let status = cp.status().await;
    let found = status["services"].as_array().unwrap().iter().find(|s| s["service"] == service).cloned();
    found.map(|s| s["instances"].clone()).unwrap_or(serde_json::json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_proxy_loses_its_registration_and_regains_it_when_it_wakes() {
    let app = Backend::start("app").await;
    let cp = ControlPlane::start("").await;
    let payments = Proxy::start(ProxyConfig {
        service: "payments".into(),
        inbound_app: Some(app.addr()),
        proxy_spec: format!("controlPlane: {{address: \"{}\"}}\n", cp.url()),
        ..Default::default()
    })
    .await;
    let one = serde_json::json!({"self-registration": 1});
    eventually("the proxy to register", SETTLE, || async {
        (registrations(&cp, "payments.default").await == one).then_some(())
    })
    .await;

    // A stopped process keeps its TCP connection open but answers no HTTP/2 PING.
    payments.signal("STOP");
    eventually("the frozen proxy's registration to go", SETTLE, || async {
        (registrations(&cp, "payments.default").await == serde_json::json!({})).then_some(())
    })
    .await;
    payments.signal("CONT");
    eventually("the woken proxy to register again", SETTLE, || async {
        (registrations(&cp, "payments.default").await == one).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_proxy_receives_only_the_services_it_may_reach() {
    let ep: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let policy = service("payments", "http", &[ep])
        + &service("payments-v2", "http", &[ep])
        + &service("ledger", "http", &[ep])
        + &document(
            "Route",
            "payments",
            "service: payments\nrules:\n  - backends: [{service: payments, weight: 9}, {service: payments-v2, weight: 1}]\n",
        )
        + &document(
            "AuthorizationPolicy",
            "ledger",
            "service: ledger\ndefault: deny\nrules: [{from: [\"spiffe://cluster.local/ns/default/sa/payments\"]}]\n",
        );
    let cp = ControlPlane::start(&policy).await;
    let keys =
        |snap: &serde_json::Value| -> Vec<String> { snap["endpoints"].as_object().unwrap().keys().cloned().collect() };
    let (_frontend, snap) = Watcher::connect(cp.listen(), "service=frontend").await.unwrap();
    assert_eq!(keys(&snap), ["frontend.default", "payments-v2.default", "payments.default"], "{snap}");
    let kinds: Vec<&str> = snap["documents"].as_array().unwrap().iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(!kinds.contains(&"AuthorizationPolicy"), "another service's authorization leaked: {kinds:?}");

    let (_payments, snap) = Watcher::connect(cp.listen(), "service=payments").await.unwrap();
    assert!(keys(&snap).contains(&"ledger.default".to_string()), "{snap}");
    let (_ledger, snap) = Watcher::connect(cp.listen(), "service=ledger").await.unwrap();
    let kinds: Vec<&str> = snap["documents"].as_array().unwrap().iter().filter_map(|d| d["kind"].as_str()).collect();
    assert!(kinds.contains(&"AuthorizationPolicy"), "a proxy gets its own service's authorization: {kinds:?}");
}
