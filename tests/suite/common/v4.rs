//! A protocol-4 client for tests that speaks raw frames over TLS, written against rustls
//! and this file alone (not the server's codec): requests are laid out byte by byte here,
//! and answers read the same way, so a test proves the wire format, not an agreement of
//! the server with itself.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, Error, SignatureScheme, StreamOwned,
};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

pub const ALPN4: &[u8] = b"securexfer/4";
pub const HELLO: u16 = 0x0001;
pub const DATA: u16 = 0x0010;
pub const REGISTER: u16 = 0x0101;
pub const UPGRADE: u16 = 0x0102;
pub const PUT_BEGIN: u16 = 0x0201;
pub const PUT_END: u16 = 0x0202;
pub const COMMIT: u16 = 0x0203;
pub const DISCARD: u16 = 0x0204;
pub const RESUME_QUERY: u16 = 0x0205;
pub const RESUME_STATE: u16 = 0x8205;
pub const LIST: u16 = 0x0301;
pub const GET: u16 = 0x0302;
pub const RM: u16 = 0x0303;
pub const GET_DATA: u16 = 0x8010;
pub const LIST_ENTRIES: u16 = 0x8301;
pub const GET_BEGIN: u16 = 0x8302;
pub const REMOVED: u16 = 0x8303;
pub const LIST_END: u16 = 0x8381;
pub const GET_END: u16 = 0x8382;
pub const WELCOME: u16 = 0x8001;
pub const ERROR: u16 = 0x8002;
pub const REGISTERED: u16 = 0x8101;
pub const PUT_RECEIVED: u16 = 0x8201;
pub const COMMITTED: u16 = 0x8203;
pub const DISCARDED: u16 = 0x8204;

/// Error codes the tests look for.
pub mod code {
    pub const PROTOCOL: u16 = 1;
    pub const VERSION: u16 = 2;
    pub const NOT_REGISTERED: u16 = 3;
    pub const NOT_AUTHORISED: u16 = 4;
    pub const NAME_TAKEN: u16 = 5;
    pub const NAME_REFUSED: u16 = 6;
    pub const NOT_FOUND: u16 = 7;
    pub const IS_FOLDER: u16 = 8;
    pub const CONFLICT: u16 = 9;
    pub const TOO_LARGE: u16 = 10;
    pub const QUOTA_EXCEEDED: u16 = 11;
    pub const CORRUPT: u16 = 12;
    pub const RATE_LIMITED: u16 = 20;
    pub const BUSY: u16 = 21;
    pub const TIMEOUT: u16 = 23;
    pub const SHUTTING_DOWN: u16 = 24;
    pub const INTERNAL: u16 = 25;
    pub const HASH_MISMATCH: u16 = 26;
}

/// An Ed25519 client key and its self-signed certificate.
#[derive(Clone)]
pub struct Key {
    pub cert: CertificateDer<'static>,
    pub pkcs8: Vec<u8>,
}

impl Key {
    pub fn ed25519() -> Key {
        Key::generate(&rcgen::PKCS_ED25519)
    }

    pub fn generate(alg: &'static rcgen::SignatureAlgorithm) -> Key {
        let pair = rcgen::KeyPair::generate_for(alg).expect("a key");
        let params = rcgen::CertificateParams::new(vec!["client".to_owned()]).expect("params");
        let cert = params.self_signed(&pair).expect("a certificate");
        Key { cert: cert.der().clone(), pkcs8: pair.serialize_der() }
    }

    /// The raw SHA-256 of the key's SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> [u8; 32] {
        let cert = webpki::EndEntityCert::try_from(&self.cert).expect("a certificate");
        let digest =
            ring::digest::digest(&ring::digest::SHA256, cert.subject_public_key_info().as_ref());
        digest.as_ref().try_into().unwrap()
    }
}

/// Trusts whatever server answers (the trust tests are elsewhere), remembering its key.
#[derive(Debug)]
struct AnyServer(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// A TLS 1.3 client configuration with ALPN `securexfer/4`, presenting `key` (or no
/// certificate at all).
pub fn config(key: Option<&Key>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(algorithms)));
    let mut config = match key {
        Some(key) => {
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8.clone()));
            builder.with_client_auth_cert(vec![key.cert.clone()], der).expect("a client key")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN4.to_vec()];
    Arc::new(config)
}

