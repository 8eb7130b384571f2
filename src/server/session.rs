//! Sessions: what a completed key exchange (1026 or 1027) grants, and to whom.
//!
//! A client id travels in clear, so it grants nothing by itself. A session is created by a
//! key exchange and belongs to the connection that made it. Clients that open a new
//! connection for every request are served through the registry here: the latest session
//! of a client id from the same IP address, for a short window after its last use. With
//! `--strict-sessions` the registry is off and only the owning connection is served.

use crate::crypto::AesKey;
use crate::protocol::{ClientId, Version};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most uploads one client may have arriving or waiting for a verdict at once, over all
/// its sessions and connections. A client sends its files one after the other; a stranger
/// that borrows a session must not fill the disk with files nobody will confirm.
pub const MAX_PENDING_UPLOADS: usize = 8;
/// Most encrypted bytes one client may have arriving or waiting, in largest files:
/// `MAX_PENDING_BYTES_IN_FILES * max file size`.
pub const MAX_PENDING_BYTES_IN_FILES: u64 = 2;

#[derive(Debug, Default)]
struct Usage {
    uploads: usize,
    bytes: u64,
    /// What the client's open uploads count against its quota (`db quota`).
    held: Held,
}

/// What a client's open uploads count against its quota: the declared sizes (an upload
/// of unknown size counts what it received when it is checked) and how many of them
/// store a new path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Declared bytes.
    pub bytes: u64,
    /// Uploads of paths that hold no file yet.
    pub new_files: u64,
}

type UsageMap = Arc<Mutex<HashMap<ClientId, Usage>>>;

/// What each client has arriving or waiting for a verdict, against the limits above.
#[derive(Debug, Clone)]
pub struct Quotas {
    max_uploads: usize,
    max_bytes: u64,
    usage: UsageMap,
}

/// One upload's share of its client's quota, given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    usage: UsageMap,
    id: ClientId,
    bytes: u64,
    held: Held,
}

impl Quotas {
    /// At most `max_uploads` uploads and `max_bytes` bytes per client.
    pub fn new(max_uploads: usize, max_bytes: u64) -> Self {
        Quotas { max_uploads, max_bytes, usage: Arc::default() }
    }

    /// Reserves room for an upload of `bytes` for `id`, or says why there is none.
    pub fn reserve(&self, id: ClientId, bytes: u64) -> Result<Reservation, String> {
        self.reserve_held(id, bytes, Held::default(), |_| Ok::<(), std::convert::Infallible>(()))
            .map_err(|e| match e {
                Refused::Busy(why) => why,
                Refused::Check(never) => match never {},
            })
    }

    /// As [`reserve`](Self::reserve), and `held` counted against the client's quota:
    /// `check` sees what its other open uploads hold and may refuse, under the same lock
    /// as the reservation, so that two uploads of one client cannot both pass a check
    /// that only one of them fits.
    pub fn reserve_held<E>(
        &self,
        id: ClientId,
        bytes: u64,
        held: Held,
        check: impl FnOnce(Held) -> Result<(), E>,
    ) -> Result<Reservation, Refused<E>> {
        let mut usage = lock(&self.usage);
        let used = usage.entry(id).or_default();
        if used.uploads >= self.max_uploads {
            return Err(Refused::Busy(format!(
                "client {id} already has {} uploads waiting",
                used.uploads
            )));
        }
        if used.bytes.saturating_add(bytes) > self.max_bytes {
            return Err(Refused::Busy(format!(
                "client {id} already has {} bytes waiting; {bytes} more would pass {}",
                used.bytes, self.max_bytes
            )));
        }
        check(used.held).map_err(Refused::Check)?;
        used.uploads += 1;
        used.bytes += bytes;
        used.held.bytes += held.bytes;
        used.held.new_files += held.new_files;
        Ok(Reservation { usage: Arc::clone(&self.usage), id, bytes, held })
    }

    /// What the client's open uploads hold against its quota now.
    pub fn held(&self, id: ClientId) -> Held {
        lock(&self.usage).get(&id).map(|u| u.held).unwrap_or_default()
    }
}

