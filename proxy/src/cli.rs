//! The sidecar's command line, defined once: `weft-proxy …` parses it at top level and
//! `weft proxy …` as a subcommand, so both take the same flags with the same help and checks.
//!
//! Flags a container sets also read a `WEFT_PROXY_*` environment variable; a flag given on the
//! command line wins over its variable.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::await_cmd::AwaitArgs;
pub use crate::flags::{duration, parse_from, positive, socket_addr};
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
    pub(crate) config: Option<PathBuf>,
    /// Worker threads (default: the config's `workers`, else the CPUs this process may use)
    ///
    /// One current-thread runtime each.
    #[arg(long, value_name = "N", env = "WEFT_PROXY_WORKERS", value_parser = positive)]
    pub(crate) workers: Option<usize>,
    #[command(subcommand)]
    pub(crate) command: Option<ProxyCommand>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProxyCommand {
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