/// One frame as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub frame_type: u16,
    pub tag: u32,
    pub payload: Vec<u8>,
}

/// An `ERROR` payload, read by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub code: u16,
    pub kind: u8,
    pub closes: bool,
    /// What `value` and `limit` count: 0 nothing, 1 bytes, 2 files.
    pub unit: u8,
    pub value: u64,
    pub limit: u64,
    pub message: String,
}

/// A protocol-4 connection after its handshake.
pub struct Conn {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
    next_tag: u32,
}

impl Conn {
    /// Connects and completes the TLS handshake, or says why not.
    pub fn connect(addr: SocketAddr, key: Option<&Key>) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let name = ServerName::try_from("securexfer").unwrap();
        let connection = ClientConnection::new(config(key), name).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(connection, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).map_err(|e| e.to_string())?;
        }
        Ok(Conn { tls, next_tag: 1 })
    }

    /// Connects with `key`, says HELLO and returns the WELCOME.
    pub fn hello(addr: SocketAddr, key: &Key) -> (Conn, WelcomeAnswer) {
        let mut conn = Conn::connect(addr, Some(key)).expect("the handshake completes");
        conn.send(HELLO, 0, &hello_payload(4, 0));
        let frame = conn.read().expect("an answer to HELLO");
        assert_eq!(frame.frame_type, WELCOME, "{frame:?} {:?}", error_of(&frame));
        let welcome = WelcomeAnswer::read(&frame.payload);
        (conn, welcome)
    }

    /// A fresh request tag.
    pub fn tag(&mut self) -> u32 {
        let tag = self.next_tag;
        self.next_tag += 1;
        tag
    }

    /// Sends one frame (flags 0).
    pub fn send(&mut self, frame_type: u16, tag: u32, payload: &[u8]) {
        self.send_raw(&frame(frame_type, tag, payload));
    }

    /// Sends bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).expect("send");
        self.tls.flush().expect("flush");
    }

    /// Reads the next frame.
    pub fn read(&mut self) -> io::Result<Frame> {
        let mut header = [0u8; 12];
        self.tls.read_exact(&mut header)?;
        let frame_type = u16::from_le_bytes([header[0], header[1]]);
        let tag = u32::from_le_bytes(header[4..8].try_into().unwrap());
        let len = u32::from_le_bytes(header[8..12].try_into().unwrap());
        let mut payload = vec![0u8; len as usize];
        self.tls.read_exact(&mut payload)?;
        Ok(Frame { frame_type, tag, payload })
    }

    /// Reads the next frame, which must be an `ERROR`.
    pub fn read_error(&mut self) -> (u32, ErrorAnswer) {
        let frame = self.read().expect("an ERROR");
        let error = error_of(&frame).unwrap_or_else(|| panic!("not an ERROR: {frame:?}"));
        (frame.tag, error)
    }

    /// Whether the server closed with close_notify (a clean end) after what was read.
    pub fn closed_cleanly(&mut self) -> bool {
        let mut rest = Vec::new();
        self.tls.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }

    /// `REGISTER name [token]`; the answer.
    pub fn register(&mut self, name: &str, token: Option<[u8; 16]>) -> Frame {
        let tag = self.tag();
        self.send(REGISTER, tag, &register_payload(name, token));
        let frame = self.read().expect("an answer to REGISTER");
        assert_eq!(frame.tag, tag);
        frame
    }

    /// A whole put of `data` at `path`, then `COMMIT` with `hash`; the two answers.
    pub fn put_and_commit(&mut self, path: &str, data: &[u8], hash: [u8; 32]) -> (Frame, Frame) {
        let tag = self.put(path, data);
        self.send(COMMIT, tag, &hash);
        let received = self.read().expect("PUT_RECEIVED");
        let committed = self.read().expect("an answer to COMMIT");
        (received, committed)
    }

    /// `PUT_BEGIN`, `DATA` in 256 KiB frames, `PUT_END`; the put's tag.
    pub fn put(&mut self, path: &str, data: &[u8]) -> u32 {
        let tag = self.tag();
        self.send(PUT_BEGIN, tag, &put_begin_payload(false, data.len() as u64, 0, path));
        for chunk in data.chunks(256 * 1024) {
            self.send(DATA, tag, chunk);
        }
        self.send(PUT_END, tag, &[]);
        tag
    }
}

