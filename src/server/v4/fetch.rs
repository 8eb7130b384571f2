//! Downloads, listings and removal over protocol 4 (docs/protocol-v4.md, "Downloads,
//! listings, removal"): `LIST` streamed from the records a page at a time in byte order of
//! the paths, `GET` streamed from the blob store while BLAKE3 is computed (and recorded,
//! for a protocol-3 copy that had none), `RM` kept as a version as a replaced copy is and
//! answered only once the records forgot it.
//!
//! Every request acts in the connection's own client's space only: paths are checked by
//! the rules and then named through [`BlobStore::path_name`] with the client's id, so no
//! path a client sends can reach another client's files.

use super::driver::{Connection, Ended};
use super::errors;
use super::folders::turn_key;
use super::identity::unix_now;
use crate::protocol::ClientId;
use crate::protocol::v4::{
    CopyFlags, EntryKind, ErrorFrame, FrameType, Get, GetBegin, GetEnd, LIST_ENTRIES_FIXED_LEN,
    List, ListEnd, ListEntries, ListEntry, MAX_CONTROL_PAYLOAD, MAX_DATA_PAYLOAD, NO_HASH, Removed,
    Rm, names,
};
use crate::server::metrics::DownloadOutcome;
use crate::store::{BlobStore, PathRange, Removal, StoredCopy, upper_bound};
use std::io::Read;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

/// Copies read from the records at a time: a listing of any length holds one page and one
/// frame of entries, never the whole listing.
const LIST_PAGE: usize = 256;
/// `DATA` frames of a download carry up to the protocol's limit.
const GET_CHUNK: usize = MAX_DATA_PAYLOAD as usize;
/// Copies below this size are read whole and answered in one write (see
/// `Connection::get_small`): far below a `DATA` frame's limit, so one frame carries them.
const SMALL_COPY: u64 = 256 << 10;

/// Where a listing is in the records: the client's space, the part of it asked for, and
/// where the next page starts.
struct Cursor {
    /// `<space><path>/`, or the space itself for the whole of it: what every path name
    /// listed starts with.
    under: String,
    /// Where the range ends: `under` with its last `/` raised to `0`, the next byte, so
    /// that everything under the folder and nothing else lies between the two.
    end: Option<String>,
    /// The next page's start.
    start: String,
    inclusive: bool,
}

/// A listing's frame being filled, and the totals so far.
#[derive(Default)]
struct Packer {
    entries: Vec<ListEntry>,
    len: usize,
    count: u64,
    bytes: u64,
}

impl Packer {
    /// Adds an entry; returns a full frame's entries to send first, if it does not fit.
    fn push(&mut self, entry: ListEntry) -> Option<ListEntries> {
        let len = entry.encoded_len();
        let full = (self.len + len > MAX_CONTROL_PAYLOAD as usize - LIST_ENTRIES_FIXED_LEN)
            .then(|| self.take())
            .flatten();
        self.count += 1;
        self.bytes = self.bytes.saturating_add(entry.size);
        self.len += len;
        self.entries.push(entry);
        full
    }

