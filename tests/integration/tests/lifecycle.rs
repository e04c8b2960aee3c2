//! Lifecycle: SIGTERM drains (readiness drops, in-flight and late calls finish, then exit),
//! the grace period bounds the drain, `POST /shutdown` stops the proxy, and `weft-proxy await`
//! orders an app or a Job around the proxy (waits for ready, passes signals and exit codes on,
//! shuts the proxy down).

use std::time::{Duration, Instant};

use weft_integration::client::{H2Conn, must, send};
use weft_integration::mesh::{IdentityFiles, Pki, spiffe};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, eventually, service};

async fn proxy_with_grace(api: &Backend, grace: &str) -> Proxy {
    Proxy::start(ProxyConfig {
        proxy_spec: format!("shutdownGrace: {grace}"),
        policy: service("api", "http", &[api.addr()]),
        ..Default::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_serves_late_calls() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "5s").await;
    let outbound = proxy.outbound();
    let slow = tokio::spawn(async move { send(outbound, &Req::get("/delay/3000").host("api")).await });
    // An HTTP/2 client's stream in flight too: its connection is told GOAWAY, and the stream
    // still finishes.
    let h2 = H2Conn::connect(outbound).await.expect("h2 connect");
    let slow_h2 = tokio::spawn(async move { h2.send(&Req::get("/delay/3000/h2").host("api")).await });
    eventually("the slow requests to reach the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 2).then_some(())
    })
    .await;

    let term = Instant::now();
    proxy.sigterm();
    eventually("/ready to turn 503", Duration::from_secs(2), || async {
        (proxy.admin_get("/ready").await.status == 503).then_some(())
    })
    .await;
    assert_eq!(proxy.admin_get("/live").await.status, 200, "a draining proxy is still alive");

    // The app's own late call, on a new connection, while the slow one is still in flight.
    let late = must(proxy.outbound(), &Req::get("/late").host("api")).await;
    assert_eq!(late.status, 200, "late outbound call during the drain: {late:?}");
    assert_eq!(late.backend(), Some("api"));
    assert_eq!(api.in_flight(), 2, "the slow requests were still in flight");

    let slow = slow.await.unwrap().expect("the in-flight request completes");
    assert_eq!(slow.status, 200, "{slow:?}");
    let slow_h2 = slow_h2.await.unwrap().expect("the in-flight HTTP/2 stream completes");
    assert_eq!(slow_h2.status, 200, "{slow_h2:?}");
    assert_eq!(slow_h2.header("x-echo-path"), Some("/delay/3000/h2"));
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.unwrap_or_else(|| panic!("still running {:?} after SIGTERM (grace 5 s)", term.elapsed()));
    assert!(status.success(), "exit after a clean drain: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_at_the_grace_period_when_a_request_hangs() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "1s").await;
    let outbound = proxy.outbound();
    let _hung = tokio::spawn(async move { send(outbound, &Req::get("/delay/30000").host("api")).await });
    eventually("the hung request to reach the backend", Duration::from_secs(10), || async {
        (api.in_flight() == 1).then_some(())
    })
    .await;

    let term = Instant::now();
    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(6)).await;
    let took = term.elapsed();
    assert!(status.is_some(), "still running {took:?} after SIGTERM with a 1 s grace period");
    assert!(took >= Duration::from_millis(900), "exited after {took:?}, before the 1 s grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_promptly_when_idle() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "30s").await;
    let resp = must(proxy.outbound(), &Req::get("/").host("api")).await;
    assert_eq!(resp.status, 200);

    proxy.sigterm();
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("an idle proxy exits well before its 30 s grace period");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_stops_the_proxy() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "5s").await;

    let resp = proxy.admin_send(&Req::post("/shutdown", "")).await;
    assert!((200..300).contains(&resp.status), "POST /shutdown: {resp:?}");
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    let status = status.expect("the proxy exits after POST /shutdown");
    assert!(status.success(), "{status}");
}

