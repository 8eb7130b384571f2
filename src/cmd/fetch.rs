//! `securexfer ls`, `get` and `rm`: protocol 4 only. Each connects as `send` does (known
//! servers, the pinned key, an upgrade of a protocol-3 identity), then lists, downloads or
//! removes, reporting each name in its place, for people or as JSON lines.

use super::fetch_many;
use super::out::outln;
use super::partial;
use super::progress;
use super::send::{identity_candidates, server_and_name};
use super::v4::{self, Four, Spoken};
use super::{UsageError, code_for};
use crate::cli::{ClientArgs, GetArgs, LsArgs, ProtocolArg, RmArgs};
use anyhow::Context;
use securexfer::client::identity::Identity;
use securexfer::client::trust::format_time;
use securexfer::client::v4::error::{V4Error, binary_size, describe_refusal};
use securexfer::client::v4::fetch::{Fetched, PendingGet};
use securexfer::client::v4::glob;
use securexfer::client::v4::session::Session;
use securexfer::client::v4::session::hex;
use securexfer::protocol::v4::{EntryKind, ErrorCode, ListEnd, ListEntry};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// GETs sent ahead of the one being received: their answers come in order, so the server
/// never waits for the client's next request between files.
pub(super) const GETS_AHEAD: usize = 8;

/// The partial file a download is being written to, and whether it is resumable, for
/// Ctrl-C to keep or delete.
type Current = std::sync::Arc<std::sync::Mutex<Option<(PathBuf, bool)>>>;

/// Ctrl-C during `get` keeps the partial file being written when it is resumable (the
/// same `get` continues it) and deletes it otherwise; nothing is ever left under the
/// name. Says which, and exits 130.
fn tidy_on_interrupt(current: &Current, display: &progress::Shared) {
    let flag: &'static std::sync::atomic::AtomicBool = securexfer::sys::catch_interrupt();
    let (current, display) = (std::sync::Arc::clone(current), std::sync::Arc::clone(display));
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                progress::lock(&display).clear_after_interrupt();
                let temp = current.lock().unwrap_or_else(|p| p.into_inner()).take();
                // A partial file with nothing in it yet is nothing to continue.
                let empty = |t: &PathBuf| std::fs::metadata(t).map_or(true, |m| m.len() == 0);
                match temp {
                    Some((temp, true)) if !empty(&temp) => eprintln!(
                        "securexfer: interrupted: what arrived is kept in {}; the same get \
                         continues it",
                        temp.display()
                    ),
                    Some((temp, _)) => {
                        let _ = std::fs::remove_file(&temp);
                        eprintln!("securexfer: interrupted: the download under way was not kept");
                    }
                    None => eprintln!("securexfer: interrupted"),
                }
                std::process::exit(i32::from(progress::INTERRUPTED));
            }
        }
    });
}

/// ls, get and rm cannot be served: the server does not speak protocol 4, or does not know
/// this client (exit code 4, a refusal).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotServed(pub String);

/// Connects for `command` over protocol 4, as a client the server knows.
fn connect(command: &str, args: &ClientArgs) -> anyhow::Result<(String, Four)> {
    if args.protocol == ProtocolArg::Three {
        return Err(UsageError(format!(
            "securexfer {command} needs protocol 4: protocol 3 can only send files (drop \
             --protocol 3)"
        ))
        .into());
    }
    let (server, _) = server_and_name(args, None)?;
    let mut four = match v4::connect(&server, args)? {
        Spoken::Four(four) => *four,
        Spoken::Three => {
            return Err(NotServed(format!(
                "{server} does not speak protocol 4: securexfer {command} needs it (protocol 3 \
                 can only send files)"
            ))
            .into());
        }
    };
    if !four.session.registered() {
        let candidates = identity_candidates(args.identity.as_deref(), &server);
        let Some(found) = candidates.iter().find(|p| p.exists()) else {
            four.close();
            return Err(NotServed(format!(
                "{server} does not know this client's protocol-4 key, and there is no \
                 protocol-3 identity to upgrade: `securexfer register` (or `send`) first"
            ))
            .into());
        };
        let identity = Identity::load(found).context("cannot use the saved identity")?;
        four.upgrade(&server, &identity)?;
    }
    Ok((server, four))
}

