//! Folders over protocol 4: paths of several components stored under the client's space
//! (in folders of its directory, made and left without following a link), the rule that a
//! path is never both a file and a folder, recursive `RM`, and the client's `send -r`,
//! `get -r`, `rm -r` and `send --dry-run` through the real binary.

use crate::common::v4::{self, Conn, Key, code};
use crate::common::{self, Server};
use crate::v4_client::{Client, code as exit, text};
use std::path::Path;

fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn registered(server: &Server, name: &str) -> (Conn, [u8; 16]) {
    let (mut conn, _) = Conn::hello(server.addr, &Key::ed25519());
    let (id, _) = v4::registered(&conn.register(name, None));
    (conn, id)
}

/// Puts and commits `data` at `path`; the refusal's code if the put or commit is refused.
fn store(conn: &mut Conn, path: &str, data: &[u8]) -> Result<(), u16> {
    let (received, committed) = conn.put_and_commit(path, data, blake3(data));
    if let Some(error) = v4::error_of(&received) {
        return Err(error.code);
    }
    match v4::error_of(&committed) {
        Some(error) => Err(error.code),
        None => Ok(()),
    }
}

/// `RM` with `recursive`: files, bytes, kept, or the refusal's code.
fn rm_recursive(conn: &mut Conn, path: &str) -> Result<[u64; 3], u16> {
    let tag = conn.tag();
    conn.send(v4::RM, tag, &v4::rm_payload(true, path));
    let frame = conn.read().expect("an answer to RM");
    if let Some(error) = v4::error_of(&frame) {
        return Err(error.code);
    }
    let p = &frame.payload;
    Ok(std::array::from_fn(|i| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap())))
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    fn walk(dir: &Path, prefix: &str, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), &format!("{prefix}{name}/"), found);
            } else {
                found.push(format!("{prefix}{name}"));
            }
        }
    }
    walk(dir, "", &mut found);
    found.sort();
    found
}

#[test]
fn nested_paths_are_stored_in_folders_listed_collapsed_and_removed_recursively() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, "alice");
    for (path, data) in [("docs/a.txt", &b"a"[..]), ("docs/sub/b.txt", b"bb"), ("docs.txt", b"c")] {
        store(&mut conn, path, data).unwrap_or_else(|c| panic!("{path}: code {c}"));
    }
    let space = server.storage().join(hex(&id));
    assert_eq!(files_under(&space), ["docs.txt", "docs/a.txt", "docs/sub/b.txt"]);
    let (top, _) = conn.list(false, "").expect("a listing");
    let top: Vec<(&str, u8)> = top.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(top, [("docs.txt", 1), ("docs", 2)], "byte order: a folder sorts as docs/");
    let (docs, _) = conn.list(false, "docs").expect("the folder");
    let docs: Vec<(&str, u8)> = docs.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(docs, [("docs/a.txt", 1), ("docs/sub", 2)]);
    let (_, data, _) = conn.get("docs/sub/b.txt").expect("a nested download");
    assert_eq!(data, b"bb");
    assert_eq!(conn.get("docs").unwrap_err().1.code, code::IS_FOLDER);
    assert_eq!(conn.rm("docs").unwrap_err().code, code::IS_FOLDER, "not without recursive");
    assert_eq!(rm_recursive(&mut conn, "docs"), Ok([2, 3, 2]), "both kept as versions");
    assert_eq!(files_under(&space), ["docs.txt"], "the emptied folders went too");
    assert_eq!(rm_recursive(&mut conn, "docs"), Err(code::NOT_FOUND));
    let versions: Vec<String> = {
        let db = rusqlite::Connection::open(server.dir.join("server.db")).unwrap();
        let mut stmt = db.prepare("SELECT Name FROM versions ORDER BY Name").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(versions, ["docs/a.txt", "docs/sub/b.txt"], "db restore can bring them back");
}