/// A frame's bytes, laid out by hand: type, flags 0, tag, length, payload.
pub fn frame(frame_type: u16, tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + payload.len());
    out.extend_from_slice(&frame_type.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn hello_payload(major: u8, minor: u8) -> Vec<u8> {
    let software = b"v4 test client";
    let mut out = vec![major, minor, software.len() as u8];
    out.extend_from_slice(software);
    out
}

pub fn register_payload(name: &str, token: Option<[u8; 16]>) -> Vec<u8> {
    let mut out = vec![name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    match token {
        Some(token) => {
            out.push(16);
            out.extend_from_slice(&token);
        }
        None => out.push(0),
    }
    out
}

/// `PUT_BEGIN` with prefix hash zeros and mtime 1,700,000,000 s.
pub fn put_begin_payload(no_clobber: bool, size: u64, offset: u64, path: &str) -> Vec<u8> {
    let mut out = vec![u8::from(no_clobber)];
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(&MTIME_NS.to_le_bytes());
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    out
}

/// The mtime every test put declares.
pub const MTIME_NS: i64 = 1_700_000_000_000_000_000;

pub fn upgrade_payload(id: &[u8; 16], name: &str, signature: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&(signature.len() as u16).to_le_bytes());
    out.extend_from_slice(signature);
    out
}

/// The upgrade statement of docs/protocol-v4.md, built here independently.
pub fn upgrade_statement(
    exporter: &[u8; 32],
    server_fp: &[u8; 32],
    client_fp: &[u8; 32],
    id: &[u8; 16],
    name: &str,
) -> Vec<u8> {
    let mut m = b"securexfer/4 upgrade\0".to_vec();
    m.extend_from_slice(exporter);
    m.extend_from_slice(server_fp);
    m.extend_from_slice(client_fp);
    m.extend_from_slice(id);
    m.push(name.len() as u8);
    m.extend_from_slice(name.as_bytes());
    m
}

/// The connection's exporter value for the upgrade.
pub fn exporter(conn: &Conn) -> [u8; 32] {
    let mut out = [0u8; 32];
    conn.tls
        .conn
        .export_keying_material(&mut out, b"EXPORTER-securexfer-upgrade", Some(b""))
        .expect("an exporter value");
    out
}

/// The raw SHA-256 of the server's key, from its certificate.
pub fn server_fingerprint(conn: &Conn) -> [u8; 32] {
    let cert = &conn.tls.conn.peer_certificates().expect("a server certificate")[0];
    let cert = webpki::EndEntityCert::try_from(cert).unwrap();
    let digest =
        ring::digest::digest(&ring::digest::SHA256, cert.subject_public_key_info().as_ref());
    digest.as_ref().try_into().unwrap()
}

/// The `ERROR` in `frame`, if it is one.
pub fn error_of(frame: &Frame) -> Option<ErrorAnswer> {
    if frame.frame_type != ERROR {
        return None;
    }
    let p = &frame.payload;
    let len = u16::from_le_bytes([p[25], p[26]]) as usize;
    Some(ErrorAnswer {
        code: u16::from_le_bytes([p[0], p[1]]),
        kind: p[2],
        closes: p[3] == 1,
        unit: p[4],
        value: u64::from_le_bytes(p[9..17].try_into().unwrap()),
        limit: u64::from_le_bytes(p[17..25].try_into().unwrap()),
        message: String::from_utf8(p[27..27 + len].to_vec()).unwrap(),
    })
}

/// What the tests read of a `WELCOME`.
#[derive(Debug, Clone)]
pub struct WelcomeAnswer {
    pub registration: u8,
    pub registered: bool,
    pub client_id: [u8; 16],
    pub max_file_size: u64,
    pub resume_window: u32,
    pub bytes_used: u64,
    pub bytes_quota: u64,
    pub files_used: u64,
    pub files_quota: u64,
    pub name: String,
}

impl WelcomeAnswer {
    fn read(p: &[u8]) -> Self {
        let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
        // minor 0, registration 1, registered 2, id 3..19, max data 19..23, in flight
        // 23..25, open puts 25..27, max file size 27..35, resume window 35..39, usage
        // 39..71, now 71..79, name.
        let name_len = p[79] as usize;
        WelcomeAnswer {
            registration: p[1],
            registered: p[2] == 1,
            client_id: p[3..19].try_into().unwrap(),
            max_file_size: u64_at(27),
            resume_window: u32::from_le_bytes(p[35..39].try_into().unwrap()),
            bytes_used: u64_at(39),
            bytes_quota: u64_at(47),
            files_used: u64_at(55),
            files_quota: u64_at(63),
            name: String::from_utf8(p[80..80 + name_len].to_vec()).unwrap(),
        }
    }
}

/// What the tests read of a `PUT_RECEIVED`: size, hash, replaces.
pub fn put_received(frame: &Frame) -> (u64, [u8; 32], bool) {
    assert_eq!(frame.frame_type, PUT_RECEIVED, "{frame:?} {:?}", error_of(frame));
    let p = &frame.payload;
    (u64::from_le_bytes(p[..8].try_into().unwrap()), p[8..40].try_into().unwrap(), p[40] == 1)
}

/// What the tests read of a `COMMITTED`: generation, stored at, kept version.
pub fn committed(frame: &Frame) -> (u64, i64, bool) {
    assert_eq!(frame.frame_type, COMMITTED, "{frame:?} {:?}", error_of(frame));
    let p = &frame.payload;
    (
        u64::from_le_bytes(p[..8].try_into().unwrap()),
        i64::from_le_bytes(p[8..16].try_into().unwrap()),
        p[16] == 1,
    )
}

/// What the tests read of a `REGISTERED`: id and name.
pub fn registered(frame: &Frame) -> ([u8; 16], String) {
    assert_eq!(frame.frame_type, REGISTERED, "{frame:?} {:?}", error_of(frame));
    let p = &frame.payload;
    let len = p[16] as usize;
    (p[..16].try_into().unwrap(), String::from_utf8(p[17..17 + len].to_vec()).unwrap())
}

/// A `GET` answer: its `GET_BEGIN`, the bytes and the `GET_END` hash, or the bytes that came
/// before the `ERROR` that ended it.
pub type GetAnswer = Result<(Frame, Vec<u8>, [u8; 32]), (Vec<u8>, ErrorAnswer)>;

/// `LIST recursive path`, laid out by hand.
pub fn list_payload(recursive: bool, path: &str) -> Vec<u8> {
    let mut out = vec![u8::from(recursive)];
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    out
}

/// `GET offset generation path`.
pub fn get_payload(offset: u64, generation: u64, path: &str) -> Vec<u8> {
    let mut out = offset.to_le_bytes().to_vec();
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(path.len() as u16).to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    out
}

/// `RM recursive path`: the same layout as `LIST`.
pub fn rm_payload(recursive: bool, path: &str) -> Vec<u8> {
    list_payload(recursive, path)
}

/// One `LIST_ENTRIES` entry, read by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryAnswer {
    pub kind: u8,
    pub flags: u8,
    pub size: u64,
    pub mtime_ns: i64,
    pub stored_at: i64,
    pub generation: u64,
    pub versions: u16,
    pub hash: [u8; 32],
    pub path: String,
}

