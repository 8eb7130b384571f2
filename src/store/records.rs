//! The server's records behind a trait: what a connection asks of them, by name, whatever
//! holds them.
//!
//! Today one implementation exists, [`SqliteRecords`]: a SQLite database with a thread
//! of its own. A database server (the scale-out configuration) is a second implementation
//! of the same trait. The methods return boxed futures rather than being `async fn`s so
//! that the server can hold any implementation as `Arc<dyn Records>` without a generic
//! parameter reaching every connection; one allocation per call is nothing beside a
//! database round trip.
//!
//! Errors are [`RecordsError`], which names what an operator must know (the database file
//! was replaced, the backend failed) and carries no backend's own types.

use super::db::{
    Attached, ClientKey, ClientRecord, CommitIntent, Db, DbError, FileRecord, FinishedCommit,
    NewClient, PathFacts, PathRange, PutFacts, Quota, Registered, Removal, Removed, StagedObject,
    StoredCopy, UnfinishedUpload, Usage, VersionRecord,
};
use crate::protocol::ClientId;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Why the records could not answer.
#[derive(Debug, Error)]
pub enum RecordsError {
    /// The database file was deleted or replaced while the server had it open: nothing
    /// more is written, and the server must be restarted.
    #[error("{0}")]
    Replaced(String),
    /// The backend failed (its message says how).
    #[error("{0}")]
    Backend(String),
    /// The records' own worker is gone (the server is stopping).
    #[error("the database thread stopped")]
    Stopped,
}

impl From<DbError> for RecordsError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Replaced { .. } => RecordsError::Replaced(e.to_string()),
            other => RecordsError::Backend(other.to_string()),
        }
    }
}

/// What every records call returns.
pub type RecordsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RecordsError>> + Send + 'a>>;