/// An error about one name in words for people: "not found: NAME on SERVER" and the like.
fn describe(error: &V4Error, name: &str, server: &str) -> String {
    match error {
        V4Error::Refused { error, .. } if error.code == ErrorCode::NotFound => {
            format!("not found: {name} on {server}")
        }
        V4Error::Refused { error, .. } if error.code == ErrorCode::IsFolder => {
            format!("{name} on {server} is a folder, not a file")
        }
        V4Error::Refused { step, error } => {
            format!("{step} {name} on {server}: {}", describe_refusal(error))
        }
        other => format!("{name}: {other}"),
    }
}

/// `securexfer ls [PATTERN…]`.
pub fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let (server, mut four) = connect("ls", &args.client)?;
    let patterns = args.patterns.clone();
    let mut matched = vec![false; patterns.len()];
    let show = |entry: &ListEntry| print_entry(&args, &server, entry);
    let listed = four.runtime.block_on(four.session.list("", true, |entry| {
        let mut any = patterns.is_empty();
        for (pattern, hit) in patterns.iter().zip(matched.iter_mut()) {
            if glob::matches(pattern, &entry.path) {
                *hit = true;
                any = true;
            }
        }
        if any {
            show(&entry);
        }
    }));
    let end = match listed {
        Ok(end) => end,
        Err(e) => {
            four.close();
            return Err(anyhow::Error::new(e).context(format!("cannot list the files on {server}")));
        }
    };
    four.close();
    let mut worst = 0;
    for (pattern, _) in patterns.iter().zip(&matched).filter(|(_, hit)| !**hit) {
        worst = 4;
        let why = if glob::is_pattern(pattern) {
            format!("no stored file matches {pattern} on {server}")
        } else {
            format!("not found: {pattern} on {server}")
        };
        if args.json {
            outln!(
                "{}",
                serde_json::json!({ "pattern": pattern, "status": "not_found", "error": why })
            );
        }
        eprintln!("securexfer: {why}");
    }
    if args.json {
        let summary = serde_json::json!({
            "summary": true,
            "server": server,
            "bytes_used": end.bytes_used,
            "bytes_quota": (end.bytes_quota != u64::MAX).then_some(end.bytes_quota),
            "files_used": end.files_used,
            "files_quota": (end.files_quota != u64::MAX).then_some(end.files_quota),
            "exit_code": worst,
        });
        outln!("{summary}");
    } else if !args.quiet {
        // On stderr, so that a script reading the listing gets the entries only.
        eprintln!("{}", usage_line(&end));
    }
    Ok(ExitCode::from(worst))
}

/// The client's usage and quota as `LIST_END` gives them: "used: 9.8 GiB of 10 GiB, 12
/// files (no file quota)".
fn usage_line(end: &ListEnd) -> String {
    let bytes = match end.bytes_quota {
        u64::MAX => format!("{} (no byte quota)", binary_size(end.bytes_used)),
        quota => format!("{} of {}", binary_size(end.bytes_used), binary_size(quota)),
    };
    let files = match end.files_quota {
        u64::MAX => format!("{} files (no file quota)", end.files_used),
        quota => format!("{} of {quota} files", end.files_used),
    };
    format!("used: {bytes}, {files}")
}

