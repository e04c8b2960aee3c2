//! Discovery wire types: what `GET /v1/watch` streams (newline-delimited JSON) and what proxies
//! send back (`POST /v1/ack`, `POST /v1/leave`), plus the `weft status` report.
//!
//! A stream starts with a [`Snapshot`] of everything the proxy may reach, then carries
//! [`Delta`]s that add or remove single endpoints. Every message has a version; versions only
//! grow, across streams too, so a proxy can tell a fresh state from a stale one. A proxy that
//! falls behind gets a new snapshot instead of a backlog. Policy changes arrive as a snapshot:
//! they are rare, and they can change which services the proxy may reach.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{Document, EndpointSpec};

/// Query parameters of `GET /v1/watch`, which both subscribe and self-register.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// The proxy's own service; the scope of what it receives is computed from it.
    pub service: String,
    /// The proxy's namespace (`default` when omitted).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Where other proxies reach this instance (its inbound listener). When the IP is
    /// unspecified (0.0.0.0), the control plane uses the address the stream came from.
    /// Absent: the proxy subscribes without registering (an outbound-only client).
    #[serde(default)]
    pub address: Option<SocketAddr>,
    /// SPIFFE id peers must verify when they call this instance; only set when mTLS is on.
    #[serde(default)]
    pub identity: Option<String>,
    /// A name for `weft status` (defaults to service and address).
    #[serde(default)]
    pub name: Option<String>,
}

impl WatchRequest {
    /// The request as a query string (values percent-encoded).
    pub fn to_query(&self) -> String {
        let mut parts = vec![format!("service={}", encode(&self.service))];
        if let Some(ns) = &self.namespace {
            parts.push(format!("namespace={}", encode(ns)));
        }
        if let Some(a) = &self.address {
            parts.push(format!("address={}", encode(&a.to_string())));
        }
        if let Some(id) = &self.identity {
            parts.push(format!("identity={}", encode(id)));
        }
        if let Some(n) = &self.name {
            parts.push(format!("name={}", encode(n)));
        }
        parts.join("&")
    }

    /// Parses a query string; the error says which parameter is wrong.
    pub fn from_query(query: &str) -> Result<WatchRequest, String> {
        let mut req = WatchRequest::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).ok_or_else(|| format!("parameter {k}: invalid percent-encoding"))?;
            match k {
                "service" => req.service = v,
                "namespace" => req.namespace = Some(v),
                "address" => {
                    req.address =
                        Some(v.parse().map_err(|_| format!("parameter address: {v:?} is not an IP:PORT address"))?)
                }
                "identity" => req.identity = Some(v),
                "name" => req.name = Some(v),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        if req.service.is_empty() {
            return Err("parameter service is required (the proxy's own service)".to_string());
        }
        Ok(req)
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One line of the watch stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchMessage {
    Snapshot(Snapshot),
    Delta(Delta),
    /// Sent when the stream is otherwise idle, so a proxy can tell a silent control plane
    /// from a dead one.
    Heartbeat {
        version: u64,
    },
}

impl WatchMessage {
    pub fn version(&self) -> u64 {
        match self {
            WatchMessage::Snapshot(s) => s.version,
            WatchMessage::Delta(d) => d.version,
            WatchMessage::Heartbeat { version } => *version,
        }
    }

    /// One stream line: the JSON and a trailing newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).expect("wire types serialize");
        out.push(b'\n');
        out
    }
}

/// Everything one proxy may reach, replacing whatever it had from the control plane.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// Names this stream in acks and leaves: a secret only this stream's proxy learns.
    pub session: String,
    /// Service documents (without endpoints: those are in `endpoints`), Routes,
    /// TrafficPolicies, the proxy's own AuthorizationPolicy and the Mesh. Never a Proxy.
    pub documents: Vec<Document>,
    /// Endpoints by service key `name.namespace`.
    pub endpoints: BTreeMap<String, Vec<EndpointSpec>>,
}

/// Endpoint changes since the previous message of the stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    pub version: u64,
    pub changes: Vec<EndpointChange>,
}

/// Endpoints of one service added (or changed: same address) and removed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EndpointChange {
    /// Service key `name.namespace`.
    pub service: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upsert: Vec<EndpointSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<SocketAddr>,
}

/// Body of `POST /v1/ack`: the proxy applied `version` of stream `session`. A proxy also
/// re-sends its last ack when its certificate changes, so `certNotAfter` stays current.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    pub session: String,
    pub version: u64,
    /// Expiry of the certificate the proxy presents (Unix seconds); absent without mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_not_after: Option<u64>,
}

/// Body of `POST /v1/leave`: withdraw the stream's registration now (the proxy is draining).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    pub session: String,
}

/// Body of `POST /v1/report`: what a proxy has served since it started (cumulative counters;
/// the control plane turns two reports into rates). Sent every few seconds on the watch's
/// connection, so `weft stat` works with no Prometheus.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficReport {
    pub session: String,
    /// The proxy's build version.
    #[serde(default)]
    pub proxy_version: String,
    /// The mTLS mode its inbound listener applies (`strict`, `permissive`, `off`).
    #[serde(default)]
    pub mtls: String,
    pub stats: Vec<TrafficStat>,
}

