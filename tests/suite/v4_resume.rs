//! Resuming protocol-4 uploads (docs/protocol-v4.md, "Resuming an upload"), over raw
//! frames against the real binary: an upload its connection left is kept and continued
//! from its durable point (cut midway, cut after PUT_RECEIVED, the server killed midway),
//! the stored file is byte-identical, and a hostile resume (wrong prefix hash, offset
//! past durable, another client's path) gets `conflict` with nothing of anyone touched;
//! with a 1 s window the janitor removes what is kept.

use crate::common::Server;
use crate::common::v4::{self, Conn, Key, code};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// How long a test waits for the server to have kept (or removed) an upload.
const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn blake3(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes that differ at every position, so a misplaced byte shows.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 4093) as u8).collect()
}

/// What a `RESUME_STATE` says: present, size, durable, prefix hash, mtime, expires at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) present: bool,
    pub(crate) size: u64,
    pub(crate) durable: u64,
    pub(crate) prefix_hash: [u8; 32],
    pub(crate) mtime_ns: i64,
}

pub(crate) fn query(conn: &mut Conn, path: &str) -> State {
    let tag = conn.tag();
    let mut payload = (path.len() as u16).to_le_bytes().to_vec();
    payload.extend_from_slice(path.as_bytes());
    conn.send(v4::RESUME_QUERY, tag, &payload);
    let frame = conn.read().expect("an answer to RESUME_QUERY");
    assert_eq!(frame.frame_type, v4::RESUME_STATE, "{frame:?} {:?}", v4::error_of(&frame));
    assert_eq!((frame.tag, frame.payload.len()), (tag, 65));
    let p = &frame.payload;
    let u64_at = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap());
    State {
        present: p[0] == 1,
        size: u64_at(1),
        durable: u64_at(9),
        prefix_hash: p[17..49].try_into().unwrap(),
        mtime_ns: u64_at(49) as i64,
    }
}

/// Asks until the state is `present` (the server keeps an upload as the connection's end
/// is noticed, a moment after the client went).
pub(crate) fn query_until(server: &Server, key: &Key, path: &str, present: bool) -> State {
    let start = Instant::now();
    loop {
        let (mut conn, _) = Conn::hello(server.addr, key);
        let state = query(&mut conn, path);
        if state.present == present || start.elapsed() > WAIT {
            return state;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `PUT_BEGIN` with an offset and a prefix hash.
pub(crate) fn put_begin(size: u64, offset: u64, prefix: [u8; 32], path: &str) -> Vec<u8> {
    let mut out = v4::put_begin_payload(false, size, offset, path);
    out[17..49].copy_from_slice(&prefix);
    out
}

/// A put of `data[..sent]` of a `data.len()` upload, then the connection dropped.
pub(crate) fn cut_upload(server: &Server, key: &Key, path: &str, data: &[u8], sent: usize) {
    let (mut conn, _) = Conn::hello(server.addr, key);
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &v4::put_begin_payload(false, data.len() as u64, 0, path));
    for chunk in data[..sent].chunks(MIB) {
        conn.send(v4::DATA, tag, chunk);
    }
    drop(conn);
}

/// Continues the upload from `offset`, commits, and returns the stored file's bytes.
fn resume_and_commit(
    server: &Server,
    key: &Key,
    id: &[u8; 16],
    path: &str,
    data: &[u8],
    offset: usize,
) {
    let (mut conn, _) = Conn::hello(server.addr, key);
    let tag = conn.tag();
    let prefix = blake3(&data[..offset]);
    conn.send(v4::PUT_BEGIN, tag, &put_begin(data.len() as u64, offset as u64, prefix, path));
    for chunk in data[offset..].chunks(MIB) {
        conn.send(v4::DATA, tag, chunk);
    }
    conn.send(v4::PUT_END, tag, &[]);
    let received = conn.read().expect("PUT_RECEIVED");
    let (size, hash, _) = v4::put_received(&received);
    assert_eq!((size, hash), (data.len() as u64, blake3(data)), "the whole file's hash");
    conn.send(v4::COMMIT, tag, &hash);
    v4::committed(&conn.read().expect("COMMITTED"));
    let stored = std::fs::read(server.storage().join(hex(id)).join(path)).expect("stored");
    assert!(stored == data, "the stored file is byte-identical");
    assert!(!query(&mut conn, path).present, "a committed upload is no longer unfinished");
}

fn register(server: &Server, key: &Key, name: &str) -> [u8; 16] {
    let (mut conn, welcome) = Conn::hello(server.addr, key);
    assert_eq!(welcome.resume_window, 86_400, "WELCOME announces --resume-window");
    v4::registered(&conn.register(name, None)).0
}

/// The kept files in a client's storage directory.
fn kept_files(storage: &Path, id: &[u8; 16]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(storage.join(hex(id))) else { return Vec::new() };
    entries
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".securexfer-part-kept-"))
        .collect()
}