fn print_entry(args: &LsArgs, server: &str, entry: &ListEntry) {
    if args.quiet {
        return;
    }
    let known = entry.flags.hash_known;
    if args.json {
        let line = serde_json::json!({
            "name": entry.path,
            "server": server,
            "kind": if entry.kind == EntryKind::Folder { "folder" } else { "file" },
            "size": entry.size,
            "stored_at": format_time(entry.stored_at),
            "mtime_ns": entry.mtime_ns,
            "blake3": known.then(|| hex(&entry.hash)),
            "generation": entry.generation,
            "versions": entry.versions,
            "protocol": if entry.flags.protocol3 { 3 } else { 4 },
            "verified": !entry.flags.unverified,
        });
        outln!("{line}");
        return;
    }
    let size = if args.bytes { entry.size.to_string() } else { binary_size(entry.size) };
    let hash = if known { hex(&entry.hash)[..16].to_owned() } else { "-".repeat(16) };
    let note = if entry.flags.unverified { "  (unverified)" } else { "" };
    outln!(
        "{size:>11}  {}  {hash}  {:>3}  {}{note}",
        format_time(entry.stored_at),
        entry.versions,
        entry.path
    );
}

/// Where `get` writes: a directory, or stdout.
enum Target {
    Dir(PathBuf),
    Stdout,
}

/// `securexfer get NAME… [-o DIR|-] [--force]`.
pub fn get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let target = if args.output == Path::new("-") {
        if args.recursive {
            return Err(UsageError(
                "-r writes files into a directory: -o - cannot take them (give -o DIR)".into(),
            )
            .into());
        }
        if args.names.len() > 1 {
            return Err(UsageError("-o - writes one file to stdout: name one NAME".into()).into());
        }
        Target::Stdout
    } else {
        if !args.output.is_dir() {
            return Err(super::LocalError(format!(
                "{} is not a directory to download into",
                args.output.display()
            ))
            .into());
        }
        Target::Dir(args.output.clone())
    };
    // Read before any thread of the run exists: the umask can only be read by setting it.
    let mode = 0o666 & !securexfer::sys::umask();
    let (server, mut four) = connect("get", &args.client)?;
    four.session.set_limit_rate(args.limit_rate);
    let current = Current::default();
    let bars = !args.quiet && !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut run = GetRun { args: &args, server: &server, worst: 0, got: 0, failed: 0 };
    let (items, mut stopped) = if args.recursive {
        expand(&mut four, &mut run)
    } else {
        (args.names.iter().map(|n| Item::file(n)).collect::<Vec<_>>(), false)
    };
    // Sizes are known file by file, from each GET_BEGIN: the run's total grows as they come.
    let display = progress::Display::new(items.len(), 0, bars);
    // Many files are made durable a batch at a time, unless an interrupted run left a
    // partial file to continue: that run goes file by file, as it went.
    if let Target::Dir(dir) = &target
        && items.len() > 1
        && !items.iter().any(|item| partial::find(&dir.join(&item.local)).is_some())
    {
        let into = fetch_many::Dest { dir, force: args.force, mode, display: &display };
        fetch_many::get_all(&mut four, &mut run, &items, stopped, &into);
        four.close();
        run.summary();
        return Ok(ExitCode::from(run.worst));
    }
    tidy_on_interrupt(&current, &display);
    let mut ahead: VecDeque<(&Item, Prepared)> = VecDeque::new();
    let mut names = items.iter();
    // Resumed downloads that must start again from 0 (the stored copy changed, or the
    // partial file did not hash as it should): sent again before the next name.
    let mut again: VecDeque<&Item> = VecDeque::new();
    let mut k = 0;
    loop {
        while ahead.len() < GETS_AHEAD && !stopped {
            let Some(item) = again.pop_front().or_else(|| names.next()) else { break };
            let sent = four.runtime.block_on(prepare(&mut four.session, &target, item, args.force));
            ahead.push_back((item, sent));
        }
        let Some((item, sent)) = ahead.pop_front() else { break };
        let name = item.path.clone();
        k += 1;
        progress::lock(&display).start_file(k, &name);
        let result = match sent {
            Ok((local, pending, left)) => {
                let how = Receive {
                    target: &target,
                    force: args.force,
                    mode,
                    current: &current,
                    display: &display,
                };
                match receive(&four.runtime, &mut four.session, &how, &local, pending, left) {
                    Received::Done(result) => result,
                    Received::Again(why) => {
                        let shown = progress::lock(&display);
                        shown.suspend(|| {
                            if !args.quiet {
                                eprintln!("securexfer: note: {name}: {why}; downloading it again");
                            }
                        });
                        k -= 1;
                        again.push_back(item);
                        continue;
                    }
                }
            }
            Err(e) => Err(e),
        };
        let size = result.as_ref().map_or(0, |(fetched, _)| fetched.size);
        let mut shown = progress::lock(&display);
        shown.finish_file(size, result.is_ok());
        if let Err(e) = &result
            && e.ends_session()
        {
            stopped = true;
        }
        shown.suspend(|| run.report(&name, result));
    }
    progress::lock(&display).clear();
    for item in names {
        run.report(
            &item.path,
            Err(V4Error::Conn(securexfer::client::v4::conn::ConnError::Lost(
                "not tried: the connection failed for an earlier file".into(),
            ))),
        );
    }
    four.close();
    run.summary();
    Ok(ExitCode::from(run.worst))
}

