//! The server's protocol-3 flows through the real binary with the files' bytes in an
//! S3-compatible object store (`serve --storage s3://…`, issue 16), with its records in
//! SQLite and in PostgreSQL: register, send, confirm; a resend that replaces the copy
//! (kept as a version, or deleted with `--keep-versions 0`); a large upload streamed as a
//! multipart upload at bounded memory; bad padding and a give-up leave nothing behind; a
//! crash mid-upload leaves no record and its staged upload is cleaned up; a store that
//! cannot be reached stops start-up with a clear error.
//!
//! Each test gets a fresh prefix in the test bucket (`common::fresh_s3`) and, on
//! PostgreSQL, a fresh database: skipped with a message without the services, failed in
//! CI. The bucket is read through the S3 API (object_store), as any client would.

use super::*;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use securexfer::store::{Db, FileRecord, PostgresRecords, Records, VersionRecord};

mod migrate;
mod v4_paths;
mod v4_resume;

/// Where a test's records are.
enum RecordsAt {
    Sqlite(PathBuf),
    Postgres(String),
}

impl RecordsAt {
    /// The `--db` value.
    fn db_arg(&self) -> String {
        match self {
            RecordsAt::Sqlite(path) => path.display().to_string(),
            RecordsAt::Postgres(url) => url.clone(),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    fn files(&self) -> Vec<FileRecord> {
        match self {
            RecordsAt::Sqlite(path) => Db::open_read_only(path).unwrap().files().unwrap(),
            RecordsAt::Postgres(url) => RecordsAt::runtime().block_on(async {
                PostgresRecords::connect(url, 1).await.unwrap().files().await.unwrap()
            }),
        }
    }

    fn versions(&self) -> Vec<VersionRecord> {
        match self {
            RecordsAt::Sqlite(path) => Db::open_read_only(path).unwrap().versions().unwrap(),
            RecordsAt::Postgres(url) => RecordsAt::runtime().block_on(async {
                PostgresRecords::connect(url, 1).await.unwrap().versions().await.unwrap()
            }),
        }
    }

    /// The staged objects on record: key and multipart upload id.
    fn staged(&self) -> Vec<(String, Option<String>)> {
        match self {
            RecordsAt::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                let mut stmt = db.prepare("SELECT Key, UploadId FROM staged_objects").unwrap();
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
                rows.collect::<Result<_, _>>().unwrap()
            }
            RecordsAt::Postgres(url) => {
                self.postgres(url, "SELECT key, upload_id FROM staged_objects")
            }
        }
    }

    /// Makes every staged object on record look expired (as time passing would).
    fn expire_staged(&self) {
        match self {
            RecordsAt::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                db.execute("UPDATE staged_objects SET ExpiresAt = 0", []).unwrap();
            }
            RecordsAt::Postgres(url) => {
                self.postgres(
                    url,
                    "UPDATE staged_objects SET expires_at = 0 RETURNING key, upload_id",
                );
            }
        }
    }

    /// The one number `sql` answers, on PostgreSQL.
    fn count(&self, sql: &str) -> i64 {
        let RecordsAt::Postgres(url) = self else { panic!("{sql} asked of SQLite") };
        postgres_rows(url, sql)[0].get(0)
    }

    fn postgres(&self, url: &str, sql: &str) -> Vec<(String, Option<String>)> {
        postgres_rows(url, sql).iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

/// The rows one statement answers on the PostgreSQL at `url`, over a connection of its own.
fn postgres_rows(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    RecordsAt::runtime().block_on(async {
        let (client, connection) =
            tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        let rows = client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(client);
        let _ = task.await;
        rows
    })
}

/// The test's records: a SQLite file in `dir`, or a fresh PostgreSQL database (`None`
/// when the services are not there: skipped).
fn records_in(dir: &Path, postgres: bool) -> Option<RecordsAt> {
    if postgres {
        return common::fresh_postgres().map(RecordsAt::Postgres);
    }
    Some(RecordsAt::Sqlite(dir.join("server.db")))
}

/// The bucket of `url` (`s3://BUCKET/PREFIX`) through the S3 API, and the prefix.
fn bucket(url: &str) -> (object_store::aws::AmazonS3, String) {
    let rest = url.strip_prefix("s3://").unwrap();
    let (bucket, prefix) = rest.split_once('/').unwrap();
    // The test's own client, on ring as the server's.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .build()
        .unwrap();
    (store, prefix.to_owned())
}

/// Every object under the prefix of `url`: key (relative to the prefix) and size.
fn objects(url: &str) -> Vec<(String, u64)> {
    let (store, prefix) = bucket(url);
    RecordsAt::runtime().block_on(async {
        let prefix_path = ObjectPath::from(prefix.as_str());
        let mut listed: Vec<(String, u64)> = store
            .list(Some(&prefix_path))
            .map(|meta| {
                let meta = meta.unwrap();
                let key = meta.location.to_string();
                (key[prefix.len() + 1..].to_owned(), meta.size)
            })
            .collect()
            .await;
        listed.sort();
        listed
    })
}

/// The object at `key` under the prefix of `url`.
fn object(url: &str, key: &str) -> Vec<u8> {
    let (store, prefix) = bucket(url);
    RecordsAt::runtime().block_on(async {
        let path = ObjectPath::from(format!("{prefix}/{key}"));
        store.get(&path).await.unwrap().bytes().await.unwrap().to_vec()
    })
}

/// Asserts that `sent_name` of `id` is recorded verified at an object of its own that
/// holds `data`; returns the object's key.
fn assert_stored_in_bucket(
    records: &RecordsAt,
    url: &str,
    id: ClientId,
    sent_name: &str,
    data: &[u8],
) -> String {
    let files = records.files();
    let file = files
        .iter()
        .find(|f| f.client_id == id && f.file_name == sent_name)
        .unwrap_or_else(|| panic!("no row for {sent_name}: {files:?}"));
    assert!(file.verified, "{file:?}");
    assert_eq!((file.size, file.cksum), (Some(data.len() as u64), Some(Cksum::of(data))));
    let key = file.path_name.clone();
    assert!(key.starts_with(&format!("{}/", id.to_hex())), "{key} is not the client's");
    assert!(object(url, &key) == data, "the object at {key} holds what was sent");
    key
}

/// Starts a server in `dir` over `records` and the object store at `url`.
fn start(dir: &Path, records: &RecordsAt, url: &str, extra: &[&str]) -> Server {
    Server::start_in_on_storage(dir, &records.db_arg(), url, extra)
}

fn send_confirm_and_find_it_in_the_bucket(postgres: bool) {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), postgres) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let mut stream = connect(&server);
    let client = Client::setup("alice", &mut stream);
    let data = common::random_bytes(100_000, 61);
    let cksum = client.send_expecting_receipt(&mut stream, "report.bin", &data);
    assert_eq!(cksum, Cksum::of(&data));
    assert!(records.files().is_empty(), "nothing recorded before 1029");
    assert_eq!(records.staged().len(), 1, "the upload is tracked while it waits");
    let ack = client.confirm(&mut stream, "report.bin");
    assert_eq!(ack, Response::Acknowledged { client_id: Some(client.id) });
    let key = assert_stored_in_bucket(&records, &url, client.id, "report.bin", &data);
    assert_eq!(objects(&url), [(key, data.len() as u64)], "one object, nothing staged left");
    assert!(records.staged().is_empty(), "the commit forgot the staged upload");
    assert!(!dir.path().join("storage").exists(), "no local storage directory");
}

