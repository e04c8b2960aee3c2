//! Transparent interception end to end: two "pods" (network namespaces joined by a veth pair,
//! with addresses that exist only inside them), each with an unmodified app, `weft-proxy init`
//! and a proxy running under the uid the rules exclude. Needs root and `ip netns` (CI runs as
//! root); without them each test prints why it was skipped.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weft_integration::mesh::{Pki, spiffe};
use weft_integration::netns::{self, Netns, run};
use weft_integration::{TempDir, bin, document, metric_sum};

/// The uid (and gid) the proxies run as; `weft-proxy init` excludes it.
const PROXY_UID: u32 = 2102;
/// The server pod's app ports: HTTP (declared), TCP echo (declared), a probe-like port skipped
/// by both pods' rules, and a port no Service declares (skipped inbound, like an unmeshed app).
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;
const SKIPPED_PORT: u16 = 9100;
const OUTSIDE_PORT: u16 = 9200;

#[test]
fn transparent_interception_with_the_nft_backend() {
    run_scenario("nft", Family::V4);
}

#[test]
fn transparent_interception_with_the_legacy_backend() {
    run_scenario("legacy", Family::V4);
}

#[test]
fn transparent_interception_over_ipv6() {
    run_scenario("nft", Family::V6);
}

#[derive(Clone, Copy, PartialEq)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The pod address of pod `n` (1: client, 2: server).
    fn pod_ip(self, n: u8) -> String {
        match self {
            Family::V4 => format!("10.200.0.{n}"),
            Family::V6 => format!("fd00:200::{n}"),
        }
    }

    fn addr(self, n: u8, port: u16) -> String {
        match self {
            Family::V4 => format!("{}:{port}", self.pod_ip(n)),
            Family::V6 => format!("[{}]:{port}", self.pod_ip(n)),
        }
    }

    /// The virtual IP (a ClusterIP) of Service `web`, in a range routed out of the client pod
    /// as a cluster's service CIDR is, and owned by no one: only the proxy knows it.
    fn virtual_ip(self) -> &'static str {
        match self {
            Family::V4 => "10.96.0.10",
            Family::V6 => "fd00:96::10",
        }
    }

    fn virtual_addr(self, port: u16) -> String {
        match self {
            Family::V4 => format!("{}:{port}", self.virtual_ip()),
            Family::V6 => format!("[{}]:{port}", self.virtual_ip()),
        }
    }

    /// Where redirected connections arrive: REDIRECT rewrites to the loopback or interface address.
    fn listeners(self) -> (&'static str, &'static str) {
        match self {
            Family::V4 => ("127.0.0.1:4140", "0.0.0.0:4143"),
            Family::V6 => ("[::1]:4140", "[::]:4143"),
        }
    }

    fn tables(self) -> &'static [&'static str] {
        match self {
            Family::V4 => &["iptables"],
            Family::V6 => &["iptables", "ip6tables"],
        }
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported(backend: &str, family: Family) -> Option<String> {
    if let Some(why) = netns::unsupported() {
        return Some(why);
    }
    for table in family.tables() {
        let tool = format!("{table}-{backend}-restore");
        if !Command::new(&tool).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(format!("{tool} is not available (install iptables)"));
        }
    }
    if family == Family::V6 && !Path::new("/proc/net/if_inet6").exists() {
        return Some("the kernel has no IPv6".into());
    }
    None
}

/// Two namespaces and everything started in them; removed on drop, even when a check fails.
struct World {
    client: String,
    server: String,
    children: Vec<Child>,
    dir: TempDir,
    /// Dropped after the children are killed: deleting a namespace removes its veth end (and
    /// so the pair) and its nat rules.
    _namespaces: [Netns; 2],
}

