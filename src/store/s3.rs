//! The object-store blob store (`serve --storage s3://bucket/prefix`, issue 16): files'
//! bytes in an S3-compatible bucket, one object per upload, through the `object_store`
//! crate.
//!
//! How the local store's steps map here:
//!
//! - **Staging.** An upload is written to an object of its own, `<prefix>/<client id
//!   hex>/<32 random hex>`, and that key is its [`StagedBlob::location`]. Its bytes are
//!   gathered into parts of [`PART_SIZE`] and sent as a multipart upload (begun when the
//!   first part is full; a smaller upload is one `PUT` at the end), one part in flight
//!   while the next fills, so an upload holds two parts of memory whatever its size.
//!   [`StagedBlob::finish`] completes it: the object is whole, but no record names it.
//! - **Tracking.** The key (and the multipart upload's id once there is one) is in the
//!   records' staged objects, with a time after which the upload cannot still be under
//!   way. Dropping the staged blob aborts the multipart upload (or deletes the object)
//!   and forgets it; what a crash leaves is aborted by whichever server finds it expired
//!   ([`S3Store::clean_staged`]: at start-up, and by the janitor).
//! - **Commit.** No rename: the object stays where it was written, and the records'
//!   transaction that marks the file verified switches its row to this key and forgets
//!   the staged object (see [`crate::store::Records::finish_commit`]). The copy it
//!   replaced is another object; it becomes the version (its key is the version's path),
//!   so `--keep-versions` keeps it or prunes it, and a pruned one is deleted after the
//!   transaction ([`BlobStore::delete_version`]).
//! - **Reading.** Streamed, a chunk of the response at a time.
//! - **Keeping for resuming.** An upload left unfinished keeps its sent parts
//!   ([`S3Staged::checkpoint`], [`S3Staged::keep`]): its record names the multipart
//!   upload and the parts' ETags, and no cleaner takes a staged object a record names.
//!   [`S3Store::resume_kept`] takes it up on any instance.
//!
//! The trait's methods block; they run the async client on the runtime through its
//! handle, so they must be called from the blocking pool (as the trait says), never from
//! a runtime thread.

use super::blob::{BlobInfo, BlobStore, Chunk, Committed, StagedBlob};
use super::db::{StagedObject, UnfinishedUpload};
use super::records::SharedRecords;
use crate::protocol::ClientId;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// The size of a multipart upload's parts, at least. S3 wants at least 5 MiB for all but
/// the last, and an upload holds two parts in memory (one filling, one being sent), so
/// the smallest size S3 takes keeps each upload to 10 MiB: 16 uploads of 64 MiB at once
/// over 3 instances stay under 128 MiB per instance (bench/scaleout.sh).
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Most parts an upload is planned in: S3 takes at most 10,000, and an upload that sends
/// a little more than it declared still fits.
const MAX_PARTS: u64 = 9_000;

/// The part size for an upload of about `size_hint` bytes: `minimum`, or larger for
/// objects beyond [`MAX_PARTS`] of it (5 MiB parts take 44 GiB), in whole MiB.
fn part_size_for(size_hint: u64, minimum: usize) -> usize {
    if size_hint.div_ceil(MAX_PARTS) <= minimum as u64 {
        return minimum;
    }
    let needed = size_hint.div_ceil(MAX_PARTS).next_multiple_of(1 << 20);
    usize::try_from(needed).unwrap_or(usize::MAX)
}

/// How long past its own time limit a staged object is left alone before another server
/// may take it for a crash's leftover and abort it: room for the servers' clocks to
/// disagree.
pub const STAGED_MARGIN: Duration = Duration::from_secs(5 * 60);

/// When a staged upload that could not be aborted is tried again.
pub const STAGED_RETRY: Duration = Duration::from_secs(60);

/// Whether `storage` (the `--storage` value) names an object store rather than a local
/// directory.
pub fn is_s3_url(storage: &str) -> bool {
    storage.starts_with("s3://")
}

/// An object store, `s3://BUCKET[/PREFIX]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key prefix under which everything is stored (no leading or trailing `/`;
    /// empty for the whole bucket).
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://BUCKET[/PREFIX]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("{url}: not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url}: no bucket (s3://BUCKET/PREFIX)"));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part.is_empty() || part == "." || part == "..")
            && !prefix.is_empty()
        {
            return Err(format!("{url}: the prefix has an empty, `.` or `..` part"));
        }
        Ok(S3Url { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix.as_str() {
            "" => write!(f, "s3://{}", self.bucket),
            prefix => write!(f, "s3://{}/{prefix}", self.bucket),
        }
    }
}

/// What the store needs of an object store: whole objects and multipart uploads whose
/// id it can keep (to abort one after a crash). S3 and `object_store`'s in-memory store
/// (for unit tests) are both.
pub trait Backend: ObjectStore + MultipartStore {}
impl<T: ObjectStore + MultipartStore> Backend for T {}

/// The object-store [`BlobStore`]. Cheap to clone.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    /// The key prefix, with its trailing `/` (empty for the whole bucket).
    prefix: String,
    /// For messages: `s3://bucket/prefix`.
    url: String,
    records: SharedRecords,
    runtime: Handle,
    part_size: usize,
    /// How long any staged upload may take, besides its bytes at the minimum rate.
    staged_base: Duration,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("url", &self.inner.url).finish()
    }
}

/// Why the object store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("object store {url}{at}: {what}: {cause}. {hint}")]
pub struct S3OpenError {
    url: String,
    at: String,
    what: &'static str,
    cause: String,
    hint: &'static str,
}

impl S3OpenError {
    fn new(url: &S3Url, what: &'static str, cause: String, hint: &'static str) -> Self {
        let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
        let at = endpoint.map(|e| format!(" at {e}")).unwrap_or_default();
        S3OpenError { url: url.to_string(), at, what, cause, hint }
    }
}

impl S3Store {
    /// The S3 store `url` names, configured from the usual AWS variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_ALLOW_HTTP`…). Plain `http://` endpoints are refused
    /// unless they are on loopback or `AWS_ALLOW_HTTP=true`. Checks at once that an object
    /// can be written and deleted there, so that a wrong endpoint, bucket or key is found
    /// at start-up rather than at the first upload. `staged_base` is how long any upload
    /// may be under way besides its bytes at [`crate::server::upload::MIN_UPLOAD_RATE`].
    pub async fn open(
        url: &S3Url,
        records: SharedRecords,
        staged_base: Duration,
    ) -> Result<Self, S3OpenError> {
        let s3 = Self::client(url)?;
        let store = S3Store::with_backend(Arc::new(s3), url, records, staged_base);
        store.probe().await.map_err(|e| {
            S3OpenError::new(
                url,
                "cannot write and delete a probe object",
                e.to_string(),
                "Check that the endpoint is reachable (AWS_ENDPOINT_URL; AWS_ALLOW_HTTP=true \
                 for plain http beyond loopback), that the bucket exists, and the credentials \
                 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) may write to it",
            )
        })?;
        Ok(store)
    }

