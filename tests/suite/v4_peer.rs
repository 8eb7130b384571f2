//! A scripted protocol-4 peer for the client tests: a small blocking rustls server on
//! loopback that speaks the frames of docs/protocol-v4.md as its script says (honestly,
//! with a wrong hash, refusing a file for its quota, or with frames out of turn), and
//! records what it received. It stands in for `securexfer serve` where a test needs a
//! server to misbehave on purpose.

use securexfer::protocol::ClientId;
use securexfer::protocol::v4::{
    Commit, Committed, CopyFlags, EntryKind, ErrorCode, ErrorFrame, ErrorUnit, FrameHeader,
    FrameType, Get, GetBegin, GetEnd, HEADER_LEN, ListEnd, ListEntries, ListEntry, PutBegin,
    PutReceived, Register, Registered, Registration, ResumeState, Side, Upgrade, Welcome,
    encode_frame,
};
use securexfer::server::identity::ServerIdentity;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The id the peer gives a client that registers.
pub(crate) const PEER_ID: ClientId = ClientId([0x42; 16]);

/// How the peer behaves.
#[derive(Debug, Clone, Default)]
pub(crate) struct Script {
    /// The client's key is a client already (WELCOME says registered).
    pub(crate) registered: bool,
    /// PUT_RECEIVED carries a wrong hash (and COMMIT gets hash_mismatch) for this many puts.
    pub(crate) wrong_hashes: u32,
    /// Paths refused at PUT_BEGIN with quota_exceeded (9.8 GiB of 10 GiB used).
    pub(crate) over_quota: Vec<String>,
    /// Answer the first PUT_BEGIN at once with a COMMITTED for a tag nobody used.
    pub(crate) unexpected_frame: bool,
    /// Refuse this many puts with `busy` (retry after 100 ms) at PUT_BEGIN.
    pub(crate) busy: u32,
    /// Files the peer holds for LIST and GET: path → content.
    pub(crate) stored: Vec<(String, Vec<u8>)>,
    /// How GET answers lie, if they do.
    pub(crate) get_lie: GetLie,
    /// When not empty, only the GETs of these paths lie; the others are answered honestly.
    pub(crate) lie_about: Vec<String>,
    /// Paths listed after the stored ones, as they are (to name what no honest server
    /// would: `../escape`).
    pub(crate) extra_listed: Vec<String>,
}

/// A GET answer's lie.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum GetLie {
    /// The truth.
    #[default]
    Honest,
    /// One byte more `DATA` than `GET_BEGIN` announced.
    ExtraBytes,
    /// `GET_END` one byte early.
    FewerBytes,
    /// `GET_END` with another hash than the bytes'.
    WrongHash,
    /// `GET_BEGIN` with another recorded hash than the bytes'.
    WrongRecordedHash,
    /// `GET_BEGIN` and the first `DATA`, then nothing (the connection stays open).
    Stall,
}

/// What the peer saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Connections whose TLS handshake completed.
    pub(crate) handshakes: u32,
    /// Every frame type received, in order.
    pub(crate) frames: Vec<FrameType>,
    /// Files committed: path → content.
    pub(crate) files: HashMap<String, Vec<u8>>,
    /// The UPGRADE received, if any.
    pub(crate) upgrade: Option<Upgrade>,
    /// The REGISTER received, if any.
    pub(crate) register: Option<Register>,
    /// Puts received (including refused and resent ones).
    pub(crate) puts: u32,
    /// The SNI of each handshake.
    pub(crate) sni: Vec<Option<String>>,
}

