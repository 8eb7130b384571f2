//! Many small files on one connection (docs/protocol-v4.md, "Many small files: group
//! commit"): each file's `PUT_BEGIN`, `DATA`, `PUT_END` and `COMMIT` go out behind the
//! previous file's without waiting for its answers, up to a window the server's `WELCOME`
//! allows, so that a run of small files costs no round trip each and the server can store
//! them in groups. Each file keeps the rules of [`Session::send_file`]: a `hash_mismatch`
//! sends it again (at most [`MAX_SENDS`] sends), a temporary refusal is retried after the
//! server's wait, any other refusal is that file's error and the others go on; and the
//! results are reported in the files' order whatever order they are decided in.
//!
//! Why small files only: a small file is read whole before it is sent (one file at a
//! time: its bytes are dropped once written, at most [`BATCH_FILE_LIMIT`] held), which is
//! what lets its `COMMIT` follow at once; a large one streams through
//! [`Session::send_file`], whose round trip is nothing beside its data.

use super::conn::{AnswerFuture, ConnError};
use super::error::V4Error;
use super::session::{Attempt, Sent, Session, Stored, hex, mtime_ns};
use crate::client::{Event, MAX_SENDS};
use crate::protocol::v4::{Commit, FrameType, Hash, MAX_DATA_PAYLOAD, NO_HASH, PutBegin, names};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use unicode_normalization::UnicodeNormalization;

/// Files smaller than this are sent in a batch by [`Session::send_many`]; larger ones
/// alone, streamed, by [`Session::send_file`]. Sent alone, a file pays a commit round
/// trip and the server's fsync before the next begins, which at 1 MiB is still half its
/// time (bench/README.md, "100 files of 1 MiB"); by 8 MiB its bytes dominate, and a cut
/// batch resends no more than that of one file.
pub const BATCH_FILE_LIMIT: u64 = 8 << 20;

/// One file of a batch: the local file and the path to store it under.
#[derive(Debug, Clone)]
pub struct Batched {
    /// The local file.
    pub path: PathBuf,
    /// Where it is stored (normalised to NFC before it is sent).
    pub stored_as: String,
}

/// A file whose put and commit are on the wire, waiting for their answers.
struct InFlight {
    index: usize,
    stored_as: String,
    size: u64,
    hash: Hash,
    sends: u32,
    retries: u32,
    put: AnswerFuture,
    committed: AnswerFuture,
}

/// A file to send (again): which, on which send, after how many temporary refusals.
#[derive(Clone, Copy)]
struct Waiting {
    index: usize,
    sends: u32,
    retries: u32,
}

/// What a file's send came to, in the files' order.
type Outcomes = BTreeMap<usize, Result<Stored, V4Error>>;

impl Session {
    /// Sends `files` pipelined on this connection and verifies each end to end; `done`
    /// hears each file's result in the files' order. After a result that ends the session
    /// ([`V4Error::ends_session`]) nothing more is sent and `done` hears no more: the
    /// files it did not hear of were not sent (or their answers were lost with the
    /// connection).
    pub async fn send_many(
        &mut self,
        files: &[Batched],
        mut done: impl FnMut(usize, Result<Stored, V4Error>),
    ) {
        let window = self.batch_window();
        let mut waiting: VecDeque<Waiting> =
            (0..files.len()).map(|index| Waiting { index, sends: 1, retries: 0 }).collect();
        let mut flight: VecDeque<InFlight> = VecDeque::new();
        let mut outcomes = Outcomes::new();
        let mut next = 0;
        let mut stopped = false;
        while next < files.len() {
            if let Some(result) = outcomes.remove(&next) {
                let ends = ends_session(&result);
                done(next, result);
                next += 1;
                if ends {
                    return;
                }
                continue;
            }
            if !stopped
                && flight.len() < window
                && let Some(file) = waiting.pop_front()
            {
                match self.put_small(files, file).await {
                    Ok(sent) => flight.push_back(sent),
                    Err(e) => {
                        stopped |= e.ends_session();
                        outcomes.insert(file.index, Err(e));
                    }
                }
                continue;
            }
            let Some(oldest) = flight.pop_front() else {
                // Nothing on the wire and nothing decided for the next file: the
                // connection failed before it was sent, and that is its result.
                let failed = outcomes.iter().find(|(_, r)| ends_session(r)).map(|(k, _)| *k);
                if let Some(result) = failed.and_then(|k| outcomes.remove(&k)) {
                    done(next, result);
                }
                return;
            };
            if let Some(again) = self.settle(files, oldest, &mut outcomes).await {
                waiting.push_front(again);
            }
            stopped |= outcomes.values().any(ends_session);
        }
    }

