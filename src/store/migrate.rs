//! `securexfer db migrate`: moves a single-machine deployment (SQLite records, files in a
//! storage directory) to the scale-out one (PostgreSQL, an S3-compatible object store).
//!
//! Every row is copied column for column, so clients keep their names, keys, quotas and
//! usual addresses, invitations stay valid, and files keep their generations and BLAKE3s.
//! Each stored file and kept version is written to an object of its own and **verified on
//! arrival**: its bytes are hashed on the way out and must match the source's record
//! (size, cksum, and BLAKE3 where protocol 4 recorded one), then the object is read back
//! from the store and hashed again. Only then does one transaction record it, pointing
//! at the object and forgetting it as a staged object.
//!
//! **Re-runnable.** A row the target already holds as the source has it is left alone,
//! so a second run after an interruption sends only what the first did not finish, and a
//! run against a source that changed since sends only the change. An object written by a
//! run cut short is tracked as staged until it expires, and then deleted by whichever
//! server finds it (as any upload a crash interrupted). The source is the authority until
//! the operator switches over: a file it changed replaces the target's copy (whose object
//! is then deleted). Nothing the target has that the source lacks is touched.
//!
//! Not moved: protocol-3 sessions (clients make new ones), unfinished protocol-4 uploads
//! (their clients start them again) and commits under way (the next run moves their
//! files); the report counts them.

mod source;

use super::db::{Db, DbError};
use super::postgres::import::TargetCopy;
use super::postgres::{PostgresError, PostgresRecords};
use super::records::Records;
use super::s3::{ObjectHashes, S3Store};
use crate::protocol::ClientId;
use source::{After, SourceDb};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// A client's row, every column (SQLite's and PostgreSQL's `clients`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRow {
    pub id: Vec<u8>,
    pub name: String,
    pub public_key: Option<Vec<u8>>,
    /// UTC, `YYYY-MM-DD HH:MM:SS` (SQLite's form).
    pub last_seen: Option<String>,
    pub aes_key: Option<Vec<u8>>,
    pub usual_address: Option<String>,
    pub key_spki: Option<Vec<u8>>,
    pub key_fingerprint: Option<Vec<u8>>,
    pub key_attached_at: Option<String>,
    pub protocol3_allowed: bool,
    pub quota_bytes: Option<i64>,
    pub quota_files: Option<i64>,
}

/// What a file's row and a version's row both say of the bytes they describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub size: Option<i64>,
    pub cksum: Option<i64>,
    /// UTC, `YYYY-MM-DD HH:MM:SS`.
    pub stored_at: Option<String>,
    pub blake3: Option<Vec<u8>>,
    pub mtime_ns: Option<i64>,
    pub generation: Option<i64>,
    pub protocol: i16,
}

/// A file's row (`files`), every column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRow {
    pub id: Vec<u8>,
    pub file_name: String,
    /// In the source, where it is stored relative to the storage directory.
    pub path_name: String,
    pub verified: bool,
    pub content: Content,
}

/// A kept version's row (`versions`), every column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRow {
    pub id: Vec<u8>,
    pub name: String,
    pub version: i64,
    pub file_name: String,
    /// In the source, where it is kept relative to the storage directory.
    pub path_name: String,
    pub content: Content,
}

/// An invitation's row (`invites`): the token's SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRow {
    pub token_hash: Vec<u8>,
    pub name: Option<String>,
    pub created_at: String,
    pub expires_at: String,
    pub used_at: Option<String>,
    pub used_by: Option<Vec<u8>>,
}

/// Why a migration stopped.
#[derive(Debug, Error)]
pub enum MigrateError {
    /// The source's records could not be read.
    #[error("the source database {path}: {source}")]
    Source {
        /// The SQLite file.
        path: String,
        /// What SQLite said.
        source: DbError,
    },
    /// The source's schema is not this build's.
    #[error(
        "the source database {path} is at schema version {found}; this build moves version \
         {known}: start this build's `securexfer serve` on it once (it brings the schema up \
         to date), stop it, and run the migration again"
    )]
    SourceVersion {
        /// The SQLite file.
        path: String,
        /// Its version.
        found: i64,
        /// This build's.
        known: i64,
    },
    /// PostgreSQL failed (its message says how).
    #[error("the target database: {0}")]
    Target(String),
    /// The target already presents another server key.
    #[error(
        "the target database already holds a server key other than the source's ({path}): \
         clients that pinned one would refuse the other. Migrate into a fresh database, or \
         delete its server_key row if no client has met the target yet"
    )]
    KeyDiffers {
        /// The source's key file.
        path: String,
    },
    /// The object store failed.
    #[error("the object store {url}: {source}")]
    Store {
        /// `s3://bucket/prefix`.
        url: String,
        /// What failed.
        source: io::Error,
    },
}

