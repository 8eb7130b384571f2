//! The server's records in SQLite: the `clients` and `files` tables of PROTOCOL.md, created
//! and evolved by an append-only list of migrations tracked in `PRAGMA user_version`.
//!
//! Everything here is synchronous; the server calls it from blocking threads so that the
//! async runtime never waits on the disk.

use crate::protocol::ClientId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use thiserror::Error;

/// What went wrong with the database.
#[derive(Debug, Error)]
pub enum DbError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file exists but is not a securexfer database.
    #[error(
        "{path} is not a securexfer database (it has no clients and files tables); \
         pass the server's database with --db"
    )]
    Foreign {
        /// The file.
        path: String,
    },
    /// The file does not exist (read-only open never creates one).
    #[error("database {path} does not exist; pass the server's database with --db")]
    Missing {
        /// The file.
        path: String,
    },
    /// The database file was deleted or replaced while the server had it open.
    #[error(
        "the database file {path} was removed or replaced while the server was running; \
         nothing more is written to it: restart the server"
    )]
    Replaced {
        /// The file.
        path: String,
    },
    /// The database was written by a newer securexfer.
    #[error("database schema version {found} is newer than this securexfer knows ({known})")]
    TooNew {
        /// The database's version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// The schema, one step per entry. Never edit a step that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of PROTOCOL.md.
    "CREATE TABLE clients (
        ID BLOB PRIMARY KEY NOT NULL CHECK (length(ID) = 16),
        Name TEXT NOT NULL UNIQUE CHECK (length(Name) BETWEEN 1 AND 255),
        PublicKey BLOB CHECK (PublicKey IS NULL OR length(PublicKey) = 160),
        LastSeen TEXT,
        AESKey BLOB CHECK (AESKey IS NULL OR length(AESKey) = 16)
    );
    CREATE TABLE files (
        ID BLOB NOT NULL REFERENCES clients(ID),
        FileName TEXT NOT NULL,
        PathName TEXT NOT NULL,
        Verified INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (ID, FileName)
    );",
    // 2: what an operator wants to know about a stored file.
    "ALTER TABLE files ADD COLUMN Size INTEGER;
     ALTER TABLE files ADD COLUMN Cksum INTEGER;
     ALTER TABLE files ADD COLUMN StoredAt TEXT;",
    // 3: the address a client registered from or last confirmed a file from (the server's
    // back-off after padding failures spares it).
    "ALTER TABLE clients ADD COLUMN UsualAddress TEXT;",
    // 4: a commit in progress, written before the rename into place and deleted in the
    // transaction that records the file, so that start-up can finish or undo it.
    "CREATE TABLE commit_intents (
        ID BLOB NOT NULL CHECK (length(ID) = 16),
        StoredName TEXT NOT NULL,
        FileName TEXT NOT NULL,
        PathName TEXT NOT NULL,
        Source TEXT NOT NULL,
        Size INTEGER NOT NULL,
        Cksum INTEGER NOT NULL,
        PRIMARY KEY (ID, StoredName)
    );",
    // 5: earlier versions of replaced files, and what a commit keeps as one (or restores).
    "CREATE TABLE versions (
        ID BLOB NOT NULL CHECK (length(ID) = 16),
        Name TEXT NOT NULL,
        Version INTEGER NOT NULL,
        FileName TEXT NOT NULL,
        PathName TEXT NOT NULL UNIQUE,
        Size INTEGER,
        Cksum INTEGER,
        StoredAt TEXT,
        PRIMARY KEY (ID, Name, Version)
    );
    ALTER TABLE commit_intents ADD COLUMN Archive TEXT;
    ALTER TABLE commit_intents ADD COLUMN Restores INTEGER;",
    // 6: protocol 4 (docs/protocol-v4.md, "Records"). A client's Ed25519 key (its SPKI and
    // the SHA-256 of it, unique: a key is at most one client), when it was attached, and
    // whether protocol 3 may still act for the record (not after an upgrade). Files and
    // versions: the BLAKE3 of the content (NULL for protocol-3 uploads), the mtime the
    // upload declared, the server-wide generation of the copy, the protocol that stored
    // it. Invitations for `--registration token`, kept only as the SHA-256 of the token.
    // Commit intents carry the hash and mtime so that a commit a crash interrupted is
    // finished with them.
    "ALTER TABLE clients ADD COLUMN KeySpki BLOB;
     ALTER TABLE clients ADD COLUMN KeyFingerprint BLOB
       CHECK (KeyFingerprint IS NULL OR length(KeyFingerprint) = 32);
     ALTER TABLE clients ADD COLUMN KeyAttachedAt TEXT;
     ALTER TABLE clients ADD COLUMN Protocol3Allowed INTEGER NOT NULL DEFAULT 1;
     CREATE UNIQUE INDEX clients_key_fingerprint ON clients (KeyFingerprint);
     ALTER TABLE files ADD COLUMN Blake3 BLOB CHECK (Blake3 IS NULL OR length(Blake3) = 32);
     ALTER TABLE files ADD COLUMN MtimeNs INTEGER;
     ALTER TABLE files ADD COLUMN Generation INTEGER;
     ALTER TABLE files ADD COLUMN Protocol INTEGER NOT NULL DEFAULT 3;
     ALTER TABLE versions ADD COLUMN Blake3 BLOB;
     ALTER TABLE versions ADD COLUMN MtimeNs INTEGER;
     ALTER TABLE versions ADD COLUMN Generation INTEGER;
     ALTER TABLE versions ADD COLUMN Protocol INTEGER NOT NULL DEFAULT 3;
     ALTER TABLE commit_intents ADD COLUMN Blake3 BLOB;
     ALTER TABLE commit_intents ADD COLUMN MtimeNs INTEGER;
     CREATE TABLE invites (
        TokenHash BLOB PRIMARY KEY NOT NULL CHECK (length(TokenHash) = 32),
        Name TEXT,
        CreatedAt TEXT NOT NULL,
        ExpiresAt TEXT NOT NULL,
        UsedAt TEXT,
        UsedBy BLOB
     );
     CREATE TABLE counters (Name TEXT PRIMARY KEY NOT NULL, Value INTEGER NOT NULL);
     INSERT INTO counters (Name, Value) VALUES ('generation', 0);",
    // 7: protocol 4's LIST streams a client's files in byte order of their paths from an
    // ordered cursor, a page at a time ([`Db::list_page`]); this index makes each page a
    // range read rather than a sort of all the client's rows.
    "CREATE INDEX files_id_path ON files (ID, PathName);",
    // 8: uploads staged in an object store (`serve --storage s3://…`): the object's key
    // (and its multipart upload's id while it has one), until a commit records it or the
    // upload is aborted. One left by a crash is aborted by whoever finds it expired.
    "CREATE TABLE staged_objects (
        Key TEXT PRIMARY KEY NOT NULL,
        UploadId TEXT,
        ExpiresAt INTEGER NOT NULL
     );",
    // 9: per-client quotas set by the operator (`securexfer db quota`), NULL for none.
    // Columns of `clients` rather than a table: one per client, read with its usage.
    "ALTER TABLE clients ADD COLUMN QuotaBytes INTEGER;
     ALTER TABLE clients ADD COLUMN QuotaFiles INTEGER;",
    // 10: protocol 4's unfinished uploads (docs/protocol-v4.md, "Resuming an upload"): one
    // per client and path, its temporary file's location, its declared size and mtime, and
    // how many of its first bytes are durable with their BLAKE3. A row is written only after
    // the file was synced to `Durable` bytes, so start-up can trust it once the file is
    // found at least that long.
    "CREATE TABLE unfinished_uploads (
        ID BLOB NOT NULL CHECK (length(ID) = 16),
        Path TEXT NOT NULL,
        Location TEXT NOT NULL,
        Size INTEGER NOT NULL,
        MtimeNs INTEGER NOT NULL,
        Durable INTEGER NOT NULL,
        PrefixHash BLOB NOT NULL CHECK (length(PrefixHash) = 32),
        ExpiresAt INTEGER NOT NULL,
        PRIMARY KEY (ID, Path)
     );",
    // 11: where a copy is in its client's space, `<id hex>/<stored name>`, apart from
    // where the store keeps its bytes (`PathName`): on a local directory the two are one,
    // on an object store `PathName` is the object's key, which says nothing of the name.
    // Protocol 4's paths, folders and listings are read by this column whatever the store
    // (`fill_stored_paths` fills it for the rows already there, in the same transaction).
    "ALTER TABLE files ADD COLUMN StoredPath TEXT;
     CREATE INDEX files_id_stored_path ON files (ID, StoredPath);",
    // 12: an unfinished upload kept in an object store: its multipart upload's id and
    // the ETags of its parts, newline-separated, which hold its `Durable` bytes (NULL for
    // one in a storage directory, and for a whole object a connection left uncommitted).
    "ALTER TABLE unfinished_uploads ADD COLUMN UploadId TEXT;
     ALTER TABLE unfinished_uploads ADD COLUMN Parts TEXT;",
];

/// The migration that added `files.StoredPath`, filled by [`fill_stored_paths`].
const STORED_PATH_SCHEMA: i64 = 11;

/// What the records call the place of the copy stored as `stored_name` of `id` in its
/// client's space, whatever the store: `<id hex>/<stored name>` (a local store's path
/// name too, [`crate::store::Storage::relative_path`]).
pub fn stored_path(id: ClientId, stored_name: &str) -> String {
    format!("{}/{stored_name}", id.to_hex())
}

/// The stored path of a row written before the column existed, from what the row says of
/// its name: a protocol-4 file name is its path; protocol 3's is stored as the last
/// component of the name as sent ([`crate::protocol::storage_name`]). A row given up
/// (never verified) was recorded at its stored path already; so was one whose name cannot
/// be stored, which keeps its path name.
pub(crate) fn stored_path_of(
    id: ClientId,
    file_name: &str,
    path_name: &str,
    protocol: i64,
    verified: bool,
) -> String {
    if !verified {
        return path_name.to_owned();
    }
    let stored =
        if protocol == 4 { Ok(file_name) } else { crate::protocol::storage_name(file_name) };
    match stored {
        Ok(name) => stored_path(id, name),
        Err(_) => path_name.to_owned(),
    }
}

