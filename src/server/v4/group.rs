//! Group commit (docs/protocol-v4.md, "Many small files: group commit"): a `COMMIT` whose
//! hash matches is staged instead of stored at once, the connection goes on with the
//! frames already readable, and the staged commits are stored together when nothing more
//! is readable, when [`MAX_GROUP`] are staged or [`MAX_GROUP_WAIT`] after the first,
//! whichever comes first. What one commit costs alone (a sync of its file, of its folder
//! and of the database twice) is then paid once a group: the files' syncs are issued
//! together, the intents go in one transaction, each folder is synced once, and one more
//! transaction records every file and forgets the intents.
//!
//! A group is stored by a task of its own ([`GroupStore`]) while the connection reads and
//! stages the next: receiving one group and storing the one before overlap, which on a
//! run of small files is most of the time either takes. One group is stored at a time, so
//! answers keep their order and a group's turns are never held twice by one connection.
//!
//! Answers keep their order: from the first staged commit on, every answer waits in the
//! group's outbox, and a `COMMITTED` is written only after its group is durable. Every
//! per-file rule of a lone commit holds per file: the clash check under the commit turn
//! (all the group's turns taken in one order, so two groups never wait on each other),
//! `--keep-versions`, the quota reservation held until the records count the file, the
//! generations in request order. A group never holds two commits of one path, nor of a
//! path and one of its folders: such a commit, or a put of such a path, first stores the
//! group (and waits for the one being stored), as `LIST`, `GET`, `RM` and `RESUME_QUERY`
//! do.

use super::driver::{Connection, Ended};
use super::errors;
use super::folders::{clash, turn_key};
use super::identity::unix_now;
use super::put::Held;
use crate::protocol::ClientId;
use crate::protocol::v4::{Committed, ErrorFrame, FrameType, encode_frame};
use crate::server::Shared;
use crate::server::metrics::UploadOutcome;
use crate::server::session::Reservation;
use crate::store::{
    BlobStore, CommitIntent, FinishedCommit, GroupItem, PathFacts, StagedBlob, V4Content,
};
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// Commits staged at most before the group starts storing: half the files a pipelining
/// client keeps on the wire (`max in flight` / 2), so the next group arrives meanwhile.
pub(super) const MAX_GROUP: usize = 32;

/// Blocking-pool tasks that sync one group's files.
const SYNC_LANES: usize = 16;

/// How long the first commit of a group waits at most for others to join it, which bounds
/// the wait of every answer behind it.
pub(super) const MAX_GROUP_WAIT: Duration = Duration::from_millis(20);

/// The staged commits of one connection, the group being stored, and the answers
/// waiting behind them.
#[derive(Default)]
pub(super) struct Group {
    staged: Vec<(u32, Held)>,
    since: Option<Instant>,
    outbox: Vec<Outgoing>,
    /// The group before the staged one, stored in the background while the connection
    /// reads on (one at a time).
    storing: Option<Storing>,
}

/// A group being stored, and the answers that wait for it.
pub(super) struct Storing {
    names: Vec<String>,
    outbox: Vec<Outgoing>,
    done: JoinHandle<HashMap<u32, Outcome>>,
    /// What `done` gave, once it was awaited beside a read ([`Storing::wait`]).
    joined: Option<Result<HashMap<u32, Outcome>, tokio::task::JoinError>>,
}

impl Storing {
    /// Waits for the group to be stored (cancel-safe: what it gives is kept).
    pub(super) async fn wait(&mut self) {
        if self.joined.is_none() {
            self.joined = Some((&mut self.done).await);
        }
    }

    async fn outcomes(self) -> (Vec<Outgoing>, HashMap<u32, Outcome>) {
        let joined = match self.joined {
            Some(joined) => joined,
            None => self.done.await,
        };
        let outcomes = joined.unwrap_or_else(|e| {
            // Every tag is then answered `internal`.
            tracing::error!(at = unix_now(), "storing a protocol-4 group failed: {e}");
            HashMap::new()
        });
        (self.outbox, outcomes)
    }
}

/// An answer held back behind a staged commit.
enum Outgoing {
    /// An answer already decided, encoded.
    Frame(Vec<u8>),
    /// The `COMMITTED` (or `ERROR`) of the staged commit of this tag.
    Commit(u32),
}

/// What became of one staged commit.
type Outcome = Result<FinishedCommit, ErrorFrame>;

