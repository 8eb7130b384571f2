//! Streaming a file onto the socket: one thread reads and checksums, one encrypts, the
//! caller's thread writes (the request's head together with the first chunk, so that a
//! small request leaves in one write). CBC encryption is serial, so it gets a core of its own and never
//! waits for the disk or the socket. A few fixed-size buffers circulate; memory does not
//! grow with the file.

use crate::buf::AlignedBuf;
use crate::crypto::{AesKey, CbcEncryptor, Cksum, ZlibCrc32};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;

/// Bytes read per chunk (a multiple of the AES block).
pub const CHUNK: usize = 1024 * 1024;
/// Buffers in circulation per stage.
const DEPTH: usize = 2;

/// Why a file could not be streamed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The file shrank while it was being sent.
    #[error("{path} changed while it was being sent ({expected} bytes expected, {found} read)")]
    Changed {
        /// The file.
        path: String,
        /// The size announced to the server.
        expected: u64,
        /// What could be read.
        found: u64,
    },
    /// Writing to the server failed.
    #[error("sending to the server: {0}")]
    Send(io::Error),
}

/// What one send of a file produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streamed {
    /// The `cksum` of the plaintext (what the protocol compares).
    pub cksum: u32,
    /// The zlib CRC-32 of the ciphertext as sent (what some existing servers report
    /// instead; see `docs/compatibility.md`).
    pub ciphertext_crc32: u32,
}

/// A chunk travelling down the pipeline: its buffer, how many bytes are valid, whether it
/// is the file's end.
struct Chunk {
    buf: AlignedBuf,
    len: usize,
    last: bool,
}

/// Reads `len` bytes of `file` from its start, encrypts them with `key` and writes `head`
/// followed by the ciphertext to `out`, the head in the same write as the first chunk.
/// Calls `progress` with the ciphertext bytes done. `path` is for messages only.
pub fn stream_file(
    file: &File,
    path: &Path,
    len: u64,
    key: &AesKey,
    head: &[u8],
    out: &mut (impl Write + ?Sized),
    progress: &mut dyn FnMut(u64),
) -> Result<Streamed, StreamError> {
    let shown = path.display().to_string();
    let mut reader = file;
    reader.rewind().map_err(|source| StreamError::Read { path: shown.clone(), source })?;
    let (read_tx, read_rx) = sync_channel::<Chunk>(DEPTH);
    let (enc_tx, enc_rx) = sync_channel::<Chunk>(DEPTH);
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(2 * DEPTH + 2);
    // Room for a whole chunk plus the padding block; a small file needs only its size.
    let capacity = len.min(CHUNK as u64) as usize + 16;
    for _ in 0..2 * DEPTH + 1 {
        free_tx.try_send(AlignedBuf::new(capacity)).expect("room");
    }
    let key = *key;
    thread::scope(|scope| {
        let reader = scope.spawn(move || read_stage(reader, len, free_rx, read_tx));
        scope.spawn(move || encrypt_stage(&key, read_rx, enc_tx));
        let sent = write_stage(out, head, enc_rx, free_tx, progress);
        // If writing failed, the stages above stop when their channels close.
        let read = reader.join().expect("reader thread");
        match (read, sent) {
            (Err(e), _) => Err(match e {
                ReadFailure::Io(source) => StreamError::Read { path: shown.clone(), source },
                ReadFailure::Short(found) => {
                    StreamError::Changed { path: shown.clone(), expected: len, found }
                }
            }),
            (Ok(_), Err(e)) => Err(StreamError::Send(e)),
            (Ok(cksum), Ok(ciphertext_crc32)) => Ok(Streamed { cksum, ciphertext_crc32 }),
        }
    })
}

enum ReadFailure {
    Io(io::Error),
    Short(u64),
}

fn read_stage(
    mut file: &File,
    len: u64,
    free_rx: Receiver<AlignedBuf>,
    tx: SyncSender<Chunk>,
) -> Result<u32, ReadFailure> {
    let mut cksum = Cksum::new();
    let mut remaining = len;
    loop {
        let Ok(mut buf) = free_rx.recv() else { return Ok(cksum.finish()) };
        let want = remaining.min(CHUNK as u64) as usize;
        buf.set_len(want + 16);
        let got = read_full(&mut file, &mut buf[..want]).map_err(ReadFailure::Io)?;
        if got < want {
            return Err(ReadFailure::Short(len - remaining + got as u64));
        }
        cksum.update(&buf[..got]);
        remaining -= got as u64;
        let last = remaining == 0;
        if tx.send(Chunk { buf, len: got, last }).is_err() || last {
            return Ok(cksum.finish());
        }
    }
}

fn read_full(file: &mut &File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn encrypt_stage(key: &AesKey, rx: Receiver<Chunk>, tx: SyncSender<Chunk>) {
    let mut encryptor = Some(CbcEncryptor::new(key));
    for mut chunk in rx {
        let Some(enc) = encryptor.as_mut() else { return };
        if chunk.last {
            let enc = encryptor.take().expect("present");
            chunk.len = enc.encrypt_last(&mut chunk.buf, chunk.len);
        } else {
            enc.encrypt_blocks(&mut chunk.buf[..chunk.len]);
        }
        let last = chunk.last;
        if tx.send(chunk).is_err() || last {
            return;
        }
    }
}

/// Writes the chunks as they come, `head` in front of the first; returns the CRC-32 of the
/// ciphertext written.
fn write_stage(
    out: &mut (impl Write + ?Sized),
    head: &[u8],
    rx: Receiver<Chunk>,
    free_tx: SyncSender<AlignedBuf>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u32> {
    let mut done = 0u64;
    let mut crc = ZlibCrc32::default();
    let mut head = Some(head);
    for chunk in rx {
        let data = &chunk.buf[..chunk.len];
        crc.update(data);
        match head.take() {
            Some(head) if !head.is_empty() => out.write_all(&[head, data].concat())?,
            _ => out.write_all(data)?,
        }
        done += chunk.len as u64;
        progress(done);
        let last = chunk.last;
        let _ = free_tx.try_send(chunk.buf);
        if last {
            out.flush()?;
            return Ok(crc.finish());
        }
    }
    // The reader stopped early; it reports why.
    Ok(crc.finish())
}
