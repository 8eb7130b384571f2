//! One connection's state machine: read a request, decide, answer, repeat.
//!
//! What a connection may ask depends on what it has done, all decided in
//! [`Connection::authorize`]:
//!
//! | request | allowed when |
//! |---|---|
//! | 1025 register | within this address's registration limit ([`super::ratelimit`]) |
//! | 1026 public key | the id was registered on this connection, or (non-strict) from this IP within the window, and has no key yet (or this same key); and no back-off holds the id or address ([`super::backoff`]) |
//! | 1027 reconnect | no back-off holds the id or address (the answer is encrypted to the stored key) |
//! | 1028 file | a session for the id that has not ended: made on this connection, or (non-strict, on a connection with no key exchange of its own) the latest one from this IP within the window; no back-off; room in the client's quota of waiting uploads |
//! | 1029/1030/1031 | as 1028 (but for the quota), and an upload of that file name waits in the session |
//!
//! Anything else gets 2107. A request whose bytes cannot be trusted for framing (a bad
//! header, or a 1028 refused before its content was read) gets 2107 and the connection is
//! closed, since what follows cannot be parsed. A second request in a row that does not
//! decode closes the connection without another answer (see [`Connection::undecodable`]).
//! Content with bad padding is an attack (see
//! [`super::backoff`]): 2107, the session ends everywhere and the connection is closed.

use super::metrics::{CloseReason, Reason, UploadOutcome};
use super::refusal::{Fault, Refusal};
use super::session::{Pending, Session};
use super::upload::{self, UploadError};
use super::{ServerError, Shared};
use crate::content::Scheme;
use crate::crypto::{PublicKey, random_bytes};
use crate::protocol::{
    CLIENT_ID_LEN, ClientId, DecodeError, FILE_HEADER_LEN, FileHeader, FixedName, PublicKeyField,
    REQUEST_HEADER_LEN, Request, RequestCode, RequestHeader, Response, Version, storage_name,
};
use crate::store::{BlobStore, CommitIntent, StagedBlob};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{Instrument, debug, error, info, warn};

/// Largest payload of an unknown code that is skipped (answered 2107) rather than ending
/// the connection.
const MAX_SKIPPED_PAYLOAD: u32 = 64 * 1024;

/// How long a refused connection is drained before it is closed (see `linger`).
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What to do after a request.
enum Next {
    /// Send this and read the next request.
    Reply(Response),
    /// Send nothing (1030) and read on.
    Silent,
    /// Send this and close: the stream cannot be trusted any more.
    ReplyAndClose(Response),
    /// Close without an answer: the peer is out of step and was answered once already.
    Close,
}

