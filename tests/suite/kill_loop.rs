//! SIGKILL at random moments (issue 18), on the default configuration (SQLite records,
//! a storage directory): the real server is killed while the real client sends a tree
//! over protocol 4 (pipelined small files in groups, and one resumable large file), then
//! started again on the same directory, round after round. After each start-up:
//!
//! - every file the client reported `verified` in any round so far is stored, byte for
//!   byte (nothing acknowledged is lost);
//! - `securexfer db verify` passes: every record describes the bytes stored, and every
//!   kept unfinished upload its file;
//! - no temporary file is left but kept unfinished uploads (start-up cleans the rest);
//! - the killed server never panicked.
//!
//! Each round kills within about the time a whole round took in a first, unkilled send,
//! so the kills fall anywhere from before the handshake to after the last answer
//! (`cargo test --test suite kill_loop -- --nocapture` prints how many files were
//! acknowledged and how many rounds ended before their kill). About 10 s for 50 rounds.

use crate::common::{self, Server};
use crate::v4_client::Client;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ROUNDS: u64 = 50;

/// A file of the tree: its path below the tree and its bytes.
struct File {
    path: String,
    data: Vec<u8>,
}

/// Round `round`'s tree: small files in three folders and one file over 1 MiB, its bytes
/// its own (so a file of one round cannot pass for another's).
fn tree(round: u64) -> Vec<File> {
    let mut files: Vec<File> = (0..120)
        .map(|i| File {
            path: format!("d{}/f{i:03}", i % 3),
            data: common::random_bytes(1000 + (i * 77) % 9000, round * 10_000 + i as u64),
        })
        .collect();
    files.push(File { path: "big.bin".into(), data: common::random_bytes(3 << 20, round) });
    files
}

/// Writes round `round`'s tree as `tree` in the client's directory.
fn write_tree(client: &Client, round: u64) -> Vec<File> {
    let files = tree(round);
    let root = client.path().join("tree");
    let _ = std::fs::remove_dir_all(&root);
    for file in &files {
        let path = root.join(&file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &file.data).unwrap();
    }
    files
}

/// A small deterministic generator for the moments to kill at.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The path stored as `stored` of whichever client holds it (each round's client
/// registers anew: its identity is for the server's address, which each start changes).
fn stored_file(storage: &Path, stored: &str) -> Option<PathBuf> {
    std::fs::read_dir(storage).ok()?.filter_map(Result::ok).find_map(|client| {
        let path = client.path().join(stored);
        path.is_file().then_some(path)
    })
}

/// Every temporary file under `dir` that is not a kept unfinished upload.
fn leftovers(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            leftovers(&path, found);
        } else if name.starts_with(".securexfer-part-")
            && !name.starts_with(".securexfer-part-kept-")
        {
            found.push(path);
        }
    }
}

/// What the client reported verified: the stored names in its `--json` lines.
fn verified(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["status"] == "verified")
        .filter_map(|v| v["stored_name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn fifty_sigkills_at_random_moments_lose_nothing_acknowledged_on_local_storage() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new();
    let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
    let mut random = 0x9e37_79b9_7f4a_7c15u64;
    let mut server = Server::start_in(dir.path(), &[]);
    // How long a whole round takes here (registration included), to kill within it.
    let whole = {
        let files = write_tree(&client, ROUNDS);
        let address = server.address();
        let started = Instant::now();
        let args = ["send", "-r", "tree", "--as", "whole", "--server", &address, "--name", "w"];
        let sent = client.run(&args);
        assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
        assert_eq!(files.len(), 121);
        started.elapsed().as_millis().max(50) as u64
    };
    for round in 0..ROUNDS {
        let files = write_tree(&client, round);
        let name = format!("r{round}");
        let address = server.address();
        // Each start changes the server's address, so each round's client registers anew.
        let me = format!("killed{round}");
        let args =
            ["send", "-r", "tree", "--as", &name, "--server", &address, "--name", &me, "--json"];
        let mut send = client.spawn(&args);
        // Anywhere from before the handshake to about the last answer.
        std::thread::sleep(Duration::from_millis(next(&mut random) % (whole + whole / 4)));
        server.kill();
        let log = server.log();
        assert!(!log.contains("panicked"), "round {round}: the server panicked:\n{log}");
        // The client would connect again (to an address no server listens on any more:
        // each start takes another port) and go on; what it reported so far is what was
        // acknowledged.
        let _ = send.kill();
        let _ = send.wait();
        let (out, _) = client.spawned();
        for stored in verified(&out) {
            let below = stored.strip_prefix(&format!("{name}/")).unwrap_or(&stored);
            let file = files.iter().find(|f| f.path == below);
            let file = file.unwrap_or_else(|| panic!("round {round}: verified {stored}?"));
            acknowledged.push((stored, file.data.clone()));
        }

        let started = Instant::now();
        server = Server::start_in(dir.path(), &[]);
        let storage = server.storage();
        for (stored, data) in &acknowledged {
            let path = stored_file(&storage, stored)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {stored} is gone"));
            assert!(std::fs::read(&path).unwrap() == *data, "round {round}: {stored} differs");
        }
        let db = server.db();
        let verify = common::run_in(
            dir.path(),
            &["db", "verify", "--db", &db.to_string_lossy(), "--storage", "storage"],
        );
        assert!(
            verify.status.success(),
            "round {round}: db verify failed:\n{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        let mut found = Vec::new();
        leftovers(&storage, &mut found);
        assert!(found.is_empty(), "round {round}: temporary files left: {found:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "round {round}: start-up too slow");
    }
    // The rounds killed at every stage: some acknowledged nothing, some everything.
    assert!(!acknowledged.is_empty(), "no round got any file acknowledged");
    let complete = (0..ROUNDS)
        .filter(|r| {
            acknowledged.iter().filter(|(s, _)| s.starts_with(&format!("r{r}/"))).count() == 121
        })
        .count();
    eprintln!(
        "kill loop: {ROUNDS} rounds killed within {whole} ms, {} files acknowledged, \
         {complete} rounds complete before the kill",
        acknowledged.len()
    );
    assert!(complete < ROUNDS as usize, "every round finished before its kill: none was cut");
}
