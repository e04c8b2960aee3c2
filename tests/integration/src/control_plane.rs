//! The real control plane (`weft serve`) in a child process, with its policy folder in a temp
//! dir; killed when the handle drops, its log printed when a test fails.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{self, Req};
use crate::net::{Reserved, reserve_addrs};
use crate::tempdir::TempDir;

/// Short, so tests see a closed stream's instance leave quickly and restarts warm up fast.
pub const REGISTRATION_TTL: &str = "1s";
/// Short, so a frozen proxy loses its stream (and registration) within a second or so.
pub const HEARTBEAT: &str = "500ms";

pub struct ControlPlane {
    child: Option<Child>,
    dir: TempDir,
    listen: SocketAddr,
    admin: SocketAddr,
    starts: usize,
    /// Flags for `weft serve` beyond the policy folder, ports and timers.
    extra: Vec<String>,
    /// The network namespace it runs in (`ip netns exec`), if not the test's own.
    netns: Option<String>,
    /// The policy folder and both listeners given as `WEFT_SERVE_*` variables, not flags.
    from_env: bool,
    /// The ports it listens on, kept from other tests across kills and restarts.
    _ports: Reserved,
}

impl ControlPlane {
    /// Starts `weft serve` with `policy` as its only policy file and waits for `/ready`.
    pub async fn start(policy: &str) -> ControlPlane {
        let ports = reserve_addrs(2);
        ControlPlane::launch(policy, ports.addrs()[0], ports.addrs()[1], ports, &[], None).await
    }

    /// Like [`ControlPlane::start`], with more `weft serve` flags (a registry to watch).
    pub async fn start_with(policy: &str, extra: &[&str]) -> ControlPlane {
        let ports = reserve_addrs(2);
        ControlPlane::launch(policy, ports.addrs()[0], ports.addrs()[1], ports, extra, None).await
    }

    /// Like [`ControlPlane::start`], with the discovery listener on `listen` (which the caller
    /// keeps reserved, see `net::Reserved`, if it picked it ahead).
    pub async fn start_at(policy: &str, listen: SocketAddr) -> ControlPlane {
        let ports = reserve_addrs(1);
        ControlPlane::launch(policy, listen, ports.addr(), ports, &[], None).await
    }

    /// Like [`ControlPlane::start`], with the policy folder and the listeners given as
    /// `WEFT_SERVE_POLICY`, `WEFT_SERVE_LISTEN` and `WEFT_SERVE_ADMIN`, as a container sets them.
    pub async fn start_from_env(policy: &str) -> ControlPlane {
        let ports = reserve_addrs(2);
        let mut cp = ControlPlane::new(policy, ports.addrs()[0], ports.addrs()[1], ports, &[], None);
        cp.from_env = true;
        cp.restart().await;
        cp
    }

    /// Like [`ControlPlane::start_with`], run inside network namespace `netns` (see
    /// `netns::Netns`) with its discovery and admin listeners on `listen` and `admin` there.
    pub async fn start_in_netns(
        policy: &str,
        netns: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        extra: &[&str],
    ) -> ControlPlane {
        // Its ports are the namespace's own: nothing of the host's to reserve.
        ControlPlane::launch(policy, listen, admin, reserve_addrs(0), extra, Some(netns)).await
    }

    async fn launch(
        policy: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        ports: Reserved,
        extra: &[&str],
        netns: Option<&str>,
    ) -> ControlPlane {
        let mut cp = ControlPlane::new(policy, listen, admin, ports, extra, netns);
        cp.restart().await;
        cp
    }

    fn new(
        policy: &str,
        listen: SocketAddr,
        admin: SocketAddr,
        ports: Reserved,
        extra: &[&str],
        netns: Option<&str>,
    ) -> ControlPlane {
        let dir = TempDir::new("control");
        std::fs::create_dir_all(dir.path().join("policy")).expect("create policy dir");
        let extra = extra.iter().map(|s| s.to_string()).collect();
        let cp = ControlPlane {
            child: None,
            dir,
            listen,
            admin,
            starts: 0,
            extra,
            netns: netns.map(String::from),
            from_env: false,
            _ports: ports,
        };
        cp.write_policy(policy);
        cp
    }

    /// Starts it again (same ports, same policy folder) after [`ControlPlane::kill`].
    pub async fn restart(&mut self) {
        self.starts += 1;
        let log = |name: &str| File::create(self.dir.path().join(format!("{name}-{}.log", self.starts))).expect("log");
        // `ip netns exec` execs the command itself: the child is `weft serve`, killed as usual.
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(crate::bin("weft"));
                c
            }
            None => Command::new(crate::bin("weft")),
        };
        command.arg("serve");
        let (listen, admin) = (self.listen.to_string(), self.admin.to_string());
        if self.from_env {
            command.env("WEFT_SERVE_POLICY", self.policy_dir());
            command.env("WEFT_SERVE_LISTEN", listen).env("WEFT_SERVE_ADMIN", admin);
        } else {
            command.arg("--policy").arg(self.policy_dir()).args(["--listen", &listen, "--admin", &admin]);
        }
        let child = command
            .args(["--registration-ttl", REGISTRATION_TTL, "--heartbeat", HEARTBEAT])
            .args(&self.extra)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .expect("spawn weft serve");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("poll child")) {
                panic!("weft serve exited with {status}\n{}", self.logs());
            }
            if let Ok(resp) = client::send(self.admin, &Req::get("/ready")).await
                && resp.status == 200
            {
                return;
            }
            assert!(Instant::now() < end, "weft serve not ready in 20s\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the process at once (SIGKILL: no goodbye to the proxies).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy")
    }

    /// Replaces the policy file atomically (temp file, then rename).
    pub fn write_policy(&self, text: &str) {
        write_atomically(&self.policy_dir().join("policy.yaml"), text);
    }

    /// The address a proxy's `controlPlane.address` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// `/v1/status` parsed as JSON; `None` when the control plane cannot be reached or does
    /// not answer 200 (for a caller that waits for it).
    pub async fn try_status(&self) -> Option<serde_json::Value> {
        let resp = client::send(self.admin, &Req::get("/v1/status")).await.ok()?;
        (resp.status == 200).then(|| serde_json::from_slice(&resp.body).ok()).flatten()
    }

    /// `/v1/status` parsed as JSON.
    pub async fn status(&self) -> serde_json::Value {
        let resp = client::must(self.admin, &Req::get("/v1/status")).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        serde_json::from_slice(&resp.body).expect("status is JSON")
    }

    pub async fn metrics(&self) -> String {
        client::must(self.admin, &Req::get("/metrics")).await.text()
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            for name in ["stdout", "stderr"] {
                out += &std::fs::read_to_string(self.dir.path().join(format!("{name}-{i}.log"))).unwrap_or_default();
            }
        }
        out
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            eprintln!("----- weft serve log (last 60 lines) -----");
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        self.kill();
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(".policy.yaml.tmp");
    std::fs::write(&tmp, text).expect("write temp policy");
    std::fs::rename(&tmp, path).expect("rename policy into place");
}
