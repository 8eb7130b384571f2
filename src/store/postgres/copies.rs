//! Protocol 4's reads and removals of stored copies (`LIST`, `GET`, `RM`, the checks of a
//! `PUT_BEGIN` and of a group commit, quotas) in PostgreSQL: SQLite's (`src/store/db.rs`)
//! with path names compared byte for byte (`COLLATE "C"`), so that pages come in the
//! order protocol 4 promises whatever the database's locale, read by the index of
//! migration 3.

use super::{PostgresError, commit, hash_of, size_of};
use crate::protocol::ClientId;
use crate::store::db::{PathFacts, PathRange, Quota, Removal, Removed, StoredCopy, Usage};
use deadpool_postgres::GenericClient;
use std::collections::HashMap;

/// What [`stored_copy`] reads: one row per path, the verified one where there are two.
const STORED_COPY_SELECT: &str = "SELECT DISTINCT ON (f.stored_path COLLATE \"C\")
        f.file_name, f.stored_path, f.verified, f.size, f.mtime_ns,
        extract(epoch FROM f.stored_at)::BIGINT, f.generation, f.blake3, f.protocol,
        (SELECT count(*) FROM versions v
         WHERE v.id = f.id AND v.name = substr(f.stored_path, strpos(f.stored_path, '/') + 1)),
        f.path_name
     FROM files f";

fn stored_copy(r: &tokio_postgres::Row) -> StoredCopy {
    let path_name: String = r.get(1);
    // `<id hex>/<stored name>` (see `Storage::relative_path`).
    let stored_name = path_name.split_once('/').map_or(path_name.as_str(), |(_, n)| n).to_owned();
    StoredCopy {
        file_name: r.get(0),
        stored_name,
        path_name,
        location: r.get(10),
        verified: r.get(2),
        size: size_of(r.get(3)).unwrap_or(0),
        mtime_ns: r.get::<_, Option<i64>>(4).unwrap_or(0),
        stored_at: r.get::<_, Option<i64>>(5).unwrap_or(0),
        generation: size_of(r.get(6)).unwrap_or(0),
        blake3: r.get::<_, Option<Vec<u8>>>(7).and_then(hash_of),
        protocol: u8::try_from(r.get::<_, i16>(8)).unwrap_or(3),
        versions: size_of(Some(r.get(9))).unwrap_or(0),
    }
}

/// One page of the client's stored copies in byte order of their path names.
pub(super) async fn list_page(
    c: &impl GenericClient,
    id: ClientId,
    range: &PathRange,
) -> Result<Vec<StoredCopy>, PostgresError> {
    let op = if range.inclusive { ">=" } else { ">" };
    let limit = i64::try_from(range.limit).unwrap_or(i64::MAX);
    // An end in the index's range rather than `$3 IS NULL OR …`, so that a short range
    // does not read on to the client's last row.
    let rows = match &range.end {
        Some(end) => {
            let sql = format!(
                "{STORED_COPY_SELECT} WHERE f.id = $1 AND f.stored_path COLLATE \"C\" {op} $2
                   AND f.stored_path COLLATE \"C\" < $3
                 ORDER BY f.stored_path COLLATE \"C\", f.verified DESC LIMIT $4"
            );
            let stmt = c.prepare_cached(&sql).await?;
            c.query(&stmt, &[&&id.0[..], &range.start, end, &limit]).await?
        }
        None => {
            let sql = format!(
                "{STORED_COPY_SELECT} WHERE f.id = $1 AND f.stored_path COLLATE \"C\" {op} $2
                 ORDER BY f.stored_path COLLATE \"C\", f.verified DESC LIMIT $3"
            );
            let stmt = c.prepare_cached(&sql).await?;
            c.query(&stmt, &[&&id.0[..], &range.start, &limit]).await?
        }
    };
    Ok(rows.iter().map(stored_copy).collect())
}

/// The copy stored at `path_name`, if any.
pub(super) async fn copy_at(
    c: &impl GenericClient,
    id: ClientId,
    path_name: &str,
) -> Result<Option<StoredCopy>, PostgresError> {
    let sql = format!(
        "{STORED_COPY_SELECT} WHERE f.id = $1 AND f.stored_path COLLATE \"C\" = $2
         ORDER BY f.stored_path COLLATE \"C\", f.verified DESC"
    );
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_opt(&stmt, &[&&id.0[..], &path_name]).await?.as_ref().map(stored_copy))
}