/// The records a protocol server needs. Every method is one step that either happens
/// whole or not at all.
pub trait Records: Send + Sync + 'static {
    /// Records a new client `id` called `name`, registered from `ip` (its usual address
    /// from then on); false when the name is taken.
    fn register(&self, id: ClientId, name: String, ip: IpAddr) -> RecordsFuture<'_, bool>;
    /// The client with this id.
    fn client(&self, id: ClientId) -> RecordsFuture<'_, Option<ClientRecord>>;
    /// The client with this name.
    fn client_named(&self, name: String) -> RecordsFuture<'_, Option<ClientRecord>>;
    /// The address the client registered from or last confirmed a file from.
    fn usual_address(&self, id: ClientId) -> RecordsFuture<'_, Option<IpAddr>>;
    /// Sets the client's public key field.
    fn set_public_key(&self, id: ClientId, field: Vec<u8>) -> RecordsFuture<'_, ()>;
    /// Records the AES key last sent to the client.
    fn set_aes_key(&self, id: ClientId, key: [u8; 16]) -> RecordsFuture<'_, ()>;
    /// Notes that the client made a request now; false when no such client exists.
    fn touch(&self, id: ClientId) -> RecordsFuture<'_, bool>;
    /// Forgets registrations that never sent a public key and were last seen longer than
    /// `age` ago; how many.
    fn forget_keyless(&self, age: Duration) -> RecordsFuture<'_, usize>;
    /// Whether a verified file of the client is recorded at `path_name`.
    fn has_verified_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, bool>;
    /// Records the intent to commit, before the upload is moved into place.
    fn begin_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()>;
    /// Records the committed file (verified), forgets the intent, records a version for
    /// the copy it replaced and forgets versions beyond `keep`, all at once; `ip` becomes
    /// the client's usual address. Returns the paths of the versions forgotten, for their
    /// files to be deleted.
    fn finish_commit(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<String>>;
    /// Forgets an intent whose move into place did not happen.
    fn abandon_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()>;
    /// Records that the client gave up on `file_name` (stored nothing).
    fn record_given_up(
        &self,
        id: ClientId,
        file_name: String,
        path_name: String,
    ) -> RecordsFuture<'_, ()>;
    /// Every file on record, verified or not.
    fn files(&self) -> RecordsFuture<'_, Vec<FileRecord>>;
    /// The commits begun and neither finished nor abandoned: at start-up, the ones a crash
    /// interrupted ([`crate::server::reconcile_commits`] decides them).
    fn commit_intents(&self) -> RecordsFuture<'_, Vec<CommitIntent>>;
    /// Every kept version.
    fn versions(&self) -> RecordsFuture<'_, Vec<VersionRecord>>;
    /// The server key (PKCS#8) every server over these records presents: `candidate` is
    /// stored if none is yet, and the stored one returned. `None` when these records keep
    /// no key: the server keeps it in a file beside its database (one machine, one key).
    /// Records that several instances share keep it, so that all present one key.
    fn server_key(&self, candidate: Vec<u8>) -> RecordsFuture<'_, Option<Vec<u8>>> {
        drop(candidate);
        Box::pin(async { Ok(None) })
    }

    /// Whether several servers may share these records at once (a database server), so
    /// that what one finds unfinished may still be under way in another.
    fn is_shared(&self) -> bool {
        false
    }

    // An object store's uploads (`serve --storage s3://…`). The copy a commit replaces
    // is found by stored name, since every upload there is an object of its own; staged
    // objects are tracked so that whoever finds one expired cleans it up.

    // Like protocol 4's below, these refuse by default: a backend without them serves a
    // local storage directory only.

    /// Where the verified copy stored as `stored_name` of `id` is, if there is one.
    fn stored_copy(&self, id: ClientId, stored_name: String) -> RecordsFuture<'_, Option<String>> {
        let _ = (id, stored_name);
        unsupported_for_objects("stored_copy")
    }
    /// Records an object being staged, to be cleaned up after `expires_at` (seconds since
    /// 1970) unless a commit records it first (which forgets it in its transaction).
    fn track_staged(&self, staged: StagedObject, expires_at: i64) -> RecordsFuture<'_, ()> {
        let _ = (staged, expires_at);
        unsupported_for_objects("track_staged")
    }
    /// Forgets a staged object that was aborted or cleaned up.
    fn forget_staged(&self, key: String) -> RecordsFuture<'_, ()> {
        let _ = key;
        unsupported_for_objects("forget_staged")
    }
    /// Leases the staged objects expired at `now` (seconds since 1970) to the caller until
    /// `lease_until` and returns them for it to abort, then `forget_staged`: each goes to
    /// one caller at a time, and never one that a commit intent, a file or a version names.
    /// A lease rather than a removal, so that an instance killed between claiming and
    /// deleting leaves the row for the next claim once the lease runs out, not an orphan.
    fn claim_expired_staged(
        &self,
        now: i64,
        lease_until: i64,
    ) -> RecordsFuture<'_, Vec<StagedObject>> {
        let _ = (now, lease_until);
        unsupported_for_objects("claim_expired_staged")
    }

    // Protocol 4. These have default bodies that refuse, so that a backend written before
    // protocol 4 still builds; it serves protocol 3 and answers protocol 4 `internal`.

    /// The client whose protocol-4 key has this raw SHA-256 SPKI fingerprint.
    fn client_by_key(&self, fingerprint: [u8; 32]) -> RecordsFuture<'_, Option<ClientRecord>> {
        let _ = fingerprint;
        unsupported("client_by_key")
    }
    /// Registers a protocol-4 client with its key, consuming its invitation token (if
    /// any) in the same step.
    fn register_with_key(&self, new: NewClient) -> RecordsFuture<'_, Registered> {
        let _ = new;
        unsupported("register_with_key")
    }
    /// Attaches a protocol-4 key to a record that has none (an upgrade) and refuses
    /// protocol 3 for it from then on.
    fn attach_key(&self, id: ClientId, key: ClientKey) -> RecordsFuture<'_, Attached> {
        let _ = (id, key);
        unsupported("attach_key")
    }
    /// [`Records::finish_commit`], also returning the new generation, when the copy was
    /// stored and whether the replaced copy was kept (protocol 4's `COMMITTED`).
    fn finish_commit_detailed(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, FinishedCommit> {
        let _ = (intent, ip, keep);
        unsupported("finish_commit_detailed")
    }
    /// The intents of a group of commits (protocol 4's group commit), all recorded or
    /// none. By default one at a time: correct, but one database sync a file.
    fn begin_commits(&self, intents: Vec<CommitIntent>) -> RecordsFuture<'_, ()> {
        Box::pin(async move {
            for intent in intents {
                self.begin_commit(intent).await?;
            }
            Ok(())
        })
    }
    /// [`Records::finish_commit_detailed`] for every file of a group, in order. By default
    /// one at a time (a failure leaves the later intents for start-up to decide).
    fn finish_commits_detailed(
        &self,
        intents: Vec<CommitIntent>,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<FinishedCommit>> {
        Box::pin(async move {
            let mut finished = Vec::with_capacity(intents.len());
            for intent in intents {
                finished.push(self.finish_commit_detailed(intent, ip, keep).await?);
            }
            Ok(finished)
        })
    }
    /// What the client's files take (see [`Db::usage`]).
    fn usage(&self, id: ClientId) -> RecordsFuture<'_, Usage> {
        let _ = id;
        unsupported("usage")
    }
    /// The client's quota, set by the operator (`securexfer db quota`).
    fn quota(&self, id: ClientId) -> RecordsFuture<'_, Quota> {
        let _ = id;
        unsupported("quota")
    }
    /// One page of the client's stored copies in byte order of their path names (protocol
    /// 4's `LIST` reads a listing of any length a page at a time, at constant memory).
    fn list_page(&self, id: ClientId, range: PathRange) -> RecordsFuture<'_, Vec<StoredCopy>> {
        let _ = (id, range);
        unsupported("list_page")
    }
    /// The copy stored at `path_name` (`GET`, `RM`).
    fn copy_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, Option<StoredCopy>> {
        let _ = (id, path_name);
        unsupported("copy_at")
    }
    /// The [`PathFacts`] of each of `paths` (of the client whose path names start with
    /// `space`), in one call: a group commit checks all its files at once.
    fn path_facts(
        &self,
        id: ClientId,
        space: String,
        paths: Vec<String>,
    ) -> RecordsFuture<'_, Vec<PathFacts>> {
        let _ = (id, space, paths);
        unsupported("path_facts")
    }
    /// What a `PUT_BEGIN` of `path` checks (see [`Db::put_facts`]), in one call: a run of
    /// small files pays one trip to the records per file, not one per fact.
    fn put_facts(
        &self,
        id: ClientId,
        space: String,
        path: String,
        unfinished: bool,
    ) -> RecordsFuture<'_, PutFacts> {
        let _ = (id, space, path, unfinished);
        unsupported("put_facts")
    }
    /// Records the BLAKE3 of a protocol-3 copy (of this generation) on its first whole
    /// read; false when the copy changed or has one already.
    fn record_blake3(
        &self,
        id: ClientId,
        path_name: String,
        generation: u64,
        hash: [u8; 32],
    ) -> RecordsFuture<'_, bool> {
        let _ = (id, path_name, generation, hash);
        unsupported("record_blake3")
    }
    /// Forgets a removed copy, keeping it as a version when its blob was kept as one.
    fn remove_copy(&self, removal: Removal) -> RecordsFuture<'_, Removed> {
        let _ = removal;
        unsupported("remove_copy")
    }
    /// Records (or replaces) the unfinished upload of its client and path, once its file
    /// is synced to `durable` bytes (protocol 4's resume).
    fn keep_unfinished(&self, upload: UnfinishedUpload) -> RecordsFuture<'_, ()> {
        let _ = upload;
        unsupported("keep_unfinished")
    }
    /// The unfinished upload of this client's path, if one is kept.
    fn unfinished(
        &self,
        id: ClientId,
        path: String,
    ) -> RecordsFuture<'_, Option<UnfinishedUpload>> {
        let _ = (id, path);
        unsupported("unfinished")
    }
    /// Every unfinished upload (start-up checks each against its file).
    fn all_unfinished(&self) -> RecordsFuture<'_, Vec<UnfinishedUpload>> {
        unsupported("all_unfinished")
    }
    /// Forgets the unfinished upload of this path whose file is at `location`.
    fn forget_unfinished(
        &self,
        id: ClientId,
        path: String,
        location: String,
    ) -> RecordsFuture<'_, bool> {
        let _ = (id, path, location);
        unsupported("forget_unfinished")
    }
    /// Takes the unfinished uploads expired by `now` off the records, for their files to
    /// be deleted.
    fn claim_expired_unfinished(&self, now: i64) -> RecordsFuture<'_, Vec<UnfinishedUpload>> {
        let _ = now;
        unsupported("claim_expired_unfinished")
    }

    // Protocol 3's sessions, shared between instances (see [`SharedSession`]). A backend
    // that one server holds alone (SQLite) does not share them: the server's own registry
    // serves its clients, and none of these is called.

    /// Whether the records hold protocol 3's sessions for every instance.
    fn shares_sessions(&self) -> bool {
        false
    }
    /// Makes `session` the latest of its client and address, for every instance.
    fn publish_session(&self, session: SharedSession) -> RecordsFuture<'_, ()> {
        let _ = session;
        unsupported_shared("publish_session")
    }
    /// The latest session of `id` from `ip`, if it has not ended and was used after
    /// `used_after` (milliseconds since 1970); finding it counts as a use.
    fn find_session(
        &self,
        id: ClientId,
        ip: IpAddr,
        used_after: i64,
    ) -> RecordsFuture<'_, Option<SharedSession>> {
        let _ = (id, ip, used_after);
        unsupported_shared("find_session")
    }
    /// Ends the session `token` for every instance, with the uploads waiting on it;
    /// how many uploads there were.
    fn end_session(&self, token: [u8; 16]) -> RecordsFuture<'_, usize> {
        let _ = token;
        unsupported_shared("end_session")
    }
    /// Whether the session `token` was ended by [`Records::end_session`] (on any
    /// instance, within the last day).
    fn session_ended(&self, token: [u8; 16]) -> RecordsFuture<'_, bool> {
        let _ = token;
        unsupported_shared("session_ended")
    }
    /// Notes that `id` registered from `ip` (its 1026 may come to another instance).
    fn note_registration(&self, id: ClientId, ip: IpAddr) -> RecordsFuture<'_, ()> {
        let _ = (id, ip);
        unsupported_shared("note_registration")
    }
    /// Whether `id` registered from `ip` after `after` (milliseconds since 1970).
    fn registered_since(&self, id: ClientId, ip: IpAddr, after: i64) -> RecordsFuture<'_, bool> {
        let _ = (id, ip, after);
        unsupported_shared("registered_since")
    }
    /// Keeps an upload that arrived on a borrowed session for its verdict, which may
    /// come to any instance; replaces one of the same name. False (nothing kept) when
    /// the session has ended or its client already has `max` uploads waiting.
    fn put_pending(&self, pending: SharedPending, max: usize) -> RecordsFuture<'_, bool> {
        let _ = (pending, max);
        unsupported_shared("put_pending")
    }
    /// Takes the upload `file_name` waiting on session `token`, if it arrived in time and
    /// its staged object is not about to be cleaned (see [`PendingTimes`]); the staged
    /// object is then held for the commit to record it. The same statement that a
    /// cleaner's claim would take, so an object is either taken or cleaned, never both.
    fn take_pending(
        &self,
        token: [u8; 16],
        file_name: String,
        times: PendingTimes,
    ) -> RecordsFuture<'_, Option<SharedPending>> {
        let _ = (token, file_name, times);
        unsupported_shared("take_pending")
    }
    /// Counts a padding failure against each of `keys` (see
    /// [`crate::server::backoff::key_names`]) at `now` (ms since 1970), by the rules of
    /// [`crate::server::backoff`]: one failure forgotten per quiet period after a block,
    /// the block doubling per failure up to its cap. Returns the latest end of a block
    /// (ms since 1970).
    fn note_padding_failure(&self, keys: Vec<String>, now: i64) -> RecordsFuture<'_, i64> {
        let _ = (keys, now);
        unsupported_shared("note_padding_failure")
    }
    /// The latest end of a block on any of `keys` (ms since 1970), if one is later than
    /// `now`.
    fn blocked_until(&self, keys: Vec<String>, now: i64) -> RecordsFuture<'_, Option<i64>> {
        let _ = (keys, now);
        unsupported_shared("blocked_until")
    }
    /// Takes a registration from the token bucket of network `net` (see
    /// [`crate::server::ratelimit`]): `per_minute` tokens a minute, at most `burst`, at
    /// `now` (ms since 1970). `None` when taken, else how long until one is there.
    fn take_registration(
        &self,
        net: String,
        now: i64,
        per_minute: u32,
        burst: u32,
    ) -> RecordsFuture<'_, Option<Duration>> {
        let _ = (net, now, per_minute, burst);
        unsupported_shared("take_registration")
    }
    /// Forgets sessions not used after `used_after`, registrations made before it, and
    /// uploads waiting since before `arrived_after` (all ms since 1970; their staged
    /// objects expire on their own). How many of each.
    fn expire_sessions(
        &self,
        used_after: i64,
        arrived_after: i64,
    ) -> RecordsFuture<'_, (usize, usize)> {
        let _ = (used_after, arrived_after);
        unsupported_shared("expire_sessions")
    }
}

