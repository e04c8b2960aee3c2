//! The CA's own certificate and key: made by `weft ca init`, or an operator's root or
//! intermediate loaded from a folder, and the leaf certificates it signs for SPIFFE ids.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;
use weft_api::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CaError;

/// File names inside a CA folder (DESIGN.md "Command-line contracts").
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Optional: the roots proxies should trust, when that is more than this CA's own root (during
/// a CA change, the old and the new root, so certificates of both keep working).
pub const TRUST_BUNDLE_FILE: &str = "trust-bundle.pem";

/// Lifetime of a root made by `weft ca init`.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start this far in the past, so a peer whose clock is a little behind accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A loaded CA: it signs leaves, and knows the chain and trust bundle that go with them.
pub struct Authority {
    signer: rcgen::Issuer<'static, KeyPair>,
    /// PEM of the certificates between a leaf and the root (empty when the CA is the root).
    intermediates_pem: String,
    /// PEM of the roots that peers must trust.
    bundle_pem: String,
    /// DER of the root this CA chains to (always part of the bundle).
    root: Vec<u8>,
    not_after: SystemTime,
}

/// A signed leaf: the chain to hand to its owner, and when it stops being valid.
pub struct Issued {
    /// The leaf first, then any intermediates.
    pub chain_pem: String,
    pub not_after: SystemTime,
    /// The serial number as hex, for the audit log.
    pub serial: String,
}

impl Authority {
    /// A new self-signed root for `trust_domain`, returned with its certificate and key as PEM.
    pub fn generate_root(trust_domain: &str) -> Result<(String, String), CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Weft");
        dn.push(DnType::CommonName, format!("Weft root CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = SystemTime::now();
        params.not_before = to_offset(now - CLOCK_SKEW);
        params.not_after = to_offset(now + ROOT_LIFETIME);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Loads `DIR/ca.pem` (the CA certificate first, then its issuers up to the root) and
    /// `DIR/ca-key.pem` (the CA's PKCS#8 key).
    pub fn load(dir: &Path) -> Result<Authority, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let hint = " (make one with `weft ca init --out DIR`)";
        let cert_text = read(&cert_path, hint)?;
        let key_text = read(&key_path, hint)?;
        let mut authority = Authority::from_pem(
            &cert_text,
            &cert_path.display().to_string(),
            &key_text,
            &key_path.display().to_string(),
        )?;
        let bundle_path = dir.join(TRUST_BUNDLE_FILE);
        if bundle_path.exists() {
            let bundle = read(&bundle_path, "")?;
            authority.set_trust_bundle(&bundle, &bundle_path.display().to_string())?;
        }
        Ok(authority)
    }

    /// Replaces the roots handed out with leaves. They must include this CA's own root, or the
    /// leaves it signs would not verify anywhere.
    pub fn set_trust_bundle(&mut self, bundle_pem: &str, what: &str) -> Result<(), CaError> {
        let roots = pem_certificates(bundle_pem, what)?;
        if !roots.contains(&self.root) {
            return Err(CaError::NotACa {
                what: what.to_string(),
                reason: "as a trust bundle it must include this CA's own root (the last certificate of ca.pem)"
                    .to_string(),
            });
        }
        self.bundle_pem = roots.iter().map(|r| pem_block(r)).collect();
        Ok(())
    }

    /// Like [`Authority::load`], from PEM text; `cert_what`/`key_what` name the sources in errors.
    pub fn from_pem(cert_text: &str, cert_what: &str, key_text: &str, key_what: &str) -> Result<Authority, CaError> {
        let blocks = pem_certificates(cert_text, cert_what)?;
        let key = KeyPair::from_pem(key_text)
            .map_err(|e| CaError::Key { what: key_what.to_string(), reason: e.to_string() })?;
        let first = &blocks[0];
        let (_, cert) = X509Certificate::from_der(first)
            .map_err(|e| CaError::Pem { what: cert_what.to_string(), reason: e.to_string() })?;
        let not_a_ca = |reason: &str| CaError::NotACa { what: cert_what.to_string(), reason: reason.to_string() };
        if !cert.is_ca() {
            return Err(not_a_ca("its basic constraints do not say CA:TRUE"));
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(not_a_ca("its key usage does not allow signing certificates (keyCertSign)"));
        }
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::KeyMismatch { what: cert_what.to_string() });
        }
        let not_after =
            SystemTime::UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        if not_after <= SystemTime::now() {
            return Err(CaError::CaExpired { not_after: cert.validity().not_after.to_string() });
        }
        let first_pem = pem_block(first);
        let signer = rcgen::Issuer::from_ca_cert_pem(&first_pem, key)?;
        // The last certificate is the root peers trust; anything between it and the CA
        // certificate travels with each leaf.
        let bundle_pem = pem_block(blocks.last().expect("at least one certificate"));
        let intermediates_pem = if blocks.len() > 1 {
            blocks[..blocks.len() - 1].iter().map(|b| pem_block(b)).collect()
        } else {
            String::new()
        };
        let root = blocks.last().expect("at least one certificate").clone();
        Ok(Authority { signer, intermediates_pem, bundle_pem, root, not_after })
    }

    /// The PEM roots a peer needs to verify what this CA signs (and, during a CA change, what the
    /// previous CA signed).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// When the CA's own certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a leaf for `id` over `public_key`, valid for `ttl` (cut at the CA's own expiry).
    /// The leaf carries only the URI SAN and may serve as client and server of mutual TLS.
    pub fn sign(&self, id: &SpiffeId, public_key: &impl PublicKeyData, ttl: Duration) -> Result<Issued, CaError> {
        if ttl.is_zero() {
            return Err(CaError::ZeroTtl);
        }
        let now = SystemTime::now();
        self.sign_with_validity(id, public_key, now - CLOCK_SKEW, (now + ttl).min(self.not_after))
    }

    /// Signs a leaf whose validity is given outright (tests use it to make expired ones).
    pub fn sign_with_validity(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, CaError> {
        self.sign_named(id, &[], public_key, not_before, not_after)
    }

    /// Signs the control plane's own serving certificate: its SPIFFE id, plus the DNS names
    /// clients that verify names use (the Kubernetes API server calling the admission webhook).
    pub fn sign_server(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        let now = SystemTime::now();
        self.sign_named(id, dns_names, public_key, now - CLOCK_SKEW, (now + ttl).min(self.not_after))
    }

    fn sign_named(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        public_key: &impl PublicKeyData,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        // The identity is the URI SAN (no subject name to be confused with it).
        params.distinguished_name = DistinguishedName::new();
        let uri = id.to_string().try_into().map_err(|_| CaError::BadCsr { reason: format!("{id} is not ASCII") })?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        for name in dns_names {
            let dns = name
                .clone()
                .try_into()
                .map_err(|_| CaError::BadCsr { reason: format!("{name:?} is not a DNS name") })?;
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let serial = random_serial()?;
        let serial_hex = serial.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.signer)?;
        Ok(Issued { chain_pem: format!("{}{}", cert.pem(), self.intermediates_pem), not_after, serial: serial_hex })
    }
}