/// Why [`Quotas::reserve_held`] made no reservation.
#[derive(Debug)]
pub enum Refused<E> {
    /// The per-client caps of uploads in progress (a temporary refusal).
    Busy(String),
    /// The caller's check refused.
    Check(E),
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut usage = lock(&self.usage);
        if let Some(used) = usage.get_mut(&self.id) {
            used.uploads -= 1;
            used.bytes -= self.bytes;
            used.held.bytes -= self.held.bytes;
            used.held.new_files -= self.held.new_files;
            if used.uploads == 0 {
                usage.remove(&self.id);
            }
        }
    }
}

/// What the server's blob store stages an upload as (see [`crate::store::BlobStore`]).
pub type StagedUpload = <crate::store::Blobs as crate::store::BlobStore>::Staged;

/// An upload that arrived (2103 sent) and waits for the client's verdict.
#[derive(Debug)]
pub struct Pending {
    /// The decrypted content, staged in the blob store; dropping it aborts the upload
    /// (nothing of it is kept).
    pub upload: StagedUpload,
    /// The connection it arrived on.
    pub conn: u64,
    /// The name it will be stored under.
    pub stored_name: String,
    /// Plaintext size.
    pub size: u64,
    /// cksum of the plaintext.
    pub cksum: u32,
    /// When it arrived (2103 sent).
    pub arrived: Instant,
    /// Its share of the client's quota; none for one taken back from the shared records
    /// (the instance it arrived on gave its share back when it handed it over).
    pub quota: Option<Reservation>,
}

/// The result of one key exchange.
#[derive(Debug)]
pub struct Session {
    /// The protocol of the key exchange: it decides how the session's content is
    /// encrypted and checked.
    pub version: Version,
    /// The client.
    pub id: ClientId,
    /// The AES key sent in this exchange.
    pub aes_key: AesKey,
    /// Where the exchange came from.
    pub ip: IpAddr,
    /// The connection that made it.
    pub owner_conn: u64,
    /// The client's usual address when the exchange was made (see [`super::backoff`]).
    pub usual_ip: Option<IpAddr>,
    /// Names the session in the shared records (`serve --db postgres://…`), random.
    pub token: [u8; 16],
    last_used: Mutex<Instant>,
    /// The uploads waiting for a verdict; `None` once the session has ended.
    pending: Mutex<Option<HashMap<String, Pending>>>,
    /// Counts the session in the metrics while it lives.
    live: Option<super::metrics::Live>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// A new session.
    pub fn new(
        version: Version,
        id: ClientId,
        aes_key: AesKey,
        ip: IpAddr,
        owner_conn: u64,
        usual_ip: Option<IpAddr>,
    ) -> Self {
        Session {
            version,
            id,
            aes_key,
            ip,
            owner_conn,
            usual_ip,
            token: crate::crypto::random_bytes(),
            last_used: Mutex::new(Instant::now()),
            pending: Mutex::new(Some(HashMap::new())),
            live: None,
        }
    }

    /// A session another instance (or this one) published in the shared records, for a
    /// connection that borrows it. It belongs to no connection here (`owner_conn` 0: the
    /// numbers start at 1), and what is uploaded on it waits in the shared records.
    pub fn adopted(shared: &crate::store::SharedSession) -> Self {
        let (id, ip) = (shared.id, shared.ip);
        let mut session = Session::new(Version::V3, id, shared.aes_key, ip, 0, shared.usual_ip);
        session.token = shared.token;
        session
    }

    /// The session as the shared records keep it.
    pub fn to_shared(&self) -> crate::store::SharedSession {
        crate::store::SharedSession {
            token: self.token,
            id: self.id,
            ip: self.ip,
            aes_key: self.aes_key,
            usual_ip: self.usual_ip,
        }
    }

