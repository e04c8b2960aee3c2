//! Outbound peer verification: the server's chain must lead to the bundle *and* its SPIFFE id
//! must be the one expected for that endpoint; plus the reasons handshake failures are counted by.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, OtherError, SignatureScheme};
use weft_api::SpiffeId;

use super::identity::peer_id;

/// The peer proved a different identity than the endpoint's `identity`.
#[derive(Debug, thiserror::Error)]
#[error("the peer is {presented}, but this endpoint must be {expected}")]
pub(crate) struct IdentityMismatch {
    pub expected: String,
    pub presented: String,
}

/// Verifies a peer proxy's certificate for one expected SPIFFE id. Names (DNS, IP) play no
/// part: mesh certificates carry only the URI SAN.
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    pub anchors: Arc<[TrustAnchor<'static>]>,
    pub expected: SpiffeId,
    pub provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let presented = peer_id(end_entity)
            .map_err(|reason| Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NoId(reason))))))?;
        if presented != self.expected {
            let mismatch = IdentityMismatch { expected: self.expected.to_string(), presented: presented.to_string() };
            return Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(mismatch)))));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate without a usable SPIFFE id.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NoId(pub(crate) String);

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as W;
    Error::InvalidCertificate(match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertExpired { .. } | W::InvalidCertValidity => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

/// A handshake failure in words: ours (identity mismatch, no SPIFFE id) by their own message,
/// rustls's by its own.
pub fn describe(e: &std::io::Error) -> String {
    if let Some(Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
        e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
    {
        return format!("invalid peer certificate: {inner}");
    }
    e.to_string()
}

/// The `reason` label of `weft_tls_handshake_errors_total` for a failed handshake.
pub(crate) fn failure_reason(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::InvalidData => "not-tls",
            _ => "io",
        };
    };
    match tls {
        Error::NoCertificatesPresented => "no-client-cert",
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown-ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            // Apart from expired: usually a clock that is behind, on one side or the other.
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "not-yet-valid",
            CertificateError::Other(OtherError(inner)) if inner.is::<IdentityMismatch>() => "wrong-identity",
            CertificateError::Other(OtherError(inner)) if inner.is::<NoId>() => "no-spiffe-id",
            _ => "bad-certificate",
        },
        Error::AlertReceived(_) => "rejected-by-peer",
        Error::InvalidMessage(_) => "not-tls",
        Error::PeerIncompatible(_) | Error::NoApplicationProtocol => "incompatible",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};
    use rustls::pki_types::CertificateDer;

    use super::*;

    struct Ca {
        issuer: rcgen::Issuer<'static, KeyPair>,
        der: CertificateDer<'static>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        Ca { der: cert.der().clone(), issuer: rcgen::Issuer::new(params, key) }
    }

    fn leaf(ca: &Ca, uris: &[&str], not_after: SystemTime) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris.iter().map(|u| SanType::URI(u.to_string().try_into().unwrap())).collect();
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
        params.not_after = not_after.into();
        params.signed_by(&key, &ca.issuer).unwrap().der().clone()
    }

    fn verify(trusted: &Ca, cert: &CertificateDer<'_>, expected: &str) -> Result<(), Error> {
        let anchor = webpki::anchor_from_trusted_cert(&trusted.der).unwrap().to_owned();
        let verifier = SpiffeServerVerifier {
            anchors: vec![anchor].into(),
            expected: SpiffeId::parse(expected).unwrap(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now()).map(drop)
    }

    fn reason(e: Error) -> &'static str {
        failure_reason(&std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
    const LATER: Duration = Duration::from_secs(3600);

    #[test]
    fn accepts_exactly_the_expected_identity_from_the_bundle() {
        let ca = ca();
        let good = leaf(&ca, &[PAYMENTS], SystemTime::now() + LATER);
        verify(&ca, &good, PAYMENTS).unwrap();
        let err = verify(&ca, &good, "spiffe://cluster.local/ns/shop/sa/ledger").unwrap_err();
        assert_eq!(reason(err), "wrong-identity");
    }

    #[test]
    fn rejects_other_cas_expired_certificates_and_missing_or_extra_ids() {
        let (ca, other) = (ca(), ca());
        let foreign = leaf(&other, &[PAYMENTS], SystemTime::now() + LATER);
        assert_eq!(reason(verify(&ca, &foreign, PAYMENTS).unwrap_err()), "unknown-ca");
        let expired = leaf(&ca, &[PAYMENTS], SystemTime::now() - Duration::from_secs(60));
        assert_eq!(reason(verify(&ca, &expired, PAYMENTS).unwrap_err()), "expired");
        let nameless = leaf(&ca, &[], SystemTime::now() + LATER);
        assert_eq!(reason(verify(&ca, &nameless, PAYMENTS).unwrap_err()), "no-spiffe-id");
        let two = leaf(&ca, &[PAYMENTS, "spiffe://cluster.local/ns/shop/sa/ledger"], SystemTime::now() + LATER);
        assert_eq!(reason(verify(&ca, &two, PAYMENTS).unwrap_err()), "no-spiffe-id");
    }
}
