//! The client (`securexfer register` and `securexfer send`) as a user runs it: the real
//! binary, in a temporary working directory with its own config directory.
//!
//! Four groups of tests:
//! 1. against `securexfer serve`: registration, reconnection, file sizes, output modes,
//!    identity files, `transfer.info`, and the documented exit codes;
//! 2. against a scripted fake server written here, which records the exact sequence of
//!    requests, to prove the resend and retry rules (1030/1031, 2107, dropped and silent
//!    connections) and tolerance of the existing servers' quirks;
//! 3. against the captures of three existing implementations (`../shared/captures`): their
//!    identity files load and their private keys open the captured AES keys;
//! 4. against the independent Python server in `tests/peers/peer_server.py`.

use crate::common;
use crate::fake_server::*;

use common::Server;
use securexfer::client::identity::{Identity, TransferInfo};
use securexfer::crypto::aes::decrypt_to_vec;
use securexfer::crypto::{Cksum, PublicKey};
use securexfer::protocol::{
    ClientId, Request, RequestCode, Response, decode_request, decode_response,
};
use serde_json::Value;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// No client run in these tests may take longer; a hang fails the test instead of the suite.
const DEADLINE: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------
// Running the client
// ---------------------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Fails with the whole output unless the exit code is `code`.
    fn expect_code(&self, code: i32, what: &str) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "{what}: expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn ok(&self, what: &str) -> &Self {
        self.expect_code(0, what)
    }

    /// Every `--json` line.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
            .collect()
    }

    /// The `--json` results, one per file (the summary line, which must come last, left out).
    fn json(&self) -> Vec<Value> {
        let mut lines = self.json_lines();
        let last = lines.pop().unwrap_or_else(|| panic!("no JSON at all: {}", self.stdout));
        assert_eq!(last["summary"], true, "the last line is the summary: {}", self.stdout);
        assert!(lines.iter().all(|l| l.get("summary").is_none()), "{}", self.stdout);
        lines
    }

    /// The `--json` summary line.
    fn summary(&self) -> Value {
        self.json_lines().pop().expect("a summary line")
    }
}

/// Runs a prepared command to the end, or kills it and fails after [`DEADLINE`].
fn run_command(mut cmd: Command, deadline: Duration) -> Run {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start securexfer");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let Some(status) = common::wait_timeout(&mut child, deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "securexfer did not finish within {deadline:?}\n--- stdout\n{}\n--- stderr\n{}",
            stdout.join().unwrap(),
            stderr.join().unwrap()
        );
    };
    let took = started.elapsed();
    Run { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap(), took }
}

fn collect(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// A client's working directory, with `XDG_CONFIG_HOME` and `HOME` inside it so that no
/// identity of the person running the tests is ever found or written.
struct Workdir {
    temp: tempfile::TempDir,
}

impl Workdir {
    fn new() -> Self {
        let temp = tempfile::tempdir().expect("tempdir");
        fs::create_dir(temp.path().join("home")).expect("home");
        Workdir { temp }
    }

    fn path(&self) -> &Path {
        self.temp.path()
    }

    /// `$XDG_CONFIG_HOME` of the client's runs.
    fn config(&self) -> PathBuf {
        self.path().join("config")
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.path().join(name);
        fs::write(&path, content).expect("write test file");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = common::command();
        cmd.current_dir(self.path())
            .env("XDG_CONFIG_HOME", self.config())
            .env("HOME", self.path().join("home"))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        run_command(self.command(args), DEADLINE)
    }

    /// `securexfer send FILES --server SERVER [--name NAME] EXTRA...`.
    fn send(&self, server: &str, name: Option<&str>, files: &[&str], extra: &[&str]) -> Run {
        let mut args = vec!["send"];
        args.extend_from_slice(files);
        args.extend_from_slice(&["--server", server]);
        if let Some(name) = name {
            args.extend_from_slice(&["--name", name]);
        }
        args.extend_from_slice(extra);
        self.run(&args)
    }

    /// The identity the runs saved: the existing client's `./me.info` when there is one,
    /// else the one identity in the home directory's `servers/`.
    fn identity_path(&self) -> PathBuf {
        let here = self.path().join("me.info");
        if here.exists() {
            return here;
        }
        let found = self.saved_identities();
        assert_eq!(found.len(), 1, "one saved identity: {found:?}");
        found[0].clone()
    }

    /// Every `me.info` under the home directory's `servers/`.
    fn saved_identities(&self) -> Vec<PathBuf> {
        let servers = self.config().join("securexfer/servers");
        let Ok(dirs) = fs::read_dir(&servers) else { return Vec::new() };
        let mut found: Vec<PathBuf> =
            dirs.flatten().map(|d| d.path().join("me.info")).filter(|p| p.exists()).collect();
        found.sort();
        found
    }

    fn me_info(&self) -> String {
        fs::read_to_string(self.identity_path()).expect("me.info")
    }

    /// Line 2 of `me.info`: the id as 32 hex digits.
    fn id(&self) -> String {
        id_of(&self.me_info())
    }
}

fn id_of(me_info: &str) -> String {
    let id = me_info.lines().nth(1).expect("me.info line 2").to_owned();
    assert_eq!(id.len(), 32, "line 2 of me.info is 32 hex digits: {id:?}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id:?}");
    id
}

fn stored(server: &Server, id: &str, name: &str) -> Vec<u8> {
    let path = server.storage().join(id).join(name);
    fs::read(&path)
        .unwrap_or_else(|e| panic!("{} not stored: {e}\n{}", path.display(), server.log()))
}

/// Compares without printing megabytes on failure.
fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// A port on which nothing listens.
fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------------------
// 1. Against `securexfer serve`
// ---------------------------------------------------------------------------------------

#[test]
fn register_then_send_stores_the_same_bytes() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let data = common::random_bytes(100_003, 1);
    work.file("data.bin", &data);

    let reg = work.run(&["register", "--server", &server.address(), "--name", "alice"]);
    reg.ok("register");
    let me = work.me_info();
    assert_eq!(me.lines().next(), Some("alice"));
    let id = id_of(&me);
    assert!(reg.stdout.contains(&id), "register names the id: {}", reg.stdout);
    let key = fs::read_to_string(work.identity_path().with_file_name("priv.key"))
        .expect("priv.key beside me.info");
    assert!(!work.path().join("me.info").exists(), "no identity in the working directory");
    assert_eq!(me.lines().skip(2).collect::<String>(), key.trim(), "me.info holds the private key");

    let sent = work.send(&server.address(), None, &["data.bin"], &[]);
    sent.ok("send");
    assert!(sent.stdout.contains("verified"), "{}", sent.stdout);
    assert_eq!(work.id(), id, "send reused the registered identity");
    assert_same(&stored(&server, &id, "data.bin"), &data, "stored file");
}

