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
pub mod schema;
pub mod spiffe;
pub mod validate;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use policy::*;
pub use spiffe::{SpiffeId, SpiffeIdError};

/// Parses and validates one file deployed on its own (the file of `weft-proxy --config`):
/// [`check_files`] for that one file. `file` is only used in diagnostics.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Document>, Diagnostics> {
    let (mut files, problems) = check_files(&[(file.to_string(), text.to_string())]);
    match problems.is_empty() {
        true => Ok(files.pop().map(|(_, docs)| docs).unwrap_or_default()),
        false => Err(Diagnostics(problems)),
    }
}

/// Decodes and validates files deployed together: the one check behind `weft check`,
/// `weft serve`'s policy folder and `weft-proxy --config`, so all three accept the same files.
///
/// Returns what each file declares (best effort: a broken document keeps its defaults) and
/// every problem, by file in the given order, then by line. Per-file value rules run only on
/// files that decoded cleanly (decoding swaps bad values for defaults, and checking those
/// would report what the user did not write); the rules across documents run on everything,
/// except that a reference is not reported as dangling when a file that did not decode
/// completely mentions the name: that file may well declare it.
pub fn check_files(files: &[(String, String)]) -> (Vec<(String, Vec<Document>)>, Vec<Diagnostic>) {
    let mut problems = Vec::new();
    let mut set = Vec::new();
    let mut unread = Vec::new();
    for (name, text) in files {
        let decoded = decode::decode_file(name, text);
        if decoded.problems.is_empty() {
            problems
                .extend(validate::validate_documents(name, &decoded.documents).err().map(|d| d.0).unwrap_or_default());
        } else {
            problems.extend(decoded.problems.0);
        }
        if !decoded.complete {
            unread.push(validate::Unread { file: name, text });
        }
        set.push((name.clone(), decoded.documents));
    }
    let borrowed: Vec<(&str, &[Document])> = set.iter().map(|(f, docs)| (f.as_str(), docs.as_slice())).collect();
    let check = validate::SetCheck { files: &borrowed, unread: &unread };
    problems.extend(check.run().err().map(|d| d.0).unwrap_or_default());
    let rank = |d: &Diagnostic| files.iter().position(|(f, _)| *f == d.file).unwrap_or(usize::MAX);
    problems.sort_by_key(|d| (rank(d), d.line));
    (set, problems)
}
