//! Process shape: one single-threaded tokio runtime per worker thread (each with its own
//! listening sockets and connection pool, nothing shared on the request path but atomics and
//! the config pointer), plus a control thread for admin, signals, reloads and shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod reload;

use crate::config;
use crate::listeners::{self, Bound};
use crate::metrics::METRICS;
use crate::state::ProxyState;

/// How long the proxy must see no open connection before a drain counts as finished: a short
/// pause lets an app's last late call (one that starts right after another ends) still work.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// Runs the proxy from `config_path` until it is told to stop. Returns the process exit code.
pub(crate) fn run(config_path: PathBuf, workers_override: Option<usize>) -> i32 {
    crate::tls::install_default_provider();
    let (snapshot, bytes) = match config::load(&config_path, 1, None) {
        Ok(pair) => pair,
        Err(diags) => {
            eprintln!("{diags}");
            eprintln!("weft-proxy: {} is not a valid config; nothing was started", config_path.display());
            return 1;
        }
    };
    let log = match crate::logging::init(snapshot.proxy.log.format, &snapshot.proxy.log.level) {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("weft-proxy: {e}");
            return 1;
        }
    };
    crate::logging::ACCESS_LOG.store(snapshot.proxy.log.access_log, Ordering::Relaxed);
    let workers = workers_override.unwrap_or(match snapshot.proxy.workers {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n as usize,
    });
    let bound = match listeners::bind_all(&snapshot.proxy, workers) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let admin_addr = snapshot.proxy.admin.listen;
    let admin = match listeners::bind(admin_addr, 1) {
        Ok(mut l) => l.remove(0),
        Err(e) => {
            tracing::error!("cannot listen on {admin_addr} (admin): {e}");
            return 1;
        }
    };
    let grace = snapshot.proxy.shutdown_grace;
    tracing::info!(
        version = snapshot.version,
        workers,
        admin = %admin_addr,
        listeners = ?bound.iter().map(|b| format!("{} {}", b.side.direction(), b.addr)).collect::<Vec<_>>(),
        "weft-proxy {} starting",
        env!("CARGO_PKG_VERSION")
    );
    METRICS.config_version.set(snapshot.version as i64);
    let state = ProxyState::new(snapshot, config_path, log);
    spawn_workers(workers, bound, &state);

    let control = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the control runtime: {e}");
            return 1;
        }
    };
    control.block_on(control_loop(state, admin, bytes, grace))
}

fn spawn_workers(workers: usize, mut bound: Vec<Bound>, state: &Arc<ProxyState>) {
    for w in 0..workers {
        let mine: Vec<_> =
            bound.iter_mut().map(|b| (b.sockets.pop().expect("one socket per worker"), b.side.clone())).collect();
        let state = state.clone();
        std::thread::Builder::new()
            .name(format!("weft-worker-{w}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("worker runtime");
                rt.block_on(async move {
                    for (socket, side) in mine {
                        match tokio::net::TcpListener::from_std(socket) {
                            Ok(l) => {
                                tokio::spawn(listeners::accept_loop(l, side, state.clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "cannot register a listener with the runtime"),
                        }
                    }
                    let mut tick = tokio::time::interval(Duration::from_millis(500));
                    loop {
                        tick.tick().await;
                        crate::connect::sweep_idle();
                        crate::tls::connect::sweep();
                    }
                });
            })
            .expect("spawn worker thread");
    }
}

async fn control_loop(
    state: Arc<ProxyState>,
    admin: std::net::TcpListener,
    config_bytes: Vec<u8>,
    grace: Duration,
) -> i32 {
    match tokio::net::TcpListener::from_std(admin) {
        Ok(l) => {
            tokio::spawn(crate::admin::serve(l, state.clone()));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start the admin listener");
            return 1;
        }
    }
    tokio::spawn(reload::watch(state.clone(), config_bytes));
    crate::tls::start(&state);
    crate::discovery::start(&state);
    tokio::spawn(signals(state.clone()));
    let mut drain = state.drain_signal();
    let mut fatal = crate::state::FATAL.subscribe();
    while !*drain.borrow_and_update() {
        tokio::select! {
            changed = drain.changed() => if changed.is_err() { return 1 },
            _ = fatal.changed() => {
                if let Some(reason) = fatal.borrow().as_ref() {
                    eprintln!("weft-proxy: {reason}");
                }
                return 1;
            }
        }
    }
    let began = Instant::now();
    tracing::info!(grace = ?grace, "draining: /ready is 503; serving until connections close or the grace period ends");
    let mut quiet_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if began.elapsed() >= grace {
            tracing::warn!(
                open = state.open_connections.load(Ordering::Relaxed),
                "grace period over; exiting with connections open"
            );
            return 0;
        }
        if state.open_connections.load(Ordering::Relaxed) > 0 {
            quiet_since = None;
            continue;
        }
        let since = *quiet_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= DRAIN_QUIET {
            tracing::info!(after = ?began.elapsed(), "drained; exiting");
            return 0;
        }
    }
}

#[cfg(unix)]
async fn signals(state: Arc<ProxyState>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); state.start_drain(); }
            _ = int.recv() => { tracing::info!("SIGINT received"); state.start_drain(); }
            _ = hup.recv() => { tracing::info!("SIGHUP received; reloading config"); let _ = reload::reload(&state); }
        }
    }
}
