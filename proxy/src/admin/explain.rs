//! `/explain?host=&path=&method=` (or `port=` for an upstream port, `from=` for an inbound
//! call): which service, route rule, backends and policy decide a request, and why — so
//! "which policy applied?" has an answer without reading YAML. A question it cannot answer
//! (no host, a port that is no upstream port) is an error, which the admin answers with 400.

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Value, json};

use crate::config::Snapshot;
use crate::http::path::{self, PathCheck};

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query pairs, decoded. `header.<name>=<value>` pairs become request headers.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// An inbound call from `from` (a SPIFFE id; empty for a plaintext caller): what the
/// AuthorizationPolicy decides, and which rule says so.
fn explain_inbound(snap: &Snapshot, from: &str, path: &str, method: &Method) -> Value {
    let caller = Some(from).filter(|f| !f.is_empty());
    let Some(authz) = &snap.authz else {
        return json!({
            "direction": "inbound", "from": from, "decision": "allow",
            "why": "no AuthorizationPolicy names this proxy's service", "configVersion": snap.version,
        });
    };
    let d = authz.decide(caller, Some(method), Some(path));
    json!({
        "direction": "inbound", "from": from, "method": method.as_str(), "path": path,
        "decision": if d.allowed { "allow" } else { "403 unauthorized" },
        "rule": d.rule.unwrap_or("default"),
        "why": match d.rule {
            Some(_) => "the first AuthorizationPolicy rule that matches decides (rule = <policy>#<index>)",
            None => "no rule matches, so the policy's default applies",
        },
        "configVersion": snap.version,
    })
}

/// What to say when the query has no subject.
const USAGE: &str = "give host= (and optionally path=, method=, header.<name>=), port=<upstream port> instead of \
                     host=, or from=<caller SPIFFE id> for an inbound call";

/// The explanation of the request the query describes, or why the query is not one. The
/// request is explained as the proxy would serve it: on the normal form of its path (see
/// `http::path`), or refused as the proxy would refuse it.
pub(super) fn explain(snap: &Snapshot, query: &str) -> Result<Value, String> {
    let pairs = parse_query(query);
    let path = pairs.iter().find(|(n, _)| n == "path").map_or("/", |(_, v)| v.as_str());
    let target = PathAndQuery::try_from(path).ok();
    let normal = match target.as_ref().map(path::check_target) {
        Some(PathCheck::Refused(why)) => {
            return Ok(json!({
                "path": path, "decision": "400 bad-request", "why": format!("the path is refused: {why}"),
                "configVersion": snap.version,
            }));
        }
        Some(PathCheck::Rewritten(normal)) => Some(normal),
        Some(PathCheck::Normal) | None => None,
    };
    let Some(normal) = normal else {
        return explain_path(snap, &pairs, path);
    };
    let mut explained = explain_path(snap, &pairs, normal.path())?;
    if let Some(fields) = explained.as_object_mut() {
        fields.insert("normalisedFrom".to_string(), json!(path));
    }
    Ok(explained)
}

fn explain_path(snap: &Snapshot, pairs: &[(String, String)], path: &str) -> Result<Value, String> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let method = match get("method") {
        None => Method::GET,
        Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| format!("method={m:?} is not an HTTP method"))?,
    };
    if let Some(from) = get("from") {
        return Ok(explain_inbound(snap, from, path, &method));
    }
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        if let Some(name) = k.strip_prefix("header.")
            && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(v))
        {
            headers.insert(n, v);
        }
    }
    let (asked, svc) = match (get("host"), get("port")) {
        (Some(_), Some(_)) => return Err("give host= or port=, not both".to_string()),
        (None, None) => return Err(USAGE.to_string()),
        (None, Some(port)) => {
            let (port, reference) = upstream_port(snap, port)?;
            let Some(svc) = snap.service(reference) else {
                return Err(format!("upstream port {port} names service {reference}, which is not in the config"));
            };
            // An upstream port sends every call to its one service, whatever the Host.
            (json!({"port": port, "upstream": reference}), svc)
        }
        (Some(host), None) => {
            let host_only = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
            let Some(svc) = snap.lookup_host(host_only) else {
                return Ok(json!({
                    "host": host, "decision": "404 unknown-service",
                    "why": "no Service is known under this name; names accepted: <name>, <name>.<namespace>, <name>.<namespace>.svc.cluster.local",
                    "configVersion": snap.version,
                }));
            };
            (json!({"host": host}), svc)
        }
    };
    let Some(rule) = svc.find(&method, path, &headers) else {
        let mut out = asked;
        out["service"] = json!(svc.key.as_ref());
        out["decision"] = json!("404 no-route");
        out["why"] =
            json!(format!("none of the {} rule(s) of the service's routes matches {method} {path}", svc.rules.len()));
        out["configVersion"] = json!(snap.version);
        return Ok(out);
    };
    let backends: Vec<Value> = rule
        .backends
        .iter()
        .map(|b| {
            json!({
                "service": b.cluster.key.as_ref(),
                "weight": b.weight,
                "protocol": b.cluster.protocol,
                "endpoints": b.cluster.set.endpoints().len(),
                "loadBalancer": b.cluster.policy.load_balancer,
                "limits": b.cluster.policy.limits,
                "outlierDetection": b.cluster.policy.outlier_detection,
                "retryBudget": b.cluster.policy.retry_budget,
                "connectTimeout": weft_api::duration::format_duration(b.cluster.policy.connect_timeout),
            })
        })
        .collect();
    let why = if rule.route.as_ref() == "default" {
        "the service has no Route; all its calls go to its own endpoints".to_string()
    } else {
        format!("first matching rule (index {}) of Route {}, at line {}", rule.index, rule.route, rule.line)
    };
    let mut out = asked;
    let explained = json!({
        "method": method.as_str(),
        "path": path,
        "service": svc.key.as_ref(),
        "route": rule.route.as_ref(),
        "rule": rule.index,
        "line": rule.line,
        "why": why,
        "timeout": rule.timeout.map(weft_api::duration::format_duration),
        "retry": {
            "attempts": rule.retry.attempts,
            "on5xx": rule.retry.on_5xx,
            "onGatewayError": rule.retry.on_gateway_error,
            "onConnectFailure": true,
            "onReset": rule.retry.on_reset,
            "onTimeout": rule.retry.on_timeout,
            "perTryTimeout": rule.retry.per_try_timeout.map(weft_api::duration::format_duration),
            "replaysBody": rule.retry.needs_replay(),
        },
        "backends": backends,
        "configVersion": snap.version,
    });
    if let (Value::Object(out), Value::Object(explained)) = (&mut out, explained) {
        out.extend(explained);
    }
    Ok(out)
}

