//! Kubernetes discovery end to end: the real `weft serve --kubernetes` (kube-rs's watcher inside)
//! against a scripted fake API server on loopback, and a real proxy routing real calls by what it
//! learns. The fake answers call by call, as the test tells it: lists, watch streams with
//! ADDED/MODIFIED/DELETED/BOOKMARK events, a stream that ends, 410 Gone, a 500.
//!
//! What it cannot prove (no API server runs here): that a real API server's pagination, watch
//! cache and bookmarks behave as scripted, RBAC, or in-cluster credentials (see kube_api.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use weft_integration::client::must;
use weft_integration::kube_api::{FakeApi, status_object};
use weft_integration::metrics::metric_sum;
use weft_integration::{Backend, ControlPlane, Proxy, ProxyConfig, Req, eventually, service};

const SETTLE: Duration = Duration::from_secs(20);

fn kube_service(name: &str, cluster_ip: &str, version: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": version},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "http", "port": 8000, "targetPort": 8080, "protocol": "TCP"}]}
    })
}

/// An endpoint's conditions in an EndpointSlice.
#[derive(Clone, Copy)]
enum Condition {
    Ready,
    /// Terminating but still serving: a pod on its way out that can answer.
    Draining,
}

/// An EndpointSlice of Service `web` with one endpoint, `backend`'s address.
fn slice(name: &str, version: &str, backend: &Backend, condition: Condition) -> Value {
    let addr = backend.addr();
    let conditions = match condition {
        Condition::Ready => json!({"ready": true}),
        Condition::Draining => json!({"ready": false, "serving": true, "terminating": true}),
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "resourceVersion": version,
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": addr.port(), "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": conditions}]
    })
}

/// Which backend answers a call to `web` through the proxy (None: not routed).
async fn web(proxy: &Proxy) -> Option<String> {
    let resp = must(proxy.outbound(), &Req::get("/which").host("web")).await;
    (resp.status == 200).then(|| resp.backend().unwrap_or("-").to_string())
}

async fn routes_only_to(proxy: &Proxy, names: &[&str], n: usize) {
    eventually(&format!("web to be served by {names:?} only"), SETTLE, || async {
        for _ in 0..n {
            match web(proxy).await {
                Some(b) if names.contains(&b.as_str()) => {}
                _ => return None,
            }
        }
        Some(())
    })
    .await;
}

/// How many of web's instances `weft serve` has from Kubernetes.
async fn kubernetes_instances(cp: &ControlPlane) -> u64 {
    let status = cp.status().await;
    let services = status["services"].as_array().cloned().unwrap_or_default();
    services
        .iter()
        .find(|s| s["service"] == "web.default")
        .and_then(|s| s["instances"]["kubernetes"].as_u64())
        .unwrap_or(0)
}

/// The virtual IPs and ports of Service `name` in the proxy's config (None: no such Service).
fn service_in(config: &Value, name: &str) -> Option<(Value, Value)> {
    let docs = config["documents"].as_array()?;
    let doc = docs.iter().find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name)?;
    Some((doc["spec"]["virtualIPs"].clone(), doc["spec"]["ports"].clone()))
}

async fn stale(cp: &ControlPlane) -> f64 {
    stale_source(cp, "kubernetes").await
}

async fn stale_source(cp: &ControlPlane, source: &str) -> f64 {
    metric_sum(&cp.metrics().await, "weft_control_registry_stale", &[("source", source)])
}

