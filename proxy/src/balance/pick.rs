//! Choosing an endpoint: power of two choices over peak-EWMA or in-flight cost, or a weighted
//! round-robin schedule. Built once per config version; picking allocates nothing.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use weft_api::LoadBalancer;

use super::Endpoint;

/// Round-robin schedules are at most this long (plus one slot per endpoint when there are more
/// endpoints than that), so that odd weights like 997:3 cannot make a reload build a huge list.
const MAX_SCHEDULE: u64 = 1024;

/// Under peak EWMA, costs within 10 % count as equal and the first candidate (drawn in
/// proportion to weight) keeps the request. Equally good endpoints never have exactly equal
/// estimates, and without this band that noise, not the weights, would split their traffic.
const EQUAL_COST_BAND: f64 = 0.10;

/// Each consecutive failure doubles an endpoint's cost, up to 2^10, so a failing endpoint
/// loses traffic before it is ejected. Keyed to *consecutive* failures so that a steady
/// background error rate, which every endpoint of a service shares, does not pile up.
const MAX_PENALTY_DOUBLINGS: u32 = 10;

/// Random draws tried before scanning: with few endpoints out, one or two draws suffice.
const DRAW_TRIES: usize = 4;

pub(super) struct Picker {
    lb: LoadBalancer,
    /// prefix[i] = sum of weights of endpoints 0..=i, for drawing in proportion to weight.
    prefix: Box<[u64]>,
    /// Round-robin order: each index appears in proportion to its weight, interleaved.
    schedule: Box<[u32]>,
    /// Shared by all workers; `Relaxed` because only the spread of values matters.
    cursor: AtomicUsize,
}

impl Picker {
    pub(super) fn new(endpoints: &[Arc<Endpoint>], lb: LoadBalancer) -> Picker {
        let mut total = 0u64;
        let prefix = endpoints
            .iter()
            .map(|e| {
                total += u64::from(e.weight);
                total
            })
            .collect();
        let schedule = match lb {
            LoadBalancer::RoundRobin => schedule(endpoints),
            LoadBalancer::PeakEwma | LoadBalancer::LeastRequest => Box::default(),
        };
        Picker { lb, prefix, schedule, cursor: AtomicUsize::new(0) }
    }

    /// Picks among the endpoints `ok` accepts; None when it accepts none.
    pub(super) fn pick(&self, eps: &[Arc<Endpoint>], ok: impl Fn(usize) -> bool, now: u64) -> Option<usize> {
        match self.lb {
            LoadBalancer::RoundRobin => self.round_robin(eps, ok),
            LoadBalancer::PeakEwma | LoadBalancer::LeastRequest => self.two_choices(eps, ok, now),
        }
    }

    /// Two distinct candidates, each drawn in proportion to weight; the first keeps the request
    /// unless the second is clearly cheaper. At equal cost this sends each endpoint exactly
    /// its weight's share; under load the cost (queue per unit of weight) evens out in
    /// proportion to weight too, so canaries get their share at any concurrency.
    fn two_choices(&self, eps: &[Arc<Endpoint>], ok: impl Fn(usize) -> bool, now: u64) -> Option<usize> {
        let first = self.draw(eps, &ok)?;
        let Some(second) = self.draw(eps, |i| i != first && ok(i)) else {
            return Some(first);
        };
        let (a, b) = (&eps[first], &eps[second]);
        let (latency_a, latency_b, margin) = match self.lb {
            LoadBalancer::PeakEwma => match (latency(a, now), latency(b, now)) {
                (Some(x), Some(y)) => (x, y, 1.0 - band()),
                // Not answered yet: assume it is as fast as the endpoint it is compared with,
                // so it gets its weight's share at once; the queue term keeps it from being
                // flooded if it turns out slow, and its first answer replaces the assumption.
                (Some(x), None) => (x, x, 1.0 - band()),
                (None, Some(y)) => (y, y, 1.0 - band()),
                (None, None) => (1.0, 1.0, 1.0 - band()),
            },
            _ => (1.0, 1.0, 1.0),
        };
        if cost(b, latency_b) < cost(a, latency_a) * margin { Some(second) } else { Some(first) }
    }

