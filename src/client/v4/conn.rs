//! One protocol-4 connection as the client drives it: frames written in order, and a
//! reader task that reads the server's frames concurrently and hands each answer to the
//! request it answers ([`super::pending`]). Requests are pipelined: the client writes
//! without waiting, and waits only where it needs an answer. Why a separate reader: with
//! both sides writing, a client that only reads when it is done writing could block with
//! the server on two full socket buffers.

use super::pending::{Awaited, Pending, Route, Unexpected};
use super::tls::{Dialed, TlsStream};
use crate::protocol::v4::{
    CONNECTION_TAG, ErrorFrame, FrameHeader, FrameType, HEADER_LEN, Hello, MAJOR_VERSION,
    MINOR_VERSION, Side, Welcome,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

/// How long the server gets for its own close_notify after ours.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// The write buffer: control frames are small and pipelined, so several go in one record.
const WRITE_BUFFER: usize = 64 * 1024;
/// Frames of a multi-frame answer held for its reader: beyond them the connection's reader
/// waits, and TCP's back-pressure reaches the server, so a download holds a few `DATA`
/// frames (at most 1 MiB each) whatever the file's size.
const STREAM_FRAMES: usize = 4;

/// Why the connection cannot go on.
#[derive(Debug, Clone, Error)]
pub enum ConnError {
    /// The server broke the protocol (a frame out of turn, malformed, unknown).
    #[error("the server broke protocol 4: {0}")]
    ServerProtocol(String),
    /// The server closed the connection with a tag-0 `ERROR`.
    #[error("the server closed the connection: {}", .0.message)]
    Closed(ErrorFrame),
    /// The connection broke or ended early.
    #[error("the connection broke: {0}")]
    Lost(String),
    /// No answer came in time.
    #[error("the server did not answer within {0} s")]
    Timeout(u64),
}

/// What answered one request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The awaited frame's payload.
    Frame(Vec<u8>),
    /// An `ERROR` with the request's tag.
    Refused(ErrorFrame),
}

/// One frame of a multi-frame answer (`LIST`, `GET`), its last included: its type says
/// which (`ERROR` too, whose payload the reader decodes).
#[derive(Debug, Clone)]
pub struct Part {
    /// The frame's type.
    pub frame_type: FrameType,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// Where the reader hands a request's answer.
enum Reply {
    /// A one-frame answer.
    Once(oneshot::Sender<Result<Answer, ConnError>>),
    /// Each frame of a multi-frame answer, in order; the last is the answer's end.
    Stream(mpsc::Sender<Result<Part, ConnError>>),
}

impl Reply {
    async fn fail(self, why: ConnError) {
        match self {
            Reply::Once(tx) => drop(tx.send(Err(why))),
            Reply::Stream(tx) => drop(tx.send(Err(why)).await),
        }
    }
}

/// An answer to come.
pub type AnswerFuture = oneshot::Receiver<Result<Answer, ConnError>>;

/// The frames of a multi-frame answer to come.
pub type PartStream = mpsc::Receiver<Result<Part, ConnError>>;

/// The connection after the handshake.
pub struct Connection {
    writer: BufWriter<WriteHalf<TlsStream>>,
    pending: Arc<Mutex<Pending<Reply>>>,
    ended: Arc<Mutex<Option<ConnError>>>,
    reader: tokio::task::JoinHandle<()>,
    next_tag: u32,
    io_timeout: Duration,
    /// `SHA256:…` of the server's key.
    pub server_key: String,
    /// Its raw form.
    pub server_fp: [u8; 32],
    /// This connection's upgrade exporter value.
    pub exporter: [u8; 32],
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("server_key", &self.server_key).finish()
    }
}

impl Connection {
    /// Starts the reader task on a completed handshake.
    pub fn start(dialed: Dialed, io_timeout: Duration) -> Connection {
        let Dialed { tls, server_key, server_fp, exporter } = dialed;
        let (read, write) = tokio::io::split(tls);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let ended = Arc::new(Mutex::new(None));
        let reader = tokio::spawn(read_loop(read, Arc::clone(&pending), Arc::clone(&ended)));
        Connection {
            writer: BufWriter::with_capacity(WRITE_BUFFER, write),
            pending,
            ended,
            reader,
            next_tag: 1,
            io_timeout,
            server_key,
            server_fp,
            exporter,
        }
    }

