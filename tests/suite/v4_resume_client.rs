//! The client's side of resuming (issue 15, docs/protocol-v4.md "Resuming an upload"):
//! a `send` killed midway, run again, sends only what the server does not hold durable,
//! and the stored file is byte-identical; a local file that changed meanwhile is sent
//! from the start. Through the real binary on both sides, with the server's default
//! `--resume-window`.

use crate::common::{self, Server};
use crate::server::{metrics_address, sample, scrape};
use crate::v4_client::{Client, code, text};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

/// Every file under `dir` whose name starts with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(files_named(&path, prefix));
        } else if entry.file_name().to_string_lossy().starts_with(prefix) {
            found.push(path);
        }
    }
    found
}

/// The durable bytes the server recorded of an unfinished upload of `path`, if any.
fn recorded_durable(server: &Server, path: &str) -> Option<u64> {
    let db = rusqlite::Connection::open(server.db()).ok()?;
    db.busy_timeout(Duration::from_secs(10)).ok()?;
    db.query_row("SELECT Durable FROM unfinished_uploads WHERE Path = ?1", [path], |r| {
        r.get::<_, i64>(0)
    })
    .ok()
    .map(|d| d as u64)
}

/// A registered client with `name` holding `data` as `big.bin`.
fn client_with(server: &Server, data: &[u8]) -> Client {
    let client = Client::new();
    let out = client.run(&["register", "--server", &server.addr.to_string(), "--name", "alice"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    client.file("big.bin", data);
    client
}

/// Starts a slow `send big.bin`, waits until the server has written at least `at` bytes
/// of it, kills the client (SIGKILL: nothing of it says goodbye) and waits until the
/// server has recorded what it kept. Returns the durable bytes recorded.
fn send_killed_at(server: &Server, client: &Client, at: u64) -> u64 {
    let addr = server.addr.to_string();
    let mut child = client.spawn(&["send", "big.bin", "--limit-rate", "6M", "--server", &addr]);
    let started = Instant::now();
    loop {
        let written = files_named(&server.storage(), ".securexfer-part-kept-")
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        if written >= at {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the send ended ({status}) before it was killed at {at} bytes");
        }
        assert!(started.elapsed() < WAIT, "the server had {written} of {at} bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    loop {
        if let Some(durable) = recorded_durable(server, "big.bin").filter(|&d| d >= at) {
            return durable;
        }
        assert!(started.elapsed() < WAIT, "the server never recorded the upload it kept");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one JSON line of a single-file `send --json`.
fn json_line(stdout: &[u8]) -> serde_json::Value {
    let text = text(stdout);
    let line = text.lines().find(|l| l.contains("\"status\"")).unwrap_or_else(|| panic!("{text}"));
    serde_json::from_str(line).unwrap()
}

fn stored_copy(server: &Server) -> Vec<u8> {
    let found = files_named(&server.storage(), "big.bin");
    assert_eq!(found.len(), 1, "{found:?}");
    std::fs::read(&found[0]).unwrap()
}

#[test]
fn a_send_killed_at_half_sends_at_most_the_missing_half_again() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let size = 24 * MIB;
    let data = common::random_bytes(size, 15);
    let client = client_with(&server, &data);
    let durable = send_killed_at(&server, &client, size as u64 / 2);

    let out = client.run(&["send", "big.bin", "--json", "--server", &server.addr.to_string()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let line = json_line(&out.stdout);
    assert_eq!(line["status"], "verified", "{line}");
    let resumed = line["resumed_from"].as_u64().unwrap();
    assert_eq!(resumed, durable, "it continues from what the server recorded durable");
    let sent = size as u64 - resumed;
    assert!(sent * 100 <= size as u64 * 55, "sent {sent} of {size} again");
    assert!(stored_copy(&server) == data, "the stored file is the local one, byte for byte");
    assert_eq!(recorded_durable(&server, "big.bin"), None, "nothing is left unfinished");
    let metrics = scrape(&metrics_address(&server));
    assert_eq!(sample(&metrics, "securexfer_resumed_uploads_total"), 1.0);
    assert_eq!(sample(&metrics, "securexfer_resumed_bytes_total"), durable as f64);

    // Without --json the person is told.
    let out = client.run(&["send", "big.bin", "--server", &server.addr.to_string()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("resumed at"), "nothing was left to resume this time");
}

#[test]
fn a_file_changed_since_its_interrupted_send_goes_again_from_the_start() {
    let server = Server::start(&[]);
    let size = 12 * MIB;
    let data = common::random_bytes(size, 16);
    let client = client_with(&server, &data);
    send_killed_at(&server, &client, size as u64 / 3);

    // Same size, same modification time, different first bytes: only the prefix hash
    // can tell.
    let path = client.path().join("big.bin");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut changed = data.clone();
    changed[..4096].fill(0xA5);
    std::fs::write(&path, &changed).unwrap();
    std::fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();

    let out = client.run(&["send", "big.bin", "--json", "--server", &server.addr.to_string()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let line = json_line(&out.stdout);
    assert_eq!(line["resumed_from"], 0, "{line}");
    assert!(text(&out.stderr).contains("differ from what its interrupted upload sent"));
    assert!(stored_copy(&server) == changed, "the stored file is the changed one");

    // A newer modification time is a change too, told as such.
    send_killed_at(&server, &client, size as u64 / 3);
    std::fs::write(&path, &data).unwrap();
    let out = client.run(&["send", "big.bin", "--json", "--server", &server.addr.to_string()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(json_line(&out.stdout)["resumed_from"], 0);
    assert!(text(&out.stderr).contains("changed since its interrupted upload"));
    assert!(stored_copy(&server) == data);
}

// ---------------------------------------------------------------------------------------
// Downloads: `get` keeps what arrived in `.NAME.securexfer-partial` when it is cut off,
// and the next `get` of the name asks only for the rest of the same stored copy.

/// Sends `data` as `big.bin` (not resumed: the file is new).
fn upload(server: &Server, client: &Client, data: &[u8]) {
    client.file("big.bin", data);
    let out = client.run(&["send", "big.bin", "--server", &server.addr.to_string()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
}

/// Starts a slow `get big.bin -o down`, waits until its partial file holds at least `at`
/// bytes, kills it (SIGKILL) and returns the partial file's length then.
fn get_killed_at(server: &Server, client: &Client, at: u64) -> u64 {
    let addr = server.addr.to_string();
    let partial = client.path().join("down/.big.bin.securexfer-partial");
    let mut child =
        client.spawn(&["get", "big.bin", "-o", "down", "--limit-rate", "6M", "--server", &addr]);
    let started = Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < at {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the get ended ({status}) before it was killed at {at} bytes");
        }
        assert!(started.elapsed() < WAIT, "the partial file never reached {at} bytes");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!client.path().join("down/big.bin").exists(), "nothing under the name");
    std::fs::metadata(&partial).unwrap().len()
}

/// The server's metrics once it has no connection open (every download's count is in).
fn scrape_when_idle(address: &str) -> String {
    let started = Instant::now();
    loop {
        let metrics = scrape(address);
        if sample(&metrics, "securexfer_connections_open") == 0.0 {
            return metrics;
        }
        assert!(started.elapsed() < WAIT, "a connection stayed open:\n{metrics}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn get_json(server: &Server, client: &Client) -> (serde_json::Value, String) {
    let addr = server.addr.to_string();
    let out = client.run(&["get", "big.bin", "-o", "down", "--json", "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    (json_line(&out.stdout), text(&out.stderr))
}

#[test]
fn a_get_killed_midway_continues_from_its_partial_file_and_only_from_the_same_copy() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let size = 24 * MIB;
    let data = common::random_bytes(size, 17);
    let client = client_with(&server, &data);
    upload(&server, &client, &data);
    std::fs::create_dir(client.path().join("down")).unwrap();
    let down = client.path().join("down/big.bin");
    let partial = client.path().join("down/.big.bin.securexfer-partial");

    let kept = get_killed_at(&server, &client, size as u64 / 2);
    // The killed get may have been handed to the kernel whole before the kill (loopback
    // buffers grow to tens of MiB), so it counts as sent or not: the figures asserted are
    // those the second get adds, read once the killed one's connection is gone.
    let address = metrics_address(&server);
    let before = scrape_when_idle(&address);
    let (line, _) = get_json(&server, &client);
    assert_eq!(line["status"], "verified", "{line}");
    assert_eq!(line["resumed_from"].as_u64(), Some(kept), "it asked only for the rest");
    assert!(std::fs::read(&down).unwrap() == data, "byte-identical");
    assert!(!partial.exists(), "the partial file became the file");
    let attr = securexfer::sys::get_xattr(&down, c"user.securexfer.generation").unwrap();
    assert_eq!(attr, None, "the file carries no attribute of ours");
    let after = scrape_when_idle(&address);
    let added = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(sample(&after, "securexfer_resumed_downloads_total"), 1.0);
    assert_eq!(added("securexfer_downloads_total{outcome=\"sent\"}"), 1.0);
    let sent = added("securexfer_sent_bytes_total");
    assert_eq!(sent, (size as u64 - kept) as f64, "only the rest went out");

    // The stored copy replaced meanwhile: the partial file is of the old one, so the
    // download goes again from 0 and brings the new copy.
    std::fs::remove_file(&down).unwrap();
    get_killed_at(&server, &client, size as u64 / 3);
    let newer = common::random_bytes(size, 18);
    upload(&server, &client, &newer);
    let (line, stderr) = get_json(&server, &client);
    assert_eq!(line["resumed_from"], 0, "{line}");
    assert!(stderr.contains("the stored copy changed"), "{stderr}");
    assert!(std::fs::read(&down).unwrap() == newer, "the new copy, whole");

    // A partial file changed on disk (same length, same attribute): the end's hash
    // check catches it, and the download goes again from 0.
    std::fs::remove_file(&down).unwrap();
    let kept = get_killed_at(&server, &client, size as u64 / 3);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&partial).unwrap();
        f.seek(std::io::SeekFrom::Start(kept / 2)).unwrap();
        f.write_all(b"not what the server sent").unwrap();
    }
    let (line, stderr) = get_json(&server, &client);
    assert_eq!(line["resumed_from"], 0, "{line}");
    assert!(stderr.contains("did not hash as the stored copy"), "{stderr}");
    assert!(std::fs::read(&down).unwrap() == newer, "never the corrupted bytes");
    assert!(!partial.exists());
}

#[test]
fn ctrl_c_during_a_get_keeps_what_arrived_for_the_next_get_and_exits_130() {
    let server = Server::start(&[]);
    let size = 16 * MIB;
    let data = common::random_bytes(size, 19);
    let client = client_with(&server, &data);
    upload(&server, &client, &data);
    std::fs::create_dir(client.path().join("down")).unwrap();
    let partial = client.path().join("down/.big.bin.securexfer-partial");
    let addr = server.addr.to_string();
    let mut child =
        client.spawn(&["get", "big.bin", "-o", "down", "--limit-rate", "4M", "--server", &addr]);
    let started = Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < 4 * MIB as u64 {
        assert!(started.elapsed() < WAIT, "the partial file never grew");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let stderr = std::fs::read_to_string(client.path().join("spawned.err")).unwrap();
    assert!(stderr.contains("what arrived is kept in"), "{stderr}");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= 4 * MIB as u64);
    assert!(!client.path().join("down/big.bin").exists());

    let (line, _) = get_json(&server, &client);
    assert_eq!(line["resumed_from"].as_u64(), Some(kept));
    assert!(std::fs::read(client.path().join("down/big.bin")).unwrap() == data);
}
