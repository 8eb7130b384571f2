//! Protocol 3's sessions in PostgreSQL, for every instance: the latest key exchange of
//! each client and address, recent registrations, and uploads made on a borrowed session
//! that wait for a verdict (see [`crate::store::SharedSession`]). Each function is one
//! statement, so two instances racing for one row each see it whole or not at all.

use super::{PostgresError, cksum_of, id_of, size_of};
use crate::protocol::ClientId;
use crate::store::records::{PendingTimes, SharedPending, SharedSession};
use deadpool_postgres::GenericClient;
use std::net::IpAddr;
use tokio_postgres::types::ToSql;

use crate::clock::{millis, unix_ms};

pub(super) async fn publish(
    c: &impl GenericClient,
    s: &SharedSession,
) -> Result<(), PostgresError> {
    let sql = "INSERT INTO sessions (id, ip, token, aes_key, usual_ip, last_used)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (id, ip) DO UPDATE SET token = excluded.token,
                 aes_key = excluded.aes_key, usual_ip = excluded.usual_ip,
                 last_used = excluded.last_used";
    let stmt = c.prepare_cached(sql).await?;
    let usual = s.usual_ip.map(|ip| ip.to_string());
    let params: [&(dyn ToSql + Sync); 6] =
        [&&s.id.0[..], &s.ip.to_string(), &&s.token[..], &&s.aes_key[..], &usual, &unix_ms()];
    c.execute(&stmt, &params).await?;
    Ok(())
}

pub(super) async fn find(
    c: &impl GenericClient,
    id: ClientId,
    ip: IpAddr,
    used_after: i64,
) -> Result<Option<SharedSession>, PostgresError> {
    let sql = "UPDATE sessions SET last_used = GREATEST(last_used, $4)
               WHERE id = $1 AND ip = $2 AND last_used > $3
               RETURNING token, aes_key, usual_ip";
    let stmt = c.prepare_cached(sql).await?;
    let row = c.query_opt(&stmt, &[&&id.0[..], &ip.to_string(), &used_after, &unix_ms()]).await?;
    Ok(row.and_then(|r| {
        let (token, aes_key): (&[u8], &[u8]) = (r.get(0), r.get(1));
        Some(SharedSession {
            token: token.try_into().ok()?,
            id,
            ip,
            aes_key: aes_key.try_into().ok()?,
            usual_ip: r.get::<_, Option<String>>(2).and_then(|ip| ip.parse().ok()),
        })
    }))
}

pub(super) async fn end(c: &impl GenericClient, token: [u8; 16]) -> Result<usize, PostgresError> {
    let sql = "WITH ended AS (DELETE FROM sessions WHERE token = $1),
                    noted AS (INSERT INTO ended_sessions (token, at) VALUES ($1, $2)
                      ON CONFLICT (token) DO NOTHING),
                    dropped AS (DELETE FROM pending_uploads WHERE token = $1 RETURNING 1)
               SELECT count(*) FROM dropped";
    let stmt = c.prepare_cached(sql).await?;
    let n: i64 = c.query_one(&stmt, &[&&token[..], &unix_ms()]).await?.get(0);
    Ok(n as usize)
}

/// Whether the session `token` was ended (by [`end`], on any instance).
pub(super) async fn ended(c: &impl GenericClient, token: [u8; 16]) -> Result<bool, PostgresError> {
    let sql = "SELECT EXISTS (SELECT 1 FROM ended_sessions WHERE token = $1)";
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, &[&&token[..]]).await?.get(0))
}

pub(super) async fn note_registration(
    c: &impl GenericClient,
    id: ClientId,
    ip: IpAddr,
) -> Result<(), PostgresError> {
    let sql = "INSERT INTO session_registrations (id, ip, at) VALUES ($1, $2, $3)
               ON CONFLICT (id, ip) DO UPDATE SET at = excluded.at";
    let stmt = c.prepare_cached(sql).await?;
    c.execute(&stmt, &[&&id.0[..], &ip.to_string(), &unix_ms()]).await?;
    Ok(())
}

pub(super) async fn registered_since(
    c: &impl GenericClient,
    id: ClientId,
    ip: IpAddr,
    after: i64,
) -> Result<bool, PostgresError> {
    let sql = "SELECT EXISTS (SELECT 1 FROM session_registrations
                 WHERE id = $1 AND ip = $2 AND at > $3)";
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, &[&&id.0[..], &ip.to_string(), &after]).await?.get(0))
}

