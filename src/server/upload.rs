//! Receiving the encrypted content of a 1028 in one streaming pass: the connection task
//! reads fixed-size chunks from the socket while a blocking worker decrypts, checksums and
//! writes the previous ones. A few chunk buffers circulate between the two, so memory stays
//! flat whatever the file size.

use crate::buf::AlignedBuf;
use crate::crypto::aes::unpadded_len;
use crate::crypto::{AesKey, CbcDecryptor, Cksum};
use std::io::{self, Write};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// The chunk size: a multiple of the AES block, large enough for fast syscalls, small
/// enough that a thousand concurrent uploads stay well under a gigabyte.
pub const CHUNK: usize = 256 * 1024;
/// The chunk size for uploads of [`LARGE_UPLOAD`] bytes or more. Every chunk is a hand-off
/// between the socket reader and the worker, a few context switches each; a quarter as many
/// cut the server's CPU time per GiB by about a quarter here (and a whole 1 GiB send by
/// a tenth). Few uploads are that large at once, and each takes 3 MiB of buffers.
pub const LARGE_CHUNK: usize = 1024 * 1024;
/// Uploads at least this large use [`LARGE_CHUNK`].
pub const LARGE_UPLOAD: u32 = 64 * 1024 * 1024;
/// Buffers per upload: one being read from the socket, one being processed, one queued.
const BUFFERS: usize = 3;
/// Bytes of an upload handed to the disk at a time; at most two such windows of it sit
/// in the page cache (see [`WriteBehind`]).
pub const WRITE_BEHIND: u64 = 32 * 1024 * 1024;

/// What an upload produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Plaintext bytes written.
    pub size: u64,
    /// cksum of the plaintext.
    pub cksum: u32,
}

/// Why an upload failed. Only [`UploadError::Padding`] leaves the connection usable: the
/// content was read to its end.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The socket failed or closed before all content arrived.
    #[error("the connection failed during the upload: {0}")]
    Socket(io::Error),
    /// No byte arrived for the idle timeout.
    #[error("the client sent nothing for {0:?} in the middle of an upload")]
    TimedOut(Duration),
    /// Writing the file failed (a full disk, say).
    #[error("writing the upload failed: {0}")]
    Storage(io::Error),
    /// The content decrypted to invalid padding (wrong key or damaged content).
    #[error("the content does not decrypt with this session's key (bad padding)")]
    Padding,
}

type Chunk = (AlignedBuf, bool);

/// Reads `content_size` bytes of encrypted content from `reader` and writes the plaintext
/// to `file`. `content_size` must already be validated (non-zero multiple of 16).
pub async fn receive<R: AsyncRead + Unpin>(
    reader: &mut R,
    content_size: u32,
    key: AesKey,
    file: std::fs::File,
    idle: Duration,
) -> Result<Received, UploadError> {
    let (full_tx, full_rx) = mpsc::channel::<Chunk>(BUFFERS);
    let (empty_tx, mut empty_rx) = mpsc::channel::<AlignedBuf>(BUFFERS);
    let chunk = if content_size >= LARGE_UPLOAD { LARGE_CHUNK } else { CHUNK };
    let chunk_len = chunk.min(content_size as usize);
    for _ in 0..BUFFERS {
        empty_tx.try_send(AlignedBuf::new(chunk_len)).expect("room for every buffer");
    }
    let worker = tokio::task::spawn_blocking(move || process(full_rx, empty_tx, key, file));
    let read = read_chunks(reader, content_size, chunk_len, idle, &full_tx, &mut empty_rx).await;
    drop(full_tx);
    let processed =
        worker.await.map_err(|e| UploadError::Storage(io::Error::other(e.to_string())))?;
    // A storage error stops the worker, which makes the reader stop: report the cause.
    match (read, processed) {
        (_, Err(e @ UploadError::Storage(_))) => Err(e),
        (Err(e), _) => Err(e),
        (Ok(()), result) => result,
    }
}

