//! A script of requests run against the real connection state machine, in process, over
//! `tokio::io::duplex`, with a fresh storage directory and in-memory database per run, through the
//! library's public seam ([`Server::with_records`], [`Server::serve_connection`]).
//!
//! # The script
//!
//! Byte 0 picks the configuration (bit 0: strict sessions, bit 1: a zero session window,
//! bit 2: a 4 KiB content limit). Then each operation is one byte (modulo 12, see
//! [`Script::step`]) followed by its parameters; missing bytes read as zero, so every input
//! is a script. Requests are well formed unless a parameter says otherwise: valid names,
//! the pre-made RSA keys, AES content encrypted with the key the server sent (as it gave
//! it to its records, see [`KeyTap`]: decrypting it with RSA would cost more than the rest
//! of the run). Raw requests
//! and raw bytes cover the rest. After each operation a ping (a 1027 that is always denied)
//! marks where its answers end, or the client closes its side when framing is in doubt.
//!
//! # Invariants
//!
//! - No task panics; every byte the server sends is a canonical version-3 response.
//! - A request of the script gets at most one answer, of a code that request may get.
//! - 2103 and 2104 for a client id come only on a connection that made a key exchange for
//!   it, or (unless strict) whose address did. 2102 comes only for an id registered on
//!   that connection or address, or for the key already on record.
//! - 2105 comes only for the id's own name. 2103 echoes the size and name, never answers a
//!   file name that cannot be stored, and has the plaintext's cksum when the content was
//!   encrypted with the session's key; a 2104 to a 1029 means the file is there.
//! - On disk: nothing outside the storage directory, only `<id hex>/<name>` files, and a
//!   final (non-temporary) file only under a name that some 1029 sent earlier named.
//! - At the end: every verified record names a file whose size and cksum it holds, every
//!   stored file has one, and once all state is dropped no temporary file is left.

use securexfer::crypto::aes::encrypt_to_vec;
use securexfer::crypto::{AesKey, Cksum, PrivateKey, PublicKey};
use securexfer::protocol::Version;
use securexfer::protocol::{
    ClientId, DecodeError, FixedName, NAME_LEN, PUBLIC_KEY_LEN, PublicKeyField, REQUEST_HEADER_LEN,
    RequestCode, Response, ResponseCode, TEMP_PREFIX, VERSION, decode_response, storage_name,
};
use securexfer::server::{Config, Server};
use securexfer::store::{
    ClientRecord, CommitIntent, Db, FileRecord, Records, RecordsFuture, SqliteRecords, Storage,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Most operations per run, so that one input stays fast.
const MAX_OPS: usize = 64;
/// The server's idle timeout: a request cut short ends its connection this quickly.
const IDLE: Duration = Duration::from_millis(100);
/// Bytes buffered in each direction of a connection.
const PIPE: usize = 64 * 1024;
/// The ping: a 1027 from an id and name no script request uses, so it is always denied.
const PING_ID: ClientId = ClientId([0xa5; 16]);
const PING_NAME: &[u8] = b"fuzz-ping";
/// Largest raw payload written whole; a larger one is cut and the connection closed.
const MAX_RAW_PAYLOAD: usize = 2048;
const CLIENT_NAMES: [&str; 2] = ["alice", "bob"];
const FILE_NAMES: [&str; 7] =
    ["f.txt", "/home/u/f.txt", r"C:\dir\f.txt", "..", "a/.", ".securexfer-part-x", "C:"];
/// Plaintext size of a "large" file: more than one upload chunk.
const LARGE: usize = securexfer::server::upload::CHUNK + 17;

/// Runs the script in `data` against a fresh server state.
///
/// # Panics
/// When an invariant breaks (that is the point).
pub fn check_session(data: &[u8]) {
    runtime().block_on(async {
        let mut input = Input(data);
        let mut script = Script::new(input.byte());
        for _ in 0..MAX_OPS {
            if input.0.is_empty() {
                break;
            }
            script.step(&mut input).await;
            script.check_disk();
        }
        script.finish().await;
    });
}

/// One current-thread runtime per process: building one per input would dominate the run.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime")
    })
}

