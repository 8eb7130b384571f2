//! Protocol 4's client keys and invitations in PostgreSQL: registration with a key (an
//! invitation consumed in the same transaction), upgrades of protocol-3 records, and the
//! invitations `db invite` makes.

use super::{CLIENT_COLUMNS, PostgresError, client_row};
use crate::protocol::ClientId;
use crate::store::db::{Attached, ClientKey, ClientRecord, InviteRecord, NewClient, Registered};
use deadpool_postgres::GenericClient;
use std::time::Duration;

/// The SQLSTATE of a unique violation: a key another registration took in the meantime.
fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// The client whose key has this fingerprint.
pub(super) async fn client_by_key(
    c: &impl GenericClient,
    fingerprint: &[u8; 32],
) -> Result<Option<ClientRecord>, PostgresError> {
    let sql = format!("SELECT {CLIENT_COLUMNS} FROM clients WHERE key_fingerprint = $1");
    let stmt = c.prepare_cached(&sql).await?;
    Ok(c.query_opt(&stmt, &[&&fingerprint[..]]).await?.as_ref().map(client_row))
}

/// Registers a protocol-4 client, consuming its invitation in the same transaction: of
/// two registrations racing with one token (on any instances), the second finds it used.
pub(super) async fn register_with_key(
    c: &mut deadpool_postgres::Object,
    new: &NewClient,
) -> Result<Registered, PostgresError> {
    let tx = c.transaction().await?;
    if client_by_key(&tx, &new.key.fingerprint).await?.is_some() {
        return Ok(Registered::KeyTaken);
    }
    if let Some(hash) = &new.token_hash {
        let sql = "UPDATE invites SET used_at = now(), used_by = $2
                   WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
                     AND (name IS NULL OR name = $3)";
        let stmt = tx.prepare_cached(sql).await?;
        if tx.execute(&stmt, &[&&hash[..], &&new.id.0[..], &new.name]).await? != 1 {
            return Ok(Registered::TokenRefused);
        }
    }
    let sql = "INSERT INTO clients
                 (id, name, last_seen, usual_address, key_spki, key_fingerprint,
                  key_attached_at, protocol3_allowed)
               VALUES ($1, $2, now(), $3, $4, $5, now(), false)
               ON CONFLICT (name) DO NOTHING";
    let stmt = tx.prepare_cached(sql).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&&new.id.0[..], &new.name, &new.ip.to_string(), &new.key.spki, &&new.key.fingerprint[..]];
    match tx.execute(&stmt, &params).await {
        Ok(1) => {}
        Ok(_) => return Ok(Registered::NameTaken),
        Err(e) if is_unique_violation(&e) => return Ok(Registered::KeyTaken),
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(Registered::Done)
}

/// Attaches a protocol-4 key to the record `id` while it has none, and refuses protocol 3
/// for it from then on; the record's row is locked, so of two upgrades one wins.
pub(super) async fn attach_key(
    c: &mut deadpool_postgres::Object,
    id: ClientId,
    key: &ClientKey,
) -> Result<Attached, PostgresError> {
    let tx = c.transaction().await?;
    let sql = "SELECT key_fingerprint FROM clients WHERE id = $1 FOR UPDATE";
    let stmt = tx.prepare_cached(sql).await?;
    let Some(row) = tx.query_opt(&stmt, &[&&id.0[..]]).await? else {
        return Ok(Attached::NoClient);
    };
    if row.get::<_, Option<Vec<u8>>>(0).is_some() {
        return Ok(Attached::AlreadyHasKey);
    }
    if client_by_key(&tx, &key.fingerprint).await?.is_some() {
        return Ok(Attached::KeyTaken);
    }
    let sql = "UPDATE clients SET key_spki = $2, key_fingerprint = $3,
                 key_attached_at = now(), protocol3_allowed = false
               WHERE id = $1 AND key_fingerprint IS NULL";
    let stmt = tx.prepare_cached(sql).await?;
    match tx.execute(&stmt, &[&&id.0[..], &key.spki, &&key.fingerprint[..]]).await {
        Ok(1) => {}
        Ok(_) => return Ok(Attached::AlreadyHasKey),
        Err(e) if is_unique_violation(&e) => return Ok(Attached::KeyTaken),
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    Ok(Attached::Done)
}

/// Records an invitation: the SHA-256 of its token, the name it is for, how long it lasts.
pub(super) async fn create_invite(
    c: &impl GenericClient,
    token_hash: &[u8; 32],
    name: Option<&str>,
    valid_for: Duration,
) -> Result<(), PostgresError> {
    let sql = "INSERT INTO invites (token_hash, name, created_at, expires_at)
               VALUES ($1, $2, now(), now() + make_interval(secs => $3))";
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, &[&&token_hash[..], &name, &(valid_for.as_secs() as f64)]).await?;
    Ok(())
}

/// Every invitation, oldest first, as `db invite --list` shows them.
pub(super) async fn invites(c: &impl GenericClient) -> Result<Vec<InviteRecord>, PostgresError> {
    let sql = concat!(
        "SELECT encode(substr(i.token_hash, 1, 8), 'hex'), i.name, ",
        utc!("i.created_at"),
        ", ",
        utc!("i.expires_at"),
        ", ",
        utc!("i.used_at"),
        ", c.name, i.used_at IS NULL AND i.expires_at <= now()
         FROM invites i LEFT JOIN clients c ON c.id = i.used_by
         ORDER BY i.created_at, i.token_hash"
    );
    let rows = c.query(sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| InviteRecord {
            id: r.get(0),
            name: r.get(1),
            created_at: r.get(2),
            expires_at: r.get(3),
            used_at: r.get(4),
            used_by: r.get(5),
            expired: r.get(6),
        })
        .collect())
}
