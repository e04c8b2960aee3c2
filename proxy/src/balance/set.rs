//! A service's endpoints as one config version sees them, and outcome reporting into them.

use std::sync::Arc;

use weft_api::LoadBalancer;

use super::outlier::{Ejector, OutlierConfig};
use super::pick::Picker;
use super::{Endpoint, InFlight};
use crate::clock::now_nanos;

/// Why no endpoint could be picked; the proxy answers 503 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The service lists no endpoint.
    #[error("the service has no endpoints; list them in its Service or register instances")]
    NoEndpoints,
    /// Every endpoint is ejected.
    #[error("every endpoint of the service is ejected after failing; each is probed again when its ejection ends")]
    AllEjected,
}

/// The endpoints of one service, fixed for one config version. A reload builds a new set from
/// the same `Arc<Endpoint>`s where the address is unchanged, so latency history and ejections
/// carry over while the schedule and caps match the new list.
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    picker: Picker,
    ejector: Ejector,
}

impl EndpointSet {
    /// A set balanced by `lb`, ejecting by `outlier`.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, lb: LoadBalancer, outlier: OutlierConfig) -> EndpointSet {
        let picker = Picker::new(&endpoints, lb);
        let ejector = Ejector::new(outlier);
        ejector.release_excess(&endpoints, now_nanos());
        EndpointSet { endpoints, picker, ejector }
    }

    /// The endpoints, in the order indices refer to.
    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// Whether the set has no endpoint at all.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// Index (into [`endpoints`](Self::endpoints)) of the endpoint for the next try.
    ///
    /// `exclude` holds the indices this request already tried: they are avoided while another
    /// endpoint is available, and used again rather than failing when none is. Ejected
    /// endpoints are never picked; [`PickError::AllEjected`] says that was the reason.
    pub fn pick(&self, exclude: &[usize]) -> Result<usize, PickError> {
        self.pick_at(exclude, now_nanos())
    }

    /// Picks an endpoint for a request at `now` (clock nanoseconds), avoiding the indices in
    /// `exclude` (tried already) while others are available.
    pub fn pick_at(&self, exclude: &[usize], now: u64) -> Result<usize, PickError> {
        match self.endpoints.len() {
            0 => return Err(PickError::NoEndpoints),
            1 if self.endpoints[0].health.is_ejected(now) => return Err(PickError::AllEjected),
            1 => return Ok(0),
            _ => {}
        }
        let eps = &self.endpoints;
        let fresh = |i: usize| !eps[i].health.is_ejected(now) && !exclude.contains(&i);
        if let Some(i) = self.picker.pick(eps, fresh, now) {
            return Ok(i);
        }
        let usable = |i: usize| !eps[i].health.is_ejected(now);
        self.picker.pick(eps, usable, now).ok_or(PickError::AllEjected)
    }

    /// The try to endpoint `_index` got a usable answer: its latency feeds the estimate, its
    /// failure count restarts, and a probing endpoint is healthy again. The guard locates the
    /// endpoint, so the outcome lands on the right one whatever index is passed.
    pub fn on_success(&self, _index: usize, guard: InFlight) {
        self.on_success_at(guard, now_nanos());
    }

    /// Reports a whole success of the request `guard` counted (latency and health at once).
    pub fn on_success_at(&self, guard: InFlight, now: u64) {
        let endpoint = guard.endpoint();
        endpoint.latency.observe(guard.elapsed_nanos(now) as f64, now);
        endpoint.health.on_success(now);
    }

    /// The try got a response head at `now` that goes to the client: its latency feeds the
    /// estimate, and the endpoint comes back for [`on_body_end`](Self::on_body_end), which
    /// tells outlier detection how the answer ended. Counted a success at its head, a
    /// response whose body always breaks would keep its endpoint from ever being ejected.
    pub fn on_head_at(&self, guard: InFlight, now: u64) -> Arc<Endpoint> {
        let endpoint = guard.endpoint();
        endpoint.latency.observe(guard.elapsed_nanos(now) as f64, now);
        Arc::clone(endpoint)
    }

    /// The body of a response [`on_head_at`](Self::on_head_at) took ended: whole (or the
    /// client stopped reading), or `broke` by the upstream part way (reset, cut short,
    /// malformed), which is a failed try. Returns true when this failure ejected the endpoint.
    pub fn on_body_end(&self, endpoint: &Endpoint, broke: bool, now: u64) -> bool {
        if broke {
            // Its latency was counted with the head: only the failure is recorded.
            self.ejector.on_failure(endpoint, &self.endpoints, now)
        } else {
            endpoint.health.on_success(now);
            false
        }
    }

    /// The try to endpoint `_index` failed (connect error, reset, 5xx, per-try timeout).
    /// Returns true when this failure ejected the endpoint, so the caller can count it.
    pub fn on_failure(&self, _index: usize, guard: InFlight) -> bool {
        self.on_failure_at(guard, now_nanos())
    }

    pub(super) fn on_failure_at(&self, guard: InFlight, now: u64) -> bool {
        let endpoint = guard.endpoint();
        endpoint.latency.raise(guard.elapsed_nanos(now) as f64, now);
        self.ejector.on_failure(endpoint, &self.endpoints, now)
    }

    /// (available, ejected) at `now`, for the `weft_endpoints{state}` gauge. Probing endpoints
    /// take traffic, so they count as available.
    pub fn counts(&self, now: u64) -> (usize, usize) {
        let ejected = self.endpoints.iter().filter(|e| e.health.is_ejected(now)).count();
        (self.endpoints.len() - ejected, ejected)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_000_000 * MS;

    fn set(weights: &[u32], lb: LoadBalancer) -> EndpointSet {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)), w, None)))
            .collect();
        let outlier = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        };
        EndpointSet::new(eps, lb, outlier)
    }

    const ALL: [LoadBalancer; 3] = [LoadBalancer::PeakEwma, LoadBalancer::RoundRobin, LoadBalancer::LeastRequest];

    #[test]
    fn empty_set_has_no_endpoints() {
        let s = set(&[], LoadBalancer::PeakEwma);
        assert!(s.is_empty());
        assert_eq!(s.pick(&[]), Err(PickError::NoEndpoints));
        assert_eq!(s.counts(T0), (0, 0));
    }

    #[test]
    fn exclusion_is_honoured_while_another_endpoint_is_available() {
        for lb in ALL {
            let s = set(&[1, 1, 1], lb);
            for _ in 0..200 {
                assert_eq!(s.pick_at(&[0, 1], T0), Ok(2), "{lb:?}");
                assert_ne!(s.pick_at(&[2], T0), Ok(2), "{lb:?}");
            }
            // Everything tried: retrying a tried endpoint beats failing the request.
            assert!(s.pick_at(&[0, 1, 2], T0).is_ok(), "{lb:?}");
            let lone = set(&[1], lb);
            assert_eq!(lone.pick_at(&[0], T0), Ok(0));
        }
    }

    #[test]
    fn ejected_endpoints_are_skipped_even_over_exclusion() {
        for lb in ALL {
            let s = set(&[1, 1, 1, 1], lb);
            for _ in 0..3 {
                s.on_failure_at(s.endpoints[1].start_at(T0), T0);
            }
            assert_eq!(s.counts(T0), (3, 1));
            for _ in 0..300 {
                assert_ne!(s.pick_at(&[], T0), Ok(1), "{lb:?}");
                // Excluded and ejected alike: the excluded ones are still better than an ejected one.
                assert_ne!(s.pick_at(&[0, 2, 3], T0), Ok(1), "{lb:?}");
            }
            // When the ejection is over it is probing and takes traffic again.
            let later = T0 + 31_000 * MS;
            assert_eq!(s.counts(later), (4, 0));
            assert!((0..300).any(|_| s.pick_at(&[], later) == Ok(1)), "{lb:?}");
        }
    }

    #[test]
    fn all_ejected_is_told_apart_from_empty() {
        for lb in ALL {
            let s = set(&[1, 1], lb);
            // The cap keeps one endpoint in, so force both out as a racing reload could.
            for e in s.endpoints() {
                e.health.ejected_until.store(T0 + 1_000 * MS, std::sync::atomic::Ordering::Relaxed);
            }
            assert_eq!(s.pick_at(&[], T0), Err(PickError::AllEjected), "{lb:?}");
            assert_eq!(s.counts(T0), (0, 2));
        }
        let lone = set(&[1], LoadBalancer::PeakEwma);
        lone.endpoints[0].health.ejected_until.store(T0 + MS, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(lone.pick_at(&[], T0), Err(PickError::AllEjected));
    }

    #[test]
    fn a_new_set_releases_ejections_beyond_its_cap() {
        let s = set(&[1, 1, 1, 1], LoadBalancer::PeakEwma);
        let now = now_nanos();
        for _ in 0..3 {
            s.on_failure_at(s.endpoints[0].start_at(now), now);
        }
        assert_eq!(s.counts(now), (3, 1));
        // The reload keeps only the ejected endpoint: it must not leave the service dark.
        let shrunk = EndpointSet::new(vec![s.endpoints[0].clone()], LoadBalancer::PeakEwma, OutlierConfig::default());
        assert_eq!(shrunk.pick(&[]), Ok(0));
    }

    #[test]
    fn outcomes_reach_the_endpoint_and_release_the_guard() {
        let s = set(&[1, 1], LoadBalancer::PeakEwma);
        let e = &s.endpoints[0];
        let g = e.start_at(T0);
        assert_eq!(e.in_flight(), 1);
        s.on_success_at(g, T0 + 80 * MS);
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.status(T0 + 80 * MS).ewma_ms, 80.0);
        assert!(!s.on_failure_at(e.start_at(T0), T0 + MS));
        assert_eq!(e.in_flight(), 0);
        assert_eq!(e.health.consecutive_failures(), 1);
        // A fast failure does not lower the estimate.
        assert_eq!(e.status(T0 + 80 * MS).ewma_ms, 80.0);
    }

    #[test]
    fn a_body_that_breaks_after_its_head_counts_as_a_failure() {
        let s = set(&[1, 1], LoadBalancer::PeakEwma);
        let e = &s.endpoints[0];
        // Three answers whose heads were fine and whose bodies broke: three failures in a row.
        for i in 0..3 {
            let at = T0 + i * 10 * MS;
            let endpoint = s.on_head_at(e.start_at(at), at + 5 * MS);
            assert_eq!(e.in_flight(), 0, "the in-flight slot ends with the head");
            let ejected = s.on_body_end(&endpoint, true, at + 6 * MS);
            assert_eq!(ejected, i == 2, "ejected at the third broken body, not before");
        }
        assert_eq!(s.counts(T0 + 30 * MS), (1, 1));
        assert_eq!(e.status(T0 + 30 * MS).ewma_ms, 5.0, "the heads' latency was measured");
        // A whole body is a success: the other endpoint's count restarts.
        let other = &s.endpoints[1];
        s.on_failure_at(other.start_at(T0), T0);
        let endpoint = s.on_head_at(other.start_at(T0), T0 + MS);
        assert_eq!(other.health.consecutive_failures(), 1, "nothing is decided at the head");
        assert!(!s.on_body_end(&endpoint, false, T0 + 2 * MS));
        assert_eq!(other.health.consecutive_failures(), 0);
    }
}
