//! Mutual TLS between two real proxies, with certificates from the real CA code: the happy
//! path, every way a peer is rejected in strict mode, permissive mode, authorization,
//! rotation under load, and where the private key lives.

use std::net::SocketAddr;
use std::time::Duration;

use weft_integration::client::{must, send_h2};
use weft_integration::mesh::{
    ControlPlane, IdentityFiles, Pki, client_of_server, client_proxy as client, handshake_errors, mesh_mode as mesh,
    rejected_for, server_proxy as server, spiffe,
};
use weft_integration::net::raw_exchange;
use weft_integration::tcp_echo::send_and_read_to_eof;
use weft_integration::tls::no_cert_tls_exchange;
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, document, eventually, metric_sum, run_load};

async fn counter(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&proxy.metrics().await, name, labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbound_access_log_names_the_verified_caller_and_the_path() {
    let pki = Pki::new("mtls-access");
    let app = Backend::start("app").await;
    let server = Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: format!(
            "{}\nlog: {{format: json, level: warn, accessLog: true}}",
            pki.issue("server", &spiffe("server"), "1h").tls_line()
        ),
        ..Default::default()
    })
    .await;
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;
    let resp = must(client.upstream("server"), &Req::get("/hello?x=1")).await;
    assert_eq!(resp.status, 200, "{resp:?}");

    let line = eventually("the server's access line", Duration::from_secs(10), || async {
        server
            .logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["target"] == "access")
    })
    .await;
    let fields = &line["fields"];
    assert_eq!(fields["direction"], "inbound", "{line}");
    assert_eq!(fields["caller"], spiffe("client"), "{line}");
    // It arrived as HTTP/2 with a full URI; logged as a path, like the outbound side.
    assert_eq!(fields["path"], "/hello?x=1", "{line}");
    assert_eq!(fields["endpoint"], app.addr().to_string(), "{line}");
    assert_eq!(fields["response_bytes"], resp.body.len(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_proxies_talk_mtls_and_the_app_learns_the_caller() {
    let pki = Pki::new("mtls-ok");
    let app = Backend::start("app").await;
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, "").await;
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;

    for i in 0..20 {
        let req = Req::get(&format!("/hello/{i}")).header("weft-client-id", &spiffe("admin"));
        let resp = must(client.upstream("server"), &req).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(resp.backend(), Some("app"));
        assert_eq!(resp.header("x-seen-weft-client-id"), Some(spiffe("client").as_str()), "spoofed id replaced");
        assert_eq!(resp.header("x-echo-version"), Some("HTTP/1.1"), "HTTP/1 restored after the h2 hop");
    }
    let conns = counter(&server, "weft_inbound_connections_total", &[("transport", "mtls")]).await;
    assert_eq!(conns, 1.0, "20 requests multiplexed on one mTLS HTTP/2 connection");
    let expiry = counter(&client, "weft_cert_expiry_timestamp_seconds", &[]).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now + 3000.0..now + 3700.0).contains(&expiry), "expiry {expiry} is about an hour from {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rejects_a_peer_certificate_from_another_ca() {
    let pki = Pki::new("mtls-ca");
    let other = Pki::new("mtls-other-ca");
    let app = Backend::start("app").await;
    let server_files = pki.issue("server", &spiffe("server"), "1h");
    let server = server(&server_files, &app, "").await;
    // Signed by another CA, trusting ours: the server must refuse it.
    let foreign = other.issue("client", &spiffe("client"), "1h");
    let files = pki.with_bundle_of("client-foreign", &foreign, &server_files);
    let client = client(&files, server.inbound(), &spiffe("server")).await;
    let resp = must(client.upstream("server"), &Req::get("/")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    rejected_for(&server, "inbound", "unknown-ca").await;
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rejects_an_expired_peer_certificate() {
    let pki = Pki::new("mtls-expired");
    let app = Backend::start("app").await;
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, "").await;
    let expired = pki.issue("client", &spiffe("client"), "1s");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let client = client(&expired, server.inbound(), &spiffe("server")).await;
    let resp = must(client.upstream("server"), &Req::get("/")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    rejected_for(&server, "inbound", "expired").await;
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refuses_a_server_with_the_wrong_spiffe_id() {
    let pki = Pki::new("mtls-wrong-id");
    let app = Backend::start("app").await;
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, "").await;
    // Signed by the right CA, but the endpoint is supposed to be `payments`.
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("payments")).await;
    let resp = must(client.upstream("server"), &Req::get("/")).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert_eq!(resp.proxy_error(), Some("tls-failed"));
    rejected_for(&client, "outbound", "wrong-identity").await;
    let expected = format!("the peer is {}, but this endpoint must be {}", spiffe("server"), spiffe("payments"));
    assert!(client.logs().contains(&expected), "{}", client.log_tail(20));
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_rejects_a_peer_without_certificate_and_plaintext() {
    let pki = Pki::new("mtls-nocert");
    let app = Backend::start("app").await;
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, "").await;

    let answer = no_cert_tls_exchange(server.inbound()).await;
    assert!(!answer.starts_with(b"HTTP/"), "served without a client certificate: {}", String::from_utf8_lossy(&answer));
    rejected_for(&server, "inbound", "no-client-cert").await;

    let plain = raw_exchange(server.inbound(), b"GET / HTTP/1.1\r\nhost: server\r\n\r\n", Duration::from_secs(5)).await;
    let plain = String::from_utf8_lossy(&plain);
    assert!(plain.starts_with("HTTP/1.1 403"), "{plain}");
    assert!(plain.contains("weft-proxy-error: mtls-required"), "{plain}");
    assert_eq!(handshake_errors(&server, "inbound", "plaintext").await, 1.0);
    assert_eq!(app.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_and_mtls_and_counts_each() {
    let pki = Pki::new("mtls-permissive");
    let app = Backend::start("app").await;
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, &mesh("permissive")).await;
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;

    let plain = must(server.inbound(), &Req::get("/plain").header("weft-client-id", &spiffe("admin"))).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(plain.header("x-seen-weft-client-id"), None, "no identity for plaintext, spoofed copy stripped");
    let meshed = must(client.upstream("server"), &Req::get("/meshed")).await;
    assert_eq!(meshed.status, 200, "{meshed:?}");
    assert_eq!(meshed.header("x-seen-weft-client-id"), Some(spiffe("client").as_str()));
    let server = &server;
    let by =
        |t: &'static str| async move { counter(server, "weft_inbound_connections_total", &[("transport", t)]).await };
    assert_eq!((by("plaintext").await, by("mtls").await), (1.0, 1.0));
}

/// Calls into the app follow the outbound rule for hosts: the target's authority wins, so the
/// app reads the host the caller addressed, never a conflicting Host beside it (permissive
/// mode lets a test send plaintext; mTLS connections are served by the same code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_call_reaches_the_app_with_its_authority_as_host() {
    let pki = Pki::new("mtls-inbound-host");
    let app = Backend::start("app").await;
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, &mesh("permissive")).await;

    let h2 = Req::get("/h2").host("server").header("host", "evil");
    let resp = send_h2(server.inbound(), &h2).await.expect("h2 request");
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-echo-host"), Some("server"), "HTTP/2 :authority with a conflicting host");
    let resp = must(server.inbound(), &Req::get("http://server/h1").host("evil")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("x-echo-host"), Some("server"), "HTTP/1.1 absolute-form with a conflicting Host");
    assert_eq!(resp.header("x-echo-path"), Some("/h1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_and_denies_exactly_as_written() {
    let pki = Pki::new("mtls-authz");
    let app = Backend::start("app").await;
    let policy = document(
        "AuthorizationPolicy",
        "server",
        &format!(
            "service: server\ndefault: deny\nrules:\n  - {{action: deny, paths: [/v1/admin]}}\n  - {{from: [\"{}\"], paths: [/v1/], methods: [GET]}}\n",
            spiffe("client")
        ),
    );
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, &policy).await;
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;
    let intruder =
        self::client(&pki.issue("intruder", &spiffe("intruder"), "1h"), server.inbound(), &spiffe("server")).await;

    let call = |proxy: &Proxy, req: Req| {
        let addr = proxy.upstream("server");
        async move { must(addr, &req).await }
    };
    let ok = call(&client, Req::get("/v1/pay")).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    for (who, req) in [
        (&client, Req::post("/v1/pay", "x")),
        (&client, Req::get("/v2/pay")),
        (&client, Req::get("/v1/admin/users")),
        (&intruder, Req::get("/v1/pay")),
    ] {
        let desc = format!("{} {}", req.method, req.path);
        let resp = call(who, req).await;
        assert_eq!(resp.status, 403, "{desc}: {resp:?}");
        assert_eq!(resp.proxy_error(), Some("unauthorized"), "{desc}");
    }
    assert_eq!(app.hits(), 1, "only the allowed call reached the app");
    let server = &server;
    let decisions = |d: &'static str| async move {
        counter(server, "weft_authz_decisions_total", &[("service", "server"), ("decision", d)]).await
    };
    assert_eq!((decisions("allow").await, decisions("deny").await), (1.0, 4.0));

    // `/explain` names the rule that decides an inbound call.
    let explain = |from: String, path: &str| {
        let q = format!("/explain?from={from}&path={path}&method=GET");
        async move { server.config_json_at(&q).await }
    };
    let allowed = explain(spiffe("client"), "/v1/pay").await;
    assert_eq!(
        (allowed["decision"].as_str(), allowed["rule"].as_str()),
        (Some("allow"), Some("server#1")),
        "{allowed}"
    );
    let denied = explain(spiffe("intruder"), "/v1/pay").await;
    assert_eq!((denied["decision"].as_str(), denied["rule"].as_str()), (Some("403 unauthorized"), Some("default")));
    let admin = explain(spiffe("client"), "/v1/admin/x").await;
    assert_eq!(admin["rule"].as_str(), Some("server#0"), "{admin}");
}

