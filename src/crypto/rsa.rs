//! RSA key pairs as the protocol uses them: 1024-bit keys with public exponent 17 (so the
//! SubjectPublicKeyInfo DER is exactly 160 bytes), the public key field, the private key as
//! base64 DER in `me.info`/`priv.key`, and RSA-OAEP (SHA-1, MGF1-SHA-1, empty label) for
//! the 16-byte AES key.

use super::AesKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use sha1::Sha1;
use thiserror::Error;

use crate::protocol::{PUBLIC_KEY_LEN, PublicKeyField};

/// The modulus size the protocol uses.
pub const KEY_BITS: usize = 1024;
/// The public exponent the peer client library uses; with it the SPKI is 160 bytes.
pub const PUBLIC_EXPONENT: u64 = 17;
/// RSA-OAEP ciphertext length for a 1024-bit key.
pub const ENCRYPTED_KEY_LEN: usize = KEY_BITS / 8;

/// What can be wrong with a key or a key operation.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The public key field does not start with a DER SEQUENCE that fits the field.
    #[error("the public key field does not hold a DER-encoded key that fits its 160 bytes")]
    NotDer,
    /// Bytes after the DER encoding that are not zero padding.
    #[error("the public key field has non-zero bytes after the key")]
    BadPadding,
    /// The DER is not an RSA SubjectPublicKeyInfo.
    #[error("the public key is not a valid RSA SubjectPublicKeyInfo: {0}")]
    BadPublicKey(String),
    /// A usable RSA key of the wrong size.
    #[error("the RSA key has {0} bits; this protocol uses 1024-bit keys")]
    WrongSize(usize),
    /// The encoded public key does not fit the field.
    #[error("the public key encodes to {0} bytes, more than the 160-byte field")]
    TooLong(usize),
    /// The private key text is not base64 of a PKCS#8 or PKCS#1 RSA key.
    #[error("the private key is not base64 of a DER RSA private key (PKCS#8 or PKCS#1): {0}")]
    BadPrivateKey(String),
    /// The text holds a public key where a private key was expected.
    #[error("this holds a public key, not the private key")]
    PublicNotPrivate,
    /// RSA-OAEP failed (wrong key for this ciphertext, or a damaged ciphertext).
    #[error("RSA-OAEP failed: {0}")]
    Oaep(String),
    /// The decrypted AES key does not have 16 bytes.
    #[error("the decrypted AES key has {0} bytes, expected 16")]
    AesKeyLength(usize),
    /// Signing failed (a key the `rsa` crate cannot sign with).
    #[error("RSA signing failed: {0}")]
    Signature(String),
}

/// A client's private key.
#[derive(Clone)]
pub struct PrivateKey(rsa::PrivateKey);

/// A public key as the server stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(rsa::PublicKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({} bits)", self.0.n().bit_width())
    }
}

impl PrivateKey {
    /// Generates a 1024-bit key with exponent 17.
    ///
    /// # Panics
    /// When the operating system's random source fails.
    pub fn generate() -> Self {
        let key = rsa::PrivateKey::new_with_exp(
            &mut getrandom::SysRng,
            KEY_BITS,
            rsa::BoxedUint::from(PUBLIC_EXPONENT),
        )
        .expect("RSA key generation with the OS random source");
        PrivateKey(key)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.to_public_key())
    }

    /// Loads base64 DER (PKCS#8 as the peers write it, or PKCS#1), ignoring whitespace and
    /// line breaks anywhere in the text.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let der = decode_base64(text).map_err(KeyError::BadPrivateKey)?;
        Self::from_der(&der)
    }

    /// Loads DER, PKCS#8 or PKCS#1.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = rsa::PrivateKey::from_pkcs8_der(der)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_der(der))
            .map_err(|e| {
                if rsa::PublicKey::from_public_key_der(der).is_ok() {
                    KeyError::PublicNotPrivate
                } else {
                    KeyError::BadPrivateKey(e.to_string())
                }
            })?;
        Ok(PrivateKey(key))
    }

    /// PKCS#8 DER as base64 on one line, as `priv.key` and `me.info` line 3 hold it.
    pub fn to_base64(&self) -> String {
        let der = self.0.to_pkcs8_der().expect("encoding a valid key");
        BASE64.encode(der.as_bytes())
    }

    /// The RSASSA-PKCS1-v1_5 signature with SHA-256 (RFC 8017, section 8.2) of `message`:
    /// protocol 4's upgrade proof. Deterministic, and a signature of a message whose hash
    /// the client computed itself, so none of the decryption oracles of RSA reach it.
    pub fn sign_pkcs1v15_sha256(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(message);
        self.0
            .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
            .map_err(|e| KeyError::Signature(e.to_string()))
    }

    /// Decrypts an AES key sent in a 2102 or 2105.
    pub fn decrypt_aes_key(&self, ciphertext: &[u8]) -> Result<AesKey, KeyError> {
        let plain =
            self.0.oaep_decrypt::<Sha1>(ciphertext).map_err(|e| KeyError::Oaep(e.to_string()))?;
        let len = plain.len();
        plain.try_into().map_err(|_| KeyError::AesKeyLength(len))
    }
}