/// The public key fields of two keys made once per process (RSA key generation is slow).
fn keys() -> &'static [[u8; PUBLIC_KEY_LEN]; 2] {
    static KEYS: OnceLock<[[u8; PUBLIC_KEY_LEN]; 2]> = OnceLock::new();
    KEYS.get_or_init(|| {
        [(); 2].map(|()| {
            let key = PrivateKey::generate().public_key();
            key.to_field().expect("an e = 17 key fits the field").0
        })
    })
}

/// The script's bytes; reading past the end gives zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.bytes(N);
        out[..got.len()].copy_from_slice(got);
        out
    }
}

/// A name field holding `text` (cut at 255 bytes, so possibly with no terminator).
fn field(text: &[u8]) -> [u8; NAME_LEN] {
    let mut out = [0u8; NAME_LEN];
    let n = text.len().min(NAME_LEN);
    out[..n].copy_from_slice(&text[..n]);
    out
}

fn name_text(field: &[u8; NAME_LEN]) -> Option<String> {
    FixedName::decode(field, "name").ok().map(|n| n.as_str().to_owned())
}

fn request(id: ClientId, code: RequestCode, payload_size: u32, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = id.0.to_vec();
    out.push(VERSION);
    out.extend_from_slice(&code.as_u16().to_le_bytes());
    out.extend_from_slice(&payload_size.to_le_bytes());
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out
}

/// What the client does after writing an operation's bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// Send the ping and collect the answers before its answer.
    Ping,
    /// Close the client's side and collect every answer left.
    Close,
}

/// The client end of one connection and what the script knows about it.
struct Conn {
    writer: WriteHalf<DuplexStream>,
    responses: mpsc::UnboundedReceiver<Response>,
    server: JoinHandle<()>,
    reader: JoinHandle<()>,
    ip: IpAddr,
    /// Every byte written since raw bytes first went out, and how far it was scanned for 1029
    /// requests.
    sent: Vec<u8>,
    scanned: usize,
    /// The id and AES key of this connection's last key exchange.
    own: Option<(ClientId, Option<AesKey>)>,
    registered_here: HashSet<ClientId>,
    /// Raw bytes went out: answers can no longer be matched to requests.
    raw: bool,
    open: bool,
}

/// What the script has seen, across connections.
#[derive(Default)]
struct Model {
    strict: bool,
    /// The id the next request carries.
    id: ClientId,
    registered: Vec<ClientId>,
    names: HashMap<ClientId, String>,
    registered_from: HashSet<(ClientId, IpAddr)>,
    exchanged: HashSet<(ClientId, IpAddr)>,
    /// The public key field on record per id, as far as the script set it.
    key_on_record: HashMap<ClientId, [u8; PUBLIC_KEY_LEN]>,
    aes_keys: HashMap<ClientId, AesKey>,
    /// (id hex, stored name) of every 1029 written so far, on any connection.
    confirmed: HashSet<(String, String)>,
    raw_used: bool,
    last_file: Option<[u8; NAME_LEN]>,
}

struct Script {
    server: Option<Server>,
    records: Arc<KeyTap>,
    base: tempfile::TempDir,
    root: PathBuf,
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
    conns: [Option<Conn>; 2],
    ips: [IpAddr; 2],
    current: usize,
    next_conn: u64,
    model: Model,
}

