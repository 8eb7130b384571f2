//! The client: connect, register or reconnect, send files with verify-and-resend.
//!
//! Every step is retried up to [`RETRIES`] more times when the server answers 2107 or the
//! connection fails, always on a new connection with a new key exchange: after a 2107 or a
//! timeout nothing said on the old one can be trusted to be in step. A server that closes
//! the connection after a reply, as some existing servers do, gets a new connection for
//! every later request of the run, and a request lost to such a close before any answer is
//! sent again without counting a failure. A file is sent at most [`MAX_SENDS`] times until
//! the checksums agree, or until it is confirmed: an upload lost with a broken connection
//! before its 1029 is sent again.
//!
//! The ways existing servers deviate from the protocol, and what is done about each, are in
//! `docs/compatibility.md`.

pub mod home;
pub mod identity;
pub mod pace;
pub mod trust;
pub mod upload;
pub mod v4;
pub mod wire;

use crate::content::Scheme;
use crate::crypto::rsa::KeyError;
use crate::crypto::{AesKey, PrivateKey};
use crate::protocol::{
    ClientId, DecodeError, FileHeader, FixedName, MAX_PLAINTEXT_SIZE, Request, Response,
    ResponseCode, Version, encode_request, encrypted_len,
};
use identity::Identity;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;
use upload::{StreamError, Streamed};
use wire::{RecvError, Timeouts, Wire, is_timeout};

/// Extra attempts for a step that failed with 2107 or a broken connection.
pub const RETRIES: u32 = 3;
/// The most times a file is sent (the first send and three resends).
pub const MAX_SENDS: u32 = 4;
/// How long a server that closes after every reply gets to answer or close after a 1030
/// before the resend goes on the same connection.
const RESEND_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a redone key exchange's connection is watched for the server closing it.
const REKEY_SETTLE: std::time::Duration = std::time::Duration::from_millis(50);
/// The confirmation step's name in events and errors.
const CONFIRM_STEP: &str = "confirming the checksum (1029)";

/// How a client operation failed, grouped for exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server could not be reached or the connection kept failing.
    Connection,
    /// The server refused (2107 after retries, a taken name, an unexpected answer).
    Refused,
    /// The file never arrived intact.
    Verification,
    /// Something local: the file, the identity, the input.
    Local,
    /// The server's key is not the one trusted for it (protocol 4): nothing was sent.
    ServerKey,
}

/// Why a client operation failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No connection could be made at all. (The cause is part of the message and not a
    /// `source`, so that an error chain prints it once.)
    #[error(
        "cannot connect to {server}: {cause} (is the server running, and is the address right?)"
    )]
    Connect {
        /// The server.
        server: String,
        /// Why.
        cause: io::Error,
    },
    /// The server's host name does not resolve.
    #[error("cannot find the server {server}: {cause}")]
    Resolve {
        /// The server.
        server: String,
        /// Why.
        cause: io::Error,
    },
    /// The server answered with bytes that are not protocol 3 at all.
    #[error("{server} does not speak the securexfer protocol ({detail})")]
    NotProtocol {
        /// The server.
        server: String,
        /// What it sent.
        detail: String,
    },
    /// The connection failed on every attempt of a step.
    #[error(
        "fatal: {step} failed {attempts} times because the connection to {server} failed: {last}"
    )]
    Connection {
        /// The step.
        step: &'static str,
        /// The server.
        server: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The server answered 2107 on every attempt of a step.
    #[error(
        "fatal: the server refused {step} {attempts} times (2107 general error); its log says why"
    )]
    Refused {
        /// The step.
        step: &'static str,
        /// Attempts made.
        attempts: u32,
    },
    /// The name is registered already.
    #[error("the name {0:?} is already registered on this server; choose another with --name")]
    NameTaken(String),
    /// The server answered something that does not fit the step.
    #[error("{step}: the server answered {got} where {expected} was expected")]
    Unexpected {
        /// The step.
        step: &'static str,
        /// What fits.
        expected: &'static str,
        /// What came.
        got: ResponseCode,
    },
    /// The AES key from the server does not decrypt with our key.
    #[error(
        "the AES key from the server does not decrypt with this identity's private key ({0}); \
         the identity may belong to another server"
    )]
    Key(KeyError),
    /// A name or file name the protocol cannot carry.
    #[error("{0}")]
    BadName(DecodeError),
    /// A file name the protocol cannot carry, said for people.
    #[error(
        "{name} cannot be a stored name: {why}; stored names are 1 to 254 bytes of printable \
         ASCII (choose one with --as NAME)"
    )]
    BadFileName {
        /// The name as it is (non-UTF-8 bytes escaped).
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// The file could not be read or changed while sending.
    #[error("{0}")]
    File(StreamError),
    /// The file cannot be opened or examined.
    #[error("cannot read {path}: {cause}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: io::Error,
    },
    /// The file is larger than the protocol carries.
    #[error("{path} is {size} bytes; the protocol carries at most {max} bytes per file", max = MAX_PLAINTEXT_SIZE)]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The checksums never agreed.
    #[error(
        "{path} did not arrive intact: the server's checksum differed from ours on all {attempts} sends \
         (the client told the server it gave up)"
    )]
    Verification {
        /// The file.
        path: PathBuf,
        /// Sends made.
        attempts: u32,
    },
}

