//! Kubernetes service-account tokens as bootstrap credentials: a TokenReview asks the API
//! server whose token it is, and the answer decides the one SPIFFE id its holder may have.
//!
//! The decision ([`decide`]) is a plain function of the review's status; [`TokenReviewer`]
//! only moves the token to the API server and back, bounded by a timeout, and remembers
//! successful reviews for a minute so renewals and retries do not cost a call each.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};
use weft_api::SpiffeId;

use super::issuer::digest;

/// The audience of the projected tokens `weft inject` mounts: a token made for Weft is good
/// for nothing else, and a token made for anything else (the API server's own) is refused here.
pub const TOKEN_AUDIENCE: &str = "weft.dev";
/// What the API server prefixes a service account's username with.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// A TokenReview is one round trip to the API server; a proxy retries within a second anyway.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a successful review is trusted without asking again (bound tokens live for hours;
/// a deleted pod's token is honoured at most this much longer).
const CACHE_TTL: Duration = Duration::from_secs(60);
/// More distinct tokens than this within a minute and the cache starts over.
const CACHE_MAX: usize = 10_000;

/// Why a service-account token earned no identity. The label is the
/// `weft_control_certificates_total{result}` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The API server does not authenticate the token (expired, revoked, another audience).
    #[error("the Kubernetes API server does not accept this token: {0}")]
    Unauthenticated(String),
    /// Authenticated, but not for Weft's audience (or the API server did not say for which).
    #[error(
        "the token's audiences are {0}, not {TOKEN_AUDIENCE:?}; mount a projected service-account token with \
         audience {TOKEN_AUDIENCE} (weft inject does)"
    )]
    WrongAudience(String),
    /// Authenticated as someone who is not a service account (a user, a node).
    #[error("the token belongs to {0:?}, which is not a service account (system:serviceaccount:<namespace>:<name>)")]
    NotAServiceAccount(String),
    /// The review itself could not be made: the proxy should ask again later.
    #[error("cannot check the service-account token with the Kubernetes API server: {0}")]
    Failed(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "token-review-refused",
            Refusal::WrongAudience(_) => "wrong-audience",
            Refusal::NotAServiceAccount(_) => "not-a-service-account",
            Refusal::Failed(_) => "token-review-failed",
        }
    }
}

/// The identity a reviewed token grants, or why it grants none.
pub fn decide(status: Option<&TokenReviewStatus>, trust_domain: &str) -> Result<SpiffeId, Refusal> {
    let Some(status) = status else {
        return Err(Refusal::Unauthenticated("the TokenReview came back without a status".to_string()));
    };
    if status.authenticated != Some(true) {
        let why = status.error.as_deref().filter(|e| !e.is_empty()).unwrap_or("no reason given");
        return Err(Refusal::Unauthenticated(why.to_string()));
    }
    // An API server whose authenticator ignores audiences answers without any: then nothing
    // says the token was made for Weft.
    match &status.audiences {
        Some(list) if list.iter().any(|a| a == TOKEN_AUDIENCE) => {}
        Some(list) => return Err(Refusal::WrongAudience(format!("{list:?}"))),
        None => return Err(Refusal::WrongAudience("not stated by the API server".to_string())),
    }
    let username = status.user.as_ref().and_then(|u| u.username.as_deref()).unwrap_or_default();
    identity_of(username, trust_domain)
}

/// `system:serviceaccount:<namespace>:<name>` → `spiffe://<trust domain>/ns/<namespace>/sa/<name>`.
pub fn identity_of(username: &str, trust_domain: &str) -> Result<SpiffeId, Refusal> {
    let not_one = || Refusal::NotAServiceAccount(username.to_string());
    let rest = username.strip_prefix(SERVICE_ACCOUNT_PREFIX).ok_or_else(not_one)?;
    let (namespace, name) = rest.split_once(':').ok_or_else(not_one)?;
    if !is_dns_label(namespace) || !is_dns_subdomain(name) {
        return Err(not_one());
    }
    SpiffeId::new(trust_domain, namespace, name).map_err(|_| not_one())
}

/// A namespace name: an RFC 1123 label (lowercase letters, digits, '-', at most 63).
fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A service account name: an RFC 1123 subdomain (labels joined by '.', at most 253).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// Reviews tokens with the API server (`create` on `tokenreviews.authentication.k8s.io`).
pub struct TokenReviewer {
    api: Api<TokenReview>,
    trust_domain: String,
    /// Token digest → the identity it was granted and when.
    granted: Mutex<HashMap<[u8; 32], (SpiffeId, Instant)>>,
}

impl TokenReviewer {
    pub fn new(client: Client, trust_domain: String) -> TokenReviewer {
        TokenReviewer { api: Api::all(client), trust_domain, granted: Mutex::default() }
    }

