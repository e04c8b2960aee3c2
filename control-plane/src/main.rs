//! `weft` binary entry point: parses the command line (`weft_control::cli`) and exits with the
//! subcommand's status; usage errors exit 2.

use std::process::ExitCode;

use clap::Parser;
use weft_control::cli::Cli;

fn main() -> ExitCode {
    weft_proxy::tls::install_default_provider();
    ExitCode::from(Cli::parse().run())
}
