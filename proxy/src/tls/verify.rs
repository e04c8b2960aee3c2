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
pub struct IdentityMismatch {
    pub expected: String,
    pub presented: String,
}

/// Verifies a peer proxy's certificate for one expected SPIFFE id. Names (DNS, IP) play no
/// part: mesh certificates carry only the URI SAN.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
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
pub struct NoId(pub String);

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
pub fn failure_reason(e: &std::io::Error) -> &'static str {
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
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => "expired",
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
