//! Pieces every command line shares (`weft-proxy`, its `init` and `await`, and the control
//! plane's): value parsers that say what they want, and parsing one command's flags in tests.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, FromArgMatches};

/// Parses `args` (without a program name) as the flags of one command named `name`: how unit
/// tests read a command's flags without a binary.
pub fn parse_from<A: Args + FromArgMatches>(name: &'static str, args: &[&str]) -> Result<A, clap::Error> {
    let mut command = A::augment_args(clap::Command::new(name).no_binary_name(true));
    let matches = command.try_get_matches_from_mut(args)?;
    A::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

/// A value parser for durations in the policy's syntax (`250ms`, `2s`, `1h`).
pub fn duration(s: &str) -> Result<Duration, String> {
    weft_api::duration::parse_duration(s)
}

/// A value parser for `IP:PORT` addresses that says what it wants.
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| "expected an IP:PORT address like 127.0.0.1:4191".to_string())
}

/// A value parser for counts above zero.
pub fn positive(s: &str) -> Result<usize, String> {
    s.parse().ok().filter(|n| *n > 0).ok_or_else(|| "expected a count above 0".to_string())
}