/// Fills `StoredPath` for every row of `files` (migration 11), in the migration's
/// transaction.
fn fill_stored_paths(tx: &Connection) -> Result<(), DbError> {
    let rows: Vec<(Vec<u8>, String, String, i64, bool)> = tx
        .prepare("SELECT ID, FileName, PathName, COALESCE(Protocol, 3), Verified FROM files")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
        .collect::<Result<_, _>>()?;
    let mut update =
        tx.prepare("UPDATE files SET StoredPath = ?3 WHERE ID = ?1 AND FileName = ?2")?;
    for (id, file_name, path_name, protocol, verified) in rows {
        let client = id_of(id.clone());
        let at = stored_path_of(client, &file_name, &path_name, protocol, verified);
        update.execute(params![id, file_name, at])?;
    }
    Ok(())
}

/// A client's quota (`securexfer db quota`): `None` for no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Quota {
    /// Bytes of current files, kept versions and open uploads.
    pub bytes: Option<u64>,
    /// Number of current files.
    pub files: Option<u64>,
}

/// What a client's files take on the server (what its quota counts, open uploads aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes of its current files and of their kept versions.
    pub bytes: u64,
    /// Number of its current (verified) files.
    pub files: u64,
}

/// A client as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The id.
    pub id: ClientId,
    /// The unique name.
    pub name: String,
    /// The 160-byte public key field, once sent.
    pub public_key: Option<Vec<u8>>,
    /// When the client last made a request (UTC, `YYYY-MM-DD HH:MM:SS`).
    pub last_seen: Option<String>,
    /// Whether an AES key was ever sent to it.
    pub has_aes_key: bool,
    /// The raw SHA-256 of its protocol-4 key's SPKI, once one is attached.
    pub key_fingerprint: Option<[u8; 32]>,
    /// Whether protocol 3 may still act for it (false after an upgrade to protocol 4, and
    /// for clients registered over protocol 4).
    pub protocol3_allowed: bool,
}

/// A protocol-4 client key as the records keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientKey {
    /// The SubjectPublicKeyInfo (DER) of its Ed25519 key.
    pub spki: Vec<u8>,
    /// The raw SHA-256 of `spki`, what clients are found by.
    pub fingerprint: [u8; 32],
}

/// A registration over protocol 4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClient {
    /// The new id.
    pub id: ClientId,
    /// The name asked for.
    pub name: String,
    /// The key it proved in the handshake.
    pub key: ClientKey,
    /// The address it registered from (its usual address from then on).
    pub ip: IpAddr,
    /// The SHA-256 of the invitation token it gave, which the registration consumes.
    pub token_hash: Option<[u8; 32]>,
}

/// How a protocol-4 registration went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// The client exists now.
    Done,
    /// Another client has the name.
    NameTaken,
    /// The key is already a client.
    KeyTaken,
    /// The token is unknown, used, expired, or names another client name.
    TokenRefused,
}

/// How attaching a protocol-4 key to a record (an upgrade) went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The record has the key now, and protocol 3 is refused for it.
    Done,
    /// No such record.
    NoClient,
    /// The record already has a protocol-4 key.
    AlreadyHasKey,
    /// The key belongs to another client.
    KeyTaken,
}

/// What protocol 4 records about a stored copy beyond protocol 3's size and cksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V4Content {
    /// The BLAKE3 of the content.
    pub blake3: [u8; 32],
    /// The modification time the upload declared (nanoseconds since 1970).
    pub mtime_ns: i64,
}

/// A finished commit: what the answer reports and what the caller deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedCommit {
    /// The paths of the versions forgotten beyond `keep`.
    pub pruned: Vec<String>,
    /// The stored copy's new generation.
    pub generation: u64,
    /// When it was stored (seconds since 1970).
    pub stored_at: i64,
    /// Whether the copy it replaced was kept as a version.
    pub kept_version: bool,
}

/// A file as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    /// The owner.
    pub client_id: ClientId,
    /// The owner's name.
    pub client_name: String,
    /// The name as the client sent it.
    pub file_name: String,
    /// Where it is stored, relative to the storage directory.
    pub path_name: String,
    /// Whether the client confirmed the checksum (1029).
    pub verified: bool,
    /// Plaintext size, when known.
    pub size: Option<u64>,
    /// The cksum, when known.
    pub cksum: Option<u32>,
    /// When it was stored (UTC).
    pub stored_at: Option<String>,
    /// The BLAKE3 of the content, when known (protocol 4).
    pub blake3: Option<[u8; 32]>,
    /// The protocol that stored it (3 or 4).
    pub protocol: u8,
    /// The copy's generation, when it has one.
    pub generation: Option<u64>,
}

/// A commit under way: recorded before the upload is renamed into place, deleted in the
/// same transaction that records the file. One found at start-up means the server died in
/// between; [`crate::server::Server::open`] then looks at the bytes to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitIntent {
    /// The owner.
    pub client_id: ClientId,
    /// The name it is stored under (one commit per stored name at a time).
    pub stored_name: String,
    /// The name as the client sent it.
    pub file_name: String,
    /// Where it goes, relative to the storage directory.
    pub path_name: String,
    /// The file renamed into place (the upload's temporary file), relative to storage.
    pub source: String,
    /// Plaintext size of the source.
    pub size: u64,
    /// Its cksum.
    pub cksum: u32,
    /// Where the copy it replaces is linked as a version first (relative to storage).
    pub archive: Option<String>,
    /// The version it restores (`source` is that version's file), if any.
    pub restores: Option<i64>,
    /// Protocol 4's hash and mtime; `None` for a protocol-3 commit.
    pub v4: Option<V4Content>,
}

/// A stored copy as protocol 4 lists, serves and removes it: one per path (when a
/// verified and an unverified row share a path, the verified one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCopy {
    /// The name as the client sent it (the records' key).
    pub file_name: String,
    /// The name it is stored under in the client's space: a protocol-4 path.
    pub stored_name: String,
    /// Its place in the client's space, `<id hex>/<stored name>` ([`stored_path`]): what
    /// paths, folders and listings are read by, whatever the store.
    pub path_name: String,
    /// Where the store keeps its bytes: the path relative to the storage directory (the
    /// same as `path_name` there), or an object store's key.
    pub location: String,
    /// Whether the client confirmed it (false: a protocol-3 upload given up with 1031).
    pub verified: bool,
    /// Plaintext size (0 when unknown).
    pub size: u64,
    /// The mtime its upload declared (0 when unknown: protocol 3).
    pub mtime_ns: i64,
    /// When it was stored, seconds since 1970 (0 when unknown).
    pub stored_at: i64,
    /// Its generation (0 for a copy stored before generations existed).
    pub generation: u64,
    /// Earlier copies kept as versions.
    pub versions: u64,
    /// Its BLAKE3, when known.
    pub blake3: Option<[u8; 32]>,
    /// The protocol that stored it (3 or 4).
    pub protocol: u8,
}

/// One page of a client's stored copies in byte order of `path_name`: those after
/// `start` (or from it, with `inclusive`) and before `end`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRange {
    /// Where the page starts.
    pub start: String,
    /// Whether a copy at `start` itself belongs to the page.
    pub inclusive: bool,
    /// Where the range ends (exclusive), if anywhere.
    pub end: Option<String>,
    /// The most copies in the page.
    pub limit: usize,
}

/// A removal: the copy at `path_name`, kept first as the version `archive` when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The owner.
    pub client_id: ClientId,
    /// The stored name (versions are kept under it).
    pub stored_name: String,
    /// Where it is stored.
    pub path_name: String,
    /// Where the blob was linked as a version before the removal, if it was.
    pub archive: Option<String>,
    /// Versions of the name to keep at most (`--keep-versions`).
    pub keep: usize,
}

/// A removal recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// Rows removed (0: nothing was recorded at the path).
    pub files: u64,
    /// The bytes of the verified copy removed.
    pub bytes: u64,
    /// Whether it was kept as a version.
    pub kept: bool,
    /// The paths of versions forgotten beyond `keep`, for their files to be deleted.
    pub pruned: Vec<String>,
}

/// An earlier version of a stored file, kept when a newer one replaced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRecord {
    /// The owner.
    pub client_id: ClientId,
    /// The owner's name.
    pub client_name: String,
    /// The stored name it was a version of.
    pub name: String,
    /// 1 for the first version kept of this name, counting up.
    pub version: i64,
    /// The name the client sent it under.
    pub file_name: String,
    /// Where it is kept, relative to the storage directory.
    pub path_name: String,
    /// Plaintext size.
    pub size: Option<u64>,
    /// Its cksum.
    pub cksum: Option<u32>,
    /// When it was stored (UTC).
    pub stored_at: Option<String>,
    /// Its BLAKE3 and declared mtime, when a protocol-4 upload stored it: a restore puts
    /// them back with the content.
    pub v4: Option<V4Content>,
}

/// An invitation (`db invite`) as recorded: never its token, only the token's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    /// The first 8 bytes of the token's SHA-256, in hex: enough for an operator to tell
    /// invitations apart, nothing that helps to guess the token.
    pub id: String,
    /// The client name it is for, if it names one.
    pub name: Option<String>,
    /// When it was made and when it expires (UTC).
    pub created_at: String,
    pub expires_at: String,
    /// When it was used, and by which client (its name), if it was.
    pub used_at: Option<String>,
    pub used_by: Option<String>,
    /// Whether it has expired unused (at the time of the query).
    pub expired: bool,
}

/// An upload staged in an object store and not yet committed nor aborted (see
/// [`crate::store::s3`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedObject {
    /// The object's key, relative to the store's prefix.
    pub key: String,
    /// The multipart upload writing it, if it is one (a small upload is one `PUT`).
    pub upload_id: Option<String>,
}

/// What the records say of one path a protocol-4 put or commit names: what decides
/// whether it clashes with a folder or a file, and whether it replaces a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathFacts {
    /// The first of its folders (from the top) at which a copy is stored, if any.
    pub file_at_folder: Option<String>,
    /// Whether copies are stored under the path (it is a folder).
    pub is_folder: bool,
    /// Whether a verified copy is at the path itself.
    pub verified: bool,
}

