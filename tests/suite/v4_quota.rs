//! Per-client quotas (issue 15): set by the operator with `db quota`, announced in
//! `WELCOME` and `LIST_END`, checked at `PUT_BEGIN` before any content (open uploads of
//! the same client on other connections count), and shown by the client as "quota
//! exceeded: … of … used".

use crate::common::v4::{
    self, COMMIT, Conn, DATA, Key, PUT_BEGIN, PUT_END, code, error_of, put_begin_payload,
};
use crate::common::{self, Server};
use crate::v4_client::{Client, text};

fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Registers `name` over raw frames; the connection.
fn registered(server: &Server, key: &Key, name: &str) -> Conn {
    let (mut conn, _) = Conn::hello(server.addr, key);
    v4::registered(&conn.register(name, None));
    conn
}

/// `securexfer db quota --db server.db ARGS…` beside the running server; its output.
fn db_quota(server: &Server, args: &[&str]) -> std::process::Output {
    common::run_in(&server.dir, &[&["db", "quota", "--db", "server.db"], args].concat())
}

fn set_quota(server: &Server, args: &[&str]) {
    let out = db_quota(server, args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A whole put and its commit; `Ok(generation)` or the refusal.
fn store(conn: &mut Conn, path: &str, data: &[u8]) -> Result<u64, v4::ErrorAnswer> {
    let (received, committed) = conn.put_and_commit(path, data, blake3(data));
    if let Some(error) = error_of(&received) {
        // The COMMIT behind a refused put names no held upload.
        let answer = error_of(&committed).expect("COMMIT of a refused put is refused too");
        assert_eq!(answer.code, code::NOT_FOUND);
        return Err(error);
    }
    v4::put_received(&received);
    Ok(v4::committed(&committed).0)
}

#[test]
fn a_bytes_quota_refuses_before_content_and_counts_versions() {
    let server = Server::start(&["--keep-versions", "2"]);
    let key = Key::ed25519();
    let mut conn = registered(&server, &key, "alice");
    set_quota(&server, &["--client", "alice", "--bytes", "10K"]);

    // The next connection is told its quota and usage.
    let (mut conn2, welcome) = Conn::hello(server.addr, &key);
    assert_eq!((welcome.bytes_used, welcome.bytes_quota), (0, 10 * 1024));
    assert_eq!(welcome.files_quota, u64::MAX, "no files quota was set");

    assert!(store(&mut conn, "a", &[1; 6 * 1024]).is_ok());
    // A put declaring more than the room left is refused at PUT_BEGIN: the refusal
    // comes before any DATA is sent, and the connection goes on.
    let tag = conn2.tag();
    conn2.send(PUT_BEGIN, tag, &put_begin_payload(false, 5 * 1024, 0, "b"));
    let (refused, error) = conn2.read_error();
    assert_eq!((refused, error.code, error.closes), (tag, code::QUOTA_EXCEEDED, false));
    assert_eq!((error.unit, error.value, error.limit), (1, 6 * 1024, 10 * 1024), "{error:?}");
    conn2.send(PUT_END, tag, &[]);
    assert!(store(&mut conn2, "b", &[2; 4 * 1024]).is_ok(), "what fits is taken");

    // A kept version counts: replacing `a` (6 KiB, kept) with 1 KiB needs 1 KiB of room,
    // and there is none.
    let error = store(&mut conn, "a", &[3; 1024]).unwrap_err();
    assert_eq!((error.code, error.value), (code::QUOTA_EXCEEDED, 10 * 1024));

    // LIST_END says the same.
    let (_, end) = conn.list(true, "").expect("a listing");
    assert_eq!((end[2], end[3]), (10 * 1024, 10 * 1024), "bytes used and quota");
    assert_eq!((end[4], end[5]), (2, u64::MAX), "files used and quota");

    // The operator raises it: the next put sees it at once.
    set_quota(&server, &["--client", "alice", "--bytes", "none"]);
    assert!(store(&mut conn, "a", &[3; 1024]).is_ok());
    let db = rusqlite::Connection::open(server.dir.join("server.db")).unwrap();
    let files: i64 = db.query_row("SELECT count(*) FROM files", [], |r| r.get(0)).unwrap();
    assert_eq!(files, 2, "a refused put leaves no record");
}

#[test]
fn a_files_quota_counts_new_paths_and_lets_a_replacement_through() {
    let server = Server::start(&[]);
    let mut conn = registered(&server, &Key::ed25519(), "bob");
    set_quota(&server, &["--client", "bob", "--files", "2"]);
    assert!(store(&mut conn, "one", b"1").is_ok());
    assert!(store(&mut conn, "two", b"2").is_ok());
    let error = store(&mut conn, "three", b"3").unwrap_err();
    assert_eq!((error.code, error.unit), (code::QUOTA_EXCEEDED, 2));
    assert_eq!((error.value, error.limit), (2, 2));
    assert!(store(&mut conn, "two", b"two again").is_ok(), "a replacement is no new file");
}

#[test]
fn open_uploads_on_another_connection_count_against_the_quota() {
    // Nothing kept for resuming: an upload given up with its connection is gone (one kept
    // counts on; v4_resume::a_kept_upload_counts_against_the_bytes_quota_once).
    let server = Server::start(&["--resume-window", "0"]);
    let key = Key::ed25519();
    let mut first = registered(&server, &key, "carol");
    set_quota(&server, &["--client", "carol", "--bytes", "100K", "--files", "10"]);
    let (mut second, _) = Conn::hello(server.addr, &key);

    // 60 KiB received on the first connection and held, not committed yet…
    first.put("big", &[7; 60 * 1024]);
    let received = first.read().expect("PUT_RECEIVED");
    assert_eq!(v4::put_received(&received).0, 60 * 1024);
    // …leave 40 KiB to the second, though the records count nothing yet.
    let error = store(&mut second, "other", &[8; 41 * 1024]).unwrap_err();
    assert_eq!(
        (error.code, error.value, error.limit),
        (code::QUOTA_EXCEEDED, 60 * 1024, 100 * 1024)
    );
    assert!(store(&mut second, "other", &[8; 40 * 1024]).is_ok());

    // Once the held upload is given up with its connection, its room comes back.
    drop(first);
    let mut took = None;
    for _ in 0..100 {
        match store(&mut second, "third", &[9; 50 * 1024]) {
            Ok(generation) => {
                took = Some(generation);
                break;
            }
            Err(e) => assert_eq!(e.code, code::QUOTA_EXCEEDED),
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(took.is_some(), "the dropped connection's reservation was never given back");
}

#[test]
fn an_upload_of_unknown_size_is_ended_by_the_frame_that_passes_the_quota() {
    let server = Server::start(&[]);
    let mut conn = registered(&server, &Key::ed25519(), "dave");
    set_quota(&server, &["--client", "dave", "--bytes", "64K"]);
    let tag = conn.tag();
    conn.send(PUT_BEGIN, tag, &put_begin_payload(false, u64::MAX, 0, "stream"));
    for _ in 0..3 {
        conn.send(DATA, tag, &[5; 32 * 1024]);
    }
    conn.send(PUT_END, tag, &[]);
    conn.send(COMMIT, tag, &[0; 32]);
    let (refused, error) = conn.read_error();
    assert_eq!((refused, error.code, error.limit), (tag, code::QUOTA_EXCEEDED, 64 * 1024));
    let (_, after) = conn.read_error();
    assert_eq!(after.code, code::NOT_FOUND, "nothing is held to commit");
    assert!(store(&mut conn, "small", b"fits").is_ok(), "the connection goes on");
}

#[test]
fn db_quota_shows_sets_and_clears_and_the_client_says_quota_exceeded() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let client = Client::new();
    let out = client.run(&["register", "--server", &addr, "--name", "erin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = db_quota(&server, &["--client", "erin"]);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    assert!(shown.contains("bytes  0 B used of no quota"), "{shown}");
    set_quota(&server, &["--client", "erin", "--bytes", "1M", "--files", "5"]);
    let out = db_quota(&server, &["--client", "erin", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (doc["bytes_quota"].as_u64(), doc["files_quota"].as_u64()),
        (Some(1 << 20), Some(5))
    );

    client.file("small.bin", &[1; 700 * 1024]);
    client.file("more.bin", &[2; 400 * 1024]);
    let out = client.run(&["send", "--server", &addr, "small.bin", "more.bin"]);
    assert_eq!(out.status.code(), Some(4), "a refusal: {}", text(&out.stderr));
    let said = text(&out.stderr);
    assert!(said.contains("quota exceeded: 700 KiB of 1 MiB used"), "{said}");

    let out = client.run(&["ls", "--server", &addr]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("small.bin") && !text(&out.stdout).contains("used:"));
    assert!(
        text(&out.stderr).contains("used: 700 KiB of 1 MiB, 1 of 5 files"),
        "{}",
        text(&out.stderr)
    );

    // A dry run says so before anything is sent, file by file in order.
    client.file("tiny.bin", &[3; 100 * 1024]);
    let out = client.run(&["send", "--dry-run", "--server", &addr, "tiny.bin", "more.bin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("would send tiny.bin as tiny.bin (100 KiB)"), "{said}");
    assert!(
        said.contains(
            "would be refused: more.bin as more.bin: quota exceeded: 800 KiB of 1 MiB used"
        ),
        "{said}"
    );
    let out = client.run(&["send", "--dry-run", "--json", "--server", &addr, "more.bin"]);
    let line: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(line["status"], "quota", "{line}");

    set_quota(&server, &["--client", "erin", "--bytes", "none"]);
    let out = client.run(&["send", "--server", &addr, "more.bin"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = db_quota(&server, &["--client", "nobody", "--files", "1"]);
    assert_eq!(out.status.code(), Some(2), "an unknown client is a usage error");
    let out = db_quota(&server, &["--client", "erin", "--bytes", "lots"]);
    assert_eq!(out.status.code(), Some(2));
}
