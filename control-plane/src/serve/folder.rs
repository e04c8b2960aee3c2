//! A watched folder of YAML documents: loaded whole (every file checked as one set, the way
//! `weft check` does) and loaded again whenever anything in it changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use weft_api::{Diagnostic, Document};

/// Every document of every file under `dir`, or every problem found (`FILE:LINE: path: msg`).
pub fn load(dir: &Path) -> Result<Vec<(String, Vec<Document>)>, Vec<Diagnostic>> {
    let report = crate::check::check_paths(&[dir.to_path_buf()]);
    if report.problems.is_empty() { Ok(report.set) } else { Err(report.problems) }
}

/// Calls `on_change` (from a blocking thread) after each burst of changes under `dir`.
/// Returns once the watch is set up; the watch lives as long as the process.
pub fn watch(dir: PathBuf, on_change: impl Fn() + Send + 'static) -> Result<(), String> {
    watch_with(dir, RecursiveMode::Recursive, on_change)
}

/// Calls `on_change` after each burst of changes to `file`, seen through its folder (so the
/// atomic renames editors and ConfigMap volumes make are seen too).
pub fn watch_file(file: &Path, on_change: impl Fn() + Send + 'static) -> Result<(), String> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    watch_with(dir, RecursiveMode::NonRecursive, on_change)
}

fn watch_with(dir: PathBuf, mode: RecursiveMode, on_change: impl Fn() + Send + 'static) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher.watch(&dir, mode).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    std::thread::Builder::new()
        .name("weft-folder-watch".into())
        .spawn(move || {
            let _watcher = watcher;
            while rx.recv().is_ok() {
                // Editors and ConfigMap updates write in several steps; let them finish.
                std::thread::sleep(Duration::from_millis(100));
                while rx.try_recv().is_ok() {}
                on_change();
            }
        })
        .map_err(|e| format!("cannot start the folder watch thread: {e}"))?;
    Ok(())
}
