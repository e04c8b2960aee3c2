//! A bounded load generator: N workers on keep-alive HTTP/1.1 connections, for a fixed count of
//! requests or a fixed time, tallying statuses, answering backends, errors and responses that
//! belong to another request.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{H1Conn, REQUEST_DEADLINE, Req, Resp};

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
    /// How long each of those took to fail.
    pub error_latencies: Vec<Duration>,
    /// Responses that answered another request: an `x-echo-path` (which every test upstream
    /// sends) other than the request's own path, or a 2xx without one.
    pub foreign: usize,
    /// Those of them that were 2xx (and so counted as successes by the status alone).
    foreign_successes: usize,
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

    /// How long every request took, answered or not, sorted (for `watch::quantile`).
    pub fn sorted_all_latencies(&self) -> Vec<Duration> {
        let mut all: Vec<Duration> = self.latencies.values().flatten().chain(&self.error_latencies).copied().collect();
        all.sort();
        all
    }

    /// The share of requests that got a 2xx response of their own (0 without requests).
    pub fn success_rate(&self) -> f64 {
        let ok = self.total() - self.failures() - self.foreign_successes;
        if self.total() == 0 { 0.0 } else { ok as f64 / self.total() as f64 }
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
        self.error_latencies.extend(other.error_latencies);
        self.foreign += other.foreign;
        self.foreign_successes += other.foreign_successes;
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
    run_load_timed(addr, workers, limit, REQUEST_DEADLINE, make).await
}

/// [`run_load`] where a request without its whole response within `timeout` is given up (an
/// error) and its connection closed, as a client with a request timeout does.
pub async fn run_load_timed<F>(addr: SocketAddr, workers: usize, limit: Limit, timeout: Duration, make: F) -> LoadReport
where
    F: Fn(usize) -> Req + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(addr, limit.clone(), timeout, start, next.clone(), make.clone())))
        .collect();
    let mut report = LoadReport::default();
    for task in tasks {
        report.merge(task.await.expect("load worker panicked"));
    }
    report.elapsed = start.elapsed();
    report
}

async fn worker<F>(
    addr: SocketAddr,
    limit: Limit,
    timeout: Duration,
    start: Instant,
    next: Arc<AtomicUsize>,
    make: Arc<F>,
) -> LoadReport
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
        let sent_req = tokio::time::timeout(timeout, c.send(&req)).await;
        match sent_req.unwrap_or_else(|_| Err(format!("no response within {timeout:?}").into())) {
            Ok(resp) => {
                report.responses += 1;
                if is_foreign(&req, &resp) {
                    report.foreign += 1;
                    report.foreign_successes += usize::from((200..300).contains(&resp.status));
                    report.note_failure(format!(
                        "#{i} {} {}: answered with the response for {:?} from {:?}",
                        req.method,
                        req.path,
                        resp.header("x-echo-path"),
                        resp.backend()
                    ));
                }
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
                report.error_latencies.push(sent.elapsed());
                report.note_failure(format!("#{i} {} {}: {e}", req.method, req.path));
                conn = None;
            }
        }
    }
}

/// Whether `resp` answers another request than `req` (see [`LoadReport::foreign`]). Only an
/// origin-form path is compared: the upstream echoes what reached it.
fn is_foreign(req: &Req, resp: &Resp) -> bool {
    if !req.path.starts_with('/') {
        return false;
    }
    match resp.header("x-echo-path") {
        Some(echoed) => echoed != req.path,
        None => (200..300).contains(&resp.status),
    }
}
