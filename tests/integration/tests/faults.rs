//! Faults under steady load: every backend restarted in turn (from the file config and through
//! the control plane), a thousand config changes, SIGTERM, and overload past the concurrency
//! limit and past the process's file-descriptor limit. Each test counts what the load lost
//! (nothing, for idempotent requests) and prints the figures it measured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use weft_integration::churn::{apply_change, churned_policy};
use weft_integration::client::{must, send};
use weft_integration::metrics::metric_sum;
use weft_integration::process::{cpu_time, open_fds, rss_kib};
use weft_integration::watch::quantile;
use weft_integration::{
    Backend, ControlPlane, Limit, LoadReport, Proxy, ProxyConfig, Req, catch_all_route, eventually, run_load, service,
    traffic_policy,
};

const SETTLE: Duration = Duration::from_secs(15);

/// Retries that cover an endpoint going away mid-request (GETs are replayable).
const RETRY: &str = "retry: {attempts: 3, on: [connect-failure, reset, 5xx], backoffBase: 5ms, backoffMax: 50ms}";

/// Ejects a stopped endpoint after two failures and probes it back soon after it returns;
/// pooled connections idle for a second are closed, so descriptors can be counted after load.
const OUTLIERS: &str = "connectTimeout: 1s\nidleTimeout: 1s\n\
    outlierDetection: {consecutiveFailures: 2, baseEjection: 300ms, maxEjection: 1s, maxEjectionPercent: 50}";

fn api_policy(endpoints: &[SocketAddr]) -> String {
    service("api", "http", endpoints) + &catch_all_route("api", &[RETRY]) + &traffic_policy("api", OUTLIERS)
}

/// Load that runs until [`Steady::finish`]: `workers` keep-alive clients sending GETs to `api`
/// (paths with a short backend delay keep the rate, and so the request count, bounded).
struct Steady {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl Steady {
    fn start(addr: SocketAddr, workers: usize, path: &'static str) -> Steady {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(run_load(addr, workers, Limit::Until(stop.clone()), move |i| {
            Req::get(&format!("{path}/{i}")).host("api")
        }));
        Steady { stop, task }
    }

    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let report = self.task.await.expect("load task");
        assert!(report.total() < weft_integration::load::MAX_REQUESTS, "the load ran until told to stop");
        report
    }
}

/// Waits until `backend` has served `n` more requests than it had when called.
async fn serves(backend: &Backend, n: usize, what: &str) {
    let from = backend.hits();
    eventually(&format!("{} to {what}", backend.name()), SETTLE, || async {
        (backend.hits() >= from + n).then_some(())
    })
    .await;
}

