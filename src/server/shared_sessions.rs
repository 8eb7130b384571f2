//! Protocol 3's sessions when several instances share the records (`serve --db
//! postgres://…`): a client that opens a connection per request may make its key exchange
//! on one instance, send on a second and confirm on a third. Each instance keeps its own
//! registry ([`super::session::Sessions`]) as before, and also publishes every session,
//! registration and borrowed upload in the records, where any instance finds them.
//!
//! An upload made on a borrowed session is handed over when it has arrived: with an
//! object store its bytes are a finished staged object, which any instance can commit, so
//! the records hold its key and the instance forgets it. (With a local storage directory
//! the bytes are on one machine only: such uploads stay in the instance's own registry.)
//! Whoever takes it back holds its staged object in the same statement, so the staged
//! objects' cleaner and a commit never both have it.
//!
//! The registration limit ([`super::ratelimit`]) and the back-off after padding
//! failures ([`super::backoff`]) are shared the same way (even
//! with `--strict-sessions`, which only stops borrowing): a failure on one instance holds
//! key exchanges back on all of them, so guesses cannot be spread over the instances, and
//! one address cannot register N times as often on N instances.

use super::Shared;
use super::refusal::Refusal;
use super::session::{MAX_PENDING_UPLOADS, Pending, Session};
use crate::clock::{millis, unix_ms, unix_secs_in};
use crate::protocol::ClientId;
use crate::store::s3::{STAGED_MARGIN, STAGED_RETRY};
use crate::store::{Blobs, PendingTimes, SharedPending};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a taken-back upload's staged object is held from the cleaner for its commit
/// (which forgets it): far longer than a commit takes.
const COMMIT_HOLD: Duration = Duration::from_secs(60 * 60);

impl Shared {
    /// Whether sessions are shared with other instances through the records.
    fn shares_sessions(&self) -> bool {
        !self.config.strict_sessions && self.records().shares_sessions()
    }

    /// Whether borrowed uploads wait in the records (their bytes are in an object store).
    fn hands_over_uploads(&self) -> bool {
        self.shares_sessions() && matches!(self.storage, Blobs::S3(_))
    }

    /// Makes `session` the latest of its client and address, here and for every instance.
    pub(super) async fn publish_session(&self, session: &Arc<Session>) -> Result<(), Refusal> {
        self.sessions.publish(session);
        if self.shares_sessions() {
            self.records().publish_session(session.to_shared()).await?;
        }
        Ok(())
    }

    /// The latest session of `id` from `ip` within the window, wherever it was made.
    pub(super) async fn find_session(
        &self,
        id: ClientId,
        ip: IpAddr,
    ) -> Result<Option<Arc<Session>>, Refusal> {
        let local = self.sessions.find(id, ip);
        if !self.shares_sessions() {
            return Ok(local);
        }
        let used_after = unix_ms().saturating_sub(millis(self.config.session_window));
        let Some(found) = self.records().find_session(id, ip, used_after).await? else {
            return Ok(None);
        };
        // Made here: the very session, with the uploads it holds itself.
        if let Some(local) = local.filter(|s| s.token == found.token) {
            return Ok(Some(local));
        }
        Ok(Some(Arc::new(Session::adopted(&found))))
    }

    /// Ends `session` for every connection on every instance, with its unconfirmed
    /// uploads; how many of those there were.
    pub(super) async fn end_session(&self, session: &Arc<Session>) -> usize {
        self.sessions.withdraw(session);
        let mut dropped = session.end();
        if self.shares_sessions() {
            match self.records().end_session(session.token).await {
                Ok(n) => dropped += n,
                // Its uploads expire; the back-off holds new exchanges meanwhile.
                Err(e) => warn!("could not end the session in the shared records: {e}"),
            }
        }
        dropped
    }

