//! The retry budget: retries may add only a share of the original requests over a sliding
//! window (plus a small floor), so a failing service is not hammered with retries.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

use crate::clock::now_nanos;

/// The window is 10 slots of one second each.
const SLOTS: u64 = 10;
const SLOT_NANOS: u64 = 1_000_000_000;
/// Second stamp of a slot never written: never inside a window.
const UNUSED: u64 = (u32::MAX as u64) << 32;

/// Finagle-style retry budget over a sliding 10 s window: retries allowed =
/// `deposits × ratio + min_per_second × 10 − withdrawals`, all counted in the window.
///
/// Each slot packs its second (high 32 bits) and its count (low 32 bits) into one atomic, so
/// moving a slot on to a new second and counting in it cannot tear. Everything is `Relaxed`:
/// the counts publish no other memory, and two retries racing in one second update the same
/// atomic, whose read-modify-writes are totally ordered, so the later one always sees the
/// earlier (a withdrawal is counted before it is checked, so racers never overdraw).
pub struct RetryBudget {
    ratio: AtomicU64,
    min_per_second: AtomicU32,
    deposits: [AtomicU64; SLOTS as usize],
    withdrawals: [AtomicU64; SLOTS as usize],
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        let budget = RetryBudget {
            ratio: AtomicU64::new(0),
            min_per_second: AtomicU32::new(0),
            deposits: std::array::from_fn(|_| AtomicU64::new(UNUSED)),
            withdrawals: std::array::from_fn(|_| AtomicU64::new(UNUSED)),
        };
        budget.set_params(ratio, min_per_second);
        budget
    }

    /// New numbers from a reload; the counts in the window are kept.
    pub fn set_params(&self, ratio: f64, min_per_second: u32) {
        // A negative or NaN ratio would disable the floor's arithmetic; treat it as 0.
        let ratio = if ratio > 0.0 { ratio } else { 0.0 };
        self.ratio.store(ratio.to_bits(), Relaxed);
        self.min_per_second.store(min_per_second, Relaxed);
    }

    /// Before each retry: true to go ahead, false when the budget is spent (do not retry).
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(now_nanos())
    }

    /// Once per original request (not per retry), at a `clock::now_nanos()` reading the caller
    /// already has.
    pub fn deposit_at(&self, now: u64) {
        let second = second_of(now);
        count(&self.deposits[slot_of(second)], second);
    }

    fn try_withdraw_at(&self, now: u64) -> bool {
        let second = second_of(now);
        let slot = &self.withdrawals[slot_of(second)];
        // Count first, check after: racing withdrawals see each other and cannot overdraw.
        count(slot, second);
        let ratio = f64::from_bits(self.ratio.load(Relaxed));
        let floor = f64::from(self.min_per_second.load(Relaxed)) * SLOTS as f64;
        let allowed = sum(&self.deposits, second) as f64 * ratio + floor;
        // The epsilon keeps 100 × 0.2 at 20 despite binary fractions.
        if sum(&self.withdrawals, second) as f64 <= allowed + 1e-9 {
            return true;
        }
        let _ = slot.fetch_update(Relaxed, Relaxed, |v| (stamp(v) == second && v as u32 > 0).then(|| v - 1));
        false
    }
}

fn second_of(now: u64) -> u32 {
    (now / SLOT_NANOS) as u32
}

fn slot_of(second: u32) -> usize {
    (u64::from(second) % SLOTS) as usize
}

fn stamp(v: u64) -> u32 {
    (v >> 32) as u32
}

/// Adds one to `slot` for `second`, restarting the slot if it still holds an older second.
fn count(slot: &AtomicU64, second: u32) {
    // The common case is one atomic add; only the first count of a new second pays for a CAS.
    let previous = slot.fetch_add(1, Relaxed);
    if stamp(previous) != second {
        // That add landed in a second that has left the window; restart the slot at this
        // second with our one (or add to it, if another caller restarted it first).
        let _ = slot.fetch_update(Relaxed, Relaxed, |v| {
            Some(if stamp(v) == second { v + 1 } else { (u64::from(second) << 32) | 1 })
        });
    }
}

