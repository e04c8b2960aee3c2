//! What an accept loop does when accept fails: count it, log it once per run of failures, and
//! pause, since while the cause lasts (most often no descriptor left) accept fails again at
//! once and retrying at once would spin a core.

use std::time::Duration;

use crate::metrics::METRICS;

/// How long an accept loop waits after a failed accept before it tries again.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Whether `e` says the process (EMFILE) or the system (ENFILE) has no descriptor left.
pub(crate) fn is_fd_limit(e: &std::io::Error) -> bool {
    let code = e.raw_os_error();
    code == Some(rustix::io::Errno::MFILE.raw_os_error()) || code == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// One listener's run of failed accepts.
pub(crate) struct AcceptErrors {
    direction: &'static str,
    /// Failures since the last accept that worked.
    failing: u64,
}

impl AcceptErrors {
    pub(crate) fn new(direction: &'static str) -> AcceptErrors {
        AcceptErrors { direction, failing: 0 }
    }

    /// Counts a failed accept, logging the first of a run (one line, not twenty a second).
    pub(crate) fn failed(&mut self, e: &std::io::Error) {
        let reason = if is_fd_limit(e) { "fd-limit" } else { "other" };
        METRICS.accept_errors.with_label_values(&[self.direction, reason]).inc();
        if self.failing == 0 {
            tracing::warn!(
                direction = self.direction,
                error = %e,
                "accept failed; new connections wait in the backlog (retrying every {ACCEPT_BACKOFF:?})"
            );
        }
        self.failing += 1;
    }

    /// Notes an accept that worked, logging the end of a run of failures.
    pub(crate) fn accepted(&mut self) {
        if self.failing > 0 {
            tracing::info!(direction = self.direction, failures = self.failing, "accepting connections again");
            self.failing = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::io::Errno;

    #[test]
    fn only_running_out_of_descriptors_counts_as_the_fd_limit() {
        let cases = [
            (Errno::MFILE.raw_os_error(), true),
            (Errno::NFILE.raw_os_error(), true),
            (Errno::CONNABORTED.raw_os_error(), false),
            (Errno::NOBUFS.raw_os_error(), false),
        ];
        for (errno, limit) in cases {
            assert_eq!(is_fd_limit(&std::io::Error::from_raw_os_error(errno)), limit, "errno {errno}");
        }
        assert!(!is_fd_limit(&std::io::Error::other("no errno")));
    }

    #[test]
    fn a_run_of_failures_is_counted_each_time_and_ends_at_the_next_accept() {
        let counted = || METRICS.accept_errors.with_label_values(&["unit", "fd-limit"]).get();
        let mut errors = AcceptErrors::new("unit");
        for _ in 0..3 {
            errors.failed(&std::io::Error::from_raw_os_error(Errno::MFILE.raw_os_error()));
        }
        assert_eq!((errors.failing, counted()), (3, 3));
        errors.accepted();
        assert_eq!(errors.failing, 0);
    }
}
