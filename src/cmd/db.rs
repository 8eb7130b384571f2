//! `securexfer db inspect`: what the server has recorded, without key material;
//! `securexfer db restore`: put an earlier version of a file back.

use super::UsageError;
use super::out::outln;
use super::table::{self, cut, fixed};
use crate::cli::{FingerprintArgs, InspectArgs, InviteArgs, QuotaArgs, RestoreArgs};
use anyhow::Context;
use securexfer::protocol::{ClientId, storage_name};
use securexfer::server::identity::{self, ServerIdentity};
use securexfer::store::{
    ClientRecord, CommitIntent, Db, FileRecord, InviteRecord, Quota, Storage, VersionRecord,
};
use std::path::Path;
use std::process::ExitCode;

/// The operator's tools read SQLite files only so far: a `postgres://` address is a usage
/// error that says so (rather than "no such file", with the password in it).
pub fn sqlite_only(db: &Path, command: &str) -> Result<(), UsageError> {
    let shown = db.to_string_lossy();
    if securexfer::store::postgres::is_postgres_url(&shown) {
        let shown = securexfer::store::postgres::redacted(&shown);
        return Err(UsageError(format!(
            "`securexfer {command}` reads a SQLite database file; {shown} is PostgreSQL, \
             which only `serve` supports so far"
        )));
    }
    Ok(())
}

/// Likewise a local storage directory: an `s3://` address is a usage error that says so
/// (rather than a local directory made under that name).
pub fn local_storage_only(storage: &Path, command: &str) -> Result<(), UsageError> {
    let shown = storage.to_string_lossy();
    if securexfer::store::s3::is_s3_url(&shown) {
        return Err(UsageError(format!(
            "`securexfer {command}` reads a local storage directory; {shown} is an object \
             store, which only `serve` supports so far"
        )));
    }
    Ok(())
}

pub fn inspect(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let Snapshot { mut clients, mut files, mut versions, mut invites, key_place, fingerprint } =
        Snapshot::read(&args.db)?;
    let present = Presence::of(&args.storage)?;
    if let Some(filter) = &args.client {
        let id = ClientId::parse(filter);
        clients.retain(|c| c.name == *filter || Some(c.id) == id);
        if clients.is_empty() {
            // An empty listing would look like a client with nothing stored.
            return Err(UsageError(format!(
                "no client {filter:?} in {} (by name or id); without --client, db inspect \
                 lists them all",
                shown_db(&args.db)
            ))
            .into());
        }
        files.retain(|f| f.client_name == *filter || Some(f.client_id) == id);
        versions.retain(|v| v.client_name == *filter || Some(v.client_id) == id);
        let names: Vec<&str> = clients.iter().map(|c| c.name.as_str()).collect();
        invites.retain(|i| {
            [&i.name, &i.used_by].into_iter().flatten().any(|n| names.contains(&n.as_str()))
        });
    }
    if args.json {
        let server_key = serde_json::json!({ "path": key_place, "fingerprint": fingerprint });
        print_json(&clients, &files, &versions, &invites, &present, server_key)?;
    } else {
        match &fingerprint {
            Some(f) => outln!("SERVER KEY {f} ({key_place})\n"),
            None => outln!("SERVER KEY none yet ({key_place}: made at the first start of serve)\n"),
        }
        let layout = Layout { width: table::terminal_width(), raw: args.bytes };
        print_tables(&clients, &files, &present, layout);
        print_versions(&versions, layout);
        print_invites(&invites, layout);
    }
    Ok(ExitCode::SUCCESS)
}

/// The database as the operator's tools name it: a path, or a PostgreSQL address without
/// its password.
fn shown_db(db: &Path) -> String {
    let shown = db.to_string_lossy();
    if securexfer::store::postgres::is_postgres_url(&shown) {
        securexfer::store::postgres::redacted(&shown)
    } else {
        db.display().to_string()
    }
}

/// What `db inspect` shows of the records, read from SQLite or PostgreSQL alike.
struct Snapshot {
    clients: Vec<ClientRecord>,
    files: Vec<FileRecord>,
    versions: Vec<VersionRecord>,
    invites: Vec<InviteRecord>,
    /// Where the server key is kept, as people should be told.
    key_place: String,
    fingerprint: Option<String>,
}

