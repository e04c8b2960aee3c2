//! `weft-proxy` command line: run a sidecar from a config file, wait for one (`await`), or
//! program transparent mode's redirection (`init`). The flags are `weft_proxy::cli`'s.

use std::process::ExitCode;

use clap::Parser;
use weft_proxy::cli::ProxyCli;

#[derive(Parser)]
#[command(name = "weft-proxy")]
struct Cli {
    #[command(flatten)]
    proxy: ProxyCli,
}

fn main() -> ExitCode {
    weft_proxy::tls::install_default_provider();
    ExitCode::from(Cli::parse().proxy.run())
}
