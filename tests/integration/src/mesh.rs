//! Mesh identities for tests, made by the real CA code through the `weft` CLI (`weft ca init`,
//! `weft ca issue`) and the minimal `weft serve` that signs CSRs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::document;
use crate::net::{Reserved, reserve_addrs};
use crate::proxy::{Proxy, ProxyConfig};
use crate::tempdir::TempDir;
use crate::{Backend, eventually, metric_sum};

/// `spiffe://cluster.local/ns/default/sa/<account>`.
pub fn spiffe(account: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{account}")
}

/// A CA in a temp folder, made by `weft ca init`.
pub struct Pki {
    dir: TempDir,
}

/// A folder holding `cert.pem`, `key.pem` and `bundle.pem`.
#[derive(Clone, Debug)]
pub struct IdentityFiles {
    pub dir: PathBuf,
}

impl IdentityFiles {
    /// The Proxy spec line that uses these files.
    pub fn tls_line(&self) -> String {
        let d = self.dir.display();
        format!("tls: {{certFile: \"{d}/cert.pem\", keyFile: \"{d}/key.pem\", bundleFile: \"{d}/bundle.pem\"}}")
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }
}

impl Pki {
    pub fn new(label: &str) -> Pki {
        let dir = TempDir::new(label);
        weft(&["ca", "init", "--out", &dir.path().join("ca").display().to_string()]);
        Pki { dir }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `weft ca issue` for `id` valid for `ttl` (e.g. `1h`), into a folder called `name`.
    pub fn issue(&self, name: &str, id: &str, ttl: &str) -> IdentityFiles {
        let out = self.dir.path().join(name);
        let ca = self.ca_dir().display().to_string();
        weft(&["ca", "issue", "--ca", &ca, "--id", id, "--out", &out.display().to_string(), "--ttl", ttl, "--force"]);
        IdentityFiles { dir: out }
    }

    /// Like [`Pki::issue`], for a certificate that becomes valid only `starts_in` from now
    /// (`weft ca issue --starts-in`).
    pub fn issue_starting_in(&self, name: &str, id: &str, starts_in: &str) -> IdentityFiles {
        let out = self.dir.path().join(name);
        let (ca, out_arg) = (self.ca_dir().display().to_string(), out.display().to_string());
        weft(&["ca", "issue", "--ca", &ca, "--id", id, "--out", &out_arg, "--starts-in", starts_in, "--force"]);
        IdentityFiles { dir: out }
    }

    /// The same certificate and key as `id`, with `trust`'s bundle (a workload whose certificate
    /// comes from another CA but who trusts this one).
    pub fn with_bundle_of(&self, name: &str, id: &IdentityFiles, trust: &IdentityFiles) -> IdentityFiles {
        let out = self.dir.path().join(name);
        std::fs::create_dir_all(&out).expect("create identity dir");
        for f in ["cert.pem", "key.pem"] {
            std::fs::copy(id.path(f), out.join(f)).expect("copy identity file");
        }
        std::fs::copy(trust.path("bundle.pem"), out.join("bundle.pem")).expect("copy bundle");
        IdentityFiles { dir: out }
    }
}

fn weft(args: &[&str]) {
    let out = Command::new(crate::bin("weft")).args(args).output().expect("run weft");
    assert!(out.status.success(), "weft {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// An HTTP Service whose one endpoint is a meshed peer proxy with `identity`.
pub fn meshed_service(name: &str, addr: SocketAddr, identity: &str) -> String {
    meshed_service_speaking(name, "http", addr, identity)
}

/// Like [`meshed_service`], with the Service's `protocol` (`http`, `tcp`…).
pub fn meshed_service_speaking(name: &str, protocol: &str, addr: SocketAddr, identity: &str) -> String {
    let endpoints = format!("endpoints: [{{address: \"{addr}\", identity: \"{identity}\"}}]\n");
    document("Service", name, &format!("ports: [{{port: 80, protocol: {protocol}}}]\n{endpoints}"))
}

/// The proxy of service `server` beside `app`, with `files`' identity, accepting mesh calls on
/// its inbound listener.
pub async fn server_proxy(files: &IdentityFiles, app: &Backend, policy: &str) -> Proxy {
    Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: files.tls_line(),
        policy: policy.to_string(),
        ..Default::default()
    })
    .await
}

/// A proxy of service `client` with `files`' identity whose upstream port `server` reaches
/// `addr`, expected to be `identity`.
pub async fn client_proxy(files: &IdentityFiles, addr: SocketAddr, identity: &str) -> Proxy {
    Proxy::start(ProxyConfig {
        service: "client".to_string(),
        upstreams: vec!["server".to_string()],
        proxy_spec: files.tls_line(),
        policy: meshed_service("server", addr, identity),
        ..Default::default()
    })
    .await
}

/// The Mesh document with `mtls: <mode>` (strict, permissive, off).
pub fn mesh_mode(mode: &str) -> String {
    document("Mesh", "default", &format!("mtls: {mode}\n"))
}

/// `weft_tls_handshake_errors_total` of `proxy` for `direction` and `reason`.
pub async fn handshake_errors(proxy: &Proxy, direction: &str, reason: &str) -> f64 {
    let labels = [("direction", direction), ("reason", reason)];
    metric_sum(&proxy.metrics().await, "weft_tls_handshake_errors_total", &labels)
}

/// Waits until `proxy` counted a handshake failure for `reason` and logged it.
pub async fn rejected_for(proxy: &Proxy, direction: &str, reason: &str) {
    eventually(&format!("a {direction} handshake error counted as {reason}"), Duration::from_secs(5), || async {
        (handshake_errors(proxy, direction, reason).await >= 1.0).then_some(())
    })
    .await;
    // The line is written just after the count: wait for it too (a loaded machine can be seen
    // between the two).
    let named = |l: &str| l.contains("mTLS handshake failed") && l.contains(&format!("reason=\"{reason}\""));
    eventually("a log line naming the rejection", Duration::from_secs(5), || async {
        proxy.logs().lines().any(named).then_some(())
    })
    .await;
}

/// A proxy of service `client` whose upstream port `server` reaches the meshed proxy of
/// service `server` at `addr` (identity `spiffe("server")`), with `proxy_spec` (its identity).
pub fn client_of_server(proxy_spec: String, addr: SocketAddr) -> ProxyConfig {
    ProxyConfig {
        service: "client".to_string(),
        upstreams: vec!["server".to_string()],
        proxy_spec,
        policy: meshed_service("server", addr, &spiffe("server")),
        ..Default::default()
    }
}

/// The minimal control plane (`weft serve`) signing CSRs, killed on drop. Its discovery port
/// speaks TLS (its certificate from `pki`) and, from loopback, plaintext.
pub struct ControlPlane {
    child: Option<Child>,
    addr: SocketAddr,
    admin: SocketAddr,
    ca_dir: PathBuf,
    dir: TempDir,
    ttl: String,
    /// More `weft serve` arguments.
    extra: Vec<String>,
    starts: usize,
    _ports: Reserved,
}

impl ControlPlane {
    /// Starts `weft serve` with `pki`'s CA, honouring `tokens` (token, SPIFFE id), giving
    /// certificates `ttl` (e.g. `4s`).
    pub async fn start(pki: &Pki, tokens: &[(&str, &str)], ttl: &str) -> ControlPlane {
        let cp = ControlPlane::stopped(pki, tokens, ttl);
        let mut cp = cp;
        cp.restart().await;
        cp
    }

