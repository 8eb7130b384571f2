//! What `securexfer db migrate` writes into PostgreSQL: the rows of a single-machine
//! deployment's SQLite records, column for column (the two schemas are one translation,
//! `schema.rs`), each copy's row pointing at the object its bytes were written to.
//!
//! Every write is an upsert keyed as the source's rows are, so a second run after an
//! interruption finds what the first one did and changes only what differs: the source
//! is the authority until the operator switches over.

use super::{PostgresError, PostgresRecords};
use crate::store::migrate::{ClientRow, CopyRow, InviteRow, VersionRow};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// SQLite's `YYYY-MM-DD HH:MM:SS` (UTC) as a `TIMESTAMPTZ`; NULL stays NULL.
const UTC_IN: &str = "(($X::TEXT) || ' UTC')::TIMESTAMPTZ";

fn utc_in(n: usize) -> String {
    UTC_IN.replace("$X", &format!("${n}"))
}

/// What the target holds for a copy or version the source has: enough to tell whether it
/// is the same (then nothing is written again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetCopy {
    /// Its object's key (or, for a copy never stored, its name).
    pub path_name: String,
    pub verified: bool,
    pub size: Option<i64>,
    pub cksum: Option<i64>,
    pub blake3: Option<Vec<u8>>,
    pub generation: Option<i64>,
}

impl TargetCopy {
    fn of(row: &tokio_postgres::Row) -> Self {
        TargetCopy {
            path_name: row.get(0),
            verified: row.get(1),
            size: row.get(2),
            cksum: row.get(3),
            blake3: row.get(4),
            generation: row.get(5),
        }
    }
}

