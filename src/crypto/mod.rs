//! Cryptography and checksums the protocol fixes: RSA-1024 key pairs and OAEP-SHA-1 key
//! transport, AES-128-CBC with a zero IV as streaming encryptor and decryptor, and the
//! POSIX `cksum` CRC as a streaming hasher.

pub mod aes;
pub mod cksum;
pub mod ed25519;
pub mod fingerprint;
pub mod invite;
pub mod rsa;

pub use self::aes::{AesKey, CbcDecryptor, CbcEncryptor, PaddingError};
pub use self::cksum::{Cksum, ZlibCrc32};
pub use self::rsa::{KeyError, PrivateKey, PublicKey};

/// Fills `buf` from the operating system's random source.
///
/// # Panics
/// When the OS has no randomness to give; nothing safe can continue then.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random source failed");
    buf
}