/// A name's local file and its `GET` sent (continuing what a partial file holds, when
/// one was left), or why not.
type Prepared = Result<(PathBuf, PendingGet, Option<partial::Left>), V4Error>;

/// One file to download: its stored path, and where it goes under the target directory.
pub(super) struct Item {
    pub(super) path: String,
    /// Relative to the target directory: components the path rules allow (checked in the
    /// listing they came from), so it stays under the target.
    pub(super) local: String,
}

impl Item {
    /// A file named on the command line: it goes to the target as its last component,
    /// which the path rules make a plain file name (no `/`, not `.` or `..`).
    fn file(name: &str) -> Item {
        let local = name.rsplit('/').next().unwrap_or(name).to_owned();
        Item { path: name.to_owned(), local }
    }
}

/// `get -r`: a recursive `LIST` of each name, whose files go to the target as the name's
/// last component and their paths below it (`docs/x` lists `docs/x/a/b`, which goes to
/// `x/a/b`). A name that cannot be listed is reported in its place. The listing's entries
/// are held (a path each) until their downloads are sent; returns whether the connection
/// failed.
fn expand(four: &mut Four, run: &mut GetRun<'_>) -> (Vec<Item>, bool) {
    let mut items = Vec::new();
    for name in &run.args.names {
        let nfc: String = unicode_normalization::UnicodeNormalization::nfc(name.as_str()).collect();
        // The listing's paths all start with the name (the client checks that), so what
        // is cut off is the name's folders.
        let cut = nfc.rfind('/').map_or(0, |at| at + 1);
        let mut found = Vec::new();
        let listed = four.runtime.block_on(four.session.list(&nfc, true, |entry| {
            if entry.kind == EntryKind::File {
                found.push(entry.path);
            }
        }));
        match listed {
            Ok(_) => items.extend(found.into_iter().map(|path| {
                let local = path[cut..].to_owned();
                Item { path, local }
            })),
            Err(e) => {
                let ends = e.ends_session();
                run.report(name, Err(e));
                if ends {
                    return (items, true);
                }
            }
        }
    }
    (items, false)
}

/// Makes the folders of `local` (relative, from a checked stored path) under `dir`,
/// refusing to go through anything that is not a real folder (a symbolic link planted
/// there, a file); the file's path.
pub(super) fn make_folders(dir: &Path, local: &str) -> Result<PathBuf, V4Error> {
    let mut at = dir.to_owned();
    let mut parts = local.split('/').peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        if parts.peek().is_none() {
            break;
        }
        let refuse = |path: &Path, why: &str| V4Error::Write {
            path: path.to_owned(),
            cause: std::io::Error::other(why.to_owned()),
        };
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(refuse(&at, "a symbolic link where a folder goes; never followed"));
            }
            Ok(_) => return Err(refuse(&at, "a file where a folder goes")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(&at) {
                Ok(()) => {}
                // Made meanwhile: the next component's check or the file's open tells.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(cause) => return Err(V4Error::Write { path: at, cause }),
            },
            Err(cause) => return Err(V4Error::Write { path: at, cause }),
        }
    }
    Ok(at)
}

