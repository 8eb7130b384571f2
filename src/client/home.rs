//! The client's home: where identities live when they are not the existing client's files
//! in the working directory.
//!
//! Like ssh's `~/.ssh`, one directory per user, under the XDG config directory:
//!
//! ```text
//! $XDG_CONFIG_HOME/securexfer/          (~/.config/securexfer)
//!   default-server                      the server of the latest `register` (one line)
//!   servers/<host>_<port>/me.info       the identity registered with that server
//!   servers/<host>_<port>/priv.key      its private key (mode 0600)
//!   servers/<host>_<port>/client.key    the protocol-4 key for that server (mode 0600)
//!   known_servers                       the server keys trusted (see `trust`)
//! ```
//!
//! One identity per server, so that registering with a second server never replaces the
//! first one's, and none in the working directory, so that `send *` cannot pick them up.
//! A server's protocol-4 key lives beside its protocol-3 identity, so that an upgrade finds
//! both in one place.

use super::identity::{IdentityError, ME_INFO};
use std::fs;
use std::path::{Path, PathBuf};

/// The file naming the default server.
pub const DEFAULT_SERVER: &str = "default-server";

/// The client's home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `$XDG_CONFIG_HOME/securexfer`, else `$HOME/.config/securexfer`; `None` when neither
    /// variable is set.
    pub fn from_env() -> Option<Home> {
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(Home { root: config.join("securexfer") })
    }

    /// A home at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of one server (`host:port`).
    pub fn server_dir(&self, server: &str) -> PathBuf {
        self.root.join("servers").join(dir_name(server))
    }

    /// Where the identity for `server` is kept.
    pub fn identity_path(&self, server: &str) -> PathBuf {
        self.server_dir(server).join(ME_INFO)
    }

    /// Where the protocol-4 key for `server` is kept.
    pub fn client_key_path(&self, server: &str) -> PathBuf {
        self.server_dir(server).join(super::v4::key::CLIENT_KEY)
    }

    /// The identity of earlier versions, kept in the home directory for every server.
    pub fn legacy_identity_path(&self) -> PathBuf {
        self.root.join(ME_INFO)
    }

    /// The server of the latest registration, if one was remembered.
    pub fn default_server(&self) -> Option<String> {
        let text = fs::read_to_string(self.root.join(DEFAULT_SERVER)).ok()?;
        let line = text.lines().next()?.trim();
        (!line.is_empty()).then(|| line.to_owned())
    }

    /// Remembers `server` as the default.
    pub fn set_default_server(&self, server: &str) -> Result<(), IdentityError> {
        let path = self.root.join(DEFAULT_SERVER);
        let io = |source| IdentityError::Io { path: path.clone(), source };
        fs::create_dir_all(&self.root).map_err(io)?;
        fs::write(&path, format!("{server}\n")).map_err(io)
    }
}

/// A directory name for `host:port`: letters, digits, `.` and `-` kept, anything else
/// (the `:`, IPv6 brackets) made `_`.
fn dir_name(server: &str) -> String {
    server
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_server_gets_its_own_directory() {
        let home = Home::at("/h");
        assert_eq!(
            home.identity_path("files.example.org:1357"),
            Path::new("/h/servers/files.example.org_1357/me.info")
        );
        assert_ne!(home.identity_path("a:1"), home.identity_path("a:2"));
        assert_eq!(home.server_dir("[::1]:9"), Path::new("/h/servers/___1__9"));
    }

    #[test]
    fn the_default_server_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("sx"));
        assert_eq!(home.default_server(), None);
        home.set_default_server("h:1").unwrap();
        assert_eq!(home.default_server().as_deref(), Some("h:1"));
    }
}