/// One direction, service and route of one proxy, cumulative.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStat {
    /// `inbound` (served to this proxy's app) or `outbound` (the app's calls).
    pub direction: String,
    pub service: String,
    pub route: String,
    pub requests: u64,
    /// 5xx answers and failed gRPC calls.
    pub failures: u64,
    /// Upper bounds (seconds) of the latency histogram's buckets, and the cumulative count of
    /// requests at or below each.
    pub bounds: Vec<f64>,
    pub buckets: Vec<u64>,
}

/// Golden metrics of one direction, service and route over the last `windowSeconds`, summed
/// over every proxy that reported it (`weft stat`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSummary {
    pub direction: String,
    pub service: String,
    pub route: String,
    pub proxies: usize,
    pub requests_per_second: f64,
    /// Share of requests that did not fail (1.0 with no requests).
    pub success_rate: f64,
    /// Latency percentiles in seconds (absent with no requests in the window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    pub window_seconds: f64,
}

/// `GET /v1/status` on the control plane's admin listener; `weft status -o json` prints it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The latest published version.
    pub version: u64,
    /// Whether the last policy folder load was valid (false: an older policy is serving).
    pub policy_valid: bool,
    pub policy_errors: Vec<String>,
    pub proxies: Vec<ProxyStatus>,
    pub services: Vec<ServiceStatus>,
    /// Per direction, service and route, from the proxies' reports (`weft stat`).
    #[serde(default)]
    pub traffic: Vec<TrafficSummary>,
    /// When the CA's own certificate expires (Unix seconds), with `--ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<u64>,
    /// Registries that cannot be read now (the Kubernetes API is down or refuses): their last
    /// known instances keep serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_sources: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// A name for the stream (not the stream's secret session id, which only its proxy knows).
    pub session: String,
    /// The proxy's build version and inbound mTLS mode, from its last traffic report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<String>,
    /// The SPIFFE id the proxy proved with its client certificate (absent on plaintext).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub name: String,
    /// `name.namespace` of the proxy's service.
    pub service: String,
    pub address: Option<SocketAddr>,
    /// Last version sent on the stream.
    pub sent_version: u64,
    /// Last version the proxy acked (0: none yet).
    pub acked_version: u64,
    /// Seconds the oldest unacked version has been waiting (0 when up to date).
    pub lag_seconds: f64,
    pub connected_seconds: f64,
    pub resyncs: u64,
    /// Seconds until the proxy's certificate expires (negative: expired); absent when the
    /// proxy reported none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_in_seconds: Option<f64>,
    /// The certificate is past the point where it should have been renewed.
    #[serde(default)]
    pub cert_near_expiry: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// `name.namespace`.
    pub service: String,
    /// Instances by registry source (`self-registration`, `yaml-dir`…).
    pub instances: BTreeMap<String, usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_request_round_trips_through_a_query_string() {
        let req = WatchRequest {
            service: "payments".into(),
            namespace: Some("shop".into()),
            address: Some("10.0.0.7:4143".parse().unwrap()),
            identity: Some("spiffe://cluster.local/ns/shop/sa/payments".into()),
            name: Some("payments 1".into()),
        };
        assert_eq!(WatchRequest::from_query(&req.to_query()).unwrap(), req);
    }

    #[test]
    fn watch_request_errors_name_the_parameter() {
        assert!(WatchRequest::from_query("namespace=x").unwrap_err().contains("service is required"));
        assert!(WatchRequest::from_query("service=a&address=nope").unwrap_err().contains("address"));
        assert!(WatchRequest::from_query("service=a&colour=red").unwrap_err().contains("colour"));
    }

    #[test]
    fn messages_round_trip_as_one_line_each() {
        let text = "kind: Service\nmetadata: {name: payments}\nspec: {ports: [{port: 80, protocol: http}]}\n\
                    ---\nkind: Route\nmetadata: {name: r}\nspec:\n  service: payments\n  rules:\n    - match: {pathPrefix: /v1/}\n      timeout: 2s\n      retry: {attempts: 1, perTryTimeout: 250ms}\n";
        let text =
            format!("apiVersion: weft.dev/v1alpha1\n{}", text.replace("---\n", "---\napiVersion: weft.dev/v1alpha1\n"));
        let documents = crate::parse_file("t.yaml", &text).unwrap();
        let snap = WatchMessage::Snapshot(Snapshot {
            version: 3,
            session: "s1".into(),
            documents,
            endpoints: BTreeMap::from([(
                "payments.default".to_string(),
                vec![EndpointSpec { address: "127.0.0.1:9001".parse().unwrap(), weight: 2, identity: None }],
            )]),
        });
        let line = snap.to_line();
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let back: WatchMessage = serde_json::from_slice(&line).unwrap();
        // Lines are not carried over the wire; compare what is.
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&snap).unwrap());
        assert_eq!(back.version(), 3);

        let delta = WatchMessage::Delta(Delta {
            version: 4,
            changes: vec![EndpointChange {
                service: "payments.default".into(),
                upsert: vec![],
                remove: vec!["127.0.0.1:9001".parse().unwrap()],
            }],
        });
        let back: WatchMessage = serde_json::from_slice(&delta.to_line()).unwrap();
        assert_eq!(back, delta);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<WatchMessage>("{\"type\":\"snapshot\",\"version\":\"x\"}").is_err());
        assert!(serde_json::from_str::<WatchMessage>("not json").is_err());
        assert!(serde_json::from_str::<WatchMessage>("{\"type\":\"delta\",\"version\":1,\"changes\":[{\"service\":\"a\",\"upsert\":[{\"address\":\"nope\"}]}]}").is_err());
    }
}
