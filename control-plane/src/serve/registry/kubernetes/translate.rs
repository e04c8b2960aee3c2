//! Kubernetes Services and EndpointSlices as the catalog sees them: for every Service, its
//! endpoints (pod address and target port of the Service's first port) and a Weft Service
//! document carrying that port and its virtual IPs (the ClusterIPs the transparent outbound listener
//! routes by). Pure functions over the watched objects, so every rule below is unit-tested
//! without an API server.
//!
//! Rules, as kube-proxy applies them:
//! - a slice belongs to the Service named by its `kubernetes.io/service-name` label, in its own
//!   namespace; a Service has any number of slices, and an address listed twice counts once;
//! - only `IPv4` and `IPv6` slices carry addresses (`FQDN` slices are skipped);
//! - the endpoint's port is the slice port whose name is the Service's first port's name (an
//!   unnamed single port matches the unnamed one); a slice without that port adds nothing;
//! - `ready` nil means ready. Endpoints that are terminating but still `serving` are used only
//!   when the Service has no ready endpoint at all (the graceful-drain rule), so a rollout
//!   moves traffic to new pods first and never to nothing while old pods can still answer;
//! - a port's protocol comes from `appProtocol` (`http`, `kubernetes.io/h2c`, `http2`, `h2c`,
//!   `grpc`), else from the port name's prefix (`http`, `http2`/`h2c`, `grpc`, as Istio reads
//!   it), else `tcp`; UDP and SCTP ports are not served by the proxy and are left out;
//! - headless Services (`clusterIP: None`) and `ExternalName` Services have no virtual IP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use weft_api::{EndpointSpec, Metadata, Protocol, Service, ServicePort, ServiceSpec};

/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// (namespace, name) of a Kubernetes object.
pub type ObjectKey = (String, String);

/// What the cluster says, as the catalog and the policy take it.
#[derive(Debug, Default, PartialEq)]
pub struct Translated {
    /// Endpoints by service key `name.namespace`, sorted by address. Every Service has an
    /// entry, empty when it has no usable endpoint.
    pub endpoints: BTreeMap<String, Vec<EndpointSpec>>,
    /// A Weft Service document per Kubernetes Service with at least one TCP port.
    pub services: Vec<Service>,
    /// Every pod IP a Service's slices list, whatever its conditions: a proxy registering from
    /// one of them is that pod's (see catalog/merge.rs).
    pub pods: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// Translates the watched Services and EndpointSlices.
pub fn translate(
    services: &BTreeMap<ObjectKey, KubeService>,
    slices: &BTreeMap<ObjectKey, EndpointSlice>,
) -> Translated {
    let mut by_service: BTreeMap<ObjectKey, Vec<&EndpointSlice>> = BTreeMap::new();
    for ((namespace, _), slice) in slices {
        if let Some(name) = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            by_service.entry((namespace.clone(), name.clone())).or_default().push(slice);
        }
    }
    let mut out = Translated::default();
    for ((namespace, name), svc) in services {
        let Some(doc) = service_document(namespace, name, svc) else {
            continue;
        };
        let first =
            svc.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p.iter().find(|p| is_tcp(&p.protocol)));
        let port_name = first.and_then(|p| p.name.as_deref()).unwrap_or("");
        let own = by_service.get(&(namespace.clone(), name.clone())).map(Vec::as_slice).unwrap_or_default();
        let key = format!("{name}.{namespace}");
        out.pods.insert(key.clone(), pod_ips(own));
        out.endpoints.insert(key, endpoints(own, port_name));
        out.services.push(doc);
    }
    out
}

fn is_tcp(protocol: &Option<String>) -> bool {
    protocol.as_deref().is_none_or(|p| p == "TCP")
}

