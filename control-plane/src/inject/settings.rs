//! What a pod asks of its sidecar: the `weft.dev/*` annotations read and checked, on top of the
//! injector's defaults. Every bad value is reported at once; nothing is injected half-right.

use std::net::IpAddr;
use std::time::Duration;

use super::tree::Yaml;

/// The annotations (and the one label) the injector reads; a contract listed in docs/kubernetes.md.
pub(crate) mod key {
    pub(crate) const INJECT: &str = "weft.dev/inject";
    pub(crate) const INJECTED: &str = "weft.dev/injected";
    pub(crate) const PROXY_CONFIG: &str = "weft.dev/proxy-config";
    pub(crate) const SERVICE: &str = "weft.dev/service";
    pub(crate) const SKIP_INBOUND: &str = "weft.dev/skip-inbound-ports";
    pub(crate) const SKIP_OUTBOUND: &str = "weft.dev/skip-outbound-ports";
    pub(crate) const SKIP_SUBNETS: &str = "weft.dev/skip-subnets";
    pub(crate) const LOG_LEVEL: &str = "weft.dev/proxy-log-level";
    pub(crate) const NATIVE: &str = "weft.dev/native-sidecar";
    pub(crate) const IMAGE: &str = "weft.dev/proxy-image";
    pub(crate) const IPV6: &str = "weft.dev/ipv6";
    pub(crate) const GRACE: &str = "weft.dev/shutdown-grace-period";
    pub(crate) const CPU_REQUEST: &str = "weft.dev/proxy-cpu-request";
    pub(crate) const CPU_LIMIT: &str = "weft.dev/proxy-cpu-limit";
    pub(crate) const MEMORY_REQUEST: &str = "weft.dev/proxy-memory-request";
    pub(crate) const MEMORY_LIMIT: &str = "weft.dev/proxy-memory-limit";
    pub(crate) const INBOUND_PORT: &str = "weft.dev/proxy-inbound-port";
    pub(crate) const OUTBOUND_PORT: &str = "weft.dev/proxy-outbound-port";
    pub(crate) const ADMIN_PORT: &str = "weft.dev/proxy-admin-port";
    pub(crate) const PROXY_UID: &str = "weft.dev/proxy-uid";
}

/// The proxy's uid and gid unless `weft.dev/proxy-uid` says otherwise: `weft-proxy init`
/// exempts this uid from the outbound redirection, so the proxy's own connections never loop.
/// The images run as it too (images/*.Dockerfile).
pub const PROXY_UID: u32 = 2102;
/// The proxy's listener ports unless the `weft.dev/proxy-*-port` annotations say otherwise.
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;

/// The injector's own defaults (flags of `weft inject`, values of the chart's webhook).
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The control plane every proxy subscribes to
    #[arg(long, value_name = "URL", default_value_t = Options::default().control_plane)]
    pub control_plane: String,
    /// The image holding `weft-proxy` (both the init step and the sidecar run it)
    #[arg(long, value_name = "IMAGE", default_value_t = Options::default().image)]
    pub image: String,
    /// The ConfigMap (key `ca.pem`) with the mesh's trust bundle, in the pod's namespace
    #[arg(long, value_name = "NAME", default_value_t = Options::default().trust_bundle_configmap)]
    pub trust_bundle_configmap: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            control_plane: "https://weft-control.weft:8086".to_string(),
            image: format!("weft/weft-proxy:{}", env!("CARGO_PKG_VERSION")),
            trust_bundle_configmap: "weft-trust-bundle".to_string(),
        }
    }
}

/// Whether the pod asked for a sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OptIn {
    Enabled,
    Disabled,
    /// Nothing said: the CLI injects; the webhook only sees pods its selectors matched.
    Unset,
}

/// Where the proxy runs: a native sidecar (Kubernetes 1.29+) or first among the containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SidecarMode {
    Native,
    FirstContainer,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Resources {
    pub(crate) cpu_request: String,
    pub(crate) cpu_limit: String,
    pub(crate) memory_request: String,
    pub(crate) memory_limit: String,
}

