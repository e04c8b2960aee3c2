//! `weft-proxy await -- CMD`: start-up ordering for apps and Jobs. Waits for the local proxy's
//! `/ready`, runs CMD, then asks the proxy to shut down so a Job's pod can finish. With no CMD
//! it only waits: the proxy's postStart hook when native sidecars are off, which holds the
//! app's containers back until the proxy is ready.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

/// Sends one HTTP/1.0 request to the admin port and returns the status code.
fn admin_request(admin: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Length: 0\r\n\r\n")?;
    let mut head = [0u8; 32];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected answer {line:?}")))
}

pub fn run(args: &[String]) -> ExitCode {
    let mut admin: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 4191));
    let mut timeout = Duration::from_secs(60);
    let mut it = args.iter();
    let mut cmd: Vec<String> = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--admin" => match it.next().and_then(|v| v.parse().ok()) {
                Some(v) => admin = v,
                None => return fail("--admin needs an address like 127.0.0.1:4191"),
            },
            "--timeout" => match it.next().map(|v| weft_api::duration::parse_duration(v)) {
                Some(Ok(v)) => timeout = v,
                _ => return fail("--timeout needs a duration like 60s"),
            },
            "--" => {
                cmd = it.by_ref().cloned().collect();
                break;
            }
            other => return fail(&format!("unknown argument {other:?}")),
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(200) = admin_request(admin, "GET", "/ready") {
            break;
        }
        if Instant::now() >= deadline {
            match cmd.first() {
                Some(c) => eprintln!(
                    "weft-proxy await: the proxy at {admin} was not ready within {timeout:?}; not running {c}"
                ),
                None => eprintln!("weft-proxy await: the proxy at {admin} was not ready within {timeout:?}"),
            }
            return ExitCode::from(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if cmd.is_empty() {
        return ExitCode::SUCCESS;
    }
    let status = Command::new(&cmd[0]).args(&cmd[1..]).status();
    if let Err(e) = admin_request(admin, "POST", "/shutdown") {
        eprintln!("weft-proxy await: could not ask the proxy to shut down: {e}");
    }
    match status {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("weft-proxy await: cannot run {}: {e}", cmd[0]);
            ExitCode::from(127)
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("weft-proxy await: {msg}");
    ExitCode::from(2)
}
