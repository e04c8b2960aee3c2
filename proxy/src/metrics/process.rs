//! The `process_*` metrics: the prometheus crate's process collector, with CPU time in
//! fractional seconds.
//!
//! The crate keeps `process_cpu_seconds_total` in an integer counter (clock ticks divided by
//! `CLK_TCK`, rounded down), so a process that had used 1.21 s showed 1, and a rate over a few
//! minutes of a sidecar's CPU read as steps. Its family is replaced by a float counter here;
//! the other process metrics are the crate's.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Opts};

const CPU: &str = "process_cpu_seconds_total";

pub(crate) struct ProcessMetrics {
    inner: ProcessCollector,
    cpu: Counter,
}

impl ProcessMetrics {
    pub(crate) fn for_self() -> ProcessMetrics {
        let cpu = Counter::with_opts(Opts::new(CPU, "Total user and system CPU time spent in seconds."))
            .expect("valid metric");
        ProcessMetrics { inner: ProcessCollector::for_self(), cpu }
    }
}

/// User plus system CPU time of this process, in seconds, as /proc/self/stat says.
pub(crate) fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().and_then(|p| p.stat()).ok()?;
    Some((stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64)
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let mut descs: Vec<&Desc> = self.inner.desc().into_iter().filter(|d| d.fq_name != CPU).collect();
        descs.extend(self.cpu.desc());
        descs
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.inner.collect();
        families.retain(|f| f.name() != CPU);
        if let Some(now) = cpu_seconds() {
            // A counter only goes up; two scrapes at once may both get here.
            let past = self.cpu.get();
            if now > past {
                self.cpu.inc_by(now - past);
            }
            families.extend(self.cpu.collect());
        }
        families
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, Registry, TextEncoder};

    use super::*;

    /// Burns CPU until this process has used a time that is not a whole number of seconds,
    /// then scrapes: the exported value is that time, fraction included. The crate's own
    /// collector exported the whole seconds only.
    #[test]
    fn cpu_seconds_are_fractional() {
        let registry = Registry::new();
        registry.register(Box::new(ProcessMetrics::for_self())).unwrap();
        let tick = 1.0 / procfs::ticks_per_second() as f64;
        let mut spin = 0u64;
        for _ in 0..1000 {
            let started = std::time::Instant::now();
            while started.elapsed() < std::time::Duration::from_millis(30) {
                spin = std::hint::black_box(spin.wrapping_mul(31).wrapping_add(7));
            }
            let before = cpu_seconds().unwrap();
            let families = registry.gather();
            let after = cpu_seconds().unwrap();
            let mut text = Vec::new();
            TextEncoder::new().encode(&families, &mut text).unwrap();
            let text = String::from_utf8(text).unwrap();
            let values: Vec<f64> =
                text.lines().filter_map(|l| l.strip_prefix(CPU)?.strip_prefix(' ')?.parse().ok()).collect();
            assert_eq!(values.len(), 1, "one {CPU} sample in:\n{text}");
            let value = values[0];
            assert!(value >= before - tick / 2.0 && value <= after + tick / 2.0, "{before} <= {value} <= {after}");
            // Only a stable reading can be compared with its fraction.
            if before == after && before.fract() > tick / 2.0 {
                assert!(value.fract() > tick / 2.0, "{CPU} is {value} while /proc says {before}");
                return;
            }
        }
        panic!("never saw a CPU time with a fraction of a second");
    }
}
