//! Why a request was refused with 2107, and what follows from it.
//!
//! Protocol 3 has one answer for every refusal (2107), so the reason lives only in the
//! log. An operator reading it must tell a hostile or broken peer from the server's own
//! trouble (a database or disk that failed): the first is the peer's business, the second
//! needs someone to act. So every refusal is a variant here, and the variant decides its
//! [`Fault`] (hence the log level) and its stable [`Refusal::reason`] label, which logs
//! carry as a field, the metrics count refusals by, and tests assert.

use super::ServerError;
use super::metrics::Reason;
use super::upload::UploadError;
use crate::protocol::{ClientId, DecodeError, FileNameError};
use std::net::IpAddr;
use std::time::Duration;
use thiserror::Error;

/// Whose doing a refusal is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The peer asked for what it may not have, or sent what cannot be right: logged as a
    /// warning (a correct client never sees these).
    Peer,
    /// A limit that protects the server or other clients held: logged at info (a flood
    /// would otherwise fill the log with warnings about the limit doing its job).
    Limit,
    /// The server failed (database, disk, a task): logged as an error.
    Internal,
}

/// A refused request.
#[derive(Debug, Error)]
pub enum Refusal {
    /// The header's client id is not registered.
    #[error("unknown client id {0}")]
    UnknownClient(ClientId),
    /// A file request for an id with no usable session here.
    #[error(
        "client {id} has no key exchange on this connection{}",
        if *strict { "" } else { " or from this address within the session window" }
    )]
    NoSession {
        /// The id asked for.
        id: ClientId,
        /// Whether the server runs with `--strict-sessions`.
        strict: bool,
    },
    /// A connection that made a key exchange as one client asked to act for another.
    #[error("this connection's key exchange was for client {session}, not {asked}")]
    OtherClient {
        /// The session's client.
        session: ClientId,
        /// The id asked for.
        asked: ClientId,
    },
    /// The session was ended after a padding failure.
    #[error("this connection's session was ended after a padding failure")]
    SessionEnded,
    /// The session ended (a padding failure elsewhere) while this upload arrived.
    #[error("the session ended during the upload (a padding failure)")]
    EndedDuringUpload,
    /// A verdict (1029-1031) for a file name with no upload waiting.
    #[error("no upload of {0} waits")]
    NothingWaits(String),
    /// 1026 with a name that is not the id's.
    #[error("name {name} does not belong to client {id}")]
    NameMismatch {
        /// The id.
        id: ClientId,
        /// The name sent.
        name: String,
    },
    /// 1026 from where the id was not registered, or with a different key than on record.
    #[error(
        "client {0} may not set its public key here: it was not registered on this \
         connection or address, or already has a different key"
    )]
    KeyNotAllowed(ClientId),
    /// A public key that does not parse.
    #[error("{0}")]
    BadPublicKey(String),
    /// A 1028 whose sizes are wrong.
    #[error("{0}")]
    BadRequest(#[from] DecodeError),
    /// A file name that cannot be stored.
    #[error("{0}")]
    BadFileName(#[from] FileNameError),
    /// The upload failed while its content arrived.
    #[error("{0}")]
    Upload(#[from] UploadError),
    /// A 1025 while the server registers only with a token, or not at all: protocol 3
    /// cannot carry a token, and a client registered over it could then upgrade.
    #[error("registration over protocol 3 is refused: the server runs with --registration {0}")]
    RegistrationClosed(&'static str),
    /// The address used up its registrations for now.
    #[error("too many registrations from {ip}: the next one in {:.1} s", wait.as_secs_f64())]
    RegistrationLimit {
        /// The address.
        ip: IpAddr,
        /// Until the next is allowed.
        wait: Duration,
    },
    /// Padding failures hold key exchanges and uploads back.
    #[error(
        "padding failures of client {id} or from {ip}: refused for {:.1} s more",
        wait.as_secs_f64()
    )]
    BackedOff {
        /// The client.
        id: ClientId,
        /// The address.
        ip: IpAddr,
        /// How long the block lasts.
        wait: Duration,
    },
    /// The client's waiting uploads are at their cap.
    #[error("{0}")]
    Quota(String),
    /// Every upload slot (`--max-uploads`) is taken.
    #[error("{0} uploads are already arriving (--max-uploads); try again later")]
    Busy(usize),
    /// The disk would keep less than `--disk-reserve` free.
    #[error(
        "not enough disk space for {needed} bytes ({available} available, {reserve} kept free)"
    )]
    DiskFull {
        /// The content size.
        needed: u64,
        /// Free bytes.
        available: u64,
        /// `--disk-reserve`.
        reserve: u64,
    },
    /// Storing or deleting a file failed.
    #[error("{what}: {source}")]
    Storage {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The records could not answer.
    #[error("{0}")]
    Records(#[from] crate::store::RecordsError),
    /// The server's own machinery failed (a task, key encryption).
    #[error("{0}")]
    Internal(String),
}

impl From<ServerError> for Refusal {
    fn from(e: ServerError) -> Self {
        Refusal::Internal(e.to_string())
    }
}

impl Refusal {
    /// Whose doing it is.
    pub fn fault(&self) -> Fault {
        use Refusal::*;
        match self {
            UnknownClient(_)
            | NoSession { .. }
            | OtherClient { .. }
            | SessionEnded
            | EndedDuringUpload
            | NothingWaits(_)
            | NameMismatch { .. }
            | KeyNotAllowed(_)
            | BadPublicKey(_)
            | BadRequest(_)
            | BadFileName(_) => Fault::Peer,
            Upload(UploadError::Storage(_)) => Fault::Internal,
            Upload(_) => Fault::Peer,
            RegistrationClosed(_)
            | RegistrationLimit { .. }
            | BackedOff { .. }
            | Quota(_)
            | Busy(_)
            | DiskFull { .. } => Fault::Limit,
            Storage { .. } | Records(_) | Internal(_) => Fault::Internal,
        }
    }

    /// Its reason: a stable label for logs, metrics and tests (the values are listed,
    /// with what each means, in [`Reason`]).
    pub fn reason(&self) -> Reason {
        use Refusal::*;
        match self {
            UnknownClient(_) => Reason::UnknownClient,
            NoSession { .. } | OtherClient { .. } | SessionEnded | EndedDuringUpload => {
                Reason::NoSession
            }
            NothingWaits(_) => Reason::NoPendingUpload,
            NameMismatch { .. } | KeyNotAllowed(_) => Reason::KeyNotAllowed,
            BadPublicKey(_) => Reason::BadPublicKey,
            BadRequest(_) | BadFileName(_) => Reason::BadFileRequest,
            Upload(UploadError::Storage(_)) | Storage { .. } => Reason::Storage,
            Upload(UploadError::Padding) => Reason::BadPadding,
            Upload(_) => Reason::UploadFailed,
            RegistrationLimit { .. } => Reason::RateLimited,
            RegistrationClosed(_) => Reason::RegistrationClosed,
            BackedOff { .. } => Reason::Backoff,
            Quota(_) => Reason::Quota,
            Busy(_) => Reason::MaxUploads,
            DiskFull { .. } => Reason::DiskFull,
            Records(_) | Internal(_) => Reason::Internal,
        }
    }

    /// Whether the connection must close after the answer: an upload that failed part-way
    /// leaves the stream somewhere inside the content.
    pub fn closes(&self) -> bool {
        matches!(self, Refusal::Upload(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn a_hostile_peer_a_limit_and_our_own_failure_are_told_apart() {
        let id = ClientId([7; 16]);
        assert_eq!(Refusal::UnknownClient(id).fault(), Fault::Peer);
        assert_eq!(Refusal::KeyNotAllowed(id).fault(), Fault::Peer);
        assert_eq!(Refusal::Upload(UploadError::TooSlow).fault(), Fault::Peer);
        assert_eq!(Refusal::Busy(3).fault(), Fault::Limit);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let wait = Duration::from_secs(2);
        assert_eq!(Refusal::BackedOff { id, ip, wait }.fault(), Fault::Limit);
        let disk = io::Error::other("no space");
        assert_eq!(Refusal::Upload(UploadError::Storage(disk)).fault(), Fault::Internal);
        let db = ServerError::Task("the database thread stopped".into());
        assert_eq!(Refusal::from(db).fault(), Fault::Internal);
    }

    #[test]
    fn only_a_failed_upload_closes_by_itself() {
        assert!(Refusal::Upload(UploadError::Padding).closes());
        assert!(!Refusal::UnknownClient(ClientId([1; 16])).closes());
        assert!(!Refusal::Internal("x".into()).closes());
    }

    #[test]
    fn reasons_keep_the_words_the_logs_have_always_had() {
        let id = ClientId([0xab; 16]);
        let text = Refusal::NoSession { id, strict: false }.to_string();
        assert!(text.ends_with("or from this address within the session window"), "{text}");
        let text = Refusal::NoSession { id, strict: true }.to_string();
        assert!(text.ends_with("on this connection"), "{text}");
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let limit = Refusal::RegistrationLimit { ip, wait: Duration::from_millis(1500) };
        assert_eq!(
            limit.to_string(),
            "too many registrations from 10.0.0.1: the next one in 1.5 s"
        );
        assert_eq!(limit.reason().as_str(), "rate_limited");
    }
}