impl Script {
    fn new(config_byte: u8) -> Self {
        let base = scratch_dir();
        let storage = Storage::open(&base.path().join("storage")).expect("the storage directory");
        let mut config = Config::new(storage.root().to_owned(), PathBuf::from(":memory:"));
        config.idle_timeout = IDLE;
        config.disk_reserve = 0;
        config.strict_sessions = config_byte & 1 != 0;
        if config_byte & 2 != 0 {
            config.session_window = Duration::ZERO;
        }
        if config_byte & 4 != 0 {
            config.max_content = 4096;
        }
        let db = Db::open_in_memory().expect("an in-memory database");
        let records = Arc::new(KeyTap { inner: SqliteRecords::new(db), keys: Mutex::default() });
        let model = Model { strict: config.strict_sessions, ..Model::default() };
        let root = storage.root().to_owned();
        drop(storage);
        let server = Server::with_records(config, records.clone()).expect("the server");
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Script {
            server: Some(server),
            records,
            base,
            root,
            stop: watch::channel(false),
            conns: [None, None],
            ips: [localhost; 2],
            current: 0,
            next_conn: 1,
            model,
        }
    }

    /// Reads one operation and runs it.
    async fn step(&mut self, input: &mut Input<'_>) {
        match input.byte() % 12 {
            0 => self.register(input).await,
            1 => self.public_key(input).await,
            2 => self.reconnect(input).await,
            3 => self.send_file(input).await,
            4 => self.verdict(input, RequestCode::CrcOk).await,
            5 => self.verdict(input, RequestCode::CrcRetry).await,
            6 => self.verdict(input, RequestCode::CrcGiveUp).await,
            7 => self.raw_request(input).await,
            8 => self.raw_bytes(input).await,
            9 => self.use_id(input),
            10 => {
                let ip = if input.byte().is_multiple_of(2) {
                    Ipv4Addr::LOCALHOST
                } else {
                    Ipv4Addr::new(10, 0, 0, 2)
                };
                self.close(self.current).await;
                self.ips[self.current] = IpAddr::V4(ip);
            }
            _ => self.current ^= 1,
        }
    }

    fn client_name(&self, input: &mut Input<'_>) -> [u8; NAME_LEN] {
        match input.byte() % 4 {
            0 => field(self.model.names.get(&self.model.id).map_or(b"alice", |n| n.as_bytes())),
            1 | 2 => field(CLIENT_NAMES[usize::from(input.byte() % 2)].as_bytes()),
            _ => {
                let len = usize::from(input.byte());
                field(input.bytes(len))
            }
        }
    }

    fn file_name(&self, input: &mut Input<'_>) -> [u8; NAME_LEN] {
        match input.byte() % 9 {
            0 => self.model.last_file.unwrap_or_else(|| field(FILE_NAMES[0].as_bytes())),
            8 => {
                let len = usize::from(input.byte());
                field(input.bytes(len))
            }
            n => field(FILE_NAMES[usize::from(n) - 1].as_bytes()),
        }
    }

    fn use_id(&mut self, input: &mut Input<'_>) {
        let registered = &self.model.registered;
        self.model.id = match input.byte() % 4 {
            0 => registered.last().copied().unwrap_or_default(),
            1 => registered.first().copied().unwrap_or_default(),
            2 => ClientId::ZERO,
            _ => match ClientId(input.array()) {
                PING_ID => ClientId::ZERO,
                id => id,
            },
        };
    }

    async fn register(&mut self, input: &mut Input<'_>) {
        let name = self.client_name(input);
        let bytes = request(self.model.id, RequestCode::Register, NAME_LEN as u32, &[&name]);
        let answer = self.exchange(&bytes, After::Ping).await;
        let allowed = [
            ResponseCode::Registered,
            ResponseCode::RegistrationFailed,
            ResponseCode::GeneralError,
        ];
        expect(&answer, &allowed);
        if let (Some(Response::Registered { client_id }), Some(text)) = (&answer, name_text(&name))
        {
            self.model.names.insert(*client_id, text);
        }
    }