/// The commands of README's Quick start block, comments and the build line left out.
fn readme_quick_start() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let section = readme.split("## Quick start").nth(1).expect("a Quick start section");
    let block = section.split("```").nth(1).expect("a code block in Quick start");
    block
        .lines()
        .map(|l| l.split(" # ").next().unwrap_or("").trim())
        .filter(|l| l.starts_with("securexfer "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_quick_start_works_as_typed() {
    let commands = readme_quick_start();
    assert_eq!(commands.len(), 6, "serve, register, send, ls, get, inspect: {commands:?}");
    let root = tempfile::tempdir().unwrap();
    let srv = root.path().join("srv/securexfer");
    let local = |cmd: &str| {
        cmd.replace("/srv/securexfer", srv.to_str().unwrap())
            .replace("--listen 0.0.0.0", "--listen 127.0.0.1")
            .replace("--port 1357", "--port 0")
    };
    let words = |cmd: String| -> Vec<String> {
        cmd.split_whitespace().skip(1).map(str::to_owned).collect()
    };
    // The server, in the background, as its line says (on a free loopback port).
    let serve = words(local(&commands[0]));
    assert_eq!(serve[0], "serve");
    let mut cmd = common::command();
    cmd.current_dir(root.path()).args(&serve).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let address = line.trim().rsplit(' ').next().expect("address").to_owned();
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(child);
    // The client, in a folder with the two files, every command as written.
    let work = Workdir::new();
    work.file("report.pdf", &common::random_bytes(50_000, 70));
    work.file("photos.tar", &common::random_bytes(120_000, 71));
    for command in &commands[1..3] {
        let args = words(command.replace("files.example.org:1357", &address));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        work.run(&args).ok(command);
    }
    // ls and get with the protocol a user's client has by default (`auto`; this file's
    // tests otherwise pin 3): the identity upgrades to protocol 4 on the way, as it says.
    fs::create_dir(work.path().join("restored")).unwrap(); // the block's `mkdir restored`
    let mut listed = String::new();
    for command in &commands[3..5] {
        let args = words(command.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = work.command(&args);
        cmd.env_remove("SECUREXFER_PROTOCOL");
        let out = run_command(cmd, DEADLINE);
        out.ok(command);
        listed.push_str(&out.stdout);
    }
    assert!(listed.contains("report.pdf") && listed.contains("photos.tar"), "{listed}");
    let restored = fs::read(work.path().join("restored/report.pdf")).unwrap();
    assert_same(&restored, &fs::read(work.path().join("report.pdf")).unwrap(), "restored");
    let inspect = words(local(&commands[5]));
    let mut cmd = common::command();
    cmd.current_dir(root.path()).args(&inspect);
    let out = run_command(cmd, DEADLINE);
    out.ok(&commands[5]);
    assert!(
        out.stdout.contains("report.pdf") && out.stdout.contains("photos.tar"),
        "{}",
        out.stdout
    );
    let id = work.id();
    for name in ["report.pdf", "photos.tar"] {
        let sent = fs::read(work.path().join(name)).unwrap();
        assert_same(&fs::read(srv.join(&id).join(name)).unwrap(), &sent, name);
    }
}

/// A TCP proxy to `upstream` that cuts the first connection that carries a 2103, right
/// after passing the 2103 on: the connection breaks between the server's checksum and the
/// client's 1029. Later connections pass untouched.
fn cut_after_first_2103(upstream: String) -> String {
    use securexfer::protocol::{RESPONSE_HEADER_LEN, ResponseCode, ResponseHeader};
    use std::net::Shutdown;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let cut = Arc::new(AtomicBool::new(false));
    // Detached: it ends with the test binary.
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else { continue };
            let cut = Arc::clone(&cut);
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            thread::spawn(move || {
                let _ = io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(Shutdown::Write);
            });
            thread::spawn(move || {
                let (mut server, mut client) = (server, client);
                let mut header = [0u8; RESPONSE_HEADER_LEN];
                while server.read_exact(&mut header).is_ok() {
                    let parsed = ResponseHeader::decode(&header).expect("the server's header");
                    let mut payload = vec![0u8; parsed.payload_size as usize];
                    if server.read_exact(&mut payload).is_err()
                        || client.write_all(&[&header[..], &payload].concat()).is_err()
                    {
                        break;
                    }
                    if parsed.code == ResponseCode::FileReceived
                        && !cut.swap(true, Ordering::SeqCst)
                    {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        return;
                    }
                }
                let _ = client.shutdown(Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn an_upload_lost_with_a_broken_connection_before_1029_is_sent_again() {
    // securexfer serve keeps an unconfirmed upload only while its connection lives, so a
    // break between the 2103 and the 1029 loses it: the 1029 on a new connection gets
    // 2107, and the client must send the file again rather than fail.
    for strict in [false, true] {
        let server = Server::start(if strict { &["--strict-sessions"][..] } else { &[] });
        let proxy = cut_after_first_2103(server.address());
        let work = Workdir::new();
        let data = common::random_bytes(300_000, 21);
        work.file("data.bin", &data);
        // Through the proxy (it cuts only a connection that carries a 2103), so that the
        // identity is the one for the address the send uses.
        work.run(&["register", "--server", &proxy, "--name", "breaker"]).ok("register");
        let run = work.send(&proxy, None, &["data.bin"], &["--json"]);
        run.ok(&format!("send through a proxy that cuts after the 2103 (strict: {strict})"));
        // Without strict sessions a 1029 from a new connection may also borrow the first
        // connection's session while the server has not yet seen that connection close,
        // and confirm the upload still waiting there: one send, just as right.
        let sends = run.json()[0]["sends"].as_u64().expect("sends");
        if strict {
            assert_eq!(sends, 2, "sent again once\n{}", run.stderr);
        } else {
            assert!((1..=2).contains(&sends), "{sends} sends\n{}", run.stderr);
        }
        assert_same(&stored(&server, &work.id(), "data.bin"), &data, "stored file");
        // The 1029 on the new connection was refused (no upload waits there; with strict
        // sessions, no key exchange either), and the second send was confirmed. (When the
        // first 1029 reaches the server before the cut, that send is stored too, and its
        // lost answer makes the client send again: the same bytes, stored twice.)
        if sends == 2 {
            assert!(server.log().contains("refused with 2107"), "{}", server.log());
        }
        let stores = server.log().matches("file verified and stored").count();
        assert!((1..=2).contains(&stores), "{stores} stores\n{}", server.log());
    }
}

#[test]
fn a_second_send_reconnects_with_the_saved_identity() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("data.bin", b"first version");

    let first = work.send(&server.address(), Some("bob"), &["data.bin"], &[]);
    first.ok("first send registers");
    assert!(first.stderr.contains("registered bob"), "{}", first.stderr);
    let me = work.me_info();

    work.file("data.bin", b"second version, longer than the first");
    let second = work.send(&server.address(), None, &["data.bin"], &[]);
    second.ok("second send reconnects");
    assert!(!second.stderr.contains("register"), "no new registration: {}", second.stderr);
    assert_eq!(work.me_info(), me, "me.info untouched by a reconnection");
    let id = work.id();
    assert_eq!(stored(&server, &id, "data.bin"), b"second version, longer than the first");
}

#[test]
fn several_files_in_one_run_are_all_stored() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}.bin"), common::random_bytes(5_000 + 7 * i, 10 + i as u64)))
        .collect();
    for (name, data) in &files {
        work.file(name, data);
    }
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let run = work.send(&server.address(), Some("carol"), &names, &["--json"]);
    run.ok("send three files");
    let lines = run.json();
    assert_eq!(lines.len(), 3, "one JSON line per file: {}", run.stdout);
    let id = work.id();
    for ((name, data), line) in files.iter().zip(&lines) {
        assert_eq!(line["status"], "verified", "{line}");
        assert!(line["file"].as_str().unwrap().ends_with(name.as_str()), "{line}");
        assert_same(&stored(&server, &id, name), data, name);
    }
}

#[test]
fn empty_one_byte_and_one_block_files_arrive_intact() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    for (name, data) in [
        ("empty.bin", Vec::new()),
        ("one.bin", vec![0x5a]),
        ("block.bin", common::random_bytes(16, 3)),
    ] {
        work.file(name, &data);
        let run = work.send(&server.address(), Some("dave"), &[name], &["--json"]);
        run.ok(name);
        let line = &run.json()[0];
        assert_eq!(line["size"], data.len() as u64, "{name}: {line}");
        assert_eq!(line["cksum"], Cksum::of(&data), "{name}: {line}");
        assert_eq!(stored(&server, &work.id(), name), data, "{name}");
    }
}

#[test]
fn a_100_mib_file_arrives_intact() {
    const SIZE: usize = 100 * 1024 * 1024;
    let server = Server::start(&[]);
    let work = Workdir::new();
    let data = common::random_bytes(SIZE, 100);
    work.file("big.bin", &data);
    let run = work.send(&server.address(), Some("erin"), &["big.bin"], &["--json"]);
    run.ok("100 MiB send");
    let line = &run.json()[0];
    assert_eq!(line["size"], SIZE as u64);
    assert_eq!(line["cksum"], Cksum::of(&data));
    assert_eq!(line["sends"], 1);
    eprintln!(
        "100 MiB: client reported {:.2} s for the transfer, whole run {:.2} s",
        line["seconds"].as_f64().unwrap_or(f64::NAN),
        run.took.as_secs_f64()
    );
    assert_same(&stored(&server, &work.id(), "big.bin"), &data, "100 MiB stored file");
}

#[test]
fn json_output_reports_verified_size_and_our_cksum() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let data = common::random_bytes(70_001, 4);
    work.file("j.bin", &data);
    let run = work.send(&server.address(), Some("frank"), &["j.bin"], &["--json"]);
    run.ok("--json");
    let lines = run.json();
    assert_eq!(lines.len(), 1, "only JSON on stdout: {}", run.stdout);
    let line = &lines[0];
    assert_eq!(line["status"], "verified");
    assert_eq!(line["size"], 70_001);
    assert_eq!(line["cksum"], Cksum::of(&data));
    assert_eq!(line["sends"], 1);
    assert!(line["file"].as_str().unwrap().ends_with("j.bin"), "{line}");
}

#[test]
fn quiet_prints_nothing_on_stdout() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("q.bin", b"quiet please");
    let run = work.send(&server.address(), Some("gina"), &["q.bin"], &["--quiet"]);
    run.ok("--quiet");
    assert_eq!(run.stdout, "", "--quiet prints nothing on stdout");
    assert_eq!(stored(&server, &work.id(), "q.bin"), b"quiet please");
}

#[test]
fn register_refuses_to_overwrite_an_identity_without_force() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let addr = server.address();
    work.run(&["register", "--server", &addr, "--name", "hank"]).ok("first register");
    let before = work.me_info();
    let key_path = work.identity_path().with_file_name("priv.key");
    let key_before = fs::read(&key_path).unwrap();

    let again = work.run(&["register", "--server", &addr, "--name", "hank2"]);
    again.expect_code(6, "register over an identity without --force");
    assert!(again.stderr.contains("--force"), "the error says how: {}", again.stderr);
    assert_eq!(work.me_info(), before, "me.info untouched");
    assert_eq!(fs::read(&key_path).unwrap(), key_before, "priv.key untouched");

    work.run(&["register", "--server", &addr, "--name", "hank2", "--force"]).ok("--force");
    let after = work.me_info();
    assert_eq!(after.lines().next(), Some("hank2"));
    assert_ne!(id_of(&after), id_of(&before), "a new registration");
    assert_ne!(fs::read(&key_path).unwrap(), key_before, "a new key");
    // Not silently: the replaced identity is kept beside it.
    let kept = fs::read_to_string(work.identity_path().with_file_name("me.info.bak")).unwrap();
    assert_eq!(kept, before, "the old identity kept as me.info.bak");
    assert_eq!(fs::read(key_path.with_file_name("priv.key.bak")).unwrap(), key_before);
}

#[cfg(unix)]
#[test]
fn identity_files_are_written_with_mode_0600_and_no_leftovers() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    // By `register`, at a path given with --identity (priv.key goes beside it).
    work.run(&[
        "register",
        "--server",
        &server.address(),
        "--name",
        "ivan",
        "--identity",
        "ids/ivan/me.info",
    ])
    .ok("register --identity");
    let dir = work.path().join("ids/ivan");
    // By `send`, which registers on its own when there is no identity.
    work.file("m.bin", b"mode");
    work.send(&server.address(), Some("judy"), &["m.bin"], &[]).ok("send registers");
    let home = work.identity_path().parent().unwrap().to_owned();
    for dir in [dir, home] {
        for file in ["me.info", "priv.key"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{}/{file}", dir.display());
        }
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".securexfer-"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left in {}: {leftovers:?}", dir.display());
    }
}

