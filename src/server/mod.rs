//! The server: an accept loop with a connection limit and graceful shutdown, handing each
//! connection to its state machine (`conn`).

pub mod backoff;
mod conn;
pub mod identity;
mod metrics;
pub mod ratelimit;
mod read_ahead;
pub(crate) mod refusal;
pub mod session;
mod shared_sessions;
pub mod slots;
pub mod tls;
pub mod upload;
pub mod v4;

use crate::store::BlobStore;
use crate::store::postgres::{self, PostgresRecords};
use crate::store::s3::{S3Store, S3Url, is_s3_url};
use crate::store::{
    Blobs, Db, DbError, Records, RecordsError, SharedRecords, SqliteRecords, Storage,
};
use backoff::Backoff;
use ratelimit::RateLimit;
use session::Sessions;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// The path `serve --metrics ADDR` serves the metrics on.
pub use metrics::endpoint::PATH as METRICS_PATH;

/// Default most simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
/// Default time a peer may stay silent, between requests or in the middle of one.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default window in which a client that opens one connection per request may go on.
pub const DEFAULT_SESSION_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Default time transfers in flight get to finish after a shutdown signal.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default time a peer gets for a whole request header and fixed-size payload, from its
/// first byte: a normal client needs milliseconds; a trickler must not hold a slot.
pub const DEFAULT_REQUEST_DEADLINE: Duration = Duration::from_secs(30);
/// How long a connection that never made a key exchange (1026 or 1027) is served. Clients
/// that open a connection per request need one round trip on it; a silent or wandering
/// peer gives its slot back.
pub const KEYLESS_LIFETIME: Duration = Duration::from_secs(60);
/// Default most uploads whose content is being read at once.
pub const DEFAULT_MAX_UPLOADS: usize = 256;
/// Default number of earlier versions kept of each stored file.
pub const DEFAULT_KEEP_VERSIONS: usize = 1;
/// Default largest file, 4 GiB (`--max-file-size 4G`).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;
/// Default time an unfinished protocol-4 upload is kept for resuming: none for now
/// (`--resume-window 0`). The design's default is 24 h; it becomes that once `send`
/// resumes (so far only the server side exists) and a kept upload no longer gives up the
/// O_DIRECT path of large uploads (an upload that may be kept is written buffered so that
/// it can be synced midway).
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::ZERO;
/// Default free space kept on the storage file system.
pub const DEFAULT_DISK_RESERVE: u64 = 64 * 1024 * 1024;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The storage directory, or `s3://bucket/prefix` for an object store.
    pub storage: PathBuf,
    /// The SQLite database file.
    pub db: PathBuf,
    /// The largest encrypted content accepted (refused before reading).
    pub max_content: u32,
    /// Most simultaneous connections; when full, the oldest idle connection without a key
    /// exchange is closed to make room, else newcomers wait.
    pub max_connections: usize,
    /// How long a peer may stay silent.
    pub idle_timeout: Duration,
    /// The window for one-connection-per-request clients.
    pub session_window: Duration,
    /// Serve requests 1028-1031 only on the connection that made the key exchange.
    pub strict_sessions: bool,
    /// How long transfers in flight may run on after a shutdown signal.
    pub grace: Duration,
    /// Free space never used for uploads.
    pub disk_reserve: u64,
    /// For clients whose requests carry [`COMPAT_CRC32_VERSION`]: answer 1028 with the
    /// zlib CRC-32 of the ciphertext and 1030 with 2104, as the `dor` client expects
    /// (`docs/compatibility.md`). Records keep the real cksum.
    pub compat_crc32_ciphertext: bool,
    /// Registrations (1025) one address may make per minute, with bursts of twice as many;
    /// 0 turns the limit off.
    pub registrations_per_minute: u32,
    /// Earlier versions kept of a stored file when a newer confirmed upload replaces it;
    /// 0 keeps none.
    pub keep_versions: usize,
    /// Time for a whole request header and fixed-size payload, from its first byte.
    pub request_deadline: Duration,
    /// Most connections one address may hold (0: no cap); more are closed at once.
    pub max_connections_per_address: usize,
    /// Most uploads whose content is being read at once; a 1028 beyond gets 2107.
    pub max_uploads: usize,
    /// Who may register (protocol 4's `REGISTER`; under `token` and `closed`, protocol 3's
    /// 1025 gets 2107, or anyone could register over protocol 3 and then upgrade).
    pub registration: crate::protocol::v4::Registration,
    /// The largest file protocol 4 accepts (`--max-file-size`, not cut to protocol 3's
    /// 4 GiB as `max_content` is).
    pub max_file_size: u64,
    /// How long a protocol-4 upload its connection left unfinished is kept for resuming
    /// (`--resume-window`); zero keeps none.
    pub resume_window: Duration,
}