/// The Weft Service for a Kubernetes Service: its first TCP port with its protocol, and its
/// ClusterIPs. Only the first port, because only its endpoints are known (see `endpoints`): a
/// call to a ClusterIP on another port must not be sent to the first port's pods, so it is left
/// to kube-proxy (passed through). None when it has no TCP port (nothing for the proxy to serve).
fn service_document(namespace: &str, name: &str, svc: &KubeService) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    let ports: Vec<ServicePort> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(&p.protocol))
        .take(1)
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p > 0)?;
            Some(ServicePort { port, protocol: protocol(p.app_protocol.as_deref(), p.name.as_deref()) })
        })
        .collect();
    if ports.is_empty() {
        return None;
    }
    let mut virtual_ips = Vec::new();
    if spec.type_.as_deref() != Some("ExternalName") {
        let listed = spec.cluster_ips.iter().flatten().chain(spec.cluster_ip.iter());
        for ip in listed.filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            if !virtual_ips.contains(&ip) && !ip.is_unspecified() {
                virtual_ips.push(ip);
            }
        }
    }
    Some(Service {
        metadata: Metadata {
            name: name.to_string(),
            namespace: namespace.to_string(),
            line: 0,
            fields: Default::default(),
        },
        spec: ServiceSpec { ports, endpoints: Vec::new(), virtual_ips },
    })
}

/// The protocol of a Service port, from its `appProtocol`, else its name's prefix.
pub fn protocol(app_protocol: Option<&str>, name: Option<&str>) -> Protocol {
    if let Some(app) = app_protocol {
        return match app.to_ascii_lowercase().as_str() {
            "http" | "http1" | "kubernetes.io/http" => Protocol::Http,
            "http2" | "h2c" | "kubernetes.io/h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            _ => Protocol::Tcp,
        };
    }
    let name = name.unwrap_or("").to_ascii_lowercase();
    let prefix = name.split('-').next().unwrap_or("");
    match prefix {
        "http" => Protocol::Http,
        "http2" | "h2c" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        _ => Protocol::Tcp,
    }
}

/// Whether an endpoint takes new traffic (ready), may take it while nothing is ready (serving
/// but terminating), or takes none.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Readiness {
    Ready,
    Draining,
    Out,
}

fn readiness(e: &Endpoint) -> Readiness {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    // `serving` was added later than `ready`; where absent it equals `ready`.
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    if ready && !terminating {
        Readiness::Ready
    } else if serving {
        Readiness::Draining
    } else {
        Readiness::Out
    }
}

