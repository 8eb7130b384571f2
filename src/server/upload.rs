//! Receiving the encrypted content of a 1028 in one streaming pass: the connection task
//! reads fixed-size chunks from the socket while a blocking worker decrypts, checksums and
//! writes the previous ones. A few chunk buffers circulate between the two, so memory stays
//! flat whatever the file size.

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
/// Buffers per upload: one being read from the socket, one being processed, one queued.
const BUFFERS: usize = 3;

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

type Chunk = (Vec<u8>, bool);

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
    let (empty_tx, mut empty_rx) = mpsc::channel::<Vec<u8>>(BUFFERS);
    let chunk_len = CHUNK.min(content_size as usize);
    for _ in 0..BUFFERS {
        empty_tx.try_send(Vec::with_capacity(chunk_len)).expect("room for every buffer");
    }
    let worker = tokio::task::spawn_blocking(move || process(full_rx, empty_tx, key, file));
    let read = read_chunks(reader, content_size, chunk_len, idle, &full_tx, &mut empty_rx).await;
    drop(full_tx);
    let processed = worker
        .await
        .map_err(|e| UploadError::Storage(io::Error::other(e.to_string())))?;
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
    empty_rx: &mut mpsc::Receiver<Vec<u8>>,
) -> Result<(), UploadError> {
    let mut remaining = content_size as usize;
    while remaining > 0 {
        let Some(mut buf) = empty_rx.recv().await else {
            return Ok(()); // the worker stopped; it reports why
        };
        let n = chunk_len.min(remaining);
        buf.resize(n, 0);
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
    empty_tx: mpsc::Sender<Vec<u8>>,
    key: AesKey,
    file: std::fs::File,
) -> Result<Received, UploadError> {
    let mut out = io::BufWriter::with_capacity(CHUNK, file);
    let mut decryptor = CbcDecryptor::new(&key);
    let mut cksum = Cksum::new();
    let mut finished = false;
    while let Some((mut buf, last)) = full_rx.blocking_recv() {
        decryptor.decrypt_blocks(&mut buf);
        let len = if last {
            unpadded_len(&buf).map_err(|_| UploadError::Padding)?
        } else {
            buf.len()
        };
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
    out.flush().map_err(UploadError::Storage)?;
    Ok(Received { size: cksum.len(), cksum: cksum.finish() })
}