/// The version byte of the one existing client that checks a CRC-32 of the ciphertext
/// and waits for an answer to 1030; conformant clients send 3.
pub const COMPAT_CRC32_VERSION: u8 = 1;

impl Config {
    /// Defaults for everything but the paths.
    pub fn new(storage: PathBuf, db: PathBuf) -> Self {
        Config {
            storage,
            db,
            max_content: crate::protocol::MAX_CONTENT_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            session_window: DEFAULT_SESSION_WINDOW,
            strict_sessions: false,
            grace: DEFAULT_GRACE,
            disk_reserve: DEFAULT_DISK_RESERVE,
            compat_crc32_ciphertext: false,
            registrations_per_minute: ratelimit::DEFAULT_REGISTRATIONS_PER_MINUTE,
            keep_versions: DEFAULT_KEEP_VERSIONS,
            request_deadline: DEFAULT_REQUEST_DEADLINE,
            max_connections_per_address: slots::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_uploads: DEFAULT_MAX_UPLOADS,
            registration: crate::protocol::v4::Registration::Open,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            resume_window: DEFAULT_RESUME_WINDOW,
        }
    }
}

/// Why the server could not start or had to stop.
#[derive(Debug, Error)]
pub enum ServerError {
    /// A socket or file operation failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The database failed.
    #[error("{0}")]
    Db(#[from] DbError),
    /// The records could not answer.
    #[error("{0}")]
    Records(#[from] RecordsError),
    /// The object store is unusable (its message says what failed and what to check).
    #[error("{0}")]
    ObjectStore(#[from] crate::store::s3::S3OpenError),
    /// The storage directory is unusable.
    #[error("storage directory {path}: {source}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The peer was silent too long.
    #[error("the peer sent nothing for {0:?}")]
    Idle(Duration),
    /// The peer took longer than the request deadline for one request.
    #[error("the peer took more than {0:?} for one request header and payload")]
    Deadline(Duration),
    /// The peer closed in the middle of a header.
    #[error("the peer closed the connection in the middle of a request header")]
    Truncated,
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
    /// The server key (protocol 4) cannot be used.
    #[error("{0}")]
    Identity(#[from] identity::IdentityError),
    /// The TLS configuration could not be made from the server key.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// State every connection shares.
pub(crate) struct Shared {
    config: Config,
    /// Clients, files and commits on record.
    records: SharedRecords,
    /// Uploads whose content is being read, against `--max-uploads`.
    pub(crate) uploads: Arc<Semaphore>,
    storage: Blobs,
    sessions: Sessions,
    /// Slots for uploads on the fast large-upload path; see [`LARGE_UPLOAD_SLOTS`].
    large_uploads: Arc<tokio::sync::Semaphore>,
    /// Padding failures and the key exchanges they hold back.
    backoff: Mutex<Backoff>,
    /// Registrations per address.
    registrations: Mutex<RateLimit>,
    /// Uploads arriving or waiting for a verdict, per client.
    quotas: session::Quotas,
    /// One lock per (client, stored name) being committed; see [`Shared::commit_turn`].
    commits: Mutex<HashMap<CommitKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Every connection's slot (per-address cap, eviction).
    slots: Arc<slots::Slots>,
    /// The next connection's number (for logs and for telling connections apart).
    next_conn: AtomicU64,
    /// What `--metrics` exposes (kept whether or not it is exposed).
    metrics: Arc<metrics::Metrics>,
    /// Protocol 4's TLS configuration (the server key's certificate, ALPN).
    tls: Arc<rustls::ServerConfig>,
    /// The raw SHA-256 of the server key's SPKI (protocol 4's upgrade statement names it).
    server_fingerprint: [u8; 32],
    /// Protocol 4's open puts per client: 64, and twice `--max-file-size` of declared
    /// bytes (docs/protocol-v4.md, "Limits and timeouts").
    v4_puts: session::Quotas,
    /// When the janitor last looked for expired staged uploads (an object store's).
    staged_checked: Mutex<Option<std::time::Instant>>,
    /// Unfinished protocol-4 uploads a connection is continuing (or may keep), by client
    /// and path (see `v4::resume`).
    resuming: Mutex<std::collections::HashSet<CommitKey>>,
}

/// How often the janitor asks the records for expired staged uploads: one query for
/// every server sharing them, so not at every round.
const STAGED_CHECK_PERIOD: Duration = Duration::from_secs(10);

pub(crate) type CommitKey = (crate::protocol::ClientId, String);

/// The right to commit one stored name of one client and record it, held across both.
/// Two sessions of a client confirming the same name at once could otherwise rename one
/// upload into place and record the other's size and cksum.
pub(crate) struct CommitTurn<'a> {
    shared: &'a Shared,
    key: CommitKey,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for CommitTurn<'_> {
    fn drop(&mut self) {
        let mut commits = self.shared.commits.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this turn hold the lock: nobody waits, so it goes.
        if commits.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) == 2) {
            commits.remove(&self.key);
        }
    }
}

/// How many uploads may use the large-upload path at once (1 MiB chunks, 5 buffers and a
/// writer thread each, `O_DIRECT`): about 320 MiB and 64 threads at most. Beyond that, a
/// large upload takes the small-upload path (256 KiB chunks, 3 buffers, buffered writes),
/// slower per byte but just as correct, so memory stays bounded however many
/// connections upload large files at once.
pub(crate) const LARGE_UPLOAD_SLOTS: usize = 64;

impl Shared {
    pub(crate) fn new(
        config: Config,
        records: SharedRecords,
        storage: Blobs,
        sessions: Sessions,
        metrics: Arc<metrics::Metrics>,
        tls: Arc<rustls::ServerConfig>,
        server_fingerprint: [u8; 32],
    ) -> Self {
        let large_uploads = Arc::new(tokio::sync::Semaphore::new(LARGE_UPLOAD_SLOTS));
        let per_minute = config.registrations_per_minute;
        let registrations = Mutex::new(RateLimit::new(per_minute, per_minute.saturating_mul(2)));
        let quotas = session::Quotas::new(
            session::MAX_PENDING_UPLOADS,
            session::MAX_PENDING_BYTES_IN_FILES * u64::from(config.max_content),
        );
        let v4_puts = session::Quotas::new(
            usize::from(v4::MAX_OPEN_PUTS),
            config.max_file_size.saturating_mul(2),
        );
        Shared {
            v4_puts,
            staged_checked: Mutex::new(None),
            resuming: Mutex::new(std::collections::HashSet::new()),
            server_fingerprint,
            registrations,
            quotas,
            commits: Mutex::new(HashMap::new()),
            slots: slots::Slots::new(config.max_connections_per_address),
            uploads: Arc::new(Semaphore::new(config.max_uploads.max(1))),
            config,
            records,
            storage,
            sessions,
            large_uploads,
            backoff: Mutex::new(Backoff::new()),
            next_conn: AtomicU64::new(1),
            metrics,
            tls,
        }
    }

    /// The back-off state (held only for a map look-up, never across an await).
    fn backoff(&self) -> std::sync::MutexGuard<'_, Backoff> {
        self.backoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the turn to commit `name` of client `id`.
    pub(crate) async fn commit_turn(
        &self,
        id: crate::protocol::ClientId,
        name: &str,
    ) -> CommitTurn<'_> {
        let key = (id, name.to_owned());
        let lock = {
            let mut commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(commits.entry(key.clone()).or_default())
        };
        CommitTurn { shared: self, key, _guard: lock.lock_owned().await }
    }

    /// Whether the janitor should look for expired staged uploads now (and notes that it
    /// does).
    fn staged_check_due(&self) -> bool {
        let mut last = self.staged_checked.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < STAGED_CHECK_PERIOD) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// The registration limit (likewise).
    fn registrations(&self) -> std::sync::MutexGuard<'_, RateLimit> {
        self.registrations.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The records, for one call. A call that fails because the database file was
    /// replaced is logged as an error where it happens, whoever asked.
    fn records(&self) -> &dyn crate::store::Records {
        &*self.records
    }
}

/// A server ready to run: database open and migrated, storage checked and cleaned.
pub struct Server {
    shared: Arc<Shared>,
    /// The storage directory's lock, held while the server runs (`db restore` checks it);
    /// an object store has none.
    _lock: Option<std::fs::File>,
    /// Where to serve the metrics, if anywhere (see [`Server::with_metrics`]).
    metrics: Option<TcpListener>,
    /// The server key's fingerprint, `SHA256:…`.
    fingerprint: String,
}

impl Server {
    /// Opens the database (a SQLite file, or PostgreSQL when `config.db` is a
    /// `postgres://` address) and the storage directory, finishes or undoes the commits a
    /// crash interrupted, and deletes uploads a crash left. Loads the server key from the
    /// records when they keep it (PostgreSQL: every instance presents one key), else from
    /// beside the database file, making it on the first start (see [`identity`]).
    ///
    /// With `s3://bucket/prefix` as the storage, the object store is opened after the
    /// records (which track its staged uploads) and checked with a probe object; uploads
    /// a crash left staged are aborted: all of them when the records are this server's
    /// alone (SQLite), the expired ones when other servers may share them.
    pub async fn open(config: Config) -> Result<Self, ServerError> {
        let url = storage_url(&config)?;
        let local = match url {
            Some(_) => None,
            None => Some(open_storage(&config)?),
        };
        let metrics = Arc::new(metrics::Metrics::new());
        let records = open_records(&config, Arc::clone(&metrics)).await?;
        let (storage, lock) = match (local, url) {
            (Some((storage, lock)), _) => (Blobs::Local(storage), Some(lock)),
            (None, Some(url)) => (Blobs::S3(open_s3(&config, &url, &records).await?), None),
            (None, None) => unreachable!("the storage is a directory or an s3:// URL"),
        };
        let identity = match records.server_key(identity::ServerIdentity::generate_pkcs8()?).await?
        {
            Some(pkcs8) => identity::ServerIdentity::from_stored("the database", pkcs8)?,
            None => identity::ServerIdentity::load_or_create(&identity::key_path(&config.db))?,
        };
        reconcile_commits(&*records, &storage, config.keep_versions).await?;
        let dropped = v4::reconcile_unfinished(&*records, &storage)
            .await
            .map_err(|source| ServerError::Storage { path: config.storage.clone(), source })?;
        if dropped > 0 {
            warn!(
                dropped,
                "dropped unfinished uploads that had expired or whose bytes were not on disk"
            );
        }
        Server::assemble(config, records, storage, lock, metrics, &identity)
    }