/// Where the proxy listens. One set, read once, so the init rules, the listeners, the probes and
/// the `await` calls cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProxyPorts {
    pub(crate) inbound: u16,
    pub(crate) outbound: u16,
    pub(crate) admin: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    pub(crate) service: Option<String>,
    pub(crate) skip_inbound_ports: Vec<u16>,
    pub(crate) skip_outbound_ports: Vec<u16>,
    pub(crate) skip_subnets: Vec<String>,
    pub(crate) log_level: Option<String>,
    pub(crate) mode: SidecarMode,
    pub(crate) image: String,
    pub(crate) ipv6: bool,
    pub(crate) shutdown_grace: Option<(String, Duration)>,
    pub(crate) resources: Resources,
    pub(crate) ports: ProxyPorts,
    /// Also the gid.
    pub(crate) proxy_uid: u32,
}

/// Reads `weft.dev/inject` from the annotations, then the labels (a label lets the webhook
/// select on it).
pub(crate) fn opt_in(metadata: Option<&Yaml>) -> Result<OptIn, String> {
    let read = |field: &str| metadata.and_then(|m| m.path(&[field, key::INJECT])).and_then(Yaml::as_str);
    match read("annotations").or_else(|| read("labels")) {
        None => Ok(OptIn::Unset),
        Some("enabled") => Ok(OptIn::Enabled),
        Some("disabled") => Ok(OptIn::Disabled),
        Some(other) => Err(format!("{}: {other:?} is neither enabled nor disabled", key::INJECT)),
    }
}