impl Group {
    /// Whether commits are staged for the next group.
    pub(super) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Whether a group is being stored.
    pub(super) fn is_storing(&self) -> bool {
        self.storing.is_some()
    }

    /// Whether the group being stored is done, its answers ready to go.
    pub(super) fn stored(&self) -> bool {
        self.storing.as_ref().is_some_and(|s| s.joined.is_some() || s.done.is_finished())
    }

    /// The group being stored, if any.
    pub(super) fn storing(&mut self) -> Option<&mut Storing> {
        self.storing.as_mut()
    }

    /// Whether the staged commits must be stored before the connection reads on.
    pub(super) fn due(&self) -> bool {
        self.staged.len() >= MAX_GROUP || self.since.is_some_and(|t| t.elapsed() >= MAX_GROUP_WAIT)
    }

    /// Whether a staged commit, or one being stored, is at `path`, at one of its folders,
    /// or under it: a put or commit of `path` must then wait for the group, so that its
    /// checks see the records as they will be and one group never holds one path (or
    /// intent key) twice.
    pub(super) fn touches(&self, path: &str) -> bool {
        self.staged.iter().any(|(_, held)| related(&held.name, path))
            || self.storing.as_ref().is_some_and(|s| s.names.iter().any(|n| related(n, path)))
    }

    fn stage(&mut self, tag: u32, held: Held) {
        self.since.get_or_insert_with(Instant::now);
        self.staged.push((tag, held));
        self.outbox.push(Outgoing::Commit(tag));
    }

    /// Holds `frame` back if an answer before it is waiting; else gives it back to send.
    pub(super) fn hold(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        if self.outbox.is_empty() && self.storing.is_none() {
            return Some(frame);
        }
        self.outbox.push(Outgoing::Frame(frame));
        None
    }
}

/// Whether one of the two paths is the other or one of its folders.
fn related(a: &str, b: &str) -> bool {
    let under = |path: &str, folder: &str| {
        path.len() > folder.len()
            && path.starts_with(folder)
            && path.as_bytes()[folder.len()] == b'/'
    };
    a == b || under(a, b) || under(b, a)
}

/// A staged commit on its way: its held upload's parts, once its intent is made.
struct Ready {
    tag: u32,
    held: Held,
    intent: CommitIntent,
}

/// What a commit keeps to its end once its blob is handed to the store.
struct Rest {
    tag: u32,
    intent: CommitIntent,
    _reservation: Reservation,
    _claim: Option<super::resume::ResumeClaim>,
    kept: Option<(String, String)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    /// `COMMIT` with the server's own hash: staged in the group (whose storing starts at
    /// once when the group is full).
    pub(super) async fn stage_commit(&mut self, tag: u32, held: Held) -> Result<(), Ended> {
        if self.group.touches(&held.name) {
            self.flush_group().await?;
        }
        self.group.stage(tag, held);
        if self.group.due() {
            self.start_storing().await?;
        }
        Ok(())
    }

    /// Stores the staged commits, if any, and writes every answer held behind them and
    /// behind the group before them.
    pub(super) async fn flush_group(&mut self) -> Result<(), Ended> {
        self.start_storing().await?;
        self.finish_storing().await
    }

    /// Starts storing the staged commits, if any, in the background: the connection reads
    /// and stages the next files meanwhile, so receiving one group and storing the one
    /// before it overlap. The group before is stored and answered first (one is stored at
    /// a time, so answers keep their order and a group's turns are never held twice).
    pub(super) async fn start_storing(&mut self) -> Result<(), Ended> {
        if self.group.staged.is_empty() {
            return Ok(());
        }
        self.finish_storing().await?;
        let id = self.machine.client().expect("the machine lets only clients commit");
        let staged = std::mem::take(&mut self.group.staged);
        let waited = self.group.since.take().map(|t| t.elapsed());
        let names = staged.iter().map(|(_, held)| held.name.clone()).collect();
        let store = GroupStore {
            shared: Arc::clone(&self.shared),
            id,
            ip: self.peer.ip(),
            space: self.space(id),
        };
        let done = tokio::spawn(async move {
            let (files, started) = (staged.len(), Instant::now());
            let outcomes = store.commit_group(staged).await;
            debug!(files, ?waited, took = ?started.elapsed(), "protocol-4 group stored");
            outcomes
        });
        let outbox = std::mem::take(&mut self.group.outbox);
        self.group.storing = Some(Storing { names, outbox, done, joined: None });
        Ok(())
    }

