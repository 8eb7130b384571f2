//! The records trait's contract (`securexfer::store::Records`), the same tests on every
//! backend: SQLite in memory, and PostgreSQL on the test cluster `.ci/services.sh` starts
//! (skipped with a message without it, failed in CI; see `common::real_backend`). Then
//! what only a shared database has to survive: several instances migrating at once, and
//! commits of one client from several connections.

use crate::common;
use securexfer::protocol::ClientId;
use securexfer::store::postgres::schema;
use securexfer::store::{
    Attached, ClientKey, CommitIntent, Db, NewClient, PathRange, PendingTimes, PostgresError,
    PostgresRecords, Quota, Records, Registered, Removal, SharedPending, SharedRecords,
    SharedSession, SqliteRecords, StagedObject, UnfinishedUpload, Usage, V4Content,
};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn on_sqlite<F: Future<Output = ()>>(test: impl FnOnce(SharedRecords) -> F) {
    let records = SqliteRecords::new(Db::open_in_memory().expect("an in-memory database"));
    runtime().block_on(test(Arc::new(records)));
}

fn on_postgres<F: Future<Output = ()>>(test: impl FnOnce(SharedRecords) -> F) {
    let Some(url) = common::fresh_postgres() else { return };
    runtime().block_on(async {
        let records = PostgresRecords::connect(&url, 4).await.expect("connect and migrate");
        test(Arc::new(records)).await
    });
}

/// Each test twice: `on_sqlite::NAME` and `on_postgres::NAME`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[test] fn $name() { super::on_sqlite(super::$name) } )*
        }
        mod on_postgres {
            $( #[test] fn $name() { super::on_postgres(super::$name) } )*
        }
    };
}

on_both!(
    a_registration_is_found_by_id_and_name_and_a_taken_name_or_id_is_refused,
    keys_and_last_seen_are_recorded_as_sqlite_shows_them,
    a_finished_commit_records_the_file_verified_and_forgets_its_intent,
    an_abandoned_commit_changes_no_file_row,
    replacements_keep_the_newest_versions_and_return_the_paths_forgotten,
    a_restore_forgets_the_version_it_put_back,
    giving_up_never_unverifies_a_confirmed_file,
    storing_another_name_at_the_same_path_drops_the_replaced_record,
    only_old_registrations_without_a_key_are_forgotten,
    files_are_listed_by_client_name_then_file_name_in_byte_order,
    an_object_commit_switches_the_row_and_keeps_the_replaced_object_as_the_version,
    staged_objects_are_claimed_once_expired_and_never_one_a_commit_recorded,
    a_key_registers_once_and_is_found_by_its_fingerprint_only,
    a_key_is_attached_once_to_a_record_without_one,
    a_v4_commit_records_its_hash_mtime_protocol_and_a_rising_generation,
    pages_of_a_listing_come_in_byte_order_and_only_the_clients_own,
    a_removed_copy_is_kept_as_a_version_and_a_missing_hash_recorded_once,
    the_facts_of_a_put_say_what_clashes_and_what_is_replaced,
    an_unfinished_upload_is_kept_found_replaced_forgotten_and_claimed_once_expired,
);

const HOME: &str = "192.0.2.7";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

async fn registered(records: &dyn Records, byte: u8, name: &str) -> ClientId {
    let id = ClientId([byte; 16]);
    assert!(records.register(id, name.into(), ip(HOME)).await.unwrap(), "register {name}");
    id
}

fn intent(id: ClientId, name: &str, size: u64, archive: Option<&str>) -> CommitIntent {
    CommitIntent {
        client_id: id,
        stored_name: name.into(),
        file_name: name.into(),
        path_name: format!("{}/{name}", id.to_hex()),
        source: format!("{}/.securexfer-part-{size}", id.to_hex()),
        size,
        cksum: 0xfedc_ba98, // above i32::MAX: a cksum is a u32
        archive: archive.map(str::to_owned),
        restores: None,
        v4: None,
    }
}

async fn a_registration_is_found_by_id_and_name_and_a_taken_name_or_id_is_refused(
    records: SharedRecords,
) {
    let id = registered(&*records, 3, "carol").await;
    assert!(!records.register(ClientId([4; 16]), "carol".into(), ip(HOME)).await.unwrap());
    assert!(!records.register(id, "carla".into(), ip(HOME)).await.unwrap(), "a taken id");
    assert_eq!(records.client(id).await.unwrap().unwrap().name, "carol");
    assert_eq!(records.client_named("carol".into()).await.unwrap().unwrap().id, id);
    assert!(records.client(ClientId([9; 16])).await.unwrap().is_none());
    assert!(records.client_named("nobody".into()).await.unwrap().is_none());
    assert_eq!(records.usual_address(id).await.unwrap(), Some(ip(HOME)));
    assert_eq!(records.usual_address(ClientId([9; 16])).await.unwrap(), None);
    assert!(records.touch(id).await.unwrap());
    assert!(!records.touch(ClientId([5; 16])).await.unwrap());
}

async fn keys_and_last_seen_are_recorded_as_sqlite_shows_them(records: SharedRecords) {
    let id = registered(&*records, 1, "dana").await;
    let fresh = records.client(id).await.unwrap().unwrap();
    assert_eq!((fresh.public_key, fresh.has_aes_key), (None, false));
    let last_seen = fresh.last_seen.expect("registration sets LastSeen");
    let shape: String =
        last_seen.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    assert_eq!(shape, "dddd-dd-dd dd:dd:dd", "{last_seen}");
    let field: Vec<u8> = (0..160).map(|i| i as u8).collect();
    records.set_public_key(id, field.clone()).await.unwrap();
    records.set_aes_key(id, [7; 16]).await.unwrap();
    let keyed = records.client(id).await.unwrap().unwrap();
    assert_eq!((keyed.public_key, keyed.has_aes_key), (Some(field), true));
}