impl PublicKey {
    /// Parses the 160-byte field: a DER SubjectPublicKeyInfo of a 1024-bit RSA key, followed
    /// only by zero padding.
    pub fn from_field(field: &PublicKeyField) -> Result<Self, KeyError> {
        let len = der_len(&field.0).ok_or(KeyError::NotDer)?;
        if field.0[len..].iter().any(|&b| b != 0) {
            return Err(KeyError::BadPadding);
        }
        Self::from_der(&field.0[..len])
    }

    /// Parses SubjectPublicKeyInfo DER.
    pub fn from_der(der: &[u8]) -> Result<Self, KeyError> {
        let key = rsa::PublicKey::from_public_key_der(der)
            .map_err(|e| KeyError::BadPublicKey(e.to_string()))?;
        let bits = key.n().bit_width() as usize;
        if bits != KEY_BITS {
            return Err(KeyError::WrongSize(bits));
        }
        Ok(PublicKey(key))
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Vec<u8> {
        self.0.to_public_key_der().expect("encoding a valid key").into_vec()
    }

    /// The 160-byte field, zero padded.
    pub fn to_field(&self) -> Result<PublicKeyField, KeyError> {
        let der = self.to_der();
        if der.len() > PUBLIC_KEY_LEN {
            return Err(KeyError::TooLong(der.len()));
        }
        let mut field = [0u8; PUBLIC_KEY_LEN];
        field[..der.len()].copy_from_slice(&der);
        Ok(PublicKeyField(field))
    }

    /// Encrypts an AES key for a 2102 or 2105.
    pub fn encrypt_aes_key(&self, key: &AesKey) -> Result<Vec<u8>, KeyError> {
        self.0.oaep_encrypt::<Sha1>(key).map_err(|e| KeyError::Oaep(e.to_string()))
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5 signature with SHA-256 of
    /// `message` (RFC 8017, 8.2): protocol 4's proof that a protocol-3 client holds its
    /// private key (docs/protocol-v4.md, "Upgrade of a protocol-3 client"). Verifying is a
    /// public operation, so the timing advisory on RSA decryption does not reach it.
    pub fn verify_pkcs1v15_sha256(&self, message: &[u8], signature: &[u8]) -> bool {
        use sha2::Digest;
        let hashed = sha2::Sha256::digest(message);
        self.0.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &hashed, signature).is_ok()
    }
}

/// Decodes base64 that may be wrapped over lines or padded with whitespace.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    BASE64.decode(compact).map_err(|e| e.to_string())
}

/// The total length of the DER element at the start of `bytes` (a SEQUENCE), if it fits.
fn der_len(bytes: &[u8]) -> Option<usize> {
    if bytes.first() != Some(&0x30) {
        return None;
    }
    let first = *bytes.get(1)? as usize;
    let (header, content) = match first {
        0..=0x7f => (2, first),
        0x81 => (3, *bytes.get(2)? as usize),
        0x82 => (4, (*bytes.get(2)? as usize) << 8 | *bytes.get(3)? as usize),
        _ => return None,
    };
    let total = header + content;
    (total <= bytes.len()).then_some(total)
}
