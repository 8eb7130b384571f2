//! Folders inside a client's directory, for protocol 4's paths of several components: the
//! stored name `a/b/c` is the file `c` in the folder `a/b` of the client's directory.
//!
//! Why it is done this way: a client's path must never lead outside its directory, even
//! when someone has planted a symbolic link in the storage tree. So every folder is
//! reached one component at a time from the client's directory, each opened relative to
//! the one before (`openat` with `O_DIRECTORY | O_NOFOLLOW`) and made with `mkdirat` where
//! it is missing: a link, or a file where a folder should be, is refused, never followed.
//! Folders a removal leaves empty are removed, deepest first, because folders are implicit
//! (docs/protocol-v4.md, "Names and paths"): one exists while a file exists under it.

use super::{ClientDir, c_name};
use crate::sys::{mkdir_at, open_at, rmdir_at};
use std::io;

/// The mode folders are made with, before the umask: as the client's own directory.
const FOLDER_MODE: libc::mode_t = 0o777;

/// The folders from a client's directory down to the one holding a stored file.
pub(super) struct Chain {
    /// The client's directory first, then each folder of the name in turn.
    dirs: Vec<ClientDir>,
    /// The folders' names: `dirs[i + 1]` is `names[i]` in `dirs[i]`.
    names: Vec<String>,
}

impl Chain {
    /// The folder the file is in (the client's directory for a one-component name).
    pub(super) fn parent(&self) -> &ClientDir {
        self.dirs.last().expect("a chain starts at the client's directory")
    }

    /// The client's directory.
    pub(super) fn top(&self) -> &ClientDir {
        &self.dirs[0]
    }

    /// Every folder of the chain, the client's directory first (for a group commit to
    /// sync each folder once).
    pub(super) fn files(&self) -> impl Iterator<Item = &std::fs::File> {
        self.dirs.iter().map(|dir| &dir.file)
    }

    /// Syncs every folder of the chain, the client's directory included: after a rename
    /// into the deepest one, the entries that make the file reachable are all durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.dirs.iter().try_for_each(|dir| dir.file.sync_all())
    }

    /// Removes the folders left empty, deepest first, up to the first that is not empty
    /// (each removal synced in its parent). The client's directory itself stays.
    pub(super) fn remove_empty(&self) -> io::Result<()> {
        for (dir, name) in self.dirs.iter().zip(&self.names).rev() {
            match rmdir_at(&dir.file, &c_name(name)?) {
                Ok(()) => dir.file.sync_all()?,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    return Ok(());
                }
                // Gone already (nothing to do), or not a folder (a link planted there): left
                // alone, and nothing above it can be empty.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

/// A stored name's folders and its file's name: `a/b/c` gives `["a", "b"]` and `c`.
pub(super) fn split(name: &str) -> (Vec<&str>, &str) {
    match name.rsplit_once('/') {
        Some((folders, leaf)) => (folders.split('/').collect(), leaf),
        None => (Vec::new(), name),
    }
}

impl ClientDir {
    /// The chain of folders down to the one holding the file of `name`, and the file's own
    /// name. With `create`, missing folders are made (each synced in its parent, so that a
    /// commit's folders are as durable as its rename); without, a missing one is
    /// `NotFound`. A link or a file where a folder should be is refused
    /// (`NotADirectory`).
    pub(super) fn descend<'a>(&self, name: &'a str, create: bool) -> io::Result<(Chain, &'a str)> {
        let (folders, leaf) = split(name);
        let mut dirs = vec![ClientDir { file: self.file.try_clone()? }];
        for folder in &folders {
            let next =
                dirs.last().expect("starts with the client's directory").folder(folder, create)?;
            dirs.push(next);
        }
        let names = folders.into_iter().map(str::to_owned).collect();
        Ok((Chain { dirs, names }, leaf))
    }

    /// The folder `name` here, opened without following a link (made first if missing and
    /// `create`).
    fn folder(&self, name: &str, create: bool) -> io::Result<ClientDir> {
        let c = c_name(name)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        match open_at(&self.file, &c, flags, 0) {
            Ok(file) => return Ok(ClientDir { file }),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {}
            Err(e) => return Err(folder_error(name, e)),
        }
        match mkdir_at(&self.file, &c, FOLDER_MODE) {
            Ok(()) => self.file.sync_all()?,
            // Made meanwhile, or something else is there: the open below tells which.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        open_at(&self.file, &c, flags, 0)
            .map(|file| ClientDir { file })
            .map_err(|e| folder_error(name, e))
    }
}

/// A link (`ELOOP`) or a non-folder (`ENOTDIR`) where a folder should be is refused with
/// what it is; anything else stays as it came.
fn folder_error(name: &str, e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!(
                "{name:?} in the storage tree is a symbolic link or not a directory; refusing to go through it"
            ),
        ),
        _ => e,
    }
}
