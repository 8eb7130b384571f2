//! `securexfer send`: find the identity, reconnect (or register), send each file, report.

use super::out::outln;
use super::progress;
use super::v4::{self, Spoken};
use super::{UsageError, code_for};
use crate::cli::{ClientArgs, SendArgs};
use anyhow::Context;
use securexfer::client::home::Home;
use securexfer::client::identity::{Identity, ME_INFO, TRANSFER_INFO, TransferInfo};
use securexfer::client::v4::batch::{BATCH_FILE_LIMIT, Batched};
use securexfer::client::v4::conn::ConnError;
use securexfer::client::v4::error::V4Error;
use securexfer::client::v4::session::{RESUME_FROM, Stored, hex};
use securexfer::client::wire::Timeouts;
use securexfer::client::{Client, ClientError, Event, FailureKind, Session};
use securexfer::protocol::MAX_PLAINTEXT_SIZE;
use securexfer::protocol::v4::ErrorCode;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A client with the command line's timeouts.
pub fn client_for(server: &str, args: &ClientArgs) -> Client {
    let timeouts = Timeouts {
        connect: Duration::from_secs(args.connect_timeout.max(1)),
        io: Duration::from_secs(args.timeout.max(1)),
    };
    Client::new(server, timeouts)
}

/// The server and name from flags, falling back to transfer.info.
pub fn server_and_name(
    args: &ClientArgs,
    transfer: Option<&TransferInfo>,
) -> anyhow::Result<(String, Option<String>)> {
    let loaded;
    let transfer = match transfer {
        Some(t) => Some(t),
        None if args.server.is_none() || args.name.is_none() => {
            loaded = load_transfer_info_if_present()?;
            loaded.as_ref()
        }
        None => None,
    };
    let server = args
        .server
        .clone()
        .or_else(|| transfer.map(|t| t.server.clone()))
        .or_else(|| Home::from_env().and_then(|h| h.default_server()))
        .ok_or_else(|| {
            UsageError(
                "no server: pass --server HOST:PORT (register remembers it; transfer.info's \
                 line 1 works too)"
                    .into(),
            )
        })?;
    // The name's rules depend on the protocol (printable ASCII for 3, UTF-8 NFC for 4):
    // each path checks it before it is sent.
    let name = args.name.clone().or_else(|| transfer.map(|t| t.name.clone()));
    Ok((normalize_server(&server)?, name))
}

/// The port of the existing servers, for a `--server` without one.
pub const DEFAULT_PORT: u16 = 1357;

/// `HOST:PORT` from what the user wrote: a missing port is [`DEFAULT_PORT`]; a port that
/// is not 1-65535, or no host, is a usage error. IPv6 addresses go in brackets
/// (`[::1]:1357`); a bare one means the default port.
pub fn normalize_server(text: &str) -> Result<String, UsageError> {
    let text = text.trim();
    let bad = |why: &str| UsageError(format!("--server {text:?}: {why}; write HOST:PORT"));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
        match after {
            "" => (format!("[{host}]"), None),
            _ => (
                format!("[{host}]"),
                Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            ),
        }
    } else if text.matches(':').count() > 1 {
        (format!("[{text}]"), None)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (text.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(bad("no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad(&format!("the port {p:?} is not a number from 1 to 65535"))),
        },
    };
    Ok(format!("{host}:{port}"))
}

/// A client name the protocol can carry: 1-254 bytes of printable ASCII.
pub fn check_name(name: &str) -> Result<(), UsageError> {
    let limit = securexfer::protocol::NAME_LEN - 1;
    if name.is_empty() {
        return Err(UsageError("the client name is empty; pass --name NAME".into()));
    }
    if let Some(c) = name.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(UsageError(format!(
            "the client name {name:?} contains {c:?}: names are printable ASCII (space to ~)"
        )));
    }
    if name.len() > limit {
        return Err(UsageError(format!(
            "the client name is {} bytes; the protocol carries at most {limit}",
            name.len()
        )));
    }
    Ok(())
}

fn load_transfer_info_if_present() -> anyhow::Result<Option<TransferInfo>> {
    let path = Path::new(TRANSFER_INFO);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(TransferInfo::load(path)?))
}

/// Where identities are looked for, in order: `--identity`; else the existing client's
/// `./me.info`, this server's identity in the home directory, and the one identity that
/// earlier versions kept there for every server.
pub fn identity_candidates(flag: Option<&Path>, server: &str) -> Vec<PathBuf> {
    if let Some(path) = flag {
        return vec![path.to_owned()];
    }
    let mut candidates = vec![PathBuf::from(ME_INFO)];
    if let Some(home) = Home::from_env() {
        candidates.push(home.identity_path(server));
        candidates.push(home.legacy_identity_path());
    }
    candidates
}

/// Where a new registration with `server` is saved: `--identity`, else this server's
/// place in the home directory (`./me.info` when there is no home directory at all).
pub fn new_identity_path(flag: Option<&Path>, server: &str) -> PathBuf {
    match (flag, Home::from_env()) {
        (Some(path), _) => path.to_owned(),
        (None, Some(home)) => home.identity_path(server),
        (None, None) => PathBuf::from(ME_INFO),
    }
}

/// Renames `path` to `path.bak` (replacing an older backup); returns the new name.
fn move_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let mut backup = path.as_os_str().to_owned();
    backup.push(".bak");
    let backup = PathBuf::from(backup);
    std::fs::rename(path, &backup)
        .with_context(|| format!("cannot move {} aside to {}", path.display(), backup.display()))?;
    Ok(backup)
}

