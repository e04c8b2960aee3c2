//! Protocol detection on plaintext connections and the HTTP/2 header-block scan behind the
//! header-read timeout, on any bytes: HTTP/2 exactly when the bytes start with the preface, a
//! decision never changes as more bytes arrive, and the scan's answer does not depend on how
//! the bytes were split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::fuzzing::{Version, detect_version, header_block_open};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    // The detector sees at most the preface's length (its peek buffer).
    let seen = &bytes[..bytes.len().min(PREFACE.len())];
    let decided = detect_version(seen);
    let expect = if seen == PREFACE {
        Some(Version::Http2)
    } else if PREFACE.starts_with(seen) {
        None
    } else {
        Some(Version::Http1)
    };
    assert_eq!(decided, expect, "{seen:?}");
    for n in 1..seen.len() {
        if let Some(early) = detect_version(&seen[..n]) {
            assert_eq!(Some(early), decided, "the decision after {n} bytes changed later");
        }
    }

    // The header-block scan (it passes over the first 24 bytes, the preface on an HTTP/2
    // connection).
    let stream = bytes;
    let whole = header_block_open([&stream[..]]);
    let at = usize::from(split) % (stream.len() + 1);
    assert_eq!(header_block_open([&stream[..at], &stream[at..]]), whole, "split at {at}");
    let step = usize::from(split % 7) + 1;
    assert_eq!(header_block_open(stream.chunks(step)), whole, "pieces of {step}");
});
