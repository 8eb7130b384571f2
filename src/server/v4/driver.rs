//! The I/O around [`Machine`]: reads each frame's 12-byte header, lets the machine judge
//! it before the payload is read, reads the payload (control frames whole, `DATA` into the
//! upload), carries out what the machine asks, and writes the answers. Timeouts live here:
//! the machine only ever sees the time.

use super::errors;
use super::group::Group;
use super::machine::{Admit, Machine, Request};
use super::put::{Held, OpenPut};
use crate::protocol::v4::{
    CONNECTION_TAG, ErrorCode, ErrorFrame, FrameHeader, FrameType, HEADER_LEN, MAX_CONTROL_PAYLOAD,
    Side, encode_frame,
};
use crate::server::Shared;
use crate::store::ClientKey;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// How long the peer's own close_notify may take after ours before the socket closes.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What the driver knows of the TLS connection that the requests need.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The client's key, proven in the handshake.
    pub key: ClientKey,
    /// `TLS-Exporter("EXPORTER-securexfer-upgrade", "", 32)` of this connection.
    pub exporter: [u8; 32],
    /// The raw SHA-256 of the server key's SPKI.
    pub server_fingerprint: [u8; 32],
}

/// Why a connection ends without a closing `ERROR` of its own.
#[derive(Debug)]
pub(super) enum Ended {
    /// The peer closed, or TLS failed: nothing more can be sent.
    Gone(io::Error),
    /// The peer sent close_notify between requests: it is done, and gets ours.
    PeerDone,
    /// A closing `ERROR` to send, then close_notify.
    Close(ErrorFrame),
    /// The server failed on the request (records, storage): answer it with this `ERROR`
    /// (`internal`) and go on.
    Refused(ErrorFrame),
}

/// How the closing error of a connection that ended in the middle of a frame begins.
const CUT: &str = "the connection ended in the middle of";

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Gone(e)
    }
}

/// One protocol-4 connection after its handshake.
pub(super) struct Connection<S> {
    pub(super) shared: Arc<Shared>,
    pub(super) stream: S,
    pub(super) peer: SocketAddr,
    pub(super) machine: Machine,
    pub(super) handshake: Handshake,
    /// The put whose data is being read.
    pub(super) open: Option<OpenPut>,
    /// Uploads whose data is in, waiting for `COMMIT` or `DISCARD`, by tag.
    pub(super) held: HashMap<u32, Held>,
    pub(super) name: String,
    /// Commits staged for the next group, and the answers waiting behind them.
    pub(super) group: Group,
    /// The first byte of the next frame, when the check for a readable frame read it.
    peeked: Option<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    pub(super) fn new(
        shared: Arc<Shared>,
        stream: S,
        peer: SocketAddr,
        handshake: Handshake,
    ) -> Self {
        Connection {
            shared,
            stream,
            peer,
            machine: Machine::new(),
            handshake,
            open: None,
            held: HashMap::new(),
            name: String::new(),
            group: Group::default(),
            peeked: None,
        }
    }