    /// Whether `session`, held by a connection here, was ended after a padding failure:
    /// here (its flag) or, with shared sessions, on another instance, in which case it is
    /// ended here too (its waiting uploads dropped). One statement per request of a
    /// connection that holds a session, on shared records only.
    pub(super) async fn session_ended(&self, session: &Arc<Session>) -> Result<bool, Refusal> {
        if session.has_ended() {
            return Ok(true);
        }
        if !self.shares_sessions() || !self.records().session_ended(session.token).await? {
            return Ok(false);
        }
        self.sessions.withdraw(session);
        let dropped = session.end();
        info!(client = %session.id, dropped_uploads = dropped, "session ended on another instance (a padding failure): ended here too");
        Ok(true)
    }

    /// Notes that `id` registered from `ip`: its 1026 may come on another connection.
    pub(super) async fn note_registration(&self, id: ClientId, ip: IpAddr) -> Result<(), Refusal> {
        self.sessions.note_registration(id, ip);
        if self.shares_sessions() {
            self.records().note_registration(id, ip).await?;
        }
        Ok(())
    }

    /// Whether `id` registered from `ip` within the window, on any instance.
    pub(super) async fn registered_recently(
        &self,
        id: ClientId,
        ip: IpAddr,
    ) -> Result<bool, Refusal> {
        if self.sessions.registered_recently(id, ip) {
            return Ok(true);
        }
        if !self.shares_sessions() {
            return Ok(false);
        }
        let after = unix_ms().saturating_sub(millis(self.config.session_window));
        Ok(self.records().registered_since(id, ip, after).await?)
    }

    /// Keeps an upload that arrived on `session` for its verdict under `file_name`:
    /// handed over to the records when it came on a borrowed session and its bytes are
    /// in the object store, else in the session. False when the session ended meanwhile.
    pub(super) async fn keep_pending(
        &self,
        session: &Session,
        borrowed: bool,
        file_name: String,
        pending: Pending,
    ) -> Result<bool, Refusal> {
        if !(borrowed && self.hands_over_uploads()) {
            return Ok(session.put_pending(file_name, pending));
        }
        let Pending { upload, stored_name, size, cksum, quota, .. } = pending;
        let Some(staged) = upload.into_s3() else {
            return Err(Refusal::Internal("a borrowed upload outside the object store".into()));
        };
        let lifetime = super::borrowed_upload_lifetime(&self.config);
        // Beyond the point `take_pending` stops taking it by as much again.
        let expires = unix_secs_in(lifetime + 2 * STAGED_MARGIN + STAGED_RETRY);
        let location = staged.hand_over(expires).await.map_err(|source| Refusal::Storage {
            what: "could not keep the upload for its verdict".into(),
            source,
        })?;
        drop(quota);
        let (id, token) = (session.id, session.token);
        let kept = SharedPending {
            token,
            id,
            file_name,
            stored_name,
            location: location.clone(),
            size,
            cksum,
            arrived: unix_ms(),
        };
        if self.records().put_pending(kept, MAX_PENDING_UPLOADS).await? {
            return Ok(true);
        }
        // Not kept: delete it now rather than when its staged record expires.
        if let Blobs::S3(s3) = &self.storage
            && let Ok(staged) = s3.adopt(id, &location)
        {
            drop(staged);
        }
        if session.has_ended() {
            return Ok(false);
        }
        Err(Refusal::Quota(format!(
            "client {id} already has {MAX_PENDING_UPLOADS} uploads waiting for a verdict, \
             or its session ended on another instance"
        )))
    }