#[test]
fn a_path_is_never_both_a_file_and_a_folder() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, "bob");
    store(&mut conn, "a", b"file").unwrap();
    assert_eq!(store(&mut conn, "a/b", b"under a file"), Err(code::CONFLICT));
    assert_eq!(store(&mut conn, "a/b/c", b"deeper"), Err(code::CONFLICT));
    store(&mut conn, "d/e/f", b"nested").unwrap();
    assert_eq!(store(&mut conn, "d", b"over a folder"), Err(code::CONFLICT));
    assert_eq!(store(&mut conn, "d/e", b"over a folder"), Err(code::CONFLICT));
    let space = server.storage().join(hex(&id));
    assert_eq!(files_under(&space), ["a", "d/e/f"], "nothing of the refused puts is left");
    store(&mut conn, "d/e/g", b"beside").unwrap();
}

#[test]
fn a_symlink_planted_in_storage_at_a_folder_never_leads_a_write_outside() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, "mallory");
    store(&mut conn, "first", b"makes the client's directory").unwrap();
    let outside = tempfile::tempdir().unwrap();
    let space = server.storage().join(hex(&id));
    std::os::unix::fs::symlink(outside.path(), space.join("docs")).unwrap();
    let refused = store(&mut conn, "docs/evil.txt", b"should not land outside");
    assert!(refused.is_err(), "a link where a folder goes is refused");
    std::fs::create_dir(space.join("real")).unwrap();
    std::os::unix::fs::symlink(outside.path(), space.join("real/deeper")).unwrap();
    assert!(store(&mut conn, "real/deeper/x", b"no").is_err());
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
    assert_eq!(conn.get("first").expect("the server goes on").1, b"makes the client's directory");
}

