//! Identity from Kubernetes: `weft serve --ca … --kubernetes` checks a proxy's service-account
//! token with a TokenReview (audience `weft.dev`) at a scripted fake API server, and signs only
//! a CSR for exactly `spiffe://cluster.local/ns/<namespace>/sa/<account>`. A real proxy with
//! `serviceAccountTokenFile` gets its certificate (after the API server failed once: 503, and
//! the proxy asks again) and serves mTLS to a proxy that joined with a join token; every
//! refusal says why, in the answer, the metric and the log, and never shows the token.
//!
//! What the fake cannot prove: that a real API server validates the token's signature, expiry
//! and binding to a live pod, that it answers `audiences` as scripted, or that the chart's RBAC
//! lets the control plane create TokenReviews (see docs/kubernetes.md).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use weft_integration::client::{self, must};
use weft_integration::kube_api::{Events, FakeApi};
use weft_integration::mesh::{ControlPlane, Pki, client_of_server, spiffe};
use weft_integration::{Backend, Proxy, ProxyConfig, Req, Resp, eventually, metric_sum};

const CLIENT_JOIN_TOKEN: &str = "client-join-token-0123456789";

/// A control plane with a CA, one join token (for `client`) and Kubernetes at `api`, whose
/// cluster has no Services: the registry's lists are answered empty and its watches held open,
/// so only TokenReviews are left to script.
async fn control_plane(label: &str, api: &FakeApi) -> (Pki, ControlPlane, Vec<Events>) {
    let pki = Pki::new(label);
    let client = spiffe("client");
    let cp = ControlPlane::start_with(
        &pki,
        &[(CLIENT_JOIN_TOKEN, &client)],
        "1h",
        &["--kubernetes", "--kube-api", &api.url()],
    )
    .await;
    let mut watches = Vec::new();
    for (resource, kind) in [("services", "ServiceList"), ("endpointslices", "EndpointSliceList")] {
        api.next(resource).await.list(kind, "1", vec![]);
        let watch = api.next(resource).await;
        assert!(watch.is_watch(), "{resource}: a watch follows the list");
        watches.push(watch.stream());
    }
    (pki, cp, watches)
}

/// The Proxy spec line for `cp` over TLS with `token` as a projected service-account token.
fn service_account_line(cp: &ControlPlane, pki: &Pki, name: &str, token: &str) -> String {
    let path = pki.root().join(format!("{name}.sa-token"));
    std::fs::write(&path, format!("{token}\n")).expect("write service-account token");
    format!(
        "controlPlane: {{address: \"https://{}\", trustBundleFile: \"{}\", serviceAccountTokenFile: \"{}\"}}",
        cp.addr(),
        pki.ca_dir().join("ca.pem").display(),
        path.display()
    )
}

/// What the API server answers for a token it authenticates.
fn reviewed(username: &str, audiences: Option<&[&str]>) -> Value {
    let mut status = json!({"authenticated": true, "user": {"username": username, "uid": "0b5e",
                            "groups": ["system:serviceaccounts", "system:authenticated"]}});
    if let Some(list) = audiences {
        status["audiences"] = json!(list);
    }
    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {}, "spec": {}, "status": status})
}

/// The next TokenReview, checked to be the one the API server expects for `token`.
async fn review_of(api: &FakeApi, token: &str) -> weft_integration::kube_api::Call {
    let call = api.next("tokenreviews").await;
    assert_eq!(call.method, Method::POST);
    assert_eq!(call.path, "/apis/authentication.k8s.io/v1/tokenreviews");
    let body = call.json_body();
    assert_eq!(body["kind"], "TokenReview", "{body}");
    assert_eq!(body["apiVersion"], "authentication.k8s.io/v1", "{body}");
    assert_eq!(body["spec"]["token"], token, "the token is sent as the proxy read it, trimmed");
    assert_eq!(body["spec"]["audiences"], json!(["weft.dev"]), "{body}");
    call
}

async fn certificates(cp: &ControlPlane, result: &str) -> f64 {
    let text = client::must(cp.admin(), &Req::get("/metrics")).await.text();
    metric_sum(&text, "weft_control_certificates_total", &[("result", result)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_gets_exactly_its_identity_and_serves_mtls_beside_a_join_token() {
    let api = FakeApi::start(&["tokenreviews", "services", "endpointslices"]).await;
    let (pki, cp, _watches) = control_plane("sa-token-mtls", &api).await;
    let app = Backend::start("app").await;
    let token = "eyJhbGciOiJSUzI1NiJ9.server-account.signature";
    let mut server = Proxy::spawn(&ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: service_account_line(&cp, &pki, "server", token),
        ..Default::default()
    });

    // The API server fails the first review: the proxy is told 503 and asks again.
    review_of(&api, token).await.fail(500, "InternalError");
    review_of(&api, token)
        .await
        .json(StatusCode::CREATED, reviewed("system:serviceaccount:default:server", Some(&["weft.dev"])));
    server.wait_ready(Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(30)));
    assert!(server.logs().contains("503 Service Unavailable"), "{}", server.log_tail(30));

    // A proxy with a join token gets its certificate with no TokenReview (none is answered
    // from here on), and verifies that the server's certificate is exactly server's id.
    let client = Proxy::start(client_of_server(cp.tls_line(&pki, "client", CLIENT_JOIN_TOKEN), server.inbound())).await;
    let resp = must(client.upstream("server"), &Req::get("/hello")).await;
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), client.log_tail(20));
    assert_eq!(resp.header("x-seen-weft-client-id"), Some(spiffe("client").as_str()));

    assert_eq!(certificates(&cp, "issued").await, 2.0);
    assert_eq!(certificates(&cp, "token-review-failed").await, 1.0);
    let logs = cp.logs();
    assert!(logs.contains("certificate refused") && logs.contains("token-review-failed"), "{logs}");
    assert!(logs.contains("500 InternalError"), "the API server's answer is in the log: {logs}");
    assert!(logs.contains("service-account-token") && logs.contains("join-token"), "{logs}");
    assert!(!logs.contains(token), "a token must never be logged");
}

