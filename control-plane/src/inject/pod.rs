//! Injects one pod template: decides whether to (opt-out, hostNetwork, another mesh), strips a
//! previous injection, then adds the init container, the sidecar, its volumes and annotations.

use super::settings::{self, OptIn, Options, SidecarMode, key};
use super::sidecar::{self, INIT_NAME, PROXY_NAME, PodFacts};
use super::tree::Yaml;
use super::wrap;

/// Containers that mean another mesh already manages the pod.
const OTHER_MESHES: [&str; 4] = ["linkerd-proxy", "linkerd-init", "istio-proxy", "istio-init"];

/// The workload around the template, for defaults and messages.
pub(crate) struct Workload<'a> {
    pub(crate) name: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
}

#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Injected; the notes are warnings worth a line on stderr.
    Injected(Vec<String>),
    /// Left unchanged, for this reason.
    Skipped(String),
}

/// Injects `template` (a mapping with `metadata` and `spec`) in place. On `Skipped` or an error
/// the caller keeps the original text: `template` may have been partly changed.
pub(crate) fn inject(template: &mut Yaml, w: &Workload, o: &Options) -> Result<Outcome, Vec<String>> {
    let opt_in = settings::opt_in(template.get("metadata")).map_err(|e| vec![e])?;
    if opt_in == OptIn::Disabled {
        return Ok(Outcome::Skipped(format!("{}: disabled", key::INJECT)));
    }
    let Some(spec) = template.get("spec").filter(|s| matches!(s, Yaml::Map(_))) else {
        return Err(vec!["the pod template has no spec".to_string()]);
    };
    if spec.get("hostNetwork").is_some_and(Yaml::is_true) {
        return Ok(Outcome::Skipped(
            "hostNetwork: true: the pod shares the node's network, which the redirection would capture".to_string(),
        ));
    }
    if let Some(other) = container_names(spec).into_iter().find(|n| OTHER_MESHES.contains(&n.as_str())) {
        return Ok(Outcome::Skipped(format!("already injected by another mesh (container {other:?})")));
    }
    let metadata = template.entry("metadata", Yaml::Map(Vec::new()), Some(0)).ok_or_else(not_a_mapping)?;
    let annotations = metadata.entry("annotations", Yaml::Map(Vec::new()), None).ok_or_else(not_a_mapping)?;
    let previously_wrapped = strip_annotations(annotations);
    let annotations = annotations.clone();
    let labels = template.path(&["metadata", "labels"]).cloned();
    let labels = labels.as_ref();
    let spec = template.get_mut("spec").ok_or_else(not_a_mapping)?;
    strip_pod(spec, &previously_wrapped);
    let s = settings::read(Some(&annotations), &container_ports(spec), o)?;

    let service = s
        .service
        .clone()
        .or_else(|| label(labels, "app.kubernetes.io/name"))
        .or_else(|| label(labels, "app"))
        .or_else(|| w.name.map(str::to_string))
        .ok_or_else(|| vec!["no service name: set the weft.dev/service annotation or an app label".to_string()])?;
    settings::check_dns_label(&service).map_err(|e| vec![format!("service name {e}; set weft.dev/service")])?;
    let containers = spec.get("containers").map(Yaml::items).unwrap_or_default();
    let first_app = containers.first().and_then(|c| c.get("name")).and_then(Yaml::as_str).map(str::to_string);
    let facts = PodFacts {
        service,
        namespace: w.namespace.map(str::to_string),
        app_port: containers.iter().find_map(first_tcp_port),
        probe_ports: probe_ports(containers),
    };
    let mut notes = Vec::new();
    // A native sidecar ends with the pod by itself; a first container has to be shut down.
    let wrapped = match (s.mode, wrap::completion(spec)) {
        (SidecarMode::FirstContainer, Some(completion)) => {
            let Some(Yaml::Seq(cs)) = spec.get_mut("containers") else {
                return Err(vec!["spec.containers is not a list".to_string()]);
            };
            let wrapped = wrap::wrap(cs, &s, completion);
            notes.extend(wrapped.warnings);
            wrapped.containers
        }
        _ => Vec::new(),
    };
    if let (Some((text, grace)), Some(pod_grace)) =
        (&s.shutdown_grace, spec.get("terminationGracePeriodSeconds").and_then(Yaml::as_str))
        && pod_grace.parse::<u64>().is_ok_and(|p| p < grace.as_secs())
    {
        notes.push(format!(
            "{} is {text} but terminationGracePeriodSeconds is {pod_grace}: the kubelet kills the proxy first",
            key::GRACE
        ));
    }

    let init = sidecar::init_container(&facts, &s);
    let proxy = sidecar::proxy_container(&s);
    let at_containers = position_of(spec, "containers");
    let inits = spec.entry("initContainers", Yaml::Seq(Vec::new()), at_containers).ok_or_else(not_a_mapping)?;
    let Yaml::Seq(inits) = inits else { return Err(vec!["spec.initContainers is not a list".to_string()]) };
    let (init_names, container_names) = match s.mode {
        // Init first, then the proxy: the user's own init containers already run meshed.
        SidecarMode::Native => {
            inits.splice(0..0, [init, proxy]);
            (vec![INIT_NAME, PROXY_NAME], vec![])
        }
        // Init last, so the user's init containers still reach the network before the proxy runs.
        SidecarMode::FirstContainer => {
            inits.push(init);
            let mut init_names = vec![INIT_NAME];
            if !wrapped.is_empty() {
                inits.push(wrap::bin_container(&s));
                init_names.push(wrap::BIN_NAME);
            }
            let Some(Yaml::Seq(cs)) = spec.get_mut("containers") else {
                return Err(vec!["spec.containers is not a list".to_string()]);
            };
            cs.insert(0, proxy);
            (init_names, vec![PROXY_NAME])
        }
    };
    let Some(Yaml::Seq(volumes)) = spec.entry("volumes", Yaml::Seq(Vec::new()), None) else {
        return Err(vec!["spec.volumes is not a list".to_string()]);
    };
    volumes.extend(sidecar::volumes(o));
    let mut volume_names = sidecar::VOLUMES.to_vec();
    if !wrapped.is_empty() {
        volumes.push(wrap::bin_volume());
        volume_names.push(wrap::BIN_NAME);
    }

    let mut record = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "initContainers": init_names,
        "containers": container_names,
        "volumes": volume_names,
    });
    if !wrapped.is_empty() {
        record["wrapped"] = serde_json::json!(wrapped);
    }
    let config = sidecar::proxy_config(&facts, &s, o);
    let annotations = template.path_mut(&["metadata", "annotations"]).ok_or_else(not_a_mapping)?;
    // `kubectl logs` and `exec` then pick the app, not the sidecar. Added before Weft's own
    // annotations, which go last, so a second injection writes the same order.
    if let Some(app) = first_app {
        annotations.entry("kubectl.kubernetes.io/default-container", Yaml::Str(app), None);
    }
    annotations.set(key::INJECTED, Yaml::Str(record.to_string()));
    annotations.set(key::PROXY_CONFIG, Yaml::Str(config));
    Ok(Outcome::Injected(notes))
}

