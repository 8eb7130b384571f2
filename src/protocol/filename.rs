//! The one place that turns a file name as sent into the name a server stores.
//!
//! Clients send full paths (`C:\dir\f.txt`, `/home/u/f.txt`); the stored name is the last
//! component. Anything that could escape the client's directory or confuse a file system
//! is refused here, so the server never has to think about it again.

use thiserror::Error;

/// Why a file name cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FileNameError {
    /// Nothing is left after the last separator.
    #[error("file name {0:?} has no last path component")]
    Empty(String),
    /// The last component is `.` or `..`.
    #[error("file name {0:?} ends in '.' or '..', which names a directory")]
    DotName(String),
    /// A control byte (or NUL) anywhere.
    #[error("file name {0:?} contains a control character")]
    ControlCharacter(String),
    /// The name is reserved for the server's own temporary files.
    #[error("file name {0:?} uses the prefix reserved for unfinished uploads")]
    Reserved(String),
}

/// Prefix of the server's temporary files; no stored name may start with it.
pub const TEMP_PREFIX: &str = ".securexfer-part-";

/// The last component of `sent` (splitting on both `/` and `\`), or why it is refused.
pub fn storage_name(sent: &str) -> Result<&str, FileNameError> {
    if sent.chars().any(|c| c.is_control()) {
        return Err(FileNameError::ControlCharacter(sent.to_owned()));
    }
    let last = sent.rsplit(['/', '\\']).next().unwrap_or(sent);
    // A drive-relative Windows name such as `C:f.txt` keeps only what follows the colon.
    let last = match last.as_bytes() {
        [drive, b':', ..] if drive.is_ascii_alphabetic() => &last[2..],
        _ => last,
    };
    match last {
        "" => Err(FileNameError::Empty(sent.to_owned())),
        "." | ".." => Err(FileNameError::DotName(sent.to_owned())),
        name if name.starts_with(TEMP_PREFIX) => Err(FileNameError::Reserved(sent.to_owned())),
        name => Ok(name),
    }
}