    /// A server over records the caller supplies instead of the database `config` names:
    /// for serving in process (tests, fuzzing; see [`Server::serve_connection`]) and for
    /// other record stores. Commits a crash interrupted are not looked at: the records
    /// must have none (a fresh store has none). The server key lives in memory only: with
    /// no database there is nothing to keep it beside. The storage must be a local
    /// directory here.
    pub fn with_records(config: Config, records: SharedRecords) -> Result<Self, ServerError> {
        let (storage, lock) = open_storage(&config)?;
        let identity = identity::ServerIdentity::ephemeral()?;
        let metrics = Arc::new(metrics::Metrics::new());
        Server::assemble(config, records, Blobs::Local(storage), Some(lock), metrics, &identity)
    }

    /// The server key's fingerprint (`SHA256:` and unpadded base64 of the SHA-256 of its
    /// SubjectPublicKeyInfo), what protocol-4 clients pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Serves the metrics (Prometheus text) at [`METRICS_PATH`] on `listener` while the
    /// server runs, the grace period included.
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    fn assemble(
        config: Config,
        records: SharedRecords,
        storage: Blobs,
        lock: Option<std::fs::File>,
        metrics: Arc<metrics::Metrics>,
        identity: &identity::ServerIdentity,
    ) -> Result<Self, ServerError> {
        let tls = tls::server_config(identity)?;
        if let Some(local) = storage.local() {
            let leftovers = local.clean_leftovers().map_err(storage_error(&config))?;
            if leftovers.removed > 0 {
                warn!(
                    removed = leftovers.removed,
                    "deleted unfinished uploads left by an earlier run"
                );
            }
            for (path, why) in &leftovers.odd {
                warn!(path = %path.display(), "unexpected entry in the storage directory, left alone: {why}");
            }
        }
        let sessions = Sessions::new(config.session_window, config.strict_sessions);
        let spki = v4::client_key::spki_of(&identity.certificate())
            .ok_or_else(|| rustls::Error::General("the server certificate has no key".into()))?;
        let server_fingerprint = crate::crypto::fingerprint::raw(&spki);
        let shared = Arc::new(Shared::new(
            config,
            records,
            storage,
            sessions,
            metrics,
            tls,
            server_fingerprint,
        ));
        let fingerprint = identity.fingerprint().to_owned();
        Ok(Server { shared, _lock: lock, metrics: None, fingerprint })
    }