/// What to move: a single machine's records and storage directory, and its server key
/// (the PKCS#8 of `DB.key`), if it has made one.
#[derive(Debug)]
pub struct Source {
    /// The SQLite file.
    pub db: PathBuf,
    /// The storage directory.
    pub storage: PathBuf,
    /// The server key, PKCS#8 DER.
    pub server_key: Option<Vec<u8>>,
}

/// Where to: PostgreSQL (its schema migrated) and the object store over it.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// The records.
    pub records: &'a PostgresRecords,
    /// The object store, whose staged objects those records track.
    pub store: &'a S3Store,
}

/// A file or version that was not moved, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The client's id (hex).
    pub client: String,
    /// The name it was sent as (a version: `name (version N)`).
    pub file: String,
    /// Why.
    pub why: String,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Clients written (all of them, every run).
    pub clients: usize,
    /// Invitations written.
    pub invites: usize,
    /// Whether the server key was moved (false: the target had it already, or the source
    /// has none).
    pub server_key_moved: bool,
    /// Stored files written to objects and recorded.
    pub files_moved: usize,
    /// Their bytes.
    pub bytes_moved: u64,
    /// Stored files the target had as they are.
    pub files_already: usize,
    /// Records of uploads that stored nothing (given up), written as records only.
    pub records_only: usize,
    /// Kept versions written.
    pub versions_moved: usize,
    /// Kept versions the target had.
    pub versions_already: usize,
    /// Objects of earlier runs no record names any more, deleted.
    pub objects_replaced: usize,
    /// Commits under way in the source (not moved: run again).
    pub commits_under_way: i64,
    /// Unfinished protocol-4 uploads (not moved: their clients start them again).
    pub unfinished_uploads: i64,
    /// Files and versions not moved.
    pub problems: Vec<Problem>,
}

/// How far a run is, for the caller to show.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Files and versions looked at.
    pub looked_at: usize,
    /// Bytes written to the object store.
    pub bytes: u64,
}

/// How long past its own time a migrated object stays tracked as staged before a server
/// may delete it: a run that is killed leaves it for no longer than this.
const STAGED_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// Moves `source` into `target` (see the module doc).
pub async fn migrate(
    source: &Source,
    target: Target<'_>,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Report, MigrateError> {
    let shown = source.db.display().to_string();
    let source_err = |source| MigrateError::Source { path: shown.clone(), source };
    let db = Db::open_read_only(&source.db).map_err(source_err)?;
    let found = db.schema_version().map_err(source_err)?;
    if found != Db::latest_version() {
        return Err(MigrateError::SourceVersion {
            path: shown,
            found,
            known: Db::latest_version(),
        });
    }
    let db = SourceDb::new(db);
    let mut run = Run {
        source,
        target,
        report: Report::default(),
        progress,
        at: Progress::default(),
        clients: Default::default(),
    };
    if let Some(key) = &source.server_key {
        match target.records.stored_server_key().await? {
            Some(stored) if stored != *key => {
                let path = format!("{}.key", source.db.display());
                return Err(MigrateError::KeyDiffers { path });
            }
            Some(_) => {}
            None => {
                // Stored unless an instance started in the meantime with a key of its own.
                let stored = target.records.server_key(key.clone()).await.map_err(records_err)?;
                if stored.is_some_and(|stored| stored != *key) {
                    let path = format!("{}.key", source.db.display());
                    return Err(MigrateError::KeyDiffers { path });
                }
                run.report.server_key_moved = true;
            }
        }
    }
    run.report.clients = run.import_clients(&db).await?;
    for invite in db.invites().map_err(source_err)? {
        target.records.import_invite(&invite).await?;
        run.report.invites += 1;
    }
    let mut after = After::default();
    let mut group: Vec<CopyRow> = Vec::new();
    loop {
        let page = db.files_after(&mut after).map_err(source_err)?;
        let done = page.is_empty();
        for row in page {
            if group.last().is_some_and(|g| g.id != row.id || g.path_name != row.path_name) {
                run.copies(&db, std::mem::take(&mut group)).await?;
            }
            group.push(row);
        }
        if done {
            break;
        }
    }
    if !group.is_empty() {
        run.copies(&db, group).await?;
    }
    let mut after = After::default();
    loop {
        let page = db.versions_after(&mut after).map_err(source_err)?;
        if page.is_empty() {
            break;
        }
        for row in page {
            run.version(&db, row).await?;
        }
    }
    target.records.raise_generation(db.generation().map_err(source_err)?).await?;
    let (commits, unfinished) = db.in_flight().map_err(source_err)?;
    run.report.commits_under_way = commits;
    run.report.unfinished_uploads = unfinished;
    Ok(run.report)
}