/// Calls `web` through the proxy until stopped, counting the calls that were not answered by
/// a backend.
struct Poller {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn start(outbound: SocketAddr) -> Poller {
        let (stop, failed, calls) = (Arc::default(), Arc::default(), Arc::default());
        let (s, f, c): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
            (Arc::clone(&stop), Arc::clone(&failed), Arc::clone(&calls));
        let task = tokio::spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let resp = must(outbound, &Req::get("/which").host("web")).await;
                c.fetch_add(1, Ordering::SeqCst);
                if resp.status != 200 {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Poller { stop, failed, calls, task }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("poller");
        (self.calls.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_cluster_through_pages_drains_watch_resumes_relists_and_api_errors() {
    let (a, b, c) = (Backend::start("a").await, Backend::start("b").await, Backend::start("c").await);
    let api = FakeApi::start(&["services", "endpointslices"]).await;
    // The policy says how web is served; Kubernetes says where its instances are.
    let cp = ControlPlane::start_with(&service("web", "http", &[]), &["--kubernetes", "--kube-api", &api.url()]).await;
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: format!("controlPlane: {{address: \"{}\"}}\n", cp.url()),
        ..Default::default()
    })
    .await;

    // 1. The first lists (the slices in two pages). Nothing is published until both kinds are
    //    listed in full: a Service whose slices are not known yet must not look like a Service
    //    with no endpoints.
    let call = api.next("services").await;
    assert_eq!((call.path.as_str(), call.is_watch()), ("/api/v1/services", false));
    call.list(
        "ServiceList",
        "10",
        vec![kube_service("web", "10.96.0.20", "5"), kube_service("api", "10.96.0.21", "4")],
    );
    let services_watch = api.next("services").await;
    assert!(services_watch.is_watch(), "{:?}", services_watch.query);
    assert_eq!(services_watch.resource_version(), Some("10"), "the watch starts where the list ended");
    let services = services_watch.stream();
    let list = api.next("endpointslices").await;
    assert_eq!((list.path.as_str(), list.is_watch()), ("/apis/discovery.k8s.io/v1/endpointslices", false));
    list.page("EndpointSliceList", "10", Some("page-2"), vec![slice("web-a", "6", &a, Condition::Ready)]);
    let list = api.next("endpointslices").await;
    assert_eq!((list.is_watch(), list.continue_token()), (false, Some("page-2")), "{:?}", list.query);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(kubernetes_instances(&cp).await, 0, "published before the slices were listed");
    list.list("EndpointSliceList", "10", vec![slice("web-b", "7", &b, Condition::Ready)]);
    eventually("a and b (both pages) to take traffic", SETTLE, || async {
        let _ = web(&proxy).await;
        (a.hits() > 0 && b.hits() > 0).then_some(())
    })
    .await;
    assert_eq!(kubernetes_instances(&cp).await, 2);
    assert_eq!(stale(&cp).await, 0.0);
    // The cluster's Services join the policy: web, which the policy file declares, keeps the
    // file's port and protocol and takes its ClusterIP; api, which no file declares, comes as
    // the cluster says (its first port, by its name's protocol).
    let config = proxy.config_json().await;
    assert_eq!(
        service_in(&config, "web"),
        Some((json!(["10.96.0.20"]), json!([{"port": 80, "protocol": "http"}]))),
        "{config}"
    );
    assert_eq!(
        service_in(&config, "api"),
        Some((json!(["10.96.0.21"]), json!([{"port": 8000, "protocol": "http"}]))),
        "{config}"
    );
    let watch = api.next("endpointslices").await;
    assert_eq!((watch.is_watch(), watch.resource_version()), (true, Some("10")));
    let slices = watch.stream();

    // From here on every call to web must be answered, whatever the cluster and the watch go
    // through.
    let poller = Poller::start(proxy.outbound());

    // 2. A pod on its way out: ready → terminating (still serving) → gone. While b is ready,
    //    the draining a gets nothing; once its slice is deleted it is not known at all.
    slices.send("MODIFIED", slice("web-a", "11", &a, Condition::Draining));
    routes_only_to(&proxy, &["b"], 10).await;
    slices.send("DELETED", slice("web-a", "12", &a, Condition::Draining));
    eventually("a to leave", SETTLE, || async { (kubernetes_instances(&cp).await == 1).then_some(()) }).await;
    let a_hits = a.hits();
    routes_only_to(&proxy, &["b"], 10).await;
    assert_eq!(a.hits(), a_hits, "a deleted endpoint got traffic");

    // 3. A bookmark, then the stream ends (the API server's watch timeout): the watch resumes
    //    from the bookmark's version, without a relist.
    slices.send(
        "BOOKMARK",
        json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
                                   "metadata": {"resourceVersion": "13"}}),
    );
    drop(slices);
    let resumed = api.next("endpointslices").await;
    assert_eq!((resumed.is_watch(), resumed.resource_version()), (true, Some("13")), "{:?}", resumed.query);
    let slices = resumed.stream();

