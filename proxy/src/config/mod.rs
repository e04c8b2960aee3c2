//! Where the proxy's configuration comes from: the YAML file (watched), compiled into
//! snapshots that the data path reads through arc-swap; `layer` puts the control plane's
//! documents on top of the file's.

pub mod layer;
pub mod snapshot;

use std::path::{Path, PathBuf};

use weft_api::{Diagnostics, Document};

pub use snapshot::Snapshot;

/// Reads and parses the config file. Relative paths inside it resolve against its folder.
pub fn read_documents(path: &Path) -> Result<(Vec<Document>, Vec<u8>), Diagnostics> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(&file, 0, "", format!("cannot read config file: {e}"));
        d
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let mut d = Diagnostics::default();
        d.push(&file, 0, "", format!("config file is not UTF-8: {e}"));
        d
    })?;
    let mut docs = weft_api::parse_file(&file, text)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    for doc in &mut docs {
        if let Document::Proxy(p) = doc {
            resolve_paths(&mut p.spec, &base);
        }
    }
    Ok((docs, bytes))
}

fn resolve(base: &Path, p: &mut String) {
    let path = PathBuf::from(&*p);
    if path.is_relative() {
        *p = base.join(path).display().to_string();
    }
}

fn resolve_paths(spec: &mut weft_api::ProxySpec, base: &Path) {
    if let Some(tls) = &mut spec.tls {
        resolve(base, &mut tls.cert_file);
        resolve(base, &mut tls.key_file);
        resolve(base, &mut tls.bundle_file);
    }
    if let Some(cp) = &mut spec.control_plane {
        for file in [&mut cp.join_token_file, &mut cp.service_account_token_file, &mut cp.trust_bundle_file]
            .into_iter()
            .flatten()
        {
            resolve(base, file);
        }
    }
    for dir in [&mut spec.state_dir, &mut spec.identity_dir].into_iter().flatten() {
        resolve(base, dir);
    }
}

/// Reads, parses and compiles the file into the next snapshot.
pub fn load(path: &Path, version: u64, prev: Option<&Snapshot>) -> Result<(Snapshot, Vec<u8>), Diagnostics> {
    let (docs, bytes) = read_documents(path)?;
    let docs = layer::merge(&docs, None);
    let snap = Snapshot::build(docs, &path.display().to_string(), version, prev)?;
    Ok((snap, bytes))
}