#[test]
fn one_client_can_never_see_get_or_remove_anothers_nested_files() {
    let server = Server::start(&[]);
    let (mut alice, alice_id) = registered(&server, "alice");
    store(&mut alice, "private/notes.txt", b"alice's").unwrap();
    let (mut bob, _) = registered(&server, "bob");
    assert!(bob.list(true, "").expect("bob's listing").0.is_empty());
    assert_eq!(bob.list(true, "private").unwrap_err().code, code::NOT_FOUND);
    assert_eq!(bob.get("private/notes.txt").unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(rm_recursive(&mut bob, "private"), Err(code::NOT_FOUND));
    let via_id = format!("{}/private/notes.txt", hex(&alice_id));
    assert_eq!(bob.get(&via_id).unwrap_err().1.code, code::NOT_FOUND);
    // Bob's own folder of the same name is his alone.
    store(&mut bob, "private/notes.txt", b"bob's").unwrap();
    assert_eq!(alice.get("private/notes.txt").expect("alice's own").1, b"alice's");
}

/// A client registered with `server` as `name`, with a tree under `tree/`: nested
/// folders, a link out of the tree, a FIFO, an empty folder and an NFD name.
fn client_with_tree(server: &Server, name: &str) -> (Client, Vec<(&'static str, Vec<u8>)>) {
    let client = Client::new();
    let addr = server.addr.to_string();
    let out = client.run(&["register", "--server", &addr, "--name", name]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let tree = client.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(tree.join("empty")).unwrap();
    let files = vec![
        ("a.txt", b"top".to_vec()),
        ("sub/b.bin", common::random_bytes(300_000, 7)),
        ("sub/deeper/c.txt", b"deep".to_vec()),
        ("cafe\u{301}.txt", b"nfd".to_vec()),
    ];
    for (path, data) in &files {
        std::fs::write(tree.join(path), data).unwrap();
    }
    let outside = client.path().join("outside.txt");
    std::fs::write(&outside, b"outside the tree").unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("sub/link")).unwrap();
    std::os::unix::fs::symlink(client.path(), tree.join("up")).unwrap();
    let fifo = std::ffi::CString::new(tree.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    (client, files)
}

#[test]
fn send_r_stores_the_regular_files_and_get_r_brings_them_back_byte_identical() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let (client, files) = client_with_tree(&server, "carol");
    let out = client.run(&["send", "-r", "tree", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for skipped in ["sub/link", "up", "fifo", "empty"] {
        assert!(stderr.contains(&format!("tree/{skipped}")), "a note for {skipped}: {stderr}");
    }
    let out = client.run(&["ls", "--server", &addr, "--json"]);
    let names: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        names,
        ["tree/a.txt", "tree/caf\u{e9}.txt", "tree/sub/b.bin", "tree/sub/deeper/c.txt"],
        "NFC, byte order, nothing of the links, the FIFO or the empty folder"
    );
    let id_dirs: Vec<_> = std::fs::read_dir(server.storage()).unwrap().flatten().collect();
    assert!(id_dirs.iter().all(|d| d.file_name() != "outside.txt"));

    let down = client.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let out = client.run(&["get", "-r", "tree", "-o", down.to_str().unwrap(), "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    for (path, data) in &files {
        let path = path.replace("cafe\u{301}", "caf\u{e9}");
        assert!(std::fs::read(down.join("tree").join(&path)).unwrap() == *data, "{path}");
    }
    assert_eq!(files_under(&down).len(), 4, "{:?}", files_under(&down));

    // Again into the same place (tree/sub goes to DIR/sub/…): existing files are
    // refused without --force and left alone.
    std::fs::write(down.join("tree/sub/deeper/c.txt"), b"mine").unwrap();
    let into = down.join("tree");
    let out =
        client.run(&["get", "-r", "tree/sub", "-o", into.to_str().unwrap(), "--server", &addr]);
    assert_ne!(exit(&out), Some(0), "sub/… exists there");
    assert!(text(&out.stderr).contains("--force"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(into.join("sub/deeper/c.txt")).unwrap(), b"mine", "left alone");
    let out = client.run(&[
        "get",
        "-r",
        "tree/sub",
        "-o",
        into.to_str().unwrap(),
        "--force",
        "--server",
        &addr,
    ]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(into.join("sub/deeper/c.txt")).unwrap(), b"deep");

    // rm -r removes the folder's files, and the folder with them.
    let out = client.run(&["rm", "-r", "tree/sub", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 files"), "{}", text(&out.stdout));
    let out = client.run(&["ls", "--server", &addr]);
    assert_eq!(text(&out.stdout).lines().count(), 2, "{}", text(&out.stdout));
}

#[test]
fn dry_run_sends_nothing_and_says_what_would_be_replaced_or_refused() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let (client, _) = client_with_tree(&server, "dora");
    let out = client.run(&["send", "-r", "tree/sub", "--as", "tree", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    // A stored file `tree/sub` clashes with the tree's folder `tree/sub`.
    client.file("clash", b"x");
    let out = client.run(&["send", "clash", "--as", "tree/sub", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let db = server.dir.join("server.db");
    let rows = |db: &Path| -> i64 {
        let db = rusqlite::Connection::open(db).unwrap();
        db.query_row("SELECT count(*) FROM files", [], |r| r.get(0)).unwrap()
    };
    let before = rows(&db);
    let out = client.run(&["send", "-r", "tree", "--dry-run", "--json", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let status =
        |name: &str| lines.iter().find(|l| l["stored_name"] == name).map(|l| l["status"].clone());
    assert_eq!(status("tree/a.txt"), Some("new".into()));
    assert_eq!(status("tree/sub/b.bin"), Some("conflict".into()), "{lines:?}");
    assert_eq!(rows(&db), before, "nothing was sent");
    let out =
        client.run(&["send", "-r", "tree/sub", "--as", "tree", "--dry-run", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("replacing the stored file"), "{}", text(&out.stdout));
    assert_eq!(rows(&db), before, "nothing was sent");
    let out = client.run(&["send", "-r", "tree", "--protocol", "3", "--server", &addr]);
    assert_eq!(exit(&out), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("protocol 4 only"), "{}", text(&out.stderr));
}
