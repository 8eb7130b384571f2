//! The server's records in PostgreSQL (`serve --db postgres://…`, issue 16): the tables of
//! the SQLite records translated ([`schema`]), behind the same [`Records`] trait, so that
//! any number of `serve` instances can share one database.
//!
//! Connections come from a pool (`deadpool-postgres`): a call takes one for its statement
//! or transaction and gives it back, and statements are prepared once per connection.
//! Every method is one statement or one transaction, so it happens whole or not at all
//! as the trait demands, whichever instance runs it and however many run at once. A
//! commit also locks its client's row first, so two instances committing files of one
//! client take turns (a version number is the next one of its name).
//!
//! No TLS to the database yet (`NoTls`): run it on loopback or a private network.

pub mod schema;

use super::db::{
    Attached, ClientKey, ClientRecord, CommitIntent, FileRecord, FinishedCommit, InviteRecord,
    NewClient, PathFacts, PathRange, PutFacts, Quota, Registered, Removal, Removed, StagedObject,
    StoredCopy, UnfinishedUpload, Usage, VersionRecord,
};
use super::records::{
    PendingTimes, Records, RecordsError, RecordsFuture, SharedPending, SharedSession,
};
use crate::protocol::ClientId;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_postgres::NoTls;

/// How long a call waits for a pooled connection, or to open a new one, before it fails
/// (a database that went away is an error to the client, not a hung connection).
pub const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most connections one instance holds: the server's calls are short, and
/// PostgreSQL's own default limit (100) is shared by every instance.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// Why PostgreSQL could not answer.
#[derive(Debug, Error)]
pub enum PostgresError {
    /// The `postgres://` address does not parse.
    #[error("invalid PostgreSQL address: {0}")]
    Address(String),
    /// The server said no, or the connection failed. Its message already holds the
    /// cause (see `describe`), so it is not also this error's source: a chain printed
    /// with `{:#}` would say the cause twice.
    #[error("PostgreSQL: {}", describe(.0))]
    Db(tokio_postgres::Error),
    /// No connection could be had from the pool in time.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
    /// The database's schema is older than this build's, and the caller only reads.
    #[error(
        "the database's schema is at version {found}, this securexfer's is {known}: start \
         `securexfer serve` of this version over it once, which migrates it"
    )]
    Behind {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// The database was migrated by a newer securexfer.
    #[error("database schema version {found} is newer than this securexfer knows ({known})")]
    TooNew {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// The server's message and SQLSTATE when there is one (tokio-postgres's own `Display`
/// says only "db error"), else the error and its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

impl From<tokio_postgres::Error> for PostgresError {
    fn from(e: tokio_postgres::Error) -> Self {
        PostgresError::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for PostgresError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => PostgresError::Db(e),
            other => PostgresError::Pool(other.to_string()),
        }
    }
}

impl From<PostgresError> for RecordsError {
    fn from(e: PostgresError) -> Self {
        RecordsError::Backend(e.to_string())
    }
}

/// Whether `db` (the `--db` value) names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// `db` with the password of a `postgres://user:password@…` address replaced by `***`,
/// for logs and errors; anything else unchanged.
pub fn redacted(db: &str) -> String {
    if !is_postgres_url(db) {
        return db.to_owned();
    }
    let (scheme, rest) = db.split_once("://").expect("a postgres:// address");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => db.to_owned(),
        },
        None => db.to_owned(),
    }
}

/// The records in a PostgreSQL database.
pub struct PostgresRecords {
    pool: Pool,
    /// Told how long each call took (the metrics' database latency).
    timing: Option<Box<dyn Fn(Duration) + Send + Sync>>,
}