impl Drop for World {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl World {
    fn new(tag: &str, family: Family) -> World {
        let namespaces = [Netns::new(&format!("weft-c-{tag}")), Netns::new(&format!("weft-s-{tag}"))];
        let world = World {
            client: namespaces[0].name().to_string(),
            server: namespaces[1].name().to_string(),
            children: Vec::new(),
            dir: TempDir::new("netns"),
            _namespaces: namespaces,
        };
        let (vc, vs) = (format!("wc{tag}"), format!("ws{tag}"));
        run(&["ip", "link", "add", &vc, "type", "veth", "peer", "name", &vs]);
        for (ns, dev, n) in [(&world.client, &vc, 1), (&world.server, &vs, 2)] {
            run(&["ip", "link", "set", dev, "netns", ns]);
            let ip = family.pod_ip(n);
            match family {
                Family::V4 => run(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", dev]),
                Family::V6 => run(&["ip", "-n", ns, "addr", "add", &format!("{ip}/64"), "dev", dev, "nodad"]),
            };
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // The service CIDR leaves the client pod by its interface, as a node's routes send it.
        let services = match family {
            Family::V4 => "10.96.0.0/16",
            Family::V6 => "fd00:96::/64",
        };
        run(&["ip", "-n", &world.client, "route", "add", services, "dev", &vc]);
        world
    }

    /// Starts `cmd` inside `ns`, as `uid` when given, with its stderr in `log`.
    fn spawn(&mut self, ns: &str, uid: Option<u32>, cmd: &[&str], log: &str) {
        let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
        if let Some(uid) = uid {
            args.extend(
                ["setpriv", "--reuid", &uid.to_string(), "--regid", &uid.to_string(), "--clear-groups"]
                    .map(String::from),
            );
        }
        args.extend(cmd.iter().map(|s| s.to_string()));
        let stderr = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        let child = Command::new("ip").args(&args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).spawn();
        self.children.push(child.unwrap_or_else(|e| panic!("spawn {cmd:?} in {ns}: {e}")));
    }

    /// Runs `cmd` inside `ns` to its end (every client here gives up within 10 s).
    fn exec(&self, ns: &str, cmd: &[&str]) -> String {
        let mut args = vec!["ip", "netns", "exec", ns];
        args.extend_from_slice(cmd);
        run(&args)
    }

    /// The client app's plain HTTP GET to `addr`.
    fn get(&self, ns: &str, addr: &str, path: &str) -> String {
        self.exec(ns, &[app(), "get", addr, path])
    }

    fn metrics(&self, ns: &str) -> String {
        self.get(ns, "127.0.0.1:4191", "/metrics")
    }

    /// `iptables-save -t nat` of every family in `ns`, without comments and counters.
    fn nat(&self, ns: &str, backend: &str, family: Family) -> String {
        let mut out = String::new();
        for table in family.tables() {
            let text = self.exec(ns, &[&format!("{table}-{backend}-save"), "-t", "nat"]);
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                out.push_str(line.split(" [").next().unwrap_or(line));
                out.push('\n');
            }
        }
        out
    }

    fn init(&self, ns: &str, args: &[&str]) -> String {
        let mut cmd = vec![proxy_bin(), "init"];
        cmd.extend_from_slice(args);
        self.exec(ns, &cmd)
    }

    fn wait_ready(&self, ns: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("ip").args(["netns", "exec", ns, app(), "get", "127.0.0.1:4191", "/ready"]).output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("HTTP/1.1 200")) {
                return;
            }
            assert!(Instant::now() < deadline, "the proxy in {ns} was not ready within 30s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["client-proxy.log", "server-proxy.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("--- {name}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
        }
        out
    }
}

fn app() -> &'static str {
    env!("CARGO_BIN_EXE_netns_app")
}

fn proxy_bin() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| bin("weft-proxy").display().to_string())
}

/// Makes `dir` and everything in it the proxy uid's (its key files are private to the owner).
fn give_to_proxy(dir: &Path) {
    chown(dir, Some(PROXY_UID), Some(PROXY_UID)).expect("chown");
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        chown(entry.path(), Some(PROXY_UID), Some(PROXY_UID)).expect("chown");
    }
}

