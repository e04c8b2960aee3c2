//! Header hygiene between hops: hop-by-hop headers stay on their own connection, the Host
//! the upstream is told is the one routing used, an h2c upgrade is never passed on, and the
//! request target is rewritten into the form the upstream protocol expects.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme, Uri};
use http::{Method, Request, Version};

/// Header through which the app learns the caller's verified identity (set by the inbound
/// side, see `inbound::admit`). Whatever a client sent under this name, in headers or
/// trailers, is removed first, so the app can trust it.
pub const CLIENT_ID_HEADER: HeaderName = HeaderName::from_static(CLIENT_ID);
const CLIENT_ID: &str = "weft-client-id";

/// Whether `name` is [`CLIENT_ID_HEADER`] once underscores are read as dashes, as CGI-style
/// apps (PHP, WSGI, nginx's `underscores_in_headers`) read them: `weft_client_id` must not
/// reach the app either.
pub fn names_client_id(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    let id = CLIENT_ID.as_bytes();
    name.len() == id.len() && name.iter().zip(id).all(|(&a, &b)| a == b || (a == b'_' && b == b'-'))
}

/// Headers that describe one connection (RFC 9110 §7.6.1) and must not be forwarded, besides
/// `Connection` itself and the headers it names.
const HOP_BY_HOP: [HeaderName; 4] = [
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes hop-by-hop headers (and any named in `Connection`). `TE: trailers` is kept because
/// gRPC needs it end to end. Returns whether the request asked for a protocol upgrade.
///
/// Runs on every request, so it allocates nothing and hashes only what is present: one scan
/// of the (few) headers decides whether anything needs removing at all.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // `HeaderMap::remove` returns the first value only: each Connection field names its own.
    let upgrade = if headers.get_all(header::CONNECTION).iter().nth(1).is_some() {
        remove_named_by_every_connection(headers)
    } else {
        match headers.remove(header::CONNECTION) {
            Some(conn) => remove_named_by_connection(headers, &conn),
            None => false,
        }
    };
    let present = headers.keys().any(|name| HOP_BY_HOP.contains(name) || name == header::TE);
    if !present {
        return upgrade;
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    upgrade
}

/// `remove_named_by_connection` for a request with several Connection fields (rare; found by
/// the `request_headers` fuzz target: the fields a second one named were passed on).
#[cold]
fn remove_named_by_every_connection(headers: &mut HeaderMap) -> bool {
    let values: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
    headers.remove(header::CONNECTION);
    let mut upgrade = false;
    for value in &values {
        upgrade |= remove_named_by_connection(headers, value);
    }
    upgrade
}

/// Whether `name` is one of the hop-by-hop fields besides `Connection` and `TE` (which need
/// their values looked at).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Removes the headers that a `Connection` value names; its usual tokens (`close`,
/// `keep-alive`, `te`) name none left to remove. Returns whether it asked for an upgrade.
pub fn remove_named_by_connection(headers: &mut HeaderMap, connection: &HeaderValue) -> bool {
    let mut upgrade = false;
    for token in tokens(connection.as_bytes()) {
        if token.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
        let usual = token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
            || token.eq_ignore_ascii_case(b"te");
        if !usual && let Ok(name) = HeaderName::from_bytes(token) {
            headers.remove(name);
        }
    }
    upgrade
}

/// How a request's Host fields compare with its target, so that routing, authorization,
/// metrics and the upstream all act on one host. The target's authority (absolute-form,
/// HTTP/2 `:authority`) wins over Host (RFC 9112 §3.2.2, RFC 9113 §8.3.1): an app behind
/// the proxy that read a different Host than the one routed would act for another service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostCheck {
    /// One Host and no authority, an authority and no Host (or one equal to it), or HTTP/1.0
    /// or HTTP/2 with neither.
    Agrees,
    /// The authority and Host differ (or Host is repeated): the Host fields are dropped, and
    /// an HTTP/1 upstream gets the authority as Host (`to_http1`).
    Conflicts,
    /// Several Host fields and no authority to decide (RFC 9112 §3.2: 400), an HTTP/1.1
    /// request with neither (RFC 9112 §3.2: 400; HTTP/1.0 may omit Host), or an authority
    /// with userinfo (RFC 9113 §8.3.1, RFC 9110 §4.2.4).
    Ambiguous,
}

