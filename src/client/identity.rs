//! The client's files, compatible with the existing C++ client: `me.info` (name, id,
//! private key), `priv.key` (the private key) and `transfer.info` (server, name, files).
//!
//! Every variant in the captures is read: a dashed UUID or 32 hex digits for the id, the key
//! wrapped over lines or on one line with no final newline, and a `me.info` that holds the
//! *public* key with the private key only in `priv.key`.

use crate::crypto::PrivateKey;
use crate::crypto::rsa::KeyError;
use crate::protocol::ClientId;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The identity file's name.
pub const ME_INFO: &str = "me.info";
/// The private key file's name, beside `me.info`.
pub const PRIV_KEY: &str = "priv.key";
/// The transfer description's name.
pub const TRANSFER_INFO: &str = "transfer.info";

/// What is wrong with an identity or transfer file.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file's content is not what it should be.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, for a person.
        reason: String,
    },
    /// An identity exists and overwriting it was not asked for.
    #[error(
        "an identity already exists at {0}; pass --force to replace it (the server keeps the old registration)"
    )]
    Exists(PathBuf),
}

fn format_error(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::Format { path: path.to_owned(), reason: reason.into() }
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io { path: path.to_owned(), source })
}

/// A registered client: its name, the id the server gave, and its private key.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The registered name.
    pub name: String,
    /// The server-given id.
    pub id: ClientId,
    /// The private key whose public half the server holds.
    pub key: PrivateKey,
}

impl Identity {
    /// Reads `me.info` at `path` (and `priv.key` beside it when `me.info` does not hold the
    /// private key).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = read(path)?;
        let mut lines = text.lines();
        let name = lines
            .next()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format_error(path, "line 1 (the client name) is missing"))?
            .to_owned();
        let id_line =
            lines.next().ok_or_else(|| format_error(path, "line 2 (the client id) is missing"))?;
        let id = ClientId::parse(id_line).ok_or_else(|| {
            format_error(path, format!("line 2 {id_line:?} is not 32 hex digits or a UUID"))
        })?;
        let key_text: String = lines.collect::<Vec<_>>().join("\n");
        let key = match PrivateKey::from_base64(&key_text) {
            Ok(key) => key,
            Err(first) => {
                let priv_path = path.with_file_name(PRIV_KEY);
                let priv_text = read(&priv_path).map_err(|_| {
                    format_error(
                        path,
                        format!(
                            "lines 3+ do not hold the private key ({first}) and {} could not be read",
                            priv_path.display()
                        ),
                    )
                })?;
                PrivateKey::from_base64(&priv_text)
                    .map_err(|e: KeyError| format_error(&priv_path, e.to_string()))?
            }
        };
        Ok(Identity { name, id, key })
    }

    /// Writes `me.info` at `path` and `priv.key` beside it, each atomically (a temporary
    /// file renamed into place) and readable by the owner only.
    pub fn save(&self, path: &Path, force: bool) -> Result<(), IdentityError> {
        if path.exists() && !force {
            return Err(IdentityError::Exists(path.to_owned()));
        }
        let key = self.key.to_base64();
        let me = format!("{}\n{}\n{}\n", self.name, self.id.to_hex(), key);
        let write = |path: &Path, text: &str| {
            crate::atomic_file::write_private(path, text.as_bytes())
                .map_err(|source| IdentityError::Io { path: path.to_owned(), source })
        };
        write(&path.with_file_name(PRIV_KEY), &format!("{key}\n"))?;
        write(path, &me)
    }
}

/// `transfer.info`: the server, the client name, and the files to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferInfo {
    /// `host:port`.
    pub server: String,
    /// The client name.
    pub name: String,
    /// Files to send, one per line from line 3.
    pub files: Vec<PathBuf>,
}

impl TransferInfo {
    /// Reads `transfer.info`.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = read(path)?;
        let mut lines = text.lines().map(str::trim);
        let server = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| format_error(path, "line 1 (host:port) is missing"))?
            .to_owned();
        let name = lines
            .next()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| format_error(path, "line 2 (the client name) is missing"))?
            .to_owned();
        let files: Vec<PathBuf> = lines.filter(|l| !l.is_empty()).map(PathBuf::from).collect();
        if files.is_empty() {
            return Err(format_error(path, "line 3 (the file to send) is missing"));
        }
        Ok(TransferInfo { server, name, files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_loads_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ME_INFO);
        let id =
            Identity { name: "alice".into(), id: ClientId([9; 16]), key: PrivateKey::generate() };
        id.save(&path, false).unwrap();
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.name, "alice");
        assert_eq!(back.id, id.id);
        assert_eq!(back.key.to_base64(), id.key.to_base64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in [ME_INFO, PRIV_KEY] {
                let mode = fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{f}");
            }
        }
        assert!(matches!(id.save(&path, false), Err(IdentityError::Exists(_))));
        id.save(&path, true).unwrap();
    }

    #[test]
    fn transfer_info_lists_every_file_from_line_three() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TRANSFER_INFO);
        fs::write(&path, "127.0.0.1:1234\nbob\na.txt\n\nb.txt").unwrap();
        let t = TransferInfo::load(&path).unwrap();
        assert_eq!(t.server, "127.0.0.1:1234");
        assert_eq!(t.name, "bob");
        assert_eq!(t.files, vec![PathBuf::from("a.txt"), PathBuf::from("b.txt")]);
        fs::write(&path, "127.0.0.1:1234\nbob").unwrap();
        assert!(TransferInfo::load(&path).is_err());
    }
}
