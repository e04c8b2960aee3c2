//! The soak: the real `weft-proxy` under steady load with churn for N minutes, failing if a
//! request is lost or the proxy's memory or descriptors grow (not run in CI; docs/testing.md).
//!
//! Three backends and a canary behind one proxy (retries on, outlier detection on). While
//! `--workers` keep-alive clients send GETs, the config changes every `--change-every` (route
//! weights, endpoint weights, an endpoint leaving and coming back; each change waited for on
//! `/config`) and one backend in turn is stopped and restarted every `--restart-every`. Each
//! minute prints the requests, failures, the proxy's RSS and open descriptors. At the end the
//! load stops, idle connections time out, and it checks: no failed request, RSS grown less
//! than `--max-rss-growth-mib` since the first minute, descriptors back within 5 of idle.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use weft_integration::churn::{apply_change, churned_policy};
use weft_integration::process::{open_fds, rss_kib};
use weft_integration::{Backend, Limit, Proxy, ProxyConfig, Req, run_load};

const USAGE: &str = "\
Usage: soak [--minutes 5] [--workers 4] [--change-every 1s] [--restart-every 10s]
            [--max-rss-growth-mib 8]
";

const RETRY: &str = "retry: {attempts: 3, on: [connect-failure, reset, 5xx], backoffBase: 5ms, backoffMax: 50ms}";
const TRAFFIC: &str = "connectTimeout: 1s\nidleTimeout: 1s\n\
    outlierDetection: {consecutiveFailures: 2, baseEjection: 300ms, maxEjection: 1s, maxEjectionPercent: 50}";

/// Each minute's load is its own run, well under `load::MAX_REQUESTS`: the backend holds each
/// call this long, so a worker sends at most 100 a second.
const PATH: &str = "/delay/10/soak";

struct Args {
    minutes: u64,
    workers: usize,
    change_every: Duration,
    restart_every: Duration,
    max_rss_growth_mib: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args =
        Args { minutes: 5, workers: 4, change_every: secs(1), restart_every: secs(10), max_rss_growth_mib: 8 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.trim_end_matches('s').parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--minutes" => args.minutes = number()?,
            "--workers" => args.workers = number()? as usize,
            "--change-every" => args.change_every = secs(number()?),
            "--restart-every" => args.restart_every = secs(number()?),
            "--max-rss-growth-mib" => args.max_rss_growth_mib = number()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut backends = [Backend::start("a").await, Backend::start("b").await, Backend::start("c").await];
    let v2 = Backend::start("v2").await;
    let api: Vec<_> = backends.iter().map(Backend::addr).collect();
    let policy = |i| churned_policy(i, &api, v2.addr(), &[RETRY], TRAFFIC);
    let proxy = Proxy::start(ProxyConfig { policy: policy(0), ..Default::default() }).await;
    let pid = proxy.pid();
    let (fds_idle, rss_start) = (open_fds(pid), rss_kib(pid));
    println!("soak: {} min, proxy pid {pid}: RSS {rss_start} KiB, {fds_idle} fds idle", args.minutes);

    let (mut requests, mut lost) = (0, 0);
    let (mut changes, mut restarts) = (0, 0);
    let mut rss_first_minute = 0;
    for minute in 1..=args.minutes {
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(run_load(proxy.outbound(), args.workers, Limit::Until(stop.clone()), |i| {
            Req::get(&format!("{PATH}/{i}")).host("api")
        }));
        let end = Instant::now() + secs(60);
        let mut next_restart = Instant::now() + args.restart_every;
        while Instant::now() < end {
            changes += 1;
            apply_change(&proxy, changes, &policy(changes)).await;
            if Instant::now() >= next_restart {
                let backend = &mut backends[restarts % 3];
                backend.stop().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
                backend.restart().await;
                restarts += 1;
                next_restart += args.restart_every;
            }
            tokio::time::sleep(args.change_every).await;
        }
        stop.store(true, Ordering::SeqCst);
        let report = load.await.expect("load task");
        let (rss, fds) = (rss_kib(pid), open_fds(pid));
        if minute == 1 {
            rss_first_minute = rss;
        }
        println!(
            "minute {minute}: {} requests, {} failed; RSS {rss} KiB, {fds} fds; {changes} changes, {restarts} restarts so far",
            report.total(),
            report.failures()
        );
        for sample in &report.samples {
            println!("  {sample}");
        }
        requests += report.total();
        lost += report.failures();
    }

    // Pooled upstream connections idle for a second are closed; give them a few.
    let settle = Instant::now() + secs(10);
    while open_fds(pid) > fds_idle + 5 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rss_end, fds_end) = (rss_kib(pid), open_fds(pid));
    let growth = rss_end.saturating_sub(rss_first_minute);
    println!(
        "soak done: {} requests, {} failed; RSS {rss_start} KiB at start, {rss_first_minute} after minute 1, \
         {rss_end} at the end (+{growth}); fds {fds_idle} idle before, {fds_end} idle after; \
         {changes} config changes, {restarts} backend restarts",
        requests, lost
    );
    let mut failed = Vec::new();
    if lost > 0 {
        failed.push(format!("{lost} requests failed"));
    }
    if growth > args.max_rss_growth_mib * 1024 {
        failed.push(format!("RSS grew {growth} KiB after the first minute"));
    }
    if fds_end > fds_idle + 5 {
        failed.push(format!("{fds_end} fds open when idle, {fds_idle} before"));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("soak FAILED: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}
