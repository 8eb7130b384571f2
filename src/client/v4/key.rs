//! The client's protocol-4 key for one server: an Ed25519 key in
//! `servers/<host>_<port>/client.key` of the client's home, beside that server's protocol-3
//! identity, and the self-signed certificate it is presented in at each connection.
//!
//! One key per server, so that two servers cannot tell they serve the same person. The
//! file holds PKCS#8 in PEM (what `openssl pkey` reads), mode 0600, and is created once,
//! atomically, and never rewritten: the server knows the client by this key, so a replaced
//! key is a lost identity. A file that is not a usable key is an error and is left alone.

use crate::crypto::ed25519;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The key file's name in a server's directory of the client's home.
pub const CLIENT_KEY: &str = "client.key";
/// The name the client certificate is issued to; the server identifies clients by key.
const CERT_NAME: &str = "securexfer client";

/// Why the client key cannot be used.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("client key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file exists but does not hold an Ed25519 key.
    #[error(
        "client key {path}: {reason}; the server knows this client by that key, so it is \
         not replaced: restore it from a backup, or move it away to register anew"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No key or certificate could be made.
    #[error("cannot make the client key or its certificate: {0}")]
    Make(String),
}

/// The client's key for one server.
pub struct ClientKey {
    pkcs8: Vec<u8>,
    spki: Vec<u8>,
}

impl std::fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("ClientKey").field("fingerprint", &self.fingerprint()).finish()
    }
}

impl ClientKey {
    /// The key at `path`, `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, KeyFileError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_pem(path, &bytes).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyFileError::Io { path: path.to_owned(), source }),
        }
    }

    /// The key at `path`, made and written there first when there is none; the flag says
    /// whether it was made now. Two processes making one at once end with one key: the
    /// one that loses the race reads the winner's.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyFileError> {
        if let Some(key) = Self::load(path)? {
            return Ok((key, false));
        }
        let pkcs8 = ed25519::generate_pkcs8()
            .ok_or_else(|| KeyFileError::Make("no random numbers".into()))?;
        let key = Self::from_pkcs8(path, pkcs8)?;
        match crate::atomic_file::create_private(path, ed25519::pem_encode(&key.pkcs8).as_bytes()) {
            Ok(()) => Ok((key, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let key = Self::load(path)?.ok_or_else(|| KeyFileError::Io {
                    path: path.to_owned(),
                    source: io::Error::new(io::ErrorKind::NotFound, "vanished after creation"),
                })?;
                Ok((key, false))
            }
            Err(source) => Err(KeyFileError::Io { path: path.to_owned(), source }),
        }
    }

    /// `SHA256:…` of the public key, as the server's operator sees it.
    pub fn fingerprint(&self) -> String {
        crate::crypto::fingerprint::of(&self.spki)
    }

    /// The 32 bytes behind the fingerprint (the upgrade statement's `fp`).
    pub fn raw_fingerprint(&self) -> [u8; 32] {
        crate::crypto::fingerprint::raw(&self.spki)
    }

    /// A fresh self-signed certificate around the key, for one connection.
    pub fn certificate(&self) -> Result<CertificateDer<'static>, KeyFileError> {
        ed25519::self_signed(&self.pkcs8, CERT_NAME).map_err(|e| KeyFileError::Make(e.to_string()))
    }

    /// The private key, for the TLS configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }

    fn from_pem(path: &Path, bytes: &[u8]) -> Result<Self, KeyFileError> {
        let corrupt =
            |reason: &str| KeyFileError::Corrupt { path: path.to_owned(), reason: reason.into() };
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not PEM text"))?;
        let pkcs8 =
            ed25519::pem_decode(text).ok_or_else(|| corrupt("not a PEM \"PRIVATE KEY\""))?;
        Self::from_pkcs8(path, pkcs8)
    }

    fn from_pkcs8(path: &Path, pkcs8: Vec<u8>) -> Result<Self, KeyFileError> {
        let spki = ed25519::spki_of(&pkcs8)
            .map_err(|reason| KeyFileError::Corrupt { path: path.to_owned(), reason })?;
        Ok(ClientKey { pkcs8, spki })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_with_mode_0600_and_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("servers").join("h_1").join(CLIENT_KEY);
        assert!(ClientKey::load(&path).unwrap().is_none());
        let (first, made) = ClientKey::load_or_create(&path).unwrap();
        assert!(made);
        let written = std::fs::read(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, made) = ClientKey::load_or_create(&path).unwrap();
        assert!(!made);
        assert_eq!(again.fingerprint(), first.fingerprint());
        assert_eq!(std::fs::read(&path).unwrap(), written);
        assert!(std::str::from_utf8(&written).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{first:?}").contains("pkcs8"), "no key in Debug");
    }

    #[test]
    fn a_corrupt_key_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CLIENT_KEY);
        std::fs::write(&path, "not a key").unwrap();
        let e = ClientKey::load_or_create(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(CLIENT_KEY), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn the_certificate_carries_the_key_the_fingerprint_names() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = ClientKey::load_or_create(&dir.path().join(CLIENT_KEY)).unwrap();
        let cert = key.certificate().unwrap();
        let parsed = webpki::EndEntityCert::try_from(&cert).unwrap();
        let spki = parsed.subject_public_key_info();
        assert_eq!(crate::crypto::fingerprint::of(spki.as_ref()), key.fingerprint());
        assert_eq!(crate::crypto::fingerprint::raw(spki.as_ref()), key.raw_fingerprint());
    }
}