async fn a_finished_commit_records_the_file_verified_and_forgets_its_intent(
    records: SharedRecords,
) {
    let id = registered(&*records, 6, "dave").await;
    let intent = intent(id, "a.bin", 5, None);
    assert!(!records.has_verified_at(id, intent.path_name.clone()).await.unwrap());
    records.begin_commit(intent.clone()).await.unwrap();
    assert_eq!(records.commit_intents().await.unwrap(), std::slice::from_ref(&intent));
    // Beginning again (a retried commit) replaces the intent rather than failing.
    records.begin_commit(intent.clone()).await.unwrap();
    let pruned = records.finish_commit(intent.clone(), Some(ip("198.51.100.1")), 1).await;
    assert!(pruned.unwrap().is_empty());
    assert!(records.commit_intents().await.unwrap().is_empty());
    assert!(records.has_verified_at(id, intent.path_name.clone()).await.unwrap());
    assert_eq!(records.usual_address(id).await.unwrap(), Some(ip("198.51.100.1")));
    let files = records.files().await.unwrap();
    assert_eq!(files.len(), 1);
    let f = &files[0];
    assert_eq!((f.client_name.as_str(), f.path_name.as_str()), ("dave", &intent.path_name[..]));
    assert_eq!((f.verified, f.size, f.cksum), (true, Some(5), Some(0xfedc_ba98)));
    assert!(f.stored_at.is_some());
}

async fn an_abandoned_commit_changes_no_file_row(records: SharedRecords) {
    let id = registered(&*records, 6, "erin").await;
    records.finish_commit(intent(id, "f", 3, None), None, 1).await.unwrap();
    records.begin_commit(intent(id, "f", 9, None)).await.unwrap();
    records.abandon_commit(intent(id, "f", 9, None)).await.unwrap();
    assert!(records.commit_intents().await.unwrap().is_empty());
    assert_eq!(records.files().await.unwrap()[0].size, Some(3));
}

async fn replacements_keep_the_newest_versions_and_return_the_paths_forgotten(
    records: SharedRecords,
) {
    let id = registered(&*records, 1, "frank").await;
    records.finish_commit(intent(id, "x", 3, None), None, 2).await.unwrap();
    for (n, size) in [(1, 4), (2, 5), (3, 6)] {
        let archive = format!(".versions/{}/{n}", id.to_hex());
        let pruned = records.finish_commit(intent(id, "x", size, Some(&archive)), None, 2).await;
        let expected = if n == 3 { vec![format!(".versions/{}/1", id.to_hex())] } else { vec![] };
        assert_eq!(pruned.unwrap(), expected, "replacement {n}");
    }
    let kept: Vec<_> =
        records.versions().await.unwrap().iter().map(|v| (v.version, v.size)).collect();
    assert_eq!(kept, [(2, Some(4)), (3, Some(5))]);
    assert_eq!(records.files().await.unwrap()[0].size, Some(6));
    let pruned = records.finish_commit(intent(id, "x", 7, None), None, 0).await.unwrap();
    assert_eq!(pruned.len(), 2, "keeping none forgets both: {pruned:?}");
}

async fn a_restore_forgets_the_version_it_put_back(records: SharedRecords) {
    let id = registered(&*records, 1, "gina").await;
    records.finish_commit(intent(id, "x", 3, None), None, 5).await.unwrap();
    let archive = format!(".versions/{}/a", id.to_hex());
    records.finish_commit(intent(id, "x", 4, Some(&archive)), None, 5).await.unwrap();
    let version = records.versions().await.unwrap()[0].clone();
    assert_eq!((version.version, version.size), (1, Some(3)));
    let restore = CommitIntent { restores: Some(1), source: archive, ..intent(id, "x", 3, None) };
    records.finish_commit(restore, None, 5).await.unwrap();
    assert!(records.versions().await.unwrap().is_empty());
    assert_eq!(records.files().await.unwrap()[0].size, Some(3));
}

async fn giving_up_never_unverifies_a_confirmed_file(records: SharedRecords) {
    let id = registered(&*records, 1, "hal").await;
    let committed = intent(id, "f", 3, None);
    records.finish_commit(committed.clone(), None, 1).await.unwrap();
    records.record_given_up(id, "f".into(), committed.path_name.clone()).await.unwrap();
    let files = records.files().await.unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!((files[0].verified, files[0].size), (true, Some(3)));
    records.record_given_up(id, "g".into(), format!("{}/g", id.to_hex())).await.unwrap();
    let given_up = records.files().await.unwrap().into_iter().find(|f| f.file_name == "g");
    assert_eq!(given_up.map(|f| (f.verified, f.size)), Some((false, None)));
}

async fn storing_another_name_at_the_same_path_drops_the_replaced_record(records: SharedRecords) {
    let id = registered(&*records, 1, "ivy").await;
    let path = format!("{}/f.txt", id.to_hex());
    let at_path = |file_name: &str, size| CommitIntent {
        file_name: file_name.into(),
        path_name: path.clone(),
        ..intent(id, "f.txt", size, None)
    };
    records.finish_commit(at_path("f.txt", 5), None, 1).await.unwrap();
    records.record_given_up(id, "/tmp/f.txt".into(), path.clone()).await.unwrap();
    records.finish_commit(at_path(r"C:\dir\f.txt", 9), None, 1).await.unwrap();
    let files = records.files().await.unwrap();
    let names: Vec<_> = files.iter().map(|f| (&f.file_name[..], f.verified)).collect();
    assert_eq!(names, [("/tmp/f.txt", false), (r"C:\dir\f.txt", true)]);
}

