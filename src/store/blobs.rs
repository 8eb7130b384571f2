//! The blob store a server was started with, chosen at start-up: a local directory
//! ([`Storage`]) or an object store ([`S3Store`]), one enum implementing [`BlobStore`] by
//! matching (as the `blob` module's doc proposes), so that every chunk's write stays a
//! static call.
//!
//! What the two disagree on is kept here, in a few methods the server calls instead of
//! naming either store: where the records say a committed upload is
//! ([`Blobs::commit_plan`]), whether a stored copy exists ([`Blobs::has_stored`]), and
//! what crash reconciliation reads and undoes.

use super::blob::{BlobInfo, BlobStore, Chunk, Committed, StagedBlob};
use super::db::StoredCopy;
use super::local::{GroupCommit, StagedFile, Storage};
use super::records::{Records, RecordsError};
use super::s3::{S3Staged, S3Store};
use crate::protocol::ClientId;
use std::io;

/// The server's blob store.
#[derive(Debug, Clone)]
pub enum Blobs {
    /// A local storage directory (`--storage DIR`).
    Local(Storage),
    /// An S3-compatible object store (`--storage s3://bucket/prefix`).
    S3(S3Store),
}

/// An upload staged in either store.
#[derive(Debug)]
pub enum AnyStaged {
    /// A temporary file.
    Local(StagedFile),
    /// An object being written.
    S3(S3Staged),
}

/// Where a commit will record its upload, and what it keeps of the copy it replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPlan {
    /// The records' path of the committed upload.
    pub path_name: String,
    /// Where the copy it replaces is kept as a version, if it is.
    pub archive: Option<String>,
}

impl Blobs {
    /// The local storage directory, if that is the store.
    pub fn local(&self) -> Option<&Storage> {
        match self {
            Blobs::Local(storage) => Some(storage),
            Blobs::S3(_) => None,
        }
    }

    /// What the store is, for messages: the directory or `s3://bucket/prefix`.
    pub fn describe(&self) -> String {
        match self {
            Blobs::Local(storage) => storage.root().display().to_string(),
            Blobs::S3(s3) => s3.url().to_owned(),
        }
    }

    /// Whether `id` has a verified copy stored as `name`.
    pub async fn has_stored(
        &self,
        records: &dyn Records,
        id: ClientId,
        name: &str,
    ) -> Result<bool, RecordsError> {
        match self {
            Blobs::Local(storage) => records.has_verified_at(id, storage.path_name(id, name)).await,
            Blobs::S3(_) => Ok(records.stored_copy(id, name.to_owned()).await?.is_some()),
        }
    }

    /// Where committing the upload at `location` as `name` of `id` will record it, and the
    /// version to keep of the copy it replaces. A local commit renames the upload onto
    /// the name's one path and links the earlier copy as a fresh version first (with
    /// `keep` above 0). An object store's upload stays the object it was written to, and
    /// the earlier copy, another object, becomes the version under its own key whatever
    /// `keep` is (with 0, the commit prunes it at once and it is deleted after).
    pub async fn commit_plan(
        &self,
        records: &dyn Records,
        id: ClientId,
        name: &str,
        location: &str,
        keep: usize,
    ) -> Result<CommitPlan, RecordsError> {
        match self {
            Blobs::Local(storage) => {
                let verified =
                    keep > 0 && records.has_verified_at(id, storage.path_name(id, name)).await?;
                Ok(storage.commit_plan(id, name, keep, verified))
            }
            Blobs::S3(_) => {
                let archive = records.stored_copy(id, name.to_owned()).await?;
                Ok(CommitPlan { path_name: location.to_owned(), archive })
            }
        }
    }

    /// [`Blobs::commit_plan`] of a storage directory, decided on what the caller already
    /// read of the records (`verified`: a verified copy is at the name); `None` for an
    /// object store, whose plan reads the records itself.
    pub fn known_plan(
        &self,
        id: ClientId,
        name: &str,
        keep: usize,
        verified: bool,
    ) -> Option<CommitPlan> {
        match self {
            Blobs::Local(storage) => Some(storage.commit_plan(id, name, keep, verified)),
            Blobs::S3(_) => None,
        }
    }

    /// The plaintext size and cksum of the stored blob the records call `path_name`, or
    /// `None` when there is none there (reads it whole: crash reconciliation only).
    pub async fn digest(&self, path_name: &str) -> io::Result<Option<(u64, u32)>> {
        match self {
            Blobs::Local(storage) => {
                let (storage, path) = (storage.clone(), path_name.to_owned());
                tokio::task::spawn_blocking(move || storage.digest(&path))
                    .await
                    .map_err(io::Error::other)?
            }
            Blobs::S3(s3) => s3.digest(path_name).await,
        }
    }

