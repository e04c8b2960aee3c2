//! `weft inject` against golden files: every workload kind, pass-through kinds, skip reasons,
//! idempotence, and the command line (stdin, several files, exit codes).
//!
//! `WEFT_BLESS=1 cargo test -p weft-control --test inject` rewrites tests/inject/out/ after a
//! deliberate change; review the diff.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_control::inject::{Options, inject_stream};

fn dir(which: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject").join(which)
}

fn inputs() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir("in")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 13, "{files:?}");
    files
}

fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_kind_matches_its_golden_output() {
    let bless = std::env::var_os("WEFT_BLESS").is_some();
    for input in inputs() {
        let got = inject_stream(&std::fs::read_to_string(&input).unwrap(), &name(&input), &Options::default());
        assert!(!got.failed, "{}: {:?}", name(&input), got.messages);
        let golden = dir("out").join(name(&input));
        if bless {
            std::fs::write(&golden, &got.text).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
        assert_eq!(got.text, want, "{} differs from its golden output", name(&input));
    }
}

#[test]
fn injecting_an_injected_manifest_changes_nothing() {
    for golden in inputs().iter().map(|i| dir("out").join(name(i))) {
        let text = std::fs::read_to_string(&golden).unwrap();
        let again = inject_stream(&text, &name(&golden), &Options::default());
        assert_eq!(again.text, text, "{} changed on a second injection", name(&golden));
    }
}

#[test]
fn other_kinds_and_skipped_workloads_pass_through_byte_for_byte() {
    for file in ["passthrough.yaml", "skipped.yaml"] {
        let text = std::fs::read_to_string(dir("in").join(file)).unwrap();
        assert_eq!(inject_stream(&text, file, &Options::default()).text, text, "{file}");
    }
}

#[test]
fn skipped_workloads_say_why_on_stderr() {
    let text = std::fs::read_to_string(dir("in").join("skipped.yaml")).unwrap();
    let got = inject_stream(&text, "skipped.yaml", &Options::default());
    assert!(!got.failed);
    assert_eq!(
        got.messages,
        [
            "skipped.yaml: Deployment shop/opted-out skipped: weft.dev/inject: disabled",
            "skipped.yaml: DaemonSet ops/node-exporter skipped: hostNetwork: true: the pod shares the node's network, \
             which the redirection would capture",
            "skipped.yaml: Pod shop/meshed-elsewhere skipped: already injected by another mesh (container \"linkerd-proxy\")",
        ]
    );
}

/// The golden Deployment, read back, has what the pod needs in the order Kubernetes runs it.
#[test]
fn a_native_sidecar_starts_after_init_and_before_the_app() {
    let text = std::fs::read_to_string(dir("out").join("deployment.yaml")).unwrap();
    let docs = weft_api::yaml::parse_stream(&text);
    let json = to_json(&docs.documents[0]);
    let spec = &json["spec"]["template"]["spec"];
    let inits: Vec<&str> =
        spec["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(inits, ["weft-init", "weft-proxy"]);
    let proxy = &spec["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["securityContext"]["runAsUser"], "2102");
    assert_eq!(proxy["startupProbe"]["httpGet"]["path"], "/ready");
    let init_args: Vec<&str> =
        spec["initContainers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let flag = |f: &str| init_args[init_args.iter().position(|a| *a == f).unwrap() + 1];
    assert_eq!(flag("--proxy-uid"), "2102", "the init rules exempt the proxy's own uid");
    assert_eq!(flag("--skip-inbound-ports"), "4191,8081", "the admin port and the app's probe port (named)");
    assert_eq!(flag("--skip-outbound-ports"), "5432", "from the annotation");
    let volumes: Vec<&str> = spec["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(
        volumes,
        ["weft-config", "weft-trust", "weft-token", "weft-identity", "weft-state", "weft-xtables-lock"]
    );
    assert_eq!(spec["volumes"][2]["projected"]["sources"][0]["serviceAccountToken"]["audience"], "weft.dev");
    assert_eq!(spec["volumes"][3]["emptyDir"]["medium"], "Memory");
    let annotations = &json["spec"]["template"]["metadata"]["annotations"];
    let config = annotations["weft.dev/proxy-config"].as_str().unwrap();
    weft_api::parse_file("proxy-config", config)
        .unwrap_or_else(|e| panic!("the injected Proxy document is invalid: {e}"));
    let record: serde_json::Value = serde_json::from_str(annotations["weft.dev/injected"].as_str().unwrap()).unwrap();
    assert_eq!(record["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn with_native_sidecars_off_the_proxy_leads_the_containers_and_init_runs_last() {
    let text = std::fs::read_to_string(dir("out").join("replicaset.yaml")).unwrap();
    let json = to_json(&weft_api::yaml::parse_stream(&text).documents[0]);
    let spec = &json["spec"]["template"]["spec"];
    let names = |list: &str| -> Vec<String> {
        spec[list].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names("initContainers"), ["wait-db", "weft-init"]);
    assert_eq!(names("containers"), ["weft-proxy", "legacy"]);
    let hook = &spec["containers"][0]["lifecycle"]["postStart"]["exec"]["command"];
    assert_eq!(hook[1], "await");
    assert!(spec["containers"][0].get("restartPolicy").is_none());
}

fn golden_json(file: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir("out").join(file)).unwrap();
    weft_api::yaml::parse_stream(&text).documents.iter().map(to_json).collect()
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str()).collect()).unwrap_or_default()
}

fn names(spec: &serde_json::Value, list: &str) -> Vec<String> {
    spec[list].as_array().into_iter().flatten().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

/// Native sidecars off and a pod that runs to completion: the proxy would keep it running, so
/// the job's command runs under `weft-proxy await`, from a binary copied into an in-memory
/// volume; the kubelet still appends the unchanged `args`.
#[test]
fn with_native_sidecars_off_a_jobs_command_runs_under_await() {
    let [job] = golden_json("job-wrapped.yaml").try_into().unwrap();
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(names(spec, "initContainers"), ["weft-init", "weft-bin"]);
    assert_eq!(names(spec, "containers"), ["weft-proxy", "migrate"]);
    let copy = &spec["initContainers"][1];
    assert_eq!(strings(&copy["command"]), ["cp", "/usr/local/bin/weft-proxy", "/weft/bin/weft-proxy"]);
    assert_eq!(copy["securityContext"]["runAsUser"], "2102");
    let app = &spec["containers"][1];
    assert_eq!(
        strings(&app["command"]),
        ["/weft/bin/weft-proxy", "await", "--admin", "127.0.0.1:4191", "--", "/usr/bin/migrate", "up"]
    );
    assert_eq!(strings(&app["args"]), ["--database", "postgres://db:5432/shop"]);
    let mounts: Vec<&str> =
        app["volumeMounts"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(mounts, ["scripts", "weft-bin"]);
    assert_eq!(app["volumeMounts"][1]["readOnly"], "true");
    let bin =
        spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "weft-bin").expect("the weft-bin volume");
    assert_eq!(bin["emptyDir"]["medium"], "Memory");

    let [cron] = golden_json("cronjob-wrapped.yaml").try_into().unwrap();
    let app = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][1];
    assert_eq!(
        strings(&app["command"]),
        ["/weft/bin/weft-proxy", "await", "--admin", "127.0.0.1:4191", "--keep-proxy-on-failure", "--", "sh", "-c"],
        "restartPolicy OnFailure reruns a failed try behind the same proxy"
    );
}

/// Native sidecars (the default) end with the pod by themselves: nothing is wrapped.
#[test]
fn with_native_sidecars_a_job_is_not_wrapped() {
    for (file, path) in [("job.yaml", "/spec/template/spec"), ("cronjob.yaml", "/spec/jobTemplate/spec/template/spec")]
    {
        let [doc] = golden_json(file).try_into().unwrap();
        let spec = doc.pointer(path).unwrap();
        assert_eq!(names(spec, "initContainers"), ["weft-init", "weft-proxy"], "{file}");
        assert!(!spec.to_string().contains("weft-bin") && !spec.to_string().contains("/weft/bin"), "{file}");
    }
    let [job] = golden_json("job.yaml").try_into().unwrap();
    assert_eq!(strings(&job["spec"]["template"]["spec"]["containers"][0]["args"]), ["--since", "24h"]);
}

/// A container with only `args` runs its image's entrypoint, unknown here: it is injected, not
/// wrapped, and the warning says which container and what to do.
#[test]
fn a_container_with_only_args_is_injected_with_a_warning() {
    let text = std::fs::read_to_string(dir("in").join("job-args-only.yaml")).unwrap();
    let got = inject_stream(&text, "job-args-only.yaml", &Options::default());
    assert!(!got.failed);
    assert_eq!(
        got.messages,
        [
            "job-args-only.yaml: Job shop/export injected",
            "job-args-only.yaml: Job shop/export: warning: container \"export\" sets no command, so it cannot run \
             under weft-proxy await and the pod will not complete while the proxy runs: set command (the image's \
             entrypoint) in the manifest",
        ]
    );
    let [job] = golden_json("job-args-only.yaml").try_into().unwrap();
    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(names(spec, "initContainers"), ["weft-init"], "no binary to copy when nothing is wrapped");
    assert!(spec["containers"][1].get("command").is_none());
    let (code, _, err) = weft(&[], &text);
    assert_eq!(code, 0, "a warning is not a failure");
    assert!(
        err.contains("weft inject: stdin: Job shop/export: warning: container \"export\" sets no command"),
        "{err}"
    );
}

/// Stripping an injection restores the commands it wrapped: the same Job with native sidecars
/// turned on afterwards comes out as if it had never been wrapped.
#[test]
fn a_second_injection_unwraps_the_commands_it_wrapped() {
    let native = |text: &str| text.replace("weft.dev/native-sidecar: \"false\"", "weft.dev/native-sidecar: \"true\"");
    for file in ["job-wrapped.yaml", "cronjob-wrapped.yaml", "custom-ports.yaml"] {
        let injected = std::fs::read_to_string(dir("out").join(file)).unwrap();
        let original = std::fs::read_to_string(dir("in").join(file)).unwrap();
        let from_injected = inject_stream(&native(&injected), file, &Options::default());
        let from_original = inject_stream(&native(&original), file, &Options::default());
        assert_eq!(from_injected.text, from_original.text, "{file}");
        assert!(!from_injected.text.contains("/weft/bin"), "{file}");
    }
}

/// Moved ports and uid reach every place that names them, in a Deployment and a wrapped Job.
#[test]
fn custom_ports_and_uid_reach_every_place_that_names_them() {
    let [deployment, job] = golden_json("custom-ports.yaml").try_into().unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    let init_args = strings(&spec["initContainers"][0]["args"]);
    let flag = |f: &str| init_args[init_args.iter().position(|a| *a == f).unwrap() + 1];
    assert_eq!(
        [
            flag("--proxy-uid"),
            flag("--proxy-gid"),
            flag("--inbound-port"),
            flag("--outbound-port"),
            flag("--admin-port")
        ],
        ["3000", "3000", "5143", "5140", "5191"]
    );
    assert_eq!(flag("--skip-inbound-ports"), "4191,5191", "the moved admin port and the app's probe port");
    let proxy = &spec["containers"][0];
    assert_eq!(proxy["securityContext"]["runAsUser"], "3000");
    assert_eq!(proxy["ports"][0]["containerPort"], "5143");
    assert_eq!(proxy["ports"][1]["containerPort"], "5191");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(proxy[probe]["httpGet"]["port"], "5191", "{probe}");
    }
    assert_eq!(
        strings(&proxy["lifecycle"]["postStart"]["exec"]["command"])[1..4],
        ["await", "--admin", "127.0.0.1:5191"]
    );
    let config = deployment["spec"]["template"]["metadata"]["annotations"]["weft.dev/proxy-config"].as_str().unwrap();
    assert!(config.contains("listen: \"0.0.0.0:5143\", app: \"127.0.0.1:4143\""), "{config}");
    assert!(
        config.contains("outbound: {listen: \"127.0.0.1:5140\"}")
            && config.contains("admin: {listen: \"0.0.0.0:5191\"}")
    );

    let spec = &job["spec"]["template"]["spec"];
    assert_eq!(
        strings(&spec["containers"][1]["command"])[..5],
        ["/weft/bin/weft-proxy", "await", "--admin", "127.0.0.1:5191", "--"]
    );
    assert_eq!(spec["initContainers"][1]["securityContext"]["runAsUser"], "3000", "the copy runs as the proxy too");
}

#[test]
fn a_port_the_app_uses_is_refused_with_the_annotation_to_set() {
    let text =
        "kind: Pod\nmetadata:\n  name: p\nspec:\n  containers: [{name: a, image: a, ports: [{containerPort: 4191}]}]\n";
    let got = inject_stream(text, "clash.yaml", &Options::default());
    assert!(got.failed);
    assert_eq!(got.text, text);
    assert_eq!(
        got.messages,
        ["clash.yaml: Pod p: weft.dev/proxy-admin-port: 4191 (the default) is also a port of container \"a\"; \
             set weft.dev/proxy-admin-port to a port the pod does not use; left unchanged"]
    );
}

#[test]
fn a_bad_annotation_leaves_the_workload_unchanged_and_fails() {
    let text = "kind: Pod\nmetadata:\n  name: p\n  annotations: {weft.dev/skip-inbound-ports: \"80,http\"}\nspec:\n  containers: [{name: a, image: a}]\n";
    let got = inject_stream(text, "bad.yaml", &Options::default());
    assert!(got.failed);
    assert_eq!(got.text, text);
    assert_eq!(
        got.messages,
        ["bad.yaml: Pod p: weft.dev/skip-inbound-ports: \"http\" is not a port (1-65535); left unchanged"]
    );
}

#[test]
fn the_control_plane_address_and_image_are_options() {
    let text = std::fs::read_to_string(dir("in").join("pod.yaml")).unwrap();
    let options = Options {
        control_plane: "https://cp.mesh.svc:9443".into(),
        image: "registry.example/weft-proxy:dev".into(),
        trust_bundle_configmap: "mesh-roots".into(),
    };
    let got = inject_stream(&text, "pod.yaml", &options).text;
    assert!(got.contains("address: \"https://cp.mesh.svc:9443\""), "{got}");
    assert!(got.contains("image: registry.example/weft-proxy:dev"));
    assert!(got.contains("name: mesh-roots"));
}

fn weft(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

#[test]
fn the_command_reads_stdin_or_files_and_joins_them() {
    let pod = std::fs::read_to_string(dir("in").join("pod.yaml")).unwrap();
    let golden_pod = std::fs::read_to_string(dir("out").join("pod.yaml")).unwrap();
    let (code, out, err) = weft(&[], &pod);
    assert_eq!((code, out.as_str()), (0, golden_pod.as_str()), "{err}");
    assert_eq!(err, "weft inject: stdin: Pod debug injected\n");

    let files = [dir("in").join("pod.yaml"), dir("in").join("passthrough.yaml")];
    let paths: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let (code, out, _) = weft(&paths, "");
    let passthrough = std::fs::read_to_string(&files[1]).unwrap();
    assert_eq!(code, 0);
    assert_eq!(out, format!("{golden_pod}---\n{passthrough}"));

    let (code, _, err) = weft(&["/nonexistent.yaml"], "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent.yaml"), "{err}");
    let (code, out, err) = weft(&[], "a: [1,\n");
    assert_eq!((code, out.as_str()), (1, "a: [1,\n"));
    assert!(err.contains("stdin: document 1: line"), "{err}");
    assert_eq!(weft(&["--bogus"], "").0, 2);
}

/// Scalars as serde_json strings (the tree keeps no types), enough to navigate the output.
fn to_json(node: &weft_api::yaml::Node) -> serde_json::Value {
    use weft_api::yaml::Value;
    match &node.value {
        Value::Scalar(s) => serde_json::Value::String(s.text.clone()),
        Value::Sequence(items) => items.iter().map(to_json).collect(),
        Value::Mapping(entries) => entries
            .iter()
            .map(|(k, v)| (to_json(k).as_str().unwrap_or_default().to_string(), to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}