/// A protocol-3 session as every instance sees it (`serve` over PostgreSQL): the result of
/// one key exchange, found by client id and address, so that a client that opens a
/// connection per request may land on any instance. The AES key is the one the
/// `clients` table already holds for the client (the legacy schema keeps it in clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedSession {
    /// Names this session (and no other) for its uploads and its end.
    pub token: [u8; 16],
    /// The client.
    pub id: ClientId,
    /// Where the key exchange came from.
    pub ip: IpAddr,
    /// The session's AES key.
    pub aes_key: [u8; 16],
    /// The client's usual address when the exchange was made.
    pub usual_ip: Option<IpAddr>,
}

/// An upload that arrived on a borrowed session and waits for its verdict in the shared
/// records: its bytes are a finished staged object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPending {
    /// The session it arrived on.
    pub token: [u8; 16],
    /// Its client.
    pub id: ClientId,
    /// The name it was sent as.
    pub file_name: String,
    /// The name it will be stored under.
    pub stored_name: String,
    /// Its staged object's key.
    pub location: String,
    /// Plaintext size.
    pub size: u64,
    /// cksum of the plaintext.
    pub cksum: u32,
    /// When it arrived (ms since 1970).
    pub arrived: i64,
}

/// The times [`Records::take_pending`] checks and sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTimes {
    /// Only an upload that arrived after this (ms since 1970) is taken.
    pub arrived_after: i64,
    /// Only one whose staged object expires after this (s since 1970) is taken.
    pub safe_until: i64,
    /// Its staged object is then held until this (s since 1970).
    pub held_until: i64,
}

