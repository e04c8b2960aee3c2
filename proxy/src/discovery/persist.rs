//! The last good control-plane layer on disk (`stateDir/control-plane.json`), so a proxy that
//! starts while its control plane is down serves what it last knew instead of nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::layer::ControlPlaneLayer;
use crate::state::ProxyState;

const FILE: &str = "control-plane.json";
/// Deltas are written at most this often; snapshots at once.
const DELTA_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `stateDir` in step with the applied layer without writing the whole layer for every
/// endpoint change: snapshots are written at once, deltas at most once a second (the client
/// calls [`Persister::flush`] when [`Persister::due`] comes and when a stream ends).
pub(crate) struct Persister {
    dir: Option<PathBuf>,
    last_write: Option<Instant>,
    dirty: bool,
}

impl Persister {
    pub(crate) fn new(state_dir: Option<&str>) -> Persister {
        Persister { dir: state_dir.map(PathBuf::from), last_write: None, dirty: false }
    }

    pub(crate) fn applied(&mut self, state: &ProxyState, snapshot: bool) {
        self.dirty = self.dir.is_some();
        if snapshot || self.last_write.is_none_or(|t| t.elapsed() >= DELTA_WRITE_INTERVAL) {
            self.flush(state);
        }
    }

    /// When unwritten changes should be written.
    pub(crate) fn due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_write.map_or_else(Instant::now, |t| t + DELTA_WRITE_INTERVAL))
    }

    pub(crate) fn flush(&mut self, state: &ProxyState) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        self.last_write = Some(Instant::now());
        if let (Some(dir), Some(layer)) = (&self.dir, state.layers.control_plane())
            && let Err(e) = save(dir, &layer)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot persist the control-plane config");
        }
    }
}

pub(crate) fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes the layer atomically: a temporary file, flushed to disk, renamed over the old one.
pub(crate) fn save(state_dir: &Path, layer: &ControlPlaneLayer) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(&mut f, layer)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path(state_dir))
}

/// The saved layer; `Ok(None)` when there is none yet.
pub(crate) fn load(state_dir: &Path) -> Result<Option<ControlPlaneLayer>, String> {
    let p = path(state_dir);
    match std::fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_and_reports_garbage() {
        let dir = std::env::temp_dir().join(format!("weft-persist-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir).unwrap(), None);
        let layer = ControlPlaneLayer { version: 42, ..ControlPlaneLayer::default() };
        save(&dir, &layer).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(layer));
        std::fs::write(path(&dir), b"{oops").unwrap();
        assert!(load(&dir).unwrap_err().contains("control-plane.json"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
