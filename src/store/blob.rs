//! Blob storage behind a small trait: stage an upload, write its chunks, commit it under
//! the client's stored name (or abort it by dropping), read, list and delete stored
//! blobs. The protocol server names no path: it holds whatever the store stages.
//!
//! The local-disk implementation is [`crate::store::Storage`]; an object store (issue 16:
//! the `object_store` crate, multipart upload) is meant to be the second. Nothing here
//! takes or returns a local path: blobs are named by their owner and stored name, and
//! where a store keeps one is a string of its own that the records carry
//! ([`BlobStore::path_name`], [`StagedBlob::location`]).
//!
//! The methods block, as `std::fs` does, and the server calls them on the blocking pool
//! (the upload's chunks are written from its decrypting worker). An object-store backend
//! would run its async client from there, or hand chunks to a task of its own, as the
//! local store hands large uploads to a writer thread.
//!
//! Why an associated type and a concrete store in the server rather than `dyn BlobStore`:
//! every chunk of every upload goes through [`StagedBlob::write`], and the server's state
//! holds the local store itself, so that call is static. A second backend chosen at
//! start-up would be one enum over the stores (and one over their staged blobs) that
//! implements this trait by matching; each method is object-safe but for the associated
//! type, so a boxed `dyn BlobStore<Staged = Box<dyn StagedBlob>>` adapter also remains
//! possible if many backends ever make the enum unwieldy.

use crate::buf::AlignedBuf;
use crate::protocol::ClientId;
use std::io;
use std::ops::Deref;
use tokio::sync::mpsc;

/// Where the blobs of stored files live.
pub trait BlobStore: Send + Sync + 'static {
    /// An upload being written, not yet visible under any stored name.
    type Staged: StagedBlob;

    /// Starts an upload for `owner` of about `size_hint` bytes (an object store picks a
    /// multipart upload by it). `large` says the caller gave it a large-upload slot: the
    /// store may spend more on it (the local store writes it with `O_DIRECT` from a
    /// thread of its own). Dropping the staged blob aborts it and leaves nothing behind.
    fn stage(&self, owner: ClientId, size_hint: u64, large: bool) -> io::Result<Self::Staged>;

    /// Makes a finished upload durable and visible as `name` of `owner`, replacing an
    /// earlier blob of that name atomically; with `archive` (from
    /// [`BlobStore::new_version_name`]) the earlier one is kept as that version first.
    /// Work the client need not wait for is left in [`Committed::replaced`].
    fn commit(
        &self,
        staged: Self::Staged,
        owner: ClientId,
        name: &str,
        archive: Option<&str>,
    ) -> io::Result<Committed>;

    /// The stored blob `name` of `owner`, for reading (`get`, as object stores say; the
    /// local store's `open` is its constructor).
    fn get(&self, owner: ClientId, name: &str) -> io::Result<Box<dyn io::Read + Send>>;

    /// The stored blobs of `owner` (not staged ones nor versions), in no particular order.
    fn list(&self, owner: ClientId) -> io::Result<Vec<BlobInfo>>;

    /// Deletes the stored blob `name` of `owner` (its records are the caller's).
    fn delete(&self, owner: ClientId, name: &str) -> io::Result<()>;

    /// Keeps the stored blob `name` of `owner` as the version `version` (from
    /// [`BlobStore::new_version_name`]) before it is deleted, so that a removal keeps the
    /// copy exactly as a replacing commit does; false when there is no such blob. The
    /// default says `Unsupported`: a store that cannot do it refuses removals while
    /// `--keep-versions` is above 0, rather than losing the copy.
    fn keep_as_version(&self, owner: ClientId, name: &str, version: &str) -> io::Result<bool> {
        let _ = (owner, name, version);
        Err(io::Error::new(io::ErrorKind::Unsupported, "this blob store cannot keep versions"))
    }

    /// Deletes the version `version` (a [`BlobStore::new_version_name`]) of one of
    /// `owner`'s blobs, if it is there.
    fn delete_version(&self, owner: ClientId, version: &str) -> io::Result<()>;

    /// What records call the blob stored as `name` of `owner`. `name` must come from
    /// [`crate::protocol::storage_name`].
    fn path_name(&self, owner: ClientId, name: &str) -> String;

    /// A fresh name to keep an earlier version of one of `owner`'s blobs under.
    fn new_version_name(&self, owner: ClientId) -> String;

    /// Bytes that can still be stored, if the store has such a limit and knows it.
    fn available_bytes(&self) -> Option<u64>;
}

