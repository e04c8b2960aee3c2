//! `weft inject`: adds Weft's init container and sidecar to Kubernetes manifests.
//!
//! A stream is split into documents ([`stream`]); workloads ([`workload`]) have their pod template
//! injected ([`pod`]) with the pieces [`sidecar`] builds from the pod's annotations
//! ([`settings`]); without native sidecars, the commands of a pod that runs to completion are
//! wrapped so the proxy ends with them ([`wrap`]). The edited tree ([`tree`]) is written back by
//! [`emit`]. Every other document, and every workload left alone, is copied byte for byte. The
//! admission webhook ([`admission`]) injects a pod with the same [`pod`] code.

pub mod admission;
pub(crate) mod emit;
mod pod;
mod settings;
mod sidecar;
mod stream;
pub(crate) mod tree;
mod workload;
mod wrap;

pub use settings::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, Options, PROXY_UID};
pub use sidecar::PROXY_BINARY;

use tree::Yaml;

/// Add Weft's init container and sidecar to Kubernetes manifests.
///
/// Writes the manifests in FILE... (or stdin; `-` is stdin too) to stdout with Weft's init
/// container and sidecar added to every Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
/// CronJob and Pod. Other documents pass through unchanged. Injecting an injected manifest
/// changes nothing. Workloads left alone (weft.dev/inject: disabled, hostNetwork, another mesh)
/// are named on stderr with the reason.
#[derive(clap::Args, Debug)]
pub struct InjectArgs {
    #[command(flatten)]
    options: Options,
    /// Manifests to read (default: stdin)
    #[arg(value_name = "FILE")]
    files: Vec<String>,
}

/// What happened to one stream: the text to write and a line per workload for stderr.
#[derive(Debug, Default, PartialEq)]
pub struct Injected {
    pub text: String,
    pub messages: Vec<String>,
    /// A document could not be read, or a workload asked for something invalid. Its text is
    /// written unchanged.
    pub failed: bool,
}

/// Injects every workload of a YAML stream. `source` names it in messages.
pub fn inject_stream(text: &str, source: &str, options: &Options) -> Injected {
    let mut out = Injected::default();
    for (i, raw) in stream::split(text).into_iter().enumerate() {
        let parsed = weft_api::yaml::parse_stream(raw.text);
        let here = format!("{source}: document {}", i + 1);
        if let Some(e) = parsed.error {
            out.messages.push(format!("{here}: line {}: {}; left unchanged", e.line, e.message));
            out.failed = true;
            out.text.push_str(raw.text);
            continue;
        }
        let Some(root) = parsed.documents.first().filter(|d| !d.is_null()) else {
            out.text.push_str(raw.text);
            continue;
        };
        match Yaml::from_node(root).map(|y| inject_document(y, options)) {
            Ok(Document::Unchanged) => out.text.push_str(raw.text),
            Ok(Document::Skipped(what, reason)) => {
                out.messages.push(format!("{source}: {what} skipped: {reason}"));
                out.text.push_str(raw.text);
            }
            Ok(Document::Injected(what, y, notes)) => {
                out.messages.push(format!("{source}: {what} injected"));
                out.messages.extend(notes.into_iter().map(|n| format!("{source}: {what}: warning: {n}")));
                out.text.push_str(&raw.preamble());
                out.text.push_str(&emit::document(&y));
            }
            Ok(Document::Failed(what, problems)) => {
                out.failed = true;
                out.messages.extend(problems.into_iter().map(|p| format!("{source}: {what}: {p}; left unchanged")));
                out.text.push_str(raw.text);
            }
            Err(e) => {
                out.failed = true;
                out.messages.push(format!("{here}: {e}; left unchanged"));
                out.text.push_str(raw.text);
            }
        }
    }
    out
}

enum Document {
    Unchanged,
    Skipped(String, String),
    Injected(String, Yaml, Vec<String>),
    Failed(String, Vec<String>),
}

fn inject_document(mut root: Yaml, options: &Options) -> Document {
    let Some(kind) = root.get("kind").and_then(Yaml::as_str).map(str::to_string) else {
        return Document::Unchanged;
    };
    let Some(path) = workload::template_path(&kind) else { return Document::Unchanged };
    let meta = |k: &str| root.path(&["metadata", k]).and_then(Yaml::as_str).map(str::to_string);
    let name = meta("name").or_else(|| meta("generateName").map(|g| g.trim_end_matches('-').to_string()));
    let namespace = meta("namespace");
    let what = match (&namespace, &name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.clone(),
    };
    let w = pod::Workload { name: name.as_deref(), namespace: namespace.as_deref() };
    let Some(template) = root.path_mut(path) else {
        return Document::Failed(what, vec![format!("no pod template at {}", path.join("."))]);
    };
    match pod::inject(template, &w, options) {
        Ok(pod::Outcome::Injected(notes)) => Document::Injected(what, root, notes),
        Ok(pod::Outcome::Skipped(reason)) => Document::Skipped(what, reason),
        Err(problems) => Document::Failed(what, problems),
    }
}

/// `weft inject [OPTIONS] [FILE...]`; returns the exit status (0, 1 when something was left
/// unchanged for an error, 2 for usage).
pub fn run(args: InjectArgs) -> u8 {
    let InjectArgs { options, mut files } = args;
    if files.is_empty() {
        files.push("-".to_string());
    }
    let mut out = String::new();
    let mut failed = false;
    for file in &files {
        let read = if file == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(file) };
        let source = if file == "-" { "stdin" } else { file.as_str() };
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                eprintln!("weft inject: cannot read {source}: {e}");
                failed = true;
                continue;
            }
        };
        let result = inject_stream(&text, source, &options);
        for m in &result.messages {
            eprintln!("weft inject: {m}");
        }
        failed |= result.failed;
        join_streams(&mut out, &result.text);
    }
    print!("{out}");
    u8::from(failed)
}

/// Appends a file's stream to the output, with a `---` between files when the next one lacks it.
fn join_streams(out: &mut String, next: &str) {
    if !out.is_empty() && !next.is_empty() {
        if !out.ends_with('\n') {
            out.push('\n');
        }
        if !next.starts_with("---") {
            out.push_str("---\n");
        }
    }
    out.push_str(next);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_joined_into_one_stream() {
        let mut out = String::new();
        join_streams(&mut out, "a: 1");
        join_streams(&mut out, "b: 2\n");
        join_streams(&mut out, "---\nc: 3\n");
        assert_eq!(out, "a: 1\n---\nb: 2\n---\nc: 3\n");
    }
}
