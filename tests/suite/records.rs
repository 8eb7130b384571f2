//! The records trait's contract (`securexfer::store::Records`), the same tests on every
//! backend: SQLite in memory, and PostgreSQL on the test cluster `.ci/services.sh` starts
//! (skipped with a message without it, failed in CI; see `common::real_backend`). Then
//! what only a shared database has to survive: several instances migrating at once, and
//! commits of one client from several connections.

use crate::common;
use securexfer::protocol::ClientId;
use securexfer::store::postgres::schema;
use securexfer::store::{
    CommitIntent, Db, PostgresError, PostgresRecords, Records, SharedRecords, SqliteRecords,
    StagedObject,
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
    assert_eq!(records.claim_expired_staged(99).await.unwrap(), [], "none expired yet");
    assert_eq!(records.claim_expired_staged(100).await.unwrap(), [staged(2, Some("up-2"))]);
    assert_eq!(records.claim_expired_staged(100).await.unwrap(), [], "claimed once");
    assert_eq!(records.claim_expired_staged(i64::MAX).await.unwrap(), [staged(4, None)]);
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
