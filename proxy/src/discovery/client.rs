//! The watch stream to the control plane: one HTTP/2 connection (TLS with this proxy's mesh
//! certificate for an `https://` control plane) carrying the stream and the acks. Reconnects with jittered backoff; the proxy serves its current config throughout.
//! Anything that does not parse or build is rejected (logged, counted, not acked) and the
//! stream is reopened for a fresh snapshot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_api::MtlsMode;
use weft_api::discovery::{Ack, Leave, TrafficReport, WatchMessage, WatchRequest};

use super::persist::Persister;
use super::{DISCOVERY, apply};
use crate::config::layer::ControlPlaneLayer;
use crate::retry::backoff;
use crate::state::ProxyState;
use crate::tls::control_plane::ControlPlaneTarget;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The control plane sends a heartbeat on a stream idle for its `--heartbeat` (10 s by
/// default); a stream silent this long is given up before any heartbeat was heard.
const SILENCE_LIMIT: Duration = Duration::from_secs(35);
/// A stream is never given up sooner than this, however often its heartbeats come.
const MIN_SILENCE: Duration = Duration::from_secs(2);
/// A single message larger than this is refused (a whole mesh of 100,000 endpoints is ~7 MB).
const MAX_LINE_BYTES: usize = 128 * 1024 * 1024;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keeps a watch stream open to the control plane for the life of the process.
/// A draining proxy withdraws its registration but stays subscribed: the app's late outbound
/// calls during the drain still go where the control plane says.
pub(crate) async fn run(state: Arc<ProxyState>, target: Arc<ControlPlaneTarget>, request: WatchRequest) {
    let mut failures = 0u32;
    let authority = target.authority.clone();
    let mut persister = Persister::new(state.config.load().proxy.state_dir.as_deref());
    // With mTLS on, peers must verify this instance's identity, so it registers only once it
    // has a certificate (readiness waits for both anyway); a TLS control plane knows a proxy
    // by its certificate alone.
    if crate::tls::inbound_mode(&state) != MtlsMode::Off || target.scheme() == "https" {
        let mut installs = crate::tls::installs();
        if crate::tls::current().is_none() {
            tracing::info!("waiting for this proxy's certificate before registering with the control plane");
        }
        // The sender is a static that is never dropped, so `changed` only returns Ok.
        while crate::tls::current().is_none() && installs.changed().await.is_ok() {}
    }
    loop {
        let mut request = request.clone();
        // Reconnecting while draining must not register the instance again.
        if state.is_draining() {
            request.address = None;
        }
        // Peers verify the id in the certificate this proxy presents; without mTLS they call plainly.
        if crate::tls::inbound_mode(&state) != MtlsMode::Off {
            request.identity = crate::tls::current().map(|tls| tls.id.to_string());
        }
        let result = session(&state, &target, &request, &mut failures, &mut persister).await;
        persister.flush(&state);
        DISCOVERY.connected.set(0);
        match result {
            Ok(()) => {
                tracing::warn!(control_plane = %authority, "the control plane closed the stream; reconnecting")
            }
            Err(e) => {
                failures += 1;
                // Say it once loudly, then only now and then: an outage can last.
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(control_plane = %authority, failures, "control plane: {e}; serving the last good config and retrying");
                } else {
                    tracing::debug!(control_plane = %authority, "control plane: {e}");
                }
            }
        }
        tokio::time::sleep(backoff(failures.max(1), BACKOFF_BASE, BACKOFF_MAX)).await;
    }
}

