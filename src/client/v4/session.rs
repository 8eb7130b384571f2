//! What a protocol-4 client does on a connection after `WELCOME`: register (with a token
//! under the `token` policy), upgrade a protocol-3 identity, and send files with the
//! exchange of docs/protocol-v4.md, "Uploads": `PUT_BEGIN`, `DATA`, `PUT_END` and the
//! `COMMIT` carrying the client's BLAKE3 sent without waiting for `PUT_RECEIVED`; a
//! `hash_mismatch` sends the file again (at most [`MAX_SENDS`] times, as protocol 3
//! does), and a temporary refusal is retried after the server's `retry after`.

use super::conn::{Answer, AnswerFuture, ConnError, Connection};
use super::error::{V4Error, describe_refusal};
use crate::client::identity::Identity;
use crate::client::{Event, MAX_SENDS, RETRIES};
use crate::protocol::ClientId;
use crate::protocol::v4::{
    Commit, Committed, ErrorCode, ErrorFrame, ErrorKind, FrameType, Hash, MAX_DATA_PAYLOAD,
    NO_HASH, PutBegin, PutReceived, Register, Registered, ResumeQuery, ResumeState, Upgrade,
    Welcome, names, upgrade_statement,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use unicode_normalization::UnicodeNormalization;

/// The longest wait for a temporary refusal's `retry after`, however long the server asks:
/// a client run should not sleep for minutes on one file.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);
/// The wait for a temporary refusal without a `retry after`.
const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);
/// The largest `DATA` frame sent: the protocol's limit, 1 MiB (the file is read in pieces
/// of this size, so memory stays constant whatever the file's size).
const DATA_CHUNK: usize = MAX_DATA_PAYLOAD as usize;
/// Files of at least this size ask the server for what it kept of an interrupted upload
/// (`RESUME_QUERY`) before they are sent: one round trip, against resending what the
/// server already holds. Smaller files go out in about a round trip anyway, and skipping
/// the question keeps a run of many small files free of it (nor does the server keep
/// them: [`crate::protocol::v4::RESUMABLE_FROM`]).
pub const RESUME_FROM: u64 = crate::protocol::v4::RESUMABLE_FROM;

/// A resumed put's first data may wait for the server to take up what it kept: on an
/// object store it copies the kept bytes into a fresh upload before it reads on
/// (docs/operations.md, "Resumable uploads"). Until this much has gone out, a write may
/// wait beyond the I/O timeout for as long as that copy takes at this slowest rate.
const RESUME_TAKE_UP_RATE: u64 = 8 << 20;
/// More than the socket buffers hold: past it, the server is reading.
const RESUME_TAKE_UP_BYTES: u64 = 32 << 20;

/// A file stored and verified over protocol 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The local file.
    pub path: PathBuf,
    /// The path it is stored under (NFC).
    pub stored_as: String,
    /// Its size.
    pub size: u64,
    /// Its BLAKE3, equal on both sides.
    pub hash: Hash,
    /// How many sends it took.
    pub sends: u32,
    /// The stored copy's generation.
    pub generation: u64,
    /// The copy it replaced was kept as a version.
    pub kept_version: bool,
    /// Where the last send began: more than 0 when it continued an upload the server had
    /// kept from an interrupted run.
    pub resumed_from: u64,
}

/// A registered client on one connection.
pub struct Session {
    pub(super) conn: Connection,
    /// What the server said in `WELCOME`.
    pub welcome: Welcome,
    pub(super) events: Box<dyn FnMut(Event) + Send>,
    /// The connection is out of step (a put was cut short, a server broke an answer):
    /// nothing more goes on it.
    pub(super) broken: Option<String>,
    /// `--limit-rate`: file content goes out at most this many bytes per second.
    pub(super) limit_rate: Option<u64>,
    /// `--no-clobber`: puts ask the server to refuse a path that holds a file.
    pub(super) no_clobber: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("conn", &self.conn).finish()
    }
}

/// What one send of a file put on the wire.
#[derive(Clone, Copy)]
pub(super) struct Sent<'a> {
    pub(super) path: &'a Path,
    pub(super) stored_as: &'a str,
    pub(super) size: u64,
    pub(super) hash: Hash,
    pub(super) attempt: u32,
    pub(super) resumed_from: u64,
}

