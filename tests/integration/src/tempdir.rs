//! A temporary folder removed on drop, so each test's config files and logs stay apart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), label)
    }

    /// A temp dir on memory-backed storage (`/dev/shm`) where the machine has it, as an
    /// identity folder should be; else in the usual temp folder.
    pub fn in_memory(label: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() { TempDir::new_in(shm, label) } else { TempDir::new(label) }
    }

    fn new_in(base: &Path, label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("weft-it-{label}-{}-{}-{nanos}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let path = base.join(name);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
