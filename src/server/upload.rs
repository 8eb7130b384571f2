//! Receiving the encrypted content of a 1028 in one streaming pass: the connection task
//! reads fixed-size chunks from the socket while a blocking worker opens them (the
//! content transform of [`crate::content`]: decrypt, unpad, checksum) and hands the
//! plaintext of the previous ones to the blob store's staged upload
//! ([`crate::store::StagedBlob`], which decides how it reaches the disk). A few chunk
//! buffers circulate between them, so memory stays flat whatever the file size.

use crate::buf::AlignedBuf;
use crate::content::{ContentError, Digest, Opener};
use crate::store::{Chunk, StagedBlob};
use std::io;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// The chunk size: a multiple of the AES block, large enough for fast syscalls, small
/// enough that a thousand concurrent uploads stay well under a gigabyte.
pub const CHUNK: usize = 256 * 1024;
/// The chunk size for uploads of [`LARGE_UPLOAD`] bytes or more. Every chunk is a hand-off
/// between the socket reader and the worker, a few context switches each, so a quarter as
/// many save a good share of the server's CPU time per byte (bench/README.md). Few uploads
/// are that large at once, and each takes 5 MiB of buffers.
pub const LARGE_CHUNK: usize = 1024 * 1024;
/// Uploads at least this large use [`LARGE_CHUNK`] and, given a large-upload slot, are
/// staged as large (the local store writes them with `O_DIRECT` from a writer thread).
pub const LARGE_UPLOAD: u32 = 64 * 1024 * 1024;
/// Buffers per upload: one being read from the socket, one being processed, one queued.
const BUFFERS: usize = 3;
/// Buffers per large upload: two more, for a store that writes from a thread of its own
/// (one being written, one queued for the writer).
const LARGE_BUFFERS: usize = 5;

/// Why an upload failed. After [`UploadError::Padding`] the content was read to its end
/// (the server ends the session anyway: a correct client never sends it). Either way the
/// staged blob was dropped, so nothing of the upload is kept.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The socket failed or closed before all content arrived.
    #[error("the connection failed during the upload: {0}")]
    Socket(io::Error),
    /// No byte arrived for the idle timeout.
    #[error("the client sent nothing for {0:?} in the middle of an upload")]
    TimedOut(Duration),
    /// Storing the content failed (a full disk, say).
    #[error("writing the upload failed: {0}")]
    Storage(io::Error),
    /// The upload fell below [`MIN_UPLOAD_RATE`].
    #[error("the client sent the upload slower than the minimum rate")]
    TooSlow,
    /// The content decrypted to invalid padding (wrong key or damaged content).
    #[error("the content does not decrypt with this session's key (bad padding)")]
    Padding,
}

/// A buffer of content as read from the socket, and whether it is the last.
type Filled = (AlignedBuf, bool);

/// Bytes per second an upload must average (after a first idle timeout's grace): a peer
/// that announces a large file and trickles it must not hold its slot for days.
pub const MIN_UPLOAD_RATE: u64 = 64 * 1024;
/// Bytes of a chunk buffer made ready (zeroed) ahead of the bytes read into it: a parked
/// upload costs this much memory, not a whole chunk.
const READ_STEP: usize = 16 * 1024;