impl ClientError {
    /// The group this failure belongs to.
    pub fn kind(&self) -> FailureKind {
        match self {
            ClientError::Connect { .. }
            | ClientError::Resolve { .. }
            | ClientError::Connection { .. } => FailureKind::Connection,
            ClientError::Refused { .. }
            | ClientError::NotProtocol { .. }
            | ClientError::NameTaken(_)
            | ClientError::Unexpected { .. }
            | ClientError::Key(_) => FailureKind::Refused,
            ClientError::Verification { .. } => FailureKind::Verification,
            ClientError::BadName(_)
            | ClientError::BadFileName { .. }
            | ClientError::File(_)
            | ClientError::Open { .. }
            | ClientError::TooLarge { .. } => FailureKind::Local,
        }
    }

    /// Whether the message already names the file it is about.
    pub fn names_file(&self) -> bool {
        matches!(
            self,
            ClientError::Open { .. }
                | ClientError::TooLarge { .. }
                | ClientError::Verification { .. }
                | ClientError::File(_)
        )
    }
}

/// What the client reports while it works (the CLI turns this into a progress bar).
#[derive(Debug, Clone)]
pub enum Event {
    /// A step is tried again.
    Retrying {
        /// The step.
        step: &'static str,
        /// The attempt about to be made (2..).
        attempt: u32,
        /// Why the last one failed.
        reason: String,
    },
    /// A send of a file begins.
    SendStarted {
        /// The file.
        path: PathBuf,
        /// Encrypted bytes to send.
        bytes: u64,
        /// Which send (1..=4).
        attempt: u32,
    },
    /// Encrypted bytes sent so far in this send.
    Progress(u64),
    /// The send continues an upload the server kept from an interrupted run (protocol 4):
    /// the first `from` of its `size` bytes are not sent again.
    Resumed {
        /// Where it continues.
        from: u64,
        /// The whole file.
        size: u64,
    },
    /// The connection broke before the server confirmed the file, and the upload was gone
    /// on the new connection: the file is sent again.
    UploadLost {
        /// Which send was lost.
        attempt: u32,
    },
    /// Something the user should know about this server, said once.
    Note(String),
    /// The server's BLAKE3 differed from ours (protocol 4): the file is sent again.
    DigestMismatch {
        /// The server's, in hex.
        theirs: String,
        /// Which send.
        attempt: u32,
    },
    /// The server's checksum differed from ours.
    Mismatch {
        /// Ours.
        ours: u32,
        /// The server's.
        theirs: u32,
        /// Which send.
        attempt: u32,
    },
}

/// A verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The file.
    pub path: PathBuf,
    /// Plaintext bytes.
    pub size: u64,
    /// Its cksum (ours, equal to the server's).
    pub cksum: u32,
    /// How many sends it took.
    pub sends: u32,
}

/// An established session: who we are and the AES key of this exchange.
#[derive(Debug, Clone)]
pub struct Session {
    /// The identity in use.
    pub identity: Identity,
    /// The AES key of this exchange.
    pub aes_key: AesKey,
    /// Whether the identity was registered just now (and must be saved).
    pub registered: bool,
}

/// How one attempt of a step failed.
enum Failure {
    /// The connection failed; reconnect and try again.
    Connection(String),
    /// 2107: try again.
    ServerError,
    /// Not worth retrying.
    Fatal(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Fatal(e)
    }
}

