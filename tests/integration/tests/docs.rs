//! The README and docs/ stand on their own: every relative link points to a file in the
//! repository (none outside it, such as a design note beside the checkout).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The targets of the Markdown links `[text](target)` in `text`.
fn link_targets(text: &str) -> Vec<&str> {
    text.match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &text[at + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .collect()
}

fn pages() -> Vec<PathBuf> {
    let root = repo();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages
}

#[test]
fn links_in_the_readme_and_docs_stay_inside_the_repository() {
    let root = repo();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(!text.contains("shared/DESIGN.md"), "{} points outside the repository", page.display());
        for target in link_targets(&text) {
            let file = target.split('#').next().unwrap();
            if file.is_empty() || file.contains("://") {
                continue;
            }
            let resolved = page.parent().unwrap().join(file);
            let resolved =
                resolved.canonicalize().unwrap_or_else(|_| panic!("{}: broken link {target}", page.display()));
            assert!(resolved.starts_with(&root), "{}: {target} is outside the repository", page.display());
        }
    }
}

#[test]
fn the_readme_points_to_the_reference() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(link_targets(&readme).contains(&"docs/reference.md"), "README links docs/reference.md");
}