#[test]
fn an_upload_cut_midway_resumes_from_where_the_connection_ended() {
    let server = Server::start(&["--resume-window", "24h"]);
    let key = Key::ed25519();
    let id = register(&server, &key, "alice");
    let data = pattern(5 * MIB + 123);
    cut_upload(&server, &key, "big.bin", &data, 3 * MIB);
    let state = query_until(&server, &key, "big.bin", true);
    let expected = State {
        present: true,
        size: data.len() as u64,
        durable: 3 * MIB as u64,
        prefix_hash: blake3(&data[..3 * MIB]),
        mtime_ns: v4::MTIME_NS,
    };
    assert_eq!(state, expected, "the connection's end made what arrived durable");
    resume_and_commit(&server, &key, &id, "big.bin", &data, 3 * MIB);
    assert!(kept_files(&server.storage(), &id).is_empty());
}

#[test]
fn an_upload_cut_after_put_received_resumes_with_no_data() {
    let server = Server::start(&["--resume-window", "24h"]);
    let key = Key::ed25519();
    let id = register(&server, &key, "alice");
    let data = pattern(MIB + 7);
    let (mut conn, _) = Conn::hello(server.addr, &key);
    conn.put("whole.bin", &data);
    v4::put_received(&conn.read().expect("PUT_RECEIVED"));
    drop(conn);
    let state = query_until(&server, &key, "whole.bin", true);
    assert_eq!((state.durable, state.prefix_hash), (data.len() as u64, blake3(&data)));
    resume_and_commit(&server, &key, &id, "whole.bin", &data, data.len());
}

#[test]
fn an_upload_survives_the_server_killed_midway_from_its_last_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(dir.path(), &["--resume-window", "24h"]);
    let key = Key::ed25519();
    let id = register(&server, &key, "alice");
    let data = pattern(96 * MIB);
    let (mut conn, _) = Conn::hello(server.addr, &key);
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &v4::put_begin_payload(false, data.len() as u64, 0, "vm.img"));
    for chunk in data[..80 * MIB].chunks(MIB) {
        conn.send(v4::DATA, tag, chunk);
    }
    // The checkpoint at 64 MiB is recorded while the upload goes on.
    let state = query_until(&server, &key, "vm.img", true);
    assert_eq!(state.durable, 64 * MIB as u64);
    server.kill();
    drop(conn);
    let server = Server::start_in(dir.path(), &["--resume-window", "24h"]);
    let state = query_until(&server, &key, "vm.img", true);
    assert_eq!(state.durable, 64 * MIB as u64, "the last sync point before the kill");
    assert_eq!(state.prefix_hash, blake3(&data[..64 * MIB]));
    resume_and_commit(&server, &key, &id, "vm.img", &data, 64 * MIB);
}