    /// Waits for the group being stored, if any, and writes its answers, then those held
    /// behind it up to the first staged commit.
    pub(super) async fn finish_storing(&mut self) -> Result<(), Ended> {
        let Some(storing) = self.group.storing.take() else { return Ok(()) };
        let (outbox, mut outcomes) = storing.outcomes().await;
        let mut bytes = Vec::new();
        for out in outbox {
            match out {
                Outgoing::Frame(frame) => bytes.extend_from_slice(&frame),
                Outgoing::Commit(tag) => {
                    let outcome = outcomes.remove(&tag).unwrap_or_else(|| {
                        Err(errors::internal(unix_now())) // every stored tag has an outcome
                    });
                    bytes.extend_from_slice(&self.answer(tag, outcome)?);
                }
            }
        }
        let waiting = self.group.outbox.iter().take_while(|out| matches!(out, Outgoing::Frame(_)));
        let free = waiting.count();
        for out in self.group.outbox.drain(..free) {
            if let Outgoing::Frame(frame) = out {
                bytes.extend_from_slice(&frame);
            }
        }
        self.write_frames(&bytes).await.map_err(Ended::Gone)
    }

    /// The encoded `COMMITTED` or `ERROR` of one staged commit.
    fn answer(&self, tag: u32, outcome: Outcome) -> Result<Vec<u8>, Ended> {
        let (frame_type, payload) = match outcome {
            Ok(finished) => {
                let committed = Committed {
                    generation: finished.generation,
                    stored_at: finished.stored_at,
                    kept_version: finished.kept_version,
                };
                (FrameType::Committed, committed.encode())
            }
            Err(error) => {
                info!(
                    tag,
                    code = error.code.name(),
                    "protocol-4 request refused: {}",
                    error.message
                );
                self.shared.metrics.v4_error(error.code);
                (FrameType::Error, error.encode().map_err(|e| Ended::Gone(io::Error::other(e)))?)
            }
        };
        encode_frame(frame_type, tag, &payload).map_err(|e| Ended::Gone(io::Error::other(e)))
    }
}

/// What storing a group needs of its connection, owned, so that it runs beside it.
struct GroupStore {
    shared: Arc<Shared>,
    id: ClientId,
    ip: IpAddr,
    /// How the client's path names start.
    space: String,
}

impl GroupStore {
    /// Stores a group under the turns of all its paths; what became of each, by tag.
    async fn commit_group(&self, staged: Vec<(u32, Held)>) -> HashMap<u32, Outcome> {
        let id = self.id;
        let shared = Arc::clone(&self.shared);
        let mut keys: Vec<String> =
            staged.iter().map(|(_, held)| turn_key(&held.name).to_owned()).collect();
        keys.sort_unstable();
        keys.dedup();
        // In one order, the same for every group: no two wait for each other's turns.
        let mut turns = Vec::with_capacity(keys.len());
        for key in &keys {
            turns.push(shared.commit_turn(id, key).await);
        }
        let mut outcomes = HashMap::new();
        let mut ready = Vec::with_capacity(staged.len());
        // Under the turns, the facts of every path in one call: another connection may
        // have stored a clashing path since its `PUT_BEGIN`.
        let paths = staged.iter().map(|(_, held)| held.name.clone()).collect();
        let facts = match shared.records().path_facts(id, self.space.clone(), paths).await {
            Ok(facts) if facts.len() == staged.len() => Ok(facts),
            Ok(_) => Err(failed("reading a group's records failed", &"a fact per path")),
            Err(e) => Err(failed("reading a group's records failed", &e)),
        };
        for (i, (tag, held)) in staged.into_iter().enumerate() {
            let intent = match &facts {
                Ok(facts) => self.intent(id, &held, &facts[i]).await,
                Err(error) => Err(error.clone()),
            };
            match intent {
                Ok(intent) => ready.push(Ready { tag, held, intent }),
                Err(error) => {
                    outcomes.insert(tag, Err(error));
                    drop_off_runtime(held).await;
                }
            }
        }
        let ready = self.sync_data(ready, &mut outcomes).await;
        self.store_group(id, ready, &mut outcomes).await;
        drop(turns);
        for outcome in outcomes.values() {
            let result =
                if outcome.is_ok() { UploadOutcome::Verified } else { UploadOutcome::Failed };
            self.shared.metrics.upload(result);
        }
        outcomes
    }

