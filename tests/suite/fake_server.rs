//! A scripted fake server for the client tests: it speaks protocol 3 as the script says,
//! including the habits of the existing servers (short reads, closing after every reply,
//! the CRC-32 of the ciphertext, any id on reconnect), and records what it received.

use securexfer::crypto::{AesKey, PublicKey};
use securexfer::protocol::{
    ClientId, FILE_HEADER_LEN, FileHeader, REQUEST_HEADER_LEN, Request, RequestCode, RequestHeader,
    Response, Version, decode_request,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the fake server does to a request, instead of answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Answer 2107 (and keep the connection).
    Error,
    /// Close the connection without an answer.
    Drop,
    /// Never answer; keep reading until the client goes.
    Silent,
}

/// How the fake server behaves. It decrypts nothing: it answers every 1028 with the cksum
/// the test computed (`cksum`), or a wrong one for the first `wrong_cksums` files.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// The version byte of every response.
    pub(crate) version: u8,
    /// The right cksum of the file the client sends.
    pub(crate) cksum: u32,
    /// How many 2103s carry a wrong cksum.
    pub(crate) wrong_cksums: u32,
    /// `(code, n, fault)`: the first `n` requests with `code` get `fault`.
    pub(crate) faults: Vec<(RequestCode, u32, Fault)>,
    /// Close the connection after every reply (as the `dor` server does).
    pub(crate) close_after_reply: bool,
    /// With `close_after_reply`: close only a moment after the reply, without reading
    /// what comes meanwhile, as the real `dor` server does (the client's next request can
    /// cross the close).
    pub(crate) close_late: bool,
    /// 2104 and 2106 with an empty payload (as the `dor` server does).
    pub(crate) empty_acks: bool,
    /// Answer 1030 with 2104 (as the `tomer` server does).
    pub(crate) ack_crc_retry: bool,
    /// Answer 1027 with 2106 even for a known client.
    pub(crate) deny_reconnect: bool,
    /// Stop reading in the middle of every 1028 (after its file header), so the client's
    /// writes block.
    pub(crate) stall_files: bool,
    /// Answer a 1029 with 2107 unless a 1028 came on the same connection (as securexfer
    /// serve does: an unconfirmed upload dies with its connection).
    pub(crate) uploads_die_with_connection: bool,
    /// Close the connection instead of answering the first `n` 1029s that come on the
    /// connection that carried their file.
    pub(crate) drop_confirms_after_files: u32,
    /// The right cksum per file name, for runs of several files (`cksum` otherwise).
    pub(crate) cksums: HashMap<String, u32>,
    /// Read requests as the `b0rik` server does: `recv(1024)` until it holds the declared
    /// payload size *counting the 23-byte header*, so a read ending in the last 23 bytes
    /// of a request leaves it short (answered 2107, the rest read as the next header).
    pub(crate) short_reads: bool,
    /// Answer 1028 with the zlib CRC-32 of the ciphertext (as the `dor` server does).
    pub(crate) crc32_of_ciphertext: bool,
    /// Read a 1028's content slowly (64 KiB every 5 ms), so a test can act mid-upload.
    pub(crate) slow_files: bool,
    /// Accept a 1027 by name alone, echoing the header's id, but refuse file requests
    /// whose id is not the one it gave (as the `tomer` server does).
    pub(crate) any_id_on_reconnect: bool,
}

impl Script {
    pub(crate) fn new(cksum: u32) -> Self {
        Script {
            version: 3,
            cksum,
            wrong_cksums: 0,
            faults: Vec::new(),
            close_after_reply: false,
            close_late: false,
            empty_acks: false,
            ack_crc_retry: false,
            deny_reconnect: false,
            stall_files: false,
            uploads_die_with_connection: false,
            drop_confirms_after_files: 0,
            cksums: HashMap::new(),
            short_reads: false,
            crc32_of_ciphertext: false,
            slow_files: false,
            any_id_on_reconnect: false,
        }
    }
}

/// The id the fake gives (not a palindrome, so a byte-reversed copy differs).
pub(crate) const FAKE_ID: ClientId = ClientId([
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
]);

#[derive(Default)]
pub(crate) struct FakeState {
    /// Every request received: its code and the name it carries (client or file name).
    pub(crate) log: Vec<(u16, String)>,
    /// The client id in each request's header.
    pub(crate) ids: Vec<ClientId>,
    pub(crate) seen: HashMap<RequestCode, u32>,
    pub(crate) answered_files: u32,
    pub(crate) dropped_confirms: u32,
    pub(crate) public_key: Option<PublicKey>,
}

/// A fake server on 127.0.0.1, one thread per connection, running `script`.
pub(crate) struct Fake {
    pub(crate) addr: String,
    pub(crate) state: Arc<Mutex<FakeState>>,
}