/// The entries of a `LIST_ENTRIES` payload.
pub fn list_entries(frame: &Frame) -> Vec<EntryAnswer> {
    assert_eq!(frame.frame_type, LIST_ENTRIES, "{frame:?} {:?}", error_of(frame));
    let p = &frame.payload;
    let count = u16::from_le_bytes([p[0], p[1]]) as usize;
    let (mut at, mut out) = (2, Vec::new());
    let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
    for _ in 0..count {
        let len = u16::from_le_bytes([p[at + 68], p[at + 69]]) as usize;
        out.push(EntryAnswer {
            kind: p[at],
            flags: p[at + 1],
            size: u64_at(at + 2),
            mtime_ns: u64_at(at + 10) as i64,
            stored_at: u64_at(at + 18) as i64,
            generation: u64_at(at + 26),
            versions: u16::from_le_bytes([p[at + 34], p[at + 35]]),
            hash: p[at + 36..at + 68].try_into().unwrap(),
            path: String::from_utf8(p[at + 70..at + 70 + len].to_vec()).unwrap(),
        });
        at += 70 + len;
    }
    assert_eq!(at, p.len(), "nothing follows the last entry");
    out
}

/// The totals of a `LIST_END`: entries, bytes, bytes used, bytes quota, files used, quota.
pub fn list_end(frame: &Frame) -> [u64; 6] {
    assert_eq!(frame.frame_type, LIST_END, "{frame:?} {:?}", error_of(frame));
    let p = &frame.payload;
    std::array::from_fn(|i| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap()))
}

