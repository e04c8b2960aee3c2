//! `weft status`: what the control plane sees — connected proxies with the version each has
//! applied and how far behind it is, and registrations per service. A table for people,
//! `-o json` (the admin API's `/v1/status` as is) for scripts.

use std::fmt::Write as _;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use weft_api::discovery::StatusReport;

const DEFAULT_URL: &str = "http://127.0.0.1:9990";

/// The flags `weft status` and `weft stat` share.
#[derive(clap::Args, Debug)]
pub struct ViewArgs {
    /// The control plane's admin address
    #[arg(long, value_name = "URL", default_value = DEFAULT_URL)]
    control_plane: String,
    /// A table for people, or JSON for scripts
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// `weft status`.
pub fn run(args: ViewArgs) -> u8 {
    run_view(args, "weft status", table, serde_json::to_string_pretty)
}

/// `weft stat`.
pub fn run_stat(args: ViewArgs) -> u8 {
    run_view(args, "weft stat", |_, report| stat_table(report), |r| serde_json::to_string_pretty(&r.traffic))
}

fn run_view(
    args: ViewArgs,
    name: &str,
    text: impl Fn(&str, &StatusReport) -> String,
    json_of: impl Fn(&StatusReport) -> serde_json::Result<String>,
) -> u8 {
    let url = args.control_plane;
    let json = args.output == Output::Json;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start a runtime: {e}");
            return 1;
        }
    };
    let body = match rt.block_on(fetch(&url)) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{name}: {url}: {e}");
            return 1;
        }
    };
    match serde_json::from_slice::<StatusReport>(&body) {
        Ok(report) if json => match json_of(&report) {
            Ok(j) => {
                println!("{j}");
                0
            }
            Err(e) => {
                eprintln!("{name}: {e}");
                1
            }
        },
        Ok(report) => {
            print!("{}", text(&url, &report));
            0
        }
        Err(e) => {
            eprintln!("{name}: {url} answered something that is not a status report: {e}");
            1
        }
    }
}

async fn fetch(url: &str) -> Result<Bytes, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// admin addresses are supported")?;
    let authority = rest.split('/').next().unwrap_or_default().to_string();
    let stream = tokio::time::timeout(std::time::Duration::from_secs(3), TcpStream::connect(&authority))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("cannot connect ({e}); is `weft serve` running?"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req =
        Request::get("/v1/status").header("host", authority).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("/v1/status answered {status}: {}", String::from_utf8_lossy(&body).trim()));
    }
    Ok(body)
}

/// The traffic rows as aligned text.
pub fn stat_table(r: &StatusReport) -> String {
    let mut out = String::new();
    if r.traffic.is_empty() {
        out.push_str("no traffic reported yet (proxies report every 2 s; rates need two reports)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<9} {:<28} {:<20} {:>7} {:>9} {:>8} {:>9} {:>9} {:>9}",
        "DIRECTION", "SERVICE", "ROUTE", "PROXIES", "RPS", "SUCCESS", "P50", "P95", "P99"
    );
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.1}ms", s * 1000.0));
    for t in &r.traffic {
        let _ = writeln!(
            out,
            "{:<9} {:<28} {:<20} {:>7} {:>9.1} {:>7.2}% {:>9} {:>9} {:>9}",
            t.direction,
            t.service,
            t.route,
            t.proxies,
            t.requests_per_second,
            t.success_rate * 100.0,
            ms(t.p50),
            ms(t.p95),
            ms(t.p99)
        );
    }
    out
}