/// Where `item` goes, checked to be free (unless `force`), its folders made, and its
/// `GET` sent.
async fn prepare(session: &mut Session, target: &Target, item: &Item, force: bool) -> Prepared {
    let name = item.path.as_str();
    let local = match target {
        Target::Stdout => PathBuf::from("-"),
        Target::Dir(dir) => {
            let local = make_folders(dir, &item.local)?;
            if !force && std::fs::symlink_metadata(&local).is_ok() {
                return Err(V4Error::Write {
                    path: local,
                    cause: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "it exists; pass --force to replace it",
                    ),
                });
            }
            local
        }
    };
    let left = match target {
        Target::Dir(_) => partial::find(&local),
        Target::Stdout => None,
    };
    let pending = match left {
        Some(left) => session.send_get_from(name, left.len, left.generation).await?,
        None => session.send_get(name).await?,
    };
    Ok((local, pending, left))
}

/// How a download is received.
struct Receive<'a> {
    target: &'a Target,
    force: bool,
    /// The downloaded file's permissions: what a new file gets under the umask (the
    /// temporary file was made 0600 while it was not yet the user's file).
    mode: u32,
    current: &'a Current,
    display: &'a progress::Shared,
}

impl Receive<'_> {
    /// Tells the bars: `(0, size)` when a download begins, then the bytes so far.
    fn progress(&self) -> impl FnMut(u64, u64) + '_ {
        |received, size| {
            let mut display = progress::lock(self.display);
            if received == 0 {
                display.grow_total(size);
                display.start_send(size, 1);
            } else {
                display.progress(received);
            }
        }
    }
}

/// How one download ended.
enum Received {
    Done(Result<(Fetched, PathBuf), V4Error>),
    /// A resumed download that cannot continue (why): its partial file is gone, and it
    /// goes again from 0.
    Again(String),
}

/// Whether a failed download leaves its partial file to be continued: when the
/// connection failed or timed out (the bytes so far are the copy's), not when the
/// server broke the protocol or refused, or writing failed.
pub(super) fn leaves_partial(e: &V4Error) -> bool {
    use securexfer::client::v4::conn::ConnError;
    matches!(e, V4Error::Conn(ConnError::Lost(_) | ConnError::Timeout(_) | ConnError::Closed(_)))
}

/// Receives one download: into its partial file beside its target (continuing `left`,
/// what an interrupted download left there), synced and renamed into place only once
/// verified (a failure leaves nothing under the name), or to stdout.
fn receive(
    runtime: &tokio::runtime::Runtime,
    session: &mut Session,
    how: &Receive<'_>,
    local: &Path,
    mut pending: PendingGet,
    left: Option<partial::Left>,
) -> Received {
    let Target::Dir(_) = how.target else {
        let mut stdout = std::io::stdout().lock();
        let fetched = runtime
            .block_on(session.receive_get(pending, &mut stdout, local, how.progress()))
            .and_then(|fetched| {
                stdout.flush().map_err(|cause| V4Error::Write { path: local.to_owned(), cause })?;
                Ok(fetched)
            });
        return Received::Done(fetched.map(|f| (f, local.to_owned())));
    };
    let write_error = |cause| V4Error::Write { path: local.to_owned(), cause };
    // Beside its target, in the folder `prepare` made (so the rename stays in it).
    let opened = match left {
        Some(left) => partial::Partial::continued(local, left).map(|c| {
            c.map(|(p, prefix)| {
                pending.continue_after(prefix);
                p
            })
        }),
        None => partial::Partial::fresh(local).map(Some),
    };
    let partial = match opened {
        Ok(Some(partial)) => partial,
        Ok(None) => {
            // Changed since it was found: what the server sends from the offset cannot be
            // checked against it.
            let _ = std::fs::remove_file(partial::path_for(local));
            return Received::Again("its partial file changed meanwhile".into());
        }
        Err(cause) => return Received::Done(Err(write_error(cause))),
    };
    let set = |now: Option<(PathBuf, bool)>| {
        *how.current.lock().unwrap_or_else(|p| p.into_inner()) = now;
    };
    set(Some((partial.path.clone(), partial.resumable)));
    let partial = std::cell::RefCell::new(partial);
    let mut out = std::io::BufWriter::with_capacity(1 << 20, PartialWriter(&partial));
    let received = runtime.block_on(session.receive_get_with(
        pending,
        &mut out,
        local,
        how.progress(),
        |begin| {
            let mut partial = partial.borrow_mut();
            if left.is_none() {
                partial.begins(begin.generation);
            }
            set(Some((partial.path.clone(), partial.resumable)));
            Ok(())
        },
    ));
    let flushed = out.into_inner().map(|_| ()).map_err(|e| write_error(e.into_error()));
    let partial = partial.into_inner();
    let fetched = match received.and_then(|f| flushed.map(|()| f)) {
        Ok(fetched) => fetched,
        Err(e) => {
            set(None);
            if partial.resumable && leaves_partial(&e) {
                return Received::Done(Err(e));
            }
            let _ = std::fs::remove_file(&partial.path);
            let resumed = left.is_some();
            let stale =
                matches!(&e, V4Error::Refused { error, .. } if error.code == ErrorCode::Conflict);
            return match e {
                _ if resumed && stale => {
                    Received::Again("the stored copy changed since the interrupted download".into())
                }
                V4Error::DownloadMismatch { .. } if resumed => Received::Again(
                    "its partial file and the rest did not hash as the stored copy".into(),
                ),
                e => Received::Done(Err(e)),
            };
        }
    };
    Received::Done(place(how, local, partial, fetched))
}