    /// The commit intent of a staged upload, checked under its turn against its path's
    /// facts.
    async fn intent(
        &self,
        id: ClientId,
        held: &Held,
        facts: &PathFacts,
    ) -> Result<CommitIntent, ErrorFrame> {
        if let Some(clash) = clash(&held.name, facts) {
            return Err(clash);
        }
        let (shared, location) = (Arc::clone(&self.shared), held.staged.location().to_owned());
        let keep = shared.config.keep_versions;
        let plan = match shared.storage.known_plan(id, &held.name, keep, facts.verified) {
            Some(plan) => plan,
            None => {
                let plan =
                    shared.storage.commit_plan(shared.records(), id, &held.name, &location, keep);
                plan.await.map_err(|e| failed("reading the records of a commit failed", &e))?
            }
        };
        Ok(CommitIntent {
            client_id: id,
            stored_name: held.name.clone(),
            file_name: held.name.clone(),
            path_name: plan.path_name,
            source: location,
            size: held.size,
            cksum: held.cksum,
            archive: plan.archive,
            restores: None,
            v4: Some(V4Content { blake3: held.hash, mtime_ns: held.mtime_ns }),
        })
    }

    /// Makes the group's bytes durable before any intent names them: the files split
    /// among [`SYNC_LANES`] tasks on the blocking pool, each syncing its share in turn, so
    /// that the device has several syncs to work on at once while a group costs a few
    /// hand-overs to the pool, not one per file.
    async fn sync_data(
        &self,
        ready: Vec<Ready>,
        outcomes: &mut HashMap<u32, Outcome>,
    ) -> Vec<Ready> {
        let per_lane = ready.len().div_ceil(SYNC_LANES).max(1);
        let mut lanes: Vec<Vec<Ready>> = Vec::new();
        for r in ready {
            match lanes.last_mut() {
                Some(lane) if lane.len() < per_lane => lane.push(r),
                _ => lanes.push(vec![r]),
            }
        }
        let syncing: Vec<_> = lanes
            .into_iter()
            .map(|lane| {
                let tags: Vec<u32> = lane.iter().map(|r| r.tag).collect();
                let sync = tokio::task::spawn_blocking(move || {
                    lane.into_iter()
                        .map(|mut r| {
                            let synced = r.held.staged.sync_finished();
                            (r, synced)
                        })
                        .collect::<Vec<_>>()
                });
                (tags, sync)
            })
            .collect();
        let mut synced = Vec::new();
        for (tags, sync) in syncing {
            match sync.await {
                Ok(lane) => {
                    for (r, done) in lane {
                        match done {
                            Ok(()) => synced.push(r),
                            Err(e) => {
                                let error = failed("syncing a protocol-4 upload failed", &e);
                                outcomes.insert(r.tag, Err(error));
                                drop_off_runtime(r.held).await;
                            }
                        }
                    }
                }
                Err(e) => {
                    for tag in tags {
                        let error = failed("syncing a protocol-4 upload failed", &e);
                        outcomes.insert(tag, Err(error));
                    }
                }
            }
        }
        synced
    }

    /// The intents in one transaction, the renames and folder syncs, then the files
    /// recorded and the intents forgotten in one more: a crash anywhere leaves intents
    /// that start-up decides by the bytes, one by one, as for a lone commit.
    async fn store_group(
        &self,
        id: ClientId,
        ready: Vec<Ready>,
        outcomes: &mut HashMap<u32, Outcome>,
    ) {
        if ready.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let records = shared.records();
        let intents: Vec<CommitIntent> = ready.iter().map(|r| r.intent.clone()).collect();
        if let Err(e) = records.begin_commits(intents).await {
            let error = failed("recording protocol-4 commit intents failed", &e);
            for r in ready {
                outcomes.insert(r.tag, Err(error.clone()));
                drop_off_runtime(r.held).await;
            }
            return;
        }
        let (items, rests): (Vec<GroupItem>, Vec<Rest>) = ready.into_iter().map(split).unzip();
        let storage = shared.storage.clone();
        let committed = tokio::task::spawn_blocking(move || storage.commit_group(items)).await;
        let committed = committed.unwrap_or_else(|e| {
            (0..rests.len()).map(|_| Err(io::Error::other(e.to_string()))).collect()
        });
        let mut stored = Vec::with_capacity(rests.len());
        for (rest, done) in rests.into_iter().zip(committed) {
            match done {
                Ok(done) => {
                    if let Some(replaced) = done.replaced {
                        tokio::task::spawn_blocking(move || drop(replaced));
                    }
                    stored.push(rest);
                }
                Err(e) => {
                    let _ = records.abandon_commit(rest.intent).await;
                    outcomes
                        .insert(rest.tag, Err(failed("storing a protocol-4 upload failed", &e)));
                }
            }
        }
        self.record_group(id, stored, outcomes).await;
    }

