//! `weft demo`: a whole mesh on loopback to see Weft work. The control plane (`weft serve`),
//! a "frontend" app and two "payments" instances, each behind its own `weft-proxy` that
//! registers itself with the control plane. A load loop calls the frontend, which calls
//! payments through its sidecar; one payments instance (app and sidecar) is killed and later
//! restarted, and a summary line every 2 s shows the mesh absorbing it: retries and ejection
//! first, then the control plane withdrawing the dead instance, then re-adding it.
//!
//! Every process it starts is a child that dies with it; Ctrl-C or SIGTERM stops them all.
//! Their logs and configs are removed on exit unless `WEFT_DEMO_KEEP` is set (to read what
//! a sidecar said about a failed request).

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

/// The configs the demo runs: the same files users copy from `config/demo/`.
const POLICY: &str = include_str!("../../config/demo/policy.yaml");
const FRONTEND_PROXY: &str = include_str!("../../config/demo/frontend-proxy.yaml");
const PAYMENTS_PROXIES: [&str; 2] =
    [include_str!("../../config/demo/payments-1-proxy.yaml"), include_str!("../../config/demo/payments-2-proxy.yaml")];
const APP: &str = "127.0.0.1:8080";
const INBOUND: &str = "127.0.0.1:4143";
const PAYMENTS_PORT: &str = "127.0.0.1:9101";
const ADMIN: &str = "127.0.0.1:4191";
const PAYMENTS_ADMINS: [&str; 2] = ["127.0.0.1:4192", "127.0.0.1:4193"];
const PAYMENTS: [(&str, &str); 2] = [("payments-1", "127.0.0.1:9001"), ("payments-2", "127.0.0.1:9002")];
/// DESIGN.md's default control-plane ports.
const CONTROL_LISTEN: &str = "127.0.0.1:8086";
const CONTROL_ADMIN: &str = "127.0.0.1:9990";
const TRUST_DOMAIN: &str = "cluster.local";
/// Short, so the demo shows a dead instance being withdrawn within a few seconds.
const REGISTRATION_TTL: &str = "3s";

/// A demo HTTP server; dropping the handle's task closes the listener and every connection.
struct DemoServer {
    task: JoinHandle<()>,
}

impl DemoServer {
    async fn start<F, Fut>(addr: &str, handler: F) -> std::io::Result<DemoServer>
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handler = handler.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(DemoServer { task })
    }

    fn stop(self) {
        self.task.abort();
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

async fn start_payments(name: &'static str, addr: &str) -> std::io::Result<DemoServer> {
    DemoServer::start(addr, move |_req| async move {
        // A little work, with some jitter, so latencies look like a service's.
        tokio::time::sleep(Duration::from_micros(500 + fastrand::u64(..1500))).await;
        text(StatusCode::OK, format!("charged by {name}"))
    })
    .await
}

/// One GET over a fresh HTTP/1.1 connection; returns status and body.
async fn get(addr: &str, path: &str, host: &str) -> Result<(StatusCode, Bytes), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path).header("host", host).body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    by_instance: [AtomicU64; 2],
    latencies_us: Mutex<Vec<u64>>,
}

