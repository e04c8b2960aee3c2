//! Peak-EWMA latency estimate of one endpoint, kept in atomics so every worker can update it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};

/// Decay time constant (τ): a sample's weight falls to 1/e after 10 s. Long enough that one
/// fast response does not erase a slowdown, short enough that a recovered endpoint wins its
/// traffic back within tens of seconds.
const DECAY_NANOS: f64 = 10e9;

/// Starting estimate, before the first answer: 30 ms, a plausible upper end for in-cluster
/// calls, so the admin page shows something sane. The balancer does not pit this guess
/// against real measurements: any fixed guess is wrong one way or the other (below the real
/// latency it floods the new endpoint, above it starves it: with a 30 ms guess against
/// endpoints measured at 5 ms, a new endpoint would wait ~20 s for the guess to fade).
/// Instead an unanswered endpoint borrows the estimate of the endpoint it is compared with
/// (see `pick.rs`), and its first real answer replaces the guess outright.
pub(crate) const DEFAULT_RTT_NANOS: f64 = 30e6;

/// A latency estimate that jumps up to a new peak at once and decays toward lower samples
/// with a weight that depends on the time between samples (w = exp(-elapsed/τ)), so it is
/// quick to avoid a slow endpoint and cautious about trusting it again.
///
/// The estimate, its time stamp and the flag are separate atomics, all `Relaxed`: they publish
/// no other memory, and a reader that sees one updated before the other only makes one pick
/// with a slightly stale estimate.
pub(crate) struct PeakEwma {
    /// Estimate in nanoseconds, as `f64` bits.
    estimate: AtomicU64,
    /// `clock::now_nanos()` of the last sample (of creation, before the first).
    stamp: AtomicU64,
    /// False while the estimate is still [`DEFAULT_RTT_NANOS`], a guess that the first sample
    /// must replace rather than be averaged with as if it were ten seconds of evidence.
    measured: AtomicBool,
}

impl PeakEwma {
    pub(crate) fn new(now: u64) -> PeakEwma {
        PeakEwma {
            estimate: AtomicU64::new(DEFAULT_RTT_NANOS.to_bits()),
            stamp: AtomicU64::new(now),
            measured: AtomicBool::new(false),
        }
    }

    /// False until the first sample: the estimate is only the default guess.
    pub(crate) fn measured(&self) -> bool {
        self.measured.load(Relaxed)
    }

    /// The estimate in nanoseconds, as the last sample left it.
    pub(crate) fn estimate(&self) -> f64 {
        f64::from_bits(self.estimate.load(Relaxed))
    }

    /// The estimate faded by the time since the last sample (toward zero, with the same τ).
    /// The balancer uses this for an endpoint with nothing in flight: under power of two
    /// choices the worst endpoint loses every comparison and so would never be measured
    /// again; fading lets it be retried now and then (about once per τ·ln(its cost ratio) at
    /// low load) and found again once it recovers. While requests are in flight a sample is
    /// on its way, so the unfaded [`estimate`](Self::estimate) applies: otherwise an endpoint
    /// whose requests hang would fade to zero and draw all the traffic.
    pub(crate) fn faded(&self, now: u64) -> f64 {
        self.estimate() * weight_of_old(now.saturating_sub(self.stamp.load(Relaxed)))
    }

    /// Folds a latency sample (nanoseconds) into the estimate.
    pub(crate) fn observe(&self, sample: f64, now: u64) {
        // fetch_max rather than swap: concurrent updaters each get their own slice of the
        // elapsed time (the later ones see almost none, so their samples weigh little, as a
        // time-weighted average wants) and the stamp never moves backwards.
        let previous = self.stamp.fetch_max(now, Relaxed);
        if !self.measured.load(Relaxed) {
            // Two first samples racing both store; either is a fine start.
            self.estimate.store(sample.to_bits(), Relaxed);
            self.measured.store(true, Relaxed);
            return;
        }
        let w = weight_of_old(now.saturating_sub(previous));
        let _ = self.estimate.fetch_update(Relaxed, Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let next = if sample > old { sample } else { old * w + sample * (1.0 - w) };
            Some(next.to_bits())
        });
    }

    /// Raises the estimate to `sample` when that is a new peak; never lowers it. Failures use
    /// this: a slow failure (a timeout) is real evidence of slowness, but a fast one (connection
    /// refused) must not make a broken endpoint look like the quickest.
    pub(crate) fn raise(&self, sample: f64, now: u64) {
        let raised = self
            .estimate
            .fetch_update(Relaxed, Relaxed, |bits| (sample > f64::from_bits(bits)).then_some(sample.to_bits()));
        if raised.is_ok() {
            self.stamp.fetch_max(now, Relaxed);
            self.measured.store(true, Relaxed);
        }
    }
}

