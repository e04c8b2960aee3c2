//! Signs proxies' certificate signing requests: a credential (a join token here, or a
//! service-account token reviewed by `token_review`) names the one SPIFFE id its holder may
//! have, and the CSR must ask for exactly that id and nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{CertificateSigningRequestParams, SanType};
use weft_api::SpiffeId;

use super::CaError;
use super::authority::{Authority, Issued};

/// Join tokens and the identity each one grants. Tokens are kept only as SHA-256 digests.
#[derive(Default, PartialEq)]
pub struct JoinTokens {
    by_digest: HashMap<[u8; 32], SpiffeId>,
}

impl JoinTokens {
    /// Grants `id` to whoever presents `token`.
    pub fn insert(&mut self, token: &str, id: SpiffeId) {
        self.by_digest.insert(digest(token), id);
    }

    /// Reads a token file: one `<token> <spiffe-id>` per line; blank lines and `#` comments skipped.
    pub fn load(path: &Path) -> Result<JoinTokens, CaError> {
        let text = std::fs::read_to_string(path).map_err(|source| CaError::Read {
            path: path.to_path_buf(),
            source,
            hint: " (the join token file of `weft serve --join-token-file`)",
        })?;
        JoinTokens::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<JoinTokens, CaError> {
        let mut tokens = JoinTokens::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| CaError::TokenFile { path: PathBuf::from(path), line: i + 1, reason };
            let mut words = line.split_whitespace();
            let (Some(token), Some(id), None) = (words.next(), words.next(), words.next()) else {
                return Err(bad("expected two words".to_string()));
            };
            if token.len() < 16 {
                return Err(bad("the token is shorter than 16 characters; use a long random one".to_string()));
            }
            let id = SpiffeId::parse(id).map_err(|e| bad(e.to_string()))?;
            tokens.insert(token, id);
        }
        Ok(tokens)
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    fn lookup(&self, token: &str) -> Option<&SpiffeId> {
        // Comparing digests keeps the lookup's timing independent of how much of a guess was right.
        self.by_digest.get(&digest(token))
    }
}

/// Tokens are compared and remembered only as this digest, never kept as text.
pub(super) fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// The serving CA: an [`Authority`], the join tokens it honours and the lifetime it gives.
pub struct Issuer {
    authority: Authority,
    /// Swapped whole when the token file changes.
    tokens: ArcSwap<JoinTokens>,
    ttl: Duration,
}

impl Issuer {
    /// `ttl` comes from the Mesh policy's `certTTL` (default 24 h).
    pub fn new(authority: Authority, tokens: JoinTokens, ttl: Duration) -> Result<Issuer, CaError> {
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        Ok(Issuer { authority, tokens: ArcSwap::from_pointee(tokens), ttl })
    }

    /// Honours `tokens` from now on (the token file changed); false when they are the same.
    pub fn set_tokens(&self, tokens: JoinTokens) -> bool {
        if **self.tokens.load() == tokens {
            return false;
        }
        self.tokens.store(Arc::new(tokens));
        true
    }

    pub fn token_count(&self) -> usize {
        self.tokens.load().len()
    }

    pub fn bundle_pem(&self) -> &str {
        self.authority.bundle_pem()
    }

    /// The CA itself (the control plane signs its own serving certificate with it).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The id a join token grants (None: not a join token this CA knows).
    pub fn join_token_id(&self, token: &str) -> Option<SpiffeId> {
        self.tokens.load().lookup(token).cloned()
    }

    /// Signs `csr_pem` for the holder of join token `token`. Refuses an unknown token, a CSR
    /// whose signature does not verify, and a CSR that asks for any name other than the token's id.
    pub fn sign_csr(&self, token: &str, csr_pem: &str) -> Result<(SpiffeId, Issued), CaError> {
        let allowed = self.join_token_id(token).ok_or(CaError::UnknownToken)?;
        let issued = self.sign_csr_as(&allowed, csr_pem)?;
        Ok((allowed, issued))
    }

    /// Signs `csr_pem` when it asks for exactly `allowed` (the id its caller's credential grants).
    pub fn sign_csr_as(&self, allowed: &SpiffeId, csr_pem: &str) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr { reason: format!("{e} (it must be a signed PEM CERTIFICATE REQUEST)") })?;
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested.len() != 1 || requested[0] != allowed.to_string() {
            let requested = if requested.is_empty() { "no name".to_string() } else { requested.join(", ") };
            return Err(CaError::CsrIdentityMismatch { expected: allowed.to_string(), requested });
        }
        self.authority.sign(allowed, &csr.public_key, self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair};