/// One client connection.
pub(crate) struct Connection<S> {
    shared: Arc<Shared>,
    stream: S,
    conn_id: u64,
    peer: SocketAddr,
    /// The protocol this connection speaks, decided before its first request (every
    /// connection on the plain TCP path speaks protocol 3, whatever version byte the peer
    /// writes).
    version: Version,
    /// Registered on this connection with 1025, awaiting 1026.
    registered_here: Option<ClientId>,
    /// The session this connection made with 1026 or 1027.
    session: Option<Arc<Session>>,
    /// The connection's span, which learns the client id once it is known.
    span: tracing::Span,
    /// Its slot among the server's connections (none in the fuzz harness).
    slot: Option<super::slots::Slot>,
    /// When it was accepted (see [`super::KEYLESS_LIFETIME`]).
    accepted: Instant,
    /// When the request being read must be complete (see [`super::Config::request_deadline`]).
    deadline: Option<Instant>,
    /// Refusals of the peer's doing or of a limit, by reason: the first of each is logged
    /// at its level, the rest at debug and summed up in one line when the connection ends,
    /// so a peer repeating a refused request cannot flood the log.
    refusals: Vec<(&'static str, u64)>,
    /// Whether the last request did not decode (see [`Connection::undecodable`]).
    undecodable_before: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    pub(crate) fn new(shared: Arc<Shared>, stream: S, conn_id: u64, peer: SocketAddr) -> Self {
        Connection {
            shared,
            stream,
            conn_id,
            peer,
            version: Version::V3,
            registered_here: None,
            session: None,
            span: tracing::Span::none(),
            slot: None,
            accepted: Instant::now(),
            deadline: None,
            refusals: Vec::new(),
            undecodable_before: false,
        }
    }

    /// Gives the connection its slot (eviction, per-address count).
    pub(crate) fn with_slot(mut self, slot: super::slots::Slot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Completes when the server wants this connection's slot back, or its lifetime
    /// without a key exchange is over.
    fn must_yield(
        &self,
    ) -> impl std::future::Future<Output = (CloseReason, &'static str)> + use<S> {
        let evict = self.slot.as_ref().map(|s| Arc::clone(&s.evict));
        let end = (self.session.is_none())
            .then(|| tokio::time::Instant::from_std(self.accepted + super::KEYLESS_LIFETIME));
        async move {
            let evicted = async {
                match evict {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            let lifetime = async {
                match end {
                    Some(end) => tokio::time::sleep_until(end).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = evicted => (
                    CloseReason::Evicted,
                    "evicted to make room for a new connection (the server is full)",
                ),
                _ = lifetime => (
                    CloseReason::KeylessLifetime,
                    "no key exchange within the lifetime of a keyless connection",
                ),
            }
        }
    }

    /// Serves requests until the peer leaves, misbehaves, or the server shuts down.
    pub(crate) async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.span = tracing::Span::current();
        // After a 1030 the resend is part of the same transfer.
        let mut resend_due = false;
        loop {
            // A transfer under way (an upload awaiting its verdict, or an announced resend)
            // goes on through a shutdown, within the grace period; anything else stops.
            let in_transfer = resend_due || self.awaits_verdict();
            if *shutdown.borrow() && !in_transfer {
                break;
            }
            let header = if in_transfer {
                self.read_header().await
            } else {
                let yield_slot = self.must_yield();
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => break,
                    (reason, why) = yield_slot => {
                        self.shared.metrics.connection_refused(reason);
                        debug!("closed: {why}");
                        break;
                    }
                    h = self.read_header() => h,
                }
            };
            let next = match header {
                Ok(Some(bytes)) => self.handle(bytes).await,
                Ok(None) => break,
                Err(ServerError::Idle(idle)) if in_transfer => {
                    warn!(
                        "closing after {idle:?} of silence while the client's verdict (1029, \
                         1030 or 1031) or its resend was due; a client that waits for an answer \
                         to 1030 does not follow the protocol (see docs/compatibility.md)"
                    );
                    break;
                }
                Err(e) => {
                    debug!("connection ended: {e}");
                    break;
                }
            };
            resend_due = matches!(next, Ok(Next::Silent));
            let (response, close) = match next {
                Ok(Next::Reply(r)) => (Some(r), false),
                Ok(Next::Silent) => (None, false),
                Ok(Next::ReplyAndClose(r)) => (Some(r), true),
                Ok(Next::Close) => (None, true),
                Err(e) => {
                    debug!("connection ended: {e}");
                    break;
                }
            };
            if let Some(response) = response {
                // A peer that sends but never reads must not hold the connection forever.
                let idle = self.shared.config.idle_timeout;
                let written = tokio::time::timeout(
                    idle,
                    self.stream.write_all(&response.encode(self.version)),
                )
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    debug!("could not answer within {idle:?}; closing");
                    break;
                }
            }
            if close {
                self.linger().await;
                break;
            }
        }
        let _ = self.stream.shutdown().await;
        let repeated: Vec<String> = self
            .refusals
            .iter()
            .filter(|(_, n)| *n > 1)
            .map(|(reason, n)| format!("{reason} x{}", n - 1))
            .collect();
        if !repeated.is_empty() {
            info!(
                "the connection repeated refused requests (logged at debug): {}",
                repeated.join(", ")
            );
        }
        if let Some(session) = &self.session {
            let dropped = session.drop_pending_of(self.conn_id);
            if dropped > 0 {
                info!(dropped, "connection closed with unconfirmed uploads; they were deleted");
            }
        }
    }

    /// Counts a refusal; whether one with this reason was seen before on this connection.
    fn seen_refusal(&mut self, reason: &'static str) -> bool {
        match self.refusals.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => {
                *n += 1;
                true
            }
            None => {
                self.refusals.push((reason, 1));
                false
            }
        }
    }

    /// Whether an upload that arrived on this connection waits for the client's verdict.
    fn awaits_verdict(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.has_pending_of(self.conn_id))
    }