/// Reads the pod's annotations. `container_ports` are the TCP ports the pod's own containers
/// declare (container name, port): the proxy's ports must not take one of them.
pub(crate) fn read(
    annotations: Option<&Yaml>,
    container_ports: &[(String, u16)],
    options: &Options,
) -> Result<Settings, Vec<String>> {
    let mut problems = Vec::new();
    let get = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Yaml::as_str).map(str::trim);
    let mut check = |k: &str, r: Result<(), String>| {
        if let Err(e) = r {
            problems.push(format!("{k}: {e}"));
        }
    };
    let mut ports = |k: &str| match get(k).map(parse_ports).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            check(k, Err(e));
            Vec::new()
        }
    };
    let skip_inbound_ports = ports(key::SKIP_INBOUND);
    let skip_outbound_ports = ports(key::SKIP_OUTBOUND);
    let skip_subnets: Vec<String> = get(key::SKIP_SUBNETS).map(list).unwrap_or_default();
    for s in &skip_subnets {
        check(key::SKIP_SUBNETS, check_cidr(s));
    }
    let service = get(key::SERVICE).map(str::to_string);
    if let Some(s) = &service {
        check(key::SERVICE, check_dns_label(s));
    }
    let log_level = get(key::LOG_LEVEL).map(str::to_string);
    if let Some(l) = &log_level {
        check(key::LOG_LEVEL, weft_api::validate::check_log_level(l));
    }
    let mode = match get(key::NATIVE) {
        None | Some("true") => SidecarMode::Native,
        Some("false") => SidecarMode::FirstContainer,
        Some(other) => {
            check(key::NATIVE, Err(format!("{other:?} is neither true nor false")));
            SidecarMode::Native
        }
    };
    let ipv6 = match get(key::IPV6) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            check(key::IPV6, Err(format!("{other:?} is neither true nor false")));
            false
        }
    };
    let shutdown_grace = match get(key::GRACE).map(|g| (g, weft_api::duration::parse_duration(g))) {
        None => None,
        Some((g, Ok(d))) if !d.is_zero() => Some((g.to_string(), d)),
        Some((g, _)) => {
            check(key::GRACE, Err(format!("{g:?} is not a positive duration such as 30s")));
            None
        }
    };
    let mut quantity = |k: &str, default: &str| match get(k) {
        Some(q) if is_quantity(q) => q.to_string(),
        Some(q) => {
            check(k, Err(format!("{q:?} is not a Kubernetes quantity such as 100m or 64Mi")));
            default.to_string()
        }
        None => default.to_string(),
    };
    let resources = Resources {
        cpu_request: quantity(key::CPU_REQUEST, "100m"),
        cpu_limit: quantity(key::CPU_LIMIT, "1"),
        memory_request: quantity(key::MEMORY_REQUEST, "32Mi"),
        memory_limit: quantity(key::MEMORY_LIMIT, "256Mi"),
    };
    let mut port = |k: &str, default: u16| match get(k).map(parse_port).transpose() {
        Ok(p) => Some((k.to_string(), p.is_some(), p.unwrap_or(default))),
        Err(e) => {
            check(k, Err(e));
            None
        }
    };
    let listeners = [
        port(key::INBOUND_PORT, INBOUND_PORT),
        port(key::OUTBOUND_PORT, OUTBOUND_PORT),
        port(key::ADMIN_PORT, ADMIN_PORT),
    ];
    problems.extend(port_conflicts(&listeners, container_ports));
    let [inbound, outbound, admin] = listeners.map(|l| l.map(|(_, _, p)| p));
    let ports = ProxyPorts {
        inbound: inbound.unwrap_or(INBOUND_PORT),
        outbound: outbound.unwrap_or(OUTBOUND_PORT),
        admin: admin.unwrap_or(ADMIN_PORT),
    };
    let proxy_uid = match get(key::PROXY_UID).map(parse_uid) {
        None => PROXY_UID,
        Some(Ok(uid)) => uid,
        Some(Err(e)) => {
            problems.push(format!("{}: {e}", key::PROXY_UID));
            PROXY_UID
        }
    };
    let image = get(key::IMAGE).unwrap_or(&options.image).to_string();
    if image.is_empty() {
        problems.push(format!("{}: must not be empty", key::IMAGE));
    }
    if problems.is_empty() {
        Ok(Settings {
            service,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_subnets,
            log_level,
            mode,
            image,
            ipv6,
            shutdown_grace,
            resources,
            ports,
            proxy_uid,
        })
    } else {
        Err(problems)
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    list(s).iter().map(|p| parse_port(p)).collect()
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{s:?} is not a port (1-65535)"))
}

/// The proxy's three ports (annotation, whether it was set, port; `None` when unreadable) must
/// differ from each other and from the pod's own: the proxy shares the pod's network namespace.
fn port_conflicts(listeners: &[Option<(String, bool, u16)>], container_ports: &[(String, u16)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, (k, set, port)) in listeners.iter().enumerate().filter_map(|(i, l)| Some((i, l.as_ref()?))) {
        let default = if *set { "" } else { " (the default)" };
        let earlier = listeners[..i].iter().flatten().find(|(_, _, p)| p == port);
        if let Some((other, _, _)) = earlier {
            problems.push(format!("{k}: {port}{default} is also {other}; the proxy's ports must differ"));
        }
        if let Some((container, _)) = container_ports.iter().find(|(_, p)| p == port) {
            problems.push(format!(
                "{k}: {port}{default} is also a port of container {container:?}; set {k} to a port the pod does not use"
            ));
        }
    }
    problems
}

fn parse_uid(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => {
            Err("0 is root: the proxy runs as a non-root uid, which the init rules exempt from redirection".into())
        }
        Ok(uid) if uid < u32::MAX => Ok(uid),
        _ => Err(format!("{s:?} is not a uid (1-4294967294)")),
    }
}

fn check_cidr(s: &str) -> Result<(), String> {
    let (addr, len) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR such as 10.0.0.0/8"))?;
    let max = match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => 32,
        Ok(IpAddr::V6(_)) => 128,
        Err(_) => return Err(format!("{s:?}: {addr:?} is not an IP address")),
    };
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(format!("{s:?}: the prefix length must be 0 to {max}")),
    }
}