async fn only_old_registrations_without_a_key_are_forgotten(records: SharedRecords) {
    let keyless = registered(&*records, 1, "keyless").await;
    let keyed = registered(&*records, 2, "keyed").await;
    records.set_public_key(keyed, vec![0; 160]).await.unwrap();
    assert_eq!(records.forget_keyless(Duration::from_secs(3600)).await.unwrap(), 0);
    // Both backends keep LastSeen to the second or better: a second and a bit is "older".
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(records.forget_keyless(Duration::ZERO).await.unwrap(), 1);
    assert!(records.client(keyless).await.unwrap().is_none());
    assert!(records.client(keyed).await.unwrap().is_some());
}

async fn files_are_listed_by_client_name_then_file_name_in_byte_order(records: SharedRecords) {
    let (b, a) = (registered(&*records, 1, "bob").await, registered(&*records, 2, "Zed").await);
    for (id, name) in [(b, "b"), (a, "z"), (b, "B"), (b, "a"), (a, "a")] {
        records.finish_commit(intent(id, name, 1, None), None, 1).await.unwrap();
    }
    let order: Vec<_> = records
        .files()
        .await
        .unwrap()
        .into_iter()
        .map(|f| format!("{}/{}", f.client_name, f.file_name))
        .collect();
    assert_eq!(order, ["Zed/a", "Zed/z", "bob/B", "bob/a", "bob/b"]);
}

/// An object store's commit (`Blobs::commit_plan`): the new row names the upload's own
/// key, and the archive is the replaced copy's key, found by stored name.
fn object_intent(
    id: ClientId,
    file_name: &str,
    key: &str,
    archive: Option<String>,
) -> CommitIntent {
    CommitIntent {
        stored_name: "f.txt".into(),
        file_name: file_name.into(),
        path_name: key.into(),
        source: key.into(),
        archive,
        ..intent(id, "f.txt", 3, None)
    }
}

async fn an_object_commit_switches_the_row_and_keeps_the_replaced_object_as_the_version(
    records: SharedRecords,
) {
    let id = registered(&*records, 1, "olga").await;
    let key = |n: u8| format!("{}/{n:032x}", id.to_hex());
    assert_eq!(records.stored_copy(id, "f.txt".into()).await.unwrap(), None);
    records.finish_commit(object_intent(id, "f.txt", &key(1), None), None, 1).await.unwrap();
    let current = records.stored_copy(id, "f.txt".into()).await.unwrap();
    assert_eq!(current, Some(key(1)));
    // Another name that stores as f.txt replaces it: its row goes, its object is the version.
    let second = object_intent(id, "C:\\dir\\f.txt", &key(2), current);
    assert!(records.finish_commit(second, None, 1).await.unwrap().is_empty());
    let files = records.files().await.unwrap();
    let rows: Vec<_> = files.iter().map(|f| (&f.file_name[..], &f.path_name[..])).collect();
    assert_eq!(rows, [(r"C:\dir\f.txt", &key(2)[..])]);
    let versions = records.versions().await.unwrap();
    assert_eq!(versions.iter().map(|v| &v.path_name[..]).collect::<Vec<_>>(), [&key(1)[..]]);
    // With no versions kept, the replaced object is pruned at once, for deletion.
    let third = object_intent(id, "f.txt", &key(3), Some(key(2)));
    assert_eq!(records.finish_commit(third, None, 0).await.unwrap(), [key(2), key(1)]);
    assert!(records.versions().await.unwrap().is_empty());
    assert_eq!(records.stored_copy(id, "f.txt".into()).await.unwrap(), Some(key(3)));
}

async fn staged_objects_are_claimed_once_expired_and_never_one_a_commit_recorded(
    records: SharedRecords,
) {
    let id = registered(&*records, 1, "sam").await;
    let staged = |n: u8, upload: Option<&str>| StagedObject {
        key: format!("{}/{n:032x}", id.to_hex()),
        upload_id: upload.map(str::to_owned),
    };
    records.track_staged(staged(1, None), 100).await.unwrap();
    records.track_staged(staged(2, None), 100).await.unwrap();
    records.track_staged(staged(2, Some("up-2")), 100).await.unwrap(); // its multipart upload
    records.track_staged(staged(3, None), 100).await.unwrap();
    records.track_staged(staged(4, None), 5_000).await.unwrap();
    records.forget_staged(staged(3, None).key).await.unwrap();
    // 1 is committed: the commit's transaction forgets it.
    records
        .finish_commit(object_intent(id, "f.txt", &staged(1, None).key, None), None, 1)
        .await
        .unwrap();
    let claim = |now, lease| records.claim_expired_staged(now, lease);
    assert_eq!(claim(99, 200).await.unwrap(), [], "none expired yet");
    assert_eq!(claim(100, 200).await.unwrap(), [staged(2, Some("up-2"))]);
    assert_eq!(claim(100, 200).await.unwrap(), [], "leased to one claimer at a time");
    // Its claimer died without forgetting it: once the lease runs out it is claimed again.
    assert_eq!(claim(200, 300).await.unwrap(), [staged(2, Some("up-2"))]);
    records.forget_staged(staged(2, None).key).await.unwrap();
    assert_eq!(claim(299, 400).await.unwrap(), [], "its lease holds");
    assert_eq!(claim(i64::MAX, 400).await.unwrap(), [staged(4, None)]);
    records.forget_staged(staged(4, None).key).await.unwrap();
    assert_eq!(claim(i64::MAX, 400).await.unwrap(), [], "forgotten once cleaned");
}

// ---------------------------------------------------------------------------------------
// Protocol 4's records