/// The answer of a shared-session method a backend does not implement.
fn unsupported_shared<T: Send + 'static>(method: &'static str) -> RecordsFuture<'static, T> {
    Box::pin(async move {
        Err(RecordsError::Backend(format!(
            "this records backend has no {method} (sessions shared between instances)"
        )))
    })
}

/// The answer of an object-store method a backend does not implement.
fn unsupported_for_objects<T: Send + 'static>(method: &'static str) -> RecordsFuture<'static, T> {
    Box::pin(async move {
        Err(RecordsError::Backend(format!(
            "this records backend has no {method} (an object store for the files)"
        )))
    })
}

/// The answer of a records method a backend does not implement.
fn unsupported<T: Send + 'static>(method: &'static str) -> RecordsFuture<'static, T> {
    Box::pin(async move {
        Err(RecordsError::Backend(format!("this records backend has no {method} (protocol 4)")))
    })
}

type Job = Box<dyn FnOnce(&Db) + Send>;

/// The records in a SQLite database, run on a thread of their own: SQLite serialises
/// writes on one connection anyway, and the calls never wait behind file work in the
/// blocking pool, however many uploads are under way.
pub struct SqliteRecords {
    tx: Mutex<std::sync::mpsc::Sender<Job>>,
    /// Told how long each call took, from asking to the answer (the metrics' database
    /// latency: waiting behind other calls included).
    timing: Option<Box<dyn Fn(Duration) + Send + Sync>>,
}