/// What a protocol-4 `PUT_BEGIN` checks against the records before any content, read in
/// one call (see [`Db::put_facts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutFacts {
    /// The path's clash and replacement facts.
    pub path: PathFacts,
    /// The client's quota.
    pub quota: Quota,
    /// What the client's files take, when it has a quota.
    pub usage: Option<Usage>,
    /// The unfinished upload kept of the path, when asked for.
    pub unfinished: Option<UnfinishedUpload>,
}

/// The end of the range of path names under `under` (which ends in `/`): the same with the
/// `/` raised to `0`, the next byte; `None` for an empty space prefix.
pub fn upper_bound(under: &str) -> Option<String> {
    under.strip_suffix('/').map(|stem| format!("{stem}0"))
}

/// A protocol-4 upload left unfinished by its connection, kept for `--resume-window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedUpload {
    /// Its client.
    pub client_id: ClientId,
    /// The path its `PUT_BEGIN` named.
    pub path: String,
    /// Its temporary file, `<id hex>/<name>` as commit intents keep it.
    pub location: String,
    /// The declared size.
    pub size: u64,
    /// The declared mtime, nanoseconds since 1970.
    pub mtime_ns: i64,
    /// How many of its first bytes were synced to disk.
    pub durable: u64,
    /// The BLAKE3 of those bytes.
    pub prefix_hash: [u8; 32],
    /// When it is removed, seconds since 1970.
    pub expires_at: i64,
    /// In an object store, the multipart upload that holds its durable bytes; `None` for
    /// a file in a storage directory, and for an object already whole.
    pub upload_id: Option<String>,
    /// The ETags of that multipart upload's parts, in order.
    pub parts: Vec<String>,
}

/// An unfinished upload's part ETags as one column: newline-separated (an ETag is a
/// quoted token, never a newline), NULL for none.
pub(crate) fn parts_column(parts: &[String]) -> Option<String> {
    (!parts.is_empty()).then(|| parts.join("\n"))
}

/// The part ETags [`parts_column`] wrote.
pub(crate) fn parts_of(column: Option<String>) -> Vec<String> {
    column.map(|c| c.split('\n').map(str::to_owned).collect()).unwrap_or_default()
}

/// An open database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    /// The file it was opened from (none in memory).
    file: Option<FileIdentity>,
    /// Whether the schema has protocol 4's columns (migration 6). A database opened
    /// read-only (`db inspect`) is not migrated, and one last written by an older
    /// securexfer is read without them.
    has_v4: bool,
    /// The schema version (`user_version`) it was opened at: this connection's own
    /// migrations are the only ones applied while it is open.
    version: i64,
}

/// Statements the records cache, prepared once each: more than every call of the
/// server's hot paths (a put, a group commit, a download) uses between them.
const STATEMENT_CACHE: usize = 64;

/// What every connection is opened with. The query planner stability guarantee
/// (QPSG) keeps each cached statement's plan whatever values are bound: without it,
/// SQLite marks a statement that compares a column with a bound parameter to be
/// prepared again whenever that parameter's binding is cleared, which rusqlite does
/// each time a cached statement goes back to its cache, so every call parsed and
/// planned its SQL anew (found with perf: most of the records thread's time on a run of
/// small files). Our statements are plain index lookups, whose plan no value changes.
fn tune(conn: &Connection) -> Result<(), DbError> {
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Which file a path named: device and inode.
#[derive(Debug)]
struct FileIdentity {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> Result<Self, DbError> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)
            .map_err(|_| DbError::Replaced { path: path.display().to_string() })?;
        Ok(FileIdentity { path: path.to_owned(), dev: meta.dev(), ino: meta.ino() })
    }
}