#[test]
fn registration_send_and_confirm_store_the_file_in_the_object_store_with_sqlite() {
    send_confirm_and_find_it_in_the_bucket(false);
}

#[test]
fn registration_send_and_confirm_store_the_file_in_the_object_store_with_postgres() {
    send_confirm_and_find_it_in_the_bucket(true);
}

#[test]
fn a_client_that_opens_a_connection_per_request_completes_on_the_object_store() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), true) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let mut client = Client::new("dor-like");
    client.version = 1;
    let data = common::random_bytes(4_096, 62);
    assert_eq!(client.register(&mut connect(&server)).code(), ResponseCode::Registered);
    let accepted = client.send_public_key(&mut connect(&server));
    assert_eq!(accepted.code(), ResponseCode::PublicKeyAccepted);
    client.send_expecting_receipt(&mut connect(&server), "small.bin", &data);
    let ack = client.confirm(&mut connect(&server), "small.bin");
    assert_eq!(ack, Response::Acknowledged { client_id: Some(client.id) });
    assert_stored_in_bucket(&records, &url, client.id, "small.bin", &data);
}

fn resends_replace_the_object(postgres: bool) {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), postgres) else { return };
    let server = start(dir.path(), &records, &url, &["--keep-versions", "1"]);
    let mut stream = connect(&server);
    let client = Client::setup("bob", &mut stream);
    let copies: Vec<Vec<u8>> =
        (0..3).map(|i| common::random_bytes(5_000 + i, 63 + i as u64)).collect();
    let mut keys = Vec::new();
    for copy in &copies {
        client.upload(&mut stream, "f.bin", copy);
        keys.push(assert_stored_in_bucket(&records, &url, client.id, "f.bin", copy));
    }
    assert_eq!(records.files().len(), 1);
    // The second copy is the one version kept, under its own key; the first is deleted.
    let versions = records.versions();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions[0].path_name, keys[1]);
    wait_until("the pruned version's object to go", || objects(&url).len() == 2);
    let mut want = vec![(keys[1].clone(), 5_001), (keys[2].clone(), 5_002)];
    want.sort();
    assert_eq!(objects(&url), want);
    // Another name that stores under the same name (a Windows path) replaces it too.
    client.upload(&mut stream, "C:\\docs\\f.bin", &copies[0]);
    let files = records.files();
    assert_eq!(files.len(), 1, "the row of the replaced copy goes: {files:?}");
    assert_stored_in_bucket(&records, &url, client.id, "C:\\docs\\f.bin", &copies[0]);
    assert!(records.staged().is_empty());
}

#[test]
fn a_resend_keeps_the_replaced_object_as_the_version_with_sqlite() {
    resends_replace_the_object(false);
}

#[test]
fn a_resend_keeps_the_replaced_object_as_the_version_with_postgres() {
    resends_replace_the_object(true);
}

#[test]
fn with_no_versions_kept_a_resend_deletes_the_replaced_object() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), false) else { return };
    let server = start(dir.path(), &records, &url, &["--keep-versions", "0"]);
    let mut stream = connect(&server);
    let client = Client::setup("carol", &mut stream);
    let (first, second) = (common::random_bytes(3_000, 70), common::random_bytes(4_000, 71));
    client.upload(&mut stream, "g.bin", &first);
    client.upload(&mut stream, "g.bin", &second);
    let key = assert_stored_in_bucket(&records, &url, client.id, "g.bin", &second);
    wait_until("the replaced object to go", || objects(&url).len() == 1);
    assert_eq!(objects(&url), [(key, 4_000)]);
    assert!(records.versions().is_empty());
}

/// The server's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn a_large_upload_is_streamed_as_a_multipart_upload_at_bounded_memory() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), false) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let mut stream = connect(&server);
    let client = Client::setup("large", &mut stream);
    // 72 MiB and an unaligned tail: nine 8 MiB parts and a short last one, on the
    // large-upload path (64 MiB and more).
    let data = common::random_bytes((72 << 20) + 4_099, 72);
    let before = peak_rss(&server);
    let started = Instant::now();
    client.upload(&mut stream, "large.bin", &data);
    let took = started.elapsed();
    let peak = peak_rss(&server);
    let key = assert_stored_in_bucket(&records, &url, client.id, "large.bin", &data);
    assert_eq!(objects(&url), [(key, data.len() as u64)]);
    eprintln!(
        "S3 upload of {} MiB: {:.2} s; server peak RSS {} MiB before, {} MiB after",
        data.len() >> 20,
        took.as_secs_f64(),
        before >> 20,
        peak >> 20
    );
    assert!(peak < 128 << 20, "the server's peak RSS was {} MiB", peak >> 20);
}

