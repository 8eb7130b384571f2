//! Many small files over protocol 4 (docs/protocol-v4.md, "Many small files: group
//! commit"), against the real binary: puts and commits pipelined on one connection are
//! each answered, in request order, with every record true; a refused file in the middle
//! of a pipeline leaves the others alone; two commits of one path, or of a file and a path
//! under it, keep their order; a server killed while it stores a group loses nothing it
//! answered `COMMITTED`; and `send -r` of a few hundred small files arrives whole.

use crate::common::v4::{self, Conn, Frame, Key, code};
use crate::common::{self, Server};
use std::path::Path;
use std::time::Duration;

fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects, says HELLO, registers as `name`; the connection and the id.
fn registered(server: &Server, key: &Key, name: &str) -> (Conn, [u8; 16]) {
    let (mut conn, _) = Conn::hello(server.addr, key);
    let answer = conn.register(name, None);
    let (id, _) = v4::registered(&answer);
    (conn, id)
}

/// One file of a pipeline: its path, its bytes, and the hash its `COMMIT` carries.
struct File {
    path: String,
    data: Vec<u8>,
    commit_hash: [u8; 32],
}

impl File {
    fn new(path: &str, data: Vec<u8>) -> File {
        File { path: path.to_owned(), commit_hash: blake3(&data), data }
    }
}

/// The frames of `PUT_BEGIN`, `DATA`, `PUT_END`, `COMMIT` for every file, one tag each,
/// sent in one write without reading anything; the tags.
fn pipeline(conn: &mut Conn, files: &[File]) -> Vec<u32> {
    let mut bytes = Vec::new();
    let mut tags = Vec::new();
    for file in files {
        let tag = conn.tag();
        let size = file.data.len() as u64;
        bytes.extend(v4::frame(
            v4::PUT_BEGIN,
            tag,
            &v4::put_begin_payload(false, size, 0, &file.path),
        ));
        for chunk in file.data.chunks(64 * 1024) {
            bytes.extend(v4::frame(v4::DATA, tag, chunk));
        }
        bytes.extend(v4::frame(v4::PUT_END, tag, &[]));
        bytes.extend(v4::frame(v4::COMMIT, tag, &file.commit_hash));
        tags.push(tag);
    }
    conn.send_raw(&bytes);
    tags
}

/// The next frame, which must answer `tag` with `frame_type`.
fn expect(conn: &mut Conn, tag: u32, frame_type: u16) -> Frame {
    let frame = conn.read().expect("an answer");
    assert_eq!(
        (frame.tag, frame.frame_type),
        (tag, frame_type),
        "{frame:?} {:?}",
        v4::error_of(&frame)
    );
    frame
}

/// The next frame, which must be an `ERROR` with `code` answering `tag`.
fn expect_error(conn: &mut Conn, tag: u32, code: u16) {
    let (got, error) = conn.read_error();
    assert_eq!((got, error.code), (tag, code), "{error:?}");
}