/// Compares the target's authority with the Host fields. Runs on every request: it
/// allocates nothing, and looks Host up once.
pub fn check_host(version: Version, uri: &Uri, headers: &HeaderMap) -> HostCheck {
    let mut hosts = headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => HostCheck::Ambiguous,
        Some(authority) => match (first, second) {
            (None, _) => HostCheck::Agrees,
            (Some(host), None) if host.as_bytes().eq_ignore_ascii_case(authority.as_str().as_bytes()) => {
                HostCheck::Agrees
            }
            _ => HostCheck::Conflicts,
        },
        None if second.is_some() || (first.is_none() && version == Version::HTTP_11) => HostCheck::Ambiguous,
        None => HostCheck::Agrees,
    }
}

/// Removes an HTTP/1.1 `Upgrade: h2c` offer (RFC 7540 §3.2): the `h2c` token (and `Upgrade`
/// when nothing else is left), `HTTP2-Settings`, and the `Connection` tokens that named them.
/// The request is then served as plain HTTP/1.1, as Envoy does. Passed on, an upstream that
/// accepted it would answer 101 and the proxy would tunnel the rest of the connection: later
/// requests on it would bypass routing and authorization (h2c smuggling). Other upgrades
/// (WebSocket) are left alone. Returns whether anything was removed.
///
/// Only requests with an `Upgrade` field get here (rare): it may allocate.
pub fn strip_h2c_upgrade(headers: &mut HeaderMap) -> bool {
    let is_h2c = |t: &[u8]| t.eq_ignore_ascii_case(b"h2c");
    let offered = headers.get_all(header::UPGRADE).iter().any(|v| tokens(v.as_bytes()).any(is_h2c));
    let settings = headers.contains_key(HTTP2_SETTINGS);
    if !offered && !settings {
        return false;
    }
    headers.remove(HTTP2_SETTINGS);
    let mut upgrade_left = true;
    if offered {
        let rest = without_tokens(headers.get_all(header::UPGRADE).iter(), |t| is_h2c(t));
        headers.remove(header::UPGRADE);
        match rest {
            Some(rest) => {
                headers.insert(header::UPGRADE, rest);
            }
            None => upgrade_left = false,
        }
    }
    if headers.contains_key(header::CONNECTION) {
        let named = |t: &[u8]| {
            t.eq_ignore_ascii_case(b"http2-settings") || (!upgrade_left && t.eq_ignore_ascii_case(b"upgrade"))
        };
        let rest = without_tokens(headers.get_all(header::CONNECTION).iter(), named);
        headers.remove(header::CONNECTION);
        if let Some(rest) = rest {
            headers.insert(header::CONNECTION, rest);
        }
    }
    true
}

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The non-empty, trimmed tokens of a comma-separated field value (`Connection`, `TE`).
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty())
}

/// Whether a comma-separated field value lists `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    tokens(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The tokens of all `values` except those `drop` picks, as one value; `None` when none is left.
fn without_tokens<'a>(
    values: impl Iterator<Item = &'a HeaderValue>,
    drop: impl Fn(&[u8]) -> bool,
) -> Option<HeaderValue> {
    let mut kept: Vec<u8> = Vec::new();
    for token in values.flat_map(|v| tokens(v.as_bytes())).filter(|t| !drop(t)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b", ");
        }
        kept.extend_from_slice(token);
    }
    if kept.is_empty() { None } else { HeaderValue::from_bytes(&kept).ok() }
}

/// Whether a request's Transfer-Encoding, if it has one, is `chunked` alone: the only coding
/// the proxy decodes. Anything else (an unknown coding before it, `chunked` twice, across
/// fields or in one) leaves the body's length unknown to some recipient, so the request is
/// refused rather than forwarded with a framing the next parser could read differently.
pub fn chunked_or_none(headers: &HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().flat_map(|v| tokens(v.as_bytes()));
    match codings.next() {
        None => !headers.contains_key(header::TRANSFER_ENCODING),
        Some(first) => first.eq_ignore_ascii_case(b"chunked") && codings.next().is_none(),
    }
}

/// Whether a retry of this method cannot change the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE)
}