/// The path that authorization checks is the path the app receives: the proxy normalises it
/// first (dot segments, repeated slashes, encoded unreserved characters), so a request
/// allowed under `/v1/` cannot reach `/admin` through an app that would resolve
/// `/v1/../admin` itself. Encoded slashes, which apps read either way, are refused. Checked
/// through the caller's proxy on each server a request can meet there (the proxy's own
/// HTTP/1.1 server, hyper's for a chunked body, HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_checks_the_normalised_path_that_the_app_receives() {
    let pki = Pki::new("mtls-authz-paths");
    let app = Backend::start("app").await;
    let policy = document(
        "AuthorizationPolicy",
        "server",
        &format!("service: server\ndefault: deny\nrules:\n  - {{from: [\"{}\"], paths: [/v1/]}}\n", spiffe("client")),
    );
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, &policy).await;
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;
    let upstream = client.upstream("server");

    for path in ["/v1/../admin", "/v1/%2e%2e/admin", "/v1/.%2E/admin", "/v1/x/../../admin"] {
        let resp = must(upstream, &Req::get(path)).await;
        assert_eq!((resp.status, resp.proxy_error()), (403, Some("unauthorized")), "{path}: {resp:?}");
        let resp = send_h2(upstream, &Req::get(path).host("server")).await.expect("h2 request");
        assert_eq!((resp.status, resp.proxy_error()), (403, Some("unauthorized")), "HTTP/2 {path}: {resp:?}");
    }
    for path in ["/v1/%2Fadmin", "/v1/%2f..%2fadmin", "/v1/..%5Cadmin", "/v1/../../admin", "/v1/%00"] {
        let resp = must(upstream, &Req::get(path)).await;
        assert_eq!((resp.status, resp.proxy_error()), (400, Some("bad-request")), "{path}: {resp:?}");
    }
    let chunked = b"POST /v1/../admin HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let raw = String::from_utf8_lossy(&raw_exchange(upstream, chunked, Duration::from_secs(10)).await).to_lowercase();
    assert!(
        raw.starts_with("http/1.1 403 ") && raw.contains("weft-proxy-error: unauthorized"),
        "hyper's server: {raw}"
    );
    assert_eq!(app.hits(), 0, "nothing outside /v1/ reached the app");

    let allowed = [
        ("/v1//x", "/v1/x"),
        ("/v1/./x", "/v1/x"),
        ("/v1/a/../x", "/v1/x"),
        ("/v1/%78%7e?next=/../admin&p=%2F", "/v1/x~?next=/../admin&p=%2F"),
    ];
    for (path, received) in allowed {
        let resp = must(upstream, &Req::get(path)).await;
        assert_eq!(resp.status, 200, "{path}: {resp:?}");
        assert_eq!(resp.header("x-echo-path"), Some(received), "{path}: the app got what was authorised");
        let resp = send_h2(upstream, &Req::get(path).host("server")).await.expect("h2 request");
        assert_eq!(resp.header("x-echo-path"), Some(received), "HTTP/2 {path}");
    }
    assert_eq!(app.hits(), 2 * allowed.len());

    // `/explain` decides on the same normal form, and refuses what the proxy refuses.
    let explain = |path: &str| {
        let q = format!("/explain?from={}&path={path}", spiffe("client"));
        let server = &server;
        async move { server.config_json_at(&q).await }
    };
    let climbed = explain("/v1/../admin").await;
    let fields = ["decision", "path", "normalisedFrom"].map(|f| climbed[f].as_str());
    assert_eq!(fields, [Some("403 unauthorized"), Some("/admin"), Some("/v1/../admin")], "{climbed}");
    let slashed = explain("/v1/%252Fadmin").await;
    assert_eq!(slashed["decision"].as_str(), Some("400 bad-request"), "{slashed}");
}

