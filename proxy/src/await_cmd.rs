//! `weft-proxy await -- CMD`: start-up and shut-down ordering for apps and Jobs. Waits for the
//! local proxy's `/ready`, runs CMD, then asks the proxy to shut down so a Job's pod can finish.
//! With no CMD it only waits: the proxy's postStart hook when native sidecars are off, which
//! holds the app's containers back until the proxy is ready.
//!
//! As a container's command (`weft inject` wraps a Job's command in it) it runs as PID 1, which
//! the kernel gives no default signal handling: SIGTERM and SIGINT are caught and passed on to
//! CMD, so `kubectl delete` stops the job as it would without the wrapper.

use std::io;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// When the proxy is asked to shut down after CMD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shutdown {
    /// Whatever CMD's outcome: its pod is done (restartPolicy Never).
    AfterExit,
    /// Only when CMD succeeded: after a failure the kubelet runs the container again
    /// (restartPolicy OnFailure), and the next try needs the proxy.
    AfterSuccess,
}

/// Wait until the local proxy is ready, run CMD, then shut the proxy down when CMD exits.
///
/// Exits with CMD's exit code (128 + N when signal N ended it); SIGTERM and SIGINT are passed
/// on to CMD. With no CMD, only wait (exit 0 once ready, 1 at the timeout): the postStart hook
/// `weft inject` adds.
#[derive(clap::Args, Debug, PartialEq)]
pub(crate) struct AwaitArgs {
    /// The proxy's admin address
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:4191", value_parser = crate::flags::socket_addr)]
    admin: SocketAddr,
    /// How long to wait for the proxy's /ready
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::flags::duration)]
    timeout: Duration,
    /// Shut the proxy down only when CMD succeeds (restartPolicy OnFailure runs CMD again)
    #[arg(long)]
    keep_proxy_on_failure: bool,
    /// The command to run once the proxy is ready, with its arguments
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

impl AwaitArgs {
    fn shutdown(&self) -> Shutdown {
        if self.keep_proxy_on_failure { Shutdown::AfterSuccess } else { Shutdown::AfterExit }
    }
}

/// CMD's exit code, or 128 + the signal that ended it, as a shell reports it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

fn shutdown_wanted(shutdown: Shutdown, code: u8) -> bool {
    shutdown == Shutdown::AfterExit || code == 0
}

/// Runs `weft-proxy await`; returns the process exit code.
pub(crate) fn run(options: AwaitArgs) -> u8 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run_with(options)),
        Err(e) => {
            eprintln!("weft-proxy await: cannot start: {e}");
            1
        }
    }
}

async fn run_with(o: AwaitArgs) -> u8 {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("weft-proxy await: cannot handle signals: {e}");
            return 1;
        }
    };
    let admin = o.admin;
    let not_running = o.cmd.first().map(|c| format!("; not running {c}")).unwrap_or_default();
    tokio::select! {
        ready = tokio::time::timeout(o.timeout, wait_ready(admin)) => if ready.is_err() {
            eprintln!("weft-proxy await: the proxy at {admin} was not ready within {:?}{not_running}", o.timeout);
            return 1;
        },
        caught = signals.recv() => {
            eprintln!("weft-proxy await: {} before the proxy at {admin} was ready{not_running}", caught.name());
            return caught.exit_code();
        }
    }
    let Some((program, args)) = o.cmd.split_first() else { return 0 };
    let code = match Command::new(program).args(args).spawn() {
        Ok(child) => supervise(child, &mut signals).await,
        Err(e) => {
            eprintln!("weft-proxy await: cannot run {program}: {e}");
            127
        }
    };
    if shutdown_wanted(o.shutdown(), code) {
        if let Err(e) = admin_request(admin, "POST", "/shutdown").await {
            eprintln!("weft-proxy await: could not ask the proxy to shut down: {e}");
        }
    } else {
        eprintln!("weft-proxy await: {program} exited with {code}; the proxy keeps running for the next try");
    }
    code
}

/// Waits for CMD, passing on the signals this process receives.
async fn supervise(mut child: Child, signals: &mut Signals) -> u8 {
    loop {
        tokio::select! {
            status = child.wait() => return match status {
                Ok(s) => exit_code(s),
                Err(e) => {
                    eprintln!("weft-proxy await: lost track of the command: {e}");
                    1
                }
            },
            caught = signals.recv() => forward(&child, caught),
        }
    }
}

