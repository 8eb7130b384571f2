//! Streaming a file onto the socket: one thread reads and checksums, one encrypts, the
//! caller's thread writes (the request's head together with the first chunk, so that a
//! small request leaves in one write). The three steps of the content transform
//! ([`crate::content::Sealer::into_parts`]) run one on each: CBC encryption is serial, so
//! it gets a core of its own and never waits for the disk or the socket. A few fixed-size
//! buffers circulate; memory does not grow with the file.

use crate::buf::AlignedBuf;
use crate::content::{Digest, PlainCheck, Scheme, SealCipher, WireCheck};
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
    /// instead; see `docs/compatibility.md`), where the scheme has a ciphertext.
    pub ciphertext_crc32: Option<u32>,
}

/// A chunk travelling down the pipeline: its buffer, how many bytes are valid, whether it
/// is the file's end.
struct Chunk {
    buf: AlignedBuf,
    len: usize,
    last: bool,
}

/// Reads `len` bytes of `file` from its start, seals them as `scheme` says and writes
/// `head` followed by the sealed content to `out`, the head in the same write as the first
/// chunk. Calls `progress` with the content bytes done. `path` is for messages only.
pub fn stream_file(
    file: &File,
    path: &Path,
    len: u64,
    scheme: &Scheme,
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
    let tail_room = scheme.tail_room();
    let capacity = len.min(CHUNK as u64) as usize + tail_room;
    for _ in 0..2 * DEPTH + 1 {
        free_tx.try_send(AlignedBuf::new(capacity)).expect("room");
    }
    // The client always checks the CRC-32 too: it cannot know in advance which habit the
    // server has.
    let (plain, cipher, wire) = scheme.sealer(true).into_parts();
    thread::scope(|scope| {
        let reader =
            scope.spawn(move || read_stage(reader, len, tail_room, plain, free_rx, read_tx));
        scope.spawn(move || encrypt_stage(cipher, read_rx, enc_tx));
        let sent = write_stage(out, head, wire, enc_rx, free_tx, progress);
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
            (Ok(plain), Ok(wire)) => {
                let digest = Digest::from_parts(plain, wire);
                Ok(Streamed { cksum: digest.cksum, ciphertext_crc32: digest.ciphertext_crc32 })
            }
        }
    })
}

enum ReadFailure {
    Io(io::Error),
    Short(u64),
}

/// Reads the file in chunks (each buffer with `tail_room` to spare for the sealing) and
/// checks the plaintext.
fn read_stage(
    mut file: &File,
    len: u64,
    tail_room: usize,
    mut plain: PlainCheck,
    free_rx: Receiver<AlignedBuf>,
    tx: SyncSender<Chunk>,
) -> Result<PlainCheck, ReadFailure> {
    let mut remaining = len;
    loop {
        let Ok(mut buf) = free_rx.recv() else { return Ok(plain) };
        let want = remaining.min(CHUNK as u64) as usize;
        buf.set_len(want + tail_room);
        let got = read_full(&mut file, &mut buf[..want]).map_err(ReadFailure::Io)?;
        if got < want {
            return Err(ReadFailure::Short(len - remaining + got as u64));
        }
        plain.update(&buf[..got]);
        remaining -= got as u64;
        let last = remaining == 0;
        if tx.send(Chunk { buf, len: got, last }).is_err() || last {
            return Ok(plain);
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

/// Seals each chunk in place; stops after the last.
fn encrypt_stage(mut cipher: SealCipher, rx: Receiver<Chunk>, tx: SyncSender<Chunk>) {
    for mut chunk in rx {
        chunk.len = cipher.seal(&mut chunk.buf, chunk.len, chunk.last);
        let last = chunk.last;
        if tx.send(chunk).is_err() || last {
            return;
        }
    }
}

/// Writes the chunks as they come, `head` in front of the first, and checks them as sent.
fn write_stage(
    out: &mut (impl Write + ?Sized),
    head: &[u8],
    mut wire: WireCheck,
    rx: Receiver<Chunk>,
    free_tx: SyncSender<AlignedBuf>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<WireCheck> {
    let mut done = 0u64;
    let mut head = Some(head);
    for chunk in rx {
        let data = &chunk.buf[..chunk.len];
        wire.update(data);
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
            return Ok(wire);
        }
    }
    // The reader stopped early; it reports why.
    Ok(wire)
}
