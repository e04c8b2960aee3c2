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
}

/// The injector's own defaults (flags of `weft inject`, values of the chart's webhook).
#[derive(Clone, Debug)]
pub struct Options {
    /// The control plane every proxy subscribes to.
    pub control_plane: String,
    /// The image holding `weft-proxy` (both the init step and the sidecar run it).
    pub image: String,
    /// The ConfigMap (key `ca.pem`) with the mesh's trust bundle, in the pod's namespace.
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

pub(crate) fn read(annotations: Option<&Yaml>, options: &Options) -> Result<Settings, Vec<String>> {
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
        })
    } else {
        Err(problems)
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    list(s)
        .iter()
        .map(|p| p.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| format!("{p:?} is not a port (1-65535)")))
        .collect()
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
        let s = read(None, &Options::default()).unwrap();
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
        let s = read(Some(&a), &Options::default()).unwrap();
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
        let p = read(Some(&a), &Options::default()).unwrap_err();
        assert_eq!(p.len(), 6, "{p:#?}");
        assert!(p[0].starts_with("weft.dev/skip-inbound-ports: \"http\" is not a port"), "{p:?}");
        assert!(p.iter().any(|m| m.contains("prefix length must be 0 to 32")));
        assert!(p.iter().any(|m| m.starts_with("weft.dev/native-sidecar: \"yes\"")));
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
