//! Micro-benches of the per-request pieces the proxy owns (not hyper's, not the kernel's):
//! route lookup, balancer pick, header rewriting and metrics recording.
//!
//! `cargo bench -p weft-proxy --bench hot_path`. The load harness in benches/ measures the
//! whole hop; these show which piece moved when a figure there changes.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request};
use weft_proxy::balance::{Endpoint, EndpointSet, LoadBalancer, OutlierConfig};
use weft_proxy::config::snapshot::Snapshot;
use weft_proxy::http::headers;
use weft_proxy::metrics::RouteMetrics;

const POLICY: &str = "\
kind: Proxy
metadata: {name: bench}
spec: {service: bench}
---
kind: Service
metadata: {name: payments, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
  endpoints: [{address: 127.0.0.1:9001}, {address: 127.0.0.1:9002}]
---
kind: Service
metadata: {name: payments-canary, namespace: shop}
spec:
  ports: [{port: 80, protocol: http}]
  endpoints: [{address: 127.0.0.1:9003}]
---
kind: Route
metadata: {name: payments, namespace: shop}
spec:
  service: payments
  rules:
    - match: {pathPrefix: /admin, methods: [POST]}
      backends: [{service: payments, weight: 1}]
    - match: {pathPrefix: /v2, headers: {x-canary: \"on\"}}
      backends: [{service: payments-canary, weight: 1}]
    - match: {pathPrefix: /}
      backends: [{service: payments, weight: 90}, {service: payments-canary, weight: 10}]
      timeout: 2s
";

fn snapshot() -> Snapshot {
    let docs = weft_api::parse_file("bench.yaml", POLICY).expect("bench policy parses");
    Snapshot::build(docs, "bench.yaml", 1, None).expect("bench policy builds")
}

fn route_match(c: &mut Criterion) {
    let snap = snapshot();
    let mut headers = HeaderMap::new();
    headers.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    headers.insert("accept", HeaderValue::from_static("*/*"));
    c.bench_function("route: host lookup + rule match (3 rules, last matches)", |b| {
        b.iter(|| {
            let routes = snap.lookup_host(black_box("payments.shop.svc.cluster.local")).expect("host known");
            let rule = routes.find(black_box(&Method::GET), black_box("/orders/42"), black_box(&headers));
            black_box(rule.expect("a rule matches").pick_backend());
        })
    });
}

fn balancer_pick(c: &mut Criterion) {
    for (name, lb) in [("peak-ewma", LoadBalancer::PeakEwma), ("round-robin", LoadBalancer::RoundRobin)] {
        let endpoints: Vec<Arc<Endpoint>> =
            (0..8).map(|i| Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, i], 8080)), 1, None))).collect();
        let set = EndpointSet::new(endpoints, lb, OutlierConfig::default());
        c.bench_function(&format!("balance: pick + start + success, 8 endpoints, {name}"), |b| {
            b.iter(|| {
                let idx = set.pick(black_box(&[])).expect("an endpoint");
                let guard = set.endpoints()[idx].start();
                set.on_success(idx, guard);
            })
        });
    }
}

fn header_rewrite(c: &mut Criterion) {
    let mut template = Request::builder()
        .method(Method::GET)
        .uri("/orders/42")
        .header("host", "payments")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("x-request-id", "0f3a9c")
        .body(())
        .expect("request");
    template.headers_mut().insert("te", HeaderValue::from_static("trailers"));
    c.bench_function("headers: strip hop-by-hop + to HTTP/1.1 (7 headers)", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |req| {
                headers::strip_hop_by_hop(req.headers_mut());
                headers::to_http1(req);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn metrics_record(c: &mut Criterion) {
    let metrics = RouteMetrics::new("outbound", "payments.shop", "payments", "payments-v2.shop");
    c.bench_function("metrics: record one request (counter + histogram)", |b| {
        b.iter(|| metrics.record(black_box(200), false, black_box(0.000_35)))
    });
}

criterion_group!(benches, route_match, balancer_pick, header_rewrite, metrics_record);
criterion_main!(benches);