    /// How many files may be on the wire at once: each is two requests (`PUT_BEGIN` and
    /// `COMMIT`) of the server's `max in flight`, and one of its `max open puts`.
    fn batch_window(&self) -> usize {
        let requests = usize::from(self.welcome.max_in_flight / 2);
        requests.min(usize::from(self.welcome.max_open_puts)).max(1)
    }

    /// Reads one small file whole and writes its put and its `COMMIT`.
    async fn put_small(&mut self, files: &[Batched], file: Waiting) -> Result<InFlight, V4Error> {
        if let Some(why) = &self.broken {
            return Err(V4Error::Conn(ConnError::Lost(why.clone())));
        }
        let Batched { path, stored_as } = &files[file.index];
        let stored_as: String = stored_as.nfc().collect();
        names::check_path(&stored_as)
            .map_err(|why| V4Error::BadName { name: stored_as.clone(), why: why.to_string() })?;
        let (data, meta) = read_small(path.clone()).await?;
        let hash = *blake3::hash(&data).as_bytes();
        let tag = self.conn.new_tag();
        let begin = PutBegin {
            no_clobber: self.no_clobber,
            size: Some(data.len() as u64),
            offset: 0,
            prefix_hash: NO_HASH,
            mtime_ns: mtime_ns(&meta),
            path: stored_as.clone(),
        };
        let payload = begin.encode().map_err(V4Error::encode)?;
        let put = self.conn.request(FrameType::PutBegin, tag, &payload).await?;
        let chunk = (MAX_DATA_PAYLOAD.min(self.welcome.max_data.max(1))) as usize;
        for piece in data.chunks(chunk) {
            self.conn.write_frame(FrameType::PutData, tag, piece).await?;
        }
        self.conn.write_frame(FrameType::PutEnd, tag, &[]).await?;
        let committed =
            self.conn.request(FrameType::Commit, tag, &Commit { hash }.encode()).await?;
        let (sends, retries) = (file.sends, file.retries);
        let size = data.len() as u64;
        Ok(InFlight { index: file.index, stored_as, size, hash, sends, retries, put, committed })
    }

    /// Reads the answers of the oldest file on the wire and decides it, as
    /// [`Session::send_file`] does; the file to send again, if it must be.
    async fn settle(
        &mut self,
        files: &[Batched],
        sent: InFlight,
        outcomes: &mut Outcomes,
    ) -> Option<Waiting> {
        let InFlight { index, stored_as, size, hash, sends, mut retries, put, committed } = sent;
        let path = &files[index].path;
        let on_wire =
            Sent { path, stored_as: &stored_as, size, hash, attempt: sends, resumed_from: 0 };
        let result = match self.outcome(&on_wire, put, committed).await {
            Ok(Attempt::Stored(stored)) => Ok(stored),
            Ok(Attempt::Mismatch { theirs }) if sends < MAX_SENDS => {
                (self.events)(Event::DigestMismatch { theirs: hex(&theirs), attempt: sends });
                return Some(Waiting { index, sends: sends + 1, retries });
            }
            Ok(Attempt::Mismatch { .. }) => {
                Err(V4Error::Verification { path: path.clone(), attempts: sends })
            }
            Ok(Attempt::Refused(error))
                if self.retry(&error, "sending the file", &mut retries).await =>
            {
                return Some(Waiting { index, sends, retries });
            }
            Ok(Attempt::Refused(error)) => {
                Err(V4Error::Refused { step: "sending the file", error })
            }
            Err(e) => Err(e),
        };
        outcomes.insert(index, result);
        None
    }
}

/// A small file's bytes and metadata, read in one trip to the blocking pool (a file's
/// open, metadata and read as separate `tokio::fs` calls would be three).
async fn read_small(path: PathBuf) -> Result<(Vec<u8>, std::fs::Metadata), V4Error> {
    let at = path.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&at)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut data = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        std::io::Read::read_to_end(&mut file, &mut data)?;
        Ok((data, meta))
    });
    let read = read.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
    read.map_err(|cause| V4Error::Open { path, cause })
}

fn ends_session(result: &Result<Stored, V4Error>) -> bool {
    result.as_ref().err().is_some_and(V4Error::ends_session)
}