fn records_err(e: super::records::RecordsError) -> MigrateError {
    MigrateError::Target(e.to_string())
}

impl From<PostgresError> for MigrateError {
    fn from(e: PostgresError) -> Self {
        MigrateError::Target(e.to_string())
    }
}

struct Run<'a> {
    source: &'a Source,
    target: Target<'a>,
    report: Report,
    progress: &'a (dyn Fn(Progress) + Sync),
    at: Progress,
    /// The clients written so far.
    clients: std::collections::HashSet<Vec<u8>>,
}

/// Why a file was not written: a problem to report, or a failure that stops the run.
enum NotMoved {
    Problem(String),
    Failed(MigrateError),
}

impl From<MigrateError> for NotMoved {
    fn from(e: MigrateError) -> Self {
        NotMoved::Failed(e)
    }
}

impl From<PostgresError> for NotMoved {
    fn from(e: PostgresError) -> Self {
        NotMoved::Failed(e.into())
    }
}

impl Run<'_> {
    /// Writes every client of the source; how many.
    async fn import_clients(&mut self, db: &SourceDb) -> Result<usize, MigrateError> {
        let clients = db.clients().map_err(|e| self.source_err(e))?;
        for client in &clients {
            self.target.records.import_client(client).await?;
            self.clients.insert(client.id.clone());
        }
        Ok(clients.len())
    }

    /// Makes sure the client `id` is written before a row of its: one that registered
    /// while the run went on is written then (the files' rows reference it).
    async fn client_written(&mut self, db: &SourceDb, id: &[u8]) -> Result<(), MigrateError> {
        if !self.clients.contains(id) {
            self.report.clients = self.import_clients(db).await?;
        }
        Ok(())
    }

    fn source_err(&self, source: DbError) -> MigrateError {
        MigrateError::Source { path: self.source.db.display().to_string(), source }
    }

    fn looked_at(&mut self) {
        self.at.looked_at += 1;
        (self.progress)(self.at);
    }

    /// The rows of one stored path of one client: the verified ones share its bytes.
    async fn copies(&mut self, db: &SourceDb, rows: Vec<CopyRow>) -> Result<(), MigrateError> {
        if let Some(first) = rows.first() {
            self.client_written(db, &first.id).await?;
        }
        let (verified, records_only): (Vec<CopyRow>, Vec<CopyRow>) =
            rows.into_iter().partition(|r| r.verified);
        for row in records_only {
            let target = self.target.records.target_copy(&row.id, &row.file_name).await?;
            if target.is_none_or(|t| !same(&t, false, &row.content)) {
                let gone = self
                    .target
                    .records
                    .import_copies(std::slice::from_ref(&row), &row.path_name)
                    .await?;
                self.delete_objects(&row.id, gone).await?;
                self.report.records_only += 1;
            }
        }
        let Some(first) = verified.first() else { return Ok(()) };
        self.looked_at();
        let mut already = true;
        let mut key: Option<String> = None;
        for row in &verified {
            match self.target.records.target_copy(&row.id, &row.file_name).await? {
                Some(t)
                    if same(&t, true, &row.content)
                        && key.get_or_insert_with(|| t.path_name.clone()) == &t.path_name => {}
                _ => already = false,
            }
        }
        if already {
            self.report.files_already += 1;
            return Ok(());
        }
        let expected = Expected::of(&first.content);
        match self.send(&first.id, &first.path_name, &expected).await {
            Ok((key, size)) => {
                let gone = self.target.records.import_copies(&verified, &key).await?;
                self.delete_objects(&first.id, gone).await?;
                self.report.files_moved += 1;
                self.report.bytes_moved += size;
                Ok(())
            }
            Err(NotMoved::Problem(why)) => {
                for row in &verified {
                    self.problem(&row.id, row.file_name.clone(), why.clone());
                }
                Ok(())
            }
            Err(NotMoved::Failed(e)) => Err(e),
        }
    }

    async fn version(&mut self, db: &SourceDb, row: VersionRow) -> Result<(), MigrateError> {
        self.client_written(db, &row.id).await?;
        self.looked_at();
        let target = self.target.records.target_version(&row.id, &row.name, row.version).await?;
        if target.is_some_and(|t| same(&t, true, &row.content)) {
            self.report.versions_already += 1;
            return Ok(());
        }
        let expected = Expected::of(&row.content);
        match self.send(&row.id, &row.path_name, &expected).await {
            Ok((key, size)) => {
                let gone = self.target.records.import_version(&row, &key).await?;
                self.delete_objects(&row.id, gone).await?;
                self.report.versions_moved += 1;
                self.report.bytes_moved += size;
                Ok(())
            }
            Err(NotMoved::Problem(why)) => {
                let file = format!("{} (version {})", row.name, row.version);
                self.problem(&row.id, file, why);
                Ok(())
            }
            Err(NotMoved::Failed(e)) => Err(e),
        }
    }

    fn problem(&mut self, id: &[u8], file: String, why: String) {
        let client = id.iter().map(|b| format!("{b:02x}")).collect();
        self.report.problems.push(Problem { client, file, why });
    }

    fn store_err(&self, source: io::Error) -> MigrateError {
        MigrateError::Store { url: self.target.store.url().to_owned(), source }
    }

    /// Writes the source's file at `path_name` to a new object and verifies it against
    /// `expected`, on the way out and read back from the store; its key and size. An
    /// object that does not verify is deleted.
    async fn send(
        &mut self,
        id: &[u8],
        path_name: &str,
        expected: &Expected,
    ) -> Result<(String, u64), NotMoved> {
        let owner = client_id(id);
        let path = contained(&self.source.storage, path_name).ok_or_else(|| {
            NotMoved::Problem(format!(
                "its record names {path_name}, outside the storage directory"
            ))
        })?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) => return Err(NotMoved::Problem(format!("{}: {e}", path.display()))),
        };
        let size = expected.size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        let lifetime =
            Duration::from_secs(size / crate::server::upload::MIN_UPLOAD_RATE) + STAGED_LIFETIME;
        let expires_at = crate::clock::unix_secs().saturating_add(lifetime.as_secs() as i64);
        let (key, sent) = match self.target.store.import(owner, file, size, expires_at).await {
            Ok(sent) => sent,
            // The source could not be read (an OS error: the store's errors wrap
            // object_store's): that file's problem. Else the store's, which stops the run.
            Err(e) if e.get_ref().is_none() => {
                return Err(NotMoved::Problem(format!("reading {}: {e}", path.display())));
            }
            Err(e) => return Err(self.store_err(e).into()),
        };
        self.at.bytes += sent.size;
        (self.progress)(self.at);
        let verdict = match expected.mismatch(&sent) {
            Some(why) => Err(NotMoved::Problem(format!(
                "{} is not what its record says ({why}): changed since, or damaged; \
                 `securexfer db verify` checks the source",
                path.display()
            ))),
            None => match self.target.store.hashes(&key).await {
                Ok(Some(back)) if back == sent => Ok((key.clone(), sent.size)),
                Ok(_) => Err(NotMoved::Problem(format!(
                    "the object {key} read back from the store is not what was sent"
                ))),
                Err(e) => Err(self.store_err(e).into()),
            },
        };
        if verdict.is_err() {
            self.delete_staged(owner, &key).await?;
        }
        verdict
    }

    /// Deletes an object this run wrote and will not record.
    async fn delete_staged(&self, owner: ClientId, key: &str) -> Result<(), MigrateError> {
        self.target.store.delete_object(owner, key).await.map_err(|e| self.store_err(e))?;
        self.target.records.forget_staged(key.to_owned()).await.map_err(records_err)
    }

    /// Deletes objects the target's rows named before this run replaced them.
    async fn delete_objects(&mut self, id: &[u8], keys: Vec<String>) -> Result<(), MigrateError> {
        let owner = client_id(id);
        for key in keys {
            // A record-only row's name is not an object of the client's: nothing to do.
            if S3Store::is_key_of(owner, &key) {
                self.target
                    .store
                    .delete_object(owner, &key)
                    .await
                    .map_err(|e| self.store_err(e))?;
                self.report.objects_replaced += 1;
            }
        }
        Ok(())
    }
}

