//! The `weft` command line: one clap definition for every subcommand, so `--help`, usage
//! errors (exit 2) and the shell completions all come from the same place. `weft proxy` is the
//! sidecar's own definition (`weft_proxy::cli`), the same as `weft-proxy`'s.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use crate::{ca, check, crds, demo, inject, serve, status};

/// Weft's control plane and CLI.
#[derive(Parser, Debug)]
#[command(name = "weft", version, arg_required_else_help = true, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  weft check PATH...             validate policy files before they are deployed
  weft serve --policy DIR        run the control plane (discovery 0.0.0.0:8086, admin 127.0.0.1:9990)
  weft proxy --config FILE       run a sidecar (the same as `weft-proxy --config FILE`)
  weft inject app.yaml | kubectl apply -f -
  weft completion bash > /etc/bash_completion.d/weft

Run `weft COMMAND --help` for a command's options.";

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a root CA, or issue a certificate by hand
    Ca(ca::cli::CaArgs),
    /// Validate policy files or folders; every problem as FILE:LINE: field.path: message
    Check(check::CheckArgs),
    /// Print the script that completes weft's commands and flags in a shell
    ///
    /// bash: `weft completion bash > /etc/bash_completion.d/weft`; zsh: into a folder of
    /// $fpath as `_weft`; fish: `weft completion fish > ~/.config/fish/completions/weft.fish`.
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the weft.dev CustomResourceDefinitions (or the editors' JSON Schema)
    Crds(crds::CrdsArgs),
    /// A local mesh on loopback: control plane, services each behind a sidecar, load, a failure
    /// absorbed
    Demo,
    /// Add Weft's init container and sidecar to Kubernetes manifests (stdin when no FILE)
    Inject(inject::InjectArgs),
    Proxy(weft_proxy::cli::ProxyCli),
    /// Run the control plane: policy, registry, discovery streams
    Serve(serve::ServeArgs),
    /// Proxies connected, the version each applied and its lag, registrations
    ///
    /// Shows the proxies connected to the control plane, the version each has applied and its
    /// lag, when its certificate expires (flagged when its renewal is overdue), and the
    /// registered instances of each service. `-o json` prints the admin API's /v1/status as is.
    Status(status::ViewArgs),
    /// Per service and route: request rate, success rate, p50/p95/p99 (no Prometheus needed)
    ///
    /// Golden metrics per direction, service and route over the last 30 s, summed over every
    /// proxy, from what the proxies report to the control plane every 2 s. `inbound` is what a
    /// service's sidecars served to it, `outbound` what its callers' sidecars sent.
    Stat(status::ViewArgs),
}

/// The shells `weft completion` writes for.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Cli {
    /// Runs the subcommand; returns the process's exit code.
    pub fn run(self) -> u8 {
        match self.command {
            Command::Ca(args) => ca::cli::run(args),
            Command::Check(args) => check::run(args),
            Command::Completion { shell } => {
                print!("{}", completion(shell));
                0
            }
            Command::Crds(args) => crds::run(args),
            Command::Demo => demo::run(),
            Command::Inject(args) => inject::run(args),
            Command::Proxy(args) => args.run(),
            Command::Serve(args) => serve::run(args),
            Command::Status(args) => status::run(args),
            Command::Stat(args) => status::run_stat(args),
        }
    }
}

fn completion(shell: Shell) -> String {
    let mut out = Vec::new();
    let mut command = Cli::command();
    match shell {
        Shell::Bash => clap_complete::generate(clap_complete::shells::Bash, &mut command, "weft", &mut out),
        Shell::Zsh => clap_complete::generate(clap_complete::shells::Zsh, &mut command, "weft", &mut out),
        Shell::Fish => clap_complete::generate(clap_complete::shells::Fish, &mut command, "weft", &mut out),
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
