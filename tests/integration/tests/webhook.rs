//! The admission webhook in `weft serve`: a real AdmissionReview posted over TLS, verified the
//! way the Kubernetes API server verifies it (the serving certificate's DNS name against the
//! webhook's caBundle, here the mesh CA), answered with a JSONPatch that, applied, gives the
//! pod `weft inject` gives. What no API server here can show: its own call, retries and
//! `failurePolicy` (the chart sets Ignore).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use weft_integration::mesh::{ControlPlane, Pki};

const SERVICE_NAME: &str = "weft-control.weft.svc";

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{
            "name": "web", "image": "web:1", "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8081}}
        }]}
    })
}

/// POSTs `review` to `/v1/admission` over TLS, trusting `pki`'s root for `SERVICE_NAME` only.
async fn post_review(pki: &Pki, cp: &ControlPlane, review: &Value) -> Value {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pki.ca_dir().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(cp.addr()).await.unwrap();
    let name = ServerName::try_from(SERVICE_NAME).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/v1/admission?timeout=10s")
        .header("host", SERVICE_NAME)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// A YAML node as JSON, plain scalars typed as a YAML 1.2 reader types them (for comparing
/// documents whatever their key order).
fn to_json(node: &weft_api::yaml::Node) -> Value {
    use weft_api::yaml::Value as Y;
    match &node.value {
        Y::Scalar(s) if s.quoted => Value::String(s.text.clone()),
        Y::Scalar(s) => match s.text.as_str() {
            "null" | "~" | "" => Value::Null,
            "true" => json!(true),
            "false" => json!(false),
            t => t.parse::<i64>().map(|n| json!(n)).unwrap_or_else(|_| json!(t)),
        },
        Y::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Y::Mapping(entries) => Value::Object(
            entries.iter().map(|(k, v)| (to_json(k).as_str().unwrap_or_default().to_string(), to_json(v))).collect(),
        ),
    }
}

/// `weft inject` of `manifest` (JSON is YAML), read back as JSON.
fn cli_inject(manifest: &Value) -> Value {
    let text = cli_inject_text(manifest);
    let parsed = weft_api::yaml::parse_stream(&text);
    assert!(parsed.error.is_none(), "{text}");
    to_json(&parsed.documents[0])
}

fn cli_inject_text(manifest: &Value) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new(weft_integration::bin("weft"))
        .arg("inject")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(manifest.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_review_over_tls_injects_the_pod_the_cli_injects() {
    let pki = Pki::new("webhook");
    let cp = ControlPlane::start_with(&pki, &[], "1h", &["--tls-san", SERVICE_NAME]).await;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "c0ffee", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": "shop", "operation": "CREATE", "object": pod()}
    });
    let answer = post_review(&pki, &cp, &review).await;
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(answer["response"]["uid"], "c0ffee");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    use base64::Engine as _;
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let mut patched = pod();
    for op in &patch {
        assert!(matches!(op["op"].as_str(), Some("replace" | "add")), "{op}");
        let key = op["path"].as_str().unwrap().trim_start_matches('/');
        assert!(!key.contains('/'), "top-level paths only: {op}");
        patched[key] = op["value"].clone();
    }
    let names = |v: &Value, list: &str| -> Vec<String> {
        v["spec"][list].as_array().into_iter().flatten().map(|c| c["name"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(names(&patched, "initContainers"), ["weft-init", "weft-proxy"], "{patched}");
    assert_eq!(names(&patched, "containers"), ["web"]);
    // The probe port is let through the redirection, as the CLI does.
    let init_args = patched["spec"]["initContainers"][0]["args"].to_string();
    assert!(init_args.contains("8081"), "{init_args}");
    // The same pod as the CLI's: what the CLI writes for the original pod, and injection being
    // idempotent, what it writes for the webhook's pod too.
    let by_cli = cli_inject(&pod());
    assert_eq!(patched, by_cli);
    assert_eq!(cli_inject(&patched), by_cli);

    // A Job's pod with native sidecars off: its command is wrapped in `weft-proxy await`, as
    // the CLI wraps it; a container with only `args` cannot be, which a warning says.
    let mut job_pod = pod();
    job_pod["metadata"]["annotations"] = json!({"weft.dev/native-sidecar": "false"});
    job_pod["spec"]["restartPolicy"] = json!("Never");
    job_pod["spec"]["containers"] = json!([
        {"name": "report", "image": "report:1", "command": ["/report"], "args": ["--since", "24h"]},
        {"name": "upload", "image": "upload:1", "args": ["--to", "s3://reports"]},
    ]);
    let mut job_review = review.clone();
    job_review["request"]["object"] = job_pod.clone();
    let answer = post_review(&pki, &cp, &job_review).await;
    let warnings = answer["response"]["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{answer}");
    assert!(warnings[0].as_str().unwrap().starts_with("weft: container \"upload\" sets no command"), "{warnings:?}");
    let patch =
        base64::engine::general_purpose::STANDARD.decode(answer["response"]["patch"].as_str().unwrap()).unwrap();
    let mut patched = job_pod.clone();
    for op in serde_json::from_slice::<Vec<Value>>(&patch).unwrap() {
        patched[op["path"].as_str().unwrap().trim_start_matches('/')] = op["value"].clone();
    }
    assert_eq!(patched["spec"]["containers"][1]["command"][0], "/weft/bin/weft-proxy", "{patched}");
    assert_eq!(patched, cli_inject(&job_pod));
    assert_eq!(cli_inject(&patched), patched, "re-injecting the webhook's pod changes nothing");

    // A pod that opted out is admitted unchanged.
    let mut opted_out = review.clone();
    opted_out["request"]["object"]["metadata"]["annotations"] = json!({"weft.dev/inject": "disabled"});
    let answer = post_review(&pki, &cp, &opted_out).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none(), "{answer}");
}
