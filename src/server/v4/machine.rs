//! One protocol-4 connection's rules as a pure state machine: frame headers and payloads
//! in, what to do with them out. No sockets, no storage, no clock of its own (the time is
//! passed in), so tests and the fuzz target drive it directly. What a request *does*
//! (records, storage) is the driver's (`server::v4::driver`); which frames are allowed when,
//! and which answer a breach gets, is decided here, in one place (docs/protocol-v4.md,
//! "State machine").

use super::errors;
use crate::protocol::ClientId;
use crate::protocol::v4::{
    Commit, ErrorFrame, FrameError, FrameHeader, FrameType, Get, Hello, List, MAJOR_VERSION,
    PutBegin, Register, ResumeQuery, Rm, TagCheck, Upgrade,
};
use std::time::{Duration, Instant};

/// How long a connection may stay without a registered key after `WELCOME` (protocol 3's
/// `KEYLESS_LIFETIME`): a stranger gets its slot back soon.
pub const UNREGISTERED_LIFETIME: Duration = crate::server::KEYLESS_LIFETIME;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// After the handshake, before `HELLO`.
    AwaitHello,
    /// After `WELCOME`.
    Open,
    /// A closing `ERROR` was decided: nothing more is read.
    Closing,
}

/// The body of a put being read, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No put is open.
    None,
    /// An accepted put: its data goes to the upload; `remaining` is `None` for an unknown
    /// size.
    Put { tag: u32, remaining: Option<u64> },
    /// A refused put: its data and `PUT_END` are read and dropped.
    Dropping { tag: u32 },
}

/// What to do with the payload of a frame whose header was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Read the whole payload (a control frame, at most 64 KiB) and pass it to
    /// [`Machine::control`].
    Control,
    /// A `DATA` frame of the accepted put: stream its payload into the upload.
    Data,
    /// A `DATA` or `PUT_END` of a refused put: read its payload and forget it.
    Drop,
    /// Malformed or not allowed here: send this `ERROR` (tag 0) and close.
    Close(ErrorFrame),
}

/// A request the driver carries out, decoded and allowed in this state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `HELLO`: answer `WELCOME`.
    Hello(Hello),
    /// `REGISTER` from a key that is not a client.
    Register(Register),
    /// `UPGRADE` from a key that is not a client.
    Upgrade(Upgrade),
    /// `PUT_BEGIN` from a client: accept it ([`Machine::put_accepted`]) or refuse it
    /// ([`Machine::put_refused`]).
    PutBegin(PutBegin),
    /// `PUT_END` of the accepted put: the upload is held under its tag.
    PutEnd,
    /// `COMMIT` of a held upload (any tag: the driver answers a wrong one `not_found`).
    Commit(Commit),
    /// `DISCARD` of a held upload.
    Discard,
    /// `LIST` from a client: `LIST_ENTRIES`… `LIST_END`.
    List(List),
    /// `GET` from a client: `GET_BEGIN`, `DATA`…, `GET_END`.
    Get(Get),
    /// `RM` from a client: `REMOVED` once durable.
    Rm(Rm),
    /// `RESUME_QUERY` from a client: `RESUME_STATE`.
    ResumeQuery(ResumeQuery),
    /// Answer the request with this `ERROR`; the connection goes on.
    Refuse(ErrorFrame),
    /// Send this `ERROR` (tag 0) and close.
    Close(ErrorFrame),
}

/// One connection's protocol state.
#[derive(Debug, Clone)]
pub struct Machine {
    phase: Phase,
    body: Body,
    tags: TagCheck,
    client: Option<ClientId>,
    welcomed_at: Option<Instant>,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    /// A connection whose handshake just completed.
    pub fn new() -> Self {
        Machine {
            phase: Phase::AwaitHello,
            body: Body::None,
            tags: TagCheck::new(),
            client: None,
            welcomed_at: None,
        }
    }