    async fn public_key(&mut self, input: &mut Input<'_>) {
        let name = self.client_name(input);
        let key = match input.byte() % 4 {
            0 => keys()[0],
            1 => keys()[1],
            2 => {
                let mut cut = keys()[0];
                cut[150..].fill(0);
                cut
            }
            _ => input.array(),
        };
        let id = self.model.id;
        let size = (NAME_LEN + PUBLIC_KEY_LEN) as u32;
        let bytes = request(id, RequestCode::SendPublicKey, size, &[&name, &key]);
        let answer = self.exchange(&bytes, After::Ping).await;
        expect(&answer, &[ResponseCode::PublicKeyAccepted, ResponseCode::GeneralError]);
        let Some(Response::PublicKeyAccepted { client_id, .. }) = answer else {
            return;
        };
        assert_eq!(client_id, id, "2102 carries the id of the request");
        let usable = PublicKey::from_field(&PublicKeyField(key)).is_ok();
        assert!(usable, "2102 answered a public key field that holds no usable key");
        if !self.model.raw_used {
            let ip = self.ips[self.current];
            let here =
                self.conns[self.current].as_ref().is_some_and(|c| c.registered_here.contains(&id));
            let may = here
                || (!self.model.strict && self.model.registered_from.contains(&(id, ip)))
                || self.model.key_on_record.get(&id) == Some(&key);
            assert!(may, "2102 for client {id}: not registered here and not its key on record");
        }
        self.model.key_on_record.insert(id, key);
    }

    async fn reconnect(&mut self, input: &mut Input<'_>) {
        let name = self.client_name(input);
        let id = self.model.id;
        let bytes = request(id, RequestCode::Reconnect, NAME_LEN as u32, &[&name]);
        let answer = self.exchange(&bytes, After::Ping).await;
        let allowed = [
            ResponseCode::ReconnectAccepted,
            ResponseCode::ReconnectDenied,
            ResponseCode::GeneralError,
        ];
        expect(&answer, &allowed);
        match answer {
            Some(Response::ReconnectAccepted { client_id, .. }) => {
                assert_eq!(client_id, id, "2105 carries the id of the request");
                if !self.model.raw_used {
                    let known = self.model.names.get(&id);
                    assert_eq!(
                        known,
                        name_text(&name).as_ref(),
                        "2105 for a name that is not {id}'s"
                    );
                }
            }
            Some(Response::ReconnectDenied { client_id }) => {
                assert_eq!(client_id, Some(id), "2106 carries the id of the request");
            }
            _ => {}
        }
    }

    async fn send_file(&mut self, input: &mut Input<'_>) {
        let name = self.file_name(input);
        let mode = input.byte() % 6;
        let len = usize::from(input.byte());
        let mut plain = input.bytes(len).to_vec();
        if mode == 5 {
            plain = plain.iter().chain(b"x").copied().cycle().take(LARGE).collect();
        }
        let id = self.model.id;
        let own_key = self.conn().await.own.filter(|(o, _)| *o == id).and_then(|(_, k)| k);
        let key = own_key.or_else(|| self.model.aes_keys.get(&id).copied()).unwrap_or_default();
        let mut content = encrypt_to_vec(&key, &plain);
        let (mut sizes, mut after) =
            ((content.len() as u32, content.len() as u32 + 259), After::Ping);
        match mode {
            1 => sizes.1 = 259,
            2 => {
                let blocks = usize::from(input.byte() % 8) + 1;
                content = input.bytes(blocks * 16).to_vec();
                content.resize(blocks * 16, 0);
                sizes = (content.len() as u32, content.len() as u32 + 259);
            }
            3 => {
                (sizes, after) = (
                    (u32::from_le_bytes(input.array()), u32::from_le_bytes(input.array())),
                    After::Close,
                );
                content.clear();
            }
            4 => {
                content.truncate(content.len() / 2);
                after = After::Close;
            }
            _ => {}
        }
        self.model.last_file = Some(name);
        let bytes =
            request(id, RequestCode::SendFile, sizes.1, &[&sizes.0.to_le_bytes(), &name, &content]);
        let answer = self.exchange(&bytes, after).await;
        expect(&answer, &[ResponseCode::FileReceived, ResponseCode::GeneralError]);
        let Some(Response::FileReceived { client_id, content_size, file_name, cksum }) = answer
        else {
            return;
        };
        assert!(storage_name(file_name.as_str()).is_ok(), "2103 for unstorable {file_name:?}");
        let sent = name_text(&name);
        assert_eq!(
            (client_id, content_size, Some(file_name.as_str())),
            (id, sizes.0, sent.as_deref()),
            "2103 echoes the request"
        );
        if own_key.is_some() && matches!(mode, 0 | 1 | 5) {
            assert_eq!(cksum, Cksum::of(&plain), "2103 has the cksum of the plaintext sent");
        }
    }

