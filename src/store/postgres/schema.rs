//! The PostgreSQL schema: SQLite's tables (`src/store/db.rs`) translated, created and
//! evolved by an append-only list of migrations tracked in `schema_migrations`.
//!
//! Several `serve` instances may start at once against one database: each runs the
//! migrations in one transaction that first takes a transaction-scoped advisory lock, so
//! one migrates while the others wait and then find nothing left to do. (Without the lock
//! two `CREATE TABLE IF NOT EXISTS` at once can still fail on a duplicate type.) A failed
//! step rolls the whole transaction back: the schema is at one version or the next,
//! never between.

use super::PostgresError;

/// The advisory lock the migrations hold: any fixed 64-bit number other programs sharing
/// the database are unlikely to use ("securexf" in ASCII).
pub(super) const MIGRATION_LOCK: i64 = 0x7365_6375_7265_7866;

/// The schema, one step per entry. Never edit a step that has shipped; append a new one.
///
/// The translation from SQLite: ids and keys `BYTEA` with the same length checks; sizes
/// and cksums `BIGINT` (a cksum is a `u32`, which `INTEGER` cannot hold); times
/// `TIMESTAMPTZ` (SQLite keeps UTC text; the records read them back in that form);
/// flags `BOOLEAN`; names lower case, as PostgreSQL folds them. Step 1 is SQLite's five
/// steps at once (none of them had shipped for PostgreSQL), plus the server key that every
/// instance must present alike.
const MIGRATIONS: &[&str] = &[
    // 1: clients, files, commit intents, versions (SQLite's 1-5), and the server key.
    "CREATE TABLE clients (
        id BYTEA PRIMARY KEY CHECK (length(id) = 16),
        name TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
        public_key BYTEA CHECK (public_key IS NULL OR length(public_key) = 160),
        last_seen TIMESTAMPTZ,
        aes_key BYTEA CHECK (aes_key IS NULL OR length(aes_key) = 16),
        usual_address TEXT
    );
    CREATE TABLE files (
        id BYTEA NOT NULL REFERENCES clients (id),
        file_name TEXT NOT NULL,
        path_name TEXT NOT NULL,
        verified BOOLEAN NOT NULL DEFAULT false,
        size BIGINT,
        cksum BIGINT,
        stored_at TIMESTAMPTZ,
        PRIMARY KEY (id, file_name)
    );
    CREATE INDEX files_by_path ON files (id, path_name);
    CREATE TABLE commit_intents (
        id BYTEA NOT NULL CHECK (length(id) = 16),
        stored_name TEXT NOT NULL,
        file_name TEXT NOT NULL,
        path_name TEXT NOT NULL,
        source TEXT NOT NULL,
        size BIGINT NOT NULL,
        cksum BIGINT NOT NULL,
        archive TEXT,
        restores BIGINT,
        PRIMARY KEY (id, stored_name)
    );
    CREATE TABLE versions (
        id BYTEA NOT NULL CHECK (length(id) = 16),
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        file_name TEXT NOT NULL,
        path_name TEXT NOT NULL UNIQUE,
        size BIGINT,
        cksum BIGINT,
        stored_at TIMESTAMPTZ,
        PRIMARY KEY (id, name, version)
    );
    CREATE TABLE server_key (
        only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
        pkcs8 BYTEA NOT NULL
    );",
    // 2: uploads staged in an object store (SQLite's 7).
    "CREATE TABLE staged_objects (
        key TEXT PRIMARY KEY,
        upload_id TEXT,
        expires_at BIGINT NOT NULL
    );",
    // 3: protocol 4 (SQLite's 6, 7, 9 and 10; docs/protocol-v4.md, "Records"). Clients'
    // Ed25519 keys (SPKI, and its SHA-256, unique), whether protocol 3 may still act for
    // them, their quotas; the BLAKE3, declared mtime, generation and protocol of files,
    // versions and intents; invitations (the token's SHA-256 only); unfinished uploads.
    // The generation is a sequence rather than SQLite's counter row: every instance takes
    // the next one without waiting on a row lock, and generations need only rise. Path
    // names are compared byte for byte (`COLLATE "C"`, what SQLite's `BINARY` does,
    // whatever the database's locale), so LIST's pages and folder checks read this index.
    "ALTER TABLE clients ADD COLUMN key_spki BYTEA;
     ALTER TABLE clients ADD COLUMN key_fingerprint BYTEA UNIQUE
       CHECK (key_fingerprint IS NULL OR length(key_fingerprint) = 32);
     ALTER TABLE clients ADD COLUMN key_attached_at TIMESTAMPTZ;
     ALTER TABLE clients ADD COLUMN protocol3_allowed BOOLEAN NOT NULL DEFAULT true;
     ALTER TABLE clients ADD COLUMN quota_bytes BIGINT;
     ALTER TABLE clients ADD COLUMN quota_files BIGINT;
     ALTER TABLE files ADD COLUMN blake3 BYTEA CHECK (blake3 IS NULL OR length(blake3) = 32);
     ALTER TABLE files ADD COLUMN mtime_ns BIGINT;
     ALTER TABLE files ADD COLUMN generation BIGINT;
     ALTER TABLE files ADD COLUMN protocol SMALLINT NOT NULL DEFAULT 3;
     ALTER TABLE versions ADD COLUMN blake3 BYTEA;
     ALTER TABLE versions ADD COLUMN mtime_ns BIGINT;
     ALTER TABLE versions ADD COLUMN generation BIGINT;
     ALTER TABLE versions ADD COLUMN protocol SMALLINT NOT NULL DEFAULT 3;
     ALTER TABLE commit_intents ADD COLUMN blake3 BYTEA;
     ALTER TABLE commit_intents ADD COLUMN mtime_ns BIGINT;
     CREATE INDEX files_by_path_bytes ON files (id, path_name COLLATE \"C\");
     CREATE SEQUENCE file_generation;
     CREATE TABLE invites (
        token_hash BYTEA PRIMARY KEY CHECK (length(token_hash) = 32),
        name TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        used_at TIMESTAMPTZ,
        used_by BYTEA
     );
     CREATE TABLE unfinished_uploads (
        id BYTEA NOT NULL CHECK (length(id) = 16),
        path TEXT NOT NULL,
        location TEXT NOT NULL,
        size BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        durable BIGINT NOT NULL,
        prefix_hash BYTEA NOT NULL CHECK (length(prefix_hash) = 32),
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (id, path)
     );",
    // 4: protocol 3's sessions, registrations and borrowed uploads, shared between
    // instances (a client that opens a connection per request lands on any of them).
    "CREATE TABLE sessions (
        id BYTEA NOT NULL CHECK (length(id) = 16),
        ip TEXT NOT NULL,
        token BYTEA NOT NULL UNIQUE CHECK (length(token) = 16),
        aes_key BYTEA NOT NULL CHECK (length(aes_key) = 16),
        usual_ip TEXT,
        last_used BIGINT NOT NULL,
        PRIMARY KEY (id, ip)
     );
     CREATE TABLE session_registrations (
        id BYTEA NOT NULL CHECK (length(id) = 16),
        ip TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (id, ip)
     );
     CREATE TABLE pending_uploads (
        token BYTEA NOT NULL,
        file_name TEXT NOT NULL,
        id BYTEA NOT NULL CHECK (length(id) = 16),
        stored_name TEXT NOT NULL,
        location TEXT NOT NULL,
        size BIGINT NOT NULL,
        cksum BIGINT NOT NULL,
        arrived BIGINT NOT NULL,
        PRIMARY KEY (token, file_name)
     );
     CREATE INDEX pending_uploads_by_client ON pending_uploads (id);
     CREATE TABLE backoff (
        key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        until_ms BIGINT NOT NULL
     );
     CREATE TABLE registration_buckets (
        net TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL,
        taken BOOLEAN NOT NULL
     );",
    // 5: the tokens of sessions ended after a padding failure, so that the instance whose
    // connection holds such a session ends it there too (a day: longer than a connection
    // stays idle).
    "CREATE TABLE ended_sessions (
        token BYTEA PRIMARY KEY CHECK (length(token) = 16),
        at BIGINT NOT NULL
     );",
    // 6: a copy's place in its client's space, `<id hex>/<stored name>`, apart from where
    // its bytes are (`path_name`, an object's key on an object store), as SQLite's 11:
    // protocol 4's paths, folders and listings are read by it whatever the store.
    // [`fill_stored_paths`] fills it for the rows already there, in the same transaction.
    "ALTER TABLE files ADD COLUMN stored_path TEXT;
     CREATE INDEX files_by_stored_path ON files (id, stored_path COLLATE \"C\");",
    // 7: as SQLite's 12, an unfinished upload's multipart upload and its parts' ETags.
    "ALTER TABLE unfinished_uploads ADD COLUMN upload_id TEXT;
     ALTER TABLE unfinished_uploads ADD COLUMN parts TEXT;",
];