/// The inbound side normalises on its own too, for callers that are not Weft proxies
/// (permissive mode lets a test send plaintext; mTLS connections are served by the same code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_authorization_normalises_paths_from_any_caller() {
    let pki = Pki::new("mtls-inbound-paths");
    let app = Backend::start("app").await;
    let policy = mesh("permissive")
        + &document(
            "AuthorizationPolicy",
            "server",
            "service: server\ndefault: allow\nrules: [{action: deny, paths: [/admin]}]\n",
        );
    let server = server(&pki.issue("server", &spiffe("server"), "1h"), &app, &policy).await;
    let inbound = server.inbound();

    for path in ["/v1/../admin", "//admin", "/v1/%2e%2e/admin", "/%61dmin", "/./admin/x"] {
        let resp = must(inbound, &Req::get(path).host("server")).await;
        assert_eq!((resp.status, resp.proxy_error()), (403, Some("unauthorized")), "{path}: {resp:?}");
        let resp = send_h2(inbound, &Req::get(path).host("server")).await.expect("h2 request");
        assert_eq!((resp.status, resp.proxy_error()), (403, Some("unauthorized")), "HTTP/2 {path}: {resp:?}");
    }
    let chunked = b"POST //admin HTTP/1.1\r\nHost: server\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let raw = String::from_utf8_lossy(&raw_exchange(inbound, chunked, Duration::from_secs(10)).await).to_lowercase();
    assert!(raw.starts_with("http/1.1 403 "), "hyper's server: {raw}");
    let resp = must(inbound, &Req::get("/v1/%2fadmin").host("server")).await;
    assert_eq!((resp.status, resp.proxy_error()), (400, Some("bad-request")), "{resp:?}");
    assert_eq!(app.hits(), 0);

    let resp = must(inbound, &Req::get("/v1//x/.").host("server")).await;
    assert_eq!((resp.status, resp.header("x-echo-path")), (200, Some("/v1/x/")), "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_control_plane_rotate_under_load_without_a_failed_request() {
    let pki = Pki::new("mtls-rotate");
    let tokens = [("server-token-0123456789", spiffe("server")), ("client-token-0123456789", spiffe("client"))];
    let pairs: Vec<(&str, &str)> = tokens.iter().map(|(t, id)| (*t, id.as_str())).collect();
    let cp = ControlPlane::start(&pki, &pairs, "3s").await;
    let app = Backend::start("app").await;
    // Over TLS, as in production: the proxies verify the control plane's certificate.
    let token_file = |name: &str, token: &str| cp.tls_line(&pki, name, token);
    let server = Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: token_file("server", tokens[0].0),
        ..Default::default()
    })
    .await;
    let client = Proxy::start(client_of_server(token_file("client", tokens[1].0), server.inbound())).await;

    let report =
        run_load(client.upstream("server"), 4, Limit::For(Duration::from_secs(8)), |i| Req::get(&format!("/r/{i}")))
            .await;
    assert_eq!(report.failures(), 0, "{}", report.summary());
    assert!(report.responses > 200, "{}", report.summary());
    eprintln!("certificates rotated under load: {}", report.summary());
    for proxy in [&server, &client] {
        let renewals = proxy.logs().matches("certificate from the control plane installed").count();
        assert!(renewals >= 3, "a 3 s certificate renews every ~2 s; saw {renewals}:\n{}", proxy.log_tail(20));
    }
    let conns = counter(&server, "weft_inbound_connections_total", &[("transport", "mtls")]).await;
    assert!(conns >= 3.0, "each rotation opens a new connection with the new certificate; saw {conns}");

    // The private key was made in memory: no file the proxies wrote or hold open contains one.
    for proxy in [&server, &client] {
        let dir = proxy.config_path().parent().and_then(|p| p.parent()).unwrap().to_path_buf();
        assert_no_private_key_in(&dir);
        assert_no_private_key_in_open_files(proxy.pid());
    }
    drop(cp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_control_plane_issues_a_certificate() {
    let pki = Pki::new("mtls-unready");
    let cp = ControlPlane::start(&pki, &[("some-other-token-0123", &spiffe("other"))], "1h").await;
    let app = Backend::start("app").await;
    let mut proxy = Proxy::spawn(&ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app.addr()),
        proxy_spec: cp.tls_line(&pki, "server", "not-a-known-token-0123"),
        ..Default::default()
    });
    eventually("the refusal to be logged", Duration::from_secs(10), || async {
        proxy.logs().contains("join token is not known").then_some(())
    })
    .await;
    assert!(proxy.wait_ready(Duration::from_secs(1)).await.is_err(), "ready without a certificate");
    let ready = proxy.admin_get("/ready").await;
    assert_eq!((ready.status, ready.text().as_str()), (503, "no certificate yet\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_identity_files_reload_and_a_broken_file_keeps_the_last_good_identity() {
    let pki = Pki::new("mtls-files");
    let app = Backend::start("app").await;
    let server_files = pki.issue("server", &spiffe("server"), "1h");
    let server = server(&server_files, &app, "").await;
    let client = client(&pki.issue("client", &spiffe("client"), "1h"), server.inbound(), &spiffe("server")).await;
    let upstream = client.upstream("server");
    let load = tokio::spawn(run_load(upstream, 2, Limit::For(Duration::from_secs(4)), |i| Req::get(&format!("/{i}"))));

    std::fs::write(server_files.path("cert.pem"), "not a certificate").unwrap();
    eventually("the broken file to be reported", Duration::from_secs(5), || async {
        server.logs().contains("still serving with the last good identity").then_some(())
    })
    .await;
    let installs = |p: &Proxy| p.logs().matches("identity installed").count();
    assert_eq!(installs(&server), 1);
    // A fresh connection still gets the last good certificate.
    let fresh = client_with_new_pool(&pki, server.inbound()).await;
    assert_eq!(must(fresh.upstream("server"), &Req::get("/")).await.status, 200);

    pki.issue("server", &spiffe("server"), "2h");
    eventually("the new certificate to be installed", Duration::from_secs(5), || async {
        (installs(&server) == 2).then_some(())
    })
    .await;
    let report = load.await.unwrap();
    assert_eq!(report.failures(), 0, "{}", report.summary());
    let expiry = counter(&server, "weft_cert_expiry_timestamp_seconds", &[]).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 6000.0, "the 2 h certificate is in use: {expiry}");
}