pub(super) async fn put_pending(
    c: &mut deadpool_postgres::Object,
    p: &SharedPending,
    max: usize,
) -> Result<bool, PostgresError> {
    let tx = c.transaction().await?;
    // An upload of the same name already waiting is replaced: its staged object is made
    // expired, for the next cleaner to delete at once rather than at its own time (as an
    // instance deletes a replaced upload it holds itself).
    let sql = "WITH replaced AS (DELETE FROM pending_uploads WHERE token = $1 AND file_name = $2
                 RETURNING location)
               UPDATE staged_objects s SET expires_at = 0 FROM replaced r
               WHERE s.key = r.location";
    let stmt = tx.prepare_cached(sql).await?;
    tx.execute(&stmt, &[&&p.token[..], &p.file_name]).await?;
    // Only on a live session, and not beyond the client's limit (counted over every
    // instance; two racing inserts may both pass, which the limit can bear).
    let sql = "INSERT INTO pending_uploads
                 (token, file_name, id, stored_name, location, size, cksum, arrived)
               SELECT $1, $2, $3, $4, $5, $6, $7, $8
               WHERE EXISTS (SELECT 1 FROM sessions WHERE token = $1 AND id = $3)
                 AND (SELECT count(*) FROM pending_uploads
                      WHERE id = $3 AND NOT (token = $1 AND file_name = $2)) < $9
               ON CONFLICT (token, file_name) DO UPDATE SET stored_name = excluded.stored_name,
                 location = excluded.location, size = excluded.size, cksum = excluded.cksum,
                 arrived = excluded.arrived";
    let stmt = tx.prepare_cached(sql).await?;
    let (size, cksum, max) = (p.size as i64, i64::from(p.cksum), max as i64);
    let params: [&(dyn ToSql + Sync); 9] = [
        &&p.token[..],
        &p.file_name,
        &&p.id.0[..],
        &p.stored_name,
        &p.location,
        &size,
        &cksum,
        &p.arrived,
        &max,
    ];
    let kept = tx.execute(&stmt, &params).await? == 1;
    tx.commit().await?;
    Ok(kept)
}

pub(super) async fn take_pending(
    c: &impl GenericClient,
    token: [u8; 16],
    file_name: &str,
    times: PendingTimes,
) -> Result<Option<SharedPending>, PostgresError> {
    // The row goes whatever happens (one that arrived too long ago, or whose object is
    // being cleaned, can no longer be confirmed); it is handed out only with its staged
    // object held. The staged row's lock orders this against a cleaner's claim, which
    // takes only rows expired by now and leases them for less than `safe_until`.
    let sql = "WITH taken AS (
                 DELETE FROM pending_uploads WHERE token = $1 AND file_name = $2
                 RETURNING id, stored_name, location, size, cksum, arrived),
               held AS (
                 UPDATE staged_objects s SET expires_at = $5 FROM taken t
                 WHERE s.key = t.location AND t.arrived > $3 AND s.expires_at > $4
                 RETURNING s.key)
               SELECT t.id, t.stored_name, t.location, t.size, t.cksum, t.arrived
               FROM taken t JOIN held h ON h.key = t.location";
    let stmt = c.prepare_cached(sql).await?;
    let params: [&(dyn ToSql + Sync); 5] =
        [&&token[..], &file_name, &times.arrived_after, &times.safe_until, &times.held_until];
    let row = c.query_opt(&stmt, &params).await?;
    Ok(row.map(|r| SharedPending {
        token,
        id: id_of(r.get(0)),
        file_name: file_name.to_owned(),
        stored_name: r.get(1),
        location: r.get(2),
        size: size_of(Some(r.get(3))).unwrap_or(0),
        cksum: cksum_of(Some(r.get(4))).unwrap_or(0),
        arrived: r.get(5),
    }))
}