    /// The identity `token` grants. Never logs or keeps the token itself.
    pub async fn review(&self, token: &str) -> Result<SpiffeId, Refusal> {
        let key = digest(token);
        let now = Instant::now();
        if let Some((id, at)) = self.cache().get(&key)
            && now.duration_since(*at) < CACHE_TTL
        {
            return Ok(id.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.trim().to_string()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let answer = tokio::time::timeout(REVIEW_TIMEOUT, self.api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| Refusal::Failed(format!("no answer within {REVIEW_TIMEOUT:?}")))?
            .map_err(failure)?;
        let id = decide(answer.status.as_ref(), &self.trust_domain)?;
        let mut cache = self.cache();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (id.clone(), now));
        Ok(id)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (SpiffeId, Instant)>> {
        self.granted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a failed `create` tells the operator.
fn failure(e: kube::Error) -> Refusal {
    match e {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => Refusal::Failed(format!(
            "{} {}: {}; the control plane's service account needs `create` on tokenreviews.authentication.k8s.io",
            status.code, status.reason, status.message
        )),
        kube::Error::Api(status) => Refusal::Failed(format!("{} {}: {}", status.code, status.reason, status.message)),
        other => Refusal::Failed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(authenticated: Option<bool>, audiences: Option<&[&str]>, username: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated,
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo { username: Some(username.to_string()), ..UserInfo::default() }),
            error: None,
        }
    }

    #[test]
    fn a_service_account_username_maps_to_exactly_its_spiffe_id() {
        let id = identity_of("system:serviceaccount:shop:payments", "cluster.local").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/payments");
        let id = identity_of("system:serviceaccount:a-1:web.v2", "example.org").unwrap();
        assert_eq!(id.to_string(), "spiffe://example.org/ns/a-1/sa/web.v2");
    }

    #[test]
    fn malformed_usernames_are_not_service_accounts() {
        let cases = [
            "",
            "alice",
            "system:node:worker-1",
            "system:serviceaccount:shop",
            "system:serviceaccount::payments",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:pay:ments",
            "system:serviceaccount:Shop:payments",
            "system:serviceaccount:shop:Payments",
            "system:serviceaccount:shop:pay_ments",
            "system:serviceaccount:-shop:payments",
            "system:serviceaccount:shop:payments-",
            "system:serviceaccount:shop:a..b",
            "system:serviceaccount:shop.x:payments",
            "system:serviceaccount:shop:../admin",
            "System:ServiceAccount:shop:payments",
        ];
        for username in cases {
            assert_eq!(
                identity_of(username, "cluster.local"),
                Err(Refusal::NotAServiceAccount(username.to_string())),
                "{username:?}"
            );
        }
        let long_ns = format!("system:serviceaccount:{}:payments", "n".repeat(64));
        assert!(identity_of(&long_ns, "cluster.local").is_err());
        let long_sa = format!("system:serviceaccount:shop:{}", "s".repeat(254));
        assert!(identity_of(&long_sa, "cluster.local").is_err());
    }

    #[test]
    fn only_an_authenticated_service_account_token_for_weft_earns_an_identity() {
        let sa = "system:serviceaccount:shop:payments";
        let ok = status(Some(true), Some(&["weft.dev"]), sa);
        assert_eq!(
            decide(Some(&ok), "cluster.local").unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/payments"
        );
        let among_others = status(Some(true), Some(&["https://kubernetes.default.svc", "weft.dev"]), sa);
        assert!(decide(Some(&among_others), "cluster.local").is_ok());

        let mut expired = status(Some(false), Some(&["weft.dev"]), "");
        expired.error = Some("service account token has expired".to_string());
        assert_eq!(
            decide(Some(&expired), "cluster.local"),
            Err(Refusal::Unauthenticated("service account token has expired".to_string()))
        );
        let silent = status(None, None, sa);
        assert_eq!(decide(Some(&silent), "cluster.local").unwrap_err().label(), "token-review-refused");
        assert_eq!(decide(None, "cluster.local").unwrap_err().label(), "token-review-refused");

        let no_audiences = status(Some(true), None, sa);
        let err = decide(Some(&no_audiences), "cluster.local").unwrap_err();
        assert_eq!(err.label(), "wrong-audience");
        assert!(err.to_string().contains("not stated"), "{err}");
        let other = status(Some(true), Some(&["https://kubernetes.default.svc"]), sa);
        let err = decide(Some(&other), "cluster.local").unwrap_err();
        assert_eq!(err.label(), "wrong-audience");
        assert!(err.to_string().contains("kubernetes.default.svc"), "{err}");
        let empty = status(Some(true), Some(&[]), sa);
        assert_eq!(decide(Some(&empty), "cluster.local").unwrap_err().label(), "wrong-audience");

        let user = status(Some(true), Some(&["weft.dev"]), "alice@example.com");
        assert_eq!(decide(Some(&user), "cluster.local").unwrap_err().label(), "not-a-service-account");
        let mut nobody = status(Some(true), Some(&["weft.dev"]), "");
        nobody.user = None;
        assert_eq!(decide(Some(&nobody), "cluster.local").unwrap_err().label(), "not-a-service-account");
    }

    #[test]
    fn api_errors_are_failures_to_retry_and_say_what_rbac_is_missing() {
        let forbidden = kube::Error::Api(Box::new(
            kube::core::Status::failure("tokenreviews is forbidden", "Forbidden").with_code(403),
        ));
        let refusal = failure(forbidden);
        assert_eq!(refusal.label(), "token-review-failed");
        assert!(refusal.to_string().contains("create` on tokenreviews.authentication.k8s.io"), "{refusal}");
        let down =
            kube::Error::Api(Box::new(kube::core::Status::failure("etcd is down", "InternalError").with_code(500)));
        let refusal = failure(down);
        assert_eq!(refusal.label(), "token-review-failed");
        assert!(refusal.to_string().contains("500 InternalError: etcd is down"), "{refusal}");
    }
}