    /// Ends a connection whose request was refused while its bytes may still be arriving.
    /// Closing a socket with unread data makes the kernel reset the connection and drop
    /// what it has not sent yet, which can be the 2107 just written. So: send FIN (flushing
    /// the answer), then read and discard for a moment, and only then close.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let drain = async { while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// The next header, or `None` when the peer closed cleanly between requests. From its
    /// first byte, the header and the fixed payload after it must arrive within the
    /// request deadline.
    async fn read_header(&mut self) -> Result<Option<[u8; REQUEST_HEADER_LEN]>, ServerError> {
        let mut buf = [0u8; REQUEST_HEADER_LEN];
        self.deadline = None;
        self.set_idle(true);
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read_some(&mut buf[filled..]).await?;
            if n == 0 {
                return if filled == 0 { Ok(None) } else { Err(ServerError::Truncated) };
            }
            if filled == 0 {
                self.set_idle(false);
                self.deadline = Some(Instant::now() + self.shared.config.request_deadline);
            }
            filled += n;
        }
        Ok(Some(buf))
    }

    fn set_idle(&self, idle: bool) {
        if let Some(slot) = &self.slot {
            slot.set_idle(idle);
        }
    }

    /// One read, within the idle timeout and the request's deadline.
    async fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, ServerError> {
        let idle = self.shared.config.idle_timeout;
        let (wait, error) = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let error = ServerError::Deadline(self.shared.config.request_deadline);
                if left < idle { (left, error) } else { (idle, ServerError::Idle(idle)) }
            }
            None => (idle, ServerError::Idle(idle)),
        };
        Ok(tokio::time::timeout(wait, self.stream.read(buf)).await.map_err(|_| error)??)
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ServerError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_some(&mut buf[filled..]).await? {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                n => filled += n,
            }
        }
        Ok(())
    }

    async fn handle(&mut self, bytes: [u8; REQUEST_HEADER_LEN]) -> Result<Next, ServerError> {
        let header = match RequestHeader::decode(&bytes) {
            Ok(h) => h,
            Err(e) => return self.bad_header(&bytes, e).await,
        };
        let code = header.code;
        let mut payload =
            vec![0u8; code.fixed_payload_len().unwrap_or(FILE_HEADER_LEN as u32) as usize];
        self.read_exact(&mut payload).await?;
        let request = match Request::decode_payload(code, &payload) {
            Ok(r) => r,
            Err(e) => {
                // A fixed-size payload leaves the stream in step; after a 1028's file
                // header comes content we will not read: close.
                let in_step = code != RequestCode::SendFile;
                return Ok(self.undecodable(Some(code), &e, in_step));
            }
        };
        self.undecodable_before = false;
        // Every line a request logs carries its code: one line per request says what it was
        // and how it ended.
        let span = tracing::info_span!("request", code = code.as_u16());
        let result = self.dispatch(&header, request).instrument(span.clone()).await;
        let _entered = span.enter();
        let next = match result {
            Ok(next) => next,
            Err(refusal) => {
                self.shared.metrics.refusal(refusal.reason());
                let (client, reason) = (header.client_id, refusal.reason().as_str());
                let fault = refusal.fault();
                if fault != Fault::Internal && self.seen_refusal(reason) {
                    debug!(%client, reason, "refused with 2107 again: {refusal}");
                } else {
                    match fault {
                        Fault::Peer => warn!(%client, reason, "refused with 2107: {refusal}"),
                        Fault::Limit => info!(%client, reason, "refused with 2107: {refusal}"),
                        Fault::Internal => error!(
                            %client, reason, "refused with 2107 (a server failure): {refusal}"
                        ),
                    }
                }
                // A refused 1028 leaves its content unread.
                if code == RequestCode::SendFile || refusal.closes() {
                    Next::ReplyAndClose(Response::GeneralError)
                } else {
                    Next::Reply(Response::GeneralError)
                }
            }
        };
        let response = match &next {
            Next::Reply(r) | Next::ReplyAndClose(r) => Some(r),
            Next::Silent | Next::Close => None,
        };
        self.shared.metrics.request(Some(code), response);
        Ok(next)
    }

    /// A header that does not decode. An unknown code with a small payload is skipped so
    /// the client can carry on; anything else ends the connection.
    async fn bad_header(
        &mut self,
        bytes: &[u8; REQUEST_HEADER_LEN],
        error: DecodeError,
    ) -> Result<Next, ServerError> {
        let raw_code = u16::from_le_bytes([bytes[CLIENT_ID_LEN + 1], bytes[CLIENT_ID_LEN + 2]]);
        let [.., s0, s1, s2, s3] = *bytes;
        let size = u32::from_le_bytes([s0, s1, s2, s3]);
        let skip = matches!(error, DecodeError::UnknownRequestCode(_))
            && size <= MAX_SKIPPED_PAYLOAD
            && !self.undecodable_before;
        if skip {
            let mut skipped = vec![0u8; size as usize];
            self.read_exact(&mut skipped).await?;
        }
        Ok(self.undecodable(RequestCode::try_from(raw_code).ok(), &error, skip))
    }

    /// A request that did not decode: 2107, and the connection goes on only if `in_step`
    /// (its bytes were all read) and the request before decoded. Two in a row mean the
    /// peer is out of step, or sending garbage, which would otherwise be answered and
    /// logged once for every 23 bytes: the second closes the connection without another
    /// answer or warning, so a misbehaving connection gets one of each.
    fn undecodable(
        &mut self,
        code: Option<RequestCode>,
        error: &DecodeError,
        in_step: bool,
    ) -> Next {
        self.shared.metrics.malformed(code);
        if std::mem::replace(&mut self.undecodable_before, true) {
            debug!("closing: a second request in a row that does not decode ({error})");
            return Next::Close;
        }
        let code = code.map(RequestCode::as_u16);
        let reason = Reason::Malformed.as_str();
        if in_step {
            warn!(code, reason, "refused with 2107: {error}");
            Next::Reply(Response::GeneralError)
        } else {
            warn!(code, reason, "refused with 2107, closing (the stream is out of step): {error}");
            Next::ReplyAndClose(Response::GeneralError)
        }
    }

    async fn dispatch(
        &mut self,
        header: &RequestHeader,
        request: Request,
    ) -> Result<Next, Refusal> {
        let id = header.client_id;
        let code = request.code();
        if code != RequestCode::Register {
            let known = self.shared.records().touch(id).await?;
            if !known && code != RequestCode::Reconnect {
                return Err(Refusal::UnknownClient(id));
            }
        }
        let next = match request {
            Request::Register { name } => self.register(name).await?,
            Request::SendPublicKey { name, public_key } => {
                self.public_key(id, name, public_key).await?
            }
            Request::Reconnect { name } => self.reconnect(id, name).await?,
            Request::SendFile(file) => self.receive_file(header, file).await?,
            Request::CrcOk { file_name } => self.confirm(id, file_name).await?,
            Request::CrcRetry { file_name } => {
                let session = self.authorize(id).await?;
                self.shared
                    .take_pending(&session, file_name.as_str())
                    .await?
                    .ok_or_else(|| Refusal::NothingWaits(file_name.to_string()))?;
                self.shared.metrics.upload(UploadOutcome::Mismatch);
                info!(%file_name, "client will resend");
                if self.compat_crc32(header) {
                    Next::Reply(Response::Acknowledged { client_id: Some(id) })
                } else {
                    Next::Silent
                }
            }
            Request::CrcGiveUp { file_name } => self.give_up(id, file_name).await?,
        };
        Ok(next)
    }

    /// The session that may act for `id` on this connection.
    async fn authorize(&mut self, id: ClientId) -> Result<Arc<Session>, Refusal> {
        if let Some(session) = &self.session {
            if self.shared.session_ended(session).await? {
                return Err(Refusal::SessionEnded);
            }
            if session.id == id {
                return Ok(Arc::clone(session));
            }
            // A connection that made a key exchange as one client never acts for another,
            // even one whose session from this address is still in the window.
            return Err(Refusal::OtherClient { session: session.id, asked: id });
        }
        let strict = self.shared.config.strict_sessions;
        let found = self.shared.find_session(id, self.peer.ip()).await?;
        found.ok_or(Refusal::NoSession { id, strict })
    }

    /// Takes one of this address's registrations; see [`super::ratelimit`].
    async fn check_registration_limit(&mut self) -> Result<(), Refusal> {
        let ip = self.peer.ip();
        let taken = self.shared.take_registration(ip).await;
        taken.map_err(|wait| Refusal::RegistrationLimit { ip, wait })
    }

    async fn register(&mut self, name: FixedName) -> Result<Next, Refusal> {
        use crate::protocol::v4::Registration;
        match self.shared.config.registration {
            Registration::Open => {}
            Registration::Token => return Err(Refusal::RegistrationClosed("token")),
            Registration::Closed => return Err(Refusal::RegistrationClosed("closed")),
        }
        self.check_registration_limit().await?;
        let (id, ip) = (ClientId::random(), self.peer.ip());
        let text = name.as_str().to_owned();
        let inserted = self.shared.records().register(id, text, ip).await?;
        if !inserted {
            info!(%name, "registration refused: name taken");
            return Ok(Next::Reply(Response::RegistrationFailed));
        }
        info!(%name, client = %id, "registered");
        self.registered_here = Some(id);
        self.shared.note_registration(id, self.peer.ip()).await?;
        Ok(Next::Reply(Response::Registered { client_id: id }))
    }

    async fn public_key(
        &mut self,
        id: ClientId,
        name: FixedName,
        field: PublicKeyField,
    ) -> Result<Next, Refusal> {
        let (record, usual_ip) = (
            self.shared.records().client(id).await?,
            self.shared.records().usual_address(id).await?,
        );
        let record = record.ok_or(Refusal::UnknownClient(id))?;
        if record.name != name.as_str() {
            return Err(Refusal::NameMismatch { id, name: name.to_string() });
        }
        if !record.protocol3_allowed {
            // Upgraded (or registered over protocol 4): protocol 3 would only help an
            // attacker who has the old RSA key.
            warn!(%name, client = %id, "1026 refused: this client uses protocol 4 now");
            return Err(Refusal::KeyNotAllowed(id));
        }
        let same_key = record.public_key.as_deref() == Some(&field.0[..]);
        let may_register = self.registered_here == Some(id)
            || self.shared.registered_recently(id, self.peer.ip()).await?;
        let first_key = record.public_key.is_none() && may_register;
        if !(same_key || first_key) {
            return Err(Refusal::KeyNotAllowed(id));
        }
        let key =
            PublicKey::from_field(&field).map_err(|e| Refusal::BadPublicKey(e.to_string()))?;
        self.check_backoff(id, usual_ip).await?;
        let stored = field.0.to_vec();
        self.shared.records().set_public_key(id, stored).await?;
        let encrypted_key = self.start_session(id, &key, usual_ip).await?;
        info!("public key received; AES key sent");
        Ok(Next::Reply(Response::PublicKeyAccepted { client_id: id, encrypted_key }))
    }

    async fn reconnect(&mut self, id: ClientId, name: FixedName) -> Result<Next, Refusal> {
        let text = name.as_str().to_owned();
        let record = self.shared.records().client_named(text).await?;
        let usual_ip = self.shared.records().usual_address(id).await?;
        let denied = Next::Reply(Response::ReconnectDenied { client_id: Some(id) });
        let Some(record) = record.filter(|r| r.id == id) else {
            info!(%name, client = %id, "reconnect denied: no client with this name and id");
            return Ok(denied);
        };
        if !record.protocol3_allowed {
            warn!(
                %name, client = %id,
                "reconnect denied: this client was upgraded to protocol 4, which refuses \
                 protocol 3 for it"
            );
            return Ok(denied);
        }
        let key = record
            .public_key
            .as_deref()
            .and_then(|k| PublicKeyField(k.try_into().ok()?).into())
            .and_then(|f: PublicKeyField| PublicKey::from_field(&f).ok());
        let Some(key) = key else {
            info!(%name, client = %id, "reconnect denied: no usable public key on record");
            return Ok(denied);
        };
        self.check_backoff(id, usual_ip).await?;
        let encrypted_key = self.start_session(id, &key, usual_ip).await?;
        info!("reconnected; fresh AES key sent");
        Ok(Next::Reply(Response::ReconnectAccepted { client_id: id, encrypted_key }))
    }

    /// Refuses while padding failures hold key exchanges (and uploads) of `id` from this
    /// address back; see [`super::backoff`].
    async fn check_backoff(
        &mut self,
        id: ClientId,
        usual_ip: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        match self.shared.blocked_for(id, self.peer.ip(), usual_ip).await? {
            None => Ok(()),
            Some(wait) => Err(Refusal::BackedOff { id, ip: self.peer.ip(), wait }),
        }
    }

    /// Content that does not decrypt under the session key is an attack (a correct client
    /// always has the key): the session ends for every connection, with all its unconfirmed
    /// uploads, and key exchanges back off.
    async fn padding_failure(&mut self, session: &Arc<Session>, file_name: &FixedName) -> Next {
        self.shared.metrics.refusal(Reason::BadPadding);
        let dropped = self.shared.end_session(session).await;
        let (id, ip) = (session.id, self.peer.ip());
        let blocked = self.shared.padding_failure(id, ip, session.usual_ip).await;
        warn!(
            peer = %self.peer, client = %id, %file_name, dropped_uploads = dropped,
            "content with bad padding (not encrypted with the session key): session ended, \
             connection closed, key exchanges refused for {} s", blocked.as_secs()
        );
        Next::ReplyAndClose(Response::GeneralError)
    }

    /// Makes a fresh AES key, records it, and makes it this connection's session.
    async fn start_session(
        &mut self,
        id: ClientId,
        key: &PublicKey,
        usual_ip: Option<IpAddr>,
    ) -> Result<Vec<u8>, Refusal> {
        let aes_key: [u8; 16] = random_bytes();
        let encrypted = key
            .encrypt_aes_key(&aes_key)
            .map_err(|e| Refusal::Internal(format!("encrypting the AES key: {e}")))?;
        self.shared.records().set_aes_key(id, aes_key).await?;
        if let Some(old) = self.session.take() {
            old.drop_pending_of(self.conn_id);
        }
        let session =
            Session::new(self.version, id, aes_key, self.peer.ip(), self.conn_id, usual_ip)
                .counted(self.shared.metrics.session_started());
        let session = Arc::new(session);
        self.shared.publish_session(&session).await?;
        self.session = Some(session);
        if let Some(slot) = &self.slot {
            slot.set_keyed();
        }
        self.registered_here = None;
        self.span.record("client", tracing::field::display(id));
        Ok(encrypted)
    }

    async fn receive_file(
        &mut self,
        header: &RequestHeader,
        file: FileHeader,
    ) -> Result<Next, Refusal> {
        let id = header.client_id;
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        file.check_sizes(header.payload_size, config.max_content)?;
        let session = self.authorize(id).await?;
        // Sessions made before a padding failure elsewhere are held back as well.
        self.check_backoff(id, session.usual_ip).await?;
        let stored_name = storage_name(file.file_name.as_str())?.to_owned();
        let quota =
            self.shared.quotas.reserve(id, u64::from(file.content_size)).map_err(Refusal::Quota)?;
        let needed = u64::from(file.content_size) + config.disk_reserve;
        if let Some(available) = self.shared.storage.available_bytes().filter(|&a| a < needed) {
            return Err(Refusal::DiskFull {
                needed: u64::from(file.content_size),
                available,
                reserve: config.disk_reserve,
            });
        }
        let in_flight = Arc::clone(&self.shared.uploads)
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy(config.max_uploads))?;
        let idle = config.idle_timeout;
        // Held until the upload ends; without one, a large upload takes the small path.
        let large_slot = (file.content_size >= upload::LARGE_UPLOAD)
            .then(|| Arc::clone(&self.shared.large_uploads).try_acquire_owned().ok())
            .flatten();
        let (storage, large) = (self.shared.storage.clone(), large_slot.is_some());
        let size = u64::from(file.content_size);
        let staged = tokio::task::spawn_blocking(move || storage.stage(id, size, large))
            .await
            .map_err(|e| Refusal::Internal(e.to_string()))?
            .map_err(|source| Refusal::Storage {
                what: "cannot create the upload file".into(),
                source,
            })?;
        let opener = Scheme::of(session.version, session.aes_key).opener(self.compat_crc32(header));
        let started = Instant::now();
        let received =
            upload::receive(&mut self.stream, file.content_size, opener, staged, idle, large).await;
        drop((large_slot, in_flight));
        let (received, staged) = match received {
            Ok(r) => r,
            Err(e) => {
                self.shared.metrics.upload(UploadOutcome::Failed);
                return match e {
                    UploadError::Padding => {
                        Ok(self.padding_failure(&session, &file.file_name).await)
                    }
                    e => Err(e.into()),
                };
            }
        };
        self.shared.metrics.upload_received(started);
        info!(
            file_name = %file.file_name, size = received.size, cksum = received.cksum,
            "file received; waiting for the client's checksum verdict"
        );
        let pending = Pending {
            upload: staged,
            conn: self.conn_id,
            stored_name,
            size: received.size,
            cksum: received.cksum,
            arrived: Instant::now(),
            quota: Some(quota),
        };
        let borrowed = session.owner_conn != self.conn_id;
        let name = file.file_name.to_string();
        if !self.shared.keep_pending(&session, borrowed, name, pending).await? {
            return Err(Refusal::EndedDuringUpload);
        }
        Ok(Next::Reply(Response::FileReceived {
            client_id: id,
            content_size: file.content_size,
            file_name: file.file_name,
            // The record keeps the real cksum; only the answer follows the peer's habit.
            cksum: received.ciphertext_crc32.unwrap_or(received.cksum),
        }))
    }

    /// Whether this request comes from the client that checks a CRC-32 of the ciphertext
    /// and waits for an answer to 1030, and the operator asked to serve it so.
    fn compat_crc32(&self, header: &RequestHeader) -> bool {
        self.shared.config.compat_crc32_ciphertext && header.version == super::COMPAT_CRC32_VERSION
    }

    async fn confirm(&mut self, id: ClientId, file_name: FixedName) -> Result<Next, Refusal> {
        let session = self.authorize(id).await?;
        let pending = self
            .shared
            .take_pending(&session, file_name.as_str())
            .await?
            .ok_or_else(|| Refusal::NothingWaits(file_name.to_string()))?;
        let turn = self.shared.commit_turn(id, &pending.stored_name).await;
        // Where it will be recorded, and the version kept of the confirmed copy it
        // replaces, if any (under the commit turn, so nobody else records this name in
        // between).
        let keep = self.shared.config.keep_versions;
        let records = self.shared.records();
        let location = pending.upload.location().to_owned();
        let plan = self
            .shared
            .storage
            .commit_plan(records, id, &pending.stored_name, &location, keep)
            .await?;
        let intent = CommitIntent {
            client_id: id,
            stored_name: pending.stored_name.clone(),
            file_name: file_name.to_string(),
            path_name: plan.path_name,
            source: location,
            size: pending.size,
            cksum: pending.cksum,
            archive: plan.archive,
            restores: None,
            v4: None,
        };
        // Recorded before the rename, forgotten in the transaction that records the file:
        // a crash anywhere in between is finished or undone at start-up.
        records.begin_commit(intent.clone()).await?;
        let storage = self.shared.storage.clone();
        let (name, archive) = (pending.stored_name.clone(), intent.archive.clone());
        let committed = match tokio::task::spawn_blocking(move || {
            storage.commit(pending.upload, id, &name, archive.as_deref())
        })
        .await
        {
            Ok(Ok(committed)) => Ok(committed),
            Ok(Err(source)) => {
                Err(Refusal::Storage { what: format!("could not store {file_name}"), source })
            }
            Err(e) => Err(Refusal::Internal(e.to_string())),
        };
        let committed = match committed {
            Ok(committed) => committed,
            Err(refused) => {
                let abandoned = intent.clone();
                let _ = self.shared.records().abandon_commit(abandoned).await;
                return Err(refused);
            }
        };
        let relative = committed.path_name.clone();
        if let Some(replaced) = committed.replaced {
            // Deleting the replaced copy can take a while; nobody needs to wait for it.
            tokio::task::spawn_blocking(move || drop(replaced));
        }
        let (ip, size) = (self.peer.ip(), intent.size);
        let pruned = self.shared.records().finish_commit(intent, Some(ip), keep).await?;
        drop(turn);
        if !pruned.is_empty() {
            let storage = self.shared.storage.clone();
            tokio::task::spawn_blocking(move || {
                for path in pruned {
                    if let Err(e) = storage.delete_version(id, &path) {
                        warn!(%path, "could not delete a version beyond --keep-versions: {e}");
                    }
                }
            });
        }
        self.shared.metrics.upload(UploadOutcome::Verified);
        info!(%file_name, path = %relative, size, "file verified and stored");
        Ok(Next::Reply(Response::Acknowledged { client_id: Some(id) }))
    }

    async fn give_up(&mut self, id: ClientId, file_name: FixedName) -> Result<Next, Refusal> {
        let session = self.authorize(id).await?;
        let pending = self
            .shared
            .take_pending(&session, file_name.as_str())
            .await?
            .ok_or_else(|| Refusal::NothingWaits(file_name.to_string()))?;
        let (sent, rel) =
            (file_name.to_string(), self.shared.storage.path_name(id, &pending.stored_name));
        // Deleting a large upload takes a while: not on the runtime's threads.
        tokio::task::spawn_blocking(move || drop(pending));
        self.shared.records().record_given_up(id, sent, rel).await?;
        self.shared.metrics.upload(UploadOutcome::GivenUp);
        warn!(%file_name, "client gave up after repeated checksum mismatches; nothing stored");
        Ok(Next::Reply(Response::Acknowledged { client_id: Some(id) }))
    }
}
