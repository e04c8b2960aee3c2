//! Retry decisions: the retry budget and jittered exponential backoff.
//!
//! The request path deposits once per original request and withdraws before each retry, so
//! retries stay a bounded share of traffic and can never multiply an outage; between tries it
//! waits [`backoff`].

mod backoff;
mod budget;

pub(crate) use backoff::backoff;
pub(crate) use budget::RetryBudget;
