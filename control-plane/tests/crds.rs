//! The committed CRDs (the chart's `crds/`) and editors' JSON Schema are exactly what
//! `weft crds` prints: regenerate them when the policy schema changes.

use std::path::{Path, PathBuf};
use std::process::Command;

use weft_control::crds::{CHART_CRDS, JSON_SCHEMA, crds_yaml, json_schema_text};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn assert_committed(relative: &str, generated: &str, command: &str) {
    let committed = std::fs::read_to_string(repo_file(relative)).unwrap_or_default();
    assert!(
        committed == generated,
        "{relative} differs from what `{command}` prints; regenerate it with\n    cargo run -q -p weft-control --bin weft -- {} > {relative}",
        command.trim_start_matches("weft ")
    );
}

#[test]
fn the_chart_crds_are_the_generated_ones() {
    assert_committed(CHART_CRDS, &crds_yaml(), "weft crds");
}

#[test]
fn the_committed_json_schema_is_the_generated_one() {
    assert_committed(JSON_SCHEMA, &json_schema_text(), "weft crds --json-schema");
}

#[test]
fn weft_crds_prints_them() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_weft")).arg("crds").args(args).output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(run(&[]), (Some(0), crds_yaml()));
    assert_eq!(run(&["--json-schema"]), (Some(0), json_schema_text()));
    let (code, stdout) = run(&["--bogus"]);
    assert_eq!((code, stdout.as_str()), (Some(2), ""));
    let yaml = crds_yaml();
    let names: Vec<&str> = yaml.lines().filter_map(|l| l.strip_prefix("  name: ")).collect();
    assert_eq!(
        names,
        [
            "services.weft.dev",
            "routes.weft.dev",
            "trafficpolicies.weft.dev",
            "authorizationpolicies.weft.dev",
            "meshes.weft.dev",
            "proxies.weft.dev"
        ]
    );
}
