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
    /// The socket failed or timed out.
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
    /// Responses read on this connection so far.
    pub answered: u32,
}

impl Wire {
    /// Connects to `server` (`host:port`), trying each address it resolves to.
    pub fn connect(server: &str, timeouts: Timeouts) -> io::Result<Wire> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        for addr in server.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeouts.connect) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeouts.io))?;
                    stream.set_write_timeout(Some(timeouts.io))?;
                    stream.set_nodelay(true)?;
                    return Ok(Wire { stream, answered: 0 });
                }
                Err(e) => last = e,
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

    /// Writes bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The socket, for streaming content.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
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
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
        let header = ResponseHeader::decode(&header)?;
        let mut payload = vec![0u8; header.payload_size as usize];
        self.stream.read_exact(&mut payload)?;
        let response = decode_response_payload(&header, &payload)?;
        self.answered += 1;
        Ok(response)
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}