    fn take(&mut self) -> Option<ListEntries> {
        self.len = 0;
        let entries = std::mem::take(&mut self.entries);
        (!entries.is_empty()).then_some(ListEntries { entries })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    fn client_id(&self) -> ClientId {
        self.machine.client().expect("the machine passes LIST, GET and RM only for clients")
    }

    /// What the client's space is called in the store: every path name of it starts so.
    pub(super) fn space(&self, id: ClientId) -> String {
        self.shared.storage.path_name(id, "")
    }

    /// `LIST`: the one file a path names, or what lies under it (direct children, folders
    /// collapsed, unless `recursive`), in byte order, packed into frames up to the limit.
    pub(super) async fn list(&mut self, tag: u32, list: List) -> Result<(), Ended> {
        let id = self.client_id();
        if !list.path.is_empty() {
            names::check_path(&list.path).map_err(|e| Ended::Refused(refused(&e)))?;
        }
        let space = self.space(id);
        let mut packer = Packer::default();
        if !list.path.is_empty() {
            let at = format!("{space}{}", list.path);
            let copy = self.shared.records().copy_at(id, at).await;
            if let Some(copy) = self.internal_on_error(copy)? {
                packer.push(file_entry(&copy, &list.path));
            }
        }
        let under = match list.path.as_str() {
            "" => space.clone(),
            path => format!("{space}{path}/"),
        };
        let end = upper_bound(&under);
        let mut cursor = Cursor { start: under.clone(), under, end, inclusive: true };
        let prefix_len = space.len();
        loop {
            let range = PathRange {
                start: cursor.start.clone(),
                inclusive: cursor.inclusive,
                end: cursor.end.clone(),
                limit: LIST_PAGE,
            };
            let page = self.shared.records().list_page(id, range).await;
            let page = self.list_failed(tag, page, &packer).await?;
            let Some(page) = page else { return Ok(()) };
            if page.is_empty() {
                break;
            }
            for entry in cursor.advance(&page, prefix_len, list.recursive) {
                if let Some(frame) = packer.push(entry) {
                    self.send_entries(tag, &frame).await?;
                }
            }
        }
        if packer.count == 0 && !list.path.is_empty() {
            return Err(Ended::Refused(errors::not_found(&list.path)));
        }
        if let Some(frame) = packer.take() {
            self.send_entries(tag, &frame).await?;
        }
        let usage = self.shared.records().usage(id).await;
        // A records failure after entries went ends the answer with its ERROR in place of
        // LIST_END.
        let Some(usage) = self.list_failed(tag, usage, &packer).await? else { return Ok(()) };
        let quota = self.shared.records().quota(id).await;
        let Some(quota) = self.list_failed(tag, quota, &packer).await? else { return Ok(()) };
        let end = ListEnd {
            entries: packer.count,
            bytes: packer.bytes,
            bytes_used: usage.bytes,
            bytes_quota: quota.bytes.unwrap_or(u64::MAX),
            files_used: usage.files,
            files_quota: quota.files.unwrap_or(u64::MAX),
        };
        info!(tag, path = %list.path, entries = packer.count, "protocol-4 listing sent");
        self.send(FrameType::ListEnd, tag, &end.encode()).await?;
        Ok(())
    }

    /// A records failure in the middle of a listing: before any frame it is the request's
    /// refusal, after one it ends the answer in place of `LIST_END` (`None`: stop).
    async fn list_failed<T>(
        &mut self,
        tag: u32,
        result: Result<T, crate::store::RecordsError>,
        packer: &Packer,
    ) -> Result<Option<T>, Ended> {
        match self.internal_on_error(result) {
            Ok(value) => Ok(Some(value)),
            Err(Ended::Refused(error)) if packer.count > packer.entries.len() as u64 => {
                self.refuse(tag, &error).await?;
                Ok(None)
            }
            Err(ended) => Err(ended),
        }
    }

    async fn send_entries(&mut self, tag: u32, entries: &ListEntries) -> Result<(), Ended> {
        let payload = entries.encode().map_err(std::io::Error::other)?;
        self.send(FrameType::ListEntries, tag, &payload).await?;
        Ok(())
    }

    /// `GET`: `GET_BEGIN`, the copy's bytes from `offset` in `DATA` frames, and `GET_END`
    /// with the BLAKE3 of the whole copy as read now; `corrupt` in its place when that is
    /// not the hash on record or the copy is not the size on record.
    pub(super) async fn get(&mut self, tag: u32, get: Get) -> Result<(), Ended> {
        let id = self.client_id();
        let copy = self.file_at(id, &get.path).await?;
        if get.generation != 0 && get.generation != copy.generation {
            return Err(Ended::Refused(errors::copy_changed(&format!(
                "{:?} was replaced since the download began (generation {}, now {})",
                get.path, get.generation, copy.generation
            ))));
        }
        if get.offset > copy.size {
            return Err(Ended::Refused(errors::copy_changed(&format!(
                "the offset {} is past the end of {:?} ({} bytes)",
                get.offset, get.path, copy.size
            ))));
        }
        if copy.size < SMALL_COPY {
            return self.get_small(tag, &get, &copy).await;
        }
        let storage = self.shared.storage.clone();
        let stored = copy.clone();
        let opened = tokio::task::spawn_blocking(move || storage.open_copy(id, &stored)).await;
        let reader = match opened.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(reader) => reader,
            Err(e) => return Err(self.unreadable(id, &get.path, &copy, &e).await),
        };
        self.send(FrameType::GetBegin, tag, &get_begin(&copy)?).await?;
        if get.offset > 0 {
            self.shared.metrics.download_resumed();
        }
        let Some(hash) = self.stream_copy(tag, &get, &copy, reader).await? else {
            return Ok(());
        };
        match copy.blake3 {
            Some(recorded) if recorded != hash => {
                warn!(tag, path = %get.path, "a stored protocol-4 copy does not match its BLAKE3");
                self.shared.metrics.download(DownloadOutcome::Corrupt);
                let why = "its bytes do not match the hash on record";
                return self.refuse(tag, &errors::corrupt(&get.path, why)).await;
            }
            Some(_) => {}
            None => self.record_hash(id, &copy, hash).await,
        }
        info!(tag, path = %get.path, size = copy.size, "protocol-4 download sent");
        self.send(FrameType::GetEnd, tag, &GetEnd { hash }.encode()).await?;
        self.shared.metrics.download(DownloadOutcome::Sent);
        Ok(())
    }