/// Writes to the partial file behind a `RefCell` (the `GET_BEGIN` hook needs it too).
pub(super) struct PartialWriter<'a>(pub(super) &'a std::cell::RefCell<partial::Partial>);

impl Write for PartialWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().file.flush()
    }
}

/// A verified download's partial file made the user's file: its permissions, synced, its
/// modification time, renamed to its name.
fn place(
    how: &Receive<'_>,
    local: &Path,
    partial: partial::Partial,
    fetched: Fetched,
) -> Result<(Fetched, PathBuf), V4Error> {
    let write_error = |cause| V4Error::Write { path: local.to_owned(), cause };
    let set = |now: Option<(PathBuf, bool)>| {
        *how.current.lock().unwrap_or_else(|p| p.into_inner()) = now;
    };
    let partial::Partial { file, path, .. } = partial;
    // From here a failure deletes it (as the temporary file it is).
    let temp_path = tempfile::TempPath::try_from_path(&path).map_err(write_error)?;
    let temp = tempfile::NamedTempFile::from_parts(file, temp_path);
    set(Some((path, false)));
    partial::finished(temp.as_file()).map_err(write_error)?;
    {
        use std::os::unix::fs::PermissionsExt;
        let permissions = std::fs::Permissions::from_mode(how.mode);
        temp.as_file().set_permissions(permissions).map_err(write_error)?;
    }
    temp.as_file().sync_all().map_err(write_error)?;
    if fetched.mtime_ns > 0 {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(fetched.mtime_ns as u64);
        let _ = temp.as_file().set_modified(at);
    }
    // Without --force the rename refuses a file that appeared meanwhile (a link, not a
    // rename over it).
    let placed = if how.force { temp.persist(local) } else { temp.persist_noclobber(local) };
    placed.map_err(|e| write_error(e.error))?;
    set(None);
    Ok((fetched, local.to_owned()))
}

/// What a `get` run reported so far.
pub(super) struct GetRun<'a> {
    args: &'a GetArgs,
    server: &'a str,
    worst: u8,
    got: u64,
    failed: u64,
}