/// A client talking to one server.
pub struct Client {
    server: String,
    /// The protocol spoken (protocol 3 until protocol 4 lands).
    version: Version,
    timeouts: Timeouts,
    wire: Option<Wire>,
    events: Box<dyn FnMut(Event) + Send>,
    /// The identity of the current session, to redo the key exchange on a new connection
    /// after one was lost: a server with strict sessions forgets a session with its
    /// connection.
    rekey: Option<Identity>,
    /// The AES key of the current key exchange (it changes when one is redone).
    key: Option<AesKey>,
    /// A connection failed; the next one starts with a key exchange.
    lost: bool,
    /// Connections made so far: tells whether a step ran on the connection it started on.
    connections: u64,
    /// Connections the server closed right after a reply, in a row.
    closes_after_reply: u32,
    /// The server closed two connections in a row right after a reply, as servers that
    /// close after every reply do: every request gets a new connection. (One close after
    /// a reply may be a network cut, and our own server with strict sessions must keep
    /// getting its file requests on the connection of the key exchange.)
    one_per_request: bool,
    /// A request lost to a closed connection may be sent again once per step without
    /// counting an attempt.
    free_resend: bool,
    /// The client id came from a saved identity and no file request has been accepted
    /// with it yet: the byte order is unconfirmed (see [`Client::reconnect`]).
    id_unconfirmed: bool,
    /// A server that reports the CRC-32 of the ciphertext was noted already.
    noted_crc32: bool,
    /// The saved id, while its byte-reversed form is being tried.
    reversed_from: Option<ClientId>,
    /// `--limit-rate`: file content goes out at most this many bytes per second.
    limit_rate: Option<u64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("server", &self.server).finish()
    }
}

impl Client {
    /// A client for `server` (`host:port`); it connects on first use.
    pub fn new(server: &str, timeouts: Timeouts) -> Self {
        Client {
            server: server.to_owned(),
            version: Version::V3,
            timeouts,
            wire: None,
            events: Box::new(|_| {}),
            rekey: None,
            key: None,
            lost: false,
            connections: 0,
            closes_after_reply: 0,
            one_per_request: false,
            free_resend: false,
            id_unconfirmed: false,
            noted_crc32: false,
            reversed_from: None,
            limit_rate: None,
        }
    }

    /// Sends file content at most `rate` bytes per second (`--limit-rate`).
    pub fn set_limit_rate(&mut self, rate: Option<u64>) {
        self.limit_rate = rate;
    }

    /// Reports progress and retries to `events`.
    pub fn on_event(&mut self, events: impl FnMut(Event) + Send + 'static) {
        self.events = Box::new(events);
    }

    /// Connects now, so that an unreachable server is reported as such.
    pub fn connect(&mut self) -> Result<(), ClientError> {
        use std::net::ToSocketAddrs;
        if let Err(cause) = self.server.to_socket_addrs() {
            return Err(ClientError::Resolve { server: self.server.clone(), cause });
        }
        let wire = Wire::connect(&self.server, self.timeouts)
            .map_err(|cause| ClientError::Connect { server: self.server.clone(), cause })?;
        self.wire = Some(wire);
        Ok(())
    }

    /// Registers `name` with a fresh key pair: 1025, then 1026.
    pub fn register(&mut self, name: &str) -> Result<Session, ClientError> {
        let fixed = FixedName::new(name, "name").map_err(ClientError::BadName)?;
        let register = Request::Register { name: fixed.clone() };
        let id = self.step("registration (1025)", |c| {
            match c.roundtrip(ClientId::ZERO, &register)? {
                Response::Registered { client_id } => Ok(client_id),
                Response::RegistrationFailed => Err(ClientError::NameTaken(name.to_owned()).into()),
                other => Err(unexpected("registration (1025)", "2100", &other)),
            }
        })?;
        let key = PrivateKey::generate();
        let public_key = key.public_key().to_field().map_err(ClientError::Key)?;
        let request = Request::SendPublicKey { name: fixed, public_key };
        let encrypted =
            self.step("sending the public key (1026)", |c| match c.roundtrip(id, &request)? {
                Response::PublicKeyAccepted { encrypted_key, .. } => Ok(encrypted_key),
                other => Err(unexpected("sending the public key (1026)", "2102", &other)),
            })?;
        let aes_key = key.decrypt_aes_key(&encrypted).map_err(ClientError::Key)?;
        let identity = Identity { name: name.to_owned(), id, key };
        self.rekey = Some(identity.clone());
        self.key = Some(aes_key);
        Ok(Session { identity, aes_key, registered: true })
    }