    /// Takes the upload `file_name` waiting on `session`, from the session or, when
    /// uploads are handed over, from the records.
    pub(super) async fn take_pending(
        &self,
        session: &Session,
        file_name: &str,
    ) -> Result<Option<Pending>, Refusal> {
        if let Some(pending) = session.take_pending(file_name) {
            return Ok(Some(pending));
        }
        let Blobs::S3(s3) = &self.storage else { return Ok(None) };
        if !self.hands_over_uploads() {
            return Ok(None);
        }
        let lifetime = super::borrowed_upload_lifetime(&self.config);
        let times = PendingTimes {
            arrived_after: unix_ms().saturating_sub(millis(lifetime)),
            // Past any lease a cleaner may hold on it now, even by a clock that is ahead.
            safe_until: unix_secs_in(STAGED_RETRY + STAGED_MARGIN),
            held_until: unix_secs_in(COMMIT_HOLD),
        };
        let taken = self.records().take_pending(session.token, file_name.into(), times).await?;
        let Some(taken) = taken.filter(|t| t.id == session.id) else { return Ok(None) };
        let upload = s3.adopt(session.id, &taken.location).map_err(|source| Refusal::Storage {
            what: format!("the upload of {file_name} handed over by another instance"),
            source,
        })?;
        Ok(Some(Pending {
            upload: crate::store::AnyStaged::S3(upload),
            conn: 0,
            stored_name: taken.stored_name,
            size: taken.size,
            cksum: taken.cksum,
            arrived: Instant::now(),
            quota: None,
        }))
    }

    /// How much longer padding failures hold key exchanges and uploads of `id` from `ip`
    /// back, on this instance or (shared) on any; see [`super::backoff`].
    pub(super) async fn blocked_for(
        &self,
        id: ClientId,
        ip: IpAddr,
        usual: Option<IpAddr>,
    ) -> Result<Option<Duration>, Refusal> {
        let local = self.backoff().blocked_for(id, ip, usual, Instant::now());
        if local.is_some() || !self.records().shares_sessions() {
            return Ok(local);
        }
        let now = unix_ms();
        let keys = super::backoff::key_names(id, ip, usual);
        let until = self.records().blocked_until(keys, now).await?;
        Ok(until.map(|until| Duration::from_millis(until.saturating_sub(now) as u64)))
    }

    /// Counts a padding failure of `id` from `ip`, here and (shared) for every instance;
    /// how long key exchanges are now held back.
    pub(super) async fn padding_failure(
        &self,
        id: ClientId,
        ip: IpAddr,
        usual: Option<IpAddr>,
    ) -> Duration {
        let local = self.backoff().failure(id, ip, usual, Instant::now());
        if !self.records().shares_sessions() {
            return local;
        }
        let (now, keys) = (unix_ms(), super::backoff::key_names(id, ip, usual));
        match self.records().note_padding_failure(keys, now).await {
            Ok(until) => local.max(Duration::from_millis(until.saturating_sub(now) as u64)),
            Err(e) => {
                // This instance holds it back still; the others do not know of it.
                warn!("could not record the padding failure for the other instances: {e}");
                local
            }
        }
    }

    /// Takes one of the registrations of `ip`'s network (both protocols'), on this
    /// instance and (shared) over all of them; how long until one is there if none is.
    pub(super) async fn take_registration(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        {
            let mut limit = self.registrations();
            if !limit.allow(ip, now) {
                return Err(limit.wait(ip, now));
            }
        }
        let per_minute = self.config.registrations_per_minute;
        if per_minute == 0 || !self.records().shares_sessions() {
            return Ok(());
        }
        let net = super::ratelimit::network_of(ip).to_string();
        let burst = per_minute.saturating_mul(2);
        match self.records().take_registration(net, unix_ms(), per_minute, burst).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(wait),
            Err(e) => {
                // This instance's own limit still holds; registering records anyway.
                warn!("could not take a registration from the shared limit: {e}");
                Ok(())
            }
        }
    }

    /// The janitor's round for the shared sessions: forgets what has had its time.
    pub(super) async fn expire_shared_sessions(&self) {
        if !self.records().shares_sessions() {
            return;
        }
        let now = unix_ms();
        let used_after = now.saturating_sub(millis(self.config.session_window));
        let arrived_after =
            now.saturating_sub(millis(super::borrowed_upload_lifetime(&self.config)));
        match self.records().expire_sessions(used_after, arrived_after).await {
            Ok((0, 0)) => {}
            Ok((sessions, uploads)) => {
                info!(sessions, uploads, "forgot shared sessions and uploads past their time")
            }
            Err(e) => warn!("could not forget expired shared sessions: {e}"),
        }
    }
}
