//! One upload being written to local disk: its temporary file in the client's directory
//! and how the bytes get there (`O_DIRECT` from a writer thread of its own for large
//! uploads, buffered with write-behind for the rest). The upload pipeline only sees
//! [`StagedBlob`].

use crate::protocol::ClientId;
use crate::store::blob::{Chunk, StagedBlob};
use crate::sys::{drop_written, set_direct, start_writeback};
use std::io::{self, Write};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes of an upload handed to the disk at a time; at most two such windows of it sit
/// in the page cache (see `FileSink`).
pub const WRITE_BEHIND: u64 = 32 * 1024 * 1024;

/// What direct writes are aligned to: the largest logical block size in common use, and
/// a multiple of every chunk size (the chunks' buffers start on such a boundary too).
const DIRECT_ALIGN: usize = crate::buf::ALIGN;

/// An upload being written to a temporary file in its client's directory, the local
/// store's [`StagedBlob`]. Dropping it deletes the file, unless
/// [`crate::store::Storage`]'s commit moved it into place.
#[derive(Debug)]
pub struct StagedFile {
    /// The writing; `None` once finished (the file is closed then). Declared first so a
    /// writer thread is told to stop before the file goes.
    out: Option<Output>,
    pub(super) owner: ClientId,
    /// The temporary file's name in the client's directory.
    pub(super) name: String,
    /// `<id hex>/<name>`, as records keep it.
    location: String,
    /// Deletes the file when dropped.
    pub(super) path: tempfile::TempPath,
}

impl StagedFile {
    /// Writing the new, empty `file` (`name` in `owner`'s directory, at `path`); `direct`
    /// asks for `O_DIRECT` writes from a writer thread.
    pub(super) fn new(
        file: std::fs::File,
        direct: bool,
        owner: ClientId,
        name: String,
        path: tempfile::TempPath,
    ) -> Self {
        let location = format!("{}/{name}", owner.to_hex());
        let out = Some(Output::new(FileSink::new(file, direct)));
        StagedFile { out, owner, name, location, path }
    }
}

impl StagedFile {
    /// Continues the kept unfinished upload `file` (already truncated to where it
    /// continues, positioned at its end). `direct` writes as a new large upload does,
    /// when `written` is aligned as direct writes need (a sync point after whole chunks
    /// is); otherwise buffered.
    pub(super) fn resumed(
        file: std::fs::File,
        owner: ClientId,
        name: String,
        path: tempfile::TempPath,
        written: u64,
        direct: bool,
    ) -> Self {
        let location = format!("{}/{name}", owner.to_hex());
        let aligned = written.is_multiple_of(DIRECT_ALIGN as u64);
        let mut sink = FileSink::new(file, direct && aligned);
        (sink.written, sink.flushed) = (written, written);
        StagedFile { out: Some(Output::new(sink)), owner, name, location, path }
    }

    /// Makes every byte written so far durable. With a writer thread the request goes
    /// through its queue, behind the chunks already handed to it, so "written so far"
    /// means every chunk this upload was given.
    pub fn sync(&mut self) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.sync(),
            // Finished: the file is closed, but syncing any descriptor of it syncs it.
            None => std::fs::File::open(&self.path)?.sync_data(),
        }
    }

    /// Finishes the writing and makes the whole file durable: the first step of a group
    /// commit, taken for all its files at once so that their syncs share the journal's.
    pub fn sync_finished(&mut self) -> io::Result<()> {
        self.finish()?;
        std::fs::File::open(&self.path)?.sync_all()
    }

    /// Stops writing, syncs the file and disarms its deletion: what is left is the file,
    /// at its temporary name, for the caller to rename.
    pub(super) fn into_kept(mut self) -> io::Result<(ClientId, String)> {
        self.sync()?;
        let out = self.out.take();
        drop(out);
        let StagedFile { owner, name, path, .. } = self;
        path.keep().map_err(|e| e.error)?;
        Ok((owner, name))
    }
}