/// Saves a new registration at `path`, first moving an identity already there aside to
/// `me.info.bak` (and `priv.key.bak`): an identity is never overwritten silently. Then
/// remembers the server as the default. Returns the backup's path, if one was made.
pub fn save_registration(
    identity: &Identity,
    path: &Path,
    server: &str,
) -> anyhow::Result<Option<PathBuf>> {
    let backup = if path.exists() {
        let key = path.with_file_name(securexfer::client::identity::PRIV_KEY);
        if key.exists() {
            move_aside(&key)?;
        }
        Some(move_aside(path)?)
    } else {
        None
    };
    identity.save(path, true)?;
    if let Some(home) = Home::from_env() {
        // The identity is saved; not remembering the default is worth a word, not a failure.
        if let Err(e) = home.set_default_server(server) {
            eprintln!("securexfer: warning: cannot remember {server} as the default server: {e}");
        }
    }
    Ok(backup)
}

pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let transfer = if args.files.is_empty() {
        let t = load_transfer_info_if_present()?.ok_or_else(|| {
            UsageError(format!("no FILE given and no {TRANSFER_INFO} in the working directory"))
        })?;
        Some(t)
    } else {
        None
    };
    let (server, name) = server_and_name(&args.client, transfer.as_ref())?;
    let files = if args.files.is_empty() {
        transfer.as_ref().map(|t| t.files.clone()).unwrap_or_default()
    } else {
        args.files.clone()
    };
    if files.iter().any(|f| f.as_os_str() == "-") {
        return run_stdin(&args, &server, name, &files);
    }
    check_protocol_4_flags(&args, None)?;
    // A run with nothing to send reaches no server: its problems are reported below.
    let sendable = |m: std::fs::Metadata| m.is_file() || (args.recursive && m.is_dir());
    let any = files.iter().any(|f| std::fs::metadata(f).is_ok_and(sendable));
    if any && let Spoken::Four(four) = v4::connect(&server, &args.client)? {
        return run_v4(&args, &server, name, &files, *four);
    }
    if any {
        check_protocol_4_flags(&args, Some(&server))?;
    }
    if args.no_clobber {
        return Err(UsageError(format!(
            "--no-clobber needs protocol 4, and {server} is spoken to over protocol 3, which \
             always replaces a stored file; nothing was sent"
        ))
        .into());
    }
    if let Some(name) = &name {
        check_name(name)?;
    }
    let candidates = identity_candidates(args.client.identity.as_deref(), &server);
    let found = candidates.iter().find(|p| p.exists()).cloned();
    let identity = found
        .as_deref()
        .map(Identity::load)
        .transpose()
        .context("cannot use the saved identity")?;

    let plan = plan_files(&files, args.as_name.as_deref(), found.as_deref(), Rules::V3)?;
    // Files that cannot be sent are found before anything goes on the wire; each is
    // reported in its place among the results.
    let mut worst = 0u8;
    let mut summary = Summary::default();
    if plan.iter().all(|f| f.problem.is_some()) {
        for file in &plan {
            worst = worst.max(report_problem(&args, &server, file, &mut summary));
        }
        report_summary(&args, &server, &summary, worst);
        return Ok(ExitCode::from(worst));
    }

    let show_bar = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let sendable: Vec<&Planned> = plan.iter().filter(|f| f.problem.is_none()).collect();
    let total: u64 = sendable.iter().map(|f| f.wire_bytes).sum();
    let display = progress::Display::new(sendable.len(), total, show_bar);
    progress::exit_on_interrupt(&display);
    let mut client = client_for(&server, &args.client);
    client.set_limit_rate(args.limit_rate);
    client.on_event(event_printer(Arc::clone(&display), args.quiet, args.json, None));
    client.connect()?;

    let save_at =
        found.unwrap_or_else(|| new_identity_path(args.client.identity.as_deref(), &server));
    let session = establish(&mut client, &server, identity, name, &candidates, &save_at)?;

    let mut stopped: Option<String> = None;
    for file in &plan {
        if file.problem.is_some() {
            let shown = progress::lock(&display);
            worst = worst.max(shown.suspend(|| report_problem(&args, &server, file, &mut summary)));
            continue;
        }
        if let Some(why) = &stopped {
            let shown = progress::lock(&display);
            shown.suspend(|| report_skipped(&args, &server, file, why, &mut summary));
            continue;
        }
        let started = Instant::now();
        let k = sendable.iter().position(|f| std::ptr::eq(*f, file)).unwrap_or(0) + 1;
        progress::lock(&display).start_file(k, &file.stored_name);
        let result = client.send_file(&session, &file.path, &file.stored_name);
        let mut shown = progress::lock(&display);
        shown.finish_file(file.wire_bytes, result.is_ok());
        match result {
            Ok(sent) => {
                summary.verified += 1;
                shown.suspend(|| report_ok(&args, &server, file, &sent, started.elapsed()));
            }
            Err(e) => {
                let kind = e.kind();
                summary.failed += 1;
                shown.suspend(|| report_err(&args, &server, file, &e as &dyn FileError));
                worst = worst.max(code_for(kind));
                // A connection that keeps failing will fail the next file too; a refusal
                // (too large, say) is about this file only.
                if kind == FailureKind::Connection {
                    stopped = Some(format!("not sent: the connection to {server} failed"));
                }
            }
        }
    }
    progress::lock(&display).clear();
    report_summary(&args, &server, &summary, worst);
    Ok(ExitCode::from(worst))
}

/// `-r` and `--dry-run` are protocol 4's: refused (a usage error, exit 2) with
/// `--protocol 3` before anything is done, and, with `server`, for a server spoken to over
/// protocol 3 before anything is sent.
fn check_protocol_4_flags(args: &SendArgs, server: Option<&str>) -> Result<(), UsageError> {
    let three = match server {
        Some(server) => format!("{server} is spoken to over protocol 3"),
        None if args.client.protocol == crate::cli::ProtocolArg::Three => {
            "--protocol 3 was asked for".to_owned()
        }
        None => return Ok(()),
    };
    if args.recursive {
        return Err(UsageError(format!(
            "folders are protocol 4 only (protocol 3 stores one file name, no folders), and \
             {three}: send -r cannot be done; nothing was sent"
        )));
    }
    if args.dry_run {
        return Err(UsageError(format!(
            "--dry-run needs protocol 4 (protocol 3 cannot list what is stored, so it cannot \
             say what would be replaced), and {three}; nothing was sent"
        )));
    }
    if args.parallel > 1 {
        return Err(UsageError(format!(
            "--parallel needs protocol 4 (a protocol-3 client's identity is one session at a \
             time), and {three}; nothing was sent"
        )));
    }
    Ok(())
}

