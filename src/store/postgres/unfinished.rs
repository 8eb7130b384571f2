//! Protocol 4's unfinished uploads in PostgreSQL (SQLite's `unfinished_uploads`): one per
//! client and path, written only once its bytes are durable to `durable`.

use super::{PostgresError, hash_of, id_of, size_of};
use crate::protocol::ClientId;
use crate::store::db::{UnfinishedUpload, parts_column, parts_of};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// The columns [`upload`] reads, in its order.
const COLUMNS: &str =
    "id, path, location, size, mtime_ns, durable, prefix_hash, expires_at, upload_id, parts";

fn upload(r: &tokio_postgres::Row) -> UnfinishedUpload {
    UnfinishedUpload {
        client_id: id_of(r.get(0)),
        path: r.get(1),
        location: r.get(2),
        size: size_of(Some(r.get(3))).unwrap_or(0),
        mtime_ns: r.get(4),
        durable: size_of(Some(r.get(5))).unwrap_or(0),
        prefix_hash: hash_of(r.get(6)).unwrap_or_default(),
        expires_at: r.get(7),
        upload_id: r.get(8),
        parts: parts_of(r.get(9)),
    }
}

/// Records (or replaces) the unfinished upload of its client and path.
pub(super) async fn keep(
    c: &impl GenericClient,
    u: &UnfinishedUpload,
) -> Result<(), PostgresError> {
    let sql = "INSERT INTO unfinished_uploads
                 (id, path, location, size, mtime_ns, durable, prefix_hash, expires_at,
                  upload_id, parts)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
               ON CONFLICT (id, path) DO UPDATE SET location = excluded.location,
                 size = excluded.size, mtime_ns = excluded.mtime_ns,
                 durable = excluded.durable, prefix_hash = excluded.prefix_hash,
                 expires_at = excluded.expires_at, upload_id = excluded.upload_id,
                 parts = excluded.parts";
    let stmt = c.prepare_cached(sql).await?;
    let (size, durable) = (u.size as i64, u.durable as i64);
    let parts = parts_column(&u.parts);
    let params: [&(dyn ToSql + Sync); 10] = [
        &&u.client_id.0[..],
        &u.path,
        &u.location,
        &size,
        &u.mtime_ns,
        &durable,
        &&u.prefix_hash[..],
        &u.expires_at,
        &u.upload_id,
        &parts,
    ];
    c.execute(&stmt, &params).await?;
    Ok(())
}

/// The unfinished upload of this client's path, if one is kept.
pub(super) async fn of_path(
    c: &impl GenericClient,
    id: ClientId,
    path: &str,
) -> Result<Option<UnfinishedUpload>, PostgresError> {
    let sql = format!("SELECT {COLUMNS} FROM unfinished_uploads WHERE id = $1 AND path = $2");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_opt(&stmt, &[&&id.0[..], &path]).await?.as_ref().map(upload))
}

/// Every unfinished upload.
pub(super) async fn all(c: &impl GenericClient) -> Result<Vec<UnfinishedUpload>, PostgresError> {
    let sql = format!("SELECT {COLUMNS} FROM unfinished_uploads");
    Ok(c.query(&sql, &[]).await?.iter().map(upload).collect())
}

/// Forgets the unfinished upload of this path whose file is at `location` (never a newer
/// upload's row); true if there was one.
pub(super) async fn forget(
    c: &impl GenericClient,
    id: ClientId,
    path: &str,
    location: &str,
) -> Result<bool, PostgresError> {
    let sql = "DELETE FROM unfinished_uploads WHERE id = $1 AND path = $2 AND location = $3";
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.execute(&stmt, &[&&id.0[..], &path, &location]).await? > 0)
}

/// Takes the unfinished uploads expired by `now` off the records, in one statement: of
/// several instances claiming at once, each row goes to one.
pub(super) async fn claim_expired(
    c: &impl GenericClient,
    now: i64,
) -> Result<Vec<UnfinishedUpload>, PostgresError> {
    let sql = format!("DELETE FROM unfinished_uploads WHERE expires_at <= $1 RETURNING {COLUMNS}");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query(&stmt, &[&now]).await?.iter().map(upload).collect())
}
