//! Properties of the policy decoder on generated input (proptest, 256 cases each): it never
//! panics, a valid generated Service or Route decodes to what was generated, and durations,
//! ports and addresses are accepted in exactly their documented forms.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proptest::prelude::*;
use weft_api::duration::{format_duration, parse_duration};
use weft_api::{Document, EndpointSpec, Protocol, ServicePort, ServiceSpec};

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

/// DNS-label-like names, as the decoder takes for metadata and service references.
fn name() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,10}[a-z0-9])?"
}

fn protocol() -> impl Strategy<Value = (Protocol, &'static str)> {
    prop_oneof![
        Just((Protocol::Http, "http")),
        Just((Protocol::Http2, "http2")),
        Just((Protocol::Grpc, "grpc")),
        Just((Protocol::Tcp, "tcp")),
    ]
}

fn address() -> impl Strategy<Value = SocketAddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ];
    (ip, 1..=u16::MAX).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn decode(text: &str) -> Result<Vec<Document>, String> {
    weft_api::parse_file("gen.yaml", text).map_err(|d| d.to_string())
}

/// One endpoint's `address:` value in a Service of its own, decoded.
fn endpoint_address(value: &str) -> Result<SocketAddr, String> {
    let text = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n  endpoints:\n    - {{address: \"{value}\"}}\n"
    );
    match decode(&text)?.as_slice() {
        [Document::Service(s)] => Ok(s.spec.endpoints[0].address),
        other => panic!("one Service expected, got {other:?}"),
    }
}

/// A Service with one port, decoded.
fn service_port(value: &str) -> Result<u16, String> {
    let text = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: a}}\nspec:\n  ports: [{{port: {value}, protocol: http}}]\n"
    );
    match decode(&text)?.as_slice() {
        [Document::Service(s)] => Ok(s.spec.ports[0].port),
        other => panic!("one Service expected, got {other:?}"),
    }
}