    /// Serves one connection over any byte stream, exactly as the accept loop serves a
    /// TCP connection from `peer` (but outside the connection limits: no slot, no
    /// per-address cap, no eviction), until the peer leaves, misbehaves or `stop` turns
    /// true. The future owns what it needs, so it can be spawned. This is the seam for
    /// running protocol conversations in process, over `tokio::io::duplex` say, in tests
    /// and fuzzing. It speaks protocol 3 only: telling TLS apart needs a socket to peek at.
    pub fn serve_connection<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let conn_id = self.shared.next_conn_id();
        let connection = conn::Connection::new(Arc::clone(&self.shared), stream, conn_id, peer);
        let span = info_span!("conn", id = conn_id, peer = %peer, client = tracing::field::Empty);
        connection.run(stop).instrument(span)
    }

    /// Serves `listener` until `shutdown` completes, then lets transfers in flight finish
    /// for the grace period, closes everything, and cleans unconfirmed uploads.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let shared = self.shared;
        let endpoint =
            self.metrics.map(|l| tokio::spawn(metrics::endpoint::serve(l, Arc::clone(&shared))));
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let janitor = tokio::spawn(janitor(Arc::clone(&shared), stop_rx.clone()));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, do not spin.
                        error!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let conn_id = shared.next_conn_id();
            let Some(slot) = shared.slots.admit(conn_id, peer.ip()) else {
                shared.metrics.connection_refused(metrics::CloseReason::PerAddressCap);
                debug!(%peer, "closed at once: the address holds its --max-connections-per-address");
                continue;
            };
            let permit = match Arc::clone(&limit).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Full: a connection that never made a key exchange and sits idle
                    // gives its slot up, rather than the newcomer waiting behind it.
                    let Some(permit) = make_room(&shared.slots, &limit, &mut shutdown).await else {
                        break;
                    };
                    permit
                }
            };
            while tasks.try_join_next().is_some() {}
            let _ = stream.set_nodelay(true);
            let span =
                info_span!("conn", id = conn_id, peer = %peer, client = tracing::field::Empty);
            let open = shared.metrics.connection_opened();
            let (task_shared, stop) = (Arc::clone(&shared), stop_rx.clone());
            tasks.spawn(
                async move {
                    serve_accepted(task_shared, stream, conn_id, peer, slot, stop).await;
                    drop((permit, open));
                }
                .instrument(span),
            );
        }
        drop(listener);
        info!(in_flight = tasks.len(), "shutting down: no new connections");
        let _ = stop_tx.send(true);
        let _ = janitor.await;
        let grace = shared.config.grace;
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(?grace, "transfers still running after the grace period were cut off");
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        shared.sessions.clear();
        if let Some(storage) = shared.storage.local().cloned() {
            let _ = tokio::task::spawn_blocking(move || storage.clean_leftovers()).await;
        }
        if let Some(endpoint) = endpoint {
            endpoint.abort();
        }
        info!("stopped");
        Ok(())
    }
}