/// A Proxy document for a pod, with the other documents of its config.
fn proxy_config(family: Family, name: &str, tls: &str, rest: &str) -> String {
    let (outbound, inbound) = family.listeners();
    let spec = format!(
        "service: {name}\nadmin: {{listen: \"127.0.0.1:4191\"}}\noutbound: {{listen: \"{outbound}\"}}\n\
         inbound: {{listen: \"{inbound}\", app: \"127.0.0.1:{HTTP_PORT}\"}}\n{tls}\n"
    );
    format!("{}{}{rest}", document("Proxy", name, &spec), document("Mesh", "default", "mtls: strict\n"))
}

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("config dir");
    let path = folder.join("proxy.yaml");
    std::fs::write(&path, text).expect("write config");
    give_to_proxy(&folder);
    path
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    resp.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
}

fn body(resp: &str) -> &str {
    resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn own_rules(nat: &str) -> usize {
    nat.lines().filter(|l| l.contains("weft/")).count()
}

fn run_scenario(backend: &str, family: Family) {
    if let Some(why) = unsupported(backend, family) {
        println!("SKIPPED transparent interception ({backend}): {why}");
        return;
    }
    let tag = format!("{}{}{}", &backend[..1], if family == Family::V6 { 6 } else { 4 }, std::process::id() % 100_000);
    let mut world = World::new(&tag, family);
    let (client_ns, server_ns) = (world.client.clone(), world.server.clone());

    // Identities from the mesh CA, readable by the proxies' uid.
    let pki = Pki::new("netns");
    let client_id = pki.issue("client", &spiffe("client"), "1h");
    let server_id = pki.issue("web", &spiffe("web"), "1h");
    give_to_proxy(pki.root());
    give_to_proxy(&client_id.dir);
    give_to_proxy(&server_id.dir);

    // The server's own Service declares both app ports; the client knows `web` by the server
    // proxy's inbound address and `echo` by the pod address and app port.
    let web_identity = spiffe("web");
    // `myself` is a Service whose only endpoint is the server pod itself (pod address and app
    // port, as an EndpointSlice names it): the server proxy's call to it is the hairpin.
    let server_cfg = proxy_config(
        family,
        "web",
        &server_id.tls_line(),
        &format!(
            "{}{}",
            document(
                "Service",
                "web",
                &format!(
                    "ports: [{{port: {HTTP_PORT}, protocol: http}}, {{port: {ECHO_PORT}, protocol: tcp}}]\n\
                     endpoints: [{{address: \"{}\", identity: \"{web_identity}\"}}]\n",
                    family.addr(2, 4143)
                ),
            ),
            document(
                "Service",
                "myself",
                &format!(
                    "ports: [{{port: {HTTP_PORT}, protocol: http}}]\n\
                     endpoints: [{{address: \"{}\", identity: \"{web_identity}\"}}]\n",
                    family.addr(2, HTTP_PORT)
                ),
            ),
        ),
    );
    let client_cfg = proxy_config(
        family,
        "client",
        &client_id.tls_line(),
        &format!(
            "{}{}",
            document(
                "Service",
                "web",
                &format!(
                    "ports: [{{port: {HTTP_PORT}, protocol: http}}]\n\
                     endpoints: [{{address: \"{}\", identity: \"{web_identity}\"}}]\n\
                     virtualIPs: [\"{}\"]\n",
                    family.addr(2, 4143),
                    family.virtual_ip()
                ),
            ),
            document(
                "Service",
                "echo",
                &format!(
                    "ports: [{{port: {ECHO_PORT}, protocol: tcp}}]\n\
                     endpoints: [{{address: \"{}\", identity: \"{web_identity}\"}}]\n",
                    family.addr(2, ECHO_PORT)
                ),
            ),
        ),
    );
    let server_path = write_config(world.dir.path(), "server", &server_cfg);
    let client_path = write_config(world.dir.path(), "client", &client_cfg);

    let before = (world.nat(&client_ns, backend, family), world.nat(&server_ns, backend, family));
    let v6: &[&str] = if family == Family::V6 { &["--ipv6"] } else { &[] };
    let uid = PROXY_UID.to_string();
    let skip_in = format!("{SKIPPED_PORT},{OUTSIDE_PORT}");
    let skip_out = SKIPPED_PORT.to_string();
    let server_init: Vec<&str> =
        [&["--proxy-uid", &uid, "--proxy-gid", &uid, "--mode", backend, "--skip-inbound-ports", &skip_in], v6].concat();
    let client_init: Vec<&str> =
        [&["--proxy-uid", &uid, "--mode", backend, "--skip-outbound-ports", &skip_out], v6].concat();
    world.init(&server_ns, &server_init);
    world.init(&client_ns, &client_init);

    // Unmodified apps in the server pod, and a proxy in each pod under the excluded uid.
    let any = |port: u16| format!("[::]:{port}");
    for (port, what) in
        [(HTTP_PORT, "http web"), (ECHO_PORT, "echo"), (SKIPPED_PORT, "http probe"), (OUTSIDE_PORT, "http outside")]
    {
        let mut cmd = vec![app()];
        let listen = any(port);
        let parts: Vec<&str> = what.split(' ').collect();
        cmd.push(parts[0]);
        cmd.push(&listen);
        cmd.extend_from_slice(&parts[1..]);
        world.spawn(&server_ns, None, &cmd, &format!("app-{port}.log"));
    }
    let (sp, cp) = (server_path.display().to_string(), client_path.display().to_string());
    world.spawn(&server_ns, Some(PROXY_UID), &[proxy_bin(), "--config", &sp], "server-proxy.log");
    world.spawn(&client_ns, Some(PROXY_UID), &[proxy_bin(), "--config", &cp], "client-proxy.log");
    world.wait_ready(&server_ns);
    world.wait_ready(&client_ns);

    let requests = |ns: &str, direction: &str| {
        metric_sum(&world.metrics(ns), "weft_requests_total", &[("direction", direction), ("service", "web")])
    };
    let mtls_in = |world: &World| {
        metric_sum(&world.metrics(&server_ns), "weft_inbound_connections_total", &[("transport", "mtls")])
    };

    // 1. A plain HTTP call to the server pod's address and app port goes through both proxies
    //    with mTLS: both count it, and the app learns the caller's identity.
    let resp = world.get(&client_ns, &family.addr(2, HTTP_PORT), "/hello");
    assert!(resp.starts_with("HTTP/1.1 200"), "through both proxies: {resp}\n{}", world.logs());
    assert_eq!(body(&resp), "web");
    assert_eq!(header(&resp, "x-seen-client-id"), Some(spiffe("client").as_str()), "{resp}");
    assert_eq!(requests(&client_ns, "outbound"), 1.0, "the client proxy counted the call");
    assert_eq!(requests(&server_ns, "inbound"), 1.0, "the server proxy counted the call");

    // 2. A raw TCP call to the echo port: mTLS between the proxies, the app's port kept.
    let mtls_before = mtls_in(&world);
    let echoed = world.exec(&client_ns, &[app(), "tcp", &family.addr(2, ECHO_PORT), "ping over tcp"]);
    assert_eq!(echoed, "ping over tcp", "{}", world.logs());
    assert_eq!(mtls_in(&world), mtls_before + 1.0, "the TCP call reached the server proxy over mTLS");

    // 3. A skipped port bypasses both proxies: no identity, nothing counted.
    let resp = world.get(&client_ns, &family.addr(2, SKIPPED_PORT), "/probe");
    assert_eq!(body(&resp), "probe", "{resp}");
    assert_eq!(header(&resp, "x-seen-client-id"), Some("-"), "no proxy on the way: {resp}");
    assert_eq!(requests(&client_ns, "outbound"), 1.0);
    assert_eq!(requests(&server_ns, "inbound"), 1.0);
    assert_eq!(mtls_in(&world), mtls_before + 1.0);

    // 4. An address no Service names is passed through as it is.
    let passed = |world: &World| metric_sum(&world.metrics(&client_ns), "weft_passthrough_connections_total", &[]);
    let resp = world.get(&client_ns, &family.addr(2, OUTSIDE_PORT), "/out");
    assert_eq!(body(&resp), "outside", "{resp}\n{}", world.logs());
    assert_eq!(header(&resp, "x-seen-client-id"), Some("-"));
    assert_eq!(passed(&world), 1.0, "the client proxy relayed it");

    // 5. A call to the Service's virtual IP (its ClusterIP) goes to the service: through both
    //    proxies with mTLS, counted, though nothing listens at that address.
    let (out_before, in_before) = (requests(&client_ns, "outbound"), requests(&server_ns, "inbound"));
    let resp = world.get(&client_ns, &family.virtual_addr(HTTP_PORT), "/by-cluster-ip");
    assert!(resp.starts_with("HTTP/1.1 200"), "by the virtual IP: {resp}\n{}", world.logs());
    assert_eq!(body(&resp), "web");
    assert_eq!(header(&resp, "x-seen-client-id"), Some(spiffe("client").as_str()), "{resp}");
    assert_eq!(requests(&client_ns, "outbound"), out_before + 1.0);
    assert_eq!(requests(&server_ns, "inbound"), in_before + 1.0);
    assert_eq!(passed(&world), 1.0, "not passed through");

    // 6. The hairpin: the server app calls a Service whose endpoint is its own pod. Its proxy's
    //    connection to the pod address is sent through the pod's own inbound side (over mTLS,
    //    authorised and counted like any caller's) instead of straight to the app.
    let inbound_before = requests(&server_ns, "inbound");
    let (outbound, _) = family.listeners();
    let resp = world.exec(&server_ns, &[app(), "get", outbound, "/self", "myself"]);
    assert!(resp.starts_with("HTTP/1.1 200"), "the hairpin call: {resp}\n{}", world.logs());
    assert_eq!(body(&resp), "web");
    assert_eq!(header(&resp, "x-seen-client-id"), Some(web_identity.as_str()), "its own identity: {resp}");
    assert_eq!(requests(&server_ns, "inbound"), inbound_before + 1.0, "its inbound side counted it");
    let hairpin_out = metric_sum(
        &world.metrics(&server_ns),
        "weft_requests_total",
        &[("direction", "outbound"), ("service", "myself")],
    );
    assert_eq!(hairpin_out, 1.0, "its outbound side counted it");
    // The app calling its own address directly stays on loopback, untouched.
    let resp = world.get(&server_ns, &family.addr(2, HTTP_PORT), "/direct");
    assert_eq!(header(&resp, "x-seen-client-id"), Some("-"), "loopback is left alone: {resp}");
    assert_eq!(requests(&server_ns, "inbound"), inbound_before + 1.0);

    // 7. Re-running init (a sandbox restart) leaves one copy of each rule, and traffic flows.
    let installed = (world.nat(&client_ns, backend, family), world.nat(&server_ns, backend, family));
    world.init(&server_ns, &server_init);
    world.init(&client_ns, &client_init);
    let rerun = (world.nat(&client_ns, backend, family), world.nat(&server_ns, backend, family));
    assert_eq!(rerun, installed, "re-running init changed the rules");
    assert!(own_rules(&installed.0) > 0 && own_rules(&installed.1) > 0);
    let resp = world.get(&client_ns, &family.addr(2, HTTP_PORT), "/again");
    assert_eq!(header(&resp, "x-seen-client-id"), Some(spiffe("client").as_str()), "{resp}");
    assert_eq!(requests(&server_ns, "inbound"), inbound_before + 2.0);

    // 8. --cleanup leaves the nat table as it found it.
    let cleanup: Vec<&str> = [&["--cleanup", "--mode", backend], v6].concat();
    world.init(&server_ns, &cleanup);
    world.init(&client_ns, &cleanup);
    let after = (world.nat(&client_ns, backend, family), world.nat(&server_ns, backend, family));
    assert_eq!(after, before, "--cleanup left something behind");
    println!(
        "transparent interception ({backend}, {}): HTTP and TCP through both proxies, skipped port bypassed, \
         pass-through relayed, virtual IP routed, hairpin through its own inbound, {} + {} rules installed, re-run and cleanup clean",
        if family == Family::V6 { "IPv6" } else { "IPv4" },
        own_rules(&installed.0),
        own_rules(&installed.1)
    );
}