    /// `GET` of a copy smaller than [`SMALL_COPY`]: opened and read whole (and one byte
    /// more, which a copy longer than its record would have) in one blocking call, then, when
    /// it is the size and hash on record, `GET_BEGIN`, its `DATA` and `GET_END` in one
    /// write. A run of small downloads thus costs one hand-off to a blocking thread and one
    /// TLS write per file instead of three of each. A damaged copy is answered as
    /// [`Self::stream_copy`] answers it.
    async fn get_small(&mut self, tag: u32, get: &Get, copy: &StoredCopy) -> Result<(), Ended> {
        let id = self.client_id();
        let storage = self.shared.storage.clone();
        let stored = copy.clone();
        let want = copy.size as usize + 1;
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut reader = storage.open_copy(id, &stored)?;
            let mut bytes = vec![0u8; want];
            let n = read_up_to(&mut reader, &mut bytes)?;
            bytes.truncate(n);
            Ok(bytes)
        })
        .await;
        let bytes = match read.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(bytes) => bytes,
            Err(e) => return Err(self.unreadable(id, &get.path, copy, &e).await),
        };
        let whole = bytes.len() as u64 == copy.size;
        let end = bytes.len().min(want - 1);
        let hash = *blake3::hash(&bytes[..end]).as_bytes();
        let mut answer = encode_frame(FrameType::GetBegin, tag, &get_begin(copy)?)?;
        let sent = &bytes[(get.offset as usize).min(end)..end];
        if !sent.is_empty() {
            answer.extend_from_slice(&encode_frame(FrameType::GetData, tag, sent)?);
        }
        let sent_len = sent.len() as u64;
        if get.offset > 0 {
            self.shared.metrics.download_resumed();
        }
        let intact = whole && copy.blake3.is_none_or(|recorded| recorded == hash);
        if !intact {
            // Rare: the bytes go as they would streamed, then the refusal.
            self.send_encoded(&answer).await?;
            self.shared.metrics.download_sent(sent_len);
            self.shared.metrics.download(DownloadOutcome::Corrupt);
            let why = match bytes.len() as u64 {
                n if n > copy.size => "it is longer than its record says",
                n if n < copy.size => "it is shorter than its record says",
                _ => {
                    warn!(tag, path = %get.path, "a stored protocol-4 copy does not match its BLAKE3");
                    "its bytes do not match the hash on record"
                }
            };
            return self.refuse(tag, &errors::corrupt(&get.path, why)).await;
        }
        if copy.blake3.is_none() {
            self.record_hash(id, copy, hash).await;
        }
        answer.extend_from_slice(&encode_frame(FrameType::GetEnd, tag, &GetEnd { hash }.encode())?);
        info!(tag, path = %get.path, size = copy.size, "protocol-4 download sent");
        self.send_encoded(&answer).await?;
        self.shared.metrics.download_sent(sent_len);
        self.shared.metrics.download(DownloadOutcome::Sent);
        Ok(())
    }

    /// The refusal of a `GET` whose recorded copy could not be opened. On an object store a
    /// copy replaced (under `--keep-versions 0`) or removed since it was looked up has its
    /// object deleted: when the records no longer name that copy, the client is told it
    /// changed, as for a replacement between two ranges. Otherwise the stored bytes are
    /// missing or unreadable: `internal`, logged for the operator.
    async fn unreadable(
        &mut self,
        id: ClientId,
        path: &str,
        copy: &StoredCopy,
        e: &std::io::Error,
    ) -> Ended {
        if e.kind() == std::io::ErrorKind::NotFound && self.shared.storage.local().is_none() {
            let now = self.shared.records().copy_at(id, copy.path_name.clone()).await;
            let still = matches!(&now, Ok(Some(now)) if now.generation == copy.generation);
            if now.is_ok() && !still {
                return Ended::Refused(errors::copy_changed(&format!(
                    "{path:?} was replaced or removed as its download began"
                )));
            }
        }
        let at = unix_now();
        tracing::error!(at, path, "a recorded protocol-4 file cannot be read: {e}");
        Ended::Refused(errors::internal(at))
    }

    /// The bytes of `copy` in `DATA` frames (those before `get.offset` hashed, not sent);
    /// the hash of all of them, or `None` when an `ERROR` ended the answer.
    async fn stream_copy(
        &mut self,
        tag: u32,
        get: &Get,
        copy: &StoredCopy,
        mut reader: Box<dyn Read + Send>,
    ) -> Result<Option<[u8; 32]>, Ended> {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; GET_CHUNK];
        let mut done = 0u64;
        loop {
            let want = usize::try_from(copy.size - done).unwrap_or(usize::MAX).min(GET_CHUNK);
            // At the end, one more byte is asked for: a copy longer than its record is
            // damaged too.
            let want = want.max(1);
            let read = tokio::task::spawn_blocking(move || {
                let n = read_up_to(&mut reader, &mut buf[..want]);
                (reader, buf, n)
            })
            .await
            .map_err(|e| Ended::Gone(std::io::Error::other(e)))?;
            let n;
            (reader, buf, n) = read;
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    let at = unix_now();
                    tracing::error!(at, path = %get.path, "reading a protocol-4 download failed: {e}");
                    self.shared.metrics.download(DownloadOutcome::Failed);
                    self.refuse(tag, &errors::internal(at)).await?;
                    return Ok(None);
                }
            };
            if done == copy.size {
                if n > 0 {
                    self.shared.metrics.download(DownloadOutcome::Corrupt);
                    let why = "it is longer than its record says";
                    self.refuse(tag, &errors::corrupt(&get.path, why)).await?;
                    return Ok(None);
                }
                return Ok(Some(*hasher.finalize().as_bytes()));
            }
            if n == 0 {
                self.shared.metrics.download(DownloadOutcome::Corrupt);
                let why = "it is shorter than its record says";
                self.refuse(tag, &errors::corrupt(&get.path, why)).await?;
                return Ok(None);
            }
            hasher.update(&buf[..n]);
            let (from, to) = (done, done + n as u64);
            done = to;
            if to > get.offset {
                let skip = get.offset.saturating_sub(from) as usize;
                self.send(FrameType::GetData, tag, &buf[skip..n]).await?;
                self.shared.metrics.download_sent((n - skip) as u64);
            }
        }
    }

    /// Records the BLAKE3 of a protocol-3 copy read whole for the first time; a failure
    /// costs only that the next download computes it again.
    async fn record_hash(&mut self, id: ClientId, copy: &StoredCopy, hash: [u8; 32]) {
        let path_name = copy.path_name.clone();
        let recorded =
            self.shared.records().record_blake3(id, path_name, copy.generation, hash).await;
        match recorded {
            Ok(true) => info!(name = %copy.stored_name, "BLAKE3 of a protocol-3 copy recorded"),
            Ok(false) => {}
            Err(e) => {
                warn!(name = %copy.stored_name, "cannot record a protocol-3 copy's BLAKE3: {e}")
            }
        }
    }

    /// The verified file at `path`, or the refusal: the path's rules, `is_folder`,
    /// `not_found` (a protocol-3 upload given up was never stored).
    async fn file_at(&mut self, id: ClientId, path: &str) -> Result<StoredCopy, Ended> {
        names::check_path(path).map_err(|e| Ended::Refused(refused(&e)))?;
        let space = self.space(id);
        let copy = self.shared.records().copy_at(id, format!("{space}{path}")).await;
        match self.internal_on_error(copy)? {
            Some(copy) if copy.verified => Ok(copy),
            Some(_) => Err(Ended::Refused(errors::plain(
                crate::protocol::v4::ErrorCode::NotFound,
                false,
                &format!("{path:?} was never verified (its protocol-3 upload was given up)"),
            ))),
            None if self.is_folder(id, &space, path).await? => {
                Err(Ended::Refused(errors::is_folder(path)))
            }
            None => Err(Ended::Refused(errors::not_found(path))),
        }
    }

    /// Whether some file's path goes on below `path`.
    pub(super) async fn is_folder(
        &self,
        id: ClientId,
        space: &str,
        path: &str,
    ) -> Result<bool, Ended> {
        let under = format!("{space}{path}/");
        let range = PathRange { end: upper_bound(&under), start: under, inclusive: true, limit: 1 };
        let page = self.shared.records().list_page(id, range).await;
        Ok(!self.internal_on_error(page)?.is_empty())
    }

    /// `RM`: the copy is kept as a version (under `--keep-versions`, as a replaced copy
    /// is), forgotten by the records, then its blob deleted; `REMOVED` once the records'
    /// transaction is done. A folder with `recursive` is every file under it, removed so
    /// one at a time. Under the path's commit turn (its first component: see
    /// `folders::turn_key`), so that it never races a commit of the path or of one that
    /// could clash with it.
    pub(super) async fn rm(&mut self, tag: u32, rm: Rm) -> Result<(), Ended> {
        let id = self.client_id();
        let shared = std::sync::Arc::clone(&self.shared);
        names::check_path(&rm.path).map_err(|e| Ended::Refused(refused(&e)))?;
        let turn = shared.commit_turn(id, turn_key(&rm.path)).await;
        let space = self.space(id);
        let copy = self.shared.records().copy_at(id, format!("{space}{}", rm.path)).await;
        let answer = match self.internal_on_error(copy)? {
            Some(copy) => self.remove_one(id, &copy).await?,
            None if !self.is_folder(id, &space, &rm.path).await? => {
                return Err(Ended::Refused(errors::not_found(&rm.path)));
            }
            None if rm.recursive => self.remove_folder(id, &space, &rm.path).await?,
            None => return Err(Ended::Refused(errors::is_folder(&rm.path))),
        };
        drop(turn);
        info!(tag, path = %rm.path, files = answer.files, kept = answer.kept, "protocol-4 removal done");
        self.send(FrameType::Removed, tag, &answer.encode()).await?;
        Ok(())
    }

    /// Removes the one copy: kept as a version when it is to be, forgotten by the records,
    /// its blob deleted.
    async fn remove_one(&mut self, id: ClientId, copy: &StoredCopy) -> Result<Removed, Ended> {
        let keep = self.shared.config.keep_versions;
        let archive =
            if keep > 0 && copy.verified { self.keep_blob(id, copy).await? } else { None };
        let removal = Removal {
            client_id: id,
            stored_name: copy.stored_name.clone(),
            path_name: copy.path_name.clone(),
            archive,
            keep,
        };
        let removed = self.shared.records().remove_copy(removal).await;
        let removed = self.internal_on_error(removed)?;
        self.delete_blobs(id, copy, removed.kept, &removed.pruned).await;
        Ok(Removed {
            files: u64::from(removed.files > 0),
            bytes: removed.bytes,
            kept: u64::from(removed.kept),
        })
    }

    /// Removes every file under the folder `path`, a page of the records at a time (each
    /// as [`Connection::remove_one`] removes one), and sums them up. A failure stops it
    /// there: the files removed before stay removed, and the request is refused.
    async fn remove_folder(
        &mut self,
        id: ClientId,
        space: &str,
        path: &str,
    ) -> Result<Removed, Ended> {
        let under = format!("{space}{path}/");
        let end = upper_bound(&under);
        let (mut start, mut inclusive) = (under, true);
        let mut total = Removed { files: 0, bytes: 0, kept: 0 };
        loop {
            let range =
                PathRange { start: start.clone(), inclusive, end: end.clone(), limit: LIST_PAGE };
            let page = self.shared.records().list_page(id, range).await;
            let page = self.internal_on_error(page)?;
            let Some(last) = page.last() else { break };
            (start, inclusive) = (last.path_name.clone(), false);
            for copy in &page {
                let one = self.remove_one(id, copy).await?;
                total.files += one.files;
                total.bytes = total.bytes.saturating_add(one.bytes);
                total.kept += one.kept;
            }
        }
        Ok(total)
    }

    /// Keeps the copy's blob as a version (see [`crate::store::Blobs::keep_removed`]);
    /// where, or `None` when the blob is gone.
    async fn keep_blob(
        &mut self,
        id: ClientId,
        copy: &StoredCopy,
    ) -> Result<Option<String>, Ended> {
        let storage = self.shared.storage.clone();
        let stored = copy.clone();
        let kept = tokio::task::spawn_blocking(move || storage.keep_removed(id, &stored)).await;
        match kept.map_err(std::io::Error::other).and_then(|k| k) {
            Ok(archive) => Ok(archive),
            Err(e) => {
                let at = unix_now();
                tracing::error!(at, "cannot keep a removed protocol-4 file as a version: {e}");
                Err(Ended::Refused(errors::internal(at)))
            }
        }
    }

    /// Deletes the removed copy's blob (unless `kept` as the version itself: an object
    /// store's) and the versions pruned beyond `--keep-versions`. The records no longer
    /// name them: a failure leaves bytes nobody can reach, logged for the operator
    /// (`db verify` reports them as unrecorded).
    async fn delete_blobs(
        &mut self,
        id: ClientId,
        copy: &StoredCopy,
        kept: bool,
        pruned: &[String],
    ) {
        let storage = self.shared.storage.clone();
        let (stored, pruned) = (copy.clone(), pruned.to_vec());
        let _ = tokio::task::spawn_blocking(move || {
            let name = &stored.stored_name;
            match storage.delete_removed(id, &stored, kept) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    warn!(%name, "could not delete a removed file's blob: {e}");
                }
                _ => {}
            }
            for path in pruned {
                if let Err(e) = storage.delete_version(id, &path) {
                    warn!(%path, "could not delete a version beyond --keep-versions: {e}");
                }
            }
        })
        .await;
    }
}