fn not_a_mapping() -> Vec<String> {
    vec!["the pod template's metadata, annotations or spec is not a mapping".to_string()]
}

fn label(labels: Option<&Yaml>, name: &str) -> Option<String> {
    labels.and_then(|l| l.get(name)).and_then(Yaml::as_str).map(str::to_string)
}

fn position_of(map: &Yaml, key: &str) -> Option<usize> {
    match map {
        Yaml::Map(entries) => entries.iter().position(|(k, _)| k == key),
        _ => None,
    }
}

fn container_names(spec: &Yaml) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec.get(list).map(Yaml::items).unwrap_or_default())
        .filter_map(|c| c.get("name").and_then(Yaml::as_str).map(str::to_string))
        .collect()
}

/// Removes what an earlier `weft inject` added, so injecting again starts from the user's pod:
/// its containers and volumes, and the `await` around the commands it wrapped.
fn strip_pod(spec: &mut Yaml, wrapped: &[String]) {
    let ours =
        |item: &Yaml, names: &[&str]| item.get("name").and_then(Yaml::as_str).is_some_and(|n| names.contains(&n));
    let volumes: Vec<&str> = sidecar::VOLUMES.iter().copied().chain([wrap::BIN_NAME]).collect();
    for (list, names) in [
        ("initContainers", &[INIT_NAME, PROXY_NAME, wrap::BIN_NAME][..]),
        ("containers", &[PROXY_NAME][..]),
        ("volumes", &volumes[..]),
    ] {
        if let Some(Yaml::Seq(items)) = spec.get_mut(list) {
            items.retain(|item| !ours(item, names));
        }
    }
    if let Some(Yaml::Seq(containers)) = spec.get_mut("containers") {
        wrap::unwrap(containers, wrapped);
    }
}