/// The verified rows: path name, size, BLAKE3 and generation.
fn rows(server: &Server) -> Vec<(String, u64, [u8; 32], u64)> {
    let db = rusqlite::Connection::open(server.db()).expect("open server.db");
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = db
        .prepare("SELECT PathName, Size, Blake3, Generation FROM files WHERE Verified = 1")
        .unwrap();
    stmt.query_map([], |r| {
        let hash: Vec<u8> = r.get(2)?;
        Ok((
            r.get(0)?,
            r.get::<_, i64>(1)? as u64,
            hash.try_into().unwrap(),
            r.get::<_, i64>(3)? as u64,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every verified row describes the bytes on disk; no commit intent is left.
fn assert_records_true(server: &Server) {
    for (path, size, hash, _) in rows(server) {
        let bytes = std::fs::read(server.storage().join(&path))
            .unwrap_or_else(|e| panic!("a row names {path}, which cannot be read: {e}"));
        assert_eq!((bytes.len() as u64, blake3(&bytes)), (size, hash), "{path}");
    }
    let db = rusqlite::Connection::open(server.db()).unwrap();
    let intents: i64 =
        db.query_row("SELECT count(*) FROM commit_intents", [], |r| r.get(0)).unwrap();
    assert_eq!(intents, 0, "start-up decided every intent");
}

fn stored(server: &Server, id: &[u8; 16], path: &str) -> Option<Vec<u8>> {
    std::fs::read(server.storage().join(hex(id)).join(path)).ok()
}

#[test]
fn pipelined_puts_and_commits_are_each_committed_in_request_order_and_recorded() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "many");
    let files: Vec<File> = (0..150)
        .map(|i| {
            File::new(&format!("d{}/f{i}.txt", i % 3), common::random_bytes(1 + i * 97, i as u64))
        })
        .collect();
    let tags = pipeline(&mut conn, &files);
    let mut last = 0;
    for (file, &tag) in files.iter().zip(&tags) {
        let received = expect(&mut conn, tag, v4::PUT_RECEIVED);
        assert_eq!(
            v4::put_received(&received),
            (file.data.len() as u64, blake3(&file.data), false)
        );
        let (generation, _, kept) = v4::committed(&expect(&mut conn, tag, v4::COMMITTED));
        assert!(generation > last && !kept, "generations follow the requests");
        last = generation;
    }
    // A listing right after sees every file committed before it.
    let (entries, _) = conn.list(true, "").expect("a listing");
    assert_eq!(entries.len(), files.len());
    for file in &files {
        assert_eq!(
            stored(&server, &id, &file.path).as_deref(),
            Some(&file.data[..]),
            "{}",
            file.path
        );
    }
    assert_eq!(rows(&server).len(), files.len());
    assert_records_true(&server);
}

#[test]
fn a_refused_file_in_the_middle_of_a_pipeline_leaves_the_others_committed() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "mixed");
    let mut files: Vec<File> = (0..12)
        .map(|i| File::new(&format!("f{i}.txt"), common::random_bytes(500 + i, i as u64)))
        .collect();
    files[4].commit_hash = [7; 32]; // hash_mismatch
    files[6].path = "bad/../name".into(); // name_refused at PUT_BEGIN, its COMMIT not_found
    files[8].path = "f7.txt/under".into(); // f7.txt is a file by then: conflict
    let tags = pipeline(&mut conn, &files);
    for (i, &tag) in tags.iter().enumerate() {
        match i {
            4 => {
                expect(&mut conn, tag, v4::PUT_RECEIVED);
                expect_error(&mut conn, tag, code::HASH_MISMATCH);
            }
            6 => {
                expect_error(&mut conn, tag, code::NAME_REFUSED);
                expect_error(&mut conn, tag, code::NOT_FOUND);
            }
            8 => {
                expect_error(&mut conn, tag, code::CONFLICT);
                expect_error(&mut conn, tag, code::NOT_FOUND);
            }
            _ => {
                expect(&mut conn, tag, v4::PUT_RECEIVED);
                expect(&mut conn, tag, v4::COMMITTED);
            }
        }
    }
    for (i, file) in files.iter().enumerate() {
        let want = (![4, 6, 8].contains(&i)).then_some(&file.data[..]);
        assert_eq!(stored(&server, &id, &file.path).as_deref(), want, "{}", file.path);
    }
    assert_eq!(rows(&server).len(), files.len() - 3);
    assert_records_true(&server);
}

#[test]
fn two_commits_of_one_path_in_a_pipeline_are_stored_in_order_and_the_first_kept_as_a_version() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "twice");
    let files = [
        File::new("same.txt", b"first".to_vec()),
        File::new("other.txt", b"other".to_vec()),
        File::new("same.txt", b"second".to_vec()),
    ];
    // Both puts of the path are held before either commit: the commits still keep their
    // order.
    let mut bytes = Vec::new();
    let tags: Vec<u32> = files.iter().map(|_| conn.tag()).collect();
    for (file, &tag) in files.iter().zip(&tags) {
        let size = file.data.len() as u64;
        bytes.extend(v4::frame(
            v4::PUT_BEGIN,
            tag,
            &v4::put_begin_payload(false, size, 0, &file.path),
        ));
        bytes.extend(v4::frame(v4::DATA, tag, &file.data));
        bytes.extend(v4::frame(v4::PUT_END, tag, &[]));
    }
    for (file, &tag) in files.iter().zip(&tags) {
        bytes.extend(v4::frame(v4::COMMIT, tag, &file.commit_hash));
    }
    conn.send_raw(&bytes);
    for &tag in &tags {
        expect(&mut conn, tag, v4::PUT_RECEIVED);
    }
    let first = v4::committed(&expect(&mut conn, tags[0], v4::COMMITTED));
    expect(&mut conn, tags[1], v4::COMMITTED);
    let second = v4::committed(&expect(&mut conn, tags[2], v4::COMMITTED));
    assert!(second.0 > first.0 && second.2, "the second replaced the first and kept it");
    assert_eq!(stored(&server, &id, "same.txt").as_deref(), Some(&b"second"[..]));
    assert_records_true(&server);
}

