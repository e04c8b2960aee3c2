//! Applies config file changes: the file's folder is watched (so the rename-into-place that
//! editors and Kubernetes ConfigMap volumes do is seen) and SIGHUP forces a reload. An invalid
//! file is rejected with every problem logged, and the running config stays.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use weft_api::Diagnostics;

use crate::metrics::METRICS;
use crate::state::ProxyState;

/// Loads the file again and swaps it in when valid. Returns the new version.
pub(super) fn reload(state: &ProxyState) -> Result<u64, Diagnostics> {
    let current = state.config.load_full();
    let next = crate::config::read_documents(&state.config_path)
        .and_then(|(docs, _)| state.layers.build_with_file(&state.config_path, docs, current.version + 1, &current));
    match next {
        Ok(snap) => {
            if snap.listen_addrs() != current.listen_addrs() {
                tracing::warn!("listener addresses changed in the config; they take effect after a restart");
            }
            if snap.proxy.tls != current.proxy.tls || snap.proxy.control_plane != current.proxy.control_plane {
                tracing::warn!(
                    "tls or controlPlane changed in the config; the identity source changes after a restart"
                );
            }
            crate::logging::ACCESS_LOG.store(snap.proxy.log.access_log, std::sync::atomic::Ordering::Relaxed);
            let version = snap.version;
            state.config.store(Arc::new(snap));
            METRICS.config_version.set(version as i64);
            tracing::info!(version, file = %state.config_path.display(), "config reloaded");
            Ok(version)
        }
        Err(diags) => {
            METRICS.config_reload_errors.inc();
            for d in &diags.0 {
                tracing::error!(problem = %d, "config update rejected; still serving version {}", current.version);
            }
            Err(diags)
        }
    }
}

/// Watches the config file's folder and reloads when the file's content changes.
pub(super) async fn watch(state: Arc<ProxyState>, mut last: Vec<u8>) {
    let path = state.config_path.clone();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only the config file itself, or Kubernetes' `..data` symlink swap, can change it: logs
        // or other files written next to it must not cost a read per write.
        let relevant = event.is_ok_and(|e| {
            e.paths.iter().any(|p| {
                p.file_name().is_some_and(|f| f == name.as_os_str() || f.as_encoded_bytes().starts_with(b".."))
            })
        });
        if relevant {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; use SIGHUP to reload");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the config folder; use SIGHUP to reload");
        return;
    }
    while rx.recv().await.is_some() {
        // Editors write in several steps; let them finish, then look once.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while rx.try_recv().is_ok() {}
        let Ok(now) = std::fs::read(&path) else { continue };
        if now == last {
            continue;
        }
        last = now;
        let _ = reload(&state);
    }
}