#[test]
fn a_hostile_resume_gets_conflict_and_touches_nothing_of_anyone() {
    let server = Server::start(&["--resume-window", "24h"]);
    let (alice, mallory) = (Key::ed25519(), Key::ed25519());
    let id = register(&server, &alice, "alice");
    register(&server, &mallory, "mallory");
    let data = pattern(2 * MIB);
    cut_upload(&server, &alice, "secret.bin", &data, MIB);
    let kept = query_until(&server, &alice, "secret.bin", true);
    let size = data.len() as u64;
    let attempts = [
        (&alice, put_begin(size, MIB as u64, [9; 32], "secret.bin"), "a wrong prefix hash"),
        (&alice, put_begin(size, MIB as u64 + 1, kept.prefix_hash, "secret.bin"), "past durable"),
        (&alice, put_begin(size + 1, MIB as u64, kept.prefix_hash, "secret.bin"), "another size"),
        (&mallory, put_begin(size, MIB as u64, kept.prefix_hash, "secret.bin"), "another client"),
    ];
    for (key, payload, what) in attempts {
        let (mut conn, _) = Conn::hello(server.addr, key);
        let tag = conn.tag();
        conn.send(v4::PUT_BEGIN, tag, &payload);
        let (at, error) = conn.read_error();
        assert_eq!((at, error.code), (tag, code::CONFLICT), "{what}: {error:?}");
        assert!(error.message.contains("start from 0"), "{what}: {}", error.message);
    }
    let (mut conn, _) = Conn::hello(server.addr, &mallory);
    assert!(!query(&mut conn, "secret.bin").present, "another client's upload is not shown");
    let (mut conn, _) = Conn::hello(server.addr, &alice);
    assert_eq!(query(&mut conn, "secret.bin"), kept, "the kept upload is as it was");
    drop(conn);
    resume_and_commit(&server, &alice, &id, "secret.bin", &data, MIB);
}

#[test]
fn a_new_put_from_zero_replaces_what_was_kept() {
    let server = Server::start(&["--resume-window", "24h"]);
    let key = Key::ed25519();
    let id = register(&server, &key, "alice");
    let old = pattern(2 * MIB);
    cut_upload(&server, &key, "f.bin", &old, MIB);
    query_until(&server, &key, "f.bin", true);
    let new = vec![7u8; 3 * MIB];
    let (mut conn, _) = Conn::hello(server.addr, &key);
    conn.put_and_commit("f.bin", &new, blake3(&new));
    let stored = std::fs::read(server.storage().join(hex(&id)).join("f.bin")).unwrap();
    assert!(stored == new);
    assert!(!query(&mut conn, "f.bin").present);
    assert!(kept_files(&server.storage(), &id).is_empty(), "the old kept file is gone");
}

#[test]
fn an_upload_under_1_mib_is_not_kept_yet_replaces_what_was_kept_of_its_path() {
    let server = Server::start(&["--resume-window", "24h"]);
    let key = Key::ed25519();
    let id = register(&server, &key, "alice");
    // Cut off at half: once the connection's end is noticed its file is gone, unkept.
    cut_upload(&server, &key, "small.bin", &pattern(MIB - 1), MIB / 2);
    let parts = || {
        let Ok(entries) = std::fs::read_dir(server.storage().join(hex(&id))) else { return 0 };
        let names = entries.map(|e| e.unwrap().file_name().into_string().unwrap());
        names.filter(|n| n.starts_with(".securexfer-part-")).count()
    };
    let start = Instant::now();
    while parts() > 0 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(parts(), 0, "the small upload's file is deleted, not kept");
    let (mut conn, _) = Conn::hello(server.addr, &key);
    assert!(!query(&mut conn, "small.bin").present, "nor recorded as unfinished");
    // A small file sent from 0 at a path whose large upload is kept replaces it.
    cut_upload(&server, &key, "f.bin", &pattern(2 * MIB), MIB);
    query_until(&server, &key, "f.bin", true);
    let new = vec![7u8; 4096];
    let (mut conn, _) = Conn::hello(server.addr, &key);
    conn.put_and_commit("f.bin", &new, blake3(&new));
    let stored = std::fs::read(server.storage().join(hex(&id)).join("f.bin")).unwrap();
    assert!(stored == new);
    assert!(!query(&mut conn, "f.bin").present, "what was kept is forgotten");
    assert!(kept_files(&server.storage(), &id).is_empty(), "and its file deleted");
}

