//! [`check_v4_session`]: protocol 4's per-connection state machine
//! (`securexfer::server::v4::Machine`) driven by arbitrary bytes read as the client's
//! frames, with a stand-in for the driver that decides from the bytes too.

use securexfer::protocol::ClientId;
use securexfer::protocol::v4::{CONNECTION_TAG, ErrorCode, FrameType, Side, decode_frame, names};
use securexfer::server::v4::{Admit, Machine, Request, UNREGISTERED_LIFETIME};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Reads `data` as the frames a client sends and feeds them to a fresh machine, playing
/// the driver: a `HELLO` finds the key registered when its software text is odd in length,
/// a `REGISTER`/`UPGRADE` succeeds when the name is valid, and a `PUT_BEGIN` is accepted
/// when its path is valid. Checks:
///
/// - nothing panics;
/// - after a closing `ERROR`, nothing more is admitted, and every closing error is tag 0
///   material (`protocol`, `version`) with `closes` set;
/// - a put, a commit or a discard reaches the driver only for a registered client, and a
///   registration only for one that is not;
/// - `DATA` is admitted to an accepted put only within its declared size, and its
///   `PUT_END` only once all of it came; a refused put's body is only ever dropped;
/// - `COMMIT` reaches the driver only for a tag the driver held, or is answered
///   `not_found` by it (the stand-in checks it knows which);
/// - the unregistered lifetime expires exactly when it says it does.
///
/// # Panics
/// When an invariant breaks (that is the point).
pub fn check_v4_session(data: &[u8]) {
    let mut machine = Machine::new();
    let mut now = Instant::now();
    let mut driver = Driver::default();
    let mut rest = data;
    let mut closed = false;
    while let Ok((header, payload, used)) = decode_frame(rest, Side::Server) {
        rest = &rest[used..];
        // Each frame moves the clock by its tag's low byte, in seconds.
        now += Duration::from_secs(u64::from(header.tag() as u8));
        check_expiry(&machine, now);
        if closed {
            let admitted = machine.header(&header);
            assert!(matches!(admitted, Admit::Close(_)), "admitted after closing: {admitted:?}");
            continue;
        }
        match machine.header(&header) {
            Admit::Close(error) => {
                assert!(error.closes, "a refused header closes: {error:?}");
                assert!(matches!(error.code, ErrorCode::Protocol), "{error:?}");
                assert!(machine.is_closing());
                closed = true;
            }
            Admit::Data => driver.data(header.tag(), header.length()),
            Admit::Drop => driver.dropped(header.frame_type(), header.tag()),
            Admit::Control => {
                let request = machine.control(&header, payload, now);
                closed =
                    !driver.carry_out(&mut machine, header.frame_type(), header.tag(), request);
            }
        }
    }
    // What is left is incomplete or refused by the codec: the machine never sees it.
    if let Err(error) = decode_frame(rest, Side::Server) {
        assert!(!error.to_string().is_empty());
    }
}

/// The unregistered lifetime: nothing before it, a closing `not_registered` after.
fn check_expiry(machine: &Machine, now: Instant) {
    match machine.expires_at() {
        Some(at) if now >= at => {
            let error = machine.expired(now).expect("expired at its time");
            assert!(error.closes && error.code == ErrorCode::NotRegistered);
        }
        Some(at) => {
            assert!(machine.expired(now).is_none());
            assert!(at.duration_since(now) <= UNREGISTERED_LIFETIME);
        }
        None => assert!(machine.expired(now).is_none()),
    }
}

/// The driver's side, as far as the invariants need it.
#[derive(Default)]
struct Driver {
    /// The accepted put whose body is being read: tag and bytes still due.
    open: Option<(u32, Option<u64>)>,
    /// The refused put whose body is being dropped.
    dropping: Option<u32>,
    held: HashSet<u32>,
    registered: bool,
}

impl Driver {
    fn data(&mut self, tag: u32, len: u32) {
        let Some((open, due)) = &mut self.open else { panic!("DATA admitted with no put open") };
        assert_eq!(*open, tag, "DATA of another put");
        if let Some(due) = due {
            *due = due.checked_sub(u64::from(len)).expect("DATA past the declared size");
        }
    }

    fn dropped(&mut self, frame_type: FrameType, tag: u32) {
        assert!(self.open.is_none(), "an accepted put's data dropped");
        assert!(matches!(frame_type, FrameType::PutData | FrameType::PutEnd));
        assert_eq!(self.dropping, Some(tag), "dropped frames belong to the refused put");
        if frame_type == FrameType::PutEnd {
            self.dropping = None;
        }
    }

    /// Plays the driver for one request; false once the connection closes.
    fn carry_out(
        &mut self,
        machine: &mut Machine,
        frame_type: FrameType,
        tag: u32,
        request: Request,
    ) -> bool {
        if frame_type != FrameType::PutEnd {
            // Any other frame ends the dropping of a refused put's body.
            self.dropping = None;
        }
        match request {
            Request::Close(error) => {
                assert!(error.closes && machine.is_closing(), "{error:?}");
                assert!(matches!(error.code, ErrorCode::Protocol | ErrorCode::Version));
                return false;
            }
            Request::Refuse(error) => {
                assert!(!error.closes, "{error:?}");
                if frame_type == FrameType::PutBegin {
                    self.dropping = Some(tag);
                }
            }
            Request::Hello(hello) => {
                assert_eq!(tag, CONNECTION_TAG);
                if hello.software.len() % 2 == 1 {
                    self.register(machine);
                }
            }
            Request::Register(register) => {
                assert!(!self.registered, "REGISTER passed on for a client");
                if names::check_client_name(&register.name).is_ok() {
                    self.register(machine);
                }
            }
            Request::Upgrade(upgrade) => {
                assert!(!self.registered, "UPGRADE passed on for a client");
                if upgrade.signature.len() == 128 {
                    self.register(machine);
                }
            }
            Request::PutBegin(put) => {
                assert!(self.registered, "a put passed on for a stranger");
                if names::check_path(&put.path).is_ok() {
                    machine.put_accepted(tag, put.data_len());
                    self.open = Some((tag, put.data_len()));
                } else {
                    machine.put_refused(tag);
                    self.dropping = Some(tag);
                }
            }
            Request::PutEnd => {
                let (open, due) = self.open.take().expect("PUT_END with no put open");
                assert_eq!(open, tag);
                assert!(due.is_none_or(|d| d == 0), "PUT_END before all the data");
                self.held.insert(tag);
            }
            Request::List(_) | Request::Get(_) | Request::Rm(_) | Request::ResumeQuery(_) => {
                assert!(
                    self.registered,
                    "a LIST, GET, RM or RESUME_QUERY passed on for a stranger"
                );
            }
            Request::Commit(_) | Request::Discard => {
                assert!(self.registered, "a commit passed on for a stranger");
                // The driver answers an unknown tag `not_found`; a known one is done.
                self.held.remove(&tag);
            }
        }
        true
    }

    fn register(&mut self, machine: &mut Machine) {
        self.registered = true;
        machine.registered(ClientId([7; 16]));
        assert!(machine.client().is_some());
    }
}