/// Reads `content_size` bytes of encrypted content from `reader`, opens it with `opener`
/// and writes the plaintext to `staged`; returns what the opener found (the CRC-32 of the
/// ciphertext too when the opener was asked for it, see
/// [`crate::server::Config::compat_crc32_ciphertext`]) and the staged blob, finished and
/// ready to commit. `content_size` must already be validated (non-zero multiple of 16).
/// `allow_large` lets an upload of [`LARGE_UPLOAD`] bytes or more take the large-upload
/// path (the caller bounds how many do at once, and staged it as large).
///
/// Small uploads hold no thread while they wait for bytes: each chunk is decrypted and
/// written by a short job on the blocking pool. Large ones (bounded by the caller) keep a
/// worker for their whole life. Buffers are allocated as the bytes arrive.
pub async fn receive<R: AsyncRead + Unpin, S: StagedBlob>(
    reader: &mut R,
    content_size: u32,
    opener: Opener,
    staged: S,
    idle: Duration,
    allow_large: bool,
) -> Result<(Digest, S), UploadError> {
    let large = allow_large && content_size >= LARGE_UPLOAD;
    let (chunk, buffers) = if large { (LARGE_CHUNK, LARGE_BUFFERS) } else { (CHUNK, BUFFERS) };
    let (full_tx, full_rx) = mpsc::channel::<Filled>(buffers);
    // Room for every buffer: a chunk gives its buffer back without waiting (see `Chunk`).
    let (empty_tx, mut empty_rx) = mpsc::channel::<AlignedBuf>(buffers);
    let chunk_len = chunk.min(content_size as usize);
    let processor = Processor { staged, opener, home: empty_tx, finished: false, failed: None };
    let deadline =
        Instant::now() + idle + Duration::from_secs(u64::from(content_size) / MIN_UPLOAD_RATE);
    let reading = async {
        let pool = BufferPool { chunk_len, left: buffers, empty_rx: &mut empty_rx };
        let read = read_chunks(reader, content_size, idle, deadline, &full_tx, pool).await;
        drop(full_tx);
        read
    };
    let (read, processed) = if large {
        let worker = tokio::task::spawn_blocking(move || processor.run_blocking(full_rx));
        let (read, processed) = tokio::join!(reading, worker);
        (read, processed.unwrap_or_else(|e| Err(task_failed(e))))
    } else {
        tokio::join!(reading, processor.run_async(full_rx))
    };
    // A storage error stops the worker, which makes the reader stop: report the cause.
    match (read, processed) {
        (_, Err(e @ UploadError::Storage(_))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), result) => result,
    }
}

fn task_failed(e: tokio::task::JoinError) -> UploadError {
    UploadError::Storage(io::Error::other(e.to_string()))
}

/// The chunk buffers of one upload: made when first needed, then reused as the worker
/// hands them back.
struct BufferPool<'a> {
    chunk_len: usize,
    left: usize,
    empty_rx: &'a mut mpsc::Receiver<AlignedBuf>,
}

impl BufferPool<'_> {
    async fn next(&mut self) -> Option<AlignedBuf> {
        if let Ok(buf) = self.empty_rx.try_recv() {
            return Some(buf);
        }
        if self.left > 0 {
            self.left -= 1;
            return Some(AlignedBuf::new(self.chunk_len));
        }
        self.empty_rx.recv().await
    }
}

