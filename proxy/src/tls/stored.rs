//! The identity folder (`identityDir`): the key and certificate from the control plane kept
//! while valid, so a proxy restarted during a control-plane outage serves at once. Files are
//! 0600 in a 0700 folder, written whole (temp file, then rename). The folder belongs on
//! memory-backed storage (tmpfs, an `emptyDir` with `medium: Memory`): a start on anything
//! else says so in the log.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::SystemTime;

use weft_api::SpiffeId;

use super::MeshTls;

const CERT: &str = "cert.pem";
const KEY: &str = "key.pem";
const BUNDLE: &str = "bundle.pem";

/// The PEM text of one identity, as the control plane handed it over.
pub(crate) struct IdentityPem {
    pub chain: String,
    pub key: String,
    pub bundle: String,
}

/// A kept identity that can serve now: it parses, is `expected`, and has not expired. Also
/// returns when it was written (the moment it was received), from which renewal is timed.
/// `Ok(None)`: nothing kept yet.
pub(crate) fn load(dir: &Path, expected: &SpiffeId) -> Result<Option<(MeshTls, SystemTime)>, String> {
    let cert_path = dir.join(CERT);
    let chain = match std::fs::read(&cert_path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", cert_path.display())),
    };
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("cannot read {name}: {e}"));
    let (key, bundle) = (read(KEY)?, read(BUNDLE)?);
    let tls = MeshTls::from_pem(&chain, &key, &bundle, &dir.display().to_string()).map_err(|e| e.to_string())?;
    if tls.id != *expected {
        return Err(format!("it is for {}, but this proxy is {expected}", tls.id));
    }
    if tls.not_after <= SystemTime::now() {
        return Err("its certificate has expired".to_string());
    }
    let written = std::fs::metadata(&cert_path).and_then(|m| m.modified()).unwrap_or(tls.not_before);
    Ok(Some((tls, written.min(SystemTime::now()))))
}

/// Keeps `pem` in `dir` (created 0700), each file 0600 and replaced whole.
pub(crate) fn save(dir: &Path, pem: &IdentityPem) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    // The key first and the certificate last: a load that sees the new certificate sees its key.
    for (name, text) in [(KEY, &pem.key), (BUNDLE, &pem.bundle), (CERT, &pem.chain)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

/// The filesystem type `path` lives on (or will, once created: its nearest existing
/// ancestor's), from /proc/self/mountinfo (the longest mount point that contains it); None
/// when that cannot be told.
pub(crate) fn filesystem_of(path: &Path) -> Option<String> {
    let path = path.ancestors().find_map(|p| std::fs::canonicalize(p).ok())?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        // `id parent major:minor root mountpoint options [optional…] - fstype source options`
        let mut fields = line.split(' ');
        let mount = fields.nth(4)?;
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
        let mount = mount.replace("\\040", " ");
        if path.starts_with(&mount) && best.as_ref().is_none_or(|(len, _)| mount.len() >= *len) {
            best = Some((mount.len(), fstype.to_string()));
        }
    }
    best.map(|(_, t)| t)
}

/// Whether `fstype` keeps data in memory only.
pub(crate) fn memory_backed(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "ramfs")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn identity(uri: &str) -> IdentityPem {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.to_string().try_into().unwrap())];
        let cert = params.self_signed(&key).unwrap().pem();
        IdentityPem { chain: cert.clone(), key: key.serialize_pem(), bundle: cert }
    }

    #[test]
    fn kept_identity_round_trips_private_and_only_for_its_owner() {
        let dir = std::env::temp_dir().join(format!("weft-stored-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        assert!(load(&dir, &id).unwrap().is_none(), "nothing kept yet");
        save(&dir, &identity(&id.to_string())).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in [CERT, KEY, BUNDLE] {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
        let (tls, written) = load(&dir, &id).unwrap().expect("kept");
        assert_eq!(tls.id, id);
        assert!(written <= SystemTime::now());
        let other = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/other").unwrap();
        assert!(load(&dir, &other).err().unwrap().contains("but this proxy is"));
        std::fs::write(dir.join(KEY), "garbage").unwrap();
        assert!(load(&dir, &id).is_err(), "a broken key is refused, not installed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tells_memory_backed_storage_apart() {
        assert_eq!(filesystem_of(Path::new("/proc")).as_deref(), Some("proc"));
        // A folder not made yet is judged by where it will be made.
        assert_eq!(filesystem_of(Path::new("/proc/weft-not-there/identity")).as_deref(), Some("proc"));
        assert!(memory_backed("tmpfs") && !memory_backed("ext4") && !memory_backed("overlay"));
    }
}