fn key(n: u8) -> ClientKey {
    ClientKey { spki: vec![n; 44], fingerprint: [n; 32] }
}

fn new_client(id: u8, name: &str, token_hash: Option<[u8; 32]>) -> NewClient {
    NewClient { id: ClientId([id; 16]), name: name.into(), key: key(id), ip: ip(HOME), token_hash }
}

fn v4_intent(id: ClientId, name: &str, size: u64) -> CommitIntent {
    CommitIntent {
        v4: Some(V4Content { blake3: [size as u8; 32], mtime_ns: 42 }),
        ..intent(id, name, size, None)
    }
}

async fn committed(records: &dyn Records, intent: CommitIntent) -> u64 {
    records.begin_commit(intent.clone()).await.unwrap();
    records.finish_commit_detailed(intent, None, 1).await.unwrap().generation
}

async fn a_key_registers_once_and_is_found_by_its_fingerprint_only(records: SharedRecords) {
    assert_eq!(
        records.register_with_key(new_client(1, "k1", None)).await.unwrap(),
        Registered::Done
    );
    let found = records.client_by_key([1; 32]).await.unwrap().unwrap();
    assert_eq!((found.name.as_str(), found.protocol3_allowed), ("k1", false));
    assert_eq!(found.key_fingerprint, Some([1; 32]));
    let again = NewClient { name: "other".into(), ..new_client(1, "k1", None) };
    assert_eq!(records.register_with_key(again).await.unwrap(), Registered::KeyTaken);
    assert_eq!(
        records.register_with_key(new_client(2, "k1", None)).await.unwrap(),
        Registered::NameTaken
    );
    assert!(records.client_by_key([2; 32]).await.unwrap().is_none());
    // An unknown invitation makes nobody.
    let invited = new_client(3, "k3", Some([9; 32]));
    assert_eq!(records.register_with_key(invited).await.unwrap(), Registered::TokenRefused);
    assert!(records.client_by_key([3; 32]).await.unwrap().is_none());
    // A protocol-4 client has no RSA key, and is never forgotten as a keyless one.
    assert_eq!(records.forget_keyless(Duration::ZERO).await.unwrap(), 0);
}

async fn a_key_is_attached_once_to_a_record_without_one(records: SharedRecords) {
    let id = registered(&*records, 5, "v3").await;
    assert!(records.client(id).await.unwrap().unwrap().protocol3_allowed);
    assert_eq!(records.attach_key(ClientId([6; 16]), key(5)).await.unwrap(), Attached::NoClient);
    assert_eq!(records.attach_key(id, key(5)).await.unwrap(), Attached::Done);
    assert_eq!(records.attach_key(id, key(6)).await.unwrap(), Attached::AlreadyHasKey);
    let record = records.client(id).await.unwrap().unwrap();
    assert_eq!((record.key_fingerprint, record.protocol3_allowed), (Some([5; 32]), false));
    let other = registered(&*records, 7, "v3b").await;
    assert_eq!(records.attach_key(other, key(5)).await.unwrap(), Attached::KeyTaken);
}

async fn a_v4_commit_records_its_hash_mtime_protocol_and_a_rising_generation(
    records: SharedRecords,
) {
    let id = registered(&*records, 6, "eve").await;
    let intent = v4_intent(id, "a", 5);
    records.begin_commit(intent.clone()).await.unwrap();
    // An interrupted commit keeps its hash and mtime for start-up to finish it with.
    assert_eq!(records.commit_intents().await.unwrap()[0].v4, intent.v4);
    assert_eq!(records.usage(id).await.unwrap(), Usage { bytes: 0, files: 0 });
    let first = records.finish_commit_detailed(intent.clone(), None, 1).await.unwrap();
    let archive = Some(format!(".versions/{}/1", id.to_hex()));
    let second =
        records.finish_commit_detailed(CommitIntent { archive, ..intent }, None, 1).await.unwrap();
    assert!(second.generation > first.generation);
    assert_eq!((first.kept_version, second.kept_version), (false, true));
    assert!(first.stored_at > 1_700_000_000, "{}", first.stored_at);
    let files = records.files().await.unwrap();
    assert_eq!((files[0].blake3, files[0].protocol), (Some([5; 32]), 4));
    assert_eq!(files[0].generation, Some(second.generation));
    let versions = records.versions().await.unwrap();
    assert_eq!(versions[0].v4, Some(V4Content { blake3: [5; 32], mtime_ns: 42 }));
    // The current copy and the version kept of the first count.
    assert_eq!(records.usage(id).await.unwrap(), Usage { bytes: 10, files: 1 });
    assert_eq!(records.quota(id).await.unwrap(), Quota::default());
}

fn range(start: String, end: Option<String>, limit: usize) -> PathRange {
    PathRange { start, inclusive: false, end, limit }
}

