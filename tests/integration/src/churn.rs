//! Config churn: a policy that changes the way a live mesh does (a canary's route weights,
//! endpoint weights, an endpoint leaving and coming back), numbered so that `/config` shows
//! which change is applied; for the config-change fault test and the soak.

use std::net::SocketAddr;

use tokio::time::{Duration, Instant};

use crate::config::{document, service, service_weighted};
use crate::proxy::Proxy;

/// Change `i` of `api` (endpoints `api`) and its canary `api-v2` (`v2`): cycles through the
/// route's weights, the endpoints' weights and the endpoint set. `rule` (YAML lines such as
/// `retry: {…}`) goes on the route's one rule, `traffic` is the TrafficPolicy for `api`.
pub fn churned_policy(i: usize, api: &[SocketAddr], v2: SocketAddr, rule: &[&str], traffic: &str) -> String {
    let canary = 1 + (i / 3) % 9;
    let mut spec = format!(
        "service: api\nrules:\n  - match: {{pathPrefix: /}}\n    \
         backends: [{{service: api, weight: {}}}, {{service: api-v2, weight: {canary}}}]\n    \
         timeout: {}ms\n",
        10 - canary,
        timeout_ms(i)
    );
    for line in rule {
        spec += &format!("    {line}\n");
    }
    let weights: Vec<(SocketAddr, u32)> = match i % 3 {
        1 => api.iter().enumerate().map(|(n, a)| (*a, 1 + ((i + n) % 5) as u32)).collect(),
        2 if (i / 3).is_multiple_of(2) => api[..api.len() - 1].iter().map(|a| (*a, 1)).collect(),
        _ => api.iter().map(|a| (*a, 1)).collect(),
    };
    service_weighted("api", "http", &weights)
        + &service("api-v2", "http", &[v2])
        + &document("Route", "api", &spec)
        + &document("TrafficPolicy", "api", &format!("service: api\n{traffic}"))
}

/// The route timeout of change `i`: odd, so never a whole second (which `/config` would show
/// as `11s`), and its own, so `/config` tells the changes apart.
fn timeout_ms(i: usize) -> usize {
    10_001 + 2 * i
}

/// Writes `policy` (change `i`) into the proxy's config file, has it reloaded at once with
/// SIGHUP (the folder watch waits 100 ms for an editor to finish writing) and waits until
/// `/config` shows it. Panics after 10 s.
pub async fn apply_change(proxy: &Proxy, i: usize, policy: &str) {
    proxy.rewrite_config(policy);
    proxy.sighup();
    let marker = format!("{}ms", timeout_ms(i));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.admin_get("/config").await.text().contains(&marker) {
        assert!(Instant::now() < deadline, "change {i} was not applied within 10 s\n{}", proxy.log_tail(20));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
