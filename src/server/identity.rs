//! The server's identity for protocol 4: an Ed25519 key pair kept beside the database, the
//! self-signed certificate TLS presents it in, and its fingerprint.
//!
//! The key file is `<database>.key` (`server.db` → `server.db.key`): one key per database,
//! so two servers with their databases in one directory never share a key, and a backup of
//! the directory keeps each database with its key. It holds the key as PKCS#8 in PEM
//! (`-----BEGIN PRIVATE KEY-----`), which `openssl pkey` reads and `openssl genpkey
//! -algorithm ed25519` writes, so an operator may bring their own. It is written once,
//! atomically (a temporary file renamed into place) with mode 0600, and never rewritten.
//!
//! The certificate is made afresh at each start from the key (Ed25519 signatures are
//! deterministic but validity dates are not): clients trust the key, not the certificate,
//! so only the key needs to last. The fingerprint is what clients pin: the SHA-256 of the
//! key's SubjectPublicKeyInfo DER, shown as ssh shows keys, `SHA256:` and unpadded base64.

use crate::crypto::ed25519;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The name the certificate is issued to. Clients check the key, never the name.
const CERT_NAME: &str = "securexfer";

/// Why the server identity cannot be used.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("server key {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The key file exists but does not hold a usable Ed25519 key.
    #[error(
        "server key {path}: {reason}; restore the file from a backup (clients that trust \
         this server know its key), or move it away to make a new key"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate could not be made.
    #[error("cannot make the server certificate: {0}")]
    Certificate(String),
}

/// The server's key, its certificate and fingerprint.
pub struct ServerIdentity {
    /// The PKCS#8 DER of the private key.
    pkcs8: Vec<u8>,
    /// The self-signed certificate around the key.
    certificate: CertificateDer<'static>,
    /// `SHA256:…` of the SubjectPublicKeyInfo.
    fingerprint: String,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("ServerIdentity").field("fingerprint", &self.fingerprint).finish()
    }
}

/// Where the key of database `db` is kept: `<db>.key`.
pub fn key_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

impl ServerIdentity {
    /// Loads the key at `path`, or makes one and writes it there when there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, IdentityError> {
        let io_err = |source| IdentityError::Io { path: path.to_owned(), source };
        match fs::read(path) {
            Ok(text) => Self::from_pem(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let identity = Self::from_pkcs8(path, generate()?)?;
                crate::atomic_file::write_private(
                    path,
                    ed25519::pem_encode(&identity.pkcs8).as_bytes(),
                )
                .map_err(io_err)?;
                Ok(identity)
            }
            Err(e) => Err(io_err(e)),
        }
    }

    /// Loads the key at `path` without ever making one: `None` when there is none yet
    /// (the operator's tools only look; `serve` makes the key at its first start).
    pub fn load(path: &Path) -> Result<Option<Self>, IdentityError> {
        match fs::read(path) {
            Ok(text) => Self::from_pem(path, &text).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(IdentityError::Io { path: path.to_owned(), source }),
        }
    }

    /// A key that lives only as long as the process: for servers over records the caller
    /// supplies (tests, fuzzing), which have no database to keep a key beside.
    pub fn ephemeral() -> Result<Self, IdentityError> {
        Self::from_pkcs8(Path::new("(in memory)"), generate()?)
    }

    /// A fresh key as PKCS#8, for records that keep the key themselves (see
    /// [`crate::store::Records::server_key`]).
    pub fn generate_pkcs8() -> Result<Vec<u8>, IdentityError> {
        generate()
    }

    /// The key `pkcs8` kept in `place` (what errors name: a database, say).
    pub fn from_stored(place: &str, pkcs8: Vec<u8>) -> Result<Self, IdentityError> {
        Self::from_pkcs8(Path::new(place), pkcs8)
    }

    /// The private key as PKCS#8 DER: what records that keep the key hold (`db migrate`
    /// moves a single machine's key file into them, so clients' pins stay true).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// `SHA256:…`, what clients pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The certificate TLS presents.
    pub fn certificate(&self) -> CertificateDer<'static> {
        self.certificate.clone()
    }

    /// The private key, for the TLS configuration.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.clone()))
    }

    fn from_pem(path: &Path, text: &[u8]) -> Result<Self, IdentityError> {
        let corrupt = |reason: &str| IdentityError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        let text = std::str::from_utf8(text).map_err(|_| corrupt("not PEM text"))?;
        let pkcs8 =
            ed25519::pem_decode(text).ok_or_else(|| corrupt("not a PEM \"PRIVATE KEY\""))?;
        Self::from_pkcs8(path, pkcs8)
    }

    fn from_pkcs8(path: &Path, pkcs8: Vec<u8>) -> Result<Self, IdentityError> {
        // v1 (OpenSSL's) and v2 (ring's, with the public key) PKCS#8 both load.
        let spki = ed25519::spki_of(&pkcs8)
            .map_err(|reason| IdentityError::Corrupt { path: path.to_owned(), reason })?;
        let certificate = ed25519::self_signed(&pkcs8, CERT_NAME)
            .map_err(|e| IdentityError::Certificate(e.to_string()))?;
        Ok(ServerIdentity {
            fingerprint: crate::crypto::fingerprint::of(&spki),
            pkcs8,
            certificate,
        })
    }
}

