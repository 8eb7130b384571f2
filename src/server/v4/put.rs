//! Uploads over protocol 4: `PUT_BEGIN` checked before any content, its `DATA` streamed
//! into a staged blob while BLAKE3 (the end-to-end hash) and protocol 3's cksum (what
//! start-up decides an interrupted commit by) are computed, `PUT_END` answered with
//! `PUT_RECEIVED`, and `COMMIT` stored through the same commit intent as protocol 3's 1029
//! (docs/protocol-v4.md, "Uploads"), so crash safety is the same.

use super::driver::{Connection, Ended};
use super::errors;
use super::folders;
use super::identity::unix_now;
use super::resume::{DURABLE_EVERY, Keepable, ResumeClaim};
use crate::buf::AlignedBuf;
use crate::crypto::Cksum;
use crate::protocol::v4::{
    Commit, ErrorCode, ErrorFrame, ErrorUnit, FrameHeader, FrameType, MAX_DATA_PAYLOAD, PutBegin,
    PutReceived, RESUMABLE_FROM, names,
};
use crate::protocol::{ClientId, storage_name};
use crate::server::metrics::UploadOutcome;
use crate::server::session::{Held as QuotaHeld, Refused, Reservation};
use crate::server::upload::{LARGE_UPLOAD, MIN_UPLOAD_RATE};
use crate::store::{AnyStaged, BlobStore, Chunk, PutFacts, StagedBlob, UnfinishedUpload};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{info, warn};

/// `DATA` buffers per upload: one being filled from the socket, one being hashed and
/// written. Each holds one frame (at most [`MAX_DATA_PAYLOAD`]), so an upload holds at
/// most 2 MiB whatever the file's size.
const BUFFERS: usize = 2;

/// Uploads declared at most this large into a storage directory are created, written and
/// finished on the connection's own task: each of those steps is a system call of a few
/// microseconds, less than the hand-over to the blocking pool and back it would otherwise
/// cost (three per file, the better part of a small file's time on the server, measured
/// with perf: bench/README.md, "Many small files"). Larger ones, and an object store's,
/// go through the blocking pool.
const INLINE_PUT: u64 = 64 << 10;

/// A put whose data is being read.
pub(super) struct OpenPut {
    tag: u32,
    name: String,
    staged: AnyStaged,
    hasher: blake3::Hasher,
    cksum: Cksum,
    received: u64,
    declared: Option<u64>,
    mtime_ns: i64,
    replaces: bool,
    started: Instant,
    buffers: Buffers,
    _in_flight: OwnedSemaphorePermit,
    _large_slot: Option<OwnedSemaphorePermit>,
    reservation: Reservation,
    /// For an upload of unknown size under a bytes quota: how many bytes it may take.
    quota_room: Option<u64>,
    /// Set when the upload is kept if its connection leaves it (`--resume-window`).
    keep: Option<Keepable>,
    /// How many of its first bytes are synced and recorded.
    durable: u64,
    /// This connection's hold on the path's unfinished upload, while `keep` is set.
    claim: Option<ResumeClaim>,
    /// Written on the connection's task ([`INLINE_PUT`]).
    inline: bool,
    /// For an upload that may be kept in an object store: the size of its parts, where
    /// alone it can be kept (S3 keeps nothing of a part not sent whole).
    part_every: Option<u64>,
    /// The last part boundary it passed, with the BLAKE3 state of the bytes before it.
    boundary: Option<(u64, blake3::Hasher)>,
}

/// An upload whose data is all in, waiting for `COMMIT` or `DISCARD`.
pub(super) struct Held {
    pub(super) name: String,
    pub(super) staged: AnyStaged,
    pub(super) size: u64,
    pub(super) hash: [u8; 32],
    pub(super) cksum: u32,
    pub(super) mtime_ns: i64,
    pub(super) _reservation: Reservation,
    pub(super) keep: Option<Keepable>,
    pub(super) claim: Option<ResumeClaim>,
}

/// What keeping an upload needs: its record's fields, its blob, how many of its bytes
/// and their hash, and the claim to let go once it is kept.
pub(super) type Keeping = (Keepable, AnyStaged, u64, [u8; 32], ResumeClaim);

