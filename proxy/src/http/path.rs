//! Request paths in their normal form (RFC 3986 §6), so that routing, authorization, metrics
//! and the app all act on one path: an app that resolved `/v1/../admin` itself would serve a
//! path that a `/v1/` rule never allowed.
//!
//! The normal form, as Envoy's `normalize_path` + `merge_slashes` make it: percent-encoded
//! unreserved characters decoded (`%7E` → `~`), other percent-encodings in upper case,
//! repeated slashes merged, `.` and `..` segments resolved (RFC 3986 §5.2.4). The app is sent
//! that form. Refused (400), as with Envoy's `path_with_escaped_slashes_action:
//! REJECT_REQUEST`: an encoded slash or backslash (apps disagree on whether it separates
//! segments), a raw backslash, a NUL (raw or `%00`), a malformed percent-encoding, and a `..`
//! that would climb above the root. The query is kept as it came.

use http::uri::{PathAndQuery, Uri};

/// What a request path needs before it is routed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PathCheck {
    /// Already in normal form (nearly every request): nothing to do.
    Normal,
    /// The normal form of the path, with the query as it came.
    Rewritten(PathAndQuery),
    /// Not forwarded (400 `bad-request`): why, for the log.
    Refused(&'static str),
}

/// Checks the path of a request target. Runs on every request: a path without `%`, `\`, NUL,
/// `//` or a dot segment is found normal by one scan, without allocating; only the others
/// are rebuilt.
pub(crate) fn check_path(uri: &Uri) -> PathCheck {
    match uri.path_and_query() {
        Some(target) => check_target(target),
        None => PathCheck::Normal,
    }
}

/// Like [`check_path`], for a target on its own (`/explain` checks the path it is given).
pub(crate) fn check_target(target: &PathAndQuery) -> PathCheck {
    if is_normal(target.path().as_bytes()) {
        return PathCheck::Normal;
    }
    normalise(target)
}

/// Whether `path` has nothing to normalise or refuse.
fn is_normal(path: &[u8]) -> bool {
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' | 0 => return false,
            b'/' => match &path[i + 1..] {
                [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..] => return false,
                _ => {}
            },
            _ => {}
        }
    }
    true
}

/// The slow path: decodes, merges slashes, then resolves dot segments. Slashes are merged
/// first, so `/a//../b` is `/b`, as a file system (and nginx's `merge_slashes`) reads it.
fn normalise(target: &PathAndQuery) -> PathCheck {
    let path = target.path().as_bytes();
    if path.first() != Some(&b'/') {
        // `*` (OPTIONS) has none of the bytes that lead here; anything else is not a path.
        return PathCheck::Refused("the path does not start with /");
    }
    let decoded = match decode_unreserved(path) {
        Ok(decoded) => decoded,
        Err(why) => return PathCheck::Refused(why),
    };
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len() + target.query().map_or(0, |q| q.len() + 1));
    let mut segments = decoded[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        match segment {
            b"" | b"." => {}
            b".." => match out.iter().rposition(|&b| b == b'/') {
                Some(parent) => out.truncate(parent),
                None => return PathCheck::Refused("a .. segment climbs above the root"),
            },
            _ => {
                out.push(b'/');
                out.extend_from_slice(segment);
            }
        }
        // A path that ends in a directory (`/a/`, `/a/.`, `/a/b/..`) keeps its final slash.
        if segments.peek().is_none() && matches!(segment, b"" | b"." | b"..") {
            out.push(b'/');
        }
    }
    if let Some(query) = target.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    match PathAndQuery::from_maybe_shared(bytes::Bytes::from(out)) {
        Ok(normal) => PathCheck::Rewritten(normal),
        Err(_) => PathCheck::Refused("the normalised path is not a valid request target"),
    }
}

