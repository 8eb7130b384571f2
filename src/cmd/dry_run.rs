//! `send --dry-run` (protocol 4): what a send would do, with nothing sent (no `PUT` at
//! all). The stored paths under each top component of the plan are listed (one recursive
//! `LIST` each), and each planned file is then new, a replacement of the stored file at
//! its path, or a refusal: a file/folder conflict, `--no-clobber`, the client's quota (as
//! `LIST_END` says it, used up file by file in the plan's order), or a local problem.
//!
//! Why a set rather than a merge of two sorted streams: the plan is already in memory
//! (see `tree`), and a set of the listed paths (and of their folders) is simple to get
//! right; it costs a path or two per stored file under the plan's top folders.

use super::out::outln;
use super::send::Planned;
use super::v4::Four;
use crate::cli::SendArgs;
use anyhow::Context;
use securexfer::client::identity::Identity;
use securexfer::client::v4::error::{V4Error, binary_size};
use securexfer::protocol::v4::{EntryKind, ErrorCode};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::process::ExitCode;
use unicode_normalization::UnicodeNormalization;

/// What is stored under the plan's top folders.
#[derive(Default)]
struct Listing {
    /// Each stored file's path, with its size.
    files: HashMap<String, u64>,
    /// Every folder of those paths.
    folders: HashSet<String>,
    /// The client's usage and quotas, as the server last said them (`WELCOME`, then each
    /// `LIST_END`); `None` when it said nothing (a client it did not know yet).
    room: Option<Room>,
}

/// A client's usage and quotas (`u64::MAX`: none), as the run would use them up.
#[derive(Debug, Clone, Copy)]
struct Room {
    bytes_used: u64,
    bytes_quota: u64,
    files_used: u64,
    files_quota: u64,
}

impl Room {
    /// Takes a file of `size` bytes (a new path when `new`), as the server's check at
    /// `PUT_BEGIN` would; why not, in the client's words for a refusal.
    fn take(&mut self, size: u64, new: bool) -> Result<(), String> {
        if new && self.files_quota != u64::MAX && self.files_used >= self.files_quota {
            return Err(format!(
                "quota exceeded: {} of {} files stored",
                self.files_used, self.files_quota
            ));
        }
        if self.bytes_quota != u64::MAX && self.bytes_used.saturating_add(size) > self.bytes_quota {
            return Err(format!(
                "quota exceeded: {} of {} used",
                binary_size(self.bytes_used),
                binary_size(self.bytes_quota)
            ));
        }
        // A replaced copy may be kept as a version, so it is not given back here.
        self.bytes_used = self.bytes_used.saturating_add(size);
        self.files_used += u64::from(new);
        Ok(())
    }
}

impl Listing {
    fn add(&mut self, path: String, size: u64) {
        for (at, _) in path.match_indices('/') {
            self.folders.insert(path[..at].to_owned());
        }
        self.files.insert(path, size);
    }
}

/// What sending one planned file would do.
enum Verdict {
    New,
    Replaces {
        stored_size: u64,
    },
    /// The server would refuse it (`status` for JSON: `conflict` or `exists`).
    Refused {
        status: &'static str,
        why: String,
    },
    /// It cannot be sent from here.
    Problem(String),
}