    /// Serves frames until the peer leaves, misbehaves, stalls, or the server stops.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let ended = loop {
            match self.next_frame(&mut stop).await {
                Ok(()) => {}
                Err(ended) => break ended,
            }
        };
        // What the client committed is stored and answered (if it still listens) before
        // the closing words.
        if let Err(e) = self.flush_group().await {
            debug!("the answers of the last commits could not be sent: {e:?}");
        }
        // Before the last words: a client that reads the closing ERROR finds its
        // uncommitted uploads kept (to resume) or gone. A client that broke the protocol
        // gets nothing kept: what it sent is not worth the disk for a day. A connection
        // cut off in the middle of a frame is no such client: that is how a killed
        // client or a dropped network looks, the very case resuming is for.
        let broke = matches!(&ended, Ended::Close(e)
            if e.code == ErrorCode::Protocol && !e.message.contains(CUT));
        self.forget_uploads(!broke).await;
        match ended {
            Ended::Close(error) => {
                log_close(&error);
                self.machine.close();
                if self.send_error(CONNECTION_TAG, &error).await.is_ok() {
                    self.close_notify().await;
                }
            }
            Ended::PeerDone => {
                debug!("protocol-4 client closed the connection");
                self.close_notify().await;
            }
            Ended::Gone(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                debug!("protocol-4 connection ended by the peer");
            }
            Ended::Gone(e) => debug!("protocol-4 connection ended: {e}"),
            Ended::Refused(error) => debug!("protocol-4 connection ended: {}", error.message),
        }
    }

    /// Reads one frame and does what it asks.
    async fn next_frame(&mut self, stop: &mut watch::Receiver<bool>) -> Result<(), Ended> {
        // A stopping server stores the group and peeks no further: the next header read
        // ends the connection between requests.
        if *stop.borrow() {
            self.flush_group().await?;
        } else {
            // A stored group's answers go out at once; the staged commits start storing
            // when due or when nothing more is readable; and with nothing to read, the
            // client waits for the answers of the group being stored.
            if self.group.stored() {
                self.finish_storing().await?;
            }
            if self.group.has_staged() && (self.group.due() || !self.readable()) {
                self.start_storing().await?;
            }
            if self.group.is_storing() && !self.readable() {
                self.await_input_or_stored().await;
                if self.group.stored() {
                    self.finish_storing().await?;
                }
            }
        }
        let header = self.read_header(stop).await?;
        let header = FrameHeader::decode(&header, Side::Server)
            .map_err(|e| Ended::Close(errors::malformed(&e)))?;
        match self.machine.header(&header) {
            Admit::Close(error) => Err(Ended::Close(error)),
            Admit::Drop => self.skip_payload(&header).await,
            Admit::Data => self.receive_data(&header).await,
            Admit::Control => {
                let payload = self.read_control(&header).await?;
                let request = self.machine.control(&header, &payload, Instant::now());
                self.carry_out(&header, request).await
            }
        }
    }

    /// The 12 header bytes: the first within the idle timeout (or the unregistered
    /// lifetime, or the server's shutdown, whichever comes first), the rest within the
    /// request deadline.
    async fn read_header(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<[u8; HEADER_LEN], Ended> {
        let config = &self.shared.config;
        let deadline = config.request_deadline;
        let mut bytes = [0u8; HEADER_LEN];
        let in_body = self.machine.in_body();
        match self.peeked.take() {
            // Between requests the server's shutdown ends the connection, as below.
            Some(_) if !in_body && *stop.borrow() => {
                return Err(Ended::Close(errors::shutting_down()));
            }
            Some(first) => bytes[0] = first,
            None => self.first_byte(stop, &mut bytes[0], in_body).await?,
        }
        let rest = tokio::time::timeout(deadline, self.stream.read_exact(&mut bytes[1..]));
        match rest.await {
            Ok(Ok(_)) => Ok(bytes),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(Ended::Close(errors::protocol(&format!("{CUT} a frame header"))))
            }
            Ok(Err(e)) => Err(Ended::Gone(e)),
            Err(_) => Err(Ended::Close(errors::timeout(&format!(
                "a frame header took more than {} s",
                deadline.as_secs()
            )))),
        }
    }

    /// The first byte of a frame header: within the idle timeout (or the unregistered
    /// lifetime, or the server's shutdown, whichever comes first).
    async fn first_byte(
        &mut self,
        stop: &mut watch::Receiver<bool>,
        first: &mut u8,
        in_body: bool,
    ) -> Result<(), Ended> {
        let idle = self.shared.config.idle_timeout;
        let expires = self.machine.expires_at();
        let first = async {
            let wait = tokio::time::timeout(idle, self.stream.read(std::slice::from_mut(first)));
            match expires {
                Some(at) => tokio::select! {
                    read = wait => Some(read),
                    () = tokio::time::sleep_until(at.into()) => None,
                },
                None => Some(wait.await),
            }
        };
        // Between requests the server's shutdown ends the connection; in the middle of a
        // put's body the put goes on (the grace period bounds it).
        let stopping = async {
            if !in_body {
                loop {
                    if *stop.borrow_and_update() {
                        return;
                    }
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
            }
            std::future::pending::<()>().await
        };
        let read = tokio::select! {
            biased;
            () = stopping => return Err(Ended::Close(errors::shutting_down())),
            read = first => read,
        };
        match read {
            None => Err(Ended::Close(
                self.machine.expired(Instant::now()).unwrap_or_else(errors::unregistered_too_long),
            )),
            Some(Err(_)) => {
                let what = if in_body { "in the middle of a put" } else { "between requests" };
                Err(Ended::Close(errors::timeout(&format!(
                    "nothing arrived for {} s {what}",
                    idle.as_secs()
                ))))
            }
            // TLS reports 0 only after the peer's close_notify (a bare FIN is an error).
            Some(Ok(Ok(0))) if !in_body => Err(Ended::PeerDone),
            Some(Ok(Ok(0))) => Err(Ended::Close(errors::protocol(&format!("{CUT} a put's body")))),
            Some(Ok(Ok(_))) => Ok(()),
            Some(Ok(Err(e))) => Err(Ended::Gone(e)),
        }
    }

    /// Waits until a byte of the next frame arrives (peeked) or the group being stored is
    /// stored, whichever comes first. An end or an error of the stream is left for the
    /// next read to report.
    async fn await_input_or_stored(&mut self) {
        let Some(storing) = self.group.storing() else { return };
        let mut byte = [0u8; 1];
        tokio::select! {
            biased;
            () = storing.wait() => {}
            read = self.stream.read(&mut byte) => {
                if let Ok(1) = read {
                    self.peeked = Some(byte[0]);
                }
            }
        }
    }

    /// Whether a byte of the next frame is in, peeked now or before.
    fn readable(&mut self) -> bool {
        self.peeked.is_some() || self.readable_now()
    }

    /// Whether a frame is readable at once, without waiting: one byte read if it is
    /// (kept for [`Self::read_header`]). A read that would wait consumes nothing, so
    /// giving it up is safe; an end or an error is left for the next read to report.
    fn readable_now(&mut self) -> bool {
        use std::pin::Pin;
        use std::task::{Context, Poll};
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == 1 => {
                self.peeked = Some(byte[0]);
                true
            }
            _ => false,
        }
    }

    /// A control frame's payload, whole, within the request deadline of its header.
    async fn read_control(&mut self, header: &FrameHeader) -> Result<Vec<u8>, Ended> {
        // The header's length is within the type's limit: at most 64 KiB.
        debug_assert!(header.length() <= MAX_CONTROL_PAYLOAD);
        let mut payload = vec![0u8; header.length() as usize];
        self.read_payload(&mut payload).await?;
        Ok(payload)
    }

    /// Fills `buf` from the stream within the request deadline.
    pub(super) async fn read_payload(&mut self, buf: &mut [u8]) -> Result<(), Ended> {
        let deadline = self.shared.config.request_deadline;
        match tokio::time::timeout(deadline, self.stream.read_exact(buf)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(Ended::Close(errors::protocol(&format!("{CUT} a frame"))))
            }
            Ok(Err(e)) => Err(Ended::Gone(e)),
            Err(_) => Err(Ended::Close(errors::timeout(&format!(
                "a frame's payload took more than {} s",
                deadline.as_secs()
            )))),
        }
    }

    /// Reads and forgets a payload (the body of a refused put).
    async fn skip_payload(&mut self, header: &FrameHeader) -> Result<(), Ended> {
        let mut left = header.length() as usize;
        let mut sink = vec![0u8; left.min(64 * 1024)];
        while left > 0 {
            let n = left.min(sink.len());
            self.read_payload(&mut sink[..n]).await?;
            left -= n;
        }
        Ok(())
    }

    /// Does what the machine decided a control frame asks.
    async fn carry_out(&mut self, header: &FrameHeader, request: Request) -> Result<(), Ended> {
        let tag = header.tag();
        // Their answers must reflect every commit before them.
        let reads_stored = matches!(
            request,
            Request::List(_) | Request::Get(_) | Request::Rm(_) | Request::ResumeQuery(_)
        );
        if reads_stored {
            self.flush_group().await?;
        }
        let done = match request {
            Request::Close(error) => Err(Ended::Close(error)),
            Request::Refuse(error) => self.refuse(tag, &error).await,
            Request::Hello(hello) => self.welcome(hello).await,
            Request::Register(register) => self.register(tag, register).await,
            Request::Upgrade(upgrade) => self.upgrade(tag, upgrade).await,
            Request::PutBegin(put) => {
                if self.group.touches(&put.path) {
                    self.flush_group().await?;
                }
                self.put_begin(tag, put).await
            }
            Request::PutEnd => self.put_end(tag).await,
            Request::Commit(commit) => self.commit(tag, commit).await,
            Request::Discard => self.discard(tag).await,
            Request::List(list) => self.list(tag, list).await,
            Request::Get(get) => self.get(tag, get).await,
            Request::Rm(rm) => self.rm(tag, rm).await,
            Request::ResumeQuery(query) => self.resume_query(tag, query).await,
        };
        match done {
            Err(Ended::Refused(error)) => {
                if header.frame_type() == FrameType::PutBegin {
                    self.machine.put_refused(tag);
                }
                self.refuse(tag, &error).await
            }
            other => other,
        }
    }

    /// Answers request `tag` with a refusal that keeps the connection.
    pub(super) async fn refuse(&mut self, tag: u32, error: &ErrorFrame) -> Result<(), Ended> {
        info!(tag, code = error.code.name(), "protocol-4 request refused: {}", error.message);
        self.send_error(tag, error).await.map_err(Ended::Gone)
    }

    /// Writes one frame (a peer that reads nothing for the request deadline is gone).
    pub(super) async fn send(
        &mut self,
        frame_type: FrameType,
        tag: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let frame = encode_frame(frame_type, tag, payload).map_err(io::Error::other)?;
        match self.group.hold(frame) {
            Some(frame) => self.write_frames(&frame).await,
            None => Ok(()),
        }
    }

    /// Frames encoded back to back, sent in one write and one flush (one TLS write for a
    /// whole small answer), behind the staged answers of a group when there are any.
    pub(super) async fn send_encoded(&mut self, frames: &[u8]) -> io::Result<()> {
        match self.group.hold(frames.to_vec()) {
            Some(frames) => self.write_frames(&frames).await,
            None => Ok(()),
        }
    }

    /// Writes encoded frames (a peer that reads nothing for the request deadline is gone).
    pub(super) async fn write_frames(&mut self, frames: &[u8]) -> io::Result<()> {
        let deadline = self.shared.config.request_deadline;
        let write = async {
            self.stream.write_all(frames).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(deadline, write).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, "the peer read nothing of an answer")
        })?
    }

    async fn send_error(&mut self, tag: u32, error: &ErrorFrame) -> io::Result<()> {
        let payload = error.encode().map_err(io::Error::other)?;
        self.shared.metrics.v4_error(error.code);
        self.send(FrameType::Error, tag, &payload).await
    }

    /// Sends close_notify, then gives the peer a moment for its own.
    async fn close_notify(&mut self) {
        if let Err(e) = self.stream.shutdown().await {
            debug!("could not send close_notify: {e}");
            return;
        }
        let mut sink = [0u8; 512];
        let stream = &mut self.stream;
        let drain = async { while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }

    /// Uploads not committed when the connection ends are kept for resuming when they may
    /// be (see `resume`), else thrown away off the runtime's threads: deleting a large
    /// file takes a while.
    async fn forget_uploads(&mut self, may_keep: bool) {
        let open = self.open.take();
        let held: Vec<Held> = self.held.drain().map(|(_, h)| h).collect();
        if open.is_some() || !held.is_empty() {
            self.keep_or_forget(open, held, may_keep).await;
        }
    }
}

/// Logs why the server closes a connection: the peer's fault at warn, timeouts and
/// shutdown at info.
fn log_close(error: &ErrorFrame) {
    use crate::protocol::v4::ErrorCode;
    match error.code {
        ErrorCode::Protocol | ErrorCode::Version => {
            warn!(code = error.code.name(), "protocol-4 connection closed: {}", error.message)
        }
        _ => info!(code = error.code.name(), "protocol-4 connection closed: {}", error.message),
    }
}
