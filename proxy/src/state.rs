//! Process-wide proxy state shared by the listeners, the admin server and the config watcher.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Snapshot;
use crate::logging::LogHandle;

/// What every part of the running proxy shares: the config in effect (swapped whole on each
/// change), the layers it is built from, the drain signal and the open-connection count.
/// Created once at start and held in an `Arc` by every listener, connection and task.
pub(crate) struct ProxyState {
    pub config: ArcSwap<Snapshot>,
    pub config_path: PathBuf,
    /// The file and control-plane documents the config is built from.
    pub layers: crate::config::layer::Layers,
    /// Set at SIGTERM or `POST /shutdown`: `/ready` turns 503 and connections start closing.
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
    /// Open data-plane client connections (inbound + outbound), for the idle-exit check.
    pub open_connections: AtomicI64,
    pub log: Option<LogHandle>,
}

impl ProxyState {
    pub(crate) fn new(snapshot: Snapshot, config_path: PathBuf, log: Option<LogHandle>) -> Arc<ProxyState> {
        let (drain_tx, _) = watch::channel(false);
        Arc::new(ProxyState {
            config: ArcSwap::from_pointee(snapshot),
            config_path,
            layers: crate::config::layer::Layers::default(),
            draining: AtomicBool::new(false),
            drain_tx,
            open_connections: AtomicI64::new(0),
            log,
        })
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts draining (idempotent).
    pub(crate) fn start_drain(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            self.drain_tx.send_replace(true);
        }
    }

    /// Resolves when draining starts.
    pub(crate) fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }
}

/// A config that cannot work, found after start (a control plane whose certificate does not
/// verify): the proxy stops with status 1 and this reason rather than retry forever.
pub(crate) static FATAL: std::sync::LazyLock<tokio::sync::watch::Sender<Option<String>>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(None));

/// Stops the proxy with exit status 1, saying `reason`.
pub(crate) fn fatal(reason: String) {
    tracing::error!("{reason}; stopping");
    FATAL.send_replace(Some(reason));
}