#[test]
fn a_folder_with_transfer_info_and_no_arguments_sends_its_file() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let data = common::random_bytes(9_999, 5);
    work.file("payload.bin", &data);
    // As the existing client writes it: no final newline.
    work.file("transfer.info", format!("{}\nkate\npayload.bin", server.address()).as_bytes());

    work.run(&["send"]).ok("send with transfer.info");
    let me = work.me_info();
    assert_eq!(me.lines().next(), Some("kate"), "registered under line 2's name");
    assert_same(&stored(&server, &id_of(&me), "payload.bin"), &data, "stored file");

    // And again, now reconnecting with the me.info beside it.
    let again = work.run(&["send"]);
    again.ok("second send with transfer.info and me.info");
    assert!(!again.stderr.contains("register"), "{}", again.stderr);
    assert_eq!(work.me_info(), me);
}

#[test]
fn a_denied_identity_registers_again_and_keeps_the_old_one_as_bak() {
    let first = Server::start(&[]);
    let work = Workdir::new();
    work.file("d.bin", b"denied");
    // The existing client's habit: me.info in the working directory.
    let flag = ["--identity", "me.info"];
    work.send(&first.address(), Some("leo"), &["d.bin"], &flag).ok("send to the first server");
    let old = work.me_info();

    // A second server with a fresh database does not know leo.
    let second = Server::start(&[]);
    let run = work.send(&second.address(), None, &["d.bin"], &[]);
    run.ok("send to a server that denies the identity");
    assert!(run.stderr.contains("registering again"), "{}", run.stderr);
    let me = work.me_info();
    assert_eq!(me.lines().next(), Some("leo"), "same name");
    let new_id = id_of(&me);
    assert_ne!(new_id, id_of(&old), "me.info now holds the new id");
    assert_eq!(stored(&second, &new_id, "d.bin"), b"denied");
    assert!(run.stderr.contains("me.info.bak"), "says where the old one went: {}", run.stderr);
    assert_eq!(fs::read_to_string(work.path().join("me.info.bak")).unwrap(), old);
    #[cfg(unix)]
    assert_eq!(mode(&work.path().join("me.info")), 0o600);
}

#[test]
fn each_server_gets_its_own_identity_and_register_remembers_the_server() {
    let first = Server::start(&[]);
    let second = Server::start(&[]);
    let work = Workdir::new();
    work.file("a.bin", b"to the first");
    work.run(&["register", "--server", &first.address(), "--name", "olga"]).ok("register");
    // No --server: the registered one.
    let run = work.run(&["send", "a.bin"]);
    run.ok("send with the remembered server");
    let first_id = work.id();
    assert_eq!(stored(&first, &first_id, "a.bin"), b"to the first");
    // A second server gets an identity of its own; the first one's is untouched.
    work.file("b.bin", b"to the second");
    work.send(&second.address(), Some("olga"), &["b.bin"], &[]).ok("second server");
    let ids = work.saved_identities();
    assert_eq!(ids.len(), 2, "{ids:?}");
    let second_id = ids
        .iter()
        .map(|p| id_of(&fs::read_to_string(p).unwrap()))
        .find(|id| *id != first_id)
        .expect("a second identity");
    assert_eq!(stored(&second, &second_id, "b.bin"), b"to the second");
    work.file("a.bin", b"first again");
    work.send(&first.address(), None, &["a.bin"], &[]).ok("the first server still knows us");
    assert_eq!(stored(&first, &first_id, "a.bin"), b"first again");
    assert!(!work.path().join("me.info").exists(), "nothing in the working directory");
}

#[test]
fn malformed_servers_and_names_are_usage_errors() {
    let work = Workdir::new();
    work.file("u.bin", b"x");
    for server in ["127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:port", ":1357"] {
        let run = work.send(server, Some("mia"), &["u.bin"], &[]);
        run.expect_code(2, server);
        assert!(run.stderr.contains("HOST:PORT"), "{}", run.stderr);
    }
    for name in ["", "zoë", "tab\there"] {
        let run = work.send(&closed_port(), Some(name), &["u.bin"], &[]);
        run.expect_code(2, &format!("name {name:?}"));
        assert!(run.stderr.contains("client name"), "{}", run.stderr);
    }
}

#[test]
fn a_server_that_does_not_speak_the_protocol_is_a_refusal_said_once() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let work = Workdir::new();
    work.file("u.bin", b"x");
    let run = work.send(&addr, Some("mia"), &["u.bin"], &["--timeout", "5"]);
    run.expect_code(4, "an HTTP server");
    assert!(
        run.stderr.contains(&format!("{addr} does not speak the securexfer protocol")),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("attempt"), "not retried: {}", run.stderr);
}

#[test]
fn connection_errors_say_their_cause_once_and_a_bad_host_name_gets_no_server_hint() {
    let work = Workdir::new();
    work.file("u.bin", b"x");
    let run = work.send(&closed_port(), Some("mia"), &["u.bin"], &[]);
    run.expect_code(3, "closed port");
    assert_eq!(run.stderr.matches("Connection refused").count(), 1, "{}", run.stderr);
    let run = work.send("no-such-host.invalid:1357", Some("mia"), &["u.bin"], &[]);
    run.expect_code(3, "unresolvable host");
    assert!(run.stderr.contains("cannot find the server"), "{}", run.stderr);
    assert!(!run.stderr.contains("is the server running"), "{}", run.stderr);
}

#[test]
fn unsendable_file_names_are_explained_and_point_to_as() {
    use std::os::unix::ffi::OsStrExt;
    let server = Server::start(&[]);
    let work = Workdir::new();
    let long = "l".repeat(255); // the most a Linux file name holds, one over the protocol
    work.file(&long, b"long");
    let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(work.path().join(latin1), b"latin-1").unwrap();
    let mut cmd = work.command(&["send", "--server", &server.address(), "--name", "nia"]);
    cmd.arg(&long).arg(latin1).arg("--json");
    let run = run_command(cmd, DEADLINE);
    run.expect_code(6, "names the protocol cannot carry");
    assert!(run.stderr.contains("255 bytes long") && run.stderr.contains("--as"), "{}", run.stderr);
    assert!(run.stderr.contains("0xe9"), "the byte that is really there: {}", run.stderr);
    assert!(!run.stderr.contains("NUL"), "{}", run.stderr);
    // --as makes the long one sendable.
    let run = work.send(&server.address(), Some("nia"), &[&long], &["--as", "short.txt"]);
    run.ok("--as");
    assert_eq!(stored(&server, &work.id(), "short.txt"), b"long");
}

#[test]
fn an_unreachable_server_exits_3_naming_it() {
    let work = Workdir::new();
    work.file("u.bin", b"x");
    let addr = closed_port();
    let run = work.send(&addr, Some("mia"), &["u.bin"], &[]);
    run.expect_code(3, "closed port");
    assert!(run.stderr.contains(&addr), "the error names {addr}: {}", run.stderr);
    assert!(!work.path().join("me.info").exists(), "no identity saved");
}

#[test]
fn a_nonexistent_file_exits_6_naming_it() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let run = work.send(&server.address(), Some("nina"), &["missing.bin"], &[]);
    run.expect_code(6, "missing file");
    assert!(run.stderr.contains("missing.bin"), "{}", run.stderr);
}

#[test]
fn no_server_is_a_usage_error() {
    let work = Workdir::new();
    work.file("s.bin", b"x");
    let run = work.run(&["send", "s.bin", "--name", "otto"]);
    run.expect_code(2, "no --server and no transfer.info");
    assert!(run.stderr.contains("--server"), "{}", run.stderr);
    let register = work.run(&["register", "--name", "otto"]);
    register.expect_code(2, "register with no server");
    let nothing = work.run(&["send"]);
    nothing.expect_code(2, "send with no file and no transfer.info");
    assert!(nothing.stderr.contains("transfer.info"), "{}", nothing.stderr);
}

#[test]
fn no_identity_and_no_name_lists_every_path_tried() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("p.bin", b"x");
    let run = work.send(&server.address(), None, &["p.bin"], &[]);
    run.expect_code(2, "nothing to reconnect with and no name to register");
    let xdg = work.config().join("securexfer/servers").join(server.address().replace(':', "_"));
    assert!(run.stderr.contains("me.info, "), "{}", run.stderr);
    assert!(
        run.stderr.contains(&xdg.display().to_string()),
        "names {}: {}",
        xdg.display(),
        run.stderr
    );
}

#[test]
fn the_identity_is_found_in_the_config_directory_and_by_flag() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let xdg = work.config().join("securexfer").join("me.info");
    let xdg_text = xdg.to_str().unwrap();
    work.run(&["register", "--server", &server.address(), "--name", "pat", "--identity", xdg_text])
        .ok("register into the config dir");
    let id = id_of(&fs::read_to_string(&xdg).unwrap());
    work.file("c.bin", b"config dir");

    let run = work.send(&server.address(), None, &["c.bin"], &[]);
    run.ok("send finds the identity in $XDG_CONFIG_HOME/securexfer");
    assert!(!run.stderr.contains("register"), "{}", run.stderr);
    assert!(!work.path().join("me.info").exists(), "no identity made in the working dir");
    assert_eq!(stored(&server, &id, "c.bin"), b"config dir");

    // ./me.info (the existing client's) comes before the config dir, and --identity
    // before both.
    let here = ["--identity", "me.info"];
    work.run(&["register", "--server", &server.address(), "--name", "quinn", here[0], here[1]])
        .ok("local identity");
    let local = work.id();
    work.file("c.bin", b"local");
    work.send(&server.address(), None, &["c.bin"], &[]).ok("send with ./me.info");
    assert_eq!(stored(&server, &local, "c.bin"), b"local");
    assert_eq!(stored(&server, &id, "c.bin"), b"config dir");
    work.file("c.bin", b"flag");
    work.send(&server.address(), None, &["c.bin"], &["--identity", xdg_text]).ok("--identity");
    assert_eq!(stored(&server, &id, "c.bin"), b"flag");
    assert_eq!(stored(&server, &local, "c.bin"), b"local");
}

#[test]
fn a_file_over_the_server_limit_is_a_refusal() {
    let server = Server::start(&["--max-file-size", "64K"]);
    let work = Workdir::new();
    work.file("huge.bin", &common::random_bytes(2 * 1024 * 1024, 11));
    let run = work.send(&server.address(), Some("sam"), &["huge.bin"], &["--timeout", "10"]);
    // The server answers 2107 and closes without reading the content: the client's writes
    // fail, and it must still report the refusal rather than a broken pipe.
    run.expect_code(4, "file larger than --max-file-size");
    assert!(run.stderr.contains("fatal") && run.stderr.contains("2107"), "{}", run.stderr);
}

