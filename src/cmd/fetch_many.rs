//! `get` of many files into a directory (`get -r`, `get NAME…`): the downloads of a run
//! made durable a batch at a time instead of one by one.
//!
//! Syncing each small file before the next one is received left the disk idle between
//! two round trips and cost a synchronous write of its data and of its inode per file. Here
//! each download is written to its partial file beside its target (`super::partial`:
//! resumable, as a single `get`'s) and verified as a single `get` does; its writeback is started at once (so the disk works while the next
//! files arrive), and it waits in a batch. A batch is committed when it holds
//! [`BATCH_FILES`] files or [`BATCH_BYTES`] bytes, or the run ends:
//!
//! 1. every temporary file is synced (`fsync`, a few at a time from threads, each one's
//!    error its own file's);
//! 2. each is renamed to its final name (without `--force`, a rename that refuses a file
//!    that appeared meanwhile);
//! 3. each folder a name was placed in is synced, so that the names are durable too;
//!
//! and only then is each file reported, in its place. A batch is committed on a thread of
//! its own while the next one is received. So a final name only ever holds a
//! whole, verified file whose bytes reached the disk before the name did: a crash before
//! step 2 leaves partial files and no new name; one between 2 and 3 may lose names, never
//! bytes under a name. Ctrl-C keeps the resumable partial files (the next `get` continues
//! them, file by file) and deletes the others.

use super::fetch::{GETS_AHEAD, GetRun, Item, PartialWriter, leaves_partial, make_folders};
use super::partial::{self, Partial};
use super::progress;
use super::v4::Four;
use securexfer::client::v4::error::V4Error;
use securexfer::client::v4::fetch::{Fetched, PendingGet};
use securexfer::client::v4::session::Session;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Files received before a batch is committed: enough that the syncs of a batch overlap
/// on the disk, few enough that a batch's open temporary files stay far below the open
/// file limit.
const BATCH_FILES: usize = 128;
/// Bytes received before a batch is committed: a large file is committed on its own,
/// soon after it arrived.
const BATCH_BYTES: u64 = 64 << 20;
/// Threads syncing a batch's files at once.
const SYNC_THREADS: usize = 4;

/// The partial files not yet renamed into place, each with whether it is resumable, for
/// Ctrl-C to keep or delete.
type Unplaced = Arc<Mutex<std::collections::HashMap<PathBuf, bool>>>;

/// How the run's files are written.
pub(super) struct Dest<'a> {
    pub(super) dir: &'a Path,
    pub(super) force: bool,
    /// The files' permissions, as a single `get` gives them.
    pub(super) mode: u32,
    pub(super) display: &'a progress::Shared,
}

/// A download received and verified, waiting in a batch for its sync and rename.
struct Received {
    /// Still resumable until the batch is committed: an interruption before then leaves
    /// it whole, for the next `get` to find complete.
    partial: Partial,
    local: PathBuf,
    fetched: Fetched,
}

/// A name's local file and its `GET` sent, or why not.
type Sent = Result<(PathBuf, PendingGet), V4Error>;

/// A name's outcome so far: received (not yet placed) or failed.
type Outcome = Result<Received, V4Error>;