/// Serves one accepted connection: protocol 4 if it opens with a TLS ClientHello, else
/// protocol 3 exactly as before (the bytes looked at are not consumed).
async fn serve_accepted(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    conn_id: u64,
    peer: SocketAddr,
    slot: slots::Slot,
    mut stop: watch::Receiver<bool>,
) {
    let idle = shared.config.idle_timeout;
    match tls::sniff(&stream, &slot, &mut stop, idle).await {
        tls::Sniffed::Tls => {
            slot.set_idle(false);
            tls::serve(Arc::clone(&shared), stream, peer, stop).await;
        }
        tls::Sniffed::Silent => debug!("connection ended: {}", ServerError::Idle(idle)),
        tls::Sniffed::Protocol3 => {
            let stream = shared.metrics.count_received(stream);
            let connection =
                conn::Connection::new(Arc::clone(&shared), stream, conn_id, peer).with_slot(slot);
            connection.run(stop).await;
        }
    }
}

/// The error for a storage directory that cannot be used.
fn storage_error(config: &Config) -> impl Fn(io::Error) -> ServerError + '_ {
    |source| ServerError::Storage { path: config.storage.clone(), source }
}

/// The object store `config.storage` names, if it names one.
fn storage_url(config: &Config) -> Result<Option<S3Url>, ServerError> {
    let storage = config.storage.to_string_lossy();
    if !is_s3_url(&storage) {
        return Ok(None);
    }
    S3Url::parse(&storage).map(Some).map_err(|e| {
        storage_error(config)(io::Error::other(format!("{e}: expected s3://BUCKET/PREFIX")))
    })
}

