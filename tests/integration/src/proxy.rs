//! The real `weft-proxy` in a child process: its config file, readiness, admin calls, signals
//! and logs. The process is killed when the handle drops; a failing test prints its log tail.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{self, Req, Resp};
use crate::config::document;
use crate::net::{Reserved, reserve_addrs};
use crate::tempdir::TempDir;

/// How long a proxy may take to report ready after it was spawned.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// What to run the proxy with; listener ports are picked by [`Proxy`].
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    /// The `service` the sidecar stands beside (its workload name); `client` when empty.
    pub service: String,
    /// Services that get a Consul-style upstream port of their own.
    pub upstreams: Vec<String>,
    /// When set, an inbound listener forwarding to this local app.
    pub inbound_app: Option<SocketAddr>,
    /// Extra YAML lines for the `Proxy` spec, e.g. `shutdownGrace: 5s`.
    pub proxy_spec: String,
    /// The other documents (Service, Route, TrafficPolicy…).
    pub policy: String,
    /// When set, the process's file-descriptor limit (RLIMIT_NOFILE, soft and hard), as a
    /// container's or a unit's `LimitNOFILE` would set it.
    pub fd_limit: Option<u64>,
    /// Which command line starts it (`weft-proxy --config FILE` unless set).
    pub launch: Launch,
    /// More flags, given before the config's.
    pub args: Vec<String>,
    /// More environment variables for the process.
    pub env: Vec<(String, String)>,
}

/// The ways to start the same proxy: its command line is one definition (`weft_proxy::cli`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Launch {
    /// `weft-proxy … --config FILE`
    #[default]
    Binary,
    /// `weft proxy … --config FILE`: the control plane's binary running the sidecar.
    Subcommand,
    /// `weft-proxy …` with `WEFT_PROXY_CONFIG=FILE`, as a container's environment sets it.
    Environment,
}

pub struct Proxy {
    child: Child,
    dir: TempDir,
    config_path: PathBuf,
    proxy_doc: String,
    outbound: SocketAddr,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    upstreams: Vec<(String, SocketAddr)>,
    /// The listeners' ports, kept from other tests for the proxy's whole life (restarts too).
    _ports: Reserved,
}

