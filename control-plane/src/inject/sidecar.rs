//! The pieces `weft inject` adds to a pod: the `weft-init` container that programs the
//! redirection, the `weft-proxy` sidecar, its volumes, and the Proxy document it runs from.

use super::settings::{Options, Settings, SidecarMode, key};
use super::tree::Yaml;

/// Where the images put the binary.
pub const PROXY_BINARY: &str = "/usr/local/bin/weft-proxy";

pub(crate) const INIT_NAME: &str = "weft-init";
pub(crate) const PROXY_NAME: &str = "weft-proxy";

const CONFIG_DIR: &str = "/var/run/weft/config";
const TRUST_DIR: &str = "/var/run/weft/trust";
const TOKEN_DIR: &str = "/var/run/secrets/weft.dev";
const IDENTITY_DIR: &str = "/var/run/weft/identity";
const STATE_DIR: &str = "/var/lib/weft";
/// The audience of the projected service-account token, so the token is good for Weft's
/// control plane only (never replayable against the API server); the CA checks it.
pub(crate) use crate::ca::TOKEN_AUDIENCE;

/// Volumes `weft inject` owns, by name.
pub(crate) const VOLUMES: [&str; 6] =
    ["weft-config", "weft-trust", "weft-token", "weft-identity", "weft-state", "weft-xtables-lock"];

/// What the pod around the proxy looks like, as far as the proxy cares.
pub(crate) struct PodFacts {
    pub(crate) service: String,
    pub(crate) namespace: Option<String>,
    /// The app's first TCP port: where the inbound side forwards.
    pub(crate) app_port: Option<u16>,
    /// Ports the kubelet probes the app on: never redirected (probes are plaintext from the node).
    pub(crate) probe_ports: Vec<u16>,
}

/// The Proxy document, delivered to the proxy through the pod's `weft.dev/proxy-config`
/// annotation and a downward-API volume: visible with `kubectl get pod -o yaml`, the same for the
/// CLI and the webhook, and reloaded by the proxy when the annotation changes.
pub(crate) fn proxy_config(pod: &PodFacts, s: &Settings, o: &Options) -> String {
    let mut metadata = format!("name: {}", pod.service);
    if let Some(ns) = &pod.namespace {
        metadata.push_str(&format!(", namespace: {ns}"));
    }
    let mut text = format!("apiVersion: weft.dev/v1alpha1\nkind: Proxy\nmetadata: {{{metadata}}}\nspec:\n");
    text.push_str(&format!("  service: {}\n", pod.service));
    let ports = &s.ports;
    if let Some(port) = pod.app_port {
        text.push_str(&format!("  inbound: {{listen: \"0.0.0.0:{}\", app: \"127.0.0.1:{port}\"}}\n", ports.inbound));
    }
    text.push_str(&format!("  outbound: {{listen: \"127.0.0.1:{}\"}}\n", ports.outbound));
    // The kubelet probes /ready and /live, and Prometheus scrapes /metrics, from outside the pod;
    // POST /shutdown still answers loopback callers only.
    text.push_str(&format!("  admin: {{listen: \"0.0.0.0:{}\"}}\n", ports.admin));
    text.push_str(&format!(
        "  controlPlane:\n    address: {}\n    trustBundleFile: {TRUST_DIR}/ca.pem\n    serviceAccountTokenFile: {TOKEN_DIR}/token\n",
        serde_json::to_string(&o.control_plane).unwrap_or_default()
    ));
    text.push_str(&format!("  identityDir: {IDENTITY_DIR}\n  stateDir: {STATE_DIR}\n"));
    if let Some((grace, _)) = &s.shutdown_grace {
        text.push_str(&format!("  shutdownGrace: {grace}\n"));
    }
    if let Some(level) = &s.log_level {
        text.push_str(&format!("  log: {{level: {}}}\n", serde_json::to_string(level).unwrap_or_default()));
    }
    text
}

