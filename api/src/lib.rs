//! Weft's operator-facing policy types, their YAML decoding with file:line diagnostics, validation,
//! and the discovery wire types the control plane and proxies exchange.
//!
//! No I/O happens here: callers hand in text and a file name, and get typed documents or every
//! problem found, each with the line and field path that caused it.
#![forbid(unsafe_code)]

pub mod decode;
pub mod diagnostic;
pub mod discovery;
pub mod duration;
pub mod policy;
pub mod spiffe;
pub mod validate;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use policy::*;
pub use spiffe::{SpiffeId, SpiffeIdError};

/// Parses and validates every document in `text` (one file). `file` is only used in diagnostics.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Document>, Diagnostics> {
    let docs = decode::decode_documents(file, text)?;
    validate::validate_documents(file, &docs)?;
    Ok(docs)
}
