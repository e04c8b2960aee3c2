//! One upstream endpoint: its address and the live state (load, latency, failures) that every
//! worker shares and that survives config reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;

use super::ewma::PeakEwma;
use super::outlier::{Health, State};
use crate::clock::now_nanos;

/// An upstream address with the state the balancer keeps about it. Held in an `Arc` so that a
/// rebuilt [`EndpointSet`](super::EndpointSet) can take over the same endpoint, and its latency
/// history and ejection with it.
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of traffic. 0 drains the endpoint: it is used only when no weighted
    /// endpoint is available.
    pub weight: u32,
    /// SPIFFE id to verify when this is a meshed peer proxy.
    pub identity: Option<Arc<str>>,
    /// Counter only, publishes nothing: `Relaxed` throughout.
    in_flight: AtomicU32,
    pub(super) latency: PeakEwma,
    pub(super) health: Health,
}

impl Endpoint {
    /// An endpoint with no history: healthy, latency estimate at its default.
    pub fn new(addr: SocketAddr, weight: u32, identity: Option<Arc<str>>) -> Endpoint {
        let now = now_nanos();
        Endpoint {
            addr,
            weight,
            identity,
            in_flight: AtomicU32::new(0),
            latency: PeakEwma::new(now),
            health: Health::new(now),
        }
    }

    /// Requests sent and not yet answered (or abandoned).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Marks a request as sent. Hand the guard back to
    /// [`EndpointSet::on_success`](super::EndpointSet::on_success) or
    /// [`on_failure`](super::EndpointSet::on_failure); dropping it instead (the request was
    /// cancelled) only releases the in-flight slot and records no outcome.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at(now_nanos())
    }

    /// Counts a request sent to it at `now` (clock nanoseconds) until the guard is dropped or
    /// reported.
    pub fn start_at(self: &Arc<Self>, now: u64) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight { endpoint: Arc::clone(self), started: now }
    }

    /// A snapshot for the admin `/endpoints` page; `now` is a `clock::now_nanos()` reading.
    pub fn status(&self, now: u64) -> EndpointStatus {
        let state = self.health.state(now);
        EndpointStatus {
            address: self.addr.to_string(),
            weight: self.weight,
            state: state.name(),
            ejected_for_ms: match state {
                State::Ejected { until } => Some((until - now).div_ceil(1_000_000)),
                _ => None,
            },
            ejected_until: match state {
                State::Ejected { until } => {
                    let left = Duration::from_nanos(until - now);
                    std::time::SystemTime::now()
                        .checked_add(left)
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_millis() as u64)
                }
                _ => None,
            },
            ewma_ms: self.latency.estimate() / 1e6,
            in_flight: self.in_flight(),
            consecutive_failures: self.health.consecutive_failures(),
            ejections: self.health.ejections(),
        }
    }
}

/// One request in flight to an endpoint. Dropping it releases the in-flight slot.
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: u64,
}

impl InFlight {
    /// Time since the request was sent.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed_nanos(now_nanos()))
    }

    pub(super) fn elapsed_nanos(&self, now: u64) -> u64 {
        now.saturating_sub(self.started)
    }

    pub(super) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Relaxed);
    }
}

/// What the admin `/endpoints` page shows for one endpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `IP:port`.
    pub address: String,
    /// Its share of traffic against the others in the set.
    pub weight: u32,
    /// "healthy", "ejected" or "probing" (ejection over, next outcome decides).
    pub state: &'static str,
    /// Remaining ejection time, while ejected.
    pub ejected_for_ms: Option<u64>,
    /// When the ejection ends, in Unix milliseconds (wall clock), while ejected.
    pub ejected_until: Option<u64>,
    /// Peak-EWMA latency estimate as of the last answer (30 ms until the first).
    pub ewma_ms: f64,
    /// Requests sent to it and not yet answered.
    pub in_flight: u32,
    /// Failures since its last success (outlier detection ejects at its threshold).
    pub consecutive_failures: u32,
    /// Times ejected since the endpoint appeared.
    pub ejections: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        Arc::new(Endpoint::new(
            SocketAddr::from(([10, 0, 0, 7], 4143)),
            2,
            Some("spiffe://cluster.local/ns/a/sa/b".into()),
        ))
    }

    #[test]
    fn guards_count_in_flight_until_dropped() {
        let e = endpoint();
        let a = e.start();
        let b = e.start();
        assert_eq!(e.in_flight(), 2);
        drop(a);
        assert_eq!(e.in_flight(), 1);
        drop(b);
        assert_eq!(e.in_flight(), 0);
    }

    #[test]
    fn guard_measures_elapsed_time() {
        let e = endpoint();
        let g = e.start_at(1_000);
        assert_eq!(g.elapsed_nanos(6_000), 5_000);
        assert!(e.start().elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn status_reports_state_and_remaining_ejection() {
        let e = endpoint();
        let now = 50_000_000_000;
        let s = e.status(now);
        assert_eq!((s.state, s.ejected_for_ms, s.weight), ("healthy", None, 2));
        assert_eq!(s.address, "10.0.0.7:4143");
        e.health.ejected_until.store(now + 1_500_000_000, Relaxed);
        let s = e.status(now);
        assert_eq!((s.state, s.ejected_for_ms), ("ejected", Some(1_500)));
        assert_eq!(e.status(now + 2_000_000_000).state, "probing");
        let json = serde_json::to_value(e.status(now)).unwrap();
        assert_eq!(json["ejectedForMs"], 1_500);
        let until = json["ejectedUntil"].as_u64().expect("ejectedUntil while ejected");
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(until > wall && until <= wall + 1_600, "{until} vs now {wall}");
    }
}