fn ports_arg(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

pub(crate) fn resources(cpu: (&str, &str), memory: (&str, &str)) -> Yaml {
    Yaml::map([
        ("requests", Yaml::map([("cpu", Yaml::str(cpu.0)), ("memory", Yaml::str(memory.0))])),
        ("limits", Yaml::map([("cpu", Yaml::str(cpu.1)), ("memory", Yaml::str(memory.1))])),
    ])
}

fn seccomp() -> Yaml {
    Yaml::map([("type", Yaml::str("RuntimeDefault"))])
}

pub(crate) fn strs(items: &[&str]) -> Yaml {
    Yaml::Seq(items.iter().map(|s| Yaml::str(*s)).collect())
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> Yaml {
    let mut m = Yaml::map([("name", Yaml::str(name)), ("mountPath", Yaml::str(path))]);
    if read_only {
        m.set("readOnly", Yaml::Plain("true".to_string()));
    }
    m
}

/// `weft-proxy init`: root only here, for the nat table (NET_ADMIN, NET_RAW); everything else
/// dropped. Its `/run` is writable for iptables' lock file.
pub(crate) fn init_container(pod: &PodFacts, s: &Settings) -> Yaml {
    let mut inbound_skips = vec![s.ports.admin];
    inbound_skips.extend(pod.probe_ports.iter().chain(&s.skip_inbound_ports));
    inbound_skips.sort_unstable();
    inbound_skips.dedup();
    let uid = s.proxy_uid.to_string();
    let mut args: Vec<String> = ["init", "--proxy-uid", &uid, "--proxy-gid", &uid].map(str::to_string).to_vec();
    args.extend(["--inbound-port".to_string(), s.ports.inbound.to_string()]);
    args.extend(["--outbound-port".to_string(), s.ports.outbound.to_string()]);
    args.extend(["--admin-port".to_string(), s.ports.admin.to_string()]);
    args.extend(["--skip-inbound-ports".to_string(), ports_arg(&inbound_skips)]);
    if !s.skip_outbound_ports.is_empty() {
        args.extend(["--skip-outbound-ports".to_string(), ports_arg(&s.skip_outbound_ports)]);
    }
    if !s.skip_subnets.is_empty() {
        args.extend(["--skip-subnets".to_string(), s.skip_subnets.join(",")]);
    }
    if s.ipv6 {
        args.push("--ipv6".to_string());
    }
    args.extend(["--mode".to_string(), "auto".to_string()]);
    Yaml::map([
        ("name", Yaml::str(INIT_NAME)),
        ("image", Yaml::str(&s.image)),
        ("command", strs(&[PROXY_BINARY])),
        ("args", Yaml::Seq(args.into_iter().map(Yaml::Str).collect())),
        ("resources", resources(("10m", "100m"), ("16Mi", "64Mi"))),
        (
            "securityContext",
            Yaml::map([
                ("runAsUser", Yaml::int(0)),
                ("runAsGroup", Yaml::int(0)),
                ("runAsNonRoot", Yaml::Plain("false".to_string())),
                ("allowPrivilegeEscalation", Yaml::Plain("false".to_string())),
                ("readOnlyRootFilesystem", Yaml::Plain("true".to_string())),
                ("capabilities", Yaml::map([("add", strs(&["NET_ADMIN", "NET_RAW"])), ("drop", strs(&["ALL"]))])),
                ("seccompProfile", seccomp()),
            ]),
        ),
        ("volumeMounts", Yaml::Seq(vec![mount("weft-xtables-lock", "/run", false)])),
    ])
}

/// The admin address `weft-proxy await` calls: `POST /shutdown` answers loopback callers only.
pub(crate) fn loopback(admin_port: u16) -> String {
    format!("127.0.0.1:{admin_port}")
}

/// The proxy's uid and gid, which `weft-init` exempts from redirection; no capabilities.
pub(crate) fn non_root(uid: u32) -> Yaml {
    Yaml::map([
        ("runAsUser", Yaml::int(uid)),
        ("runAsGroup", Yaml::int(uid)),
        ("runAsNonRoot", Yaml::Plain("true".to_string())),
        ("allowPrivilegeEscalation", Yaml::Plain("false".to_string())),
        ("readOnlyRootFilesystem", Yaml::Plain("true".to_string())),
        ("capabilities", Yaml::map([("drop", strs(&["ALL"]))])),
        ("seccompProfile", seccomp()),
    ])
}

fn field_env(name: &str, path: &str) -> Yaml {
    Yaml::map([
        ("name", Yaml::str(name)),
        ("valueFrom", Yaml::map([("fieldRef", Yaml::map([("fieldPath", Yaml::str(path))]))])),
    ])
}

fn http_probe(path: &str, admin_port: u16, period: i64, failures: i64) -> Yaml {
    Yaml::map([
        ("httpGet", Yaml::map([("path", Yaml::str(path)), ("port", Yaml::int(admin_port))])),
        ("periodSeconds", Yaml::int(period)),
        ("timeoutSeconds", Yaml::int(1)),
        ("failureThreshold", Yaml::int(failures)),
    ])
}

/// The sidecar. Native: an init container with `restartPolicy: Always`, so it starts before the
/// app (and the user's later init containers) and stops after it, and a Job's pod completes.
/// First-container mode: a postStart hook that waits for `/ready` holds the app back.
pub(crate) fn proxy_container(s: &Settings) -> Yaml {
    let r = &s.resources;
    let mut c = Yaml::map([
        ("name", Yaml::str(PROXY_NAME)),
        ("image", Yaml::str(&s.image)),
        ("command", strs(&[PROXY_BINARY])),
        ("args", strs(&["--config", &format!("{CONFIG_DIR}/proxy.yaml")])),
    ]);
    if s.mode == SidecarMode::Native {
        c.set("restartPolicy", Yaml::str("Always"));
    }
    let port = |name: &str, n: u16| {
        Yaml::map([("name", Yaml::str(name)), ("containerPort", Yaml::int(n)), ("protocol", Yaml::str("TCP"))])
    };
    c.set("ports", Yaml::Seq(vec![port("weft-inbound", s.ports.inbound), port("weft-admin", s.ports.admin)]));
    c.set(
        "env",
        Yaml::Seq(vec![
            field_env("WEFT_POD_NAME", "metadata.name"),
            field_env("WEFT_POD_NAMESPACE", "metadata.namespace"),
            field_env("WEFT_POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("WEFT_POD_IP", "status.podIP"),
            field_env("WEFT_POD_IPS", "status.podIPs"),
            field_env("WEFT_NODE_NAME", "spec.nodeName"),
        ]),
    );
    // Up to 2 minutes to get a config and a certificate; liveness only starts after that.
    let admin = s.ports.admin;
    c.set("startupProbe", http_probe("/ready", admin, 1, 120));
    c.set("readinessProbe", http_probe("/ready", admin, 2, 3));
    c.set("livenessProbe", http_probe("/live", admin, 10, 3));
    if s.mode == SidecarMode::FirstContainer {
        let wait = strs(&[PROXY_BINARY, "await", "--admin", &loopback(admin), "--timeout", "2m"]);
        let hook = Yaml::map([("exec", Yaml::map([("command", wait)]))]);
        c.set("lifecycle", Yaml::map([("postStart", hook)]));
    }
    c.set("resources", resources((&r.cpu_request, &r.cpu_limit), (&r.memory_request, &r.memory_limit)));
    c.set("securityContext", non_root(s.proxy_uid));
    c.set(
        "volumeMounts",
        Yaml::Seq(vec![
            mount("weft-config", CONFIG_DIR, true),
            mount("weft-trust", TRUST_DIR, true),
            mount("weft-token", TOKEN_DIR, true),
            mount("weft-identity", IDENTITY_DIR, false),
            mount("weft-state", STATE_DIR, false),
        ]),
    );
    c
}

pub(crate) fn volumes(o: &Options) -> Vec<Yaml> {
    let config_item = Yaml::map([
        ("path", Yaml::str("proxy.yaml")),
        ("fieldRef", Yaml::map([("fieldPath", Yaml::str(format!("metadata.annotations['{}']", key::PROXY_CONFIG)))])),
    ]);
    let token = Yaml::map([(
        "serviceAccountToken",
        Yaml::map([
            ("audience", Yaml::str(TOKEN_AUDIENCE)),
            ("expirationSeconds", Yaml::int(86400)),
            ("path", Yaml::str("token")),
        ]),
    )]);
    let trust = Yaml::map([
        ("name", Yaml::str(&o.trust_bundle_configmap)),
        ("items", Yaml::Seq(vec![Yaml::map([("key", Yaml::str("ca.pem")), ("path", Yaml::str("ca.pem"))])])),
    ]);
    let volume = |name: &str, kind: &str, body: Yaml| Yaml::map([("name", Yaml::str(name)), (kind, body)]);
    vec![
        volume("weft-config", "downwardAPI", Yaml::map([("items", Yaml::Seq(vec![config_item]))])),
        volume("weft-trust", "configMap", trust),
        volume("weft-token", "projected", Yaml::map([("sources", Yaml::Seq(vec![token]))])),
        volume(
            "weft-identity",
            "emptyDir",
            Yaml::map([("medium", Yaml::str("Memory")), ("sizeLimit", Yaml::str("1Mi"))]),
        ),
        volume("weft-state", "emptyDir", Yaml::map([("sizeLimit", Yaml::str("16Mi"))])),
        volume("weft-xtables-lock", "emptyDir", Yaml::Map(vec![])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::settings;

    fn facts() -> PodFacts {
        PodFacts {
            service: "web".into(),
            namespace: Some("shop".into()),
            app_port: Some(8080),
            probe_ports: vec![8081],
        }
    }

    #[test]
    fn the_proxy_document_passes_weft_check() {
        let mut s = settings::read(None, &[], &Options::default()).unwrap();
        s.log_level = Some("weft_proxy=debug".into());
        s.shutdown_grace = Some(("45s".into(), std::time::Duration::from_secs(45)));
        let text = proxy_config(&facts(), &s, &Options::default());
        let docs = weft_api::parse_file("proxy.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let [weft_api::Document::Proxy(p)] = docs.as_slice() else { panic!("{docs:?}") };
        let cp = p.spec.control_plane.as_ref().unwrap();
        assert_eq!(cp.address, "https://weft-control.weft:8086");
        assert_eq!(cp.service_account_token_file.as_deref(), Some("/var/run/secrets/weft.dev/token"));
        assert_eq!(cp.trust_bundle_file.as_deref(), Some("/var/run/weft/trust/ca.pem"));
        assert_eq!(p.spec.identity_dir.as_deref(), Some(IDENTITY_DIR));
        assert_eq!(p.spec.inbound.as_ref().unwrap().app.port(), 8080);
        assert_eq!(p.spec.shutdown_grace, std::time::Duration::from_secs(45));
        assert_eq!(p.spec.log.level, "weft_proxy=debug");
        assert_eq!(p.metadata.namespace, "shop");
    }

    #[test]
    fn init_skips_the_admin_and_probe_ports_and_names_the_proxy_uid() {
        let s = settings::Settings {
            skip_inbound_ports: vec![9000, 8081],
            skip_subnets: vec!["10.0.0.0/8".into()],
            ipv6: true,
            ..settings::read(None, &[], &Options::default()).unwrap()
        };
        let init = init_container(&facts(), &s);
        let args: Vec<&str> = init.get("args").unwrap().items().iter().filter_map(Yaml::as_str).collect();
        assert_eq!(
            args,
            [
                "init",
                "--proxy-uid",
                "2102",
                "--proxy-gid",
                "2102",
                "--inbound-port",
                "4143",
                "--outbound-port",
                "4140",
                "--admin-port",
                "4191",
                "--skip-inbound-ports",
                "4191,8081,9000",
                "--skip-subnets",
                "10.0.0.0/8",
                "--ipv6",
                "--mode",
                "auto"
            ]
        );
        let caps = init.path(&["securityContext", "capabilities"]).unwrap();
        assert_eq!(caps.get("drop").unwrap().items(), [Yaml::str("ALL")]);
        assert_eq!(init.path(&["securityContext", "runAsUser"]), Some(&Yaml::int(0)));
    }

    /// Moved ports and uid reach every place that names them: the init rules, the listeners,
    /// the container's ports, the probes, the postStart hook and the security context.
    #[test]
    fn custom_ports_and_uid_flow_everywhere() {
        let s = settings::Settings {
            ports: settings::ProxyPorts { inbound: 5143, outbound: 5140, admin: 5191 },
            proxy_uid: 3000,
            mode: SidecarMode::FirstContainer,
            ..settings::read(None, &[], &Options::default()).unwrap()
        };
        let init = init_container(&facts(), &s);
        let args: Vec<&str> = init.get("args").unwrap().items().iter().filter_map(Yaml::as_str).collect();
        let flag = |f: &str| args[args.iter().position(|a| *a == f).unwrap() + 1];
        assert_eq!(
            [flag("--proxy-uid"), flag("--proxy-gid"), flag("--inbound-port"), flag("--outbound-port")],
            ["3000", "3000", "5143", "5140"]
        );
        assert_eq!((flag("--admin-port"), flag("--skip-inbound-ports")), ("5191", "5191,8081"));

        let config = proxy_config(&facts(), &s, &Options::default());
        let docs = weft_api::parse_file("proxy.yaml", &config).unwrap();
        let [weft_api::Document::Proxy(p)] = docs.as_slice() else { panic!("{docs:?}") };
        assert_eq!(p.spec.inbound.as_ref().unwrap().listen.port(), 5143);
        assert_eq!(p.spec.outbound.as_ref().unwrap().listen.port(), 5140);
        assert_eq!(p.spec.admin.listen.port(), 5191);

        let proxy = proxy_container(&s);
        let ports: Vec<&str> =
            proxy.get("ports").unwrap().items().iter().filter_map(|p| p.get("containerPort")?.as_str()).collect();
        assert_eq!(ports, ["5143", "5191"]);
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            assert_eq!(proxy.path(&[probe, "httpGet", "port"]), Some(&Yaml::int(5191)), "{probe}");
        }
        let hook: Vec<&str> = proxy
            .path(&["lifecycle", "postStart", "exec", "command"])
            .unwrap()
            .items()
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        assert_eq!(&hook[1..4], ["await", "--admin", "127.0.0.1:5191"]);
        assert_eq!(proxy.path(&["securityContext", "runAsUser"]), Some(&Yaml::int(3000u32)));
        assert_eq!(proxy.path(&["securityContext", "runAsGroup"]), Some(&Yaml::int(3000u32)));
    }
}