async fn read_chunks<R: AsyncRead + Unpin>(
    reader: &mut R,
    content_size: u32,
    chunk_len: usize,
    idle: Duration,
    full_tx: &mpsc::Sender<Chunk>,
    empty_rx: &mut mpsc::Receiver<AlignedBuf>,
) -> Result<(), UploadError> {
    let mut remaining = content_size as usize;
    while remaining > 0 {
        let Some(mut buf) = empty_rx.recv().await else {
            return Ok(()); // the worker stopped; it reports why
        };
        let n = chunk_len.min(remaining);
        buf.set_len(n);
        read_exact_idle(reader, &mut buf, idle).await?;
        remaining -= n;
        if full_tx.send((buf, remaining == 0)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// `read_exact` where the timeout applies to each read, not the whole buffer: a slow but
/// steady client is fine, a silent one is not.
async fn read_exact_idle<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
    idle: Duration,
) -> Result<(), UploadError> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = tokio::time::timeout(idle, reader.read(&mut buf[filled..]))
            .await
            .map_err(|_| UploadError::TimedOut(idle))?
            .map_err(UploadError::Socket)?;
        if n == 0 {
            return Err(UploadError::Socket(io::ErrorKind::UnexpectedEof.into()));
        }
        filled += n;
    }
    Ok(())
}

fn process(
    mut full_rx: mpsc::Receiver<Chunk>,
    empty_tx: mpsc::Sender<AlignedBuf>,
    key: AesKey,
    file: std::fs::File,
) -> Result<Received, UploadError> {
    let mut out = WriteBehind::new(file);
    let mut decryptor = CbcDecryptor::new(&key);
    let mut cksum = Cksum::new();
    let mut finished = false;
    while let Some((mut buf, last)) = full_rx.blocking_recv() {
        decryptor.decrypt_blocks(&mut buf);
        let len =
            if last { unpadded_len(&buf).map_err(|_| UploadError::Padding)? } else { buf.len() };
        cksum.update(&buf[..len]);
        out.write_all(&buf[..len]).map_err(UploadError::Storage)?;
        finished = last;
        // The reader may be done and gone; then nobody needs the buffer back.
        let _ = empty_tx.blocking_send(buf);
    }
    if !finished {
        // The reader stopped early and says why; nothing here is complete.
        return Err(UploadError::Socket(io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Received { size: cksum.len(), cksum: cksum.finish() })
}

/// Writes an upload while keeping little of it dirty in the page cache: each finished
/// [`WRITE_BEHIND`] window is handed to the disk at once, and the one before it, by then
/// written, is waited for and dropped from the cache. The commit's fsync then finds almost
/// nothing left to write instead of the whole file, and the page cache recycles a few
/// windows' worth of pages instead of taking fresh memory for every byte (which on a VM
/// with free page reporting costs more than the copy itself). Writing and syncing 1 GiB
/// ran 3-4x faster this way here. All of it is advice: errors are left for the commit's
/// fsync to report.
struct WriteBehind {
    file: std::fs::File,
    written: u64,
    /// Where the window not yet handed to the disk starts.
    flushed: u64,
    /// The window handed to the disk last, still in the cache.
    in_flight: Option<(u64, u64)>,
}

impl WriteBehind {
    fn new(file: std::fs::File) -> Self {
        WriteBehind { file, written: 0, flushed: 0, in_flight: None }
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)?;
        self.written += data.len() as u64;
        if self.written - self.flushed >= WRITE_BEHIND {
            let window = (self.flushed, self.written - self.flushed);
            start_writeback(&self.file, window);
            if let Some(previous) = self.in_flight.replace(window) {
                drop_written(&self.file, previous);
            }
            self.flushed = self.written;
        }
        Ok(())
    }
}

/// Starts writing `(offset, len)` of `file` to disk without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, (offset, len): (u64, u64)) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor; the call only schedules I/O on the file's own pages.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Waits until `(offset, len)` of `file` is written, then drops it from the page cache.
#[cfg(target_os = "linux")]
fn drop_written(file: &std::fs::File, (offset, len): (u64, u64)) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let wait = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid descriptor; both calls only act on the file's own cached pages.
    unsafe {
        libc::sync_file_range(fd, offset as i64, len as i64, wait);
        libc::posix_fadvise(fd, offset as i64, len as i64, libc::POSIX_FADV_DONTNEED);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _window: (u64, u64)) {}

#[cfg(not(target_os = "linux"))]
fn drop_written(_file: &std::fs::File, _window: (u64, u64)) {}