/// Sends `caught` on to the child. `id()` is `None` once the child has been reaped, so a pid that
/// may already belong to another process is never signalled; until then the pid stays the
/// child's, even as a zombie.
fn forward(child: &Child, caught: Caught) {
    let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()).and_then(rustix::process::Pid::from_raw) else {
        return;
    };
    let sig = match caught {
        Caught::Term => rustix::process::Signal::Term,
        Caught::Interrupt => rustix::process::Signal::Int,
    };
    match rustix::process::kill_process(pid, sig) {
        Ok(()) => eprintln!("weft-proxy await: {} passed on to the command", caught.name()),
        Err(e) => eprintln!("weft-proxy await: could not pass {} on to the command: {e}", caught.name()),
    }
}

#[derive(Clone, Copy, Debug)]
enum Caught {
    Term,
    Interrupt,
}

impl Caught {
    fn name(self) -> &'static str {
        match self {
            Caught::Term => "SIGTERM",
            Caught::Interrupt => "SIGINT",
        }
    }

    /// What a shell reports for a process the signal ended.
    fn exit_code(self) -> u8 {
        match self {
            Caught::Term => 128 + 15,
            Caught::Interrupt => 128 + 2,
        }
    }
}

/// SIGTERM and SIGINT, caught from the start: before CMD runs they end the wait.
struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> io::Result<Signals> {
        Ok(Signals { term: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) -> Caught {
        tokio::select! {
            Some(()) = self.term.recv() => Caught::Term,
            Some(()) = self.interrupt.recv() => Caught::Interrupt,
            else => std::future::pending().await,
        }
    }
}

/// Polls `/ready` until it answers 200.
async fn wait_ready(admin: SocketAddr) {
    loop {
        if let Ok(200) = admin_request(admin, "GET", "/ready").await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one HTTP/1.0 request to the admin port and returns the status code.
async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> io::Result<u16> {
    let exchange = async {
        let mut s = TcpStream::connect(admin).await?;
        s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: {admin}\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .await?;
        let mut head = [0u8; 32];
        let n = s.read(&mut head).await?;
        let line = String::from_utf8_lossy(&head[..n]);
        line.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected answer {line:?}")))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer within 2s")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<AwaitArgs, String> {
        let args: Vec<&str> = args.split_whitespace().collect();
        crate::flags::parse_from::<AwaitArgs>("await", &args).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_and_the_command_after_the_separator() {
        let o = parse("--admin 127.0.0.1:5191 --timeout 2m --keep-proxy-on-failure -- report --since 24h").unwrap();
        assert_eq!(o.admin, "127.0.0.1:5191".parse().unwrap());
        assert_eq!((o.timeout, o.shutdown()), (Duration::from_secs(120), Shutdown::AfterSuccess));
        assert_eq!(o.cmd, ["report", "--since", "24h"], "flags after -- belong to the command");
        let o = parse("").unwrap();
        assert_eq!(
            (o.admin.port(), o.timeout, o.shutdown(), o.cmd.len()),
            (4191, Duration::from_secs(60), Shutdown::AfterExit, 0)
        );
        let err = parse("--admin localhost").unwrap_err();
        assert!(err.contains("--admin") && err.contains("an IP:PORT address"), "{err}");
        assert!(parse("--timeout soon").unwrap_err().contains("--timeout"));
        assert!(parse("report").unwrap_err().contains("unexpected argument 'report'"));
    }

    #[test]
    fn the_exit_code_is_the_commands_or_128_plus_its_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143, "killed by SIGTERM");
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137, "killed by SIGKILL");
    }

    #[test]
    fn the_proxy_outlives_a_failed_try_only_when_asked() {
        let cases = [
            (Shutdown::AfterExit, 0, true),
            (Shutdown::AfterExit, 3, true),
            (Shutdown::AfterSuccess, 0, true),
            (Shutdown::AfterSuccess, 3, false),
            (Shutdown::AfterSuccess, 143, false),
        ];
        for (shutdown, code, want) in cases {
            assert_eq!(shutdown_wanted(shutdown, code), want, "{shutdown:?} after {code}");
        }
    }
}