/// The host the client addressed: the URI authority (absolute-form, h2 `:authority`) or the
/// Host header, without the port.
pub fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Rewrites the request for an HTTP/1.1 upstream: origin-form target and a Host header,
/// which is the target's authority when it has one (whatever Host said: see `check_host`).
pub fn to_http1<B>(req: &mut Request<B>) {
    if let Some(auth) = req.uri().authority() {
        let agrees = req
            .headers()
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(auth.as_str().as_bytes()));
        if !agrees && let Ok(v) = HeaderValue::from_str(auth.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().cloned();
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = pq.or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Rewrites the request for an HTTP/2 upstream: absolute target (scheme + authority) and no Host.
pub fn to_http2<B>(req: &mut Request<B>, fallback_authority: &Authority) {
    let uri = req.uri();
    // An HTTP/2 client's request is already absolute: its URI is kept rather than rebuilt.
    let absolute = uri.scheme() == Some(&Scheme::HTTP) && uri.authority().is_some() && uri.path_and_query().is_some();
    if !absolute {
        let authority = uri
            .authority()
            .cloned()
            .or_else(|| req.headers().get(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok()))
            .unwrap_or_else(|| fallback_authority.clone());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query =
            req.uri().path_and_query().cloned().or_else(|| Some(http::uri::PathAndQuery::from_static("/")));
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req.headers_mut().remove(header::HOST);
    *req.version_mut() = Version::HTTP_2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_listed_headers_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret, Upgrade"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(strip_hop_by_hop(&mut h));
        assert!(h.get("x-secret").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn every_connection_field_names_fields_to_remove() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("keep-alive, x-one"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-two, upgrade"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("x-kept", HeaderValue::from_static("3"));
        assert!(strip_hop_by_hop(&mut h), "the upgrade named by the second field counts");
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-kept").unwrap(), "3");
    }

    #[test]
    fn te_other_than_trailers_and_bare_hop_headers_go_without_a_connection_header() {
        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-kept").unwrap(), "1");
    }

    #[test]
    fn only_chunked_alone_is_a_transfer_encoding_the_proxy_takes() {
        let with = |values: &[&'static str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            chunked_or_none(&h)
        };
        assert!(with(&[]));
        assert!(with(&["chunked"]) && with(&["Chunked"]) && with(&[" chunked "]));
        for refused in [
            &["identity, chunked"][..],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["gzip", "chunked"],
            &["xchunked"],
            &["chunked, gzip"],
            &[""],
            &[","],
        ] {
            assert!(!with(refused), "{refused:?}");
        }
    }

    #[test]
    fn ordinary_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("payments"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let mut expected = h.clone();
        expected.remove(header::CONNECTION);
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h, expected);
    }

    #[test]
    fn host_comes_from_authority_or_header_without_port() {
        let req = Request::get("http://payments.shop:8080/x").body(()).unwrap();
        assert_eq!(request_host(&req), Some("payments.shop"));
        let req = Request::get("/x").header("host", "payments:80").body(()).unwrap();
        assert_eq!(request_host(&req), Some("payments"));
        let req = Request::get("/x").header("host", "[::1]:80").body(()).unwrap();
        assert_eq!(request_host(&req), Some("::1"));
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_host_for_http1() {
        let mut req = Request::get("http://payments/v1/a?b=c").body(()).unwrap();
        to_http1(&mut req);
        assert_eq!(req.uri().to_string(), "/v1/a?b=c");
        assert_eq!(req.headers().get(header::HOST).unwrap(), "payments");
    }

    #[test]
    fn an_absolute_http_target_is_kept_for_http2_and_https_becomes_http() {
        let mut req = Request::get("http://api.internal:8080/a?b=1").header("host", "other").body(()).unwrap();
        to_http2(&mut req, &Authority::from_static("127.0.0.1:1"));
        assert_eq!(req.uri().to_string(), "http://api.internal:8080/a?b=1");
        assert!(req.headers().get("host").is_none(), "the authority replaces Host");
        assert_eq!(req.version(), Version::HTTP_2);
        let mut req = Request::get("https://api.internal/a").body(()).unwrap();
        to_http2(&mut req, &Authority::from_static("127.0.0.1:1"));
        assert_eq!(req.uri().to_string(), "http://api.internal/a", "the hop to the upstream is plaintext");
    }

    #[test]
    fn origin_form_becomes_absolute_for_http2() {
        let mut req = Request::get("/v1/a").header("host", "payments:8080").body(()).unwrap();
        to_http2(&mut req, &Authority::from_static("127.0.0.1:1"));
        assert_eq!(req.uri().to_string(), "http://payments:8080/v1/a");
        assert!(req.headers().get(header::HOST).is_none());
    }

    #[test]
    fn the_targets_authority_decides_the_host() {
        use HostCheck::*;
        let cases: [(&str, &[&str], HostCheck); 11] = [
            ("/x", &["echo"], Agrees),
            ("/x", &[], Ambiguous),
            ("/x", &["echo", "evil"], Ambiguous),
            ("/x", &["echo", "echo"], Ambiguous),
            ("http://echo/x", &[], Agrees),
            ("http://echo/x", &["echo"], Agrees),
            ("http://echo:8080/x", &["ECHO:8080"], Agrees),
            ("http://echo/x", &["evil"], Conflicts),
            ("http://echo:8080/x", &["echo"], Conflicts),
            ("http://echo/x", &["echo", "evil"], Conflicts),
            ("http://user@echo/x", &["echo"], Ambiguous),
        ];
        for (target, hosts, expected) in cases {
            let uri: Uri = target.parse().unwrap();
            let mut headers = HeaderMap::new();
            for host in hosts {
                headers.append(header::HOST, HeaderValue::from_static(host));
            }
            assert_eq!(check_host(Version::HTTP_11, &uri, &headers), expected, "{target} with Host {hosts:?}");
        }
        let origin_form: Uri = "/x".parse().unwrap();
        for (version, expected) in
            [(Version::HTTP_10, Agrees), (Version::HTTP_2, Agrees), (Version::HTTP_11, Ambiguous)]
        {
            assert_eq!(check_host(version, &origin_form, &HeaderMap::new()), expected, "{version:?} without Host");
        }
    }

    #[test]
    fn an_http1_upstream_is_told_the_authority_as_host() {
        let mut req = Request::get("http://echo/x").header("host", "evil").header("host", "evil2").body(()).unwrap();
        to_http1(&mut req);
        assert_eq!(req.headers().get_all(header::HOST).iter().collect::<Vec<_>>(), ["echo"]);
        assert_eq!(req.uri(), "/x");
        let mut req = Request::get("/x").header("host", "echo:80").body(()).unwrap();
        to_http1(&mut req);
        assert_eq!(req.headers()[header::HOST], "echo:80", "origin-form keeps its Host");
    }

    #[test]
    fn an_h2c_upgrade_offer_is_removed_and_other_upgrades_are_kept() {
        // (Connection, Upgrade, HTTP2-Settings present) -> (Connection, Upgrade) after.
        let cases = [
            ("Upgrade, HTTP2-Settings", "h2c", true, None, None),
            ("keep-alive, upgrade, http2-settings", "H2C", true, Some("keep-alive"), None),
            ("Upgrade, HTTP2-Settings", "h2c, websocket", true, Some("Upgrade"), Some("websocket")),
            ("Upgrade", "websocket", false, Some("Upgrade"), Some("websocket")),
            ("HTTP2-Settings", "", true, None, None),
        ];
        for (connection, upgrade, settings, connection_after, upgrade_after) in cases {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_static(connection));
            if !upgrade.is_empty() {
                h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
            }
            if settings {
                h.insert("http2-settings", HeaderValue::from_static("AAMAAABkAARAAAAAAAIAAAAA"));
            }
            h.insert("x-kept", HeaderValue::from_static("1"));
            let changed = strip_h2c_upgrade(&mut h);
            assert_eq!(changed, upgrade.contains("h2") || settings, "{connection} / {upgrade}");
            assert!(h.get("http2-settings").is_none(), "{connection} / {upgrade}");
            let text = |name| h.get(name).map(|v: &HeaderValue| v.to_str().unwrap());
            assert_eq!(text(header::CONNECTION), connection_after, "{connection} / {upgrade}");
            assert_eq!(text(header::UPGRADE), upgrade_after, "{connection} / {upgrade}");
            assert_eq!(h["x-kept"], "1");
        }
    }

    #[test]
    fn idempotency_follows_rfc() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