/// A pipeline of small files, the server killed once `answered` of them are `COMMITTED`:
/// after a restart every file answered is stored as sent and every row is true.
fn kill_during_a_group(dir: &Path, round: u64, answered: usize) {
    let mut server = Server::start_in(dir, &[]);
    let key = Key::ed25519();
    let (mut conn, id) = registered(&server, &key, &format!("crash{round}"));
    let files: Vec<File> = (0..300)
        .map(|i| {
            File::new(
                &format!("r{round}/f{i}"),
                common::random_bytes(2000 + i, round * 1000 + i as u64),
            )
        })
        .collect();
    let tags = pipeline(&mut conn, &files);
    let mut committed = Vec::new();
    for (file, &tag) in files.iter().zip(&tags) {
        expect(&mut conn, tag, v4::PUT_RECEIVED);
        expect(&mut conn, tag, v4::COMMITTED);
        committed.push(file);
        if committed.len() == answered {
            break;
        }
    }
    // SIGKILL while later groups are being stored.
    server.kill();
    let server = Server::start_in(dir, &[]);
    for file in committed {
        assert_eq!(
            stored(&server, &id, &file.path).as_deref(),
            Some(&file.data[..]),
            "{}",
            file.path
        );
    }
    assert_records_true(&server);
}

#[test]
fn a_server_killed_while_it_stores_a_group_keeps_every_file_it_answered_committed() {
    let dir = tempfile::tempdir().unwrap();
    for (round, answered) in [(0, 1), (1, 40), (2, 150)] {
        kill_during_a_group(dir.path(), round, answered);
    }
}

