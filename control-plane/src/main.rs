//! `weft` binary entry point: picks the subcommand and exits with its status.

use std::process::ExitCode;

const USAGE: &str = "\
Usage: weft COMMAND [ARGS...]

Commands:
  check PATH...   validate policy files or folders; every problem as FILE:LINE: field.path: message

Run `weft COMMAND --help` for a command's options.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = match args.first().map(String::as_str) {
        Some("check") => weft_control::check::run(&args[1..]),
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
