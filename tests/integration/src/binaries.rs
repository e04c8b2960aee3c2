//! Locates the workspace's binaries, building them once per test process.
//!
//! `cargo test --workspace` builds test targets, not necessarily other packages' binaries, so
//! the first test that needs one runs `cargo build` for them into the same target directory and
//! profile that this test binary was built with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of the binary `name` (e.g. `weft-proxy`), built if needed.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let profile_dir = BUILT.get_or_init(build_binaries);
    let path = profile_dir.join(name);
    assert!(path.exists(), "binary {} was not built", path.display());
    path
}

/// The folder holding this test binary's profile outputs (`<target>/<profile>`).
///
/// Test executables live in `<target>/<profile>/deps/`, wherever `CARGO_TARGET_DIR` or
/// `--target-dir` put them, so the binaries built next to them match their profile; this
/// crate's own binaries (the soak) live in `<target>/<profile>/` itself.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let folder = exe.parent().expect("test executable has a folder");
    if folder.file_name().is_some_and(|n| n == "deps") {
        folder.parent().expect("deps folder has a parent").to_path_buf()
    } else {
        folder.to_path_buf()
    }
}

fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is <root>/tests/integration.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("workspace root above tests/integration")
        .to_path_buf()
}

fn build_binaries() -> PathBuf {
    let profile_dir = profile_dir();
    let target_dir = profile_dir.parent().expect("target folder").to_path_buf();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    // The variables cargo set for this test (CARGO_PKG_NAME=weft-integration…) would reach the
    // build scripts that watch them (ring's), which would then rerun and rebuild their crate
    // here and again in the next `cargo test`.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_CRATE_"].iter().any(|p| name.starts_with(p)) {
            command.env_remove(name.as_ref());
        }
    }
    let output = command
        .current_dir(workspace_root())
        .args(["build", "-p", "weft-proxy", "-p", "weft-control", "--bins"])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(&target_dir)
        .output()
        .expect("run cargo build for the weft binaries");
    assert!(
        output.status.success(),
        "cargo build of the weft binaries failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    profile_dir
}