    /// The files in place recorded in one transaction, with the intents forgotten.
    async fn record_group(
        &self,
        id: ClientId,
        stored: Vec<Rest>,
        outcomes: &mut HashMap<u32, Outcome>,
    ) {
        if stored.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let keep = shared.config.keep_versions;
        let intents: Vec<CommitIntent> = stored.iter().map(|r| r.intent.clone()).collect();
        let finished = shared.records().finish_commits_detailed(intents, Some(self.ip), keep);
        let finished = match finished.await {
            Ok(finished) if finished.len() == stored.len() => finished,
            Ok(_) => {
                let e = "a different number of files recorded than asked";
                let error = failed("recording a protocol-4 group failed", &e);
                stored.iter().for_each(|r| drop(outcomes.insert(r.tag, Err(error.clone()))));
                return;
            }
            Err(e) => {
                let error = failed("recording a protocol-4 group failed", &e);
                stored.iter().for_each(|r| drop(outcomes.insert(r.tag, Err(error.clone()))));
                return;
            }
        };
        for (rest, finished) in stored.into_iter().zip(finished) {
            let (name, size) = (&rest.intent.stored_name, rest.intent.size);
            info!(tag = rest.tag, %name, size, generation = finished.generation, "protocol-4 file verified and stored");
            self.prune(id, &finished.pruned);
            if let Some((path, location)) = rest.kept {
                // Renamed into place: the record of it as unfinished is no longer true.
                let forgot = shared.records().forget_unfinished(id, path.clone(), location);
                if let Err(e) = forgot.await {
                    warn!(%path, "could not forget an unfinished upload's record: {e}");
                }
            }
            outcomes.insert(rest.tag, Ok(finished));
        }
    }

    /// Deletes the versions beyond `--keep-versions` a commit forgot, in the background.
    fn prune(&self, id: ClientId, pruned: &[String]) {
        if pruned.is_empty() {
            return;
        }
        let (storage, pruned) = (self.shared.storage.clone(), pruned.to_vec());
        tokio::task::spawn_blocking(move || {
            for path in pruned {
                if let Err(e) = storage.delete_version(id, &path) {
                    warn!(%path, "could not delete a version beyond --keep-versions: {e}");
                }
            }
        });
    }
}

/// A ready commit split into what the store takes and what stays until it is recorded:
/// the reservation counts the upload against the client's quota until the records count
/// the file, and the resume claim keeps other connections off the file being renamed.
fn split(ready: Ready) -> (GroupItem, Rest) {
    let Ready { tag, held, intent } = ready;
    let kept = held.keep.as_ref().map(|k| (k.path.clone(), held.staged.location().to_owned()));
    let item = GroupItem {
        staged: held.staged,
        owner: intent.client_id,
        name: held.name,
        archive: intent.archive.clone(),
    };
    let rest = Rest { tag, intent, _reservation: held._reservation, _claim: held.claim, kept };
    (item, rest)
}

/// `internal`, with the failure logged under the time the client is told.
fn failed(what: &str, e: &dyn std::fmt::Display) -> ErrorFrame {
    let at = unix_now();
    tracing::error!(at, "{what}: {e}");
    errors::internal(at)
}

/// Drops an upload (deleting its file) on the blocking pool.
async fn drop_off_runtime(held: Held) {
    let _ = tokio::task::spawn_blocking(move || drop(held)).await;
}

#[cfg(test)]
mod tests {
    use super::related;

    #[test]
    fn a_path_is_related_to_itself_its_folders_and_what_is_under_it_only() {
        assert!(related("a", "a"));
        assert!(related("a", "a/b"));
        assert!(related("a/b/c", "a/b"));
        assert!(!related("a", "ab"));
        assert!(!related("a/b", "a/c"));
        assert!(!related("ab/c", "a"));
    }
}