/// Downloads `items` (the connection already failed if `stopped`) into `into.dir`,
/// reporting each to `run` once it is placed or has failed.
pub(super) fn get_all(
    four: &mut Four,
    run: &mut GetRun<'_>,
    items: &[Item],
    stopped: bool,
    into: &Dest<'_>,
) {
    let unplaced = Unplaced::default();
    tidy_on_interrupt(&unplaced, into.display);
    let mut stopped = stopped;
    let mut names = items.iter();
    // Batches are committed on a thread of their own while the next one is received: the
    // disk syncs one while the network brings the other. One waits at most.
    let (committing, batches) = std::sync::mpsc::sync_channel::<Batch>(1);
    std::thread::scope(|scope| {
        let (unplaced, reported) = (&unplaced, &mut *run);
        scope.spawn(move || {
            for mut batch in batches {
                batch.commit(reported, into, unplaced);
            }
        });
        let mut batch = Batch::default();
        let mut ahead: VecDeque<(String, Sent)> = VecDeque::new();
        let mut k = 0;
        loop {
            while ahead.len() < GETS_AHEAD && !stopped {
                let Some(item) = names.next() else { break };
                let sent = four.runtime.block_on(prepare(&mut four.session, into, item));
                ahead.push_back((item.path.clone(), sent));
            }
            let Some((name, sent)) = ahead.pop_front() else { break };
            k += 1;
            progress::lock(into.display).start_file(k, &name);
            // After a failure that ends the session, the answers already asked for are
            // not read either: nothing more is taken from a server that broke the protocol.
            let outcome = match sent {
                Ok(_) if stopped => Err(not_tried()),
                Ok((local, pending)) => {
                    receive(&four.runtime, &mut four.session, into, unplaced, local, pending)
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &outcome
                && e.ends_session()
            {
                stopped = true;
            }
            let size = outcome.as_ref().map_or(0, |r| r.fetched.size);
            progress::lock(into.display).finish_file(size, outcome.is_ok());
            batch.push(name, outcome);
            if batch.full() {
                // The committer only ends with this function.
                let _ = committing.send(std::mem::take(&mut batch));
            }
        }
        let _ = committing.send(batch);
        drop(committing);
    });
    progress::lock(into.display).clear();
    for item in names {
        run.report(&item.path, Err(not_tried()));
    }
}

fn not_tried() -> V4Error {
    V4Error::Conn(securexfer::client::v4::conn::ConnError::Lost(
        "not tried: the connection failed for an earlier file".into(),
    ))
}

/// Ctrl-C keeps the resumable partial files not yet placed and deletes the others, says
/// so, and exits 130 (as a single `get` does for its one file).
fn tidy_on_interrupt(unplaced: &Unplaced, display: &progress::Shared) {
    let flag: &'static std::sync::atomic::AtomicBool = securexfer::sys::catch_interrupt();
    let (unplaced, display) = (Arc::clone(unplaced), Arc::clone(display));
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                progress::lock(&display).clear_after_interrupt();
                let mut kept = 0;
                for (path, resumable) in unplaced.lock().unwrap_or_else(|p| p.into_inner()).drain()
                {
                    let empty = std::fs::metadata(&path).map_or(true, |m| m.len() == 0);
                    if resumable && !empty {
                        kept += 1;
                    } else {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                match kept {
                    0 => {
                        eprintln!("securexfer: interrupted: the downloads under way were not kept")
                    }
                    n => eprintln!(
                        "securexfer: interrupted: what arrived of {n} files is kept in their \
                         partial files; the same get continues them"
                    ),
                }
                std::process::exit(i32::from(progress::INTERRUPTED));
            }
        }
    });
}

/// Where `item` goes, checked to be free (unless `--force`), its folders made, and its
/// `GET` sent.
async fn prepare(session: &mut Session, into: &Dest<'_>, item: &Item) -> Sent {
    let local = make_folders(into.dir, &item.local)?;
    if !into.force && std::fs::symlink_metadata(&local).is_ok() {
        return Err(exists(local));
    }
    let pending = session.send_get(&item.path).await?;
    Ok((local, pending))
}

fn exists(local: PathBuf) -> V4Error {
    V4Error::Write {
        path: local,
        cause: std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "it exists; pass --force to replace it",
        ),
    }
}