    /// An index accepted by `ok`, drawn in proportion to weight.
    fn draw(&self, eps: &[Arc<Endpoint>], ok: impl Fn(usize) -> bool) -> Option<usize> {
        let total = self.prefix.last().copied().unwrap_or(0);
        if total > 0 {
            for _ in 0..DRAW_TRIES {
                let r = fastrand::u64(0..total);
                let i = self.prefix.partition_point(|&p| p <= r);
                if ok(i) {
                    return Some(i);
                }
            }
        }
        scan_draw(eps, ok)
    }

    fn round_robin(&self, eps: &[Arc<Endpoint>], ok: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len > 0 {
            let start = self.cursor.fetch_add(1, Relaxed);
            // Unavailable slots pass to the next one in the schedule.
            for k in 0..len {
                let i = self.schedule[start.wrapping_add(k) % len] as usize;
                if ok(i) {
                    return Some(i);
                }
            }
        }
        // Only drained (weight 0) endpoints can be left.
        scan_draw(eps, ok)
    }
}

/// Expected cost of sending one more request: latency × (in_flight + weight) / weight,
/// doubled per consecutive failure. The queue is counted in units of weight (a weight-2
/// endpoint is two servers' worth, so its own request costs it half a slot): then equal
/// endpoints cost the same whatever their weights, and the weights decide, instead of the
/// heavier endpoint winning every comparison when nothing is queued. Least-request is the
/// same with latency 1.
fn cost(e: &Endpoint, latency: f64) -> f64 {
    let weight = f64::from(e.weight.max(1));
    let queue = (f64::from(e.in_flight()) + weight) / weight;
    let doublings = e.health.consecutive_failures().min(MAX_PENALTY_DOUBLINGS);
    latency * queue * f64::from(1u32 << doublings)
}

/// The peak-EWMA estimate to use now, or None before the first answer. Faded by idle time
/// only while nothing is in flight (see `PeakEwma::faded`).
fn latency(e: &Endpoint, now: u64) -> Option<f64> {
    if !e.latency.measured() {
        return None;
    }
    Some(if e.in_flight() == 0 { e.latency.faded(now) } else { e.latency.estimate() })
}

#[cfg(not(test))]
fn band() -> f64 {
    EQUAL_COST_BAND
}
#[cfg(test)]
thread_local!(pub(super) static BAND: std::cell::Cell<f64> = const { std::cell::Cell::new(EQUAL_COST_BAND) });
#[cfg(test)]
fn band() -> f64 {
    BAND.with(|b| b.get())
}

/// The slow path of [`Picker::draw`], for when most endpoints are excluded or ejected: one
/// pass to weigh the acceptable ones, one to draw. Drained endpoints (weight 0) are drawn
/// uniformly when they are all that is left.
fn scan_draw(eps: &[Arc<Endpoint>], ok: impl Fn(usize) -> bool) -> Option<usize> {
    let (mut total, mut count, mut any) = (0u64, 0u64, None);
    for i in (0..eps.len()).filter(|&i| ok(i)) {
        total += u64::from(eps[i].weight);
        count += 1;
        any = Some(i);
    }
    let any = any?;
    let weigh = |i: usize| if total > 0 { u64::from(eps[i].weight) } else { 1 };
    let mut r = fastrand::u64(0..total.max(count));
    for i in (0..eps.len()).filter(|&i| ok(i)) {
        if r < weigh(i) {
            return Some(i);
        }
        r -= weigh(i);
    }
    // An endpoint was ejected between the two passes.
    Some(any)
}

/// Smooth weighted round robin, unrolled once: over one cycle each endpoint appears `weight`
/// times (after reduction to the size bound), spread out rather than in runs, so a weight-5
/// endpoint does not take five requests in a row.
fn schedule(endpoints: &[Arc<Endpoint>]) -> Box<[u32]> {
    let weights = reduced_weights(endpoints);
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))).unwrap_or(0);
        current[best] -= total;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

