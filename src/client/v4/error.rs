//! How a protocol-4 client operation failed, in words for people and in the groups the
//! exit codes are made of. A typed `ERROR` from the server is shown with its reason, and
//! with `value` and `limit` in the unit it names ("quota exceeded: 9.8 GiB of 10 GiB
//! used"), so a refusal says what to change.

use super::conn::ConnError;
use super::key::KeyFileError;
use super::tls::DialError;
use crate::client::FailureKind;
use crate::crypto::KeyError;
use crate::protocol::v4::{ErrorCode, ErrorFrame, ErrorKind, ErrorUnit, FrameError};
use std::io;
use std::path::PathBuf;
use thiserror::Error;

/// Why a protocol-4 operation failed.
#[derive(Debug, Error)]
pub enum V4Error {
    /// No connection (or no trusted one) was made.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection failed or the server broke the protocol.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The server refused a request.
    #[error("{step}: {}", describe_refusal(.error))]
    Refused {
        /// What was refused.
        step: &'static str,
        /// The server's reason.
        error: ErrorFrame,
    },
    /// The hashes never agreed.
    #[error(
        "{path} did not arrive intact: the server's BLAKE3 differed from ours on all \
         {attempts} sends (nothing was stored)"
    )]
    Verification {
        /// The file.
        path: PathBuf,
        /// Sends made.
        attempts: u32,
    },
    /// A downloaded file's bytes do not hash to what the server said (`GET_END`) or what
    /// its records hold (`GET_BEGIN`): nothing was kept under its name.
    #[error(
        "{path} did not arrive intact: its BLAKE3 is {ours}, but the server {said} \
         {theirs} (nothing was written under its name)"
    )]
    DownloadMismatch {
        /// The stored path.
        path: String,
        /// What the client computed.
        ours: String,
        /// Which hash of the server's disagreed ("computed" or "recorded").
        said: &'static str,
        /// That hash.
        theirs: String,
    },
    /// A download could not be written locally (a full disk, a target that appeared).
    #[error("cannot write {path}: {cause}")]
    Write {
        /// The local file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// A name or path the protocol's rules refuse.
    #[error("{name:?} cannot be a protocol-4 name: {why}")]
    BadName {
        /// The name.
        name: String,
        /// Which rule.
        why: String,
    },
    /// The file cannot be read.
    #[error("cannot read {path}: {cause}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// The file shrank while it was being sent.
    #[error("{path} changed while it was being sent: {size} bytes announced, only {read} there")]
    Changed {
        /// The file.
        path: PathBuf,
        /// The size announced.
        size: u64,
        /// What could be read.
        read: u64,
    },
    /// The client key cannot be used.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// The upgrade statement could not be signed.
    #[error("cannot sign the upgrade statement: {0}")]
    Sign(KeyError),
    /// A value our own encoder refused (a bug, or a name past the codec's limits).
    #[error("cannot encode the request: {0}")]
    Encode(FrameError),
}

impl V4Error {
    pub(crate) fn encode(e: FrameError) -> V4Error {
        V4Error::Encode(e)
    }

    /// The group this failure belongs to, for the exit code.
    pub fn kind(&self) -> FailureKind {
        match self {
            V4Error::Dial(DialError::KeyMismatch { .. }) => FailureKind::ServerKey,
            V4Error::Dial(DialError::Key(_)) | V4Error::Key(_) => FailureKind::Local,
            V4Error::Dial(_) => FailureKind::Connection,
            V4Error::Conn(ConnError::ServerProtocol(_)) => FailureKind::Refused,
            // The server ended the connection because the bytes it got were out of
            // protocol: this client sent frames whole, so the stream between the two
            // broke (a cut, a middlebox), which is a connection failure, not a refusal.
            V4Error::Conn(ConnError::Closed(e)) if e.code == ErrorCode::Protocol => {
                FailureKind::Connection
            }
            V4Error::Conn(ConnError::Closed(e)) => refusal_kind(e),
            V4Error::Conn(_) => FailureKind::Connection,
            V4Error::Refused { error, .. } => refusal_kind(error),
            V4Error::Verification { .. } | V4Error::DownloadMismatch { .. } => {
                FailureKind::Verification
            }
            V4Error::BadName { .. }
            | V4Error::Open { .. }
            | V4Error::Write { .. }
            | V4Error::Changed { .. }
            | V4Error::Sign(_)
            | V4Error::Encode(_) => FailureKind::Local,
        }
    }