impl StagedBlob for StagedFile {
    fn write(&mut self, chunk: Chunk) -> io::Result<()> {
        match self.out.as_mut() {
            Some(out) => out.write(chunk),
            None => Err(io::Error::other("a chunk written after the upload was finished")),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.take().map_or(Ok(()), Output::finish)
    }

    fn location(&self) -> &str {
        &self.location
    }
}

/// Where an upload's chunks go: written on the caller's thread, or by a writer thread.
///
/// A direct write waits for the disk about as long as decrypting and checksumming the
/// same bytes takes, so with `O_DIRECT` the writing gets a thread of its own and the two
/// overlap; buffered writes return at memory speed and stay on the caller's thread.
#[derive(Debug)]
enum Output {
    Inline {
        sink: FileSink,
        failed: bool,
    },
    Thread {
        tx: SyncSender<Job>,
        writer: JoinHandle<io::Result<()>>,
    },
    /// The writer thread stopped with an error, already reported.
    Failed,
}

/// What the writer thread is handed, in order.
enum Job {
    Write(Chunk),
    /// Sync what was written before this, and answer.
    Sync(SyncSender<io::Result<()>>),
}

impl Output {
    fn new(sink: FileSink) -> Self {
        if !sink.direct {
            return Output::Inline { sink, failed: false };
        }
        // One chunk queued: with the one being written and the reader's, that keeps every
        // buffer of the upload busy.
        let (tx, rx) = sync_channel::<Job>(1);
        let writer = std::thread::spawn(move || {
            let mut sink = sink;
            rx.into_iter().try_for_each(|job| match job {
                // Each chunk's buffer goes back to the upload as the chunk is dropped.
                Job::Write(chunk) => sink.write_all(&chunk),
                Job::Sync(answer) => {
                    let _ = answer.send(sink.file.sync_data());
                    Ok(())
                }
            })
        });
        Output::Thread { tx, writer }
    }

    /// Makes what was written (or queued) so far durable.
    fn sync(&mut self) -> io::Result<()> {
        match self {
            Output::Inline { sink, failed: false } => sink.file.sync_data(),
            Output::Inline { failed: true, .. } | Output::Failed => {
                Err(io::Error::other("an earlier write of the upload failed"))
            }
            Output::Thread { tx, .. } => {
                let (answer, synced) = sync_channel(1);
                let asked = tx.send(Job::Sync(answer)).is_ok();
                match synced.recv() {
                    Ok(synced) if asked => synced,
                    // The writer stopped on an error: that is the answer.
                    _ => match std::mem::replace(self, Output::Failed).finish() {
                        Ok(()) => Err(io::Error::other("the writer thread stopped")),
                        Err(e) => Err(e),
                    },
                }
            }
        }
    }

    /// Writes the chunk (or queues it for the writer thread).
    fn write(&mut self, chunk: Chunk) -> io::Result<()> {
        match self {
            Output::Inline { failed: true, .. } | Output::Failed => {
                Err(io::Error::other("a chunk written after a write failed"))
            }
            Output::Inline { sink, failed } => {
                let written = sink.write_all(&chunk);
                *failed = written.is_err();
                written
            }
            Output::Thread { tx, .. } => match tx.send(Job::Write(chunk)) {
                Ok(()) => Ok(()),
                // The writer stops only on an error: that is the answer.
                Err(_) => match std::mem::replace(self, Output::Failed).finish() {
                    Ok(()) => Err(io::Error::other("the writer thread stopped")),
                    Err(e) => Err(e),
                },
            },
        }
    }