/// One file of the run: where it is, the name it is stored under, and why it cannot be
/// sent, if it cannot.
pub(super) struct Planned {
    pub(super) path: PathBuf,
    pub(super) stored_name: String,
    pub(super) problem: Option<Box<dyn FileError>>,
    /// Bytes one send puts on the wire (for the run's progress).
    pub(super) wire_bytes: u64,
}

/// A failure about one file, from either protocol's client.
pub(super) trait FileError: std::fmt::Display + Send + Sync {
    /// Its exit group.
    fn kind(&self) -> FailureKind;
    /// Whether the message names the file already.
    fn names_file(&self) -> bool;
}

impl FileError for ClientError {
    fn kind(&self) -> FailureKind {
        ClientError::kind(self)
    }
    fn names_file(&self) -> bool {
        ClientError::names_file(self)
    }
}

impl FileError for V4Error {
    fn kind(&self) -> FailureKind {
        V4Error::kind(self)
    }
    fn names_file(&self) -> bool {
        V4Error::names_file(self)
    }
}

/// Whose rules a file must meet to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rules {
    /// Protocol 3: printable-ASCII names, files below 4 GiB.
    V3,
    /// Protocol 4: UTF-8 paths (NFC after normalising), 64-bit sizes.
    V4,
}

/// Counts for the summary line.
#[derive(Default)]
struct Summary {
    verified: u32,
    failed: u32,
    skipped: u32,
}

/// The files in argument order with their stored names. Refuses (a usage error) a run in
/// which two files would be stored under one name, `--as` with more than one file, and
/// sending the identity's own files.
pub(super) fn plan_files(
    files: &[PathBuf],
    as_name: Option<&str>,
    identity: Option<&Path>,
    rules: Rules,
) -> anyhow::Result<Vec<Planned>> {
    if as_name.is_some() && files.len() != 1 {
        return Err(UsageError(format!(
            "--as names the stored copy of one file, and {} files were given",
            files.len()
        ))
        .into());
    }
    let own = identity.map(identity_files).unwrap_or_default();
    let mut by_name: std::collections::HashMap<String, &Path> = Default::default();
    let mut plan = Vec::with_capacity(files.len());
    for path in files {
        if let Ok(canonical) = path.canonicalize()
            && own.contains(&canonical)
        {
            return Err(UsageError(format!(
                "{} is this client's identity (its private key); it is never sent",
                path.display()
            ))
            .into());
        }
        let (stored_name, problem) = match as_name {
            Some(name) => (name.to_owned(), None),
            None => stored_name_of(path),
        };
        if let Some(first) = by_name.insert(stored_name.clone(), path) {
            return Err(UsageError(format!(
                "{} and {} would both be stored as {stored_name:?}, and the second would \
                 replace the first; send them in separate runs, one with --as NAME",
                first.display(),
                path.display()
            ))
            .into());
        }
        let problem: Option<Box<dyn FileError>> = match rules {
            Rules::V3 => problem
                .or_else(|| securexfer::client::stored_file_name(&stored_name).err())
                .or_else(|| preflight(path).err())
                .map(|e| Box::new(e) as Box<dyn FileError>),
            Rules::V4 => problem
                .map(|e| Box::new(e) as Box<dyn FileError>)
                .or_else(|| v4_name_problem(&stored_name))
                .or_else(|| v4_preflight(path)),
        };
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let wire_bytes = match rules {
            Rules::V3 => securexfer::protocol::encrypted_len(size),
            Rules::V4 => size,
        };
        plan.push(Planned { path: path.clone(), stored_name, problem, wire_bytes });
    }
    Ok(plan)
}

/// The name a file is stored under: its last path component, as the server keeps it; and
/// the problem with it when it is not text (the bytes that are really there, escaped).
fn stored_name_of(path: &Path) -> (String, Option<ClientError>) {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = path.file_name() else {
        return (path.display().to_string(), None);
    };
    match name.to_str() {
        Some(text) => (text.to_owned(), None),
        None => {
            let bytes = name.as_bytes();
            let at = bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0);
            let shown = format!("\"{}\"", bytes.escape_ascii());
            let why = format!("it is not text: byte 0x{:02x} at position {at}", bytes[at]);
            (shown.clone(), Some(ClientError::BadFileName { name: shown, why }))
        }
    }
}

/// The files of the identity at `me_info`: itself and `priv.key` beside it.
pub(super) fn identity_files(me_info: &Path) -> Vec<PathBuf> {
    let key = me_info.with_file_name(securexfer::client::identity::PRIV_KEY);
    [me_info.to_owned(), key].iter().filter_map(|p| p.canonicalize().ok()).collect()
}

/// Whether `path` is a regular file the protocol can carry.
fn preflight(path: &Path) -> Result<(), ClientError> {
    let open_error = |cause| ClientError::Open { path: path.to_owned(), cause };
    let meta = std::fs::metadata(path).map_err(open_error)?;
    if !meta.is_file() {
        return Err(open_error(std::io::Error::other("not a regular file")));
    }
    if meta.len() > MAX_PLAINTEXT_SIZE {
        return Err(ClientError::TooLarge { path: path.to_owned(), size: meta.len() });
    }
    Ok(())
}

/// What protocol 4's path rules say about a stored name (normalised to NFC first, as the
/// client sends it).
fn v4_name_problem(name: &str) -> Option<Box<dyn FileError>> {
    use unicode_normalization::UnicodeNormalization;
    let nfc: String = name.nfc().collect();
    securexfer::protocol::v4::names::check_path(&nfc).err().map(|why| {
        Box::new(V4Error::BadName { name: nfc, why: why.to_string() }) as Box<dyn FileError>
    })
}

