//! Outlier ejection: taking an endpoint out after consecutive failures, and probing it back in.

use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::Duration;

use super::Endpoint;

/// When and for how long endpoints are ejected; see [`weft_api::OutlierDetection`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    /// First ejection's length; each further one doubles it.
    pub base_ejection: Duration,
    /// Cap on the doubled length, and the healthy time that undoes one doubling.
    pub max_ejection: Duration,
    /// Never more than this share (0–100) of a set ejected at once; 0 turns ejection off.
    pub max_ejection_percent: u32,
}

impl From<&weft_api::OutlierDetection> for OutlierConfig {
    fn from(o: &weft_api::OutlierDetection) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: o.consecutive_failures,
            base_ejection: o.base_ejection,
            max_ejection: o.max_ejection,
            max_ejection_percent: o.max_ejection_percent,
        }
    }
}

impl Default for OutlierConfig {
    fn default() -> OutlierConfig {
        OutlierConfig::from(&weft_api::OutlierDetection::default())
    }
}

/// Doublings of the ejection time worth remembering: 2^32 times any base exceeds any cap.
const MAX_LEVEL: u32 = 32;

/// Where an endpoint stands, derived from its `ejected_until` stamp and the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    Healthy,
    Ejected {
        until: u64,
    },
    /// Ejection time is over: it takes traffic again, and its next outcome decides.
    Probing,
}

impl State {
    pub(super) fn name(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Ejected { .. } => "ejected",
            State::Probing => "probing",
        }
    }
}

/// One endpoint's failure and ejection record. All fields are `Relaxed` atomics: each is a
/// counter or a stamp read on its own, and the one decision that must see a consistent view
/// across endpoints (the ejection cap) is serialised by [`Ejector`]'s gate.
pub(super) struct Health {
    pub(super) consecutive_failures: AtomicU32,
    /// 0: healthy. Otherwise ejected until this clock reading, and probing after it.
    pub(super) ejected_until: AtomicU64,
    /// Doublings the next ejection gets; decays while healthy.
    level: AtomicU32,
    /// Times ejected since the endpoint appeared (for the admin page).
    ejections: AtomicU32,
    /// When it last turned healthy (or appeared), for decaying `level`.
    healthy_since: AtomicU64,
}

impl Health {
    pub(super) fn new(now: u64) -> Health {
        Health {
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            level: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            healthy_since: AtomicU64::new(now),
        }
    }

    pub(super) fn state(&self, now: u64) -> State {
        match self.ejected_until.load(Relaxed) {
            0 => State::Healthy,
            until if until > now => State::Ejected { until },
            _ => State::Probing,
        }
    }

    /// Ejection over and no outcome since: the next request should go here (one load; the
    /// stamp is 0 for nearly every endpoint).
    pub(super) fn awaits_probe(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && until <= now
    }

    /// The hot-path check in `pick`: one load.
    pub(super) fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    pub(super) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub(super) fn ejections(&self) -> u32 {
        self.ejections.load(Relaxed)
    }

    pub(super) fn on_success(&self, now: u64) {
        // Load before store: on the common path the count is already 0, and skipping the
        // write keeps the cache line shared between workers.
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        let until = self.ejected_until.load(Relaxed);
        if until != 0 && until <= now {
            // Probing and it answered: healthy again. The CAS loses only to a concurrent
            // re-ejection, which must win.
            if self.ejected_until.compare_exchange(until, 0, Relaxed, Relaxed).is_ok() {
                self.healthy_since.store(now, Relaxed);
            }
        }
    }
}

/// The set-wide half of outlier detection: the config and a gate so that the decision "may
/// one more endpoint go?" is taken by one worker at a time. Without it two workers could each
/// see room under the cap and eject the last two available endpoints together. The gate is a
/// try-flag, never waited on: a worker that finds it taken skips ejecting for now, and the
/// endpoint's next failure tries again (its failure count stays at or over the threshold).
pub(super) struct Ejector {
    config: OutlierConfig,
    gate: AtomicBool,
}

impl Ejector {
    pub(super) fn new(config: OutlierConfig) -> Ejector {
        Ejector { config, gate: AtomicBool::new(false) }
    }

    fn enabled(&self) -> bool {
        let c = &self.config;
        c.consecutive_failures > 0
            && c.max_ejection_percent > 0
            && !c.max_ejection.is_zero()
            && !c.base_ejection.is_zero()
    }