impl Cursor {
    /// The entries of one page, and where the next starts. Without `recursive`, the first
    /// path that goes on below a direct child makes that child a folder entry, and the
    /// next page starts past everything under it.
    fn advance(
        &mut self,
        page: &[StoredCopy],
        space_len: usize,
        recursive: bool,
    ) -> Vec<ListEntry> {
        let mut entries = Vec::new();
        for copy in page {
            let Some(rest) = copy.path_name.strip_prefix(&self.under) else { continue };
            let path = &copy.path_name[space_len..];
            self.start = copy.path_name.clone();
            self.inclusive = false;
            match rest.split_once('/') {
                Some((child, _)) if !recursive => {
                    let folder = format!("{}{child}", &self.under[space_len..]);
                    entries.push(folder_entry(folder));
                    // Past every path under the folder: `<folder>0` is the next byte up
                    // from `<folder>/`.
                    self.start = format!("{}{child}0", self.under);
                    self.inclusive = true;
                    return entries;
                }
                _ if names::check_path(path).is_ok() => entries.push(file_entry(copy, path)),
                _ => warn!(path, "a stored path breaks protocol 4's rules; left out of a listing"),
            }
        }
        entries
    }
}

fn flags_of(copy: &StoredCopy) -> CopyFlags {
    CopyFlags {
        hash_known: copy.blake3.is_some(),
        unverified: !copy.verified,
        protocol3: copy.protocol == 3,
    }
}