/// Stops `backends[i]`, lets the others carry the load a while, starts it again on its port and
/// waits until it takes traffic, for each in turn.
async fn restart_each(backends: &mut [Backend]) {
    for i in 0..backends.len() {
        backends[i].stop().await;
        let other = &backends[(i + 1) % backends.len()];
        serves(other, 100, "carry the load while one is down").await;
        backends[i].restart().await;
        serves(&backends[i], 20, "take traffic again after its restart").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_every_backend_fails_no_idempotent_request() {
    let mut backends = vec![Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let proxy = Proxy::start(ProxyConfig { policy: api_policy(&addrs), ..Default::default() }).await;

    let load = Steady::start(proxy.outbound(), 4, "/delay/5/roll");
    for b in &backends {
        serves(b, 20, "take part of the load").await;
    }
    restart_each(&mut backends).await;
    let report = load.finish().await;

    eprintln!("rolling restart, file config: {}", report.summary());
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(report.total() > 500, "{}", report.summary());
    let metrics = proxy.metrics().await;
    let ejections = metric_sum(&metrics, "weft_endpoint_ejections_total", &[("service", "api")]);
    assert!(ejections >= 1.0, "no stopped endpoint was ever ejected:\n{metrics}");
}

/// A rolling deploy as an orchestrator does it: each instance is deregistered, the proxy stops
/// sending it calls, it restarts, and it is registered again; no request needs a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_through_the_control_plane_fails_no_request() {
    let mut backends = vec![Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let addrs: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let policy_without = |gone: Option<usize>| {
        let live: Vec<SocketAddr> =
            addrs.iter().enumerate().filter(|(i, _)| Some(*i) != gone).map(|(_, a)| *a).collect();
        // No retries: a request sent to an instance that is still registered must not fail.
        service("api", "http", &live) + &catch_all_route("api", &[]) + &traffic_policy("api", "idleTimeout: 1s")
    };
    let cp = ControlPlane::start(&policy_without(None)).await;
    let proxy = Proxy::start(ProxyConfig {
        proxy_spec: format!("controlPlane: {{address: \"{}\"}}", cp.url()),
        ..Default::default()
    })
    .await;

    let load = Steady::start(proxy.outbound(), 4, "/delay/5/deploy");
    for b in &backends {
        serves(b, 20, "take part of the load").await;
    }
    for i in 0..backends.len() {
        let version = proxy.config_version().await;
        cp.write_policy(&policy_without(Some(i)));
        eventually("the proxy to apply the deregistration", SETTLE, || async {
            (proxy.config_version().await > version).then_some(())
        })
        .await;
        // Requests already sent to it when the update landed finish before it stops.
        eventually("calls in flight at the instance to finish", SETTLE, || async {
            (backends[i].in_flight() == 0).then_some(())
        })
        .await;
        let hits = backends[i].hits();
        backends[i].stop().await;
        assert!(backends[i].hits() <= hits + 4, "the deregistered instance kept getting calls");
        serves(&backends[(i + 1) % 3], 100, "carry the load").await;
        backends[i].restart().await;
        cp.write_policy(&policy_without(None));
        serves(&backends[i], 20, "take traffic once registered again").await;
    }
    let report = load.finish().await;

    eprintln!("rolling restart, control plane: {}", report.summary());
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(report.total() > 500, "{}", report.summary());
}

/// Change `i` of the thousand (see `churn::churned_policy`), with retries and short-lived pooled
/// connections.
fn changed_policy(i: usize, api: &[SocketAddr], v2: SocketAddr) -> String {
    churned_policy(i, api, v2, &[RETRY], OUTLIERS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_config_changes_under_load_lose_nothing_and_leak_nothing() {
    let backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let v2 = Backend::start("v2").await;
    let api: Vec<SocketAddr> = backends.iter().map(Backend::addr).collect();
    let proxy = Proxy::start(ProxyConfig { policy: changed_policy(0, &api, v2.addr()), ..Default::default() }).await;
    let pid = proxy.pid();
    let fds_idle = open_fds(pid);
    let rss_start = rss_kib(pid);

    let load = Steady::start(proxy.outbound(), 4, "/delay/5/changing");
    let started = Instant::now();
    let mut rss_warm = 0;
    for i in 1..=1000 {
        apply_change(&proxy, i, &changed_policy(i, &api, v2.addr())).await;
        if i == 100 {
            rss_warm = rss_kib(pid);
        }
    }
    let changing = started.elapsed();
    let report = load.finish().await;
    let rss_end = rss_kib(pid);
    let fds_busy = open_fds(pid);
    let fds_end = eventually("the proxy's descriptors to return to idle", SETTLE, || async {
        let n = open_fds(pid);
        (n <= fds_idle + 5).then_some(n)
    })
    .await;

    eprintln!(
        "1000 config changes in {changing:?}: {}\n  RSS {rss_start} KiB at start, {rss_warm} after 100 changes, \
         {rss_end} after 1000; fds {fds_idle} idle before, {fds_busy} at the end of load, {fds_end} idle after",
        report.summary()
    );
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(report.backends.get("v2").is_some_and(|n| *n > 0), "the canary took part: {}", report.summary());
    assert!(proxy.config_version().await >= 1000, "each change made a version");
    let growth = rss_end.saturating_sub(rss_warm);
    assert!(growth < 8 * 1024, "RSS grew {growth} KiB over 900 changes ({rss_warm} → {rss_end} KiB)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_request_and_refuses_none_while_listening() {
    let api = Backend::start("api").await;
    let mut proxy = Proxy::start(ProxyConfig {
        proxy_spec: "shutdownGrace: 20s".into(),
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await;
    // Every other request is held 200 ms by the backend, so calls are in flight at the signal.
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(proxy.outbound(), 8, Limit::Until(stop.clone()), |i| {
        let path = if i.is_multiple_of(2) { format!("/delay/200/{i}") } else { format!("/quick/{i}") };
        Req::get(&path).host("api")
    }));
    serves(&api, 200, "serve the load").await;
    eventually("slow calls in flight", SETTLE, || async { (api.in_flight() >= 2).then_some(()) }).await;

    let term = Instant::now();
    proxy.sigterm();
    eventually("/ready to turn 503", Duration::from_secs(5), || async {
        (proxy.admin_get("/ready").await.status == 503).then_some(())
    })
    .await;
    // The app keeps calling out while it drains: new connections, one request each.
    serves(&api, 200, "serve calls made after SIGTERM").await;
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();
    let load_ended = term.elapsed();

    let status = proxy.wait_exit(Duration::from_secs(15)).await;
    let exited = term.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {exited:?} after SIGTERM once its load ended"));
    eprintln!("SIGTERM under load: {}; load ended {load_ended:?} after the signal, exit {exited:?}", report.summary());
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(status.success(), "exit after a clean drain: {status}");
    assert!(exited < Duration::from_secs(20), "exited at {exited:?}, past the 20 s grace period");
    let refused = TcpStream::connect(proxy.outbound()).await;
    assert!(refused.is_err(), "the listener closes with the process");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sustained_overload_is_refused_fast_and_counted_and_the_proxy_recovers() {
    let api = Backend::start("api").await;
    let policy = service("api", "http", &[api.addr()])
        + &traffic_policy("api", "limits: {maxConcurrentRequests: 20, maxPendingRequests: 20}");
    let proxy = Proxy::start(ProxyConfig { policy, ..Default::default() }).await;
    let pid = proxy.pid();
    let rss_before = rss_kib(pid);

    // 200 clients against a limit of 20, each call held 500 ms by the backend. A refused client
    // asks again at once, so the count of requests, not a time, bounds the run (a few seconds).
    let load = tokio::spawn(run_load(proxy.outbound(), 200, Limit::Requests(30_000), |i| {
        Req::get(&format!("/delay/500/{i}")).host("api")
    }));
    let mut admin_worst = Duration::ZERO;
    let mut rss_max = rss_before;
    let mut admin_answers = 0;
    while !load.is_finished() {
        let asked = Instant::now();
        let resp = send(proxy.admin(), &Req::get("/metrics")).await.expect("the admin port answers under overload");
        assert_eq!(resp.status, 200);
        admin_worst = admin_worst.max(asked.elapsed());
        admin_answers += 1;
        rss_max = rss_max.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = load.await.unwrap();
    let refused = report.sorted_latencies(503);
    let served = report.sorted_latencies(200);
    let (p50, p99) = (quantile(&refused, 0.5), quantile(&refused, 0.99));
    let metrics = proxy.metrics().await;
    let counted = metric_sum(&metrics, "weft_requests_total", &[("service", "api"), ("code", "503")]);
    eprintln!(
        "overload: {}\n  refused p50 {p50:?} p99 {p99:?}, served p50 {:?}; {counted} refusals counted; \
         RSS {rss_before} → max {rss_max} KiB; admin answered {admin_answers} times, worst {admin_worst:?}",
        report.summary(),
        quantile(&served, 0.5),
    );
    assert_eq!(report.errors, 0, "every call got an answer: {}", report.summary());
    assert_eq!(report.total(), report.status(200) + report.status(503), "{}", report.summary());
    assert!(report.status(503) > 10_000 && report.status(200) >= 20, "{}", report.summary());
    assert!(report.samples.iter().all(|s| s.contains("concurrency-limit")), "{}", report.summary());
    // A refusal does not wait for a slot: it is much faster than the 500 ms a slot takes.
    assert!(p99 < Duration::from_millis(250), "refusals p99 {p99:?}");
    assert_eq!(counted, report.status(503) as f64, "each refusal is counted:\n{metrics}");
    assert!(rss_max - rss_before < 16 * 1024, "RSS {rss_before} → {rss_max} KiB under overload");

    for i in 0..20 {
        let resp = must(proxy.outbound(), &Req::get(&format!("/delay/10/after/{i}")).host("api")).await;
        assert_eq!(resp.status, 200, "once the load falls every call is served: {resp:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_fd_limit_wait_without_spinning_and_the_proxy_recovers() {
    const FDS: usize = 256;
    let api = Backend::start("api").await;
    let proxy = Proxy::start(ProxyConfig {
        policy: service("api", "http", &[api.addr()]),
        fd_limit: Some(FDS as u64),
        ..Default::default()
    })
    .await;
    let pid = proxy.pid();
    let fds_idle = open_fds(pid);
    assert_eq!(must(proxy.outbound(), &Req::get("/before").host("api")).await.status, 200);

    // More connections than the proxy has descriptors: those it cannot accept wait in the
    // listen backlog.
    let mut clients = Vec::new();
    for _ in 0..400 {
        clients.push(TcpStream::connect(proxy.outbound()).await.expect("connect (the backlog takes it)"));
    }
    eventually("the proxy to run out of descriptors", SETTLE, || async { (open_fds(pid) >= FDS).then_some(()) }).await;
    // With connections waiting on every listener, the admin one too, nothing may spin; the
    // admin call is answered (a descriptor is kept in reserve for the admin port).
    let cpu_before = cpu_time(pid);
    let measured = Instant::now();
    let admin = proxy.admin();
    let scrape = tokio::spawn(async move { send(admin, &Req::get("/metrics")).await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_time(pid) - cpu_before;
    let wall = measured.elapsed();
    let at_limit = open_fds(pid);
    let first = tokio::time::timeout(Duration::from_secs(5), scrape).await;
    let first = first.expect("the admin port answers at the fd limit").unwrap().expect("a /metrics response");
    assert_eq!(first.status, 200);
    // Again: the reserve descriptor was taken back after the first admin connection.
    let metrics = send(proxy.admin(), &Req::get("/metrics")).await.expect("the admin port answers again").text();
    let errors = metric_sum(&metrics, "weft_accept_errors_total", &[("direction", "outbound"), ("reason", "fd-limit")]);

    drop(clients);
    let resp = eventually("a new call to succeed once the connections close", SETTLE, || async {
        send(proxy.outbound(), &Req::get("/after").host("api")).await.ok().filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(resp.backend(), Some("api"));
    let fds_end = eventually("the descriptors to be released", SETTLE, || async {
        let n = open_fds(pid);
        (n <= fds_idle + 5).then_some(n)
    })
    .await;
    eprintln!(
        "fd limit {FDS}: {at_limit} fds open at the limit, CPU {cpu:?} over {wall:?}, {errors} accept errors counted; \
         fds {fds_idle} idle before, {fds_end} after"
    );
    assert!(cpu < wall / 4, "the proxy spins at the fd limit: {cpu:?} CPU in {wall:?}");
    assert!(errors >= 2.0, "accept failures at the limit are counted:\n{metrics}");
}
