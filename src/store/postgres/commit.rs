//! The transactions of commits (see [`Records::finish_commit`](crate::store::Records)),
//! statement by statement: SQLite's `finish_commit_in` (`src/store/db.rs`) in PostgreSQL.

use super::{PostgresError, hash_of, size_of};
use crate::protocol::ClientId;
use crate::store::db::{CommitIntent, FinishedCommit, stored_path};
use deadpool_postgres::GenericClient;
use std::net::IpAddr;
use tokio_postgres::types::ToSql;

/// Records one commit intent (see [`crate::store::Records::begin_commit`]).
pub(super) async fn insert_intent(
    c: &impl GenericClient,
    intent: &CommitIntent,
) -> Result<(), PostgresError> {
    let sql = "INSERT INTO commit_intents (id, stored_name, file_name, path_name, source,
                   size, cksum, archive, restores, blake3, mtime_ns)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (id, stored_name) DO UPDATE SET
                   file_name = excluded.file_name, path_name = excluded.path_name,
                   source = excluded.source, size = excluded.size,
                   cksum = excluded.cksum, archive = excluded.archive,
                   restores = excluded.restores, blake3 = excluded.blake3,
                   mtime_ns = excluded.mtime_ns";
    let stmt = c.prepare_cached(sql).await?;
    let (size, cksum) = (intent.size as i64, i64::from(intent.cksum));
    let blake3 = intent.v4.map(|v| v.blake3.to_vec());
    let mtime_ns = intent.v4.map(|v| v.mtime_ns);
    let params: [&(dyn ToSql + Sync); 11] = [
        &&intent.client_id.0[..],
        &intent.stored_name,
        &intent.file_name,
        &intent.path_name,
        &intent.source,
        &size,
        &cksum,
        &intent.archive,
        &intent.restores,
        &blake3,
        &mtime_ns,
    ];
    c.execute(&stmt, &params).await?;
    Ok(())
}

/// Everything a finished commit changes, inside `tx`: the copy it replaced kept as a
/// version (when `intent.archive` is set), the version it restored dropped, its row
/// verified with the next generation, `ip` as the client's usual address, its intent and
/// staged object forgotten, and the versions beyond `keep` forgotten (their paths
/// returned for the caller to delete).
pub(super) async fn finish(
    tx: &deadpool_postgres::Transaction<'_>,
    intent: &CommitIntent,
    ip: Option<IpAddr>,
    keep: usize,
) -> Result<FinishedCommit, PostgresError> {
    let (id, name) = (&intent.client_id.0[..], intent.stored_name.as_str());
    lock_client(tx, id).await?;
    if let Some(archive) = &intent.archive {
        // The replaced copy is the row at the new path (local storage) or at the archive
        // key itself (an object store, where every copy has a key of its own).
        let from = [intent.path_name.as_str(), archive.as_str()];
        keep_version(tx, id, name, &from, archive).await?;
    }
    if let Some(version) = intent.restores {
        let sql = "DELETE FROM versions WHERE id = $1 AND name = $2 AND version = $3";
        let stmt = tx.prepare_cached(sql).await?;
        tx.execute(&stmt, &[&id, &name, &version]).await?;
    }
    // An object store keeps the replaced object as the version itself, with no
    // `--keep-versions` (it is pruned below at once, and deleted by the caller).
    let kept_version = match &intent.archive {
        Some(archive) if keep > 0 => {
            let sql = "SELECT EXISTS (SELECT 1 FROM versions WHERE path_name = $1)";
            let stmt = tx.prepare_cached(sql).await?;
            tx.query_one(&stmt, &[archive]).await?.get::<_, bool>(0)
        }
        _ => false,
    };
    let stmt = tx.prepare_cached("SELECT nextval('file_generation')").await?;
    let generation: i64 = tx.query_one(&stmt, &[]).await?.get(0);
    if let Some(archive) = &intent.archive {
        // The rows of other names that described the replaced object (an object
        // store's: every copy has a key of its own), as SQLite's records do.
        let sql = "DELETE FROM files
                   WHERE id = $1 AND path_name = $2 AND file_name <> $3 AND verified";
        let stmt = tx.prepare_cached(sql).await?;
        tx.execute(&stmt, &[&id, archive, &intent.file_name]).await?;
    }
    let stored_at = upsert_verified(tx, intent, generation).await?;
    if let Some(ip) = ip {
        let sql = "UPDATE clients SET usual_address = $2 WHERE id = $1";
        let stmt = tx.prepare_cached(sql).await?;
        tx.execute(&stmt, &[&id, &ip.to_string()]).await?;
    }
    delete_intent(tx, intent.client_id, name).await?;
    // The upload is a stored file now, no longer a staged object to clean up.
    let stmt = tx.prepare_cached("DELETE FROM staged_objects WHERE key = $1").await?;
    tx.execute(&stmt, &[&intent.source]).await?;
    let pruned = prune_versions(tx, id, name, keep).await?;
    Ok(FinishedCommit {
        pruned,
        generation: size_of(Some(generation)).unwrap_or(0),
        stored_at,
        kept_version,
    })
}