/// Weights divided by their common divisor, then scaled down (keeping every positive weight at
/// least 1) if the cycle would still exceed [`MAX_SCHEDULE`].
fn reduced_weights(endpoints: &[Arc<Endpoint>]) -> Vec<i64> {
    let raw: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight)).collect();
    let divisor = raw.iter().copied().fold(0, gcd).max(1);
    let sum: u64 = raw.iter().map(|w| w / divisor).sum();
    raw.iter()
        .map(|&w| {
            let w = w / divisor;
            let scaled = if sum > MAX_SCHEDULE && w > 0 { (w * MAX_SCHEDULE / sum).max(1) } else { w };
            scaled as i64
        })
        .collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;

    use super::*;
    use crate::balance::{EndpointSet, OutlierConfig};
    use crate::clock::now_nanos;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_000_000 * MS;

    fn set(weights: &[u32], lb: LoadBalancer) -> EndpointSet {
        let eps = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)), w, None)))
            .collect();
        EndpointSet::new(eps, lb, OutlierConfig::default())
    }

    /// Sends `n` requests one after another, each answered after `latency(i)` ms; returns the
    /// request count per endpoint.
    fn sequential(s: &EndpointSet, n: usize, latency: impl Fn(usize) -> u64) -> Vec<usize> {
        let mut counts = vec![0; s.endpoints().len()];
        let mut now = now_nanos();
        for _ in 0..n {
            let i = s.pick_at(&[], now).unwrap();
            counts[i] += 1;
            let guard = s.endpoints()[i].start_at(now);
            now += latency(i) * MS;
            s.on_success_at(guard, now);
        }
        counts
    }

    /// Keeps `depth` requests outstanding, each taking `depth` ms (one completes per ms, first
    /// in first out), so every endpoint shows the same latency; returns counts per endpoint.
    fn concurrent(s: &EndpointSet, n: usize, depth: usize) -> Vec<usize> {
        let mut counts = vec![0; s.endpoints().len()];
        let mut queue = VecDeque::new();
        let mut now = T0;
        for _ in 0..n {
            let i = s.pick_at(&[], now).unwrap();
            counts[i] += 1;
            queue.push_back(s.endpoints()[i].start_at(now));
            if queue.len() == depth {
                s.on_success_at(queue.pop_front().unwrap(), now);
            }
            now += MS;
        }
        counts
    }

    fn ratio(counts: &[usize], a: usize, b: usize) -> f64 {
        counts[a] as f64 / counts[b] as f64
    }

    #[test]
    fn p2c_honours_weights_one_request_at_a_time() {
        fastrand::seed(7);
        for lb in [LoadBalancer::PeakEwma, LoadBalancer::LeastRequest] {
            let s = set(&[1, 2], lb);
            let c = sequential(&s, 30_000, |_| 5);
            let r = ratio(&c, 1, 0);
            assert!((1.85..2.15).contains(&r), "{lb:?}: weight 2 got {r:.2}× weight 1: {c:?}");

            let s = set(&[1, 1, 2, 4], lb);
            let c = sequential(&s, 40_000, |_| 5);
            assert!((0.9..1.1).contains(&ratio(&c, 1, 0)), "{lb:?}: {c:?}");
            assert!((1.8..2.2).contains(&ratio(&c, 2, 0)), "{lb:?}: {c:?}");
            assert!((3.6..4.4).contains(&ratio(&c, 3, 0)), "{lb:?}: {c:?}");
        }
    }

    #[test]
    fn p2c_honours_weights_under_load() {
        fastrand::seed(11);
        for lb in [LoadBalancer::PeakEwma, LoadBalancer::LeastRequest] {
            let s = set(&[1, 2], lb);
            let c = concurrent(&s, 30_000, 30);
            let r = ratio(&c, 1, 0);
            assert!((1.8..2.2).contains(&r), "{lb:?}: weight 2 got {r:.2}× weight 1: {c:?}");
        }
    }

    #[test]
    fn peak_ewma_avoids_a_slow_endpoint_but_still_samples_it() {
        fastrand::seed(3);
        let s = set(&[1, 1, 1], LoadBalancer::PeakEwma);
        // Endpoint 2 answers in 50 ms, the others in 10 ms; ~5 minutes of one-at-a-time traffic.
        let c = sequential(&s, 30_000, |i| if i == 2 { 50 } else { 10 });
        let slow_share = c[2] as f64 / 30_000.0;
        assert!(slow_share < 0.01, "slow endpoint got {slow_share:.3}: {c:?}");
        // The idle decay brings it back for a look now and then.
        assert!(c[2] >= 5, "slow endpoint never re-measured: {c:?}");
        assert!((0.85..1.15).contains(&ratio(&c, 0, 1)), "{c:?}");
    }

    #[test]
    fn peak_ewma_shifts_load_away_from_queues() {
        fastrand::seed(5);
        let s = set(&[1, 1], LoadBalancer::PeakEwma);
        // Equal latency, but endpoint 0 already has 3 requests stuck in flight.
        let _stuck: Vec<_> = (0..3).map(|_| s.endpoints()[0].start_at(T0)).collect();
        let c = sequential(&s, 1_000, |_| 5);
        assert!(c[1] > 990, "{c:?}");
    }

    #[test]
    fn consecutive_failures_cost_traffic_before_ejection() {
        fastrand::seed(9);
        for lb in [LoadBalancer::PeakEwma, LoadBalancer::LeastRequest] {
            let s = set(&[1, 1, 1], lb);
            for _ in 0..2 {
                assert!(!s.on_failure_at(s.endpoints()[0].start_at(T0), T0));
            }
            let mut c = [0usize; 3];
            for _ in 0..3_000 {
                c[s.pick_at(&[], T0).unwrap()] += 1;
            }
            // Penalised ×4, it wins only when drawn twice… which distinct draws never allow.
            assert_eq!(c[0], 0, "{lb:?}: {c:?}");
            assert!(c[1] > 1_200 && c[2] > 1_200, "{lb:?}: {c:?}");
        }
    }

    #[test]
    fn a_new_endpoint_is_tried_under_load_but_not_flooded() {
        fastrand::seed(13);
        let s = set(&[1, 1, 1], LoadBalancer::PeakEwma);
        let t0 = now_nanos() + 5 * MS;
        // Endpoints 0 and 1 are proven at 5 ms; endpoint 2 is new (30 ms assumed).
        for i in 0..2 {
            s.on_success_at(s.endpoints()[i].start_at(t0 - 5 * MS), t0);
        }
        let mut c = [0usize; 3];
        for _ in 0..3_000 {
            c[s.pick_at(&[], t0).unwrap()] += 1;
        }
        assert_eq!(c[2], 0, "idle proven endpoints beat an unmeasured one: {c:?}");
        // With six requests queued on each proven endpoint, the new one is worth a try.
        let _busy: Vec<_> = (0..12).map(|k| s.endpoints()[k % 2].start_at(t0)).collect();
        assert!((0..100).any(|_| s.pick_at(&[], t0) == Ok(2)));
    }

    #[test]
    fn round_robin_follows_weights_exactly_and_interleaves() {
        let s = set(&[3, 3, 1], LoadBalancer::RoundRobin);
        let picks: Vec<usize> = (0..700).map(|_| s.pick_at(&[], T0).unwrap()).collect();
        let mut c = [0; 3];
        picks.iter().for_each(|&i| c[i] += 1);
        assert_eq!(c, [300, 300, 100]);
        // Smooth: not 0,0,0,1,1,1,2 but interleaved, never the same endpoint twice in a row.
        assert!(picks.windows(2).all(|w| w[0] != w[1]), "{:?}", &picks[..14]);
    }

    #[test]
    fn round_robin_skips_unavailable_slots() {
        let s = set(&[1, 1, 1], LoadBalancer::RoundRobin);
        let picks: Vec<usize> = (0..300).map(|_| s.pick_at(&[1], T0).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert!(picks.iter().filter(|&&i| i == 0).count() >= 100);
    }

    #[test]
    fn schedules_stay_bounded_and_keep_small_weights() {
        let eps: Vec<_> = [997u32, 3, 0, 1000]
            .iter()
            .map(|&w| Arc::new(Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1)), w, None)))
            .collect();
        let sched = schedule(&eps);
        assert!(sched.len() as u64 <= MAX_SCHEDULE, "{}", sched.len());
        let count = |i: u32| sched.iter().filter(|&&x| x == i).count();
        assert!(count(1) >= 1, "a small weight must not vanish");
        assert_eq!(count(2), 0, "weight 0 is drained");
        assert!(count(3) > count(0));
        let reduced: Vec<_> = [4u32, 6, 2].iter().map(|&w| Arc::new(Endpoint::new(eps[0].addr, w, None))).collect();
        assert_eq!(reduced_weights(&reduced), vec![2, 3, 1]);
    }

    #[test]
    fn drained_endpoints_serve_only_as_a_last_resort() {
        for lb in [LoadBalancer::PeakEwma, LoadBalancer::RoundRobin, LoadBalancer::LeastRequest] {
            let s = set(&[0, 1], lb);
            assert!((0..200).all(|_| s.pick_at(&[], T0) == Ok(1)), "{lb:?}");
            assert_eq!(s.pick_at(&[1], T0), Ok(0), "{lb:?}");
            let all_drained = set(&[0, 0], lb);
            assert!(all_drained.pick_at(&[], T0).is_ok(), "{lb:?}");
        }
    }
}
#[cfg(test)]
mod dbg_tests {
    use super::*;
    use crate::balance::{EndpointSet, OutlierConfig};
    use crate::clock::now_nanos;
    fn run(band: f64, weights: &[u32], n: usize, depth: usize, noise: impl Fn() -> f64) -> Vec<usize> {
        BAND.with(|b| b.set(band));
        let eps: Vec<_> = weights.iter().map(|&w| Arc::new(Endpoint::new(std::net::SocketAddr::from(([127, 0, 0, 1], 1)), w, None))).collect();
        let s = EndpointSet::new(eps, LoadBalancer::PeakEwma, OutlierConfig::default());
        let mut now = now_nanos();
        let mut c = vec![0; weights.len()];
        let mut q: std::collections::VecDeque<(u64, InFlightLike)> = Default::default();
        for _ in 0..n {
            let i = s.pick_at(&[], now).unwrap();
            c[i] += 1;
            let g = s.endpoints()[i].start_at(now);
            let lat = (noise() * 1_000_000.0 * depth.max(1) as f64) as u64;
            q.push_back((now + lat, g));
            // complete everything due, keep at most depth outstanding
            q.make_contiguous().sort_by_key(|x| x.0);
            while let Some(f) = q.front() {
                if q.len() > depth || f.0 <= now { let (t, g) = q.pop_front().unwrap(); let t = t.max(now); s.on_success_at(g, t); if depth == 0 { now = t; } } else { break }
            }
            now += if depth == 0 { 0 } else { 1_000_000 };
        }
        c
    }
    type InFlightLike = crate::balance::InFlight;
    fn noise() -> f64 {
        let u = fastrand::f64();
        let base = 1.0 + 0.5 * u;
        if fastrand::u32(0..100) == 0 { base * 3.0 } else { base }
    }
    #[test]
    fn dbg() {
        for band in [0.1, 0.2, 0.25, 0.3, 0.4] {
            let mut line = format!("band {band}:");
            for w in [&[1u32, 2][..], &[1, 1, 2, 4][..]] {
            for depth in [0usize, 1, 2, 3, 4, 6, 8, 16, 64] {
                let c = run(band, w, 20_000, depth, noise);
                let flat = run(band, w, 20_000, depth, || 1.0);
                line += &format!(" d{depth} {:.2}/{:.2}", c[w.len()-1] as f64 / c[0] as f64, flat[w.len()-1] as f64 / flat[0] as f64);
            }
            line += " |";
            }
            println!("{line}");
        }
    }
}