/// An upload being written. Dropping it before [`BlobStore::commit`] aborts it: nothing
/// of it stays in the store.
pub trait StagedBlob: Send + 'static {
    /// Appends the chunk. The store may queue it and write it later; the chunk's buffer
    /// goes back to the upload when the store drops it. After an error nothing more of
    /// this upload can be stored.
    fn write(&mut self, chunk: Chunk) -> io::Result<()>;

    /// Waits until every chunk written is stored (durability is the commit's); the error
    /// that lost one, if any.
    fn finish(&mut self) -> io::Result<()>;

    /// Where the staged content is, as the store names it (a commit's record keeps it).
    fn location(&self) -> &str;
}

/// A chunk of an upload's plaintext, lent to the store: it derefs to its bytes, which
/// start on a page boundary (direct I/O needs that), and dropping it hands its buffer
/// back to the upload that filled it, so a few buffers circulate per upload whatever the
/// file size.
pub struct Chunk {
    /// `None` only while being dropped.
    buf: Option<AlignedBuf>,
    len: usize,
    home: mpsc::Sender<AlignedBuf>,
}

impl Chunk {
    /// The first `len` bytes of `buf`, to go back to `home` when dropped. `home` must have
    /// room for every buffer of the upload, so giving one back never waits.
    pub(crate) fn new(buf: AlignedBuf, len: usize, home: mpsc::Sender<AlignedBuf>) -> Self {
        assert!(len <= buf.len(), "a chunk of {len} bytes from a {}-byte buffer", buf.len());
        Chunk { buf: Some(buf), len, home }
    }
}

impl Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf[..self.len],
            None => &[],
        }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // Full never happens (see `new`); closed means the upload is over.
            let _ = self.home.try_send(buf);
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("len", &self.len).finish()
    }
}

/// A stored blob, as [`BlobStore::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The stored name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A committed upload.
#[derive(Debug)]
pub struct Committed {
    /// Where it is stored, as records keep it ([`BlobStore::path_name`]).
    pub path_name: String,
    /// Work left for after the client's answer (deleting the copy this one replaced):
    /// done when this is dropped, which the server does on a blocking thread.
    pub replaced: Option<Deferred>,
}

/// Work a store leaves to be done when this is dropped (see [`Committed::replaced`]).
pub struct Deferred {
    _work: Box<dyn Send>,
}

impl Deferred {
    /// The work that dropping `value` does.
    pub fn new(value: impl Send + 'static) -> Self {
        Deferred { _work: Box::new(value) }
    }
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deferred")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_shows_its_bytes_and_gives_its_buffer_back_when_dropped() {
        let (home, mut back) = mpsc::channel(1);
        let mut buf = AlignedBuf::new(32);
        buf.set_len(32);
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let chunk = Chunk::new(buf, 5, home);
        assert_eq!(&chunk[..], &[0, 1, 2, 3, 4]);
        assert!(back.try_recv().is_err());
        drop(chunk);
        assert_eq!(back.try_recv().unwrap().len(), 32, "the whole buffer comes back");
    }

    #[test]
    fn a_chunk_whose_upload_is_over_just_goes() {
        let (home, back) = mpsc::channel(1);
        drop(back);
        let mut buf = AlignedBuf::new(16);
        buf.set_len(16);
        drop(Chunk::new(buf, 16, home));
    }
}