impl PostgresRecords {
    /// Writes the client's row as the source has it. `Err` names a conflict: another
    /// client of the target has its name or its key.
    pub async fn import_client(&self, row: &ClientRow) -> Result<(), PostgresError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO clients (id, name, public_key, last_seen, aes_key, usual_address,
                 key_spki, key_fingerprint, key_attached_at, protocol3_allowed, quota_bytes,
                 quota_files)
             VALUES ($1, $2, $3, {}, $5, $6, $7, $8, {}, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name,
                 public_key = excluded.public_key, last_seen = excluded.last_seen,
                 aes_key = excluded.aes_key, usual_address = excluded.usual_address,
                 key_spki = excluded.key_spki, key_fingerprint = excluded.key_fingerprint,
                 key_attached_at = excluded.key_attached_at,
                 protocol3_allowed = excluded.protocol3_allowed,
                 quota_bytes = excluded.quota_bytes, quota_files = excluded.quota_files",
            utc_in(4),
            utc_in(9)
        );
        let stmt = c.prepare_cached(&sql).await?;
        let params: [&(dyn ToSql + Sync); 12] = [
            &row.id,
            &row.name,
            &row.public_key,
            &row.last_seen,
            &row.aes_key,
            &row.usual_address,
            &row.key_spki,
            &row.key_fingerprint,
            &row.key_attached_at,
            &row.protocol3_allowed,
            &row.quota_bytes,
            &row.quota_files,
        ];
        c.execute(&stmt, &params).await?;
        Ok(())
    }

    /// Writes an invitation's row (used or not) as the source has it.
    pub async fn import_invite(&self, row: &InviteRow) -> Result<(), PostgresError> {
        let c = self.pool.get().await?;
        let sql = format!(
            "INSERT INTO invites (token_hash, name, created_at, expires_at, used_at, used_by)
             VALUES ($1, $2, {}, {}, {}, $6)
             ON CONFLICT (token_hash) DO UPDATE SET used_at = excluded.used_at,
                 used_by = excluded.used_by",
            utc_in(3),
            utc_in(4),
            utc_in(5)
        );
        let stmt = c.prepare_cached(&sql).await?;
        let params: [&(dyn ToSql + Sync); 6] = [
            &row.token_hash,
            &row.name,
            &row.created_at,
            &row.expires_at,
            &row.used_at,
            &row.used_by,
        ];
        c.execute(&stmt, &params).await?;
        Ok(())
    }

    /// What the target has for the source's file row `(id, file_name)`.
    pub async fn target_copy(
        &self,
        id: &[u8],
        file_name: &str,
    ) -> Result<Option<TargetCopy>, PostgresError> {
        let c = self.pool.get().await?;
        let sql = "SELECT path_name, verified, size, cksum, blake3, generation FROM files
                   WHERE id = $1 AND file_name = $2";
        let stmt = c.prepare_cached(sql).await?;
        Ok(c.query_opt(&stmt, &[&id, &file_name]).await?.as_ref().map(TargetCopy::of))
    }

    /// What the target has for the source's version `(id, name, version)`.
    pub async fn target_version(
        &self,
        id: &[u8],
        name: &str,
        version: i64,
    ) -> Result<Option<TargetCopy>, PostgresError> {
        let c = self.pool.get().await?;
        let sql = "SELECT path_name, true, size, cksum, blake3, generation FROM versions
                   WHERE id = $1 AND name = $2 AND version = $3";
        let stmt = c.prepare_cached(sql).await?;
        Ok(c.query_opt(&stmt, &[&id, &name, &version]).await?.as_ref().map(TargetCopy::of))
    }

    /// Records `rows` (the source's rows of one stored file) at `key`, in one transaction
    /// that also forgets `key` as a staged object. Returns the keys the rows pointed at
    /// before that no row names any more, for their objects to be deleted.
    pub async fn import_copies(
        &self,
        rows: &[CopyRow],
        key: &str,
    ) -> Result<Vec<String>, PostgresError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let mut before = Vec::new();
        for row in rows {
            let sql = "SELECT path_name FROM files
                       WHERE id = $1 AND file_name = $2 AND verified FOR UPDATE";
            let stmt = tx.prepare_cached(sql).await?;
            if let Some(old) = tx.query_opt(&stmt, &[&row.id, &row.file_name]).await? {
                before.push(old.get::<_, String>(0));
            }
            let sql = format!(
                "INSERT INTO files (id, file_name, path_name, verified, size, cksum, stored_at,
                     blake3, mtime_ns, generation, protocol, stored_path)
                 VALUES ($1, $2, $3, $4, $5, $6, {}, $8, $9, $10, $11, $12)
                 ON CONFLICT (id, file_name) DO UPDATE SET path_name = excluded.path_name,
                     stored_path = excluded.stored_path,
                     verified = excluded.verified, size = excluded.size,
                     cksum = excluded.cksum, stored_at = excluded.stored_at,
                     blake3 = excluded.blake3, mtime_ns = excluded.mtime_ns,
                     generation = excluded.generation, protocol = excluded.protocol",
                utc_in(7)
            );
            let stmt = tx.prepare_cached(&sql).await?;
            let path_name = if row.verified { key } else { row.path_name.as_str() };
            // The source is a storage directory: its path name is the copy's place in the
            // client's space, which the target keeps as it was.
            let params: [&(dyn ToSql + Sync); 12] = [
                &row.id,
                &row.file_name,
                &path_name,
                &row.verified,
                &row.content.size,
                &row.content.cksum,
                &row.content.stored_at,
                &row.content.blake3,
                &row.content.mtime_ns,
                &row.content.generation,
                &row.content.protocol,
                &row.path_name,
            ];
            tx.execute(&stmt, &params).await?;
        }
        settle(tx, before, key).await
    }

    /// Records the source's version `row` at `key` (as [`Self::import_copies`]).
    pub async fn import_version(
        &self,
        row: &VersionRow,
        key: &str,
    ) -> Result<Vec<String>, PostgresError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let sql = "SELECT path_name FROM versions
                   WHERE id = $1 AND name = $2 AND version = $3 FOR UPDATE";
        let stmt = tx.prepare_cached(sql).await?;
        let before: Vec<String> = tx
            .query_opt(&stmt, &[&row.id, &row.name, &row.version])
            .await?
            .map(|r| r.get(0))
            .into_iter()
            .collect();
        let sql = format!(
            "INSERT INTO versions (id, name, version, file_name, path_name, size, cksum,
                 stored_at, blake3, mtime_ns, generation, protocol)
             VALUES ($1, $2, $3, $4, $5, $6, $7, {}, $9, $10, $11, $12)
             ON CONFLICT (id, name, version) DO UPDATE SET file_name = excluded.file_name,
                 path_name = excluded.path_name, size = excluded.size,
                 cksum = excluded.cksum, stored_at = excluded.stored_at,
                 blake3 = excluded.blake3, mtime_ns = excluded.mtime_ns,
                 generation = excluded.generation, protocol = excluded.protocol",
            utc_in(8)
        );
        let stmt = tx.prepare_cached(&sql).await?;
        let params: [&(dyn ToSql + Sync); 12] = [
            &row.id,
            &row.name,
            &row.version,
            &row.file_name,
            &key,
            &row.content.size,
            &row.content.cksum,
            &row.content.stored_at,
            &row.content.blake3,
            &row.content.mtime_ns,
            &row.content.generation,
            &row.content.protocol,
        ];
        tx.execute(&stmt, &params).await?;
        settle(tx, before, key).await
    }

    /// Raises the generation sequence to at least `generation`, so that the next commit's
    /// copy is newer than every one moved in.
    pub async fn raise_generation(&self, generation: i64) -> Result<(), PostgresError> {
        let c = self.pool.get().await?;
        let sql = "SELECT setval('file_generation', GREATEST(last_value, $1)) FROM file_generation";
        c.query_one(sql, &[&generation.max(1)]).await?;
        Ok(())
    }
}

/// Ends an import's transaction: `key` is a recorded object now, no longer a staged one;
/// returns which of the keys the rows named `before` no row names any more.
async fn settle(
    tx: deadpool_postgres::Transaction<'_>,
    before: Vec<String>,
    key: &str,
) -> Result<Vec<String>, PostgresError> {
    let stmt = tx.prepare_cached("DELETE FROM staged_objects WHERE key = $1").await?;
    tx.execute(&stmt, &[&key]).await?;
    let gone = unnamed(&tx, before, key).await?;
    tx.commit().await?;
    Ok(gone)
}

/// Of `keys`, the ones other than `kept` that no file or version row names.
async fn unnamed(
    c: &impl GenericClient,
    mut keys: Vec<String>,
    kept: &str,
) -> Result<Vec<String>, PostgresError> {
    keys.sort();
    keys.dedup();
    let sql = "SELECT NOT EXISTS (SELECT 1 FROM files WHERE path_name = $1 AND verified)
                  AND NOT EXISTS (SELECT 1 FROM versions WHERE path_name = $1)";
    let stmt = c.prepare_cached(sql).await?;
    let mut gone = Vec::new();
    for key in keys.into_iter().filter(|k| k != kept) {
        if c.query_one(&stmt, &[&key]).await?.get::<_, bool>(0) {
            gone.push(key);
        }
    }
    Ok(gone)
}
