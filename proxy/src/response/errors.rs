//! Responses the proxy makes itself: one status and one `weft-proxy-error` reason per failure,
//! so a caller (and an operator reading logs) always knows the proxy answered, and why.

use http::{HeaderValue, Response, StatusCode};

use super::body::RespBody;

pub(crate) const ERROR_HEADER: &str = "weft-proxy-error";

/// Every failure the proxy reports to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// No service is known under the request's host.
    UnknownService,
    /// The service is known but no route rule matches the request.
    NoRoute,
    /// The service has no endpoints at all.
    NoEndpoints,
    /// Every endpoint is ejected by outlier detection.
    CircuitOpen,
    /// Too many requests in flight to the service (`limits.maxConcurrentRequests`).
    ConcurrencyLimit,
    /// Too many requests waiting for a connection (`limits.maxPendingRequests`).
    PendingLimit,
    /// The route's timeout passed before a response arrived.
    Timeout,
    /// No connection could be made to any endpoint tried.
    ConnectFailed,
    /// The upstream closed or reset the connection before answering.
    UpstreamReset,
    /// The mTLS handshake with a peer proxy failed (its identity, its CA, or ours).
    TlsFailed,
    /// The request body exceeds `http.maxBodyBytes`.
    BodyTooLarge,
    /// The request could not be turned into a valid upstream request.
    BadRequest,
    /// The request names its host ambiguously: several Host fields, or userinfo in the target.
    BadHost,
    /// The caller's identity is not allowed by the AuthorizationPolicy.
    Unauthorized,
    /// A plaintext caller at an inbound listener whose Mesh says `mtls: strict`.
    MtlsRequired,
}

impl ProxyError {
    /// Every variant, in the order the README and docs/reference.md list them by status.
    #[cfg(test)]
    pub(crate) const ALL: [ProxyError; 15] = [
        ProxyError::UnknownService,
        ProxyError::NoRoute,
        ProxyError::NoEndpoints,
        ProxyError::CircuitOpen,
        ProxyError::ConcurrencyLimit,
        ProxyError::PendingLimit,
        ProxyError::Timeout,
        ProxyError::ConnectFailed,
        ProxyError::UpstreamReset,
        ProxyError::TlsFailed,
        ProxyError::BodyTooLarge,
        ProxyError::Unauthorized,
        ProxyError::MtlsRequired,
        ProxyError::BadRequest,
        ProxyError::BadHost,
    ];

    pub(crate) fn status(self) -> StatusCode {
        match self {
            ProxyError::UnknownService | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints
            | ProxyError::CircuitOpen
            | ProxyError::ConcurrencyLimit
            | ProxyError::PendingLimit => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectFailed | ProxyError::UpstreamReset | ProxyError::TlsFailed => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized | ProxyError::MtlsRequired => StatusCode::FORBIDDEN,
        }
    }

    /// The value of the `weft-proxy-error` header.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ProxyError::UnknownService => "unknown-service",
            ProxyError::NoRoute => "no-route",
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::CircuitOpen => "circuit-open",
            ProxyError::ConcurrencyLimit => "concurrency-limit",
            ProxyError::PendingLimit => "pending-limit",
            ProxyError::Timeout => "timeout",
            ProxyError::ConnectFailed => "connect-failed",
            ProxyError::UpstreamReset => "upstream-reset",
            ProxyError::TlsFailed => "tls-failed",
            ProxyError::BodyTooLarge => "body-too-large",
            ProxyError::BadRequest => "bad-request",
            ProxyError::BadHost => "bad-host",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::MtlsRequired => "mtls-required",
        }
    }

    /// What an operator should change, for the body and the log line.
    pub(crate) fn hint(self) -> &'static str {
        match self {
            ProxyError::UnknownService => "no Service with this name; check the Host header or add a Service document",
            ProxyError::NoRoute => "no rule of the service's Route matches; check /explain for this request",
            ProxyError::NoEndpoints => "the service has no endpoints; check its registrations or spec.endpoints",
            ProxyError::CircuitOpen => "every endpoint is ejected after consecutive failures; check the backends",
            ProxyError::ConcurrencyLimit => "raise TrafficPolicy limits.maxConcurrentRequests or add capacity",
            ProxyError::PendingLimit => "raise TrafficPolicy limits.maxPendingRequests or add capacity",
            ProxyError::Timeout => "the backend did not answer within the route's timeout",
            ProxyError::ConnectFailed => "no endpoint accepted a connection within connectTimeout",
            ProxyError::UpstreamReset => "the backend closed the connection before answering",
            ProxyError::TlsFailed => {
                "mTLS with the peer proxy failed; the proxy log and weft_tls_handshake_errors_total say why"
            }
            ProxyError::BodyTooLarge => "the request body is larger than the proxy's http.maxBodyBytes",
            ProxyError::BadRequest => "the request cannot be forwarded as written",
            ProxyError::BadHost => "send one Host header, and no userinfo in the request target",
            ProxyError::Unauthorized => "the caller is not allowed by the service's AuthorizationPolicy",
            ProxyError::MtlsRequired => {
                "this service accepts only mutual TLS from Weft proxies (Mesh mtls: strict); call it through one"
            }
        }
    }

    pub(crate) fn response(self) -> Response<RespBody> {
        self.response_with_body(format!("{}: {}\n", self.reason(), self.hint()))
    }

    /// The same answer as HTTP/1.1 bytes, for a connection that is closed after it and has no
    /// request object to answer (a head refused while parsing, a plaintext caller).
    pub(crate) fn http1_bytes_then_close(self) -> Vec<u8> {
        let status = self.status();
        let body = format!("{}: {}\n", self.reason(), self.hint());
        format!(
            "HTTP/1.1 {} {}\r\n{ERROR_HEADER}: {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            self.reason(),
            body.len()
        )
        .into_bytes()
    }

    /// The 404 `unknown-service` answer, saying which name was looked up (`None`: the request
    /// named no host), so a typo or an unexpected alias shows in the answer itself.
    pub(crate) fn unknown_service_response(host: Option<&str>) -> Response<RespBody> {
        let e = ProxyError::UnknownService;
        let host = host.map_or_else(|| "(none)".to_string(), |h| format!("{:?}", echoed(h)));
        e.response_with_body(format!("{}: {}; host: {host}\n", e.reason(), e.hint()))
    }

    fn response_with_body(self, body: String) -> Response<RespBody> {
        let mut resp = Response::new(RespBody::full(body));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.reason()));
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        resp
    }
}