/// POSTs a CSR request with `token` to the control plane (plaintext from loopback); the CSR is
/// not looked at before the token earns an identity.
async fn ask(addr: SocketAddr, token: &'static str) -> tokio::task::JoinHandle<Resp> {
    tokio::spawn(async move {
        let req = Req::post("/v1/certificates", r#"{"csr": "checked only once the token is good"}"#)
            .header("content-type", "application/json")
            .header("authorization", &format!("Bearer {token}"));
        client::must(addr, &req).await
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_say_why_in_the_answer_the_metric_and_the_log() {
    let api = FakeApi::start(&["tokenreviews", "services", "endpointslices"]).await;
    let (_pki, cp, _watches) = control_plane("sa-token-refused", &api).await;
    let sa = "system:serviceaccount:default:server";
    let mut expired = reviewed("", None);
    expired["status"] =
        json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"});
    let cases: [(&str, Answer, u16, &str, &str); 5] = [
        ("expired-token-0123456789", Answer::Json(expired), 401, "token-review-refused", "token has expired"),
        ("no-audience-token-0123456789", Answer::Json(reviewed(sa, None)), 401, "wrong-audience", "not stated"),
        (
            "api-audience-token-0123456789",
            Answer::Json(reviewed(sa, Some(&["https://kubernetes.default.svc.cluster.local"]))),
            401,
            "wrong-audience",
            "kubernetes.default.svc.cluster.local",
        ),
        (
            "node-token-0123456789",
            Answer::Json(reviewed("system:node:worker-1", Some(&["weft.dev"]))),
            403,
            "not-a-service-account",
            "system:node:worker-1",
        ),
        ("forbidden-review-0123456789", Answer::Forbidden, 503, "token-review-failed", "create` on tokenreviews"),
    ];
    let mut counted: HashMap<&str, f64> = HashMap::new();
    let mut seen = Vec::new();
    for (token, answer, status, reason, says) in cases {
        let pending = ask(cp.addr(), token).await;
        let call = review_of(&api, token).await;
        match answer {
            Answer::Json(body) => call.json(StatusCode::CREATED, body),
            Answer::Forbidden => call.fail(403, "Forbidden"),
        }
        let resp = pending.await.expect("request task");
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or_else(|e| panic!("{e}: {}", resp.text()));
        assert_eq!(resp.status, status, "{token}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{token}: {error}");
        assert!(!error.contains(token), "{token}: the answer repeats the token: {error}");
        *counted.entry(reason).or_default() += 1.0;
        assert_eq!(certificates(&cp, reason).await, counted[reason], "{token}: counted as {reason}");
        seen.push((token, reason));
    }
    // An empty bearer token is no token: refused here, without asking the API server (which
    // nobody answers now: a review would end in 503 after its timeout).
    let empty = ask(cp.addr(), "  ").await.await.expect("request task");
    assert_eq!(empty.status, 401, "{}", empty.text());
    assert_eq!(certificates(&cp, "no-token").await, 1.0);
    assert_eq!(certificates(&cp, "issued").await, 0.0);
    assert_eq!(
        certificates(&cp, "unknown-token").await,
        0.0,
        "with Kubernetes, a token no join token matches is reviewed"
    );
    let logs = cp.logs();
    for (token, reason) in seen {
        assert!(logs.contains(reason), "{reason} not logged: {logs}");
        assert!(!logs.contains(token), "a token must never be logged: {logs}");
    }
}

/// How the fake API server answers one review.
enum Answer {
    Json(Value),
    /// The control plane's service account may not create TokenReviews (RBAC).
    Forbidden,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_account_never_gets_another_accounts_certificate() {
    let api = FakeApi::start(&["tokenreviews", "services", "endpointslices"]).await;
    let (pki, cp, _watches) = control_plane("sa-token-other", &api).await;
    let app = Backend::start("app").await;
    // The proxy stands beside `payments` and asks for payments' id, but its token is server's.
    let token = "eyJhbGciOiJSUzI1NiJ9.server-account-in-payments-pod.signature";
    let mut proxy = Proxy::spawn(&ProxyConfig {
        service: "payments".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: service_account_line(&cp, &pki, "payments", token),
        ..Default::default()
    });
    review_of(&api, token)
        .await
        .json(StatusCode::CREATED, reviewed("system:serviceaccount:default:server", Some(&["weft.dev"])));
    // The proxy asks again about once a second; the review is remembered (nobody answers the
    // fake any more: a fresh review would wait out its timeout and count token-review-failed).
    eventually("the CSR for payments to be refused three times", Duration::from_secs(10), || async {
        (certificates(&cp, "wrong-identity").await >= 3.0).then_some(())
    })
    .await;
    assert_eq!(certificates(&cp, "token-review-failed").await, 0.0, "a successful review is remembered");
    assert!(proxy.wait_ready(Duration::from_secs(2)).await.is_err(), "ready with another account's identity");
    let logs = proxy.logs();
    assert!(logs.contains("403 Forbidden"), "{}", proxy.log_tail(20));
    assert!(
        logs.contains("asks for spiffe://cluster.local/ns/default/sa/payments")
            && logs.contains("may only have spiffe://cluster.local/ns/default/sa/server"),
        "the answer names both ids: {}",
        proxy.log_tail(20)
    );
    assert_eq!(certificates(&cp, "issued").await, 0.0);
    assert!(!cp.logs().contains(token), "a token must never be logged");
}