    /// The session, counted in the metrics' sessions while it lives.
    pub(crate) fn counted(mut self, live: super::metrics::Live) -> Self {
        self.live = Some(live);
        self
    }

    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }

    /// Keeps an upload for its verdict, replacing (and deleting) an earlier one of the
    /// same name. `false` (and the upload deleted) if the session has ended meanwhile.
    pub fn put_pending(&self, file_name: String, pending: Pending) -> bool {
        match lock(&self.pending).as_mut() {
            Some(waiting) => {
                waiting.insert(file_name, pending);
                true
            }
            None => false,
        }
    }

    /// Takes the upload of this name, if one waits.
    pub fn take_pending(&self, file_name: &str) -> Option<Pending> {
        lock(&self.pending).as_mut()?.remove(file_name)
    }

    /// Whether an upload of this name waits.
    pub fn has_pending(&self, file_name: &str) -> bool {
        lock(&self.pending).as_ref().is_some_and(|p| p.contains_key(file_name))
    }

    /// Whether an upload that arrived on `conn` waits for its verdict.
    pub fn has_pending_of(&self, conn: u64) -> bool {
        lock(&self.pending).as_ref().is_some_and(|p| p.values().any(|p| p.conn == conn))
    }

    /// Deletes the unconfirmed uploads that arrived on `conn`.
    pub fn drop_pending_of(&self, conn: u64) -> usize {
        let mut pending = lock(&self.pending);
        let Some(pending) = pending.as_mut() else { return 0 };
        let before = pending.len();
        pending.retain(|_, p| p.conn != conn);
        before - pending.len()
    }

    /// Takes out the uploads that arrived on other connections than the owner's (borrowed
    /// the session) more than `lifetime` ago.
    fn take_stale_borrowed(&self, lifetime: Duration) -> Vec<Pending> {
        let mut pending = lock(&self.pending);
        let Some(pending) = pending.as_mut() else { return Vec::new() };
        let stale: Vec<String> = pending
            .iter()
            .filter(|(_, p)| p.conn != self.owner_conn && p.arrived.elapsed() > lifetime)
            .map(|(name, _)| name.clone())
            .collect();
        stale.iter().filter_map(|name| pending.remove(name)).collect()
    }

    /// Ends the session: it grants nothing more, and its unconfirmed uploads (from every
    /// connection) are deleted. Returns how many there were.
    pub fn end(&self) -> usize {
        lock(&self.pending).take().map_or(0, |p| p.len())
    }

    /// Whether [`Session::end`] was called.
    pub fn has_ended(&self) -> bool {
        lock(&self.pending).is_none()
    }
}

/// What [`Sessions::expire`] took out of the registry; dropping it deletes the uploads.
#[derive(Debug, Default)]
pub struct Expired {
    /// Sessions no longer in the registry.
    pub sessions: Vec<Arc<Session>>,
    /// Uploads no longer waiting.
    pub uploads: Vec<Pending>,
}

/// The registry of sessions usable from other connections, and of recent registrations.
#[derive(Debug)]
pub struct Sessions {
    window: Duration,
    strict: bool,
    latest: Mutex<HashMap<(ClientId, IpAddr), Arc<Session>>>,
    registrations: Mutex<HashMap<(ClientId, IpAddr), Instant>>,
}

impl Sessions {
    /// A registry with this window; `strict` turns cross-connection use off.
    pub fn new(window: Duration, strict: bool) -> Self {
        Sessions {
            window,
            strict,
            latest: Mutex::new(HashMap::new()),
            registrations: Mutex::new(HashMap::new()),
        }
    }

    /// Makes `session` the latest for its client and address.
    pub fn publish(&self, session: &Arc<Session>) {
        if !self.strict {
            lock(&self.latest).insert((session.id, session.ip), Arc::clone(session));
        }
    }

    /// The latest session of `id` from `ip`, if it was used within the window.
    pub fn find(&self, id: ClientId, ip: IpAddr) -> Option<Arc<Session>> {
        if self.strict {
            return None;
        }
        let mut latest = lock(&self.latest);
        let session = latest.get(&(id, ip))?;
        if session.idle_for() > self.window || session.has_ended() {
            latest.remove(&(id, ip));
            return None;
        }
        session.touch();
        Some(Arc::clone(session))
    }