#[test]
fn bad_padding_and_a_give_up_leave_no_object_and_nothing_staged() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), false) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let mut stream = connect(&server);
    let mut client = Client::setup("hostile", &mut stream);
    // A give-up after a receipt: nothing stored.
    let data = common::random_bytes(20_000, 73);
    client.send_expecting_receipt(&mut stream, "given-up.bin", &data);
    client.verdict(&mut stream, RequestCode::CrcGiveUp, "given-up.bin");
    expect(&mut stream, ResponseCode::Acknowledged);
    // Bad padding: the connection ends, with the upload waiting on it.
    client.send_expecting_receipt(&mut stream, "waiting.bin", &data);
    let bytes = raw_file_request(client.id, b"bad.bin", &bad_block(&client.aes()));
    expect_refused(&mut stream, &bytes);
    assert_closed(&mut stream);
    wait_until("the aborted uploads to go", || objects(&url).is_empty());
    wait_until("the aborted uploads to be forgotten", || records.staged().is_empty());
    assert!(records.files().iter().all(|f| !f.verified), "{:?}", records.files());
    // The client can go on (once its back-off is over) and its next upload is stored.
    std::thread::sleep(Duration::from_secs(2));
    let mut again = connect(&server);
    let mut tries = 0;
    while client.reconnect(&mut again).code() != ResponseCode::ReconnectAccepted {
        tries += 1;
        assert!(tries < 30, "the client is never let back in");
        std::thread::sleep(Duration::from_secs(1));
        again = connect(&server);
    }
    client.upload(&mut again, "after.bin", &data);
    assert_stored_in_bucket(&records, &url, client.id, "after.bin", &data);
}

/// Sends most of a large upload, waits until its multipart upload is under way, kills the
/// server; returns the client and what was recorded before.
fn crash_mid_upload(server: &mut Server, records: &RecordsAt) -> Client {
    let mut stream = connect(server);
    let client = Client::setup("crasher", &mut stream);
    let early = common::random_bytes(50_000, 74);
    client.upload(&mut stream, "early.bin", &early);
    const BIG: u32 = 200 << 20;
    stream.write_all(&send_file_head(client.id, BIG, b"big.bin")).expect("send header");
    for seed in 0..20 {
        stream.write_all(&common::random_bytes(1 << 20, seed)).expect("send some content");
    }
    let multipart = || records.staged().iter().any(|(_, upload)| upload.is_some());
    wait_until("the multipart upload to begin", multipart);
    server.kill();
    client
}

#[test]
fn a_crash_mid_upload_records_nothing_and_the_next_start_aborts_the_staged_upload() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), false) else { return };
    let mut server = start(dir.path(), &records, &url, &[]);
    let mut client = crash_mid_upload(&mut server, &records);
    drop(server);
    let files = records.files();
    assert_eq!(files.len(), 1, "only the early file: {files:?}");
    assert_eq!(records.staged().len(), 1, "the interrupted upload is on record");
    // SQLite records are one server's: at start-up nothing staged can still be under way.
    let server = start(dir.path(), &records, &url, &[]);
    server.wait_for_log("aborted uploads an earlier run left staged");
    assert!(records.staged().is_empty());
    let early = common::random_bytes(50_000, 74);
    let key = assert_stored_in_bucket(&records, &url, client.id, "early.bin", &early);
    assert_eq!(objects(&url), [(key, 50_000)], "no object of the interrupted upload");
    let mut again = client.reconnected(&server);
    client.upload(&mut again, "big.bin", &early[..1000]);
    assert_stored_in_bucket(&records, &url, client.id, "big.bin", &early[..1000]);
}

#[test]
fn on_shared_records_an_expired_staged_upload_is_aborted_by_a_running_server() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), true) else { return };
    let mut server = start(dir.path(), &records, &url, &[]);
    crash_mid_upload(&mut server, &records);
    drop(server);
    // Another instance on the same PostgreSQL leaves it alone: it may be another
    // instance's upload in progress, until its time is up.
    // (A short idle timeout makes its janitor go round every second.)
    let other = start(dir.path(), &records, &url, &["--idle-timeout", "2"]);
    assert!(!other.log().contains("aborted"), "{}", other.log());
    assert_eq!(records.staged().len(), 1);
    records.expire_staged();
    other.wait_for_log("aborted expired uploads staged in the object store");
    assert!(records.staged().is_empty());
    assert_eq!(objects(&url).len(), 1, "only the early file's object");
    assert_eq!(records.files().len(), 1);
}

#[test]
fn an_object_store_that_cannot_be_reached_stops_start_up_with_what_to_check() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let output = common::command()
        .current_dir(dir.path())
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .args(["serve", "--port", "0", "--storage", &url, "--db", "server.db"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [url.as_str(), "probe object", "AWS_ENDPOINT_URL", &format!("127.0.0.1:{port}")] {
        assert!(stderr.contains(needle), "no {needle:?} in {stderr}");
    }
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
    // And a bad URL is refused before anything is tried.
    let output = common::command()
        .current_dir(dir.path())
        .args(["serve", "--port", "0", "--storage", "s3://", "--db", "server.db"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("s3://BUCKET/PREFIX"));
}

#[test]
fn a_protocol_4_put_is_committed_to_the_object_store_with_its_blake3_and_a_kept_version() {
    use crate::common::v4::{self, Conn, Key};
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), false) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let (mut conn, _welcome) = Conn::hello(server.addr, &Key::ed25519());
    let (id, _) = v4::registered(&conn.register("vera", None));
    let id = ClientId(id);
    let hash = |data: &[u8]| *blake3::hash(data).as_bytes();
    let first = common::random_bytes(700 * 1024 + 3, 75);
    let (received, committed) = conn.put_and_commit("report.pdf", &first, hash(&first));
    assert_eq!(v4::put_received(&received), (first.len() as u64, hash(&first), false));
    assert!(!v4::committed(&committed).2, "nothing replaced");
    let second = common::random_bytes(9 << 20, 76); // two parts
    let (received, committed) = conn.put_and_commit("report.pdf", &second, hash(&second));
    assert!(v4::put_received(&received).2, "replaces");
    assert!(v4::committed(&committed).2, "the replaced copy is kept");
    assert_stored_in_bucket(&records, &url, id, "report.pdf", &second);
    let files = records.files();
    assert_eq!((files[0].blake3, files[0].protocol), (Some(hash(&second)), 4));
    let versions = records.versions();
    assert_eq!(versions.len(), 1);
    assert!(object(&url, &versions[0].path_name) == first, "the version is the first object");
    assert_eq!(objects(&url).len(), 2);
    assert!(records.staged().is_empty(), "nothing staged left");

    // Protocol 4's reads find it by its path (see `v4_paths`).
    let (_, data, got) = conn.get("report.pdf").expect("a download");
    assert!(data == second && got == hash(&second), "the object comes back as sent");
}

