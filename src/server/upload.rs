//! Receiving the encrypted content of a 1028 in one streaming pass: the connection task
//! reads fixed-size chunks from the socket while a blocking worker opens them (the
//! content transform of [`crate::content`]: decrypt, unpad, checksum) and writes the
//! previous ones (large uploads: hands them to a writer thread, see `Output`).
//! A few chunk buffers circulate between them, so memory stays flat whatever the file size.

use crate::buf::AlignedBuf;
use crate::content::{ContentError, Digest, Opener};
use crate::sys::{drop_written, set_direct, start_writeback};
use std::io::{self, Write};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// The chunk size: a multiple of the AES block, large enough for fast syscalls, small
/// enough that a thousand concurrent uploads stay well under a gigabyte.
pub const CHUNK: usize = 256 * 1024;
/// The chunk size for uploads of [`LARGE_UPLOAD`] bytes or more. Every chunk is a hand-off
/// between the socket reader and the worker, a few context switches each; a quarter as many
/// cut the server's CPU time per GiB by about a quarter here (and a whole 1 GiB send by
/// a tenth). Few uploads are that large at once, and each takes 5 MiB of buffers.
pub const LARGE_CHUNK: usize = 1024 * 1024;
/// Uploads at least this large use [`LARGE_CHUNK`] and are written with `O_DIRECT` (see
/// `FileSink`).
pub const LARGE_UPLOAD: u32 = 64 * 1024 * 1024;
/// Buffers per upload: one being read from the socket, one being processed, one queued
/// (and, for direct writes, one being written and one queued for the writer).
const BUFFERS: usize = 3;
/// Buffers per upload written with `O_DIRECT`.
const DIRECT_BUFFERS: usize = 5;
/// Bytes of an upload handed to the disk at a time; at most two such windows of it sit
/// in the page cache (see `FileSink`).
pub const WRITE_BEHIND: u64 = 32 * 1024 * 1024;

/// Why an upload failed. After [`UploadError::Padding`] the content was read to its end
/// (the server ends the session anyway: a correct client never sends it).
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
    /// The upload fell below [`MIN_UPLOAD_RATE`].
    #[error("the client sent the upload slower than the minimum rate")]
    TooSlow,
    /// The content decrypted to invalid padding (wrong key or damaged content).
    #[error("the content does not decrypt with this session's key (bad padding)")]
    Padding,
}

type Chunk = (AlignedBuf, bool);

/// Bytes per second an upload must average (after a first idle timeout's grace): a peer
/// that announces a large file and trickles it must not hold its slot for days.
pub const MIN_UPLOAD_RATE: u64 = 64 * 1024;
/// Bytes of a chunk buffer made ready (zeroed) ahead of the bytes read into it: a parked
/// upload costs this much memory, not a whole chunk.
const READ_STEP: usize = 16 * 1024;

