//! `securexfer db migrate`: a single machine (SQLite, a storage directory) moved to
//! PostgreSQL and the object store while its server runs, verified, re-run, and then
//! served by an instance there to the same clients (protocol 3 with its RSA key, protocol
//! 4 with its pinned server key).

use super::*;

/// The fingerprint a server's log says it presents.
fn fingerprint_of(server: &Server) -> String {
    server.wait_for_log("SHA256:");
    let log = server.log();
    let at = log.find("SHA256:").expect("a fingerprint");
    log[at..].chars().take_while(|c| !c.is_whitespace() && *c != '"').collect()
}

/// The arguments of `db migrate` of the test's server (in its directory) to `to`, then
/// `extra`.
fn migrate_args<'a>(to: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let from = "sqlite:server.db,storage:storage";
    [&["db", "migrate", "--from", from, "--to", to][..], extra].concat()
}

fn migrate(dir: &Path, pg: &str, url: &str) -> (Option<i32>, serde_json::Value) {
    let to = format!("{pg},{url}");
    let out = common::run_in(dir, &migrate_args(&to, &["--json"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    (out.status.code(), report)
}

#[test]
fn db_migrate_moves_a_running_single_machine_verified_and_a_second_run_moves_nothing_again() {
    use crate::common::v4::{self, Conn, Key};
    let Some(url) = common::fresh_s3() else { return };
    let Some(pg) = common::fresh_postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = Server::start_in(dir.path(), &[]);
    let local_fingerprint = fingerprint_of(&local);
    // Protocol 3: a file, replaced once (its first copy kept as a version), and a second.
    let mut stream = connect(&local);
    let mut alice = Client::setup("alice", &mut stream);
    let (first, second) = (common::random_bytes(70_000, 1), common::random_bytes(6 << 20, 2));
    alice.upload(&mut stream, "a.bin", &first);
    alice.upload(&mut stream, "a.bin", &second);
    let b = common::random_bytes(3_000, 3);
    alice.upload(&mut stream, "b.bin", &b);
    let damaged = common::random_bytes(5_000, 4);
    alice.upload(&mut stream, "damaged.bin", &damaged);
    drop(stream);
    // Protocol 4: a file in a folder, with its BLAKE3.
    let key = Key::ed25519();
    let (mut conn, _) = Conn::hello(local.addr, &key);
    let (vera, _) = v4::registered(&conn.register("vera", None));
    let report = common::random_bytes(200_000, 5);
    let (_, committed) =
        conn.put_and_commit("docs/report.pdf", &report, *blake3::hash(&report).as_bytes());
    v4::committed(&committed);
    drop(conn);
    // The disk lies about one file: a migration must not carry it over as verified.
    let stored = dir.path().join("storage").join(alice.id.to_hex());
    std::fs::write(stored.join("damaged.bin"), b"not what was sent").unwrap();

    // First run, with the server still running.
    let (code, moved) = migrate(dir.path(), &pg, &url);
    assert_eq!(code, Some(5), "one file is not what its record says: {moved:#}");
    assert_eq!(moved["files_moved"], 3, "{moved:#}");
    assert_eq!(moved["versions_moved"], 1, "{moved:#}");
    assert_eq!(
        (moved["clients"].as_u64(), moved["server_key_moved"].as_bool()),
        (Some(2), Some(true))
    );
    let problems = moved["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{moved:#}");
    assert_eq!(problems[0]["file"], "damaged.bin");
    assert!(problems[0]["why"].as_str().unwrap().contains("not what its record says"));

    // Every row moved points at an object that holds exactly the bytes sent.
    let target = RecordsAt::Postgres(pg.clone());
    assert_stored_in_bucket(&target, &url, alice.id, "a.bin", &second);
    assert_stored_in_bucket(&target, &url, alice.id, "b.bin", &b);
    let report_key =
        assert_stored_in_bucket(&target, &url, ClientId(vera), "docs/report.pdf", &report);
    let files = target.files();
    let moved_report = files.iter().find(|f| f.file_name == "docs/report.pdf").unwrap();
    assert_eq!(moved_report.blake3, Some(*blake3::hash(&report).as_bytes()));
    assert_eq!(moved_report.protocol, 4);
    assert!(files.iter().all(|f| f.file_name != "damaged.bin"), "{files:?}");
    let versions = target.versions();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert!(object(&url, &versions[0].path_name) == first, "the kept version is the first copy");
    let in_bucket = objects(&url);
    assert_eq!(in_bucket.len(), 4, "three files and a version, nothing of the damaged one");
    assert!(target.staged().is_empty(), "nothing left staged: {:?}", target.staged());

    // A second run moves nothing that is already there (the damaged file is still refused).
    let (code, again) = migrate(dir.path(), &pg, &url);
    assert_eq!(code, Some(5), "{again:#}");
    assert_eq!(
        (again["files_moved"].as_u64(), again["files_already"].as_u64()),
        (Some(0), Some(3))
    );
    assert_eq!(again["versions_already"], 1, "{again:#}");
    assert_eq!(again["server_key_moved"], false, "the key is there already: {again:#}");
    assert_eq!(objects(&url), in_bucket, "no object written again");
    // The source changes (b.bin is sent anew) and the damage is mended: a third run moves
    // just those, and deletes the object of b.bin's earlier copy that it replaced.
    let b_key = target.files().into_iter().find(|f| f.file_name == "b.bin").unwrap().path_name;
    std::fs::write(stored.join("damaged.bin"), &damaged).unwrap();
    let mut stream = alice.reconnected(&local);
    let b2 = common::random_bytes(4_000, 6);
    alice.upload(&mut stream, "b.bin", &b2);
    drop(stream);
    let (code, third) = migrate(dir.path(), &pg, &url);
    assert_eq!(code, Some(0), "{third:#}");
    // b.bin's earlier copy became a version in the source (a new version row there).
    assert_eq!(
        (third["files_moved"].as_u64(), third["files_already"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(third["versions_moved"], 1, "{third:#}");
    assert_eq!(third["objects_replaced"], 1, "{third:#}");
    assert_stored_in_bucket(&target, &url, alice.id, "b.bin", &b2);
    assert_stored_in_bucket(&target, &url, alice.id, "damaged.bin", &damaged);
    assert!(!objects(&url).iter().any(|(k, _)| *k == b_key), "b.bin's old object is gone");
    drop(local);

    // An instance over the target serves the same clients: the same server key (protocol
    // 4's pins hold), vera found by her key, alice by her id and RSA key.
    let served = tempfile::tempdir().unwrap();
    let instance = start(served.path(), &target, &url, &[]);
    assert_eq!(fingerprint_of(&instance), local_fingerprint, "the same server key");
    let (mut conn, welcome) = Conn::hello(instance.addr, &key);
    assert!(welcome.registered && welcome.client_id == vera, "vera is known by her key");
    let newer = common::random_bytes(1_000, 7);
    let (_, committed) =
        conn.put_and_commit("docs/report.pdf", &newer, *blake3::hash(&newer).as_bytes());
    assert!(v4::committed(&committed).2, "the moved copy is replaced (and kept)");
    assert!(object(&url, &report_key) == report, "as a version, in its own object");
    drop(conn);
    let mut stream = alice.reconnected(&instance);
    alice.upload(&mut stream, "c.bin", &newer);
    assert_stored_in_bucket(&target, &url, alice.id, "c.bin", &newer);
    let out =
        common::run_in(served.path(), &["db", "inspect", "--db", &pg, "--storage", &url, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = doc["files"].as_array().unwrap();
    assert!(files.iter().all(|f| f["present"] == true), "{doc:#}");
}

/// A migration killed in the middle of a file's multipart upload records nothing of it;
/// the next run moves everything, and the object the killed run left is tracked as staged,
/// so an instance over the target deletes it once it expires: nothing orphaned.
#[test]
fn db_migrate_killed_midway_is_finished_by_the_next_run_and_leaves_no_orphan() {
    let Some(url) = common::fresh_s3() else { return };
    let Some(pg) = common::fresh_postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = Server::start_in(dir.path(), &[]);
    let mut stream = connect(&local);
    let client = Client::setup("kim", &mut stream);
    let big = common::random_bytes(160 << 20, 11);
    client.upload(&mut stream, "big.bin", &big);
    let small = common::random_bytes(10_000, 12);
    client.upload(&mut stream, "small.bin", &small);
    drop((stream, local));

    let target = RecordsAt::Postgres(pg.clone());
    assert!(target.files().is_empty(), "a fresh database (its schema made)");
    let to = format!("{pg},{url}");
    let mut killed = common::command()
        .current_dir(dir.path())
        .args(migrate_args(&to, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once big.bin's multipart upload is under way.
    let started = Instant::now();
    loop {
        if target.staged().iter().any(|(_, upload)| upload.is_some()) {
            break;
        }
        assert!(killed.try_wait().unwrap().is_none(), "the migration ended before it was killed");
        assert!(started.elapsed() < WAIT, "no multipart upload began");
        std::thread::sleep(Duration::from_millis(10));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(target.files().is_empty(), "nothing of the killed run recorded: {:?}", target.files());
    let left = target.staged();
    assert_eq!(left.len(), 1, "{left:?}");

    let (code, report) = migrate(dir.path(), &pg, &url);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["files_moved"], 2, "{report:#}");
    assert_stored_in_bucket(&target, &url, client.id, "big.bin", &big);
    assert_stored_in_bucket(&target, &url, client.id, "small.bin", &small);
    assert_eq!(target.staged(), left, "only the killed run's upload is staged");
    // An instance's janitor deletes it once it is past its time.
    target.expire_staged();
    let served = tempfile::tempdir().unwrap();
    let instance = start(served.path(), &target, &url, &["--idle-timeout", "2"]);
    wait_until("the killed run's upload to be cleaned", || target.staged().is_empty());
    let named: Vec<String> = target.files().into_iter().map(|f| f.path_name).collect();
    let mut in_bucket: Vec<String> = objects(&url).into_iter().map(|(k, _)| k).collect();
    in_bucket.sort();
    let mut named_sorted = named.clone();
    named_sorted.sort();
    assert_eq!(in_bucket, named_sorted, "every object is a recorded file's");
    drop(instance);
}

/// A target whose instances already present another server key is refused before
/// anything moves (exit 8): clients that pinned one key would refuse the other.
#[test]
fn db_migrate_refuses_a_target_with_another_server_key_and_moves_nothing() {
    let Some(url) = common::fresh_s3() else { return };
    let Some(pg) = common::fresh_postgres() else { return };
    let dir = tempfile::tempdir().unwrap();
    let local = Server::start_in(dir.path(), &[]);
    let mut stream = connect(&local);
    let client = Client::setup("lee", &mut stream);
    client.upload(&mut stream, "a.bin", b"some bytes");
    drop((stream, local));
    let target = RecordsAt::Postgres(pg.clone());
    assert!(target.files().is_empty(), "a fresh database (its schema made)");
    postgres_rows(&pg, "INSERT INTO server_key (pkcs8) VALUES ('\\x00112233')");
    let to = format!("{pg},{url}");
    let out = common::run_in(dir.path(), &migrate_args(&to, &[]));
    assert_eq!(out.status.code(), Some(8), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another server key") || stderr.contains("other than the source"),
        "{stderr}"
    );
    assert!(stderr.contains("server.db.key"), "{stderr}");
    assert!(!stderr.contains("securexfer-test@"), "no password shown: {stderr}");
    assert!(target.files().is_empty() && objects(&url).is_empty(), "nothing moved");
    // And the flags are checked before anything is opened (exit 2, the form shown).
    let out = common::run_in(dir.path(), &["db", "migrate", "--from", "server.db", "--to", &to]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite:PATH,storage:DIR"));
}
