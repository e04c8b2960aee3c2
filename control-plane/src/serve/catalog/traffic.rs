//! Golden metrics from the proxies' traffic reports: each proxy's oldest and newest report in
//! the window give its requests, failures and latency histogram over that time; those are
//! summed per direction, service and route into a rate, a success rate and percentiles.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use weft_api::discovery::{TrafficStat, TrafficSummary};

/// Rates are over (up to) this much of each proxy's most recent reports.
pub const WINDOW: Duration = Duration::from_secs(30);

/// What one proxy served between two of its reports.
pub struct Interval {
    pub seconds: f64,
    pub oldest: Vec<TrafficStat>,
    pub newest: Vec<TrafficStat>,
}

#[derive(Default)]
struct Sum {
    proxies: usize,
    rate: f64,
    requests: u64,
    failures: u64,
    seconds: f64,
    bounds: Vec<f64>,
    buckets: Vec<u64>,
}

/// One proxy's reports as an [`Interval`] (only its oldest and newest are copied), when it
/// has two far enough apart.
pub fn interval(reports: &VecDeque<(Instant, Vec<TrafficStat>)>) -> Option<Interval> {
    let (first, last) = (reports.front()?, reports.back()?);
    let seconds = last.0.duration_since(first.0).as_secs_f64();
    (seconds > 0.1).then(|| Interval { seconds, oldest: first.1.clone(), newest: last.1.clone() })
}

/// Sums the intervals per direction, service and route, sorted by those.
pub fn summarize(intervals: &[Interval]) -> Vec<TrafficSummary> {
    let mut sums: BTreeMap<(&str, &str, &str), Sum> = BTreeMap::new();
    for iv in intervals {
        for new in &iv.newest {
            let old = iv.oldest.iter().find(|o| {
                (o.direction.as_str(), o.service.as_str(), o.route.as_str())
                    == (new.direction.as_str(), new.service.as_str(), new.route.as_str())
            });
            let requests = new.requests.saturating_sub(old.map_or(0, |o| o.requests));
            let failures = new.failures.saturating_sub(old.map_or(0, |o| o.failures));
            let sum = sums.entry((&new.direction, &new.service, &new.route)).or_default();
            sum.proxies += 1;
            sum.rate += requests as f64 / iv.seconds;
            sum.requests += requests;
            sum.failures += failures;
            sum.seconds = sum.seconds.max(iv.seconds);
            if sum.bounds.is_empty() {
                sum.bounds = new.bounds.clone();
                sum.buckets = vec![0; new.bounds.len()];
            }
            if new.bounds == sum.bounds {
                for (i, b) in new.buckets.iter().enumerate() {
                    let before = old.filter(|o| o.bounds == new.bounds).and_then(|o| o.buckets.get(i)).copied();
                    sum.buckets[i] += b.saturating_sub(before.unwrap_or(0));
                }
            }
        }
    }
    sums.into_iter()
        .map(|((direction, service, route), s)| TrafficSummary {
            direction: direction.to_string(),
            service: service.to_string(),
            route: route.to_string(),
            proxies: s.proxies,
            requests_per_second: s.rate,
            success_rate: if s.requests == 0 { 1.0 } else { 1.0 - s.failures as f64 / s.requests as f64 },
            p50: quantile(&s.bounds, &s.buckets, s.requests, 0.50),
            p95: quantile(&s.bounds, &s.buckets, s.requests, 0.95),
            p99: quantile(&s.bounds, &s.buckets, s.requests, 0.99),
            window_seconds: s.seconds,
        })
        .collect()
}

/// The `q` quantile of `total` observations in cumulative `buckets` with upper `bounds`,
/// interpolated linearly inside its bucket (as Prometheus's `histogram_quantile` does).
pub fn quantile(bounds: &[f64], buckets: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 || bounds.is_empty() {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (upper, cum) in bounds.iter().zip(buckets) {
        if *cum as f64 >= rank {
            let inside = (cum - below).max(1) as f64;
            return Some(lower + (upper - lower) * ((rank - below as f64) / inside).clamp(0.0, 1.0));
        }
        below = *cum;
        lower = *upper;
    }
    // Past the last finite bucket: all that can be said is "more than its bound".
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(route: &str, requests: u64, failures: u64, buckets: Vec<u64>) -> TrafficStat {
        TrafficStat {
            direction: "outbound".into(),
            service: "pay.shop".into(),
            route: route.into(),
            requests,
            failures,
            bounds: vec![0.001, 0.01, 0.1],
            buckets,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let bounds = [0.001, 0.01, 0.1];
        // 100 requests: 50 under 1 ms, 40 between 1 and 10 ms, 10 between 10 and 100 ms.
        let buckets = [50, 90, 100];
        assert!((quantile(&bounds, &buckets, 100, 0.5).unwrap() - 0.001).abs() < 1e-9);
        assert!((quantile(&bounds, &buckets, 100, 0.7).unwrap() - 0.0055).abs() < 1e-9);
        assert!((quantile(&bounds, &buckets, 100, 0.95).unwrap() - 0.055).abs() < 1e-9);
        assert_eq!(quantile(&bounds, &buckets, 0, 0.5), None);
        assert_eq!(quantile(&bounds, &[1, 1, 1], 10, 0.99), Some(0.1), "beyond the last bucket");
    }

    #[test]
    fn rates_are_summed_over_proxies_and_new_routes_count_from_zero() {
        let a_old = vec![stat("api", 100, 10, vec![50, 90, 100])];
        let a_new = vec![stat("api", 300, 10, vec![150, 290, 300]), stat("new", 20, 20, vec![0, 0, 20])];
        let b_old = vec![stat("api", 0, 0, vec![0, 0, 0])];
        let b_new = vec![stat("api", 100, 50, vec![100, 100, 100])];
        let intervals = [
            Interval { seconds: 10.0, oldest: a_old, newest: a_new },
            Interval { seconds: 5.0, oldest: b_old, newest: b_new },
        ];
        let sums = summarize(&intervals);
        assert_eq!(sums.len(), 2);
        let api = &sums[0];
        assert_eq!((api.route.as_str(), api.proxies), ("api", 2));
        assert!((api.requests_per_second - (20.0 + 20.0)).abs() < 1e-9, "{api:?}");
        assert!((api.success_rate - 0.8333333333).abs() < 1e-6, "50 failures of 300: {api:?}");
        assert!(api.p50.unwrap() <= 0.001, "200 of 300 under 1 ms: {api:?}");
        let new = &sums[1];
        assert_eq!((new.route.as_str(), new.success_rate), ("new", 0.0));
        assert!((new.requests_per_second - 2.0).abs() < 1e-9);
    }
}
