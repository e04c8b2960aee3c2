//! The policy decoder (`weft check`, `weft serve --policy`, `weft-proxy --config`) on any text:
//! it never panics, `parse_file` and `check_files` agree, every problem points into the file, and
//! documents that decode survive the JSON the control plane sends them to proxies in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_api::Document;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = weft_api::parse_file("fuzz.yaml", &text);
    let (files, problems) = weft_api::check_files(&[("fuzz.yaml".to_string(), text.to_string())]);
    assert_eq!(parsed.is_ok(), problems.is_empty(), "parse_file and check_files disagree");
    let lines = text.lines().count().max(1) + 1;
    for p in &problems {
        assert_eq!(p.file, "fuzz.yaml");
        assert!(p.line <= lines, "problem on line {} of a {}-line file: {p}", p.line, lines - 1);
        assert!(!p.message.is_empty(), "a problem without a message at line {}", p.line);
    }
    let Ok(docs) = parsed else { return };
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1, docs, "check_files returned other documents than parse_file");
    // What the control plane streams (documents in a snapshot) reads back the same.
    let json = serde_json::to_string(&docs).expect("documents serialize");
    let back: Vec<Document> = serde_json::from_str(&json).expect("serialized documents deserialize");
    assert_eq!(serde_json::to_string(&back).unwrap(), json, "JSON round trip changed the documents");
});