/// Reads `content_size` bytes of encrypted content from `reader`, opens it with `opener`
/// and writes the plaintext to `file`; returns what the opener found (the CRC-32 of the
/// ciphertext too when the opener was asked for it, see
/// [`crate::server::Config::compat_crc32_ciphertext`]). `content_size` must already be
/// validated (non-zero multiple of 16). `allow_large` lets an upload of [`LARGE_UPLOAD`]
/// bytes or more take the large-upload path (the caller bounds how many do at once).
///
/// Small uploads hold no thread while they wait for bytes: each chunk is decrypted and
/// written by a short job on the blocking pool. Large ones (bounded by the caller) keep a
/// worker for their whole life. Buffers are allocated as the bytes arrive.
pub async fn receive<R: AsyncRead + Unpin>(
    reader: &mut R,
    content_size: u32,
    opener: Opener,
    file: std::fs::File,
    idle: Duration,
    allow_large: bool,
) -> Result<Digest, UploadError> {
    let large = allow_large && content_size >= LARGE_UPLOAD;
    let (chunk, buffers) = if large { (LARGE_CHUNK, DIRECT_BUFFERS) } else { (CHUNK, BUFFERS) };
    let (full_tx, full_rx) = mpsc::channel::<Chunk>(buffers);
    let (empty_tx, mut empty_rx) = mpsc::channel::<AlignedBuf>(buffers);
    let chunk_len = chunk.min(content_size as usize);
    let processor = Processor::new(opener, file, large, empty_tx);
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
    full_tx: &mpsc::Sender<Chunk>,
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

/// Opens (decrypts, checksums) and writes an upload's chunks in order.
struct Processor {
    out: Output,
    opener: Opener,
    finished: bool,
    failed: Option<UploadError>,
}

impl Processor {
    fn new(
        opener: Opener,
        file: std::fs::File,
        direct: bool,
        empty_tx: mpsc::Sender<AlignedBuf>,
    ) -> Self {
        Processor {
            out: Output::new(FileSink::new(file, direct), empty_tx),
            opener,
            finished: false,
            failed: None,
        }
    }

    /// One chunk; false once the upload cannot go on.
    fn chunk(&mut self, (mut buf, last): Chunk) -> bool {
        let len = match self.opener.chunk(&mut buf, last) {
            Ok(len) => len,
            Err(ContentError::Padding(_)) => {
                self.failed = Some(UploadError::Padding);
                return false;
            }
        };
        if !self.out.write(buf, len) {
            return false; // it failed; `finish` says why
        }
        self.finished = last;
        true
    }

    fn finish(self) -> Result<Digest, UploadError> {
        let finish = self.out.finish().map_err(UploadError::Storage);
        if let Some(e) = self.failed {
            return Err(e);
        }
        finish?;
        if !self.finished {
            // The reader stopped early and says why; nothing here is complete.
            return Err(UploadError::Socket(io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(self.opener.finish())
    }

    /// On a worker thread of its own, for the whole upload.
    fn run_blocking(mut self, mut full_rx: mpsc::Receiver<Chunk>) -> Result<Digest, UploadError> {
        while let Some(chunk) = full_rx.blocking_recv() {
            if !self.chunk(chunk) {
                break;
            }
        }
        self.finish()
    }

    /// One short blocking job per chunk: no thread is held while the peer is slow.
    async fn run_async(self, mut full_rx: mpsc::Receiver<Chunk>) -> Result<Digest, UploadError> {
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

/// Where decrypted chunks go, and how their buffers get back to the socket reader.
///
/// A direct write waits for the disk (about 0.7 s per GiB here, as long as decrypting and
/// checksumming it), so with `O_DIRECT` the writing gets a thread of its own and the two
/// overlap; buffered writes return at memory speed and stay on the worker's thread.
enum Output {
    Inline { sink: FileSink, empty_tx: mpsc::Sender<AlignedBuf>, failed: Option<io::Error> },
    Thread { tx: SyncSender<(AlignedBuf, usize)>, writer: JoinHandle<io::Result<()>> },
}

/// Writes the first `len` bytes of `buf` and hands the buffer back to the socket reader
/// (which may be done and gone; then nobody needs it).
fn write_and_return(
    sink: &mut FileSink,
    empty_tx: &mpsc::Sender<AlignedBuf>,
    buf: AlignedBuf,
    len: usize,
) -> io::Result<()> {
    sink.write_all(&buf[..len])?;
    let _ = empty_tx.blocking_send(buf);
    Ok(())
}

impl Output {
    fn new(sink: FileSink, empty_tx: mpsc::Sender<AlignedBuf>) -> Self {
        if !sink.direct {
            return Output::Inline { sink, empty_tx, failed: None };
        }
        // One chunk queued: with the one being written and the reader's, that keeps every
        // buffer of the upload busy.
        let (tx, rx) = sync_channel::<(AlignedBuf, usize)>(1);
        let writer = std::thread::spawn(move || {
            let mut sink = sink;
            rx.into_iter()
                .try_for_each(|(buf, len)| write_and_return(&mut sink, &empty_tx, buf, len))
        });
        Output::Thread { tx, writer }
    }

    /// Writes the first `len` bytes of `buf` (or queues them); false once writing failed.
    fn write(&mut self, buf: AlignedBuf, len: usize) -> bool {
        match self {
            Output::Inline { sink, empty_tx, failed } => {
                match write_and_return(sink, empty_tx, buf, len) {
                    Ok(()) => true,
                    Err(e) => {
                        *failed = Some(e);
                        false
                    }
                }
            }
            Output::Thread { tx, .. } => tx.send((buf, len)).is_ok(),
        }
    }

    /// Waits until everything is written; the first error, if any.
    fn finish(self) -> io::Result<()> {
        match self {
            Output::Inline { failed, .. } => failed.map_or(Ok(()), Err),
            Output::Thread { tx, writer } => {
                drop(tx); // the writer finishes the queue and stops
                writer
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("the writer thread panicked")))
            }
        }
    }
}

/// Writes an upload to its file, one of two ways.
///
/// Large uploads go straight to the disk with `O_DIRECT`: a buffered write costs the
/// kernel far more than its copy (ext4's delayed allocation builds buffer heads and extent
/// entries for every page, and the pages must later be written back and dropped again),
/// and nobody reads the file soon after it arrives. Profiling a 1 GiB send here, buffered
/// writing (with the write-behind below) took about 0.45 s of the server's CPU; direct
/// writes cut the server's whole CPU time per GiB from 0.83 s to 0.60 s, and that is CPU
/// on the core the client needs for everything but its encryption. Small uploads stay
/// buffered: a synchronous disk write per chunk would only add latency to them.
/// Direct writes need block-aligned memory (see [`crate::buf`]), lengths and offsets: the
/// chunks are, except the file's tail, which is written buffered after turning
/// `O_DIRECT` off again. A file system that refuses direct I/O gets buffered writes.
///
/// Buffered writes keep little of the upload dirty in the page cache: each finished
/// [`WRITE_BEHIND`] window is handed to the disk at once, and the one before it, by then
/// written, is waited for and dropped from the cache. The commit's fsync then finds almost
/// nothing left to write instead of the whole file, and the page cache recycles a few
/// windows' worth of pages instead of taking fresh memory for every byte (which on a VM
/// with free page reporting costs more than the copy itself). Writing and syncing 1 GiB
/// ran 3-4x faster this way here than plain writes. All of it is advice: errors are left
/// for the commit's fsync to report.
struct FileSink {
    file: std::fs::File,
    written: u64,
    /// Whether the file is open with `O_DIRECT` now.
    direct: bool,
    /// Where the window not yet handed to the disk starts.
    flushed: u64,
    /// The window handed to the disk last, still in the cache.
    in_flight: Option<(u64, u64)>,
}

/// What direct writes are aligned to: the largest logical block size in common use, and
/// a multiple of every chunk size.
const DIRECT_ALIGN: usize = crate::buf::ALIGN;

impl FileSink {
    /// A sink for a new, empty `file`; `direct` asks for `O_DIRECT` writes where the file
    /// system allows them.
    fn new(file: std::fs::File, direct: bool) -> Self {
        let direct = direct && set_direct(&file, true);
        FileSink { file, written: 0, direct, flushed: 0, in_flight: None }
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.direct {
            let aligned = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            let done = self.write_direct(&data[..aligned])?;
            self.written += done as u64;
            data = &data[done..];
            if !data.is_empty() {
                // The file's tail, or a refusal: the rest goes through the page cache.
                if !set_direct(&self.file, false) {
                    return Err(io::Error::other("cannot turn O_DIRECT off for the file's tail"));
                }
                self.direct = false;
                self.flushed = self.written;
            }
        }
        if data.is_empty() {
            return Ok(());
        }
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

    /// Writes what it can of `data` directly and returns how much; stops early (for the
    /// buffered path to finish) when the kernel refuses a direct write or a short write
    /// leaves the offset unaligned.
    fn write_direct(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < data.len() {
            match self.file.write(&data[done..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => break,
                Err(e) => return Err(e),
            }
            if done % DIRECT_ALIGN != 0 {
                break;
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::Scheme;
    use crate::crypto::{Cksum, ZlibCrc32};

    /// Writes `data` through a sink in `chunk`-sized pieces taken from aligned buffers (as
    /// the upload worker does) and returns what ended up in the file.
    fn through_sink(data: &[u8], chunk: usize, direct: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        let mut sink = FileSink::new(std::fs::File::create(&path).unwrap(), direct);
        let mut buf = AlignedBuf::new(chunk);
        for piece in data.chunks(chunk) {
            buf.set_len(piece.len());
            buf.copy_from_slice(piece);
            sink.write_all(&buf).unwrap();
        }
        assert_eq!(sink.written, data.len() as u64);
        drop(sink);
        std::fs::read(&path).unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn direct_writes_store_every_byte_including_an_unaligned_tail() {
        for len in [0, 1, 4095, 4096, 4097, LARGE_CHUNK, 3 * LARGE_CHUNK + 4096 + 13] {
            let data = pattern(len);
            for direct in [true, false] {
                let stored = through_sink(&data, LARGE_CHUNK, direct);
                assert!(stored == data, "{len} bytes stored wrongly (direct: {direct})");
            }
        }
    }

    #[tokio::test]
    async fn a_large_upload_arrives_whole_on_either_path() {
        // With a large-upload slot (1 MiB chunks, O_DIRECT, writer thread) and without one
        // (the small-upload path the server falls back to when every slot is taken).
        let key = [9u8; 16];
        let data = pattern(LARGE_UPLOAD as usize + 4096 + 5);
        let ciphertext = crate::crypto::aes::encrypt_to_vec(&key, &data);
        for (allow_large, crc) in [(true, true), (false, false)] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("upload");
            let file = std::fs::File::create(&path).unwrap();
            let size = ciphertext.len() as u32;
            let mut reader = &ciphertext[..];
            let idle = Duration::from_secs(10);
            let opener = Scheme::V3 { key }.opener(crc);
            let got = receive(&mut reader, size, opener, file, idle, allow_large).await.unwrap();
            let ciphertext_crc32 = crc.then(|| ZlibCrc32::of(&ciphertext));
            let want =
                Digest { size: data.len() as u64, cksum: Cksum::of(&data), ciphertext_crc32 };
            assert_eq!(got, want);
            assert!(std::fs::read(&path).unwrap() == data, "allow_large: {allow_large}");
        }
    }

    #[test]
    fn an_unaligned_buffer_falls_back_to_buffered_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload");
        let mut sink = FileSink::new(std::fs::File::create(&path).unwrap(), true);
        let mut buf = AlignedBuf::new(3 * 4096);
        buf.set_len(3 * 4096);
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        // Two aligned blocks starting one byte into the buffer: the kernel refuses them
        // for O_DIRECT (EINVAL), and the sink must write them anyway.
        sink.write_all(&buf[1..1 + 2 * 4096]).unwrap();
        sink.write_all(&buf[..4096]).unwrap();
        drop(sink);
        let stored = std::fs::read(&path).unwrap();
        assert_eq!(&stored[..2 * 4096], &buf[1..1 + 2 * 4096]);
        assert_eq!(&stored[2 * 4096..], &buf[..4096]);
    }
}