impl PostgresRecords {
    /// Connects to `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`, libpq's URL form) with
    /// up to `pool_size` connections and migrates the schema. Needs a tokio runtime.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, PostgresError> {
        let records = Self::pool(url, pool_size)?;
        let mut client = records.pool.get().await?;
        schema::migrate(&mut client).await?;
        drop(client);
        Ok(records)
    }

    async fn connect_unmigrated(url: &str) -> Result<Self, PostgresError> {
        let records = Self::pool(url, 1)?;
        drop(records.pool.get().await?);
        Ok(records)
    }

    /// The pool of up to `pool_size` connections to `url`; none is opened yet.
    fn pool(url: &str, pool_size: usize) -> Result<Self, PostgresError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PostgresError::Address(e.to_string()))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(POOL_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("securexfer");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            // Fast: a connection that broke fails its next call, and the pool drops it.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| PostgresError::Pool(e.to_string()))?;
        Ok(PostgresRecords { pool, timing: None })
    }

    /// Connects to `url` with one connection for the operator's tools, which only look:
    /// the schema is not migrated, and one other than this build's is an error that says
    /// what to do (a newer build's, or one that `serve` has not brought up to date yet).
    pub async fn connect_to_read(url: &str) -> Result<Self, PostgresError> {
        let records = Self::connect_unmigrated(url).await?;
        let (found, known) = (records.schema_version().await?, schema::latest_version());
        if found > known {
            return Err(PostgresError::TooNew { found: found.into(), known: known.into() });
        }
        if found < known {
            return Err(PostgresError::Behind { found: found.into(), known: known.into() });
        }
        Ok(records)
    }

    /// Tells `timing` how long each call takes.
    pub fn timed(mut self, timing: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.timing = Some(Box::new(timing));
        self
    }

    /// The schema version of the database.
    pub async fn schema_version(&self) -> Result<i32, PostgresError> {
        let client = self.pool.get().await?;
        let row = client.query_one("SELECT max(version) FROM schema_migrations", &[]).await?;
        Ok(row.get::<_, Option<i32>>(0).unwrap_or(0))
    }

    /// Records an invitation (`db invite`): the SHA-256 of its token, never the token.
    pub async fn create_invite(
        &self,
        token_hash: &[u8; 32],
        name: Option<&str>,
        valid_for: Duration,
    ) -> Result<(), PostgresError> {
        keys::create_invite(&self.pool.get().await?, token_hash, name, valid_for).await
    }

    /// Every client, by name (byte order, as SQLite sorts).
    pub async fn clients(&self) -> Result<Vec<ClientRecord>, PostgresError> {
        let c = self.pool.get().await?;
        let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients ORDER BY name COLLATE \"C\"");
        Ok(c.query(&sql, &[]).await?.iter().map(client_row).collect())
    }

    /// The server key every instance presents (PKCS#8), if one has started yet.
    pub async fn stored_server_key(&self) -> Result<Option<Vec<u8>>, PostgresError> {
        let c = self.pool.get().await?;
        Ok(c.query_opt("SELECT pkcs8 FROM server_key", &[]).await?.map(|r| r.get(0)))
    }

    /// Every invitation, oldest first.
    pub async fn invites(&self) -> Result<Vec<InviteRecord>, PostgresError> {
        keys::invites(&self.pool.get().await?).await
    }

    /// Sets a client's quota (`db quota`; `None` in a field: no limit). False when no
    /// such client.
    pub async fn set_quota(&self, id: ClientId, quota: Quota) -> Result<bool, PostgresError> {
        copies::set_quota(&self.pool.get().await?, id, quota).await
    }

    /// Runs `f` with a pooled connection, timed.
    fn run<'a, T, F, Fut>(&'a self, f: F) -> RecordsFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'a,
        Fut: std::future::Future<Output = Result<T, PostgresError>> + Send + 'a,
    {
        Box::pin(async move {
            let started = Instant::now();
            let client = self.pool.get().await.map_err(PostgresError::from)?;
            let answer = f(client).await;
            if let Some(timing) = &self.timing {
                timing(started.elapsed());
            }
            Ok(answer?)
        })
    }
}