    /// Whether the version an interrupted commit meant to keep at `archive` is there.
    pub async fn has_version(&self, archive: &str) -> io::Result<bool> {
        match self {
            Blobs::Local(_) => Ok(self.digest(archive).await?.is_some()),
            // The replaced object itself: a commit never moved nor deleted it.
            Blobs::S3(_) => Ok(true),
        }
    }

    /// Undoes what an interrupted commit did to keep the version `archive` before it
    /// stopped short of its rename.
    pub async fn undo_version(&self, id: ClientId, archive: &str) -> io::Result<()> {
        match self {
            Blobs::Local(storage) => {
                let (storage, archive) = (storage.clone(), archive.to_owned());
                tokio::task::spawn_blocking(move || storage.remove_version(id, &archive))
                    .await
                    .map_err(io::Error::other)?
            }
            // Nothing was done: the archive is the current copy, which stays.
            Blobs::S3(_) => Ok(()),
        }
    }
}

/// Protocol 4's reads and removals of a stored copy (`GET`, `RM`), by what its record
/// says: a local copy by its name, an object by its key.
impl Blobs {
    /// The bytes of `copy`, for reading. An object is opened by the key its record gives,
    /// not looked up again, so a download reads the copy it found recorded or fails.
    pub fn open_copy(
        &self,
        id: ClientId,
        copy: &StoredCopy,
    ) -> io::Result<Box<dyn io::Read + Send>> {
        match self {
            Blobs::Local(storage) => storage.get(id, &copy.stored_name),
            Blobs::S3(s3) => s3.get_key(id, &copy.location),
        }
    }

    /// Keeps `copy`, being removed, as a version: a local copy is linked under a fresh
    /// version name, an object stays where it is and its key becomes the version's (as a
    /// replacing commit keeps it). The version's place, or `None` when the local copy is
    /// gone.
    pub fn keep_removed(&self, id: ClientId, copy: &StoredCopy) -> io::Result<Option<String>> {
        match self {
            Blobs::Local(storage) => {
                let archive = storage.new_version_name(id);
                let kept = storage.keep_as_version(id, &copy.stored_name, &archive)?;
                Ok(kept.then_some(archive))
            }
            Blobs::S3(_) => Ok(Some(copy.location.clone())),
        }
    }

    /// Deletes the bytes of `copy` once the records forgot it, unless the records kept
    /// them as a version (`kept`: an object store's version is the object itself).
    pub fn delete_removed(&self, id: ClientId, copy: &StoredCopy, kept: bool) -> io::Result<()> {
        match self {
            Blobs::Local(storage) => storage.delete(id, &copy.stored_name),
            // A copy never verified (a protocol-3 upload given up) has no object.
            Blobs::S3(_) if kept || !copy.verified => Ok(()),
            Blobs::S3(s3) => s3.delete_version(id, &copy.location),
        }
    }
}

/// One upload of a group commit ([`Blobs::commit_group`]).
#[derive(Debug)]
pub struct GroupItem {
    /// The finished upload ([`AnyStaged::sync_finished`] done).
    pub staged: AnyStaged,
    /// Its client.
    pub owner: ClientId,
    /// The name it is stored as.
    pub name: String,
    /// Where the copy it replaces is kept as a version, if it is.
    pub archive: Option<String>,
}

impl Blobs {
    /// Commits a group of uploads, one result each in order. A local directory renames
    /// them all and then syncs each folder touched once ([`Storage::commit_group`]); an
    /// object store commits them one after another (each object is durable when its
    /// upload completes, so there is nothing to share).
    pub fn commit_group(&self, group: Vec<GroupItem>) -> Vec<io::Result<Committed>> {
        match self {
            Blobs::Local(storage) => {
                let mut results: Vec<Option<io::Result<Committed>>> = Vec::new();
                let mut local = Vec::new();
                for item in group {
                    match item.staged {
                        AnyStaged::Local(staged) => {
                            results.push(None);
                            local.push(GroupCommit {
                                staged,
                                owner: item.owner,
                                name: item.name,
                                archive: item.archive,
                            });
                        }
                        AnyStaged::S3(_) => results
                            .push(Some(Err(io::Error::other("an upload staged in another store")))),
                    }
                }
                let mut done = storage.commit_group(local).into_iter();
                results
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| done.next().expect("one result per upload")))
                    .collect()
            }
            Blobs::S3(_) => group
                .into_iter()
                .map(|i| self.commit(i.staged, i.owner, &i.name, i.archive.as_deref()))
                .collect(),
        }
    }
}