fn file_entry(copy: &StoredCopy, path: &str) -> ListEntry {
    ListEntry {
        kind: EntryKind::File,
        flags: flags_of(copy),
        size: copy.size,
        mtime_ns: copy.mtime_ns,
        stored_at: copy.stored_at,
        generation: copy.generation,
        versions: u16::try_from(copy.versions).unwrap_or(u16::MAX),
        hash: copy.blake3.unwrap_or(NO_HASH),
        path: path.to_owned(),
    }
}

fn folder_entry(path: String) -> ListEntry {
    ListEntry {
        kind: EntryKind::Folder,
        flags: CopyFlags::default(),
        size: 0,
        mtime_ns: 0,
        stored_at: 0,
        generation: 0,
        versions: 0,
        hash: NO_HASH,
        path,
    }
}

/// `GET_BEGIN` for `copy`.
fn get_begin(copy: &StoredCopy) -> std::io::Result<Vec<u8>> {
    let begin = GetBegin {
        size: copy.size,
        generation: copy.generation,
        mtime_ns: copy.mtime_ns,
        stored_at: copy.stored_at,
        flags: flags_of(copy),
        hash: copy.blake3.unwrap_or(NO_HASH),
    };
    begin.encode().map_err(std::io::Error::other)
}

/// One frame, for answers written whole.
fn encode_frame(frame_type: FrameType, tag: u32, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    crate::protocol::v4::encode_frame(frame_type, tag, payload).map_err(std::io::Error::other)
}