impl OpenPut {
    /// The parts to keep it by, or itself (boxed, to be dropped) when it may not be kept.
    pub(super) fn into_keepable(self) -> Result<Keeping, Box<Self>> {
        let point = self.keep_point().filter(|(at, _)| *at > 0);
        let (Some((at, prefix)), true, true) = (point, self.keep.is_some(), self.claim.is_some())
        else {
            return Err(Box::new(self));
        };
        let (keep, claim) = (self.keep.expect("checked"), self.claim.expect("checked"));
        Ok((keep, self.staged, at, prefix, claim))
    }

    /// How far it can be kept, with the BLAKE3 of those bytes: all it received in a
    /// storage directory, up to its last part boundary in an object store.
    fn keep_point(&self) -> Option<(u64, [u8; 32])> {
        match (&self.part_every, &self.boundary) {
            (None, _) => Some((self.received, *self.hasher.finalize().as_bytes())),
            (Some(_), Some((at, hasher))) => Some((*at, *hasher.finalize().as_bytes())),
            (Some(_), None) => None,
        }
    }

    /// Where [`OpenPut::keep_point`] is, without hashing.
    fn keep_offset(&self) -> u64 {
        match (&self.part_every, &self.boundary) {
            (None, _) => self.received,
            (Some(_), boundary) => boundary.as_ref().map_or(0, |(at, _)| *at),
        }
    }

    /// Hashes one frame's bytes, the last `data.len()` of those received, noting the
    /// hash state at a part boundary among them.
    fn hash(&mut self, data: &[u8]) {
        let start = self.received - data.len() as u64;
        let cut = self
            .part_every
            .map(|every| (start / every + 1) * every - start)
            .filter(|&cut| cut <= data.len() as u64);
        let (before, after) = data.split_at(cut.map_or(data.len(), |c| c as usize));
        self.hasher.update(before);
        self.cksum.update(before);
        if let Some(cut) = cut {
            self.boundary = Some((start + cut, self.hasher.clone()));
            self.hasher.update(after);
            self.cksum.update(after);
        }
    }
}

impl Held {
    /// The parts to keep it by (all its bytes are in: it resumes with no data), or itself
    /// when it may not be kept (boxed, to be dropped).
    pub(super) fn into_keepable(self) -> Result<Keeping, Box<Self>> {
        match (self.keep, self.claim) {
            (Some(keep), Some(claim)) => Ok((keep, self.staged, self.size, self.hash, claim)),
            (keep, claim) => Err(Box::new(Held { keep, claim, ..self })),
        }
    }
}

/// The data buffers of one upload, made when first needed and handed back by the store
/// when it is done with a chunk.
struct Buffers {
    made: usize,
    home: mpsc::Sender<AlignedBuf>,
    back: mpsc::Receiver<AlignedBuf>,
}

impl Buffers {
    fn new() -> Self {
        let (home, back) = mpsc::channel(BUFFERS);
        Buffers { made: 0, home, back }
    }

