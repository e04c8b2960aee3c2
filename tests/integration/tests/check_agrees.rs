//! `weft check` and `weft-proxy --config` judge a file alike: what one refuses the other
//! refuses with the same `FILE:LINE: field.path: message`, and what one accepts the other runs.

use std::process::Command;
use std::time::Duration;

use weft_integration::{Backend, Proxy, ProxyConfig, TempDir, bin, document, service};

/// Runs `weft check ARGS…`: (exit code, stdout, stderr).
fn weft_check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("weft")).arg("check").args(args).output().expect("run weft check");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.code().expect("exit code"), text(out.stdout), text(out.stderr))
}

/// Spawns the proxy on `policy`, which it must refuse; returns its problem lines (those that
/// start with its config file's path), after checking `weft check` prints exactly those.
async fn both_refuse(policy: String) -> Vec<String> {
    let mut proxy = Proxy::spawn(&ProxyConfig { policy, ..Default::default() });
    let status = proxy.wait_exit(Duration::from_secs(20)).await.expect("a refused config makes the proxy exit");
    assert_eq!(status.code(), Some(1), "weft-proxy exit status\n{}", proxy.logs());
    let file = proxy.config_path().display().to_string();
    let logs = proxy.logs();
    let from_proxy: Vec<String> = logs.lines().filter(|l| l.starts_with(&file)).map(String::from).collect();
    assert!(!from_proxy.is_empty(), "the proxy names the problem:\n{logs}");

    let (code, stdout, _) = weft_check(&[&file]);
    assert_eq!(code, 1, "weft check refuses what the proxy refuses:\n{stdout}");
    let from_check: Vec<String> = stdout.lines().map(String::from).collect();
    assert_eq!(from_check, from_proxy, "the same problems, in the same words");
    from_proxy
}

fn mesh(mtls: &str) -> String {
    format!("---\napiVersion: weft.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: default}}\nspec: {{mtls: {mtls}}}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_without_an_identity_is_refused_by_both() {
    let api = Backend::start("api").await;
    let policy = service("api", "http", &[api.addr()]) + &mesh("strict");
    let problems = both_refuse(policy).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(": spec.tls: the Mesh at "), "{problems:?}");
    assert!(
        problems[0].contains("asks for mtls: strict but Proxy \"default/test-proxy\" has no identity"),
        "{problems:?}"
    );

    // mtls: off is accepted by both: the check passes and the proxy serves.
    let proxy = Proxy::start(ProxyConfig {
        policy: service("api", "http", &[api.addr()]) + &mesh("off"),
        ..Default::default()
    })
    .await;
    let (code, stdout, stderr) = weft_check(&[proxy.config_path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("ok: 3 documents in 1 file"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routes_for_one_service_are_refused_by_both_naming_both() {
    let api = Backend::start("api").await;
    let route = |name: &str, prefix: &str| {
        document("Route", name, &format!("service: api\nrules:\n  - match: {{pathPrefix: {prefix}}}\n"))
    };
    let policy = service("api", "http", &[api.addr()]) + &route("first", "/a/") + &route("second", "/b/");
    let problems = both_refuse(policy).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(p.contains(": spec.service: Route \"default/second\" conflicts with Route \"default/first\" at "), "{p}");
    assert!(p.contains("both apply to service \"api.default\""), "{p}");
    // Both documents by FILE:LINE: the diagnostic's own and the first Route's.
    assert_eq!(p.matches("proxy.yaml:").count(), 2, "{p}");
}

#[test]
fn a_missing_path_is_a_usage_error_and_an_invalid_file_is_not() {
    let (code, stdout, stderr) = weft_check(&["/nonexistent/policy"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.starts_with("weft check: /nonexistent/policy: no such file or folder"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");

    let dir = TempDir::new("check-exit");
    let file = dir.path().join("bad.yaml");
    std::fs::write(&file, "kind: Route\nmetadata: {name: r}\nspec:\n  service: api\n  rules: [{timeout: 1s, retry: {perTryTimeout: 2s}}]\n")
        .unwrap();
    let (code, stdout, _) = weft_check(&[file.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains(":5: spec.rules[0].retry.perTryTimeout: 2s is longer than the rule's timeout 1s"),
        "{stdout}"
    );
}