    async fn verdict(&mut self, input: &mut Input<'_>, code: RequestCode) {
        let name = self.file_name(input);
        let id = self.model.id;
        let stored = name_text(&name).and_then(|n| Some(storage_name(&n).ok()?.to_owned()));
        if let (RequestCode::CrcOk, Some(stored)) = (code, stored) {
            self.model.confirmed.insert((id.to_hex(), stored));
        }
        let bytes = request(id, code, NAME_LEN as u32, &[&name]);
        let answer = self.exchange(&bytes, After::Ping).await;
        let allowed: &[ResponseCode] = match code {
            RequestCode::CrcRetry => &[ResponseCode::GeneralError],
            _ => &[ResponseCode::Acknowledged, ResponseCode::GeneralError],
        };
        expect(&answer, allowed);
        if let Some(Response::Acknowledged { client_id }) = &answer {
            assert_eq!(*client_id, Some(id), "2104 carries the id of the request");
        }
        if code == RequestCode::CrcOk && matches!(answer, Some(Response::Acknowledged { .. })) {
            let text = name_text(&name).expect("2104 answered a 1029 with an invalid name");
            let stored = storage_name(&text).expect("2104 answered a 1029 with an unstorable name");
            let path = self.root.join(id.to_hex()).join(stored);
            assert!(path.is_file(), "2104 for {text:?} but {} is not there", path.display());
        }
    }

    async fn raw_request(&mut self, input: &mut Input<'_>) {
        let header: [u8; REQUEST_HEADER_LEN] = input.array();
        let size =
            u32::from_le_bytes(header[REQUEST_HEADER_LEN - 4..].try_into().expect("4")) as usize;
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(input.bytes(size.min(MAX_RAW_PAYLOAD)));
        let whole = size <= MAX_RAW_PAYLOAD;
        if whole {
            bytes.resize(REQUEST_HEADER_LEN + size, 0);
        }
        self.model.raw_used = true;
        self.conn().await.raw = true;
        self.exchange(&bytes, if whole { After::Ping } else { After::Close }).await;
    }

    async fn raw_bytes(&mut self, input: &mut Input<'_>) {
        let len = usize::from(input.byte());
        let bytes = input.bytes(len).to_vec();
        self.model.raw_used = true;
        self.conn().await.raw = true;
        self.exchange(&bytes, After::Close).await;
    }

    /// The current connection, opened if it is not.
    async fn conn(&mut self) -> &mut Conn {
        let slot = self.current;
        if !self.conns[slot].as_ref().is_some_and(|c| c.open) {
            self.close(slot).await;
            self.conns[slot] = Some(self.open(self.ips[slot]));
        }
        self.conns[slot].as_mut().expect("just opened")
    }

