//! One TCP connection to a server, with connect and I/O timeouts, speaking whole requests
//! and responses.

use crate::protocol::{
    DecodeError, RESPONSE_HEADER_LEN, Response, ResponseHeader, decode_response_payload,
};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Timeouts for talking to a server.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// For establishing a connection.
    pub connect: Duration,
    /// For each read and write: a server silent this long is given up on.
    pub io: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: Duration::from_secs(10), io: Duration::from_secs(60) }
    }
}

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The server closed the connection before sending anything.
    #[error("the server closed the connection")]
    Closed,
    /// Nothing arrived for the I/O timeout.
    #[error("no answer from {server} within {secs} s")]
    Silent {
        /// The server.
        server: String,
        /// The timeout.
        secs: u64,
    },
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server sent bytes that are not a valid response.
    #[error("the server sent an invalid response: {0}")]
    Invalid(#[from] DecodeError),
}

/// A connection.
#[derive(Debug)]
pub struct Wire {
    stream: TcpStream,
    /// The server, as given (for messages).
    server: String,
    /// The I/O timeout (for messages).
    io_timeout: Duration,
    /// Requests written on this connection so far.
    pub sent: u32,
    /// The server is known to wait for another request here, even if it closes after
    /// every reply (see [`Wire::answers_or_closes_within`]).
    pub takes_another: bool,
    /// Responses read on this connection so far.
    pub answered: u32,
}

impl Wire {
    /// Connects to `server` (`host:port`), trying each address it resolves to.
    pub fn connect(server: &str, timeouts: Timeouts) -> io::Result<Wire> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for addr in server.to_socket_addrs()? {
            tracing::trace!(%addr, "connecting");
            match TcpStream::connect_timeout(&addr, timeouts.connect) {
                Ok(stream) => {
                    tracing::debug!(%addr, "connected");
                    stream.set_read_timeout(Some(timeouts.io))?;
                    stream.set_write_timeout(Some(timeouts.io))?;
                    stream.set_nodelay(true)?;
                    return Ok(Wire {
                        stream,
                        server: server.to_owned(),
                        io_timeout: timeouts.io,
                        sent: 0,
                        takes_another: false,
                        answered: 0,
                    });
                }
                Err(e) => {
                    tracing::debug!(%addr, "cannot connect: {e}");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Whether the server has already closed this connection (some servers close after
    /// every reply). Looks without blocking and without consuming anything.
    pub fn peer_closed(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut probe = [0u8; 1];
        let closed = match self.stream.peek(&mut probe) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        closed || self.stream.set_nonblocking(false).is_err()
    }

    /// Whether the server answers or closes the connection within `wait`, without consuming
    /// anything: after a request that needs no answer (1030), it tells a server that is done
    /// with the connection from one that waits for the next request on it.
    pub fn answers_or_closes_within(&self, wait: Duration) -> bool {
        let mut probe = [0u8; 1];
        let _ = self.stream.set_read_timeout(Some(wait));
        let seen = match self.stream.peek(&mut probe) {
            Ok(_) => true,
            Err(e) => !is_timeout(&e),
        };
        let _ = self.stream.set_read_timeout(Some(self.io_timeout));
        seen
    }

    /// Writes one whole request in one write (some servers misread a request that
    /// arrives in pieces; see `docs/compatibility.md`).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.sent += 1;
        // The code follows the client id and the version byte.
        let at = crate::protocol::CLIENT_ID_LEN + 1;
        if let Some(&[lo, hi]) = bytes.get(at..at + 2) {
            tracing::debug!(code = u16::from_le_bytes([lo, hi]), "request");
        }
        self.stream.write_all(bytes)
    }

    /// The socket, for streaming a request's content; counts as a request written.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.sent += 1;
        let code = crate::protocol::RequestCode::SendFile.as_u16();
        tracing::debug!(code, "request (its content streams after it)");
        &mut self.stream
    }

    /// The error for a read that timed out, in words.
    fn silent(&self) -> RecvError {
        RecvError::Silent { server: self.server.clone(), secs: self.io_timeout.as_secs() }
    }

    /// Reads one response.
    pub fn recv(&mut self) -> Result<Response, RecvError> {
        let mut header = [0u8; RESPONSE_HEADER_LEN];
        let mut filled = 0;
        while filled < header.len() {
            match self.stream.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => return Err(RecvError::Closed),
                Ok(0) => return Err(RecvError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if filled == 0 && is_reset(&e) => return Err(RecvError::Closed),
                Err(e) if is_timeout(&e) => return Err(self.silent()),
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
        let header = ResponseHeader::decode(&header)?;
        let mut payload = vec![0u8; header.payload_size as usize];
        self.stream
            .read_exact(&mut payload)
            .map_err(|e| if is_timeout(&e) { self.silent() } else { RecvError::Io(e) })?;
        let response = decode_response_payload(&header, &payload)?;
        tracing::debug!(code = response.code().as_u16(), "answer");
        self.answered += 1;
        Ok(response)
    }
}

/// Whether a socket error is the read or write timeout running out.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}