/// A `TIMESTAMPTZ` column in SQLite's form, `YYYY-MM-DD HH:MM:SS` UTC.
macro_rules! utc {
    ($column:literal) => {
        concat!("to_char(", $column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
    };
}

mod commit;
mod copies;
pub mod import;
mod keys;
mod sessions;
mod unfinished;

/// `SELECT` of a client's columns as [`client_row`] reads them.
const CLIENT_COLUMNS: &str = concat!(
    "id, name, public_key, ",
    utc!("last_seen"),
    ", aes_key IS NOT NULL, key_fingerprint, protocol3_allowed"
);

fn id_of(bytes: &[u8]) -> ClientId {
    let mut id = [0u8; 16];
    let n = bytes.len().min(16);
    id[..n].copy_from_slice(&bytes[..n]);
    ClientId(id)
}

fn client_row(row: &tokio_postgres::Row) -> ClientRecord {
    ClientRecord {
        id: id_of(row.get(0)),
        name: row.get(1),
        public_key: row.get(2),
        last_seen: row.get(3),
        has_aes_key: row.get(4),
        key_fingerprint: row.get::<_, Option<Vec<u8>>>(5).and_then(hash_of),
        protocol3_allowed: row.get(6),
    }
}

fn hash_of(bytes: Vec<u8>) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// A cksum as stored (`BIGINT`) back to its `u32`.
fn cksum_of(value: Option<i64>) -> Option<u32> {
    value.and_then(|v| u32::try_from(v).ok())
}

fn size_of(value: Option<i64>) -> Option<u64> {
    value.and_then(|v| u64::try_from(v).ok())
}

impl Records for PostgresRecords {
    fn register(&self, id: ClientId, name: String, ip: IpAddr) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move {
            let sql = "INSERT INTO clients (id, name, last_seen, usual_address)
                       VALUES ($1, $2, now(), $3) ON CONFLICT DO NOTHING";
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.execute(&stmt, &[&&id.0[..], &name, &ip.to_string()]).await? == 1)
        })
    }

    fn client(&self, id: ClientId) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.run(move |c| async move {
            let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE id = $1");
            let stmt = c.prepare_cached(&sql).await?;
            Ok(c.query_opt(&stmt, &[&&id.0[..]]).await?.as_ref().map(client_row))
        })
    }

    fn client_named(&self, name: String) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.run(move |c| async move {
            let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE name = $1");
            let stmt = c.prepare_cached(&sql).await?;
            Ok(c.query_opt(&stmt, &[&name]).await?.as_ref().map(client_row))
        })
    }

    fn usual_address(&self, id: ClientId) -> RecordsFuture<'_, Option<IpAddr>> {
        self.run(move |c| async move {
            let stmt = c.prepare_cached("SELECT usual_address FROM clients WHERE id = $1").await?;
            let row = c.query_opt(&stmt, &[&&id.0[..]]).await?;
            let text: Option<String> = row.and_then(|r| r.get(0));
            Ok(text.and_then(|t| t.parse().ok()))
        })
    }

    fn set_public_key(&self, id: ClientId, field: Vec<u8>) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            let stmt = c.prepare_cached("UPDATE clients SET public_key = $2 WHERE id = $1").await?;
            c.execute(&stmt, &[&&id.0[..], &field]).await?;
            Ok(())
        })
    }

    fn set_aes_key(&self, id: ClientId, key: [u8; 16]) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            let stmt = c.prepare_cached("UPDATE clients SET aes_key = $2 WHERE id = $1").await?;
            c.execute(&stmt, &[&&id.0[..], &&key[..]]).await?;
            Ok(())
        })
    }

    fn touch(&self, id: ClientId) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move {
            let stmt =
                c.prepare_cached("UPDATE clients SET last_seen = now() WHERE id = $1").await?;
            Ok(c.execute(&stmt, &[&&id.0[..]]).await? == 1)
        })
    }

    fn forget_keyless(&self, age: Duration) -> RecordsFuture<'_, usize> {
        self.run(move |c| async move {
            let sql = "DELETE FROM clients WHERE public_key IS NULL AND key_fingerprint IS NULL
                         AND (last_seen IS NULL OR last_seen < now() - make_interval(secs => $1))
                         AND NOT EXISTS (SELECT 1 FROM files WHERE files.id = clients.id)";
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.execute(&stmt, &[&(age.as_secs() as f64)]).await? as usize)
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn stored_copy(&self, id: ClientId, stored_name: String) -> RecordsFuture<'_, Option<String>> {
        self.run(move |c| async move {
            let sql = "SELECT path_name FROM files
                       WHERE id = $1 AND stored_path COLLATE \"C\" = $2 AND verified LIMIT 1";
            let stmt = c.prepare_cached(sql).await?;
            let at = crate::store::db::stored_path(id, &stored_name);
            Ok(c.query_opt(&stmt, &[&&id.0[..], &at]).await?.map(|r| r.get(0)))
        })
    }

    fn track_staged(&self, staged: StagedObject, expires_at: i64) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            let sql = "INSERT INTO staged_objects (key, upload_id, expires_at) VALUES ($1, $2, $3)
                       ON CONFLICT (key) DO UPDATE SET upload_id = excluded.upload_id,
                         expires_at = excluded.expires_at";
            let stmt = c.prepare_cached(sql).await?;
            c.execute(&stmt, &[&staged.key, &staged.upload_id, &expires_at]).await?;
            Ok(())
        })
    }

    fn forget_staged(&self, key: String) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            let stmt = c.prepare_cached("DELETE FROM staged_objects WHERE key = $1").await?;
            c.execute(&stmt, &[&key]).await?;
            Ok(())
        })
    }

    fn claim_expired_staged(
        &self,
        now: i64,
        lease_until: i64,
    ) -> RecordsFuture<'_, Vec<StagedObject>> {
        self.run(move |c| async move {
            // One statement: of several instances claiming at once, each row goes to one
            // (a second UPDATE waits on the row lock, then sees the lease and skips it).
            let sql = "UPDATE staged_objects s SET expires_at = $2 WHERE expires_at <= $1
                         AND NOT EXISTS (SELECT 1 FROM commit_intents i WHERE i.source = s.key)
                         AND NOT EXISTS (SELECT 1 FROM files f WHERE f.path_name = s.key)
                         AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.path_name = s.key)
                         AND NOT EXISTS (SELECT 1 FROM unfinished_uploads u WHERE u.location = s.key)
                       RETURNING key, upload_id";
            let stmt = c.prepare_cached(sql).await?;
            let rows = c.query(&stmt, &[&now, &lease_until]).await?;
            Ok(rows.iter().map(|r| StagedObject { key: r.get(0), upload_id: r.get(1) }).collect())
        })
    }

    fn has_verified_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move {
            let sql = "SELECT EXISTS (SELECT 1 FROM files
                         WHERE id = $1 AND stored_path COLLATE \"C\" = $2 AND verified)";
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.query_one(&stmt, &[&&id.0[..], &path_name]).await?.get(0))
        })
    }

    fn begin_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move { commit::insert_intent(&c, &intent).await })
    }

    fn finish_commit(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<String>> {
        Box::pin(async move { Ok(self.finish_commit_detailed(intent, ip, keep).await?.pruned) })
    }

    fn abandon_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            commit::delete_intent(&c, intent.client_id, &intent.stored_name).await
        })
    }

    fn record_given_up(
        &self,
        id: ClientId,
        file_name: String,
        path_name: String,
    ) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            let sql = "INSERT INTO files (id, file_name, path_name, stored_path, verified)
                       VALUES ($1, $2, $3, $3, false) ON CONFLICT DO NOTHING";
            let stmt = c.prepare_cached(sql).await?;
            c.execute(&stmt, &[&&id.0[..], &file_name, &path_name]).await?;
            Ok(())
        })
    }

    fn files(&self) -> RecordsFuture<'_, Vec<FileRecord>> {
        self.run(|c| async move {
            // COLLATE "C": byte order, as SQLite sorts, whatever the database's locale.
            let sql = concat!(
                "SELECT f.id, c.name, f.file_name, f.path_name, f.verified, f.size, f.cksum, ",
                utc!("f.stored_at"),
                ", f.blake3, f.protocol, f.generation FROM files f JOIN clients c ON c.id = f.id
                  ORDER BY c.name COLLATE \"C\", f.file_name COLLATE \"C\""
            );
            let stmt = c.prepare_cached(sql).await?;
            let rows = c.query(&stmt, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| FileRecord {
                    client_id: id_of(r.get(0)),
                    client_name: r.get(1),
                    file_name: r.get(2),
                    path_name: r.get(3),
                    verified: r.get(4),
                    size: size_of(r.get(5)),
                    cksum: cksum_of(r.get(6)),
                    stored_at: r.get(7),
                    blake3: r.get::<_, Option<Vec<u8>>>(8).and_then(hash_of),
                    protocol: u8::try_from(r.get::<_, i16>(9)).unwrap_or(3),
                    generation: size_of(r.get(10)),
                })
                .collect())
        })
    }

    fn commit_intents(&self) -> RecordsFuture<'_, Vec<CommitIntent>> {
        self.run(|c| async move {
            let sql = "SELECT id, stored_name, file_name, path_name, source, size, cksum,
                              archive, restores, blake3, mtime_ns FROM commit_intents";
            let rows = c.query(sql, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| CommitIntent {
                    client_id: id_of(r.get(0)),
                    stored_name: r.get(1),
                    file_name: r.get(2),
                    path_name: r.get(3),
                    source: r.get(4),
                    size: size_of(r.get(5)).unwrap_or(0),
                    cksum: cksum_of(r.get(6)).unwrap_or(0),
                    archive: r.get(7),
                    restores: r.get(8),
                    v4: commit::v4_content(r.get(9), r.get(10)),
                })
                .collect())
        })
    }

    fn versions(&self) -> RecordsFuture<'_, Vec<VersionRecord>> {
        self.run(|c| async move {
            let sql = concat!(
                "SELECT v.id, c.name, v.name, v.version, v.file_name, v.path_name, v.size, ",
                "v.cksum, ",
                utc!("v.stored_at"),
                ", v.blake3, v.mtime_ns FROM versions v JOIN clients c ON c.id = v.id
                  ORDER BY c.name COLLATE \"C\", v.name COLLATE \"C\", v.version"
            );
            let rows = c.query(sql, &[]).await?;
            Ok(rows
                .iter()
                .map(|r| VersionRecord {
                    client_id: id_of(r.get(0)),
                    client_name: r.get(1),
                    name: r.get(2),
                    version: r.get(3),
                    file_name: r.get(4),
                    path_name: r.get(5),
                    size: size_of(r.get(6)),
                    cksum: cksum_of(r.get(7)),
                    stored_at: r.get(8),
                    v4: commit::v4_content(r.get(9), r.get(10)),
                })
                .collect())
        })
    }

    fn server_key(&self, candidate: Vec<u8>) -> RecordsFuture<'_, Option<Vec<u8>>> {
        self.run(move |c| async move {
            // The first instance's key wins; every later one reads it.
            let sql = "INSERT INTO server_key (pkcs8) VALUES ($1) ON CONFLICT DO NOTHING";
            c.execute(sql, &[&candidate]).await?;
            let row = c.query_one("SELECT pkcs8 FROM server_key", &[]).await?;
            Ok(Some(row.get(0)))
        })
    }

    fn client_by_key(&self, fingerprint: [u8; 32]) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.run(move |c| async move { keys::client_by_key(&c, &fingerprint).await })
    }

    fn register_with_key(&self, new: NewClient) -> RecordsFuture<'_, Registered> {
        self.run(move |mut c| async move { keys::register_with_key(&mut c, &new).await })
    }

    fn attach_key(&self, id: ClientId, key: ClientKey) -> RecordsFuture<'_, Attached> {
        self.run(move |mut c| async move { keys::attach_key(&mut c, id, &key).await })
    }

    fn finish_commit_detailed(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, FinishedCommit> {
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let finished = commit::finish(&tx, &intent, ip, keep).await?;
            tx.commit().await?;
            Ok(finished)
        })
    }

    fn begin_commits(&self, intents: Vec<CommitIntent>) -> RecordsFuture<'_, ()> {
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            for intent in &intents {
                commit::insert_intent(&tx, intent).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn finish_commits_detailed(
        &self,
        intents: Vec<CommitIntent>,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<FinishedCommit>> {
        // One transaction: the group is recorded whole or not at all.
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let mut finished = Vec::with_capacity(intents.len());
            for intent in &intents {
                finished.push(commit::finish(&tx, intent, ip, keep).await?);
            }
            tx.commit().await?;
            Ok(finished)
        })
    }

    fn usage(&self, id: ClientId) -> RecordsFuture<'_, Usage> {
        self.run(move |c| async move { copies::usage(&c, id).await })
    }

    fn quota(&self, id: ClientId) -> RecordsFuture<'_, Quota> {
        self.run(move |c| async move { copies::quota(&c, id).await })
    }

    fn list_page(&self, id: ClientId, range: PathRange) -> RecordsFuture<'_, Vec<StoredCopy>> {
        self.run(move |c| async move { copies::list_page(&c, id, &range).await })
    }

    fn copy_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, Option<StoredCopy>> {
        self.run(move |c| async move { copies::copy_at(&c, id, &path_name).await })
    }

    fn path_facts(
        &self,
        id: ClientId,
        space: String,
        paths: Vec<String>,
    ) -> RecordsFuture<'_, Vec<PathFacts>> {
        self.run(move |c| async move {
            let mut folders = std::collections::HashMap::new();
            let mut facts = Vec::with_capacity(paths.len());
            for path in &paths {
                facts.push(copies::path_facts(&c, id, &space, path, &mut folders).await?);
            }
            Ok(facts)
        })
    }

    fn put_facts(
        &self,
        id: ClientId,
        space: String,
        path: String,
        unfinished: bool,
    ) -> RecordsFuture<'_, PutFacts> {
        self.run(move |c| async move {
            let quota = copies::quota(&c, id).await?;
            let limited = quota.bytes.is_some() || quota.files.is_some();
            let mut folders = std::collections::HashMap::new();
            Ok(PutFacts {
                path: copies::path_facts(&c, id, &space, &path, &mut folders).await?,
                quota,
                usage: if limited { Some(copies::usage(&c, id).await?) } else { None },
                unfinished: if unfinished {
                    unfinished::of_path(&c, id, &path).await?
                } else {
                    None
                },
            })
        })
    }

    fn record_blake3(
        &self,
        id: ClientId,
        path_name: String,
        generation: u64,
        hash: [u8; 32],
    ) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move {
            copies::record_blake3(&c, id, &path_name, generation, &hash).await
        })
    }

    fn remove_copy(&self, removal: Removal) -> RecordsFuture<'_, Removed> {
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let removed = copies::remove_copy(&tx, &removal).await?;
            tx.commit().await?;
            Ok(removed)
        })
    }

    fn keep_unfinished(&self, upload: UnfinishedUpload) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move { unfinished::keep(&c, &upload).await })
    }

    fn unfinished(
        &self,
        id: ClientId,
        path: String,
    ) -> RecordsFuture<'_, Option<UnfinishedUpload>> {
        self.run(move |c| async move { unfinished::of_path(&c, id, &path).await })
    }

    fn all_unfinished(&self) -> RecordsFuture<'_, Vec<UnfinishedUpload>> {
        self.run(|c| async move { unfinished::all(&c).await })
    }

    fn forget_unfinished(
        &self,
        id: ClientId,
        path: String,
        location: String,
    ) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move { unfinished::forget(&c, id, &path, &location).await })
    }

    fn claim_expired_unfinished(&self, now: i64) -> RecordsFuture<'_, Vec<UnfinishedUpload>> {
        self.run(move |c| async move { unfinished::claim_expired(&c, now).await })
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    fn publish_session(&self, session: SharedSession) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move { sessions::publish(&c, &session).await })
    }

    fn find_session(
        &self,
        id: ClientId,
        ip: IpAddr,
        used_after: i64,
    ) -> RecordsFuture<'_, Option<SharedSession>> {
        self.run(move |c| async move { sessions::find(&c, id, ip, used_after).await })
    }

    fn end_session(&self, token: [u8; 16]) -> RecordsFuture<'_, usize> {
        self.run(move |c| async move { sessions::end(&c, token).await })
    }

    fn session_ended(&self, token: [u8; 16]) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move { sessions::ended(&c, token).await })
    }

    fn note_registration(&self, id: ClientId, ip: IpAddr) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move { sessions::note_registration(&c, id, ip).await })
    }

    fn registered_since(&self, id: ClientId, ip: IpAddr, after: i64) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move { sessions::registered_since(&c, id, ip, after).await })
    }

    fn put_pending(&self, pending: SharedPending, max: usize) -> RecordsFuture<'_, bool> {
        self.run(move |mut c| async move { sessions::put_pending(&mut c, &pending, max).await })
    }

    fn take_pending(
        &self,
        token: [u8; 16],
        file_name: String,
        times: PendingTimes,
    ) -> RecordsFuture<'_, Option<SharedPending>> {
        self.run(move |c| async move { sessions::take_pending(&c, token, &file_name, times).await })
    }

    fn note_padding_failure(&self, keys: Vec<String>, now: i64) -> RecordsFuture<'_, i64> {
        self.run(move |c| async move { sessions::note_padding_failure(&c, &keys, now).await })
    }

    fn blocked_until(&self, keys: Vec<String>, now: i64) -> RecordsFuture<'_, Option<i64>> {
        self.run(move |c| async move { sessions::blocked_until(&c, &keys, now).await })
    }

    fn take_registration(
        &self,
        net: String,
        now: i64,
        per_minute: u32,
        burst: u32,
    ) -> RecordsFuture<'_, Option<Duration>> {
        self.run(move |c| async move {
            sessions::take_registration(&c, &net, now, per_minute, burst).await
        })
    }

    fn expire_sessions(
        &self,
        used_after: i64,
        arrived_after: i64,
    ) -> RecordsFuture<'_, (usize, usize)> {
        self.run(move |c| async move { sessions::expire(&c, used_after, arrived_after).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_select_postgres() {
        assert!(is_postgres_url("postgres://u@h/db"));
        assert!(is_postgres_url("postgresql://u@h/db"));
        assert!(!is_postgres_url("defensive.db"));
        assert!(!is_postgres_url("/srv/postgres://x.db"));
    }

    #[test]
    fn a_password_is_never_shown_and_nothing_else_changes() {
        let cases = [
            ("postgres://u:secret@h:5432/db", "postgres://u:***@h:5432/db"),
            (
                "postgresql://u:p%40ss@h/db?sslmode=disable",
                "postgresql://u:***@h/db?sslmode=disable",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            ("server.db", "server.db"),
        ];
        for (given, shown) in cases {
            assert_eq!(redacted(given), shown, "{given}");
        }
    }

    #[test]
    fn an_address_that_does_not_parse_is_an_address_error() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let e = runtime.block_on(PostgresRecords::connect("postgres://h:notaport/db", 1));
        assert!(matches!(e, Err(PostgresError::Address(_))), "{:?}", e.err());
    }
}