/// Removes Weft's annotations; returns the containers whose command the earlier injection
/// wrapped (from its `weft.dev/injected` record).
fn strip_annotations(annotations: &mut Yaml) -> Vec<String> {
    let record = annotations.remove(key::INJECTED);
    annotations.remove(key::PROXY_CONFIG);
    let record: Option<serde_json::Value> =
        record.as_ref().and_then(Yaml::as_str).and_then(|r| serde_json::from_str(r).ok());
    record
        .as_ref()
        .and_then(|r| r.get("wrapped"))
        .and_then(serde_json::Value::as_array)
        .map(|names| names.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// A port number, or a named port of `container`.
fn resolve_port(port: &Yaml, container: &Yaml) -> Option<u16> {
    let text = port.as_str()?;
    text.parse().ok().or_else(|| {
        container
            .get("ports")?
            .items()
            .iter()
            .find_map(|p| (p.get("name")?.as_str()? == text).then(|| p.get("containerPort")?.as_str()?.parse().ok())?)
    })
}

fn tcp_ports(container: &Yaml) -> impl Iterator<Item = u16> + '_ {
    container.get("ports").map(Yaml::items).unwrap_or_default().iter().filter_map(|p| {
        let tcp = p.get("protocol").and_then(Yaml::as_str).is_none_or(|proto| proto == "TCP");
        if tcp { p.get("containerPort")?.as_str()?.parse().ok() } else { None }
    })
}

fn first_tcp_port(container: &Yaml) -> Option<u16> {
    tcp_ports(container).next()
}

/// The TCP ports of the pod's own containers (init containers too: a sidecar of the user's may
/// listen), by container name.
fn container_ports(spec: &Yaml) -> Vec<(String, u16)> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec.get(list).map(Yaml::items).unwrap_or_default())
        .flat_map(|c| {
            let name = c.get("name").and_then(Yaml::as_str).unwrap_or_default().to_string();
            tcp_ports(c).map(move |p| (name.clone(), p))
        })
        .collect()
}

/// The ports the kubelet's httpGet, tcpSocket and grpc probes reach: plaintext from the node,
/// so they must not be redirected into the (mTLS) inbound listener.
fn probe_ports(containers: &[Yaml]) -> Vec<u16> {
    let mut ports = Vec::new();
    for c in containers {
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            for handler in ["httpGet", "tcpSocket", "grpc"] {
                if let Some(port) = c.path(&[probe, handler, "port"]) {
                    ports.extend(resolve_port(port, c));
                }
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Yaml {
        Yaml::from_node(&weft_api::yaml::parse_stream(text).documents[0]).unwrap()
    }

    #[test]
    fn probe_ports_resolve_named_ports() {
        let c = parse(
            "containers:\n- name: app\n  ports: [{name: http, containerPort: 8080}, {name: health, containerPort: 8081}]\n  \
             livenessProbe: {httpGet: {path: /, port: health}}\n  readinessProbe: {tcpSocket: {port: 8080}}\n  \
             startupProbe: {grpc: {port: 9090}}\n",
        );
        assert_eq!(probe_ports(c.get("containers").unwrap().items()), [8080, 8081, 9090]);
    }

    #[test]
    fn the_first_tcp_port_is_the_app_port() {
        let c = parse("ports: [{containerPort: 53, protocol: UDP}, {containerPort: 8080}]\n");
        assert_eq!(first_tcp_port(&c), Some(8080));
    }
}