pub(super) async fn expire(
    c: &impl GenericClient,
    used_after: i64,
    arrived_after: i64,
) -> Result<(usize, usize), PostgresError> {
    // Uploads of sessions gone (ended, replaced or expired in an earlier round) go too.
    let quiet = millis(crate::server::backoff::QUIET);
    let sql = "WITH idle AS (DELETE FROM sessions WHERE last_used <= $1 RETURNING 1),
                    forgotten AS (DELETE FROM backoff
                      WHERE until_ms + failures::bigint * $3 <= $4),
                    refilled AS (DELETE FROM registration_buckets
                      WHERE at_ms <= $4 - 3600000),
                    registrations AS (DELETE FROM session_registrations WHERE at <= $1),
                    ended AS (DELETE FROM ended_sessions WHERE at <= $4 - 86400000),
                    stale AS (DELETE FROM pending_uploads p WHERE arrived <= $2
                      OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.token = p.token)
                      RETURNING 1)
               SELECT (SELECT count(*) FROM idle), (SELECT count(*) FROM stale)";
    let stmt = c.prepare_cached(sql).await?;
    let row = c.query_one(&stmt, &[&used_after, &arrived_after, &quiet, &unix_ms()]).await?;
    Ok((row.get::<_, i64>(0) as usize, row.get::<_, i64>(1) as usize))
}

pub(super) async fn note_padding_failure(
    c: &impl GenericClient,
    keys: &[String],
    now: i64,
) -> Result<i64, PostgresError> {
    use crate::server::backoff::{FIRST_DELAY, MAX_DELAY, QUIET};
    // One failure forgotten per quiet period since the block ended, then one more
    // counted; the block is FIRST_DELAY doubled per further failure, at most MAX_DELAY,
    // and never shortened. Each key is one row, updated in place under its row lock.
    let sql = "WITH counted AS (
                 SELECT k.key, COALESCE(GREATEST(b.failures
                   - (GREATEST($2 - b.until_ms, 0) / $3)::int, 0), 0) + 1 AS failures,
                   COALESCE(b.until_ms, 0) AS until_ms
                 FROM unnest($1::text[]) AS k(key) LEFT JOIN backoff b ON b.key = k.key)
               INSERT INTO backoff (key, failures, until_ms)
               SELECT key, LEAST(failures, 64),
                 GREATEST(until_ms, $2 + LEAST($4::bigint << LEAST(failures - 1, 31), $5))
               FROM counted
               ON CONFLICT (key) DO UPDATE SET failures = excluded.failures,
                 until_ms = GREATEST(backoff.until_ms, excluded.until_ms)
               RETURNING until_ms";
    let stmt = c.prepare_cached(sql).await?;
    let (quiet, first, max) = (millis(QUIET), millis(FIRST_DELAY), millis(MAX_DELAY));
    let rows = c.query(&stmt, &[&keys, &now, &quiet, &first, &max]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).max().unwrap_or(now))
}

pub(super) async fn blocked_until(
    c: &impl GenericClient,
    keys: &[String],
    now: i64,
) -> Result<Option<i64>, PostgresError> {
    let sql = "SELECT max(until_ms) FROM backoff WHERE key = ANY($1) AND until_ms > $2";
    let stmt = c.prepare_cached(sql).await?;
    Ok(c.query_one(&stmt, &[&keys, &now]).await?.get(0))
}

pub(super) async fn take_registration(
    c: &impl GenericClient,
    net: &str,
    now: i64,
    per_minute: u32,
    burst: u32,
) -> Result<Option<std::time::Duration>, PostgresError> {
    // The bucket refilled since it was last touched, computed and written back under the
    // row's lock (ON CONFLICT … DO UPDATE), so two instances never spend one token twice;
    // `taken` says whether this call got one.
    let sql = "INSERT INTO registration_buckets AS b (net, tokens, at_ms, taken)
               VALUES ($1::text, $4::float8 - 1, $2::bigint, true)
               ON CONFLICT (net) DO UPDATE SET
                 tokens = LEAST(b.tokens + GREATEST($2 - b.at_ms, 0) * $3::float8 / 1000, $4)
                   - CASE WHEN LEAST(b.tokens + GREATEST($2 - b.at_ms, 0) * $3 / 1000, $4)
                     >= 1 THEN 1 ELSE 0 END,
                 at_ms = $2,
                 taken = LEAST(b.tokens + GREATEST($2 - b.at_ms, 0) * $3 / 1000, $4) >= 1
               RETURNING b.tokens, b.taken";
    let stmt = c.prepare_cached(sql).await?;
    let per_second = f64::from(per_minute) / 60.0;
    let burst = f64::from(burst.max(1));
    let row = c.query_one(&stmt, &[&net, &now, &per_second, &burst]).await?;
    let (tokens, taken): (f64, bool) = (row.get(0), row.get(1));
    if taken || per_second == 0.0 {
        return Ok(None);
    }
    Ok(Some(std::time::Duration::from_secs_f64(((1.0 - tokens) / per_second).max(0.0))))
}