async fn pages_of_a_listing_come_in_byte_order_and_only_the_clients_own(records: SharedRecords) {
    let a = registered(&*records, 1, "a").await;
    let b = registered(&*records, 2, "b").await;
    // Byte order: "B" < "a" < "z" < "é" (0xc3 0xa9), whatever the database's locale.
    for name in ["z", "é", "a", "B"] {
        committed(&*records, v4_intent(a, name, 3)).await;
    }
    committed(&*records, v4_intent(b, "secret", 9)).await;
    let prefix = format!("{}/", a.to_hex());
    let first = records.list_page(a, range(prefix.clone(), None, 3)).await.unwrap();
    let names: Vec<&str> = first.iter().map(|c| c.stored_name.as_str()).collect();
    assert_eq!(names, ["B", "a", "z"]);
    assert!(first.iter().all(|c| c.verified && c.size == 3 && c.protocol == 4));
    assert_eq!((first[0].mtime_ns, first[0].blake3), (42, Some([3; 32])));
    let rest = records.list_page(a, range(first[2].path_name.clone(), None, 3)).await.unwrap();
    assert_eq!(rest.iter().map(|c| c.stored_name.as_str()).collect::<Vec<_>>(), ["é"]);
    let bounded = PathRange {
        start: format!("{prefix}a"),
        inclusive: true,
        end: Some(format!("{prefix}z")),
        limit: 10,
    };
    let page = records.list_page(a, bounded).await.unwrap();
    assert_eq!(page.iter().map(|c| c.stored_name.as_str()).collect::<Vec<_>>(), ["a"]);
    // The other client's file is never in a's pages, whatever the range.
    assert_eq!(records.list_page(a, range(String::new(), None, 100)).await.unwrap().len(), 4);
    assert!(records.copy_at(a, format!("{}/secret", b.to_hex())).await.unwrap().is_none());
}

async fn a_removed_copy_is_kept_as_a_version_and_a_missing_hash_recorded_once(
    records: SharedRecords,
) {
    let id = registered(&*records, 3, "c").await;
    let intent = intent(id, "f", 5, None); // a protocol-3 commit: no BLAKE3
    let generation = committed(&*records, intent.clone()).await;
    let path = intent.path_name.clone();
    let copy = records.copy_at(id, path.clone()).await.unwrap().unwrap();
    assert_eq!((copy.blake3, copy.protocol, copy.generation), (None, 3, generation));
    assert!(!records.record_blake3(id, path.clone(), generation + 1, [1; 32]).await.unwrap());
    assert!(records.record_blake3(id, path.clone(), generation, [1; 32]).await.unwrap());
    assert!(!records.record_blake3(id, path.clone(), generation, [2; 32]).await.unwrap());
    assert_eq!(records.copy_at(id, path.clone()).await.unwrap().unwrap().blake3, Some([1; 32]));
    let removal = Removal {
        client_id: id,
        stored_name: "f".into(),
        path_name: path.clone(),
        archive: Some(format!(".versions/{}/1", id.to_hex())),
        keep: 1,
    };
    let removed = records.remove_copy(removal.clone()).await.unwrap();
    assert_eq!((removed.files, removed.bytes, removed.kept), (1, 5, true));
    assert!(records.copy_at(id, path).await.unwrap().is_none());
    assert_eq!(records.versions().await.unwrap().len(), 1);
    assert_eq!(records.remove_copy(removal).await.unwrap().files, 0, "nothing left");
}

async fn the_facts_of_a_put_say_what_clashes_and_what_is_replaced(records: SharedRecords) {
    let id = registered(&*records, 4, "d").await;
    let space = format!("{}/", id.to_hex());
    for name in ["docs/a.txt", "docs/deep/b.txt", "plain"] {
        committed(&*records, v4_intent(id, name, 2)).await;
    }
    let paths: Vec<String> =
        ["docs", "docs/a.txt", "plain/x", "new/y", "docs/deep"].map(String::from).to_vec();
    let facts = records.path_facts(id, space.clone(), paths).await.unwrap();
    assert!(facts[0].is_folder && !facts[0].verified && facts[0].file_at_folder.is_none());
    assert!(facts[1].verified && !facts[1].is_folder);
    assert_eq!(facts[2].file_at_folder.as_deref(), Some("plain"), "a file where a folder goes");
    assert_eq!(facts[3], Default::default());
    assert!(facts[4].is_folder);
    let put = records.put_facts(id, space, "docs/a.txt".into(), true).await.unwrap();
    assert!(put.path.verified);
    assert_eq!((put.quota, put.usage, put.unfinished), (Quota::default(), None, None));
}

async fn an_unfinished_upload_is_kept_found_replaced_forgotten_and_claimed_once_expired(
    records: SharedRecords,
) {
    let id = registered(&*records, 8, "u").await;
    let upload = |path: &str, location: &str, expires_at| UnfinishedUpload {
        client_id: id,
        path: path.into(),
        location: location.into(),
        size: 1 << 40, // beyond u32: sizes are 64-bit
        mtime_ns: -5,
        durable: 1 << 33,
        prefix_hash: [7; 32],
        expires_at,
        upload_id: None,
        parts: Vec::new(),
    };
    // In an object store: its multipart upload and parts, and its staged row spared by
    // the cleaner while the record names it.
    let in_store = UnfinishedUpload {
        upload_id: Some("upload-1".into()),
        parts: vec!["\"etag-1\"".into(), "\"etag-2\"".into()],
        ..upload("other", "three", 200)
    };
    records.keep_unfinished(upload("big", "one", 100)).await.unwrap();
    records.keep_unfinished(upload("big", "two", 100)).await.unwrap();
    records.keep_unfinished(in_store.clone()).await.unwrap();
    assert_eq!(records.unfinished(id, "other".into()).await.unwrap(), Some(in_store));
    let staged = StagedObject { key: "three".into(), upload_id: Some("upload-1".into()) };
    records.track_staged(staged.clone(), 0).await.unwrap();
    assert_eq!(records.claim_expired_staged(i64::MAX, 0).await.unwrap(), [], "kept");
    assert_eq!(
        records.unfinished(id, "big".into()).await.unwrap(),
        Some(upload("big", "two", 100))
    );
    assert_eq!(records.all_unfinished().await.unwrap().len(), 2);
    // Kept uploads count at their declared size.
    assert_eq!(records.usage(id).await.unwrap().bytes, 2 << 40);
    assert!(!records.forget_unfinished(id, "big".into(), "one".into()).await.unwrap(), "old");
    assert_eq!(records.claim_expired_unfinished(150).await.unwrap(), [upload("big", "two", 100)]);
    assert_eq!(records.claim_expired_unfinished(150).await.unwrap(), [], "claimed once");
    assert!(records.forget_unfinished(id, "other".into(), "three".into()).await.unwrap());
    assert!(records.all_unfinished().await.unwrap().is_empty());
    assert_eq!(records.claim_expired_staged(i64::MAX, 0).await.unwrap(), [staged]);
}