#[test]
fn a_refused_file_does_not_stop_the_batch_and_results_come_in_argument_order() {
    let server = Server::start(&["--max-file-size", "64K"]);
    let work = Workdir::new();
    work.file("first.bin", b"first");
    work.file("huge.bin", &common::random_bytes(1024 * 1024, 12));
    work.file("last.bin", b"last");
    let files = ["first.bin", "missing.bin", "huge.bin", "last.bin"];
    let run = work.send(&server.address(), Some("tess"), &files, &["--json", "--timeout", "10"]);
    run.expect_code(6, "the highest code: a missing file (6) over a refusal (4)");
    let results = run.json();
    let order: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["stored_name"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        order,
        [
            ("first.bin", "verified"),
            ("missing.bin", "failed"),
            ("huge.bin", "failed"),
            ("last.bin", "verified")
        ],
        "{}",
        run.stdout
    );
    assert_eq!(results[2]["exit_code"], 4);
    assert!(results.iter().all(|r| r["server"] == server.address().as_str()), "{}", run.stdout);
    let summary = run.summary();
    assert_eq!((summary["verified"].as_u64(), summary["failed"].as_u64()), (Some(2), Some(2)));
    assert_eq!(summary["exit_code"], 6);
    assert_eq!(stored(&server, &work.id(), "last.bin"), b"last");
    // Every field printed is documented.
    let schema = include_str!("../../docs/json.md");
    for line in run.json_lines() {
        for key in line.as_object().unwrap().keys() {
            assert!(schema.contains(&format!("`{key}`")), "docs/json.md names {key}");
        }
    }
}

#[test]
fn files_after_a_connection_that_keeps_failing_are_reported_as_skipped() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::SendFile, u32::MAX, Fault::Drop));
    let fake = Fake::start(script);
    work.file("second.bin", b"2");
    let run = work.send(&fake.addr, Some("zed"), &[FILE, "second.bin"], &["--json"]);
    run.expect_code(3, "connection failures");
    let results = run.json();
    assert_eq!(results[0]["status"], "failed");
    assert_eq!(results[1]["status"], "skipped", "{}", run.stdout);
    assert_eq!(run.summary()["skipped"], 1);
    assert!(!fake.file_names().contains(&"second.bin".to_owned()), "never tried");
}

#[test]
fn a_refusal_right_after_a_reconnection_is_still_a_refusal_and_the_batch_goes_on() {
    // The first file after a reconnection is refused: the client tries the id reversed
    // (for servers that accept a 1027 with any id), this server denies that id, and the
    // saved one is used again.
    let server = Server::start(&["--max-file-size", "64K"]);
    let work = Workdir::new();
    work.file("small.bin", b"small");
    work.send(&server.address(), Some("rhea"), &["small.bin"], &[]).ok("registers");
    work.file("huge.bin", &common::random_bytes(1024 * 1024, 13));
    let run = work.send(&server.address(), None, &["huge.bin", "small.bin"], &["--json"]);
    run.expect_code(4, "the refusal");
    let results = run.json();
    assert_eq!(results[0]["status"], "failed");
    assert!(results[0]["error"].as_str().unwrap().contains("2107"), "{}", run.stdout);
    assert_eq!(results[1]["status"], "verified", "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn the_client_config_file_names_the_server_and_the_name() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    fs::create_dir_all(work.config().join("securexfer")).unwrap();
    let settings = format!("server = \"{}\"\nname = \"cora\"\ntimeout = 5\n", server.address());
    fs::write(work.config().join("securexfer/config.toml"), settings).unwrap();
    work.file("c.bin", b"configured");
    work.run(&["send", "c.bin"]).ok("server and name from config.toml");
    assert_eq!(work.me_info().lines().next(), Some("cora"));
    assert_eq!(stored(&server, &work.id(), "c.bin"), b"configured");
    // An unknown key is a usage error naming the file and line.
    fs::write(work.config().join("securexfer/config.toml"), "timeout = 5\nsever = \"x\"\n")
        .unwrap();
    let run = work.run(&["send", "c.bin"]);
    run.expect_code(2, "unknown key");
    assert!(
        run.stderr.contains("config.toml:2:") && run.stderr.contains("sever"),
        "{}",
        run.stderr
    );
}

#[test]
fn two_files_with_one_stored_name_are_refused_before_anything_is_sent() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    fs::create_dir_all(work.path().join("d1")).unwrap();
    fs::create_dir_all(work.path().join("d2")).unwrap();
    work.file("d1/same.txt", b"one");
    work.file("d2/same.txt", b"two");
    let run = work.send(&server.address(), Some("uma"), &["d1/same.txt", "d2/same.txt"], &[]);
    run.expect_code(2, "a name clash is a usage error");
    assert!(
        run.stderr.contains("d1/same.txt") && run.stderr.contains("d2/same.txt"),
        "names both: {}",
        run.stderr
    );
    assert!(run.stderr.contains("--as"), "{}", run.stderr);
    assert!(!work.path().join("me.info").exists(), "nothing was done on the server");
    // --as stores a single file under another name.
    let run = work.send(&server.address(), Some("uma"), &["d2/same.txt"], &["--as", "other.txt"]);
    run.ok("--as");
    assert_eq!(stored(&server, &work.id(), "other.txt"), b"two");
    let run = work.send(&server.address(), None, &["d1/same.txt", "d2/same.txt"], &["--as", "x"]);
    run.expect_code(2, "--as with two files");
}

#[test]
fn the_identity_files_are_never_sent() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("a.txt", b"a");
    work.send(&server.address(), Some("vic"), &["a.txt"], &[]).ok("registers");
    let me = work.identity_path();
    for own in [me.clone(), me.with_file_name("priv.key")] {
        let own = own.to_str().unwrap();
        let run = work.send(&server.address(), None, &["a.txt", own], &[]);
        run.expect_code(2, own);
        assert!(run.stderr.contains("identity"), "{}", run.stderr);
    }
    assert!(!server.storage().join(work.id()).join("priv.key").exists());
}

#[test]
fn a_closed_stdout_is_not_an_error_and_the_batch_still_goes_on() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let names: Vec<String> = (0..5).map(|i| format!("f{i}.bin")).collect();
    for name in &names {
        work.file(name, &common::random_bytes(200_000, 60));
    }
    let mut cmd = work.command(&["send", "--server", &server.address(), "--name", "wes"]);
    cmd.args(&names).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    // Read the first line, then close the pipe, as `| head -1` does.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(first.starts_with("sent "), "{first:?}");
    assert_eq!(status.code(), Some(0), "exit 0, no panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for name in &names {
        assert!(server.storage().join(work.id()).join(name).exists(), "{name} still sent");
    }
}

#[test]
fn db_inspect_into_a_closed_pipe_exits_0() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("a.txt", b"a");
    work.send(&server.address(), Some("xia"), &["a.txt"], &[]).ok("registers");
    let mut cmd = common::command();
    cmd.current_dir(&server.dir).args([
        "db",
        "inspect",
        "--db",
        "server.db",
        "--storage",
        "storage",
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_broken_identity_is_a_local_error_naming_the_file() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("me.info", b"rita\nnot-an-id\nAAAA\n");
    work.file("b.bin", b"x");
    let run = work.send(&server.address(), None, &["b.bin"], &[]);
    run.expect_code(6, "unreadable me.info");
    assert!(run.stderr.contains("me.info"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------
// 2. Against a scripted fake server
// ---------------------------------------------------------------------------------------

// The fake server itself is in `fake_server.rs`.

const FILE: &str = "data.bin";

/// A work dir holding `data.bin` and the script's cksum for it.
fn fake_setup() -> (Workdir, Script) {
    let work = Workdir::new();
    let data = common::random_bytes(40_000, 7);
    work.file(FILE, &data);
    (work, Script::new(Cksum::of(&data)))
}

/// Sends `data.bin` to the fake with `--json --timeout 5` (unless `extra` sets a timeout).
fn send_to_fake(work: &Workdir, fake: &Fake, extra: &[&str]) -> Run {
    let mut flags = vec!["--json"];
    if !extra.contains(&"--timeout") {
        flags.extend_from_slice(&["--timeout", "5"]);
    }
    flags.extend_from_slice(extra);
    work.send(&fake.addr, Some("zed"), &[FILE], &flags)
}

const REGISTER: [u16; 2] = [1025, 1026];

/// Joins code lists: `seq(&[&REGISTER, &[1028, 1029]])`.
fn seq(parts: &[&[u16]]) -> Vec<u16> {
    parts.concat()
}

/// Checks the sequence and that every file request named `data.bin`.
fn assert_sequence(fake: &Fake, want: &[u16], run: &Run) {
    assert_eq!(fake.codes(), want, "request sequence\n--- stderr\n{}", run.stderr);
    assert!(fake.file_names().iter().all(|n| n == FILE), "{:?}", fake.file_names());
}

#[test]
fn fake_a_matching_checksum_is_confirmed_once() {
    let (work, script) = fake_setup();
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("plain send");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1029]]), &run);
    assert_eq!(run.json()[0]["sends"], 1);
}

#[test]
fn fake_one_wrong_checksum_is_resent_once() {
    let (work, mut script) = fake_setup();
    script.wrong_cksums = 1;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("one mismatch");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1030, 1028, 1029]]), &run);
    assert_eq!(run.json()[0]["sends"], 2);
}

#[test]
fn fake_three_wrong_checksums_are_resent_three_times() {
    let (work, mut script) = fake_setup();
    script.wrong_cksums = 3;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("three mismatches");
    let resends = [1028, 1030, 1028, 1030, 1028, 1030, 1028, 1029];
    assert_sequence(&fake, &seq(&[&REGISTER, &resends]), &run);
    assert_eq!(run.json()[0]["sends"], 4);
}