impl SqliteRecords {
    /// Takes `db` onto the records thread, which runs until this is dropped.
    pub fn new(db: Db) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("securexfer-db".into())
            .spawn(move || rx.into_iter().for_each(|job| job(&db)))
            .expect("start the database thread");
        SqliteRecords { tx: Mutex::new(tx), timing: None }
    }

    /// Tells `timing` how long each call takes.
    pub fn timed(mut self, timing: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.timing = Some(Box::new(timing));
        self
    }

    /// Runs `f` on the records thread.
    fn run<T, F>(&self, f: F) -> RecordsFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, DbError> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.send(Box::new(move |db: &Db| {
                let _ = done.send(f(db));
            }))
        };
        let started = std::time::Instant::now();
        Box::pin(async move {
            sent.map_err(|_| RecordsError::Stopped)?;
            let answer = result.await;
            if let Some(timing) = &self.timing {
                timing(started.elapsed());
            }
            Ok(answer.map_err(|_| RecordsError::Stopped)??)
        })
    }
}

impl Records for SqliteRecords {
    fn register(&self, id: ClientId, name: String, ip: IpAddr) -> RecordsFuture<'_, bool> {
        self.run(move |db| {
            let inserted = db.insert_client(id, &name)?;
            if inserted {
                db.set_usual_address(id, ip)?;
            }
            Ok(inserted)
        })
    }

    fn client(&self, id: ClientId) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.run(move |db| db.client_by_id(id))
    }

    fn client_named(&self, name: String) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.run(move |db| db.client_by_name(&name))
    }

    fn usual_address(&self, id: ClientId) -> RecordsFuture<'_, Option<IpAddr>> {
        self.run(move |db| db.usual_address(id))
    }

    fn set_public_key(&self, id: ClientId, field: Vec<u8>) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.set_public_key(id, &field))
    }

    fn set_aes_key(&self, id: ClientId, key: [u8; 16]) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.set_aes_key(id, &key))
    }

    fn touch(&self, id: ClientId) -> RecordsFuture<'_, bool> {
        self.run(move |db| db.touch(id))
    }

    fn forget_keyless(&self, age: Duration) -> RecordsFuture<'_, usize> {
        self.run(move |db| db.forget_keyless(age))
    }

    fn has_verified_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, bool> {
        self.run(move |db| db.has_verified_at(id, &path_name))
    }

    fn begin_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.begin_commit(&intent))
    }

    fn finish_commit(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<String>> {
        self.run(move |db| db.finish_commit(&intent, ip, keep))
    }

    fn abandon_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.abandon_commit(&intent))
    }

    fn record_given_up(
        &self,
        id: ClientId,
        file_name: String,
        path_name: String,
    ) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.record_given_up(id, &file_name, &path_name))
    }

    fn files(&self) -> RecordsFuture<'_, Vec<FileRecord>> {
        self.run(|db| db.files())
    }

    fn commit_intents(&self) -> RecordsFuture<'_, Vec<CommitIntent>> {
        self.run(|db| db.commit_intents())
    }

    fn versions(&self) -> RecordsFuture<'_, Vec<VersionRecord>> {
        self.run(|db| db.versions())
    }

    fn stored_copy(&self, id: ClientId, stored_name: String) -> RecordsFuture<'_, Option<String>> {
        self.run(move |db| db.stored_copy(id, &stored_name))
    }

    fn track_staged(&self, staged: StagedObject, expires_at: i64) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.track_staged(&staged, expires_at))
    }

    fn forget_staged(&self, key: String) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.forget_staged(&key))
    }

    fn claim_expired_staged(
        &self,
        now: i64,
        lease_until: i64,
    ) -> RecordsFuture<'_, Vec<StagedObject>> {
        self.run(move |db| db.claim_expired_staged(now, lease_until))
    }

    fn client_by_key(&self, fingerprint: [u8; 32]) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.run(move |db| db.client_by_key(&fingerprint))
    }

    fn register_with_key(&self, new: NewClient) -> RecordsFuture<'_, Registered> {
        self.run(move |db| db.register_with_key(&new))
    }

    fn attach_key(&self, id: ClientId, key: ClientKey) -> RecordsFuture<'_, Attached> {
        self.run(move |db| db.attach_key(id, &key))
    }

    fn finish_commit_detailed(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, FinishedCommit> {
        self.run(move |db| db.finish_commit_detailed(&intent, ip, keep))
    }

    fn begin_commits(&self, intents: Vec<CommitIntent>) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.begin_commits(&intents))
    }

    fn finish_commits_detailed(
        &self,
        intents: Vec<CommitIntent>,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<FinishedCommit>> {
        self.run(move |db| db.finish_commits_detailed(&intents, ip, keep))
    }

    fn usage(&self, id: ClientId) -> RecordsFuture<'_, Usage> {
        self.run(move |db| db.usage(id))
    }

    fn quota(&self, id: ClientId) -> RecordsFuture<'_, Quota> {
        self.run(move |db| db.quota(id))
    }

    fn list_page(&self, id: ClientId, range: PathRange) -> RecordsFuture<'_, Vec<StoredCopy>> {
        self.run(move |db| db.list_page(id, &range))
    }

    fn copy_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, Option<StoredCopy>> {
        self.run(move |db| db.copy_at(id, &path_name))
    }

    fn path_facts(
        &self,
        id: ClientId,
        space: String,
        paths: Vec<String>,
    ) -> RecordsFuture<'_, Vec<PathFacts>> {
        self.run(move |db| db.paths_facts(id, &space, &paths))
    }

    fn put_facts(
        &self,
        id: ClientId,
        space: String,
        path: String,
        unfinished: bool,
    ) -> RecordsFuture<'_, PutFacts> {
        self.run(move |db| db.put_facts(id, &space, &path, unfinished))
    }

    fn record_blake3(
        &self,
        id: ClientId,
        path_name: String,
        generation: u64,
        hash: [u8; 32],
    ) -> RecordsFuture<'_, bool> {
        self.run(move |db| db.record_blake3(id, &path_name, generation, &hash))
    }

    fn remove_copy(&self, removal: Removal) -> RecordsFuture<'_, Removed> {
        self.run(move |db| db.remove_copy(&removal))
    }

    fn keep_unfinished(&self, upload: UnfinishedUpload) -> RecordsFuture<'_, ()> {
        self.run(move |db| db.keep_unfinished(&upload))
    }

    fn unfinished(
        &self,
        id: ClientId,
        path: String,
    ) -> RecordsFuture<'_, Option<UnfinishedUpload>> {
        self.run(move |db| db.unfinished(id, &path))
    }

    fn all_unfinished(&self) -> RecordsFuture<'_, Vec<UnfinishedUpload>> {
        self.run(|db| db.all_unfinished())
    }

    fn forget_unfinished(
        &self,
        id: ClientId,
        path: String,
        location: String,
    ) -> RecordsFuture<'_, bool> {
        self.run(move |db| db.forget_unfinished(id, &path, &location))
    }

    fn claim_expired_unfinished(&self, now: i64) -> RecordsFuture<'_, Vec<UnfinishedUpload>> {
        self.run(move |db| db.claim_expired_unfinished(now))
    }
}