    // 4. 410 Gone: the watcher relists. Until the relist is complete the last state is served
    //    (no empty service); a refused (403) or failed (500) list marks the source stale, is
    //    retried after a backoff, and changes nothing.
    slices.send("ERROR", status_object(410, "Expired"));
    let mut relist = api.next("endpointslices").await;
    assert!(!relist.is_watch(), "410 must be followed by a list: {:?}", relist.query);
    eventually("the source to be marked stale", SETTLE, || async { (stale(&cp).await == 1.0).then_some(()) }).await;
    for _ in 0..20 {
        assert_eq!(web(&proxy).await.as_deref(), Some("b"), "the last known state is kept during a relist");
    }
    for (code, reason) in [(403, "Forbidden"), (500, "InternalError")] {
        relist.fail(code, reason);
        let again = api.next("endpointslices").await;
        assert!(!again.is_watch(), "a failed list is retried: {:?}", again.query);
        assert_eq!(stale(&cp).await, 1.0, "stale until a list succeeds");
        assert_eq!(cp.status().await["staleSources"], json!(["kubernetes"]), "weft status says so too");
        assert_eq!(web(&proxy).await.as_deref(), Some("b"), "the last known state is kept after a {code}");
        relist = again;
    }
    // While the watch was gone, web-b was deleted and web-c created: the relist replaces the
    // old state in whole.
    relist.list("EndpointSliceList", "20", vec![slice("web-c", "19", &c, Condition::Ready)]);
    routes_only_to(&proxy, &["c"], 10).await;
    eventually("the source to be current again", SETTLE, || async { (stale(&cp).await == 0.0).then_some(()) }).await;
    assert_eq!(cp.status().await["staleSources"], Value::Null, "no stale source is listed");
    let watch = api.next("endpointslices").await;
    assert_eq!((watch.is_watch(), watch.resource_version()), (true, Some("20")));
    let _slices = watch.stream();

    let (calls, failed) = poller.finish().await;
    assert!(calls > 50, "the poller made only {calls} calls");
    assert_eq!(failed, 0, "{failed} of {calls} calls to web failed while the cluster and the watch changed");

