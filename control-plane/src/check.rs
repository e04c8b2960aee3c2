//! `weft check PATH…`: validates policy files and folders, printing every problem at once.
//!
//! All files named on one command line are checked as one set (a policy folder is deployed as
//! a whole), so a Route in one file may name a Service declared in another.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use weft_api::{Diagnostic, Document};

/// Validate policy files: every problem as FILE:LINE: field.path: message.
///
/// Each PATH is a YAML file or a folder, searched recursively for *.yaml and *.yml files. All
/// files are checked together, so references between them resolve.
///
/// Exit status: 0 when everything is valid, 1 when any problem was found, 2 on usage errors
/// (an unknown option, no PATH, or a PATH that does not exist).
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Policy files or folders
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<PathBuf>,
}

/// What a check found: the problems in file order, and how much was read.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Diagnostic>,
    pub files: usize,
    pub documents: usize,
    /// What each file declared (`weft serve` loads its policy folder through this check).
    pub set: Vec<(String, Vec<Document>)>,
}

/// Checks every YAML file under `paths` as one set.
pub fn check_paths(paths: &[PathBuf]) -> Report {
    let mut report = Report::default();
    let mut files = Vec::new();
    for path in paths {
        if let Err(e) = collect_files(path, &mut files) {
            report.problems.push(unreadable(path, &e));
        }
    }
    // A file named twice (directly and through its folder) is still one file.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(f.clone()));

    let mut texts = Vec::new();
    for path in &files {
        match fs::read_to_string(path) {
            Ok(text) => texts.push((path.display().to_string(), text)),
            Err(e) => report.problems.push(unreadable(path, &e)),
        }
    }
    report.files = texts.len();
    // The same check as `weft-proxy --config` and `weft serve`: they accept what this accepts.
    let (set, problems) = weft_api::check_files(&texts);
    report.documents = set.iter().map(|(_, docs)| docs.len()).sum();
    report.problems.extend(problems);
    report.set = set;

    // File order as given (folders sorted), then line: the order people fix things in.
    let order: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let rank = |d: &Diagnostic| order.iter().position(|f| *f == d.file).unwrap_or(usize::MAX);
    report.problems.sort_by_key(|d| (rank(d), d.line));
    report
}

fn unreadable(path: &Path, e: &io::Error) -> Diagnostic {
    Diagnostic { file: path.display().to_string(), line: 0, path: String::new(), message: format!("cannot read: {e}") }
}

/// A named file is taken whatever its extension; folders contribute their *.yaml and *.yml.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if !fs::metadata(path)?.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<_> = fs::read_dir(path)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let child = entry.path();
        // Hidden entries are skipped: Kubernetes ConfigMap volumes keep a second copy of every
        // file under `..data/`, which would otherwise be reported as duplicates of itself.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        // Symlinked folders are not followed (no loops); symlinked files are, since ConfigMap
        // volumes present every file as one.
        if entry.file_type()?.is_dir() {
            collect_files(&child, out)?;
        } else if is_yaml(&child) && fs::metadata(&child)?.is_file() {
            out.push(child);
        }
    }
    Ok(())
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Runs `weft check`; returns the exit status.
pub fn run(args: CheckArgs) -> u8 {
    let paths = args.paths;
    // A PATH that is not there is a mistyped command, not an invalid policy.
    for path in &paths {
        if let Err(e) = fs::metadata(path) {
            eprintln!("weft check: {}: {}", path.display(), missing(&e));
            return 2;
        }
    }
    let report = check_paths(&paths);
    if report.problems.is_empty() && report.files == 0 {
        eprintln!("weft check: no .yaml or .yml files found");
        return 1;
    }
    if report.problems.is_empty() {
        println!("ok: {} in {}", plural(report.documents, "document"), plural(report.files, "file"));
        return 0;
    }
    for problem in &report.problems {
        println!("{problem}");
    }
    let files = {
        let mut names: Vec<&str> = report.problems.iter().map(|p| p.file.as_str()).collect();
        names.dedup();
        names.len()
    };
    eprintln!("{} in {}", plural(report.problems.len(), "problem"), plural(files, "file"));
    1
}

fn missing(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or folder".to_string(),
        _ => format!("cannot read: {e}"),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { format!("1 {word}") } else { format!("{n} {word}s") }
}
