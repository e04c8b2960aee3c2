//! Responses the proxy makes itself: one status and one `weft-proxy-error` reason per failure,
//! so a caller (and an operator reading logs) always knows the proxy answered, and why.

use http::{HeaderValue, Response, StatusCode};

use super::body::RespBody;

pub const ERROR_HEADER: &str = "weft-proxy-error";

/// Every failure the proxy reports to a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyError {
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
    /// The proxy is shutting down and will not open new upstream work.
    ShuttingDown,
    /// The caller's identity is not allowed by the AuthorizationPolicy.
    Unauthorized,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::UnknownService | ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints
            | ProxyError::CircuitOpen
            | ProxyError::ConcurrencyLimit
            | ProxyError::PendingLimit
            | ProxyError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectFailed | ProxyError::UpstreamReset | ProxyError::TlsFailed => StatusCode::BAD_GATEWAY,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest | ProxyError::BadHost => StatusCode::BAD_REQUEST,
            ProxyError::Unauthorized => StatusCode::FORBIDDEN,
        }
    }

    /// The value of the `weft-proxy-error` header.
    pub fn reason(self) -> &'static str {
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
            ProxyError::ShuttingDown => "shutting-down",
            ProxyError::Unauthorized => "unauthorized",
        }
    }

    /// What an operator should change, for the body and the log line.
    pub fn hint(self) -> &'static str {
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
            ProxyError::ShuttingDown => "this proxy is shutting down",
            ProxyError::Unauthorized => "the caller is not allowed by the service's AuthorizationPolicy",
        }
    }

    pub fn response(self) -> Response<RespBody> {
        self.response_with_body(format!("{}: {}\n", self.reason(), self.hint()))
    }

    /// The 404 `unknown-service` answer, saying which name was looked up (`None`: the request
    /// named no host), so a typo or an unexpected alias shows in the answer itself.
    pub fn unknown_service_response(host: Option<&str>) -> Response<RespBody> {
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