    /// Takes `session` out of the registry, if it is still there: no other connection may
    /// use it.
    pub fn withdraw(&self, session: &Arc<Session>) {
        let mut latest = lock(&self.latest);
        if latest.get(&(session.id, session.ip)).is_some_and(|s| Arc::ptr_eq(s, session)) {
            latest.remove(&(session.id, session.ip));
        }
    }

    /// Marks that `id` was registered from `ip` (a 1026 may follow on another connection).
    pub fn note_registration(&self, id: ClientId, ip: IpAddr) {
        if !self.strict {
            lock(&self.registrations).insert((id, ip), Instant::now());
        }
    }

    /// Whether `id` was registered from `ip` within the window.
    pub fn registered_recently(&self, id: ClientId, ip: IpAddr) -> bool {
        !self.strict
            && lock(&self.registrations)
                .get(&(id, ip))
                .is_some_and(|at| at.elapsed() <= self.window)
    }

    /// Forgets sessions and registrations idle longer than the window, and uploads made
    /// on a borrowed session (from another connection than its owner's) that have waited
    /// longer than `borrowed_lifetime` for their verdict. Hands back what it took, so that
    /// the caller can delete the files off the async threads: an expired session's
    /// uploads are deleted once no connection uses it.
    pub fn expire(&self, borrowed_lifetime: Duration) -> Expired {
        let window = self.window;
        let mut expired = Expired::default();
        let mut latest = lock(&self.latest);
        latest.retain(|_, s| {
            let keep = s.idle_for() <= window && !s.has_ended();
            if !keep {
                expired.sessions.push(Arc::clone(s));
            }
            keep
        });
        for session in latest.values() {
            expired.uploads.extend(session.take_stale_borrowed(borrowed_lifetime));
        }
        drop(latest);
        // Out of the registry, a session serves only its own connection: what other
        // connections uploaded on it can no longer be confirmed by them.
        for session in &expired.sessions {
            expired.uploads.extend(session.take_stale_borrowed(Duration::ZERO));
        }
        lock(&self.registrations).retain(|_, at| at.elapsed() <= window);
        expired
    }

    /// Forgets everything (shutdown).
    pub fn clear(&self) {
        lock(&self.latest).clear();
        lock(&self.registrations).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_bounds_uploads_and_bytes_per_client_and_is_given_back_on_drop() {
        let quotas = Quotas::new(2, 100);
        let (a, b) = (ClientId([1; 16]), ClientId([2; 16]));
        let first = quotas.reserve(a, 60).unwrap();
        assert!(quotas.reserve(a, 41).is_err(), "bytes");
        let second = quotas.reserve(a, 40).unwrap();
        assert!(quotas.reserve(a, 0).is_err(), "uploads");
        assert!(quotas.reserve(b, 100).is_ok(), "another client has its own");
        drop(first);
        let third = quotas.reserve(a, 60).unwrap();
        drop((second, third));
        assert!(lock(&quotas.usage).is_empty());
    }

    #[test]
    fn what_is_held_against_a_quota_is_seen_by_the_next_check_and_given_back_on_drop() {
        let quotas = Quotas::new(10, u64::MAX);
        let a = ClientId([1; 16]);
        let held = Held { bytes: 60, new_files: 1 };
        let first = quotas.reserve_held(a, 60, held, |open| {
            assert_eq!(open, Held::default());
            Ok::<_, ()>(())
        });
        let first = first.unwrap();
        assert_eq!(quotas.held(a), held);
        // A check that refuses makes no reservation.
        let refused = quotas.reserve_held(a, 50, Held { bytes: 50, new_files: 0 }, |open| {
            if open.bytes + 50 > 100 { Err("full") } else { Ok(()) }
        });
        assert!(matches!(refused, Err(Refused::Check("full"))));
        assert_eq!(quotas.held(a), held);
        assert_eq!(quotas.held(ClientId([2; 16])), Held::default(), "per client");
        drop(first);
        assert_eq!(quotas.held(a), Held::default());
        assert!(lock(&quotas.usage).is_empty());
    }
}