impl Snapshot {
    fn read(db: &Path) -> anyhow::Result<Self> {
        let shown = db.to_string_lossy();
        if securexfer::store::postgres::is_postgres_url(&shown) {
            return Self::from_postgres(&shown);
        }
        let db_file = Db::open_read_only(db)?;
        let key_path = identity::key_path(db);
        let key = ServerIdentity::load(&key_path)?;
        Ok(Snapshot {
            clients: db_file.clients()?,
            files: db_file.files()?,
            // A database from before versions were kept has no versions table.
            versions: db_file.versions().unwrap_or_default(),
            invites: db_file.invites()?,
            key_place: key_path.display().to_string(),
            fingerprint: key.map(|k| k.fingerprint().to_owned()),
        })
    }

    /// Over PostgreSQL: only reads (the schema is not migrated), and the server key is
    /// the one every instance presents, kept in the database.
    fn from_postgres(url: &str) -> anyhow::Result<Self> {
        use securexfer::store::{PostgresRecords, Records};
        let shown = securexfer::store::postgres::redacted(url);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime
            .block_on(async {
                let records = PostgresRecords::connect_to_read(url).await?;
                let key_place = format!("table server_key of {shown}");
                let fingerprint = match records.stored_server_key().await? {
                    Some(pkcs8) => Some(
                        ServerIdentity::from_stored(&key_place, pkcs8)?.fingerprint().to_owned(),
                    ),
                    None => None,
                };
                anyhow::Ok(Snapshot {
                    clients: records.clients().await?,
                    files: records.files().await?,
                    versions: records.versions().await?,
                    invites: records.invites().await?,
                    key_place,
                    fingerprint,
                })
            })
            .with_context(|| format!("reading the records in {shown}"))
    }
}

/// Where `db inspect` looks for the bytes the records name, to say whether they are there.
enum Presence {
    /// A local storage directory: a file at each path name.
    Local(std::path::PathBuf),
    /// An object store: the objects under its prefix, listed once, with their sizes.
    Objects(std::collections::HashMap<String, u64>),
}

impl Presence {
    fn of(storage: &Path) -> anyhow::Result<Self> {
        let shown = storage.to_string_lossy();
        if !securexfer::store::s3::is_s3_url(&shown) {
            return Ok(Presence::Local(storage.to_owned()));
        }
        let url = securexfer::store::S3Url::parse(&shown).map_err(UsageError)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Presence::Objects(runtime.block_on(securexfer::store::S3Store::object_sizes(&url))?))
    }

    /// The size of the stored copy `file` names, if it is there.
    fn size(&self, file: &FileRecord) -> Option<u64> {
        match self {
            Presence::Local(dir) => {
                std::fs::metadata(dir.join(&file.path_name)).ok().map(|m| m.len())
            }
            Presence::Objects(objects) => objects.get(&file.path_name).copied(),
        }
    }
}

/// How the tables are printed.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// The terminal's width, if the tables go to one that says.
    width: Option<usize>,
    /// Sizes as byte counts (`--bytes`).
    raw: bool,
}

impl Layout {
    fn size(self, bytes: Option<u64>) -> String {
        bytes.map_or_else(|| "-".into(), |b| table::size(b, self.raw))
    }

    fn print(self, columns: &[table::Column], rows: &[Vec<String>]) {
        for line in table::render(columns, rows, self.width) {
            outln!("{line}");
        }
    }
}

fn print_versions(versions: &[VersionRecord], layout: Layout) {
    outln!();
    outln!("VERSIONS ({})", versions.len());
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            vec![
                v.client_name.clone(),
                v.name.clone(),
                v.version.to_string(),
                v.path_name.clone(),
                layout.size(v.size),
                v.stored_at.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let columns = [
        cut("CLIENT"),
        cut("NAME"),
        fixed("VERSION"),
        cut("KEPT AT"),
        fixed("SIZE"),
        fixed("STORED (UTC)"),
    ];
    layout.print(&columns, &rows);
}

/// What an invitation is now: `unused`, `used`, or `expired` (unused past its time).
fn invite_state(i: &InviteRecord) -> &'static str {
    match (&i.used_at, i.expired) {
        (Some(_), _) => "used",
        (None, true) => "expired",
        (None, false) => "unused",
    }
}

