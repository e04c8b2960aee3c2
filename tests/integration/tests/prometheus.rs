//! A real Prometheus (Debian's `prometheus`) scrapes two proxies and `weft serve` while they
//! carry real mTLS traffic and config changes, and every query of the chart's Grafana dashboard
//! (charts/weft/files/grafana-dashboard.json, with Grafana's variables substituted as Grafana
//! would) returns a non-empty result whose every value is a number. The chart's alert rules are
//! loaded by the same Prometheus and must all evaluate without error. `.ci/run` installs the
//! package; without the binary the test says why it was skipped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use weft_integration::mesh::{ControlPlane, Pki, client_of_server, spiffe};
use weft_integration::net::free_addrs;
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, TempDir, client, document, eventually, run_load};

const SERVER_TOKEN: &str = "server-token-0123456789";
const CLIENT_TOKEN: &str = "client-token-0123456789";
/// Prometheus scrapes every second, so a 15 s rate window holds enough samples.
const RATE_WINDOW: &str = "15s";

fn chart_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/weft/files").join(name)
}

/// Prometheus in a child process, killed on drop (its log printed when a check failed).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Starts it scraping `targets` (each as its own job) every second, with the chart's alert
    /// rules loaded; waits until it answers.
    async fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let rules = chart_file("alerts.yaml");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [\"{}\"]\nscrape_configs:\n",
            rules.display()
        );
        for (job, addr) in targets {
            writeln!(config, "  - job_name: {job}\n    static_configs: [{{targets: [\"{addr}\"]}}]").unwrap();
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        // A port that was free a moment ago; another process taking it first makes Prometheus
        // exit, and the next attempt picks another.
        let log_path = dir.path().join("prometheus.log");
        for _ in 0..3 {
            let addr = free_addrs(1)[0];
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("spawn prometheus");
            for _ in 0..100 {
                if let Ok(r) = client::send(addr, &Req::get("/-/ready")).await
                    && r.status == 200
                {
                    return Prometheus { child, addr, dir };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "prometheus did not start on {addr}:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        panic!("prometheus did not start in three attempts");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` and its `data`, asserting the API said success.
    async fn api(&self, path: &str) -> serde_json::Value {
        let resp = client::must(self.addr, &Req::get(path)).await;
        let body: serde_json::Value =
            serde_json::from_str(&resp.text()).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", resp.text()));
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["data"].clone()
    }

    /// Evaluates `expr` now: the instant vector's samples.
    async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(expr))).await;
        assert_eq!(data["resultType"], "vector", "{expr}: {data}");
        data["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- prometheus log -----\n{}", self.log());
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query string.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

/// The dashboard's queries with Grafana's variables as Grafana fills them: `$service` is the
/// "All" value (`allValue`, a regex matching every service), `$__rate_interval` a window that
/// spans several scrapes.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart_file("grafana-dashboard.json")).unwrap()).unwrap();
    let all = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "service")
        .and_then(|v| v["allValue"].as_str())
        .expect("the service variable has an allValue")
        .to_string();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr.replace("$__rate_interval", RATE_WINDOW).replace("$service", &all);
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    assert!(queries.len() >= 15, "the dashboard has its queries: {queries:?}");
    queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_answers_from_a_real_prometheus_scraping_a_mesh_under_load() {
    if Command::new("prometheus").arg("--version").output().is_err() {
        eprintln!("skipped: `prometheus` is not installed (apt-get install prometheus; .ci/run does)");
        return;
    }
    let pki = Pki::new("prom");
    let policy = TempDir::new("prom-policy");
    let churn = |i: u32| {
        document(
            "Service",
            "churn",
            &format!("ports: [{{port: 80, protocol: http}}]\nendpoints: [{{address: \"127.0.0.1:{}\"}}]\n", 20000 + i),
        )
    };
    std::fs::write(policy.path().join("churn.yaml"), churn(0)).unwrap();
    let policy_dir = policy.path().display().to_string();
    let tokens = [(SERVER_TOKEN, spiffe("server")), (CLIENT_TOKEN, spiffe("client"))];
    let pairs: Vec<(&str, &str)> = tokens.iter().map(|(t, id)| (*t, id.as_str())).collect();
    let cp = ControlPlane::start_with(&pki, &pairs, "1h", &["--policy", &policy_dir]).await;

    let app = Backend::start("app").await;
    let server = Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: cp.tls_line(&pki, "server", SERVER_TOKEN),
        ..Default::default()
    })
    .await;
    let client = Proxy::start(client_of_server(cp.tls_line(&pki, "client", CLIENT_TOKEN), server.inbound())).await;

    let prom =
        Prometheus::start(&[("client", client.admin()), ("server", server.admin()), ("control", cp.admin())]).await;
    eventually("all three targets up", Duration::from_secs(15), || async {
        let up = prom.query("up == 1").await;
        (up.len() == 3).then_some(())
    })
    .await;

    // Real traffic for a few rate windows: one call in ten fails at the app, and the policy
    // changes every second so that versions are published and acknowledged (convergence).
    let load = tokio::spawn(run_load(client.upstream("server"), 4, Limit::For(Duration::from_secs(20)), |i| {
        Req::get(if i % 10 == 0 { "/status/500" } else { "/delay/2" })
    }));
    for i in 1..=20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let tmp = policy.path().join(".churn.tmp");
        std::fs::write(&tmp, churn(i)).unwrap();
        std::fs::rename(&tmp, policy.path().join("churn.yaml")).unwrap();
        if i % 5 == 0 {
            // A plaintext peer at the mTLS-only inbound port: a handshake error, counted.
            if let Ok(mut s) = tokio::net::TcpStream::connect(server.inbound()).await {
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: server\r\n\r\n").await;
                let _ = s.shutdown().await;
            }
        }
    }
    let report = load.await.unwrap();
    assert!(report.responses > 200, "{}", report.summary());

    // The service variable's own query lists the service that carried traffic.
    let values = prom.api("/api/v1/label/service/values?match[]=weft_requests_total").await;
    assert!(
        values.as_array().unwrap().iter().any(|v| v == "server"),
        "label_values(weft_requests_total, service): {values}"
    );

    let mut failures = Vec::new();
    let mut answered = Vec::new();
    for (title, expr) in dashboard_queries() {
        let samples = prom.query(&expr).await;
        let values: Vec<f64> =
            samples.iter().map(|s| s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)).collect();
        if values.is_empty() {
            failures.push(format!("{title}: `{expr}` returned no series"));
        } else if values.iter().any(|v| !v.is_finite()) {
            failures.push(format!("{title}: `{expr}` returned {values:?}"));
        } else {
            answered.push(format!("{title}: {} series, first {}", values.len(), values[0]));
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries without an answer:\n{}\nanswered:\n{}",
        failures.join("\n"),
        answered.join("\n")
    );
    eprintln!("{} dashboard queries answered:\n{}", answered.len(), answered.join("\n"));

    // The answers mean what the panels say: the success rate is about nine in ten (some of the
    // failures are retried into successes, so it may be higher), the proxies report two
    // connections, the inbound side counted requests of the `server` service.
    let success = prom
        .query(&format!(
            "sum(rate(weft_requests_total{{direction=\"outbound\",classification=\"success\",service=\"server\"}}[{RATE_WINDOW}])) \
             / sum(rate(weft_requests_total{{direction=\"outbound\",service=\"server\"}}[{RATE_WINDOW}]))"
        ))
        .await;
    let success: f64 = success[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((0.8..1.0).contains(&success), "one call in ten fails at the app: success rate {success}");
    let connected = prom.query("sum(weft_control_proxies_connected)").await;
    assert_eq!(connected[0]["value"][1], "2", "two proxies connected: {connected:?}");
    // Each of the four plaintext peers, once the next scrape has seen it.
    eventually("the plaintext peers counted as handshake errors", Duration::from_secs(5), || async {
        let errors =
            prom.query("sum(weft_tls_handshake_errors_total{direction=\"inbound\",reason=\"plaintext\"})").await;
        (errors[0]["value"][1] == "4").then_some(())
    })
    .await;

    // Every alert rule of the chart evaluates without error against the real metrics.
    let rules = prom.api("/api/v1/rules").await;
    let mut evaluated = 0;
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "alert rule {} failed: {}", rule["name"], rule["lastError"]);
            evaluated += 1;
        }
    }
    let text = std::fs::read_to_string(chart_file("alerts.yaml")).unwrap();
    assert_eq!(evaluated, text.matches("- alert:").count(), "every alert rule loaded: {rules}");
}