/// An S3-compatible server of the test's own (`rclone serve s3`, as `.ci/services.sh`
/// starts), over `data`, on `port`, with the test credentials: one the test can stop and
/// start again. Killed when dropped.
fn own_s3(data: &Path, port: u16) -> OwnS3 {
    let config = data.join("rclone.conf");
    std::fs::write(&config, "").unwrap();
    let auth = format!(
        "{},{}",
        std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()
    );
    let child = std::process::Command::new("rclone")
        .args(["--config", config.to_str().unwrap(), "serve", "s3"])
        .args(["--addr", &format!("127.0.0.1:{port}"), "--auth-key", &auth])
        .arg(data.join("root"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rclone (installed by .ci/services.sh)");
    wait_until("rclone to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    OwnS3(child)
}

/// A server in `dir` on SQLite records and a test's own S3 server (over `dir/s3`, with
/// its bucket made): that S3 server, its port (to start it again), the records and the
/// server.
/// A server on a test's own S3 server, logging at `log` (`RUST_LOG`).
fn on_own_s3(dir: &Path, log: &str) -> (OwnS3, u16, RecordsAt, Server) {
    std::fs::create_dir_all(dir.join("s3/root/own-bucket")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let s3 = own_s3(&dir.join("s3"), port);
    let url = "s3://own-bucket/prefix";
    let records = RecordsAt::Sqlite(dir.join("server.db"));
    let server = Server::start_in_on_storage_with(dir, "server.db", url, &[], |cmd| {
        cmd.env("AWS_ENDPOINT_URL", &endpoint).env("RUST_LOG", log);
    });
    (s3, port, records, server)
}

/// A test's own S3 server, stopped when dropped.
struct OwnS3(std::process::Child);

impl Drop for OwnS3 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_object_store_that_goes_away_fails_uploads_clearly_and_serves_again_when_it_returns() {
    let Some(_) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (s3, port, records, server) = on_own_s3(dir.path(), "info");
    let mut stream = connect(&server);
    let mut client = Client::setup("faulty", &mut stream);
    let data = common::random_bytes(300_000, 77);
    client.upload(&mut stream, "before.bin", &data);

    drop(s3);
    let started = Instant::now();
    let answer = client.send_file(&mut stream, "during.bin", &data);
    assert_eq!(answer.code(), ResponseCode::GeneralError, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    server.wait_for_log("writing the upload failed");
    let files = records.files();
    assert!(files.iter().all(|f| f.file_name != "during.bin"), "{files:?}");

    let _s3 = own_s3(&dir.path().join("s3"), port);
    let mut again = client.reconnected(&server);
    client.upload(&mut again, "after.bin", &data);
    let names: Vec<String> = records.files().into_iter().map(|f| f.file_name).collect();
    assert_eq!(names, ["after.bin", "before.bin"]);
}

/// A tmpfs of `mib` MiB mounted at `at` (root only): a file system that really fills up,
/// under a test's own S3 server. Unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` (after saying so) where mounting is not allowed; in CI, which runs as root,
    /// that is a failure rather than a skip.
    fn mount(at: &Path, mib: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Some(SmallDisk(at.to_owned()));
        }
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI mounts a tmpfs: {why}");
        eprintln!("SKIPPED: cannot mount a small tmpfs here ({why}); CI does");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every file under `dir` with its size, sorted.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            found.extend(files_under(&entry.path()));
        } else {
            found.push((entry.path(), meta.len()));
        }
    }
    found.sort();
    found
}

/// The object store's disk fills up in the middle of an upload larger than its free
/// space: the client gets an error, nothing of the upload is recorded (let alone
/// verified), nothing of it stays staged, and once it is gone the next upload is stored
/// with no restart of anything.
#[test]
fn an_upload_larger_than_the_object_stores_free_space_fails_clearly_and_records_nothing() {
    let Some(_) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("s3/root"), 16) else { return };
    let (s3, _, records, server) = on_own_s3(dir.path(), "info");
    let mut stream = connect(&server);
    let mut client = Client::setup("filler", &mut stream);
    let small = common::random_bytes(300_000, 81);
    client.upload(&mut stream, "before.bin", &small);

    // 40 MiB into a 16 MiB file system.
    let big = common::random_bytes(40 << 20, 82);
    let answer = client.send_file(&mut stream, "too-big.bin", &big);
    assert_eq!(answer.code(), ResponseCode::GeneralError, "{answer:?}\n{}", server.log());
    server.wait_for_log("writing the upload failed");
    let files = records.files();
    assert!(files.iter().all(|f| f.file_name != "too-big.bin"), "{files:?}");
    // The failed upload is aborted and forgotten right after its answer, not before it.
    wait_until("the failed upload's staged object to go", || records.staged().is_empty());
    // Protocol 4 says it in words, and its connection goes on.
    let (mut conn, _welcome) = common::v4::Conn::hello(server.addr, &common::v4::Key::ed25519());
    common::v4::registered(&conn.register("filler4", None));
    let tag = conn.put("too-big-4.bin", &big);
    let answer = conn.read().expect("an answer to the put");
    let error = common::v4::error_of(&answer).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(answer.tag, tag);
    assert!(error.message.contains("could not store the upload: its storage failed"), "{error:?}");
    let at = error.message.split("logged at ").nth(1).and_then(|r| r.split(',').next());
    let at = at.unwrap_or_else(|| panic!("no time in {error:?}"));
    server.wait_for_log(&format!("at={at}"));
    wait_until("the failed put's staged object to go", || records.staged().is_empty());
    let (received, _) = conn.put_and_commit("small.bin", &small, *blake3::hash(&small).as_bytes());
    assert!(common::v4::error_of(&received).is_none(), "{received:?}");
    // What rclone keeps on the small disk: the objects of before.bin and small.bin, and
    // nothing of either big upload.
    let on_disk = files_under(&dir.path().join("s3/root"));
    let sizes: Vec<u64> = on_disk.iter().map(|(_, size)| *size).collect();
    assert_eq!(sizes, [small.len() as u64; 2], "only the two small objects: {on_disk:?}");

    // The space the failed upload took is back: the next upload goes through.
    let mut again = client.reconnected(&server);
    client.upload(&mut again, "after.bin", &small);
    let names: Vec<String> = records.files().into_iter().map(|f| f.file_name).collect();
    assert_eq!(names, ["after.bin", "before.bin", "small.bin"], "nothing of the big ones");
    drop(server);
    drop(s3);
    drop(disk);
}

/// A protocol-4 upload that the store refuses after a checkpoint recorded it as
/// resumable: its parts are aborted and its record goes with them, so the next `send`
/// is not offered a resume of parts that are gone.
#[test]
fn a_resumable_upload_the_store_refuses_after_a_checkpoint_leaves_no_record() {
    let Some(_) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Room for the first checkpoint (64 MiB of parts), not for the whole upload.
    let Some(disk) = SmallDisk::mount(&dir.path().join("s3/root"), 100) else { return };
    let (s3, _, records, server) = on_own_s3(dir.path(), "info,securexfer::server::v4=debug");
    let RecordsAt::Sqlite(db) = &records else { unreachable!() };
    let unfinished = || -> i64 {
        let db = rusqlite::Connection::open(db).unwrap();
        db.query_row("SELECT count(*) FROM unfinished_uploads", [], |r| r.get(0)).unwrap()
    };
    let key = common::v4::Key::ed25519();
    let (mut conn, _welcome) = common::v4::Conn::hello(server.addr, &key);
    common::v4::registered(&conn.register("refused", None));
    let big = common::random_bytes(160 << 20, 83);
    let tag = conn.put("big.bin", &big);
    let answer = conn.read().expect("an answer to the put");
    let error = common::v4::error_of(&answer).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(answer.tag, tag);
    assert!(error.message.contains("its storage failed"), "{error:?}\n{}", server.log());
    assert!(
        server.log().contains("an unfinished upload checkpointed"),
        "no checkpoint was recorded before the store refused:\n{}",
        server.log()
    );
    assert_eq!(unfinished(), 0, "the record of the aborted upload\n{}", server.log());
    wait_until("the refused upload's staged object to go", || records.staged().is_empty());
    let state = crate::v4_resume::query(&mut conn, "big.bin");
    assert!(!state.present, "a resume is offered of parts that are gone: {state:?}");
    drop(conn);
    drop(server);
    drop(s3);
    drop(disk);
}

#[test]
fn the_operators_tools_say_they_read_a_local_storage_directory_only() {
    let dir = tempfile::tempdir().unwrap();
    for command in ["verify", "restore"] {
        let mut args = vec!["db", command, "--db", "server.db", "--storage", "s3://b/p"];
        if command == "restore" {
            args.extend(["--client", "alice", "--file", "f", "--version", "1"]);
        }
        let out = common::run_in(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert!(stderr.contains("only `serve` supports"), "{command}: {stderr}");
        assert!(!dir.path().join("s3:").exists(), "{command} made a local directory");
    }
}

/// Round `round`'s files: what a protocol-3 client of that round sends.
fn round_files(round: u64) -> Vec<(String, Vec<u8>)> {
    (0..12u64)
        .map(|i| {
            (
                format!("f{i}.bin"),
                common::random_bytes(20_000 + 7_000 * i as usize, round * 100 + i),
            )
        })
        .collect()
}

/// The files the server acknowledged: whose, under which name, with which bytes.
type Acked = std::sync::Arc<std::sync::Mutex<Vec<(ClientId, String, Vec<u8>)>>>;

/// One round's client: registers, then sends and confirms its files one after another,
/// each one into `acked` as soon as its 1029 is acknowledged, until the connection dies.
fn sender(address: std::net::SocketAddr, round: u64, acked: Acked) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut stream) = TcpStream::connect(address) else { return };
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let client = Client::setup(&format!("killed{round}"), &mut stream);
        for (name, data) in round_files(round) {
            // A dead server makes these panic: this thread's end, not the test's.
            client.upload(&mut stream, &name, &data);
            acked.lock().unwrap().push((client.id, name, data));
        }
    })
}