fn print_invites(invites: &[InviteRecord], layout: Layout) {
    outln!();
    outln!("INVITATIONS ({})", invites.len());
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = invites
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                dash(&i.name),
                invite_state(i).to_owned(),
                i.created_at.clone(),
                i.expires_at.clone(),
                dash(&i.used_by),
            ]
        })
        .collect();
    let columns = [
        fixed("ID"),
        cut("FOR NAME"),
        fixed("STATE"),
        fixed("CREATED (UTC)"),
        fixed("EXPIRES (UTC)"),
        cut("USED BY"),
    ];
    layout.print(&columns, &rows);
}

fn invite_json(i: &InviteRecord) -> serde_json::Value {
    serde_json::json!({
        "id": i.id,
        "name": i.name,
        "state": invite_state(i),
        "created_at": i.created_at,
        "expires_at": i.expires_at,
        "used_at": i.used_at,
        "used_by": i.used_by,
    })
}

fn version_json(v: &VersionRecord) -> serde_json::Value {
    serde_json::json!({
        "client_id": v.client_id.to_hex(),
        "client_name": v.client_name,
        "name": v.name,
        "version": v.version,
        "file_name": v.file_name,
        "path": v.path_name,
        "size": v.size,
        "cksum": v.cksum,
        "stored_at": v.stored_at,
        "blake3": v.v4.as_ref().map(|c| hex(&c.blake3)),
    })
}

/// Decides the commits a crash interrupted, as `serve` does at start-up, before a restore
/// looks at the records: through the records trait, on a runtime of its own.
fn finish_interrupted_commits(db: &Path, storage: &Storage) -> anyhow::Result<()> {
    let records = securexfer::store::SqliteRecords::new(Db::open(db)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let storage = securexfer::store::Blobs::Local(storage.clone());
    runtime.block_on(securexfer::server::reconcile_commits(&records, &storage, usize::MAX))?;
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    sqlite_only(&args.db, "db restore")?;
    local_storage_only(&args.storage, "db restore")?;
    let storage = Storage::open(&args.storage)
        .with_context(|| format!("storage directory {}", args.storage.display()))?;
    let _lock = storage.lock_exclusive().map_err(|_| {
        UsageError(format!(
            "{} is in use (is the server running?): stop it first, then restore",
            args.storage.display()
        ))
    })?;
    finish_interrupted_commits(&args.db, &storage)?;
    let db = Db::open(&args.db)?;
    let client = find_client(db.clients()?, &args.client, &args.db.display().to_string())?;
    let versions = db.versions()?;
    // A protocol-4 path with folders (`docs/a.txt`) is stored under that very name; any
    // other name as protocol 3 stores it (its last component).
    let name = if versions.iter().any(|v| v.client_id == client.id && v.name == args.file) {
        args.file.clone()
    } else {
        storage_name(&args.file).map_err(|e| UsageError(e.to_string()))?.to_owned()
    };
    let version = versions
        .into_iter()
        .filter(|v| v.client_id == client.id && v.name == name)
        .filter(|v| args.version.is_none_or(|n| v.version == n))
        .max_by_key(|v| v.version)
        .ok_or_else(|| UsageError(format!("no such version of {name} of {}", client.name)))?;
    let path_name = Storage::relative_path(client.id, &name);
    let current = db.has_verified_at(client.id, &path_name)?;
    let intent = CommitIntent {
        client_id: client.id,
        stored_name: name.clone(),
        file_name: version.file_name.clone(),
        path_name,
        source: version.path_name.clone(),
        size: version.size.unwrap_or_default(),
        cksum: version.cksum.unwrap_or_default(),
        archive: current.then(|| Storage::new_version_path(client.id)),
        restores: Some(version.version),
        v4: version.v4,
    };
    db.begin_commit(&intent)?;
    if let Some(archive) = &intent.archive {
        storage.keep_version(client.id, &name, archive)?;
    }
    storage.restore_version(client.id, &name, &version.path_name)?;
    db.finish_commit(&intent, None, usize::MAX)?;
    outln!("restored version {} of {name} of {}", version.version, client.name);
    Ok(ExitCode::SUCCESS)
}

fn print_json(
    clients: &[ClientRecord],
    files: &[FileRecord],
    versions: &[VersionRecord],
    invites: &[InviteRecord],
    present: &Presence,
    server_key: serde_json::Value,
) -> anyhow::Result<()> {
    let clients: Vec<_> = clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id.to_hex(),
                "name": c.name,
                "last_seen": c.last_seen,
                "has_public_key": c.public_key.is_some(),
                "has_aes_key": c.has_aes_key,
                "key_fingerprint": c.key_fingerprint.as_ref().map(key_fingerprint),
                "protocol": client_protocol(c),
            })
        })
        .collect();
    let files: Vec<_> = files
        .iter()
        .map(|f| {
            let disk = present.size(f);
            serde_json::json!({
                "client_id": f.client_id.to_hex(),
                "client_name": f.client_name,
                "file_name": f.file_name,
                "path": f.path_name,
                "verified": f.verified,
                "size": f.size,
                "cksum": f.cksum,
                "stored_at": f.stored_at,
                "present": disk.is_some(),
                "size_on_disk": disk,
                "blake3": f.blake3.as_ref().map(hex),
                "protocol": f.protocol,
                "generation": f.generation,
            })
        })
        .collect();
    let versions: Vec<_> = versions.iter().map(version_json).collect();
    let doc = serde_json::json!({
        "server_key": server_key,
        "clients": clients,
        "files": files,
        "versions": versions,
        "invitations": invites.iter().map(invite_json).collect::<Vec<_>>(),
    });
    outln!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