/// Records shared by every connection.
pub type SharedRecords = Arc<dyn Records>;

#[cfg(test)]
mod tests {
    //! The SQLite records' own checks. The contract every backend keeps (protocol 4's
    //! keys, commits, listings, removals, facts and unfinished uploads included) is tested
    //! on SQLite and PostgreSQL alike in `tests/suite/records.rs`.
    use super::*;

    fn records() -> SqliteRecords {
        SqliteRecords::new(Db::open_in_memory().expect("an in-memory database"))
    }

    #[tokio::test]
    async fn a_registration_is_found_by_id_and_name_and_a_taken_name_is_refused() {
        let records = records();
        let (id, ip) = (ClientId([3; 16]), "127.0.0.9".parse().unwrap());
        assert!(records.register(id, "carol".into(), ip).await.unwrap());
        assert!(!records.register(ClientId([4; 16]), "carol".into(), ip).await.unwrap());
        assert_eq!(records.client(id).await.unwrap().unwrap().name, "carol");
        assert_eq!(records.client_named("carol".into()).await.unwrap().unwrap().id, id);
        assert_eq!(records.usual_address(id).await.unwrap(), Some(ip));
        assert!(records.touch(id).await.unwrap());
        assert!(!records.touch(ClientId([5; 16])).await.unwrap());
    }