/// SIGKILL at random moments (issue 18) on the scale-out configuration: PostgreSQL
/// records and the object store. Each round a protocol-3 client registers and sends
/// files (multipart uploads staged and committed) while its instance is killed at a
/// random moment within the time an unkilled round took; then a new instance starts on
/// the same records and bucket. After each start: every file acknowledged in any round
/// is recorded verified at an object holding its bytes, and the killed instance never
/// panicked. At the end, with the staged uploads' time made up, the janitor aborts every
/// one left, and the bucket holds exactly the objects the verified records name.
#[test]
fn fifty_sigkills_at_random_moments_lose_nothing_acknowledged_on_postgres_and_the_object_store() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), true) else { return };
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // How long an unkilled round takes here.
    let whole = {
        let server = start(dir.path(), &records, &url, &[]);
        let started = Instant::now();
        let unkilled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        sender(server.addr, 1000, std::sync::Arc::clone(&unkilled)).join().unwrap();
        assert_eq!(unkilled.lock().unwrap().len(), 12);
        acked.lock().unwrap().extend(unkilled.lock().unwrap().drain(..));
        started.elapsed().as_millis().max(50) as u64
    };
    let mut random = 0x2545_f491_4f6c_dd1du64;
    let mut complete = 0;
    for round in 0..50u64 {
        let mut server = start(dir.path(), &records, &url, &["--idle-timeout", "2"]);
        let before = acked.lock().unwrap().len();
        let sending = sender(server.addr, round, std::sync::Arc::clone(&acked));
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        std::thread::sleep(Duration::from_millis(random % (whole + whole / 4)));
        server.kill();
        let log = server.log();
        assert!(!log.contains("panicked"), "round {round}: the instance panicked:\n{log}");
        let _ = sending.join();
        if acked.lock().unwrap().len() - before == 12 {
            complete += 1;
        }
        let files = records.files();
        for (id, name, data) in acked.lock().unwrap().iter() {
            let file = files.iter().find(|f| f.client_id == *id && f.file_name == *name);
            let file = file.unwrap_or_else(|| panic!("round {round}: acknowledged {name} lost"));
            assert!(file.verified, "round {round}: {file:?}");
            assert_eq!(file.size, Some(data.len() as u64), "round {round}: {name}");
        }
    }
    assert!(complete < 50, "every round finished before its kill: none was cut");
    // What every acknowledged file's record names holds its bytes.
    let server = start(dir.path(), &records, &url, &["--idle-timeout", "2"]);
    for (id, name, data) in acked.lock().unwrap().iter() {
        assert_stored_in_bucket(&records, &url, *id, name, data);
    }
    // Nothing staged outlives its time, and no object is left that no record names.
    records.expire_staged();
    wait_until("the janitor to abort what the killed instances staged", || {
        records.staged().is_empty()
    });
    // The janitor takes a staged upload off the records first and deletes its object
    // next, so the last deletions may still be under way when the records are empty:
    // the bucket must come to hold exactly the verified records' objects, and stay so.
    let named: std::collections::BTreeSet<String> =
        records.files().iter().filter(|f| f.verified).map(|f| f.path_name.clone()).collect();
    let stored = || -> std::collections::BTreeSet<String> {
        objects(&url).into_iter().map(|(key, _)| key).collect()
    };
    let settled = Instant::now();
    let unsettled = stored().difference(&named).count();
    while stored() != named && settled.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stored(), named, "the bucket holds exactly the objects of verified records");
    drop(server);
    eprintln!(
        "kill loop (PostgreSQL + object store): 50 rounds killed within {whole} ms, {} files \
         acknowledged, {complete} rounds complete before the kill, {unsettled} objects still \
         being deleted when nothing was staged any more",
        acked.lock().unwrap().len()
    );
}