fn refused(e: &names::NameError) -> ErrorFrame {
    errors::path_refused(&e.to_string())
}

fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(path_name: &str) -> StoredCopy {
        StoredCopy {
            file_name: String::new(),
            stored_name: path_name.split_once('/').unwrap().1.into(),
            path_name: path_name.into(),
            location: path_name.into(),
            verified: true,
            size: 3,
            mtime_ns: 0,
            stored_at: 0,
            generation: 1,
            versions: 0,
            blake3: None,
            protocol: 4,
        }
    }

    #[test]
    fn the_range_under_a_folder_ends_at_the_next_byte_after_its_slash() {
        assert_eq!(upper_bound("id/docs/").as_deref(), Some("id/docs0"));
        assert_eq!(upper_bound("id/").as_deref(), Some("id0"));
        // Everything under `docs/` sorts before `docs0`, and `docs.txt` before `docs/`.
        assert!("id/docs/zzz\u{10FFFF}" < "id/docs0" && "id/docs.txt" < "id/docs/");
    }

    #[test]
    fn a_non_recursive_listing_collapses_a_folder_and_skips_past_it() {
        let mut cursor = Cursor {
            under: "id/".into(),
            end: Some("id0".into()),
            start: "id/".into(),
            inclusive: true,
        };
        let page = [copy("id/a"), copy("id/b/c"), copy("id/b/d")];
        let entries = cursor.advance(&page, 3, false);
        let paths: Vec<(&str, EntryKind)> =
            entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(paths, [("a", EntryKind::File), ("b", EntryKind::Folder)]);
        assert_eq!((cursor.start.as_str(), cursor.inclusive), ("id/b0", true));
        let mut recursive = Cursor { start: "id/".into(), ..cursor };
        let entries = recursive.advance(&page, 3, true);
        assert_eq!(entries.len(), 3);
        assert_eq!((recursive.start.as_str(), recursive.inclusive), ("id/b/d", false));
    }

    #[test]
    fn entries_are_packed_into_frames_up_to_the_control_limit() {
        let mut packer = Packer::default();
        let big = file_entry(&copy("id/x"), &"x".repeat(1000));
        let mut frames = Vec::new();
        for _ in 0..200 {
            frames.extend(packer.push(big.clone()));
        }
        frames.extend(packer.take());
        assert!(frames.len() > 1);
        assert_eq!(frames.iter().map(|f| f.entries.len()).sum::<usize>(), 200);
        assert_eq!(packer.count, 200);
        for frame in frames {
            assert!(frame.encode().expect("fits").len() <= MAX_CONTROL_PAYLOAD as usize);
        }
    }
}
