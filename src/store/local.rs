//! The local-disk blob store: files at `<storage>/<client id hex>/<stored name>`, written
//! through a temporary file in the client's directory ([`StagedFile`]) and renamed into
//! place only when the client confirms; earlier versions under [`VERSIONS_DIR`]. A
//! protocol-4 name of several components (`docs/a.txt`) is a file in folders of the
//! client's directory, each reached and made without following a link (`folders`).
//!
//! [`Storage`] implements [`BlobStore`]. What only a local directory has stays as its own
//! methods, used by start-up and the `db` commands rather than the protocol server:
//! reading a stored file back for crash reconciliation ([`Storage::digest`]), cleaning
//! temporary files a crash left ([`Storage::clean_leftovers`]), the versions directory
//! as `db restore` and reconciliation walk it, and the directory lock.

mod folders;
mod staged;

pub use staged::{StagedFile, WRITE_BEHIND};

use super::blob::{BlobInfo, BlobStore, Committed, Deferred};
use super::blobs::CommitPlan;
use crate::protocol::ClientId;
use crate::protocol::TEMP_PREFIX;
use crate::protocol::v4::names::MAX_PATH_COMPONENTS;
use crate::sys::{available_bytes, link_at, lock_exclusive, open_at, rename_at, unlink_at};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory under the storage root where earlier versions are kept, as
/// `.versions/<client id hex>/<random hex>`: client directories are named by 32 hex digits,
/// so it never clashes with one, and nothing a client sends is ever stored in it.
pub const VERSIONS_DIR: &str = ".versions";

/// The storage directory: the local [`BlobStore`] (named for the `--storage DIR` it
/// serves).
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

/// What [`Storage::clean_leftovers`] did and found.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Unfinished uploads deleted.
    pub removed: usize,
    /// Entries left alone, each with what is odd about it.
    pub odd: Vec<(PathBuf, String)>,
}

impl Leftovers {
    fn odd(&mut self, path: PathBuf, why: &str) {
        self.odd.push((path, why.to_owned()));
    }
}

/// One upload of a group commit ([`Storage::commit_group`]).
#[derive(Debug)]
pub struct GroupCommit {
    /// The finished upload, its data already durable.
    pub staged: StagedFile,
    /// Its client.
    pub owner: ClientId,
    /// The name it is stored as.
    pub name: String,
    /// Where the copy it replaces is kept as a version, if it is.
    pub archive: Option<String>,
}

/// A client's directory, opened without following a symbolic link; files are created,
/// linked and renamed relative to it.
struct ClientDir {
    file: fs::File,
}

fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::other("a file name with a NUL byte"))
}