    /// How many of `n` endpoints may be ejected at once: the configured share, but at least one
    /// when there are two or more (a 10 % cap on a 3-endpoint set would otherwise never eject).
    /// Below 100 % the last available endpoint always keeps serving; at 100 % the operator asked
    /// for every endpoint to be ejectable, and then requests fail fast with `circuit-open`.
    pub(super) fn max_ejected(&self, n: usize) -> usize {
        let percent = self.config.max_ejection_percent;
        if percent >= 100 {
            return n;
        }
        if n < 2 || percent == 0 {
            return 0;
        }
        let share = (n as u64 * u64::from(percent) / 100) as usize;
        share.clamp(1, n - 1)
    }

    /// Records a failed request to `endpoint` (a member of `endpoints`). Returns true when this
    /// failure ejected it.
    pub(super) fn on_failure(&self, endpoint: &Endpoint, endpoints: &[Arc<Endpoint>], now: u64) -> bool {
        let health = &endpoint.health;
        match health.state(now) {
            // A request sent before the ejection; the endpoint is already out.
            State::Ejected { .. } => {
                health.consecutive_failures.fetch_add(1, Relaxed);
                false
            }
            // Its first outcome after an ejection was a failure: out again at once, for longer.
            State::Probing => self.enabled() && self.try_eject(endpoint, endpoints, now),
            State::Healthy => {
                let failures = health.consecutive_failures.fetch_add(1, Relaxed).saturating_add(1);
                self.enabled()
                    && failures >= self.config.consecutive_failures
                    && self.try_eject(endpoint, endpoints, now)
            }
        }
    }

    fn try_eject(&self, endpoint: &Endpoint, endpoints: &[Arc<Endpoint>], now: u64) -> bool {
        // Acquire/Release: the next holder must see the `ejected_until` stores made under the
        // gate, or it could count too few ejected endpoints.
        if self.gate.compare_exchange(false, true, Acquire, Relaxed).is_err() {
            return false;
        }
        let ejected = self.eject_under_gate(endpoint, endpoints, now);
        self.gate.store(false, Release);
        ejected
    }