    /// Like [`ControlPlane::start`], without starting it (see [`ControlPlane::restart`]).
    pub fn stopped(pki: &Pki, tokens: &[(&str, &str)], ttl: &str) -> ControlPlane {
        let dir = TempDir::new("cp");
        let ports = reserve_addrs(2);
        let (addr, admin) = (ports.addrs()[0], ports.addrs()[1]);
        let cp = ControlPlane {
            child: None,
            addr,
            admin,
            ca_dir: pki.ca_dir(),
            dir,
            ttl: ttl.to_string(),
            extra: Vec::new(),
            starts: 0,
            _ports: ports,
        };
        let text: String = tokens.iter().map(|(t, id)| format!("{t} {id}\n")).collect();
        cp.write_tokens(&text);
        cp
    }

    /// Like [`ControlPlane::start`], with more `weft serve` arguments.
    pub async fn start_with(pki: &Pki, tokens: &[(&str, &str)], ttl: &str, extra: &[&str]) -> ControlPlane {
        let mut cp = ControlPlane::stopped(pki, tokens, ttl);
        cp.extra = extra.iter().map(|s| s.to_string()).collect();
        cp.restart().await;
        cp
    }

    /// Replaces the join token file (atomically, as an operator's tooling would).
    pub fn write_tokens(&self, text: &str) {
        let tmp = self.dir.path().join(".tokens.tmp");
        std::fs::write(&tmp, text).expect("write token file");
        std::fs::rename(&tmp, self.dir.path().join("tokens")).expect("rename token file");
    }

    /// Starts it (again), on the same ports, and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.path().join(format!("serve-{}.log", self.starts))).expect("log");
        let child = Command::new(crate::bin("weft"))
            .args(["serve", "--ca", &self.ca_dir.display().to_string(), "--listen", &self.addr.to_string()])
            .args(["--admin", &self.admin.to_string(), "--registration-ttl", "1s"])
            .arg("--join-token-file")
            .arg(self.dir.path().join("tokens"))
            .args(["--cert-ttl", &self.ttl])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn weft serve");
        self.child = Some(child);
        let addr = self.addr;
        crate::eventually("weft serve to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(drop)
        })
        .await;
    }

    /// Kills it at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Plaintext, accepted from loopback.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The discovery address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The Proxy spec line for this control plane over TLS, trusting `pki`'s root, with
    /// `token` as the join token (written to a file of its own).
    pub fn tls_line(&self, pki: &Pki, name: &str, token: &str) -> String {
        let path = self.dir.path().join(format!("{name}.token"));
        std::fs::write(&path, token).expect("write join token");
        format!(
            "controlPlane: {{address: \"https://{}\", trustBundleFile: \"{}\", joinTokenFile: \"{}\"}}",
            self.addr,
            pki.ca_dir().join("ca.pem").display(),
            path.display()
        )
    }

    /// Everything it logged, across restarts.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|i| std::fs::read_to_string(self.dir.path().join(format!("serve-{i}.log"))).unwrap_or_default())
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- weft serve log -----\n{}", self.logs());
        }
        self.kill();
    }
}
