//! Retry decisions: the retry budget and jittered exponential backoff.