    /// Waits until everything is written; the first error not yet reported, if any.
    fn finish(self) -> io::Result<()> {
        match self {
            Output::Inline { failed: true, .. } => {
                Err(io::Error::other("an earlier write of the upload failed"))
            }
            Output::Inline { .. } | Output::Failed => Ok(()),
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
/// and nobody reads the file soon after it arrives; that is CPU on the core the client
/// needs for everything but its encryption (bench/README.md, "Where the time goes", has
/// the profile). Small uploads stay buffered: a synchronous disk write per chunk would
/// only add latency to them. Direct writes need block-aligned memory (see [`crate::buf`]),
/// lengths and offsets: the chunks are, except the file's tail, which is written buffered
/// after turning `O_DIRECT` off again. A file system that refuses direct I/O gets
/// buffered writes.
///
/// Buffered writes keep little of the upload dirty in the page cache: each finished
/// [`WRITE_BEHIND`] window is handed to the disk at once, and the one before it, by then
/// written, is waited for and dropped from the cache. The commit's fsync then finds almost
/// nothing left to write instead of the whole file, and the page cache recycles a few
/// windows' worth of pages instead of taking fresh memory for every byte (which on a VM
/// with free page reporting costs more than the copy itself). All of it is advice: errors
/// are left for the commit's fsync to report.
#[derive(Debug)]
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
    use crate::buf::AlignedBuf;
    use tokio::sync::mpsc;

    /// The chunk size of large uploads, which these tests write in.
    const CHUNK: usize = 1024 * 1024;

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
        for len in [0, 1, 4095, 4096, 4097, CHUNK, 3 * CHUNK + 4096 + 13] {
            let data = pattern(len);
            for direct in [true, false] {
                let stored = through_sink(&data, CHUNK, direct);
                assert!(stored == data, "{len} bytes stored wrongly (direct: {direct})");
            }
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

    #[test]
    fn both_outputs_write_every_chunk_and_give_every_buffer_back() {
        let data = pattern(5 * CHUNK + 4096 + 3);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("upload");
            let mut out = Output::new(FileSink::new(std::fs::File::create(&path).unwrap(), direct));
            let (home, mut back) = mpsc::channel(2);
            let mut spare = vec![AlignedBuf::new(CHUNK), AlignedBuf::new(CHUNK)];
            for piece in data.chunks(CHUNK) {
                let mut buf = spare.pop().unwrap_or_else(|| back.blocking_recv().unwrap());
                buf.set_len(piece.len());
                buf.copy_from_slice(piece);
                out.write(Chunk::new(buf, piece.len(), home.clone())).unwrap();
            }
            out.finish().unwrap();
            drop(home);
            let returned = spare.len() + std::iter::from_fn(|| back.try_recv().ok()).count();
            assert_eq!(returned, 2, "direct: {direct}");
            assert!(std::fs::read(&path).unwrap() == data, "direct: {direct}");
        }
    }

    #[test]
    fn a_sync_midway_waits_for_every_chunk_queued_before_it() {
        // What a kept upload's checkpoint relies on: when `sync` returns, the file holds
        // every byte handed over before it, also from a writer thread.
        let data = pattern(6 * CHUNK);
        for direct in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("upload");
            let file = std::fs::File::create(&path).unwrap();
            // Whether O_DIRECT goes on depends on the file system (tmpfs refuses it).
            let threaded = direct && set_direct(&file, true);
            let mut out = Output::new(FileSink::new(file, direct));
            assert_eq!(matches!(out, Output::Thread { .. }), threaded);
            let (home, mut back) = mpsc::channel(2);
            let mut spare = vec![AlignedBuf::new(CHUNK), AlignedBuf::new(CHUNK)];
            for (k, piece) in data.chunks(CHUNK).enumerate() {
                let mut buf = spare.pop().unwrap_or_else(|| back.blocking_recv().unwrap());
                buf.set_len(piece.len());
                buf.copy_from_slice(piece);
                out.write(Chunk::new(buf, piece.len(), home.clone())).unwrap();
                out.sync().unwrap();
                let on_disk = std::fs::read(&path).unwrap();
                assert!(on_disk == data[..(k + 1) * CHUNK], "chunk {k}, direct: {direct}");
            }
            out.finish().unwrap();
        }
    }

    #[test]
    fn a_failed_write_is_reported_and_nothing_more_is_written() {
        for direct in [true, false] {
            // A file opened read-only: every write fails.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("upload");
            std::fs::write(&path, b"").unwrap();
            let mut out = Output::new(FileSink::new(std::fs::File::open(&path).unwrap(), direct));
            let (home, _back) = mpsc::channel(4);
            let chunk = || {
                let mut buf = AlignedBuf::new(4096);
                buf.set_len(4096);
                Chunk::new(buf, 4096, home.clone())
            };
            // The writer thread may take the first chunk before it fails.
            let first = out.write(chunk()).and_then(|()| out.write(chunk()));
            let finished = out.finish();
            assert!(first.is_err() || finished.is_err(), "direct: {direct}");
        }
    }
}