    /// The client this connection acts for, once its key is registered here.
    pub fn client(&self) -> Option<ClientId> {
        self.client
    }

    /// Whether a closing `ERROR` was decided.
    pub fn is_closing(&self) -> bool {
        self.phase == Phase::Closing
    }

    /// Whether a put's body is being read (accepted or dropped): the idle timeout then
    /// counts as a stall in the middle of a request.
    pub fn in_body(&self) -> bool {
        self.body != Body::None
    }

    /// The connection is a registered client from now on (`WELCOME` found its key, or
    /// `REGISTER`/`UPGRADE` succeeded).
    pub fn registered(&mut self, id: ClientId) {
        self.client = Some(id);
    }

    /// The put under `tag` was accepted: `size` bytes of `DATA` follow (`None`: unknown).
    pub fn put_accepted(&mut self, tag: u32, size: Option<u64>) {
        self.body = Body::Put { tag, remaining: size };
    }

    /// The put under `tag` was refused (or given up during its data): what is left of its
    /// body is read and dropped.
    pub fn put_refused(&mut self, tag: u32) {
        self.body = Body::Dropping { tag };
    }

    /// A closing `ERROR` the driver decided (a timeout, shutdown): nothing more is read.
    pub fn close(&mut self) {
        self.phase = Phase::Closing;
    }

    /// The closing `ERROR` due at `now`, if the connection outlived its time without a
    /// registered key.
    pub fn expired(&self, now: Instant) -> Option<ErrorFrame> {
        let since = self.welcomed_at?;
        (self.client.is_none() && now.duration_since(since) >= UNREGISTERED_LIFETIME)
            .then(errors::unregistered_too_long)
    }

    /// When [`Machine::expired`] will have something to say.
    pub fn expires_at(&self) -> Option<Instant> {
        match (self.client, self.welcomed_at) {
            (None, Some(since)) => Some(since + UNREGISTERED_LIFETIME),
            _ => None,
        }
    }

    /// Checks a frame's header against the tag rules and the state, before its payload
    /// is read.
    pub fn header(&mut self, header: &FrameHeader) -> Admit {
        match self.admit(header) {
            Ok(admit) => admit,
            Err(why) => {
                self.phase = Phase::Closing;
                Admit::Close(why)
            }
        }
    }

    fn admit(&mut self, header: &FrameHeader) -> Result<Admit, ErrorFrame> {
        if self.phase == Phase::Closing {
            return Err(errors::protocol("the connection is closing"));
        }
        self.tags.check(header).map_err(|e| errors::malformed(&e))?;
        let frame_type = header.frame_type();
        let first = self.phase == Phase::AwaitHello;
        match frame_type {
            FrameType::Hello if first => return Ok(Admit::Control),
            FrameType::Hello => return Err(errors::protocol("a second HELLO")),
            _ if first => {
                return Err(errors::protocol(&format!("{frame_type} before HELLO")));
            }
            _ => {}
        }
        match (self.body, frame_type) {
            (Body::Put { tag, remaining }, FrameType::PutData) => {
                let length = u64::from(header.length());
                match remaining {
                    Some(left) if length > left => Err(errors::protocol(&format!(
                        "DATA of put {tag} goes {} bytes past the size PUT_BEGIN declared",
                        length - left
                    ))),
                    left => {
                        self.body = Body::Put { tag, remaining: left.map(|l| l - length) };
                        Ok(Admit::Data)
                    }
                }
            }
            (Body::Put { tag, remaining: Some(left) }, FrameType::PutEnd) if left > 0 => {
                Err(errors::protocol(&format!("PUT_END of put {tag} with {left} bytes missing")))
            }
            (Body::Put { .. }, FrameType::PutEnd) => Ok(Admit::Control),
            (Body::Put { tag, .. }, other) => Err(errors::protocol(&format!(
                "{other} in the middle of put {tag}'s data (a put's DATA and PUT_END come \
                 before any other frame)"
            ))),
            (Body::Dropping { .. }, FrameType::PutData) => Ok(Admit::Drop),
            (Body::Dropping { .. }, FrameType::PutEnd) => {
                self.body = Body::None;
                Ok(Admit::Drop)
            }
            (Body::Dropping { .. }, _) => {
                self.body = Body::None;
                Ok(Admit::Control)
            }
            // The tag rules refuse DATA and PUT_END with no put open.
            (Body::None, _) => Ok(Admit::Control),
        }
    }