pub(crate) fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{s:?} is not a DNS label (lower-case letters, digits and '-')")) }
}

/// A Kubernetes resource quantity: a decimal number with an optional SI or binary suffix.
fn is_quantity(s: &str) -> bool {
    const SUFFIXES: [&str; 14] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P"];
    let number = SUFFIXES.iter().find_map(|x| s.strip_suffix(x)).unwrap_or(s);
    let mut parts = number.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !number.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        && (!whole.is_empty() || frac.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Yaml {
        Yaml::Map(pairs.iter().map(|(k, v)| (k.to_string(), Yaml::str(*v))).collect())
    }

    #[test]
    fn defaults_apply_when_nothing_is_asked() {
        let s = read(None, &[], &Options::default()).unwrap();
        assert_eq!(s.mode, SidecarMode::Native);
        assert_eq!((s.skip_inbound_ports.len(), s.ipv6, s.log_level), (0, false, None));
        assert_eq!(s.resources.cpu_request, "100m");
        assert_eq!(s.image, format!("weft/weft-proxy:{}", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn annotations_tune_the_sidecar() {
        let a = annotations(&[
            (key::SKIP_INBOUND, "9000, 9001"),
            (key::SKIP_OUTBOUND, "5432"),
            (key::SKIP_SUBNETS, "10.0.0.0/8,fd00::/8"),
            (key::LOG_LEVEL, "debug"),
            (key::NATIVE, "false"),
            (key::IPV6, "true"),
            (key::GRACE, "45s"),
            (key::CPU_LIMIT, "500m"),
            (key::MEMORY_REQUEST, "1.5Gi"),
        ]);
        let s = read(Some(&a), &[], &Options::default()).unwrap();
        assert_eq!((s.skip_inbound_ports, s.skip_outbound_ports), (vec![9000, 9001], vec![5432]));
        assert_eq!(s.skip_subnets, ["10.0.0.0/8", "fd00::/8"]);
        assert_eq!((s.mode, s.ipv6), (SidecarMode::FirstContainer, true));
        assert_eq!(s.shutdown_grace, Some(("45s".to_string(), Duration::from_secs(45))));
        assert_eq!((s.resources.cpu_limit.as_str(), s.resources.memory_request.as_str()), ("500m", "1.5Gi"));
    }

    #[test]
    fn every_bad_value_is_reported() {
        let a = annotations(&[
            (key::SKIP_INBOUND, "80,http"),
            (key::SKIP_SUBNETS, "10.0.0.0/33"),
            (key::NATIVE, "yes"),
            (key::CPU_REQUEST, "lots"),
            (key::GRACE, "0s"),
            (key::SERVICE, "Web"),
        ]);
        let p = read(Some(&a), &[], &Options::default()).unwrap_err();
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p[0].starts_with("weft.dev/skip-inbound-ports: \"http\" is not a port"), "{p:?}");
        assert!(p.iter().any(|m| m.contains("prefix length must be 0 to 32")));
        assert!(p.iter().any(|m| m.starts_with("weft.dev/native-sidecar: \"yes\"")));
    }

    #[test]
    fn the_proxy_ports_and_uid_default_to_the_images_and_can_be_moved() {
        let s = read(None, &[], &Options::default()).unwrap();
        assert_eq!(s.ports, ProxyPorts { inbound: 4143, outbound: 4140, admin: 4191 });
        assert_eq!(s.proxy_uid, 2102);
        let a = annotations(&[
            (key::INBOUND_PORT, "5143"),
            (key::OUTBOUND_PORT, " 5140 "),
            (key::ADMIN_PORT, "5191"),
            (key::PROXY_UID, "3000"),
        ]);
        let app = [("app".to_string(), 4191)];
        let s = read(Some(&a), &app, &Options::default()).unwrap();
        assert_eq!(s.ports, ProxyPorts { inbound: 5143, outbound: 5140, admin: 5191 });
        assert_eq!(s.proxy_uid, 3000);
    }

    #[test]
    fn a_bad_port_or_uid_is_reported_with_its_key() {
        for (k, v, want) in [
            (key::INBOUND_PORT, "http", "weft.dev/proxy-inbound-port: \"http\" is not a port (1-65535)"),
            (key::OUTBOUND_PORT, "0", "weft.dev/proxy-outbound-port: \"0\" is not a port (1-65535)"),
            (key::ADMIN_PORT, "65536", "weft.dev/proxy-admin-port: \"65536\" is not a port (1-65535)"),
            (key::ADMIN_PORT, "4191,4192", "weft.dev/proxy-admin-port: \"4191,4192\" is not a port (1-65535)"),
            (key::PROXY_UID, "0", "weft.dev/proxy-uid: 0 is root: the proxy runs as a non-root uid"),
            (key::PROXY_UID, "-5", "weft.dev/proxy-uid: \"-5\" is not a uid (1-4294967294)"),
            (key::PROXY_UID, "4294967295", "weft.dev/proxy-uid: \"4294967295\" is not a uid"),
            (key::PROXY_UID, "proxy", "weft.dev/proxy-uid: \"proxy\" is not a uid"),
        ] {
            let p = read(Some(&annotations(&[(k, v)])), &[], &Options::default()).unwrap_err();
            assert_eq!(p.len(), 1, "{k}: {v}: {p:?}");
            assert!(p[0].starts_with(want), "{k}: {v}: {p:?}");
        }
    }

    #[test]
    fn the_proxy_ports_must_differ_from_each_other_and_from_the_pods() {
        let a = annotations(&[(key::OUTBOUND_PORT, "4143"), (key::ADMIN_PORT, "8080")]);
        let pod = [("web".to_string(), 8080), ("metrics".to_string(), 9090)];
        let p = read(Some(&a), &pod, &Options::default()).unwrap_err();
        assert_eq!(
            p,
            [
                "weft.dev/proxy-outbound-port: 4143 is also weft.dev/proxy-inbound-port; the proxy's ports must differ",
                "weft.dev/proxy-admin-port: 8080 is also a port of container \"web\"; set weft.dev/proxy-admin-port \
                 to a port the pod does not use",
            ]
        );
        let app_on_default = [("app".to_string(), 4191)];
        let p = read(None, &app_on_default, &Options::default()).unwrap_err();
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("weft.dev/proxy-admin-port: 4191 (the default) is also a port of container \"app\""));
        let a = annotations(&[(key::INBOUND_PORT, "x"), (key::ADMIN_PORT, "4140")]);
        let p = read(Some(&a), &[], &Options::default()).unwrap_err();
        assert_eq!(p.len(), 2, "an unreadable port is reported once, not compared: {p:?}");
        assert!(p[1].starts_with("weft.dev/proxy-admin-port: 4140 is also weft.dev/proxy-outbound-port"), "{p:?}");
    }

    #[test]
    fn opt_in_reads_annotations_before_labels() {
        let meta = |field: &str, v: &str| Yaml::map([(field, annotations(&[(key::INJECT, v)]))]);
        assert_eq!(opt_in(None), Ok(OptIn::Unset));
        assert_eq!(opt_in(Some(&meta("annotations", "disabled"))), Ok(OptIn::Disabled));
        assert_eq!(opt_in(Some(&meta("labels", "enabled"))), Ok(OptIn::Enabled));
        assert!(opt_in(Some(&meta("labels", "on"))).unwrap_err().contains("neither enabled nor disabled"));
    }

    #[test]
    fn quantities() {
        for q in ["1", "100m", "0.5", "64Mi", "1.5Gi", ".5"] {
            assert!(is_quantity(q), "{q}");
        }
        for q in ["", "m", "1.", "-1", "1 Mi", "1mi", "1e3x"] {
            assert!(!is_quantity(q), "{q}");
        }
    }
}