#[test]
fn an_invitation_is_consumed_once_and_only_for_its_name_on_postgres() {
    on_postgres_records(|records| async move {
        let hour = Duration::from_secs(3600);
        records.create_invite(&[7; 32], None, hour).await.unwrap();
        records.create_invite(&[8; 32], Some("named"), hour).await.unwrap();
        records.create_invite(&[9; 32], None, Duration::ZERO).await.unwrap();
        let reg = |id, name: &str, t| records.register_with_key(new_client(id, name, Some(t)));
        assert_eq!(reg(1, "a", [6; 32]).await.unwrap(), Registered::TokenRefused, "unknown");
        assert_eq!(reg(1, "a", [9; 32]).await.unwrap(), Registered::TokenRefused, "expired");
        assert_eq!(reg(1, "a", [8; 32]).await.unwrap(), Registered::TokenRefused, "other name");
        assert_eq!(reg(1, "a", [7; 32]).await.unwrap(), Registered::Done);
        assert_eq!(reg(2, "b", [7; 32]).await.unwrap(), Registered::TokenRefused, "used");
        assert_eq!(reg(3, "named", [8; 32]).await.unwrap(), Registered::Done);
        assert!(records.client_by_key([2; 32]).await.unwrap().is_none());
        let invites = records.invites().await.unwrap();
        assert_eq!(invites.len(), 3);
        let used: Vec<_> = invites.iter().map(|i| i.used_by.as_deref()).collect();
        assert_eq!(used, [Some("a"), Some("named"), None]);
        assert_eq!(invites.iter().map(|i| i.expired).collect::<Vec<_>>(), [false, false, true]);
        assert_eq!(invites[0].id.len(), 16);
        // A quota set on PostgreSQL is what a put reads.
        let id = ClientId([1; 16]);
        let quota = Quota { bytes: Some(1 << 40), files: Some(3) };
        assert!(records.set_quota(id, quota).await.unwrap());
        assert_eq!(records.quota(id).await.unwrap(), quota);
        assert!(!records.set_quota(ClientId([9; 16]), quota).await.unwrap());
    });
}

#[test]
fn shared_sessions_are_found_in_their_window_and_an_upload_is_taken_once_or_cleaned_never_both() {
    on_postgres(|records| async move {
        assert!(records.shares_sessions());
        let id = registered(&*records, 1, "sam").await;
        let now_ms = || {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.unwrap().as_millis() as i64
        };
        let session = |token: u8| SharedSession {
            token: [token; 16],
            id,
            ip: ip(HOME),
            aes_key: [token; 16],
            usual_ip: Some(ip(HOME)),
        };
        let start = now_ms();
        assert_eq!(records.find_session(id, ip(HOME), 0).await.unwrap(), None);
        records.publish_session(session(1)).await.unwrap();
        let found = records.find_session(id, ip(HOME), start - 1).await.unwrap();
        assert_eq!(found, Some(session(1)));
        assert_eq!(records.find_session(id, ip("192.0.2.8"), 0).await.unwrap(), None, "ip");
        let later = now_ms() + 60_000;
        assert_eq!(records.find_session(id, ip(HOME), later).await.unwrap(), None, "idle");
        // A newer key exchange from the address replaces it.
        records.publish_session(session(2)).await.unwrap();
        assert_eq!(records.find_session(id, ip(HOME), 0).await.unwrap(), Some(session(2)));
        // Registrations.
        assert!(!records.registered_since(id, ip(HOME), 0).await.unwrap());
        records.note_registration(id, ip(HOME)).await.unwrap();
        assert!(records.registered_since(id, ip(HOME), start - 1).await.unwrap());
        assert!(!records.registered_since(id, ip(HOME), later).await.unwrap());
        // Uploads waiting: only on a live session, and no more than the limit.
        let key = |n: u8| format!("{}/{n:032x}", id.to_hex());
        let pending = |token: u8, n: u8| SharedPending {
            token: [token; 16],
            id,
            file_name: format!("f{n}"),
            stored_name: format!("f{n}"),
            location: key(n),
            size: 10,
            cksum: 7,
            arrived: now_ms(),
        };
        for n in 1..=4 {
            let staged = StagedObject { key: key(n), upload_id: None };
            records.track_staged(staged, 1_000).await.unwrap();
        }
        assert!(!records.put_pending(pending(1, 1), 8).await.unwrap(), "a replaced session");
        assert!(records.put_pending(pending(2, 1), 2).await.unwrap());
        assert!(records.put_pending(pending(2, 2), 2).await.unwrap());
        assert!(!records.put_pending(pending(2, 3), 2).await.unwrap(), "beyond the limit");
        let resent = SharedPending { location: key(4), ..pending(2, 2) };
        assert!(records.put_pending(resent, 2).await.unwrap(), "a resend replaces");
        // The replaced upload's object is expired at once, for the cleaner.
        let claimed = records.claim_expired_staged(1, 2).await.unwrap();
        assert_eq!(claimed, [StagedObject { key: key(2), upload_id: None }]);
        records.track_staged(StagedObject { key: key(2), upload_id: None }, 1_000).await.unwrap();
        assert!(records.put_pending(pending(2, 2), 2).await.unwrap(), "and back");
        let times = PendingTimes { arrived_after: start - 1, safe_until: 500, held_until: 9_000 };
        let take = |n: u8, times| records.take_pending([2; 16], format!("f{n}"), times);
        let taken = take(1, times).await.unwrap().expect("f1 waits");
        let got = (&taken.location[..], &taken.stored_name[..], taken.size, taken.cksum, taken.id);
        assert_eq!(got, (&key(1)[..], "f1", 10, 7, id));
        assert_eq!(take(1, times).await.unwrap(), None, "taken once");
        // Taken, its staged object is held for the commit: a cleaner at 8,999 leaves it.
        let mut claimed: Vec<String> = records
            .claim_expired_staged(8_999, 9_100)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect();
        claimed.sort();
        assert_eq!(claimed, [key(2), key(3), key(4)]);
        // Claimed by a cleaner, f2's object is not handed out (its row goes all the same).
        let cleaning = PendingTimes { safe_until: 9_100 + 300, held_until: 20_000, ..times };
        assert_eq!(take(2, cleaning).await.unwrap(), None, "being cleaned");
        assert!(records.put_pending(pending(2, 2), 2).await.unwrap(), "the limit has room");
        // An ended session grants nothing, and what waited on it goes.
        assert!(!records.session_ended([2; 16]).await.unwrap());
        assert_eq!(records.end_session([2; 16]).await.unwrap(), 1);
        assert_eq!(records.find_session(id, ip(HOME), 0).await.unwrap(), None);
        // It is known as ended (the instance whose connection holds it ends it there).
        assert!(records.session_ended([2; 16]).await.unwrap());
        assert!(!records.session_ended([3; 16]).await.unwrap(), "another session is not");
        assert!(!records.put_pending(pending(2, 4), 8).await.unwrap(), "an ended session");
        // Expiry: idle sessions, old registrations, uploads waiting too long.
        records.publish_session(session(3)).await.unwrap();
        assert!(records.put_pending(pending(3, 4), 8).await.unwrap());
        assert_eq!(records.expire_sessions(start - 1, start - 1).await.unwrap(), (0, 0));
        assert_eq!(records.expire_sessions(later, later).await.unwrap(), (1, 1));
        assert!(!records.registered_since(id, ip(HOME), 0).await.unwrap());
        assert_eq!(records.take_pending([3; 16], "f4".into(), times).await.unwrap(), None);
    });
}