const UNITS: [(&str, u64); 6] = [
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoding_any_text_never_panics(text in "(\\PC|\n| |:|-|\\{|\\}|\\[|\\]|&|\\*|!|'|\")*") {
        let _ = weft_api::parse_file("any.yaml", &text);
    }

    #[test]
    fn decoding_yaml_shaped_documents_never_panics(
        lines in prop::collection::vec(
            ("( {0,6})", "(kind|metadata|spec|name|ports|port|endpoints|address|rules|match|timeout|-|[a-z]{1,6})",
             "(: |:|: \\[|: \\{| )", "([a-z0-9./:]{0,8}|\\]|\\}|\\[\\]|null|\"x\"|1h|-1|99999999999999999999)"),
            0..24),
    ) {
        let mut text = String::from("apiVersion: weft.dev/v1alpha1\n");
        for (indent, key, sep, value) in &lines {
            text.push_str(&format!("{indent}{key}{sep}{value}\n"));
        }
        if let Err(problems) = weft_api::parse_file("gen.yaml", &text) {
            let lines = text.lines().count() + 1;
            prop_assert!(problems.0.iter().all(|p| p.line <= lines && !p.message.is_empty()), "{problems}");
        }
    }

    #[test]
    fn a_generated_service_decodes_to_what_was_generated(
        svc in name(),
        ns in name(),
        ports in prop::collection::btree_map(1..=u16::MAX, protocol(), 1..4),
        endpoints in prop::collection::btree_map(address(), (1u32..1000, prop::option::of(name())), 0..4),
    ) {
        let mut text = format!("apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {svc}, namespace: {ns}}}\nspec:\n  ports:\n");
        for (port, (_, proto)) in &ports {
            text.push_str(&format!("    - {{port: {port}, protocol: {proto}}}\n"));
        }
        if !endpoints.is_empty() {
            text.push_str("  endpoints:\n");
        }
        for (addr, (weight, account)) in &endpoints {
            text.push_str(&format!("    - address: \"{addr}\"\n      weight: {weight}\n"));
            if let Some(account) = account {
                text.push_str(&format!("      identity: spiffe://cluster.local/ns/{ns}/sa/{account}\n"));
            }
        }
        let expected = ServiceSpec {
            ports: ports.iter().map(|(&port, &(protocol, _))| ServicePort { port, protocol }).collect(),
            endpoints: endpoints
                .iter()
                .map(|(&address, (weight, account))| EndpointSpec {
                    address,
                    weight: *weight,
                    identity: account.as_ref().map(|a| format!("spiffe://cluster.local/ns/{ns}/sa/{a}")),
                })
                .collect(),
            virtual_ips: Vec::new(),
        };
        let docs = decode(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let [Document::Service(got)] = docs.as_slice() else { panic!("one Service expected: {docs:?}") };
        prop_assert_eq!(&got.metadata.name, &svc);
        prop_assert_eq!(&got.metadata.namespace, &ns);
        prop_assert_eq!(&got.spec, &expected);
    }

    #[test]
    fn a_generated_route_decodes_to_what_was_generated(
        svc in name(),
        rules in prop::collection::vec(
            ("/[a-z0-9/]{0,12}", prop::collection::btree_set(prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")], 0..3),
             prop::collection::btree_map("x-[a-z]{1,8}", "[a-z0-9]{1,8}", 0..3), 1u64..60_000,
             prop::option::of((1u32..5, 1u64..5_000))),
            1..4),
    ) {
        let mut text = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {svc}}}\nspec:\n  ports: [{{port: 80, protocol: http}}]\n---\n\
             apiVersion: weft.dev/v1alpha1\nkind: Route\nmetadata: {{name: r}}\nspec:\n  service: {svc}\n  rules:\n"
        );
        for (prefix, methods, headers, timeout_ms, retry) in &rules {
            let methods: Vec<&str> = methods.iter().copied().collect();
            text.push_str(&format!("    - match:\n        pathPrefix: \"{prefix}\"\n        methods: [{}]\n", methods.join(", ")));
            if !headers.is_empty() {
                text.push_str("        headers:\n");
                for (k, v) in headers {
                    text.push_str(&format!("          {k}: \"{v}\"\n"));
                }
            }
            text.push_str(&format!("      timeout: {timeout_ms}ms\n"));
            if let Some((attempts, per_try)) = retry {
                let per_try = per_try.min(timeout_ms);
                text.push_str(&format!("      retry: {{attempts: {attempts}, on: [5xx, reset], perTryTimeout: {per_try}ms}}\n"));
            }
        }
        let docs = decode(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        let Some(Document::Route(route)) = docs.get(1) else { panic!("a Route expected: {docs:?}") };
        prop_assert_eq!(&route.spec.service, &svc);
        prop_assert_eq!(route.spec.rules.len(), rules.len());
        for (got, (prefix, methods, headers, timeout_ms, retry)) in route.spec.rules.iter().zip(&rules) {
            prop_assert_eq!(got.matches.path_prefix.as_deref(), Some(prefix.as_str()));
            let got_methods: std::collections::BTreeSet<&str> = got.matches.methods.iter().map(String::as_str).collect();
            prop_assert_eq!(&got_methods, methods);
            prop_assert_eq!(&got.matches.headers, headers);
            prop_assert_eq!(got.timeout, Some(Duration::from_millis(*timeout_ms)));
            match (retry, &got.retry) {
                (None, None) => {}
                (Some((attempts, per_try)), Some(policy)) => {
                    prop_assert_eq!(policy.attempts, *attempts);
                    prop_assert_eq!(policy.per_try_timeout, Some(Duration::from_millis(*per_try.min(timeout_ms))));
                    prop_assert_eq!(policy.on.len(), 2);
                }
                (want, got) => prop_assert!(false, "retry {want:?} decoded as {got:?}"),
            }
        }
    }

    #[test]
    fn durations_in_the_documented_form_parse_to_their_value(parts in prop::collection::vec((0u64..10_000, 0..UNITS.len()), 1..4)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{}", UNITS[*u].0)).collect();
        let nanos: u64 = parts.iter().map(|(n, u)| n * UNITS[*u].1).sum();
        prop_assert_eq!(parse_duration(&text), Ok(Duration::from_nanos(nanos)), "{}", text);
    }

    #[test]
    fn a_formatted_duration_parses_back_to_itself(nanos in 0u64..1_000_000_000_000_000) {
        let d = Duration::from_nanos(nanos);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{}", format_duration(d));
    }

    #[test]
    fn durations_without_a_known_unit_are_refused(n in 0u64..100_000, unit in "(|[a-zA-Z]{1,3}|[0-9]|%| )") {
        let known = ["h", "m", "s", "ms", "us", "ns"];
        prop_assume!(!known.contains(&unit.as_str()));
        prop_assert!(parse_duration(&format!("{n}{unit}")).is_err(), "{n}{unit} accepted");
    }

    #[test]
    fn any_text_as_a_duration_is_refused_or_in_range(text in "\\PC{0,12}") {
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d.as_secs_f64() <= 1e9, "{text:?} -> {d:?}");
            prop_assert!(text.chars().any(|c| "hmsun".contains(c) || c == 'µ'), "{text:?} has no unit");
        }
    }

    #[test]
    fn ports_are_exactly_1_to_65535(port in prop_oneof![1u32..=65535, 65536u32..10_000_000, Just(0)]) {
        let decoded = service_port(&port.to_string());
        if (1..=65535).contains(&port) {
            prop_assert_eq!(decoded, Ok(port as u16));
        } else {
            prop_assert!(decoded.is_err(), "port {} accepted", port);
        }
    }

    #[test]
    fn ports_that_are_not_integers_are_refused(value in "(-[0-9]{1,5}|[0-9]{1,3}\\.[0-9]|[0-9]{1,4}[a-z]|\"[0-9]{1,4}\"|0x[0-9]{1,3})") {
        prop_assert!(service_port(&value).is_err(), "port {value} accepted");
    }

    #[test]
    fn endpoint_addresses_are_ip_and_port(addr in address()) {
        prop_assert_eq!(endpoint_address(&addr.to_string()), Ok(addr));
    }

    #[test]
    fn endpoint_addresses_without_an_ip_or_a_port_are_refused(
        host in prop_oneof![name(), any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string())],
        port in prop_oneof![Just(String::new()), Just(":".to_string()), (65536u32..1_000_000).prop_map(|p| format!(":{p}")), "[a-z]{1,3}".prop_map(|p| format!(":{p}"))],
        named in any::<bool>(),
    ) {
        // A name with a valid port, or an IP with a missing or invalid port.
        let value = if named { format!("{host}.svc:8080") } else { format!("{host}{port}") };
        prop_assert!(endpoint_address(&value).is_err(), "{value} accepted");
    }
}