#[test]
fn fake_four_wrong_checksums_give_up_with_1031_and_exit_5() {
    let (work, mut script) = fake_setup();
    script.wrong_cksums = 4;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.expect_code(5, "four mismatches");
    let give_up = [1028, 1030, 1028, 1030, 1028, 1030, 1028, 1031];
    assert_sequence(&fake, &seq(&[&REGISTER, &give_up]), &run);
    let line = &run.json()[0];
    assert_eq!(line["status"], "failed", "{line}");
    assert_eq!(line["exit_code"], 5, "{line}");
}

#[test]
fn fake_2107_to_every_file_is_fatal_after_four_sends_with_exit_4() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::SendFile, u32::MAX, Fault::Error));
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.expect_code(4, "2107 to every 1028");
    // Every retry after a 2107 goes on a new connection with a new key exchange.
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1027, 1028, 1027, 1028, 1027, 1028]]), &run);
    assert!(run.stderr.contains("fatal"), "{}", run.stderr);
}

#[test]
fn fake_2107_once_is_retried_and_the_step_succeeds() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::Register, 1, Fault::Error));
    script.faults.push((RequestCode::SendFile, 2, Fault::Error));
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("2107 to the first 1025 and the first two 1028s");
    // After a 2107 nothing more is said on that connection: a new one, a key exchange
    // when there is a session to redo, then the same request again.
    assert_sequence(&fake, &[1025, 1025, 1026, 1028, 1027, 1028, 1027, 1028, 1029], &run);
    assert_eq!(run.json()[0]["sends"], 1, "a 2107 is not a checksum resend");
}

#[test]
fn fake_a_dropped_connection_is_retried_on_a_new_one() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::SendFile, 1, Fault::Drop));
    script.faults.push((RequestCode::CrcOk, 1, Fault::Drop));
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &["--timeout", "30"]);
    run.ok("connection dropped at the first 1028 and the first 1029");
    assert!(
        run.took < Duration::from_secs(10),
        "retried at once, not after the timeout: {:?}",
        run.took
    );
    // After a lost connection the client redoes the key exchange (1027) before resending:
    // a server with strict sessions forgets a session with its connection.
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1027, 1028, 1029, 1027, 1029]]), &run);
}

#[test]
fn fake_an_upload_lost_with_its_connection_before_1029_is_sent_again() {
    let (work, mut script) = fake_setup();
    script.uploads_die_with_connection = true;
    script.drop_confirms_after_files = 1;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("connection dropped at the first 1029; the upload died with it");
    // The 1029 goes again on a new connection (after a key exchange) and gets 2107 (no
    // upload waits there); the client then sends the file again on another new
    // connection after a key exchange, and confirms it.
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1029, 1027, 1029, 1027, 1028, 1029]]), &run);
    assert_eq!(run.json()[0]["sends"], 2);
}

#[test]
fn fake_uploads_lost_before_1029_every_time_end_with_exit_3_after_four_sends() {
    let (work, mut script) = fake_setup();
    script.uploads_die_with_connection = true;
    script.drop_confirms_after_files = u32::MAX;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.expect_code(3, "every 1029 dropped");
    assert_eq!(fake.codes().iter().filter(|&&c| c == 1028).count(), 4, "{:?}", fake.codes());
    assert!(run.stderr.contains("before the server stored the file"), "{}", run.stderr);
}

#[test]
fn fake_a_connection_dropped_every_time_is_fatal_with_exit_3() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::SendFile, u32::MAX, Fault::Drop));
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &["--timeout", "30"]);
    run.expect_code(3, "every 1028 dropped");
    assert!(
        run.took < Duration::from_secs(10),
        "retried at once, not after the timeout: {:?}",
        run.took
    );
    // The first drop may be a server that closes after its replies, so that send is
    // repeated without counting (once a step); then four counted attempts.
    let attempts: &[u16] = &[1028, 1027, 1028, 1027, 1028, 1027, 1028, 1027, 1028];
    assert_sequence(&fake, &seq(&[&REGISTER, attempts]), &run);
    assert!(run.stderr.contains("fatal"), "{}", run.stderr);
}

#[test]
fn fake_a_silent_server_is_given_up_on_within_seconds() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::Register, u32::MAX, Fault::Silent));
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &["--timeout", "1", "--connect-timeout", "1"]);
    run.expect_code(3, "silent server");
    assert!(run.took < Duration::from_secs(20), "gave up after {:?}", run.took);
    assert_sequence(&fake, &[1025; 4], &run);
    assert!(run.stderr.contains("fatal"), "{}", run.stderr);
    let said = format!("no answer from {} within 1 s", fake.addr);
    assert!(run.stderr.contains(&said), "says what timed out: {}", run.stderr);
    assert!(!run.stderr.contains("os error 11"), "{}", run.stderr);
}

#[test]
fn fake_a_server_silent_after_a_file_is_given_up_on_within_seconds() {
    let (work, mut script) = fake_setup();
    script.faults.push((RequestCode::SendFile, u32::MAX, Fault::Silent));
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &["--timeout", "1"]);
    run.expect_code(3, "server silent after 1028");
    assert!(run.took < Duration::from_secs(20), "gave up after {:?}", run.took);
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1027, 1028, 1027, 1028, 1027, 1028]]), &run);
}

#[test]
fn fake_a_server_that_stops_reading_mid_file_is_given_up_on_within_seconds() {
    let work = Workdir::new();
    // Larger than the loopback socket buffers, so that the client's writes block.
    let data = common::random_bytes(48 * 1024 * 1024, 12);
    work.file(FILE, &data);
    let mut script = Script::new(Cksum::of(&data));
    script.stall_files = true;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &["--timeout", "1"]);
    run.expect_code(3, "server stalls in the middle of 1028");
    // The timeout applies to each write; a write that makes partial progress restarts it,
    // so an attempt takes a few timeouts while the socket buffers fill (a few seconds).
    assert!(run.took < Duration::from_secs(40), "gave up after {:?}", run.took);
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1027, 1028, 1027, 1028, 1027, 1028]]), &run);
    assert!(run.stderr.contains("fatal"), "{}", run.stderr);
}

#[cfg(target_os = "linux")]
#[test]
fn fake_a_server_that_never_accepts_is_given_up_on_after_the_connect_timeout() {
    let Some((_listener, addr)) = full_backlog_listener() else {
        eprintln!("SKIPPED: could not fill a listen backlog on this system");
        return;
    };
    let work = Workdir::new();
    work.file(FILE, b"x");
    let run = work.send(&addr, Some("zed"), &[FILE], &["--connect-timeout", "1"]);
    run.expect_code(3, "connect timeout");
    assert!(run.took < Duration::from_secs(20), "gave up after {:?}", run.took);
    assert!(run.stderr.contains(&addr), "{}", run.stderr);
}

/// A listener with a backlog of 0 that is already full, so the kernel drops further SYNs
/// and a connect hangs until its timeout. Returns the connections that fill it too.
#[cfg(target_os = "linux")]
fn full_backlog_listener() -> Option<((TcpListener, Vec<TcpStream>), String)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; it is handed to TcpListener.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return None;
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) != 0
            || libc::listen(fd, 0) != 0
        {
            libc::close(fd);
            return None;
        }
        TcpListener::from_raw_fd(fd)
    };
    let addr = listener.local_addr().ok()?;
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => return Some(((listener, fillers), addr.to_string())),
        }
    }
    None
}

#[test]
fn fake_a_server_closing_after_every_reply_with_empty_acks() {
    let (work, mut script) = fake_setup();
    script.close_after_reply = true;
    script.empty_acks = true;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("dor-like server");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1029]]), &run);
    assert!(!run.stderr.contains("attempt"), "closing is not a failure: {}", run.stderr);

    // The next run reconnects (1027) on such a server too.
    let again = send_to_fake(&work, &fake, &[]);
    again.ok("dor-like server, reconnecting");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1029, 1027, 1028, 1029]]), &again);
}

#[test]
fn fake_a_server_closing_after_every_reply_still_gets_the_1030() {
    let (work, mut script) = fake_setup();
    script.close_after_reply = true;
    script.empty_acks = true;
    script.wrong_cksums = 1;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("dor-like server with one mismatch");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1030, 1028, 1029]]), &run);
}

#[test]
fn fake_a_server_answering_1030_with_2104_is_tolerated() {
    let (work, mut script) = fake_setup();
    script.ack_crc_retry = true;
    script.wrong_cksums = 2;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("tomer-like server");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1030, 1028, 1030, 1028, 1029]]), &run);
    assert_eq!(run.json()[0]["sends"], 3);
}

#[test]
fn fake_a_server_with_version_byte_2_is_accepted() {
    let (work, mut script) = fake_setup();
    script.version = 2;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("version 2 server");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1029]]), &run);
}

#[test]
fn fake_a_denied_reconnection_registers_again() {
    let (work, mut script) = fake_setup();
    script.deny_reconnect = true;
    script.empty_acks = true;
    let fake = Fake::start(script);
    send_to_fake(&work, &fake, &[]).ok("first run registers");
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("second run: 2106, then registers again");
    let first = seq(&[&REGISTER, &[1028, 1029]]);
    // The saved id, then the same id byte-reversed (as tomer's me.info holds it), then a new
    // registration.
    let second = seq(&[&[1027, 1027], &REGISTER, &[1028, 1029]]);
    assert_sequence(&fake, &seq(&[&first, &second]), &run);
    assert!(run.stderr.contains("registering again"), "{}", run.stderr);
}