/// How long any upload may be under way besides its bytes at the minimum rate: reading
/// its header and waiting for its verdict (the idle timeout each, the session window for a
/// client that confirms on another connection). A staged object older than that and its
/// bytes' time cannot be an upload in progress on any server with these settings.
fn staged_base(config: &Config) -> Duration {
    config.idle_timeout * 2 + config.session_window + config.request_deadline
}

/// Opens the object store and aborts the uploads a crash left staged in it.
async fn open_s3(
    config: &Config,
    url: &S3Url,
    records: &SharedRecords,
) -> Result<S3Store, ServerError> {
    let store = S3Store::open(url, Arc::clone(records), staged_base(config)).await?;
    let alone = !records.is_shared();
    let cleaned = store
        .clean_staged(alone)
        .await
        .map_err(|source| ServerError::Storage { path: config.storage.clone(), source })?;
    if cleaned > 0 {
        warn!(cleaned, "aborted uploads an earlier run left staged in the object store");
    }
    Ok(store)
}

/// Opens, checks and locks the storage directory.
fn open_storage(config: &Config) -> Result<(Storage, std::fs::File), ServerError> {
    let storage = Storage::open(&config.storage)
        .and_then(|storage| storage.check_writable().map(|()| storage))
        .map_err(storage_error(config))?;
    let lock = storage.lock_exclusive().map_err(|e| {
        storage_error(config)(io::Error::other(format!(
            "cannot lock it ({e}): is another server (or `db restore`) using it?"
        )))
    })?;
    Ok((storage, lock))
}