/// The report as aligned text.
pub fn table(url: &str, r: &StatusReport) -> String {
    let mut out = String::new();
    let policy = if r.policy_valid {
        "valid".to_string()
    } else {
        format!("REJECTED ({} problems; the last good policy is serving)", r.policy_errors.len())
    };
    let _ = writeln!(out, "control plane {url}  version {}  policy {policy}", r.version);
    if let Some(at) = r.ca_not_after {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = at as f64 - now as f64;
        let _ = writeln!(
            out,
            "CA certificate expires in {}",
            weft_api::duration::format_duration(std::time::Duration::from_secs_f64(left.max(0.0)))
        );
    }
    for p in r.policy_errors.iter().take(10) {
        let _ = writeln!(out, "  {p}");
    }
    for s in &r.stale_sources {
        let _ = writeln!(out, "registry {s} STALE: it cannot be read now; its last known instances are serving");
    }
    let _ = writeln!(out, "\n{} proxies connected", r.proxies.len());
    if !r.proxies.is_empty() {
        let _ = writeln!(
            out,
            "{:<36} {:<24} {:<18} {:<8} {:>9} {:>8} {:<10} {:<8}  CERTIFICATE",
            "PROXY", "SERVICE", "APPLIED", "STATE", "LAG", "RESYNCS", "MTLS", "VERSION"
        );
        for p in &r.proxies {
            let state = if p.acked_version >= p.sent_version { "current" } else { "behind" };
            let _ = writeln!(
                out,
                "{:<36} {:<24} {:<18} {:<8} {:>8.3}s {:>8} {:<10} {:<8}  {}",
                p.name,
                p.service,
                p.acked_version,
                state,
                p.lag_seconds,
                p.resyncs,
                p.mtls.as_deref().unwrap_or("-"),
                p.proxy_version.as_deref().unwrap_or("-"),
                certificate(p)
            );
        }
        let near: Vec<&str> = r.proxies.iter().filter(|p| p.cert_near_expiry).map(|p| p.name.as_str()).collect();
        if !near.is_empty() {
            let _ = writeln!(out, "certificates near expiry (renewal overdue): {}", near.join(", "));
        }
    }
    let _ = writeln!(out, "\n{} services", r.services.len());
    if !r.services.is_empty() {
        let _ = writeln!(out, "{:<36} {:>9}  SOURCES", "SERVICE", "INSTANCES");
        for s in &r.services {
            let total: usize = s.instances.values().sum();
            let sources: Vec<String> = s.instances.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "{:<36} {:>9}  {}", s.service, total, sources.join(" "));
        }
    }
    out
}

/// "expires in 23h59m", "EXPIRED 5m ago", with "NEAR EXPIRY" when renewal is overdue.
fn certificate(p: &weft_api::discovery::ProxyStatus) -> String {
    let Some(left) = p.cert_expires_in_seconds else { return "-".to_string() };
    let span = |secs: f64| {
        let s = secs.abs() as u64;
        if s >= 3600 { format!("{}h{:02}m", s / 3600, s % 3600 / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
    };
    let text = if left < 0.0 { format!("EXPIRED {} ago", span(left)) } else { format!("expires in {}", span(left)) };
    if p.cert_near_expiry && left >= 0.0 { format!("{text} NEAR EXPIRY") } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::discovery::{ProxyStatus, ServiceStatus};

    #[test]
    fn the_table_says_who_is_behind() {
        let report = StatusReport {
            version: 12,
            policy_valid: false,
            policy_errors: vec!["p.yaml:3: spec.ports[0].port: must be between 1 and 65535, found 0".into()],
            proxies: vec![ProxyStatus {
                name: "frontend.shop@127.0.0.1:4143".into(),
                service: "frontend.shop".into(),
                sent_version: 12,
                acked_version: 11,
                lag_seconds: 0.25,
                cert_expires_in_seconds: Some(3.0 * 3600.0 + 120.0),
                cert_near_expiry: true,
                ..ProxyStatus::default()
            }],
            services: vec![ServiceStatus {
                service: "payments.shop".into(),
                instances: [("self-registration".to_string(), 2)].into(),
            }],
            ..StatusReport::default()
        };
        let text = table("http://127.0.0.1:9990", &report);
        assert!(text.contains("REJECTED (1 problems"), "{text}");
        assert!(text.contains("p.yaml:3: spec.ports[0].port"), "{text}");
        assert!(text.contains("frontend.shop@127.0.0.1:4143") && text.contains("behind"), "{text}");
        assert!(text.contains("self-registration=2"), "{text}");
        assert!(!text.contains("STALE"), "{text}");
        let mut report = report;
        report.stale_sources = vec!["kubernetes".into()];
        let text = table("http://127.0.0.1:9990", &report);
        assert!(text.contains("registry kubernetes STALE"), "{text}");
        report.traffic = vec![weft_api::discovery::TrafficSummary {
            direction: "outbound".into(),
            service: "payments.shop".into(),
            route: "api".into(),
            proxies: 2,
            requests_per_second: 12.5,
            success_rate: 0.995,
            p50: Some(0.0012),
            p95: None,
            p99: Some(0.25),
            window_seconds: 30.0,
        }];
        let stat = stat_table(&report);
        assert!(stat.contains("payments.shop") && stat.contains("12.5") && stat.contains("99.50%"), "{stat}");
        assert!(stat.contains("1.2ms") && stat.contains("250.0ms") && stat.contains(" -"), "{stat}");
        assert!(text.contains("expires in 3h02m NEAR EXPIRY"), "{text}");
        assert!(text.contains("certificates near expiry (renewal overdue): frontend.shop@127.0.0.1:4143"), "{text}");
    }
}