async fn session(
    state: &ProxyState,
    target: &ControlPlaneTarget,
    request: &WatchRequest,
    failures: &mut u32,
    persister: &mut Persister,
) -> Result<(), String> {
    let stream = target.connect(b"h2", true).await.map_err(|e| {
        if e.is_fatal() {
            crate::state::fatal(e.to_string());
        }
        e.to_string()
    })?;
    let authority = &*format!("{}://{}", target.scheme(), target.authority);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake with {authority}: {e}"))?;
    tokio::spawn(conn);
    let uri = format!("{authority}/v1/watch?{}", request.to_query());
    let req = Request::get(uri).body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(CONNECT_TIMEOUT * 5, send.send_request(req))
        .await
        .map_err(|_| "no answer to the watch request".to_string())?
        .map_err(|e| format!("watch request: {e}"))?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(format!("watch refused with {status}: {}", String::from_utf8_lossy(&body).trim()));
    }
    DISCOVERY.connected.set(1);
    // The control plane answers again: a proxy still without a certificate asks at once.
    crate::tls::csr::control_plane_answered();
    let mut body = resp.into_body();
    let mut drain = state.drain_signal();
    let mut buf: Vec<u8> = Vec::new();
    // Bytes at the front of `buf` already known to hold no newline (a large snapshot arrives
    // in many frames; each byte is searched once).
    let mut searched = 0;
    let mut session_id: Option<String> = None;
    let mut left = request.address.is_none();
    let mut heard = Instant::now();
    // The longest wait for a heartbeat so far: the control plane's heartbeat period, as
    // this stream shows it (a partitioned control plane is silent, not closed).
    let mut heartbeat_every: Option<Duration> = None;
    let mut acked: Option<u64> = None;
    let mut installs = crate::tls::installs();
    installs.mark_unchanged();
    let mut report_tick = tokio::time::interval(super::report::REPORT_EVERY);
    report_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !left
            && state.is_draining()
            && let Some(s) = &session_id
        {
            left = true;
            leave(&mut send, authority, s.clone()).await;
        }
        let silence = silence_limit(heartbeat_every);
        let silence_at = heard + silence;
        let wake_at = persister.due().map_or(silence_at, |due| due.min(silence_at));
        // `frame()` takes nothing until it is ready, so losing the race below loses no data.
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tokio::time::sleep_until(wake_at.into()) => {
                persister.flush(state);
                if Instant::now() >= silence_at {
                    return Err(format!("nothing from the control plane for {silence:?}"));
                }
                continue;
            }
            // Wakes the loop, which withdraws the registration above.
            _ = drain.changed(), if !left => continue,
            _ = report_tick.tick() => {
                if let Some(s) = &session_id {
                    let report = TrafficReport {
                        session: s.clone(),
                        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
                        mtls: format!("{:?}", crate::tls::inbound_mode(state)).to_lowercase(),
                        stats: super::report::gather(),
                    };
                    spawn_post(&send, authority, "/v1/report", &report);
                }
                continue;
            }
            // A renewed certificate: ack the applied version again with the new expiry.
            Ok(()) = installs.changed() => {
                if let (Some(s), Some(version)) = (&session_id, acked) {
                    spawn_ack(&send, authority, Ack { session: s.clone(), version, cert_not_after: crate::tls::not_after() });
                }
                continue;
            }
        };
        let waited = heard.elapsed();
        heard = Instant::now();
        let data = match frame {
            None => return Ok(()),
            Some(Err(e)) => return Err(format!("stream broke: {e}")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        buf.extend_from_slice(&data);
        // Every complete line that arrived together is folded into one layer and applied (and
        // acked) once: a burst of deltas costs one config build, not one each.
        let mut pending: Option<(ControlPlaneLayer, bool)> = None;
        let mut start = 0;
        while let Some(i) = buf[searched..].iter().position(|b| *b == b'\n') {
            let end = searched + i;
            let line = &buf[start..end];
            start = end + 1;
            searched = start;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if fold_line(state, line, &mut session_id, &mut pending)? == Line::Heartbeat {
                heartbeat_every = Some(heartbeat_every.map_or(waited, |every| every.max(waited)));
            }
        }
        if let Some((layer, snapshot)) = pending {
            let version = apply_layer(state, layer)?;
            *failures = 0;
            persister.applied(state, snapshot);
            if let Some(s) = &session_id {
                acked = Some(version);
                spawn_ack(
                    &send,
                    authority,
                    Ack { session: s.clone(), version, cert_not_after: crate::tls::not_after() },
                );
            }
        }
        buf.drain(..start);
        searched = buf.len();
        if buf.len() > MAX_LINE_BYTES {
            return Err(format!("a message longer than {MAX_LINE_BYTES} bytes"));
        }
    }
}

/// How long a stream may stay silent before the proxy reconnects: three and a half heartbeat
/// periods (as the default 10 s heartbeat and 35 s limit are), within `MIN_SILENCE` and
/// `SILENCE_LIMIT`; `SILENCE_LIMIT` until a heartbeat shows the period.
fn silence_limit(heartbeat_every: Option<Duration>) -> Duration {
    heartbeat_every.map_or(SILENCE_LIMIT, |every| every.mul_f64(3.5).clamp(MIN_SILENCE, SILENCE_LIMIT))
}