/// A fresh key, as PKCS#8 v1 so that `openssl pkey` reads it.
fn generate() -> Result<Vec<u8>, IdentityError> {
    ed25519::generate_pkcs8()
        .ok_or_else(|| IdentityError::Certificate("no random numbers for a key".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519::{PKCS8_V1_PREFIX as ED25519_PKCS8_V1_PREFIX, pem_decode};
    use ring::signature::{Ed25519KeyPair, KeyPair};

    #[test]
    fn the_key_is_made_once_with_mode_0600_and_reused_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("server.db"));
        assert!(path.ends_with("server.db.key"));
        let first = ServerIdentity::load_or_create(&path).unwrap();
        let written = fs::read(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let again = ServerIdentity::load_or_create(&path).unwrap();
        assert_eq!(again.fingerprint(), first.fingerprint());
        assert_eq!(fs::read(&path).unwrap(), written, "the file is never rewritten");
        let text = std::str::from_utf8(&written).unwrap();
        let der = pem_decode(text).unwrap();
        assert!(der.starts_with(&ED25519_PKCS8_V1_PREFIX) && der.len() == 48, "PKCS#8 v1");
        assert!(first.fingerprint().starts_with("SHA256:"));
        assert_eq!(first.fingerprint().len(), "SHA256:".len() + 43, "32 bytes, no padding");
        let other = ServerIdentity::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_ne!(other.fingerprint(), first.fingerprint());
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db.key");
        for junk in
            [&b"garbage"[..], b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
        {
            fs::write(&path, junk).unwrap();
            let error = ServerIdentity::load_or_create(&path).unwrap_err();
            assert!(matches!(error, IdentityError::Corrupt { .. }), "{error}");
            assert!(error.to_string().contains("server.db.key"), "{error}");
            assert_eq!(fs::read(&path).unwrap(), junk, "never overwritten");
        }
    }

    #[test]
    fn the_certificate_carries_the_key_the_fingerprint_names() {
        let identity = ServerIdentity::ephemeral().unwrap();
        let cert = identity.certificate();
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&identity.pkcs8).unwrap();
        let spki = [&ed25519::SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
        assert!(cert.windows(spki.len()).any(|w| w == spki), "the SPKI is in the certificate");
        assert_eq!(identity.fingerprint(), crate::crypto::fingerprint::of(&spki));
        assert!(!format!("{identity:?}").contains("pkcs8"), "no key in Debug");
    }

    #[test]
    fn a_key_from_openssl_genpkey_loads() {
        // `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key inside).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIA4l2WoIDmhdj/Uw2YRKMsDE+6BSiw6SbjmuUSN7dkSj\n\
                   -----END PRIVATE KEY-----\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db.key");
        fs::write(&path, pem).unwrap();
        ServerIdentity::load_or_create(&path).unwrap();
    }
}
