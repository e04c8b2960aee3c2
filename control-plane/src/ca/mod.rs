//! The mesh CA: a root (made here or the operator's), certificates issued by hand
//! (`weft ca issue`), and the CSR signing that `weft serve` offers to proxies, whose
//! credential is a join token or (with `--kubernetes`) a reviewed service-account token.

use std::path::Path;

mod authority;
pub mod cli;
mod error;
pub mod http;
mod issuer;
pub mod token_review;

pub use authority::{Authority, CA_CERT_FILE, CA_KEY_FILE, Issued, TRUST_BUNDLE_FILE, pem_block, pem_certificates};
pub use error::CaError;
pub use issuer::{Issuer, JoinTokens};
pub use token_review::{TOKEN_AUDIENCE, TokenReviewer};

/// Writes `text` to `path`; a private key is created readable by its owner only.
pub fn write_file(path: &Path, text: &str, private: bool) -> Result<(), CaError> {
    let err = |source| CaError::Write { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    let mut file = options.open(path).map_err(err)?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(err)
}