impl GetRun<'_> {
    /// JSON goes to stdout, or to stderr when stdout carries the file.
    fn json_line(&self, line: serde_json::Value) {
        if self.args.output == Path::new("-") {
            eprintln!("{line}");
        } else {
            outln!("{line}");
        }
    }

    pub(super) fn report(&mut self, name: &str, result: Result<(Fetched, PathBuf), V4Error>) {
        match result {
            Ok((fetched, local)) => {
                self.got += 1;
                if self.args.json {
                    self.json_line(serde_json::json!({
                        "name": name,
                        "file": local.display().to_string(),
                        "server": self.server,
                        "status": "verified",
                        "size": fetched.size,
                        "blake3": hex(&fetched.hash),
                        "generation": fetched.generation,
                        "resumed_from": fetched.resumed_from,
                    }));
                } else if !self.args.quiet {
                    let resumed = match fetched.resumed_from {
                        0 => String::new(),
                        from => format!(" (resumed at {})", binary_size(from)),
                    };
                    let line = format!(
                        "got {name} ({}, BLAKE3 {}…) from {} into {}: verified{resumed}",
                        binary_size(fetched.size),
                        &hex(&fetched.hash)[..16],
                        self.server,
                        local.display()
                    );
                    if self.args.output == Path::new("-") {
                        eprintln!("securexfer: {line}");
                    } else {
                        outln!("{line}");
                    }
                }
            }
            Err(e) => {
                self.failed += 1;
                let code = code_for(e.kind());
                self.worst = self.worst.max(code);
                let why = describe(&e, name, self.server);
                if self.args.json {
                    self.json_line(serde_json::json!({
                        "name": name,
                        "server": self.server,
                        "status": "failed",
                        "exit_code": code,
                        "error": why,
                    }));
                }
                eprintln!("securexfer: error: {why}");
            }
        }
    }

    fn summary(&self) {
        if self.args.json {
            self.json_line(serde_json::json!({
                "summary": true,
                "server": self.server,
                "files": self.got + self.failed,
                "verified": self.got,
                "failed": self.failed,
                "exit_code": self.worst,
            }));
        }
    }
}

/// `securexfer rm NAME…`.
pub fn rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    let (server, mut four) = connect("rm", &args.client)?;
    let (mut worst, mut removed, mut failed) = (0u8, 0u64, 0u64);
    let mut stopped = false;
    for name in &args.names {
        let result = if stopped {
            Err(V4Error::Conn(securexfer::client::v4::conn::ConnError::Lost(
                "not tried: the connection failed for an earlier file".into(),
            )))
        } else {
            four.runtime.block_on(four.session.remove(name, args.recursive))
        };
        match result {
            Ok(done) => {
                removed += 1;
                let kept = done.kept > 0;
                if args.json {
                    let line = serde_json::json!({
                        "name": name, "server": server, "status": "removed",
                        "bytes": done.bytes, "kept_version": kept, "files": done.files,
                        "kept": done.kept,
                    });
                    outln!("{line}");
                } else if !args.quiet && !args.recursive {
                    let note = if kept { " (the server keeps it as a version)" } else { "" };
                    outln!("removed {name} ({}) from {server}{note}", binary_size(done.bytes));
                } else if !args.quiet {
                    let note = match done.kept {
                        0 => String::new(),
                        n => format!(" (the server keeps {n} of them as versions)"),
                    };
                    let files = if done.files == 1 { "file" } else { "files" };
                    outln!(
                        "removed {name} ({} {files}, {}) from {server}{note}",
                        done.files,
                        binary_size(done.bytes)
                    );
                }
            }
            Err(e) => {
                failed += 1;
                stopped |= e.ends_session();
                let code = code_for(e.kind());
                worst = worst.max(code);
                let why = describe(&e, name, &server);
                if args.json {
                    let line = serde_json::json!({
                        "name": name, "server": server, "status": "failed",
                        "exit_code": code, "error": why,
                    });
                    outln!("{line}");
                }
                eprintln!("securexfer: error: {why}");
            }
        }
    }
    four.close();
    if args.json {
        let line = serde_json::json!({
            "summary": true, "server": server, "files": removed + failed,
            "removed": removed, "failed": failed, "exit_code": worst,
        });
        outln!("{line}");
    }
    Ok(ExitCode::from(worst))
}