fn read(path: &Path, hint: &'static str) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read { path: PathBuf::from(path), source, hint })
}

/// The DER of every CERTIFICATE block in `text`, in order; an error when there is none.
pub fn pem_certificates(text: &str, what: &str) -> Result<Vec<Vec<u8>>, CaError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem { what: what.to_string(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate { what: what.to_string() });
    }
    Ok(certs)
}

/// One certificate as a PEM block.
pub fn pem_block(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// 16 random bytes with the top bit clear (a positive serial, RFC 5280 §4.1.2.2).
fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| CaError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority() -> Authority {
        let (cert, key) = Authority::generate_root("cluster.local").unwrap();
        Authority::from_pem(&cert, "ca.pem", &key, "ca-key.pem").unwrap()
    }

    #[test]
    fn a_trust_bundle_may_add_roots_but_must_keep_its_own() {
        let mut a = authority();
        let (old_root, _) = Authority::generate_root("cluster.local").unwrap();
        let both = format!("{old_root}{}", a.bundle_pem());
        a.set_trust_bundle(&both, "trust-bundle.pem").unwrap();
        assert_eq!(pem_certificates(a.bundle_pem(), "bundle").unwrap().len(), 2);
        let err = a.set_trust_bundle(&old_root, "trust-bundle.pem").err().unwrap().to_string();
        assert!(err.contains("must include this CA's own root"), "{err}");
    }

    #[test]
    fn an_operator_intermediate_signs_and_its_chain_travels_with_leaves() {
        let (root_pem, root_key_pem) = Authority::generate_root("cluster.local").unwrap();
        let root_key = KeyPair::from_pem(&root_key_pem).unwrap();
        let root = rcgen::Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let intermediate = params.signed_by(&key, &root).unwrap().pem();
        let ca =
            Authority::from_pem(&format!("{intermediate}{root_pem}"), "ca.pem", &key.serialize_pem(), "k").unwrap();
        assert_eq!(ca.bundle_pem(), pem_block(&pem_certificates(&root_pem, "root").unwrap()[0]));
        let leaf_key = KeyPair::generate().unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let issued = ca.sign(&id, &leaf_key, Duration::from_secs(60)).unwrap();
        let chain = pem_certificates(&issued.chain_pem, "chain").unwrap();
        assert_eq!(chain.len(), 2, "leaf, then the intermediate");
        assert_eq!(chain[1], pem_certificates(&intermediate, "i").unwrap()[0]);
    }

    #[test]
    fn refuses_a_leaf_or_a_key_of_another_certificate_as_ca() {
        let a = authority();
        let key = KeyPair::generate().unwrap();
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let leaf = a.sign(&id, &key, Duration::from_secs(60)).unwrap();
        let err = Authority::from_pem(&leaf.chain_pem, "ca.pem", &key.serialize_pem(), "k").err().unwrap();
        assert!(err.to_string().contains("not a usable CA certificate"), "{err}");
        let (cert, _) = Authority::generate_root("cluster.local").unwrap();
        let err = Authority::from_pem(&cert, "ca.pem", &key.serialize_pem(), "k").err().unwrap();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
        assert!(matches!(a.sign(&id, &key, Duration::ZERO), Err(CaError::ZeroTtl)));
    }
}