#[test]
fn send_r_of_hundreds_of_small_files_verifies_each_in_order_and_get_r_gives_them_back() {
    use crate::v4_client::{Client, code, text};
    let server = Server::start(&[]);
    let client = Client::new();
    let out = client.run(&["register", "--server", &server.address(), "--name", "tree"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let root = client.path().join("tree");
    let mut sent = Vec::new();
    for i in 0..300usize {
        let rel = format!("d{}/s{}/f{i:03}.bin", i % 4, i % 3);
        // Sizes from empty to 8 KiB, and one large file in the middle, sent streamed.
        let len = if i == 150 { (1 << 20) + 5 } else { (i * 29) % 8192 };
        let data = common::random_bytes(len, 500 + i as u64);
        std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(&rel), &data).unwrap();
        sent.push((rel, data));
    }
    let out = client.run(&["send", "-r", "tree", "--server", &server.address(), "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let verified: Vec<&str> = lines
        .iter()
        .filter(|l| l["status"] == "verified")
        .map(|l| l["stored_name"].as_str().unwrap())
        .collect();
    assert_eq!(verified.len(), sent.len(), "{}", text(&out.stdout));
    let mut sorted = verified.clone();
    sorted.sort_unstable();
    assert_eq!(verified, sorted, "reported in the order sent");

    let back = client.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let out = client.run(&["get", "-r", "tree", "-o", "back", "--server", &server.address()]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    for (rel, data) in &sent {
        let got = std::fs::read(back.join("tree").join(rel)).unwrap();
        assert!(got == *data, "{rel} differs");
    }
    assert_records_true(&server);
}

#[test]
fn a_file_refused_in_the_middle_of_a_batch_is_its_own_error_and_the_others_are_verified_in_order() {
    use crate::v4_client::{Client, code, text};
    use crate::v4_peer::{Peer, Script};
    let script = Script { registered: true, over_quota: vec!["b.txt".into()], ..Script::default() };
    let peer = Peer::start(script);
    let client = Client::new();
    for name in ["a.txt", "b.txt", "c.txt", "d.txt"] {
        client.file(name, name.as_bytes());
    }
    let out = client.run(&["send", "a.txt", "b.txt", "c.txt", "d.txt", "--server", &peer.addr]);
    assert_eq!(code(&out), Some(4), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("quota exceeded: 9.8 GiB of 10 GiB used"), "{stderr}");
    let order: Vec<usize> =
        ["a.txt", "c.txt", "d.txt"].iter().map(|n| stdout.find(n).expect(n)).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order: {stdout}");
    let seen = peer.seen.lock().unwrap();
    assert!(["a.txt", "c.txt", "d.txt"].iter().all(|n| seen.files.contains_key(*n)));
    assert!(!seen.files.contains_key("b.txt"));
}

#[test]
fn a_hash_mismatch_in_a_batch_sends_that_file_again_and_the_results_keep_their_order() {
    use crate::v4_client::{Client, code, text};
    use crate::v4_peer::{Peer, Script};
    let peer = Peer::start(Script { registered: true, wrong_hashes: 1, ..Script::default() });
    let client = Client::new();
    for name in ["a.txt", "b.txt", "c.txt"] {
        client.file(name, name.as_bytes());
    }
    let out = client.run(&["send", "a.txt", "b.txt", "c.txt", "--server", &peer.addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stderr.contains("BLAKE3 mismatch on send 1"), "{stderr}");
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("verified")).collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains("a.txt") && lines[0].contains("after 2 send(s)"), "{stdout}");
    assert!(lines[1].contains("b.txt") && lines[2].contains("c.txt"), "{stdout}");
    assert_eq!(peer.seen.lock().unwrap().files.len(), 3);
}

#[test]
fn a_stopping_server_stores_and_answers_its_staged_commits_before_shutting_down() {
    let mut server = Server::start(&["--grace", "5"]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "stopping");
    let files: Vec<File> = (0..100)
        .map(|i| File::new(&format!("s/f{i}"), common::random_bytes(2000, 900 + i)))
        .collect();
    let tags = pipeline(&mut conn, &files);
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let mut committed = Vec::new();
    while let Ok(frame) = conn.read() {
        if frame.tag == 0 {
            assert_eq!(
                v4::error_of(&frame).map(|e| e.code),
                Some(code::SHUTTING_DOWN),
                "{frame:?}"
            );
            break;
        }
        if frame.frame_type == v4::COMMITTED {
            committed.push(frame.tag);
        }
    }
    assert!(common::wait_timeout(&mut server.child, Duration::from_secs(20)).is_some());
    for tag in committed {
        let file = &files[tags.iter().position(|&t| t == tag).unwrap()];
        assert_eq!(
            stored(&server, &id, &file.path).as_deref(),
            Some(&file.data[..]),
            "{}",
            file.path
        );
    }
    assert_records_true(&server);
}