    fn open(&mut self, ip: IpAddr) -> Conn {
        let (client, server_end) = tokio::io::duplex(PIPE);
        let conn_id = self.next_conn;
        self.next_conn += 1;
        let peer = SocketAddr::new(ip, 40_000 + conn_id as u16);
        let server = self.server.as_ref().expect("the server runs until the end");
        let server = tokio::spawn(server.serve_connection(server_end, peer, self.stop.1.clone()));
        let (read, writer) = tokio::io::split(client);
        let (tx, responses) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_responses(read, tx));
        Conn {
            writer,
            responses,
            server,
            reader,
            ip,
            sent: Vec::new(),
            scanned: 0,
            own: None,
            registered_here: HashSet::new(),
            raw: false,
            open: true,
        }
    }

    /// Writes `bytes` on the current connection and returns the answer to them, if they got
    /// one that can be told apart: after raw bytes (which may even mimic the ping) answers
    /// are still checked as they arrive, but no longer attributed to requests.
    async fn exchange(&mut self, bytes: &[u8], after: After) -> Option<Response> {
        let slot = self.current;
        self.conn().await;
        let mut conn = self.conns[slot].take().expect("open");
        let mut out = bytes.to_vec();
        if after == After::Ping {
            out.extend(request(
                PING_ID,
                RequestCode::Reconnect,
                NAME_LEN as u32,
                &[&field(PING_NAME)],
            ));
        }
        if conn.raw {
            conn.sent.extend_from_slice(&out);
            self.model.scan_confirms(&mut conn);
        }
        // A write fails only when the server has closed; its answers are still to be read.
        if conn.writer.write_all(&out).await.is_ok() && after == After::Close {
            let _ = conn.writer.shutdown().await;
        }
        let ping_answer = Response::ReconnectDenied { client_id: Some(PING_ID) };
        let mut answers = Vec::new();
        conn.open = false;
        while let Some(response) = conn.responses.recv().await {
            if after == After::Ping && response == ping_answer {
                conn.open = true;
                break;
            }
            self.model.observe(&mut conn, &response, &self.records);
            answers.push(response);
        }
        let raw = conn.raw;
        let open = conn.open;
        self.conns[slot] = Some(conn);
        if !open {
            self.close(slot).await;
        }
        assert!(
            raw || answers.len() <= 1,
            "one request got {} answers: {answers:?}",
            answers.len()
        );
        answers.into_iter().next().filter(|_| !raw)
    }

    /// Closes the client side of a connection, reads what is left, and waits for the
    /// server's task to end.
    async fn close(&mut self, slot: usize) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        let _ = conn.writer.shutdown().await;
        while let Some(response) = conn.responses.recv().await {
            self.model.observe(&mut conn, &response, &self.records);
        }
        join(conn.server).await;
        join(conn.reader).await;
    }

    /// Nothing outside the storage directory, only `<id hex>/<name>` files in it, and no
    /// final file without a 1029 that named it.
    fn check_disk(&self) {
        for entry in read_dir(self.base.path()) {
            assert_eq!(
                entry.file_name(),
                "storage",
                "a file appeared outside the storage directory"
            );
        }
        for (client, name) in stored_files(&self.root) {
            if !name.starts_with(TEMP_PREFIX) {
                assert!(
                    self.model.confirmed.contains(&(client.clone(), name.clone())),
                    "{client}/{name} was stored, but no 1029 ever named it"
                );
            }
        }
    }

    /// Closes everything, then compares the database with the disk and looks for leftovers.
    async fn finish(mut self) {
        self.close(0).await;
        self.close(1).await;
        self.check_disk();
        let files = self.records.files().await.expect("listing files");
        let verified: Vec<_> = files.iter().filter(|f| f.verified).collect();
        for file in &verified {
            let stored = storage_name(&file.file_name).expect("a recorded name is storable");
            assert_eq!(file.path_name, format!("{}/{stored}", file.client_id.to_hex()));
            let bytes = std::fs::read(self.root.join(&file.path_name))
                .unwrap_or_else(|e| panic!("{file:?} is recorded as verified, but: {e}"));
            assert_eq!(file.size, Some(bytes.len() as u64), "size of {}", file.path_name);
            assert_eq!(file.cksum, Some(Cksum::of(&bytes)), "cksum of {}", file.path_name);
        }
        for (client, name) in stored_files(&self.root) {
            let path = format!("{client}/{name}");
            assert!(
                name.starts_with(TEMP_PREFIX) || verified.iter().any(|f| f.path_name == path),
                "{path} is stored but not recorded as verified"
            );
        }
        let Script { server, records, root, base, .. } = self;
        drop(server);
        assert_eq!(
            Arc::strong_count(&records),
            1,
            "every connection has let go of the server state"
        );
        drop(records);
        // Replaced copies and abandoned uploads are deleted on the blocking pool just after
        // their answer, so give those deletions a moment to finish.
        let temporary = || -> Vec<_> {
            stored_files(&root).into_iter().filter(|(_, n)| n.starts_with(TEMP_PREFIX)).collect()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !temporary().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let left = temporary();
        assert!(left.is_empty(), "temporary files outlived the server: {left:?}");
        drop(base);
    }
}