/// The migration that added `files.stored_path`.
const STORED_PATH_SCHEMA: i32 = 6;

/// Fills `files.stored_path` of the rows written before it existed (see
/// [`crate::store::db::stored_path_of`]), inside the migration's transaction, then makes it
/// required.
async fn fill_stored_paths(tx: &tokio_postgres::Transaction<'_>) -> Result<(), PostgresError> {
    let rows =
        tx.query("SELECT id, file_name, path_name, protocol, verified FROM files", &[]).await?;
    let update =
        tx.prepare("UPDATE files SET stored_path = $3 WHERE id = $1 AND file_name = $2").await?;
    for row in rows {
        let id: Vec<u8> = row.get(0);
        let (file_name, path_name): (String, String) = (row.get(1), row.get(2));
        let Ok(client) = <[u8; 16]>::try_from(id.as_slice()) else { continue };
        let protocol = i64::from(row.get::<_, i16>(3));
        let at = crate::store::db::stored_path_of(
            crate::protocol::ClientId(client),
            &file_name,
            &path_name,
            protocol,
            row.get(4),
        );
        tx.execute(&update, &[&id, &file_name, &at]).await?;
    }
    tx.batch_execute("ALTER TABLE files ALTER COLUMN stored_path SET NOT NULL").await?;
    Ok(())
}

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.len() as i32
}

/// Brings the database to [`latest_version`], under the migration lock, in one
/// transaction; returns the version it found.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, PostgresError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let found: i32 =
        tx.query_one("SELECT COALESCE(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
    let known = latest_version();
    if found > known {
        return Err(PostgresError::TooNew { found: i64::from(found), known: i64::from(known) });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.batch_execute(sql).await?;
        let version = step as i32 + 1;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&version]).await?;
    }
    if found < STORED_PATH_SCHEMA {
        fill_stored_paths(&tx).await?;
    }
    tx.commit().await?;
    Ok(found)
}