async fn client_with_new_pool(pki: &Pki, server: SocketAddr) -> Proxy {
    client(&pki.issue("client-2", &spiffe("client"), "1h"), server, &spiffe("server")).await
}

fn assert_no_private_key_in(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            assert_no_private_key_in(&path);
        } else if let Ok(bytes) = std::fs::read(&path) {
            assert!(!String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"), "{} holds a private key", path.display());
        }
    }
}

fn assert_no_private_key_in_open_files(pid: u32) {
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        if target.is_file()
            && let Ok(bytes) = std::fs::read(&target)
        {
            assert!(!String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"), "{} holds a key", target.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_travels_inside_mtls_and_is_authorized_by_caller() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new("mtls-tcp");
    let echo = weft_integration::TcpEcho::start().await;
    let only_client = document(
        "AuthorizationPolicy",
        "server",
        &format!("service: server\ndefault: deny\nrules: [{{from: [\"{}\"]}}]\n", spiffe("client")),
    );
    let server = Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(echo.addr()),
        proxy_spec: pki.issue("server", &spiffe("server"), "1h").tls_line(),
        policy: format!("{}{only_client}", weft_integration::service("server", "tcp", &[])),
        ..Default::default()
    })
    .await;
    let meshed = |files: IdentityFiles| ProxyConfig {
        service: "client".to_string(),
        upstreams: vec!["server".to_string()],
        proxy_spec: files.tls_line(),
        policy: weft_integration::mesh::meshed_service_speaking("server", "tcp", server.inbound(), &spiffe("server")),
        ..Default::default()
    };
    let client = Proxy::start(meshed(pki.issue("client", &spiffe("client"), "1h"))).await;
    let intruder = Proxy::start(meshed(pki.issue("intruder", &spiffe("intruder"), "1h"))).await;

    let big: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    let stream = tokio::net::TcpStream::connect(client.upstream("server")).await.unwrap();
    let received = send_and_read_to_eof(stream, &big, Duration::from_secs(10)).await;
    assert!(received == big, "bytes changed on the way ({} of {} came back)", received.len(), big.len());
    assert_eq!(counter(&server, "weft_inbound_connections_total", &[("transport", "mtls")]).await, 1.0);

    let mut denied = tokio::net::TcpStream::connect(intruder.upstream("server")).await.unwrap();
    let _ = denied.write_all(b"hello").await;
    let mut back = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), denied.read_to_end(&mut back)).await.expect("closed");
    assert!(back.is_empty(), "the intruder got bytes back: {back:?}");
    assert_eq!(echo.connections(), 1, "the denied caller never reached the app");
    let decisions = |d: &'static str| {
        let server = &server;
        async move { counter(server, "weft_authz_decisions_total", &[("service", "server"), ("decision", d)]).await }
    };
    assert_eq!((decisions("allow").await, decisions("deny").await), (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_change_with_overlapping_trust_loses_no_request() {
    let old = Pki::new("mtls-old-ca");
    let new = Pki::new("mtls-new-ca");
    let app = Backend::start("app").await;
    let server_files = old.issue("server", &spiffe("server"), "1h");
    let client_files = old.issue("client", &spiffe("client"), "1h");
    let server = server(&server_files, &app, "").await;
    let client = client(&client_files, server.inbound(), &spiffe("server")).await;
    let load = tokio::spawn(run_load(client.upstream("server"), 2, Limit::For(Duration::from_secs(6)), |i| {
        Req::get(&format!("/{i}"))
    }));
    // 1. Both trust both roots. 2. The new CA (bundle: both roots) re-issues the server, then
    // the client. 3. Only the new root is left.
    let old_root = std::fs::read_to_string(old.ca_dir().join("ca.pem")).unwrap();
    let new_root = std::fs::read_to_string(new.ca_dir().join("ca.pem")).unwrap();
    std::fs::write(new.ca_dir().join("trust-bundle.pem"), format!("{old_root}{new_root}")).unwrap();
    for files in [&server_files, &client_files] {
        std::fs::write(files.path("bundle.pem"), format!("{old_root}{new_root}")).unwrap();
    }
    wait_installs(&server, 2).await;
    wait_installs(&client, 2).await;
    copy_identity(&new.issue("server-new", &spiffe("server"), "1h"), &server_files);
    wait_installs(&server, 3).await;
    copy_identity(&new.issue("client-new", &spiffe("client"), "1h"), &client_files);
    wait_installs(&client, 3).await;
    for files in [&server_files, &client_files] {
        std::fs::write(files.path("bundle.pem"), &new_root).unwrap();
    }
    wait_installs(&server, 4).await;
    wait_installs(&client, 4).await;

    let report = load.await.unwrap();
    assert_eq!(report.failures(), 0, "{}", report.summary());
    eprintln!("CA changed with overlapping trust under load: {}", report.summary());
    let after = must(client.upstream("server"), &Req::get("/after")).await;
    assert_eq!(after.status, 200, "only the new CA is trusted now, and both sides use it: {after:?}");
    assert_eq!(handshake_errors(&server, "inbound", "unknown-ca").await, 0.0);
}

/// Waits until `proxy` installed its `n`th identity.
async fn wait_installs(proxy: &Proxy, n: usize) {
    eventually(&format!("identity #{n} installed"), Duration::from_secs(5), || async {
        (proxy.logs().matches("identity installed").count() >= n).then_some(())
    })
    .await;
}

/// Replaces `to`'s certificate, key and bundle with `from`'s, each file atomically.
fn copy_identity(from: &IdentityFiles, to: &IdentityFiles) {
    for f in ["cert.pem", "key.pem", "bundle.pem"] {
        let tmp = to.path(&format!(".{f}.tmp"));
        std::fs::copy(from.path(f), &tmp).unwrap();
        std::fs::rename(&tmp, to.path(f)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_a_plaintext_server_first_tcp_client_without_a_stall() {
    use tokio::io::AsyncWriteExt;
    // Like SMTP: the app greets first, so a plaintext client sends nothing the proxy could peek at.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let app = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(weft_integration::tcp_echo::GREETING).await.unwrap();
    });
    let pki = Pki::new("mtls-server-first");
    let server = Proxy::start(ProxyConfig {
        service: "server".to_string(),
        inbound_app: Some(app_addr),
        proxy_spec: pki.issue("server", &spiffe("server"), "1h").tls_line(),
        policy: format!("{}{}", weft_integration::service("server", "tcp", &[]), mesh("permissive")),
        ..Default::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(server.inbound()).await.unwrap();
    weft_integration::tcp_echo::expect_greeting(&mut stream).await;
    app.await.unwrap();
    assert_eq!(counter(&server, "weft_inbound_connections_total", &[("transport", "plaintext")]).await, 1.0);
}