/// The [`PathFacts`] of `path` (of the client whose path names start with `space`), in
/// one statement: which of its folders hold a copy, whether copies are under it, whether
/// a verified copy is at it. `folders` remembers, across the paths of one group, which
/// folders hold a copy, so that a folder already asked about is not asked again.
pub(super) async fn path_facts(
    c: &impl GenericClient,
    id: ClientId,
    space: &str,
    path: &str,
    folders: &mut HashMap<String, bool>,
) -> Result<PathFacts, PostgresError> {
    let all: Vec<&str> = path.match_indices('/').map(|(at, _)| &path[..at]).collect();
    let unknown: Vec<String> = all
        .iter()
        .filter(|folder| !folders.contains_key(**folder))
        .map(|folder| format!("{space}{folder}"))
        .collect();
    let under = format!("{space}{path}/");
    let end = crate::store::upper_bound(&under).unwrap_or_default();
    let sql = "SELECT
          (SELECT array_agg(DISTINCT stored_path) FROM files
           WHERE id = $1 AND stored_path COLLATE \"C\" = ANY($2)),
          EXISTS (SELECT 1 FROM files WHERE id = $1
                  AND stored_path COLLATE \"C\" >= $3 AND stored_path COLLATE \"C\" < $4),
          EXISTS (SELECT 1 FROM files WHERE id = $1 AND stored_path COLLATE \"C\" = $5
                  AND verified)";
    let stmt = c.prepare_cached(sql).await?;
    let at = format!("{space}{path}");
    let row = c.query_one(&stmt, &[&&id.0[..], &unknown, &under, &end, &at]).await?;
    let found: Vec<String> = row.get::<_, Option<Vec<String>>>(0).unwrap_or_default();
    for folder in &unknown {
        let name = folder[space.len()..].to_owned();
        folders.insert(name, found.contains(folder));
    }
    Ok(PathFacts {
        file_at_folder: all.into_iter().find(|f| folders.get(*f) == Some(&true)).map(Into::into),
        is_folder: row.get(1),
        verified: row.get(2),
    })
}

/// What the client's files take: bytes of its verified files, of its kept versions and
/// of its unfinished uploads (at their declared size), and the number of its files.
pub(super) async fn usage(c: &impl GenericClient, id: ClientId) -> Result<Usage, PostgresError> {
    let sql = "SELECT COALESCE(sum(size), 0)::BIGINT, count(*),
                 (SELECT COALESCE(sum(size), 0)::BIGINT FROM versions WHERE id = $1),
                 (SELECT COALESCE(sum(size), 0)::BIGINT FROM unfinished_uploads WHERE id = $1)
               FROM files WHERE id = $1 AND verified";
    let stmt = c.prepare_cached(sql).await?;
    let row = c.query_one(&stmt, &[&&id.0[..]]).await?;
    let part = |i: usize| size_of(Some(row.get::<_, i64>(i))).unwrap_or(0);
    Ok(Usage { bytes: part(0).saturating_add(part(2)).saturating_add(part(3)), files: part(1) })
}

/// The client's quota (no limits for a client that has none).
pub(super) async fn quota(c: &impl GenericClient, id: ClientId) -> Result<Quota, PostgresError> {
    let sql = "SELECT quota_bytes, quota_files FROM clients WHERE id = $1";
    let stmt = c.prepare_cached(sql).await?;
    let Some(row) = c.query_opt(&stmt, &[&&id.0[..]]).await? else { return Ok(Quota::default()) };
    Ok(Quota { bytes: size_of(row.get(0)), files: size_of(row.get(1)) })
}

/// Sets the client's quota; false when no such client.
pub(super) async fn set_quota(
    c: &impl GenericClient,
    id: ClientId,
    quota: Quota,
) -> Result<bool, PostgresError> {
    let as_sql = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
    let sql = "UPDATE clients SET quota_bytes = $2, quota_files = $3 WHERE id = $1";
    let stmt = c.prepare_cached(sql).await?;
    let n = c.execute(&stmt, &[&&id.0[..], &as_sql(quota.bytes), &as_sql(quota.files)]).await?;
    Ok(n == 1)
}

/// Records the BLAKE3 of a copy stored without one, for that very copy only.
pub(super) async fn record_blake3(
    c: &impl GenericClient,
    id: ClientId,
    path_name: &str,
    generation: u64,
    hash: &[u8; 32],
) -> Result<bool, PostgresError> {
    let generation = (generation != 0).then_some(generation as i64);
    let sql = "UPDATE files SET blake3 = $4
               WHERE id = $1 AND stored_path COLLATE \"C\" = $2 AND verified AND blake3 IS NULL
                 AND generation IS NOT DISTINCT FROM $3";
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, &[&&id.0[..], &path_name, &generation, &&hash[..]]).await? > 0)
}

/// Forgets the copy at `removal.path_name` (every row at that stored path), keeping its record
/// as a version when its blob was kept as one, and the versions beyond `keep`, in `tx`.
pub(super) async fn remove_copy(
    tx: &deadpool_postgres::Transaction<'_>,
    removal: &Removal,
) -> Result<Removed, PostgresError> {
    let (id, name) = (&removal.client_id.0[..], removal.stored_name.as_str());
    commit::lock_client(tx, id).await?;
    // The verified row at the path, and where its bytes are (an object's key on an object
    // store), which the version records.
    let sql = "SELECT size, path_name FROM files
               WHERE id = $1 AND stored_path COLLATE \"C\" = $2 AND verified LIMIT 1";
    let stmt = tx.prepare_cached(sql).await?;
    let verified = tx.query_opt(&stmt, &[&id, &removal.path_name]).await?;
    let bytes = verified.as_ref().and_then(|r| size_of(r.get(0))).unwrap_or(0);
    let kept = match (&removal.archive, &verified) {
        (Some(archive), Some(row)) => {
            let location: &str = row.get(1);
            commit::keep_version(tx, id, name, &[location], archive).await?
        }
        _ => false,
    };
    let sql = "DELETE FROM files WHERE id = $1 AND stored_path COLLATE \"C\" = $2";
    let stmt = tx.prepare_cached(sql).await?;
    let files = tx.execute(&stmt, &[&id, &removal.path_name]).await?;
    let pruned = commit::prune_versions(tx, id, name, removal.keep).await?;
    Ok(Removed { files, bytes, kept, pruned })
}
