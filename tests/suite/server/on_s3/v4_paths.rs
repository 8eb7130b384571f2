//! Protocol 4's paths over an object store, on both records backends: the folder rules
//! (a path is never both a file and a folder), `LIST`, `GET` (small copies read whole,
//! large ones streamed by the key on record) and `RM` keeping the removed copy as a version
//! (the object itself) or deleting its object. Where a copy's bytes are (an object's key)
//! says nothing of its path, so all of this reads the records' stored path.

use super::*;
use crate::common::v4::{self, Conn, Key, code};

fn hash(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

/// Puts and commits `data` at `path`; the refusal's code if the put or commit is refused.
fn store(conn: &mut Conn, path: &str, data: &[u8]) -> Result<(), u16> {
    let (received, committed) = conn.put_and_commit(path, data, hash(data));
    if let Some(error) = v4::error_of(&received) {
        return Err(error.code);
    }
    v4::error_of(&committed).map_or(Ok(()), |error| Err(error.code))
}

/// A protocol-4 client registered on `server` as `name`, its connection open.
fn client_of(server: &Server, name: &str) -> Conn {
    let (mut conn, _) = Conn::hello(server.addr, &Key::ed25519());
    v4::registered(&conn.register(name, None));
    conn
}

/// `RM -r path`: files, bytes, kept.
fn rm_recursive(conn: &mut Conn, path: &str) -> [u64; 3] {
    let tag = conn.tag();
    conn.send(v4::RM, tag, &v4::rm_payload(true, path));
    let frame = conn.read().expect("an answer to RM");
    assert!(v4::error_of(&frame).is_none(), "{:?}", v4::error_of(&frame));
    let p = &frame.payload;
    std::array::from_fn(|i| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap()))
}

/// The keys of the objects under the test's prefix.
fn keys(url: &str) -> Vec<String> {
    objects(url).into_iter().map(|(key, _)| key).collect()
}

fn folders_list_get_and_rm_on_the_object_store(postgres: bool) {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), postgres) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let (mut conn, _) = Conn::hello(server.addr, &Key::ed25519());
    let id = ClientId(v4::registered(&conn.register("paula", None)).0);
    let small = b"a small file".to_vec();
    let big = common::random_bytes(9 << 20, 81); // streamed, two parts
    let top = common::random_bytes(300 << 10, 82);
    store(&mut conn, "docs/a.txt", &small).unwrap();
    store(&mut conn, "docs/big.bin", &big).unwrap();
    store(&mut conn, "top", &top).unwrap();

    // The folder rules hold although no key says where a copy is.
    assert_eq!(store(&mut conn, "top/x", b"under a file"), Err(code::CONFLICT));
    assert_eq!(store(&mut conn, "docs/a.txt/x", b"under a file"), Err(code::CONFLICT));
    assert_eq!(store(&mut conn, "docs", b"over a folder"), Err(code::CONFLICT));
    assert_eq!(records.files().len(), 3, "nothing of the refused puts is recorded");
    assert_eq!(keys(&url).len(), 3, "nor stored");
    assert!(records.staged().is_empty(), "nor staged");

    // LIST: in byte order, folders collapsed unless recursive, totals as recorded.
    let (all, end) = conn.list(true, "").expect("a listing");
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["docs/a.txt", "docs/big.bin", "top"]);
    assert_eq!(all[1].hash, hash(&big));
    let bytes = (small.len() + big.len() + top.len()) as u64;
    assert_eq!(end[..3], [3, bytes, bytes]);
    let (collapsed, _) = conn.list(false, "").expect("the top level");
    let kinds: Vec<(&str, u8)> = collapsed.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(kinds, [("docs", 2), ("top", 1)]);
    let (under, _) = conn.list(false, "docs").expect("a folder");
    assert_eq!(under.len(), 2);

    // GET: both read paths give the bytes back with their hash; a folder is one.
    let (_, data, got) = conn.get("docs/a.txt").expect("a small download");
    assert_eq!((data, got), (small.clone(), hash(&small)));
    let (_, data, got) = conn.get("docs/big.bin").expect("a streamed download");
    assert!(data == big && got == hash(&big), "the large copy comes back as sent");
    assert_eq!(conn.get("docs").unwrap_err().1.code, code::IS_FOLDER);
    assert_eq!(conn.get("nothing").unwrap_err().1.code, code::NOT_FOUND);

    // RM keeps the removed copy as a version: the object stays, the version names it. A
    // replaced `top` has one version already; under --keep-versions 1 the older is
    // pruned, and its object goes.
    let newer = common::random_bytes(1000, 83);
    store(&mut conn, "top", &newer).unwrap();
    let first_version = records.versions()[0].path_name.clone();
    assert_eq!(conn.rm("top").expect("removed"), [1, newer.len() as u64, 1]);
    let versions = records.versions();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(object(&url, &versions[0].path_name) == newer, "the version is the removed object");
    assert!(!keys(&url).contains(&first_version), "the pruned version's object is gone");
    assert_eq!(conn.get("top").unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(rm_recursive(&mut conn, "docs"), [2, (small.len() + big.len()) as u64, 2]);
    assert!(records.files().is_empty());
    let (left, _) = conn.list(true, "").expect("an empty listing");
    assert!(left.is_empty());
    // Every object left is a recorded version, and every version has its object.
    let mut recorded: Vec<String> = records.versions().into_iter().map(|v| v.path_name).collect();
    recorded.sort();
    assert_eq!(keys(&url), recorded);
    assert!(recorded.iter().all(|key| key.starts_with(&format!("{}/", id.to_hex()))));
}