    async fn next(&mut self) -> AlignedBuf {
        if let Ok(buf) = self.back.try_recv() {
            return buf;
        }
        if self.made < BUFFERS {
            self.made += 1;
            return AlignedBuf::new(MAX_DATA_PAYLOAD as usize);
        }
        // This upload's sender is alive (`self.home`), so a buffer always comes back.
        self.back.recv().await.expect("the upload holds a sender")
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// `PUT_BEGIN`: every check before content, then a staged blob to stream into.
    pub(super) async fn put_begin(&mut self, tag: u32, put: PutBegin) -> Result<(), Ended> {
        let id = self.machine.client().expect("the machine lets only clients put");
        // A refusal comes back as `Ended::Refused`, which `carry_out` answers (and the
        // machine then drops the put's body).
        let open = self.open_put(id, tag, &put).await?;
        info!(tag, path = %put.path, size = ?put.size, "protocol-4 put accepted");
        self.machine.put_accepted(tag, put.data_len());
        self.open = Some(open);
        Ok(())
    }

    async fn open_put(&mut self, id: ClientId, tag: u32, put: &PutBegin) -> Result<OpenPut, Ended> {
        let refuse = |error| Err(Ended::Refused(error));
        let name = match check_name(&put.path) {
            Ok(name) => name,
            Err(error) => return refuse(error),
        };
        // Every fact of the records this put is checked against, in one call.
        let keeps = self.shared.keeps_unfinished();
        let facts = self.shared.records().put_facts(id, self.space(id), name.clone(), keeps);
        let facts = self.internal_on_error(facts.await)?;
        if let Some(clash) = folders::clash(&name, &facts.path) {
            return refuse(clash);
        }
        let config = &self.shared.config;
        let max = config.max_file_size;
        if let Some(size) = put.size.filter(|&s| s > max) {
            return refuse(errors::too_large(size, max));
        }
        let replaces = if self.shared.storage.local().is_some() {
            facts.path.verified
        } else {
            let stored = self.shared.storage.has_stored(self.shared.records(), id, &name).await;
            self.internal_on_error(stored)?
        };
        if replaces && put.no_clobber {
            return refuse(errors::plain(
                ErrorCode::Conflict,
                false,
                "a file is stored at this path (no_clobber)",
            ));
        }
        // An unknown size counts as the largest file the server takes.
        let declared = put.size.unwrap_or(max);
        let (reservation, quota_room) = self.reserve(id, put, declared, replaces, &facts)?;
        let config = &self.shared.config;
        let needed = declared.saturating_add(config.disk_reserve);
        if let Some(available) = self.shared.storage.available_bytes().filter(|&a| a < needed) {
            return refuse(errors::disk_full(
                declared,
                available.saturating_sub(config.disk_reserve),
            ));
        }
        let Ok(in_flight) = std::sync::Arc::clone(&self.shared.uploads).try_acquire_owned() else {
            return refuse(errors::busy(&format!(
                "{} uploads are already arriving (--max-uploads); try again later",
                config.max_uploads
            )));
        };
        let inline = put.offset == 0
            && put.size.is_some_and(|size| size <= INLINE_PUT)
            && self.shared.storage.local().is_some();
        let (staged, hasher, cksum, claim, large_slot) = if put.offset > 0 {
            let large_slot = self.large_slot(put);
            let c = self.continue_put(id, put, large_slot.is_some()).await?;
            (c.staged, c.hasher, c.cksum, Some(c.claim), large_slot)
        } else {
            let claim = self.fresh_claim(id, &name, put, facts.unfinished).await?;
            let large_slot = self.large_slot(put);
            let staged = if inline && claim.is_none() {
                self.stage_inline(id, declared)?
            } else {
                self.stage(id, declared, large_slot.is_some(), claim.is_some()).await?
            };
            (staged, blake3::Hasher::new(), Cksum::new(), claim, large_slot)
        };
        let inline = inline && claim.is_none();
        let keep = claim.as_ref().map(|_| Keepable {
            client_id: id,
            path: name.clone(),
            size: declared,
            mtime_ns: put.mtime_ns,
        });
        let part_every = match &staged {
            AnyStaged::S3(s3) if keep.is_some() => Some(s3.part_size()),
            _ => None,
        };
        // A resumed upload's offset is a part boundary: it can be kept there again.
        let boundary =
            (part_every.is_some() && put.offset > 0).then(|| (put.offset, hasher.clone()));
        Ok(OpenPut {
            tag,
            name,
            staged,
            hasher,
            cksum,
            received: put.offset,
            declared: put.size,
            mtime_ns: put.mtime_ns,
            replaces,
            started: Instant::now(),
            buffers: Buffers::new(),
            _in_flight: in_flight,
            _large_slot: large_slot,
            reservation,
            quota_room,
            keep,
            durable: put.offset,
            claim,
            inline,
            part_every,
            boundary,
        })
    }

    /// For a new upload of known size on a server that keeps unfinished ones: the claim
    /// on its path, with what was kept of it replaced. `None` (an upload not kept) when
    /// nothing is kept or another connection holds the path, and for a file under
    /// [`RESUMABLE_FROM`], which is not kept (but still replaces what was kept of its
    /// path, `kept`, read with the put's other facts).
    async fn fresh_claim(
        &self,
        id: ClientId,
        name: &str,
        put: &PutBegin,
        kept: Option<UnfinishedUpload>,
    ) -> Result<Option<ResumeClaim>, Ended> {
        let Some(size) = put.size.filter(|_| self.shared.keeps_unfinished()) else {
            return Ok(None);
        };
        let keepable = size >= RESUMABLE_FROM;
        if !keepable && kept.is_none() {
            return Ok(None);
        }
        let Some(claim) = self.shared.claim_resume(id, name) else { return Ok(None) };
        if keepable {
            // Under the claim, what is kept now: a connection that just left may have
            // kept its upload of this path after the facts were read.
            self.replace_kept(id, name).await?;
        } else if let Some(kept) = kept {
            self.drop_unfinished(kept).await;
        }
        Ok(keepable.then_some(claim))
    }

    /// As protocol 3's: a large upload with a large-upload slot goes to the disk with
    /// O_DIRECT from the store's writer thread, sparing the page-cache copy (a quarter of
    /// the server's CPU on a 1 GiB upload, measured with perf); without a slot it takes
    /// the buffered path. An upload that may be kept is no exception: its midway syncs
    /// go through the writer thread's queue.
    fn large_slot(&self, put: &PutBegin) -> Option<OwnedSemaphorePermit> {
        (put.size.is_some_and(|s| s >= u64::from(LARGE_UPLOAD)))
            .then(|| std::sync::Arc::clone(&self.shared.large_uploads).try_acquire_owned().ok())
            .flatten()
    }

    /// A staged blob for a new upload, on the blocking pool.
    async fn stage(
        &self,
        id: ClientId,
        declared: u64,
        large: bool,
        kept: bool,
    ) -> Result<AnyStaged, Ended> {
        let storage = self.shared.storage.clone();
        let staged = tokio::task::spawn_blocking(move || match storage.local() {
            Some(local) if kept => local.stage_kept(id, large).map(AnyStaged::Local),
            _ => storage.stage(id, declared, large),
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|staged| staged);
        staged.map_err(cannot_stage)
    }

    /// A staged file for a small upload, made on this task ([`INLINE_PUT`]).
    fn stage_inline(&self, id: ClientId, declared: u64) -> Result<AnyStaged, Ended> {
        self.shared.storage.stage(id, declared, false).map_err(cannot_stage)
    }

    /// Every [`DURABLE_EVERY`] bytes of an upload that may be kept: synced and recorded,
    /// so a server crash loses at most that much of it.
    async fn maybe_checkpoint(&self, mut open: OpenPut) -> OpenPut {
        if open.keep.is_none() || open.keep_offset().saturating_sub(open.durable) < DURABLE_EVERY {
            return open;
        }
        let Some((at, prefix)) = open.keep_point() else { return open };
        let keep = open.keep.as_ref().expect("checked");
        let (staged, recorded) = self.checkpoint(keep, open.staged, at, prefix).await;
        open.staged = staged;
        if recorded {
            open.durable = at;
        }
        open
    }

    /// The put's share of the server's per-client caps and of the client's quota (`db
    /// quota`), checked before any content: the bytes of its files, versions and other
    /// open uploads plus the declared size against the bytes quota, and a new path against
    /// the files quota. With a bytes quota, an upload of unknown size gets the room left,
    /// which its data is checked against as it arrives.
    fn reserve(
        &mut self,
        id: ClientId,
        put: &PutBegin,
        declared: u64,
        replaces: bool,
        facts: &PutFacts,
    ) -> Result<(Reservation, Option<u64>), Ended> {
        let quota = facts.quota;
        let mut usage = facts.usage.unwrap_or_default();
        if let Some(kept) = facts.unfinished.as_ref().filter(|_| quota.bytes.is_some()) {
            // What is kept of this path is continued or replaced by this put, whose
            // declared size is reserved below: it does not count twice.
            usage.bytes = usage.bytes.saturating_sub(kept.size);
        }
        let held = QuotaHeld { bytes: put.size.unwrap_or(0), new_files: u64::from(!replaces) };
        let check = |open: QuotaHeld| -> Result<Option<u64>, ErrorFrame> {
            if let Some(limit) = quota.files.filter(|_| !replaces) {
                let used = usage.files.saturating_add(open.new_files);
                if used >= limit {
                    return Err(errors::quota_exceeded(
                        ErrorUnit::Files,
                        used,
                        limit,
                        &format!("this client may store {limit} files and has {used}"),
                    ));
                }
            }
            let Some(limit) = quota.bytes else { return Ok(None) };
            let used = usage.bytes.saturating_add(open.bytes);
            let room = limit.saturating_sub(used);
            match put.size {
                Some(size) if size > room => Err(errors::quota_exceeded(
                    ErrorUnit::Bytes,
                    used,
                    limit,
                    &format!("{size} more bytes would pass this client's quota"),
                )),
                None if room == 0 => Err(errors::quota_exceeded(
                    ErrorUnit::Bytes,
                    used,
                    limit,
                    "this client's quota is used up",
                )),
                Some(_) => Ok(None),
                None => Ok(Some(room)),
            }
        };
        let mut room = None;
        let reserved = self.shared.v4_puts.reserve_held(id, declared, held, |open| {
            room = check(open)?;
            Ok(())
        });
        match reserved {
            Ok(reservation) => Ok((reservation, room)),
            Err(Refused::Busy(why)) => {
                Err(Ended::Refused(errors::busy(&format!("too many open uploads: {why}"))))
            }
            Err(Refused::Check(error)) => Err(Ended::Refused(error)),
        }
    }

    /// One `DATA` frame of the accepted put: hashed and handed to the staged blob.
    pub(super) async fn receive_data(&mut self, header: &FrameHeader) -> Result<(), Ended> {
        let mut open = self.open.take().expect("the machine admits DATA only for an open put");
        let len = header.length() as usize;
        let mut buf = open.buffers.next().await;
        buf.set_len(len);
        if let Err(ended) = self.read_payload(&mut buf[..len]).await {
            // What arrived in whole frames before this one is the upload's still (kept
            // for resuming when the connection was cut off).
            drop(buf);
            self.open = Some(open);
            return Err(ended);
        }
        let idle = self.shared.config.idle_timeout;
        let allowed = idle + std::time::Duration::from_secs(open.received / MIN_UPLOAD_RATE);
        if open.started.elapsed() > allowed {
            // A slow network is no protocol break: what arrived before this frame stays
            // the upload's, kept for resuming when it may be, as when the connection is
            // cut off.
            drop(buf);
            self.open = Some(open);
            return Err(Ended::Close(errors::timeout(
                "the upload arrived slower than the server's minimum rate (64 KiB/s)",
            )));
        }
        open.received += len as u64;
        let max = self.shared.config.max_file_size;
        if open.declared.is_none() && open.received > max {
            // An unknown size is checked as its data arrives.
            let tag = open.tag;
            self.throw_away(open).await;
            self.machine.put_refused(tag);
            return self.refuse(tag, &errors::too_large(u64::MAX, max)).await;
        }
        if let Some(room) = open.quota_room.filter(|&room| open.received > room) {
            // Likewise its quota: the frame that would pass it ends the upload.
            let tag = open.tag;
            let id = self.machine.client().expect("the machine lets only clients put");
            self.throw_away(open).await;
            self.machine.put_refused(tag);
            let quota = self.shared.records().quota(id).await;
            let limit = self.internal_on_error(quota)?.bytes.unwrap_or(u64::MAX);
            let error = errors::quota_exceeded(
                ErrorUnit::Bytes,
                limit.saturating_sub(room),
                limit,
                "the data sent passed this client's quota; the upload was thrown away",
            );
            return self.refuse(tag, &error).await;
        }
        let open_inline = open.inline;
        let write = move || {
            open.hash(&buf[..len]);
            let chunk = Chunk::new(buf, len, open.buffers.home.clone());
            let written = open.staged.write(chunk);
            (open, written)
        };
        let written =
            if open_inline { Ok(write()) } else { tokio::task::spawn_blocking(write).await };
        match written {
            Ok((open, Ok(()))) => {
                self.open = Some(self.maybe_checkpoint(open).await);
                Ok(())
            }
            Ok((open, Err(e))) => {
                let tag = open.tag;
                self.throw_away(open).await;
                self.machine.put_refused(tag);
                self.shared.metrics.upload(UploadOutcome::Failed);
                let error = if e.raw_os_error() == Some(libc::ENOSPC) {
                    warn!(tag, "writing a protocol-4 upload failed: {e}");
                    errors::disk_full(0, 0)
                } else {
                    let at = unix_now();
                    tracing::error!(at, "writing a protocol-4 upload failed: {e}");
                    errors::storage_failed(at)
                };
                self.refuse(tag, &error).await
            }
            Err(e) => Err(Ended::Gone(std::io::Error::other(e))),
        }
    }

    /// `PUT_END`: the data is all in; the upload is held under its tag and its hash
    /// reported.
    pub(super) async fn put_end(&mut self, tag: u32) -> Result<(), Ended> {
        let mut open = self.open.take().expect("the machine admits PUT_END only for an open put");
        let finished = if open.inline {
            let finished = open.staged.finish();
            (open, finished)
        } else {
            tokio::task::spawn_blocking(move || {
                let finished = open.staged.finish();
                (open, finished)
            })
            .await
            .map_err(|e| Ended::Gone(std::io::Error::other(e)))?
        };
        let (open, finished) = finished;
        if let Err(e) = finished {
            let at = unix_now();
            tracing::error!(at, "finishing a protocol-4 upload failed: {e}");
            self.shared.metrics.upload(UploadOutcome::Failed);
            self.throw_away(open).await;
            return Err(Ended::Refused(errors::storage_failed(at)));
        }
        let hash: [u8; 32] = *open.hasher.finalize().as_bytes();
        self.shared.metrics.upload_received(open.started);
        let (size, replaces) = (open.received, open.replaces);
        info!(tag, name = %open.name, size, hash = %short_hex(&hash), "protocol-4 upload received; waiting for COMMIT");
        let held = Held {
            name: open.name,
            staged: open.staged,
            size,
            hash,
            cksum: open.cksum.finish(),
            mtime_ns: open.mtime_ns,
            _reservation: open.reservation,
            keep: open.keep,
            claim: open.claim,
        };
        self.held.insert(tag, held);
        let payload = PutReceived { size, hash, replaces }.encode();
        self.send(FrameType::PutReceived, tag, &payload).await?;
        Ok(())
    }

    /// `DISCARD`: the held upload is thrown away.
    pub(super) async fn discard(&mut self, tag: u32) -> Result<(), Ended> {
        let Some(held) = self.held.remove(&tag) else {
            return self.refuse(tag, &nothing_held(tag)).await;
        };
        // The unfinished state goes too (docs/protocol-v4.md, "COMMIT and DISCARD").
        let kept = held.keep.as_ref().map(|k| (k.path.clone(), held.staged.location().to_owned()));
        let _ = tokio::task::spawn_blocking(move || drop(held)).await;
        if let Some((path, location)) = kept {
            self.forget_kept(path, location).await;
        }
        info!(tag, "protocol-4 upload discarded");
        self.send(FrameType::Discarded, tag, &[]).await?;
        Ok(())
    }

    /// `COMMIT`: with the server's own hash, the held upload is staged for the group
    /// commit (`group`), which stores it exactly as protocol 3 stores a confirmed one
    /// (intent, rename, one transaction); with another, it is thrown away
    /// (`hash_mismatch`).
    pub(super) async fn commit(&mut self, tag: u32, commit: Commit) -> Result<(), Ended> {
        let Some(held) = self.held.remove(&tag) else {
            return self.refuse(tag, &nothing_held(tag)).await;
        };
        if held.hash != commit.hash {
            let ours = short_hex(&held.hash);
            let _ = tokio::task::spawn_blocking(move || drop(held)).await;
            self.shared.metrics.upload(UploadOutcome::Mismatch);
            warn!(
                tag,
                "protocol-4 COMMIT with another hash than the server's ({ours}): upload thrown away"
            );
            let error = errors::plain(
                ErrorCode::HashMismatch,
                false,
                "the file's hash is not the one the server computed; the upload was thrown away: send it again",
            );
            return self.refuse(tag, &error).await;
        }
        self.stage_commit(tag, held).await
    }
}

/// The stored name of a protocol-4 path (the path itself, folders and all), or the
/// `name_refused` answer.
fn check_name(path: &str) -> Result<String, crate::protocol::v4::ErrorFrame> {
    let refused =
        |why: String| errors::plain(ErrorCode::NameRefused, false, &format!("path refused: {why}"));
    names::check_path(path).map_err(|e| refused(e.to_string()))?;
    // Protocol 3's stored-name rule on the file's own name, which must leave it as it is
    // (it cuts a drive prefix such as `C:`), so that both protocols name the file alike.
    let leaf = path.rsplit('/').next().unwrap_or(path);
    match storage_name(leaf) {
        Ok(name) if name == leaf => Ok(path.to_owned()),
        Ok(_) => Err(refused("a name that starts with a drive letter and a colon".to_owned())),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// `internal` for an upload file that could not be created, logged under the time the
/// client is told.
fn cannot_stage(e: std::io::Error) -> Ended {
    let at = unix_now();
    tracing::error!(at, "cannot create a protocol-4 upload file: {e}");
    Ended::Refused(errors::internal(at))
}

/// `not_found` for a `COMMIT` or `DISCARD` whose tag holds no upload.
fn nothing_held(tag: u32) -> crate::protocol::v4::ErrorFrame {
    errors::plain(ErrorCode::NotFound, false, &format!("no upload is held under tag {tag}"))
}

/// The first 8 bytes of a hash in hex, for logs.
pub(crate) fn short_hex(hash: &[u8; 32]) -> String {
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}