#[test]
fn shared_padding_failures_block_by_the_back_offs_rules() {
    on_postgres(|records| async move {
        let keys = || vec!["ip:192.0.2.9".to_owned(), "id:07".to_owned()];
        let t0 = 1_000_000_000;
        assert_eq!(records.blocked_until(keys(), t0).await.unwrap(), None);
        assert_eq!(records.note_padding_failure(keys(), t0).await.unwrap(), t0 + 1_000);
        assert_eq!(records.blocked_until(keys(), t0 + 999).await.unwrap(), Some(t0 + 1_000));
        assert_eq!(records.blocked_until(keys(), t0 + 1_000).await.unwrap(), None, "over");
        // Each further failure doubles the block, counted from the failure.
        let t1 = t0 + 5_000;
        assert_eq!(records.note_padding_failure(keys(), t1).await.unwrap(), t1 + 2_000);
        assert_eq!(records.note_padding_failure(keys(), t1).await.unwrap(), t1 + 4_000);
        // Another key has its own count; the latest block of any applies.
        let other = vec!["id:08".to_owned()];
        assert_eq!(records.note_padding_failure(other, t1).await.unwrap(), t1 + 1_000);
        // A quiet period (10 min) after the block forgets one failure: the next is the 3rd.
        let quiet = t1 + 4_000 + 600_000;
        assert_eq!(records.note_padding_failure(keys(), quiet).await.unwrap(), quiet + 4_000);
        // The cap: an hour.
        let mut until = 0;
        for _ in 0..20 {
            until = records.note_padding_failure(keys(), quiet).await.unwrap();
        }
        assert_eq!(until, quiet + 3_600_000);
    });
}

#[test]
fn a_shared_registration_bucket_gives_a_token_once_and_refills_at_its_rate() {
    on_postgres(|records| async move {
        let take = |net: &str, now| records.take_registration(net.into(), now, 60, 2);
        let t0 = 1_000_000_000;
        assert_eq!(take("192.0.2.1", t0).await.unwrap(), None, "a full bucket: the burst");
        assert_eq!(take("192.0.2.1", t0).await.unwrap(), None);
        let wait = take("192.0.2.1", t0).await.unwrap().expect("empty");
        assert_eq!(wait, Duration::from_secs(1), "one a second");
        assert!(take("192.0.2.2", t0).await.unwrap().is_none(), "another network has its own");
        let wait = take("192.0.2.1", t0 + 500).await.unwrap().expect("half a token");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(take("192.0.2.1", t0 + 1_000).await.unwrap(), None, "refilled");
        assert!(take("192.0.2.1", t0 + 1_000).await.unwrap().is_some());
    });
}

fn on_postgres_records<F: Future<Output = ()>>(test: impl FnOnce(Arc<PostgresRecords>) -> F) {
    let Some(url) = common::fresh_postgres() else { return };
    runtime().block_on(async {
        let records = PostgresRecords::connect(&url, 4).await.expect("connect and migrate");
        test(Arc::new(records)).await
    });
}

// ---------------------------------------------------------------------------------------
// What only a database shared by several instances must survive

