//! Ed25519 keys as protocol 4 keeps and presents them, on both sides: a fresh key as
//! PKCS#8 v1 DER, the PEM text the key files hold, the SubjectPublicKeyInfo a fingerprint
//! is taken of, and the self-signed certificate TLS presents the key in.
//!
//! The server's key (`server::identity`) and each client's key per server
//! (`client::v4::key`) are the same kind of thing kept in the same format, so an operator's
//! `openssl pkey` reads either, and one definition serves both.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// The PEM label of a PKCS#8 private key.
pub const PEM_LABEL: &str = "PRIVATE KEY";
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE, the algorithm
/// identifier 1.3.101.112, and the BIT STRING header of the 32-byte key.
pub const SPKI_PREFIX: [u8; 12] =
    [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// The DER prefix of an Ed25519 private key in PKCS#8 v1 (RFC 8410, section 7): SEQUENCE,
/// version 0, the algorithm identifier, and the OCTET STRING around the 32-byte seed.
pub const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A fresh Ed25519 key as PKCS#8 v1 DER (RFC 8410: the prefix, then the 32-byte seed);
/// `None` when the system has no random numbers. Not ring's own `generate_pkcs8`: that
/// writes PKCS#8 v2, which OpenSSL 3.0 cannot read, and people should be able to inspect
/// a key with `openssl pkey`.
pub fn generate_pkcs8() -> Option<Vec<u8>> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut seed).ok()?;
    Some([&PKCS8_V1_PREFIX[..], &seed].concat())
}

/// The SubjectPublicKeyInfo DER of the key in `pkcs8` (v1, as OpenSSL writes it, or v2, as
/// ring does), or why it is not an Ed25519 key.
pub fn spki_of(pkcs8: &[u8]) -> Result<Vec<u8>, String> {
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|e| format!("not an Ed25519 PKCS#8 key ({e})"))?;
    Ok([&SPKI_PREFIX[..], pair.public_key().as_ref()].concat())
}

/// A self-signed certificate for the key in `pkcs8`, issued to `name` (which nobody
/// checks: peers trust the key).
pub fn self_signed(pkcs8: &[u8], name: &str) -> Result<CertificateDer<'static>, rcgen::Error> {
    let der = PrivatePkcs8KeyDer::from(pkcs8);
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    Ok(params.self_signed(&key)?.der().clone())
}

/// `der` as a PEM `PRIVATE KEY`, in lines of 64 characters.
pub fn pem_encode(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
    format!("-----BEGIN {PEM_LABEL}-----\n{}\n-----END {PEM_LABEL}-----\n", lines.join("\n"))
}

/// The DER inside the first PEM `PRIVATE KEY` of `text`.
pub fn pem_decode(text: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let (_, rest) = text.split_once(&begin)?;
    let (body, _) = rest.split_once(&end)?;
    let body: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_survives_pem_and_its_certificate_carries_its_spki() {
        let pkcs8 = generate_pkcs8().unwrap();
        assert!(pkcs8.starts_with(&PKCS8_V1_PREFIX) && pkcs8.len() == 48, "PKCS#8 v1");
        assert_eq!(pem_decode(&pem_encode(&pkcs8)).unwrap(), pkcs8);
        let spki = spki_of(&pkcs8).unwrap();
        let cert = self_signed(&pkcs8, "x").unwrap();
        assert!(cert.windows(spki.len()).any(|w| w == spki));
        assert!(spki_of(b"junk").is_err());
    }
}
