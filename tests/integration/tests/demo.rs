//! `weft demo`, the README's first command, end to end: the real binary brings up a control
//! plane, three sidecars with certificates from its dev CA and the demo apps on loopback; an
//! instance dies and comes back under load without a failed request; Ctrl-C stops everything.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use weft_integration::client::send;
use weft_integration::{Req, bin, metric_sum};

/// A summary row of the demo's table: (seconds, ok, failed, endpoints).
fn row(line: &str) -> Option<(u64, u64, u64, u64)> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.len() != 11 {
        return None;
    }
    let secs = cols[0].strip_suffix('s')?.parse().ok()?;
    Some((secs, cols[2].parse().ok()?, cols[3].parse().ok()?, cols[8].parse().ok()?))
}

async fn metrics(admin: &str) -> String {
    let resp = send(admin.parse().unwrap(), &Req::get("/metrics")).await.expect("sidecar admin answers");
    resp.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_mesh_runs_on_mtls_survives_a_dead_instance_and_stops_cleanly() {
    let mut child = tokio::process::Command::new(bin("weft"))
        .arg("demo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("weft demo starts");
    let pid = child.id().expect("pid");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The demo names each failed request's reason on stderr: kept for the messages below.
    let mut stderr = child.stderr.take().unwrap();
    let said = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let mut output = String::new();
    let mut rows = Vec::new();
    let mut checked_mtls = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, lines.next_line()).await {
        output.push_str(&line);
        output.push('\n');
        let Some(r) = row(&line) else { continue };
        rows.push(r);
        if !checked_mtls {
            // Every call that reached payments-1 came over mutual TLS, and was authorized.
            let text = metrics("127.0.0.1:4192").await;
            let mtls = metric_sum(&text, "weft_inbound_connections_total", &[("transport", "mtls")]);
            let plain = metric_sum(&text, "weft_inbound_connections_total", &[("transport", "plaintext")]);
            assert!(mtls >= 1.0 && plain == 0.0, "payments-1 inbound: {mtls} mTLS, {plain} plaintext\n{output}");
            let allowed = metric_sum(&text, "weft_authz_decisions_total", &[("decision", "allow")]);
            assert!(allowed >= 1.0, "authorization allowed the frontend's calls\n{output}");
            // `weft status` shows every sidecar's certificate (issued for 24h just now).
            let status = std::process::Command::new(bin("weft"))
                .args(["status", "-o", "json"])
                .output()
                .expect("weft status runs");
            let report: serde_json::Value = serde_json::from_slice(&status.stdout)
                .unwrap_or_else(|e| panic!("weft status -o json: {e}: {}", String::from_utf8_lossy(&status.stderr)));
            let proxies = report["proxies"].as_array().cloned().unwrap_or_default();
            assert_eq!(proxies.len(), 3, "{report}");
            for p in &proxies {
                let left = p["certExpiresInSeconds"].as_f64().unwrap_or_else(|| panic!("no certificate expiry: {p}"));
                assert!(left > 23.0 * 3600.0 && left <= 24.0 * 3600.0 + 60.0, "{p}");
                assert_eq!(p["certNearExpiry"], false, "{p}");
            }
            checked_mtls = true;
        }
        if r.0 >= 26 {
            break;
        }
    }
    let last = *rows.last().unwrap_or_else(|| panic!("the demo printed no summary rows:\n{output}"));
    assert!(last.0 >= 26, "the demo stopped printing before 26 s:\n{output}");

    let status = std::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
        output.push_str(&line);
        output.push('\n');
    }
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await.expect("demo exits on Ctrl-C");
    assert!(exit.is_ok(), "{output}");
    let said = said.await.unwrap_or_default();

    // Nothing failed, though payments-2 was killed without a goodbye and restarted.
    assert!(rows.iter().all(|r| r.2 == 0), "failed requests:\n{output}{said}");
    let stopped = output.lines().find(|l| l.contains("stopping;")).unwrap_or_else(|| panic!("{output}"));
    assert!(stopped.ends_with(" 0 failed"), "{stopped}\n{said}");
    assert!(last.1 > 500, "too little traffic went through the mesh:\n{output}");
    // The control plane withdrew the dead instance and took the restarted one back.
    let endpoints: Vec<u64> = rows.iter().map(|r| r.3).collect();
    let gone = endpoints.iter().position(|&e| e == 1).unwrap_or_else(|| panic!("never withdrawn:\n{output}"));
    assert!(endpoints[..gone].contains(&2), "{output}");
    assert_eq!(endpoints.last(), Some(&2), "the restarted instance is back:\n{output}");

    // Every child stopped with it: the control plane's and the sidecars' ports are closed.
    for port in ["127.0.0.1:9990", "127.0.0.1:8086", "127.0.0.1:4191", "127.0.0.1:4192", "127.0.0.1:4193"] {
        assert!(tokio::net::TcpStream::connect(port).await.is_err(), "{port} still answers after the demo stopped");
    }
    let dir = std::env::temp_dir().join(format!("weft-demo-{pid}"));
    assert!(!dir.exists(), "the demo left {} behind", dir.display());
}
