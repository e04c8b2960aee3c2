//! `weft` binary entry point: picks the subcommand and exits with its status.

use std::process::ExitCode;

const USAGE: &str = "\
Usage: weft COMMAND [ARGS...]

Commands:
  ca init|issue   make a root CA, or issue a certificate by hand
  check PATH...   validate policy files or folders; every problem as FILE:LINE: field.path: message
  crds [--json-schema]  print the weft.dev CustomResourceDefinitions (or the editors' JSON Schema)
  inject [FILE...]  add Weft's init container and sidecar to Kubernetes manifests (stdin when no FILE)
  demo            a local mesh on loopback: control plane, services each behind a sidecar, load, a failure absorbed
  proxy ARGS...   run the sidecar proxy (the same as `weft-proxy ARGS...`)
  serve [OPTS]    run the control plane: policy, registry, discovery streams
  status [OPTS]   proxies connected, the version each applied and its lag, registrations
  stat [OPTS]     per service and route: request rate, success rate, p50/p95/p99 (no Prometheus needed)

Run `weft COMMAND --help` for a command's options.
";

fn main() -> ExitCode {
    weft_proxy::tls::install_default_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = match args.first().map(String::as_str) {
        Some("ca") => weft_control::ca::cli::run(&args[1..]),
        Some("check") => weft_control::check::run(&args[1..]),
        Some("crds") => weft_control::crds::run(&args[1..]),
        Some("demo") => weft_control::demo::run(&args[1..]),
        Some("inject") => weft_control::inject::run(&args[1..]),
        Some("proxy") => return proxy(&args[1..]),
        Some("serve") => weft_control::serve::run(&args[1..]),
        Some("status") => weft_control::status::run(&args[1..]),
        Some("stat") => weft_control::status::run_stat(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            0
        }
        Some("-V" | "--version") => {
            println!("weft {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some(other) => {
            eprintln!("weft: unknown command {other:?}\n\n{USAGE}");
            2
        }
        None => {
            eprint!("{USAGE}");
            2
        }
    };
    ExitCode::from(status)
}

/// `weft proxy --config FILE` (or `weft proxy init …`): the sidecar from the same binary, so
/// the demo and an image need one build.
fn proxy(args: &[String]) -> ExitCode {
    if args.first().is_some_and(|a| a == "init") {
        return ExitCode::from(weft_proxy::init::run(&args[1..]));
    }
    let (config, workers) = match args {
        [flag, file] if flag == "--config" => (file, None),
        [flag, file, w, n] if flag == "--config" && w == "--workers" => match n.parse() {
            Ok(n) => (file, Some(n)),
            Err(_) => {
                eprintln!("weft proxy: --workers needs a number");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: weft proxy --config FILE [--workers N]");
            return ExitCode::from(2);
        }
    };
    match weft_proxy::runtime::run(config.into(), workers) {
        0 => ExitCode::SUCCESS,
        code => ExitCode::from(code.clamp(1, 255) as u8),
    }
}