/// Prints the plan's verdicts and a summary; exit 0 whenever the plan could be made (what
/// would fail is in its lines).
pub(super) fn run(
    args: &SendArgs,
    server: &str,
    plan: &[Planned],
    mut four: Four,
    identity: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let listed = listing(&mut four, server, plan, identity);
    four.close();
    let listing = listed?;
    let mut room = listing.room;
    let (mut new, mut replaced, mut refused) = (0u64, 0u64, 0u64);
    for file in plan {
        let mut verdict = verdict(file, &listing, args.no_clobber);
        let taken = match (&verdict, room.as_mut()) {
            (Verdict::New, Some(room)) => room.take(file.wire_bytes, true),
            (Verdict::Replaces { .. }, Some(room)) => room.take(file.wire_bytes, false),
            _ => Ok(()),
        };
        if let Err(why) = taken {
            verdict = Verdict::Refused { status: "quota", why };
        }
        match verdict {
            Verdict::New => new += 1,
            Verdict::Replaces { .. } => replaced += 1,
            Verdict::Refused { .. } | Verdict::Problem(_) => refused += 1,
        }
        print(args, server, file, &verdict);
    }
    if args.json {
        let line = serde_json::json!({
            "summary": true, "dry_run": true, "server": server,
            "files": plan.len(), "new": new, "replaced": replaced, "refused": refused,
            "exit_code": 0,
        });
        outln!("{line}");
    } else if !args.quiet {
        outln!(
            "dry run: {new} new, {replaced} to replace, {refused} refused; nothing was sent to {server}"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored files under each top component of the plan's paths. A client the server
/// does not know has nothing stored (a protocol-3 identity is upgraded first, as `ls`
/// does, since its files are the client's).
fn listing(
    four: &mut Four,
    server: &str,
    plan: &[Planned],
    identity: Option<&Path>,
) -> anyhow::Result<Listing> {
    let mut listing = Listing::default();
    let welcome = &four.session.welcome;
    if welcome.registered {
        listing.room = Some(Room {
            bytes_used: welcome.bytes_used,
            bytes_quota: welcome.bytes_quota,
            files_used: welcome.files_used,
            files_quota: welcome.files_quota,
        });
    }
    if !four.session.registered() {
        let Some(path) = identity else { return Ok(listing) };
        let identity = Identity::load(path).context("cannot use the saved identity")?;
        four.upgrade(server, &identity)?;
    }
    let tops: BTreeSet<String> = plan
        .iter()
        .filter(|f| f.problem.is_none())
        .map(|f| nfc(&f.stored_name).split('/').next().unwrap_or_default().to_owned())
        .collect();
    for top in &tops {
        let listed = four.runtime.block_on(four.session.list(top, true, |entry| {
            if entry.kind == EntryKind::File {
                listing.add(entry.path, entry.size);
            }
        }));
        match listed {
            Ok(end) => {
                listing.room = Some(Room {
                    bytes_used: end.bytes_used,
                    bytes_quota: end.bytes_quota,
                    files_used: end.files_used,
                    files_quota: end.files_quota,
                });
            }
            Err(V4Error::Refused { error, .. }) if error.code == ErrorCode::NotFound => {}
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("cannot list {top} on {server}")));
            }
        }
    }
    Ok(listing)
}

fn nfc(name: &str) -> String {
    name.nfc().collect()
}

fn verdict(file: &Planned, listing: &Listing, no_clobber: bool) -> Verdict {
    if let Some(problem) = &file.problem {
        return Verdict::Problem(problem.to_string());
    }
    let path = nfc(&file.stored_name);
    if let Some(&stored_size) = listing.files.get(&path) {
        if no_clobber {
            let why = "a file is stored at this path (--no-clobber)".to_owned();
            return Verdict::Refused { status: "exists", why };
        }
        return Verdict::Replaces { stored_size };
    }
    if let Some((at, _)) =
        path.match_indices('/').find(|(at, _)| listing.files.contains_key(&path[..*at]))
    {
        let why = format!(
            "conflict: {:?} is a file on the server, so nothing can be stored under it",
            &path[..at]
        );
        return Verdict::Refused { status: "conflict", why };
    }
    if listing.folders.contains(&path) {
        let why =
            format!("conflict: {path:?} is a folder on the server (files are stored under it)");
        return Verdict::Refused { status: "conflict", why };
    }
    Verdict::New
}

fn print(args: &SendArgs, server: &str, file: &Planned, verdict: &Verdict) {
    let stored = nfc(&file.stored_name);
    let shown = file.path.display();
    if args.json {
        let mut line = serde_json::json!({
            "file": shown.to_string(), "stored_name": stored, "server": server,
            "dry_run": true, "size": file.wire_bytes,
        });
        let status = match verdict {
            Verdict::New => "new",
            Verdict::Replaces { stored_size } => {
                line["stored_size"] = (*stored_size).into();
                "replace"
            }
            Verdict::Refused { status, why } => {
                line["error"] = why.clone().into();
                status
            }
            Verdict::Problem(why) => {
                line["error"] = why.clone().into();
                "invalid"
            }
        };
        line["status"] = status.into();
        outln!("{line}");
        return;
    }
    if args.quiet && matches!(verdict, Verdict::New | Verdict::Replaces { .. }) {
        return;
    }
    let size = binary_size(file.wire_bytes);
    match verdict {
        Verdict::New => outln!("would send {shown} as {stored} ({size})"),
        Verdict::Replaces { stored_size } => outln!(
            "would send {shown} as {stored} ({size}), replacing the stored file ({})",
            binary_size(*stored_size)
        ),
        Verdict::Refused { why, .. } => outln!("would be refused: {shown} as {stored}: {why}"),
        Verdict::Problem(why) => outln!("cannot be sent: {shown}: {why}"),
    }
}
