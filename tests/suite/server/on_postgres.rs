//! The server's main flows through the real binary with its records in
//! PostgreSQL (`serve --db postgres://…`, issue 16): register, send, confirm; a client that
//! opens a connection per request; a restart; two instances over one database. Each test
//! gets a fresh database on the test cluster (`common::fresh_postgres`: skipped with a
//! message without one, failed in CI).

use super::*;
use securexfer::store::{FileRecord, PostgresRecords, Records};

/// What the database at `url` records, read through the library's own records.
fn postgres_files(url: &str) -> Vec<FileRecord> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let records = PostgresRecords::connect(url, 1).await.expect("the test database");
        records.files().await.expect("files")
    })
}

fn assert_recorded_verified(url: &str, id: ClientId, sent_name: &str, data: &[u8]) {
    let name = storage_name(sent_name).expect("a storable name");
    let files = postgres_files(url);
    let file = files
        .iter()
        .find(|f| f.client_id == id && f.file_name == sent_name)
        .unwrap_or_else(|| panic!("no row for {sent_name}: {files:?}"));
    assert_eq!(file.path_name, format!("{}/{name}", id.to_hex()));
    assert!(file.verified, "{file:?}");
    assert_eq!((file.size, file.cksum), (Some(data.len() as u64), Some(Cksum::of(data))));
}

/// The password of a `postgres://user:password@host/db` address.
fn password_of(url: &str) -> &str {
    let authority = url.split("://").nth(1).unwrap().split('@').next().unwrap();
    authority.split_once(':').map_or("", |(_, password)| password)
}

#[test]
fn registration_send_and_confirm_store_the_file_and_record_it_verified_in_postgres() {
    let Some(url) = common::fresh_postgres() else { return };
    let server = Server::start_on(&url, &[]);
    let mut stream = connect(&server);
    let client = Client::setup("alice", &mut stream);
    let data = common::random_bytes(100_000, 41);
    let cksum = client.send_expecting_receipt(&mut stream, "report.bin", &data);
    assert_eq!(cksum, Cksum::of(&data));
    assert!(postgres_files(&url).is_empty(), "nothing recorded before 1029");
    let ack = client.confirm(&mut stream, "report.bin");
    assert_eq!(ack, Response::Acknowledged { client_id: Some(client.id) });
    assert_eq!(stored(&server, client.id, "report.bin").as_deref(), Some(&data[..]));
    assert_recorded_verified(&url, client.id, "report.bin", &data);
    assert_eq!(client_dir_entries(&server, client.id), ["report.bin"], "no temporary files left");
    let password = password_of(&url);
    assert!(!password.is_empty() && !server.log().contains(password), "{}", server.log());
}

#[test]
fn a_client_that_opens_a_connection_per_request_completes_on_postgres() {
    let Some(url) = common::fresh_postgres() else { return };
    let server = Server::start_on(&url, &[]);
    let mut client = Client::new("dor-like");
    client.version = 1;
    let data = common::random_bytes(4_096, 42);
    assert_eq!(client.register(&mut connect(&server)).code(), ResponseCode::Registered);
    let accepted = client.send_public_key(&mut connect(&server));
    assert_eq!(accepted.code(), ResponseCode::PublicKeyAccepted);
    let cksum = client.send_expecting_receipt(&mut connect(&server), "small.bin", &data);
    assert_eq!(cksum, Cksum::of(&data));
    let ack = client.confirm(&mut connect(&server), "small.bin");
    assert_eq!(ack, Response::Acknowledged { client_id: Some(client.id) });
    assert_recorded_verified(&url, client.id, "small.bin", &data);
}