    fn eject_under_gate(&self, endpoint: &Endpoint, endpoints: &[Arc<Endpoint>], now: u64) -> bool {
        let health = &endpoint.health;
        let observed = health.ejected_until.load(Relaxed);
        if observed > now {
            return false; // another set sharing this endpoint (a reload in progress) got there first
        }
        let out = endpoints.iter().filter(|e| e.health.is_ejected(now)).count();
        if out + 1 > self.max_ejected(endpoints.len()) {
            return false;
        }
        let mut level = health.level.load(Relaxed);
        if observed == 0 {
            // Healthy, not probing: every max_ejection spent healthy undoes one doubling.
            let healthy_for = now.saturating_sub(health.healthy_since.load(Relaxed));
            let periods = healthy_for / nanos(self.config.max_ejection).max(1);
            level = level.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX));
        }
        let until = now.saturating_add(self.ejection_nanos(level));
        if health.ejected_until.compare_exchange(observed, until, Relaxed, Relaxed).is_err() {
            return false; // turned healthy or was ejected meanwhile
        }
        health.level.store((level + 1).min(MAX_LEVEL), Relaxed);
        health.ejections.fetch_add(1, Relaxed);
        // A probing endpoint competes on its latency, not on the failures that ejected it.
        health.consecutive_failures.store(0, Relaxed);
        true
    }

    /// base · 2^level, capped at max_ejection.
    fn ejection_nanos(&self, level: u32) -> u64 {
        let base = nanos(self.config.base_ejection);
        base.saturating_mul(1u64 << level.min(MAX_LEVEL)).min(nanos(self.config.max_ejection))
    }

    /// Puts ejected endpoints back to probing until the set is within its cap. A reload can
    /// hand a new set endpoints ejected under an older, larger one (say the healthy ones were
    /// removed); without this the new set could start with every endpoint out.
    pub(super) fn release_excess(&self, endpoints: &[Arc<Endpoint>], now: u64) {
        let allowed = self.max_ejected(endpoints.len());
        loop {
            let mut out = 0;
            let mut soonest: Option<&Endpoint> = None;
            for e in endpoints {
                if let State::Ejected { until } = e.health.state(now) {
                    out += 1;
                    if soonest.is_none_or(|s| until < s.health.ejected_until.load(Relaxed)) {
                        soonest = Some(e);
                    }
                }
            }
            match soonest {
                // `now` (never 0) marks it probing: it takes traffic, its next outcome decides.
                Some(e) if out > allowed => e.health.ejected_until.store(now, Relaxed),
                _ => return,
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    const SEC: u64 = 1_000_000_000;
    const T0: u64 = 1_000 * SEC;

    fn config(failures: u32, percent: u32) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: percent,
        }
    }

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n).map(|i| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)), 1, None))).collect()
    }

    /// Fails endpoint `i` `times` times at `now`; returns how many of those failures ejected it.
    fn fail(ej: &Ejector, eps: &[Arc<Endpoint>], i: usize, times: u32, now: u64) -> u32 {
        (0..times).map(|_| u32::from(ej.on_failure(&eps[i], eps, now))).sum()
    }

    fn until(e: &Endpoint) -> u64 {
        e.health.ejected_until.load(Relaxed)
    }

    #[test]
    fn ejects_on_the_nth_consecutive_failure_only() {
        let ej = Ejector::new(config(3, 50));
        let eps = endpoints(4);
        assert_eq!(fail(&ej, &eps, 0, 2, T0), 0);
        assert_eq!(eps[0].health.state(T0), State::Healthy);
        assert!(ej.on_failure(&eps[0], &eps, T0), "third failure ejects");
        assert_eq!(eps[0].health.state(T0), State::Ejected { until: T0 + 30 * SEC });
        assert_eq!(eps[0].health.ejections(), 1);
        // Late failures of requests sent before the ejection do not eject (or extend) again.
        assert_eq!(fail(&ej, &eps, 0, 5, T0 + SEC), 0);
        assert_eq!(until(&eps[0]), T0 + 30 * SEC);
    }

    #[test]
    fn a_success_resets_the_count() {
        let ej = Ejector::new(config(3, 50));
        let eps = endpoints(4);
        fail(&ej, &eps, 0, 2, T0);
        eps[0].health.on_success(T0);
        assert_eq!(eps[0].health.consecutive_failures(), 0);
        assert_eq!(fail(&ej, &eps, 0, 2, T0), 0);
        assert!(ej.on_failure(&eps[0], &eps, T0));
    }

    #[test]
    fn probing_failure_re_ejects_at_once_for_twice_as_long_up_to_the_cap() {
        let ej = Ejector::new(config(5, 50));
        let eps = endpoints(2);
        assert_eq!(fail(&ej, &eps, 0, 5, T0), 1);
        let mut now = T0;
        let mut expected = 30 * SEC;
        for _ in 0..6 {
            assert_eq!(until(&eps[0]) - now, expected);
            now = until(&eps[0]);
            assert_eq!(eps[0].health.state(now), State::Probing);
            assert!(ej.on_failure(&eps[0], &eps, now), "one failure while probing re-ejects");
            expected = (expected * 2).min(300 * SEC);
        }
        assert_eq!(until(&eps[0]) - now, 300 * SEC, "capped at max_ejection");
        assert_eq!(eps[0].health.ejections(), 7);
    }

    #[test]
    fn probing_success_makes_it_healthy_and_needs_n_failures_again() {
        let ej = Ejector::new(config(3, 50));
        let eps = endpoints(2);
        fail(&ej, &eps, 0, 3, T0);
        let probe = until(&eps[0]);
        eps[0].health.on_success(probe);
        assert_eq!(eps[0].health.state(probe), State::Healthy);
        assert_eq!(fail(&ej, &eps, 0, 2, probe), 0);
        assert!(ej.on_failure(&eps[0], &eps, probe));
        // Healthy for 0 s: the doubling is kept.
        assert_eq!(until(&eps[0]) - probe, 60 * SEC);
    }

    #[test]
    fn a_long_healthy_period_undoes_doublings() {
        let ej = Ejector::new(config(1, 50));
        let eps = endpoints(2);
        let mut now = T0;
        for _ in 0..3 {
            assert!(ej.on_failure(&eps[0], &eps, now));
            now = until(&eps[0]);
            eps[0].health.on_success(now);
        }
        // Level 3 now: the next ejection would last 240 s. One max_ejection (300 s) healthy
        // takes one doubling off: 120 s.
        now += 300 * SEC;
        assert!(ej.on_failure(&eps[0], &eps, now));
        assert_eq!(until(&eps[0]) - now, 120 * SEC);
        now = until(&eps[0]);
        eps[0].health.on_success(now);
        // Healthy long enough to undo them all: back to the base.
        now += 10 * 300 * SEC;
        assert!(ej.on_failure(&eps[0], &eps, now));
        assert_eq!(until(&eps[0]) - now, 30 * SEC);
    }

    #[test]
    fn the_cap_limits_the_ejected_share() {
        let ej = Ejector::new(config(1, 50));
        let eps = endpoints(4);
        assert!(ej.on_failure(&eps[0], &eps, T0));
        assert!(ej.on_failure(&eps[1], &eps, T0));
        assert!(!ej.on_failure(&eps[2], &eps, T0), "a third of four would exceed 50 %");
        assert_eq!(eps[2].health.state(T0), State::Healthy);
        // Once an ejection ends, room opens for the next failure.
        let later = until(&eps[0]);
        assert!(ej.on_failure(&eps[2], &eps, later));
    }

    #[test]
    fn cap_rounds_up_to_one_but_below_100_percent_never_ejects_the_last() {
        let ej = Ejector::new(config(1, 10));
        assert_eq!(ej.max_ejected(0), 0);
        assert_eq!(ej.max_ejected(1), 0);
        assert_eq!(ej.max_ejected(2), 1);
        assert_eq!(ej.max_ejected(30), 3);
        let most = Ejector::new(config(1, 99));
        assert_eq!(most.max_ejected(3), 2);
        assert_eq!(Ejector::new(config(1, 0)).max_ejected(10), 0);

        let eps = endpoints(1);
        assert_eq!(fail(&most, &eps, 0, 10, T0), 0, "a lone endpoint is not ejected below 100 %");
        let eps = endpoints(2);
        assert!(most.on_failure(&eps[0], &eps, T0));
        assert_eq!(fail(&most, &eps, 1, 10, T0), 0, "the last available one stays");
    }

    #[test]
    fn at_100_percent_every_endpoint_may_go() {
        let all = Ejector::new(config(1, 100));
        assert_eq!(all.max_ejected(1), 1);
        assert_eq!(all.max_ejected(3), 3);
        let eps = endpoints(2);
        assert!(all.on_failure(&eps[0], &eps, T0));
        assert!(all.on_failure(&eps[1], &eps, T0), "the operator allowed the whole set out");
    }

    #[test]
    fn disabled_by_zero_failures_or_zero_percent() {
        let eps = endpoints(4);
        assert_eq!(fail(&Ejector::new(config(0, 50)), &eps, 0, 20, T0), 0);
        assert_eq!(fail(&Ejector::new(config(3, 0)), &eps, 1, 20, T0), 0);
    }

    #[test]
    fn release_excess_brings_a_shrunk_set_within_its_cap() {
        let big = Ejector::new(config(1, 50));
        let eps = endpoints(4);
        assert!(big.on_failure(&eps[0], &eps, T0));
        assert!(big.on_failure(&eps[1], &eps, T0 + SEC));
        // A reload keeps only the two ejected endpoints: one may stay out, the one whose
        // ejection ends first goes back to probing.
        let kept = vec![eps[0].clone(), eps[1].clone()];
        big.release_excess(&kept, T0 + 2 * SEC);
        assert_eq!(eps[0].health.state(T0 + 2 * SEC), State::Probing);
        assert!(matches!(eps[1].health.state(T0 + 2 * SEC), State::Ejected { .. }));
    }

    #[test]
    fn concurrent_failures_never_eject_past_the_cap() {
        // Two endpoints, 50 %: at most one may be out. Many workers fail both at once.
        let ej = Ejector::new(OutlierConfig { max_ejection: Duration::from_secs(3600), ..config(1, 50) });
        let eps = endpoints(2);
        let ejections = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (ej, eps, ejections) = (&ej, &eps, &ejections);
                s.spawn(move || {
                    for k in 0..2000 {
                        let now = T0 + k;
                        if ej.on_failure(&eps[(t + k as usize) % 2], eps, now) {
                            ejections.fetch_add(1, Relaxed);
                        }
                        let out = eps.iter().filter(|e| e.health.is_ejected(now)).count();
                        assert!(out <= 1, "both endpoints ejected");
                    }
                });
            }
        });
        assert_eq!(ejections.load(Relaxed), 1);
    }
}
