//! A bounded load generator: N workers on keep-alive HTTP/1.1 connections, for a fixed count of
//! requests or a fixed time, tallying statuses, answering backends and errors.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{H1Conn, Req};

/// No load run sends more than this many requests, whatever its limit.
pub const MAX_REQUESTS: usize = 50_000;

#[derive(Clone, Debug)]
pub enum Limit {
    Requests(usize),
    For(Duration),
    /// Until the flag is set (by a test that ends the load when its faults are done).
    Until(Arc<AtomicBool>),
}

#[derive(Debug, Default)]
pub struct LoadReport {
    /// Requests that got a response.
    pub responses: usize,
    pub statuses: BTreeMap<u16, usize>,
    /// How long each response took (request sent to body read), by status.
    pub latencies: BTreeMap<u16, Vec<Duration>>,
    /// Count of responses per `x-backend`.
    pub backends: BTreeMap<String, usize>,
    /// Requests that got no response (connection refused, reset, timeout…).
    pub errors: usize,
    /// The first few failures (errors and non-2xx), for assertion messages.
    pub samples: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn status(&self, code: u16) -> usize {
        self.statuses.get(&code).copied().unwrap_or(0)
    }

    /// Requests that did not end in a 2xx response.
    pub fn failures(&self) -> usize {
        self.errors + self.statuses.iter().filter(|(c, _)| !(200..300).contains(*c)).map(|(_, n)| n).sum::<usize>()
    }

    /// The latencies of `code` responses, sorted (for `watch::quantile`).
    pub fn sorted_latencies(&self, code: u16) -> Vec<Duration> {
        let mut all = self.latencies.get(&code).cloned().unwrap_or_default();
        all.sort();
        all
    }

    pub fn total(&self) -> usize {
        self.responses + self.errors
    }

    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} requests in {:?}: statuses {:?}, backends {:?}, {} errors",
            self.total(),
            self.elapsed,
            self.statuses,
            self.backends,
            self.errors
        );
        for sample in &self.samples {
            let _ = write!(out, "\n  {sample}");
        }
        out
    }

    fn note_failure(&mut self, text: String) {
        if self.samples.len() < 10 {
            self.samples.push(text);
        }
    }

    fn merge(&mut self, other: LoadReport) {
        self.responses += other.responses;
        self.errors += other.errors;
        for (code, n) in other.statuses {
            *self.statuses.entry(code).or_default() += n;
        }
        for (code, mut took) in other.latencies {
            self.latencies.entry(code).or_default().append(&mut took);
        }
        for (name, n) in other.backends {
            *self.backends.entry(name).or_default() += n;
        }
        for sample in other.samples {
            self.note_failure(sample);
        }
    }
}

/// Runs `workers` concurrent clients against `addr` until `limit`; `make(i)` builds request `i`.
pub async fn run_load<F>(addr: SocketAddr, workers: usize, limit: Limit, make: F) -> LoadReport
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> =
        (0..workers).map(|_| tokio::spawn(worker(addr, limit.clone(), start, next.clone(), make.clone()))).collect();
    let mut report = LoadReport::default();
    for task in tasks {
        report.merge(task.await.expect("load worker panicked"));
    }
    report.elapsed = start.elapsed();
    report
}

async fn worker<F>(addr: SocketAddr, limit: Limit, start: Instant, next: Arc<AtomicUsize>, make: Arc<F>) -> LoadReport
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let mut report = LoadReport::default();
    let mut conn: Option<H1Conn> = None;
    loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        let done = match &limit {
            Limit::Requests(n) => i >= *n,
            Limit::For(d) => start.elapsed() >= *d,
            Limit::Until(stop) => stop.load(Ordering::SeqCst),
        };
        if done || i >= MAX_REQUESTS {
            return report;
        }
        let req = make(i);
        // A connection the server closed between requests is replaced, as any client does;
        // that is not a failed request.
        if let Some(c) = conn.as_mut()
            && !c.is_reusable().await
        {
            conn = None;
        }
        if conn.is_none() {
            match H1Conn::connect(addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    report.errors += 1;
                    report.note_failure(format!("#{i} {} {}: connect: {e}", req.method, req.path));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let sent = Instant::now();
        match c.send(&req).await {
            Ok(resp) => {
                report.responses += 1;
                *report.statuses.entry(resp.status).or_default() += 1;
                report.latencies.entry(resp.status).or_default().push(sent.elapsed());
                if let Some(name) = resp.backend() {
                    *report.backends.entry(name.to_string()).or_default() += 1;
                }
                if !(200..300).contains(&resp.status) {
                    let reason = resp.proxy_error().unwrap_or("-").to_string();
                    report.note_failure(format!(
                        "#{i} {} {}: {} (weft-proxy-error: {reason})",
                        req.method, req.path, resp.status
                    ));
                }
            }
            Err(e) => {
                report.errors += 1;
                report.note_failure(format!("#{i} {} {}: {e}", req.method, req.path));
                conn = None;
            }
        }
    }
}