#[test]
fn a_taken_name_and_a_resend_are_refused_and_replaced_as_on_sqlite() {
    let Some(url) = common::fresh_postgres() else { return };
    let server = Server::start_on(&url, &[]);
    let mut stream = connect(&server);
    let client = Client::setup("bob", &mut stream);
    let mut other = Client::new("bob");
    assert_eq!(other.register(&mut connect(&server)).code(), ResponseCode::RegistrationFailed);
    let (first, second) = (common::random_bytes(5_000, 43), common::random_bytes(7_000, 44));
    client.upload(&mut stream, "f.bin", &first);
    client.upload(&mut stream, "f.bin", &second);
    assert_eq!(stored(&server, client.id, "f.bin").as_deref(), Some(&second[..]));
    assert_recorded_verified(&url, client.id, "f.bin", &second);
    assert_eq!(postgres_files(&url).len(), 1);
}

#[test]
fn two_servers_on_one_postgres_present_one_key_and_know_each_others_clients() {
    let Some(url) = common::fresh_postgres() else { return };
    // Started at once: both migrate the fresh database, one waits for the other.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start_on(&url, &[]));
        let b = s.spawn(|| Server::start_on(&url, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(a.fingerprint, b.fingerprint, "every instance presents the key in the database");
    let mut client = Client::new("carol");
    client.register_and_exchange(&mut connect(&a));
    let mut stream = client.reconnected(&b);
    let data = common::random_bytes(3_000, 45);
    client.upload(&mut stream, "there.bin", &data);
    assert_recorded_verified(&url, client.id, "there.bin", &data);
    // And after a restart the client is still known.
    drop((a, b));
    let c = Server::start_on(&url, &[]);
    drop(client.reconnected(&c));
}

#[test]
fn commits_a_crash_interrupted_are_decided_at_start_up_from_the_postgres_records() {
    let Some(url) = common::fresh_postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in_on(dir.path(), &url, &[]);
    let mut stream = connect(&server);
    let client = Client::setup("dora", &mut stream);
    client.upload(&mut stream, "kept.bin", &common::random_bytes(1_000, 46));
    drop(stream);
    server.kill();
    // As a crash leaves them: one file renamed into place before its row was written, one
    // intent whose rename never happened.
    let (landed, lost) = (common::random_bytes(2_000, 47), common::random_bytes(3_000, 48));
    std::fs::write(stored_path(&server, client.id, "landed.bin"), &landed).unwrap();
    let intent = |name: &str, data: &[u8]| securexfer::store::CommitIntent {
        client_id: client.id,
        stored_name: name.into(),
        file_name: name.into(),
        path_name: format!("{}/{name}", client.id.to_hex()),
        source: format!("{}/{TEMP_PREFIX}gone", client.id.to_hex()),
        size: data.len() as u64,
        cksum: Cksum::of(data),
        archive: None,
        restores: None,
        v4: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let records = PostgresRecords::connect(&url, 1).await.unwrap();
        records.begin_commit(intent("landed.bin", &landed)).await.unwrap();
        records.begin_commit(intent("lost.bin", &lost)).await.unwrap();
    });
    let restarted = Server::start_in_on(dir.path(), &url, &[]);
    assert_recorded_verified(&url, client.id, "landed.bin", &landed);
    let files = postgres_files(&url);
    assert!(files.iter().all(|f| f.file_name != "lost.bin"), "{files:?}");
    runtime.block_on(async {
        let records = PostgresRecords::connect(&url, 1).await.unwrap();
        assert!(records.commit_intents().await.unwrap().is_empty(), "every intent decided");
    });
    assert!(restarted.log().contains("finished a commit interrupted by a crash"));
    let mut stream = connect(&restarted);
    let after = Client::setup("after", &mut stream);
    let data = common::random_bytes(4_000, 49);
    after.upload(&mut stream, "after.bin", &data);
    assert_recorded_verified(&url, after.id, "after.bin", &data);
}

#[test]
fn the_operators_tools_say_they_read_sqlite_only_when_given_postgres_and_hide_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://admin:hunter2@127.0.0.1:1/records";
    let commands: [&[&str]; 2] = [
        &["db", "verify"],
        &["db", "restore", "--client", "alice", "--file", "f", "--version", "1"],
    ];
    for command in commands {
        let out = common::run_in(dir.path(), &[command, &["--db", url]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(stderr.contains("only `serve` supports"), "{command:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{command:?} shows the password: {stderr}");
    }
    // Those that work over PostgreSQL say why they cannot reach it, without the password.
    let commands: [&[&str]; 2] = [&["db", "fingerprint"], &["db", "quota", "--client", "alice"]];
    for command in commands {
        let out = common::run_in(dir.path(), &[command, &["--db", url]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{command:?}: {stderr}");
        assert!(stderr.contains("Connection refused"), "{command:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{command:?} shows the password: {stderr}");
    }
}

/// `db fingerprint` and `db quota` over PostgreSQL: the key every instance presents, and
/// a quota every instance enforces (a protocol-4 put over it is refused at once).
#[test]
fn db_fingerprint_and_db_quota_work_over_postgres() {
    use crate::common::v4::{self, Conn, Key};
    let Some(url) = common::fresh_postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_in(dir.path(), &["db", "fingerprint", "--db", &url]);
    assert_eq!(out.status.code(), Some(6), "no key before the first serve: {out:?}");
    let server = Server::start_on(&url, &[]);
    let out = common::run_in(dir.path(), &["db", "fingerprint", "--db", &url]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), server.fingerprint);
    let (mut conn, _) = Conn::hello(server.addr, &Key::ed25519());
    v4::registered(&conn.register("quinn", None));
    let set = ["db", "quota", "--db", &url, "--client", "quinn", "--bytes", "1K", "--json"];
    let out = common::run_in(dir.path(), &set);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((doc["bytes_quota"].as_u64(), doc["bytes_used"].as_u64()), (Some(1024), Some(0)));
    let tag = conn.put("big.bin", &[7u8; 4096]);
    let (refused, error) = conn.read_error();
    assert_eq!(refused, tag);
    assert!(error.message.contains("quota"), "{error:?}");
    let show = ["db", "quota", "--db", &url, "--client", "quinn", "--json"];
    let doc: serde_json::Value =
        serde_json::from_slice(&common::run_in(dir.path(), &show).stdout).unwrap();
    assert_eq!(doc["bytes_quota"], 1024, "read back: {doc}");
    let out = common::run_in(dir.path(), &["db", "quota", "--db", &url, "--client", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn db_inspect_of_an_unreachable_postgres_fails_with_the_reason_and_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://admin:hunter2@127.0.0.1:1/records";
    let out = common::run_in(dir.path(), &["db", "inspect", "--db", url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "the database cannot be used: {stderr}");
    assert!(stderr.contains("admin:***@127.0.0.1:1/records"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "the cause once: {stderr}");
    assert!(!stderr.contains("hunter2"), "the password shown: {stderr}");
}

#[test]
fn serve_over_an_unreachable_postgres_exits_6_with_the_reason_and_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = "postgres://admin:hunter2@127.0.0.1:1/records";
    let out = common::run_in(dir.path(), &["serve", "--port", "0", "--db", url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(6), "{stderr}");
    assert!(stderr.contains("PostgreSQL") && stderr.contains("admin:***@"), "{stderr}");
    assert_eq!(stderr.matches("Connection refused").count(), 1, "the cause once: {stderr}");
    assert!(!stderr.contains("hunter2"), "the password shown: {stderr}");
}

/// Protocol 4 on PostgreSQL: a key registers; a small and a large file are put and
/// committed (the records keep their BLAKE3 and generations); LIST pages them in byte
/// order; GET serves one back; RM keeps the removed copy as a version; a second instance
/// on the same database knows the client by its key and lists the same files.
#[test]
fn protocol_4_registers_puts_lists_gets_and_removes_on_postgres_across_instances() {
    use crate::common::v4::{self, Conn, Key, code};
    let Some(url) = common::fresh_postgres() else { return };
    let temp = tempfile::tempdir().unwrap();
    let server = Server::start_in_on(temp.path(), &url, &[]);
    let key = Key::ed25519();
    let (mut conn, _) = Conn::hello(server.addr, &key);
    let (_, name) = v4::registered(&conn.register("alice", None));
    assert_eq!(name, "alice");
    let hash = |data: &[u8]| *blake3::hash(data).as_bytes();
    let files: [(&str, Vec<u8>); 3] = [
        ("zeta.txt", b"last".to_vec()),
        ("docs/Alpha.bin", common::random_bytes(3 * 1024 * 1024 + 17, 5)),
        ("é.txt", b"accent".to_vec()),
    ];
    let mut generations = Vec::new();
    for (path, data) in &files {
        let (received, committed) = conn.put_and_commit(path, data, hash(data));
        v4::put_received(&received);
        generations.push(v4::committed(&committed).0);
    }
    assert!(generations.windows(2).all(|g| g[0] < g[1]), "{generations:?}");
    let (entries, _) = conn.list(true, "").expect("a listing");
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["docs/Alpha.bin", "zeta.txt", "é.txt"], "byte order of the paths");
    assert_eq!((entries[0].hash, entries[0].generation), (hash(&files[1].1), generations[1]));
    let (_, data, got) = conn.get("docs/Alpha.bin").expect("a download");
    assert!(data == files[1].1, "the bytes come back as sent");
    assert_eq!(got, hash(&files[1].1));
    // A file where a folder is refused, as on SQLite.
    let (_, refused) = conn.put_and_commit("zeta.txt/x", b"x", hash(b"x"));
    assert!(v4::error_of(&refused).is_some(), "a file under a file was accepted");
    assert_eq!(conn.rm("zeta.txt").expect("removed"), [1, 4, 1]);
    assert_eq!(conn.get("zeta.txt").unwrap_err().1.code, code::NOT_FOUND);
    let rows = postgres_files(&url);
    let alpha = rows.iter().find(|f| f.file_name == "docs/Alpha.bin").expect("its row");
    assert_eq!((alpha.protocol, alpha.blake3), (4, Some(hash(&files[1].1))));
    assert!(rows.iter().all(|f| f.file_name != "zeta.txt"), "{rows:?}");
    drop(conn);
    // Another instance over the same database (its own storage directory: only the
    // records are shared here) knows the key and lists what the records hold.
    let other = tempfile::tempdir().unwrap();
    let second = Server::start_in_on(other.path(), &url, &[]);
    assert_eq!(second.fingerprint, server.fingerprint, "one server key for both");
    let (mut conn, _) = Conn::hello(second.addr, &key);
    let (entries, _) = conn.list(true, "").expect("a listing from the second instance");
    assert_eq!(entries.len(), 2);
}

/// `db invite` on PostgreSQL makes an invitation that an instance over that database
/// (`--registration token`) takes once, for protocol 4's registration.
#[test]
fn an_invitation_made_on_postgres_registers_one_client_with_any_instance() {
    use crate::common::v4::{self, Conn, Key};
    let Some(url) = common::fresh_postgres() else { return };
    let server = Server::start_on(&url, &["--registration", "token"]);
    let out = common::run_in(&server.dir, &["db", "invite", "--db", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let token = token.parse::<securexfer::crypto::invite::InviteToken>().expect("a token").0;
    let (mut conn, _) = Conn::hello(server.addr, &Key::ed25519());
    let (_, name) = v4::registered(&conn.register("invited", Some(token)));
    assert_eq!(name, "invited");
    let (mut again, _) = Conn::hello(server.addr, &Key::ed25519());
    let refused = again.register("second", Some(token));
    assert!(v4::error_of(&refused).is_some(), "a used token registered another client");
    let password = password_of(&url);
    assert!(!password.is_empty() && !String::from_utf8_lossy(&out.stderr).contains(password));
}
