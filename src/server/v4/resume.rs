//! Resuming protocol-4 uploads (docs/protocol-v4.md, "Resuming an upload"): an upload of
//! known size that its connection leaves is kept (synced, recorded with its durable length
//! and the BLAKE3 of those bytes), `RESUME_QUERY` reports it, and `PUT_BEGIN` with an
//! offset continues it once the record, the offset and the prefix hash agree and the
//! hashes are rebuilt from the prefix on disk.
//!
//! Why a record is always true: it is written only after its file was synced to at least
//! `durable` bytes, the file lives under a kept name that no leftover cleaning takes, and
//! a continued upload only ever truncates back to `durable` before appending.
//!
//! In an object store the kept bytes are the sent parts of a multipart upload (`durable`
//! is where one ends), recorded with their ETags once S3 has answered for them; the
//! cleaner spares a staged object a record names. Any instance continues it: the record
//! is taken in one statement, and the parts are completed, re-read for both hashes and
//! copied into a fresh upload ([`S3Store::resume_kept`]).

use super::driver::{Connection, Ended};
use super::errors;
use super::identity::unix_now;
use crate::crypto::Cksum;
use crate::protocol::ClientId;
use crate::protocol::v4::{ErrorCode, FrameType, PutBegin, ResumeQuery, ResumeState};
use crate::server::{CommitKey, Shared};
use crate::store::{AnyStaged, Blobs, Records, S3Store, StagedFile, Storage, UnfinishedUpload};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

/// Data between two syncs of an upload that may be kept: what a server crash can lose of
/// it at most (64 MiB of a 1 GiB upload is about 6 %), at one `fdatasync` and one record
/// write per 64 MiB.
pub(super) const DURABLE_EVERY: u64 = 64 << 20;

/// The right to continue (or keep) one client's unfinished upload of one path: held by
/// one connection at a time, so two cannot append to the same file.
pub(crate) struct ResumeClaim {
    shared: Arc<Shared>,
    key: CommitKey,
}

impl Drop for ResumeClaim {
    fn drop(&mut self) {
        let mut resuming = self.shared.resuming.lock().unwrap_or_else(|p| p.into_inner());
        resuming.remove(&self.key);
    }
}

/// What a kept upload continues from: its file (truncated to `offset`) and both hashes of
/// the first `offset` bytes.
pub(super) struct Continued {
    pub(super) staged: AnyStaged,
    pub(super) hasher: blake3::Hasher,
    pub(super) cksum: Cksum,
    pub(super) claim: ResumeClaim,
}

/// The durable state of an upload that may be kept, for its record.
pub(super) struct Keepable {
    pub(super) client_id: ClientId,
    pub(super) path: String,
    pub(super) size: u64,
    pub(super) mtime_ns: i64,
}

impl Shared {
    /// Whether uploads its connections leave are kept: a window. (In a storage directory
    /// a kept upload is a synced file; in an object store, the sent parts of a multipart
    /// upload, which any instance can take up.)
    pub(super) fn keeps_unfinished(&self) -> bool {
        !self.config.resume_window.is_zero()
    }

    /// The claim on `(id, path)`, or `None` when another connection holds it.
    pub(super) fn claim_resume(self: &Arc<Self>, id: ClientId, path: &str) -> Option<ResumeClaim> {
        let key = (id, path.to_owned());
        let mut resuming = self.resuming.lock().unwrap_or_else(|p| p.into_inner());
        resuming.insert(key.clone()).then(|| ResumeClaim { shared: Arc::clone(self), key })
    }

    /// Whether a connection holds the claim on `(id, path)` now.
    fn claimed(&self, id: ClientId, path: &str) -> bool {
        let resuming = self.resuming.lock().unwrap_or_else(|p| p.into_inner());
        resuming.contains(&(id, path.to_owned()))
    }