/// Waits for a connection slot when the server is full, asking the oldest idle connection
/// without a key exchange to give its slot up. When there is none to ask (connections
/// accepted a moment ago are not idle until their task first waits for a request), it asks
/// again shortly instead of waiting for a connection to end by itself, which a trickler or
/// a silent peer makes last up to its lifetime. `None` when `shutdown` comes first.
async fn make_room(
    slots: &slots::Slots,
    limit: &Arc<Semaphore>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    loop {
        let asked = slots.evict_one();
        let again = if asked { Duration::from_secs(1) } else { Duration::from_millis(50) };
        tokio::select! {
            _ = shutdown.as_mut() => return None,
            permit = Arc::clone(limit).acquire_owned() => return Some(permit.expect("never closed")),
            _ = tokio::time::sleep(again) => {}
        }
    }
}

/// The records `config.db` names, their calls timed into `metrics`.
async fn open_records(
    config: &Config,
    metrics: Arc<metrics::Metrics>,
) -> Result<SharedRecords, ServerError> {
    let timing = move |took| metrics.db_call(took);
    let db = config.db.to_string_lossy();
    if postgres::is_postgres_url(&db) {
        let records = PostgresRecords::connect(&db, postgres::DEFAULT_POOL_SIZE)
            .await
            .map_err(RecordsError::from)?;
        return Ok(Arc::new(records.timed(timing)));
    }
    Ok(Arc::new(SqliteRecords::new(Db::open(&config.db)?).timed(timing)))
}

/// Decides every commit (or restore) a crash interrupted (see [`crate::store::CommitIntent`])
/// by the bytes in storage: a file in place with the intent's size and cksum was renamed
/// there, so it is recorded verified; otherwise the rename never happened and the records
/// stay as they were (the temporary file goes with the other leftovers). Either way every
/// row then describes the bytes in storage and every stored file has its row. The records
/// are asked through [`Records`], whichever holds them; storage is read on the blocking
/// pool.
pub async fn reconcile_commits(
    records: &dyn Records,
    storage: &Blobs,
    keep: usize,
) -> Result<(), ServerError> {
    let failed = |source| ServerError::Storage { path: storage.describe().into(), source };
    for mut intent in records.commit_intents().await? {
        let (size, cksum) = (intent.size, intent.cksum);
        let landed =
            storage.digest(&intent.path_name).await.map_err(failed)? == Some((size, cksum));
        let id = intent.client_id;
        if landed {
            // The copy it replaced was linked as a version before the rename, if at all.
            if let Some(archive) = intent.archive.clone()
                && !storage.has_version(&archive).await.map_err(failed)?
            {
                intent.archive = None;
            }
            let pruned = records.finish_commit(intent.clone(), None, keep).await?;
            on_storage(storage, move |s| pruned.iter().try_for_each(|p| s.delete_version(id, p)))
                .await?;
        } else {
            if let Some(archive) = intent.archive.clone() {
                storage.undo_version(id, &archive).await.map_err(failed)?;
            }
            records.abandon_commit(intent.clone()).await?;
        }
        info!(
            client = %id, file_name = %intent.file_name, landed,
            "finished a commit interrupted by a crash"
        );
    }
    let Some(local) = storage.local() else { return Ok(()) };
    // Versions forgotten just before a crash deleted their files.
    let recorded: std::collections::HashSet<String> =
        records.versions().await?.into_iter().map(|v| v.path_name).collect();
    let local = Blobs::Local(local.clone());
    on_storage(&local, move |s| {
        let Blobs::Local(s) = s else { return Ok(()) };
        s.version_files()
            .into_iter()
            .filter(|(_, path)| !recorded.contains(path))
            .try_for_each(|(id, path)| s.remove_version(id, &path))
    })
    .await
}

