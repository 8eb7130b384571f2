//! Protocol 4's resumable uploads over an object store: an upload whose instance dies (or
//! whose client leaves) is kept as the sent parts of its multipart upload, on record with
//! their ETags, and continues on whichever instance the client reaches next, which
//! completes those parts, checks them against the recorded prefix hash, and goes on from
//! there. Afterwards nothing is staged, unfinished or left in the bucket but the file.

use super::*;
use crate::v4_client::{Client as Binary, code as exit, text};
use std::time::Instant;

const MIB: usize = 1 << 20;

impl RecordsAt {
    /// The durable length on record of the one unfinished upload, if there is one.
    fn durable(&self) -> Option<u64> {
        let sql = "SELECT Durable FROM unfinished_uploads";
        let durable: Option<i64> = match self {
            RecordsAt::Sqlite(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                db.query_row(sql, [], |r| r.get(0)).ok()
            }
            RecordsAt::Postgres(url) => postgres_rows(url, sql).first().map(|r| r.get(0)),
        };
        durable.map(|d| d as u64)
    }
}

/// Spawns `send big.bin` through `addr` and waits until its upload is on record as kept
/// up to some durable length (a checkpoint, every 64 MiB); that length.
fn send_until_recorded(
    client: &Binary,
    addr: &str,
    records: &RecordsAt,
) -> (std::process::Child, u64) {
    let mut child = client.spawn(&["send", "big.bin", "--limit-rate", "20M", "--server", addr]);
    let started = Instant::now();
    let durable = loop {
        if let Some(durable) = records.durable().filter(|&d| d > 0) {
            break Some(durable);
        }
        if started.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(durable) = durable else {
        let _ = child.kill();
        let status = child.wait().unwrap();
        panic!("no checkpoint was recorded before the send ended or 60 s passed ({status})");
    };
    (child, durable)
}

/// The `send --json` result line.
fn result_line(out: &std::process::Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let line =
        stdout.lines().find(|l| l.contains("\"status\"")).unwrap_or_else(|| panic!("{stdout}"));
    serde_json::from_str(line).unwrap()
}

/// The file is stored whole, and nothing else is left: no staged object, no unfinished
/// upload, no object but the file's.
fn assert_only_the_file_is_left(records: &RecordsAt, url: &str, data: &[u8]) {
    let files = records.files();
    assert_eq!(files.len(), 1, "{files:?}");
    let key = assert_stored_in_bucket(records, url, files[0].client_id, "big.bin", data);
    assert_eq!(records.durable(), None, "nothing is left unfinished");
    assert_eq!(records.staged(), Vec::new(), "nothing is left staged");
    assert_eq!(objects(url), [(key, data.len() as u64)], "the file's object alone");
}

/// The test: three instances on one PostgreSQL and one object store behind one
/// address; the instance an upload goes to is killed (SIGKILL) after its first
/// checkpoint, and the client's next run continues on another instance from there.
#[test]
fn a_protocol_4_upload_whose_instance_is_killed_resumes_on_another_instance() {
    use crate::v4_attacks::{Mode, Proxy};
    let Some((url, records, mut servers, _dirs)) = instances(3, &[]) else { return };
    let balancer = Proxy::start(Mode::Forward(servers[0].addr.to_string()));
    let client = Binary::new();
    let out = client.run(&["register", "--server", &balancer.addr, "--name", "uma"]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let data = common::random_bytes(100 * MIB, 87);
    client.file("big.bin", &data);

    let (mut child, durable) = send_until_recorded(&client, &balancer.addr, &records);
    servers[0].kill();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the send could not finish without its instance");
    assert_eq!(durable % (5 * MIB) as u64, 0, "kept where a part ends: {durable}");
    assert!(durable < data.len() as u64, "{durable}");

    balancer.switch(Mode::Forward(servers[1].addr.to_string()));
    let out = client.run(&["send", "big.bin", "--json", "--server", &balancer.addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let line = result_line(&out);
    assert_eq!(line["status"], "verified", "{line}");
    assert_eq!(line["resumed_from"].as_u64(), Some(durable), "only the rest was sent again");
    assert!(servers[1].log().contains("taken up from the object store"), "{}", servers[1].log());
    assert_only_the_file_is_left(&records, &url, &data);
}

/// One instance on SQLite: a client that leaves midway has its upload kept up to the last
/// whole part; the instance restarts (a lone server cleans what was staged, but not what
/// is kept) and the next run continues. A changed file then starts from 0 and its put
/// replaces what was kept, whose parts go.
#[test]
fn an_upload_its_client_leaves_is_kept_across_a_restart_and_a_changed_file_replaces_it() {
    use crate::v4_attacks::{Mode, Proxy};
    let Some(url) = common::fresh_s3() else { return };
    let dir = tempfile::tempdir().unwrap();
    let records = records_in(dir.path(), false).unwrap();
    let mut server = start(dir.path(), &records, &url, &[]);
    // One address for the client across the restart (its identities are per server).
    let proxy = Proxy::start(Mode::Forward(server.addr.to_string()));
    let addr = proxy.addr.clone();
    let client = Binary::new();
    let out = client.run(&["register", "--server", &addr, "--name", "vic"]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let data = common::random_bytes(100 * MIB, 88);
    client.file("big.bin", &data);

    let (mut child, _) = send_until_recorded(&client, &addr, &records);
    child.kill().unwrap();
    child.wait().unwrap();
    server.wait_for_log("kept in the object store for resuming");
    let durable = records.durable().unwrap();
    assert_eq!(durable % (5 * MIB) as u64, 0, "kept where a part ends: {durable}");
    server.kill();
    let server = start(dir.path(), &records, &url, &[]);
    proxy.switch(Mode::Forward(server.addr.to_string()));
    assert_eq!(records.durable(), Some(durable), "start-up kept it");
    assert_eq!(records.staged().len(), 1, "and its multipart upload");

    let out = client.run(&["send", "big.bin", "--json", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    let line = result_line(&out);
    assert_eq!(line["resumed_from"].as_u64(), Some(durable), "{line}");
    assert_only_the_file_is_left(&records, &url, &data);

    // Another version is kept midway, then the file changes again: the next put starts
    // from 0 and replaces what was kept.
    client.file("big.bin", &common::random_bytes(100 * MIB, 89));
    let (mut child, _) = send_until_recorded(&client, &addr, &records);
    child.kill().unwrap();
    child.wait().unwrap();
    server.wait_for_log("kept in the object store for resuming");
    let changed = common::random_bytes(100 * MIB, 90);
    client.file("big.bin", &changed);
    let out = client.run(&["send", "big.bin", "--json", "--server", &addr]);
    assert_eq!(exit(&out), Some(0), "{}", text(&out.stderr));
    assert_eq!(result_line(&out)["resumed_from"], 0);
    let versions = records.versions();
    assert_eq!(versions.len(), 1, "the first copy is the version: {versions:?}");
    let files = records.files();
    let key = assert_stored_in_bucket(&records, &url, files[0].client_id, "big.bin", &changed);
    assert_eq!(records.durable(), None, "nothing is left unfinished");
    assert_eq!(records.staged(), Vec::new(), "nothing is left staged");
    let mut left: Vec<String> = objects(&url).into_iter().map(|(k, _)| k).collect();
    let mut expected = vec![key, versions[0].path_name.clone()];
    left.sort();
    expected.sort();
    assert_eq!(left, expected, "the file's object and its version's, no kept parts");
}

/// Over raw frames, across two instances: an upload cut after `PUT_RECEIVED` is kept as
/// its whole object and taken up on the other instance with no data; one cut midway is
/// kept to its last whole part (never beyond what S3 holds); a resume with a wrong prefix
/// hash is refused and leaves what is kept as it was.
#[test]
fn raw_resumes_across_instances_keep_whole_objects_and_whole_parts_and_refuse_lies() {
    use crate::common::v4::{self, Conn, Key, code};
    use crate::v4_resume::{blake3, cut_upload, pattern, put_begin, query, query_until};
    let Some((url, records, servers, _dirs)) = instances(2, &[]) else { return };
    let key = Key::ed25519();
    let (mut conn, _) = Conn::hello(servers[0].addr, &key);
    v4::registered(&conn.register("wes", None));
    let whole = pattern(2 * MIB + 7);
    conn.put("whole.bin", &whole);
    v4::put_received(&conn.read().expect("PUT_RECEIVED"));
    drop(conn);
    let state = query_until(&servers[1], &key, "whole.bin", true);
    assert_eq!((state.durable, state.prefix_hash), (whole.len() as u64, blake3(&whole)));
    let (mut conn, _) = Conn::hello(servers[1].addr, &key);
    let tag = conn.tag();
    let (size, hash) = (whole.len() as u64, blake3(&whole));
    conn.send(v4::PUT_BEGIN, tag, &put_begin(size, size, hash, "whole.bin"));
    conn.send(v4::PUT_END, tag, &[]);
    assert_eq!(v4::put_received(&conn.read().expect("PUT_RECEIVED")).1, hash);
    conn.send(v4::COMMIT, tag, &hash);
    v4::committed(&conn.read().expect("COMMITTED"));
    drop(conn);

    let data = pattern(20 * MIB);
    cut_upload(&servers[0], &key, "cut.bin", &data, 12 * MIB + 300_000);
    let state = query_until(&servers[1], &key, "cut.bin", true);
    let part = 5 * MIB;
    assert_eq!((state.durable, state.prefix_hash), (2 * part as u64, blake3(&data[..2 * part])));
    let (mut conn, _) = Conn::hello(servers[1].addr, &key);
    let tag = conn.tag();
    let lie = blake3(b"not the prefix");
    conn.send(v4::PUT_BEGIN, tag, &put_begin(data.len() as u64, 2 * part as u64, lie, "cut.bin"));
    let refused = conn.read().expect("an answer to the lying PUT_BEGIN");
    assert_eq!(v4::error_of(&refused).map(|e| e.code), Some(code::CONFLICT));
    assert_eq!(query(&mut conn, "cut.bin"), state, "what is kept is as it was");
    drop(conn);
    let (mut conn, _) = Conn::hello(servers[1].addr, &key);
    let tag = conn.tag();
    let prefix = blake3(&data[..2 * part]);
    conn.send(
        v4::PUT_BEGIN,
        tag,
        &put_begin(data.len() as u64, 2 * part as u64, prefix, "cut.bin"),
    );
    for chunk in data[2 * part..].chunks(MIB) {
        conn.send(v4::DATA, tag, chunk);
    }
    conn.send(v4::PUT_END, tag, &[]);
    let (size, hash, _) = v4::put_received(&conn.read().expect("PUT_RECEIVED"));
    assert_eq!((size, hash), (data.len() as u64, blake3(&data)));
    conn.send(v4::COMMIT, tag, &hash);
    v4::committed(&conn.read().expect("COMMITTED"));
    assert!(!query(&mut conn, "cut.bin").present);
    drop(conn);

    let id = records.files()[0].client_id;
    assert_stored_in_bucket(&records, &url, id, "whole.bin", &whole);
    assert_stored_in_bucket(&records, &url, id, "cut.bin", &data);
    assert_eq!(records.durable(), None, "nothing is left unfinished");
    assert_eq!(records.staged(), Vec::new(), "nothing is left staged");
    assert_eq!(objects(&url).len(), 2, "the two files' objects alone");
}
