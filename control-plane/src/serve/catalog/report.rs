//! Read-only views of the catalog: the `weft status` report and the admin JSON dump.

use std::collections::BTreeMap;
use std::time::Instant;

use weft_api::discovery::{ProxyStatus, ServiceStatus, StatusReport};

use super::{Catalog, lock};

impl Catalog {
    /// Everything for `weft status`.
    pub fn status(&self) -> StatusReport {
        let inner = lock(&self.inner);
        let now = Instant::now();
        let mut intervals = Vec::new();
        let mut proxies: Vec<ProxyStatus> = inner
            .subscribers
            .values()
            .map(|(sub, _)| {
                let p = lock(&sub.progress);
                intervals.extend(super::traffic::interval(&p.reports));
                let oldest = p.unacked.front().map(|(v, _)| *v);
                let lag = oldest
                    .and_then(|v| inner.published.get(inner.published.partition_point(|(pv, _)| *pv < v)))
                    .map(|(_, at)| *at)
                    .map(|at| now.duration_since(at).as_secs_f64())
                    .unwrap_or(0.0);
                ProxyStatus {
                    session: sub.public_id.clone(),
                    proxy_version: p.proxy_version.clone(),
                    mtls: p.mtls.clone(),
                    identity: sub.identity.clone(),
                    name: sub.name.clone(),
                    service: sub.self_key.clone(),
                    address: sub.address,
                    sent_version: p.sent,
                    acked_version: p.acked,
                    lag_seconds: lag,
                    connected_seconds: now.duration_since(sub.connected_at).as_secs_f64(),
                    resyncs: p.resyncs,
                    cert_expires_in_seconds: p.cert_not_after.map(|t| self.cert_expiry(t).0),
                    cert_near_expiry: p.cert_not_after.is_some_and(|t| self.cert_expiry(t).1),
                }
            })
            .collect();
        proxies.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        let services = inner
            .known
            .iter()
            .map(|key| {
                let mut instances = BTreeMap::new();
                for source in inner.instances.get(key).into_iter().flat_map(|m| m.values()).flat_map(|i| i.sources()) {
                    *instances.entry(source.to_string()).or_default() += 1;
                }
                ServiceStatus { service: key.clone(), instances }
            })
            .collect();
        StatusReport {
            version: inner.version,
            policy_valid: inner.policy_errors.is_empty(),
            policy_errors: inner.policy_errors.clone(),
            proxies,
            services,
            traffic: super::traffic::summarize(&intervals),
            ca_not_after: self.ca_not_after(),
            stale_sources: inner.stale.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The whole state as JSON: policy documents and every instance.
    pub fn dump(&self) -> serde_json::Value {
        let inner = lock(&self.inner);
        let instances: BTreeMap<&String, Vec<serde_json::Value>> = inner
            .instances
            .iter()
            .map(|(k, m)| {
                let list = m
                    .values()
                    .map(|i| serde_json::json!({"endpoint": i.spec(), "sources": i.sources().collect::<Vec<_>>()}))
                    .collect();
                (k, list)
            })
            .collect();
        serde_json::json!({
            "version": inner.version,
            "policyErrors": inner.policy_errors,
            "documents": inner.policy.documents(),
            "instances": instances,
        })
    }
}