/// Runs `f` on the storage on the blocking pool; its error names the storage.
async fn on_storage<T: Send + 'static>(
    storage: &Blobs,
    f: impl FnOnce(&Blobs) -> io::Result<T> + Send + 'static,
) -> Result<T, ServerError> {
    let (copy, path) = (storage.clone(), PathBuf::from(storage.describe()));
    let result = tokio::task::spawn_blocking(move || f(&copy)).await.map_err(io::Error::other);
    result.and_then(|r| r).map_err(|source| ServerError::Storage { path, source })
}

/// How often the janitor runs: often enough that what it forgets goes soon after its
/// time, whatever the settings, and no more than every 100 ms.
fn janitor_period(config: &Config) -> Duration {
    let mut shortest = config.session_window.min(borrowed_upload_lifetime(config));
    if !config.resume_window.is_zero() {
        shortest = shortest.min(config.resume_window);
    }
    (shortest / 2).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

/// How long an upload made on a borrowed session (another connection from the client's
/// address) waits for its verdict. Such clients send the 1029 on a new connection right
/// after the 2103; one silent for the idle timeout has gone away, as it would have on a
/// connection of its own.
fn borrowed_upload_lifetime(config: &Config) -> Duration {
    config.idle_timeout
}

/// Forgets, on its own timer, what has had its time: idle sessions and the uploads they
/// hold, stale uploads on borrowed sessions, forgotten padding failures. Stops when
/// `stop` says so (or its sender is gone).
async fn janitor(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(janitor_period(&shared.config));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { break },
            _ = tick.tick() => shared.tidy().await,
        }
    }
}

impl Shared {
    /// One round of the janitor.
    async fn tidy(&self) {
        let expired = self.sessions.expire(borrowed_upload_lifetime(&self.config));
        let uploads = expired.uploads.len();
        if uploads > 0 {
            info!(uploads, "deleted uploads on borrowed sessions that got no verdict in time");
        }
        if !expired.sessions.is_empty() || uploads > 0 {
            // Deleting large files takes a while: not on the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || drop(expired)).await;
        }
        if let Blobs::S3(s3) = &self.storage
            && self.staged_check_due()
        {
            match s3.clean_staged(false).await {
                Ok(0) => {}
                Ok(cleaned) => info!(cleaned, "aborted expired uploads staged in the object store"),
                Err(e) => warn!("could not clean expired staged uploads: {e}"),
            }
        }
        self.expire_shared_sessions().await;
        let expired = v4::remove_expired_unfinished(self).await;
        if expired > 0 {
            info!(expired, "removed unfinished uploads past --resume-window");
        }
        let now = std::time::Instant::now();
        self.backoff().prune(now);
        self.registrations().prune(now);
        // A registration may wait for its 1026 on its own connection for the idle timeout,
        // or from its address for the window.
        let age = self.config.session_window.max(self.config.idle_timeout);
        match self.records().forget_keyless(age).await {
            Ok(0) => {}
            Ok(forgotten) => info!(forgotten, "forgot registrations that never sent a public key"),
            Err(e) => warn!("could not forget registrations without a public key: {e}"),
        }
    }
}

/// The address a listener is bound to (for the start-up line).
pub fn local_addr(listener: &TcpListener) -> io::Result<SocketAddr> {
    listener.local_addr()
}