    #[tokio::test]
    async fn a_commit_is_begun_finished_and_then_recorded_verified() {
        let records = records();
        let id = ClientId([6; 16]);
        records.register(id, "dave".into(), "127.0.0.1".parse().unwrap()).await.unwrap();
        let path_name = format!("{}/a.bin", id.to_hex());
        let intent = CommitIntent {
            client_id: id,
            stored_name: "a.bin".into(),
            file_name: "a.bin".into(),
            path_name: path_name.clone(),
            source: format!("{}/tmp", id.to_hex()),
            size: 5,
            cksum: 7,
            archive: None,
            restores: None,
            v4: None,
        };
        assert!(!records.has_verified_at(id, path_name.clone()).await.unwrap());
        records.begin_commit(intent.clone()).await.unwrap();
        let pruned = records.finish_commit(intent, None, 1).await.unwrap();
        assert!(pruned.is_empty());
        assert!(records.has_verified_at(id, path_name.clone()).await.unwrap());
        let files = records.files().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!((files[0].path_name.as_str(), files[0].verified), (path_name.as_str(), true));
    }

    fn key(n: u8) -> ClientKey {
        ClientKey { spki: vec![n; 44], fingerprint: [n; 32] }
    }

    fn new_client(id: u8, name: &str, token_hash: Option<[u8; 32]>) -> NewClient {
        let ip = "127.0.0.1".parse().unwrap();
        NewClient { id: ClientId([id; 16]), name: name.into(), key: key(id), ip, token_hash }
    }