impl Fake {
    pub(crate) fn start(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let shared = Arc::clone(&state);
        let script = Arc::new(script);
        // Detached: it ends with the test binary.
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, script) = (Arc::clone(&shared), Arc::clone(&script));
                thread::spawn(move || {
                    let _ = serve_connection(stream, &script, &state);
                });
            }
        });
        Fake { addr, state }
    }

    /// The request codes received, in order.
    pub(crate) fn codes(&self) -> Vec<u16> {
        self.state.lock().unwrap().log.iter().map(|(c, _)| *c).collect()
    }

    /// The names carried by the file requests (1028-1031).
    pub(crate) fn file_names(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state.log.iter().filter(|(c, _)| *c >= 1028).map(|(_, n)| n.clone()).collect()
    }
}

/// One request as the fake read it: the header's id, the request, and for a 1028 the zlib
/// CRC-32 of its content.
pub(crate) type Received = (ClientId, Request, u32);

/// Reads one request; `None` at a clean end of the connection. The content of a 1028 is
/// read and thrown away (its CRC-32 kept).
pub(crate) fn read_request(
    stream: &mut TcpStream,
    script: &Script,
) -> io::Result<Option<Received>> {
    let stall_files = script.stall_files;
    let mut header = [0u8; REQUEST_HEADER_LEN];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let header = RequestHeader::decode(&header).map_err(io::Error::other)?;
    if header.code == RequestCode::SendFile {
        let mut file = [0u8; FILE_HEADER_LEN];
        stream.read_exact(&mut file)?;
        let file = FileHeader::decode(&file).map_err(io::Error::other)?;
        file.check_sizes(header.payload_size, u32::MAX).map_err(io::Error::other)?;
        if stall_files {
            return Ok(Some((header.client_id, Request::SendFile(file), 0)));
        }
        let mut crc = securexfer::crypto::ZlibCrc32::default();
        let mut left = u64::from(file.content_size);
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = stream.read(&mut buf[..left.min(64 * 1024) as usize])?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            crc.update(&buf[..n]);
            left -= n as u64;
            if script.slow_files {
                thread::sleep(Duration::from_millis(5));
            }
        }
        return Ok(Some((header.client_id, Request::SendFile(file), crc.finish())));
    }
    let mut payload = vec![0u8; header.payload_size as usize];
    stream.read_exact(&mut payload)?;
    let request = Request::decode_payload(header.code, &payload).map_err(io::Error::other)?;
    Ok(Some((header.client_id, request, 0)))
}