    /// Reconnects with a saved identity (1027). `Ok(None)` when the server denies it (2106):
    /// the caller registers again.
    pub fn reconnect(&mut self, identity: &Identity) -> Result<Option<Session>, ClientError> {
        let name = FixedName::new(&identity.name, "name").map_err(ClientError::BadName)?;
        let request = Request::Reconnect { name };
        let answer =
            self.step("reconnection (1027)", |c| match c.roundtrip(identity.id, &request)? {
                Response::ReconnectAccepted { client_id, encrypted_key } => {
                    Ok(Some((client_id, encrypted_key)))
                }
                Response::ReconnectDenied { .. } => Ok(None),
                other => Err(unexpected("reconnection (1027)", "2105 or 2106", &other)),
            })?;
        let Some((server_id, encrypted)) = answer else { return Ok(None) };
        let aes_key = identity.key.decrypt_aes_key(&encrypted).map_err(ClientError::Key)?;
        // Servers that look clients up by name say which id they hold; file requests must
        // carry that one (some clients' me.info, e.g. tomer's, store the id byte-reversed).
        let identity = Identity { id: server_id, ..identity.clone() };
        self.rekey = Some(identity.clone());
        self.key = Some(aes_key);
        // Some servers accept a 1027 by name alone and echo any id; a file request is the
        // first thing that shows whether the id's byte order is the one they hold.
        self.id_unconfirmed = true;
        Ok(Some(Session { identity, aes_key, registered: false }))
    }

    /// Sends `path` as `sent_name` and verifies it, resending on checksum mismatch. The
    /// file is opened (and kept open) before anything about it goes on the wire.
    pub fn send_file(
        &mut self,
        session: &Session,
        path: &Path,
        sent_name: &str,
    ) -> Result<Sent, ClientError> {
        let file_name = stored_file_name(sent_name)?;
        let open_error = |cause| ClientError::Open { path: path.to_owned(), cause };
        let file = File::open(path).map_err(open_error)?;
        let size = file.metadata().map_err(open_error)?.len();
        if size > MAX_PLAINTEXT_SIZE {
            return Err(ClientError::TooLarge { path: path.to_owned(), size });
        }
        let header =
            FileHeader { content_size: encrypted_len(size) as u32, file_name: file_name.clone() };
        let upload = Upload { file: &file, path, size, header };
        for attempt in 1..=MAX_SENDS {
            let streamed = self.send_once(session, &upload, attempt)?;
            let (ours, theirs) = (streamed.ours.cksum, streamed.theirs);
            if ours == theirs || self.ciphertext_crc_matches(&streamed) {
                if self.confirm(session, &file_name)? {
                    return Ok(Sent { path: path.to_owned(), size, cksum: ours, sends: attempt });
                }
                // The connection broke before the server stored the file, and the upload
                // waiting for this 1029 went with it: send the file again.
                (self.events)(Event::UploadLost { attempt });
                if attempt == MAX_SENDS {
                    return Err(ClientError::Connection {
                        step: CONFIRM_STEP,
                        server: self.server.clone(),
                        attempts: MAX_SENDS,
                        last:
                            "it broke before the server stored the file, on every send (the 1029 on a new connection got 2107: the upload was gone)"
                                .into(),
                    });
                }
                continue;
            }
            (self.events)(Event::Mismatch { ours, theirs, attempt });
            if attempt < MAX_SENDS {
                self.announce_resend(session, &file_name);
            }
        }
        let give_up = Request::CrcGiveUp { file_name };
        self.step("giving up on the file (1031)", |c| {
            let id = c.id(session);
            c.expect_ack(id, &give_up)
        })?;
        Err(ClientError::Verification { path: path.to_owned(), attempts: MAX_SENDS })
    }

    /// Whether the server's checksum is the zlib CRC-32 of the exact ciphertext sent, as
    /// some existing servers report instead of the plaintext's cksum. An exact match proves
    /// the server holds the bytes sent (a false match is a 2^-32 event); said once a run.
    fn ciphertext_crc_matches(&mut self, streamed: &SendOutcome) -> bool {
        if Some(streamed.theirs) != streamed.ours.ciphertext_crc32 {
            return false;
        }
        if !std::mem::replace(&mut self.noted_crc32, true) {
            (self.events)(Event::Note(format!(
                "{} reports a CRC-32 of the encrypted data instead of the protocol's cksum of \
                 the file; it matches what was sent exactly, so the file is taken as arrived",
                self.server
            )));
        }
        true
    }