/// Runs the demo until Ctrl-C or SIGTERM. Returns the exit code.
pub fn run() -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft demo: cannot start a runtime: {e}");
            return 1;
        }
    };
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let code = rt.block_on(async {
        let mut mesh = Mesh { dir: dir.clone(), children: Vec::new() };
        let code = demo(&mut mesh).await;
        mesh.stop_all().await;
        code
    });
    if std::env::var_os("WEFT_DEMO_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// The child processes the demo started, stopped together at the end.
struct Mesh {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Mesh {
    fn write(&self, name: &str, text: &str) -> Result<PathBuf, u8> {
        let path = self.dir.join(name);
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|_| std::fs::write(&path, text));
        written.map(|_| path).map_err(|e| {
            eprintln!("weft demo: cannot write {}: {e}", self.dir.join(name).display());
            1
        })
    }

    /// Starts `weft ARGS…` (this same binary) as a child named `name`, logging to `name.log`.
    fn spawn(&mut self, name: &str, args: &[&str]) -> Result<(), u8> {
        let exe = std::env::current_exe().map_err(|e| {
            eprintln!("weft demo: cannot find my own binary: {e}");
            1u8
        })?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).map_err(|e| {
            eprintln!("weft demo: cannot create a log file in {}: {e}", self.dir.display());
            1u8
        })?;
        let child = tokio::process::Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                eprintln!("weft demo: cannot start {name}: {e}");
                1u8
            })?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Kills one child at once (SIGKILL: a crash, no goodbye to the control plane).
    async fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    async fn stop_all(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.start_kill();
        }
        for (_, child) in &mut self.children {
            let _ = child.wait().await;
        }
        self.children.clear();
    }

    /// A fresh dev CA for this run and one join token per sidecar: `ca/`, `join-tokens` (for
    /// the control plane), `NAME.token` beside each sidecar's config (its `joinTokenFile`) and
    /// `trust.pem` (the root the sidecars verify the control plane's certificate by).
    /// Returns the CA directory and the join-token file.
    fn dev_ca(&self) -> Result<(String, String), u8> {
        let failed = |e: &dyn std::fmt::Display| {
            eprintln!("weft demo: cannot make a dev CA: {e}");
            1u8
        };
        let (cert, key) = crate::ca::Authority::generate_root(TRUST_DOMAIN).map_err(|e| failed(&e))?;
        let ca_dir = self.dir.join("ca");
        std::fs::create_dir_all(&ca_dir).map_err(|e| failed(&e))?;
        crate::ca::write_file(&ca_dir.join(crate::ca::CA_CERT_FILE), &cert, false).map_err(|e| failed(&e))?;
        crate::ca::write_file(&ca_dir.join(crate::ca::CA_KEY_FILE), &key, true).map_err(|e| failed(&e))?;
        crate::ca::write_file(&self.dir.join("trust.pem"), &cert, false).map_err(|e| failed(&e))?;
        let mut lines = String::from("# join token, then the SPIFFE id it earns\n");
        let sidecars = [("frontend", "frontend"), (PAYMENTS[0].0, "payments"), (PAYMENTS[1].0, "payments")];
        for (name, service) in sidecars {
            let token = random_token().map_err(|e| failed(&e))?;
            lines.push_str(&format!("{token} spiffe://{TRUST_DOMAIN}/ns/demo/sa/{service}\n"));
            crate::ca::write_file(&self.dir.join(format!("{name}.token")), &token, true).map_err(|e| failed(&e))?;
        }
        let tokens = self.dir.join("join-tokens");
        crate::ca::write_file(&tokens, &lines, true).map_err(|e| failed(&e))?;
        Ok((ca_dir.display().to_string(), tokens.display().to_string()))
    }

    fn log(&self, name: &str) -> String {
        self.dir.join(format!("{name}.log")).display().to_string()
    }

    /// Waits until `addr`'s `/ready` is 200; an error names the log to read.
    async fn wait_ready(&mut self, name: &str, addr: &str) -> Result<(), u8> {
        let ready_by = Instant::now() + Duration::from_secs(15);
        loop {
            if matches!(get(addr, "/ready", "admin").await, Ok((StatusCode::OK, _))) {
                return Ok(());
            }
            let exited = self.children.iter_mut().any(|(n, c)| n == name && c.try_wait().ok().flatten().is_some());
            if Instant::now() > ready_by || exited {
                eprintln!("weft demo: {name} did not become ready; its log is {}", self.log(name));
                return Err(1);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts payments instance `i`'s sidecar.
    async fn start_payments_proxy(&mut self, i: usize) -> Result<(), u8> {
        let name = PAYMENTS[i].0;
        let config = self.write(&format!("{name}-proxy.yaml"), PAYMENTS_PROXIES[i])?;
        let config = config.display().to_string();
        self.spawn(&format!("{name}-proxy"), &["proxy", "--config", &config])?;
        self.wait_ready(&format!("{name}-proxy"), PAYMENTS_ADMINS[i]).await
    }
}

async fn demo(mesh: &mut Mesh) -> u8 {
    match start_mesh(mesh).await {
        Ok((payments, _frontend)) => drive(mesh, payments).await,
        Err(code) => code,
    }
}

/// Brings up the control plane, the apps and their sidecars.
async fn start_mesh(mesh: &mut Mesh) -> Result<(Vec<Option<DemoServer>>, DemoServer), u8> {
    if let Err(e) = std::fs::create_dir_all(&mesh.dir) {
        eprintln!("weft demo: cannot create {}: {e}", mesh.dir.display());
        return Err(1);
    }
    let policy = mesh.write("policy/policy.yaml", POLICY)?;
    let policy_dir = policy.parent().unwrap_or(&mesh.dir).display().to_string();
    let (ca_dir, tokens) = mesh.dev_ca()?;
    mesh.spawn(
        "control-plane",
        &[
            "serve",
            "--policy",
            &policy_dir,
            "--listen",
            CONTROL_LISTEN,
            "--admin",
            CONTROL_ADMIN,
            "--registration-ttl",
            REGISTRATION_TTL,
            "--ca",
            &ca_dir,
            "--join-token-file",
            &tokens,
        ],
    )?;
    mesh.wait_ready("control-plane", CONTROL_ADMIN).await?;

    let mut payments = Vec::new();
    for (name, addr) in PAYMENTS {
        match start_payments(name, addr).await {
            Ok(s) => payments.push(Some(s)),
            Err(e) => return Err(port_error(addr, &e)),
        }
    }
    let frontend = DemoServer::start(APP, |_req| async {
        match get(PAYMENTS_PORT, "/v1/charge", "payments").await {
            Ok((status, body)) => text(status, format!("frontend -> {}", String::from_utf8_lossy(&body))),
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("frontend could not call payments: {e}")),
        }
    })
    .await
    .map_err(|e| port_error(APP, &e))?;

    for i in 0..PAYMENTS.len() {
        mesh.start_payments_proxy(i).await?;
    }
    let config = mesh.write("frontend-proxy.yaml", FRONTEND_PROXY)?.display().to_string();
    mesh.spawn("frontend-proxy", &["proxy", "--config", &config])?;
    mesh.wait_ready("frontend-proxy", ADMIN).await?;

    // Both payments instances are registered once the frontend's sidecar lists them.
    let by = Instant::now() + Duration::from_secs(15);
    while payments_endpoints().await < 2 {
        if Instant::now() > by {
            eprintln!(
                "weft demo: the frontend's sidecar did not learn the payments instances; logs in {}",
                mesh.dir.display()
            );
            return Err(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((payments, frontend))
}

/// Endpoints of payments that the frontend's sidecar knows (from the control plane).
async fn payments_endpoints() -> u64 {
    let metrics = get(ADMIN, "/metrics", "admin").await.map(|(_, b)| String::from_utf8_lossy(&b).into_owned());
    metrics
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("weft_endpoints{") && l.contains("service=\"payments\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn drive(mesh: &mut Mesh, mut payments: Vec<Option<DemoServer>>) -> u8 {
    println!("weft demo: a mesh on loopback (logs and configs in {})", mesh.dir.display());
    println!(
        "  control plane  discovery https://{CONTROL_LISTEN} (TLS), admin http://{CONTROL_ADMIN} (/metrics, /v1/status)"
    );
    println!("  frontend       app {APP}, sidecar inbound {INBOUND}, admin http://{ADMIN}");
    for (i, (name, addr)) in PAYMENTS.iter().enumerate() {
        println!("  {name:<14} app {addr}, sidecar admin http://{}, registered by its sidecar", PAYMENTS_ADMINS[i]);
    }
    println!("  load:     GET {APP}/ -> frontend -> [sidecar {PAYMENTS_PORT}] =mTLS=> [sidecar] payments");
    println!("  status:   weft status            metrics: curl http://{ADMIN}/metrics");
    println!(
        "  mTLS:     strict; certificates from a fresh dev CA in {}/ca, issued by the control plane",
        mesh.dir.display()
    );
    println!("  authz:    payments answers only spiffe://{TRUST_DOMAIN}/ns/demo/sa/frontend");
    println!("  payments-2 (app and sidecar) is killed at 8s and restarted at 20s; Ctrl-C stops everything.\n");
    println!(
        "{:>5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10} {:>10} {:>9} {:>8} {:>9}",
        "time", "req/s", "ok", "failed", "p50", "p99", "payments-1", "payments-2", "endpoints", "retries", "ejections"
    );

    let tally = Arc::new(Tally::default());
    let load: Vec<JoinHandle<()>> = (0..4).map(|_| tokio::spawn(load_worker(tally.clone()))).collect();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let mut last_ok = 0;
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stop => break,
        }
        let t = started.elapsed().as_secs();
        if (8..10).contains(&t)
            && let Some(s) = payments[1].take()
        {
            s.stop();
            mesh.kill("payments-2-proxy").await;
            println!("  -- payments-2 killed (app and sidecar, no goodbye to the control plane)");
        }
        if (20..22).contains(&t) && payments[1].is_none() {
            match start_payments(PAYMENTS[1].0, PAYMENTS[1].1).await {
                Ok(s) => {
                    payments[1] = Some(s);
                    match mesh.start_payments_proxy(1).await {
                        Ok(()) => println!("  -- payments-2 restarted; its sidecar registers again"),
                        Err(_) => eprintln!("  -- payments-2's sidecar could not restart"),
                    }
                }
                Err(e) => eprintln!("  -- payments-2 could not restart: {e}"),
            }
        }
        print_summary(&tally, t, &mut last_ok).await;
    }
    // The load stops before the mesh does: a request caught by the demo's own teardown is not
    // a failure of the mesh.
    for worker in &load {
        worker.abort();
    }
    for worker in load {
        let _ = worker.await;
    }
    println!(
        "\nweft demo: stopping; {} ok, {} failed",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    0
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn load_worker(tally: Arc<Tally>) {
    loop {
        let t0 = Instant::now();
        match get(APP, "/", "frontend").await {
            Ok((StatusCode::OK, body)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let idx = usize::from(body.ends_with(b"payments-2"));
                tally.by_instance[idx].fetch_add(1, Ordering::Relaxed);
            }
            outcome => {
                let failed = tally.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if failed <= SHOWN_FAILURES {
                    eprintln!("  -- request failed: {}", failure_reason(outcome));
                }
            }
        }
        tally.latencies_us.lock().await.push(t0.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first few failed requests are shown with their reason; more would flood the table.
const SHOWN_FAILURES: u64 = 5;

/// A failed request in one line: the status and body (which names the hop that failed, and a
/// sidecar's `weft-proxy-error` reason), or the client's error.
fn failure_reason(outcome: Result<(StatusCode, Bytes), String>) -> String {
    match outcome {
        Ok((status, body)) => {
            let body = String::from_utf8_lossy(&body);
            format!("{status}: {}", body.trim_end())
        }
        Err(e) => format!("no response from the frontend: {e}"),
    }
}

async fn print_summary(tally: &Tally, t: u64, last_ok: &mut u64) {
    let mut lat = std::mem::take(&mut *tally.latencies_us.lock().await);
    lat.sort_unstable();
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0);
    let ok = tally.ok.load(Ordering::Relaxed);
    let metrics = get(ADMIN, "/metrics", "admin")
        .await
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let endpoints = payments_endpoints().await;
    println!(
        "{:>4}s {:>7} {:>7} {:>7} {:>6}µs {:>6}µs {:>10} {:>10} {:>9} {:>8} {:>9}",
        t,
        (ok - *last_ok) / 2,
        ok,
        tally.failed.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        tally.by_instance[0].load(Ordering::Relaxed),
        tally.by_instance[1].load(Ordering::Relaxed),
        endpoints,
        sum_metric(&metrics, "weft_retries_total"),
        sum_metric(&metrics, "weft_endpoint_ejections_total"),
    );
    *last_ok = ok;
}

/// Sums every series of one metric in Prometheus text format.
fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn port_error(addr: &str, e: &std::io::Error) -> u8 {
    eprintln!("weft demo: cannot listen on {addr}: {e}; is another demo or proxy running?");
    1
}

/// 32 hex characters from the system's secure random source.
fn random_token() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "no secure random source".to_string())?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
