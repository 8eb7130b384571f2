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

use super::db::{ClientRecord, CommitIntent, FileRecord, StagedObject, VersionRecord};
use super::records::{Records, RecordsError, RecordsFuture};
use crate::protocol::ClientId;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::net::IpAddr;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

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
    /// The server said no, or the connection failed.
    #[error("PostgreSQL: {}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool in time.
    #[error("PostgreSQL connection pool: {0}")]
    Pool(String),
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
        let mut client = pool.get().await?;
        schema::migrate(&mut client).await?;
        drop(client);
        Ok(PostgresRecords { pool, timing: None })
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

/// `SELECT` of a client's columns as [`client_row`] reads them.
const CLIENT_COLUMNS: &str =
    concat!("id, name, public_key, ", utc!("last_seen"), ", aes_key IS NOT NULL");

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
        // Protocol 4 is not on PostgreSQL yet (issue 16): no client has a key here, and
        // the records methods of protocol 4 answer that this backend lacks them.
        key_fingerprint: None,
        protocol3_allowed: true,
    }
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
            let sql = "DELETE FROM clients WHERE public_key IS NULL
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
            let sql = "SELECT file_name, path_name FROM files WHERE id = $1 AND verified";
            let stmt = c.prepare_cached(sql).await?;
            let rows = c.query(&stmt, &[&&id.0[..]]).await?;
            Ok(rows.iter().find_map(|r| {
                let file_name: &str = r.get(0);
                let stores_as = crate::protocol::storage_name(file_name);
                stores_as.is_ok_and(|n| n == stored_name).then(|| r.get(1))
            }))
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

    fn claim_expired_staged(&self, now: i64) -> RecordsFuture<'_, Vec<StagedObject>> {
        self.run(move |c| async move {
            // One statement: of several instances claiming at once, each row goes to one.
            let sql = "DELETE FROM staged_objects s WHERE expires_at <= $1
                         AND NOT EXISTS (SELECT 1 FROM commit_intents i WHERE i.source = s.key)
                         AND NOT EXISTS (SELECT 1 FROM files f WHERE f.path_name = s.key)
                         AND NOT EXISTS (SELECT 1 FROM versions v WHERE v.path_name = s.key)
                       RETURNING key, upload_id";
            let stmt = c.prepare_cached(sql).await?;
            let rows = c.query(&stmt, &[&now]).await?;
            Ok(rows.iter().map(|r| StagedObject { key: r.get(0), upload_id: r.get(1) }).collect())
        })
    }

    fn has_verified_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, bool> {
        self.run(move |c| async move {
            let sql = "SELECT EXISTS (SELECT 1 FROM files
                         WHERE id = $1 AND path_name = $2 AND verified)";
            let stmt = c.prepare_cached(sql).await?;
            Ok(c.query_one(&stmt, &[&&id.0[..], &path_name]).await?.get(0))
        })
    }

    fn begin_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.run(move |c| async move {
            let sql = "INSERT INTO commit_intents (id, stored_name, file_name, path_name, source,
                           size, cksum, archive, restores)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                       ON CONFLICT (id, stored_name) DO UPDATE SET
                           file_name = excluded.file_name, path_name = excluded.path_name,
                           source = excluded.source, size = excluded.size,
                           cksum = excluded.cksum, archive = excluded.archive,
                           restores = excluded.restores";
            let stmt = c.prepare_cached(sql).await?;
            let (size, cksum) = (intent.size as i64, i64::from(intent.cksum));
            let params: [&(dyn ToSql + Sync); 9] = [
                &&intent.client_id.0[..],
                &intent.stored_name,
                &intent.file_name,
                &intent.path_name,
                &intent.source,
                &size,
                &cksum,
                &intent.archive,
                &intent.restores,
            ];
            c.execute(&stmt, &params).await?;
            Ok(())
        })
    }

    fn finish_commit(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<String>> {
        self.run(move |mut c| async move {
            let tx = c.transaction().await?;
            let pruned = commit::finish(&tx, &intent, ip, keep).await?;
            tx.commit().await?;
            Ok(pruned)
        })
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
            let sql = "INSERT INTO files (id, file_name, path_name, verified)
                       VALUES ($1, $2, $3, false) ON CONFLICT DO NOTHING";
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
                " FROM files f JOIN clients c ON c.id = f.id
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
                    // Protocol-3 uploads only, until protocol 4 is on PostgreSQL.
                    blake3: None,
                    protocol: 3,
                    generation: None,
                })
                .collect())
        })
    }

    fn commit_intents(&self) -> RecordsFuture<'_, Vec<CommitIntent>> {
        self.run(|c| async move {
            let sql = "SELECT id, stored_name, file_name, path_name, source, size, cksum,
                              archive, restores FROM commit_intents";
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
                    v4: None,
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
                " FROM versions v JOIN clients c ON c.id = v.id
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
                    // Protocol 4 on PostgreSQL keeps no hashes yet (issue 16).
                    v4: None,
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
}

/// The transaction of a commit (see [`Records::finish_commit`]), statement by statement.
mod commit {
    use super::*;
    use deadpool_postgres::GenericClient;

    /// Everything a finished commit changes, inside `tx`; the paths of the versions it
    /// forgot.
    pub(super) async fn finish(
        tx: &deadpool_postgres::Transaction<'_>,
        intent: &CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> Result<Vec<String>, PostgresError> {
        let (id, name) = (&intent.client_id.0[..], intent.stored_name.as_str());
        // One commit of a client at a time, across instances: the next version number is
        // read and written in one turn.
        let lock = tx.prepare_cached("SELECT 1 FROM clients WHERE id = $1 FOR UPDATE").await?;
        tx.execute(&lock, &[&id]).await?;
        if let Some(archive) = &intent.archive {
            let sql = "INSERT INTO versions
                         (id, name, version, file_name, path_name, size, cksum, stored_at)
                       SELECT id, $2, (SELECT COALESCE(max(version), 0) + 1 FROM versions
                                       WHERE id = $1 AND name = $2),
                              file_name, $4, size, cksum, stored_at
                       FROM files WHERE id = $1 AND path_name IN ($3, $4) AND verified
                       LIMIT 1";
            let stmt = tx.prepare_cached(sql).await?;
            tx.execute(&stmt, &[&id, &name, &intent.path_name, archive]).await?;
            // The rows of other names that described the replaced object (an object
            // store's: every copy has a key of its own), as SQLite's records do.
            let sql = "DELETE FROM files
                       WHERE id = $1 AND path_name = $2 AND file_name <> $3 AND verified";
            let stmt = tx.prepare_cached(sql).await?;
            tx.execute(&stmt, &[&id, archive, &intent.file_name]).await?;
        }
        if let Some(version) = intent.restores {
            let sql = "DELETE FROM versions WHERE id = $1 AND name = $2 AND version = $3";
            let stmt = tx.prepare_cached(sql).await?;
            tx.execute(&stmt, &[&id, &name, &version]).await?;
        }
        upsert_verified(tx, intent).await?;
        if let Some(ip) = ip {
            let sql = "UPDATE clients SET usual_address = $2 WHERE id = $1";
            let stmt = tx.prepare_cached(sql).await?;
            tx.execute(&stmt, &[&id, &ip.to_string()]).await?;
        }
        delete_intent(tx, intent.client_id, name).await?;
        // The upload is a stored file now, no longer a staged object to clean up.
        let stmt = tx.prepare_cached("DELETE FROM staged_objects WHERE key = $1").await?;
        tx.execute(&stmt, &[&intent.source]).await?;
        prune_versions(tx, id, name, keep).await
    }

    /// The verified row of the file just put in place; a verified row of another name at
    /// its path described the file it replaced, so it goes (as in SQLite's records).
    async fn upsert_verified(
        tx: &deadpool_postgres::Transaction<'_>,
        intent: &CommitIntent,
    ) -> Result<(), PostgresError> {
        let id = &intent.client_id.0[..];
        let sql = "DELETE FROM files
                   WHERE id = $1 AND path_name = $2 AND file_name <> $3 AND verified";
        let stmt = tx.prepare_cached(sql).await?;
        tx.execute(&stmt, &[&id, &intent.path_name, &intent.file_name]).await?;
        let sql = "INSERT INTO files (id, file_name, path_name, verified, size, cksum, stored_at)
                   VALUES ($1, $2, $3, true, $4, $5, now())
                   ON CONFLICT (id, file_name) DO UPDATE SET path_name = excluded.path_name,
                     verified = true, size = excluded.size, cksum = excluded.cksum,
                     stored_at = excluded.stored_at";
        let stmt = tx.prepare_cached(sql).await?;
        let (size, cksum) = (intent.size as i64, i64::from(intent.cksum));
        tx.execute(&stmt, &[&id, &intent.file_name, &intent.path_name, &size, &cksum]).await?;
        Ok(())
    }

    /// Forgets the versions of `name` beyond the newest `keep`; their paths, newest first.
    async fn prune_versions(
        tx: &deadpool_postgres::Transaction<'_>,
        id: &[u8],
        name: &str,
        keep: usize,
    ) -> Result<Vec<String>, PostgresError> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let sql = "DELETE FROM versions WHERE (id, name, version) IN (
                       SELECT id, name, version FROM versions WHERE id = $1 AND name = $2
                       ORDER BY version DESC OFFSET $3)
                   RETURNING path_name, version";
        let stmt = tx.prepare_cached(sql).await?;
        let mut rows: Vec<(i64, String)> = tx
            .query(&stmt, &[&id, &name, &keep])
            .await?
            .iter()
            .map(|r| (r.get(1), r.get(0)))
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.0));
        Ok(rows.into_iter().map(|(_, path)| path).collect())
    }

    /// Forgets the intent of `stored_name` of `id`.
    pub(super) async fn delete_intent(
        c: &impl GenericClient,
        id: ClientId,
        stored_name: &str,
    ) -> Result<(), PostgresError> {
        let sql = "DELETE FROM commit_intents WHERE id = $1 AND stored_name = $2";
        let stmt = c.prepare_cached(sql).await?;
        c.execute(&stmt, &[&&id.0[..], &stored_name]).await?;
        Ok(())
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