impl Proxy {
    /// Spawns the proxy and waits until `/ready` answers 200.
    ///
    /// Listener ports are reserved for it (`net::Reserved`); should one still be taken (by a
    /// process outside the tests: the proxy exits saying the address is in use), it is retried
    /// with new ports.
    pub async fn start(cfg: ProxyConfig) -> Proxy {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut proxy = Proxy::spawn(&cfg);
            match proxy.wait_ready(READY_DEADLINE).await {
                Ok(()) => return proxy,
                Err(_) if attempt < 3 && proxy.logs().to_lowercase().contains("in use") => {}
                Err(e) => panic!("weft-proxy did not become ready: {e}\n{}", proxy.log_tail(60)),
            }
        }
    }

    /// Spawns the proxy without waiting for it (for configs it should refuse).
    pub fn spawn(cfg: &ProxyConfig) -> Proxy {
        let dir = TempDir::new("proxy");
        // The config sits in a folder of its own: the proxy watches that folder, and log files
        // growing next to it would only add noise.
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).expect("create config dir");
        let config_path = config_dir.join("proxy.yaml");
        let wanted = 2 + usize::from(cfg.inbound_app.is_some()) + cfg.upstreams.len();
        let ports = reserve_addrs(wanted);
        let mut addrs = ports.addrs().iter().copied();
        let mut next = || addrs.next().expect("one free address per listener");
        let outbound = next();
        let admin = next();
        let inbound = cfg.inbound_app.map(|_| next());
        let upstreams: Vec<(String, SocketAddr)> = cfg.upstreams.iter().map(|s| (s.clone(), next())).collect();
        let proxy_doc = proxy_document(cfg, outbound, admin, inbound, &upstreams);
        write_atomically(&config_path, &format!("{proxy_doc}{}", cfg.policy));
        let program = crate::bin(if cfg.launch == Launch::Subcommand { "weft" } else { "weft-proxy" });
        let mut command = match cfg.fd_limit {
            // The shell sets the limit, then becomes the proxy: same process, same pid.
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")]).arg(program);
                sh
            }
            None => Command::new(program),
        };
        if cfg.launch == Launch::Subcommand {
            command.arg("proxy");
        }
        command.args(&cfg.args).envs(cfg.env.iter().map(|(k, v)| (k, v)));
        match cfg.launch {
            Launch::Environment => command.env("WEFT_PROXY_CONFIG", &config_path),
            Launch::Binary | Launch::Subcommand => command.arg("--config").arg(&config_path),
        };
        let child = command
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "stdout.log"))
            .stderr(log_file(dir.path(), "stderr.log"))
            .spawn()
            .expect("spawn weft-proxy");
        Proxy { child, dir, config_path, proxy_doc, outbound, admin, inbound, upstreams, _ports: ports }
    }

    /// Polls `/ready` until it answers 200; an error if the process exits or time runs out.
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return Err(format!("weft-proxy exited with {status}"));
            }
            if let Ok(resp) = client::send(self.admin, &Req::get("/ready")).await
                && resp.status == 200
            {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(format!("/ready not 200 within {deadline:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The outbound listener (the app's calls to other services, routed by Host).
    pub fn outbound(&self) -> SocketAddr {
        self.outbound
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The inbound listener (needs `inbound_app` in the config).
    pub fn inbound(&self) -> SocketAddr {
        self.inbound.expect("proxy was configured without inbound")
    }

    /// The upstream port bound to `service`.
    pub fn upstream(&self, service: &str) -> SocketAddr {
        self.upstreams
            .iter()
            .find(|(s, _)| s == service)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no upstream port for {service}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time the process has used so far (`/proc/PID/stat`).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("read /proc/PID/stat");
        // Fields after the command name (which may hold spaces) start at the third: state.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat has a command name").1.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // /proc counts in USER_HZ, which Linux fixes at 100 for every architecture.
        Duration::from_millis(ticks * 10)
    }

    /// Resident memory in bytes (`VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("read /proc/PID/status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib * 1024
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Sends `req` to the admin listener; panics if no response arrives.
    pub async fn admin_send(&self, req: &Req) -> Resp {
        client::must(self.admin, req).await
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        self.admin_send(&Req::get(path)).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let resp = self.admin_get("/metrics").await;
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.text());
        resp.text()
    }

    /// `/config` parsed as JSON.
    pub async fn config_json(&self) -> serde_json::Value {
        let resp = self.admin_get("/config").await;
        assert_eq!(resp.status, 200, "GET /config: {}", resp.text());
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("/config is not JSON ({e}): {}", resp.text()))
    }

    /// An admin GET whose answer is JSON (`/config`, `/explain?…`), parsed.
    pub async fn config_json_at(&self, path: &str) -> serde_json::Value {
        let resp = self.admin_get(path).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {}", resp.text()))
    }

    /// The top-level `version` of `/config`.
    pub async fn config_version(&self) -> u64 {
        let json = self.config_json().await;
        json["version"].as_u64().unwrap_or_else(|| panic!("/config has no numeric version: {json}"))
    }

    /// Replaces the policy documents, keeping the `Proxy` document (same ports), atomically.
    pub fn rewrite_config(&self, policy: &str) {
        self.write_config_text(&format!("{}{policy}", self.proxy_doc));
    }

    /// Replaces the whole config file with `text`, atomically (temp file, then rename).
    pub fn write_config_text(&self, text: &str) {
        write_atomically(&self.config_path, text);
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sighup(&self) {
        self.signal("HUP");
    }

    /// Sends signal `name` (`TERM`, `HUP`, `STOP`, `CONT`…) to the process.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll child") {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the proxy wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }

    /// The last `lines` lines of each log, labelled, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["stdout.log", "stderr.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let _ = writeln!(out, "----- weft-proxy {name} (last {lines} lines) -----");
            for line in &all[all.len().saturating_sub(lines)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(80));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proxy_document(
    cfg: &ProxyConfig,
    outbound: SocketAddr,
    admin: SocketAddr,
    inbound: Option<SocketAddr>,
    upstreams: &[(String, SocketAddr)],
) -> String {
    let service = if cfg.service.is_empty() { "client" } else { cfg.service.as_str() };
    let mut spec = format!("service: {service}\n");
    if !cfg.proxy_spec.contains("workers:") {
        spec.push_str("workers: 1\n");
    }
    let _ = writeln!(spec, "admin: {{listen: \"{admin}\"}}");
    let _ = writeln!(spec, "outbound: {{listen: \"{outbound}\"}}");
    if let (Some(listen), Some(app)) = (inbound, cfg.inbound_app) {
        let _ = writeln!(spec, "inbound: {{listen: \"{listen}\", app: \"{app}\"}}");
    }
    if !upstreams.is_empty() {
        spec.push_str("upstreams:\n");
        for (service, listen) in upstreams {
            let _ = writeln!(spec, "  - {{service: {service}, listen: \"{listen}\"}}");
        }
    }
    for line in cfg.proxy_spec.lines().filter(|l| !l.trim().is_empty()) {
        let _ = writeln!(spec, "{}", line.trim());
    }
    document("Proxy", "test-proxy", &spec)
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(".proxy.yaml.tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config into place");
}

fn log_file(dir: &Path, name: &str) -> File {
    File::create(dir.join(name)).expect("create log file")
}
