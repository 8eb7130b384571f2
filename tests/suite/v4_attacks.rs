//! Protocol 4 against an attacker in the middle (issue 18): a proxy on loopback between the
//! real client and the real server, which first forwards honestly (so the client learns
//! the server's key), then turns: it presents another server's key, answers as a
//! protocol-3 server, replays a recorded TLS stream, or cuts a stream short. None of it may
//! get a client to speak to the wrong server, to fall back to protocol 3, or the server to
//! record a file that did not arrive whole from its client.

use crate::common::{self, Server};
use crate::fake_server::{Fake, Script as FakeScript};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// What the proxy does with the next connection.
#[derive(Clone)]
pub(crate) enum Mode {
    /// Both ways, byte for byte, to this address.
    Forward(String),
    /// As `Forward`, keeping a copy of what the client sent.
    Record(String, Arc<Mutex<Vec<u8>>>),
    /// As `Forward` for this many bytes from the client, then both sides are closed.
    Cut(String, usize),
}

/// A TCP proxy on 127.0.0.1, a thread per connection; stops when dropped.
pub(crate) struct Proxy {
    pub(crate) addr: String,
    mode: Arc<Mutex<Mode>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub(crate) fn start(mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mode = Arc::new(Mutex::new(mode));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (Arc::clone(&mode), Arc::clone(&stop));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let mode = m.lock().unwrap().clone();
                std::thread::spawn(move || relay(client, mode));
            }
        });
        Proxy { addr, mode, stop }
    }

    pub(crate) fn switch(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn relay(client: TcpStream, mode: Mode) {
    let (target, record, cut) = match mode {
        Mode::Forward(t) => (t, None, usize::MAX),
        Mode::Record(t, copy) => (t, Some(copy), usize::MAX),
        Mode::Cut(t, n) => (t, None, n),
    };
    let Ok(server) = TcpStream::connect(&target) else { return };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let back = std::thread::spawn(move || pump(s2, c2, None, usize::MAX));
    pump(client.try_clone().unwrap(), server.try_clone().unwrap(), record, cut);
    // A cut closes both sides, the client's first: the server sees its stream end only
    // once nothing it answers can reach the client any more, as when a network fails
    // (closing the server's side first let its ERROR about the cut through, now and then).
    // Otherwise the answers drain first.
    if cut != usize::MAX {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    let _ = back.join();
}

/// Copies `from` to `to` until `from` ends or `limit` bytes have gone; the caller ends
/// the stream (after a cut, `to` must not see an end before the other side is closed).
fn pump(mut from: TcpStream, mut to: TcpStream, record: Option<Arc<Mutex<Vec<u8>>>>, limit: usize) {
    let mut buf = vec![0u8; 64 << 10];
    let mut sent = 0;
    while sent < limit {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - sent),
        };
        if let Some(copy) = &record {
            copy.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    if limit == usize::MAX {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// The real client binary in a home of its own.
struct Client {
    home: tempfile::TempDir,
}

impl Client {
    fn new() -> Client {
        Client { home: tempfile::tempdir().unwrap() }
    }

    fn file(&self, name: &str, content: &[u8]) {
        std::fs::write(self.home.path().join(name), content).unwrap();
    }

    fn run(&self, args: &[&str]) -> Output {
        common::command()
            .env_remove("SECUREXFER_PROTOCOL")
            .env("XDG_CONFIG_HOME", self.home.path().join("config"))
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .args(args)
            .args(["--connect-timeout", "5", "--timeout", "10"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `db inspect --json` of a server's records.
fn records(server: &Server) -> serde_json::Value {
    let out = common::run_in(
        &server.dir,
        &["db", "inspect", "--db", "server.db", "--storage", "storage", "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The file records' (name, generation, verified) of a server.
fn files(server: &Server) -> Vec<(String, u64, bool)> {
    let doc = records(server);
    doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["file_name"].as_str().unwrap().to_owned(),
                f["generation"].as_u64().unwrap_or(0),
                f["verified"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Temporary upload files anywhere under the storage directory.
fn parts(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(parts(&path));
        } else if entry.file_name().to_string_lossy().starts_with(".securexfer-part-") {
            found.push(path.display().to_string());
        }
    }
    found
}

/// A client registered through the proxy, forwarding honestly to `server`, which has
/// sent one file and so trusts the server's key for the proxy's address.
fn client_that_knows(server: &Server, proxy: &Proxy) -> Client {
    let client = Client::new();
    let out = client.run(&["register", "--server", &proxy.addr, "--name", "victim"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    client.file("first.txt", b"through an honest proxy");
    let out = client.run(&["send", "first.txt", "--server", &proxy.addr]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(files(server).iter().any(|(name, _, verified)| name == "first.txt" && *verified));
    client
}

#[test]
fn a_proxy_presenting_another_servers_key_is_refused_and_learns_nothing() {
    let real = Server::start(&[]);
    let proxy = Proxy::start(Mode::Forward(real.address()));
    let client = client_that_knows(&real, &proxy);
    // The attacker runs a server of its own (its own key) and sends the client there.
    let attacker = Server::start(&[]);
    proxy.switch(Mode::Forward(attacker.address()));
    client.file("secret.txt", b"for the real server only");
    let out = client.run(&["send", "secret.txt", "--server", &proxy.addr]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("WARNING: THE KEY OF"), "{}", text(&out.stderr));
    // The attacker's server saw a handshake and nothing else: no client, no file.
    let doc = records(&attacker);
    assert_eq!(doc["clients"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(doc["files"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(files(&real).len(), 1, "only the file sent through the honest proxy");
}

#[test]
fn a_proxy_answering_as_a_protocol_3_server_gets_no_protocol_3_from_a_client_that_saw_4() {
    let real = Server::start(&[]);
    let proxy = Proxy::start(Mode::Forward(real.address()));
    let client = client_that_knows(&real, &proxy);
    let fake = Fake::start(FakeScript::new(0));
    proxy.switch(Mode::Forward(fake.addr.clone()));
    client.file("secret.txt", b"not in the clear");
    for extra in [&[][..], &["--protocol", "auto"][..]] {
        let out =
            client.run(&[&["send", "secret.txt", "--server", &proxy.addr][..], extra].concat());
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    }
    let out = client.run(&["send", "secret.txt", "--server", &proxy.addr, "--protocol", "3"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let codes = fake.codes();
    assert!(codes.iter().all(|c| ![1025, 1026, 1027, 1028, 1029].contains(c)), "{codes:?}");
}

#[test]
fn a_replayed_tls_stream_stores_nothing_again() {
    let real = Server::start(&[]);
    let proxy = Proxy::start(Mode::Forward(real.address()));
    let client = client_that_knows(&real, &proxy);
    let copy = Arc::new(Mutex::new(Vec::new()));
    proxy.switch(Mode::Record(real.address(), Arc::clone(&copy)));
    client.file("once.bin", &common::random_bytes(300_000, 51));
    let out = client.run(&["send", "once.bin", "--server", &proxy.addr]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let before = files(&real);
    let recorded = copy.lock().unwrap().clone();
    assert!(recorded.len() > 300_000, "the upload went through the proxy");
    // The attacker sends the client's bytes again, on a connection of its own.
    let mut replay = TcpStream::connect(real.address()).unwrap();
    replay.set_read_timeout(Some(WAIT)).unwrap();
    let _ = replay.write_all(&recorded);
    let mut answer = Vec::new();
    let _ = replay.read_to_end(&mut answer);
    real.wait_for_log("TLS handshake failed");
    assert_eq!(files(&real), before, "the replay changed the records");
    let doc = records(&real);
    assert_eq!(doc["versions"].as_array().unwrap().len(), 0, "{doc}");
}

#[test]
fn a_stream_cut_short_leaves_no_record_and_no_temporary_file() {
    // Nothing kept for resuming: what the cut left goes at once (with the default window
    // it is kept as an unfinished upload, never as a file: tests/suite/v4_resume.rs).
    let real = Server::start(&["--resume-window", "0"]);
    let proxy = Proxy::start(Mode::Forward(real.address()));
    let client = client_that_knows(&real, &proxy);
    // Half a 1 MiB file (and the handshake) gets through; then both sides are closed.
    proxy.switch(Mode::Cut(real.address(), 600_000));
    client.file("cut.bin", &common::random_bytes(1 << 20, 52));
    let out = client.run(&["send", "cut.bin", "--server", &proxy.addr]);
    // Each message carries the server's log: this test runs among many on a loaded
    // machine, and what the server saw of the cut is what tells a failure's cause.
    let told = |out: &std::process::Output| {
        format!("client:\n{}\nserver:\n{}", text(&out.stderr), real.log())
    };
    assert_eq!(out.status.code(), Some(3), "{}", told(&out));
    let names: Vec<String> = files(&real).into_iter().map(|(name, _, _)| name).collect();
    assert_eq!(names, ["first.txt"], "nothing of cut.bin is recorded: {}", told(&out));
    let start = Instant::now();
    while !parts(&real.storage()).is_empty() {
        let left = parts(&real.storage());
        assert!(start.elapsed() < WAIT, "left behind: {left:?}: {}", told(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The same send through an honest proxy then stores it whole.
    proxy.switch(Mode::Forward(real.address()));
    let out = client.run(&["send", "cut.bin", "--server", &proxy.addr]);
    assert_eq!(out.status.code(), Some(0), "{}", told(&out));
    let stored = files(&real);
    let whole = stored.iter().any(|(name, _, verified)| name == "cut.bin" && *verified);
    assert!(whole, "{stored:?}: {}", told(&out));
}
