//! `securexfer db verify`: every verified record (stored files and the versions kept of
//! them) against the bytes on disk, and every file on disk against the records. Read-only, so it is safe while the server runs (an
//! upload confirmed during the check may show as unrecorded or changed; run it again).

use super::out::outln;
use crate::cli::VerifyArgs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use securexfer::crypto::Cksum;
use securexfer::protocol::TEMP_PREFIX;
use securexfer::store::{Db, FileRecord, VERSIONS_DIR, VersionRecord};
use std::collections::HashSet;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

/// The exit code when anything does not match (as `send`'s "verification failed").
const MISMATCH: u8 = 5;

/// What the check found for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Finding {
    /// Its bytes match the record.
    Ok,
    /// The record says verified and the file is not there (or cannot be read).
    Missing(String),
    /// The bytes differ from the record.
    Changed { size: u64, cksum: u32 },
    /// A file in storage that no record describes.
    Unrecorded,
}

impl Finding {
    fn status(&self) -> &'static str {
        match self {
            Finding::Ok => "ok",
            Finding::Missing(_) => "missing",
            Finding::Changed { .. } => "changed",
            Finding::Unrecorded => "unrecorded",
        }
    }
}

/// A kept version, checked as a file is: it is a verified record of bytes on disk.
fn version_record(v: VersionRecord) -> (FileRecord, Option<i64>) {
    let record = FileRecord {
        client_id: v.client_id,
        client_name: v.client_name,
        file_name: v.file_name,
        path_name: v.path_name,
        verified: true,
        size: v.size,
        cksum: v.cksum,
        stored_at: v.stored_at,
        blake3: None,
        protocol: 3,
        generation: None,
    };
    (record, Some(v.version))
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::db::sqlite_only(&args.db, "db verify")?;
    super::db::local_storage_only(&args.storage, "db verify")?;
    let db = Db::open_read_only(&args.db)?;
    let mut checked: Vec<(FileRecord, Option<i64>)> =
        db.files()?.into_iter().filter(|f| f.verified).map(|f| (f, None)).collect();
    checked.extend(db.versions()?.into_iter().map(version_record));
    let versions: Vec<Option<i64>> = checked.iter().map(|(_, v)| *v).collect();
    let records: Vec<FileRecord> = checked.into_iter().map(|(f, _)| f).collect();
    let total: u64 = records.iter().filter_map(|f| f.size).sum();
    let bar = progress_bar(total, !args.json && std::io::stderr().is_terminal());
    let mut results: Vec<Checked> = Vec::new();
    for (record, version) in records.iter().zip(versions) {
        let finding = check(&args.storage.join(&record.path_name), record, &bar);
        results.push((record.path_name.clone(), Some((record, version)), finding));
    }
    let recorded: HashSet<&str> = records.iter().map(|r| r.path_name.as_str()).collect();
    for path in stored_files(&args.storage)? {
        if !recorded.contains(path.as_str()) {
            results.push((path, None, Finding::Unrecorded));
        }
    }
    bar.finish_and_clear();
    let bad = results.iter().filter(|(_, _, f)| *f != Finding::Ok).count();
    if args.json {
        print_json(&results)?;
    } else {
        print_text(&results);
    }
    Ok(ExitCode::from(if bad == 0 { 0 } else { MISMATCH }))
}

fn progress_bar(total: u64, shown: bool) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "verifying {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} [{wide_bar}]",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar
}

/// The stored file at `path` against `record`.
fn check(path: &Path, record: &FileRecord, bar: &ProgressBar) -> Finding {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Finding::Missing(e.to_string()),
    };
    let mut cksum = Cksum::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                cksum.update(&buf[..n]);
                bar.inc(n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Finding::Missing(format!("unreadable: {e}")),
        }
    }
    let size = cksum.len();
    let cksum = cksum.finish();
    let matches = record.size.is_none_or(|s| s == size) && record.cksum.is_none_or(|c| c == cksum);
    if matches { Finding::Ok } else { Finding::Changed { size, cksum } }
}

/// One result: the path, its record (with the version number for a kept version) if it
/// has one, and what the check found.
type Checked<'a> = (String, Option<(&'a FileRecord, Option<i64>)>, Finding);