/// What [`instances`] starts: the store's address, the records, the servers, and their
/// directories (kept while they run).
type Instances = (String, RecordsAt, Vec<Server>, Vec<tempfile::TempDir>);

/// `n` instances on one fresh PostgreSQL database and one fresh object-store prefix, each
/// with `extra` flags; `None` (skipped) without the services.
fn instances(n: usize, extra: &[&str]) -> Option<Instances> {
    let url = common::fresh_s3()?;
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let records = records_in(dirs[0].path(), true)?;
    let servers = dirs.iter().map(|d| start(d.path(), &records, &url, extra)).collect();
    Some((url, records, servers, dirs))
}

/// Three instances on one PostgreSQL and one object store, and a client that opens a
/// connection per request: each request goes to the next instance. It registers on one,
/// exchanges keys on the second, sends on the third and confirms on the first; a resend
/// after a mismatch and a give-up cross instances too. Then nothing waits and nothing is
/// staged.
#[test]
fn a_client_that_opens_a_connection_per_request_is_served_round_robin_by_three_instances() {
    let Some((url, records, servers, _dirs)) = instances(3, &[]) else { return };
    let mut next = 0;
    let mut turn = || {
        next += 1;
        connect(&servers[(next - 1) % 3])
    };
    let mut client = Client::new("dor-like");
    client.version = 1;
    assert_eq!(client.register(&mut turn()).code(), ResponseCode::Registered);
    let accepted = client.send_public_key(&mut turn());
    assert_eq!(accepted.code(), ResponseCode::PublicKeyAccepted);
    let data = common::random_bytes(300_000, 91);
    assert_eq!(client.send_expecting_receipt(&mut turn(), "a.bin", &data), Cksum::of(&data));
    assert_eq!(records.count("SELECT count(*) FROM pending_uploads"), 1, "it waits on record");
    let ack = client.confirm(&mut turn(), "a.bin");
    assert_eq!(ack, Response::Acknowledged { client_id: Some(client.id) });
    let key = assert_stored_in_bucket(&records, &url, client.id, "a.bin", &data);
    // A mismatch on one instance, the resend on the next, the confirmation on the third.
    let other = common::random_bytes(70_000, 92);
    client.send_expecting_receipt(&mut turn(), "b.bin", &other);
    client.verdict(&mut turn(), RequestCode::CrcRetry, "b.bin");
    let waiting = || records.count("SELECT count(*) FROM pending_uploads");
    wait_until("the retry to be taken (it has no answer)", || waiting() == 0);
    client.send_expecting_receipt(&mut turn(), "b.bin", &other);
    let ack = client.confirm(&mut turn(), "b.bin");
    assert_eq!(ack, Response::Acknowledged { client_id: Some(client.id) });
    let key_b = assert_stored_in_bucket(&records, &url, client.id, "b.bin", &other);
    // A give-up taken by another instance than the one the upload arrived on.
    client.send_expecting_receipt(&mut turn(), "c.bin", &other);
    let mut stream = turn();
    client.verdict(&mut stream, RequestCode::CrcGiveUp, "c.bin");
    expect(&mut stream, ResponseCode::Acknowledged);
    // Nothing taken twice: a second verdict for a.bin finds nothing waiting.
    let mut stream = turn();
    client.verdict(&mut stream, RequestCode::CrcOk, "a.bin");
    assert_eq!(read_response(&mut stream), Response::GeneralError);
    assert_eq!(waiting(), 0);
    let mut stored = vec![(key, data.len() as u64), (key_b, other.len() as u64)];
    stored.sort();
    wait_until("the resent and given-up uploads' objects to go", || objects(&url) == stored);
    wait_until("their staged records to go", || records.staged().is_empty());
}

