//! `LIST`, `GET` and `RM` served by the real binary (issue 15), spoken in raw frames: what
//! a client gets back of its own files, in what order, at what size, and what it can never
//! reach (another client's files, paths outside its space).

use crate::common::v4::{self, Conn, Key, code};
use crate::common::{self, Server};

fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Connects, says HELLO, registers as `name`; the connection and the id.
fn registered(server: &Server, key: &Key, name: &str) -> (Conn, [u8; 16]) {
    let (mut conn, _) = Conn::hello(server.addr, key);
    let (id, _) = v4::registered(&conn.register(name, None));
    (conn, id)
}

fn store(conn: &mut Conn, path: &str, data: &[u8]) -> u64 {
    let (received, committed) = conn.put_and_commit(path, data, blake3(data));
    v4::put_received(&received);
    v4::committed(&committed).0
}

/// The server's database, opened beside it (WAL: the server keeps writing meanwhile).
fn database(server: &Server) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(server.dir.join("server.db")).expect("the database");
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    db
}

#[test]
fn a_client_lists_gets_and_removes_its_own_files() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "alice");
    let files: [(&str, Vec<u8>); 3] = [
        ("zeta.txt", b"last".to_vec()),
        ("Alpha.bin", common::random_bytes(3 * 1024 * 1024 + 17, 5)),
        ("é.txt", b"accent".to_vec()),
    ];
    let mut generations = Vec::new();
    for (path, data) in &files {
        generations.push(store(&mut conn, path, data));
    }
    let (entries, end) = conn.list(true, "").expect("a listing");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["Alpha.bin", "zeta.txt", "é.txt"], "byte order of the paths");
    let alpha = &entries[0];
    assert_eq!((alpha.kind, alpha.flags, alpha.size), (1, 0x01, files[1].1.len() as u64));
    assert_eq!((alpha.hash, alpha.generation), (blake3(&files[1].1), generations[1]));
    assert_eq!((alpha.mtime_ns, alpha.versions), (v4::MTIME_NS, 0));
    assert!(alpha.stored_at > 1_700_000_000);
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(end[..3], [3, total, total]);
    assert_eq!((end[3], end[4], end[5]), (u64::MAX, 3, u64::MAX));
    // A file path lists its one entry.
    let (one, end) = conn.list(false, "zeta.txt").expect("one entry");
    assert_eq!((one.len(), one[0].path.as_str(), end[0]), (1, "zeta.txt", 1));

    let (begin, data, hash) = conn.get("Alpha.bin").expect("a download");
    assert!(data == files[1].1, "the bytes come back as sent");
    assert_eq!(hash, blake3(&files[1].1));
    let (size, generation, mtime, flags, recorded) = v4::get_begin(&begin);
    assert_eq!(
        (size, generation, mtime, flags),
        (data.len() as u64, generations[1], v4::MTIME_NS, 1)
    );
    assert_eq!(recorded, hash);

    // Removed, kept as a version (--keep-versions 1), gone from the listing.
    assert_eq!(conn.rm("zeta.txt").expect("removed"), [1, 4, 1]);
    let (entries, _) = conn.list(true, "").expect("a listing");
    assert_eq!(entries.len(), 2);
    assert_eq!(conn.get("zeta.txt").unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(conn.rm("zeta.txt").unwrap_err().code, code::NOT_FOUND);
    assert!(!server.storage().join(hex(&id)).join("zeta.txt").exists());
    let versions: i64 = database(&server)
        .query_row("SELECT count(*) FROM versions WHERE Name = 'zeta.txt'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(versions, 1, "the removed copy is a version db restore can bring back");
    // Another copy of the name lists its kept version.
    store(&mut conn, "zeta.txt", b"again");
    let (one, _) = conn.list(false, "zeta.txt").expect("one entry");
    assert_eq!(one[0].versions, 1);
}

#[test]
fn with_keep_versions_0_a_removed_file_is_deleted_outright() {
    let server = Server::start(&["--keep-versions", "0"]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "bo");
    store(&mut conn, "a", b"12345");
    assert_eq!(conn.rm("a").expect("removed"), [1, 5, 0]);
    let dir = server.storage().join(hex(&id));
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
    let listed = conn.list(true, "").expect("a listing");
    assert_eq!(
        (listed.0.len(), listed.1[0]),
        (0, 0),
        "an empty space lists nothing, not not_found"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order_each_whole() {
    let server = Server::start(&[]);
    let (mut conn, _) = registered(&server, &Key::ed25519(), "carol");
    let a = common::random_bytes(2 * 1024 * 1024 + 1, 8);
    let b = common::random_bytes(100, 9);
    store(&mut conn, "a", &a);
    store(&mut conn, "b", &b);
    let tags: Vec<u32> = (0..5).map(|_| conn.tag()).collect();
    let mut burst = Vec::new();
    burst.extend(v4::frame(v4::GET, tags[0], &v4::get_payload(0, 0, "a")));
    burst.extend(v4::frame(v4::GET, tags[1], &v4::get_payload(0, 0, "missing")));
    burst.extend(v4::frame(v4::LIST, tags[2], &v4::list_payload(true, "")));
    burst.extend(v4::frame(v4::GET, tags[3], &v4::get_payload(0, 0, "b")));
    burst.extend(v4::frame(v4::GET, tags[4], &v4::get_payload(0, 0, "a")));
    conn.send_raw(&burst);
    assert!(conn.read_get(tags[0]).expect("a").1 == a);
    assert_eq!(conn.read_get(tags[1]).unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(conn.read_list(tags[2]).expect("the listing").0.len(), 2);
    assert!(conn.read_get(tags[3]).expect("b").1 == b);
    assert!(conn.read_get(tags[4]).expect("a again").1 == a);
}

#[test]
fn a_resumed_get_skips_the_prefix_but_hashes_it_and_a_changed_copy_is_a_conflict() {
    let server = Server::start(&[]);
    let (mut conn, _) = registered(&server, &Key::ed25519(), "dan");
    let data = common::random_bytes(1_500_000, 3);
    let generation = store(&mut conn, "f", &data);
    let tag = conn.tag();
    conn.send(v4::GET, tag, &v4::get_payload(1_000_000, generation, "f"));
    let (_, rest, hash) = conn.read_get(tag).expect("the rest");
    assert!(rest == data[1_000_000..]);
    assert_eq!(hash, blake3(&data), "the hash covers the whole file");
    let tag = conn.tag();
    conn.send(v4::GET, tag, &v4::get_payload(10, generation + 100, "f"));
    assert_eq!(conn.read_get(tag).unwrap_err().1.code, code::CONFLICT);
    let tag = conn.tag();
    conn.send(v4::GET, tag, &v4::get_payload(2_000_000, generation, "f"));
    assert_eq!(conn.read_get(tag).unwrap_err().1.code, code::CONFLICT, "past the end");
}

#[test]
fn bad_paths_and_unknown_names_are_refused_and_the_connection_goes_on() {
    let server = Server::start(&[]);
    let (mut conn, _) = registered(&server, &Key::ed25519(), "eve");
    store(&mut conn, "ok", b"fine");
    for path in ["../ok", "/ok", "a//b", "a\\b", ".", "x\u{7}", "e\u{301}"] {
        assert_eq!(conn.get(path).unwrap_err().1.code, code::NAME_REFUSED, "GET {path:?}");
        assert_eq!(conn.rm(path).unwrap_err().code, code::NAME_REFUSED, "RM {path:?}");
        assert_eq!(conn.list(true, path).unwrap_err().code, code::NAME_REFUSED, "LIST {path:?}");
    }
    assert_eq!(conn.get("").unwrap_err().1.code, code::NAME_REFUSED, "GET of nothing");
    assert_eq!(conn.get("nope").unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(conn.list(false, "nope").unwrap_err().code, code::NOT_FOUND);
    let refused = conn.rm("nope").unwrap_err();
    assert_eq!((refused.code, refused.closes), (code::NOT_FOUND, false));
    assert!(refused.message.contains("nope"), "{refused:?}");
    assert_eq!(conn.get("ok").expect("still served").1, b"fine");
}

#[test]
fn a_stranger_gets_not_registered_for_list_get_and_rm() {
    let server = Server::start(&[]);
    let (mut conn, _) = Conn::hello(server.addr, &Key::ed25519());
    assert_eq!(conn.list(true, "").unwrap_err().code, code::NOT_REGISTERED);
    assert_eq!(conn.get("a").unwrap_err().1.code, code::NOT_REGISTERED);
    assert_eq!(conn.rm("a").unwrap_err().code, code::NOT_REGISTERED);
}

#[test]
fn one_client_can_never_list_get_or_remove_anothers_files() {
    let server = Server::start(&[]);
    let (mut alice, alice_id) = registered(&server, &Key::ed25519(), "alice");
    store(&mut alice, "secret", b"alice's");
    let (mut bob, _) = registered(&server, &Key::ed25519(), "bob");
    let (entries, end) = bob.list(true, "").expect("bob's listing");
    assert!(entries.is_empty() && end[0] == 0, "{entries:?}");
    assert_eq!(bob.list(false, "secret").unwrap_err().code, code::NOT_FOUND);
    assert_eq!(bob.get("secret").unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(bob.rm("secret").unwrap_err().code, code::NOT_FOUND);
    // Alice's id as a path component is just a name in bob's space.
    let via_id = format!("{}/secret", hex(&alice_id));
    assert_eq!(bob.get(&via_id).unwrap_err().1.code, code::NOT_FOUND);
    assert_eq!(bob.get("../secret").unwrap_err().1.code, code::NAME_REFUSED);
    assert_eq!(alice.get("secret").expect("alice's own").1, b"alice's");
}

#[test]
fn a_listing_of_thousands_of_files_streams_complete_in_byte_order_over_many_frames() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "frank");
    let id_hex = hex(&id);
    // 3,000 rows with long names, written beside the server: uploads would take minutes.
    let mut db = database(&server);
    let tx = db.transaction().unwrap();
    let mut names: Vec<String> = (0..3000u32)
        .map(|i| format!("{:0>200}-{}", (i * 7919) % 3000, "x".repeat(i as usize % 50)))
        .collect();
    for name in &names {
        tx.execute(
            "INSERT INTO files (ID, FileName, PathName, StoredPath, Verified, Size, StoredAt,
                                Protocol)
             VALUES (?1, ?2, ?3, ?3, 1, 1, datetime('now'), 3)",
            rusqlite::params![&id[..], name, format!("{id_hex}/{name}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let tag = conn.tag();
    conn.send(v4::LIST, tag, &v4::list_payload(true, ""));
    let (mut got, mut frames) = (Vec::new(), 0);
    loop {
        let frame = conn.read().expect("the listing");
        assert_eq!(frame.tag, tag);
        if frame.frame_type == v4::LIST_END {
            assert_eq!(v4::list_end(&frame)[..2], [3000, 3000]);
            break;
        }
        assert!(frame.payload.len() <= 65_536);
        frames += 1;
        got.extend(v4::list_entries(&frame).into_iter().map(|e| (e.path, e.flags)));
    }
    names.sort();
    let paths: Vec<&String> = got.iter().map(|(p, _)| p).collect();
    assert_eq!(paths, names.iter().collect::<Vec<_>>(), "complete, each once, in byte order");
    assert!(got.iter().all(|(_, flags)| *flags == 0x04), "protocol 3, no hash yet");
    assert!(frames >= 8, "{frames} LIST_ENTRIES frames for ~770 KB of entries");
}

#[test]
fn a_protocol_3_copy_gets_its_blake3_recorded_on_first_read_and_a_damaged_copy_is_corrupt() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "gus");
    let dir = server.storage().join(hex(&id));
    std::fs::create_dir_all(&dir).unwrap();
    let old = common::random_bytes(70_000, 4);
    std::fs::write(dir.join("old.bin"), &old).unwrap();
    database(&server)
        .execute(
            "INSERT INTO files (ID, FileName, PathName, StoredPath, Verified, Size, StoredAt,
                                Protocol)
             VALUES (?1, 'old.bin', ?2, ?2, 1, ?3, datetime('now'), 3)",
            rusqlite::params![&id[..], format!("{}/old.bin", hex(&id)), old.len() as i64],
        )
        .unwrap();
    let (begin, data, hash) = conn.get("old.bin").expect("a protocol-3 copy");
    assert!(data == old);
    assert_eq!(hash, blake3(&old));
    assert_eq!(v4::get_begin(&begin).3, 0x04, "protocol 3, hash not known yet");
    let (begin, _, _) = conn.get("old.bin").expect("again");
    assert_eq!(v4::get_begin(&begin).3, 0x05, "hash known from now on");
    assert_eq!(v4::get_begin(&begin).4, blake3(&old));

    // A copy changed behind the server's back is refused in place of GET_END.
    store(&mut conn, "new.bin", &old);
    let mut damaged = old.clone();
    damaged[69_999] ^= 1;
    std::fs::write(dir.join("new.bin"), &damaged).unwrap();
    let (sent, error) = conn.get("new.bin").unwrap_err();
    assert_eq!((sent.len(), error.code), (old.len(), code::CORRUPT), "{error:?}");
    // Longer and shorter than the record.
    std::fs::write(dir.join("new.bin"), &old[..100]).unwrap();
    assert_eq!(conn.get("new.bin").unwrap_err().1.code, code::CORRUPT);
    std::fs::write(dir.join("new.bin"), [&old[..], b"x"].concat()).unwrap();
    assert_eq!(conn.get("new.bin").unwrap_err().1.code, code::CORRUPT);
    assert_eq!(conn.get("old.bin").expect("the connection goes on").1.len(), old.len());
}

// ---------------------------------------------------------------------------------------
// ls, get and rm through the real binary: against `securexfer serve`, and against the
// scripted peer for a server that lies.

use crate::v4_client::{Client, code, text};
use crate::v4_peer::{GetLie, Peer, Script};

/// A client registered with `server` as `name`, holding `files` sent over protocol 4.
fn client_with(server: &Server, name: &str, files: &[(&str, &[u8])]) -> Client {
    let client = Client::new();
    let addr = server.addr.to_string();
    let out = client.run(&["register", "--server", &addr, "--name", name]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let mut args = vec!["send", "--server", &addr];
    for (file, data) in files {
        client.file(file, data);
        args.push(file);
    }
    if !files.is_empty() {
        let out = client.run(&args);
        assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    }
    client
}

#[test]
fn send_then_ls_get_and_rm_through_the_binary_give_back_the_same_bytes() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let big = common::random_bytes(5 * 1024 * 1024 + 3, 77);
    let client =
        client_with(&server, "alice", &[("big.bin", &big), ("notes.txt", b"some notes\n")]);

    let out = client.run(&["ls", "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(lines[0].ends_with("  big.bin") && lines[0].contains(" 5 MiB "), "{listing}");
    assert!(lines[0].contains(&hex(&blake3(&big))[..16]), "{listing}");
    assert!(lines[1].ends_with("  notes.txt"), "{listing}");
    let out = client.run(&["ls", "--server", &addr, "*.txt", "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    let docs: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(docs.len(), 2, "one file and the summary");
    assert_eq!(docs[0]["name"], "notes.txt");
    assert_eq!(docs[0]["size"], 11);
    assert_eq!(docs[0]["blake3"], hex(&blake3(b"some notes\n")));
    assert_eq!(
        (docs[1]["summary"].as_bool(), docs[1]["files_used"].as_u64()),
        (Some(true), Some(2))
    );

    // Downloads land in the directory given, identical; an existing file needs --force.
    let into = client.path().join("down");
    std::fs::create_dir(&into).unwrap();
    let dir = into.to_str().unwrap();
    let out = client.run(&["get", "big.bin", "notes.txt", "-o", dir, "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(std::fs::read(into.join("big.bin")).unwrap() == big);
    {
        // The mode a new file gets under the umask (not the temporary file's 0600).
        use std::os::unix::fs::PermissionsExt;
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let umask = status.lines().find_map(|l| l.strip_prefix("Umask:")).unwrap().trim();
        let umask = u32::from_str_radix(umask, 8).unwrap();
        let mode = std::fs::metadata(into.join("big.bin")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666 & !umask);
    }
    assert_eq!(std::fs::read(into.join("notes.txt")).unwrap(), b"some notes\n");
    assert_eq!(text(&out.stdout).matches(": verified").count(), 2, "{}", text(&out.stdout));
    std::fs::write(into.join("notes.txt"), b"mine").unwrap();
    let out = client.run(&["get", "notes.txt", "-o", dir, "--server", &addr]);
    assert_eq!(code(&out), Some(6), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("--force"), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(into.join("notes.txt")).unwrap(), b"mine", "left alone");
    let out = client.run(&["get", "notes.txt", "-o", dir, "--force", "--server", &addr, "--json"]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(into.join("notes.txt")).unwrap(), b"some notes\n");
    let doc: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (doc["status"].as_str(), doc["blake3"].as_str()),
        (Some("verified"), Some(&*hex(&blake3(b"some notes\n"))))
    );
    let out = client.run(&["get", "notes.txt", "-o", "-", "--server", &addr]);
    assert_eq!((code(&out), out.stdout.as_slice()), (Some(0), &b"some notes\n"[..]));
    let left: Vec<_> = std::fs::read_dir(&into).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 2, "no temporary file left: {left:?}");

    // Removed: gone from ls, and a get or rm of it says so, exit 4.
    let out = client.run(&["rm", "notes.txt", "--server", &addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("removed notes.txt"), "{}", text(&out.stdout));
    let gone = [
        vec!["get", "notes.txt", "-o", dir, "--force"],
        vec!["rm", "notes.txt"],
        vec!["ls", "notes.txt"],
    ];
    for mut args in gone {
        args.extend(["--server", addr.as_str()]);
        let out = client.run(&args);
        assert_eq!(code(&out), Some(4), "{args:?}: {}", text(&out.stderr));
        let expected = format!("not found: notes.txt on {addr}");
        assert!(text(&out.stderr).contains(&expected), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(
        std::fs::read(into.join("notes.txt")).unwrap(),
        b"some notes\n",
        "a failed get --force keeps the local file"
    );
    let out = client.run(&["ls", "--server", &addr]);
    assert_eq!(text(&out.stdout).lines().count(), 1);
}

#[test]
fn another_client_cannot_list_get_or_remove_a_clients_files_through_the_binary() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let alice = client_with(&server, "alice", &[("secret.txt", b"alice's secret")]);
    let bob = client_with(&server, "bob", &[]);
    let out = bob.run(&["ls", "--server", &addr]);
    assert_eq!((code(&out), text(&out.stdout)), (Some(0), String::new()));
    let out = bob.run(&["get", "secret.txt", "--server", &addr]);
    assert_eq!(code(&out), Some(4), "{}", text(&out.stderr));
    assert!(!bob.path().join("secret.txt").exists());
    let out = bob.run(&["rm", "secret.txt", "--server", &addr]);
    assert_eq!(code(&out), Some(4), "{}", text(&out.stderr));
    let out = alice.run(&["get", "secret.txt", "-o", "-", "--server", &addr]);
    assert_eq!(out.stdout, b"alice's secret", "{}", text(&out.stderr));
}

#[test]
fn ls_get_and_rm_need_protocol_4_and_a_known_client() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let client = Client::new();
    for command in ["ls", "get", "rm"] {
        let mut args = vec![command, "--server", &addr, "--protocol", "3"];
        if command != "ls" {
            args.push("a");
        }
        let out = client.run(&args);
        assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains("needs protocol 4"), "{}", text(&out.stderr));
    }
    let out = client.run(&["ls", "--server", &addr]);
    assert_eq!(code(&out), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("register"), "{}", text(&out.stderr));
}

fn peer_with(lie: GetLie, extra_listed: &[&str]) -> Peer {
    Peer::start(Script {
        registered: true,
        stored: vec![("a.bin".into(), common::random_bytes(600 * 1024, 3))],
        get_lie: lie,
        extra_listed: extra_listed.iter().map(|p| (*p).to_owned()).collect(),
        ..Script::default()
    })
}

#[test]
fn a_server_sending_more_or_fewer_bytes_or_another_hash_leaves_nothing_under_the_name() {
    for (lie, exit, says) in [
        (GetLie::ExtraBytes, 4, "more than the"),
        (GetLie::FewerBytes, 4, "bytes it announced"),
        (GetLie::WrongHash, 5, "did not arrive intact"),
        (GetLie::WrongRecordedHash, 5, "recorded"),
    ] {
        let peer = peer_with(lie, &[]);
        let client = Client::new();
        let out = client.run(&["get", "a.bin", "--server", &peer.addr]);
        assert_eq!(code(&out), Some(exit), "{lie:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{lie:?}: {}", text(&out.stderr));
        let left: Vec<_> = std::fs::read_dir(client.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "config")
            .collect();
        assert!(left.is_empty(), "{lie:?}: nothing written, no temporary file: {left:?}");
    }
    let peer = peer_with(GetLie::Honest, &[]);
    let client = Client::new();
    let out = client.run(&["get", "a.bin", "--server", &peer.addr]);
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(client.path().join("a.bin")).unwrap().len(), 600 * 1024);
}

#[test]
fn a_listing_naming_a_path_outside_the_space_is_the_servers_protocol_error() {
    for bad in ["../escape", "/etc/passwd", "a/../../b", "b\\..\\c"] {
        let peer = peer_with(GetLie::Honest, &[bad]);
        let client = Client::new();
        let out = client.run(&["ls", "--server", &peer.addr]);
        assert_eq!(code(&out), Some(4), "{bad:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("path rules"), "{bad:?}: {}", text(&out.stderr));
    }
}

#[test]
fn a_disk_that_fills_during_a_download_leaves_no_file_under_the_name() {
    use std::os::unix::process::CommandExt;
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let data = common::random_bytes(3 * 1024 * 1024, 12);
    let client = client_with(&server, "full", &[("big.bin", &data)]);
    let into = client.path().join("down");
    std::fs::create_dir(&into).unwrap();
    let mut command = common::command();
    command
        .env_remove("SECUREXFER_PROTOCOL")
        .env("XDG_CONFIG_HOME", client.path().join("config"))
        .env("HOME", client.path())
        .current_dir(client.path())
        .args(["get", "big.bin", "-o", into.to_str().unwrap(), "--server", &addr]);
    // Files may grow to 1 MiB only: a write beyond fails (EFBIG) as on a full disk.
    // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit).
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = command.output().unwrap();
    assert_eq!(code(&out), Some(6), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot write"), "{}", text(&out.stderr));
    let left: Vec<_> = std::fs::read_dir(&into).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "no partial file, under its name or any: {left:?}");
}

/// The peak resident memory of a running process so far (VmHWM), from /proc.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[test]
fn a_large_download_is_streamed_at_constant_memory() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let size = 160 * 1024 * 1024 + 5;
    let data = common::random_bytes(size, 99);
    let client = client_with(&server, "big", &[("huge.bin", &data)]);
    std::fs::remove_file(client.path().join("huge.bin")).unwrap();
    let mut child = common::command()
        .env_remove("SECUREXFER_PROTOCOL")
        .env("XDG_CONFIG_HOME", client.path().join("config"))
        .env("HOME", client.path())
        .current_dir(client.path())
        .args(["get", "huge.bin", "--server", &addr, "--quiet"])
        .spawn()
        .unwrap();
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        peak = peak.max(peak_rss(child.id()).unwrap_or(0));
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success());
    assert!(std::fs::read(client.path().join("huge.bin")).unwrap() == data);
    assert!(peak > 0, "the client's memory was seen");
    assert!(peak < 48 << 20, "a 160 MiB download peaked at {} MiB", peak >> 20);
}

#[test]
fn ctrl_c_during_a_download_leaves_nothing_behind_and_exits_130() {
    let peer = peer_with(GetLie::Stall, &[]);
    let client = Client::new();
    let child = common::command()
        .env_remove("SECUREXFER_PROTOCOL")
        .env("XDG_CONFIG_HOME", client.path().join("config"))
        .env("HOME", client.path())
        .current_dir(client.path())
        .args(["get", "a.bin", "--server", &peer.addr])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let written = |client: &Client| -> Vec<String> {
        std::fs::read_dir(client.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "config")
            .collect()
    };
    let started = std::time::Instant::now();
    while written(&client).is_empty() && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let temp = written(&client);
    assert_eq!(temp, [".a.bin.securexfer-partial"]);
    // Its first bytes arrived but were not written out yet: an empty partial file is
    // nothing to continue, so it goes (tests/suite/v4_resume_client.rs has one that stays).
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("interrupted"), "{}", text(&out.stderr));
    assert!(written(&client).is_empty(), "{:?}", written(&client));
}

#[test]
fn folders_exist_as_prefixes_a_listing_collapses_them_and_get_or_rm_of_one_is_is_folder() {
    let server = Server::start(&[]);
    let (mut conn, id) = registered(&server, &Key::ed25519(), "hal");
    store(&mut conn, "b.txt", b"b");
    store(&mut conn, "c", b"c");
    // Stored paths with folders, as the records will hold them once the blob store makes
    // directories (uploads of such paths are refused today).
    let db = database(&server);
    for path in ["b/x", "b/y/z", "a/deep/er"] {
        db.execute(
            "INSERT INTO files (ID, FileName, PathName, StoredPath, Verified, Size, StoredAt,
                                Protocol)
             VALUES (?1, ?2, ?3, ?3, 1, 1, datetime('now'), 4)",
            rusqlite::params![&id[..], path, format!("{}/{path}", hex(&id))],
        )
        .unwrap();
    }
    let (top, end) = conn.list(false, "").expect("the top level");
    let top: Vec<(&str, u8)> = top.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(top, [("a", 2), ("b.txt", 1), ("b", 2), ("c", 1)], "byte order of stored paths");
    assert_eq!(end[0], 4);
    let (under, _) = conn.list(false, "b").expect("b's children");
    let under: Vec<(&str, u8)> = under.iter().map(|e| (e.path.as_str(), e.kind)).collect();
    assert_eq!(under, [("b/x", 1), ("b/y", 2)]);
    let (all, _) = conn.list(true, "b").expect("all under b");
    let all: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(all, ["b/x", "b/y/z"]);
    assert_eq!(conn.get("b").unwrap_err().1.code, code::IS_FOLDER);
    assert_eq!(conn.rm("a").unwrap_err().code, code::IS_FOLDER);
    assert_eq!(conn.list(true, "a/de").unwrap_err().code, code::NOT_FOUND, "not a prefix match");
}

#[test]
fn each_name_of_a_get_is_reported_in_its_place_and_the_exit_code_is_the_worst() {
    let peer = peer_with(GetLie::Honest, &[]);
    let client = Client::new();
    let out = client.run(&["get", "missing", "a.bin", "--server", &peer.addr, "--json"]);
    assert_eq!(code(&out), Some(4), "{}", text(&out.stderr));
    let docs: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(docs.len(), 3, "two names and the summary: {docs:?}");
    assert_eq!(
        (docs[0]["name"].as_str(), docs[0]["status"].as_str()),
        (Some("missing"), Some("failed"))
    );
    assert_eq!(docs[0]["exit_code"], 4);
    assert_eq!(docs[0]["error"], format!("not found: missing on {}", peer.addr));
    assert_eq!(
        (docs[1]["name"].as_str(), docs[1]["status"].as_str()),
        (Some("a.bin"), Some("verified"))
    );
    assert_eq!((docs[2]["verified"].as_u64(), docs[2]["failed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(std::fs::read(client.path().join("a.bin")).unwrap().len(), 600 * 1024);
    let out = client.run(&["get", "a.bin", "-o", "no-such-dir", "--server", &peer.addr]);
    assert_eq!(code(&out), Some(6), "{}", text(&out.stderr));
    let out = client.run(&["get", "a.bin", "a.bin", "-o", "-", "--server", &peer.addr]);
    assert_eq!(code(&out), Some(2), "{}", text(&out.stderr));
}

/// `get --limit-rate` takes the bytes no faster than the rate (how much slower the machine
/// makes it is not asserted), and the file still arrives whole.
#[test]
fn limit_rate_paces_a_download() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    let data = common::random_bytes(600 << 10, 32);
    let client = client_with(&server, "paced", &[("paced.bin", &data)]);
    let into = client.path().join("down");
    std::fs::create_dir(&into).unwrap();
    let started = std::time::Instant::now();
    let out = client.run(&[
        "get",
        "--server",
        &addr,
        "paced.bin",
        "-o",
        into.to_str().unwrap(),
        "--limit-rate",
        "300K",
    ]);
    let took = started.elapsed();
    assert_eq!(code(&out), Some(0), "{}", text(&out.stderr));
    // 600 KiB at 300 KiB/s is 2 s, less the burst a transfer may start with.
    assert!(took >= std::time::Duration::from_millis(1700), "{took:?}");
    assert!(std::fs::read(into.join("paced.bin")).unwrap() == data);
}