/// Whether `path` is a regular file (protocol 4 carries any size).
fn v4_preflight(path: &Path) -> Option<Box<dyn FileError>> {
    let open_error =
        |cause| Box::new(V4Error::Open { path: path.to_owned(), cause }) as Box<dyn FileError>;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some(open_error(std::io::Error::other("not a regular file"))),
        Err(e) => Some(open_error(e)),
    }
}

/// `send` over protocol 4: register or upgrade first when the server does not know this
/// client's key, then each file in turn. A refusal of one file is reported in its place
/// and the run goes on; a failed connection stops it, as over protocol 3.
fn run_v4(
    args: &SendArgs,
    server: &str,
    name: Option<String>,
    files: &[PathBuf],
    mut four: v4::Four,
) -> anyhow::Result<ExitCode> {
    let candidates = identity_candidates(args.client.identity.as_deref(), server);
    let found = candidates.iter().find(|p| p.exists()).cloned();
    if args.dry_run {
        let plan = plan_v4(args, files, found.as_deref())?;
        return super::dry_run::run(args, server, &plan, four, found.as_deref());
    }
    if !four.session.registered() {
        become_client(&mut four, server, name, found.as_deref(), &candidates)?;
    }
    let plan = plan_v4(args, files, found.as_deref())?;
    let worst = 0u8;
    let summary = Summary::default();
    let show_bar = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let sendable: Vec<&Planned> = plan.iter().filter(|f| f.problem.is_none()).collect();
    let total: u64 = sendable.iter().map(|f| f.wire_bytes).sum();
    let display = progress::Display::new(sendable.len(), total, show_bar);
    progress::lock(&display).keeps_unfinished(four.session.welcome.resume_window, RESUME_FROM);
    progress::exit_on_interrupt(&display);
    let units = units(args, &plan);
    let lanes = usize::from(args.parallel).min(units.len()).max(1);
    let lane = (lanes > 1).then_some(0);
    configure(&mut four, args, &display, lanes, lane);
    let run = Mutex::new(V4Run { args, server, display, summary, worst, stopped: None, lanes });
    let k = |file: &Planned| sendable.iter().position(|f| std::ptr::eq(*f, file)).unwrap_or(0) + 1;
    let work = Work { run: &run, plan: &plan, units: &units, next: AtomicUsize::new(0), k: &k };
    if lanes == 1 {
        work.send_on(&mut four, None);
        four.close();
    } else {
        std::thread::scope(|scope| {
            for lane in 1..lanes {
                let work = &work;
                scope.spawn(move || work.connect_and_send(lane));
            }
            work.send_on(&mut four, Some(0));
            four.close();
        });
    }
    let V4Run { summary, worst, display, .. } = run.into_inner().unwrap_or_else(|p| p.into_inner());
    progress::lock(&display).clear();
    report_summary(args, server, &summary, worst);
    Ok(ExitCode::from(worst))
}

/// One piece of a run's work, `len` files of the plan from `at`: a file sent alone (or
/// reported as not sendable), or a run of small files pipelined on one connection.
struct Unit {
    at: usize,
    len: usize,
}

/// The most small files one unit pipelines when several connections share a run: small
/// enough that every connection gets a share of a tree of small files, large enough that
/// each unit keeps its connection's window full.
const PARALLEL_BATCH: usize = 128;

/// The plan cut into [`Unit`]s, in order.
fn units(args: &SendArgs, plan: &[Planned]) -> Vec<Unit> {
    let most = if args.parallel > 1 { PARALLEL_BATCH } else { usize::MAX };
    let mut units = Vec::new();
    let mut at = 0;
    while at < plan.len() {
        let batch = plan[at..].iter().take(most).take_while(|f| batchable(args, f)).count();
        let len = batch.max(1);
        units.push(Unit { at, len });
        at += len;
    }
    units
}

/// A run's units, taken in turn by each connection as it is free.
struct Work<'w, 'a, K: Fn(&Planned) -> usize> {
    run: &'w Mutex<V4Run<'a>>,
    plan: &'w [Planned],
    units: &'w [Unit],
    next: AtomicUsize,
    /// The number of a file among those sent (for the bars).
    k: &'w K,
}

impl<'a, K: Fn(&Planned) -> usize + Sync> Work<'_, 'a, K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, V4Run<'a>> {
        self.run.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Another connection to the server (`--parallel`), sending units until none is left.
    /// One that cannot connect is a note: the others do its share.
    fn connect_and_send(&self, lane: usize) {
        let (args, server, display) = {
            let run = self.lock();
            (run.args, run.server, Arc::clone(&run.display))
        };
        let four = match v4::connect(server, &args.client) {
            Ok(Spoken::Four(four)) if four.session.registered() => four,
            Ok(_) => return,
            Err(e) => {
                let line = format!("securexfer: note: connection {} of {}: {e:#}", lane + 1, {
                    args.parallel
                });
                return progress::lock(&display).say(&line);
            }
        };
        let mut four = *four;
        configure(&mut four, args, &display, self.lock().lanes, Some(lane));
        self.send_on(&mut four, Some(lane));
        four.close();
    }

    /// Sends units on `four` until none is left (or the run stopped).
    fn send_on(&self, four: &mut v4::Four, lane: Option<usize>) {
        loop {
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(unit) = self.units.get(i) else { return };
            let mut files = &self.plan[unit.at..unit.at + unit.len];
            // A connection the server closed for a while (it is stopping, or the
            // connection timed out), or that broke, is made again, and the unit goes on
            // where it was cut; a file cut off again and again stops the run.
            let mut in_a_row = 0;
            while let Some((at, cut)) = self.send_unit(four, files, lane) {
                in_a_row = if at > 0 { 1 } else { in_a_row + 1 };
                files = &files[at..];
                if in_a_row > CUTS_IN_A_ROW || !self.reconnect(four, lane, &cut) {
                    self.lock().stop_with(&cut);
                    self.send_unit(four, files, lane);
                    break;
                }
            }
        }
    }