impl Model {
    /// Notes every 1029 that the bytes written since the first raw ones could hold, at any
    /// offset: the server may frame them differently from the script. (Before them, every
    /// request was answered, so the server's framing is the script's.)
    fn scan_confirms(&mut self, conn: &mut Conn) {
        const SPAN: usize = REQUEST_HEADER_LEN + NAME_LEN;
        let code = RequestCode::CrcOk.as_u16().to_le_bytes();
        while conn.scanned + SPAN <= conn.sent.len() {
            let window = &conn.sent[conn.scanned..conn.scanned + SPAN];
            conn.scanned += 1;
            if window[17..19] != code {
                continue;
            }
            let name = name_text(window[REQUEST_HEADER_LEN..].try_into().expect("255"));
            if let Some(stored) = name.as_deref().and_then(|n| storage_name(n).ok()) {
                let id = ClientId(window[..16].try_into().expect("16"));
                self.confirmed.insert((id.to_hex(), stored.to_owned()));
            }
        }
    }

    /// Learns from an answer and checks the ones that grant or use a session.
    fn observe(&mut self, conn: &mut Conn, response: &Response, records: &KeyTap) {
        match response {
            Response::Registered { client_id } => {
                conn.registered_here.insert(*client_id);
                self.registered_from.insert((*client_id, conn.ip));
                self.registered.push(*client_id);
                self.id = *client_id;
            }
            Response::PublicKeyAccepted { client_id, .. }
            | Response::ReconnectAccepted { client_id, .. } => {
                // The key the server just recorded is the one it sent.
                let aes = records.key_of(*client_id);
                conn.own = Some((*client_id, aes));
                self.exchanged.insert((*client_id, conn.ip));
                match aes {
                    Some(aes) => self.aes_keys.insert(*client_id, aes),
                    None => self.aes_keys.remove(client_id),
                };
            }
            Response::FileReceived { client_id, .. } => self.check_granted(conn, *client_id, 2103),
            Response::Acknowledged { client_id } => {
                let id = client_id.expect("securexfer's 2104 carries the client id");
                self.check_granted(conn, id, 2104);
            }
            _ => {}
        }
    }

    fn check_granted(&self, conn: &Conn, id: ClientId, code: u16) {
        let own = conn.own.is_some_and(|(o, _)| o == id);
        let here = !self.strict && self.exchanged.contains(&(id, conn.ip));
        assert!(
            own || here,
            "{code} for client {id} on a connection from {} without its key exchange",
            conn.ip
        );
    }
}

/// Checks an answer's code.
fn expect(answer: &Option<Response>, allowed: &[ResponseCode]) {
    if let Some(answer) = answer {
        assert!(allowed.contains(&answer.code()), "answer {answer:?}, expected one of {allowed:?}");
    }
}

/// Decodes everything the server sends; anything but canonical responses is a failure.
async fn read_responses(mut read: ReadHalf<DuplexStream>, tx: mpsc::UnboundedSender<Response>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = read.read(&mut chunk).await.expect("reading a duplex pipe");
        if n == 0 {
            assert!(buf.is_empty(), "the server stopped in the middle of a response: {buf:?}");
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match decode_response(&buf) {
                Ok((_, response, len)) => {
                    assert_eq!(
                        response.encode(Version::V3),
                        buf[..len],
                        "the server sends canonical responses"
                    );
                    buf.drain(..len);
                    let _ = tx.send(response);
                }
                Err(DecodeError::Incomplete { .. }) => break,
                Err(e) => panic!("the server sent bytes that are no response: {e}"),
            }
        }
    }
}

