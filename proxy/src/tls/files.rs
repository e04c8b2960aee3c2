//! Static identity from `tls: {certFile, keyFile, bundleFile}`: loaded at start, then the files
//! are polled and a changed set is swapped in. A set that does not load (unreadable, half
//! written, key not matching) is logged and the last good identity keeps serving.

use std::time::Duration;

use weft_api::TlsFiles;

use super::{MeshTls, TlsError};

/// Polling catches every way files get replaced (editors, `mv`, Kubernetes secret symlink
/// swaps) for the cost of three small reads.
const POLL: Duration = Duration::from_millis(500);

pub(crate) async fn watch(files: TlsFiles) {
    let mut last: Option<[Vec<u8>; 3]> = None;
    let mut last_error: Option<String> = None;
    loop {
        match read(&files) {
            Ok(now) if last.as_ref() != Some(&now) => {
                match MeshTls::from_pem(&now[0], &now[1], &now[2], &files.cert_file) {
                    Ok(tls) => {
                        super::install(tls);
                        last_error = None;
                    }
                    Err(e) => report(&mut last_error, e),
                }
                // A broken set is not retried until the files change again.
                last = Some(now);
            }
            Ok(_) => {}
            Err(e) => report(&mut last_error, e),
        }
        tokio::time::sleep(POLL).await;
    }
}

fn report(last_error: &mut Option<String>, e: TlsError) {
    let text = e.to_string();
    if last_error.as_deref() != Some(&text) {
        if super::current().is_some() {
            tracing::error!(error = %text, "identity files not reloaded; still serving with the last good identity");
        } else {
            tracing::error!(error = %text, "no identity yet: /ready stays 503 until the tls files load");
        }
        *last_error = Some(text);
    }
}

fn read(files: &TlsFiles) -> Result<[Vec<u8>; 3], TlsError> {
    let one = |path: &String| std::fs::read(path).map_err(|source| TlsError::Read { what: path.clone(), source });
    Ok([one(&files.cert_file)?, one(&files.key_file)?, one(&files.bundle_file)?])
}