#[test]
fn the_sqlite_records_keep_no_server_key_and_postgres_keeps_the_first_one_offered() {
    runtime().block_on(async {
        let sqlite = SqliteRecords::new(Db::open_in_memory().unwrap());
        assert_eq!(sqlite.server_key(vec![1, 2, 3]).await.unwrap(), None);
    });
    on_postgres(|records| async move {
        assert_eq!(records.server_key(vec![1, 2, 3]).await.unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(records.server_key(vec![4, 5, 6]).await.unwrap(), Some(vec![1, 2, 3]));
    });
}

#[test]
fn several_instances_migrating_one_database_at_once_all_start_and_migrate_it_once() {
    let Some(url) = common::fresh_postgres() else { return };
    runtime().block_on(async {
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PostgresRecords::connect(&url, 1).await })
            })
            .collect();
        for start in starts {
            let records = start.await.unwrap().expect("every instance starts");
            assert_eq!(records.schema_version().await.unwrap(), schema::latest_version());
        }
        let (client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let steps: i64 =
            client.query_one("SELECT count(*) FROM schema_migrations", &[]).await.unwrap().get(0);
        assert_eq!(steps, i64::from(schema::latest_version()), "each step applied once");
    });
}

/// A database from before migration 6 (its `stored_path` column dropped again, its step
/// forgotten) gets every row's stored path on the next start: a protocol-3 copy by the
/// last component of its name as sent, a protocol-4 copy on an object store by its path,
/// not by its object's random key.
#[test]
fn migration_6_gives_rows_from_before_it_their_stored_paths() {
    let Some(url) = common::fresh_postgres() else { return };
    runtime().block_on(async {
        let records = PostgresRecords::connect(&url, 1).await.unwrap();
        let id = registered(&records, 6, "older").await;
        drop(records);
        let (client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .batch_execute(
                "ALTER TABLE files DROP COLUMN stored_path;
                 ALTER TABLE unfinished_uploads DROP COLUMN upload_id, DROP COLUMN parts;
                 DELETE FROM schema_migrations WHERE version >= 6;",
            )
            .await
            .unwrap();
        let hex = id.to_hex();
        let rows = [
            ("C:\\docs\\a.txt", format!("{hex}/a.txt"), 3i16),
            ("docs/b.txt", format!("{hex}/00112233445566778899aabbccddeeff"), 4),
        ];
        for (file_name, path_name, protocol) in &rows {
            client
                .execute(
                    "INSERT INTO files (id, file_name, path_name, verified, size, protocol)
                     VALUES ($1, $2, $3, true, 1, $4)",
                    &[&&id.0[..], file_name, path_name, protocol],
                )
                .await
                .unwrap();
        }
        let records = PostgresRecords::connect(&url, 1).await.expect("migrates again");
        let a = records.copy_at(id, format!("{hex}/a.txt")).await.unwrap().expect("a.txt");
        assert_eq!(a.location, rows[0].1);
        let b = records.copy_at(id, format!("{hex}/docs/b.txt")).await.unwrap().expect("b");
        assert_eq!((b.stored_name.as_str(), &b.location), ("docs/b.txt", &rows[1].1));
        let facts = records.path_facts(id, format!("{hex}/"), vec!["docs".into()]).await.unwrap();
        assert!(facts[0].is_folder, "docs holds b.txt");
        let nullable: String = client
            .query_one(
                "SELECT is_nullable FROM information_schema.columns
                 WHERE table_name = 'files' AND column_name = 'stored_path'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(nullable, "NO", "every row has one, and every row to come must");
    });
}

#[test]
fn a_database_migrated_by_a_newer_securexfer_is_refused() {
    let Some(url) = common::fresh_postgres() else { return };
    runtime().block_on(async {
        drop(PostgresRecords::connect(&url, 1).await.unwrap());
        let (client, connection) =
            tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute("INSERT INTO schema_migrations (version) VALUES (999)").await.unwrap();
        let refused = PostgresRecords::connect(&url, 1).await.err().expect("refused");
        assert!(matches!(refused, PostgresError::TooNew { found: 999, .. }), "{refused}");
    });
}

#[test]
fn commits_of_one_client_from_several_instances_number_their_versions_in_turn() {
    let Some(url) = common::fresh_postgres() else { return };
    runtime().block_on(async {
        let instances: Vec<Arc<PostgresRecords>> = vec![
            Arc::new(PostgresRecords::connect(&url, 4).await.unwrap()),
            Arc::new(PostgresRecords::connect(&url, 4).await.unwrap()),
            Arc::new(PostgresRecords::connect(&url, 4).await.unwrap()),
        ];
        let id = registered(&*instances[0], 1, "busy").await;
        instances[0].finish_commit(intent(id, "x", 1, None), None, 100).await.unwrap();
        let commits: Vec<_> = (0..24u64)
            .map(|n| {
                let records = Arc::clone(&instances[n as usize % instances.len()]);
                let archive = format!(".versions/{}/{n}", id.to_hex());
                let next = intent(id, "x", n + 2, Some(&archive));
                tokio::spawn(async move { records.finish_commit(next, None, 100).await })
            })
            .collect();
        for commit in commits {
            commit.await.unwrap().expect("no commit fails for another's sake");
        }
        let numbers: Vec<i64> =
            instances[1].versions().await.unwrap().iter().map(|v| v.version).collect();
        assert_eq!(numbers, (1..=24).collect::<Vec<_>>());
    });
}

#[test]
fn an_unreachable_postgres_is_a_clear_error_and_not_a_hang() {
    runtime().block_on(async {
        let started = std::time::Instant::now();
        // Port 1 on loopback: nothing listens there.
        let refused = PostgresRecords::connect("postgres://u:secret@127.0.0.1:1/db", 1).await;
        let e = refused.err().expect("no database there");
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
        assert!(!e.to_string().contains("secret"), "the password leaked: {e}");
        assert!(e.to_string().contains("PostgreSQL"), "{e}");
    });
}