    /// Waits, up to [`HANDOVER`], until no connection holds the claim on `(id, path)`:
    /// the connection a client just left (Ctrl-C, a killed process) is still making its
    /// upload durable and recording it when the client's next run asks about it.
    async fn handed_over(&self, id: ClientId, path: &str) -> bool {
        let until = tokio::time::Instant::now() + HANDOVER;
        while self.claimed(id, path) {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// How long a resume waits for the connection that left the upload to let go of it.
/// Longer than a connection's end takes (a sync of what its last checkpoint left
/// unsynced, a record); shorter than the wait would annoy a client whose upload really
/// is still arriving on another connection (it then starts from 0).
const HANDOVER: Duration = Duration::from_secs(2);

/// `conflict` for a resume the server cannot serve; the client starts from 0.
fn cannot_resume(why: &str) -> crate::protocol::v4::ErrorFrame {
    errors::plain(ErrorCode::Conflict, false, &format!("cannot resume: {why}; start from 0"))
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// `RESUME_QUERY`: the unfinished upload kept for the path, or nothing.
    pub(super) async fn resume_query(&mut self, tag: u32, query: ResumeQuery) -> Result<(), Ended> {
        let id = self.machine.client().expect("the machine lets only clients query");
        let state = if self.shared.keeps_unfinished() {
            // What a leaving connection records last is the answer, not its checkpoint.
            self.shared.handed_over(id, &query.path).await;
            let kept = self.shared.records().unfinished(id, query.path.clone()).await;
            let kept = match self.internal_on_error(kept)? {
                Some(kept) if kept.expires_at <= unix_now() || !self.on_disk(&kept).await => {
                    // Its file went with an upload that failed midway: the record goes too.
                    forget_and_delete(&self.shared, kept).await;
                    None
                }
                kept => kept,
            };
            kept.map_or(ResumeState::NOTHING, |u| ResumeState {
                present: true,
                size: u.size,
                durable: u.durable,
                prefix_hash: u.prefix_hash,
                mtime_ns: u.mtime_ns,
                expires_at: u.expires_at,
            })
        } else {
            ResumeState::NOTHING
        };
        info!(tag, path = %query.path, present = state.present, durable = state.durable, "protocol-4 resume query");
        let payload = state.encode().map_err(|e| Ended::Gone(std::io::Error::other(e)))?;
        self.send(FrameType::ResumeState, tag, &payload).await?;
        Ok(())
    }

    /// Whether the kept upload's file holds its durable bytes. (An object store's parts
    /// cannot be read before they are completed: resuming finds out.)
    async fn on_disk(&self, kept: &UnfinishedUpload) -> bool {
        let Some(local) = self.shared.storage.local().cloned() else { return true };
        let (id, location, durable) = (kept.client_id, kept.location.clone(), kept.durable);
        let len = tokio::task::spawn_blocking(move || local.kept_len(id, &location)).await;
        matches!(len, Ok(Ok(Some(len))) if len >= durable)
    }

    /// `PUT_BEGIN` with an offset: the kept upload of the path, checked against the
    /// request and reopened at `offset` with its hashes rebuilt; `conflict` when it is
    /// gone, differs or is being continued elsewhere, `corrupt` when its bytes on disk no
    /// longer hash to the recorded prefix (it is dropped then).
    pub(super) async fn continue_put(
        &mut self,
        id: ClientId,
        put: &PutBegin,
        direct: bool,
    ) -> Result<Continued, Ended> {
        let refuse = |why: &str| Err(Ended::Refused(cannot_resume(why)));
        if !self.shared.keeps_unfinished() {
            return refuse("this server keeps no unfinished uploads (--resume-window 0)");
        }
        self.shared.handed_over(id, &put.path).await;
        let Some(claim) = self.shared.claim_resume(id, &put.path) else {
            return refuse("another connection is continuing this upload");
        };
        let kept = self.shared.records().unfinished(id, put.path.clone()).await;
        let Some(kept) = self.internal_on_error(kept)?.filter(|k| k.expires_at > unix_now()) else {
            return refuse("no unfinished upload of this path is kept");
        };
        if Some(kept.size) != put.size {
            return refuse("the unfinished upload has another size");
        }
        if kept.durable != put.offset || kept.prefix_hash != put.prefix_hash {
            return refuse("the offset or prefix hash is not the kept upload's");
        }
        if let Blobs::S3(s3) = &self.shared.storage {
            return self.continue_in_object_store(s3.clone(), kept, put, claim).await;
        }
        let (storage, location) = (self.shared.storage.clone(), kept.location.clone());
        let offset = kept.durable;
        let reopened =
            tokio::task::spawn_blocking(move || reopen(&storage, id, &location, offset, direct))
                .await
                .map_err(|e| Ended::Gone(std::io::Error::other(e)))?;
        match reopened {
            Ok((staged, hasher, cksum)) if *hasher.finalize().as_bytes() == put.prefix_hash => {
                self.shared.metrics.upload_resumed(put.offset);
                Ok(Continued { staged: AnyStaged::Local(staged), hasher, cksum, claim })
            }
            Ok((staged, ..)) => {
                warn!(path = %put.path, "a kept upload's bytes no longer hash to its record: dropped");
                self.drop_kept(id, &put.path, staged).await;
                Err(Ended::Refused(errors::corrupt(&put.path, "the kept prefix changed on disk")))
            }
            Err(e) => {
                warn!(path = %put.path, "a kept upload's file cannot be continued ({e}): dropped");
                forget_and_delete(&self.shared, kept).await;
                refuse("the kept upload's file is gone")
            }
        }
    }

    /// [`Connection::continue_put`] in an object store: the record taken (by one
    /// statement, so of two instances resuming at once only one goes on), the kept parts
    /// completed, read back and copied into a fresh upload that goes on from `offset`.
    async fn continue_in_object_store(
        &self,
        s3: S3Store,
        kept: UnfinishedUpload,
        put: &PutBegin,
        claim: ResumeClaim,
    ) -> Result<Continued, Ended> {
        let refuse = |why: &str| Err(Ended::Refused(cannot_resume(why)));
        if let Err(e) = s3.hold_kept(&kept).await {
            let at = unix_now();
            tracing::error!(at, path = %put.path, "cannot hold a kept upload to resume it: {e}");
            return Err(Ended::Refused(errors::internal(at)));
        }
        let (id, path, location) = (kept.client_id, kept.path.clone(), kept.location.clone());
        let taken = self.shared.records().forget_unfinished(id, path, location).await;
        if !self.internal_on_error(taken)? {
            return refuse("another connection is continuing this upload");
        }
        let resumed = tokio::task::spawn_blocking(move || s3.resume_kept(&kept))
            .await
            .map_err(|e| Ended::Gone(std::io::Error::other(e)))?;
        match resumed {
            Ok((staged, hasher, cksum)) if *hasher.finalize().as_bytes() == put.prefix_hash => {
                info!(path = %put.path, offset = put.offset, "a kept upload taken up from the object store");
                self.shared.metrics.upload_resumed(put.offset);
                Ok(Continued { staged: AnyStaged::S3(staged), hasher, cksum, claim })
            }
            Ok((staged, ..)) => {
                warn!(path = %put.path, "a kept upload's parts do not hash to its record: dropped");
                let _ = tokio::task::spawn_blocking(move || drop(staged)).await;
                Err(Ended::Refused(errors::corrupt(
                    &put.path,
                    "the kept prefix changed in the store",
                )))
            }
            Err(e) => {
                warn!(path = %put.path, "a kept upload cannot be continued ({e}): dropped");
                refuse("the kept upload's parts are gone from the object store")
            }
        }
    }

    /// Forgets the record of this connection's client's upload of `path` at `location`
    /// (committed or discarded: no longer unfinished).
    pub(super) async fn forget_kept(&self, path: String, location: String) {
        let id = self.machine.client().expect("only clients have uploads");
        if let Err(e) = self.shared.records().forget_unfinished(id, path.clone(), location).await {
            warn!(%path, "could not forget an unfinished upload's record: {e}");
        }
    }

    /// The uploads a connection leaves: those that may be kept are (none when not
    /// `may_keep`), the rest go.
    pub(super) async fn keep_or_forget(
        &mut self,
        open: Option<super::put::OpenPut>,
        held: Vec<super::put::Held>,
        may_keep: bool,
    ) {
        let mut gone = Vec::new();
        if let Some(open) = open {
            match open.into_keepable() {
                Ok((keep, staged, durable, prefix, claim)) if may_keep => {
                    self.keep(keep, staged, durable, prefix).await;
                    drop(claim);
                }
                Ok((keep, staged, ..)) => self.throw_kept(keep, staged).await,
                Err(open) => gone.push(open as Box<dyn Send>),
            }
        }
        for held in held {
            match held.into_keepable() {
                Ok((keep, staged, durable, prefix, claim)) if may_keep => {
                    self.keep(keep, staged, durable, prefix).await;
                    drop(claim);
                }
                Ok((keep, staged, ..)) => self.throw_kept(keep, staged).await,
                Err(held) => gone.push(held as Box<dyn Send>),
            }
        }
        if !gone.is_empty() {
            info!(uploads = gone.len(), "uncommitted protocol-4 uploads thrown away");
            let _ = tokio::task::spawn_blocking(move || drop(gone)).await;
        }
    }

    /// Throws away an upload refused midway (a failed write, its size or quota passed),
    /// with any record a checkpoint made of it: no record outlives the bytes it names.
    pub(super) async fn throw_away(&self, open: super::put::OpenPut) {
        match open.into_keepable() {
            Ok((keep, staged, ..)) => self.throw_kept(keep, staged).await,
            Err(open) => {
                let _ = tokio::task::spawn_blocking(move || drop(open)).await;
            }
        }
    }

    /// Deletes an upload that could have been kept, and any record a checkpoint made.
    async fn throw_kept(&self, keep: Keepable, staged: AnyStaged) {
        let location = crate::store::StagedBlob::location(&staged).to_owned();
        let _ = tokio::task::spawn_blocking(move || drop(staged)).await;
        let records = self.shared.records();
        if let Err(e) = records.forget_unfinished(keep.client_id, keep.path.clone(), location).await
        {
            warn!(path = %keep.path, "could not forget a thrown-away unfinished upload: {e}");
        }
    }

    /// Deletes a kept upload's file and its record.
    async fn drop_kept(&self, id: ClientId, path: &str, staged: StagedFile) {
        let location = crate::store::StagedBlob::location(&staged).to_owned();
        let _ = tokio::task::spawn_blocking(move || drop(staged)).await;
        if let Err(e) = self.shared.records().forget_unfinished(id, path.to_owned(), location).await
        {
            warn!(path, "could not forget a dropped unfinished upload: {e}");
        }
    }

    /// Forgets and deletes an unfinished upload that a put from 0 replaces, read with the
    /// put's other facts.
    pub(super) async fn drop_unfinished(&self, kept: UnfinishedUpload) {
        forget_and_delete(&self.shared, kept).await;
    }

    /// A new put of the path from 0 replaces what is kept of it.
    pub(super) async fn replace_kept(&self, id: ClientId, path: &str) -> Result<(), Ended> {
        if !self.shared.keeps_unfinished() {
            return Ok(());
        }
        let kept = self.shared.records().unfinished(id, path.to_owned()).await;
        if let Some(kept) = self.internal_on_error(kept)? {
            forget_and_delete(&self.shared, kept).await;
        }
        Ok(())
    }

    /// Makes an upload that may be kept durable up to `durable` bytes and records it,
    /// whatever happens next (a crash included).
    pub(super) async fn checkpoint(
        &self,
        keep: &Keepable,
        staged: AnyStaged,
        durable: u64,
        prefix: [u8; 32],
    ) -> (AnyStaged, bool) {
        let synced = tokio::task::spawn_blocking(move || {
            let mut staged = staged;
            let synced = match &mut staged {
                AnyStaged::Local(file) => file.sync().map(|()| (None, Vec::new())),
                AnyStaged::S3(object) => object.checkpoint(durable),
            };
            (staged, synced)
        })
        .await;
        let Ok((staged, synced)) = synced else { unreachable!("syncing a file does not panic") };
        let (upload_id, parts) = match synced {
            Ok(parts) => parts,
            Err(e) => {
                warn!(path = %keep.path, "could not make an upload durable to resume it later: {e}");
                return (staged, false);
            }
        };
        let upload = UnfinishedUpload {
            client_id: keep.client_id,
            path: keep.path.clone(),
            location: crate::store::StagedBlob::location(&staged).to_owned(),
            size: keep.size,
            mtime_ns: keep.mtime_ns,
            durable,
            prefix_hash: prefix,
            expires_at: unix_now() + self.shared.config.resume_window.as_secs() as i64,
            upload_id,
            parts,
        };
        match self.shared.records().keep_unfinished(upload).await {
            Ok(()) => {
                debug!(path = %keep.path, durable, "an unfinished upload checkpointed");
                (staged, true)
            }
            Err(e) => {
                warn!(path = %keep.path, "could not record an unfinished upload: {e}");
                (staged, false)
            }
        }
    }

    /// The upload a connection leaves, kept for resuming: synced, recorded, and its file
    /// spared (not deleted as the staged blob is dropped).
    pub(super) async fn keep(
        &self,
        keep: Keepable,
        staged: AnyStaged,
        durable: u64,
        prefix: [u8; 32],
    ) {
        let (staged, recorded) = self.checkpoint(&keep, staged, durable, prefix).await;
        let file = match staged {
            AnyStaged::Local(file) => file,
            AnyStaged::S3(object) if recorded => {
                object.keep();
                return info!(path = %keep.path, durable, size = keep.size, "unfinished protocol-4 upload kept in the object store for resuming");
            }
            AnyStaged::S3(object) => {
                let _ = tokio::task::spawn_blocking(move || drop(object)).await;
                return;
            }
        };
        if !recorded {
            let _ = tokio::task::spawn_blocking(move || drop(file)).await;
            return;
        }
        let Some(storage) = self.shared.storage.local().cloned() else { return };
        let kept = tokio::task::spawn_blocking(move || storage.keep_unfinished(file)).await;
        match kept {
            Ok(Ok(_)) => {
                info!(path = %keep.path, durable, size = keep.size, "unfinished protocol-4 upload kept for resuming")
            }
            _ => {
                warn!(path = %keep.path, "could not keep an unfinished upload; start-up will drop its record")
            }
        }
    }
}

/// Reopens a kept upload at `offset` and hashes its prefix with both hashes, streaming.
fn reopen(
    storage: &Blobs,
    id: ClientId,
    location: &str,
    offset: u64,
    direct: bool,
) -> std::io::Result<(StagedFile, blake3::Hasher, Cksum)> {
    let local: &Storage =
        storage.local().ok_or_else(|| std::io::Error::other("not a storage directory"))?;
    let (staged, reader) = local.resume_unfinished(id, location, offset, direct)?;
    let (mut hasher, mut cksum) = (blake3::Hasher::new(), Cksum::new());
    let mut reader = reader.take(offset);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf)? {
            0 => break,
            n => {
                hasher.update(&buf[..n]);
                cksum.update(&buf[..n]);
            }
        }
    }
    if cksum.len() != offset {
        return Err(std::io::Error::other("the kept file is shorter than its durable length"));
    }
    Ok((staged, hasher, cksum))
}

/// Forgets a kept upload and deletes its file (the record first: a crash in between
/// leaves a kept file no record names, which start-up deletes).
async fn forget_and_delete(shared: &Shared, kept: UnfinishedUpload) {
    let (id, location) = (kept.client_id, kept.location.clone());
    match shared.records().forget_unfinished(id, kept.path.clone(), location.clone()).await {
        Ok(_) => {}
        Err(e) => return warn!(path = %kept.path, "could not forget an unfinished upload: {e}"),
    }
    match &shared.storage {
        Blobs::Local(storage) => {
            let storage = storage.clone();
            let deleted =
                tokio::task::spawn_blocking(move || storage.delete_kept(id, &location)).await;
            if let Ok(Err(e)) = deleted {
                warn!(path = %kept.path, "could not delete an unfinished upload's file: {e}");
            }
        }
        Blobs::S3(s3) => abandon(s3, &kept).await,
    }
}

/// Deletes a kept upload from the object store once its record is gone; what fails stays
/// staged, for the cleaner.
async fn abandon(s3: &S3Store, kept: &UnfinishedUpload) {
    if let Err(e) = s3.abandon_kept(kept).await {
        warn!(path = %kept.path, "could not delete an unfinished upload's parts; they expire: {e}");
    }
}

/// The janitor's round and start-up's: expired kept uploads removed (record, then file).
pub(crate) async fn remove_expired(shared: &Shared) -> usize {
    let expired = match shared.records().claim_expired_unfinished(unix_now()).await {
        Ok(expired) => expired,
        // Backends without protocol 4 keep none.
        Err(_) => return 0,
    };
    let n = expired.len();
    if let Blobs::S3(s3) = &shared.storage {
        for kept in &expired {
            abandon(s3, kept).await;
        }
    }
    if let Some(storage) = shared.storage.local().cloned() {
        let _ = tokio::task::spawn_blocking(move || {
            for kept in expired {
                if let Err(e) = storage.delete_kept(kept.client_id, &kept.location) {
                    warn!(path = %kept.path, "could not delete an expired unfinished upload: {e}");
                }
            }
        })
        .await;
    }
    n
}

/// Start-up: every unfinished-upload record made true. A record whose file is missing or
/// shorter than its durable length is dropped (the bytes it promises are not there), and
/// a kept file no record names (a crash before its first record) is deleted. Expired ones
/// go too.
pub async fn reconcile_unfinished(
    records: &dyn Records,
    storage: &Blobs,
) -> std::io::Result<usize> {
    let Some(local) = storage.local().cloned() else { return Ok(0) };
    let Ok(all) = records.all_unfinished().await else { return Ok(0) };
    let now = unix_now();
    let mut named = std::collections::HashSet::new();
    let mut dropped = 0;
    for kept in all {
        let len = {
            let (local, id, location) = (local.clone(), kept.client_id, kept.location.clone());
            tokio::task::spawn_blocking(move || local.kept_len(id, &location))
                .await
                .map_err(std::io::Error::other)??
        };
        if kept.expires_at > now && len.is_some_and(|len| len >= kept.durable) {
            named.insert(kept.location);
            continue;
        }
        let (id, path, location) = (kept.client_id, kept.path.clone(), kept.location.clone());
        records.forget_unfinished(id, path, location).await.map_err(std::io::Error::other)?;
        dropped += 1;
    }
    tokio::task::spawn_blocking(move || {
        for (id, location) in local.kept_files()? {
            if !named.contains(&location) {
                local.delete_kept(id, &location)?;
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(std::io::Error::other)??;
    Ok(dropped)
}
