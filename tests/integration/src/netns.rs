//! Network namespaces for tests that need addresses or packet filters of their own (root and
//! iproute2): each is removed, with its links, rules and processes' sockets, when its guard
//! drops, even when the test fails.

use std::process::Command;

/// Why this machine cannot create network namespaces, if it cannot.
pub fn unsupported() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not running as root".into());
    }
    if !Command::new("ip").args(["netns", "list"]).output().is_ok_and(|o| o.status.success()) {
        return Some("`ip netns` is not available (install iproute2)".into());
    }
    None
}

/// Runs `cmd` and returns its stdout; panics with its stderr when it fails.
pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted on drop (which removes the veth ends and nft rules in it).
pub struct Netns {
    name: String,
    /// A link on the host's side, deleted on drop too (it goes with its peer anyway).
    host_link: Option<String>,
}

impl Netns {
    /// Creates namespace `name` with its loopback up, replacing a stale one of that name.
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run(&["ip", "netns", "add", name]);
        run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        Netns { name: name.to_string(), host_link: None }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Joins this namespace to the host by a veth pair: `host_dev` with `host_cidr` on the
    /// host, `dev` with `cidr` in here (e.g. `10.201.0.1/24` and `10.201.0.2/24`).
    pub fn link_to_host(&mut self, host_dev: &str, host_cidr: &str, dev: &str, cidr: &str) {
        let _ = Command::new("ip").args(["link", "del", host_dev]).output();
        run(&["ip", "link", "add", host_dev, "type", "veth", "peer", "name", dev]);
        self.host_link = Some(host_dev.to_string());
        run(&["ip", "link", "set", dev, "netns", &self.name]);
        run(&["ip", "addr", "add", host_cidr, "dev", host_dev]);
        run(&["ip", "link", "set", host_dev, "up"]);
        run(&["ip", "-n", &self.name, "addr", "add", cidr, "dev", dev]);
        run(&["ip", "-n", &self.name, "link", "set", dev, "up"]);
    }

    /// Runs `cmd` inside the namespace to its end and returns its stdout.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["ip", "netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        run(&args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        if let Some(dev) = &self.host_link {
            let _ = Command::new("ip").args(["link", "del", dev]).output();
        }
    }
}
