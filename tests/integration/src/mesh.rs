//! Mesh identities for tests, made by the real CA code through the `weft` CLI (`weft ca init`,
//! `weft ca issue`) and the minimal `weft serve` that signs CSRs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::config::document;
use crate::net::{Reserved, reserve_addrs};
use crate::tempdir::TempDir;

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

/// The minimal control plane (`weft serve`) signing CSRs, killed on drop.
pub struct ControlPlane {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
    _port: Reserved,
}

impl ControlPlane {
    /// Starts `weft serve` with `pki`'s CA, honouring `tokens` (token, SPIFFE id), giving
    /// certificates `ttl` (e.g. `4s`).
    pub async fn start(pki: &Pki, tokens: &[(&str, &str)], ttl: &str) -> ControlPlane {
        let dir = TempDir::new("cp");
        let file = dir.path().join("tokens");
        let text: String = tokens.iter().map(|(t, id)| format!("{t} {id}\n")).collect();
        std::fs::write(&file, text).expect("write token file");
        let port = reserve_addrs(1);
        let addr = port.addr();
        let child = Command::new(crate::bin("weft"))
            .args(["serve", "--ca", &pki.ca_dir().display().to_string(), "--listen", &addr.to_string()])
            .args(["--admin", "127.0.0.1:0", "--registration-ttl", "1s"])
            .args(["--join-token-file", &file.display().to_string(), "--cert-ttl", ttl])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn weft serve");
        let cp = ControlPlane { child, addr, _dir: dir, _port: port };
        crate::eventually("weft serve to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(drop)
        })
        .await;
        cp
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