/// Receives one download into its partial file beside `local` and verifies it; its
/// writeback is started, its sync and rename left to the batch.
fn receive(
    runtime: &tokio::runtime::Runtime,
    session: &mut Session,
    into: &Dest<'_>,
    unplaced: &Unplaced,
    local: PathBuf,
    pending: PendingGet,
) -> Outcome {
    let write_error = |cause| V4Error::Write { path: local.clone(), cause };
    let partial = Partial::fresh(&local).map_err(write_error)?;
    let note = |partial: &Partial| {
        let mut unplaced = unplaced.lock().unwrap_or_else(|p| p.into_inner());
        unplaced.insert(partial.path.clone(), partial.resumable);
    };
    note(&partial);
    let partial = std::cell::RefCell::new(partial);
    let mut out = std::io::BufWriter::with_capacity(64 << 10, PartialWriter(&partial));
    let display = into.display;
    let progress = |received, size| {
        let mut display = progress::lock(display);
        if received == 0 {
            display.grow_total(size);
            display.start_send(size, 1);
        } else {
            display.progress(received);
        }
    };
    let received =
        runtime.block_on(session.receive_get_with(pending, &mut out, &local, progress, |begin| {
            let mut partial = partial.borrow_mut();
            partial.begins(begin.generation);
            note(&partial);
            Ok(())
        }));
    let flushed = out.into_inner().map(|_| ()).map_err(|e| write_error(e.into_error()));
    let partial = partial.into_inner();
    let fetched = match received.and_then(|f| flushed.map(|()| f)) {
        Ok(fetched) => fetched,
        Err(e) => {
            if !(partial.resumable && leaves_partial(&e)) {
                let _ = std::fs::remove_file(&partial.path);
            }
            unplaced.lock().unwrap_or_else(|p| p.into_inner()).remove(&partial.path);
            return Err(e);
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let permissions = std::fs::Permissions::from_mode(into.mode);
        partial.file.set_permissions(permissions).map_err(write_error)?;
    }
    if fetched.mtime_ns > 0 {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(fetched.mtime_ns as u64);
        let _ = partial.file.set_modified(at);
    }
    // The batch's sync then finds the pages written or under way; only a hint, a failure
    // is the sync's to report.
    securexfer::sys::start_writeback(&partial.file, (0, fetched.size));
    Ok(Received { partial, local, fetched })
}

/// The names received since the last commit, in the run's order.
#[derive(Default)]
struct Batch {
    names: Vec<(String, Outcome)>,
    files: usize,
    bytes: u64,
}

impl Batch {
    fn push(&mut self, name: String, outcome: Outcome) {
        if let Ok(received) = &outcome {
            self.files += 1;
            self.bytes += received.fetched.size;
        }
        self.names.push((name, outcome));
    }

    fn full(&self) -> bool {
        self.files >= BATCH_FILES || self.bytes >= BATCH_BYTES
    }

    /// Syncs, renames and reports the batch (see the module's comment), then empties it.
    fn commit(&mut self, run: &mut GetRun<'_>, into: &Dest<'_>, unplaced: &Unplaced) {
        let mut names = std::mem::take(&mut self.names);
        (self.files, self.bytes) = (0, 0);
        let temps: Vec<PathBuf> = names
            .iter()
            .filter_map(|(_, o)| o.as_ref().ok())
            .map(|r| r.partial.path.clone())
            .collect();
        sync_all(&mut names);
        let mut folders: Vec<PathBuf> = Vec::new();
        let mut placed = Vec::with_capacity(names.len());
        for (name, outcome) in names {
            let outcome = outcome.and_then(|received| place(received, into.force));
            if let Ok((_, local)) = &outcome {
                let folder = local.parent().unwrap_or(Path::new(".")).to_owned();
                if !folders.contains(&folder) {
                    folders.push(folder);
                }
            }
            placed.push((name, outcome));
        }
        let mut left = unplaced.lock().unwrap_or_else(|p| p.into_inner());
        for temp in &temps {
            left.remove(temp);
        }
        drop(left);
        let unsynced: Vec<(PathBuf, std::io::Error)> =
            folders.into_iter().filter_map(|f| sync_folder(&f).err().map(|e| (f, e))).collect();
        let shown = progress::lock(into.display);
        shown.suspend(|| {
            for (name, outcome) in placed {
                let outcome = outcome.and_then(|(fetched, local)| {
                    let folder = local.parent().unwrap_or(Path::new("."));
                    match unsynced.iter().find(|(f, _)| f == folder) {
                        Some((_, e)) => Err(V4Error::Write {
                            path: local.clone(),
                            cause: std::io::Error::new(
                                e.kind(),
                                format!("placed, but its folder could not be synced: {e}"),
                            ),
                        }),
                        None => Ok((fetched, local)),
                    }
                });
                run.report(&name, outcome);
            }
        });
    }
}

/// Syncs every received file of the batch, [`SYNC_THREADS`] at a time: a file whose sync
/// fails becomes its name's error (and its temporary file is deleted).
fn sync_all(names: &mut [(String, Outcome)]) {
    let mut received: Vec<&mut Outcome> =
        names.iter_mut().map(|(_, o)| o).filter(|o| o.is_ok()).collect();
    let per = received.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        for chunk in received.chunks_mut(per) {
            scope.spawn(move || {
                for outcome in chunk {
                    let Ok(r) = &**outcome else { continue };
                    // Its attribute goes before the sync: a placed file is the user's,
                    // not a download's.
                    let done = partial::finished(&r.partial.file);
                    if let Err(cause) = done.and_then(|()| r.partial.file.sync_all()) {
                        let _ = std::fs::remove_file(&r.partial.path);
                        **outcome = Err(V4Error::Write { path: r.local.clone(), cause });
                    }
                }
            });
        }
    });
}

/// Renames a synced partial file to its final name (without `force`, never over a file
/// that appeared since `prepare` looked); a failure deletes it.
fn place(received: Received, force: bool) -> Result<(Fetched, PathBuf), V4Error> {
    let Received { partial, local, fetched } = received;
    let write_error = |cause| V4Error::Write { path: local.clone(), cause };
    let Partial { file, path, .. } = partial;
    let temp_path = tempfile::TempPath::try_from_path(&path).map_err(write_error)?;
    let temp = tempfile::NamedTempFile::from_parts(file, temp_path);
    let placed = if force { temp.persist(&local) } else { temp.persist_noclobber(&local) };
    match placed {
        Ok(_) => Ok((fetched, local)),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Err(exists(local)),
        Err(e) => Err(V4Error::Write { path: local, cause: e.error }),
    }
}

/// Makes the names placed in `folder` durable.
fn sync_folder(folder: &Path) -> std::io::Result<()> {
    std::fs::File::open(folder)?.sync_all()
}
