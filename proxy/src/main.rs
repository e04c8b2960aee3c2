//! `weft-proxy` command line: run a sidecar from a config file, or wait for one (`await`).

use std::path::PathBuf;
use std::process::ExitCode;

mod await_cmd;

const USAGE: &str = "\
weft-proxy: Weft's sidecar proxy

USAGE:
    weft-proxy --config FILE [--workers N]
        Run a sidecar from FILE (a Proxy document plus any Service, Route, TrafficPolicy,
        AuthorizationPolicy and Mesh documents). Relative paths in FILE resolve against its folder.
    weft-proxy await [--admin ADDR] [--timeout DURATION] [--keep-proxy-on-failure] [-- CMD [ARGS...]]
        Wait until the local proxy is ready (default admin 127.0.0.1:4191, timeout 60s), run CMD,
        then shut the proxy down when CMD exits. Exits with CMD's exit code (128 + N when signal
        N ended it); SIGTERM and SIGINT are passed on to CMD. --keep-proxy-on-failure shuts the
        proxy down only when CMD succeeds (restartPolicy OnFailure runs CMD again). With no CMD,
        only wait (exit 0 once ready, 1 at the timeout): the postStart hook `weft inject` adds.
    weft-proxy init --proxy-uid UID [--proxy-gid GID] [--inbound-port 4143] [--outbound-port 4140]
        [--admin-port 4191] [--skip-inbound-ports P,...] [--skip-outbound-ports P,...]
        [--skip-subnets CIDR,...] [--ipv6] [--mode auto|nft|legacy] [--cleanup] [--dry-run]
        Program (or remove) the nat redirection of transparent mode (see `weft-proxy init --help`).
    weft-proxy --version
";

fn main() -> ExitCode {
    weft_proxy::tls::install_default_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("await") => return await_cmd::run(&args[1..]),
        Some("init") => return ExitCode::from(weft_proxy::init::run(&args[1..])),
        Some("--version" | "-V") => {
            println!("weft-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some("--help" | "-h") | None => {
            print!("{USAGE}");
            return if args.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
        _ => {}
    }
    let mut config = None;
    let mut workers = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => config = it.next().map(PathBuf::from),
            "--workers" => match it.next().and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0) {
                Some(n) => workers = Some(n),
                None => return usage_error("--workers needs a positive number"),
            },
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }
    let Some(config) = config else {
        return usage_error("--config FILE is required");
    };
    match weft_proxy::runtime::run(config, workers) {
        0 => ExitCode::SUCCESS,
        code => ExitCode::from(code.clamp(1, 255) as u8),
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("weft-proxy: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}