    /// `HELLO`, then `WELCOME`; a refusal is the server's `ERROR` (it closes).
    pub async fn hello(
        &mut self,
        software: &str,
    ) -> Result<Result<Welcome, ErrorFrame>, ConnError> {
        let hello = Hello { major: MAJOR_VERSION, minor: MINOR_VERSION, software: software.into() };
        let payload = hello.encode().map_err(|e| ConnError::Lost(e.to_string()))?;
        let answer = self.request(FrameType::Hello, CONNECTION_TAG, &payload).await?;
        match self.answer(answer).await? {
            Answer::Frame(p) => Welcome::decode(&p)
                .map(Ok)
                .map_err(|e| ConnError::ServerProtocol(format!("WELCOME: {e}"))),
            Answer::Refused(e) => Ok(Err(e)),
        }
    }

    /// A fresh tag for a new request: 1, 2, 3, ….
    pub fn new_tag(&mut self) -> u32 {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Writes a request frame (buffered) and returns its answer to come.
    pub async fn request(
        &mut self,
        frame_type: FrameType,
        tag: u32,
        payload: &[u8],
    ) -> Result<AnswerFuture, ConnError> {
        let awaited = Awaited::of(frame_type, tag).expect("a request that is answered");
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(awaited, Reply::Once(tx));
        self.write_frame(frame_type, tag, payload).await?;
        Ok(rx)
    }

    /// Writes a request whose answer has several frames (`LIST`, `GET`) and returns them
    /// to come, each checked to be a valid next frame of that answer.
    pub async fn request_stream(
        &mut self,
        frame_type: FrameType,
        tag: u32,
        payload: &[u8],
    ) -> Result<PartStream, ConnError> {
        let awaited = Awaited::of(frame_type, tag).expect("a request that is answered");
        let (tx, rx) = mpsc::channel(STREAM_FRAMES);
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(awaited, Reply::Stream(tx));
        self.write_frame(frame_type, tag, payload).await?;
        Ok(rx)
    }

    /// Sends what is buffered and waits for the next frame of a multi-frame answer.
    pub async fn next_part(&mut self, parts: &mut PartStream) -> Result<Part, ConnError> {
        self.flush().await?;
        match tokio::time::timeout(self.io_timeout, parts.recv()).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(self.ended().unwrap_or(ConnError::Lost("the reader stopped".into()))),
            Err(_) => Err(ConnError::Timeout(self.io_timeout.as_secs())),
        }
    }

    /// Writes a frame that is not answered on its own (`DATA`, `PUT_END`).
    pub async fn write_frame(
        &mut self,
        frame_type: FrameType,
        tag: u32,
        payload: &[u8],
    ) -> Result<(), ConnError> {
        self.write_frame_within(self.io_timeout, frame_type, tag, payload).await
    }

    /// [`Connection::write_frame`] with the I/O timeout raised to `limit` (never lowered).
    pub async fn write_frame_within(
        &mut self,
        limit: Duration,
        frame_type: FrameType,
        tag: u32,
        payload: &[u8],
    ) -> Result<(), ConnError> {
        self.check_alive()?;
        let limit = limit.max(self.io_timeout);
        let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let header = FrameHeader::new(frame_type, tag, length)
            .map_err(|e| ConnError::Lost(e.to_string()))?;
        let writer = &mut self.writer;
        let write = async {
            writer.write_all(&header.encode()).await?;
            writer.write_all(payload).await
        };
        bounded(limit, write).await
    }

    /// The I/O timeout (`--timeout`).
    pub fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    /// Sends everything written so far.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.flush_within(self.io_timeout).await
    }

    async fn flush_within(&mut self, limit: Duration) -> Result<(), ConnError> {
        self.check_alive()?;
        let flush = self.writer.flush();
        let secs = limit.max(self.io_timeout);
        match tokio::time::timeout(secs, flush).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.ended().unwrap_or(ConnError::Lost(e.to_string()))),
            Err(_) => Err(ConnError::Timeout(secs.as_secs())),
        }
    }

    /// Sends what is buffered and waits for `answer`.
    pub async fn answer(&mut self, answer: AnswerFuture) -> Result<Answer, ConnError> {
        self.answer_within(self.io_timeout, answer).await
    }

    /// [`Connection::answer`] with the I/O timeout raised to `limit` (never lowered).
    pub async fn answer_within(
        &mut self,
        limit: Duration,
        answer: AnswerFuture,
    ) -> Result<Answer, ConnError> {
        let limit = limit.max(self.io_timeout);
        self.flush_within(limit).await?;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.ended().unwrap_or(ConnError::Lost("the reader stopped".into()))),
            Err(_) => Err(ConnError::Timeout(limit.as_secs())),
        }
    }

    /// Why the connection ended, if it did.
    pub fn ended(&self) -> Option<ConnError> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn check_alive(&self) -> Result<(), ConnError> {
        match self.ended() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends close_notify and gives the server a moment for its own: the end of the
    /// conversation, said inside TLS so that a cut connection is not taken for one.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            let _ = self.writer.flush().await;
            let _ = self.writer.shutdown().await;
        })
        .await;
        let _ = tokio::time::timeout(CLOSE_LINGER, &mut self.reader).await;
        self.reader.abort();
    }
}