/// Longest part of a client's value the proxy writes back in an answer.
const MAX_ECHO_BYTES: usize = 256;

/// A client's value as it may be written back: control characters removed (no line breaks or
/// terminal escapes reach a body a person reads), cut at `MAX_ECHO_BYTES` on a character
/// boundary.
fn echoed(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_ECHO_BYTES));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_ECHO_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn body_of(resp: Response<RespBody>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    /// The (status, reason) pairs a doc lists in the sentence that begins with `opening`: each
    /// backticked reason takes the last three-digit status before it.
    fn listed(doc: &str, opening: &str) -> Vec<(u16, String)> {
        let text = std::fs::read_to_string(format!("{}/../{doc}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let start = text.find(opening).unwrap_or_else(|| panic!("{doc} has no {opening:?}"));
        let sentence = &text[start..];
        let end = [".\n", ". "].iter().filter_map(|stop| sentence.find(stop)).min().unwrap();
        let sentence = &sentence[..end];
        let (mut status, mut out) = (0, Vec::new());
        for (i, piece) in sentence.split('`').enumerate() {
            if i % 2 == 1 {
                if !piece.is_empty()
                    && piece.split('-').all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
                {
                    out.push((status, piece.to_string()));
                }
                continue;
            }
            for word in piece.split(|c: char| !c.is_ascii_digit()) {
                if word.len() == 3 {
                    status = word.parse().unwrap();
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn bytes_written_before_a_request_exists_carry_the_reason_and_its_hint() {
        let raw = String::from_utf8(ProxyError::BadRequest.http1_bytes_then_close()).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nweft-proxy-error: bad-request\r\n") && head.contains("\r\nconnection: close"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{raw}");
        assert_eq!(body, format!("bad-request: {}\n", ProxyError::BadRequest.hint()));
    }

    #[test]
    fn the_readme_and_the_reference_list_exactly_the_answers_of_this_table() {
        let mut table: Vec<(u16, String)> =
            ProxyError::ALL.iter().map(|e| (e.status().as_u16(), e.reason().to_string())).collect();
        table.sort();
        let distinct: std::collections::BTreeSet<_> = ProxyError::ALL.iter().map(|e| e.reason()).collect();
        assert_eq!(distinct.len(), ProxyError::ALL.len(), "a reason is used twice");
        assert_eq!(listed("README.md", "Every response the proxy makes itself carries"), table, "README.md");
        assert_eq!(
            listed("docs/reference.md", "Each carries `weft-proxy-error: <reason>`"),
            table,
            "docs/reference.md"
        );
    }

    #[tokio::test]
    async fn unknown_service_answers_echo_the_host() {
        let resp = ProxyError::unknown_service_response(Some("paymnets.shop"));
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()[ERROR_HEADER], "unknown-service");
        let body = body_of(resp).await;
        assert!(body.starts_with("unknown-service: "), "{body}");
        assert!(body.ends_with("; host: \"paymnets.shop\"\n"), "{body}");
        let none = body_of(ProxyError::unknown_service_response(None)).await;
        assert!(none.ends_with("; host: (none)\n"), "{none}");
    }

    #[test]
    fn echoed_values_are_cut_and_lose_control_characters() {
        assert_eq!(echoed("a\r\nb\u{1b}[31mc\u{7f}"), "ab[31mc");
        let long = "é".repeat(200);
        let cut = echoed(&long);
        assert!(cut.len() <= MAX_ECHO_BYTES && cut.len() >= MAX_ECHO_BYTES - 1, "{}", cut.len());
        assert!(long.starts_with(&cut), "cut on a character boundary");
        assert_eq!(echoed("payments.shop"), "payments.shop");
    }
}