/// Where a put begins: from 0, or where an upload the server kept stopped, with the
/// whole-file hash already fed the bytes before that point.
struct Start {
    offset: u64,
    prefix_hash: Hash,
    hasher: blake3::Hasher,
}

impl Start {
    fn zero() -> Start {
        Start { offset: 0, prefix_hash: NO_HASH, hasher: blake3::Hasher::new() }
    }
}

/// How one send of a file ended.
pub(super) enum Attempt {
    Stored(Stored),
    Mismatch { theirs: Hash },
    Refused(ErrorFrame),
}

impl Session {
    /// `HELLO` and `WELCOME` on a fresh connection.
    pub async fn open(mut conn: Connection, software: &str) -> Result<Session, V4Error> {
        match conn.hello(software).await? {
            Ok(welcome) => Ok(Session {
                conn,
                welcome,
                events: Box::new(|_| {}),
                broken: None,
                limit_rate: None,
                no_clobber: false,
            }),
            Err(refused) => Err(V4Error::Refused { step: "HELLO", error: refused }),
        }
    }

    /// Reports progress and retries to `events`.
    pub fn on_event(&mut self, events: impl FnMut(Event) + Send + 'static) {
        self.events = Box::new(events);
    }

    /// `SHA256:…` of the server's key.
    pub fn server_key(&self) -> &str {
        &self.conn.server_key
    }

    /// Whether this key is a client here.
    pub fn registered(&self) -> bool {
        self.welcome.registered
    }

    /// `REGISTER` with `name` (NFC) and an invitation token, if the policy needs one;
    /// temporary refusals (the rate limit) are retried after the server's wait.
    pub async fn register(
        &mut self,
        name: &str,
        token: Option<[u8; 16]>,
    ) -> Result<Registered, V4Error> {
        let name: String = name.nfc().collect();
        names::check_client_name(&name)
            .map_err(|why| V4Error::BadName { name: name.clone(), why: why.to_string() })?;
        let payload = Register { name, token }.encode().map_err(V4Error::encode)?;
        let registered =
            self.identity_request(FrameType::Register, "registration", &payload).await?;
        self.became(&registered);
        Ok(registered)
    }

    /// `UPGRADE`: attaches this connection's key (`client_fp`) to the protocol-3 record of
    /// `identity` by signing the upgrade statement with its RSA key. The statement is bound
    /// to this TLS connection (its exporter value) and to the server's key, so it is
    /// useless anywhere else.
    pub async fn upgrade(
        &mut self,
        identity: &Identity,
        client_fp: &[u8; 32],
    ) -> Result<Registered, V4Error> {
        let statement = upgrade_statement(
            &self.conn.exporter,
            &self.conn.server_fp,
            client_fp,
            &identity.id,
            &identity.name,
        )
        .ok_or_else(|| V4Error::BadName {
            name: identity.name.clone(),
            why: "longer than 255 bytes".into(),
        })?;
        let signature = identity.key.sign_pkcs1v15_sha256(&statement).map_err(V4Error::Sign)?;
        let upgrade = Upgrade { client_id: identity.id, name: identity.name.clone(), signature };
        let payload = upgrade.encode().map_err(V4Error::encode)?;
        let registered = self.identity_request(FrameType::Upgrade, "upgrade", &payload).await?;
        self.became(&registered);
        Ok(registered)
    }

    fn became(&mut self, registered: &Registered) {
        self.welcome.registered = true;
        self.welcome.client_id = registered.client_id;
        self.welcome.name = registered.name.clone();
    }

    /// The client's id and name here.
    pub fn client(&self) -> (ClientId, &str) {
        (self.welcome.client_id, &self.welcome.name)
    }

