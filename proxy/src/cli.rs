//! The sidecar's command line, defined once: `weft-proxy …` parses it at top level and
//! `weft proxy …` as a subcommand, so both take the same flags with the same help and checks.
//!
//! Flags a container sets also read a `WEFT_PROXY_*` environment variable; a flag given on the
//! command line wins over its variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches, Subcommand};

use crate::await_cmd::AwaitArgs;
use crate::init::options::InitArgs;

/// Weft's sidecar proxy.
///
/// Runs a sidecar from a config file, waits for one (`await`), or programs the nat redirection
/// of transparent mode (`init`). `weft-proxy` and `weft proxy` take the same flags.
#[derive(Args, Debug)]
#[command(version, arg_required_else_help = true, subcommand_negates_reqs = true)]
pub struct ProxyCli {
    /// The config file: a Proxy document plus any other kinds
    ///
    /// A Proxy document plus any Service, Route, TrafficPolicy, AuthorizationPolicy and Mesh
    /// documents; relative paths in it resolve against its folder.
    #[arg(short, long, value_name = "FILE", env = "WEFT_PROXY_CONFIG", required = true)]
    pub config: Option<PathBuf>,
    /// Worker threads (default: the config's `workers`, else the CPUs this process may use)
    ///
    /// One current-thread runtime each.
    #[arg(long, value_name = "N", env = "WEFT_PROXY_WORKERS", value_parser = positive)]
    pub workers: Option<usize>,
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,
}

#[derive(Subcommand, Debug)]
pub enum ProxyCommand {
    Await(AwaitArgs),
    Init(InitArgs),
}

impl ProxyCli {
    /// Runs what the command line asks for; returns the process's exit code.
    pub fn run(self) -> u8 {
        match (self.command, self.config) {
            (Some(ProxyCommand::Await(args)), _) => crate::await_cmd::run(args),
            (Some(ProxyCommand::Init(args)), _) => crate::init::run(args),
            (None, Some(config)) => match crate::runtime::run(config, self.workers) {
                0 => 0,
                code => code.clamp(1, 255) as u8,
            },
            // clap requires --config when there is no subcommand.
            (None, None) => 2,
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ProxyCli, String> {
        parse_from::<ProxyCli>("weft-proxy", args).map_err(|e| e.to_string())
    }

    #[test]
    fn config_and_workers_in_any_order() {
        for args in [["--config", "p.yaml", "--workers", "3"], ["--workers", "3", "-c", "p.yaml"]] {
            let cli = parse(&args).unwrap();
            assert_eq!((cli.config.unwrap(), cli.workers), (PathBuf::from("p.yaml"), Some(3)));
        }
        let cli = parse(&["--config=p.yaml"]).unwrap();
        assert_eq!((cli.config.unwrap(), cli.workers), (PathBuf::from("p.yaml"), None));
    }

    #[test]
    fn usage_errors_name_the_flag() {
        for workers in ["0", "many"] {
            let err = parse(&["--config", "p.yaml", "--workers", workers]).unwrap_err();
            assert!(err.contains("--workers") && err.contains("a count above 0"), "{err}");
        }
        assert!(parse(&["--workers", "2"]).unwrap_err().contains("--config"));
        assert!(parse(&["--config", "p.yaml", "--bogus"]).unwrap_err().contains("--bogus"));
    }

    #[test]
    fn a_subcommand_needs_no_config() {
        let cli = parse(&["init", "--cleanup"]).unwrap();
        assert!(matches!(cli.command, Some(ProxyCommand::Init(_))));
        let cli = parse(&["await", "--", "true"]).unwrap();
        assert!(matches!(cli.command, Some(ProxyCommand::Await(_))));
    }
}