    /// After the connection was `cut`: a new connection in its place, tried
    /// [`RECONNECTS`] times a second or the server's wait apart (a server being restarted
    /// takes a moment); false when none could be made.
    fn reconnect(&self, four: &mut v4::Four, lane: Option<usize>, cut: &Cut) -> bool {
        let (args, server, display, lanes) = {
            let run = self.lock();
            (run.args, run.server, Arc::clone(&run.display), run.lanes)
        };
        let say = |line: String| progress::lock(&display).say(&line);
        if !args.quiet {
            say(format!("securexfer: note: {}; connecting to {server} again", cut.why));
        }
        for _ in 0..RECONNECTS {
            std::thread::sleep(cut.wait);
            match v4::connect(server, &args.client) {
                Ok(Spoken::Four(new)) if new.session.registered() => {
                    let mut new = *new;
                    configure(&mut new, args, &display, lanes, lane);
                    std::mem::replace(four, new).close();
                    if !args.quiet {
                        say(format!("securexfer: note: connected to {server} again; going on"));
                    }
                    return true;
                }
                _ => continue,
            }
        }
        false
    }

    /// Sends a unit's files; `Some((k, cut))` when the connection was cut before the
    /// `k`-th file's result (which is not reported: that file and those after it are to
    /// be sent again).
    fn send_unit(
        &self,
        four: &mut v4::Four,
        files: &[Planned],
        lane: Option<usize>,
    ) -> Option<(usize, Cut)> {
        let mut run = self.lock();
        let (args, server) = (run.args, run.server);
        if let Some(why) = run.stopped.clone() {
            let display = Arc::clone(&run.display);
            for file in files {
                let shown = progress::lock(&display);
                shown.suspend(|| report_skipped(args, server, file, &why, &mut run.summary));
            }
            return None;
        }
        let file = &files[0];
        if file.problem.is_some() {
            let display = Arc::clone(&run.display);
            let shown = progress::lock(&display);
            let code = shown.suspend(|| report_problem(args, server, file, &mut run.summary));
            run.worst = run.worst.max(code);
            return None;
        }
        if files.len() > 1 {
            drop(run);
            return send_batch(self.run, four, files, (self.k)(file), lane);
        }
        progress::lock(&run.display).start_file((self.k)(file), &file.stored_name);
        drop(run);
        let started = Instant::now();
        let result = four.runtime.block_on(four.session.send_file(&file.path, &file.stored_name));
        if let Some(cut) = result.as_ref().err().and_then(Cut::of) {
            return Some((0, cut));
        }
        self.lock().report(file, result, started.elapsed(), lane);
        None
    }
}

/// Whether a planned file goes in a pipelined batch ([`BATCH_FILE_LIMIT`]): a small one,
/// without `--limit-rate` (whose pacing is the streaming send's). With `--parallel`, only
/// files under [`PARALLEL_FILE_LIMIT`]: larger ones are units of their own, so that the
/// connections share them (their round trips overlap there anyway).
fn batchable(args: &SendArgs, file: &Planned) -> bool {
    let limit = if args.parallel > 1 { PARALLEL_FILE_LIMIT } else { BATCH_FILE_LIMIT };
    file.problem.is_none() && args.limit_rate.is_none() && file.wire_bytes < limit
}

/// The largest file (exclusive) that `--parallel` puts in a batch.
const PARALLEL_FILE_LIMIT: u64 = 1 << 20;

/// What a protocol-4 run reports as it goes.
struct V4Run<'a> {
    args: &'a SendArgs,
    server: &'a str,
    display: progress::Shared,
    summary: Summary,
    worst: u8,
    /// Why the files left are not sent (the connection failed).
    stopped: Option<String>,
    /// How many connections send at once.
    lanes: usize,
}

/// Sends a run of small files pipelined (`Session::send_many`), the first being the
/// `first`-th file sent; each result is reported as a lone send's would be. As
/// `Work::send_unit`, `Some((k, cut))` when the connection was cut before the `k`-th
/// file's result.
fn send_batch(
    run: &Mutex<V4Run<'_>>,
    four: &mut v4::Four,
    files: &[Planned],
    first: usize,
    lane: Option<usize>,
) -> Option<(usize, Cut)> {
    let lock = || run.lock().unwrap_or_else(|p| p.into_inner());
    let batch: Vec<Batched> = files
        .iter()
        .map(|f| Batched { path: f.path.clone(), stored_as: f.stored_name.clone() })
        .collect();
    let mut heard = 0;
    let mut since = Instant::now();
    let mut cut = None;
    let send = four.session.send_many(&batch, |i, result| {
        if let Some(why) = result.as_ref().err().and_then(Cut::of) {
            // The last result: the connection is closed; this file goes again.
            cut = Some((i, why));
            return;
        }
        let mut run = lock();
        progress::lock(&run.display).start_file(first + i, &files[i].stored_name);
        run.report(&files[i], result, since.elapsed(), lane);
        since = Instant::now();
        heard = i + 1;
    });
    four.runtime.block_on(send);
    if cut.is_some() {
        return cut;
    }
    if heard < files.len() {
        let mut run = lock();
        let why = format!("not sent: the connection to {} failed", run.server);
        let why = run.stopped.get_or_insert(why).clone();
        let (args, server, display) = (run.args, run.server, Arc::clone(&run.display));
        for file in &files[heard..] {
            let shown = progress::lock(&display);
            shown.suspend(|| report_skipped(args, server, file, &why, &mut run.summary));
        }
    }
    None
}

/// Connections tried at most after one was cut.
const RECONNECTS: u32 = 10;

/// How many times in a row one file's connection may be cut before the run stops: a
/// file whose sending breaks every connection would otherwise be sent forever.
const CUTS_IN_A_ROW: u32 = 3;