/// What the `b0rik` server's receive loop makes of the next request: `Ok(None)` at the
/// end of the connection, `Err` for bytes that are not a request, and `Some(None)` for a
/// request it holds short (it answers 2107). Bytes read past the request stay in `carry`.
pub(crate) fn read_request_short(
    stream: &mut TcpStream,
    carry: &mut Vec<u8>,
) -> io::Result<Option<Option<Received>>> {
    let mut buf = std::mem::take(carry);
    let mut chunk = [0u8; 1024];
    let mut recv = |buf: &mut Vec<u8>| -> io::Result<bool> {
        let n = stream.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    while buf.len() < REQUEST_HEADER_LEN {
        if !recv(&mut buf)? {
            return Ok(None);
        }
    }
    let head: &[u8; REQUEST_HEADER_LEN] = buf[..REQUEST_HEADER_LEN].try_into().expect("sliced");
    let header = RequestHeader::decode(head).map_err(io::Error::other)?;
    // The bug: the header's own bytes count towards the payload.
    while buf.len() < header.payload_size as usize {
        if !recv(&mut buf)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    let whole = REQUEST_HEADER_LEN + header.payload_size as usize;
    if buf.len() < whole {
        return Ok(Some(None));
    }
    *carry = buf.split_off(whole);
    let decoded = decode_request(&buf, u32::MAX).map_err(|e| io::Error::other(e.to_string()))?;
    let crc = securexfer::crypto::ZlibCrc32::of(&buf[decoded.content]);
    Ok(Some(Some((header.client_id, decoded.request, crc))))
}

pub(crate) fn carried_name(request: &Request) -> String {
    match request {
        Request::Register { name }
        | Request::SendPublicKey { name, .. }
        | Request::Reconnect { name } => name.as_str().to_owned(),
        Request::SendFile(file) => file.file_name.as_str().to_owned(),
        Request::CrcOk { file_name }
        | Request::CrcRetry { file_name }
        | Request::CrcGiveUp { file_name } => file_name.as_str().to_owned(),
    }
}

pub(crate) fn serve_connection(
    mut stream: TcpStream,
    script: &Script,
    state: &Mutex<FakeState>,
) -> io::Result<()> {
    let mut received_file = false;
    let mut carry = Vec::new();
    loop {
        let next = if script.short_reads {
            match read_request_short(&mut stream, &mut carry)? {
                None => break,
                Some(Some(request)) => request,
                Some(None) => {
                    state.lock().unwrap().log.push((2107, "short request".into()));
                    stream.write_all(&Response::GeneralError.encode(Version::V3))?;
                    continue;
                }
            }
        } else {
            match read_request(&mut stream, script)? {
                None => break,
                Some(request) => request,
            }
        };
        let (id, request, crc) = next;
        let code = request.code();
        received_file |= code == RequestCode::SendFile;
        let fault = {
            let mut state = state.lock().unwrap();
            state.log.push((code.as_u16(), carried_name(&request)));
            state.ids.push(id);
            let n = state.seen.entry(code).or_default();
            *n += 1;
            let n = *n;
            script.faults.iter().find(|(c, times, _)| *c == code && n <= *times).map(|(.., f)| *f)
        };
        if script.stall_files && code == RequestCode::SendFile {
            // Holds the connection without reading; the test binary ends this thread.
            thread::sleep(Duration::from_secs(120));
            return Ok(());
        }
        if code == RequestCode::CrcOk && received_file {
            let mut state = state.lock().unwrap();
            if state.dropped_confirms < script.drop_confirms_after_files {
                state.dropped_confirms += 1;
                return Ok(());
            }
        }
        let answer = match fault {
            Some(Fault::Error) => Some(Response::GeneralError),
            Some(Fault::Drop) => return Ok(()),
            Some(Fault::Silent) => {
                io::copy(&mut stream, &mut io::sink())?;
                return Ok(());
            }
            None if code == RequestCode::CrcOk
                && script.uploads_die_with_connection
                && !received_file =>
            {
                Some(Response::GeneralError)
            }
            None if script.any_id_on_reconnect
                && code == RequestCode::SendFile
                && id != FAKE_ID =>
            {
                Some(Response::GeneralError)
            }
            None => answer(id, &request, crc, script, state),
        };
        if let Some(response) = answer {
            let mut bytes = response.encode(Version::V3);
            bytes[0] = script.version;
            if script.close_after_reply && script.close_late {
                stream.write_all(&bytes)?;
                thread::sleep(Duration::from_millis(40));
                return stream.shutdown(std::net::Shutdown::Both);
            }
            if script.close_after_reply {
                return reply_and_close(stream, &bytes);
            }
            stream.write_all(&bytes)?;
        }
    }
    Ok(())
}

/// Sends the last reply of a connection and closes it so that the client sees the reply and
/// the end of the connection together, as it does from a server that closes right away.
/// (On Linux the reply is corked with `MSG_MORE` and leaves in one segment with the FIN;
/// elsewhere it is written and the connection closed at once.)
pub(crate) fn reply_and_close(mut stream: TcpStream, bytes: &[u8]) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: send(2) on a socket we own, from a live buffer of the given length.
        let sent = unsafe {
            libc::send(stream.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), libc::MSG_MORE)
        };
        if sent == bytes.len() as isize {
            return stream.shutdown(std::net::Shutdown::Both);
        }
        let done = sent.max(0) as usize;
        stream.write_all(&bytes[done..])?;
    }
    #[cfg(not(target_os = "linux"))]
    stream.write_all(bytes)?;
    stream.shutdown(std::net::Shutdown::Both)
}

pub(crate) fn answer(
    id: ClientId,
    request: &Request,
    ciphertext_crc: u32,
    script: &Script,
    state: &Mutex<FakeState>,
) -> Option<Response> {
    let mut state = state.lock().unwrap();
    let ack_id = (!script.empty_acks).then_some(FAKE_ID);
    Some(match request {
        Request::Register { .. } => Response::Registered { client_id: FAKE_ID },
        Request::SendPublicKey { public_key, .. } => {
            let key = PublicKey::from_field(public_key).expect("the client's public key parses");
            let encrypted_key = key.encrypt_aes_key(&fresh_aes_key()).expect("encrypts");
            state.public_key = Some(key);
            Response::PublicKeyAccepted { client_id: FAKE_ID, encrypted_key }
        }
        Request::Reconnect { .. } => match &state.public_key {
            Some(key) if !script.deny_reconnect => Response::ReconnectAccepted {
                client_id: if script.any_id_on_reconnect { id } else { FAKE_ID },
                encrypted_key: key.encrypt_aes_key(&fresh_aes_key()).expect("encrypts"),
            },
            _ => Response::ReconnectDenied { client_id: ack_id },
        },
        Request::SendFile(file) => {
            state.answered_files += 1;
            let wrong = state.answered_files <= script.wrong_cksums;
            let right = if script.crc32_of_ciphertext {
                ciphertext_crc
            } else {
                script.cksums.get(file.file_name.as_str()).copied().unwrap_or(script.cksum)
            };
            Response::FileReceived {
                client_id: FAKE_ID,
                content_size: file.content_size,
                file_name: file.file_name.clone(),
                cksum: if wrong { !right } else { right },
            }
        }
        Request::CrcRetry { .. } if !script.ack_crc_retry => return None,
        Request::CrcOk { .. } | Request::CrcRetry { .. } | Request::CrcGiveUp { .. } => {
            Response::Acknowledged { client_id: ack_id }
        }
    })
}

pub(crate) fn fresh_aes_key() -> AesKey {
    securexfer::crypto::random_bytes()
}
