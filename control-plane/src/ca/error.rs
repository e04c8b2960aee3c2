//! Everything the CA can refuse or fail at, each message saying what to do about it.

use std::io;
use std::path::PathBuf;

/// Why the CA could not load, issue or sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    InvalidSpiffeId(#[from] weft_api::SpiffeIdError),

    #[error("cannot read {path}: {source}{hint}", path = path.display())]
    Read { path: PathBuf, source: io::Error, hint: &'static str },

    #[error("cannot write {path}: {source}", path = path.display())]
    Write { path: PathBuf, source: io::Error },

    #[error("{} already exist(s); pass --force to replace", list(paths))]
    Exists { paths: Vec<PathBuf> },

    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: String, reason: String },

    #[error("{what} holds no certificate (no -----BEGIN CERTIFICATE----- block)")]
    NoCertificate { what: String },

    #[error("cannot use the CA key in {what}: {reason}; it must be a PKCS#8 PEM private key (BEGIN PRIVATE KEY)")]
    Key { what: String, reason: String },

    #[error("{what} is not a usable CA certificate: {reason}")]
    NotACa { what: String, reason: String },

    #[error(
        "the CA key does not belong to the CA certificate: the key file must hold the private key of the \
         first certificate in {what}"
    )]
    KeyMismatch { what: String },

    #[error("the CA certificate expired at {not_after}; create a new CA and rotate the trust bundle")]
    CaExpired { not_after: String },

    #[error("the certificate signing request is unusable: {reason}")]
    BadCsr { reason: String },

    #[error(
        "the certificate signing request asks for {requested}, but this caller may only have {expected}; \
         request exactly that URI SAN and no other name"
    )]
    CsrIdentityMismatch { expected: String, requested: String },

    #[error("a certificate lifetime must be longer than zero")]
    ZeroTtl,

    #[error(
        "the join token is not known to this CA; check the proxy's joinTokenFile against the CA's token file \
         (a service-account token is checked only by `weft serve --kubernetes`)"
    )]
    UnknownToken,

    #[error("{path}:{line}: {reason}; each line is `<token> <spiffe-id>`", path = path.display())]
    TokenFile { path: PathBuf, line: usize, reason: String },

    #[error("the system random number generator failed; the CA cannot make serial numbers without it")]
    Random,

    #[error("cannot build the certificate: {0}")]
    Build(#[from] rcgen::Error),
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