/// What the tests read of a `GET_BEGIN`: size, generation, mtime, flags, hash.
pub fn get_begin(frame: &Frame) -> (u64, u64, i64, u8, [u8; 32]) {
    assert_eq!(frame.frame_type, GET_BEGIN, "{frame:?} {:?}", error_of(frame));
    let p = &frame.payload;
    let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
    (u64_at(0), u64_at(8), u64_at(16) as i64, p[32], p[33..65].try_into().unwrap())
}

impl Conn {
    /// `LIST`; every entry of the answer and its `LIST_END` totals, or the `ERROR`.
    pub fn list(
        &mut self,
        recursive: bool,
        path: &str,
    ) -> Result<(Vec<EntryAnswer>, [u64; 6]), ErrorAnswer> {
        let tag = self.tag();
        self.send(LIST, tag, &list_payload(recursive, path));
        self.read_list(tag)
    }

    /// The answer to the `LIST` under `tag`, and how many `LIST_ENTRIES` frames it took.
    pub fn read_list(&mut self, tag: u32) -> Result<(Vec<EntryAnswer>, [u64; 6]), ErrorAnswer> {
        let mut entries = Vec::new();
        loop {
            let frame = self.read().expect("an answer to LIST");
            assert_eq!(frame.tag, tag, "{frame:?}");
            match frame.frame_type {
                LIST_ENTRIES => entries.extend(list_entries(&frame)),
                LIST_END => return Ok((entries, list_end(&frame))),
                _ => return Err(error_of(&frame).unwrap_or_else(|| panic!("{frame:?}"))),
            }
        }
    }

    /// `GET path`; the `GET_BEGIN` frame, the bytes, and the `GET_END` hash, or the
    /// `ERROR` that ended the answer (with the bytes before it).
    pub fn get(&mut self, path: &str) -> GetAnswer {
        let tag = self.tag();
        self.send(GET, tag, &get_payload(0, 0, path));
        self.read_get(tag)
    }

    /// The answer to the `GET` under `tag`.
    pub fn read_get(&mut self, tag: u32) -> GetAnswer {
        let first = self.read().expect("an answer to GET");
        assert_eq!(first.tag, tag, "{first:?}");
        if let Some(error) = error_of(&first) {
            return Err((Vec::new(), error));
        }
        assert_eq!(first.frame_type, GET_BEGIN, "{first:?}");
        let mut data = Vec::new();
        loop {
            let frame = self.read().expect("the rest of a GET answer");
            assert_eq!(frame.tag, tag, "{frame:?}");
            match frame.frame_type {
                GET_DATA => data.extend_from_slice(&frame.payload),
                GET_END => return Ok((first, data, frame.payload.try_into().unwrap())),
                _ => return Err((data, error_of(&frame).unwrap_or_else(|| panic!("{frame:?}")))),
            }
        }
    }

    /// `RM path`; files, bytes and kept of `REMOVED`, or the `ERROR`.
    pub fn rm(&mut self, path: &str) -> Result<[u64; 3], ErrorAnswer> {
        let tag = self.tag();
        self.send(RM, tag, &rm_payload(false, path));
        let frame = self.read().expect("an answer to RM");
        assert_eq!(frame.tag, tag, "{frame:?}");
        if let Some(error) = error_of(&frame) {
            return Err(error);
        }
        assert_eq!(frame.frame_type, REMOVED, "{frame:?}");
        let p = &frame.payload;
        Ok(std::array::from_fn(|i| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap())))
    }
}