/// The upstream port `port` (a number) and the service reference it is bound to.
fn upstream_port<'a>(snap: &'a Snapshot, port: &str) -> Result<(u16, &'a str), String> {
    let port: u16 = port.parse().map_err(|_| format!("port={port:?} is not a port number"))?;
    match snap.proxy.upstreams.iter().find(|u| u.listen.port() == port) {
        Some(up) => Ok((port, up.service.as_str())),
        None => {
            let ports: Vec<String> =
                snap.proxy.upstreams.iter().map(|u| format!("{} ({})", u.listen.port(), u.service)).collect();
            Err(match ports.is_empty() {
                true => format!("port {port} is not an upstream port: this proxy has none (spec.upstreams)"),
                false => format!("port {port} is not an upstream port; upstream ports: {}", ports.join(", ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let yaml = "kind: Proxy
metadata: {name: web, namespace: shop}
spec:
  service: web
  upstreams: [{service: payments, listen: 127.0.0.1:9101}]
---
kind: Service
metadata: {name: payments, namespace: shop}
spec: {endpoints: [{address: 127.0.0.1:9001}]}
---
kind: Service
metadata: {name: ledger, namespace: shop}
spec: {endpoints: [{address: 127.0.0.1:9002}]}
";
        let docs = weft_api::parse_file("t.yaml", yaml).unwrap();
        Snapshot::build(docs, "t.yaml", 1, None).unwrap()
    }

    #[test]
    fn an_upstream_port_is_explained_by_its_service() {
        let snap = snapshot();
        let out = explain(&snap, "port=9101&path=/v1/pay").unwrap();
        assert_eq!((&out["port"], &out["upstream"]), (&json!(9101), &json!("payments")), "{out}");
        assert_eq!(out["service"], "payments.shop", "{out}");
        assert_eq!(out["route"], "default", "{out}");
        assert_eq!(out["backends"][0]["service"], "payments.shop", "{out}");
        assert_eq!(out["path"], "/v1/pay", "{out}");
    }

    #[test]
    fn questions_that_cannot_be_answered_are_errors() {
        let snap = snapshot();
        for (query, says) in [
            ("path=/", "give host="),
            ("port=9999", "upstream ports: 9101 (payments)"),
            ("port=http", "not a port number"),
            ("host=payments&port=9101", "not both"),
            ("host=payments&method=G%20T", "not an HTTP method"),
        ] {
            let err = explain(&snap, query).expect_err(query);
            assert!(err.contains(says), "{query}: {err}");
        }
        // An unknown host is an answer (what the proxy would do), not an error.
        let out = explain(&snap, "host=nowhere").unwrap();
        assert_eq!(out["decision"], "404 unknown-service");
        assert_eq!(explain(&snap, "host=ledger").unwrap()["service"], "ledger.shop");
    }

    #[test]
    fn decodes_query_pairs() {
        let q = parse_query("host=payments.shop&path=%2Fv1%2Fa+b&header.x-canary=true");
        assert_eq!(q[0], ("host".to_string(), "payments.shop".to_string()));
        assert_eq!(q[1], ("path".to_string(), "/v1/a b".to_string()));
        assert_eq!(q[2], ("header.x-canary".to_string(), "true".to_string()));
        assert_eq!(percent_decode("100%"), "100%");
    }
}