async fn read_chunks<R: AsyncRead + Unpin>(
    reader: &mut R,
    content_size: u32,
    idle: Duration,
    deadline: Instant,
    full_tx: &mpsc::Sender<Filled>,
    mut pool: BufferPool<'_>,
) -> Result<(), UploadError> {
    let mut remaining = content_size as usize;
    while remaining > 0 {
        let Some(mut buf) = pool.next().await else {
            return Ok(()); // the worker stopped; it reports why
        };
        let n = pool.chunk_len.min(remaining);
        read_exact_idle(reader, &mut buf, n, idle, deadline).await?;
        remaining -= n;
        if full_tx.send((buf, remaining == 0)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Fills `buf` to `len` bytes; the timeout applies to each read, not the whole buffer (a
/// slow but steady client is fine, a silent one is not), and the whole upload must end
/// by `deadline` (see [`MIN_UPLOAD_RATE`]). The buffer grows as bytes arrive.
async fn read_exact_idle<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut AlignedBuf,
    len: usize,
    idle: Duration,
    deadline: Instant,
) -> Result<(), UploadError> {
    let mut filled = 0;
    while filled < len {
        // Grow ahead of the bytes, doubling: a parked upload touches READ_STEP bytes, a
        // fast one reaches the whole chunk in a few reads.
        let ready = buf.initialized().max(READ_STEP).max(2 * filled);
        buf.set_len(len.min(ready));
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(idle.min(left), reader.read(&mut buf[filled..]))
            .await
            .map_err(
                |_| if left < idle { UploadError::TooSlow } else { UploadError::TimedOut(idle) },
            )?
            .map_err(UploadError::Socket)?;
        if n == 0 {
            return Err(UploadError::Socket(io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    buf.set_len(len);
    Ok(())
}

/// Opens (decrypts, checksums) an upload's chunks in order and hands the plaintext to the
/// staged blob.
struct Processor<S> {
    staged: S,
    opener: Opener,
    /// Where the chunks' buffers go back to (the socket reader's pool).
    home: mpsc::Sender<AlignedBuf>,
    finished: bool,
    failed: Option<UploadError>,
}

impl<S: StagedBlob> Processor<S> {
    /// One chunk; false once the upload cannot go on.
    fn chunk(&mut self, (mut buf, last): Filled) -> bool {
        let len = match self.opener.chunk(&mut buf, last) {
            Ok(len) => len,
            Err(ContentError::Padding(_)) => {
                self.failed = Some(UploadError::Padding);
                return false;
            }
        };
        if let Err(e) = self.staged.write(Chunk::new(buf, len, self.home.clone())) {
            self.failed = Some(UploadError::Storage(e));
            return false;
        }
        self.finished = last;
        true
    }

    /// Waits for the store, then says how the upload went; on any failure the staged blob
    /// is dropped here, on the blocking thread, which deletes what was written.
    fn finish(mut self) -> Result<(Digest, S), UploadError> {
        let finish = self.staged.finish().map_err(UploadError::Storage);
        if let Some(e) = self.failed {
            return Err(e);
        }
        finish?;
        if !self.finished {
            // The reader stopped early and says why; nothing here is complete.
            return Err(UploadError::Socket(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok((self.opener.finish(), self.staged))
    }

    /// On a worker thread of its own, for the whole upload.
    fn run_blocking(
        mut self,
        mut full_rx: mpsc::Receiver<Filled>,
    ) -> Result<(Digest, S), UploadError> {
        while let Some(chunk) = full_rx.blocking_recv() {
            if !self.chunk(chunk) {
                break;
            }
        }
        self.finish()
    }

    /// One short blocking job per chunk: no thread is held while the peer is slow.
    async fn run_async(
        self,
        mut full_rx: mpsc::Receiver<Filled>,
    ) -> Result<(Digest, S), UploadError> {
        let mut this = self;
        while let Some(chunk) = full_rx.recv().await {
            let (back, ok) = tokio::task::spawn_blocking(move || {
                let ok = this.chunk(chunk);
                (this, ok)
            })
            .await
            .map_err(task_failed)?;
            this = back;
            if !ok {
                break;
            }
        }
        drop(full_rx);
        tokio::task::spawn_blocking(move || this.finish()).await.map_err(task_failed)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Scheme;
    use crate::crypto::{Cksum, ZlibCrc32};
    use crate::protocol::ClientId;
    use crate::store::{BlobStore, Storage};

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[tokio::test]
    async fn a_large_upload_arrives_whole_on_either_path() {
        // With a large-upload slot (1 MiB chunks, O_DIRECT, writer thread) and without one
        // (the small-upload path the server falls back to when every slot is taken).
        let key = [9u8; 16];
        let data = pattern(LARGE_UPLOAD as usize + 4096 + 5);
        let ciphertext = crate::crypto::aes::encrypt_to_vec(&key, &data);
        let id = ClientId([3; 16]);
        for (large, crc) in [(true, true), (false, false)] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::open(dir.path()).unwrap();
            let staged = storage.stage(id, ciphertext.len() as u64, large).unwrap();
            let size = ciphertext.len() as u32;
            let mut reader = &ciphertext[..];
            let idle = Duration::from_secs(10);
            let opener = Scheme::V3 { key }.opener(crc);
            let (got, staged) =
                receive(&mut reader, size, opener, staged, idle, large).await.unwrap();
            let ciphertext_crc32 = crc.then(|| ZlibCrc32::of(&ciphertext));
            let want =
                Digest { size: data.len() as u64, cksum: Cksum::of(&data), ciphertext_crc32 };
            assert_eq!(got, want);
            drop(storage.commit(staged, id, "f", None).unwrap());
            let stored = std::fs::read(dir.path().join(storage.path_name(id, "f"))).unwrap();
            assert!(stored == data, "large: {large}");
        }
    }

    #[tokio::test]
    async fn bad_padding_fails_the_upload_and_leaves_no_file() {
        let key = [9u8; 16];
        let mut ciphertext = crate::crypto::aes::encrypt_to_vec(&key, &pattern(CHUNK + 100));
        let last = ciphertext.len() - 1;
        ciphertext[last] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path()).unwrap();
        let id = ClientId([3; 16]);
        let staged = storage.stage(id, ciphertext.len() as u64, false).unwrap();
        let size = ciphertext.len() as u32;
        let opener = Scheme::V3 { key }.opener(false);
        let idle = Duration::from_secs(10);
        let got = receive(&mut &ciphertext[..], size, opener, staged, idle, false).await;
        assert!(matches!(got, Err(UploadError::Padding)), "{got:?}");
        assert_eq!(std::fs::read_dir(dir.path().join(id.to_hex())).unwrap().count(), 0);
    }
}
