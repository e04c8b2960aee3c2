//! Turns marked YAML nodes into policy documents, collecting every error with line and field path.

use crate::{Diagnostics, Document};

pub fn decode_documents(_file: &str, _text: &str) -> Result<Vec<Document>, Diagnostics> {
    Ok(Vec::new())
}