/// The postStart hook of a non-native sidecar (`weft inject`): `await` with no command only
/// waits for `/ready`, and leaves the proxy running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_without_a_command_waits_for_ready_and_leaves_the_proxy_running() {
    let api = Backend::start("api").await;
    let proxy = proxy_with_grace(&api, "5s").await;
    let admin = proxy.admin().to_string();
    let run = |admin: String, timeout: &'static str| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(weft_integration::binaries::bin("weft-proxy"))
                .args(["await", "--admin", &admin, "--timeout", timeout])
                .output()
                .unwrap()
        })
    };
    let ready = run(admin, "5s").await.unwrap();
    assert_eq!(ready.status.code(), Some(0), "{}", String::from_utf8_lossy(&ready.stderr));
    assert_eq!(proxy.admin_get("/ready").await.status, 200, "the proxy is not shut down");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let started = Instant::now();
    let late = run(nobody, "300ms").await.unwrap();
    assert_eq!(late.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&late.stderr).contains("was not ready within"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// `weft-proxy await ARGS -- CMD`, as `weft inject` wraps a Job's command when native sidecars
/// are off; stderr is kept for failure messages.
fn spawn_await(args: &[&str], cmd: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(weft_integration::binaries::bin("weft-proxy"))
        .arg("await")
        .args(args)
        .arg("--")
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits up to `deadline` for `child` to exit; its status and stderr.
async fn finished(child: tokio::process::Child, deadline: Duration) -> (std::process::ExitStatus, String) {
    let out = tokio::time::timeout(deadline, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("weft-proxy await still runs after {deadline:?}"))
        .unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A Job's wrapped command: it starts only once the proxy is ready (here: once its certificate
/// files appear), its exit code is await's, and the proxy is then shut down, so the pod completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_runs_the_command_once_ready_passes_its_exit_code_on_and_shuts_the_proxy_down() {
    let pki = Pki::new("await-job");
    let issued = pki.issue("issued", &spiffe("report"), "1h");
    // The proxy's identity folder does not exist yet: strict mTLS keeps /ready at 503.
    let pending = IdentityFiles { dir: pki.root().join("identity") };
    let mut proxy = Proxy::spawn(&ProxyConfig { proxy_spec: pending.tls_line(), ..Default::default() });
    let admin = proxy.admin();
    eventually("the proxy answers /ready with 503 (no certificate yet)", Duration::from_secs(20), || async {
        send(admin, &Req::get("/ready")).await.ok().filter(|r| r.status == 503).map(|_| ())
    })
    .await;

    let ran = pki.root().join("ran");
    let script = format!("echo ran > '{}'; exit 3", ran.display());
    let job = spawn_await(&["--admin", &admin.to_string(), "--timeout", "30s"], &["sh", "-c", &script]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ran.exists(), "the command ran before the proxy was ready");
    assert_eq!(send(admin, &Req::get("/ready")).await.unwrap().status, 503);

    // The certificate arrives, the whole folder at once (as a Secret's symlink swap would).
    std::fs::rename(&issued.dir, &pending.dir).unwrap();
    let (status, stderr) = finished(job, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(3), "the command's exit code is await's: {stderr}");
    assert!(ran.exists(), "the command ran once the proxy was ready");
    let exit = proxy.wait_exit(Duration::from_secs(10)).await;
    let exit =
        exit.unwrap_or_else(|| panic!("the proxy still runs after await's POST /shutdown\n{}", proxy.log_tail(20)));
    assert!(exit.success(), "{exit}");
    assert!(proxy.logs().contains("shutdown requested through the admin port"), "{}", proxy.log_tail(20));
}

/// restartPolicy OnFailure reruns a failed container in the same pod: `--keep-proxy-on-failure`
/// leaves the proxy up for the next try, and shuts it down after the try that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keep_proxy_on_failure_only_a_successful_command_shuts_the_proxy_down() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "5s").await;
    let args = ["--admin", &proxy.admin().to_string(), "--keep-proxy-on-failure"];
    let (status, stderr) = finished(spawn_await(&args, &["sh", "-c", "exit 3"]), Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(3));
    assert!(stderr.contains("the proxy keeps running for the next try"), "{stderr}");
    assert_eq!(proxy.admin_get("/ready").await.status, 200, "the proxy is still up after a failed try");

    let (status, _) = finished(spawn_await(&args, &["true"]), Duration::from_secs(10)).await;
    assert!(status.success());
    assert!(proxy.wait_exit(Duration::from_secs(10)).await.is_some_and(|s| s.success()), "shut down after success");
}

/// Kubernetes stops a pod by sending SIGTERM to each container's PID 1, here `await`: the
/// command gets the signal and ends at once, not at the kubelet's SIGKILL 30 s later; a signal
/// before the proxy is ready ends the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_await_is_passed_on_and_ends_the_command_promptly() {
    let api = Backend::start("api").await;
    let mut proxy = proxy_with_grace(&api, "5s").await;
    let dir = weft_integration::TempDir::new("await-sigterm");
    let pid_file = dir.path().join("command.pid");
    let script = format!("echo $$ > '{}'; exec sleep 30", pid_file.display());
    let job = spawn_await(&["--admin", &proxy.admin().to_string()], &["sh", "-c", &script]);
    let command_pid: u32 = eventually("the command runs", Duration::from_secs(10), || async {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .await;
    let sent = Instant::now();
    kill("TERM", job.id().unwrap());
    let (status, stderr) = finished(job, Duration::from_secs(5)).await;
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?}", sent.elapsed());
    assert_eq!(status.code(), Some(143), "128 + SIGTERM, as a shell reports it: {stderr}");
    assert!(stderr.contains("SIGTERM passed on to the command"), "{stderr}");
    assert!(!std::path::Path::new(&format!("/proc/{command_pid}")).exists(), "the command is gone (and reaped)");
    assert!(proxy.wait_exit(Duration::from_secs(10)).await.is_some(), "the proxy is shut down too");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let waiting = spawn_await(&["--admin", &nobody, "--timeout", "30s"], &["true"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill("TERM", waiting.id().unwrap());
    let (status, stderr) = finished(waiting, Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(143));
    assert!(stderr.contains("SIGTERM before the proxy at") && stderr.contains("not running true"), "{stderr}");
}

fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