    // 5. The Service is deleted: its instances leave with it.
    services.send("DELETED", kube_service("web", "10.96.0.20", "21"));
    eventually("web's Kubernetes instances and ClusterIP to leave", SETTLE, || async {
        let config = proxy.config_json().await;
        let vips = service_in(&config, "web").map(|(vips, _)| vips);
        (kubernetes_instances(&cp).await == 0 && vips == Some(Value::Null)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_namespaces_watches_only_the_named_namespaces() {
    let a = Backend::start("a").await;
    let api = FakeApi::start(&["services", "endpointslices"]).await;
    let cp = ControlPlane::start_with(
        &service("web", "http", &[]),
        &["--kube-api", &api.url(), "--kube-namespaces", "default"],
    )
    .await;
    let call = api.next("services").await;
    assert_eq!(call.path, "/api/v1/namespaces/default/services");
    call.list("ServiceList", "3", vec![kube_service("web", "10.96.0.20", "2")]);
    let call = api.next("endpointslices").await;
    assert_eq!(call.path, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices");
    call.list("EndpointSliceList", "3", vec![slice("web-a", "2", &a, Condition::Ready)]);
    eventually("web's instance from the default namespace", SETTLE, || async {
        (kubernetes_instances(&cp).await == 1).then_some(())
    })
    .await;
}

/// A Route object as `kubectl apply` would store it: all of web's calls to `backend`, with a
/// rule `timeout`.
fn route_object(version: &str, backend: &str, timeout: &str) -> Value {
    json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": "Route",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": version, "uid": "r-1",
                     "generation": 1, "creationTimestamp": "2026-12-03T10:00:00Z"},
        "spec": {"service": "web", "rules": [{"match": {"pathPrefix": "/"}, "timeout": timeout,
                                             "backends": [{"service": backend, "weight": 1}]}]}
    })
}

/// A Service with one slice (`name-0`) holding `backend`.
fn service_with_slice(name: &str, ip: &str, backend: &Backend) -> (Value, Value) {
    let mut s = slice(&format!("{name}-0"), "3", backend, Condition::Ready);
    s["metadata"]["labels"]["kubernetes.io/service-name"] = json!(name);
    (kube_service(name, ip, "2"), s)
}

async fn policy_errors(cp: &ControlPlane) -> Vec<String> {
    let status = cp.status().await;
    status["policyErrors"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_objects_from_the_cluster_route_traffic_and_a_bad_one_keeps_the_last_good() {
    const POLICY_KINDS: [&str; 5] = [
        "weft.dev/services",
        "weft.dev/routes",
        "weft.dev/trafficpolicies",
        "weft.dev/authorizationpolicies",
        "weft.dev/meshes",
    ];
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut resources = vec!["services", "endpointslices"];
    resources.extend(POLICY_KINDS);
    let api = FakeApi::start(&resources).await;
    // No policy file: everything comes from the cluster.
    let cp = ControlPlane::start_with("", &["--kube-api", &api.url(), "--kube-policy"]).await;
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: format!("controlPlane: {{address: \"{}\"}}\n", cp.url()),
        ..Default::default()
    })
    .await;

    // The cluster: Services web (a) and web-v2 (b); no policy object yet but an empty list of
    // each kind (the CRDs are installed).
    let (web_svc, web_slice) = service_with_slice("web", "10.96.0.30", &a);
    let (v2_svc, v2_slice) = service_with_slice("web-v2", "10.96.0.31", &b);
    api.next("services").await.list("ServiceList", "5", vec![web_svc, v2_svc]);
    let _services = api.next("services").await.stream();
    api.next("endpointslices").await.list("EndpointSliceList", "5", vec![web_slice, v2_slice]);
    let _slices = api.next("endpointslices").await.stream();
    let mut watches = Vec::new();
    for kind in POLICY_KINDS {
        let mut list = api.next(kind).await;
        assert!(list.path.starts_with("/apis/weft.dev/v1alpha1/"), "{}", list.path);
        if kind == "weft.dev/meshes" {
            // A policy kind the API server does not serve yet (its CRD applied late): the
            // policy source is stale, the endpoints are not, and the list is retried.
            list.fail(404, "NotFound");
            eventually("the policy source to be stale", SETTLE, || async {
                (stale_source(&cp, "kubernetes-policy").await == 1.0).then_some(())
            })
            .await;
            assert_eq!(stale(&cp).await, 0.0, "a policy watch failing does not make the endpoints stale");
            list = api.next(kind).await;
        }
        list.list("List", "5", vec![]);
        watches.push(api.next(kind).await.stream());
    }
    let routes = &watches[1];
    routes_only_to(&proxy, &["a"], 5).await;
    eventually("the policy source to be current", SETTLE, || async {
        (stale_source(&cp, "kubernetes-policy").await == 0.0).then_some(())
    })
    .await;

    // kubectl apply of a Route: web's calls go to web-v2.
    routes.send("ADDED", route_object("30", "web-v2", "2s"));
    routes_only_to(&proxy, &["b"], 10).await;
    assert!(policy_errors(&cp).await.is_empty());

    // An edit the decoder refuses (the CRD schema would catch it at apply, but the control
    // plane does not rely on that): reported by object and field, the last good Route serves.
    routes.send("MODIFIED", route_object("31", "web-v2", "soon"));
    let errors = eventually("the bad Route to be reported", SETTLE, || async {
        let e = policy_errors(&cp).await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(errors.iter().any(|e| e.starts_with("Route default/web: spec.rules[0].timeout: ")), "{errors:?}");
    assert!(metric_sum(&cp.metrics().await, "weft_control_policy_errors", &[]) >= 1.0);
    routes_only_to(&proxy, &["b"], 10).await;

    // An edit that decodes but breaks a rule across documents (a backend nobody declares):
    // held back, reported, and the last good version serves.
    routes.send("MODIFIED", route_object("32", "nobody", "2s"));
    let errors = eventually("the dangling Route to be reported", SETTLE, || async {
        let e = policy_errors(&cp).await;
        e.iter().any(|e| e.contains("held back")).then_some(e)
    })
    .await;
    assert!(errors.iter().all(|e| e.starts_with("Route default/web")), "{errors:?}");
    routes_only_to(&proxy, &["b"], 10).await;

    // Fixed, then deleted: traffic follows, and nothing is reported any more.
    routes.send("MODIFIED", route_object("33", "web-v2", "3s"));
    eventually("the fixed Route to clear the errors", SETTLE, || async {
        policy_errors(&cp).await.is_empty().then_some(())
    })
    .await;
    routes.send("DELETED", route_object("34", "web-v2", "3s"));
    routes_only_to(&proxy, &["a"], 10).await;
}