#[test]
fn fake_after_a_reconnection_requests_carry_the_id_the_server_gave() {
    let (work, script) = fake_setup();
    let fake = Fake::start(script);
    send_to_fake(&work, &fake, &[]).ok("first run registers");
    // An id written byte-reversed, as tomer's client writes me.info.
    let me = work.me_info();
    let mut reversed = FAKE_ID.0;
    reversed.reverse();
    let reversed = ClientId(reversed);
    work.file("me.info", me.replacen(&FAKE_ID.to_hex(), &reversed.to_hex(), 1).as_bytes());
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("reconnect with a reversed id");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1029, 1027, 1028, 1029]]), &run);
    let ids = fake.state.lock().unwrap().ids.clone();
    assert_eq!(ids[4], reversed, "the 1027 carries the id from me.info");
    assert_eq!(&ids[5..], [FAKE_ID, FAKE_ID], "1028 and 1029 carry the id from the 2105");
}

// Stand-ins for the existing servers' own behaviour (docs/compatibility.md), each driven
// through the four files the existing implementations were tried with: 1 MiB, 100 KiB,
// 0 bytes, and a 200-character name; registering, then reconnecting and sending again.

/// A work dir with the four files, and a script that knows their cksums.
fn four_files_setup() -> (Workdir, Script, Vec<String>) {
    let work = Workdir::new();
    let files: Vec<(String, Vec<u8>)> = vec![
        ("one-mib.bin".into(), common::random_bytes(1 << 20, 51)),
        ("hundred-kib.bin".into(), common::random_bytes(100 << 10, 52)),
        ("empty.bin".into(), Vec::new()),
        ("n".repeat(196) + ".bin", common::random_bytes(3_000, 53)),
    ];
    let mut script = Script::new(0);
    for (name, data) in &files {
        work.file(name, data);
        script.cksums.insert(name.clone(), Cksum::of(data));
    }
    (work, script, files.into_iter().map(|(name, _)| name).collect())
}

/// Sends the four files to the fake twice (a registration, then a reconnection); both
/// runs must verify every file.
fn send_four_files_twice(work: &Workdir, fake: &Fake, names: &[String]) -> [Run; 2] {
    let files: Vec<&str> = names.iter().map(String::as_str).collect();
    let runs =
        [0, 1].map(|_| work.send(&fake.addr, Some("zed"), &files, &["--json", "--timeout", "5"]));
    for (n, run) in runs.iter().enumerate() {
        run.ok(&format!("run {}", n + 1));
        let results = run.json();
        assert_eq!(results.len(), 4, "{}", run.stdout);
        assert!(results.iter().all(|r| r["status"] == "verified"), "{}", run.stdout);
    }
    runs
}

/// `[1028, 1029]` for each of `n` files.
fn each_file_once(n: usize) -> Vec<u16> {
    [1028, 1029].repeat(n)
}

#[test]
fn fake_b0rik_short_reads_every_file_size_arrives_because_each_request_is_one_write() {
    let (work, mut script, names) = four_files_setup();
    script.short_reads = true;
    let fake = Fake::start(script);
    let runs = send_four_files_twice(&work, &fake, &names);
    let files = each_file_once(4);
    // No request was held short (that would log a 2107 and then fail the connection).
    assert_sequence_any_name(&fake, &seq(&[&REGISTER, &files, &[1027], &files]), &runs[1]);
}

#[test]
fn fake_dor_closes_after_every_reply_and_reports_crc32_of_the_ciphertext() {
    let (work, mut script, names) = four_files_setup();
    script.close_after_reply = true;
    script.empty_acks = true;
    script.ack_crc_retry = true;
    script.crc32_of_ciphertext = true;
    let fake = Fake::start(script);
    let runs = send_four_files_twice(&work, &fake, &names);
    let files = each_file_once(4);
    assert_sequence_any_name(&fake, &seq(&[&REGISTER, &files, &[1027], &files]), &runs[1]);
    for run in &runs {
        assert_eq!(
            run.stderr.matches("CRC-32 of the encrypted data").count(),
            1,
            "one note a run: {}",
            run.stderr
        );
        assert!(!run.stderr.contains("attempt"), "no retries: {}", run.stderr);
    }
    // Each sent cksum is the plaintext's, not the server's CRC.
    let json = runs[1].json();
    assert_eq!(json[2]["cksum"], Cksum::of(b""), "{}", runs[1].stdout);
}

#[test]
fn fake_dor_closing_a_moment_after_each_reply_still_gets_every_file_both_runs() {
    // As the real dor server behaves: the close comes after the client may already have
    // written its next request on the connection (seen by hand: the second run, with
    // a reconnection, failed every file before the closes were counted on failures too).
    let (work, mut script, names) = four_files_setup();
    script.close_after_reply = true;
    script.close_late = true;
    script.empty_acks = true;
    script.ack_crc_retry = true;
    script.crc32_of_ciphertext = true;
    let fake = Fake::start(script);
    send_four_files_twice(&work, &fake, &names);
    let run = work.send(&fake.addr, None, &[&names[0]], &["--json", "--timeout", "5"]);
    run.ok("a third run");
}

#[test]
fn fake_dor_a_checksum_that_matches_neither_is_still_a_mismatch() {
    let (work, mut script) = fake_setup();
    script.close_after_reply = true;
    script.empty_acks = true;
    script.ack_crc_retry = true;
    script.crc32_of_ciphertext = true;
    script.wrong_cksums = 1;
    let fake = Fake::start(script);
    let run = send_to_fake(&work, &fake, &[]);
    run.ok("one wrong CRC, then the right one");
    assert_sequence(&fake, &seq(&[&REGISTER, &[1028, 1030, 1028, 1029]]), &run);
    assert_eq!(run.json()[0]["sends"], 2);
}

#[test]
fn fake_tomer_accepts_any_id_on_reconnect_and_the_reversed_saved_id_is_tried() {
    let (work, mut script, names) = four_files_setup();
    script.any_id_on_reconnect = true;
    script.version = 2;
    let fake = Fake::start(script);
    let files: Vec<&str> = names.iter().map(String::as_str).collect();
    let extra = ["--json", "--timeout", "5"];
    work.send(&fake.addr, Some("zed"), &files, &extra).ok("first run registers");
    // me.info with the id byte-reversed, as tomer's client writes it.
    let mut reversed = FAKE_ID.0;
    reversed.reverse();
    let reversed = ClientId(reversed);
    let me = work.me_info();
    work.file("me.info", me.replacen(&FAKE_ID.to_hex(), &reversed.to_hex(), 1).as_bytes());
    let run = work.send(&fake.addr, Some("zed"), &files, &extra);
    run.ok("second run, reversed id in me.info");
    assert!(run.json().iter().all(|r| r["status"] == "verified"), "{}", run.stdout);
    let first = seq(&[&REGISTER, &each_file_once(4)]);
    // The server accepts the 1027 with the reversed id and refuses the file; the client
    // reconnects with the id reversed back, and everything goes.
    let second = seq(&[&[1027, 1028, 1027], &each_file_once(4)]);
    assert_sequence_any_name(&fake, &seq(&[&first, &second]), &run);
    let ids = fake.state.lock().unwrap().ids.clone();
    let second_run = &ids[first.len()..];
    assert_eq!(&second_run[..2], [reversed, reversed], "1027 and 1028 with the saved id");
    assert!(second_run[2..].iter().all(|id| *id == FAKE_ID), "then the server's id");
    assert!(run.stderr.contains("byte-reversed"), "{}", run.stderr);
}

#[test]
fn verbose_says_what_the_client_does_and_quiet_register_says_nothing() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let reg = work.run(&["register", "--server", &server.address(), "--name", "vera", "-q"]);
    reg.ok("register -q");
    assert_eq!((reg.stdout.as_str(), reg.stderr.as_str()), ("", ""), "-q prints nothing");
    work.file("v.bin", b"verbose");
    let plain = work.send(&server.address(), None, &["v.bin"], &[]);
    assert!(!plain.stderr.contains("request"), "no play-by-play by default: {}", plain.stderr);
    let run = work.send(&server.address(), None, &["v.bin"], &["-v"]);
    run.ok("-v");
    for said in ["connected", "request", "code=1027", "code=2105", "code=1028", "code=2104"] {
        assert!(run.stderr.contains(said), "-v says {said}: {}", run.stderr);
    }
}

#[test]
fn a_file_that_shrinks_mid_send_ends_its_connection_and_the_next_file_goes_on_a_new_one() {
    let (work, mut script) = fake_setup();
    script.slow_files = true;
    let content = common::random_bytes(16 << 20, 82);
    script.cksums.insert("shrinking.bin".into(), Cksum::of(&content));
    let fake = Fake::start(script);
    let shrinking = work.file("shrinking.bin", &content);
    let mut cmd = work.command(&["send", "shrinking.bin", FILE, "--server", &fake.addr]);
    cmd.args(["--name", "zed", "--json", "--timeout", "10"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    let started = Instant::now();
    // The upload starts right after the key exchange and takes over a second at the
    // fake's pace: cut the file down a moment into it.
    while !fake.codes().contains(&1026) {
        assert!(started.elapsed() < Duration::from_secs(20), "no 1026: {:?}", fake.codes());
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    fs::OpenOptions::new().write(true).open(&shrinking).unwrap().set_len(2 << 20).unwrap();
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "a local problem with one file: {stderr}");
    assert!(stderr.contains("changed while it was being sent"), "{stderr}");
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["status"], "failed", "{stdout}");
    assert_eq!(lines[1]["status"], "verified", "{stdout}");
    // The half-sent 1028 never became a request at the server (the fake logs a 1028 once
    // its content is whole): its connection was given up, and the next file went on a new
    // one, after a key exchange.
    assert_eq!(fake.codes(), [1025, 1026, 1027, 1028, 1029], "{stderr}");
}

/// `send locked.txt ok.txt` as a user who cannot read the first: nothing about it goes
/// on the wire and the second is sent. (As root, run through `setpriv` as nobody.)
#[cfg(unix)]
#[test]
fn an_unreadable_file_is_reported_and_the_next_one_is_sent_with_nothing_out_of_step() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start(&[]);
    let work = Workdir::new();
    for dir in [work.path().to_owned(), work.path().join("home")] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let locked = work.file("locked.txt", b"secret");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
    work.file("ok.txt", b"fine");
    // A protocol-3 test: it bypasses the harness's command, so it says so itself.
    let address = server.address();
    let args =
        ["send", "locked.txt", "ok.txt", "--server", &address, "--name", "nob", "--protocol", "3"];
    // SAFETY: getuid has no preconditions.
    let mut cmd = if unsafe { libc::getuid() } == 0 {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
        cmd.arg(env!("CARGO_BIN_EXE_securexfer"));
        cmd.current_dir(work.path()).env("XDG_CONFIG_HOME", work.config());
        cmd.env("HOME", work.path().join("home")).args(args);
        cmd
    } else {
        work.command(&args)
    };
    cmd.arg("--json");
    let run = run_command(cmd, DEADLINE);
    run.expect_code(6, "one unreadable file");
    assert!(
        run.stderr.contains("locked.txt") && run.stderr.contains("ermission"),
        "{}",
        run.stderr
    );
    let results = run.json();
    assert_eq!(
        (results[0]["status"].as_str(), results[1]["status"].as_str()),
        (Some("failed"), Some("verified"))
    );
    assert_eq!(stored(&server, &work.id(), "ok.txt"), b"fine");
    assert!(!server.log().contains("unknown request code"), "{}", server.log());
    assert!(!server.log().contains("refused"), "nothing out of step: {}", server.log());
}

