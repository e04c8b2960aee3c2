//! Waiting between retries: exponential growth with "equal jitter", capped.

use std::time::Duration;

/// How long to wait before retry number `retry` (1 for the first retry; 0 counts as 1).
///
/// The ceiling grows as `base · 2^(retry-1)` up to `max`; the wait is drawn uniformly from
/// the upper half of it, [ceiling/2, ceiling] ("equal jitter"). Keeping the lower half fixed
/// guarantees a real pause, so retries back off even when the random part is small (full
/// jitter can retry almost at once); the random half spreads callers that failed together so
/// they do not come back together. Never more than `max`.
pub(crate) fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = ceiling(retry, base, max);
    let half = ceiling / 2;
    let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(fastrand::u64(0..=spread))
}

fn ceiling(retry: u32, base: Duration, max: Duration) -> Duration {
    // 2^31 times any base worth configuring is past any sensible max.
    let doublings = retry.saturating_sub(1).min(31);
    base.checked_mul(1u32 << doublings).map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_exponentially_within_the_upper_half() {
        fastrand::seed(1);
        for (retry, ceiling) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 200), (7, 200)] {
            let ceiling = ceiling * MS;
            for _ in 0..200 {
                let d = backoff(retry, 10 * MS, 200 * MS);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "retry {retry}: {d:?} outside [{:?}, {ceiling:?}]",
                    ceiling / 2
                );
            }
        }
    }

    #[test]
    fn never_exceeds_max_even_for_absurd_inputs() {
        for retry in [0, 1, 40, 1_000, u32::MAX] {
            for base in [MS, Duration::from_secs(3600), Duration::MAX] {
                assert!(backoff(retry, base, 250 * MS) <= 250 * MS, "retry {retry} base {base:?}");
            }
        }
        assert!(backoff(3, Duration::MAX, Duration::MAX) <= Duration::MAX);
        assert_eq!(backoff(5, Duration::ZERO, 100 * MS), Duration::ZERO);
        // A base above the cap is cut to the cap.
        assert!(backoff(1, Duration::from_secs(10), 100 * MS) <= 100 * MS);
    }

    #[test]
    fn retry_zero_counts_as_the_first() {
        assert_eq!(ceiling(0, 10 * MS, 200 * MS), ceiling(1, 10 * MS, 200 * MS));
    }

    #[test]
    fn jitter_spreads_the_waits() {
        fastrand::seed(2);
        let waits: Vec<Duration> = (0..1_000).map(|_| backoff(3, 10 * MS, 200 * MS)).collect();
        let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(*lo < 22 * MS && *hi > 38 * MS, "spread only {lo:?}..{hi:?}");
        let mean = waits.iter().sum::<Duration>() / 1_000;
        assert!(mean > 28 * MS && mean < 32 * MS, "mean {mean:?} (expected ~30 ms)");
    }
}