#[test]
fn protocol_4_folders_listings_downloads_and_removals_work_on_the_object_store_with_sqlite() {
    folders_list_get_and_rm_on_the_object_store(false);
}

#[test]
fn protocol_4_folders_listings_downloads_and_removals_work_on_the_object_store_with_postgres() {
    folders_list_get_and_rm_on_the_object_store(true);
}

#[test]
fn with_keep_versions_0_a_removal_on_the_object_store_deletes_the_object() {
    let Some((url, records, servers, _dirs)) = instances(1, &["--keep-versions", "0"]) else {
        return;
    };
    let mut conn = client_of(&servers[0], "quinn");
    store(&mut conn, "a/b", b"12345").unwrap();
    assert_eq!(keys(&url).len(), 1);
    assert_eq!(conn.rm("a/b").expect("removed"), [1, 5, 0]);
    assert!(keys(&url).is_empty(), "the object is deleted");
    assert!(records.files().is_empty() && records.versions().is_empty());
}

/// Another client's paths are out of reach on the object store too: the same path names
/// nothing of theirs, and their files are neither listed, read, nor removed.
#[test]
fn one_client_never_reaches_anothers_files_on_the_object_store() {
    let Some((_url, records, servers, _dirs)) = instances(1, &[]) else { return };
    let mut owner = client_of(&servers[0], "owner");
    store(&mut owner, "secret/plan.txt", b"mine").unwrap();
    let mut other = client_of(&servers[0], "other");
    let (listed, _) = other.list(true, "").expect("its own, empty, listing");
    assert!(listed.is_empty());
    assert_eq!(other.get("secret/plan.txt").unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(other.rm("secret/plan.txt").unwrap_err().code, code::NOT_FOUND);
    // Its own file at the same path is its own, beside the owner's.
    store(&mut other, "secret/plan.txt", b"theirs").unwrap();
    assert_eq!(owner.get("secret/plan.txt").expect("still there").1, b"mine");
    assert_eq!(records.files().len(), 2);
}

/// A recorded copy whose object is gone from the store (deleted behind the server's back)
/// is the server's failure, `internal` with the time logged, and never bytes of anything
/// else; the connection goes on.
#[test]
fn a_recorded_copy_whose_object_is_missing_is_an_internal_error_logged_for_the_operator() {
    let Some((url, records, servers, _dirs)) = instances(1, &[]) else { return };
    let server = &servers[0];
    let mut conn = client_of(server, "rosa");
    let big = common::random_bytes(1 << 20, 84);
    store(&mut conn, "small", b"small").unwrap();
    store(&mut conn, "big", &big).unwrap();
    let (store_client, prefix) = bucket(&url);
    for file in records.files() {
        let path = ObjectPath::from(format!("{prefix}/{}", file.path_name));
        RecordsAt::runtime().block_on(store_client.delete(&path)).unwrap();
    }
    for name in ["small", "big"] {
        let (data, error) = conn.get(name).expect_err("the object is gone");
        assert!(data.is_empty(), "nothing is sent of {name}");
        assert_eq!(error.code, code::INTERNAL, "{error:?}");
    }
    server.wait_for_log("a recorded protocol-4 file cannot be read");
    assert!(conn.list(true, "").is_ok(), "the connection goes on");
}

/// The client's own commands over the scale-out configuration: `send -r` of a tree (a
/// file of several parts among small ones), `ls`, `get -r` back byte for byte, `rm -r`.
#[test]
fn send_r_ls_get_r_and_rm_r_through_the_binary_on_postgres_and_the_object_store() {
    use crate::v4_client::{Client as Binary, code as exit, text};
    let Some((_url, records, servers, _dirs)) = instances(1, &[]) else { return };
    let addr = servers[0].addr.to_string();
    let client = Binary::new();
    let out = client.run(&["register", "--server", &addr, "--name", "sam"]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let files = [
        ("a.txt", b"top".to_vec()),
        ("sub/big.bin", common::random_bytes(9 << 20, 85)),
        ("sub/deeper/c.txt", b"deep".to_vec()),
    ];
    for (path, data) in &files {
        let at = client.path().join("tree").join(path);
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::write(at, data).unwrap();
    }
    let out = client.run(&["send", "-r", "tree", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let out = client.run(&["ls", "--server", &addr, "--json"]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let names: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["tree/a.txt", "tree/sub/big.bin", "tree/sub/deeper/c.txt"]);
    let down = client.path().join("down");
    std::fs::create_dir(&down).unwrap();
    let out = client.run(&["get", "-r", "tree", "-o", down.to_str().unwrap(), "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    for (path, data) in &files {
        assert!(std::fs::read(down.join("tree").join(path)).unwrap() == *data, "{path}");
    }
    let out = client.run(&["rm", "-r", "tree/sub", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("2 files"), "{}", text(&out.stdout));
    let left: Vec<String> = records.files().into_iter().map(|f| f.file_name).collect();
    assert_eq!(left, ["tree/a.txt"]);
}

/// Behind one address (a proxy standing in for the load balancer), a download whose
/// client is killed midway and whose instance then dies continues on another instance:
/// the partial file is kept, only the rest is fetched, and the file is byte-identical.
#[test]
fn a_download_cut_off_with_its_instance_continues_on_another_instance() {
    use crate::v4_attacks::{Mode, Proxy};
    use crate::v4_client::{Client as Binary, code as exit, text};
    let Some((_url, _records, mut servers, _dirs)) = instances(2, &[]) else { return };
    let balancer = Proxy::start(Mode::Forward(servers[0].addr.to_string()));
    let client = Binary::new();
    let out = client.run(&["register", "--server", &balancer.addr, "--name", "tess"]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let size = 24 << 20;
    let data = common::random_bytes(size, 86);
    client.file("big.bin", &data);
    let out = client.run(&["send", "big.bin", "--server", &balancer.addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));

    std::fs::create_dir(client.path().join("down")).unwrap();
    let partial = client.path().join("down/.big.bin.securexfer-partial");
    let args = ["get", "big.bin", "-o", "down", "--limit-rate", "6M", "--server", &balancer.addr];
    let mut child = client.spawn(&args);
    let started = std::time::Instant::now();
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < size as u64 / 3 {
        assert!(child.try_wait().unwrap().is_none(), "the get ended before it was cut off");
        assert!(started.elapsed().as_secs() < 60, "the partial file never grew");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    servers[0].kill();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size as u64, "a partial download: {kept} bytes");

    balancer.switch(Mode::Forward(servers[1].addr.to_string()));
    let out = client.run(&["get", "big.bin", "-o", "down", "--json", "--server", &balancer.addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    let line = line.lines().find(|l| l.contains("\"status\"")).expect("a result line");
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(line["status"], "verified", "{line}");
    assert_eq!(line["resumed_from"].as_u64(), Some(kept), "only the rest was asked for");
    assert!(std::fs::read(client.path().join("down/big.bin")).unwrap() == data);
    assert!(!partial.exists(), "the partial file became the file");
}