impl AnyStaged {
    /// Finishes the upload and makes its bytes durable, the step of a group commit that
    /// its files take together. An object store's upload becomes durable when it is
    /// committed: nothing to do here.
    pub fn sync_finished(&mut self) -> io::Result<()> {
        match self {
            AnyStaged::Local(file) => file.sync_finished(),
            AnyStaged::S3(_) => Ok(()),
        }
    }

    /// The object store's upload, if that is what this is (else it is dropped: aborted).
    pub fn into_s3(self) -> Option<super::S3Staged> {
        match self {
            AnyStaged::S3(staged) => Some(staged),
            AnyStaged::Local(_) => None,
        }
    }

    /// The local temporary file, if that is what this is.
    pub fn local_mut(&mut self) -> Option<&mut StagedFile> {
        match self {
            AnyStaged::Local(file) => Some(file),
            AnyStaged::S3(_) => None,
        }
    }
}

impl StagedBlob for AnyStaged {
    fn write(&mut self, chunk: Chunk) -> io::Result<()> {
        match self {
            AnyStaged::Local(staged) => staged.write(chunk),
            AnyStaged::S3(staged) => staged.write(chunk),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        match self {
            AnyStaged::Local(staged) => staged.finish(),
            AnyStaged::S3(staged) => staged.finish(),
        }
    }

    fn location(&self) -> &str {
        match self {
            AnyStaged::Local(staged) => staged.location(),
            AnyStaged::S3(staged) => staged.location(),
        }
    }
}

impl BlobStore for Blobs {
    type Staged = AnyStaged;

    fn stage(&self, owner: ClientId, size_hint: u64, large: bool) -> io::Result<AnyStaged> {
        match self {
            Blobs::Local(s) => s.stage(owner, size_hint, large).map(AnyStaged::Local),
            Blobs::S3(s) => s.stage(owner, size_hint, large).map(AnyStaged::S3),
        }
    }

    fn commit(
        &self,
        staged: AnyStaged,
        owner: ClientId,
        name: &str,
        archive: Option<&str>,
    ) -> io::Result<Committed> {
        match (self, staged) {
            (Blobs::Local(s), AnyStaged::Local(staged)) => s.commit(staged, owner, name, archive),
            (Blobs::S3(s), AnyStaged::S3(staged)) => s.commit(staged, owner, name, archive),
            _ => Err(io::Error::other("an upload staged in another store")),
        }
    }

    fn get(&self, owner: ClientId, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        match self {
            Blobs::Local(s) => s.get(owner, name),
            Blobs::S3(s) => s.get(owner, name),
        }
    }

    fn list(&self, owner: ClientId) -> io::Result<Vec<BlobInfo>> {
        match self {
            Blobs::Local(s) => s.list(owner),
            Blobs::S3(s) => s.list(owner),
        }
    }

    fn delete(&self, owner: ClientId, name: &str) -> io::Result<()> {
        match self {
            Blobs::Local(s) => s.delete(owner, name),
            Blobs::S3(s) => s.delete(owner, name),
        }
    }

    fn keep_as_version(&self, owner: ClientId, name: &str, version: &str) -> io::Result<bool> {
        match self {
            Blobs::Local(s) => s.keep_as_version(owner, name, version),
            // An object store keeps a removed copy as a version through the records
            // ([`Blobs::keep_removed`]), not under a name of the store's.
            Blobs::S3(s) => s.keep_as_version(owner, name, version),
        }
    }

    fn delete_version(&self, owner: ClientId, version: &str) -> io::Result<()> {
        match self {
            Blobs::Local(s) => s.delete_version(owner, version),
            Blobs::S3(s) => s.delete_version(owner, version),
        }
    }

    fn path_name(&self, owner: ClientId, name: &str) -> String {
        match self {
            Blobs::Local(s) => s.path_name(owner, name),
            Blobs::S3(s) => s.path_name(owner, name),
        }
    }

    fn new_version_name(&self, owner: ClientId) -> String {
        match self {
            Blobs::Local(s) => s.new_version_name(owner),
            Blobs::S3(s) => s.new_version_name(owner),
        }
    }

    fn available_bytes(&self) -> Option<u64> {
        match self {
            Blobs::Local(s) => s.available_bytes(),
            Blobs::S3(s) => s.available_bytes(),
        }
    }
}