/// What kind of line [`fold_line`] took.
#[derive(Debug, PartialEq)]
enum Line {
    Heartbeat,
    Update,
}

/// Folds one stream line into `pending` (the layer to apply once the lines at hand are read;
/// the flag says whether a snapshot is among them).
fn fold_line(
    state: &ProxyState,
    line: &[u8],
    session_id: &mut Option<String>,
    pending: &mut Option<(ControlPlaneLayer, bool)>,
) -> Result<Line, String> {
    let msg: WatchMessage = match serde_json::from_slice(line) {
        Ok(m) => m,
        Err(e) => return Err(reject(format!("not a discovery message ({e})"))),
    };
    match msg {
        WatchMessage::Heartbeat { .. } => return Ok(Line::Heartbeat),
        WatchMessage::Snapshot(s) => {
            *session_id = Some(s.session.clone());
            *pending = Some((ControlPlaneLayer::from_snapshot(s), true));
        }
        WatchMessage::Delta(d) => {
            if pending.is_none() {
                let Some(current) = state.layers.control_plane().filter(|_| session_id.is_some()) else {
                    return Err(reject("a delta before any snapshot".to_string()));
                };
                *pending = Some((ControlPlaneLayer::clone(&current), false));
            }
            if let Some((layer, _)) = pending {
                layer.apply_delta(&d).map_err(reject)?;
            }
        }
    }
    Ok(Line::Update)
}

/// Checks and swaps in `layer`; returns its control-plane version.
fn apply_layer(state: &ProxyState, layer: ControlPlaneLayer) -> Result<u64, String> {
    let version = layer.version;
    match apply(state, layer) {
        Ok(local) => {
            tracing::debug!(version, local, "control-plane version applied");
            Ok(version)
        }
        Err(diags) => {
            for d in &diags.0 {
                tracing::error!(problem = %d, "control-plane version {version} rejected; keeping the current config");
            }
            Err(format!("version {version} rejected ({} problems)", diags.0.len()))
        }
    }
}

fn reject(why: String) -> String {
    DISCOVERY.updates.with_label_values(&["rejected"]).inc();
    tracing::error!("control-plane update rejected: {why}; keeping the current config");
    why
}

fn post<T: serde::Serialize>(authority: &str, path: &str, body: &T) -> Option<Request<Full<Bytes>>> {
    let json = serde_json::to_vec(body).ok()?;
    Request::post(format!("{authority}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)))
        .ok()
}

fn spawn_ack(send: &SendRequest<Full<Bytes>>, authority: &str, ack: Ack) {
    spawn_post(send, authority, "/v1/ack", &ack);
}

/// Sends `body` to `path` on the stream's connection without waiting for the answer.
fn spawn_post<T: serde::Serialize>(send: &SendRequest<Full<Bytes>>, authority: &str, path: &'static str, body: &T) {
    let Some(req) = post(authority, path, body) else { return };
    let mut send = send.clone();
    tokio::spawn(async move {
        match send.send_request(req).await {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => tracing::debug!(status = %resp.status(), path, "not accepted by the control plane"),
            Err(e) => tracing::debug!(error = %e, path, "not sent to the control plane"),
        }
    });
}

/// Withdraws this proxy's registration (it is draining), waiting briefly for the answer.
async fn leave(send: &mut SendRequest<Full<Bytes>>, authority: &str, session: String) {
    let Some(req) = post(authority, "/v1/leave", &Leave { session }) else { return };
    match tokio::time::timeout(Duration::from_secs(1), send.send_request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => tracing::info!("registration withdrawn from the control plane"),
        _ => tracing::warn!("could not withdraw the registration; it expires with the control plane's TTL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_stream_is_given_up_after_three_and_a_half_heartbeat_periods() {
        let ms = Duration::from_millis;
        // (longest wait for a heartbeat so far) → how long silence is borne
        let cases = [
            (None, SILENCE_LIMIT),
            (Some(ms(10_000)), ms(35_000)),
            (Some(ms(2_000)), ms(7_000)),
            (Some(ms(500)), MIN_SILENCE),
            (Some(Duration::ZERO), MIN_SILENCE),
            (Some(ms(60_000)), SILENCE_LIMIT),
        ];
        for (every, expected) in cases {
            assert_eq!(silence_limit(every), expected, "heartbeats every {every:?}");
        }
    }
}
