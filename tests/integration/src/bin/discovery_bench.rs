//! Control-plane scale figures (run through `benches/discovery`): convergence time of a change
//! over N subscribed proxies, and the control plane's memory with a large mesh.
//!
//! Convergence: N watch streams (one h2c connection each, in this process) subscribe; then one
//! new instance registers, K times in a row, and each subscriber's time from the registration
//! request to the delta arriving is recorded (and acked, which feeds the control plane's own
//! `weft_control_convergence_seconds`). Scale: a policy folder with S services of E endpoints
//! each is loaded, and RSS is read from /proc before and after subscribers fetch all of it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use weft_integration::TempDir;
use weft_integration::client::{self, Req};
use weft_integration::metrics::metric_sum;
use weft_integration::net::free_addrs;
use weft_integration::watch::{Watcher, mentions_endpoint, quantile};

const USAGE: &str = "\
Usage: discovery_bench --weft PATH [--subscribers 100,1000] [--changes 20]
                       [--services 10000] [--endpoints-per-service 10]
";

struct Args {
    weft: PathBuf,
    subscribers: Vec<usize>,
    changes: usize,
    services: usize,
    endpoints_per_service: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        weft: PathBuf::new(),
        subscribers: vec![100, 1000],
        changes: 20,
        services: 10_000,
        endpoints_per_service: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<usize>().map_err(|_| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--weft" => a.weft = v.into(),
            "--subscribers" => a.subscribers = v.split(',').map(num).collect::<Result<_, _>>()?,
            "--changes" => a.changes = num(v)?,
            "--services" => a.services = num(v)?,
            "--endpoints-per-service" => a.endpoints_per_service = num(v)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.weft.as_os_str().is_empty() {
        return Err("--weft PATH (the release `weft` binary) is required".into());
    }
    Ok(a)
}

struct Server {
    child: Child,
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Server {
    async fn start(weft: &Path, policy: &Path, log: &Path) -> Result<Server, String> {
        let addrs = free_addrs(2);
        let (listen, admin) = (addrs[0], addrs[1]);
        let child = Command::new(weft)
            .args(["serve", "--policy"])
            .arg(policy)
            .args(["--listen", &listen.to_string(), "--admin", &admin.to_string(), "--registration-ttl", "1s"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", weft.display()))?;
        let mut s = Server { child, listen, admin };
        let end = Instant::now() + Duration::from_secs(300);
        loop {
            if let Some(status) = s.child.try_wait().map_err(|e| e.to_string())? {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                return Err(format!("weft serve exited with {status}: {}", tail.join("\n")));
            }
            if matches!(client::send(admin, &Req::get("/ready")).await, Ok(r) if r.status == 200) {
                return Ok(s);
            }
            if Instant::now() > end {
                return Err("weft serve not ready in 300 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn rss_mib(&self) -> f64 {
        weft_integration::process::rss_kib(self.child.id()) as f64 / 1024.0
    }

    async fn metrics(&self) -> String {
        client::send(self.admin, &Req::get("/metrics")).await.map(|r| r.text()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upper bound of the histogram bucket holding quantile `q` (from Prometheus text).
fn histogram_quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let count = metric_sum(text, &format!("{name}_count"), &[]);
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets.into_iter().find(|(_, n)| *n >= q * count).map(|(le, _)| le)
}

async fn connect_many(addr: std::net::SocketAddr, n: usize, query: &str) -> Result<Vec<Watcher>, String> {
    let mut out = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let q = format!("{query}&name=sim-{i}");
        pending.spawn(async move { Watcher::connect(addr, &q).await.map_err(|e| e.to_string()) });
        // Keep a bounded number of handshakes in flight.
        while pending.len() >= 64 {
            let (mut w, snap) = pending.join_next().await.expect("spawned").map_err(|e| e.to_string())??;
            w.ack(snap["version"].as_u64().unwrap_or(0)).await;
            out.push(w);
        }
    }
    while let Some(r) = pending.join_next().await {
        let (mut w, snap) = r.map_err(|e| e.to_string())??;
        w.ack(snap["version"].as_u64().unwrap_or(0)).await;
        out.push(w);
    }
    Ok(out)
}

async fn convergence(args: &Args, n: usize, report: &mut String) -> Result<(), String> {
    let dir = TempDir::new("bench-conv");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).map_err(|e| e.to_string())?;
    std::fs::write(
        policy.join("p.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: api}\nspec:\n  ports: [{port: 80}]\n  endpoints: [{address: 127.0.0.1:1}]\n",
    )
    .map_err(|e| e.to_string())?;
    let server = Server::start(&args.weft, &policy, &dir.path().join("serve.log")).await?;
    let rss_before = server.rss_mib();
    let t = Instant::now();
    let watchers = connect_many(server.listen, n, "service=sim").await?;
    let connect_time = t.elapsed();
    let mut samples: Vec<Duration> = Vec::with_capacity(n * args.changes);
    let mut registrants = Vec::new();
    let mut watchers = watchers;
    for c in 0..args.changes {
        let addr = format!("127.0.0.3:{}", 3000 + c);
        let start = Instant::now();
        let (r, _) =
            Watcher::connect(server.listen, &format!("service=api&address={addr}")).await.map_err(|e| e.to_string())?;
        registrants.push(r);
        let mut tasks = tokio::task::JoinSet::new();
        for mut w in watchers.drain(..) {
            let addr = addr.clone();
            tasks.spawn(async move {
                while let Some((at, msg)) = w.next(Duration::from_secs(60)).await {
                    if mentions_endpoint(&msg, "api.default", &addr) {
                        w.ack(msg["version"].as_u64().unwrap_or(0)).await;
                        return Ok((w, at - start));
                    }
                }
                Err("a subscriber did not see the change in 60 s".to_string())
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (w, d) = r.map_err(|e| e.to_string())??;
            samples.push(d);
            watchers.push(w);
        }
    }
    samples.sort();
    // Let the last acks land before reading the server's histogram.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let metrics = server.metrics().await;
    let name = "weft_control_convergence_seconds";
    let _ = writeln!(
        report,
        "| {n} | {} | {:.2} | {:.2} | {:.2} | ≤ {} ms | {:.1} | {:.1} | {:.2} |",
        samples.len(),
        quantile(&samples, 0.5).as_secs_f64() * 1e3,
        quantile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        histogram_quantile(&metrics, name, 0.99).map_or("?".into(), |s| format!("{}", s * 1e3)),
        rss_before,
        server.rss_mib(),
        connect_time.as_secs_f64(),
    );
    Ok(())
}

async fn scale(args: &Args, report: &mut String) -> Result<(), String> {
    let dir = TempDir::new("bench-scale");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).map_err(|e| e.to_string())?;
    // The YAML reader refuses files over 100,000 nodes (an alias-bomb guard): 100 services a file.
    let per_file = 100;
    let mut written = 0;
    for f in 0..args.services.div_ceil(per_file) {
        let mut text = String::new();
        for s in f * per_file..((f + 1) * per_file).min(args.services) {
            let _ = write!(
                text,
                "---\napiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  ports: [{{port: 80}}]\n  endpoints:\n"
            );
            for e in 0..args.endpoints_per_service {
                let n = s * args.endpoints_per_service + e;
                let _ = writeln!(text, "    - {{address: \"10.{}.{}.{}:8080\"}}", n >> 16 & 255, n >> 8 & 255, n & 255);
                written += 1;
            }
        }
        std::fs::write(policy.join(format!("services-{f:03}.yaml")), text).map_err(|e| e.to_string())?;
    }
    let t = Instant::now();
    let server = Server::start(&args.weft, &policy, &dir.path().join("serve.log")).await?;
    let load_time = t.elapsed();
    let idle = server.rss_mib();
    // Ten proxies that may reach everything fetch the whole mesh.
    let t = Instant::now();
    let mut watchers = Vec::new();
    let mut bytes = 0;
    for i in 0..10 {
        let (w, snap) =
            Watcher::connect(server.listen, &format!("service=all-{i}")).await.map_err(|e| e.to_string())?;
        bytes = snap.to_string().len();
        watchers.push(w);
    }
    let fetch = t.elapsed() / 10;
    let after = server.rss_mib();
    let _ = writeln!(
        report,
        "| {} | {written} | {:.1} | {idle:.1} | {after:.1} | {:.1} | {:.0} |",
        args.services,
        load_time.as_secs_f64(),
        bytes as f64 / 1e6,
        fetch.as_secs_f64() * 1e3
    );
    drop(watchers);
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("discovery_bench: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mut report = String::from(
        "## Convergence (registration request → delta received by every subscriber)\n\n\
         | subscribers | samples | p50 ms | p99 ms | max ms | server p99 (publish→ack, bucket) | RSS before MiB | RSS after MiB | connect all s |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for &n in &args.subscribers {
        if let Err(e) = convergence(&args, n, &mut report).await {
            eprintln!("discovery_bench: convergence with {n} subscribers: {e}");
            std::process::exit(1);
        }
        eprintln!("done: {n} subscribers");
    }
    report.push_str(
        "\n## Scale (one policy folder; 10 subscribers that may reach every service)\n\n\
         | services | endpoints | load + 1 s warm-up, s | RSS idle MiB | RSS after 10 full snapshots MiB | snapshot MB | fetch ms |\n\
         |---|---|---|---|---|---|---|\n",
    );
    if let Err(e) = scale(&args, &mut report).await {
        eprintln!("discovery_bench: scale: {e}");
        std::process::exit(1);
    }
    print!("{report}");
}