/// The addresses of one Service's IPv4 and IPv6 slices, in any condition.
fn pod_ips(slices: &[&EndpointSlice]) -> BTreeSet<IpAddr> {
    slices
        .iter()
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .flat_map(|s| &s.endpoints)
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// The endpoints of one Service from its slices, on the slice port named `port_name`.
fn endpoints(slices: &[&EndpointSlice], port_name: &str) -> Vec<EndpointSpec> {
    let mut ready = BTreeSet::new();
    let mut draining = BTreeSet::new();
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let port = slice
            .ports
            .iter()
            .flatten()
            .filter(|p| is_tcp(&p.protocol))
            .find(|p| p.name.as_deref().unwrap_or("") == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        let Some(port) = port else { continue };
        for e in &slice.endpoints {
            let set = match readiness(e) {
                Readiness::Ready => &mut ready,
                Readiness::Draining => &mut draining,
                Readiness::Out => continue,
            };
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    set.insert(SocketAddr::new(ip, port));
                }
            }
        }
    }
    let chosen = if ready.is_empty() { draining } else { ready };
    chosen.into_iter().map(|address| EndpointSpec { address, weight: 1, identity: None }).collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ServicePort as KubePort, ServiceSpec as KubeSpec};
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(
        ns: &str,
        name: &str,
        cluster_ips: &[&str],
        ports: &[(&str, i32, Option<&str>)],
    ) -> (ObjectKey, KubeService) {
        let svc = KubeService {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
            spec: Some(KubeSpec {
                cluster_ip: cluster_ips.first().map(|s| s.to_string()),
                cluster_ips: Some(cluster_ips.iter().map(|s| s.to_string()).collect()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, app)| KubePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            app_protocol: app.map(str::to_string),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        ((ns.into(), name.into()), svc)
    }

    /// An endpoint with (ready, serving, terminating) conditions; None leaves them out.
    fn ep(addrs: &[&str], c: Option<(Option<bool>, Option<bool>, Option<bool>)>) -> Endpoint {
        Endpoint {
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            conditions: c.map(|(ready, serving, terminating)| EndpointConditions { ready, serving, terminating }),
            ..Default::default()
        }
    }

    fn slice(
        ns: &str,
        name: &str,
        svc: &str,
        family: &str,
        ports: &[(&str, i32)],
        eps: Vec<Endpoint>,
    ) -> (ObjectKey, EndpointSlice) {
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), svc.to_string())].into()),
                ..Default::default()
            },
            address_type: family.into(),
            endpoints: eps,
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort { name: Some(n.to_string()), port: Some(*p), ..Default::default() })
                    .collect(),
            ),
        };
        ((ns.into(), name.into()), slice)
    }

    fn addrs(t: &Translated, key: &str) -> Vec<String> {
        t.endpoints[key].iter().map(|e| e.address.to_string()).collect()
    }

    const READY: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(true), Some(true), Some(false)));
    const DRAINING: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(false), Some(true), Some(true)));
    const GONE: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(false), Some(false), Some(true)));
    const NOT_READY: Option<(Option<bool>, Option<bool>, Option<bool>)> = Some((Some(false), None, None));

    #[test]
    fn slices_join_their_service_by_label_on_the_first_ports_name_ipv4_and_ipv6() {
        let services = BTreeMap::from([
            service("shop", "web", &["10.96.0.10", "fd00:96::10"], &[("http", 80, None), ("metrics", 9090, None)]),
            service("other", "web", &["10.96.0.11"], &[("http", 80, None)]),
        ]);
        let slices = BTreeMap::from([
            slice("shop", "web-a", "web", "IPv4", &[("metrics", 9091), ("http", 8080)], vec![ep(&["10.0.0.1"], None)]),
            slice("shop", "web-b", "web", "IPv4", &[("http", 8080)], vec![ep(&["10.0.0.2", "10.0.0.1"], READY)]),
            slice("shop", "web-6", "web", "IPv6", &[("http", 8080)], vec![ep(&["fd00::2"], READY)]),
            slice("shop", "web-f", "web", "FQDN", &[("http", 8080)], vec![ep(&["web.example.com"], READY)]),
            slice("shop", "web-x", "web", "IPv4", &[("grpc", 7000)], vec![ep(&["10.0.0.9"], READY)]),
            slice("other", "web-c", "web", "IPv4", &[("http", 8081)], vec![ep(&["10.0.1.1"], READY)]),
            slice("shop", "stray", "nobody", "IPv4", &[("http", 1)], vec![ep(&["10.0.9.9"], READY)]),
        ]);
        let t = translate(&services, &slices);
        assert_eq!(
            addrs(&t, "web.shop"),
            ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::2]:8080"],
            "nil conditions mean ready; a repeated address counts once; FQDN and other ports skipped"
        );
        assert_eq!(addrs(&t, "web.other"), ["10.0.1.1:8081"], "slices stay in their namespace");
        let pods: Vec<String> = t.pods["web.shop"].iter().map(ToString::to_string).collect();
        assert_eq!(pods, ["10.0.0.1", "10.0.0.2", "10.0.0.9", "fd00::2"], "every pod IP of the Service, any port");
        assert_eq!(t.endpoints.len(), 2, "a slice of an unknown Service adds nothing");
        let web = &t.services[1];
        assert_eq!((web.metadata.name.as_str(), web.metadata.namespace.as_str()), ("web", "shop"));
        assert_eq!(web.spec.virtual_ips, ["10.96.0.10".parse::<IpAddr>().unwrap(), "fd00:96::10".parse().unwrap()]);
        assert_eq!(
            web.spec.ports,
            [ServicePort { port: 80, protocol: Protocol::Http }],
            "only the first port, whose endpoints are known; a call to 9090 is left to kube-proxy"
        );
    }

    #[test]
    fn terminating_but_serving_endpoints_are_used_only_when_nothing_is_ready() {
        let services = BTreeMap::from([service("ns", "api", &["10.96.0.5"], &[("", 80, None)])]);
        let at = |eps: Vec<Endpoint>| {
            let slices = BTreeMap::from([slice("ns", "api-1", "api", "IPv4", &[("", 8080)], eps)]);
            // An unnamed port: the EndpointSlice controller writes name "".
            addrs(&translate(&services, &slices), "api.ns")
        };
        // A rollout: the old pod drains while the new one is ready.
        assert_eq!(at(vec![ep(&["10.0.0.1"], DRAINING), ep(&["10.0.0.2"], READY)]), ["10.0.0.2:8080"]);
        // Only draining pods left: they still answer, so they keep the traffic.
        assert_eq!(at(vec![ep(&["10.0.0.1"], DRAINING), ep(&["10.0.0.3"], NOT_READY)]), ["10.0.0.1:8080"]);
        // Terminating and no longer serving, or not ready: none.
        assert_eq!(at(vec![ep(&["10.0.0.1"], GONE), ep(&["10.0.0.3"], NOT_READY)]), Vec::<String>::new());
        // Ready but terminating (older controllers set no `serving`): draining, not ready.
        let old = Some((Some(true), None, Some(true)));
        assert_eq!(at(vec![ep(&["10.0.0.1"], old), ep(&["10.0.0.2"], READY)]), ["10.0.0.2:8080"]);
    }

    #[test]
    fn headless_external_name_and_udp_only_services() {
        let mut headless = service("ns", "db", &["None"], &[("tcp-pg", 5432, None)]);
        headless.1.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let mut external = service("ns", "ext", &[], &[("https", 443, None)]);
        external.1.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        let mut dns = service("ns", "dns", &["10.96.0.53"], &[("dns", 53, None)]);
        dns.1.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
        let services = BTreeMap::from([headless, external, dns]);
        let slices =
            BTreeMap::from([slice("ns", "db-1", "db", "IPv4", &[("tcp-pg", 5432)], vec![ep(&["10.0.0.7"], READY)])]);
        let t = translate(&services, &slices);
        let names: Vec<&str> = t.services.iter().map(|s| s.metadata.name.as_str()).collect();
        assert_eq!(names, ["db", "ext"], "a UDP-only Service is nothing the proxy serves");
        assert!(t.services.iter().all(|s| s.spec.virtual_ips.is_empty()), "no virtual IP: {:?}", t.services);
        assert_eq!(addrs(&t, "db.ns"), ["10.0.0.7:5432"], "a headless Service's pods are still endpoints");
        assert_eq!(addrs(&t, "ext.ns"), Vec::<String>::new());
    }

    #[test]
    fn protocols_from_app_protocol_then_the_port_name() {
        let cases = [
            (Some("kubernetes.io/h2c"), Some("web"), Protocol::Http2),
            (Some("HTTP"), None, Protocol::Http),
            (Some("grpc"), Some("http"), Protocol::Grpc),
            (Some("kubernetes.io/ws"), Some("http"), Protocol::Tcp),
            (None, Some("http-api"), Protocol::Http),
            (None, Some("http2"), Protocol::Http2),
            (None, Some("grpc-web"), Protocol::Grpc),
            (None, Some("https"), Protocol::Tcp),
            (None, Some("redis"), Protocol::Tcp),
            (None, None, Protocol::Tcp),
        ];
        for (app, name, want) in cases {
            assert_eq!(protocol(app, name), want, "appProtocol {app:?}, name {name:?}");
        }
    }
}