fn print_tables(
    clients: &[ClientRecord],
    files: &[FileRecord],
    present: &Presence,
    layout: Layout,
) {
    outln!("CLIENTS ({})", clients.len());
    let rows: Vec<Vec<String>> = clients
        .iter()
        .map(|c| {
            vec![
                c.id.to_hex(),
                c.name.clone(),
                c.last_seen.clone().unwrap_or_else(|| "-".into()),
                yes_no(c.public_key.is_some()),
                yes_no(c.has_aes_key),
                client_protocol(c).to_string(),
                c.key_fingerprint.as_ref().map_or_else(|| "-".into(), key_fingerprint),
            ]
        })
        .collect();
    // The id is cut like a short commit hash; `--client` takes the name too.
    let columns = [
        cut("ID"),
        cut("NAME"),
        fixed("LAST SEEN (UTC)"),
        fixed("PUBLIC KEY"),
        fixed("AES KEY"),
        fixed("PROTO"),
        cut("V4 KEY"),
    ];
    layout.print(&columns, &rows);
    outln!();
    outln!("FILES ({})", files.len());
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let disk = present.size(f);
            vec![
                f.client_name.clone(),
                f.file_name.clone(),
                f.path_name.clone(),
                yes_no(f.verified),
                layout.size(disk),
                yes_no(disk.is_some()),
                f.blake3.as_ref().map_or_else(|| "-".into(), |h| hex(h)[..16].to_owned()),
            ]
        })
        .collect();
    let columns = [
        cut("CLIENT"),
        cut("FILE NAME"),
        cut("STORED AT"),
        fixed("VERIFIED"),
        fixed("SIZE"),
        fixed("PRESENT"),
        cut("BLAKE3"),
    ];
    layout.print(&columns, &rows);
}

/// The protocol a client speaks: 4 once it has a protocol-4 key (protocol 3 is then
/// refused for it), else 3.
fn client_protocol(c: &ClientRecord) -> u8 {
    if c.key_fingerprint.is_some() { 4 } else { 3 }
}

/// A raw key fingerprint as people see it: `SHA256:` and unpadded base64.
fn key_fingerprint(raw: &[u8; 32]) -> String {
    securexfer::crypto::fingerprint::text(raw)
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// `db fingerprint`: the server key's fingerprint alone on stdout, for scripts and for
/// telling clients what to pin.
pub fn fingerprint(args: FingerprintArgs) -> anyhow::Result<ExitCode> {
    let shown = args.db.to_string_lossy();
    if securexfer::store::postgres::is_postgres_url(&shown) {
        // The key every instance over that database presents, kept in it.
        let place =
            format!("table server_key of {}", securexfer::store::postgres::redacted(&shown));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let stored = runtime.block_on(async {
            let records = securexfer::store::PostgresRecords::connect_to_read(&shown).await?;
            records.stored_server_key().await
        })?;
        let Some(pkcs8) = stored else {
            return Err(super::LocalError(format!(
                "no server key in {place} yet: the first `securexfer serve` over it makes it"
            ))
            .into());
        };
        outln!("{}", ServerIdentity::from_stored(&place, pkcs8)?.fingerprint());
        return Ok(ExitCode::SUCCESS);
    }
    let path = identity::key_path(&args.db);
    match ServerIdentity::load(&path)? {
        Some(key) => {
            outln!("{}", key.fingerprint());
            Ok(ExitCode::SUCCESS)
        }
        None => Err(super::LocalError(format!(
            "no server key at {} yet: `securexfer serve --db {}` makes it at its first start",
            path.display(),
            args.db.display()
        ))
        .into()),
    }
}

/// `db invite`: a fresh single-use token on stdout; the database keeps only its SHA-256.
pub fn invite(args: InviteArgs) -> anyhow::Result<ExitCode> {
    use securexfer::crypto::invite::InviteToken;
    if let Some(name) = &args.name {
        securexfer::protocol::v4::names::check_client_name(name)
            .map_err(|e| UsageError(format!("--name {name:?}: {e}")))?;
    }
    let token = InviteToken::generate();
    let valid_for = std::time::Duration::from_secs(args.expires);
    let shown = args.db.to_string_lossy();
    if securexfer::store::postgres::is_postgres_url(&shown) {
        // The invitation goes where every instance over that database looks for it.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let records = securexfer::store::PostgresRecords::connect(&shown, 1).await?;
            records.create_invite(&token.hash(), args.name.as_deref(), valid_for).await
        })?;
    } else {
        let db = Db::open(&args.db)?;
        db.create_invite(&token.hash(), args.name.as_deref(), valid_for)?;
    }
    outln!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `db quota`: a client's quota and usage, after setting what `--bytes` and `--files` say.