/// Regular files under `storage/<client dir>/` (in its folders too: protocol 4's paths)
/// and `storage/.versions/<client dir>/`, as paths relative to `storage`; unfinished
/// uploads (the temporary prefix) are not stored files, and links are not followed.
fn stored_files(storage: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = files_in_client_dirs(storage, "")?;
    let versions = storage.join(VERSIONS_DIR);
    if versions.is_dir() {
        found.extend(files_in_client_dirs(&versions, &format!("{VERSIONS_DIR}/"))?);
    }
    found.sort();
    Ok(found)
}

fn files_in_client_dirs(top: &Path, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for client in std::fs::read_dir(top)? {
        let client = client?;
        if !client.file_type()?.is_dir() {
            continue;
        }
        let dir = client.file_name().to_string_lossy().into_owned();
        if prefix.is_empty() && dir == VERSIONS_DIR {
            continue; // its own call
        }
        files_in(&client.path(), &format!("{prefix}{dir}/"), &mut found)?;
    }
    Ok(found)
}

/// The regular files under `dir`, named `prefix` and their path below it.
fn files_in(dir: &Path, prefix: &str, found: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if kind.is_file() && !name.starts_with(TEMP_PREFIX) {
            found.push(format!("{prefix}{name}"));
        } else if kind.is_dir() {
            files_in(&entry.path(), &format!("{prefix}{name}/"), found)?;
        }
    }
    Ok(())
}

fn print_text(results: &[Checked]) {
    let mut counts = [0usize; 4];
    for (path, record, finding) in results {
        let index = match finding {
            Finding::Ok => 0,
            Finding::Missing(_) => 1,
            Finding::Changed { .. } => 2,
            Finding::Unrecorded => 3,
        };
        counts[index] += 1;
        let owner = record.map(|(r, version)| match version {
            Some(n) => format!(" ({}, {}, version {n})", r.client_name, r.file_name),
            None => format!(" ({}, {})", r.client_name, r.file_name),
        });
        let record = record.map(|(r, _)| r);
        match finding {
            Finding::Ok => {}
            Finding::Missing(why) => {
                outln!("missing     {path}{}: {why}", owner.unwrap_or_default())
            }
            Finding::Changed { size, cksum } => {
                let r = record.expect("a changed file has a record");
                outln!(
                    "changed     {path}{}: {size} bytes, cksum {cksum} on disk; recorded {} bytes, cksum {}",
                    owner.unwrap_or_default(),
                    r.size.map_or("?".into(), |s| s.to_string()),
                    r.cksum.map_or("?".into(), |c| c.to_string()),
                );
            }
            Finding::Unrecorded => outln!("unrecorded  {path}: no record describes it"),
        }
    }
    outln!(
        "{} files checked: {} ok, {} missing, {} changed, {} unrecorded",
        results.len(),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
}

fn print_json(results: &[Checked]) -> anyhow::Result<()> {
    let files: Vec<_> = results
        .iter()
        .map(|(path, record, finding)| {
            let mut doc = serde_json::json!({ "path": path, "status": finding.status() });
            if let Some((r, version)) = record {
                if let Some(n) = version {
                    doc["version"] = (*n).into();
                }
                doc["client_id"] = r.client_id.to_hex().into();
                doc["client_name"] = r.client_name.clone().into();
                doc["file_name"] = r.file_name.clone().into();
                doc["recorded_size"] = r.size.into();
                doc["recorded_cksum"] = r.cksum.into();
            }
            match finding {
                Finding::Missing(why) => doc["error"] = why.clone().into(),
                Finding::Changed { size, cksum } => {
                    doc["size"] = (*size).into();
                    doc["cksum"] = (*cksum).into();
                }
                _ => {}
            }
            doc
        })
        .collect();
    let count = |s: &str| files.iter().filter(|f| f["status"] == s).count();
    let summary = serde_json::json!({
        "checked": files.len(),
        "ok": count("ok"),
        "missing": count("missing"),
        "changed": count("changed"),
        "unrecorded": count("unrecorded"),
    });
    let doc = serde_json::json!({ "files": files, "summary": summary });
    outln!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