/// `db inspect` over PostgreSQL and the object store: the clients and files every instance
/// records, the server key they all present, and whether each file's object is there (it
/// lists the bucket; it changes nothing).
#[test]
fn db_inspect_shows_the_postgres_records_and_checks_the_objects_in_the_store() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), true) else { return };
    let server = start(dir.path(), &records, &url, &[]);
    let mut stream = connect(&server);
    let client = Client::setup("inspected", &mut stream);
    let data = common::random_bytes(50_000, 93);
    client.upload(&mut stream, "kept.bin", &data);
    client.upload(&mut stream, "lost.bin", &data[..1000]);
    drop(stream);
    let lost = assert_stored_in_bucket(&records, &url, client.id, "lost.bin", &data[..1000]);
    let (store, prefix) = bucket(&url);
    RecordsAt::runtime().block_on(async {
        store.delete(&ObjectPath::from(format!("{prefix}/{lost}"))).await.unwrap();
    });
    let before = objects(&url);
    let db = records.db_arg();
    let out = common::run_in(dir.path(), &["db", "inspect", "--db", &db, "--storage", &url]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SERVER KEY SHA256:"), "{stdout}");
    assert!(stdout.contains("inspected") && stdout.contains("kept.bin"), "{stdout}");
    let args = ["db", "inspect", "--db", &db, "--storage", &url, "--json"];
    let out = common::run_in(dir.path(), &args);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = doc["files"].as_array().unwrap();
    let present: Vec<_> = files
        .iter()
        .map(|f| {
            (
                f["file_name"].as_str().unwrap(),
                f["present"].as_bool().unwrap(),
                f["size_on_disk"].as_u64(),
            )
        })
        .collect();
    assert_eq!(present, [("kept.bin", true, Some(50_000)), ("lost.bin", false, None)]);
    assert_eq!(doc["clients"][0]["name"], "inspected");
    assert!(doc["server_key"]["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
    assert!(!doc["server_key"]["path"].as_str().unwrap().contains("securexfer-test"), "password");
    assert_eq!(objects(&url), before, "inspect changes nothing in the store");
    drop(server);
}

/// A hundred clients at once, half protocol 3 and half protocol 4, spread over three
/// instances on one PostgreSQL and one object store: every file is recorded verified at an
/// object that holds its bytes, and afterwards nothing is staged, waiting or orphaned.
#[test]
fn a_hundred_clients_spread_over_three_instances_all_verify_and_leave_nothing_staged() {
    use crate::common::v4::{self, Conn, Key};
    // Every client comes from 127.0.0.1: let them all register.
    let extra = ["--registrations-per-minute", "1000"];
    let Some((url, records, servers, _dirs)) = instances(3, &extra) else { return };
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let data_of = |n: u64| common::random_bytes(4_096 + n as usize * 97, 1_000 + n);
    let clients: Vec<_> = (0..100u64)
        .map(|n| {
            let addr = addrs[n as usize % 3];
            std::thread::spawn(move || {
                let data = data_of(n);
                let name = format!("client-{n:03}");
                if n % 2 == 0 {
                    let mut stream = TcpStream::connect(addr).unwrap();
                    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let client = Client::setup(&name, &mut stream);
                    client.upload(&mut stream, "f.bin", &data);
                    (name, client.id)
                } else {
                    let (mut conn, _) = Conn::hello(addr, &Key::ed25519());
                    let (id, _) = v4::registered(&conn.register(&name, None));
                    let hash = *blake3::hash(&data).as_bytes();
                    let (received, committed) = conn.put_and_commit("f.bin", &data, hash);
                    v4::put_received(&received);
                    v4::committed(&committed);
                    (name, ClientId(id))
                }
            })
        })
        .collect();
    let clients: Vec<(String, ClientId)> =
        clients.into_iter().map(|c| c.join().expect("a client failed")).collect();
    let files = records.files();
    assert_eq!(files.len(), 100, "one row per client");
    let mut keys = Vec::new();
    for (n, (name, id)) in clients.iter().enumerate() {
        let data = data_of(n as u64);
        let file = files.iter().find(|f| f.client_id == *id).unwrap_or_else(|| panic!("{name}"));
        assert!(file.verified && file.size == Some(data.len() as u64), "{file:?}");
        assert!(object(&url, &file.path_name) == data, "{name}'s object holds its bytes");
        keys.push((file.path_name.clone(), data.len() as u64));
    }
    keys.sort();
    assert_eq!(objects(&url), keys, "one object per file: nothing staged, nothing orphaned");
    assert!(records.staged().is_empty(), "{:?}", records.staged());
    assert_eq!(records.count("SELECT count(*) FROM pending_uploads"), 0);
    assert_eq!(records.count("SELECT count(*) FROM commit_intents"), 0);
    drop(servers);
}

/// Cuts every connection to the database `db` and refuses new ones, as PostgreSQL going
/// away looks to the server (`away` false: lets them in again); as the test cluster's
/// superuser, on its `postgres` database.
fn database_away(db: &str, away: bool) {
    let admin = std::env::var("SECUREXFER_TEST_POSTGRES").unwrap();
    postgres_rows(&admin, &format!("ALTER DATABASE {db} ALLOW_CONNECTIONS {}", !away));
    if away {
        let cut = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ";
        postgres_rows(&admin, &format!("{cut}'{db}'"));
    }
}

/// A reconnect (1027) of `client` accepted within 10 s of the database's return. The
/// first call on a pooled connection that PostgreSQL cut, if the pool took it before its
/// end was seen, fails once (2107, as the client's retries expect): service comes back by
/// itself, not necessarily on the very first request.
fn back_within_seconds(client: &mut Client, server: &Server) -> std::net::TcpStream {
    let started = Instant::now();
    loop {
        let mut stream = connect(server);
        let response = client.reconnect(&mut stream);
        if response.code() == ResponseCode::ReconnectAccepted {
            return stream;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {response:?} 10 s after the database came back:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PostgreSQL going away in the middle of a run, as a restart looks to its clients: every
/// connection of the server's database is cut and new ones are refused for a while (on
/// the test's own database, so the other tests' go on). Uploads meanwhile fail with a
/// clear answer and record nothing; the server stays up and serves again by itself once
/// the database takes connections again.
#[test]
fn postgres_going_away_mid_run_fails_uploads_clearly_and_the_server_serves_again_after() {
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(records) = records_in(dir.path(), true) else { return };
    let RecordsAt::Postgres(db_url) = &records else { unreachable!() };
    let db = db_url.rsplit_once('/').unwrap().1.to_owned();
    let mut server = start(dir.path(), &records, &url, &[]);
    let mut stream = connect(&server);
    let mut client = Client::setup("patient", &mut stream);
    let data = common::random_bytes(200_000, 95);
    client.upload(&mut stream, "before.bin", &data);

    database_away(&db, true);
    let started = Instant::now();
    let answer = client.send_file(&mut stream, "during.bin", &data);
    assert_eq!(answer.code(), ResponseCode::GeneralError, "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    server.wait_for_log("refused with 2107 (a server failure): PostgreSQL");
    assert!(server.is_running(), "the server stays up without its database");
    database_away(&db, false);

    // Between the receipt and the verdict: the commit cannot be recorded, so it is not.
    let mut again = back_within_seconds(&mut client, &server);
    client.send_expecting_receipt(&mut again, "between.bin", &data);
    database_away(&db, true);
    assert_eq!(client.confirm(&mut again, "between.bin"), Response::GeneralError);
    database_away(&db, false);
    // The client goes away: its unconfirmed upload goes with its connection.
    drop(again);

    let mut again = back_within_seconds(&mut client, &server);
    client.upload(&mut again, "after.bin", &data);
    let files = records.files();
    let names: Vec<&str> = files.iter().map(|f| f.file_name.as_str()).collect();
    assert_eq!(names, ["after.bin", "before.bin"], "nothing of the upload in the outage");
    let mut stored: Vec<(String, u64)> =
        files.iter().map(|f| (f.path_name.clone(), data.len() as u64)).collect();
    stored.sort();
    let settled = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        objects(&url) == stored
    });
    assert!(settled, "{:?} left beside {stored:?}\n{}", objects(&url), server.log());
}

/// Padding failures hold key exchanges back on every instance over one PostgreSQL: a
/// stranger cannot spread guesses at content under a client's session key over them.
#[test]
fn a_padding_failure_on_one_instance_holds_key_exchanges_back_on_another() {
    let Some((url, records, servers, _dirs)) = instances(2, &[]) else { return };
    let mut stream = connect(&servers[0]);
    let mut client = Client::setup("guessed", &mut stream);
    let bytes = raw_file_request(client.id, b"bad.bin", &bad_block(&client.aes()));
    expect_refused(&mut stream, &bytes);
    let refused = client.reconnect(&mut connect(&servers[1]));
    assert_ne!(refused.code(), ResponseCode::ReconnectAccepted, "{refused:?}");
    servers[1].wait_for_log("padding failures of client");
    // Once the block (a second, for a first failure) is over, the client is let back in.
    let mut tries = 0;
    let mut again = connect(&servers[1]);
    while client.reconnect(&mut again).code() != ResponseCode::ReconnectAccepted {
        tries += 1;
        assert!(tries < 30, "the client is never let back in");
        std::thread::sleep(Duration::from_millis(200));
        again = connect(&servers[1]);
    }
    let data = common::random_bytes(10_000, 96);
    client.upload(&mut again, "after.bin", &data);
    assert_stored_in_bucket(&records, &url, client.id, "after.bin", &data);
}

/// The registration limit holds over every instance on one PostgreSQL: an address that
/// used its registrations on one instance gets none more on another.
/// A session ended by a padding failure on one instance ends for the connection that
/// owns it on another: its waiting upload is dropped and it grants nothing more, as on one
/// server (`bad_padding_on_a_borrowed_session_ends_it_for_its_own_connection_too`).
#[test]
fn bad_padding_on_another_instance_ends_the_session_for_its_own_connection_too() {
    let Some((_url, records, servers, _dirs)) = instances(2, &[]) else { return };
    let mut own = connect(&servers[0]);
    let client = Client::setup("borrowed", &mut own);
    let data = common::random_bytes(2_000, 41);
    client.send_expecting_receipt(&mut own, "mine.bin", &data);

    // A connection to the other instance borrows the session and fails.
    let mut borrower = connect(&servers[1]);
    let bytes = raw_file_request(client.id, b"x.bin", &bad_block(&client.aes()));
    expect_refused(&mut borrower, &bytes);
    servers[1].wait_for_log("session ended");

    // The owning connection's upload is gone and its session grants nothing more.
    let answer = client.confirm(&mut own, "mine.bin");
    assert_eq!(answer.code(), ResponseCode::GeneralError, "{answer:?}");
    assert!(records.files().is_empty(), "{:?}", records.files());
    let mut again = connect(&servers[0]);
    expect_refused(&mut again, &send_file_head(client.id, 16, b"y.bin"));
}

#[test]
fn the_registration_limit_of_an_address_holds_over_instances() {
    // One a minute, two at once.
    let extra = ["--registrations-per-minute", "1"];
    let Some((_url, records, servers, _dirs)) = instances(2, &extra) else { return };
    for name in ["first", "second"] {
        let answer = Client::new(name).register(&mut connect(&servers[0]));
        assert_eq!(answer.code(), ResponseCode::Registered, "{name}: {answer:?}");
    }
    let refused = Client::new("third").register(&mut connect(&servers[1]));
    assert_eq!(refused.code(), ResponseCode::GeneralError, "{refused:?}");
    servers[1].wait_for_log("too many registrations from 127.0.0.1");
    assert_eq!(records.count("SELECT count(*) FROM clients"), 2, "the third not recorded");
}