pub fn quota(args: QuotaArgs) -> anyhow::Result<ExitCode> {
    let setting = args.bytes.is_some() || args.files.is_some();
    let change = |quota: Quota| Quota {
        bytes: args.bytes.map_or(quota.bytes, |l| l.0),
        files: args.files.map_or(quota.files, |l| l.0),
    };
    let shown = args.db.to_string_lossy();
    let (client, quota, usage) = if securexfer::store::postgres::is_postgres_url(&shown) {
        quota_on_postgres(&shown, &args.client, setting, change)?
    } else {
        let db = if setting { Db::open(&args.db)? } else { Db::open_read_only(&args.db)? };
        let client = find_client(db.clients()?, &args.client, &args.db.to_string_lossy())?;
        let mut quota = db.quota(client.id)?;
        if setting {
            quota = change(quota);
            db.set_quota(client.id, quota)?;
        }
        let usage = db.usage(client.id)?;
        (client, quota, usage)
    };
    if args.json {
        let doc = serde_json::json!({
            "client": client.name,
            "id": client.id.to_string(),
            "bytes_used": usage.bytes,
            "bytes_quota": quota.bytes,
            "files_used": usage.files,
            "files_quota": quota.files,
        });
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    let limit = |l: Option<u64>, show: &dyn Fn(u64) -> String| l.map_or("no quota".into(), show);
    let size = |n: u64| table::size(n, false);
    outln!("client {} ({})", client.name, client.id);
    outln!("bytes  {} used of {}", size(usage.bytes), limit(quota.bytes, &size));
    outln!("files  {} used of {}", usage.files, limit(quota.files, &|n| n.to_string()));
    Ok(ExitCode::SUCCESS)
}

/// `db quota` over PostgreSQL: every instance sees a change at its next put.
fn quota_on_postgres(
    url: &str,
    wanted: &str,
    setting: bool,
    change: impl FnOnce(Quota) -> Quota,
) -> anyhow::Result<(ClientRecord, Quota, securexfer::store::Usage)> {
    use securexfer::store::{PostgresRecords, Records};
    let shown = securexfer::store::postgres::redacted(url);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let records = PostgresRecords::connect_to_read(url).await?;
        let client = find_client(records.clients().await?, wanted, &shown)?;
        let mut quota = records.quota(client.id).await?;
        if setting {
            quota = change(quota);
            records.set_quota(client.id, quota).await?;
        }
        let usage = records.usage(client.id).await?;
        Ok((client, quota, usage))
    })
}

/// The client `wanted` names (by name or id) among `clients` of the database `place`, or
/// the usage error that says none does.
fn find_client(
    clients: Vec<ClientRecord>,
    wanted: &str,
    place: &str,
) -> anyhow::Result<ClientRecord> {
    let id = ClientId::parse(wanted);
    let found = clients.into_iter().find(|c| c.name == wanted || Some(c.id) == id);
    found.ok_or_else(|| {
        UsageError(format!(
            "no client {wanted:?} in {place} (by name or id); db inspect lists them"
        ))
        .into()
    })
}