impl Db {
    /// Opens (creating if needed) the server's database in WAL mode and migrates it.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        let mut db = Self::setup(conn, true)?;
        // A path that names no file (SQLite's ":memory:") has nothing to watch.
        db.file = FileIdentity::of(path).ok();
        Ok(db)
    }

    /// Fails when the database file was deleted or replaced since it was opened: SQLite
    /// would go on writing to the unlinked file, and every record written would be lost
    /// when the server stops.
    fn check_file(&self) -> Result<(), DbError> {
        let Some(file) = &self.file else { return Ok(()) };
        match FileIdentity::of(&file.path) {
            Ok(now) if now.dev == file.dev && now.ino == file.ino => Ok(()),
            _ => Err(DbError::Replaced { path: file.path.display().to_string() }),
        }
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::setup(Connection::open_in_memory()?, true)
    }

    /// Opens an existing database read-only, safely while the server writes to it.
    pub fn open_read_only(path: &Path) -> Result<Self, DbError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(DbError::Missing { path: shown });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('clients', 'files')",
                [],
                |r| r.get(0),
            )
            .map_err(|_| DbError::Foreign { path: shown.clone() })?;
        if tables != 2 {
            return Err(DbError::Foreign { path: shown });
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        tune(&conn)?;
        Ok(Db { conn, file: None, has_v4: version >= V4_SCHEMA, version })
    }

    fn setup(conn: Connection, writable: bool) -> Result<Self, DbError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        tune(&conn)?;
        if writable {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "ON")?;
        }
        let mut db = Db { conn, file: None, has_v4: true, version: 0 };
        db.migrate()?;
        db.version = MIGRATIONS.len() as i64;
        Ok(db)
    }

    /// Applies the migrations not yet applied, all in one exclusive transaction.
    fn migrate(&mut self) -> Result<(), DbError> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
        let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(DbError::TooNew { found: version, known });
        }
        for step in &MIGRATIONS[version as usize..] {
            tx.execute_batch(step)?;
        }
        if version < STORED_PATH_SCHEMA {
            fill_stored_paths(&tx)?;
        }
        tx.pragma_update(None, "user_version", known)?;
        tx.commit()?;
        Ok(())
    }

    /// The schema version this build writes.
    pub fn latest_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    /// The connection, for reading rows whole (`db migrate`).
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The schema version.
    pub fn schema_version(&self) -> Result<i64, DbError> {
        Ok(self.version)
    }

    /// Registers a new client; `false` when the name is taken.
    pub fn insert_client(&self, id: ClientId, name: &str) -> Result<bool, DbError> {
        self.check_file()?;
        let n = exec_cached(
            &self.conn,
            "INSERT OR IGNORE INTO clients (ID, Name, LastSeen) VALUES (?1, ?2, datetime('now'))",
            params![&id.0[..], name],
        )?;
        Ok(n == 1)
    }

    /// The client with this id.
    pub fn client_by_id(&self, id: ClientId) -> Result<Option<ClientRecord>, DbError> {
        self.client_where("ID = ?1", &id.0[..])
    }

    /// The client with this name.
    pub fn client_by_name(&self, name: &str) -> Result<Option<ClientRecord>, DbError> {
        self.client_where("Name = ?1", name)
    }

    fn client_where(
        &self,
        condition: &str,
        value: impl rusqlite::ToSql,
    ) -> Result<Option<ClientRecord>, DbError> {
        let sql = format!("SELECT {} FROM clients WHERE {condition}", self.client_columns());
        Ok(self.conn.prepare_cached(&sql)?.query_row([value], client_row).optional()?)
    }

    /// Every client, by name.
    pub fn clients(&self) -> Result<Vec<ClientRecord>, DbError> {
        let sql = format!("SELECT {} FROM clients ORDER BY Name", self.client_columns());
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], client_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the public key a client sent.
    pub fn set_public_key(&self, id: ClientId, field: &[u8]) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "UPDATE clients SET PublicKey = ?2 WHERE ID = ?1",
            params![&id.0[..], field],
        )?;
        Ok(())
    }

    /// Records the AES key last sent to a client.
    pub fn set_aes_key(&self, id: ClientId, key: &[u8; 16]) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "UPDATE clients SET AESKey = ?2 WHERE ID = ?1",
            params![&id.0[..], &key[..]],
        )?;
        Ok(())
    }

    /// Records `ip` as the client's usual address (registration, or a confirmed file).
    pub fn set_usual_address(&self, id: ClientId, ip: IpAddr) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "UPDATE clients SET UsualAddress = ?2 WHERE ID = ?1",
            params![&id.0[..], ip.to_string()],
        )?;
        Ok(())
    }

    /// The client's usual address, if one is recorded.
    pub fn usual_address(&self, id: ClientId) -> Result<Option<IpAddr>, DbError> {
        let text: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT UsualAddress FROM clients WHERE ID = ?1")?
            .query_row([&id.0[..]], |r| r.get(0))
            .optional()?;
        Ok(text.flatten().and_then(|t| t.parse().ok()))
    }

    /// Deletes the clients that registered but never sent a public key and have not been
    /// seen for `age`: they can never send a file, and they hold their names. Returns how
    /// many went.
    pub fn forget_keyless(&self, age: Duration) -> Result<usize, DbError> {
        self.check_file()?;
        let n = exec_cached(
            &self.conn,
            "DELETE FROM clients WHERE PublicKey IS NULL AND KeyFingerprint IS NULL
               AND (LastSeen IS NULL OR LastSeen < datetime('now', ?1))
               AND NOT EXISTS (SELECT 1 FROM files WHERE files.ID = clients.ID)",
            [format!("-{} seconds", age.as_secs())],
        )?;
        Ok(n)
    }

    /// Updates `LastSeen`; `false` if no such client.
    pub fn touch(&self, id: ClientId) -> Result<bool, DbError> {
        self.check_file()?;
        let n = exec_cached(
            &self.conn,
            "UPDATE clients SET LastSeen = datetime('now') WHERE ID = ?1",
            [&id.0[..]],
        )?;
        Ok(n == 1)
    }

    /// Records a file the client confirmed (1029). Called only after the file is in place.
    /// Different names can store at one path (`C:\a\f.txt` and `f.txt` both store as
    /// `f.txt`): a verified record of another name at this path described the file just
    /// replaced, so it goes.
    pub fn record_verified(
        &self,
        id: ClientId,
        file_name: &str,
        path_name: &str,
        size: u64,
        cksum: u32,
    ) -> Result<(), DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        // A local path name, `<id hex>/<stored name>`.
        let stored_name = path_name.split_once('/').map_or(path_name, |(_, name)| name);
        let at = Placed { file_name, path_name, stored_name };
        upsert_verified(&tx, id, &at, size, cksum)?;
        tx.commit()?;
        Ok(())
    }

    /// Records that a commit is about to rename `intent.source` into place (before it
    /// does, so that a crash in between is found at start-up).
    pub fn begin_commit(&self, intent: &CommitIntent) -> Result<(), DbError> {
        self.check_file()?;
        insert_intent(&self.conn, intent)
    }

    /// The file of `intent` is in place: keeps the copy it replaced as a version (when
    /// `intent.archive` is set), drops the version it restored, records it verified (and
    /// `usual` as the client's usual address), forgets the intent, and forgets the oldest
    /// versions beyond `keep`, all in one transaction. Returns the paths of the versions
    /// forgotten, for the caller to delete.
    pub fn finish_commit(
        &self,
        intent: &CommitIntent,
        usual: Option<IpAddr>,
        keep: usize,
    ) -> Result<Vec<String>, DbError> {
        Ok(self.finish_commit_detailed(intent, usual, keep)?.pruned)
    }

    /// [`Db::finish_commit`], also saying what protocol 4's `COMMITTED` reports: the new
    /// generation (every commit, of either protocol, takes the next one of the server-wide
    /// counter), when the copy was stored, and whether the replaced copy was kept.
    pub fn finish_commit_detailed(
        &self,
        intent: &CommitIntent,
        usual: Option<IpAddr>,
        keep: usize,
    ) -> Result<FinishedCommit, DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        let finished = finish_commit_in(&tx, intent, usual, keep)?;
        tx.commit()?;
        Ok(finished)
    }

    /// The intents of a group of commits (protocol 4's group commit), recorded in one
    /// transaction: one sync of the database for the whole group instead of one a file.
    pub fn begin_commits(&self, intents: &[CommitIntent]) -> Result<(), DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        for intent in intents {
            insert_intent(&tx, intent)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// [`Db::finish_commit_detailed`] for every file of a group, in order (each takes the
    /// next generation) and in one transaction: the group is recorded whole or not at all.
    pub fn finish_commits_detailed(
        &self,
        intents: &[CommitIntent],
        usual: Option<IpAddr>,
        keep: usize,
    ) -> Result<Vec<FinishedCommit>, DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        let finished = intents
            .iter()
            .map(|intent| finish_commit_in(&tx, intent, usual, keep))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(finished)
    }

    /// Whether a verified row describes the file at `path_name`.
    pub fn has_verified_at(&self, id: ClientId, path_name: &str) -> Result<bool, DbError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM files WHERE ID = ?1 AND StoredPath = ?2 AND Verified = 1",
            )?
            .query_row(params![&id.0[..], path_name], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// Where the verified copy stored as `stored_name` (the
    /// [`crate::protocol::storage_name`] of its file name) of `id` is, if there is one.
    pub fn stored_copy(&self, id: ClientId, stored_name: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT PathName FROM files WHERE ID = ?1 AND StoredPath = ?2 AND Verified = 1
                 LIMIT 1",
            )?
            .query_row(params![&id.0[..], stored_path(id, stored_name)], |r| r.get(0))
            .optional()?)
    }

    /// Records an object being staged, to be cleaned up after `expires_at` (seconds since
    /// 1970) unless a commit records it first.
    pub fn track_staged(&self, staged: &StagedObject, expires_at: i64) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "INSERT OR REPLACE INTO staged_objects (Key, UploadId, ExpiresAt) VALUES (?1, ?2, ?3)",
            params![staged.key, staged.upload_id, expires_at],
        )?;
        Ok(())
    }

    /// Forgets a staged object (aborted, or cleaned up).
    pub fn forget_staged(&self, key: &str) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(&self.conn, "DELETE FROM staged_objects WHERE Key = ?1", [key])?;
        Ok(())
    }

    /// Leases the staged objects expired by `now` (seconds since 1970) to the caller until
    /// `lease_until` and returns them, for it to abort and then forget; never one a commit
    /// intent or a file or version row names.
    pub fn claim_expired_staged(
        &self,
        now: i64,
        lease_until: i64,
    ) -> Result<Vec<StagedObject>, DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        let claimed: Vec<StagedObject> = tx
            .prepare_cached(
                "UPDATE staged_objects SET ExpiresAt = ?2 WHERE ExpiresAt <= ?1
                   AND Key NOT IN (SELECT Source FROM commit_intents)
                   AND Key NOT IN (SELECT PathName FROM files)
                   AND Key NOT IN (SELECT PathName FROM versions)
                   AND Key NOT IN (SELECT Location FROM unfinished_uploads)
                 RETURNING Key, UploadId",
            )?
            .query_map([now, lease_until], |r| {
                Ok(StagedObject { key: r.get(0)?, upload_id: r.get(1)? })
            })?
            .collect::<Result<_, _>>()?;
        tx.commit()?;
        Ok(claimed)
    }

    /// Records (or replaces) the unfinished upload of its client and path.
    pub fn keep_unfinished(&self, u: &UnfinishedUpload) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "INSERT OR REPLACE INTO unfinished_uploads
               (ID, Path, Location, Size, MtimeNs, Durable, PrefixHash, ExpiresAt, UploadId, Parts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                &u.client_id.0[..],
                u.path,
                u.location,
                u.size as i64,
                u.mtime_ns,
                u.durable as i64,
                &u.prefix_hash[..],
                u.expires_at,
                u.upload_id,
                parts_column(&u.parts)
            ],
        )?;
        Ok(())
    }

    /// The unfinished upload of this client's path, if one is kept.
    pub fn unfinished(
        &self,
        id: ClientId,
        path: &str,
    ) -> Result<Option<UnfinishedUpload>, DbError> {
        let sql = format!("{UNFINISHED_SELECT} WHERE ID = ?1 AND Path = ?2");
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![&id.0[..], path], unfinished_upload)
            .optional()?)
    }

    /// Every unfinished upload (start-up checks each against its file).
    pub fn all_unfinished(&self) -> Result<Vec<UnfinishedUpload>, DbError> {
        let mut stmt = self.conn.prepare_cached(UNFINISHED_SELECT)?;
        let rows = stmt.query_map([], unfinished_upload)?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Forgets the unfinished upload of this client's path whose file is at `location`
    /// (so a forget never takes a newer upload's row); true if there was one.
    pub fn forget_unfinished(
        &self,
        id: ClientId,
        path: &str,
        location: &str,
    ) -> Result<bool, DbError> {
        self.check_file()?;
        let n = exec_cached(
            &self.conn,
            "DELETE FROM unfinished_uploads WHERE ID = ?1 AND Path = ?2 AND Location = ?3",
            params![&id.0[..], path, location],
        )?;
        Ok(n > 0)
    }

    /// Takes the unfinished uploads expired by `now` off the records and returns them, for
    /// the caller to delete their files.
    pub fn claim_expired_unfinished(&self, now: i64) -> Result<Vec<UnfinishedUpload>, DbError> {
        self.check_file()?;
        let sql = format!(
            "DELETE FROM unfinished_uploads WHERE ExpiresAt <= ?1 RETURNING {UNFINISHED_COLUMNS}"
        );
        let claimed = self
            .conn
            .prepare_cached(&sql)?
            .query_map([now], unfinished_upload)?
            .collect::<Result<_, _>>()?;
        Ok(claimed)
    }

    /// Every kept version, by client name, name and version.
    pub fn versions(&self) -> Result<Vec<VersionRecord>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT v.ID, c.Name, v.Name, v.Version, v.FileName, v.PathName, v.Size, v.Cksum,
                    v.StoredAt, v.Blake3, v.MtimeNs
             FROM versions v JOIN clients c ON c.ID = v.ID ORDER BY c.Name, v.Name, v.Version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(VersionRecord {
                client_id: id_of(r.get(0)?),
                client_name: r.get(1)?,
                name: r.get(2)?,
                version: r.get(3)?,
                file_name: r.get(4)?,
                path_name: r.get(5)?,
                size: r.get::<_, Option<i64>>(6)?.map(|s| s as u64),
                cksum: r.get(7)?,
                stored_at: r.get(8)?,
                v4: r.get::<_, Option<Vec<u8>>>(9)?.and_then(hash_of).map(|blake3| V4Content {
                    blake3,
                    mtime_ns: r.get::<_, Option<i64>>(10).ok().flatten().unwrap_or(0),
                }),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets `intent`: its file never went into place (or start-up found it did not).
    pub fn abandon_commit(&self, intent: &CommitIntent) -> Result<(), DbError> {
        self.check_file()?;
        delete_intent(&self.conn, intent.client_id, &intent.stored_name)
    }

    /// The commits a crash interrupted.
    pub fn commit_intents(&self) -> Result<Vec<CommitIntent>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT ID, StoredName, FileName, PathName, Source, Size, Cksum, Archive, Restores,
                    Blake3, MtimeNs
             FROM commit_intents",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(CommitIntent {
                client_id: id_of(r.get(0)?),
                stored_name: r.get(1)?,
                file_name: r.get(2)?,
                path_name: r.get(3)?,
                source: r.get(4)?,
                size: r.get::<_, i64>(5)? as u64,
                cksum: r.get(6)?,
                archive: r.get(7)?,
                restores: r.get(8)?,
                v4: match (r.get::<_, Option<Vec<u8>>>(9)?, r.get::<_, Option<i64>>(10)?) {
                    (Some(hash), Some(mtime_ns)) => {
                        hash_of(hash).map(|blake3| V4Content { blake3, mtime_ns })
                    }
                    _ => None,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that a client gave up on a file (1031), unless a verified copy exists: that
    /// copy stays as it was.
    pub fn record_given_up(
        &self,
        id: ClientId,
        file_name: &str,
        path_name: &str,
    ) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "INSERT OR IGNORE INTO files (ID, FileName, PathName, StoredPath, Verified)
             VALUES (?1, ?2, ?3, ?3, 0)",
            params![&id.0[..], file_name, path_name],
        )?;
        Ok(())
    }

    /// Every file, by client name and file name.
    pub fn files(&self) -> Result<Vec<FileRecord>, DbError> {
        let v4 = if self.has_v4 { "f.Blake3, f.Protocol, f.Generation" } else { "NULL, 3, NULL" };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT f.ID, c.Name, f.FileName, f.PathName, f.Verified, f.Size, f.Cksum, f.StoredAt,
                    {v4}
             FROM files f JOIN clients c ON c.ID = f.ID ORDER BY c.Name, f.FileName"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok(FileRecord {
                client_id: id_of(r.get::<_, Vec<u8>>(0)?),
                client_name: r.get(1)?,
                file_name: r.get(2)?,
                path_name: r.get(3)?,
                verified: r.get(4)?,
                size: r.get::<_, Option<i64>>(5)?.map(|s| s as u64),
                cksum: r.get(6)?,
                stored_at: r.get(7)?,
                blake3: r.get::<_, Option<Vec<u8>>>(8)?.and_then(hash_of),
                protocol: r.get(9)?,
                generation: r.get::<_, Option<i64>>(10)?.map(|g| g as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn client_columns(&self) -> &'static str {
        if self.has_v4 { CLIENT_COLUMNS } else { CLIENT_COLUMNS_V3 }
    }

    /// The client whose protocol-4 key has this fingerprint.
    pub fn client_by_key(&self, fingerprint: &[u8; 32]) -> Result<Option<ClientRecord>, DbError> {
        self.client_where("KeyFingerprint = ?1", &fingerprint[..])
    }

    /// Registers a protocol-4 client, consuming its invitation token in the same
    /// transaction (so two connections racing with one token make one client).
    pub fn register_with_key(&self, new: &NewClient) -> Result<Registered, DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        if self.client_by_key(&new.key.fingerprint)?.is_some() {
            return Ok(Registered::KeyTaken);
        }
        if let Some(hash) = &new.token_hash {
            let used = exec_cached(
                &tx,
                "UPDATE invites SET UsedAt = datetime('now'), UsedBy = ?2
                 WHERE TokenHash = ?1 AND UsedAt IS NULL AND ExpiresAt > datetime('now')
                   AND (Name IS NULL OR Name = ?3)",
                params![&hash[..], &new.id.0[..], new.name],
            )?;
            if used != 1 {
                return Ok(Registered::TokenRefused);
            }
        }
        let inserted = exec_cached(
            &tx,
            "INSERT OR IGNORE INTO clients
               (ID, Name, LastSeen, UsualAddress, KeySpki, KeyFingerprint, KeyAttachedAt,
                Protocol3Allowed)
             VALUES (?1, ?2, datetime('now'), ?3, ?4, ?5, datetime('now'), 0)",
            params![
                &new.id.0[..],
                new.name,
                new.ip.to_string(),
                new.key.spki,
                &new.key.fingerprint[..]
            ],
        )?;
        if inserted != 1 {
            return Ok(Registered::NameTaken);
        }
        tx.commit()?;
        Ok(Registered::Done)
    }

    /// Attaches a protocol-4 key to the record `id` (an upgrade), only while the record
    /// has none, and refuses protocol 3 for it from then on: two upgrades racing make one
    /// winner.
    pub fn attach_key(&self, id: ClientId, key: &ClientKey) -> Result<Attached, DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        let Some(record) = self.client_by_id(id)? else { return Ok(Attached::NoClient) };
        if record.key_fingerprint.is_some() {
            return Ok(Attached::AlreadyHasKey);
        }
        if self.client_by_key(&key.fingerprint)?.is_some() {
            return Ok(Attached::KeyTaken);
        }
        let n = exec_cached(
            &tx,
            "UPDATE clients SET KeySpki = ?2, KeyFingerprint = ?3,
               KeyAttachedAt = datetime('now'), Protocol3Allowed = 0
             WHERE ID = ?1 AND KeyFingerprint IS NULL",
            params![&id.0[..], key.spki, &key.fingerprint[..]],
        )?;
        if n != 1 {
            return Ok(Attached::AlreadyHasKey);
        }
        tx.commit()?;
        Ok(Attached::Done)
    }

    /// Records an invitation: the SHA-256 of its token (never the token), the client name
    /// it is for (if any) and how long it is valid.
    pub fn create_invite(
        &self,
        token_hash: &[u8; 32],
        name: Option<&str>,
        valid_for: Duration,
    ) -> Result<(), DbError> {
        self.check_file()?;
        exec_cached(
            &self.conn,
            "INSERT INTO invites (TokenHash, Name, CreatedAt, ExpiresAt)
             VALUES (?1, ?2, datetime('now'), datetime('now', ?3))",
            params![&token_hash[..], name, format!("+{} seconds", valid_for.as_secs())],
        )?;
        Ok(())
    }

    /// Every invitation, oldest first (none in a database from before protocol 4).
    pub fn invites(&self) -> Result<Vec<InviteRecord>, DbError> {
        if !self.has_table("invites")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare(
            "SELECT hex(substr(i.TokenHash, 1, 8)), i.Name, i.CreatedAt, i.ExpiresAt, i.UsedAt,
                    c.Name, i.UsedAt IS NULL AND i.ExpiresAt <= datetime('now')
             FROM invites i LEFT JOIN clients c ON c.ID = i.UsedBy
             ORDER BY i.CreatedAt, i.rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(InviteRecord {
                id: r.get::<_, String>(0)?.to_ascii_lowercase(),
                name: r.get(1)?,
                created_at: r.get(2)?,
                expires_at: r.get(3)?,
                used_at: r.get(4)?,
                used_by: r.get(5)?,
                expired: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn has_table(&self, name: &str) -> Result<bool, DbError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )?
            .query_row([name], |r| r.get(0))?;
        Ok(n > 0)
    }

    /// One page of the client's stored copies in byte order of their `PathName`
    /// (SQLite's `BINARY` collation compares the UTF-8 bytes), read by the index of
    /// migration 7: the caller streams a listing of any length a page at a time.
    pub fn list_page(&self, id: ClientId, range: &PathRange) -> Result<Vec<StoredCopy>, DbError> {
        let op = if range.inclusive { ">=" } else { ">" };
        // An end in the index's range, not `?3 IS NULL OR ...`: a filter would read on to
        // the client's last row whenever the range holds fewer rows than the page.
        let end = if range.end.is_some() { "f.StoredPath < ?3" } else { "?3 IS NULL" };
        let sql = format!(
            "{STORED_COPY_SELECT}
             WHERE f.ID = ?1 AND f.StoredPath {op} ?2 AND {end}
             GROUP BY f.StoredPath ORDER BY f.StoredPath LIMIT ?4"
        );
        let limit = i64::try_from(range.limit).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows =
            stmt.query_map(params![&id.0[..], range.start, range.end, limit], stored_copy)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The facts of the path `path` of the client whose path names start with `space`:
    /// a copy at one of its folders, copies under it, a verified copy at it.
    pub fn path_facts(&self, id: ClientId, space: &str, path: &str) -> Result<PathFacts, DbError> {
        self.path_facts_with(id, space, path, &mut HashMap::new())
    }

    /// [`Db::path_facts`], with what is known of folders (whether a copy is stored at
    /// each) taken from and added to `folders`: the paths of one group share most of
    /// their folders.
    fn path_facts_with(
        &self,
        id: ClientId,
        space: &str,
        path: &str,
        folders: &mut HashMap<String, bool>,
    ) -> Result<PathFacts, DbError> {
        let mut facts = PathFacts::default();
        for (at, _) in path.match_indices('/') {
            let folder = &path[..at];
            let is_file = match folders.get(folder) {
                Some(&known) => known,
                None => {
                    let found = self.has_row_at(id, &format!("{space}{folder}"))?;
                    folders.insert(folder.to_owned(), found);
                    found
                }
            };
            if is_file {
                facts.file_at_folder = Some(folder.to_owned());
                break;
            }
        }
        let under = format!("{space}{path}/");
        facts.is_folder = self.has_rows_under(id, &under)?;
        facts.verified = self.has_verified_at(id, &format!("{space}{path}"))?;
        Ok(facts)
    }

    /// Whether a row (verified or not) is at `path_name`: what [`Db::copy_at`] finds,
    /// without reading the copy.
    fn has_row_at(&self, id: ClientId, path_name: &str) -> Result<bool, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM files WHERE ID = ?1 AND StoredPath = ?2 LIMIT 1")?
            .query_row(params![&id.0[..], path_name], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Whether a row is under `under` (a path name ending in `/`, so the range has an
    /// end): a folder. Both bounds are in the index's range, so the answer costs one seek
    /// however many rows follow.
    fn has_rows_under(&self, id: ClientId, under: &str) -> Result<bool, DbError> {
        let end = upper_bound(under).unwrap_or_default();
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM files WHERE ID = ?1 AND StoredPath >= ?2 AND StoredPath < ?3 LIMIT 1",
            )?
            .query_row(params![&id.0[..], under, end], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Everything a `PUT_BEGIN` of `path` reads from the records: its [`PathFacts`], the
    /// client's quota and (with one) usage, and, when `unfinished`, what is kept of it.
    pub fn put_facts(
        &self,
        id: ClientId,
        space: &str,
        path: &str,
        unfinished: bool,
    ) -> Result<PutFacts, DbError> {
        // One read transaction: one snapshot, and one round of SQLite's file locks
        // instead of one per statement.
        let tx = self.conn.unchecked_transaction()?;
        let quota = self.quota(id)?;
        let limited = quota.bytes.is_some() || quota.files.is_some();
        let facts = PutFacts {
            path: self.path_facts(id, space, path)?,
            quota,
            usage: if limited { Some(self.usage(id)?) } else { None },
            unfinished: if unfinished { self.unfinished(id, path)? } else { None },
        };
        tx.commit()?;
        Ok(facts)
    }

    /// The [`PathFacts`] of each of `paths`, read in one transaction (a group commit's).
    pub fn paths_facts(
        &self,
        id: ClientId,
        space: &str,
        paths: &[String],
    ) -> Result<Vec<PathFacts>, DbError> {
        let tx = self.conn.unchecked_transaction()?;
        let mut folders = HashMap::new();
        let facts =
            paths.iter().map(|path| self.path_facts_with(id, space, path, &mut folders)).collect();
        tx.commit()?;
        facts
    }

    /// The copy stored at `path_name`, if any.
    pub fn copy_at(&self, id: ClientId, path_name: &str) -> Result<Option<StoredCopy>, DbError> {
        let sql = format!(
            "{STORED_COPY_SELECT} WHERE f.ID = ?1 AND f.StoredPath = ?2 GROUP BY f.StoredPath"
        );
        Ok(self
            .conn
            .prepare_cached(&sql)?
            .query_row(params![&id.0[..], path_name], stored_copy)
            .optional()?)
    }

    /// Records the BLAKE3 of a copy stored without one (protocol 3), computed on its first
    /// whole read: only for that very copy (its generation) and only if none is recorded.
    pub fn record_blake3(
        &self,
        id: ClientId,
        path_name: &str,
        generation: u64,
        hash: &[u8; 32],
    ) -> Result<bool, DbError> {
        self.check_file()?;
        let generation = (generation != 0).then_some(generation as i64);
        let n = exec_cached(
            &self.conn,
            "UPDATE files SET Blake3 = ?4
             WHERE ID = ?1 AND StoredPath = ?2 AND Verified = 1 AND Blake3 IS NULL
               AND Generation IS ?3",
            params![&id.0[..], path_name, generation, &hash[..]],
        )?;
        Ok(n > 0)
    }

    /// Forgets the copy at `removal.path_name` (every row at that path), keeping its
    /// record as a version when its blob was linked at `removal.archive`, and forgets the
    /// versions beyond `keep`, in one transaction.
    pub fn remove_copy(&self, removal: &Removal) -> Result<Removed, DbError> {
        self.check_file()?;
        let tx = self.conn.unchecked_transaction()?;
        let (id, name) = (removal.client_id, removal.stored_name.as_str());
        let bytes: i64 = tx
            .prepare_cached(
                "SELECT COALESCE(max(Size), 0) FROM files
                 WHERE ID = ?1 AND StoredPath = ?2 AND Verified = 1",
            )?
            .query_row(params![&id.0[..], removal.path_name], |r| r.get(0))?;
        let mut kept = false;
        if let Some(archive) = &removal.archive {
            kept = exec_cached(
                &tx,
                "INSERT INTO versions
                   (ID, Name, Version, FileName, PathName, Size, Cksum, StoredAt,
                    Blake3, MtimeNs, Generation, Protocol)
                 SELECT ID, ?2, (SELECT COALESCE(max(Version), 0) + 1 FROM versions
                                 WHERE ID = ?1 AND Name = ?2),
                        FileName, ?4, Size, Cksum, StoredAt, Blake3, MtimeNs, Generation,
                        Protocol
                 FROM files WHERE ID = ?1 AND StoredPath = ?3 AND Verified = 1 LIMIT 1",
                params![&id.0[..], name, removal.path_name, archive],
            )? > 0;
        }
        let files = exec_cached(
            &tx,
            "DELETE FROM files WHERE ID = ?1 AND StoredPath = ?2",
            params![&id.0[..], removal.path_name],
        )?;
        let pruned = prune_versions(&tx, id, name, removal.keep)?;
        tx.commit()?;
        Ok(Removed { files: files as u64, bytes: bytes.max(0) as u64, kept, pruned })
    }

    /// What the client's files take: bytes of its verified files, of its kept versions
    /// and of its unfinished uploads kept for resuming (they take the operator's disk
    /// too), and the number of its verified files.
    pub fn usage(&self, id: ClientId) -> Result<Usage, DbError> {
        let (bytes, files, kept): (i64, i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(sum(Size), 0), count(*),
                        (SELECT COALESCE(sum(Size), 0) FROM versions WHERE ID = ?1)
                 FROM files WHERE ID = ?1 AND Verified = 1",
            )?
            .query_row([&id.0[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        // Unfinished uploads kept for resuming take the operator's disk too, at their
        // declared size (what they will take once finished).
        let unfinished: i64 = if self.schema_version()? >= 10 {
            self.conn
                .prepare_cached(
                    "SELECT COALESCE(sum(Size), 0) FROM unfinished_uploads WHERE ID = ?1",
                )?
                .query_row([&id.0[..]], |r| r.get(0))?
        } else {
            0
        };
        Ok(Usage {
            bytes: (bytes.max(0) as u64)
                .saturating_add(kept.max(0) as u64)
                .saturating_add(unfinished.max(0) as u64),
            files: files.max(0) as u64,
        })
    }

    /// The client's quota; no limits for a client that has none (or a database from
    /// before migration 9, opened read-only).
    pub fn quota(&self, id: ClientId) -> Result<Quota, DbError> {
        if self.schema_version()? < 9 {
            return Ok(Quota::default());
        }
        let row = self
            .conn
            .prepare_cached("SELECT QuotaBytes, QuotaFiles FROM clients WHERE ID = ?1")?
            .query_row([&id.0[..]], |r| {
                Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .optional()?;
        let (bytes, files) = row.unwrap_or_default();
        Ok(Quota { bytes: bytes.map(|b| b.max(0) as u64), files: files.map(|f| f.max(0) as u64) })
    }

    /// Sets the client's quota (`None` in a field: no limit). False when no such client.
    pub fn set_quota(&self, id: ClientId, quota: Quota) -> Result<bool, DbError> {
        self.check_file()?;
        let as_sql = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
        let changed = self.conn.execute(
            "UPDATE clients SET QuotaBytes = ?2, QuotaFiles = ?3 WHERE ID = ?1",
            params![&id.0[..], as_sql(quota.bytes), as_sql(quota.files)],
        )?;
        Ok(changed == 1)
    }
}

/// What [`stored_copy`] reads: one row per path, the verified one where there are two
/// (SQLite takes the other columns from the row with the `max`).
const STORED_COPY_SELECT: &str = "SELECT f.FileName, f.StoredPath, max(f.Verified), f.Size,
        f.MtimeNs, CAST(strftime('%s', f.StoredAt) AS INTEGER), f.Generation, f.Blake3,
        f.Protocol,
        (SELECT count(*) FROM versions v
         WHERE v.ID = f.ID AND v.Name = substr(f.StoredPath, instr(f.StoredPath, '/') + 1)),
        f.PathName
     FROM files f";

fn stored_copy(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredCopy> {
    let path_name: String = r.get(1)?;
    // `<id hex>/<stored name>` (see `Storage::relative_path`).
    let stored_name = path_name.split_once('/').map_or(path_name.as_str(), |(_, n)| n).to_owned();
    Ok(StoredCopy {
        file_name: r.get(0)?,
        stored_name,
        path_name,
        location: r.get(10)?,
        verified: r.get(2)?,
        size: r.get::<_, Option<i64>>(3)?.unwrap_or(0).max(0) as u64,
        mtime_ns: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
        stored_at: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
        generation: r.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as u64,
        blake3: r.get::<_, Option<Vec<u8>>>(7)?.and_then(hash_of),
        protocol: r.get(8)?,
        versions: r.get::<_, i64>(9)?.max(0) as u64,
    })
}

/// The columns [`client_row`] reads, in its order.
const CLIENT_COLUMNS: &str =
    "ID, Name, PublicKey, LastSeen, AESKey IS NOT NULL, KeyFingerprint, Protocol3Allowed";
/// The same from a schema before protocol 4: no key, protocol 3 allowed.
const CLIENT_COLUMNS_V3: &str = "ID, Name, PublicKey, LastSeen, AESKey IS NOT NULL, NULL, 1";
/// The schema version that added protocol 4's columns.
const V4_SCHEMA: i64 = 6;

/// Records one commit intent (see [`Db::begin_commit`]).
fn insert_intent(conn: &Connection, intent: &CommitIntent) -> Result<(), DbError> {
    exec_cached(
        conn,
        "INSERT OR REPLACE INTO commit_intents
               (ID, StoredName, FileName, PathName, Source, Size, Cksum, Archive, Restores,
                Blake3, MtimeNs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            &intent.client_id.0[..],
            intent.stored_name,
            intent.file_name,
            intent.path_name,
            intent.source,
            intent.size as i64,
            intent.cksum,
            intent.archive,
            intent.restores,
            intent.v4.map(|v| v.blake3.to_vec()),
            intent.v4.map(|v| v.mtime_ns)
        ],
    )?;
    Ok(())
}

/// The body of [`Db::finish_commit_detailed`], inside the caller's transaction.
fn finish_commit_in(
    tx: &Connection,
    intent: &CommitIntent,
    usual: Option<IpAddr>,
    keep: usize,
) -> Result<FinishedCommit, DbError> {
    let (id, name) = (intent.client_id, intent.stored_name.as_str());
    if let Some(archive) = &intent.archive {
        exec_cached(
            tx,
            "INSERT INTO versions
                   (ID, Name, Version, FileName, PathName, Size, Cksum, StoredAt,
                    Blake3, MtimeNs, Generation, Protocol)
                 SELECT ID, ?2, (SELECT COALESCE(max(Version), 0) + 1 FROM versions
                                 WHERE ID = ?1 AND Name = ?2),
                        FileName, ?4, Size, Cksum, StoredAt, Blake3, MtimeNs, Generation,
                        Protocol
                 FROM files WHERE ID = ?1 AND PathName IN (?3, ?4) AND Verified = 1 LIMIT 1",
            params![&id.0[..], name, intent.path_name, archive],
        )?;
    }
    if let Some(version) = intent.restores {
        exec_cached(
            tx,
            "DELETE FROM versions WHERE ID = ?1 AND Name = ?2 AND Version = ?3",
            params![&id.0[..], name, version],
        )?;
    }
    // An object store keeps the replaced object as the version itself, with no
    // `--keep-versions` (it is pruned below at once, and deleted by the caller).
    let kept_version = match &intent.archive {
        Some(archive) if keep > 0 => {
            tx.prepare_cached("SELECT count(*) FROM versions WHERE PathName = ?1")?
                .query_row([archive], |r| r.get::<_, i64>(0))?
                > 0
        }
        _ => false,
    };
    let generation = next_generation(tx)?;
    if let Some(archive) = &intent.archive {
        // The rows of other names that described the replaced object (an object
        // store's: every copy has a key of its own); a local copy's path is the new
        // one's, which `upsert_verified` looks at.
        exec_cached(
            tx,
            "DELETE FROM files WHERE ID = ?1 AND PathName = ?2 AND FileName <> ?3
                   AND Verified = 1",
            params![&id.0[..], archive, intent.file_name],
        )?;
    }
    let at =
        Placed { file_name: &intent.file_name, path_name: &intent.path_name, stored_name: name };
    upsert_verified(tx, id, &at, intent.size, intent.cksum)?;
    // The upload is a stored file now, no longer a staged object to clean up.
    exec_cached(tx, "DELETE FROM staged_objects WHERE Key = ?1", [&intent.source])?;
    set_v4_columns(tx, intent, generation)?;
    if let Some(ip) = usual {
        exec_cached(
            tx,
            "UPDATE clients SET UsualAddress = ?2 WHERE ID = ?1",
            params![&id.0[..], ip.to_string()],
        )?;
    }
    delete_intent(tx, id, name)?;
    let pruned = prune_versions(tx, id, name, keep)?;
    let stored_at: i64 = tx
        .prepare_cached(
            "SELECT CAST(strftime('%s', StoredAt) AS INTEGER) FROM files
                 WHERE ID = ?1 AND FileName = ?2",
        )?
        .query_row(params![&id.0[..], intent.file_name], |r| r.get(0))?;
    Ok(FinishedCommit { pruned, generation, stored_at, kept_version })
}

/// Takes the next value of the server-wide generation counter.
fn next_generation(conn: &Connection) -> rusqlite::Result<u64> {
    let value: i64 = conn
        .prepare_cached(
            "UPDATE counters SET Value = Value + 1 WHERE Name = 'generation' RETURNING Value",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(value as u64)
}

/// Protocol 4's columns of the row just upserted: the hash and mtime (or none, for a
/// protocol-3 commit), the generation and the protocol.
fn set_v4_columns(
    conn: &Connection,
    intent: &CommitIntent,
    generation: u64,
) -> rusqlite::Result<()> {
    let protocol = if intent.v4.is_some() { 4 } else { 3 };
    exec_cached(
        conn,
        "UPDATE files SET Blake3 = ?3, MtimeNs = ?4, Generation = ?5, Protocol = ?6
         WHERE ID = ?1 AND FileName = ?2",
        params![
            &intent.client_id.0[..],
            intent.file_name,
            intent.v4.map(|v| v.blake3.to_vec()),
            intent.v4.map(|v| v.mtime_ns),
            generation as i64,
            protocol
        ],
    )?;
    Ok(())
}

fn hash_of(bytes: Vec<u8>) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

/// Runs `sql` through the connection's statement cache: the server runs the same few
/// statements for every session, and preparing them each time was a visible part of its
/// CPU in the reconnect load test (`bench/load.sh reconnect`; see bench/README.md).
/// The columns of an [`UnfinishedUpload`], in [`unfinished_upload`]'s order.
const UNFINISHED_COLUMNS: &str =
    "ID, Path, Location, Size, MtimeNs, Durable, PrefixHash, ExpiresAt, UploadId, Parts";
/// Every unfinished upload's row.
const UNFINISHED_SELECT: &str = "SELECT ID, Path, Location, Size, MtimeNs, Durable, PrefixHash, ExpiresAt, UploadId, Parts FROM unfinished_uploads";

fn unfinished_upload(r: &rusqlite::Row<'_>) -> rusqlite::Result<UnfinishedUpload> {
    let id: Vec<u8> = r.get(0)?;
    let hash: Vec<u8> = r.get(6)?;
    let bad = |i: usize| {
        rusqlite::Error::InvalidColumnType(i, "blob".into(), rusqlite::types::Type::Blob)
    };
    Ok(UnfinishedUpload {
        client_id: ClientId(id.try_into().map_err(|_| bad(0))?),
        path: r.get(1)?,
        location: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        mtime_ns: r.get(4)?,
        durable: r.get::<_, i64>(5)? as u64,
        prefix_hash: hash.try_into().map_err(|_| bad(6))?,
        expires_at: r.get(7)?,
        upload_id: r.get(8)?,
        parts: parts_of(r.get(9)?),
    })
}

fn exec_cached(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// The names of a file just put in place: as sent, where the store keeps it, and as
/// stored in the client's space.
struct Placed<'a> {
    file_name: &'a str,
    path_name: &'a str,
    stored_name: &'a str,
}

/// The verified row of a file just put in place. Different names can store at one path
/// (`C:\a\f.txt` and `f.txt` both store as `f.txt`): a verified record of another name at
/// this path described the file just replaced, so it goes.
fn upsert_verified(
    conn: &Connection,
    id: ClientId,
    at: &Placed<'_>,
    size: u64,
    cksum: u32,
) -> rusqlite::Result<()> {
    let stored = stored_path(id, at.stored_name);
    exec_cached(
        conn,
        "DELETE FROM files WHERE ID = ?1 AND StoredPath = ?2 AND FileName <> ?3 AND Verified = 1",
        params![&id.0[..], stored, at.file_name],
    )?;
    exec_cached(
        conn,
        "INSERT INTO files (ID, FileName, PathName, StoredPath, Verified, Size, Cksum, StoredAt)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, datetime('now'))
         ON CONFLICT (ID, FileName) DO UPDATE SET PathName = excluded.PathName,
           StoredPath = excluded.StoredPath, Verified = 1, Size = excluded.Size,
           Cksum = excluded.Cksum, StoredAt = excluded.StoredAt",
        params![&id.0[..], at.file_name, at.path_name, stored, size as i64, cksum],
    )?;
    Ok(())
}

/// Forgets the versions of `name` beyond the newest `keep`; returns their paths.
fn prune_versions(
    conn: &Connection,
    id: ClientId,
    name: &str,
    keep: usize,
) -> Result<Vec<String>, DbError> {
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let paths: Vec<String> = conn
        .prepare_cached(
            "SELECT PathName FROM versions WHERE ID = ?1 AND Name = ?2
             ORDER BY Version DESC LIMIT -1 OFFSET ?3",
        )?
        .query_map(params![&id.0[..], name, keep], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for path in &paths {
        exec_cached(conn, "DELETE FROM versions WHERE PathName = ?1", [path])?;
    }
    Ok(paths)
}

fn delete_intent(conn: &Connection, id: ClientId, stored_name: &str) -> Result<(), DbError> {
    exec_cached(
        conn,
        "DELETE FROM commit_intents WHERE ID = ?1 AND StoredName = ?2",
        params![&id.0[..], stored_name],
    )?;
    Ok(())
}

fn id_of(bytes: Vec<u8>) -> ClientId {
    let mut id = [0u8; 16];
    let n = bytes.len().min(16);
    id[..n].copy_from_slice(&bytes[..n]);
    ClientId(id)
}

fn client_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRecord> {
    Ok(ClientRecord {
        id: id_of(r.get(0)?),
        name: r.get(1)?,
        public_key: r.get(2)?,
        last_seen: r.get(3)?,
        has_aes_key: r.get(4)?,
        key_fingerprint: r.get::<_, Option<Vec<u8>>>(5)?.and_then(hash_of),
        protocol3_allowed: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_bring_a_new_database_to_the_latest_version() {
        let db = Db::open_in_memory().unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path).unwrap();
        assert!(db.insert_client(ClientId([1; 16]), "a").unwrap());
        drop(db);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.clients().unwrap().len(), 1);
    }

    #[test]
    fn a_taken_name_is_refused() {
        let db = Db::open_in_memory().unwrap();
        assert!(db.insert_client(ClientId([1; 16]), "a").unwrap());
        assert!(!db.insert_client(ClientId([2; 16]), "a").unwrap());
    }

    #[test]
    fn giving_up_never_unverifies_a_confirmed_file() {
        let db = Db::open_in_memory().unwrap();
        let id = ClientId([1; 16]);
        db.insert_client(id, "a").unwrap();
        db.record_verified(id, "f", "x/f", 3, 7).unwrap();
        db.record_given_up(id, "f", "x/f").unwrap();
        let files = db.files().unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].verified);
        assert_eq!(files[0].size, Some(3));
    }

    #[test]
    fn storing_another_name_at_the_same_path_drops_the_replaced_record() {
        let db = Db::open_in_memory().unwrap();
        let id = ClientId([1; 16]);
        db.insert_client(id, "a").unwrap();
        db.record_verified(id, "f.txt", "x/f.txt", 5, 1).unwrap();
        db.record_given_up(id, "/tmp/f.txt", "x/f.txt").unwrap();
        let replacing = r"C:\dir\f.txt";
        db.record_verified(id, replacing, "x/f.txt", 9, 2).unwrap();
        let files = db.files().unwrap();
        let names: Vec<_> = files.iter().map(|f| (&f.file_name[..], f.verified)).collect();
        assert_eq!(names, [("/tmp/f.txt", false), (replacing, true)]);
        assert_eq!(files[1].size, Some(9));
    }

    #[test]
    fn a_finished_commit_records_the_file_and_forgets_its_intent_in_one_step() {
        let db = Db::open_in_memory().unwrap();
        let id = ClientId([1; 16]);
        db.insert_client(id, "a").unwrap();
        let intent = CommitIntent {
            client_id: id,
            stored_name: "f".into(),
            file_name: "f".into(),
            path_name: "x/f".into(),
            source: "x/.securexfer-part-1".into(),
            size: 3,
            cksum: 7,
            archive: None,
            restores: None,
            v4: None,
        };
        db.begin_commit(&intent).unwrap();
        assert_eq!(db.commit_intents().unwrap(), std::slice::from_ref(&intent));
        db.finish_commit(&intent, Some("192.0.2.1".parse().unwrap()), 1).unwrap();
        assert!(db.commit_intents().unwrap().is_empty());
        let files = db.files().unwrap();
        assert_eq!((files[0].verified, files[0].size, files[0].cksum), (true, Some(3), Some(7)));
        db.begin_commit(&CommitIntent { size: 9, ..intent.clone() }).unwrap();
        db.abandon_commit(&intent).unwrap();
        assert!(db.commit_intents().unwrap().is_empty());
        assert_eq!(db.files().unwrap()[0].size, Some(3), "an abandoned commit changes no row");
        // Three replacements keeping two versions: the newest two of the copies replaced.
        for (n, size) in [(1u8, 4), (2, 5), (3, 6)] {
            let archive = Some(format!(".versions/x/{n}"));
            let next = CommitIntent { size, archive, ..intent.clone() };
            let pruned = db.finish_commit(&next, None, 2).unwrap();
            assert_eq!(pruned, if n == 3 { vec![".versions/x/1".to_owned()] } else { vec![] });
        }
        let kept: Vec<_> = db.versions().unwrap().iter().map(|v| (v.version, v.size)).collect();
        assert_eq!(kept, [(2, Some(4)), (3, Some(5))]);
        assert_eq!(db.files().unwrap()[0].size, Some(6));
    }

    #[test]
    fn a_protocol_4_intent_keeps_its_hash_and_mtime_for_the_commit_start_up_finishes() {
        let db = Db::open_in_memory().unwrap();
        let id = ClientId([1; 16]);
        db.insert_client(id, "a").unwrap();
        let v4 = Some(V4Content { blake3: [9; 32], mtime_ns: -5 });
        let intent = CommitIntent {
            client_id: id,
            stored_name: "f".into(),
            file_name: "f".into(),
            path_name: "x/f".into(),
            source: "x/.securexfer-part-1".into(),
            size: 3,
            cksum: 7,
            archive: None,
            restores: None,
            v4,
        };
        db.begin_commit(&intent).unwrap();
        // What start-up reads back is what reconcile_commits finishes with.
        let found = db.commit_intents().unwrap();
        assert_eq!(found, std::slice::from_ref(&intent));
        db.finish_commit(&found[0], None, 1).unwrap();
        let file = &db.files().unwrap()[0];
        assert_eq!((file.blake3, file.protocol, file.verified), (Some([9; 32]), 4, true));
        // A protocol-3 commit of the same name afterwards is protocol 3 again, hash unknown.
        db.finish_commit(&CommitIntent { v4: None, ..intent }, None, 1).unwrap();
        let file = &db.files().unwrap()[0];
        assert_eq!((file.blake3, file.protocol), (None, 3));
        assert_eq!(file.generation, Some(2), "every commit takes the next generation");
    }

    #[test]
    fn the_facts_of_a_put_and_of_a_group_say_what_clashes_and_what_is_replaced() {
        let db = Db::open_in_memory().unwrap();
        let id = ClientId([1; 16]);
        db.insert_client(id, "a").unwrap();
        let space = format!("{}/", id.to_hex());
        for path in ["a", "b/c"] {
            let intent = CommitIntent {
                client_id: id,
                stored_name: path.into(),
                file_name: path.into(),
                path_name: format!("{space}{path}"),
                source: "x/.securexfer-part-1".into(),
                size: 3,
                cksum: 7,
                archive: None,
                restores: None,
                v4: Some(V4Content { blake3: [9; 32], mtime_ns: 1 }),
            };
            db.finish_commit(&intent, None, 1).unwrap();
        }
        let paths = ["a/x/y", "b", "b/c", "bc", "d/e"].map(String::from);
        let facts = db.paths_facts(id, &space, &paths).unwrap();
        let seen: Vec<_> =
            facts.iter().map(|f| (f.file_at_folder.as_deref(), f.is_folder, f.verified)).collect();
        assert_eq!(
            seen,
            [
                (Some("a"), false, false),
                (None, true, false),
                (None, false, true),
                (None, false, false),
                (None, false, false)
            ]
        );
        // One at a time, the same; a put's facts add the quota, usage only with one.
        assert_eq!(db.path_facts(id, &space, "b/c").unwrap(), facts[2]);
        let put = db.put_facts(id, &space, "b/c", true).unwrap();
        assert_eq!(
            (put.path, put.quota, put.usage, put.unfinished),
            (facts[2].clone(), Quota::default(), None, None)
        );
        db.set_quota(id, Quota { bytes: Some(100), files: None }).unwrap();
        let put = db.put_facts(id, &space, "b/c", false).unwrap();
        assert_eq!(put.usage, Some(Usage { bytes: 6, files: 2 }));
    }

    #[test]
    fn every_connection_keeps_its_statements_plans_whatever_is_bound() {
        // Without the guarantee, a cached statement is prepared again on every use.
        let db = Db::open_in_memory().unwrap();
        let qpsg = rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG;
        assert!(db.conn.db_config(qpsg).unwrap());
    }

    #[test]
    fn the_usual_address_is_recorded_and_replaced() {
        let db = Db::open_in_memory().unwrap();
        let id = ClientId([1; 16]);
        db.insert_client(id, "a").unwrap();
        assert_eq!(db.usual_address(id).unwrap(), None);
        for ip in ["192.0.2.1", "2001:db8::1"] {
            db.set_usual_address(id, ip.parse().unwrap()).unwrap();
            assert_eq!(db.usual_address(id).unwrap(), Some(ip.parse().unwrap()));
        }
        assert_eq!(db.usual_address(ClientId([2; 16])).unwrap(), None);
    }

    #[test]
    fn only_old_registrations_without_a_key_are_forgotten() {
        let db = Db::open_in_memory().unwrap();
        let (old, keyed, fresh) = (ClientId([1; 16]), ClientId([2; 16]), ClientId([3; 16]));
        for (id, name) in [(old, "old"), (keyed, "keyed"), (fresh, "fresh")] {
            db.insert_client(id, name).unwrap();
        }
        db.set_public_key(keyed, &[0; 160]).unwrap();
        db.conn
            .execute(
                "UPDATE clients SET LastSeen = datetime('now', '-1 hour') WHERE ID <> ?1",
                [&fresh.0[..]],
            )
            .unwrap();
        assert_eq!(db.forget_keyless(Duration::from_secs(600)).unwrap(), 1);
        let names: Vec<String> = db.clients().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["fresh", "keyed"]);
    }

    #[test]
    fn writes_are_refused_once_the_file_is_deleted_or_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        let db = Db::open(&path).unwrap();
        assert!(db.insert_client(ClientId([1; 16]), "a").unwrap());
        std::fs::remove_file(&path).unwrap();
        let refused = db.insert_client(ClientId([2; 16]), "b");
        assert!(matches!(refused, Err(DbError::Replaced { .. })), "{refused:?}");
        std::fs::write(&path, b"another file").unwrap();
        assert!(matches!(db.touch(ClientId([1; 16])), Err(DbError::Replaced { .. })));
    }

    #[test]
    fn a_database_from_before_protocol_4_is_read_without_its_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..5] {
                conn.execute_batch(step).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute("INSERT INTO clients (ID, Name) VALUES (?1, 'old')", [&[1u8; 16][..]])
                .unwrap();
            conn.execute(
                "INSERT INTO files (ID, FileName, PathName, Verified) VALUES (?1, 'f', 'x/f', 1)",
                [&[1u8; 16][..]],
            )
            .unwrap();
        }
        let db = Db::open_read_only(&path).unwrap();
        let clients = db.clients().unwrap();
        assert_eq!((clients[0].key_fingerprint, clients[0].protocol3_allowed), (None, true));
        assert_eq!(db.files().unwrap()[0].protocol, 3);
        drop(db);
        // And opening it to write migrates it.
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(db.clients().unwrap()[0].name, "old");
    }

    #[test]
    fn migration_11_gives_every_row_its_stored_path_whatever_its_store_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ten.db");
        let id = ClientId([7; 16]);
        let hex = id.to_hex();
        {
            let conn = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..10] {
                conn.execute_batch(step).unwrap();
            }
            conn.pragma_update(None, "user_version", 10).unwrap();
            conn.execute("INSERT INTO clients (ID, Name) VALUES (?1, 'ten')", [&id.0[..]]).unwrap();
            let rows = [
                // A protocol-3 copy in a storage directory, sent with a Windows path.
                ("C:\\docs\\a.txt", format!("{hex}/a.txt"), 1, 3),
                // A protocol-4 copy in a folder, in an object store: its key is random.
                ("docs/b.txt", format!("{hex}/0123456789abcdef"), 1, 4),
                // A protocol-3 upload given up, recorded at its stored path.
                ("c.txt", format!("{hex}/c.txt"), 0, 3),
            ];
            for (file_name, path_name, verified, protocol) in rows {
                conn.execute(
                    "INSERT INTO files (ID, FileName, PathName, Verified, Size, Protocol)
                     VALUES (?1, ?2, ?3, ?4, 1, ?5)",
                    params![&id.0[..], file_name, path_name, verified, protocol],
                )
                .unwrap();
            }
        }
        let db = Db::open(&path).unwrap();
        let at = |name: &str| db.copy_at(id, &format!("{hex}/{name}")).unwrap();
        let a = at("a.txt").expect("the protocol-3 copy by its stored name");
        assert_eq!((a.stored_name.as_str(), a.location), ("a.txt", format!("{hex}/a.txt")));
        let b = at("docs/b.txt").expect("the object-store copy by its path");
        assert_eq!(b.location, format!("{hex}/0123456789abcdef"), "its bytes are the object");
        assert!(!at("c.txt").expect("the given-up row").verified);
        let range = PathRange {
            start: format!("{hex}/docs/"),
            inclusive: true,
            end: upper_bound(&format!("{hex}/docs/")),
            limit: 10,
        };
        let listed: Vec<String> =
            db.list_page(id, &range).unwrap().into_iter().map(|c| c.stored_name).collect();
        assert_eq!(listed, ["docs/b.txt"], "the folder holds the object-store copy");
        let facts = db.path_facts(id, &format!("{hex}/"), "docs/b.txt/x").unwrap();
        assert_eq!(facts.file_at_folder.as_deref(), Some("docs/b.txt"), "a file is no folder");
        assert_eq!(db.stored_copy(id, "docs/b.txt").unwrap(), Some(b.location));
    }

    #[test]
    fn read_only_open_refuses_missing_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        assert!(matches!(Db::open_read_only(&missing), Err(DbError::Missing { .. })));
        let foreign = dir.path().join("foreign.db");
        Connection::open(&foreign).unwrap().execute_batch("CREATE TABLE t (x)").unwrap();
        assert!(matches!(Db::open_read_only(&foreign), Err(DbError::Foreign { .. })));
        let text = dir.path().join("text.db");
        std::fs::write(&text, "not a database at all, just text that is long enough").unwrap();
        assert!(Db::open_read_only(&text).is_err());
    }
}
