//! What this proxy reports to the control plane every few seconds (`POST /v1/report`): its
//! request counters and latency histograms per direction, service and route, read from its own
//! Prometheus registry, so `weft stat` shows golden metrics with no Prometheus.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use weft_api::discovery::TrafficStat;

use crate::metrics::METRICS;

/// How often a connected proxy reports.
pub(crate) const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The cumulative traffic of this process.
pub(crate) fn gather() -> Vec<TrafficStat> {
    from_families(&METRICS.registry.gather())
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label().iter().find(|l| l.name() == name).map_or("", |l| l.value())
}

/// Folds `weft_requests_total` and `weft_request_duration_seconds` into one stat per
/// direction, service and route (other labels, such as the status code, are summed).
pub(crate) fn from_families(families: &[MetricFamily]) -> Vec<TrafficStat> {
    let mut out: BTreeMap<(String, String, String), TrafficStat> = BTreeMap::new();
    fn entry<'a>(
        out: &'a mut BTreeMap<(String, String, String), TrafficStat>,
        m: &prometheus::proto::Metric,
    ) -> &'a mut TrafficStat {
        let (d, s, r) = (label(m, "direction"), label(m, "service"), label(m, "route"));
        out.entry((d.to_string(), s.to_string(), r.to_string())).or_insert_with(|| TrafficStat {
            direction: d.to_string(),
            service: s.to_string(),
            route: r.to_string(),
            ..TrafficStat::default()
        })
    }
    for family in families {
        match family.name() {
            "weft_requests_total" => {
                for m in family.get_metric() {
                    let entry = entry(&mut out, m);
                    let n = m.get_counter().get_value() as u64;
                    entry.requests += n;
                    if label(m, "classification") == "failure" {
                        entry.failures += n;
                    }
                }
            }
            "weft_request_duration_seconds" => {
                for m in family.get_metric() {
                    let entry = entry(&mut out, m);
                    let h = m.get_histogram();
                    let buckets = h.get_bucket();
                    if entry.bounds.is_empty() {
                        entry.bounds = buckets.iter().map(|b| b.upper_bound()).collect();
                        entry.buckets = vec![0; buckets.len()];
                    }
                    for (i, b) in buckets.iter().enumerate().take(entry.buckets.len()) {
                        entry.buckets[i] += b.cumulative_count();
                    }
                }
            }
            _ => {}
        }
    }
    out.into_values().filter(|s| s.requests > 0).collect()
}

#[cfg(test)]
mod tests {
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    use super::*;

    #[test]
    fn sums_codes_and_counts_failures_per_route() {
        let registry = Registry::new();
        let labels = ["direction", "service", "route", "code", "classification"];
        let requests = IntCounterVec::new(Opts::new("weft_requests_total", "r"), &labels).unwrap();
        let durations = HistogramVec::new(
            HistogramOpts::new("weft_request_duration_seconds", "d").buckets(vec![0.01, 0.1]),
            &["direction", "service", "route"],
        )
        .unwrap();
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(durations.clone())).unwrap();
        requests.with_label_values(&["outbound", "pay.shop", "api", "200", "success"]).inc_by(7);
        requests.with_label_values(&["outbound", "pay.shop", "api", "503", "failure"]).inc_by(3);
        requests.with_label_values(&["inbound", "web.shop", "default", "200", "success"]).inc_by(0);
        for v in [0.005, 0.05, 0.5] {
            durations.with_label_values(&["outbound", "pay.shop", "api"]).observe(v);
        }
        let stats = from_families(&registry.gather());
        assert_eq!(stats.len(), 1, "routes with no requests are left out: {stats:?}");
        let s = &stats[0];
        assert_eq!((s.direction.as_str(), s.service.as_str(), s.route.as_str()), ("outbound", "pay.shop", "api"));
        assert_eq!((s.requests, s.failures), (10, 3));
        assert_eq!(s.bounds, vec![0.01, 0.1]);
        assert_eq!(s.buckets, vec![1, 2]);
    }
}