/// Waits for a task and re-raises its panic here.
async fn join(task: JoinHandle<()>) {
    if let Err(e) = task.await
        && e.is_panic()
    {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// A fresh directory for one run, on a memory file system when there is one: creating and
/// deleting directories and fsyncing uploads on a disk would dominate the run.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    dir.expect("a temporary directory")
}

fn read_dir(path: &Path) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(path)
        .and_then(Iterator::collect)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every file in the storage directory as (client directory, name), checking the layout.
fn stored_files(root: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in read_dir(root) {
        let client = dir.file_name().to_string_lossy().into_owned();
        if client == securexfer::store::VERSIONS_DIR {
            continue; // earlier versions of replaced files, not stored files
        }
        let is_dir = dir.file_type().is_ok_and(|t| t.is_dir());
        assert!(
            is_dir && ClientId::parse(&client).is_some_and(|id| id.to_hex() == client),
            "{client:?} in storage"
        );
        for file in read_dir(&dir.path()) {
            let name = file.file_name().to_string_lossy().into_owned();
            assert!(
                file.file_type().is_ok_and(|t| t.is_file()),
                "{client}/{name:?} is not a plain file"
            );
            out.push((client.clone(), name));
        }
    }
    out
}

/// The server's records (SQLite in memory), noting each AES key the server records so
/// that the script can encrypt with it.
struct KeyTap {
    inner: SqliteRecords,
    keys: Mutex<HashMap<ClientId, AesKey>>,
}

impl KeyTap {
    /// The AES key last recorded for `id`.
    fn key_of(&self, id: ClientId) -> Option<AesKey> {
        self.keys.lock().expect("keys").get(&id).copied()
    }
}

impl Records for KeyTap {
    fn register(&self, id: ClientId, name: String, ip: IpAddr) -> RecordsFuture<'_, bool> {
        self.inner.register(id, name, ip)
    }
    fn client(&self, id: ClientId) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.inner.client(id)
    }
    fn client_named(&self, name: String) -> RecordsFuture<'_, Option<ClientRecord>> {
        self.inner.client_named(name)
    }
    fn usual_address(&self, id: ClientId) -> RecordsFuture<'_, Option<IpAddr>> {
        self.inner.usual_address(id)
    }
    fn set_public_key(&self, id: ClientId, field: Vec<u8>) -> RecordsFuture<'_, ()> {
        self.inner.set_public_key(id, field)
    }
    fn set_aes_key(&self, id: ClientId, key: [u8; 16]) -> RecordsFuture<'_, ()> {
        self.keys.lock().expect("keys").insert(id, key);
        self.inner.set_aes_key(id, key)
    }
    fn touch(&self, id: ClientId) -> RecordsFuture<'_, bool> {
        self.inner.touch(id)
    }
    fn forget_keyless(&self, age: Duration) -> RecordsFuture<'_, usize> {
        self.inner.forget_keyless(age)
    }
    fn has_verified_at(&self, id: ClientId, path_name: String) -> RecordsFuture<'_, bool> {
        self.inner.has_verified_at(id, path_name)
    }
    fn begin_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.inner.begin_commit(intent)
    }
    fn finish_commit(
        &self,
        intent: CommitIntent,
        ip: Option<IpAddr>,
        keep: usize,
    ) -> RecordsFuture<'_, Vec<String>> {
        self.inner.finish_commit(intent, ip, keep)
    }
    fn abandon_commit(&self, intent: CommitIntent) -> RecordsFuture<'_, ()> {
        self.inner.abandon_commit(intent)
    }
    fn record_given_up(
        &self,
        id: ClientId,
        file_name: String,
        path_name: String,
    ) -> RecordsFuture<'_, ()> {
        self.inner.record_given_up(id, file_name, path_name)
    }
    fn files(&self) -> RecordsFuture<'_, Vec<FileRecord>> {
        self.inner.files()
    }
    fn commit_intents(&self) -> RecordsFuture<'_, Vec<CommitIntent>> {
        self.inner.commit_intents()
    }
    fn versions(&self) -> RecordsFuture<'_, Vec<securexfer::store::VersionRecord>> {
        self.inner.versions()
    }
}