/// Why a connection ended that a new one may replace, and how long to wait first.
struct Cut {
    why: String,
    wait: Duration,
}

impl Cut {
    /// The cut `error` is, if it is one: the server closed the connection for a while (it
    /// is stopping, or the connection timed out), or the connection broke. Not a refusal
    /// of the server's, nor a server that broke the protocol or stopped answering.
    fn of(error: &V4Error) -> Option<Cut> {
        let second = Duration::from_secs(1);
        let frame = match error {
            V4Error::Conn(ConnError::Lost(why)) => {
                return Some(Cut { why: format!("the connection broke ({why})"), wait: second });
            }
            V4Error::Conn(ConnError::Closed(frame)) => frame,
            V4Error::Refused { error, .. } if error.closes => error,
            _ => return None,
        };
        matches!(frame.code, ErrorCode::ShuttingDown | ErrorCode::Timeout).then(|| Cut {
            why: format!(
                "the server closed the connection ({}: {})",
                frame.code.name(),
                frame.message
            ),
            wait: Duration::from_millis(u64::from(frame.retry_after_ms)).max(second),
        })
    }
}

/// A connection's session set up for this run: its events, its share of `--limit-rate`
/// among `lanes` connections, `--no-clobber`.
fn configure(
    four: &mut v4::Four,
    args: &SendArgs,
    display: &progress::Shared,
    lanes: usize,
    lane: Option<usize>,
) {
    four.session.on_event(event_printer(Arc::clone(display), args.quiet, args.json, lane));
    four.session.set_limit_rate(args.limit_rate.map(|r| r / lanes as u64));
    four.session.set_no_clobber(args.no_clobber);
}

impl V4Run<'_> {
    /// Stops the run after a connection was `cut` and no new one could be made (or one
    /// file's kept being cut): the files left are reported not sent, with why.
    fn stop_with(&mut self, cut: &Cut) {
        let why = format!("not sent: {}, and no connection to {} went on", cut.why, self.server);
        self.stopped.get_or_insert(why);
        self.worst = self.worst.max(code_for(FailureKind::Connection));
    }

    /// Reports one file's result (`took` is how long it took) and counts it; `lane` is
    /// the connection it went on when several send at once.
    fn report(
        &mut self,
        file: &Planned,
        result: Result<Stored, V4Error>,
        took: Duration,
        lane: Option<usize>,
    ) {
        let (args, server) = (self.args, self.server);
        let mut shown = progress::lock(&self.display);
        match lane {
            Some(lane) => shown.finish_lane(lane, file.wire_bytes, result.is_ok()),
            None => shown.finish_file(file.wire_bytes, result.is_ok()),
        }
        match result {
            Ok(stored) => {
                self.summary.verified += 1;
                shown.suspend(|| report_stored(args, server, file, &stored, took));
            }
            Err(e) => {
                self.summary.failed += 1;
                shown.suspend(|| report_err(args, server, file, &e as &dyn FileError));
                self.worst = self.worst.max(code_for(e.kind()));
                if e.ends_session() {
                    self.stopped = Some(format!("not sent: the connection to {server} failed"));
                }
            }
        }
    }
}

/// The plan of a protocol-4 run: the FILEs, or with `-r` the files under the DIRs.
fn plan_v4(
    args: &SendArgs,
    files: &[PathBuf],
    identity: Option<&Path>,
) -> anyhow::Result<Vec<Planned>> {
    if args.recursive {
        super::tree::plan_tree(args, files, identity)
    } else {
        plan_files(files, args.as_name.as_deref(), identity, Rules::V4)
    }
}

/// `send - --as NAME`: standard input to one stored file, over protocol 4 only (a
/// protocol-3 upload declares its size before its content).
fn run_stdin(
    args: &SendArgs,
    server: &str,
    name: Option<String>,
    files: &[PathBuf],
) -> anyhow::Result<ExitCode> {
    let Some(stored_name) = args.as_name.clone() else {
        return Err(UsageError(
            "send - reads standard input, which has no name: give one with --as NAME".into(),
        )
        .into());
    };
    if files.len() != 1 {
        return Err(
            UsageError("send - sends standard input alone: give no other FILE".into()).into()
        );
    }
    if let Some(problem) = v4_name_problem(&stored_name) {
        return Err(UsageError(problem.to_string()).into());
    }
    let Spoken::Four(four) = v4::connect(server, &args.client)? else {
        return Err(UsageError(format!(
            "send - needs protocol 4 (its size is known only at its end, and protocol 3 \
             declares a file's size first); {server} is spoken to over protocol 3"
        ))
        .into());
    };
    let mut four = *four;
    let candidates = identity_candidates(args.client.identity.as_deref(), server);
    let found = candidates.iter().find(|p| p.exists()).cloned();
    if !four.session.registered() {
        become_client(&mut four, server, name, found.as_deref(), &candidates)?;
    }
    four.session.set_limit_rate(args.limit_rate);
    four.session.set_no_clobber(args.no_clobber);
    let planned = Planned { path: PathBuf::from("-"), stored_name, problem: None, wire_bytes: 0 };
    let started = Instant::now();
    let result = four.runtime.block_on(four.session.send_stdin(&planned.stored_name));
    let mut summary = Summary::default();
    let worst = match result {
        Ok(stored) => {
            summary.verified += 1;
            report_stored(args, server, &planned, &stored, started.elapsed());
            0
        }
        Err(e) => {
            summary.failed += 1;
            report_err(args, server, &planned, &e as &dyn FileError);
            code_for(e.kind())
        }
    };
    four.close();
    report_summary(args, server, &summary, worst);
    Ok(ExitCode::from(worst))
}