/// Weight kept by the old estimate after `elapsed` nanoseconds: exp(-elapsed/τ).
fn weight_of_old(elapsed: u64) -> f64 {
    if elapsed == 0 {
        return 1.0;
    }
    (-(elapsed as f64) / DECAY_NANOS).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e6;
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn starts_at_the_default_rtt() {
        let e = PeakEwma::new(SEC);
        assert_eq!(e.estimate(), DEFAULT_RTT_NANOS);
        assert_eq!(e.faded(SEC), DEFAULT_RTT_NANOS);
    }

    #[test]
    fn a_higher_sample_is_taken_at_once() {
        let e = PeakEwma::new(SEC);
        e.observe(5.0 * MS, SEC + 1);
        e.observe(200.0 * MS, SEC + 2);
        assert_eq!(e.faded(SEC + 2), 200.0 * MS);
    }

    #[test]
    fn lower_samples_pull_it_down_by_elapsed_time() {
        let e = PeakEwma::new(0);
        e.observe(100.0 * MS, 1);
        // A lower sample 1 ms later barely moves it: the average is weighted by time, not count.
        e.observe(10.0 * MS, 1 + 1_000_000);
        let after_1ms = e.faded(1 + 1_000_000);
        assert!(after_1ms > 99.0 * MS, "{after_1ms}");
        // One τ later the old value keeps weight 1/e.
        e.observe(10.0 * MS, 1 + 1_000_000 + 10 * SEC);
        let after_tau = e.faded(1 + 1_000_000 + 10 * SEC);
        let expected = after_1ms / std::f64::consts::E + 10.0 * MS * (1.0 - 1.0 / std::f64::consts::E);
        assert!((after_tau - expected).abs() < 0.01 * MS, "{after_tau} vs {expected}");
    }

    #[test]
    fn idle_time_fades_the_reading_toward_zero() {
        let e = PeakEwma::new(0);
        e.observe(50.0 * MS, SEC);
        let later = e.faded(SEC + 10 * SEC);
        assert!((later - 50.0 * MS / std::f64::consts::E).abs() < 0.01 * MS, "{later}");
        // Reading does not write: the stored estimate is unchanged.
        assert_eq!(e.estimate(), 50.0 * MS);
    }

    #[test]
    fn the_first_sample_replaces_the_default() {
        let e = PeakEwma::new(SEC);
        e.observe(2.0 * MS, SEC + 1);
        assert_eq!(e.estimate(), 2.0 * MS);
        // From then on lower samples are averaged in by time.
        e.observe(1.0 * MS, SEC + 2);
        assert!(e.estimate() > 1.99 * MS, "{}", e.estimate());
    }

    #[test]
    fn raise_only_moves_up() {
        let e = PeakEwma::new(0);
        e.raise(1.0 * MS, 1);
        assert_eq!(e.estimate(), DEFAULT_RTT_NANOS, "a fast failure is no measurement");
        e.observe(20.0 * MS, 2);
        e.raise(1.0 * MS, 3);
        assert_eq!(e.estimate(), 20.0 * MS);
        e.raise(500.0 * MS, 4);
        assert_eq!(e.estimate(), 500.0 * MS);
        // A slow failure counts as the first measurement.
        let fresh = PeakEwma::new(0);
        fresh.raise(2_000.0 * MS, 5);
        fresh.observe(10.0 * MS, 6);
        assert!(fresh.estimate() > 1_999.0 * MS);
    }
}