impl ClientDir {
    fn open(path: &Path) -> io::Result<Self> {
        let opened = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path);
        match opened {
            Ok(file) => Ok(ClientDir { file }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Err(io::Error::other(format!(
                    "{} is a symbolic link or not a directory; refusing to use it",
                    path.display()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// A new file with a fresh temporary name, created here and never through a link.
    fn create_temp(&self) -> io::Result<(fs::File, String)> {
        self.create_prefixed(TEMP_PREFIX)
    }

    /// A new file named `prefix` and 16 random hex digits.
    fn create_prefixed(&self, prefix: &str) -> io::Result<(fs::File, String)> {
        loop {
            let name = format!("{prefix}{}", &temp_name()[TEMP_PREFIX.len()..]);
            let flags =
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
            let c = c_name(&name)?;
            match open_at(&self.file, &c, flags, 0o600) {
                Ok(file) => return Ok((file, name)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// An existing regular file here, for reading (never through a link).
    fn open_file(&self, name: &str) -> io::Result<fs::File> {
        let c = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        open_at(&self.file, &c, flags, 0)
    }

    /// Links the file `name` here to a fresh temporary name in `to`; returns that name.
    fn link_aside_to(&self, name: &str, to: &ClientDir) -> io::Result<String> {
        let target = c_name(name)?;
        loop {
            let aside = temp_name();
            let c = c_name(&aside)?;
            match link_at(&self.file, &target, &to.file, &c) {
                Ok(()) => return Ok(aside),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Renames `from` here to `to` in the folder `into`, replacing `to` atomically.
    fn rename_into(&self, from: &str, into: &ClientDir, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        rename_at(&self.file, &from, &into.file, &to)
    }
}

/// Links (never follows) `from_name` in `from` as `to_name` in `to`; false if there is
/// no `from_name`.
fn link_between(
    from: &ClientDir,
    from_name: &str,
    to: &ClientDir,
    to_name: &str,
) -> io::Result<bool> {
    let (a, b) = (c_name(from_name)?, c_name(to_name)?);
    match link_at(&from.file, &a, &to.file, &b) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The files under `dir` (at `path`), named `prefix` and their path below it: folders
/// are entered through the handle opened here without following a link, to the depth
/// protocol 4's paths can have.
fn list_into(
    dir: &ClientDir,
    path: &Path,
    prefix: &str,
    blobs: &mut Vec<BlobInfo>,
) -> io::Result<()> {
    for entry in fs::read_dir(path)? {
        let Ok(name) = entry?.file_name().into_string() else { continue };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let Ok(file) = dir.open_file(&name) else { continue };
        let meta = file.metadata()?;
        let full = format!("{prefix}{name}");
        if meta.is_file() {
            blobs.push(BlobInfo { name: full, size: meta.len() });
        } else if meta.is_dir() && prefix.matches('/').count() < MAX_PATH_COMPONENTS {
            let sub = ClientDir { file };
            list_into(&sub, &path.join(&name), &format!("{full}/"), blobs)?;
        }
    }
    Ok(())
}

/// A fresh temporary file name: the prefix start-up cleans, and 16 random hex digits.
fn temp_name() -> String {
    let suffix: [u8; 8] = crate::crypto::random_bytes();
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("{TEMP_PREFIX}{hex}")
}

impl Storage {
    /// Uses (and creates) `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        if root.exists() && !root.is_dir() {
            return Err(io::Error::other("it exists and is not a directory"));
        }
        fs::create_dir_all(root)?;
        Ok(Storage { root: root.canonicalize()? })
    }

    /// Fails unless a file can be created (and removed) in the storage directory, so that
    /// a read-only directory is found at start-up rather than at the first upload.
    pub fn check_writable(&self) -> io::Result<()> {
        let probe = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(&self.root)?;
        probe.close()
    }

    /// The storage directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The relative path a file is stored at. `name` must come from
    /// [`crate::protocol::storage_name`] (one safe component) or pass protocol 4's
    /// [`crate::protocol::v4::names::check_path`] (components that cannot climb out).
    pub fn relative_path(id: ClientId, name: &str) -> String {
        format!("{}/{}", id.to_hex(), name)
    }

    /// The plaintext size and cksum of the stored file at `relative` (`<id hex>/<name>`),
    /// or `None` when there is no regular file there. Read through the client's directory
    /// without following a symbolic link, as everything else here.
    pub fn digest(&self, relative: &str) -> io::Result<Option<(u64, u32)>> {
        let Some((dir, name)) = relative.split_once('/') else { return Ok(None) };
        let dir = match ClientDir::open(&self.root.join(dir)) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (chain, leaf) = match dir.descend(name, false) {
            Ok(found) => found,
            Err(e)
                if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut file = match chain.parent().open_file(leaf) {
            Ok(file) if file.metadata()?.is_file() => file,
            Ok(_) => return Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let mut cksum = crate::crypto::Cksum::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match io::Read::read(&mut file, &mut buf)? {
                0 => break,
                n => cksum.update(&buf[..n]),
            }
        }
        Ok(Some((cksum.len(), cksum.finish())))
    }

    /// A client's directory, without following a symbolic link; `create` makes it first
    /// if needed.
    fn client_dir(&self, id: ClientId, create: bool) -> io::Result<(ClientDir, PathBuf)> {
        let dir = self.root.join(id.to_hex());
        if create {
            match fs::create_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok((ClientDir::open(&dir)?, dir))
    }

    /// A new temporary file in the client's directory (created if needed), which deletes
    /// itself when dropped unless the commit moves it into place.
    ///
    /// The directory is never reached through a symbolic link: one planted at
    /// `<storage>/<id hex>` (to a directory outside storage, or another client's) makes
    /// this fail, and the file is created relative to the directory opened, so it lands
    /// where that was checked.
    fn create_upload(&self, id: ClientId, direct: bool) -> io::Result<StagedFile> {
        let (handle, dir) = self.client_dir(id, true)?;
        let (file, name) = handle.create_temp()?;
        // The root is absolute (canonical), so this never needs the working directory.
        let path = tempfile::TempPath::try_from_path(dir.join(&name))?;
        Ok(StagedFile::new(file, direct, id, name, path))
    }

    /// A fresh path for a version of one of `id`'s files, relative to storage.
    pub fn new_version_path(id: ClientId) -> String {
        let hex = &temp_name()[TEMP_PREFIX.len()..];
        format!("{VERSIONS_DIR}/{}/{hex}", id.to_hex())
    }

    /// The versions directory of `id` (created if needed), and the file name in it that
    /// `relative` (from [`Storage::new_version_path`]) names.
    fn version_dir<'a>(&self, id: ClientId, relative: &'a str) -> io::Result<(ClientDir, &'a str)> {
        let prefix = format!("{VERSIONS_DIR}/{}/", id.to_hex());
        let name = relative
            .strip_prefix(&prefix)
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| io::Error::other(format!("{relative} is not a version of {id}")))?;
        let dir = self.root.join(VERSIONS_DIR).join(id.to_hex());
        fs::create_dir_all(&dir)?;
        Ok((ClientDir::open(&dir)?, name))
    }

    /// Links the stored file `name` of `id` as the version at `archive`; false if there
    /// is no such file.
    pub fn keep_version(&self, id: ClientId, name: &str, archive: &str) -> io::Result<bool> {
        let dir = ClientDir::open(&self.root.join(id.to_hex()))?;
        let (chain, leaf) = match dir.descend(name, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            found => found?,
        };
        let (versions, file) = self.version_dir(id, archive)?;
        let linked = link_between(chain.parent(), leaf, &versions, file)?;
        versions.file.sync_all()?;
        Ok(linked)
    }

    /// Moves the version at `version` back to the stored name `name` of `id`, replacing
    /// the file there (keep it with [`Storage::keep_version`] first).
    pub fn restore_version(&self, id: ClientId, name: &str, version: &str) -> io::Result<()> {
        let dir_path = self.root.join(id.to_hex());
        fs::create_dir_all(&dir_path)?;
        let dir = ClientDir::open(&dir_path)?;
        let (chain, leaf) = dir.descend(name, true)?;
        let (versions, file) = self.version_dir(id, version)?;
        let (from, to) = (c_name(file)?, c_name(leaf)?);
        rename_at(&versions.file, &from, &chain.parent().file, &to)?;
        chain.sync()?;
        versions.file.sync_all()
    }

    /// Deletes the version file at `relative`, if it is there.
    pub fn remove_version(&self, id: ClientId, relative: &str) -> io::Result<()> {
        let (versions, file) = self.version_dir(id, relative)?;
        let c = c_name(file)?;
        match unlink_at(&versions.file, &c) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every file under the versions directory, relative to storage, with its client.
    pub fn version_files(&self) -> Vec<(ClientId, String)> {
        let mut found = Vec::new();
        let Ok(dirs) = fs::read_dir(self.root.join(VERSIONS_DIR)) else { return found };
        for dir in dirs.flatten() {
            let hex = dir.file_name().to_string_lossy().into_owned();
            let Some(id) = ClientId::parse(&hex).filter(|id| id.to_hex() == hex) else { continue };
            if !dir.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for entry in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                found.push((id, format!("{VERSIONS_DIR}/{hex}/{name}")));
            }
        }
        found
    }

    /// Takes the storage directory for this process alone (`flock`): the server holds it
    /// while it runs, and `db restore` refuses to run beside it.
    pub fn lock_exclusive(&self) -> io::Result<fs::File> {
        let dir = fs::File::open(&self.root)?;
        lock_exclusive(&dir)?;
        Ok(dir)
    }

    /// Makes a finished upload durable and moves it to its final name, replacing an
    /// earlier copy atomically; the earlier copy, unless kept as the version `archive`,
    /// comes back under a temporary name (see [`BlobStore::commit`] for why).
    ///
    /// Everything happens relative to the client's directory opened without following a
    /// symbolic link, as in staging.
    fn commit_file(
        &self,
        upload: StagedFile,
        id: ClientId,
        name: &str,
        archive: Option<&str>,
    ) -> io::Result<Option<tempfile::TempPath>> {
        let (replaced, chain) = self.place_file(upload, id, name, archive, true)?;
        chain.sync()?;
        Ok(replaced)
    }

    /// Commits a group of finished uploads whose data [`StagedFile::sync_finished`] made
    /// durable (protocol 4's group commit): each is renamed into place as
    /// `Storage::commit_file` does, then every folder touched is synced once, however
    /// many of the group's files it received. One result per upload, in order; a folder
    /// that cannot be synced fails every upload renamed into it.
    pub fn commit_group(&self, group: Vec<GroupCommit>) -> Vec<io::Result<Committed>> {
        let mut placed = Vec::with_capacity(group.len());
        let mut dirs: Vec<((u64, u64), fs::File)> = Vec::new();
        for item in group {
            let archive = item.archive.as_deref();
            let done = self.place_file(item.staged, item.owner, &item.name, archive, false);
            let done = done.and_then(|(replaced, chain)| {
                let mut mine = Vec::new();
                for file in chain.files() {
                    let meta = file.metadata()?;
                    let key = (meta.dev(), meta.ino());
                    if !dirs.iter().any(|(k, _)| *k == key) {
                        dirs.push((key, file.try_clone()?));
                    }
                    mine.push(key);
                }
                let path_name = Self::relative_path(item.owner, &item.name);
                Ok((Committed { path_name, replaced: replaced.map(Deferred::new) }, mine))
            });
            placed.push(done);
        }
        let failed: Vec<(u64, u64)> =
            dirs.iter().filter(|(_, dir)| dir.sync_all().is_err()).map(|(k, _)| *k).collect();
        placed
            .into_iter()
            .map(|done| {
                let (committed, mine) = done?;
                if mine.iter().any(|k| failed.contains(k)) {
                    return Err(io::Error::other("syncing a folder of the group failed"));
                }
                Ok(committed)
            })
            .collect()
    }

    /// Moves a finished upload into place (see [`Storage::commit_file`]) and returns the
    /// folders to sync; `sync_data` first makes its bytes durable (a group commit has).
    fn place_file(
        &self,
        mut upload: StagedFile,
        id: ClientId,
        name: &str,
        archive: Option<&str>,
        sync_data: bool,
    ) -> io::Result<(Option<tempfile::TempPath>, folders::Chain)> {
        use super::blob::StagedBlob;
        upload.finish()?;
        let (dir, dir_path) = self.client_dir(id, false)?;
        if upload.owner != id || upload.path.parent() != Some(&dir_path) {
            return Err(io::Error::other("the upload is not in the client's directory"));
        }
        let temp_name = upload.name.as_str();
        if sync_data {
            dir.open_file(temp_name)?.sync_all()?;
        }
        // The folders of a protocol-4 path, made as needed (the temporary file stays in
        // the client's directory and is renamed into the deepest).
        let (chain, leaf) = dir.descend(name, true)?;
        if let Some(archive) = archive {
            // Kept as a version: the rename below leaves its bytes there.
            self.keep_version(id, name, archive)?;
            dir.rename_into(temp_name, chain.parent(), leaf)?;
            let _ = upload.path.keep();
            return Ok((None, chain));
        }
        // No earlier copy (NotFound), or a file system without hard links: then the rename
        // below deletes the earlier copy itself, as it always may. The copy is linked
        // aside into the client's directory, where start-up cleans temporary files.
        let replaced = chain
            .parent()
            .link_aside_to(leaf, chain.top())
            .ok()
            .and_then(|aside| tempfile::TempPath::try_from_path(dir_path.join(aside)).ok());
        dir.rename_into(temp_name, chain.parent(), leaf)?;
        // Moved into place: nothing is left for the temporary path to delete.
        let _ = upload.path.keep();
        Ok((replaced, chain))
    }

    /// Deletes temporary files left by a crash, and reports every entry that does not
    /// belong (a symbolic link, a directory with a temporary file's name, a file where a
    /// client directory should be): they are left alone, and never stop start-up.
    pub fn clean_leftovers(&self) -> io::Result<Leftovers> {
        let mut found = Leftovers::default();
        for client_dir in fs::read_dir(&self.root)? {
            let client_dir = client_dir?;
            let path = client_dir.path();
            let name = client_dir.file_name();
            let is_id = name
                .to_str()
                .and_then(ClientId::parse)
                .is_some_and(|id| name.to_str() == Some(id.to_hex().as_str()));
            match client_dir.file_type() {
                Ok(t) if t.is_symlink() => {
                    found.odd(path, "a symbolic link: uploads for it are refused")
                }
                Ok(t) if t.is_dir() && is_id => self.clean_client_dir(&path, &mut found),
                Ok(t) if t.is_dir() && name == VERSIONS_DIR => {}
                Ok(t) if t.is_dir() => found.odd(path, "a directory not named like a client id"),
                Ok(_) => found.odd(path, "not a directory"),
                Err(e) => found.odd(path, &format!("cannot be examined: {e}")),
            }
        }
        Ok(found)
    }

    fn clean_client_dir(&self, dir: &Path, found: &mut Leftovers) {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return found.odd(dir.to_owned(), &format!("cannot be read: {e}")),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return found.odd(dir.to_owned(), &format!("cannot be read: {e}")),
            };
            let path = entry.path();
            let file_type = entry.file_type();
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            // A kept unfinished upload is checked against its record at start-up instead.
            let is_temp = file_name.starts_with(TEMP_PREFIX) && !file_name.starts_with(KEPT_PREFIX);
            match file_type {
                Ok(t) if t.is_file() && is_temp => match fs::remove_file(&path) {
                    Ok(()) => found.removed += 1,
                    Err(e) => found
                        .odd(path, &format!("an unfinished upload that cannot be deleted: {e}")),
                },
                Ok(t) if t.is_file() => {}
                Ok(t) if t.is_symlink() => found.odd(path, "a symbolic link"),
                Ok(t) if t.is_dir() && is_temp => {
                    found.odd(path, "a directory named like an unfinished upload")
                }
                // A folder of protocol-4 paths.
                Ok(t) if t.is_dir() => self.clean_client_dir(&path, found),
                Ok(_) => found.odd(path, "not a regular file"),
                Err(e) => found.odd(path, &format!("cannot be examined: {e}")),
            }
        }
    }
}

/// The name prefix of an unfinished protocol-4 upload kept for resuming: still a reserved
/// temporary name (no client can store a file under it), but one
/// [`Storage::clean_leftovers`] spares; start-up checks each against its record
/// ([`Storage::kept_files`]).
pub const KEPT_PREFIX: &str = ".securexfer-part-kept-";

impl Storage {
    /// Where a commit of `name` records its upload (the name's one path), and where the
    /// copy it replaces is linked as a fresh version: only when versions are kept (`keep`
    /// above 0) and a verified copy is there (`verified`, as the records say).
    pub fn commit_plan(
        &self,
        owner: ClientId,
        name: &str,
        keep: usize,
        verified: bool,
    ) -> CommitPlan {
        let path_name = self.path_name(owner, name);
        let archive = (keep > 0 && verified).then(|| self.new_version_name(owner));
        CommitPlan { path_name, archive }
    }

    /// A new upload that may be kept unfinished: created under a kept name at once, so a
    /// crash never leaves its record pointing at a file start-up deleted as a leftover
    /// (start-up deletes a kept file no record names instead). `large` asks for direct
    /// writes from a writer thread, as [`Storage::stage`] does; either way it can be
    /// synced midway ([`StagedFile::sync`]).
    pub fn stage_kept(&self, owner: ClientId, large: bool) -> io::Result<StagedFile> {
        let (handle, dir) = self.client_dir(owner, true)?;
        let (file, name) = handle.create_prefixed(KEPT_PREFIX)?;
        let path = tempfile::TempPath::try_from_path(dir.join(&name))?;
        Ok(StagedFile::new(file, large, owner, name, path))
    }

    /// Keeps an upload its connection left: synced, renamed to a kept name (so no
    /// leftover cleaning takes it) and the directory synced, so the returned location
    /// can be recorded as durable.
    pub fn keep_unfinished(&self, staged: StagedFile) -> io::Result<String> {
        let (owner, name) = staged.into_kept()?;
        let (dir, _) = self.client_dir(owner, false)?;
        if name.starts_with(KEPT_PREFIX) {
            return Ok(Self::relative_path(owner, &name));
        }
        let kept = format!("{KEPT_PREFIX}{}", &name[TEMP_PREFIX.len()..]);
        let renamed = dir.rename_into(&name, &dir, &kept).and_then(|()| dir.file.sync_all());
        if let Err(e) = renamed {
            let _ = fs::remove_file(self.root.join(owner.to_hex()).join(&name));
            return Err(e);
        }
        Ok(Self::relative_path(owner, &kept))
    }

    /// The kept unfinished upload at `location` (of `owner`), truncated to `offset` and
    /// ready to continue, with a reader of its first `offset` bytes (to rebuild the
    /// hashes). `NotFound` when the file is gone or shorter than `offset`. `direct` asks
    /// for direct writes from a writer thread, as for a new large upload (granted when
    /// `offset` is block-aligned, as a sync point of whole chunks is).
    pub fn resume_unfinished(
        &self,
        owner: ClientId,
        location: &str,
        offset: u64,
        direct: bool,
    ) -> io::Result<(StagedFile, fs::File)> {
        let name = Self::kept_name(owner, location)?;
        let (dir, dir_path) = self.client_dir(owner, false)?;
        let reader = dir.open_file(name)?;
        let meta = reader.metadata()?;
        if !meta.is_file() || meta.len() < offset {
            return Err(io::Error::new(io::ErrorKind::NotFound, "shorter than its durable length"));
        }
        let path = dir_path.join(name);
        let file = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)?;
        file.set_len(offset)?;
        let mut file = file;
        io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
        let path = tempfile::TempPath::try_from_path(path)?;
        Ok((StagedFile::resumed(file, owner, name.to_owned(), path, offset, direct), reader))
    }

    /// The length of the kept file at `location`, `None` if it is not there.
    pub fn kept_len(&self, owner: ClientId, location: &str) -> io::Result<Option<u64>> {
        let name = Self::kept_name(owner, location)?;
        let dir = match self.client_dir(owner, false) {
            Ok((dir, _)) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match dir.open_file(name) {
            Ok(file) => Ok(Some(file.metadata()?.len())),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ELOOP)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes the kept file at `location`; one already gone is no error.
    pub fn delete_kept(&self, owner: ClientId, location: &str) -> io::Result<()> {
        let name = Self::kept_name(owner, location)?;
        match fs::remove_file(self.root.join(owner.to_hex()).join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every kept file, as `(owner, location)`, for start-up to delete those no record
    /// names (a crash between the rename and the record).
    pub fn kept_files(&self) -> io::Result<Vec<(ClientId, String)>> {
        let mut kept = Vec::new();
        for entry in fs::read_dir(&self.root)? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().and_then(ClientId::parse) else { continue };
            if !entry.file_type()?.is_dir() || entry.file_name().to_str() != Some(&id.to_hex()) {
                continue;
            }
            for file in fs::read_dir(entry.path())? {
                let name = file?.file_name();
                if let Some(name) = name.to_str().filter(|n| n.starts_with(KEPT_PREFIX)) {
                    kept.push((id, Self::relative_path(id, name)));
                }
            }
        }
        Ok(kept)
    }

    /// The file name of a kept upload's location, refusing one that is not `owner`'s or
    /// not a kept name (a record is never trusted to point elsewhere).
    fn kept_name(owner: ClientId, location: &str) -> io::Result<&str> {
        let prefix = format!("{}/", owner.to_hex());
        location
            .strip_prefix(&prefix)
            .filter(|n| n.starts_with(KEPT_PREFIX) && !n.contains('/'))
            .ok_or_else(|| io::Error::other(format!("{location} is not a kept upload of {owner}")))
    }
}

impl BlobStore for Storage {
    type Staged = StagedFile;

    /// A temporary file in the client's directory; `large` writes it with `O_DIRECT`
    /// from a thread of its own (see `FileSink`). The size is not needed ahead.
    fn stage(&self, owner: ClientId, _size_hint: u64, large: bool) -> io::Result<StagedFile> {
        self.create_upload(owner, large)
    }

    /// An earlier copy is not deleted here: freeing a large file's blocks is slow (in the
    /// `rename` that drops its last link; bench/README.md, "Where the time goes"), and the
    /// client is waiting for its 2104. It is linked to a temporary name first and handed
    /// back in [`Committed::replaced`]; dropping that (on a blocking thread, after the
    /// reply) deletes it, and a crash before that leaves a temporary file that start-up
    /// cleans away.
    fn commit(
        &self,
        staged: StagedFile,
        owner: ClientId,
        name: &str,
        archive: Option<&str>,
    ) -> io::Result<Committed> {
        let replaced = self.commit_file(staged, owner, name, archive)?;
        let path_name = Self::relative_path(owner, name);
        Ok(Committed { path_name, replaced: replaced.map(Deferred::new) })
    }

    fn get(&self, owner: ClientId, name: &str) -> io::Result<Box<dyn io::Read + Send>> {
        let (dir, _) = self.client_dir(owner, false)?;
        let (chain, leaf) = dir.descend(name, false)?;
        let file = chain.parent().open_file(leaf)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::other(format!("{name} is not a regular file")));
        }
        Ok(Box::new(file))
    }

    /// The names come from reading the directory by its path, but each file is opened
    /// through the directory checked not to be a link, so a name that is not really
    /// there is left out rather than followed.
    fn list(&self, owner: ClientId) -> io::Result<Vec<BlobInfo>> {
        let (dir, dir_path) = match self.client_dir(owner, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            found => found?,
        };
        let mut blobs = Vec::new();
        list_into(&dir, &dir_path, "", &mut blobs)?;
        Ok(blobs)
    }

    fn delete(&self, owner: ClientId, name: &str) -> io::Result<()> {
        let (dir, _) = self.client_dir(owner, false)?;
        let (chain, leaf) = dir.descend(name, false)?;
        unlink_at(&chain.parent().file, &c_name(leaf)?)?;
        chain.parent().file.sync_all()?;
        // Folders are implicit: one the removal emptied goes too.
        chain.remove_empty()
    }

    fn keep_as_version(&self, owner: ClientId, name: &str, version: &str) -> io::Result<bool> {
        self.keep_version(owner, name, version)
    }

    fn delete_version(&self, owner: ClientId, version: &str) -> io::Result<()> {
        self.remove_version(owner, version)
    }

    /// `<id hex>/<name>`, relative to the storage directory.
    fn path_name(&self, owner: ClientId, name: &str) -> String {
        Self::relative_path(owner, name)
    }

    fn new_version_name(&self, owner: ClientId) -> String {
        Self::new_version_path(owner)
    }

    /// Bytes available to this process on the storage file system, if the OS says.
    fn available_bytes(&self) -> Option<u64> {
        available_bytes(&self.root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::AlignedBuf;
    use crate::store::blob::{Chunk, StagedBlob};
    use tokio::sync::mpsc;

    const ID: ClientId = ClientId([7; 16]);

    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&dir.path().join("storage")).unwrap();
        (dir, storage)
    }

    /// Writes `data` to `staged` in chunks of up to 1 MiB, as the upload pipeline does.
    fn write(staged: &mut StagedFile, data: &[u8]) {
        let (home, mut back) = mpsc::channel(2);
        let mut spare = vec![AlignedBuf::new(1 << 20), AlignedBuf::new(1 << 20)];
        for piece in data.chunks(1 << 20) {
            let mut buf = spare.pop().unwrap_or_else(|| back.blocking_recv().unwrap());
            buf.set_len(piece.len());
            buf.copy_from_slice(piece);
            staged.write(Chunk::new(buf, piece.len(), home.clone())).unwrap();
        }
        staged.finish().unwrap();
    }

    fn stage_with(storage: &Storage, data: &[u8], large: bool) -> StagedFile {
        let mut staged = storage.stage(ID, data.len() as u64, large).unwrap();
        write(&mut staged, data);
        staged
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_upload_dropped_before_commit_leaves_nothing() {
        let (_dir, storage) = storage();
        for large in [false, true] {
            // Finished or not: a writer thread may still hold the file.
            drop(stage_with(&storage, b"partial", large));
            let mut unfinished = storage.stage(ID, 3 << 20, large).unwrap();
            let (home, _back) = mpsc::channel(1);
            let mut buf = AlignedBuf::new(1 << 20);
            buf.set_len(1 << 20);
            unfinished.write(Chunk::new(buf, 1 << 20, home)).unwrap();
            drop(unfinished);
            assert_eq!(entries(&storage.root().join(ID.to_hex())), Vec::<String>::new());
        }
    }

    #[test]
    fn a_committed_upload_is_stored_listed_read_and_deleted() {
        let (_dir, storage) = storage();
        let data: Vec<u8> = (0..(3 << 20) + 4096 + 5).map(|i| (i % 251) as u8).collect();
        for (name, large) in [("small.bin", false), ("large.bin", true)] {
            let staged = stage_with(&storage, &data, large);
            assert!(staged.location().starts_with(&format!("{}/{TEMP_PREFIX}", ID.to_hex())));
            let committed = storage.commit(staged, ID, name, None).unwrap();
            assert_eq!(committed.path_name, storage.path_name(ID, name));
            assert!(committed.replaced.is_none(), "nothing was replaced");
            let mut read = Vec::new();
            storage.get(ID, name).unwrap().read_to_end(&mut read).unwrap();
            assert!(read == data, "{name} reads back as written");
        }
        let mut listed = storage.list(ID).unwrap();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let size = data.len() as u64;
        let want = [("large.bin", size), ("small.bin", size)]
            .map(|(name, size)| BlobInfo { name: name.into(), size });
        assert_eq!(listed, want);
        storage.delete(ID, "small.bin").unwrap();
        assert_eq!(entries(&storage.root().join(ID.to_hex())), ["large.bin"]);
        assert_eq!(
            storage.get(ID, "small.bin").err().map(|e| e.kind()),
            Some(io::ErrorKind::NotFound)
        );
        assert_eq!(storage.list(ClientId([8; 16])).unwrap(), [], "a client with no directory");
    }

    #[test]
    fn a_staged_upload_in_progress_is_not_listed() {
        let (_dir, storage) = storage();
        let _staged = stage_with(&storage, b"not yet", false);
        assert_eq!(storage.list(ID).unwrap(), []);
    }

    #[test]
    fn commit_replaces_the_old_copy_and_cleanup_removes_leftovers() {
        let (_dir, storage) = storage();
        for content in [&b"one"[..], b"two"] {
            let staged = stage_with(&storage, content, false);
            let replaced = storage.commit_file(staged, ID, "f.txt", None).unwrap();
            let aside = replaced.as_ref().map(|p| p.to_path_buf());
            match &aside {
                // The first copy replaces nothing; the second keeps the first aside until
                // it is dropped.
                None => assert_eq!(content, b"one"),
                Some(aside) => assert_eq!(fs::read(aside).unwrap(), b"one"),
            }
            let stored = storage.root().join(storage.path_name(ID, "f.txt"));
            assert_eq!(fs::read(stored).unwrap(), content);
            drop(replaced);
            assert!(aside.is_none_or(|p| !p.exists()), "the earlier copy is deleted on drop");
        }
        let kept = stage_with(&storage, b"crashed", false).path.keep().unwrap();
        assert!(kept.exists());
        assert_eq!(storage.clean_leftovers().unwrap().removed, 1);
        assert!(!kept.exists());
        assert!(storage.root().join(ID.to_hex()).join("f.txt").exists());
    }

    #[test]
    fn commit_with_an_archive_keeps_the_earlier_copy_as_that_version() {
        let (_dir, storage) = storage();
        let first = stage_with(&storage, b"one", false);
        drop(storage.commit(first, ID, "f.txt", None).unwrap());
        let archive = storage.new_version_name(ID);
        let second = stage_with(&storage, b"two", false);
        let committed = storage.commit(second, ID, "f.txt", Some(&archive)).unwrap();
        assert!(committed.replaced.is_none(), "the earlier copy is the version now");
        assert_eq!(fs::read(storage.root().join(&archive)).unwrap(), b"one");
        assert_eq!(storage.version_files(), [(ID, archive.clone())]);
        storage.delete_version(ID, &archive).unwrap();
        assert_eq!(storage.version_files(), []);
    }

    #[test]
    fn an_upload_is_committed_only_for_its_own_client() {
        let (_dir, storage) = storage();
        let staged = stage_with(&storage, b"mine", false);
        let other = ClientId([8; 16]);
        storage.stage(other, 0, false).map(drop).unwrap(); // the other's directory exists
        assert!(storage.commit(staged, other, "f.txt", None).is_err());
        assert_eq!(storage.list(other).unwrap(), []);
        assert_eq!(entries(&storage.root().join(ID.to_hex())), Vec::<String>::new());
    }

    #[test]
    fn a_symlinked_client_directory_is_refused_for_everything() {
        let (_dir, storage) = storage();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("f.txt"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path(), storage.root().join(ID.to_hex())).unwrap();
        assert!(storage.stage(ID, 0, false).is_err());
        assert!(storage.get(ID, "f.txt").is_err());
        assert!(storage.list(ID).is_err());
        assert!(storage.delete(ID, "f.txt").is_err());
        assert_eq!(entries(outside.path()), ["f.txt"], "nothing was created or deleted there");
    }

    #[test]
    fn a_symlink_at_a_stored_name_is_replaced_not_written_through_nor_read() {
        let (_dir, storage) = storage();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let staged = stage_with(&storage, b"upload", false);
        let link = storage.root().join(ID.to_hex()).join("f.txt");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(storage.get(ID, "f.txt").is_err(), "a link is never followed");
        assert_eq!(storage.list(ID).unwrap(), [], "nor listed");
        drop(storage.commit(staged, ID, "f.txt", None).unwrap());
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert!(!fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&link).unwrap(), b"upload");
        assert_eq!(entries(outside.path()), ["victim"]);
    }
}