    use super::*;

    const TOKEN: &str = "0123456789abcdef-frontend";

    fn issuer() -> Issuer {
        let (cert, key) = Authority::generate_root("cluster.local").unwrap();
        let authority = Authority::from_pem(&cert, "ca.pem", &key, "ca-key.pem").unwrap();
        let tokens = JoinTokens::parse(
            &format!("# comment\n\n{TOKEN} spiffe://cluster.local/ns/shop/sa/frontend\n"),
            Path::new("tokens"),
        )
        .unwrap();
        Issuer::new(authority, tokens, Duration::from_secs(60)).unwrap()
    }

    fn csr(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.to_string().try_into().unwrap())
    }

    #[test]
    fn signs_exactly_the_id_the_token_grants() {
        let issuer = issuer();
        let (id, issued) =
            issuer.sign_csr(TOKEN, &csr(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")])).unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(issued.serial.len(), 32, "16 bytes of serial as hex for the audit log");
        let der = super::super::authority::pem_certificates(&issued.chain_pem, "leaf").unwrap();
        let (_, cert) =
            <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<_>>::from_der(&der[0]).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(format!("{:?}", sans.value.general_names), r#"[URI("spiffe://cluster.local/ns/shop/sa/frontend")]"#);
        assert!(!cert.is_ca());
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!((110..=130).contains(&life), "60 s TTL plus 60 s back-dating, got {life}");
    }

    #[test]
    fn refuses_other_ids_extra_names_and_unknown_tokens() {
        let issuer = issuer();
        let other = csr(vec![uri("spiffe://cluster.local/ns/shop/sa/payments")]);
        let err = issuer.sign_csr(TOKEN, &other).err().unwrap().to_string();
        assert!(err.contains("may only have spiffe://cluster.local/ns/shop/sa/frontend"), "{err}");
        let extra = csr(vec![
            uri("spiffe://cluster.local/ns/shop/sa/frontend"),
            SanType::DnsName("evil.example".try_into().unwrap()),
        ]);
        assert!(matches!(issuer.sign_csr(TOKEN, &extra), Err(CaError::CsrIdentityMismatch { .. })));
        assert!(matches!(issuer.sign_csr(TOKEN, &csr(vec![])), Err(CaError::CsrIdentityMismatch { .. })));
        let good = csr(vec![uri("spiffe://cluster.local/ns/shop/sa/frontend")]);
        assert!(matches!(issuer.sign_csr("wrong-token-wrong-token", &good), Err(CaError::UnknownToken)));
        assert!(matches!(issuer.sign_csr(TOKEN, "not a csr"), Err(CaError::BadCsr { .. })));
        // A CSR whose signature does not match its content is refused.
        let tampered = good.replace(&good[100..104], "AAAA");
        assert!(issuer.sign_csr(TOKEN, &tampered).is_err());
    }

    #[test]
    fn a_new_token_set_replaces_the_old_one_whole() {
        let issuer = issuer();
        let good = csr(vec![uri("spiffe://cluster.local/ns/shop/sa/payments")]);
        let new = "another-token-0123456789";
        assert!(matches!(issuer.sign_csr(new, &good), Err(CaError::UnknownToken)));
        let tokens =
            JoinTokens::parse(&format!("{new} spiffe://cluster.local/ns/shop/sa/payments\n"), Path::new("t")).unwrap();
        assert!(issuer.set_tokens(tokens));
        assert!(issuer.sign_csr(new, &good).is_ok(), "the added token works at once");
        assert!(matches!(issuer.sign_csr(TOKEN, &good), Err(CaError::UnknownToken)), "the removed one no longer does");
        let same =
            JoinTokens::parse(&format!("{new} spiffe://cluster.local/ns/shop/sa/payments\n"), Path::new("t")).unwrap();
        assert!(!issuer.set_tokens(same), "an unchanged file is no change");
        assert_eq!(issuer.token_count(), 1);
    }

    #[test]
    fn token_files_are_checked_line_by_line() {
        let err = JoinTokens::parse("short spiffe://cluster.local/ns/a/sa/b\n", Path::new("t")).err().unwrap();
        assert!(err.to_string().contains("t:1: the token is shorter"), "{err}");
        let err = JoinTokens::parse("0123456789abcdefgh spiffe://cluster.local/a\n", Path::new("t")).err().unwrap();
        assert!(err.to_string().contains("invalid SPIFFE id"), "{err}");
        let err = JoinTokens::parse("0123456789abcdefgh\n", Path::new("t")).err().unwrap();
        assert!(err.to_string().contains("expected two words"), "{err}");
    }
}
