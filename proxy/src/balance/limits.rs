//! Per-service concurrency limits that fail fast: past the limit a request is refused at once.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;

/// A cap on requests in flight to one service. Kept across reloads (only the cap changes), so
/// a reload neither forgets nor double-counts requests already running. Both fields are plain
/// counters that publish no other memory, so `Relaxed` suffices.
pub struct ConcurrencyLimit {
    max: AtomicU32,
    in_flight: AtomicU32,
}

impl ConcurrencyLimit {
    /// A limit of `max` at once (0: no limit).
    pub fn new(max: u32) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit { max: AtomicU32::new(max), in_flight: AtomicU32::new(0) })
    }

    /// Takes effect for the next acquire. Lowering it below the current count refuses new
    /// requests until enough running ones finish; running ones are never cut.
    pub fn set_max(&self, max: u32) {
        self.max.store(max, Relaxed);
    }

    /// A permit, or None when `in_flight >= max`: the caller answers 503 at once, because a
    /// queue here would only turn an overload into timeouts. 0 refuses everything.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let max = self.max.load(Relaxed);
        // Compare-and-swap rather than add-then-undo: a full limit costs only a load, and a
        // refused request never inflates the count that concurrent callers see.
        self.in_flight.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok()?;
        Some(Permit { limit: Arc::clone(self) })
    }

    /// Permits held now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }
}

/// A slot under a [`ConcurrencyLimit`], released on drop.
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_cap_and_releases_on_drop() {
        let limit = ConcurrencyLimit::new(2);
        let a = limit.try_acquire().unwrap();
        let _b = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.in_flight(), 2);
        drop(a);
        assert_eq!(limit.in_flight(), 1);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn set_max_applies_to_new_requests_only() {
        let limit = ConcurrencyLimit::new(3);
        let held: Vec<_> = (0..3).map(|_| limit.try_acquire().unwrap()).collect();
        limit.set_max(1);
        assert!(limit.try_acquire().is_none());
        drop(held);
        let _one = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        limit.set_max(5);
        assert!(limit.try_acquire().is_some());
        assert!(ConcurrencyLimit::new(0).try_acquire().is_none());
    }

    #[test]
    fn concurrent_acquirers_never_exceed_the_cap() {
        let limit = ConcurrencyLimit::new(3);
        let peak = AtomicU32::new(0);
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if let Some(p) = limit.try_acquire() {
                            peak.fetch_max(limit.in_flight(), Relaxed);
                            granted.fetch_add(1, Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Relaxed) <= 3, "peak {}", peak.load(Relaxed));
        assert!(granted.load(Relaxed) > 0);
        assert_eq!(limit.in_flight(), 0);
    }
}
