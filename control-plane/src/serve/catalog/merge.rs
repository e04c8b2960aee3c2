//! One pod, one endpoint: how a meshed pod that both the cluster and its own proxy report is
//! published.
//!
//! Kubernetes lists the pod by its address and app port (`10.1.2.3:8080`, from its
//! EndpointSlice); its proxy self-registers its inbound listener (`10.1.2.3:4143`) with the
//! SPIFFE id it proved. Published as they are, the pod would count twice in every balancer, and
//! the slice's endpoint would be called in plaintext, which a strict-mTLS pod refuses. So, for
//! a service the cluster lists pods of:
//! - the cluster decides which pods take traffic (ready, draining, gone): a self-registration
//!   from one of the service's pod addresses is not published itself;
//! - it lends its identity to the cluster's endpoints at the same IP, so they are called with
//!   mTLS (the server pod's rules redirect the call to its proxy, keeping the port).
//!
//! A self-registration from an address the cluster does not list for that service (a VM, a
//! namespace not watched) is published as always. Services the cluster lists no pods of take
//! the fast path: their instances are published as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use weft_api::EndpointSpec;

use super::Instance;

/// The source whose instances carry the identity a proxy proved.
pub const MESHED: &str = "self-registration";

/// The endpoints published for one service's `instances`, given the pod IPs the cluster lists
/// for it (`None`: the cluster knows no pods of it).
pub fn effective(
    instances: &BTreeMap<SocketAddr, Instance>,
    pods: Option<&BTreeSet<IpAddr>>,
) -> BTreeMap<SocketAddr, EndpointSpec> {
    let Some(pods) = pods.filter(|p| !p.is_empty()) else {
        return instances.iter().map(|(a, i)| (*a, i.spec().clone())).collect();
    };
    let identities: HashMap<IpAddr, &str> = instances
        .iter()
        .filter(|(a, _)| pods.contains(&a.ip()))
        .filter_map(|(a, i)| Some((a.ip(), i.claim_of(MESHED)?.identity.as_deref()?)))
        .collect();
    let mut out = BTreeMap::new();
    for (addr, instance) in instances {
        let pod = pods.contains(&addr.ip());
        if pod && instance.sources().all(|s| s == MESHED) {
            continue;
        }
        let mut spec = instance.spec().clone();
        if pod && spec.identity.is_none() {
            spec.identity = identities.get(&addr.ip()).map(|id| id.to_string());
        }
        out.insert(*addr, spec);
    }
    out
}

/// What changed between two publications of a service: upserts, then removals.
pub fn diff(
    before: &BTreeMap<SocketAddr, EndpointSpec>,
    after: &BTreeMap<SocketAddr, EndpointSpec>,
) -> (Vec<EndpointSpec>, Vec<SocketAddr>) {
    let upserts = after.iter().filter(|(a, s)| before.get(a) != Some(s)).map(|(_, s)| s.clone()).collect();
    let removes = before.keys().filter(|a| !after.contains_key(a)).copied().collect();
    (upserts, removes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(addr: &str, identity: Option<&str>) -> EndpointSpec {
        EndpointSpec { address: addr.parse().unwrap(), weight: 1, identity: identity.map(String::from) }
    }

    fn instances(list: &[(&'static str, EndpointSpec)]) -> BTreeMap<SocketAddr, Instance> {
        let mut out: BTreeMap<SocketAddr, Instance> = BTreeMap::new();
        for (source, s) in list {
            match out.get_mut(&s.address) {
                Some(i) => {
                    i.claim(source, s.clone());
                }
                None => {
                    out.insert(s.address, Instance::new(source, s.clone()));
                }
            }
        }
        out
    }

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[test]
    fn a_meshed_pod_is_one_endpoint_at_its_app_port_with_its_proxys_identity() {
        let all = instances(&[
            ("kubernetes", spec("10.1.0.1:8080", None)),
            ("kubernetes", spec("10.1.0.2:8080", None)),
            (MESHED, spec("10.1.0.1:4143", Some(WEB))),
            // A pod the cluster lists but no longer as ready: its proxy's registration alone
            // must not bring it back.
            (MESHED, spec("10.1.0.3:4143", Some(WEB))),
            // A VM outside the cluster.
            (MESHED, spec("192.168.1.9:4143", Some(WEB))),
        ]);
        let pods: BTreeSet<IpAddr> = ["10.1.0.1", "10.1.0.2", "10.1.0.3"].iter().map(|s| s.parse().unwrap()).collect();
        let published: Vec<EndpointSpec> = effective(&all, Some(&pods)).into_values().collect();
        assert_eq!(
            published,
            [spec("10.1.0.1:8080", Some(WEB)), spec("10.1.0.2:8080", None), spec("192.168.1.9:4143", Some(WEB))]
        );
        // Without the cluster's pods, every instance is published as it is.
        assert_eq!(effective(&all, None).len(), 5);
    }

    #[test]
    fn diff_sends_only_what_changed() {
        let before = BTreeMap::from([
            ("10.0.0.1:80".parse().unwrap(), spec("10.0.0.1:80", None)),
            ("10.0.0.2:80".parse().unwrap(), spec("10.0.0.2:80", None)),
        ]);
        let after = BTreeMap::from([
            ("10.0.0.1:80".parse().unwrap(), spec("10.0.0.1:80", Some(WEB))),
            ("10.0.0.3:80".parse().unwrap(), spec("10.0.0.3:80", None)),
        ]);
        let (upserts, removes) = diff(&before, &after);
        assert_eq!(upserts, [spec("10.0.0.1:80", Some(WEB)), spec("10.0.0.3:80", None)]);
        assert_eq!(removes, ["10.0.0.2:80".parse::<SocketAddr>().unwrap()]);
    }
}
