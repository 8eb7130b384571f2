//! `securexfer db verify`: every verified record against the bytes on disk, and every
//! file on disk against the records. Read-only, so it is safe while the server runs (an
//! upload confirmed during the check may show as unrecorded or changed; run it again).

use super::out::outln;
use crate::cli::VerifyArgs;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use securexfer::crypto::Cksum;
use securexfer::protocol::TEMP_PREFIX;
use securexfer::store::{Db, FileRecord};
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

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let db = Db::open_read_only(&args.db)?;
    let records: Vec<FileRecord> = db.files()?.into_iter().filter(|f| f.verified).collect();
    let total: u64 = records.iter().filter_map(|f| f.size).sum();
    let bar = progress_bar(total, !args.json && std::io::stderr().is_terminal());
    let mut results: Vec<(String, Option<&FileRecord>, Finding)> = Vec::new();
    for record in &records {
        let finding = check(&args.storage.join(&record.path_name), record, &bar);
        results.push((record.path_name.clone(), Some(record), finding));
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

/// Regular files under `storage/<client dir>/`, as paths relative to `storage`;
/// unfinished uploads (the temporary prefix) and anything deeper are not stored files.
fn stored_files(storage: &Path) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for client in std::fs::read_dir(storage)? {
        let client = client?;
        if !client.file_type()?.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(client.path())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && !name.starts_with(TEMP_PREFIX) {
                let dir = client.file_name().to_string_lossy().into_owned();
                found.push(format!("{dir}/{name}"));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn print_text(results: &[(String, Option<&FileRecord>, Finding)]) {
    let mut counts = [0usize; 4];
    for (path, record, finding) in results {
        let index = match finding {
            Finding::Ok => 0,
            Finding::Missing(_) => 1,
            Finding::Changed { .. } => 2,
            Finding::Unrecorded => 3,
        };
        counts[index] += 1;
        let owner = record.map(|r| format!(" ({}, {})", r.client_name, r.file_name));
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

fn print_json(results: &[(String, Option<&FileRecord>, Finding)]) -> anyhow::Result<()> {
    let files: Vec<_> = results
        .iter()
        .map(|(path, record, finding)| {
            let mut doc = serde_json::json!({ "path": path, "status": finding.status() });
            if let Some(r) = record {
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
