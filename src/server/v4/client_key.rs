//! The client's side of the TLS handshake as the server checks it: a client certificate is
//! required, and it is nothing but a wrapper around an Ed25519 key. Names, dates and
//! issuers are ignored (clients are known by key, not by a CA's word), so the verifier is
//! small: exactly one certificate, an Ed25519 SubjectPublicKeyInfo, and the handshake
//! signature checked with that key.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE, the algorithm
/// identifier 1.3.101.112 with no parameters, and a BIT STRING of 32 key bytes. An Ed25519
/// SPKI has exactly one encoding, so comparing bytes is the whole check.
const ED25519_SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// An Ed25519 SPKI's length: the prefix and the 32-byte key.
const ED25519_SPKI_LEN: usize = ED25519_SPKI_PREFIX.len() + 32;

/// Requires a client certificate holding an Ed25519 key and checks that the client signed
/// the handshake with it; anything else fails the handshake.
#[derive(Debug)]
pub struct ClientKeyVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientKeyVerifier {
    /// The verifier, with the ring provider's signature algorithms.
    pub fn new() -> Self {
        ClientKeyVerifier {
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        }
    }
}

impl Default for ClientKeyVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// The SubjectPublicKeyInfo (DER) of `cert`, if it is a certificate at all.
pub fn spki_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(cert.subject_public_key_info().as_ref().to_vec())
}

/// Whether `spki` is an Ed25519 key.
pub fn is_ed25519(spki: &[u8]) -> bool {
    spki.len() == ED25519_SPKI_LEN && spki.starts_with(&ED25519_SPKI_PREFIX)
}

impl ClientCertVerifier for ClientKeyVerifier {
    /// No CA names: the client's certificate is its own.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if !intermediates.is_empty() {
            // One certificate, the key's own: a chain would mean a CA we do not use.
            return Err(Error::InvalidCertificate(CertificateError::BadEncoding));
        }
        let spki =
            spki_of(end_entity).ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if !is_ed25519(&spki) {
            // Not the key type protocol 4 knows clients by.
            return Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    /// Protocol 4 is TLS 1.3 only; the server never offers 1.2, so this is never reached.
    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    /// The proof that the client holds the key: its `CertificateVerify` signature.
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(Error::InvalidCertificate(CertificateError::BadSignature));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(alg: &'static rcgen::SignatureAlgorithm) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn one_ed25519_certificate_is_accepted_and_nothing_else() {
        let verifier = ClientKeyVerifier::new();
        let now = UnixTime::now();
        let ed = cert_with(&rcgen::PKCS_ED25519);
        assert!(verifier.verify_client_cert(&ed, &[], now).is_ok());
        assert!(is_ed25519(&spki_of(&ed).unwrap()));
        let p256 = cert_with(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert!(verifier.verify_client_cert(&p256, &[], now).is_err(), "not Ed25519");
        assert!(
            verifier.verify_client_cert(&ed, std::slice::from_ref(&ed), now).is_err(),
            "a chain"
        );
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(verifier.verify_client_cert(&garbage, &[], now).is_err(), "not a certificate");
        assert_eq!(verifier.supported_verify_schemes(), vec![SignatureScheme::ED25519]);
        assert!(verifier.client_auth_mandatory());
    }
}