    /// Decodes the payload of a control frame [`Machine::header`] admitted and says what
    /// it asks for.
    pub fn control(&mut self, header: &FrameHeader, payload: &[u8], now: Instant) -> Request {
        match self.request(header.frame_type(), payload, now) {
            Ok(Request::Refuse(why)) if header.frame_type() == FrameType::PutBegin => {
                // A put refused at once: its body follows anyway.
                self.put_refused(header.tag());
                Request::Refuse(why)
            }
            Ok(request) => request,
            Err(why) => {
                self.phase = Phase::Closing;
                Request::Close(why)
            }
        }
    }

    fn request(
        &mut self,
        frame_type: FrameType,
        payload: &[u8],
        now: Instant,
    ) -> Result<Request, ErrorFrame> {
        let malformed = |e: FrameError| errors::malformed(&e);
        let registered = self.client.is_some();
        Ok(match frame_type {
            FrameType::Hello => {
                let hello = Hello::decode(payload).map_err(malformed)?;
                if hello.major != MAJOR_VERSION {
                    return Err(errors::version(hello.major));
                }
                self.phase = Phase::Open;
                self.welcomed_at = Some(now);
                Request::Hello(hello)
            }
            FrameType::Register => {
                let register = Register::decode(payload).map_err(malformed)?;
                if registered {
                    Request::Refuse(errors::already_registered())
                } else {
                    Request::Register(register)
                }
            }
            FrameType::Upgrade => {
                let upgrade = Upgrade::decode(payload).map_err(malformed)?;
                if registered {
                    Request::Refuse(errors::already_registered())
                } else {
                    Request::Upgrade(upgrade)
                }
            }
            FrameType::PutBegin => {
                let put = PutBegin::decode(payload).map_err(malformed)?;
                if registered {
                    Request::PutBegin(put)
                } else {
                    Request::Refuse(errors::not_registered())
                }
            }
            FrameType::PutEnd => {
                self.body = Body::None;
                Request::PutEnd
            }
            FrameType::Commit => {
                let commit = Commit::decode(payload).map_err(malformed)?;
                if registered {
                    Request::Commit(commit)
                } else {
                    Request::Refuse(errors::not_registered())
                }
            }
            FrameType::Discard => {
                if registered {
                    Request::Discard
                } else {
                    Request::Refuse(errors::not_registered())
                }
            }
            FrameType::List => {
                let list = List::decode(payload).map_err(malformed)?;
                if registered {
                    Request::List(list)
                } else {
                    Request::Refuse(errors::not_registered())
                }
            }
            FrameType::Get => {
                let get = Get::decode(payload).map_err(malformed)?;
                if registered {
                    Request::Get(get)
                } else {
                    Request::Refuse(errors::not_registered())
                }
            }
            FrameType::Rm => {
                let rm = Rm::decode(payload).map_err(malformed)?;
                if registered { Request::Rm(rm) } else { Request::Refuse(errors::not_registered()) }
            }
            FrameType::ResumeQuery => {
                let query = ResumeQuery::decode(payload).map_err(malformed)?;
                if registered {
                    Request::ResumeQuery(query)
                } else {
                    Request::Refuse(errors::not_registered())
                }
            }
            // DATA is never a control frame, and the server's own types never get here
            // (FrameHeader::decode refuses them).
            other => return Err(errors::protocol(&format!("{other} is not a request"))),
        })
    }
}