/// Takes the client's row lock for the rest of `tx`: one change of a client's files at a
/// time, across instances, so that a version number is the next one of its name.
pub(super) async fn lock_client(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &[u8],
) -> Result<(), PostgresError> {
    let lock = tx.prepare_cached("SELECT 1 FROM clients WHERE id = $1 FOR UPDATE").await?;
    tx.execute(&lock, &[&id]).await?;
    Ok(())
}

/// Records the verified copy at one of `from` as the next version of `name`, kept at
/// `archive`, with all it knew (protocol 4's hash, mtime and generation too); whether
/// there was one.
pub(super) async fn keep_version(
    tx: &deadpool_postgres::Transaction<'_>,
    id: &[u8],
    name: &str,
    from: &[&str],
    archive: &str,
) -> Result<bool, PostgresError> {
    let sql = "INSERT INTO versions
                 (id, name, version, file_name, path_name, size, cksum, stored_at,
                  blake3, mtime_ns, generation, protocol)
               SELECT id, $2, (SELECT COALESCE(max(version), 0) + 1 FROM versions
                               WHERE id = $1 AND name = $2),
                      file_name, $4, size, cksum, stored_at, blake3, mtime_ns,
                      generation, protocol
               FROM files WHERE id = $1 AND path_name = ANY($3) AND verified
               LIMIT 1";
    let stmt = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&stmt, &[&id, &name, &from, &archive]).await? > 0)
}

/// The verified row of the file just put in place, with protocol 4's columns; a verified
/// row of another name at its path described the file it replaced, so it goes (as in
/// SQLite's records). Returns when it was stored, seconds since 1970.
async fn upsert_verified(
    tx: &deadpool_postgres::Transaction<'_>,
    intent: &CommitIntent,
    generation: i64,
) -> Result<i64, PostgresError> {
    let id = &intent.client_id.0[..];
    let stored = stored_path(intent.client_id, &intent.stored_name);
    let sql = "DELETE FROM files WHERE id = $1 AND stored_path COLLATE \"C\" = $2
                 AND file_name <> $3 AND verified";
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, &[&id, &stored, &intent.file_name]).await?;
    let sql = "INSERT INTO files (id, file_name, path_name, verified, size, cksum, stored_at,
                   blake3, mtime_ns, generation, protocol, stored_path)
               VALUES ($1, $2, $3, true, $4, $5, now(), $6, $7, $8, $9, $10)
               ON CONFLICT (id, file_name) DO UPDATE SET path_name = excluded.path_name,
                 stored_path = excluded.stored_path,
                 verified = true, size = excluded.size, cksum = excluded.cksum,
                 stored_at = excluded.stored_at, blake3 = excluded.blake3,
                 mtime_ns = excluded.mtime_ns, generation = excluded.generation,
                 protocol = excluded.protocol
               RETURNING extract(epoch FROM stored_at)::BIGINT";
    let stmt = tx.prepare_cached(sql).await?;
    let (size, cksum) = (intent.size as i64, i64::from(intent.cksum));
    let blake3 = intent.v4.map(|v| v.blake3.to_vec());
    let mtime_ns = intent.v4.map(|v| v.mtime_ns);
    let protocol: i16 = if intent.v4.is_some() { 4 } else { 3 };
    let params: [&(dyn ToSql + Sync); 10] = [
        &id,
        &intent.file_name,
        &intent.path_name,
        &size,
        &cksum,
        &blake3,
        &mtime_ns,
        &generation,
        &protocol,
        &stored,
    ];
    Ok(tx.query_one(&stmt, &params).await?.get(0))
}

/// Forgets the versions of `name` beyond the newest `keep`; their paths, newest first.
pub(super) async fn prune_versions(
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
    let mut rows: Vec<(i64, String)> =
        tx.query(&stmt, &[&id, &name, &keep]).await?.iter().map(|r| (r.get(1), r.get(0))).collect();
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

/// The BLAKE3 and mtime columns of an intent or a version back to protocol 4's content.
pub(super) fn v4_content(
    blake3: Option<Vec<u8>>,
    mtime_ns: Option<i64>,
) -> Option<crate::store::db::V4Content> {
    let blake3 = hash_of(blake3?)?;
    Some(crate::store::db::V4Content { blake3, mtime_ns: mtime_ns.unwrap_or(0) })
}
