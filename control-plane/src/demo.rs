//! `weft demo`: a small mesh on loopback to see Weft work. A "frontend" app behind its own
//! sidecar calls two "payments" instances through the sidecar; a load loop drives it, one
//! payments instance is killed and restarted, and a summary line every 2 s shows the proxy
//! absorbing the failure (retries, ejection) with no failed request.

use std::convert::Infallible;
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
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};

/// The sidecar config the demo runs: the same file users copy from `config/`.
const PROXY_CONFIG: &str = include_str!("../../config/proxy-demo.yaml");
const APP: &str = "127.0.0.1:8080";
const INBOUND: &str = "127.0.0.1:4143";
const PAYMENTS_PORT: &str = "127.0.0.1:9101";
const ADMIN: &str = "127.0.0.1:4191";
const PAYMENTS: [(&str, &str); 2] = [("payments-1", "127.0.0.1:9001"), ("payments-2", "127.0.0.1:9002")];

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

/// Runs the demo until Ctrl-C. Returns the exit code.
pub fn run(args: &[String]) -> u8 {
    if let Some(a) = args.first() {
        eprintln!("weft demo takes no arguments (got {a:?}); it runs on fixed loopback ports");
        return 2;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft demo: cannot start a runtime: {e}");
            return 1;
        }
    };
    rt.block_on(demo())
}

async fn demo() -> u8 {
    let mut payments = Vec::new();
    for (name, addr) in PAYMENTS {
        match start_payments(name, addr).await {
            Ok(s) => payments.push(Some(s)),
            Err(e) => return port_error(addr, &e),
        }
    }
    let frontend = DemoServer::start(APP, |_req| async {
        match get(PAYMENTS_PORT, "/v1/charge", "payments").await {
            Ok((status, body)) => text(status, format!("frontend -> {}", String::from_utf8_lossy(&body))),
            Err(e) => text(StatusCode::BAD_GATEWAY, format!("frontend could not call payments: {e}")),
        }
    })
    .await;
    let _frontend = match frontend {
        Ok(s) => s,
        Err(e) => return port_error(APP, &e),
    };

    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    let config = dir.join("proxy.yaml");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&config, PROXY_CONFIG)) {
        eprintln!("weft demo: cannot write {}: {e}", config.display());
        return 1;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft demo: cannot find my own binary: {e}");
            return 1;
        }
    };
    let mut proxy = match tokio::process::Command::new(exe)
        .args(["proxy", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("proxy.log")).expect("log file in temp dir")))
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft demo: cannot start the sidecar: {e}");
            return 1;
        }
    };
    let ready_by = Instant::now() + Duration::from_secs(10);
    loop {
        if matches!(get(ADMIN, "/ready", "admin").await, Ok((StatusCode::OK, _))) {
            break;
        }
        if Instant::now() > ready_by || proxy.try_wait().ok().flatten().is_some() {
            eprintln!("weft demo: the sidecar did not become ready; its log is {}", dir.join("proxy.log").display());
            return 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!("weft demo: frontend (127.0.0.1:8080) and payments-1/-2 (127.0.0.1:9001/9002) behind one weft-proxy");
    println!("  load:     GET {INBOUND}/ -> [inbound] frontend -> [outbound {PAYMENTS_PORT}] payments");
    println!("  metrics:  curl http://{ADMIN}/metrics");
    println!("  explain:  curl 'http://{ADMIN}/explain?host=payments&path=/v1/charge'");
    println!("  log:      {}", dir.join("proxy.log").display());
    println!("  payments-2 is killed at 8s and restarted at 20s; Ctrl-C stops everything.\n");
    println!(
        "{:>5} {:>7} {:>7} {:>7} {:>8} {:>8} {:>10} {:>10} {:>8} {:>9}",
        "time", "req/s", "ok", "failed", "p50", "p99", "payments-1", "payments-2", "retries", "ejections"
    );

    let tally = Arc::new(Tally::default());
    for _ in 0..4 {
        tokio::spawn(load_worker(tally.clone()));
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    let mut last_ok = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let t = started.elapsed().as_secs();
        if (8..10).contains(&t)
            && let Some(s) = payments[1].take()
        {
            s.stop();
            println!("  -- payments-2 killed");
        }
        if (20..22).contains(&t) && payments[1].is_none() {
            match start_payments(PAYMENTS[1].0, PAYMENTS[1].1).await {
                Ok(s) => {
                    payments[1] = Some(s);
                    println!("  -- payments-2 restarted");
                }
                Err(e) => eprintln!("  -- payments-2 could not restart: {e}"),
            }
        }
        print_summary(&tally, t, &mut last_ok).await;
    }
    let _ = proxy.start_kill();
    let _ = proxy.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "\nweft demo: stopped; {} ok, {} failed",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    0
}

async fn load_worker(tally: Arc<Tally>) {
    loop {
        let t0 = Instant::now();
        match get(INBOUND, "/", "frontend").await {
            Ok((StatusCode::OK, body)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let idx = usize::from(body.ends_with(b"payments-2"));
                tally.by_instance[idx].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tally.latencies_us.lock().await.push(t0.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(20)).await;
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
    println!(
        "{:>4}s {:>7} {:>7} {:>7} {:>6}µs {:>6}µs {:>10} {:>10} {:>8} {:>9}",
        t,
        (ok - *last_ok) / 2,
        ok,
        tally.failed.load(Ordering::Relaxed),
        pct(0.5),
        pct(0.99),
        tally.by_instance[0].load(Ordering::Relaxed),
        tally.by_instance[1].load(Ordering::Relaxed),
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