    #[tokio::test]
    async fn an_invitation_is_consumed_once_and_only_for_its_name() {
        let db = Db::open_in_memory().unwrap();
        let hour = Duration::from_secs(3600);
        db.create_invite(&[7; 32], None, hour).unwrap();
        db.create_invite(&[8; 32], Some("named"), hour).unwrap();
        db.create_invite(&[9; 32], None, Duration::ZERO).unwrap();
        let records = SqliteRecords::new(db);
        let reg = |id, name: &str, t| records.register_with_key(new_client(id, name, Some(t)));
        assert_eq!(reg(1, "a", [6; 32]).await.unwrap(), Registered::TokenRefused, "unknown");
        assert_eq!(reg(1, "a", [9; 32]).await.unwrap(), Registered::TokenRefused, "expired");
        assert_eq!(reg(1, "a", [8; 32]).await.unwrap(), Registered::TokenRefused, "other name");
        assert_eq!(reg(1, "a", [7; 32]).await.unwrap(), Registered::Done);
        assert_eq!(reg(2, "b", [7; 32]).await.unwrap(), Registered::TokenRefused, "used");
        assert_eq!(reg(3, "named", [8; 32]).await.unwrap(), Registered::Done);
        // A refused registration consumed nothing and made nobody.
        assert!(records.client_by_key([2; 32]).await.unwrap().is_none());
    }

    #[test]
    fn a_replaced_database_file_says_so_without_sqlite_types() {
        let e = RecordsError::from(DbError::Replaced { path: "x.db".into() });
        assert!(matches!(e, RecordsError::Replaced(_)));
        assert!(e.to_string().contains("restart the server"), "{e}");
    }
}
