//! A minimal discovery client, for simulating many proxies in one test process: one h2c
//! connection per watcher, every stream line parsed and timestamped as it arrives.

use std::net::SocketAddr;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use crate::BoxError;

pub struct Watcher {
    lines: mpsc::UnboundedReceiver<(Instant, serde_json::Value)>,
    send: SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    /// The stream's session, from its first snapshot.
    pub session: String,
}

impl Watcher {
    /// Opens `GET /v1/watch?{query}` and waits for the first snapshot, which it returns.
    pub async fn connect(addr: SocketAddr, query: &str) -> Result<(Watcher, serde_json::Value), BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(format!("http://{addr}/v1/watch?{query}")).body(Full::new(Bytes::new()))?;
        let resp = send.send_request(req).await?;
        if resp.status() != 200 {
            return Err(format!("watch answered {}", resp.status()).into());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = resp.into_body();
        tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::new();
            // Bytes of `buf` known to hold no newline, so a large line is searched once.
            let mut searched = 0;
            while let Some(Ok(frame)) = body.frame().await {
                let Ok(data) = frame.into_data() else { continue };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                while let Some(i) = buf[searched..].iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=searched + i).collect();
                    searched = 0;
                    let Ok(value) = serde_json::from_slice(&line) else { return };
                    if tx.send((now, value)).is_err() {
                        return;
                    }
                }
                searched = buf.len();
            }
        });
        let mut w = Watcher { lines: rx, send, addr, session: String::new() };
        let (_, first) = w.next(Duration::from_secs(20)).await.ok_or("no snapshot")?;
        if first["type"] != "snapshot" {
            return Err(format!("first message is not a snapshot: {first}").into());
        }
        w.session = first["session"].as_str().unwrap_or_default().to_string();
        Ok((w, first))
    }

    /// The next line, or None after `within` or when the stream ended.
    pub async fn next(&mut self, within: Duration) -> Option<(Instant, serde_json::Value)> {
        tokio::time::timeout(within, self.lines.recv()).await.ok().flatten()
    }

    /// Acks `version`; true when the control plane accepted it.
    pub async fn ack(&mut self, version: u64) -> bool {
        let body = serde_json::json!({"session": self.session, "version": version}).to_string();
        let Ok(req) = Request::post(format!("http://{}/v1/ack", self.addr)).body(Full::new(Bytes::from(body))) else {
            return false;
        };
        matches!(self.send.send_request(req).await, Ok(r) if r.status().is_success())
    }
}

/// Whether `msg` is a delta (or snapshot) that lists `addr` among `service`'s endpoints.
pub fn mentions_endpoint(msg: &serde_json::Value, service: &str, addr: &str) -> bool {
    let has = |list: &serde_json::Value| {
        list.as_array().is_some_and(|l| l.iter().any(|e| e["address"] == addr || e.as_str() == Some(addr)))
    };
    match msg["type"].as_str() {
        Some("delta") => {
            msg["changes"].as_array().is_some_and(|cs| cs.iter().any(|c| c["service"] == service && has(&c["upsert"])))
        }
        Some("snapshot") => has(&msg["endpoints"][service]),
        _ => false,
    }
}

/// The `q` quantile (0–1) of sorted `values`.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}