/// A write bounded by the I/O timeout: a server that stops reading cannot hold the client.
async fn bounded(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> Result<(), ConnError> {
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ConnError::Lost(e.to_string())),
        Err(_) => Err(ConnError::Timeout(limit.as_secs())),
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads the server's frames until the connection ends or the server errs, handing each
/// answer to its request; then fails every request still due with the reason.
async fn read_loop(
    mut read: ReadHalf<TlsStream>,
    pending: Arc<Mutex<Pending<Reply>>>,
    ended: Arc<Mutex<Option<ConnError>>>,
) {
    let why = loop {
        match read_frame(&mut read).await {
            Ok(Some((header, payload))) => {
                if let Err(why) = deliver(&pending, &header, payload).await {
                    break why;
                }
            }
            Ok(None) => break ConnError::Lost("the server closed the connection".into()),
            Err(why) => break why,
        }
    };
    tracing::debug!("protocol-4 connection ends: {why}");
    *ended.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
    let due: Vec<Reply> = pending.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    for reply in due {
        reply.fail(why.clone()).await;
    }
}

/// Routes one frame. An error means the connection cannot go on. A stream's frames wait
/// for room in its channel (never under the lock); a reader that went away misses them,
/// and the answer is still followed to its end, so the connection stays in step.
async fn deliver(
    pending: &Mutex<Pending<Reply>>,
    header: &FrameHeader,
    payload: Vec<u8>,
) -> Result<(), ConnError> {
    let (routed, part_of) = {
        let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
        let routed = pending.route(header);
        let part_of = match (&routed, pending.front()) {
            (Ok((Route::Part, _)), Some(Reply::Stream(tx))) => Some(tx.clone()),
            _ => None,
        };
        (routed, part_of)
    };
    let error = |payload: &[u8]| {
        ErrorFrame::decode(payload).map_err(|e| ConnError::ServerProtocol(format!("ERROR: {e}")))
    };
    let frame_type = header.frame_type();
    match routed {
        Ok((Route::Answer, Some(Reply::Once(reply)))) => {
            let answer = if frame_type == FrameType::Error {
                Answer::Refused(error(&payload)?)
            } else {
                Answer::Frame(payload)
            };
            let _ = reply.send(Ok(answer));
            Ok(())
        }
        Ok((Route::Answer, Some(Reply::Stream(tx)))) => {
            if frame_type == FrameType::Error {
                error(&payload)?;
            }
            let _ = tx.send(Ok(Part { frame_type, payload })).await;
            Ok(())
        }
        Ok((Route::Part, _)) => {
            if let Some(tx) = part_of {
                let _ = tx.send(Ok(Part { frame_type, payload })).await;
            }
            Ok(())
        }
        Ok((Route::Connection, _)) => Err(ConnError::Closed(error(&payload)?)),
        Ok((Route::Answer, None)) => Ok(()),
        Err(Unexpected { got, tag, awaited }) => {
            Err(ConnError::ServerProtocol(Unexpected { got, tag, awaited }.to_string()))
        }
    }
}

/// The next frame, its header validated before the payload is read; `None` at a clean
/// end (close_notify, or a close between frames).
async fn read_frame(
    read: &mut ReadHalf<TlsStream>,
) -> Result<Option<(FrameHeader, Vec<u8>)>, ConnError> {
    let mut bytes = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match read.read(&mut bytes[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ConnError::Lost("the server closed in the middle of a frame".into()));
            }
            Ok(n) => got += n,
            Err(e) => return Err(ConnError::Lost(e.to_string())),
        }
    }
    let header = FrameHeader::decode(&bytes, Side::Client)
        .map_err(|e| ConnError::ServerProtocol(e.to_string()))?;
    let mut payload = vec![0u8; header.length() as usize];
    read.read_exact(&mut payload)
        .await
        .map_err(|_| ConnError::Lost("the server closed in the middle of a frame".into()))?;
    Ok(Some((header, payload)))
}