    /// The S3 client for `url`'s bucket, configured from the environment (see
    /// [`S3Store::open`]); nothing is asked of the store yet.
    fn client(url: &S3Url) -> Result<object_store::aws::AmazonS3, S3OpenError> {
        // reqwest is built without a TLS provider of its own: ring, as protocol 4's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let endpoint = std::env::var("AWS_ENDPOINT_URL").ok();
        let options = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120))
            .with_allow_http(endpoint.as_deref().is_some_and(is_loopback_http));
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_client_options(options)
            .with_retry(retry);
        if std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            builder = builder.with_allow_http(true);
        }
        if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
            builder = builder.with_unsigned_payload(unsigned_by_default(endpoint.as_deref()));
        }
        builder.build().map_err(|e| {
            S3OpenError::new(
                url,
                "configuration",
                e.to_string(),
                "Set AWS_REGION (and AWS_ENDPOINT_URL for a store other than AWS S3)",
            )
        })
    }

    /// Every object under `url`'s prefix, by key (relative to the prefix) with its size:
    /// what the operator's tools check records against. Only lists.
    pub async fn object_sizes(
        url: &S3Url,
    ) -> Result<std::collections::HashMap<String, u64>, S3OpenError> {
        let s3 = Self::client(url)?;
        let prefix = (!url.prefix.is_empty()).then(|| Path::from(url.prefix.as_str()));
        let mut listing = s3.list(prefix.as_ref());
        let skip = if url.prefix.is_empty() { 0 } else { url.prefix.len() + 1 };
        let mut sizes = std::collections::HashMap::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| {
                S3OpenError::new(
                    url,
                    "cannot list the objects",
                    e.to_string(),
                    "Check the endpoint (AWS_ENDPOINT_URL), the bucket and that the \
                     credentials may list it",
                )
            })?;
            let key = meta.location.to_string();
            sizes.insert(key.get(skip..).unwrap_or_default().to_owned(), meta.size);
        }
        Ok(sizes)
    }

    /// A store over any backend (the in-memory one in tests). Needs a tokio runtime.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        url: &S3Url,
        records: SharedRecords,
        staged_base: Duration,
    ) -> Self {
        let prefix = match url.prefix.as_str() {
            "" => String::new(),
            prefix => format!("{prefix}/"),
        };
        let inner = Inner {
            backend,
            prefix,
            url: url.to_string(),
            records,
            runtime: Handle::current(),
            part_size: PART_SIZE,
            staged_base,
        };
        S3Store { inner: Arc::new(inner) }
    }

    /// The same store with parts of `part_size` bytes (tests make small ones).
    #[doc(hidden)]
    pub fn with_part_size(self, part_size: usize) -> Self {
        let Inner { backend, prefix, url, records, runtime, staged_base, .. } =
            Arc::try_unwrap(self.inner).unwrap_or_else(|_| panic!("a store not yet shared"));
        let inner = Inner {
            backend,
            prefix,
            url,
            records,
            runtime,
            part_size: part_size.max(1),
            staged_base,
        };
        S3Store { inner: Arc::new(inner) }
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Writes and deletes a small object under the prefix.
    async fn probe(&self) -> object_store::Result<()> {
        let hex = random_hex();
        let path = self.object(&format!(".securexfer-probe-{hex}"));
        let backend = &self.inner.backend;
        backend.put(&path, PutPayload::from_static(b"securexfer start-up probe")).await?;
        backend.delete(&path).await
    }

    /// The object at `key` (relative to the prefix).
    fn object(&self, key: &str) -> Path {
        Path::from(format!("{}{key}", self.inner.prefix))
    }

    /// Runs `future` on the runtime from a blocking thread.
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.inner.runtime.block_on(future)
    }

    /// Aborts the staged uploads the records hold that have passed their time, or every
    /// one when `all` (the records are this server's alone and it is starting: nothing
    /// can still be under way); how many. Async: start-up and the janitor call it.
    pub async fn clean_staged(&self, all: bool) -> io::Result<usize> {
        let now = if all { i64::MAX } else { unix_now() };
        // Held until tried again: if this instance dies before forgetting a row, the next
        // claim after the lease takes it up, so no object is left orphaned.
        let lease_until = unix_now().saturating_add(STAGED_RETRY.as_secs() as i64);
        let records = &self.inner.records;
        let claimed =
            records.claim_expired_staged(now, lease_until).await.map_err(io::Error::other)?;
        let mut cleaned = 0;
        for staged in claimed {
            match self.clean_one(&staged).await {
                Ok(()) => {
                    records.forget_staged(staged.key).await.map_err(io::Error::other)?;
                    cleaned += 1;
                }
                // Still on record under the lease, to be tried again once the store answers.
                Err(e) => tracing::warn!(key = %staged.key, "could not abort a staged upload: {e}"),
            }
        }
        Ok(cleaned)
    }

    /// Aborts one staged upload's multipart upload and deletes its object.
    async fn clean_one(&self, staged: &StagedObject) -> io::Result<()> {
        let (backend, path) = (&self.inner.backend, self.object(&staged.key));
        if let Some(id) = &staged.upload_id {
            match backend.abort_multipart(&path, id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                // Some stores answer an upload already completed so: the object is there.
                Err(_) if backend.head(&path).await.is_ok() => {}
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        // It may have been completed (or be a small upload's one PUT).
        ignore_not_found(backend.delete(&path).await)
    }

    /// The plaintext size and cksum of the object at `key`, or `None` when there is none
    /// (crash reconciliation reads an interrupted commit's object back).
    pub async fn digest(&self, key: &str) -> io::Result<Option<(u64, u32)>> {
        let got = match self.inner.backend.get(&self.object(key)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        let mut stream = got.into_stream();
        let mut cksum = crate::crypto::Cksum::new();
        while let Some(bytes) = stream.next().await {
            cksum.update(&bytes.map_err(io::Error::other)?);
        }
        Ok(Some((cksum.len(), cksum.finish())))
    }

    /// The size, cksum and BLAKE3 of the object at `key`, read back whole, or `None` when
    /// there is none: `db migrate` checks every object it wrote against its record so.
    pub async fn hashes(&self, key: &str) -> io::Result<Option<ObjectHashes>> {
        let got = match self.inner.backend.get(&self.object(key)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(io::Error::other(e)),
        };
        let mut stream = got.into_stream();
        let (mut cksum, mut blake3) = (crate::crypto::Cksum::new(), blake3::Hasher::new());
        while let Some(bytes) = stream.next().await {
            let bytes = bytes.map_err(io::Error::other)?;
            cksum.update(&bytes);
            blake3.update(&bytes);
        }
        let size = cksum.len();
        Ok(Some(ObjectHashes {
            size,
            cksum: cksum.finish(),
            blake3: *blake3.finalize().as_bytes(),
        }))
    }

    /// Writes what `read` yields to a fresh object of `owner`'s and returns its key with
    /// the hashes of the bytes sent. The object is tracked as staged until `expires_at`
    /// (seconds since 1970): the caller's records must name it before then (forgetting the
    /// staged row in the same transaction), or whichever server finds it expired deletes
    /// it. A failure aborts it. Async, one part in memory at a time (`db migrate`); the
    /// parts are sized for about `size_hint` bytes, as an upload's are.
    pub async fn import(
        &self,
        owner: ClientId,
        mut read: impl tokio::io::AsyncRead + Unpin,
        size_hint: u64,
        expires_at: i64,
    ) -> io::Result<(String, ObjectHashes)> {
        let key = Self::new_key(owner);
        let records = &self.inner.records;
        let staged = StagedObject { key: key.clone(), upload_id: None };
        records.track_staged(staged, expires_at).await.map_err(io::Error::other)?;
        let mut upload_id = None;
        let part_size = part_size_for(size_hint, self.inner.part_size);
        let sent = self.import_parts(&key, &mut read, part_size, expires_at, &mut upload_id).await;
        if sent.is_err() {
            let staged = StagedObject { key: key.clone(), upload_id };
            if self.clean_one(&staged).await.is_ok() {
                let _ = records.forget_staged(key.clone()).await;
            }
        }
        Ok((key, sent?))
    }

    async fn import_parts(
        &self,
        key: &str,
        read: &mut (impl tokio::io::AsyncRead + Unpin),
        part_size: usize,
        expires_at: i64,
        upload_id: &mut Option<String>,
    ) -> io::Result<ObjectHashes> {
        use tokio::io::AsyncReadExt;
        let (backend, path) = (&self.inner.backend, self.object(key));
        let (mut cksum, mut blake3) = (crate::crypto::Cksum::new(), blake3::Hasher::new());
        let mut parts = Vec::new();
        loop {
            let mut buf = BytesMut::with_capacity(part_size);
            while buf.len() < part_size {
                if read.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            let (full, part) = (buf.len() == part_size, buf.freeze());
            cksum.update(&part);
            blake3.update(&part);
            if upload_id.is_none() && !full {
                backend.put(&path, PutPayload::from(part)).await.map_err(io::Error::other)?;
                break;
            }
            let id = match upload_id {
                Some(id) => id.clone(),
                None => {
                    let id = backend.create_multipart(&path).await.map_err(io::Error::other)?;
                    *upload_id = Some(id.clone());
                    let staged = StagedObject { key: key.to_owned(), upload_id: Some(id.clone()) };
                    let records = &self.inner.records;
                    records.track_staged(staged, expires_at).await.map_err(io::Error::other)?;
                    id
                }
            };
            if !part.is_empty() {
                let index = parts.len();
                let data = PutPayload::from(part);
                parts.push(
                    backend.put_part(&path, &id, index, data).await.map_err(io::Error::other)?,
                );
            }
            if !full {
                backend.complete_multipart(&path, &id, parts).await.map_err(io::Error::other)?;
                break;
            }
        }
        let size = cksum.len();
        Ok(ObjectHashes { size, cksum: cksum.finish(), blake3: *blake3.finalize().as_bytes() })
    }

    /// Deletes `owner`'s object at `key` (none there is no error).
    pub async fn delete_object(&self, owner: ClientId, key: &str) -> io::Result<()> {
        Self::check_owner(owner, key)?;
        ignore_not_found(self.inner.backend.delete(&self.object(key)).await)
    }

    /// Whether `key` has the form of `owner`'s objects' keys.
    pub fn is_key_of(owner: ClientId, key: &str) -> bool {
        Self::check_owner(owner, key).is_ok()
    }

    /// The key of the verified copy stored as `name` of `owner`, from the records.
    fn current_key(&self, owner: ClientId, name: &str) -> io::Result<String> {
        let records = &self.inner.records;
        self.block_on(records.stored_copy(owner, name.to_owned()))
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no stored {name}")))
    }

    /// A fresh key for an upload of `owner`.
    fn new_key(owner: ClientId) -> String {
        format!("{}/{}", owner.to_hex(), random_hex())
    }

    /// The object `key` of `owner`, for reading: a stored copy by the key its record gives
    /// (`GET` reads the very object it found recorded, not whatever the name names by
    /// the time it opens it).
    pub fn get_key(&self, owner: ClientId, key: &str) -> io::Result<Box<dyn io::Read + Send>> {
        Self::check_owner(owner, key)?;
        let got = self.block_on(self.inner.backend.get(&self.object(key)));
        let stream = got.map_err(|e| match e {
            object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
            e => io::Error::other(e),
        })?;
        let stream = stream.into_stream();
        Ok(Box::new(ObjectReader { store: self.clone(), stream, current: Bytes::new() }))
    }

    /// `owner`'s verified files by stored name, from the records: a protocol-4 file name
    /// is its stored path, protocol 3's is stored as its last component.
    fn list_recorded(&self, owner: ClientId) -> io::Result<Vec<BlobInfo>> {
        let files = self.block_on(self.inner.records.files()).map_err(io::Error::other)?;
        let mut blobs: Vec<BlobInfo> = files
            .into_iter()
            .filter(|f| f.client_id == owner && f.verified)
            .filter_map(|f| {
                let name = match f.protocol {
                    4 => f.file_name.clone(),
                    _ => crate::protocol::storage_name(&f.file_name).ok()?.to_owned(),
                };
                Some(BlobInfo { name, size: f.size.unwrap_or(0) })
            })
            .collect();
        blobs.sort_by(|a, b| a.name.cmp(&b.name));
        blobs.dedup_by(|a, b| a.name == b.name);
        Ok(blobs)
    }

    /// Fails unless `key` is one of `owner`'s objects.
    fn check_owner(owner: ClientId, key: &str) -> io::Result<()> {
        let rest = key.strip_prefix(&owner.to_hex()).and_then(|r| r.strip_prefix('/'));
        match rest {
            Some(name) if !name.is_empty() && !name.contains('/') => Ok(()),
            _ => Err(io::Error::other(format!("{key} is not an object of {owner}"))),
        }
    }
}

/// Whether requests leave their payload unsigned (`UNSIGNED-PAYLOAD` in place of the body's
/// SHA-256) when `AWS_UNSIGNED_PAYLOAD` does not say: over https, as AWS's own SDKs sign
/// S3 requests, since TLS already protects the body and the SHA-256 of every part was
/// the largest cost of an instance's CPU per byte (bench/README.md, "Where the time
/// goes"); over plain http the signature is the body's only protection, so it stays.
fn unsigned_by_default(endpoint: Option<&str>) -> bool {
    endpoint.is_none_or(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
}

/// An object's plaintext size, cksum and BLAKE3 ([`S3Store::hashes`], [`S3Store::import`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectHashes {
    /// Bytes.
    pub size: u64,
    /// Its cksum (POSIX `cksum`).
    pub cksum: u32,
    /// Its BLAKE3.
    pub blake3: [u8; 32],
}

/// Whether `endpoint` is plain http to a loopback address (a test or a sidecar), which is
/// allowed without `AWS_ALLOW_HTTP`.
fn is_loopback_http(endpoint: &str) -> bool {
    let Some(rest) = endpoint.strip_prefix("http://") else { return false };
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn ignore_not_found(result: object_store::Result<()>) -> io::Result<()> {
    match result {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(io::Error::other(e)),
    }
}

fn random_hex() -> String {
    let bytes: [u8; 16] = crate::crypto::random_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

use crate::clock::unix_secs as unix_now;

impl S3Store {
    /// Until when an upload of `bytes` may be under way, staged (seconds since 1970).
    fn staged_until(&self, bytes: u64) -> i64 {
        let rate = crate::server::upload::MIN_UPLOAD_RATE;
        let lifetime = self.inner.staged_base + Duration::from_secs(bytes / rate) + STAGED_MARGIN;
        unix_now().saturating_add(lifetime.as_secs() as i64)
    }

    /// Holds a kept upload's staged object for as long as resuming it may take (copying
    /// its `durable` bytes), before its record is taken: from then on only the staged row
    /// spares it from the cleaner (see [`crate::store::Records::claim_expired_staged`]).
    pub async fn hold_kept(&self, kept: &UnfinishedUpload) -> io::Result<()> {
        Self::check_owner(kept.client_id, &kept.location)?;
        let staged = StagedObject { key: kept.location.clone(), upload_id: kept.upload_id.clone() };
        let until = self.staged_until(kept.durable);
        self.inner.records.track_staged(staged, until).await.map_err(io::Error::other)
    }

    /// Continues a kept upload (its record already taken, [`S3Store::hold_kept`] done):
    /// its recorded parts are completed into its object, which is read back with both
    /// hashes and, unless it is the whole upload, written into a fresh upload of its
    /// size that goes on from there; the old object is then deleted. The caller checks
    /// the BLAKE3 against the record. Blocking, like [`StagedBlob`]'s methods.
    ///
    /// Why a copy: S3 cannot read an unfinished multipart upload's parts (so a prefix's
    /// hashes cannot be rebuilt without completing it), nor extend a completed object.
    /// The server re-sends the prefix to the store once; the client does not re-send it.
    pub fn resume_kept(
        &self,
        kept: &UnfinishedUpload,
    ) -> io::Result<(S3Staged, blake3::Hasher, crate::crypto::Cksum)> {
        let (owner, key) = (kept.client_id, kept.location.as_str());
        Self::check_owner(owner, key)?;
        let resumed = self.copy_kept(kept);
        if resumed.as_ref().is_ok_and(|(staged, ..)| staged.key == key) {
            // A whole object, adopted as it is.
            return resumed;
        }
        let old = StagedObject { key: key.to_owned(), upload_id: kept.upload_id.clone() };
        match self.block_on(self.clean_one(&old)) {
            Ok(()) => {
                let _ = self.block_on(self.inner.records.forget_staged(old.key));
            }
            Err(e) => tracing::warn!(key, "a resumed upload's old object stays to expire: {e}"),
        }
        resumed
    }

    fn copy_kept(
        &self,
        kept: &UnfinishedUpload,
    ) -> io::Result<(S3Staged, blake3::Hasher, crate::crypto::Cksum)> {
        let (owner, key) = (kept.client_id, kept.location.as_str());
        let (backend, path) = (&self.inner.backend, self.object(key));
        if let Some(id) = &kept.upload_id {
            let parts = kept.parts.iter().map(|p| PartId { content_id: p.clone() }).collect();
            let done = self.block_on(backend.complete_multipart(&path, id, parts));
            done.map_err(|e| io::Error::other(format!("its parts cannot be completed: {e}")))?;
        }
        let got = self.block_on(backend.get(&path)).map_err(io::Error::other)?;
        let (mut hasher, mut cksum) = (blake3::Hasher::new(), crate::crypto::Cksum::new());
        let whole = kept.upload_id.is_none();
        let mut staged =
            if whole { self.adopt(owner, key)? } else { self.stage(owner, kept.size, false)? };
        let mut stream = got.into_stream();
        while let Some(bytes) = self.block_on(stream.next()) {
            let bytes = bytes.map_err(io::Error::other)?;
            hasher.update(&bytes);
            cksum.update(&bytes);
            if !whole {
                staged.write_bytes(&bytes)?;
            }
        }
        if cksum.len() != kept.durable {
            if whole {
                // Not ours to delete by dropping: the caller's cleanup is.
                staged.state = State::Kept;
            }
            return Err(io::Error::other(format!(
                "its object holds {} bytes, not the {} recorded",
                cksum.len(),
                kept.durable
            )));
        }
        Ok((staged, hasher, cksum))
    }

    /// Deletes a kept upload whose record is gone (replaced, expired or dropped): its
    /// multipart upload aborted or its object deleted, and its staged row forgotten.
    pub async fn abandon_kept(&self, kept: &UnfinishedUpload) -> io::Result<()> {
        Self::check_owner(kept.client_id, &kept.location)?;
        let staged = StagedObject { key: kept.location.clone(), upload_id: kept.upload_id.clone() };
        self.clean_one(&staged).await?;
        self.inner.records.forget_staged(staged.key).await.map_err(io::Error::other)
    }

    /// Takes back a finished upload of `owner`'s that an instance handed over
    /// ([`S3Staged::hand_over`]): committing it records its object, dropping it deletes
    /// the object, as with any staged upload.
    pub fn adopt(&self, owner: ClientId, key: &str) -> io::Result<S3Staged> {
        Self::check_owner(owner, key)?;
        Ok(S3Staged {
            store: self.clone(),
            path: self.object(key),
            key: key.to_owned(),
            owner,
            expires_at: 0,
            size_hint: 0,
            upload_id: None,
            buf: BytesMut::new(),
            parts: Vec::new(),
            in_flight: None,
            state: State::Finished,
        })
    }
}

impl BlobStore for S3Store {
    type Staged = S3Staged;

    /// Records the new key as staged (the multipart upload begins with the first full
    /// part). `large` changes nothing here: every upload streams the same way.
    fn stage(&self, owner: ClientId, size_hint: u64, _large: bool) -> io::Result<S3Staged> {
        let key = Self::new_key(owner);
        let expires_at = self.staged_until(size_hint);
        let staged = StagedObject { key: key.clone(), upload_id: None };
        self.block_on(self.inner.records.track_staged(staged, expires_at))
            .map_err(io::Error::other)?;
        Ok(S3Staged {
            store: self.clone(),
            path: self.object(&key),
            key,
            owner,
            expires_at,
            size_hint,
            upload_id: None,
            buf: BytesMut::new(),
            parts: Vec::new(),
            in_flight: None,
            state: State::Writing,
        })
    }

    /// The object is already whole (`finish`); the records' transaction is the switch.
    /// `archive` is the replaced copy's own key (see the module doc), so nothing moves.
    fn commit(
        &self,
        mut staged: S3Staged,
        owner: ClientId,
        _name: &str,
        _archive: Option<&str>,
    ) -> io::Result<Committed> {
        if staged.owner != owner {
            return Err(io::Error::other("the upload is not the client's"));
        }
        staged.finish()?;
        staged.state = State::Committed;
        Ok(Committed { path_name: staged.key.clone(), replaced: None })
    }

    fn get(&self, owner: ClientId, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        let key = self.current_key(owner, name)?;
        self.get_key(owner, &key)
    }

    /// From the records (an object's key says nothing of its name): `owner`'s verified
    /// files, by stored name.
    fn list(&self, owner: ClientId) -> io::Result<Vec<BlobInfo>> {
        self.list_recorded(owner)
    }

    /// Deletes the object the records name for `name`: call it before the records forget
    /// the file, since only they know which object that is.
    fn delete(&self, owner: ClientId, name: &str) -> io::Result<()> {
        let key = self.current_key(owner, name)?;
        ignore_not_found(self.block_on(self.inner.backend.delete(&self.object(&key))))
    }

    /// `version` is the replaced object's own key.
    fn delete_version(&self, owner: ClientId, version: &str) -> io::Result<()> {
        Self::check_owner(owner, version)?;
        ignore_not_found(self.block_on(self.inner.backend.delete(&self.object(version))))
    }

    /// Not a key (a stored file's key is whichever object the records name): the name
    /// records give an upload that was never stored (a given-up one).
    fn path_name(&self, owner: ClientId, name: &str) -> String {
        format!("{}/{name}", owner.to_hex())
    }

    /// A fresh key of `owner`'s. (A commit keeps the replaced object under its own key,
    /// so the server does not ask for one.)
    fn new_version_name(&self, owner: ClientId) -> String {
        Self::new_key(owner)
    }

    /// An object store has no free space to speak of.
    fn available_bytes(&self) -> Option<u64> {
        None
    }
}

/// Where a staged upload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Writing,
    /// The object is whole (completed or put), not yet recorded.
    Finished,
    /// A commit took it: the records own it now.
    Committed,
    /// A write failed: nothing more can be stored.
    Failed,
    /// Kept for resuming ([`S3Staged::keep`]): its record owns it now.
    Kept,
}

/// An upload being written to its object, the object store's [`StagedBlob`]. Dropping it
/// before a commit aborts the multipart upload or deletes the object, and forgets it.
pub struct S3Staged {
    store: S3Store,
    key: String,
    path: Path,
    owner: ClientId,
    expires_at: i64,
    /// About how many bytes are coming (a small upload's buffer is no larger).
    size_hint: u64,
    upload_id: Option<String>,
    /// The part being filled.
    buf: BytesMut,
    /// The parts sent, in order.
    parts: Vec<PartId>,
    /// The part being sent.
    in_flight: Option<JoinHandle<object_store::Result<PartId>>>,
    state: State,
}

impl std::fmt::Debug for S3Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Staged").field("key", &self.key).field("state", &self.state).finish()
    }
}

impl S3Staged {
    /// Lets go of a finished upload without aborting it: its object stays, staged under
    /// its key until `expires_at` (seconds since 1970), for whichever instance takes it
    /// back with [`S3Store::adopt`] to commit it, or else for the cleaner. The key.
    pub async fn hand_over(mut self, expires_at: i64) -> io::Result<String> {
        if self.state != State::Finished {
            return Err(io::Error::other("only a finished upload can be handed over"));
        }
        let staged = StagedObject { key: self.key.clone(), upload_id: None };
        let records = &self.store.inner.records;
        records.track_staged(staged, expires_at).await.map_err(io::Error::other)?;
        self.state = State::Committed;
        Ok(std::mem::take(&mut self.key))
    }

    /// Waits for the part in flight, if any, and keeps its id.
    fn wait_in_flight(&mut self) -> io::Result<()> {
        if let Some(sending) = self.in_flight.take() {
            let part = self.store.block_on(sending).map_err(io::Error::other)?;
            self.parts.push(part.map_err(io::Error::other)?);
        }
        Ok(())
    }

    /// Begins the multipart upload, and records its id with the staged key.
    fn begin_multipart(&mut self) -> io::Result<String> {
        let inner = &self.store.inner;
        let id = self.store.block_on(inner.backend.create_multipart(&self.path));
        let id = id.map_err(io::Error::other)?;
        let staged = StagedObject { key: self.key.clone(), upload_id: Some(id.clone()) };
        let tracked = self.store.block_on(inner.records.track_staged(staged, self.expires_at));
        if let Err(e) = tracked {
            let _ = self.store.block_on(inner.backend.abort_multipart(&self.path, &id));
            return Err(io::Error::other(e));
        }
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Sends the part filled so far, once the one before it is sent.
    fn send_part(&mut self) -> io::Result<()> {
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => self.begin_multipart()?,
        };
        self.wait_in_flight()?;
        let data = PutPayload::from(std::mem::take(&mut self.buf).freeze());
        let (backend, path, index) =
            (Arc::clone(&self.store.inner.backend), self.path.clone(), self.parts.len());
        let sending = async move { backend.put_part(&path, &id, index, data).await };
        self.in_flight = Some(self.store.inner.runtime.spawn(sending));
        Ok(())
    }

    /// Makes the object whole: the last part and the completion, or one `PUT`.
    fn complete(&mut self) -> io::Result<()> {
        let backend = Arc::clone(&self.store.inner.backend);
        if self.upload_id.is_none() {
            let data = PutPayload::from(std::mem::take(&mut self.buf).freeze());
            self.store.block_on(backend.put(&self.path, data)).map_err(io::Error::other)?;
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        self.wait_in_flight()?;
        let id = self.upload_id.clone().expect("a multipart upload");
        let parts = std::mem::take(&mut self.parts);
        let done = self.store.block_on(backend.complete_multipart(&self.path, &id, parts));
        done.map_err(io::Error::other)?;
        Ok(())
    }

    /// The size of its parts: a kept upload's durable length is always a multiple.
    pub fn part_size(&self) -> u64 {
        part_size_for(self.size_hint, self.store.inner.part_size) as u64
    }

    /// What keeping its first `durable` bytes takes, once its parts up to there are sent
    /// (waited for here): the multipart upload's id and those parts' ETags, or nothing
    /// for an object already whole. `durable` must be where its parts end.
    pub fn checkpoint(&mut self, durable: u64) -> io::Result<(Option<String>, Vec<String>)> {
        match self.state {
            State::Finished => return Ok((None, Vec::new())),
            State::Writing => {}
            _ => return Err(io::Error::other("the upload failed or is no longer staged")),
        }
        if let Err(e) = self.wait_in_flight() {
            return self.fail(e);
        }
        let sent = self.parts.len() as u64 * self.part_size();
        match &self.upload_id {
            Some(id) if sent == durable => {
                Ok((Some(id.clone()), self.parts.iter().map(|p| p.content_id.clone()).collect()))
            }
            _ => Err(io::Error::other(format!("{sent} bytes are in parts, not {durable}"))),
        }
    }

    /// Lets go of it for resuming (after [`S3Staged::checkpoint`] and its record): its
    /// multipart upload or object stays, and what was buffered past its parts is dropped.
    pub fn keep(mut self) {
        self.state = State::Kept;
    }

    fn fail<T>(&mut self, e: io::Error) -> io::Result<T> {
        self.state = State::Failed;
        Err(e)
    }
}

impl StagedBlob for S3Staged {
    fn write(&mut self, chunk: Chunk) -> io::Result<()> {
        self.write_bytes(&chunk)
    }

    fn finish(&mut self) -> io::Result<()> {
        match self.state {
            State::Finished | State::Committed => Ok(()),
            State::Failed | State::Kept => {
                Err(io::Error::other("an earlier write of the upload failed"))
            }
            State::Writing => match self.complete() {
                Ok(()) => {
                    self.state = State::Finished;
                    Ok(())
                }
                Err(e) => self.fail(e),
            },
        }
    }

    fn location(&self) -> &str {
        &self.key
    }
}

impl S3Staged {
    /// [`StagedBlob::write`]'s bytes, from wherever they come.
    fn write_bytes(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if self.state != State::Writing {
            return Err(io::Error::other("a chunk written after the upload failed or finished"));
        }
        let part_size = part_size_for(self.size_hint, self.store.inner.part_size);
        while !bytes.is_empty() {
            if self.buf.capacity() == 0 {
                let sent = (self.parts.len() + usize::from(self.in_flight.is_some())) * part_size;
                let left =
                    usize::try_from(self.size_hint).unwrap_or(usize::MAX).saturating_sub(sent);
                self.buf.reserve(part_size.min(left.max(bytes.len())));
            }
            let n = (part_size - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == part_size
                && let Err(e) = self.send_part()
            {
                return self.fail(e);
            }
        }
        Ok(())
    }
}

impl Drop for S3Staged {
    /// Aborts on the runtime (dropping may happen anywhere): nothing waits for it, and
    /// what it does not finish (the server stopping) is a staged object that expires.
    fn drop(&mut self) {
        if matches!(self.state, State::Committed | State::Kept) {
            return;
        }
        let store = self.store.clone();
        let (path, key, upload_id) = (self.path.clone(), self.key.clone(), self.upload_id.take());
        let (in_flight, finished) = (self.in_flight.take(), self.state == State::Finished);
        self.store.inner.runtime.spawn(async move {
            if let Some(sending) = in_flight {
                let _ = sending.await;
            }
            let backend = &store.inner.backend;
            let aborted = match (&upload_id, finished) {
                (Some(id), false) => ignore_not_found(backend.abort_multipart(&path, id).await),
                _ => ignore_not_found(backend.delete(&path).await),
            };
            match aborted {
                Ok(()) => {
                    if let Err(e) = store.inner.records.forget_staged(key.clone()).await {
                        tracing::warn!(%key, "an aborted upload stays on record to expire: {e}");
                    }
                }
                Err(e) => tracing::warn!(%key, "could not abort an upload; it expires: {e}"),
            }
        });
    }
}

/// A stored object read a response chunk at a time, from a blocking thread.
struct ObjectReader {
    store: S3Store,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    current: Bytes,
}

impl io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.store.block_on(self.stream.next()) {
                Some(bytes) => self.current = bytes.map_err(io::Error::other)?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::AlignedBuf;
    use crate::store::{CommitIntent, Db, Records, SqliteRecords};
    use object_store::memory::InMemory;
    use std::io::Read;
    use tokio::sync::mpsc;

    const ID: ClientId = ClientId([7; 16]);

    struct Fixture {
        memory: Arc<InMemory>,
        records: Arc<SqliteRecords>,
        store: S3Store,
    }

    #[test]
    fn parts_are_the_smallest_s3_takes_until_an_object_would_need_too_many() {
        assert_eq!(part_size_for(0, PART_SIZE), PART_SIZE);
        assert_eq!(part_size_for(4 << 30, PART_SIZE), PART_SIZE, "820 parts");
        let huge = 100u64 << 30;
        let part = part_size_for(huge, PART_SIZE);
        assert!(huge.div_ceil(part as u64) <= MAX_PARTS, "{part}");
        assert_eq!(part % (1 << 20), 0);
        assert_eq!(part_size_for(1000, 64), 64, "a test's small parts stay small");
    }

    fn fixture(part_size: usize) -> Fixture {
        let memory = Arc::new(InMemory::new());
        let db = Db::open_in_memory().unwrap();
        db.insert_client(ID, "alice").unwrap();
        let records = Arc::new(SqliteRecords::new(db));
        let url = S3Url::parse("s3://bucket/some/prefix").unwrap();
        let shared: SharedRecords = records.clone();
        let backend: Arc<dyn Backend> = memory.clone();
        let store = S3Store::with_backend(backend, &url, shared, Duration::from_secs(60))
            .with_part_size(part_size);
        Fixture { memory, records, store }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Writes `data` in 1 MiB chunks and finishes, on a blocking thread.
    async fn stage(store: &S3Store, data: Vec<u8>) -> S3Staged {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            let mut staged = store.stage(ID, data.len() as u64, false).unwrap();
            let (home, _back) = mpsc::channel(data.len() / (1 << 20) + 2);
            for piece in data.chunks(1 << 20) {
                let mut buf = AlignedBuf::new(piece.len());
                buf.set_len(piece.len());
                buf.copy_from_slice(piece);
                staged.write(Chunk::new(buf, piece.len(), home.clone())).unwrap();
            }
            staged.finish().unwrap();
            staged
        })
        .await
        .unwrap()
    }

    async fn objects(memory: &InMemory) -> Vec<String> {
        let mut listed: Vec<String> =
            memory.list(None).map(|m| m.unwrap().location.to_string()).collect().await;
        listed.sort();
        listed
    }

    fn intent(key: &str, name: &str, data: &[u8], archive: Option<String>) -> CommitIntent {
        CommitIntent {
            client_id: ID,
            stored_name: name.into(),
            file_name: name.into(),
            path_name: key.into(),
            source: key.into(),
            size: data.len() as u64,
            cksum: crate::crypto::Cksum::of(data),
            archive,
            restores: None,
            v4: None,
        }
    }

    #[test]
    fn urls_name_a_bucket_and_an_optional_prefix() {
        let url = S3Url::parse("s3://b/a/b/").unwrap();
        assert_eq!((url.bucket.as_str(), url.prefix.as_str()), ("b", "a/b"));
        assert_eq!(url.to_string(), "s3://b/a/b");
        assert_eq!(S3Url::parse("s3://b").unwrap().prefix, "");
        assert!(S3Url::parse("s3:///x").is_err());
        assert!(S3Url::parse("s3://b/a//c").is_err());
        assert!(S3Url::parse("s3://b/../c").is_err());
        assert!(is_s3_url("s3://b") && !is_s3_url("/srv/s3"));
    }

    #[test]
    fn plain_http_is_allowed_by_itself_only_on_loopback() {
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(is_loopback_http("http://localhost:9000/"));
        assert!(is_loopback_http("http://[::1]:9000"));
        assert!(!is_loopback_http("http://10.0.0.1:9000"));
        assert!(!is_loopback_http("https://127.0.0.1:9000"));
    }

    #[test]
    fn payloads_go_unsigned_by_default_only_under_tls() {
        assert!(unsigned_by_default(None), "AWS itself: https");
        assert!(unsigned_by_default(Some("https://minio.example:9000")));
        assert!(unsigned_by_default(Some("HTTPS://minio.example")));
        assert!(!unsigned_by_default(Some("http://127.0.0.1:9000")));
        assert!(!unsigned_by_default(Some("http://10.0.0.1:9000")));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multipart_upload_is_whole_after_finish_and_read_back_streamed() {
        let f = fixture(1 << 20);
        let data = pattern((3 << 20) + 12345);
        let staged = stage(&f.store, data.clone()).await;
        assert!(staged.upload_id.is_some(), "more than one part: a multipart upload");
        let key = staged.location().to_owned();
        assert!(key.starts_with(&ID.to_hex()), "{key}");
        assert_eq!(objects(&f.memory).await, [format!("some/prefix/{key}")]);
        let store = f.store.clone();
        let committed =
            tokio::task::spawn_blocking(move || store.commit(staged, ID, "a.bin", None))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(committed.path_name, key);
        f.records.finish_commit(intent(&key, "a.bin", &data, None), None, 1).await.unwrap();
        assert_eq!(f.store.digest(&key).await.unwrap(), Some((data.len() as u64, Cksum(&data))));
        let store = f.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut read = Vec::new();
            store.get(ID, "a.bin").unwrap().read_to_end(&mut read).unwrap();
            (read, store.list(ID).unwrap())
        })
        .await
        .unwrap();
        assert!(read.0 == data, "reads back as written");
        assert_eq!(read.1, [BlobInfo { name: "a.bin".into(), size: data.len() as u64 }]);
        assert_eq!(f.store.clean_staged(true).await.unwrap(), 0, "the commit forgot it");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_import_of_any_size_is_whole_with_its_hashes_and_stays_staged_until_recorded() {
        let f = fixture(1 << 20);
        // Empty, under one part, exactly two parts, and a part and a bit.
        for len in [0, 1000, 2 << 20, (1 << 20) + 7] {
            let data = pattern(len);
            let (key, sent) = f.store.import(ID, &data[..], len as u64, i64::MAX).await.unwrap();
            let expected = ObjectHashes {
                size: len as u64,
                cksum: Cksum(&data),
                blake3: *blake3::hash(&data).as_bytes(),
            };
            assert_eq!(sent, expected, "{len} bytes");
            assert_eq!(f.store.hashes(&key).await.unwrap(), Some(expected), "{len} read back");
            let staged = f.records.claim_expired_staged(i64::MAX, 0).await.unwrap();
            assert_eq!(staged.iter().map(|s| &s.key).collect::<Vec<_>>(), [&key], "{len}");
            f.records.forget_staged(key.clone()).await.unwrap();
            f.store.delete_object(ID, &key).await.unwrap();
            assert_eq!(f.store.hashes(&key).await.unwrap(), None, "{len}: deleted");
        }
        assert!(f.store.delete_object(ClientId([8; 16]), "not/ours").await.is_err());
    }

    #[allow(non_snake_case)]
    fn Cksum(data: &[u8]) -> u32 {
        crate::crypto::Cksum::of(data)
    }

    fn kept(
        key: &str,
        size: u64,
        durable: u64,
        parts: (Option<String>, Vec<String>),
    ) -> UnfinishedUpload {
        UnfinishedUpload {
            client_id: ID,
            path: "big.bin".into(),
            location: key.into(),
            size,
            mtime_ns: 0,
            durable,
            prefix_hash: [0; 32],
            expires_at: i64::MAX,
            upload_id: parts.0,
            parts: parts.1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_upload_goes_on_from_its_recorded_parts_in_a_fresh_upload() {
        let f = fixture(1 << 20);
        let data = pattern((5 << 20) + 300_000);
        let (store, all) = (f.store.clone(), data.clone());
        let (old, checkpoint) = tokio::task::spawn_blocking(move || {
            let mut staged = store.stage(ID, all.len() as u64, false).unwrap();
            staged.write_bytes(&all[..(3 << 20) + 500_000]).unwrap();
            assert!(staged.checkpoint(2 << 20).is_err(), "not where its parts end");
            let checkpoint = staged.checkpoint(3 << 20).unwrap();
            let old = staged.location().to_owned();
            staged.keep();
            (old, checkpoint)
        })
        .await
        .unwrap();
        assert_eq!(checkpoint.1.len(), 3, "{checkpoint:?}");
        let kept = kept(&old, data.len() as u64, 3 << 20, checkpoint);
        f.records.keep_unfinished(kept.clone()).await.unwrap();
        assert_eq!(f.store.clean_staged(true).await.unwrap(), 0, "a kept upload is spared");
        f.store.hold_kept(&kept).await.unwrap();

        let (store, rest) = (f.store.clone(), data[3 << 20..].to_vec());
        let (new, hash, len) = tokio::task::spawn_blocking(move || {
            let (mut staged, hasher, cksum) = store.resume_kept(&kept).unwrap();
            staged.write_bytes(&rest).unwrap();
            staged.finish().unwrap();
            let key = staged.location().to_owned();
            staged.state = State::Committed;
            (key, *hasher.finalize().as_bytes(), cksum.len())
        })
        .await
        .unwrap();
        assert_ne!(new, old);
        assert_eq!((hash, len), (*blake3::hash(&data[..3 << 20]).as_bytes(), 3 << 20));
        let digest = f.store.digest(&new).await.unwrap();
        assert_eq!(digest, Some((data.len() as u64, Cksum(&data))), "the fresh upload is whole");
        assert_eq!(objects(&f.memory).await, [format!("some/prefix/{new}")], "the old one went");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_whole_object_is_taken_back_and_a_short_one_dropped() {
        let f = fixture(1 << 20);
        let data = pattern((2 << 20) + 10);
        let mut staged = stage(&f.store, data.clone()).await;
        let key = staged.location().to_owned();
        let checkpoint = staged.checkpoint(data.len() as u64).unwrap();
        assert_eq!(checkpoint, (None, Vec::new()), "an object already whole");
        staged.keep();
        let whole = kept(&key, data.len() as u64, data.len() as u64, checkpoint.clone());
        let store = f.store.clone();
        let (taken, hash) = tokio::task::spawn_blocking(move || {
            let (mut staged, hasher, _) = store.resume_kept(&whole).unwrap();
            let taken = staged.location().to_owned();
            staged.state = State::Kept;
            (taken, *hasher.finalize().as_bytes())
        })
        .await
        .unwrap();
        assert_eq!((taken.as_str(), hash), (key.as_str(), *blake3::hash(&data).as_bytes()));

        let short = kept(&key, data.len() as u64, data.len() as u64 + 1, checkpoint);
        let store = f.store.clone();
        let resumed = tokio::task::spawn_blocking(move || store.resume_kept(&short).map(|_| ()));
        assert!(resumed.await.unwrap().is_err(), "fewer bytes than recorded");
        assert_eq!(objects(&f.memory).await, Vec::<String>::new(), "dropped");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_upload_is_aborted_and_forgotten() {
        let f = fixture(1 << 20);
        for len in [100, (2 << 20) + 1] {
            let staged = stage(&f.store, pattern(len)).await;
            tokio::task::spawn_blocking(move || drop(staged)).await.unwrap();
            for _ in 0..100 {
                if objects(&f.memory).await.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(objects(&f.memory).await, Vec::<String>::new(), "{len} bytes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(f.store.clean_staged(true).await.unwrap(), 0, "nothing left on record");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upload_a_crash_left_is_cleaned_once_expired_or_at_a_lone_start() {
        let f = fixture(1 << 20);
        let staged = stage(&f.store, pattern(4 << 20)).await;
        // A crash: neither committed nor aborted.
        std::mem::forget(staged);
        assert_eq!(objects(&f.memory).await.len(), 1);
        assert_eq!(f.store.clean_staged(false).await.unwrap(), 0, "not expired yet");
        assert_eq!(f.store.clean_staged(true).await.unwrap(), 1);
        assert_eq!(objects(&f.memory).await, Vec::<String>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_keeps_the_replaced_object_as_the_version_or_prunes_it() {
        let f = fixture(1 << 20);
        let mut keys = Vec::new();
        for (n, keep) in [(1u8, 1), (2, 1), (3, 0)] {
            let data = vec![n; 1000];
            let staged = stage(&f.store, data.clone()).await;
            let key = staged.location().to_owned();
            let replaced = f.records.stored_copy(ID, "f".into()).await.unwrap();
            assert_eq!(replaced.as_ref(), keys.last(), "the records name the current object");
            let store = f.store.clone();
            tokio::task::spawn_blocking(move || store.commit(staged, ID, "f", None).map(drop))
                .await
                .unwrap()
                .unwrap();
            let pruned = f.records.finish_commit(intent(&key, "f", &data, replaced), None, keep);
            for path in pruned.await.unwrap() {
                let store = f.store.clone();
                tokio::task::spawn_blocking(move || store.delete_version(ID, &path))
                    .await
                    .unwrap()
                    .unwrap();
            }
            keys.push(key);
        }
        let versions: Vec<String> =
            f.records.versions().await.unwrap().into_iter().map(|v| v.path_name).collect();
        assert_eq!(versions, Vec::<String>::new(), "keep 0 pruned the last version");
        let want: Vec<String> = [&keys[2]].iter().map(|k| format!("some/prefix/{k}")).collect();
        assert_eq!(objects(&f.memory).await, want, "replaced objects deleted once pruned");
        let files = f.records.files().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path_name, keys[2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_outside_the_clients_objects_is_refused() {
        let f = fixture(1 << 20);
        let store = f.store.clone();
        let other = ClientId([8; 16]);
        let refused = tokio::task::spawn_blocking(move || {
            [format!("{}/x", other.to_hex()), "../x".into(), format!("{}/a/b", ID.to_hex())]
                .iter()
                .map(|v| store.delete_version(ID, v).is_err())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert_eq!(refused, [true, true, true]);
    }
}