/// What the source's record says of a file.
struct Expected {
    size: Option<i64>,
    cksum: Option<i64>,
    blake3: Option<Vec<u8>>,
}

impl Expected {
    fn of(content: &Content) -> Self {
        let Content { size, cksum, blake3, .. } = content.clone();
        Expected { size, cksum, blake3 }
    }

    /// How `sent` differs from the record, if it does.
    fn mismatch(&self, sent: &ObjectHashes) -> Option<String> {
        if let Some(size) = self.size
            && u64::try_from(size).ok() != Some(sent.size)
        {
            return Some(format!("{} bytes, recorded {size}", sent.size));
        }
        if let Some(cksum) = self.cksum
            && i64::from(sent.cksum) != cksum
        {
            return Some(format!("cksum {}, recorded {cksum}", sent.cksum));
        }
        if let Some(blake3) = &self.blake3
            && blake3[..] != sent.blake3[..]
        {
            return Some("its BLAKE3 is not the recorded one".to_owned());
        }
        None
    }
}

/// Whether the target's row is the source's.
fn same(t: &TargetCopy, verified: bool, content: &Content) -> bool {
    t.verified == verified
        && t.size == content.size
        && t.cksum == content.cksum
        && t.blake3 == content.blake3
        && t.generation == content.generation
}

