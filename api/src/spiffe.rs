//! SPIFFE ids of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! The id is the only name a mesh certificate carries, and authorization compares ids as
//! strings, so only one spelling of each id is accepted: lowercase scheme and trust domain,
//! no empty, `.` or `..` segments, no percent-encoding, query, fragment, port or user info.
//! The character rules are the SPIFFE specification's; the `/ns/…/sa/…` shape is Weft's.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";
/// The SPIFFE specification's limits: a URI SAN of at most 2048 bytes, a trust domain of 255.
const MAX_ID_LEN: usize = 2048;
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a text is not a SPIFFE id of the mesh; the message says how to write one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid SPIFFE id {id:?}: {reason}; write spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, \
     e.g. spiffe://cluster.local/ns/shop/sa/payments"
)]
pub struct SpiffeIdError {
    pub id: String,
    pub reason: String,
}

/// A validated workload identity, as written into (and read from) a certificate's URI SAN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an id from its parts, with the same checks as [`SpiffeId::parse`].
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"))
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn parse(text: &str) -> Result<Self, SpiffeIdError> {
        let invalid = |reason: &str| SpiffeIdError { id: text.to_string(), reason: reason.to_string() };
        if text.len() > MAX_ID_LEN {
            return Err(invalid("longer than 2048 bytes"));
        }
        let Some(rest) = text.strip_prefix(SCHEME) else {
            return Err(invalid("it must start with spiffe://"));
        };
        let (trust_domain, path) = match rest.split_once('/') {
            Some((trust_domain, path)) => (trust_domain, Some(path)),
            None => (rest, None),
        };
        check_trust_domain(trust_domain).map_err(|reason| invalid(&reason))?;
        let Some(path) = path else {
            return Err(invalid("the path must be /ns/<namespace>/sa/<service-account>"));
        };
        let segments: Vec<&str> = path.split('/').collect();
        for segment in &segments {
            check_segment(segment).map_err(|reason| invalid(&reason))?;
        }
        match segments.as_slice() {
            ["ns", namespace, "sa", service_account] => Ok(SpiffeId {
                trust_domain: trust_domain.to_string(),
                namespace: namespace.to_string(),
                service_account: service_account.to_string(),
            }),
            _ => Err(invalid("the path must be /ns/<namespace>/sa/<service-account>")),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("the trust domain is empty".to_string());
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("the trust domain is longer than 255 bytes".to_string());
    }
    // Ports and user info are excluded by the character set (no ':' or '@').
    match td.chars().find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_')) {
        Some(c) if c.is_ascii_uppercase() => Err(format!("the trust domain {td:?} must be lowercase")),
        Some(c) => Err(format!("the trust domain {td:?} holds {c:?}; use only a-z, 0-9, '.', '-' and '_'")),
        None => Ok(()),
    }
}

fn check_segment(segment: &str) -> Result<(), String> {
    match segment {
        "" => Err("the path has an empty segment (a doubled or trailing '/')".to_string()),
        "." | ".." => Err(format!("the path holds a {segment:?} segment")),
        _ => match segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
            Some(c) => {
                Err(format!("the path segment {segment:?} holds {c:?}; use only letters, digits, '.', '-' and '_'"))
            }
            None => Ok(()),
        },
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_canonical_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/payments").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "payments");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/payments");
        assert_eq!(SpiffeId::new("cluster.local", "shop", "payments").unwrap(), id);
        let odd = SpiffeId::parse("spiffe://a_b-c.9/ns/My-NS.1/sa/svc_Account").unwrap();
        assert_eq!(odd.to_string(), "spiffe://a_b-c.9/ns/My-NS.1/sa/svc_Account");
    }

    #[test]
    fn rejects_every_other_spelling_with_the_reason() {
        let cases = [
            ("", "must start with spiffe://"),
            ("https://cluster.local/ns/a/sa/b", "must start with spiffe://"),
            ("SPIFFE://cluster.local/ns/a/sa/b", "must start with spiffe://"),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            ("spiffe://Cluster.local/ns/a/sa/b", "must be lowercase"),
            ("spiffe://cluster.local:8080/ns/a/sa/b", "holds ':'"),
            ("spiffe://user@cluster.local/ns/a/sa/b", "holds '@'"),
            ("spiffe://cluster.local", "path must be /ns/"),
            ("spiffe://cluster.local/", "empty segment"),
            ("spiffe://cluster.local/ns/a/sa/b/", "empty segment"),
            ("spiffe://cluster.local/ns//sa/b", "empty segment"),
            ("spiffe://cluster.local/ns/../sa/b", "\"..\" segment"),
            ("spiffe://cluster.local/ns/./sa/b", "\".\" segment"),
            ("spiffe://cluster.local/ns/a%20b/sa/b", "holds '%'"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "holds '?'"),
            ("spiffe://cluster.local/ns/a/sa/b#frag", "holds '#'"),
            ("spiffe://cluster.local/ns/a/sa/ü", "holds 'ü'"),
            ("spiffe://cluster.local/a/b", "path must be /ns/"),
            ("spiffe://cluster.local/ns/a/sa/b/extra", "path must be /ns/"),
            ("spiffe://cluster.local/sa/b/ns/a", "path must be /ns/"),
        ];
        for (text, reason) in cases {
            let err = SpiffeId::parse(text).expect_err(text).to_string();
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(err.contains("spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"), "{err}");
        }
        let long = format!("spiffe://cluster.local/ns/a/sa/{}", "b".repeat(2048));
        assert!(SpiffeId::parse(&long).unwrap_err().to_string().contains("2048"));
        let long_td = format!("spiffe://{}/ns/a/sa/b", "t".repeat(256));
        assert!(SpiffeId::parse(&long_td).unwrap_err().to_string().contains("255"));
        assert!(SpiffeId::new("cluster.local", "a/b", "c").is_err());
    }
}