/// A running peer. It stops accepting when dropped (and within a minute in any case).
pub(crate) struct Peer {
    pub(crate) addr: String,
    pub(crate) fingerprint: String,
    pub(crate) seen: Arc<Mutex<Seen>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Peer {
    pub(crate) fn start(script: Script) -> Peer {
        let identity = ServerIdentity::ephemeral().expect("a key");
        let fingerprint = identity.fingerprint().to_owned();
        let config = securexfer::server::tls::server_config(&identity).expect("TLS config");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (shared, stopping) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            let started = Instant::now();
            let script = Arc::new(Mutex::new(script));
            while !stopping.load(std::sync::atomic::Ordering::SeqCst)
                && started.elapsed() < Duration::from_secs(60)
            {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (config, seen, script) =
                            (Arc::clone(&config), Arc::clone(&shared), Arc::clone(&script));
                        std::thread::spawn(move || serve(tcp, config, &seen, &script));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Peer { addr, fingerprint, seen, stop }
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    seen: &Mutex<Seen>,
    script: &Mutex<Script>,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(20)));
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    {
        let mut s = seen.lock().unwrap();
        s.handshakes += 1;
        s.sni.push(tls.conn.server_name().map(str::to_owned));
    }
    let mut state = State::default();
    while let Some((header, payload)) = read_frame(&mut tls) {
        seen.lock().unwrap().frames.push(header.frame_type());
        let script = script.lock().unwrap().clone();
        let answers = state.answer(&header, &payload, &script, seen);
        for (frame_type, tag, payload) in answers {
            let frame = encode_frame(frame_type, tag, &payload).expect("a frame");
            if tls.write_all(&frame).and_then(|()| tls.flush()).is_err() {
                return;
            }
        }
        if state.closing {
            break;
        }
    }
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn read_frame(tls: &mut Tls) -> Option<(FrameHeader, Vec<u8>)> {
    let mut bytes = [0u8; HEADER_LEN];
    tls.read_exact(&mut bytes).ok()?;
    let header = FrameHeader::decode(&bytes, Side::Server).ok()?;
    let mut payload = vec![0u8; header.length() as usize];
    tls.read_exact(&mut payload).ok()?;
    Some((header, payload))
}

/// One connection's state: the open put and the uploads held under their tags.
#[derive(Default)]
struct State {
    registered: bool,
    open: Option<(u32, PutBegin, Vec<u8>)>,
    dropping: Option<u32>,
    held: HashMap<u32, (String, Vec<u8>, [u8; 32])>,
    generation: u64,
    closing: bool,
}

type Out = Vec<(FrameType, u32, Vec<u8>)>;

impl State {
    fn answer(&mut self, h: &FrameHeader, p: &[u8], script: &Script, seen: &Mutex<Seen>) -> Out {
        let tag = h.tag();
        match h.frame_type() {
            FrameType::Hello => {
                // A key registered or upgraded on an earlier connection is a client now.
                let s = seen.lock().unwrap();
                self.registered = script.registered || s.register.is_some() || s.upgrade.is_some();
                drop(s);
                vec![(FrameType::Welcome, 0, welcome(self.registered).encode().unwrap())]
            }
            FrameType::Register => {
                let register = Register::decode(p).unwrap();
                let name = register.name.clone();
                seen.lock().unwrap().register = Some(register);
                self.registered = true;
                let answer = Registered { client_id: PEER_ID, name };
                vec![(FrameType::Registered, tag, answer.encode().unwrap())]
            }
            FrameType::Upgrade => {
                let upgrade = Upgrade::decode(p).unwrap();
                let answer =
                    Registered { client_id: upgrade.client_id, name: upgrade.name.clone() };
                seen.lock().unwrap().upgrade = Some(upgrade);
                self.registered = true;
                vec![(FrameType::Registered, tag, answer.encode().unwrap())]
            }
            FrameType::PutBegin => self.put_begin(tag, p, script, seen),
            FrameType::PutData if self.dropping == Some(tag) => vec![],
            FrameType::PutData => {
                if let Some((_, _, data)) = self.open.as_mut() {
                    data.extend_from_slice(p);
                }
                vec![]
            }
            FrameType::PutEnd if self.dropping == Some(tag) => {
                self.dropping = None;
                vec![]
            }
            FrameType::PutEnd => self.put_end(script, seen),
            FrameType::Commit => self.commit(tag, p, seen),
            // A server that kept nothing of an earlier upload.
            FrameType::ResumeQuery => {
                vec![(FrameType::ResumeState, tag, ResumeState::NOTHING.encode().unwrap())]
            }
            FrameType::List => list(tag, script),
            FrameType::Get => get(tag, p, script),
            _ => {
                self.closing = true;
                vec![(
                    FrameType::Error,
                    0,
                    error(ErrorCode::Protocol, 0, 0, "unexpected").encode().unwrap(),
                )]
            }
        }
    }

    fn put_begin(&mut self, tag: u32, p: &[u8], script: &Script, seen: &Mutex<Seen>) -> Out {
        let begin = PutBegin::decode(p).unwrap();
        seen.lock().unwrap().puts += 1;
        self.dropping = None;
        if script.unexpected_frame {
            let bogus = Committed { generation: 1, stored_at: 0, kept_version: false };
            return vec![(FrameType::Committed, tag + 98, bogus.encode())];
        }
        if seen.lock().unwrap().puts <= script.busy {
            self.dropping = Some(tag);
            let mut e = error(ErrorCode::Busy, 0, 0, "too many uploads at once");
            e.retry_after_ms = 100;
            return vec![(FrameType::Error, tag, e.encode().unwrap())];
        }
        if script.over_quota.contains(&begin.path) {
            self.dropping = Some(tag);
            let gib = 1u64 << 30;
            let used = gib * 98 / 10;
            let e = error(ErrorCode::QuotaExceeded, used, 10 * gib, "the bytes quota is reached");
            return vec![(FrameType::Error, tag, e.encode().unwrap())];
        }
        self.open = Some((tag, begin, Vec::new()));
        vec![]
    }

    fn put_end(&mut self, script: &Script, seen: &Mutex<Seen>) -> Out {
        let Some((tag, begin, data)) = self.open.take() else { return vec![] };
        let mut hash = *blake3::hash(&data).as_bytes();
        let s = seen.lock().unwrap();
        if s.puts <= script.wrong_hashes {
            hash[0] ^= 0xff;
        }
        drop(s);
        let received = PutReceived { size: data.len() as u64, hash, replaces: false };
        self.held.insert(tag, (begin.path, data, hash));
        vec![(FrameType::PutReceived, tag, received.encode())]
    }

    fn commit(&mut self, tag: u32, p: &[u8], seen: &Mutex<Seen>) -> Out {
        let commit = Commit::decode(p).unwrap();
        let Some((path, data, hash)) = self.held.remove(&tag) else {
            let e = error(ErrorCode::NotFound, 0, 0, "no upload is held under this tag");
            return vec![(FrameType::Error, tag, e.encode().unwrap())];
        };
        if hash != commit.hash {
            let e = error(ErrorCode::HashMismatch, 0, 0, "the hash is not the server's");
            return vec![(FrameType::Error, tag, e.encode().unwrap())];
        }
        seen.lock().unwrap().files.insert(path, data);
        self.generation += 1;
        let done = Committed { generation: self.generation, stored_at: 0, kept_version: false };
        vec![(FrameType::Committed, tag, done.encode())]
    }
}

fn list(tag: u32, script: &Script) -> Out {
    let mut stored: Vec<&(String, Vec<u8>)> = script.stored.iter().collect();
    stored.sort();
    let mut paths: Vec<(String, &[u8])> =
        stored.into_iter().map(|(p, d)| (p.clone(), d.as_slice())).collect();
    paths.extend(script.extra_listed.iter().map(|p| (p.clone(), &b""[..])));
    let entries = paths
        .iter()
        .map(|(path, data)| ListEntry {
            kind: EntryKind::File,
            flags: CopyFlags { hash_known: true, unverified: false, protocol3: false },
            size: data.len() as u64,
            mtime_ns: 0,
            stored_at: 1_796_000_000,
            generation: 1,
            versions: 0,
            hash: *blake3::hash(data).as_bytes(),
            path: path.clone(),
        })
        .collect::<Vec<_>>();
    let mut out = Vec::new();
    if !entries.is_empty() {
        let frame = ListEntries { entries: entries.clone() };
        out.push((FrameType::ListEntries, tag, frame.encode().unwrap()));
    }
    let bytes = paths.iter().map(|(_, d)| d.len() as u64).sum();
    let end = ListEnd {
        entries: entries.len() as u64,
        bytes,
        bytes_used: bytes,
        bytes_quota: u64::MAX,
        files_used: entries.len() as u64,
        files_quota: u64::MAX,
    };
    out.push((FrameType::ListEnd, tag, end.encode()));
    out
}

fn get(tag: u32, p: &[u8], script: &Script) -> Out {
    let get = Get::decode(p).unwrap();
    let Some((_, data)) = script.stored.iter().find(|(path, _)| *path == get.path) else {
        let e = error(ErrorCode::NotFound, 0, 0, "no file is stored there");
        return vec![(FrameType::Error, tag, e.encode().unwrap())];
    };
    let lies = script.lie_about.is_empty() || script.lie_about.contains(&get.path);
    let lie = if lies { script.get_lie } else { GetLie::Honest };
    let hash = *blake3::hash(data).as_bytes();
    let mut other = hash;
    other[0] ^= 1;
    let recorded = if lie == GetLie::WrongRecordedHash { other } else { hash };
    let begin = GetBegin {
        size: data.len() as u64,
        generation: 1,
        mtime_ns: 0,
        stored_at: 1_796_000_000,
        flags: CopyFlags { hash_known: true, unverified: false, protocol3: false },
        hash: recorded,
    };
    let mut out = vec![(FrameType::GetBegin, tag, begin.encode().unwrap())];
    let mut body = data.clone();
    match lie {
        GetLie::ExtraBytes => body.push(b'!'),
        GetLie::FewerBytes => {
            body.pop();
        }
        _ => {}
    }
    out.extend(body.chunks(256 * 1024).map(|c| (FrameType::GetData, tag, c.to_vec())));
    if lie == GetLie::Stall {
        out.truncate(2);
        return out;
    }
    let end = if lie == GetLie::WrongHash { other } else { hash };
    out.push((FrameType::GetEnd, tag, GetEnd { hash: end }.encode()));
    out
}

fn welcome(registered: bool) -> Welcome {
    Welcome {
        minor: 0,
        registration: Registration::Open,
        registered,
        client_id: if registered { PEER_ID } else { ClientId([0; 16]) },
        max_data: 1 << 20,
        max_in_flight: 64,
        max_open_puts: 64,
        max_file_size: u64::MAX,
        resume_window: 86_400,
        bytes_used: 0,
        bytes_quota: u64::MAX,
        files_used: 0,
        files_quota: u64::MAX,
        now: 0,
        name: if registered { "peer-client".into() } else { String::new() },
        software: "v4 test peer".into(),
    }
}

fn error(code: ErrorCode, value: u64, limit: u64, message: &str) -> ErrorFrame {
    ErrorFrame {
        code,
        closes: code == ErrorCode::Protocol,
        unit: if value > 0 { ErrorUnit::Bytes } else { ErrorUnit::Nothing },
        retry_after_ms: 0,
        value,
        limit,
        message: message.into(),
    }
}