#[test]
fn an_expired_unfinished_upload_is_removed_by_the_janitor() {
    let server = Server::start(&["--resume-window", "1s"]);
    let key = Key::ed25519();
    let (mut conn, welcome) = Conn::hello(server.addr, &key);
    assert_eq!(welcome.resume_window, 1);
    let id = v4::registered(&conn.register("alice", None)).0;
    drop(conn);
    cut_upload(&server, &key, "soon.bin", &pattern(2 * MIB), MIB);
    let start = Instant::now();
    while kept_files(&server.storage(), &id).is_empty() && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    while !kept_files(&server.storage(), &id).is_empty() && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(kept_files(&server.storage(), &id).is_empty(), "the janitor removed the file");
    let (mut conn, _) = Conn::hello(server.addr, &key);
    assert!(!query(&mut conn, "soon.bin").present, "and its record");
}

#[test]
fn a_window_of_zero_keeps_nothing() {
    let server = Server::start(&["--resume-window", "0"]);
    let key = Key::ed25519();
    let (mut conn, welcome) = Conn::hello(server.addr, &key);
    assert_eq!(welcome.resume_window, 0);
    let id = v4::registered(&conn.register("alice", None)).0;
    drop(conn);
    cut_upload(&server, &key, "x.bin", &pattern(2 * MIB), MIB);
    let (mut conn, _) = Conn::hello(server.addr, &key);
    assert!(!query(&mut conn, "x.bin").present);
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &put_begin(2 * MIB as u64, MIB as u64, [1; 32], "x.bin"));
    assert_eq!(conn.read_error().1.code, code::CONFLICT);
    assert!(kept_files(&server.storage(), &id).is_empty());
}

#[test]
fn a_kept_upload_counts_against_the_bytes_quota_once() {
    let server = Server::start(&[]);
    let key = Key::ed25519();
    register(&server, &key, "alice");
    let out = crate::common::run_in(
        &server.dir,
        &["db", "quota", "--db", "server.db", "--client", "alice", "--bytes", "10M"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let data = pattern(8 * MIB);
    cut_upload(&server, &key, "big.bin", &data, 2 * MIB);
    assert!(query_until(&server, &key, "big.bin", true).present);

    // What is kept takes its declared 8 MiB of the 10: another 4 MiB does not fit.
    let (mut conn, welcome) = Conn::hello(server.addr, &key);
    assert_eq!(welcome.bytes_used, 8 * MIB as u64, "WELCOME counts the kept upload");
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &v4::put_begin_payload(false, 4 * MIB as u64, 0, "more.bin"));
    let error = v4::error_of(&conn.read().unwrap()).expect("refused");
    assert_eq!(error.code, code::QUOTA_EXCEEDED);
    // Continuing the kept upload itself is not counted twice.
    drop(conn);
    let id = register_again(&server, &key);
    resume_and_commit(&server, &key, &id, "big.bin", &data, 2 * MIB);
}

/// The id of `key`'s client (registered already).
fn register_again(server: &Server, key: &Key) -> [u8; 16] {
    let (_, welcome) = Conn::hello(server.addr, key);
    welcome.client_id
}

#[test]
fn a_query_right_after_the_connection_left_waits_for_what_it_kept() {
    let server = Server::start(&[]);
    let key = Key::ed25519();
    let id = register(&server, &key, "alice");
    let data = pattern(6 * MIB);
    // Ready before the first connection goes, so the question comes at once after it.
    let (mut next, _) = Conn::hello(server.addr, &key);
    let (mut conn, _) = Conn::hello(server.addr, &key);
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &v4::put_begin_payload(false, data.len() as u64, 0, "big.bin"));
    for chunk in data[..4 * MIB].chunks(MIB) {
        conn.send(v4::DATA, tag, chunk);
    }
    // The server has written all of it (so it holds the upload) when the client goes.
    let start = Instant::now();
    let written = || {
        let dir = server.storage().join(hex(&id));
        kept_files(&server.storage(), &id)
            .iter()
            .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    };
    while written() < 4 * MIB as u64 {
        assert!(start.elapsed() < WAIT, "the server never wrote the data");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(conn);
    let state = query(&mut next, "big.bin");
    assert!(state.present, "the upload still being kept is waited for, not missed");
    assert_eq!((state.size, state.durable), (6 * MIB as u64, 4 * MIB as u64));
    assert_eq!(state.prefix_hash, blake3(&data[..4 * MIB]));
}

#[test]
fn an_upload_cut_in_the_middle_of_a_frame_is_kept_to_its_last_whole_frame() {
    // A killed client or a dropped network cuts where it cuts: that is no protocol break
    // of a hostile client, and what arrived whole is kept.
    let server = Server::start(&[]);
    let key = Key::ed25519();
    register(&server, &key, "alice");
    let data = pattern(4 * MIB);
    let (mut conn, _) = Conn::hello(server.addr, &key);
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &v4::put_begin_payload(false, data.len() as u64, 0, "cut.bin"));
    conn.send(v4::DATA, tag, &data[..MIB]);
    conn.send(v4::DATA, tag, &data[MIB..2 * MIB]);
    let half_frame = v4::frame(v4::DATA, tag, &data[2 * MIB..3 * MIB]);
    conn.send_raw(&half_frame[..half_frame.len() / 2]);
    drop(conn);
    let state = query_until(&server, &key, "cut.bin", true);
    assert!(state.present, "kept: {}", server.log());
    assert_eq!(state.durable, 2 * MIB as u64, "up to the last whole frame");
    assert_eq!(state.prefix_hash, blake3(&data[..2 * MIB]));
}