fn client_id(id: &[u8]) -> ClientId {
    let mut bytes = [0u8; 16];
    let n = id.len().min(16);
    bytes[..n].copy_from_slice(&id[..n]);
    ClientId(bytes)
}

/// `root/relative`, if `relative` stays inside `root` (records are the server's own, but
/// a path that climbs out is read from nowhere).
fn contained(root: &Path, relative: &str) -> Option<PathBuf> {
    let relative = Path::new(relative);
    let plain = relative.components().all(|c| matches!(c, Component::Normal(_)));
    (plain && !relative.as_os_str().is_empty()).then(|| root.join(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_storage_directory_are_read() {
        let root = Path::new("/srv/storage");
        assert_eq!(contained(root, "ab/x.txt"), Some(root.join("ab/x.txt")));
        assert_eq!(contained(root, "../etc/passwd"), None);
        assert_eq!(contained(root, "/etc/passwd"), None);
        assert_eq!(contained(root, "ab/../../x"), None);
        assert_eq!(contained(root, ""), None);
    }

    #[test]
    fn a_file_differs_from_its_record_by_size_cksum_or_blake3() {
        let sent = ObjectHashes { size: 3, cksum: 7, blake3: [1; 32] };
        let exact = Expected { size: Some(3), cksum: Some(7), blake3: Some(vec![1; 32]) };
        assert_eq!(exact.mismatch(&sent), None);
        let unknown = Expected { size: None, cksum: None, blake3: None };
        assert_eq!(unknown.mismatch(&sent), None, "nothing recorded, nothing to differ from");
        let longer = Expected { size: Some(4), ..exact };
        assert!(longer.mismatch(&sent).unwrap().contains("recorded 4"));
        let other = Expected { size: Some(3), cksum: Some(8), blake3: None };
        assert!(other.mismatch(&sent).unwrap().contains("cksum 7, recorded 8"));
        let hash = Expected { size: Some(3), cksum: Some(7), blake3: Some(vec![2; 32]) };
        assert!(hash.mismatch(&sent).unwrap().contains("BLAKE3"));
    }
}
