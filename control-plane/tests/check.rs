//! `weft check` end to end: the shipped examples pass, a broken fixture yields exact lines.

use std::path::{Path, PathBuf};
use std::process::Command;

use weft_control::check::check_paths;

/// Integration tests run in the crate's folder; the examples live at the workspace root.
fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_in_config_is_valid_alone_and_as_a_set() {
    let mut files = Vec::new();
    yaml_files(&config_dir(), &mut files);
    assert!(files.len() >= 7, "expected the example files, found {files:?}");
    for file in &files {
        let report = check_paths(std::slice::from_ref(file));
        let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        assert!(problems.is_empty(), "{}:\n{}", file.display(), problems.join("\n"));
        assert!(report.documents > 0, "{} holds no documents", file.display());
    }
    let all = check_paths(&[config_dir()]);
    let problems: Vec<String> = all.problems.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(all.files, files.len());
}

#[test]
fn broken_fixture_reports_every_problem_with_file_line_and_path() {
    let report = check_paths(&[PathBuf::from("tests/fixtures/broken")]);
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    let p = "tests/fixtures/broken/policy.yaml";
    let expected = [
        format!(
            "{p}:6: spec.ports[0].protocol: invalid value \"htp\"; did you mean \"http\"? valid values: http, http2, grpc, tcp"
        ),
        format!("{p}:17: spec.rules[0].timout: unknown field; did you mean \"timeout\"?"),
        format!("{p}:18: spec.rules[0].retry.perTryTimeout: duration \"500\" needs a unit (ms, s, m, h)"),
        // At the backend's own line, not the rule's.
        format!(
            "{p}:19: spec.rules[0].backends[0].service: service \"payments-v3\" is not declared in namespace \"shop\"; did you mean \"payments\"?"
        ),
        format!(
            "{p}:26: spec.loadBalancer: invalid value \"round-robbin\"; did you mean \"round-robin\"? valid values: peak-ewma, round-robin, least-request"
        ),
        format!("{p}:27: spec.outlierDetection.maxEjectionPercent: must be at most 100, found 150"),
        "tests/fixtures/broken/syntax.yaml:6: invalid YAML: mapping values are not allowed in this context (column 8)"
            .to_string(),
    ];
    assert_eq!(lines, expected);
}

fn weft(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft")).args(args).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap(), text(out.stdout), text(out.stderr))
}

#[test]
fn exit_status_and_output_follow_the_cli_contract() {
    let config = config_dir();
    let (code, stdout, _) = weft(&["check", config.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("ok: 19 documents in 11 files"), "{stdout}");

    let (code, stdout, stderr) = weft(&["check", "tests/fixtures/broken"]);
    assert_eq!(code, 1);
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    assert!(stdout.lines().all(|l| l.starts_with("tests/fixtures/broken/")), "{stdout}");
    assert_eq!(stderr.trim(), "7 problems in 2 files");

    // A PATH that does not exist is a usage error, not an invalid policy.
    let (code, stdout, stderr) = weft(&["check", "tests/fixtures/no-such-file.yaml"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.starts_with("weft check: tests/fixtures/no-such-file.yaml: no such file or folder"), "{stderr}");
    assert_eq!(weft(&["check", "tests/fixtures/broken", "/nonexistent"]).0, 2);

    assert_eq!(weft(&["check"]).0, 2);
    assert_eq!(weft(&["check", "--bogus", "x.yaml"]).0, 2);
    assert_eq!(weft(&["frobnicate"]).0, 2);
    let (code, stdout, _) = weft(&["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("check PATH..."), "{stdout}");
}

/// A fresh folder under the system temp dir holding `files`.
fn folder(label: &str, files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-check-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

const SERVICE: &str = "kind: Service\nmetadata: {name: payments, namespace: shop}\nspec: {ports: [{port: 80}]}\n";

#[test]
fn serve_refuses_a_policy_folder_with_conflicts_naming_both_documents() {
    let route = |name: &str| {
        format!(
            "kind: Route\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  service: payments\n  rules: [{{timeout: 1s}}]\n"
        )
    };
    let dir = folder("conflict", &[("a.yaml", &format!("{SERVICE}---\n{}", route("a"))), ("b.yaml", &route("b"))]);
    let problems = weft_control::serve::folder::load(&dir).expect_err("two Routes for payments.shop");
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let (a, b) = (dir.join("a.yaml").display().to_string(), dir.join("b.yaml").display().to_string());
    assert_eq!(
        lines,
        [format!(
            "{b}:4: spec.service: Route \"shop/b\" conflicts with Route \"shop/a\" at {a}:8: both apply to service \"payments.shop\", which takes one Route; merge their rules into one Route (rules are tried in order)"
        )]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_syntax_error_hides_no_declaration_from_the_other_files() {
    // syntax.yaml would declare payments-v2; the Route's reference to it is not reported, and
    // the syntax error comes in file order, not after follow-on errors.
    let broken = "kind: Service\nmetadata: {name: payments-v2, namespace: shop}\nspec:\n  ports: [{port: 80}\n";
    let route = "kind: Route\nmetadata: {name: r, namespace: shop}\nspec:\n  service: payments\n  rules: [{backends: [{service: payments-v2}]}]\n";
    let dir = folder("syntax", &[("a-route.yaml", route), ("b-service.yaml", SERVICE), ("c-syntax.yaml", broken)]);
    let report = check_paths(std::slice::from_ref(&dir));
    let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&format!("{}:5: invalid YAML: ", dir.join("c-syntax.yaml").display())), "{lines:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The cases .ci/policy-schema.py holds the CRD schema and the JSON Schema to: `weft check`
/// refuses each one too.
#[test]
fn every_schema_invalid_fixture_is_refused() {
    let dir = Path::new("tests/fixtures/schema-invalid");
    let mut files = Vec::new();
    yaml_files(dir, &mut files);
    assert!(files.len() >= 20, "expected the invalid cases, found {files:?}");
    for file in &files {
        let report = check_paths(std::slice::from_ref(file));
        assert!(!report.problems.is_empty(), "{} was accepted", file.display());
    }
}