    async fn identity_request(
        &mut self,
        frame_type: FrameType,
        step: &'static str,
        payload: &[u8],
    ) -> Result<Registered, V4Error> {
        let mut retries = 0;
        loop {
            let tag = self.conn.new_tag();
            let answer = self.conn.request(frame_type, tag, payload).await?;
            match self.conn.answer(answer).await? {
                Answer::Frame(p) => {
                    return Registered::decode(&p).map_err(|e| server_broke("REGISTERED", e));
                }
                Answer::Refused(error) if self.retry(&error, step, &mut retries).await => {}
                Answer::Refused(error) => return Err(V4Error::Refused { step, error }),
            }
        }
    }

    /// Whether a refusal is worth another try: temporary, not closing the connection,
    /// within [`RETRIES`]; waits the server's `retry after` first.
    pub(super) async fn retry(
        &mut self,
        error: &ErrorFrame,
        step: &'static str,
        retries: &mut u32,
    ) -> bool {
        if error.code.kind() != ErrorKind::Temporary || error.closes || *retries >= RETRIES {
            return false;
        }
        *retries += 1;
        let wait = match error.retry_after_ms {
            0 => DEFAULT_RETRY_WAIT,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_RETRY_WAIT),
        };
        (self.events)(Event::Retrying {
            step,
            attempt: *retries + 1,
            reason: format!(
                "{} (retrying in {:.1} s)",
                describe_refusal(error),
                wait.as_secs_f64()
            ),
        });
        tokio::time::sleep(wait).await;
        true
    }

    /// Has the server refuse to replace a stored file (`--no-clobber`): such a put gets
    /// `conflict`, which is this file's error.
    pub fn set_no_clobber(&mut self, no_clobber: bool) {
        self.no_clobber = no_clobber;
    }

    /// Sends file content at most `rate` bytes per second (`--limit-rate`).
    pub fn set_limit_rate(&mut self, rate: Option<u64>) {
        self.limit_rate = rate;
    }

    /// Sends `path` to be stored as `stored_as` (normalised to NFC first) and verifies it
    /// end to end. A refusal of this file is an error about this file; the session can go
    /// on with the next one unless [`V4Error::ends_session`] says otherwise.
    pub async fn send_file(&mut self, path: &Path, stored_as: &str) -> Result<Stored, V4Error> {
        if let Some(why) = &self.broken {
            return Err(V4Error::Conn(ConnError::Lost(why.clone())));
        }
        let stored_as: String = stored_as.nfc().collect();
        names::check_path(&stored_as)
            .map_err(|why| V4Error::BadName { name: stored_as.clone(), why: why.to_string() })?;
        let open_error = |cause| V4Error::Open { path: path.to_owned(), cause };
        let meta = tokio::fs::metadata(path).await.map_err(open_error)?;
        if !meta.is_file() {
            return Err(open_error(std::io::Error::other("not a regular file")));
        }
        let mut retries = 0;
        let mut sends = 0;
        loop {
            sends += 1;
            match self.send_once(path, &stored_as, sends).await? {
                Attempt::Stored(stored) => return Ok(stored),
                Attempt::Mismatch { theirs } if sends < MAX_SENDS => {
                    (self.events)(Event::DigestMismatch { theirs: hex(&theirs), attempt: sends });
                }
                Attempt::Mismatch { .. } => {
                    return Err(V4Error::Verification { path: path.to_owned(), attempts: sends });
                }
                Attempt::Refused(error)
                    if self.retry(&error, "sending the file", &mut retries).await =>
                {
                    sends -= 1;
                }
                Attempt::Refused(error) => {
                    return Err(V4Error::Refused { step: "sending the file", error });
                }
            }
        }
    }

    /// One put of the file, its `COMMIT` pipelined behind it. The first send of a large
    /// file continues what the server kept of an interrupted upload of it, when that is
    /// this file's beginning; a resumed put the server refuses (it no longer holds that
    /// upload) goes again from 0.
    async fn send_once(
        &mut self,
        path: &Path,
        stored_as: &str,
        attempt: u32,
    ) -> Result<Attempt, V4Error> {
        let open_error = |cause| V4Error::Open { path: path.to_owned(), cause };
        let mut file = tokio::fs::File::open(path).await.map_err(open_error)?;
        let meta = file.metadata().await.map_err(open_error)?;
        let (size, mtime) = (meta.len(), mtime_ns(&meta));
        let start = if attempt == 1 {
            self.resume_point(&mut file, path, stored_as, size, mtime).await?
        } else {
            Start::zero()
        };
        let resumed = start.offset > 0;
        let outcome =
            self.put_from(&mut file, path, Some(size), mtime, stored_as, attempt, start).await?;
        match outcome {
            Attempt::Refused(error)
                if resumed && matches!(error.code, ErrorCode::Conflict | ErrorCode::Corrupt) =>
            {
                (self.events)(Event::Note(format!(
                    "the server no longer holds the interrupted upload of {stored_as} ({}); \
                     sending it from the start",
                    describe_refusal(&error)
                )));
                file.seek(std::io::SeekFrom::Start(0)).await.map_err(open_error)?;
                self.put_from(&mut file, path, Some(size), mtime, stored_as, attempt, Start::zero())
                    .await
            }
            outcome => Ok(outcome),
        }
    }

    /// Where the send of `file` (`size` bytes, modified at `mtime`) begins: after the
    /// bytes the server holds durable of an interrupted upload to `stored_as`, when that
    /// upload declared this size and mtime and those bytes hash as this file's first ones
    /// do; otherwise from 0. `file` is left positioned where the send begins.
    async fn resume_point(
        &mut self,
        file: &mut tokio::fs::File,
        path: &Path,
        stored_as: &str,
        size: u64,
        mtime: i64,
    ) -> Result<Start, V4Error> {
        if self.welcome.resume_window == 0 || size < RESUME_FROM {
            return Ok(Start::zero());
        }
        let payload =
            ResumeQuery { path: stored_as.to_owned() }.encode().map_err(V4Error::encode)?;
        let tag = self.conn.new_tag();
        let answer = self.conn.request(FrameType::ResumeQuery, tag, &payload).await?;
        let state = match self.conn.answer(answer).await? {
            Answer::Frame(p) => {
                ResumeState::decode(&p).map_err(|e| server_broke("RESUME_STATE", e))?
            }
            // Not an error of this file: the send goes on from 0.
            Answer::Refused(_) => return Ok(Start::zero()),
        };
        if !state.present || state.durable == 0 || state.durable > size {
            return Ok(Start::zero());
        }
        if state.size != size || state.mtime_ns != mtime {
            (self.events)(Event::Note(format!(
                "{} changed since its interrupted upload to {stored_as} (size or modification \
                 time); sending it from the start",
                path.display()
            )));
            return Ok(Start::zero());
        }
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; DATA_CHUNK];
        let mut hashed = 0u64;
        while hashed < state.durable {
            let want = buf.len().min(usize::try_from(state.durable - hashed).unwrap_or(usize::MAX));
            let n = read_up_to(file, &mut buf[..want])
                .await
                .map_err(|cause| V4Error::Open { path: path.to_owned(), cause })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            hashed += n as u64;
        }
        if hashed != state.durable || *hasher.finalize().as_bytes() != state.prefix_hash {
            (self.events)(Event::Note(format!(
                "the first {} bytes of {} differ from what its interrupted upload sent; sending \
                 it from the start",
                state.durable,
                path.display()
            )));
            file.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|cause| V4Error::Open { path: path.to_owned(), cause })?;
            return Ok(Start::zero());
        }
        (self.events)(Event::Resumed { from: state.durable, size });
        Ok(Start { offset: state.durable, prefix_hash: state.prefix_hash, hasher })
    }

    /// Sends standard input to be stored as `stored_as` (`send -`): a put of unknown
    /// size, read to its end. It cannot be read twice, so a hash mismatch or a temporary
    /// refusal is this file's error at once rather than a reason to send it again.
    pub async fn send_stdin(&mut self, stored_as: &str) -> Result<Stored, V4Error> {
        if let Some(why) = &self.broken {
            return Err(V4Error::Conn(ConnError::Lost(why.clone())));
        }
        let stored_as: String = stored_as.nfc().collect();
        names::check_path(&stored_as)
            .map_err(|why| V4Error::BadName { name: stored_as.clone(), why: why.to_string() })?;
        let path = Path::new("-");
        // Standard input as a file (a pipe or a redirect), read on the blocking pool as a
        // file is: a duplicate of fd 0, so nothing here closes the process's own.
        let fd = std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned();
        let fd = fd.map_err(|cause| V4Error::Open { path: path.to_owned(), cause })?;
        let mut stdin = tokio::fs::File::from_std(std::fs::File::from(fd));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| i64::try_from(d.as_nanos()).ok())
            .unwrap_or(0);
        match self.put_from(&mut stdin, path, None, now, &stored_as, 1, Start::zero()).await? {
            Attempt::Stored(stored) => Ok(stored),
            Attempt::Mismatch { .. } => {
                Err(V4Error::Verification { path: path.to_owned(), attempts: 1 })
            }
            Attempt::Refused(error) => Err(V4Error::Refused { step: "sending the file", error }),
        }
    }

    /// One put of `reader` (`size` bytes, or to its end when `None`) from `start` (the
    /// reader positioned there), its `COMMIT` pipelined behind it.
    #[allow(clippy::too_many_arguments)]
    async fn put_from<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        path: &Path,
        size: Option<u64>,
        mtime_ns: i64,
        stored_as: &str,
        attempt: u32,
        start: Start,
    ) -> Result<Attempt, V4Error> {
        let bytes = size.unwrap_or(0);
        (self.events)(Event::SendStarted { path: path.to_owned(), bytes, attempt });
        if start.offset > 0 {
            (self.events)(Event::Progress(start.offset));
        }
        let tag = self.conn.new_tag();
        let begin = PutBegin {
            no_clobber: self.no_clobber,
            size,
            offset: start.offset,
            prefix_hash: start.prefix_hash,
            mtime_ns,
            path: stored_as.to_owned(),
        };
        let payload = begin.encode().map_err(V4Error::encode)?;
        let mut put = self.conn.request(FrameType::PutBegin, tag, &payload).await?;
        let resumed_from = start.offset;
        let streamed = self.stream(reader, path, size, tag, &mut put, start).await?;
        let Some((hash, size)) = streamed else {
            // Refused while the data was going out: no COMMIT for it.
            return self.refusal_of(put).await;
        };
        let commit = Commit { hash }.encode();
        let committed = self.conn.request(FrameType::Commit, tag, &commit).await?;
        let sent = Sent { path, stored_as, size, hash, attempt, resumed_from };
        self.outcome(&sent, put, committed).await
    }

    /// `DATA` frames of the file, then `PUT_END`; returns the file's BLAKE3 and size, or
    /// `None` when the server refused the put before all of it was sent (sending stops
    /// there). A `size` of `None` reads `file` to its end.
    async fn stream<R: tokio::io::AsyncRead + Unpin>(
        &mut self,
        file: &mut R,
        path: &Path,
        size: Option<u64>,
        tag: u32,
        put: &mut AnswerFuture,
        start: Start,
    ) -> Result<Option<(Hash, u64)>, V4Error> {
        let known = size;
        let size = size.unwrap_or(u64::MAX);
        let mut chunk = DATA_CHUNK.min(self.welcome.max_data.max(1) as usize);
        let mut pace = self.limit_rate.map(|rate| {
            chunk = crate::client::pace::piece(rate, chunk);
            crate::client::pace::Pace::new(rate, std::time::Instant::now())
        });
        let mut buf = vec![0u8; chunk];
        let Start { offset, mut hasher, .. } = start;
        let mut sent = offset;
        while sent < size {
            if put_answered(put) {
                return Ok(None);
            }
            let want = buf.len().min(usize::try_from(size - sent).unwrap_or(usize::MAX));
            let n = read_up_to(file, &mut buf[..want])
                .await
                .map_err(|cause| V4Error::Open { path: path.to_owned(), cause })?;
            if n == 0 && known.is_none() {
                break;
            }
            if n == 0 {
                // The file shrank: the put cannot end honestly, so the connection is done.
                self.broken = Some("a file shrank while it was being sent".into());
                return Err(V4Error::Changed { path: path.to_owned(), size, read: sent });
            }
            hasher.update(&buf[..n]);
            if let Some(pace) = pace.as_mut() {
                tokio::time::sleep(pace.delay(n, std::time::Instant::now())).await;
            }
            if offset > 0 && sent - offset < RESUME_TAKE_UP_BYTES {
                let limit = self.take_up_limit(offset);
                self.conn.write_frame_within(limit, FrameType::PutData, tag, &buf[..n]).await?;
            } else {
                self.conn.write_frame(FrameType::PutData, tag, &buf[..n]).await?;
            }
            sent += n as u64;
            (self.events)(Event::Progress(sent));
        }
        self.conn.write_frame(FrameType::PutEnd, tag, &[]).await?;
        Ok(Some((*hasher.finalize().as_bytes(), sent)))
    }

    /// The I/O timeout of a put resumed at `offset` until the server reads on: longer by
    /// copying `offset` bytes at [`RESUME_TAKE_UP_RATE`] (the plain one for a put from 0).
    fn take_up_limit(&self, offset: u64) -> Duration {
        self.conn.io_timeout() + Duration::from_secs(offset / RESUME_TAKE_UP_RATE)
    }

    async fn refusal_of(&mut self, put: AnswerFuture) -> Result<Attempt, V4Error> {
        match self.conn.answer(put).await? {
            Answer::Refused(error) => Ok(Attempt::Refused(error)),
            Answer::Frame(_) => Err(V4Error::Conn(ConnError::ServerProtocol(
                "PUT_RECEIVED before all the put's data was sent".into(),
            ))),
        }
    }

    /// Reads `PUT_RECEIVED` and `COMMITTED` (or their refusals) and decides.
    pub(super) async fn outcome(
        &mut self,
        sent: &Sent<'_>,
        put: AnswerFuture,
        committed: AnswerFuture,
    ) -> Result<Attempt, V4Error> {
        let Sent { path, stored_as, size, hash, attempt, resumed_from } = *sent;
        // A short rest of a resumed file may all be out before the server took up the
        // kept bytes.
        let limit = self.take_up_limit(resumed_from);
        let received = match self.conn.answer_within(limit, put).await? {
            Answer::Frame(p) => {
                PutReceived::decode(&p).map_err(|e| server_broke("PUT_RECEIVED", e))?
            }
            Answer::Refused(error) => {
                // The COMMIT sent behind it names no held upload: `not_found`, expected.
                let _ = self.conn.answer(committed).await?;
                return Ok(Attempt::Refused(error));
            }
        };
        let commit = self.conn.answer(committed).await?;
        let agrees = received.hash == hash && received.size == size;
        match commit {
            Answer::Frame(p) if agrees => {
                let done = Committed::decode(&p).map_err(|e| server_broke("COMMITTED", e))?;
                Ok(Attempt::Stored(Stored {
                    path: path.to_owned(),
                    stored_as: stored_as.to_owned(),
                    size,
                    hash,
                    sends: attempt,
                    generation: done.generation,
                    kept_version: done.kept_version,
                    resumed_from,
                }))
            }
            Answer::Frame(_) => Err(V4Error::Conn(ConnError::ServerProtocol(format!(
                "COMMITTED a file whose PUT_RECEIVED ({} bytes, BLAKE3 {}) is not ours ({size} \
                 bytes, BLAKE3 {})",
                received.size,
                hex(&received.hash),
                hex(&hash)
            )))),
            Answer::Refused(e) if e.code == ErrorCode::HashMismatch => {
                Ok(Attempt::Mismatch { theirs: received.hash })
            }
            Answer::Refused(error) => Ok(Attempt::Refused(error)),
        }
    }

    /// Waits for nothing more, sends close_notify and closes.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// Whether the put's answer came already (a refusal while its data is going out).
fn put_answered(put: &mut AnswerFuture) -> bool {
    // The answer stays in the channel for `refusal_of` to read: peek without taking it.
    !put.is_empty() || put.is_terminated()
}

pub(super) fn server_broke(what: &str, e: crate::protocol::v4::FrameError) -> V4Error {
    V4Error::Conn(ConnError::ServerProtocol(format!("{what}: {e}")))
}

async fn read_up_to<R: tokio::io::AsyncRead + Unpin>(
    file: &mut R,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

pub(super) fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(0)
}

/// A hash as hex, for people.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