#[test]
fn an_upload_slower_than_the_minimum_rate_is_cut_off_and_kept_for_resuming() {
    // 128 KiB at 64 KiB/s after a 1 s grace: due within 3 s. 16 bytes every 200 ms is
    // never idle for the timeout, but far too slow. A slow network is the very case
    // resuming is for: what arrived is kept, and the upload goes on from there.
    let server = Server::start(&["--idle-timeout", "1"]);
    let key = Key::ed25519();
    let id = register(&server, &key, "snail");
    let data = pattern(2 * MIB);
    let (mut conn, _) = Conn::hello(server.addr, &key);
    let tag = conn.tag();
    conn.send(v4::PUT_BEGIN, tag, &v4::put_begin_payload(false, data.len() as u64, 0, "slow.bin"));
    conn.send(v4::DATA, tag, &data[..128 << 10]);
    conn.tls.sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let (start, mut sent) = (Instant::now(), 128 << 10);
    let error = loop {
        assert!(start.elapsed() < Duration::from_secs(15), "never cut off: {}", server.log());
        match conn.read() {
            Ok(frame) => break v4::error_of(&frame).expect("an ERROR"),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("cut off without an ERROR: {e}"),
        }
        conn.send(v4::DATA, tag, &data[sent..sent + 16]);
        sent += 16;
    };
    assert_eq!((error.code, error.closes), (code::TIMEOUT, true), "{error:?}");
    assert!(error.message.contains("minimum rate"), "{error:?}");
    assert!(start.elapsed() > Duration::from_secs(2), "cut off early: {:?}", start.elapsed());
    drop(conn);

    let state = query_until(&server, &key, "slow.bin", true);
    assert!(state.present, "kept: {}", server.log());
    let durable = state.durable as usize;
    assert!((128 << 10..=sent).contains(&durable), "durable {durable} of {sent} sent");
    assert_eq!(state.prefix_hash, blake3(&data[..durable]), "the hash of what it kept");
    resume_and_commit(&server, &key, &id, "slow.bin", &data, durable);
}