#[test]
fn ctrl_c_says_what_was_interrupted_and_exits_130() {
    let (work, mut script) = fake_setup();
    script.stall_files = true;
    let fake = Fake::start(script);
    work.file("big.bin", &common::random_bytes(8 << 20, 80));
    let mut cmd = work.command(&["send", FILE, "big.bin", "--server", &fake.addr, "--name", "zed"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let started = Instant::now();
    while !fake.codes().contains(&1028) {
        assert!(started.elapsed() < Duration::from_secs(20), "no 1028: {:?}", fake.codes());
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: kill(2) on the child we spawned and still own.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr
            .contains(&format!("interrupted while sending {FILE} (file 1 of 2); 0 of 2 verified")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().filter(|l| l.contains("interrupted")).count(), 1, "{stderr}");
}

/// The bars as a terminal of `cols` columns shows them (through `script`, which gives the
/// client a pseudo-terminal); `None` when `script` is missing.
fn bars_on_a_terminal(cols: u16) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no `script` (util-linux) to give the client a terminal");
        return None;
    }
    let server = Server::start(&[]);
    let work = Workdir::new();
    for name in ["a.bin", "b.bin"] {
        work.file(name, &common::random_bytes(64 << 20, 81));
    }
    let bin = env!("CARGO_BIN_EXE_securexfer");
    let line = format!(
        "stty cols {cols} rows 24; {bin} send a.bin b.bin --server {} --name tty --protocol 3",
        server.address()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).current_dir(work.path());
    cmd.env("XDG_CONFIG_HOME", work.config()).env("HOME", work.path().join("home"));
    let run = run_command(cmd, DEADLINE);
    run.ok("send on a terminal");
    Some(run.stdout)
}

#[test]
fn progress_shows_the_whole_run_and_fits_60_and_80_columns() {
    for cols in [60usize, 80] {
        let Some(screen) = bars_on_a_terminal(cols as u16) else { return };
        let totals: Vec<&str> = screen
            .match_indices("file ")
            .map(|(i, _)| &screen[i..])
            .filter_map(|rest| rest.find(']').map(|end| &rest[..=end]))
            .filter(|bar| bar.contains("/2 "))
            .collect();
        assert!(!totals.is_empty(), "the run's bar (file k/n): {screen:?}");
        assert!(totals.iter().any(|b| b.starts_with("file 2/2")), "{totals:?}");
        for bar in &totals {
            assert!(bar.chars().count() <= cols, "{cols} columns: {bar:?}");
            assert!(bar.contains("MiB") && bar.contains("ETA"), "binary units, ETA: {bar:?}");
        }
        assert!(screen.contains("MiB/s)"), "the summary uses the bars' units: {screen:?}");
    }
}

/// Checks the sequence of request codes only.
fn assert_sequence_any_name(fake: &Fake, want: &[u16], run: &Run) {
    assert_eq!(fake.codes(), want, "request sequence\n--- stderr\n{}", run.stderr);
}

// ---------------------------------------------------------------------------------------
// 3. The captures of existing implementations
// ---------------------------------------------------------------------------------------

const IMPLEMENTATIONS: [&str; 3] = ["b0rik", "dor", "tomer"];

/// The files `PREFIX.connNN.SUFFIX` of a capture folder, in connection order.
fn capture_files(folder: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(folder)
        .expect("capture folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{prefix}.conn")) && name.ends_with(suffix)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {prefix}.conn*{suffix} in {}", folder.display());
    files
}

/// Every response of a run, walking the s2c files with `decode_response`.
fn captured_responses(folder: &Path, prefix: &str) -> Vec<Response> {
    let mut out = Vec::new();
    for path in capture_files(folder, prefix, ".s2c.bin") {
        let bytes = fs::read(&path).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let (_, response, len) = decode_response(&bytes[at..])
                .unwrap_or_else(|e| panic!("{} at {at}: {e}", path.display()));
            out.push(response);
            at += len;
        }
    }
    out
}

/// Every request of a run with its 1028 content.
fn captured_requests(folder: &Path, prefix: &str) -> Vec<(Request, Vec<u8>)> {
    let mut out = Vec::new();
    for path in capture_files(folder, prefix, ".c2s.bin") {
        let bytes = fs::read(&path).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let d = decode_request(&bytes[at..], u32::MAX)
                .unwrap_or_else(|e| panic!("{} at {at}: {e}", path.display()));
            out.push((d.request, bytes[at + d.content.start..at + d.content.end].to_vec()));
            at += d.len;
        }
    }
    out
}

/// Loads a capture's `me.info` through our parser, from a writable copy.
fn captured_identity(folder: &Path) -> (tempfile::TempDir, Identity) {
    let copy = tempfile::tempdir().unwrap();
    for file in ["me.info", "priv.key"] {
        fs::copy(folder.join(file), copy.path().join(file)).unwrap();
    }
    let identity = Identity::load(&copy.path().join("me.info"))
        .unwrap_or_else(|e| panic!("{}/me.info does not load: {e}", folder.display()));
    (copy, identity)
}