/// Total of the slots whose second lies in the 10 s window ending at `second`.
fn sum(slots: &[AtomicU64], second: u32) -> u64 {
    slots
        .iter()
        .map(|s| s.load(Relaxed))
        .filter(|&v| stamp(v) <= second && second - stamp(v) < SLOTS as u32)
        .map(|v| u64::from(v as u32))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = SLOT_NANOS;
    const T0: u64 = 1_000 * SEC;

    fn withdrawals(b: &RetryBudget, now: u64) -> usize {
        (0..10_000).take_while(|_| b.try_withdraw_at(now)).count()
    }

    #[test]
    fn a_fifth_of_the_requests_may_be_retried() {
        let b = RetryBudget::new(0.2, 0);
        assert!(!b.try_withdraw_at(T0), "nothing deposited, no floor");
        for _ in 0..100 {
            b.deposit_at(T0);
        }
        assert_eq!(withdrawals(&b, T0), 20);
        // Refused attempts are not counted: five more requests pay for exactly one more retry.
        for _ in 0..5 {
            b.deposit_at(T0);
        }
        assert_eq!(withdrawals(&b, T0), 1);
    }

    #[test]
    fn the_floor_allows_min_per_second_times_ten() {
        let b = RetryBudget::new(0.2, 3);
        assert_eq!(withdrawals(&b, T0), 30);
    }

    #[test]
    fn deposits_and_withdrawals_leave_the_window_after_ten_seconds() {
        let b = RetryBudget::new(0.5, 0);
        for _ in 0..20 {
            b.deposit_at(T0);
        }
        for _ in 0..20 {
            b.deposit_at(T0 + 5 * SEC);
        }
        assert_eq!(withdrawals(&b, T0 + 5 * SEC), 20);
        // At +10 s the first 20 deposits are gone: 10 allowed, 20 already withdrawn.
        assert!(!b.try_withdraw_at(T0 + 10 * SEC));
        // At +15 s the withdrawals (made at +5 s) are gone too, and so are the later deposits.
        assert!(!b.try_withdraw_at(T0 + 15 * SEC));
        for _ in 0..4 {
            b.deposit_at(T0 + 15 * SEC);
        }
        assert_eq!(withdrawals(&b, T0 + 15 * SEC + SEC / 2), 2);
    }

    #[test]
    fn the_window_slides_one_second_at_a_time() {
        let b = RetryBudget::new(1.0, 0);
        for s in 0..10 {
            b.deposit_at(T0 + s * SEC);
        }
        // At T0+9 all ten seconds count; each later second drops the oldest one.
        assert_eq!(withdrawals(&b, T0 + 9 * SEC), 10);
        let b = RetryBudget::new(1.0, 0);
        for s in 0..10 {
            b.deposit_at(T0 + s * SEC);
        }
        assert_eq!(withdrawals(&b, T0 + 12 * SEC), 7);
    }

    #[test]
    fn a_reused_slot_starts_over() {
        let b = RetryBudget::new(1.0, 0);
        for _ in 0..50 {
            b.deposit_at(T0);
        }
        // T0+10 s maps to the same slot as T0: the 50 must not leak into the new second.
        b.deposit_at(T0 + 10 * SEC);
        assert_eq!(withdrawals(&b, T0 + 10 * SEC), 1);
    }

    #[test]
    fn set_params_applies_to_the_counts_already_in_the_window() {
        let b = RetryBudget::new(0.1, 0);
        for _ in 0..100 {
            b.deposit_at(T0);
        }
        assert_eq!(withdrawals(&b, T0), 10);
        b.set_params(0.3, 0);
        assert_eq!(withdrawals(&b, T0), 20);
        b.set_params(f64::NAN, 1);
        assert_eq!(withdrawals(&b, T0), 0, "floor 10 < 30 already withdrawn");
    }

    #[test]
    fn racing_withdrawals_never_overdraw() {
        let b = RetryBudget::new(0.1, 0);
        for _ in 0..1_000 {
            b.deposit_at(T0);
        }
        let granted = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        if b.try_withdraw_at(T0) {
                            granted.fetch_add(1, Relaxed);
                        }
                    }
                });
            }
        });
        let granted = granted.load(Relaxed);
        assert!((90..=100).contains(&granted), "granted {granted} of a budget of 100");
    }

    #[test]
    fn uses_the_process_clock() {
        let b = RetryBudget::new(0.0, 1);
        b.deposit_at(now_nanos());
        assert!(b.try_withdraw());
    }
}