    /// Whether the connection cannot carry another file after this failure: the run stops
    /// there, as protocol 3's batch stops on a failed connection.
    pub fn ends_session(&self) -> bool {
        match self {
            V4Error::Dial(_) | V4Error::Conn(_) | V4Error::Changed { .. } => true,
            V4Error::Refused { error, .. } => error.closes,
            _ => false,
        }
    }

    /// Whether the message already names the file it is about.
    pub fn names_file(&self) -> bool {
        matches!(
            self,
            V4Error::Verification { .. }
                | V4Error::DownloadMismatch { .. }
                | V4Error::Open { .. }
                | V4Error::Write { .. }
                | V4Error::Changed { .. }
        )
    }
}

/// The exit group of a server's refusal: a temporary error that outlived its retries and
/// is about the connection (a timeout, the server stopping) is a connection failure; a
/// hash that never matched is a verification failure; anything else a refusal.
fn refusal_kind(error: &ErrorFrame) -> FailureKind {
    match error.code {
        ErrorCode::Timeout | ErrorCode::ShuttingDown => FailureKind::Connection,
        ErrorCode::HashMismatch => FailureKind::Verification,
        _ => FailureKind::Refused,
    }
}

/// An `ERROR` in words: its reason, what `value` and `limit` say in their unit, whether
/// it is permanent, and the server's own message.
pub fn describe_refusal(error: &ErrorFrame) -> String {
    let amount = |n: u64| match error.unit {
        ErrorUnit::Bytes => binary_size(n),
        ErrorUnit::Files => format!("{n} files"),
        ErrorUnit::Nothing => n.to_string(),
    };
    let what = match error.code {
        ErrorCode::QuotaExceeded if error.unit != ErrorUnit::Nothing => {
            format!("quota exceeded: {} of {} used", amount(error.value), amount(error.limit))
        }
        ErrorCode::TooLarge if error.unit != ErrorUnit::Nothing => format!(
            "too large: {} is more than the server accepts ({})",
            amount(error.value),
            amount(error.limit)
        ),
        code => code.name().replace('_', " "),
    };
    let kind = match error.code.kind() {
        ErrorKind::Permanent => "refused",
        ErrorKind::Temporary => "temporary failure",
    };
    if error.message.is_empty() {
        format!("{what} ({kind}, code {})", error.code.as_u16())
    } else {
        format!("{what} ({kind}, code {}): {}", error.code.as_u16(), error.message)
    }
}

/// Bytes in binary units with one decimal ("9.8 GiB"), or a plain count below 1 KiB.
pub fn binary_size(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closing(code: ErrorCode) -> V4Error {
        V4Error::Conn(ConnError::Closed(ErrorFrame {
            code,
            closes: true,
            unit: ErrorUnit::Nothing,
            retry_after_ms: 0,
            value: 0,
            limit: 0,
            message: "the connection ended in the middle of a frame".into(),
        }))
    }

    #[test]
    fn a_server_closing_on_a_broken_stream_is_a_connection_failure_and_a_refusal_stays_one() {
        assert_eq!(closing(ErrorCode::Protocol).kind(), FailureKind::Connection);
        assert_eq!(closing(ErrorCode::ShuttingDown).kind(), FailureKind::Connection);
        assert_eq!(closing(ErrorCode::NotAuthorised).kind(), FailureKind::Refused);
        assert_eq!(closing(ErrorCode::HashMismatch).kind(), FailureKind::Verification);
    }
}