    /// Says 1030 (no answer is due). A server that closed the connection after its 2103
    /// gets it on a new one; if sending fails, the next send reconnects. A server that
    /// closes after every reply may answer the 1030 (and close) or wait for the resend on
    /// the same connection: a moment's look tells which, and the resend follows it.
    fn announce_resend(&mut self, session: &Session, file_name: &FixedName) {
        let retry = encode_request(
            self.version,
            self.id(session),
            &Request::CrcRetry { file_name: file_name.clone() },
        );
        let one_per_request = self.one_per_request;
        let sent = self.wire().map(|wire| {
            wire.send(&retry)?;
            if one_per_request {
                wire.takes_another = !wire.answers_or_closes_within(RESEND_SETTLE);
            }
            io::Result::Ok(())
        });
        if !matches!(sent, Ok(Ok(()))) {
            self.wire = None;
        }
    }

    /// The client id requests carry now: the session's, unless it was corrected since.
    fn id(&self, session: &Session) -> ClientId {
        self.rekey.as_ref().map_or(session.identity.id, |identity| identity.id)
    }

    /// One send of the file; returns our checksums and the server's.
    fn send_once(
        &mut self,
        session: &Session,
        upload: &Upload<'_>,
        attempt: u32,
    ) -> Result<SendOutcome, ClientError> {
        (self.events)(Event::SendStarted {
            path: upload.path.to_owned(),
            bytes: u64::from(upload.header.content_size),
            attempt,
        });
        self.step("sending the file (1028)", |c| {
            let outcome = c.upload_on_some_connection(session, upload, attempt);
            match outcome {
                Err(Failure::ServerError) if c.id_unconfirmed => {
                    c.try_reversed_id();
                    Err(Failure::ServerError)
                }
                Ok(outcome) => {
                    c.id_unconfirmed = false;
                    c.reversed_from = None;
                    Ok(outcome)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// The first file request after a reconnection with a saved identity was refused:
    /// some existing clients save the id byte-reversed, and some servers accept a 1027
    /// with any id. The next attempt reconnects with the id reversed (once).
    fn try_reversed_id(&mut self) {
        self.id_unconfirmed = false;
        let Some(identity) = self.rekey.as_mut() else { return };
        let mut reversed = identity.id;
        reversed.0.reverse();
        if reversed == identity.id {
            return;
        }
        self.reversed_from = Some(identity.id);
        identity.id = reversed;
        (self.events)(Event::Note(format!(
            "the server refused a file from the saved client id; trying it byte-reversed ({reversed}), \
             as some existing clients save it"
        )));
        // The reversed id needs a key exchange of its own, on a new connection.
        self.wire = None;
        self.lost = true;
    }

    /// Streams the file as one 1028 and reads the answer. When a connection that already
    /// carried a request turns out to be closed (writing fails, or the answer ends before
    /// its first byte), the server is one that closes after every reply: send again on a
    /// new connection, once, without counting a failure.
    fn upload_on_some_connection(
        &mut self,
        session: &Session,
        upload: &Upload<'_>,
        attempt: u32,
    ) -> Result<SendOutcome, Failure> {
        for fresh in [false, true] {
            let (reused, answered) = self.wire().map(|w| (w.sent > 0, w.answered > 0))?;
            match self.upload_once(session, upload, attempt) {
                Err(Retry::Closed(_)) if reused && !fresh && self.take_free_resend() => {
                    self.note_closed(answered);
                    self.drop_closed_wire();
                }
                Err(Retry::Closed(reason)) => {
                    self.note_closed(answered);
                    return Err(Failure::Connection(reason));
                }
                Err(Retry::Failed(failure)) => return Err(failure),
                Ok(outcome) => return Ok(outcome),
            }
        }
        Err(Failure::Connection("the server closed the connection".into()))
    }

    /// One 1028 on the current connection.
    fn upload_once(
        &mut self,
        session: &Session,
        upload: &Upload<'_>,
        attempt: u32,
    ) -> Result<SendOutcome, Retry> {
        let head = encode_request(
            self.version,
            self.id(session),
            &Request::SendFile(upload.header.clone()),
        );
        let scheme = Scheme::of(self.version, self.key.unwrap_or(session.aes_key));
        let (Some(wire), events) = (self.wire.as_mut(), &mut self.events) else {
            return Err(Retry::Failed(Failure::Connection("not connected".into())));
        };
        let mut progress = |n| events(Event::Progress(n));
        let streamed = match self.limit_rate {
            Some(rate) => upload::stream_file(
                upload.file,
                upload.path,
                upload.size,
                &scheme,
                &head,
                &mut pace::PacedWrite::new(wire.stream(), rate),
                &mut progress,
            ),
            None => upload::stream_file(
                upload.file,
                upload.path,
                upload.size,
                &scheme,
                &head,
                wire.stream(),
                &mut progress,
            ),
        };
        let ours = match streamed {
            Ok(ours) => ours,
            // A server that refuses a file (too large, say) may answer 2107 and close
            // before reading it: its answer, when there is one, says more than the pipe.
            Err(StreamError::Send(e)) if is_timeout(&e) => {
                return Err(Retry::Failed(Failure::Connection(format!(
                    "{} read nothing for {} s while the file was being sent",
                    self.server,
                    self.timeouts.io.as_secs()
                ))));
            }
            Err(StreamError::Send(e)) => {
                return Err(match wire.recv() {
                    Ok(Response::GeneralError) => Retry::Failed(Failure::ServerError),
                    _ => Retry::Closed(e.to_string()),
                });
            }
            Err(other) => {
                // Part of the request may be on the wire: this connection is out of step.
                self.wire = None;
                self.lost = true;
                return Err(Retry::Failed(Failure::Fatal(ClientError::File(other))));
            }
        };
        loop {
            let response = match wire.recv() {
                Ok(r) => r,
                Err(RecvError::Closed) => {
                    return Err(Retry::Closed("the server closed the connection".into()));
                }
                Err(RecvError::Invalid(e)) => {
                    return Err(Retry::Failed(Failure::Fatal(ClientError::NotProtocol {
                        server: self.server.clone(),
                        detail: format!("it answered with {e}"),
                    })));
                }
                Err(e) => return Err(Retry::Failed(Failure::Connection(e.to_string()))),
            };
            match response {
                Response::FileReceived { cksum, .. } => {
                    return Ok(SendOutcome { ours, theirs: cksum });
                }
                // Some servers answer 1030 although the spec says nothing comes back.
                Response::Acknowledged { .. } if attempt > 1 => continue,
                Response::GeneralError => return Err(Retry::Failed(Failure::ServerError)),
                other => {
                    return Err(Retry::Failed(unexpected(
                        "sending the file (1028)",
                        "2103",
                        &other,
                    )));
                }
            }
        }
    }

    /// Confirms a received file (1029). True when the server acknowledged it; false when
    /// the 1029 had to go on a new connection (the one that carried the file broke or was
    /// closed) and the server answered 2107 there: it had no upload waiting, which died
    /// with the old connection. Whether the server stored it before the break cannot be
    /// told, and sending the file again is right either way (it replaces the same content
    /// under the same name). A server that closes after every reply is not such a case:
    /// it keeps uploads across connections.
    fn confirm(&mut self, session: &Session, file_name: &FixedName) -> Result<bool, ClientError> {
        let confirm = Request::CrcOk { file_name: file_name.clone() };
        let upload_connection = self.connections;
        self.step(CONFIRM_STEP, |c| {
            let id = c.id(session);
            match c.expect_ack(id, &confirm) {
                Ok(()) => Ok(true),
                Err(Failure::ServerError)
                    if c.connections != upload_connection && !c.one_per_request =>
                {
                    // Never again on a connection that answered 2107.
                    c.wire = None;
                    c.lost = true;
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn expect_ack(&mut self, id: ClientId, request: &Request) -> Result<(), Failure> {
        match self.roundtrip(id, request)? {
            Response::Acknowledged { .. } => Ok(()),
            other => Err(unexpected("confirmation", "2104", &other)),
        }
    }

    /// Runs one step with retries. After a 2107 or a failed connection the next attempt
    /// starts on a new connection with a new key exchange: whatever the old one carried
    /// may have put the two sides out of step.
    fn step<T>(
        &mut self,
        step: &'static str,
        mut attempt: impl FnMut(&mut Self) -> Result<T, Failure>,
    ) -> Result<T, ClientError> {
        let mut last = String::new();
        let mut refused = 0;
        self.free_resend = true;
        for n in 1..=RETRIES + 1 {
            if n > 1 {
                tracing::debug!(step, attempt = n, "retrying on a new connection: {last}");
                (self.events)(Event::Retrying { step, attempt: n, reason: last.clone() });
            }
            match attempt(self) {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::ServerError) => {
                    refused += 1;
                    last = "the server answered 2107".into();
                }
                Err(Failure::Connection(reason)) => last = reason,
            }
            self.wire = None;
            self.lost = true;
        }
        let attempts = RETRIES + 1;
        Err(if refused == attempts {
            ClientError::Refused { step, attempts }
        } else {
            ClientError::Connection { step, server: self.server.clone(), attempts, last }
        })
    }

    /// The connection, made if there is none (or if the one there cannot take another
    /// request: the server closed it, or closes after every reply).
    fn wire(&mut self) -> Result<&mut Wire, Failure> {
        if let Some(wire) = self.wire.as_ref() {
            let closed = wire.peer_closed();
            let (answered, twice) = (wire.answered > 0, wire.answered >= 2);
            let spent = wire.sent > 0 && !wire.takes_another;
            if twice {
                // Two answers on one connection: this server does not close after each.
                self.closes_after_reply = 0;
            }
            if closed {
                self.note_closed(answered);
            }
            if closed || (self.one_per_request && spent) {
                self.wire = None;
            }
        }
        if self.wire.is_none() {
            let mut wire = Wire::connect(&self.server, self.timeouts).map_err(|e| {
                Failure::Connection(format!("cannot connect to {}: {e}", self.server))
            })?;
            if self.lost {
                if self.rekey.is_some() {
                    tracing::debug!("redoing the key exchange (1027) on the new connection");
                    wire = self.rekey_on(wire)?;
                }
                self.lost = false;
                if self.one_per_request {
                    // That connection carried the key exchange; the request gets its own.
                    wire = Wire::connect(&self.server, self.timeouts).map_err(|e| {
                        Failure::Connection(format!("cannot connect to {}: {e}", self.server))
                    })?;
                }
            }
            self.connections += 1;
            self.wire = Some(wire);
        }
        Ok(self.wire.as_mut().expect("just set"))
    }

    /// Redoes the key exchange on `wire`; returns the connection to go on with. When the
    /// server denies the byte-reversed id tried after a refusal (it is not one that takes
    /// any id), the saved id is restored and used on a new connection.
    fn rekey_on(&mut self, mut wire: Wire) -> Result<Wire, Failure> {
        let Some(identity) = self.rekey.clone() else { return Ok(wire) };
        if let Some(key) = redo_key_exchange(&mut wire, self.version, &identity)? {
            self.key = Some(key);
            // A server that closes after its 2105 is one that closes after every reply:
            // the request then needs a connection of its own. (Key exchanges are redone
            // only after a failure, so this look costs nothing on a healthy run.)
            if !self.one_per_request && wire.answers_or_closes_within(REKEY_SETTLE) {
                self.note_closed(true);
                return Wire::connect(&self.server, self.timeouts).map_err(|e| {
                    Failure::Connection(format!("cannot connect to {}: {e}", self.server))
                });
            }
            return Ok(wire);
        }
        let (Some(saved), Some(identity)) = (self.reversed_from.take(), self.rekey.as_mut()) else {
            return Err(Failure::Fatal(ClientError::Unexpected {
                step: "reconnection after a lost connection (1027)",
                expected: "2105",
                got: ResponseCode::ReconnectDenied,
            }));
        };
        tracing::debug!("the server does not know the reversed id; back to the saved one");
        identity.id = saved;
        let identity = identity.clone();
        let mut wire = Wire::connect(&self.server, self.timeouts)
            .map_err(|e| Failure::Connection(format!("cannot connect to {}: {e}", self.server)))?;
        match redo_key_exchange(&mut wire, self.version, &identity)? {
            Some(key) => self.key = Some(key),
            None => {
                return Err(unexpected(
                    "reconnection after a lost connection (1027)",
                    "2105",
                    &Response::ReconnectDenied { client_id: None },
                ));
            }
        }
        Ok(wire)
    }

    /// A reused connection was found closed when a request went out on it. That is a
    /// server closing after its last reply (the close crossed the request) or a server
    /// that dropped the connection on this request: the two look the same from here, so
    /// the new connection starts with a key exchange, which is harmless for the one and
    /// needed for the other (a server with strict sessions forgets a session with its
    /// connection).
    /// The server sent bytes that are no response at all: retrying will not help.
    fn not_protocol(&mut self, error: DecodeError) -> Failure {
        self.wire = None;
        Failure::Fatal(ClientError::NotProtocol {
            server: self.server.clone(),
            detail: format!("it answered with {error}"),
        })
    }

    fn take_free_resend(&mut self) -> bool {
        std::mem::take(&mut self.free_resend)
    }

    /// A connection was found closed by the server; `answered` says whether it had
    /// answered a request first. Two such closes make every later request go on a new
    /// connection (see the `one_per_request` field).
    fn note_closed(&mut self, answered: bool) {
        if !answered {
            return;
        }
        self.closes_after_reply += 1;
        if self.closes_after_reply >= 2 && !self.one_per_request {
            tracing::debug!("the server closes after every reply: a connection per request");
            self.one_per_request = true;
        }
    }

    fn drop_closed_wire(&mut self) {
        self.wire = None;
        self.lost = true;
    }

    /// Sends a fixed-size request and reads the answer. When a connection that already
    /// carried a request turns out to be closed, the server is one that closes after every
    /// reply: reconnect once and resend, without counting a failure.
    fn roundtrip(&mut self, id: ClientId, request: &Request) -> Result<Response, Failure> {
        let bytes = encode_request(self.version, id, request);
        for fresh in [false, true] {
            let wire = self.wire()?;
            let (reused, answered) = (wire.sent > 0, wire.answered > 0);
            let result = match wire.send(&bytes) {
                Ok(()) => wire.recv(),
                Err(e) if is_timeout(&e) => Err(wire_silent(&self.server, self.timeouts)),
                Err(e) => Err(RecvError::Io(e)),
            };
            match result {
                Ok(Response::GeneralError) => return Err(Failure::ServerError),
                Ok(response) => return Ok(response),
                Err(RecvError::Invalid(e)) => return Err(self.not_protocol(e)),
                Err(RecvError::Closed) | Err(RecvError::Io(_))
                    if reused && !fresh && self.take_free_resend() =>
                {
                    self.note_closed(answered);
                    self.drop_closed_wire();
                }
                Err(e) => {
                    if matches!(e, RecvError::Closed) {
                        self.note_closed(answered);
                    }
                    self.wire = None;
                    return Err(Failure::Connection(e.to_string()));
                }
            }
        }
        Err(Failure::Connection("the server closed the connection".into()))
    }
}

/// The file of one [`Client::send_file`], open, with what every send of it carries.
struct Upload<'a> {
    file: &'a File,
    path: &'a Path,
    size: u64,
    header: FileHeader,
}

/// What one send produced: our checksums and the server's.
struct SendOutcome {
    ours: Streamed,
    theirs: u32,
}

/// How one 1028 on one connection failed.
enum Retry {
    /// The connection was closed before any answer: worth one more try on a new one when
    /// it had carried a request before.
    Closed(String),
    /// Anything else.
    Failed(Failure),
}

fn wire_silent(server: &str, timeouts: Timeouts) -> RecvError {
    RecvError::Silent { server: server.to_owned(), secs: timeouts.io.as_secs() }
}

/// `name` as a file name field, or an error that says in words what is wrong with it.
pub fn stored_file_name(name: &str) -> Result<FixedName, ClientError> {
    let why = match FixedName::new(name, "file name") {
        Ok(field) => return Ok(field),
        Err(DecodeError::EmptyName { .. }) => "it is empty".to_owned(),
        Err(DecodeError::NameNotTerminated { .. }) => format!("it is {} bytes long", name.len()),
        Err(DecodeError::NameNotPrintableAscii { position, .. }) => {
            let c = name[position..].chars().next().unwrap_or('?');
            format!("it has {c:?} at byte {position}")
        }
        Err(other) => other.to_string(),
    };
    Err(ClientError::BadFileName { name: format!("{name:?}"), why })
}

/// A 1027 on a fresh connection, after the previous one was lost; returns the new AES key.
/// `None` when the server denies it (2106).
fn redo_key_exchange(
    wire: &mut Wire,
    version: Version,
    identity: &Identity,
) -> Result<Option<AesKey>, Failure> {
    let name = FixedName::new(&identity.name, "name")
        .map_err(|e| Failure::Fatal(ClientError::BadName(e)))?;
    let request = encode_request(version, identity.id, &Request::Reconnect { name });
    wire.send(&request).map_err(|e| Failure::Connection(e.to_string()))?;
    match wire.recv() {
        Ok(Response::ReconnectAccepted { encrypted_key, .. }) => identity
            .key
            .decrypt_aes_key(&encrypted_key)
            .map(Some)
            .map_err(|e| Failure::Fatal(ClientError::Key(e))),
        Ok(Response::ReconnectDenied { .. }) => Ok(None),
        Ok(Response::GeneralError) => Err(Failure::ServerError),
        Ok(other) => Err(unexpected("reconnection after a lost connection (1027)", "2105", &other)),
        Err(e) => Err(Failure::Connection(e.to_string())),
    }
}

fn unexpected(step: &'static str, expected: &'static str, got: &Response) -> Failure {
    Failure::Fatal(ClientError::Unexpected { step, expected, got: got.code() })
}