/// Makes this key a client of the server: an upgrade of the protocol-3 identity when
/// there is one (its id, name and files carry over), else a registration under `name`.
fn become_client(
    four: &mut v4::Four,
    server: &str,
    name: Option<String>,
    found: Option<&Path>,
    candidates: &[PathBuf],
) -> anyhow::Result<()> {
    if let Some(path) = found {
        let identity = Identity::load(path).context("cannot use the saved identity")?;
        return four.upgrade(server, &identity);
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let name = name.ok_or_else(|| {
        UsageError(format!(
            "{server} does not know this client's protocol-4 key, no identity was found to \
             upgrade (tried {}) and there is no name to register: pass --name NAME",
            tried.join(", ")
        ))
    })?;
    let registered = four.runtime.block_on(four.session.register(&name, None))?;
    eprintln!(
        "securexfer: registered {} as {} with {server} over protocol 4; the client key is {}",
        registered.name,
        registered.client_id,
        four.key_path.display()
    );
    if let Some(home) = Home::from_env()
        && let Err(e) = home.set_default_server(server)
    {
        eprintln!("securexfer: warning: cannot remember {server} as the default server: {e}");
    }
    Ok(())
}

fn report_stored(args: &SendArgs, server: &str, file: &Planned, stored: &Stored, took: Duration) {
    if args.json {
        let line = serde_json::json!({
            "file": file.path.display().to_string(),
            "stored_name": stored.stored_as,
            "server": server,
            "status": "verified",
            "protocol": 4,
            "size": stored.size,
            "blake3": hex(&stored.hash),
            "sends": stored.sends,
            "generation": stored.generation,
            "resumed_from": stored.resumed_from,
            "seconds": took.as_secs_f64(),
        });
        outln!("{line}");
    } else if !args.quiet {
        let rate = progress::rate(stored.size - stored.resumed_from, took.as_secs_f64());
        let renamed =
            if Some(stored.stored_as.as_str()) == file.path.file_name().and_then(|n| n.to_str()) {
                String::new()
            } else {
                format!(" as {}", stored.stored_as)
            };
        let hash = hex(&stored.hash);
        let resumed = match stored.resumed_from {
            0 => String::new(),
            from => format!(", resumed at {}", indicatif::HumanBytes(from)),
        };
        outln!(
            "sent {}{renamed} ({}, BLAKE3 {}…) to {server} over protocol 4: verified after {} \
             send(s){resumed} in {:.2} s ({rate})",
            file.path.display(),
            indicatif::HumanBytes(stored.size),
            &hash[..16],
            stored.sends,
            took.as_secs_f64()
        );
    }
}

/// Reconnects with the identity, or registers (again, when the server denies it).
fn establish(
    client: &mut Client,
    server: &str,
    identity: Option<Identity>,
    name: Option<String>,
    candidates: &[PathBuf],
    save_at: &Path,
) -> anyhow::Result<Session> {
    if let Some(identity) = identity {
        if let Some(session) = client.reconnect(&identity)? {
            return Ok(session);
        }
        // Some existing clients write the id in me.info byte-reversed; the server's answer
        // says which is right, so trying costs one round trip and guesses nothing.
        let mut reversed = identity.clone();
        reversed.id.0.reverse();
        if reversed.id != identity.id
            && let Some(session) = client.reconnect(&reversed)?
        {
            eprintln!(
                "securexfer: {} holds the client id byte-reversed (as some existing clients write it); using {}",
                save_at.display(),
                reversed.id
            );
            return Ok(session);
        }
        let name = name.unwrap_or_else(|| identity.name.clone());
        eprintln!(
            "securexfer: the server does not know {} ({}); registering again as {name}",
            identity.name, identity.id
        );
        let session = client.register(&name)?;
        let backup = save_registration(&session.identity, save_at, server)?;
        eprintln!(
            "securexfer: registered {name} as {}; identity saved to {}{}",
            session.identity.id,
            save_at.display(),
            backup
                .map(|b| format!(" (the previous one is kept as {})", b.display()))
                .unwrap_or_default()
        );
        return Ok(session);
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    let name = name.ok_or_else(|| {
        UsageError(format!(
            "no identity found (tried {}) and no name to register: pass --name NAME",
            tried.join(", ")
        ))
    })?;
    let session = client.register(&name)?;
    save_registration(&session.identity, save_at, server)?;
    eprintln!(
        "securexfer: registered {name} as {}; identity saved to {}",
        session.identity.id,
        save_at.display()
    );
    Ok(session)
}

/// What a session's events show; `lane` is its connection's number when several send at
/// once (`--parallel`): the bars then add up every connection's part.
fn event_printer(
    display: progress::Shared,
    silent: bool,
    json: bool,
    lane: Option<usize>,
) -> impl FnMut(Event) + Send + 'static {
    // With --json, stderr still gets what the user must know about the server (notes),
    // not the play-by-play.
    let quiet = silent || json;
    move |event| {
        let mut display = progress::lock(&display);
        match (event, lane) {
            (Event::SendStarted { .. }, Some(lane)) => display.lane_progress(lane, 0),
            (Event::Progress(n), Some(lane)) => display.lane_progress(lane, n),
            (event, _) => say(&mut display, event, silent, quiet),
        }
    }
}

fn say(display: &mut progress::Display, event: Event, silent: bool, quiet: bool) {
    {
        match event {
            Event::SendStarted { bytes, attempt, .. } => display.start_send(bytes, attempt),
            Event::Progress(n) => display.progress(n),
            Event::Retrying { step, attempt, reason } if !quiet => {
                display.say(&format!("securexfer: {step}: {reason}; attempt {attempt} of 4"));
            }
            Event::Note(note) if !silent => display.say(&format!("securexfer: note: {note}")),
            Event::Resumed { from, size } if !quiet => display.say(&format!(
                "securexfer: resuming an interrupted upload: {} of {} are on the server already",
                indicatif::HumanBytes(from),
                indicatif::HumanBytes(size)
            )),
            Event::UploadLost { attempt } if !quiet => display.say(&format!(
                "securexfer: the connection broke before the server stored send {attempt}; resending"
            )),
            Event::DigestMismatch { theirs, attempt } if !quiet => display.say(&format!(
                "securexfer: BLAKE3 mismatch on send {attempt} (the server's {}…); resending",
                &theirs[..16.min(theirs.len())]
            )),
            Event::Mismatch { ours, theirs, attempt } if !quiet => display.say(&format!(
                "securexfer: checksum mismatch on send {attempt} (ours {ours}, server {theirs}); resending"
            )),
            _ => {}
        }
    }
}

fn report_ok(
    args: &SendArgs,
    server: &str,
    file: &Planned,
    sent: &securexfer::client::Sent,
    took: Duration,
) {
    if args.json {
        let line = serde_json::json!({
            "file": file.path.display().to_string(),
            "stored_name": file.stored_name,
            "server": server,
            "status": "verified",
            "size": sent.size,
            "cksum": sent.cksum,
            "sends": sent.sends,
            "seconds": took.as_secs_f64(),
        });
        outln!("{line}");
    } else if !args.quiet {
        let rate = progress::rate(sent.size, took.as_secs_f64());
        let renamed =
            if Some(file.stored_name.as_str()) == file.path.file_name().and_then(|n| n.to_str()) {
                String::new()
            } else {
                format!(" as {}", file.stored_name)
            };
        outln!(
            "sent {}{renamed} ({}, cksum {}) to {server}: verified after {} send(s) in {:.2} s ({rate})",
            file.path.display(),
            indicatif::HumanBytes(sent.size),
            sent.cksum,
            sent.sends,
            took.as_secs_f64()
        );
    }
}

fn report_err(args: &SendArgs, server: &str, file: &Planned, error: &dyn FileError) {
    if args.json {
        let line = serde_json::json!({
            "file": file.path.display().to_string(),
            "stored_name": file.stored_name,
            "server": server,
            "status": "failed",
            "exit_code": code_for(error.kind()),
            "error": error.to_string(),
        });
        outln!("{line}");
    }
    if error.names_file() {
        eprintln!("securexfer: error: {error}");
    } else {
        eprintln!("securexfer: error: {}: {error}", file.path.display());
    }
}

/// Reports a file that could not be sent at all; returns its exit code.
fn report_problem(args: &SendArgs, server: &str, file: &Planned, summary: &mut Summary) -> u8 {
    let error = file.problem.as_deref().expect("a file with a problem");
    summary.failed += 1;
    report_err(args, server, file, error);
    code_for(error.kind())
}

/// Reports a file left unsent because the run had to stop.
fn report_skipped(args: &SendArgs, server: &str, file: &Planned, why: &str, summary: &mut Summary) {
    summary.skipped += 1;
    if args.json {
        let line = serde_json::json!({
            "file": file.path.display().to_string(),
            "stored_name": file.stored_name,
            "server": server,
            "status": "skipped",
            "error": why,
        });
        outln!("{line}");
    }
    eprintln!("securexfer: {}: {why}", file.path.display());
}

/// The last JSON line: the run as a whole.
fn report_summary(args: &SendArgs, server: &str, summary: &Summary, exit_code: u8) {
    if args.json {
        let line = serde_json::json!({
            "summary": true,
            "server": server,
            "files": summary.verified + summary.failed + summary.skipped,
            "verified": summary.verified,
            "failed": summary.failed,
            "skipped": summary.skipped,
            "exit_code": exit_code,
        });
        outln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_port_gets_1357_and_bad_ports_are_usage_errors() {
        assert_eq!(normalize_server("files.example.org").unwrap(), "files.example.org:1357");
        assert_eq!(normalize_server("10.0.0.1:9000").unwrap(), "10.0.0.1:9000");
        assert_eq!(normalize_server("[::1]:9000").unwrap(), "[::1]:9000");
        assert_eq!(normalize_server("[::1]").unwrap(), "[::1]:1357");
        assert_eq!(normalize_server("::1").unwrap(), "[::1]:1357");
        for bad in ["host:0", "host:65536", "host:x", ":1357", "", "[::1", "[::1]x"] {
            assert!(normalize_server(bad).is_err(), "{bad:?}");
        }
    }

    fn send_args(extra: &[&str]) -> SendArgs {
        use clap::Parser;
        let argv = [&["securexfer", "send"][..], extra, &["f"]].concat();
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Send(args) => args,
            _ => unreachable!("a send"),
        }
    }

    fn planned(wire_bytes: u64) -> Planned {
        let (path, stored_name) = (PathBuf::from("f"), "f".to_owned());
        Planned { path, stored_name, problem: None, wire_bytes }
    }

    #[test]
    fn files_under_8_mib_share_a_batch_unless_several_connections_share_the_run() {
        let mib = 1 << 20;
        let plan: Vec<Planned> =
            [3 * mib, 7 * mib, 10, 20, 8 * mib, 30].into_iter().map(planned).collect();
        let cut = |args: &SendArgs| -> Vec<(usize, usize)> {
            units(args, &plan).into_iter().map(|u| (u.at, u.len)).collect()
        };
        // One connection: everything under 8 MiB goes in batches, 8 MiB alone.
        assert_eq!(cut(&send_args(&[])), [(0, 4), (4, 1), (5, 1)]);
        // With --parallel, files of 1 MiB or more are units of their own to share.
        assert_eq!(cut(&send_args(&["--parallel", "3"])), [(0, 1), (1, 1), (2, 2), (4, 1), (5, 1)]);
        // --limit-rate paces a streamed send: nothing is batched.
        let paced = cut(&send_args(&["--limit-rate", "1M"]));
        assert_eq!(paced, (0..6).map(|at| (at, 1)).collect::<Vec<_>>());
    }

    #[test]
    fn client_names_are_1_to_254_bytes_of_printable_ascii() {
        assert!(check_name("alice smith").is_ok());
        assert!(check_name(&"a".repeat(254)).is_ok());
        for bad in [String::new(), "a".repeat(255), "tab\there".into(), "zoë".into()] {
            assert!(check_name(&bad).is_err(), "{bad:?}");
        }
    }
}
