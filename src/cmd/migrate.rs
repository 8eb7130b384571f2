//! `securexfer db migrate`: a single machine's records and files into PostgreSQL and an
//! object store (the work is `securexfer::store::migrate`; this reads the flags, opens
//! both ends and prints the report).

use super::UsageError;
use super::out::outln;
use crate::cli::MigrateArgs;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use securexfer::server::identity::{ServerIdentity, key_path};
use securexfer::store::migrate::{self, MigrateError, Progress, Report, Source, Target};
use securexfer::store::postgres::{is_postgres_url, redacted};
use securexfer::store::{PostgresRecords, S3Store, S3Url, SharedRecords};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Exit code when a file was not moved because it is not what its record says.
const NOT_MOVED: u8 = 5;

/// The documented exit code of a migration that stopped.
pub fn exit_code(e: &MigrateError) -> u8 {
    match e {
        MigrateError::Source { .. } | MigrateError::SourceVersion { .. } => 6,
        MigrateError::Target(_) | MigrateError::Store { .. } => 3,
        MigrateError::KeyDiffers { .. } => 8,
    }
}

/// `sqlite:PATH,storage:DIR`.
fn parse_from(from: &str) -> Result<(PathBuf, PathBuf), UsageError> {
    let usage = || {
        UsageError(format!(
            "--from {from:?}: expected sqlite:PATH,storage:DIR (the database and storage \
             directory of the server to move)"
        ))
    };
    let rest = from.strip_prefix("sqlite:").ok_or_else(usage)?;
    let (db, storage) = rest.rsplit_once(",storage:").ok_or_else(usage)?;
    if db.is_empty() || storage.is_empty() {
        return Err(usage());
    }
    Ok((PathBuf::from(db), PathBuf::from(storage)))
}

/// `postgres://…,s3://BUCKET/PREFIX`.
fn parse_to(to: &str) -> Result<(String, S3Url), UsageError> {
    let usage = |why: &str| {
        UsageError(format!(
            "--to {:?}: expected postgres://USER:PASSWORD@HOST:PORT/DB,s3://BUCKET/PREFIX{why}",
            redacted(to.split(",s3://").next().unwrap_or(to))
        ))
    };
    let (db, s3) = to.rsplit_once(",s3://").ok_or_else(|| usage(""))?;
    if !is_postgres_url(db) {
        return Err(usage(" (the database must be a postgres:// address)"));
    }
    let url = S3Url::parse(&format!("s3://{s3}")).map_err(|e| usage(&format!(": {e}")))?;
    Ok((db.to_owned(), url))
}

pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let (db, storage) = parse_from(&args.from)?;
    let (url, s3_url) = parse_to(&args.to)?;
    if !storage.is_dir() {
        return Err(UsageError(format!(
            "--from: the storage directory {} does not exist",
            storage.display()
        ))
        .into());
    }
    let key_file = key_path(&db);
    let server_key = ServerIdentity::load(&key_file)?.map(|k| k.pkcs8().to_vec());
    let source = Source { db, storage, server_key };
    let shown = redacted(&url);
    let runtime = tokio::runtime::Runtime::new()?;
    let bar = progress_bar(std::io::stderr().is_terminal() && !args.json);
    let report = runtime.block_on(async {
        let records = PostgresRecords::connect(&url, 4)
            .await
            .with_context(|| format!("connecting to the target database {shown}"))?;
        let records = Arc::new(records);
        let shared: SharedRecords = records.clone();
        let store = S3Store::open(&s3_url, shared, Duration::from_secs(300)).await?;
        let target = Target { records: &records, store: &store };
        let shown_progress = |p: Progress| {
            bar.set_message(format!(
                "{} files and versions looked at, {} sent",
                p.looked_at,
                indicatif::BinaryBytes(p.bytes)
            ));
        };
        anyhow::Ok(migrate::migrate(&source, target, &shown_progress).await?)
    });
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &source, &shown, &s3_url);
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(NOT_MOVED) })
}

fn progress_bar(shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(ProgressStyle::with_template("{spinner} migrating: {msg}").expect("a template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn print_report(r: &Report, source: &Source, to: &str, s3: &S3Url) {
    outln!("migrated {} and {} to {to} and {s3}", source.db.display(), source.storage.display());
    outln!("  clients: {}, invitations: {}", r.clients, r.invites);
    let key = match (&source.server_key, r.server_key_moved) {
        (None, _) => "none yet (the first instance to start makes one)",
        (Some(_), true) => "moved (clients' pins stay true)",
        (Some(_), false) => "already there",
    };
    outln!("  server key: {key}");
    outln!(
        "  files: {} moved ({}), {} already there, {} records of uploads that stored nothing",
        r.files_moved,
        indicatif::BinaryBytes(r.bytes_moved),
        r.files_already,
        r.records_only
    );
    outln!("  kept versions: {} moved, {} already there", r.versions_moved, r.versions_already);
    if r.objects_replaced > 0 {
        outln!("  objects of an earlier run replaced and deleted: {}", r.objects_replaced);
    }
    if r.commits_under_way > 0 {
        outln!(
            "  commits under way in the source: {} (their files move on the next run)",
            r.commits_under_way
        );
    }
    if r.unfinished_uploads > 0 {
        outln!(
            "  unfinished protocol-4 uploads, not moved: {} (their clients start them again)",
            r.unfinished_uploads
        );
    }
    for p in &r.problems {
        outln!("  NOT MOVED: client {}, {}: {}", p.client, p.file, p.why);
    }
    if !r.problems.is_empty() {
        outln!(
            "{} not moved; the rest is. Run again once the source is right (a second run \
             moves only what is missing)",
            r.problems.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_names_a_database_and_a_storage_directory() {
        let (db, storage) = parse_from("sqlite:/srv/a,b.db,storage:/srv/files").unwrap();
        assert_eq!((db, storage), (PathBuf::from("/srv/a,b.db"), PathBuf::from("/srv/files")));
        for bad in ["/srv/x.db", "sqlite:/srv/x.db", "sqlite:,storage:/s", "postgres://h/d"] {
            assert!(parse_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn to_names_postgres_and_an_object_store_and_never_shows_the_password() {
        let (db, s3) = parse_to("postgres://u:pw@h:5432/d,s3://bucket/some/prefix").unwrap();
        assert_eq!(db, "postgres://u:pw@h:5432/d");
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("bucket", "some/prefix"));
        let e = parse_to("postgres://u:secret@h/d").unwrap_err().to_string();
        assert!(!e.contains("secret") && e.contains("s3://"), "{e}");
        let e = parse_to("sqlite:x.db,s3://b").unwrap_err().to_string();
        assert!(e.contains("postgres://"), "{e}");
    }
}