/// Decodes percent-encoded unreserved characters (RFC 3986 §2.3, §6.2.2.2) and upper-cases
/// the hex digits of the others (§6.2.2.1); refuses what an app could read as another path.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'\\' => return Err("a backslash in the path"),
            0 => return Err("a NUL in the path"),
            b'%' => {
                let (Some(hi), Some(lo)) = (path.get(i + 1).and_then(hex), path.get(i + 2).and_then(hex)) else {
                    return Err("a malformed percent-encoding in the path");
                };
                match hi << 4 | lo {
                    b'/' | b'\\' => return Err("an encoded slash or backslash in the path"),
                    0 => return Err("an encoded NUL in the path"),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => out.push(c),
                    _ => out.extend_from_slice(&[
                        b'%',
                        path[i + 1].to_ascii_uppercase(),
                        path[i + 2].to_ascii_uppercase(),
                    ]),
                }
                i += 3;
                continue;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

fn hex(digit: &u8) -> Option<u8> {
    (*digit as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `None`: refused.
    fn normal_form(target: &str) -> Option<String> {
        let uri: Uri = target.parse().unwrap();
        match check_path(&uri) {
            PathCheck::Normal => Some(target.to_string()),
            PathCheck::Rewritten(normal) => Some(normal.as_str().to_string()),
            PathCheck::Refused(_) => None,
        }
    }

    #[test]
    fn paths_take_their_normal_form_or_are_refused() {
        let cases: &[(&str, Option<&str>)] = &[
            // Already normal: the fast scan says so.
            ("/", Some("/")),
            ("/v1/pay", Some("/v1/pay")),
            ("/v1/pay/", Some("/v1/pay/")),
            ("/.well-known/x", Some("/.well-known/x")),
            ("/a/..b/c.", Some("/a/..b/c.")),
            ("/a/...", Some("/a/...")),
            ("*", Some("*")),
            // Dot segments.
            ("/a/./b", Some("/a/b")),
            ("/a/b/..", Some("/a/")),
            ("/a/b/../c", Some("/a/c")),
            ("/a/.", Some("/a/")),
            ("/a/..", Some("/")),
            ("/v1/../admin", Some("/admin")),
            ("/./", Some("/")),
            // Repeated slashes.
            ("//admin", Some("/admin")),
            ("/v1//x", Some("/v1/x")),
            ("/a///b//", Some("/a/b/")),
            ("/a//../b", Some("/b")),
            // Percent-encodings: unreserved decoded, others upper-cased.
            ("/%7Efoo", Some("/~foo")),
            ("/%41", Some("/A")),
            ("/%61%2D%5f%2e", Some("/a-_.")),
            ("/v1/%2e%2e/admin", Some("/admin")),
            ("/v1/.%2E/admin", Some("/admin")),
            ("/a%3fb%20c", Some("/a%3Fb%20c")),
            ("/a%25b", Some("/a%25b")),
            // The query is kept as it came, whatever it holds.
            ("/a/./b?x=%2F..//&y=%7e", Some("/a/b?x=%2F..//&y=%7e")),
            ("/v1/pay?next=/../admin", Some("/v1/pay?next=/../admin")),
            ("//a?", Some("/a?")),
            // Refused.
            ("/a%2fb", None),
            ("/v1/%2Fadmin", None),
            ("/a%5cb", None),
            ("/a%5Cb", None),
            ("/a\\b", None),
            ("/a%00b", None),
            ("/..", None),
            ("/../a", None),
            ("/a/../../b", None),
            ("/v1/%2e%2e/%2e%2e/admin", None),
            ("/a%zz", None),
            ("/a%4", None),
            ("/a%", None),
        ];
        for (target, expected) in cases {
            assert_eq!(normal_form(target).as_deref(), *expected, "{target}");
        }
    }

    #[test]
    fn an_absolute_target_keeps_its_scheme_and_authority() {
        let uri: Uri = "http://payments:8080/v1/../admin?x=1".parse().unwrap();
        let PathCheck::Rewritten(normal) = check_path(&uri) else { panic!("rewritten") };
        assert_eq!(normal, "/admin?x=1");
        assert_eq!(check_path(&"http://payments".parse().unwrap()), PathCheck::Normal, "empty path: /");
    }

    #[test]
    fn the_normal_form_is_a_fixed_point() {
        for target in ["/a/./b//c/../d/", "/%7e/%2e%2E/x%3f", "//x/./y/..", "/a%2a"] {
            let normal = normal_form(target).unwrap();
            assert_eq!(normal_form(&normal), Some(normal.clone()), "{target} -> {normal}");
        }
    }

    #[test]
    fn only_unusual_paths_leave_the_fast_scan() {
        for normal in ["/", "/v1/pay", "/a.b/c", "/a/.b", "/a/b.", "/a/..."] {
            assert!(is_normal(normal.as_bytes()), "{normal}");
        }
        for unusual in ["/a/.", "/a/..", "/./a", "/../a", "//", "/a//b", "/%41", "/a\\b"] {
            assert!(!is_normal(unusual.as_bytes()), "{unusual}");
        }
    }
}
