//! Hot reload: config file swaps and SIGHUP apply new routes without failing requests; invalid
//! configs are rejected with a log line and the old config keeps serving.

use std::time::Duration;

use weft_integration::client::must;
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, document, eventually, run_load, service};

/// Services `api` (backend `old`) and `api-v2` (backend `new`), and a route sending `api` calls
/// to `target`.
fn policy(old: &Backend, new: &Backend, target: &str) -> String {
    service("api", "http", &[old.addr()])
        + &service("api-v2", "http", &[new.addr()])
        + &document(
            "Route",
            "api",
            &format!(
                "service: api\nrules:\n  - match: {{pathPrefix: /}}\n    backends: [{{service: {target}, weight: 1}}]\n"
            ),
        )
}

async fn answering_backend(proxy: &Proxy) -> String {
    let resp = must(proxy.outbound(), &Req::get("/which").host("api")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.backend().unwrap_or("-").to_string()
}

/// Lines of the proxy's logs that report a rejected config.
fn rejections(proxy: &Proxy) -> usize {
    proxy.logs().lines().filter(|l| l.to_ascii_lowercase().contains("reject")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_swap_under_load_changes_routes_with_zero_failures() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let proxy = Proxy::start(ProxyConfig { policy: policy(&old, &new, "api"), ..Default::default() }).await;
    let v0 = proxy.config_version().await;

    let load = tokio::spawn(run_load(proxy.outbound(), 4, Limit::For(Duration::from_secs(4)), |i| {
        Req::get(&format!("/r/{i}")).host("api")
    }));
    eventually("load to reach the old backend", Duration::from_secs(10), || async { (old.hits() >= 50).then_some(()) })
        .await;
    proxy.rewrite_config(&policy(&old, &new, "api-v2"));
    eventually("the config version to move on", Duration::from_secs(10), || async {
        (proxy.config_version().await > v0).then_some(())
    })
    .await;
    eventually("the new route to take traffic", Duration::from_secs(10), || async { (new.hits() > 0).then_some(()) })
        .await;
    let report = load.await.unwrap();

    assert_eq!(report.failures(), 0, "{}", report.summary());
    eprintln!("policy file swapped under load: {}", report.summary());
    assert!(report.backends.get("old").is_some_and(|n| *n > 0), "{}", report.summary());
    assert!(report.backends.get("new").is_some_and(|n| *n > 0), "{}", report.summary());
    let old_hits = old.hits();
    for _ in 0..10 {
        assert_eq!(answering_backend(&proxy).await, "new");
    }
    assert_eq!(old.hits(), old_hits, "nothing reaches the old route after the swap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_keeps_the_proxy_running() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let mut proxy = Proxy::start(ProxyConfig { policy: policy(&old, &new, "api"), ..Default::default() }).await;
    let v0 = proxy.config_version().await;
    assert_eq!(answering_backend(&proxy).await, "old");

    proxy.rewrite_config(&policy(&old, &new, "api-v2"));
    proxy.sighup();
    eventually("the reloaded route to answer", Duration::from_secs(10), || async {
        (answering_backend(&proxy).await == "new").then_some(())
    })
    .await;
    assert!(proxy.config_version().await > v0);

    // SIGHUP's default action would end the process; the proxy must treat it as "reload".
    proxy.sighup();
    assert_eq!(proxy.wait_exit(Duration::from_millis(500)).await, None, "SIGHUP stopped the proxy");
    assert_eq!(answering_backend(&proxy).await, "new");
    assert_eq!(proxy.admin_get("/ready").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_reload_keeps_the_old_config() {
    let old = Backend::start("old").await;
    let new = Backend::start("new").await;
    let proxy = Proxy::start(ProxyConfig { policy: policy(&old, &new, "api"), ..Default::default() }).await;
    let v0 = proxy.config_version().await;

    // An unknown field (a typo of `backends`).
    let typo = policy(&old, &new, "api-v2").replace("backends:", "backendz:");
    let before = rejections(&proxy);
    proxy.rewrite_config(&typo);
    eventually("a log line rejecting the typo", Duration::from_secs(10), || async {
        (rejections(&proxy) > before && proxy.logs().contains("backendz")).then_some(())
    })
    .await;
    assert_eq!(proxy.config_version().await, v0, "the rejected config must not count as a version");
    assert_eq!(answering_backend(&proxy).await, "old");
    assert_eq!(proxy.admin_get("/ready").await.status, 200);

    // Broken YAML, picked up by SIGHUP as well as by the watcher.
    let before = rejections(&proxy);
    proxy.rewrite_config("kind: Route\nspec: {service: api, rules: [\n");
    proxy.sighup();
    eventually("a log line rejecting the broken YAML", Duration::from_secs(10), || async {
        (rejections(&proxy) > before).then_some(())
    })
    .await;
    assert_eq!(proxy.config_version().await, v0);
    assert_eq!(answering_backend(&proxy).await, "old");
    assert_eq!(new.hits(), 0);

    // A valid file afterwards is still taken.
    proxy.rewrite_config(&policy(&old, &new, "api-v2"));
    eventually("the valid config to apply", Duration::from_secs(10), || async {
        (answering_backend(&proxy).await == "new").then_some(())
    })
    .await;
    assert!(proxy.config_version().await > v0);
}
