//! `send -r DIR…`: the files under each folder as the plan of a protocol-4 send, one
//! [`Planned`] per file in byte order of the stored paths (`basename(DIR)/relative/path`,
//! or `NAME/relative/path` with `--as NAME`), with what the walk skipped (symbolic links,
//! special files, empty folders) noted on stderr as it is found.
//!
//! Memory: the walk itself holds only the folders on its way down
//! ([`securexfer::client::v4::walk`]); the plan holds each file's local and stored path
//! (a few hundred bytes a file, so 100,000 files take some tens of MiB). Why a plan
//! rather than sending as the walk goes: the run's progress bar wants the total, and the
//! send loop is then the one `send FILE…` uses.

use super::UsageError;
use super::send::{FileError, Planned, Rules, identity_files, plan_files};
use crate::cli::SendArgs;
use anyhow::Context;
use securexfer::client::v4::error::V4Error;
use securexfer::client::v4::walk::{Found, Walk};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unicode_normalization::UnicodeNormalization;

/// The plan of `send -r` over `files`: each DIR walked, each regular file given sent as
/// itself (as `send FILE` would).
pub(super) fn plan_tree(
    args: &SendArgs,
    files: &[PathBuf],
    identity: Option<&Path>,
) -> anyhow::Result<Vec<Planned>> {
    if args.as_name.is_some() && files.len() != 1 {
        return Err(UsageError(format!(
            "--as names the stored folder of one DIR, and {} were given",
            files.len()
        ))
        .into());
    }
    let own = identity.map(identity_files).unwrap_or_default();
    let mut tops: HashMap<String, &Path> = HashMap::new();
    let mut plan = Vec::new();
    for path in files {
        if !std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            plan.extend(plan_files(
                std::slice::from_ref(path),
                args.as_name.as_deref(),
                identity,
                Rules::V4,
            )?);
            continue;
        }
        let top: String = match &args.as_name {
            Some(name) => name.nfc().collect(),
            None => folder_name(path)?,
        };
        if let Some(first) = tops.insert(top.clone(), path) {
            return Err(UsageError(format!(
                "{} and {} would both be stored as the folder {top:?}; send them in separate \
                 runs, one with --as NAME",
                first.display(),
                path.display()
            ))
            .into());
        }
        let walk = Walk::new(path, &top)
            .with_context(|| format!("cannot read the folder {}", path.display()))?;
        for found in walk {
            if let Some(planned) = planned(args, found, &own) {
                plan.push(planned);
            }
        }
    }
    Ok(plan)
}

/// What the walk found as a file of the plan, or `None` (noted on stderr) for what is not
/// sent at all.
fn planned(args: &SendArgs, found: Found, own: &[PathBuf]) -> Option<Planned> {
    let problem = |error: V4Error| Some(Box::new(error) as Box<dyn FileError>);
    match found {
        Found::File { path, stored } => {
            let is_own = !own.is_empty() && path.canonicalize().is_ok_and(|c| own.contains(&c));
            let problem = if is_own {
                let cause =
                    std::io::Error::other("this client's identity (its private key) is never sent");
                problem(V4Error::Open { path: path.clone(), cause })
            } else {
                None
            };
            let wire_bytes = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
            Some(Planned { path, stored_name: stored, problem, wire_bytes })
        }
        Found::Refused { path, stored, why } => {
            let problem = problem(V4Error::BadName { name: stored.clone(), why });
            Some(Planned { path, stored_name: stored, problem, wire_bytes: 0 })
        }
        Found::Skipped { path, why } => {
            note(args, &format!("skipped {}: {why}", path.display()));
            None
        }
        Found::EmptyFolder { path } => {
            let why = "folders are stored only as the paths of their files";
            note(args, &format!("skipped the empty folder {}: {why}", path.display()));
            None
        }
    }
}

fn note(args: &SendArgs, what: &str) {
    if !args.quiet {
        eprintln!("securexfer: note: {what}");
    }
}

/// The name a folder's files are stored under: its own name (NFC), or the name of what
/// `.` or `..` stand for.
fn folder_name(path: &Path) -> anyhow::Result<String> {
    let name = match path.file_name() {
        Some(name) => Some(name.to_owned()),
        None => path.canonicalize().ok().and_then(|p| p.file_name().map(ToOwned::to_owned)),
    };
    match name.as_ref().and_then(|n| n.to_str()) {
        Some(name) => Ok(name.nfc().collect()),
        None => Err(UsageError(format!(
            "{} has no name (as text) to store its files under: give one with --as NAME",
            path.display()
        ))
        .into()),
    }
}