#[test]
fn captured_identities_open_the_captured_aes_keys_and_files() {
    let Some(captures) = common::captures_dir() else { return };
    let small = fs::read(captures.join("small.bin")).unwrap();
    assert_eq!(Cksum::of(&small), 1_934_239_053, "small.bin's GNU cksum");
    for implementation in IMPLEMENTATIONS {
        let folder = captures.join(implementation);
        let (_copy, identity) = captured_identity(&folder);
        let transfer = TransferInfo::load(&folder.join("transfer.info"))
            .unwrap_or_else(|e| panic!("{implementation}/transfer.info: {e}"));
        assert_eq!(transfer.name, identity.name, "{implementation}: same name in both files");
        assert!(transfer.server.starts_with("127.0.0.1:"), "{implementation}: {transfer:?}");
        assert_eq!(transfer.files.first().and_then(|f| f.file_name()), Some("small.bin".as_ref()));

        for run in ["register", "reconnect"] {
            let label = format!("{implementation}/{run}");
            let responses = captured_responses(&folder, run);
            let (id, encrypted) = responses
                .iter()
                .find_map(|r| match r {
                    Response::PublicKeyAccepted { client_id, encrypted_key }
                    | Response::ReconnectAccepted { client_id, encrypted_key } => {
                        Some((*client_id, encrypted_key))
                    }
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{label}: no 2102/2105"));
            // tomer's client writes line 2 byte-reversed (the captures README does not say
            // so); a client that reconnects by name uses the id the server's 2105 gives.
            let mut written = id.0;
            if implementation == "tomer" {
                written.reverse();
            }
            assert_eq!(
                ClientId(written),
                identity.id,
                "{label}: me.info line 2 against the id on the wire"
            );
            let key = identity.key.decrypt_aes_key(encrypted).unwrap_or_else(|e| {
                panic!("{label}: me.info's key does not open the AES key: {e}")
            });
            let requests = captured_requests(&folder, run);
            let content = requests
                .iter()
                .find_map(|(r, content)| matches!(r, Request::SendFile(_)).then_some(content))
                .unwrap_or_else(|| panic!("{label}: no 1028"));
            let plain =
                decrypt_to_vec(&key, content).unwrap_or_else(|_| panic!("{label}: padding"));
            assert!(plain == small, "{label}: the 1028 decrypts to small.bin");
            if run == "register" {
                let sent_key = requests.iter().find_map(|(r, _)| match r {
                    Request::SendPublicKey { name, public_key } => {
                        Some((name.as_str(), public_key))
                    }
                    _ => None,
                });
                let (name, field) = sent_key.unwrap_or_else(|| panic!("{label}: no 1026"));
                assert_eq!(name, identity.name, "{label}");
                assert_eq!(
                    PublicKey::from_field(field).unwrap(),
                    identity.key.public_key(),
                    "{label}"
                );
            }
        }
    }
}

#[test]
fn captured_identities_are_used_by_our_client_and_re_registered_when_unknown() {
    let Some(captures) = common::captures_dir() else { return };
    let server = Server::start(&[]);
    for implementation in IMPLEMENTATIONS {
        let folder = captures.join(implementation);
        let work = Workdir::new();
        for file in ["me.info", "priv.key"] {
            fs::copy(folder.join(file), work.path().join(file)).unwrap();
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in ["me.info", "priv.key"] {
                fs::set_permissions(work.path().join(file), fs::Permissions::from_mode(0o600))
                    .unwrap();
            }
        }
        let name = fs::read_to_string(work.path().join("me.info")).unwrap();
        let name = name.lines().next().unwrap().to_owned();
        let small = fs::read(captures.join("small.bin")).unwrap();
        work.file("small.bin", &small);
        let run = work.send(&server.address(), None, &["small.bin"], &[]);
        run.ok(implementation);
        assert!(run.stderr.contains("registering again"), "{implementation}: {}", run.stderr);
        let me = work.me_info();
        assert_eq!(me.lines().next(), Some(name.as_str()), "{implementation}: name kept");
        assert_same(&stored(&server, &id_of(&me), "small.bin"), &small, implementation);
    }
}

// ---------------------------------------------------------------------------------------
// 4. Against the independent Python server
// ---------------------------------------------------------------------------------------

const PYTHON_HINT: &str = "install python3 and its `cryptography` package \
     (`apt-get install python3 python3-cryptography` or `pip install cryptography`); CI installs them";

/// `tests/peers/peer_server.py`, running; killed when dropped.
struct PeerServer {
    child: Child,
    addr: String,
    storage: tempfile::TempDir,
    stdout: Arc<Mutex<String>>,
    stderr: thread::JoinHandle<String>,
}

impl PeerServer {
    fn start(extra: &[&str]) -> PeerServer {
        let check = Command::new("python3")
            .args(["-c", "import cryptography"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {PYTHON_HINT}"));
        assert!(
            check.status.success(),
            "python3 cannot import cryptography: {PYTHON_HINT}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let storage = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/peer_server.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--port", "0", "--storage"])
            .arg(storage.path())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", script.display()));
        let stderr = collect(child.stderr.take().unwrap());
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(addr) = first.strip_prefix("listening on ").map(str::to_owned) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("peer_server.py did not start: {first:?}\n{}", stderr.join().unwrap());
        };
        let stdout = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stdout);
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        PeerServer { child, addr, storage, stdout, stderr }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits for the server to exit (it does with `--once`); returns its status (`None`
    /// if it had to be killed), stdout and stderr.
    fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, String, String) {
        let status = common::wait_timeout(&mut self.child, timeout);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Both pipes are closed now; give the stdout reader a moment to finish.
        thread::sleep(Duration::from_millis(50));
        let stdout = self.stdout();
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new));
        (status, stdout, stderr.join().unwrap_or_default())
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_python_peer_server_stores_what_we_send() {
    let peer = PeerServer::start(&["--once"]);
    let work = Workdir::new();
    let data = common::random_bytes(1_048_579, 8);
    work.file("cross.bin", &data);
    let run = work.send(&peer.addr, Some("pyuser"), &["cross.bin"], &[]);
    run.ok("send to peer_server.py");
    let stored = fs::read(peer.storage.path().join("cross.bin")).expect("peer stored cross.bin");
    assert_same(&stored, &data, "bytes stored by peer_server.py");
    let want = format!("verified cross.bin {} {}", data.len(), Cksum::of(&data));
    let (status, stdout, stderr) = peer.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "peer_server.py --once exits 0: {status:?}\n{stderr}"
    );
    assert!(stdout.contains(&want), "peer_server.py says {want:?}: {stdout}\n{stderr}");
}

#[test]
fn the_python_peer_server_drives_our_resend_and_give_up() {
    // Its test aid reports a wrong cksum for the first N files it receives.
    let peer = PeerServer::start(&["--wrong-cksum", "2"]);
    let work = Workdir::new();
    let data = common::random_bytes(33_333, 9);
    work.file("again.bin", &data);
    let run = work.send(&peer.addr, Some("pyresend"), &["again.bin"], &["--json"]);
    run.ok("two wrong cksums from peer_server.py");
    let line = &run.json()[0];
    assert_eq!(line["sends"], 3, "{line}");
    assert_eq!(line["cksum"], Cksum::of(&data), "{line}");
    assert_same(&fs::read(peer.storage.path().join("again.bin")).unwrap(), &data, "stored");
    let want = format!("verified again.bin {} {}", data.len(), Cksum::of(&data));
    assert!(peer.stdout().contains(&want), "peer_server.py says {want:?}: {}", peer.stdout());

    let stubborn = PeerServer::start(&["--wrong-cksum", "4"]);
    let work = Workdir::new();
    work.file("again.bin", &data);
    let run = work.send(&stubborn.addr, Some("pygiveup"), &["again.bin"], &[]);
    run.expect_code(5, "four wrong cksums from peer_server.py");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stubborn.stdout().contains("gave up again.bin") && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(stubborn.stdout().contains("gave up again.bin"), "{}", stubborn.stdout());
}

#[test]
fn a_me_info_with_a_byte_reversed_id_reconnects_without_registering_again() {
    // tomer's client writes the id in me.info byte-reversed; the server's answer tells.
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("data.bin", b"reversed id");
    work.run(&["register", "--server", &server.address(), "--name", "erin"]).ok("register");
    let me = work.me_info();
    let id = id_of(&me);
    let reversed: String = (0..16).rev().map(|i| &id[2 * i..2 * i + 2]).collect();
    let rewritten = me.replacen(&id, &reversed, 1);
    fs::write(work.path().join("me.info"), &rewritten).unwrap();

    let sent = work.send(&server.address(), None, &["data.bin"], &[]);
    sent.ok("send with a reversed id");
    assert!(sent.stderr.contains("byte-reversed"), "{}", sent.stderr);
    assert!(!sent.stderr.contains("registering"), "no new registration: {}", sent.stderr);
    assert_eq!(work.me_info(), rewritten, "me.info left as the other client wrote it");
    assert_eq!(stored(&server, &id, "data.bin"), b"reversed id");
}

#[test]
fn a_missing_file_is_reported_before_connecting_and_the_rest_are_sent() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    work.file("good.bin", b"good");
    let sent = work.send(&server.address(), Some("frank"), &["missing.bin", "good.bin"], &[]);
    assert_eq!(sent.code(), Some(6), "the worst outcome is the missing file: {}", sent.stderr);
    assert!(sent.stderr.contains("missing.bin"), "{}", sent.stderr);
    assert_eq!(stored(&server, &work.id(), "good.bin"), b"good");
}

#[test]
fn only_missing_files_means_no_connection_and_no_identity() {
    let work = Workdir::new();
    let sent = work.send(&closed_port(), Some("gina"), &["missing.bin"], &[]);
    assert_eq!(sent.code(), Some(6), "{}", sent.stderr);
    assert!(!work.path().join("me.info").exists(), "nothing registered");
}

// ---------------------------------------------------------------------------------------
// Trusting a server's key (protocol 4)

#[test]
fn trust_saves_the_key_on_first_use_and_then_finds_it_the_same() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let first = work.run(&["trust", "--server", &server.address()]);
    first.ok("trust on first use");
    assert!(first.stdout.contains("trusted on first use"), "{}", first.stdout);
    assert!(first.stdout.contains(&server.fingerprint), "{}", first.stdout);
    let known = fs::read_to_string(work.config().join("securexfer/known_servers")).unwrap();
    assert!(known.contains(&format!("{} {}", server.address(), server.fingerprint)), "{known}");
    let again = work.run(&["trust", "--server", &server.address()]);
    again.ok("trust again");
    assert!(again.stdout.contains("presents the key trusted for it"), "{}", again.stdout);
    assert_eq!(fs::read_to_string(work.config().join("securexfer/known_servers")).unwrap(), known);
}

#[test]
fn a_changed_server_key_is_a_hard_failure_with_exit_8_and_nothing_is_trusted() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let path = work.config().join("securexfer/known_servers");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // What the client trusted before: another key.
    let old = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let known = format!("{} {old}\n", server.address());
    fs::write(&path, &known).unwrap();
    let run = work.run(&["trust", "--server", &server.address()]);
    run.expect_code(8, "a changed key");
    assert!(run.stderr.contains("WARNING: THE KEY OF"), "{}", run.stderr);
    assert!(run.stderr.contains(&server.fingerprint) && run.stderr.contains(old), "{}", run.stderr);
    assert!(run.stderr.contains("Nothing was sent"), "{}", run.stderr);
    assert_eq!(fs::read_to_string(&path).unwrap(), known, "the trusted key is kept");

    // The operator confirms the new key: given with --fingerprint, it replaces the old one.
    let confirmed =
        work.run(&["trust", "--server", &server.address(), "--fingerprint", &server.fingerprint]);
    confirmed.ok("the confirmed key");
    assert!(confirmed.stdout.contains(&format!("instead of {old}")), "{}", confirmed.stdout);
    let now = fs::read_to_string(&path).unwrap();
    assert!(now.contains(&format!("{} {}", server.address(), server.fingerprint)), "{now}");
    assert!(!now.contains(old), "{now}");
}

#[test]
fn a_fingerprint_given_before_the_first_contact_must_match() {
    let server = Server::start(&[]);
    let work = Workdir::new();
    let other = "SHA256:ypeBEsobvcr6wjGzmiPcTaeG7/gUfE5yuYB3ha/uSLs";
    let wrong = work.run(&["trust", "--server", &server.address(), "--fingerprint", other]);
    wrong.expect_code(8, "a pinned key that differs");
    assert!(wrong.stderr.contains("the --fingerprint given"), "{}", wrong.stderr);
    assert!(!work.config().join("securexfer/known_servers").exists(), "nothing was trusted");
    let malformed = work.run(&["trust", "--server", &server.address(), "--fingerprint", "abc"]);
    malformed.expect_code(2, "not a fingerprint");
    let right =
        work.run(&["trust", "--server", &server.address(), "--fingerprint", &server.fingerprint]);
    right.ok("the pinned key");
    assert!(work.config().join("securexfer/known_servers").exists());
}

#[test]
fn trusting_a_server_that_speaks_only_protocol_3_or_none_says_so() {
    let work = Workdir::new();
    let fake = Fake::start(Script::new(0));
    let run = work.run(&["trust", "--server", &fake.addr]);
    run.expect_code(4, "a protocol-3 server");
    assert!(run.stderr.contains("does not speak protocol 4"), "{}", run.stderr);
    let closed = closed_port();
    let run = work.run(&["trust", "--server", &closed]);
    run.expect_code(3, "nobody listening");
    assert!(run.stderr.contains(&format!("cannot connect to {closed}")), "{}", run.stderr);
    assert!(!work.config().join("securexfer/known_servers").exists());
}
