//! The container images agree with what `weft inject` and the chart assume: the proxy's uid
//! (which the init rules exempt), the binary path the injected containers run, and the ports.
//! No container engine runs here, so this reads the Dockerfiles.

use std::path::Path;

use weft_control::inject::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_BINARY, PROXY_UID};

fn dockerfile(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The arguments of the last stage's instruction `word` (the image that ships).
fn last_stage(text: &str, word: &str) -> Vec<String> {
    let stage = text.rsplit_once("\nFROM ").map_or(text, |(_, s)| s);
    stage
        .lines()
        .filter_map(|l| l.strip_prefix(word).and_then(|r| r.strip_prefix(' ')))
        .map(|r| r.trim().to_string())
        .collect()
}

#[test]
fn the_proxy_image_runs_as_the_uid_the_init_rules_exempt() {
    let text = dockerfile("weft-proxy.Dockerfile");
    assert_eq!(last_stage(&text, "USER"), [format!("{PROXY_UID}:{PROXY_UID}")]);
    assert_eq!(last_stage(&text, "ENTRYPOINT"), [format!("[\"{PROXY_BINARY}\"]")]);
    assert!(last_stage(&text, "COPY").iter().any(|c| c.ends_with(&format!(" {PROXY_BINARY}"))));
    let mut ports: Vec<u16> =
        last_stage(&text, "EXPOSE").iter().flat_map(|l| l.split_whitespace().map(|p| p.parse().unwrap())).collect();
    ports.sort_unstable();
    assert_eq!(ports, [OUTBOUND_PORT, INBOUND_PORT, ADMIN_PORT]);
}

#[test]
fn the_control_plane_image_is_non_root_with_the_chart_ports() {
    let text = dockerfile("weft.Dockerfile");
    assert_eq!(last_stage(&text, "USER"), [format!("{PROXY_UID}:{PROXY_UID}")]);
    assert_eq!(last_stage(&text, "EXPOSE"), ["8086 9990"]);
    let values =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/weft/values.yaml")).unwrap();
    assert!(values.contains("  port: 8086\n") && values.contains("  port: 9990\n"), "chart ports");
    assert!(values.contains(&format!("  uid: {PROXY_UID}\n")), "chart proxy uid");
}

/// Both builds compile the workspace's own binaries with the locked dependencies.
#[test]
fn both_images_build_the_workspace_binaries_in_a_first_stage() {
    for (file, package, bin) in
        [("weft-proxy.Dockerfile", "weft-proxy", "weft-proxy"), ("weft.Dockerfile", "weft-control", "weft")]
    {
        let text = dockerfile(file);
        assert!(text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")) >= 2, "{file} is multi-stage");
        assert!(text.contains("cargo build --release --locked "), "{file}");
        assert!(text.contains(&format!(" -p {package} --bin {bin}")), "{file}");
    }
    assert!(dockerfile("weft.Dockerfile").contains("/target/release/weft /usr/local/bin/weft"));
}

/// Without native sidecars the proxy binary also runs inside a Job's app containers (`weft
/// inject` copies it there), whatever their image: it is linked statically, with the flags that
/// `.ci/static-proxy.sh` builds with before running it in an empty root.
#[test]
fn the_proxy_binary_is_static_as_the_ci_check_builds_it() {
    let text = dockerfile("weft-proxy.Dockerfile");
    let static_flags = "RUSTFLAGS=\"-C target-feature=+crt-static\"";
    assert!(text.contains(static_flags), "crt-static");
    assert!(text.contains("ARG TARGET=x86_64-unknown-linux-gnu") && text.contains("--target \"$TARGET\""));
    assert!(text.contains("cp \"target/$TARGET/release/weft-proxy\" /weft-proxy"));
    assert!(last_stage(&text, "COPY").contains(&format!("--from=build /weft-proxy {PROXY_BINARY}")));
    let ci = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/static-proxy.sh")).unwrap();
    assert!(ci.contains(static_flags) && ci.contains("target=x86_64-unknown-linux-gnu"), ".ci/static-proxy.sh");
}
